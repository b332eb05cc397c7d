//! The breakers with a real actix System and a [`ManualClock`]: time moves only
//! when a test says so, and nothing sleeps. Every wait is on the actor's reply.

use super::cell::{LATENCY_SAMPLES, MAX_BREAKERS, Stats, percentile};
use super::machine::Machine;
use super::*;
use crate::actors::budget::{ManualClock, SystemClock};
use futures_util::FutureExt;
use futures_util::future::join_all;

/// 2024-02-29T12:00:00Z.
const T0: u64 = 1_709_208_000_000;

fn settings(failures: u32, window_s: u64, cooldown_s: u64) -> BreakerSettings {
    BreakerSettings {
        failures,
        window: Duration::from_secs(window_s),
        cooldown: Duration::from_secs(cooldown_s),
        retries: 0,
        retry_backoff: Duration::ZERO,
    }
}

/// `openai` uses `s`; `anthropic` opens after 2 failures.
fn config(s: BreakerSettings) -> BreakerConfig {
    BreakerConfig {
        default: s,
        providers: HashMap::from([
            ("openai".to_owned(), s),
            ("anthropic".to_owned(), BreakerSettings { failures: 2, ..s }),
        ]),
    }
}

struct World {
    clock: Arc<ManualClock>,
    h: BreakerHandle,
}

fn world() -> World {
    let clock = Arc::new(ManualClock::new(T0));
    let h = BreakerHandle::start(config(settings(5, 60, 60)), clock.clone());
    World { clock, h }
}

fn run<F: std::future::Future<Output = ()>>(f: F) {
    actix_rt::System::new().block_on(f);
}

fn fail500() -> Outcome {
    Outcome::Failure("HTTP 500".to_owned())
}

impl World {
    async fn fail(&self, model: &str) {
        let t = self.h.admit("openai", model).await.expect("circuit admits");
        t.finish(fail500()).await;
    }

    async fn info(&self, provider: &str, model: &str) -> CircuitInfo {
        self.h
            .list()
            .await
            .unwrap()
            .into_iter()
            .find(|c| c.provider == provider && c.model == model)
            .expect("breaker listed")
    }

    fn refused(&self, model: &str) -> Rejected {
        match self.h.check("openai", model) {
            Check::Refused(r) => r,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    async fn open(&self, model: &str) {
        for _ in 0..5 {
            self.fail(model).await;
        }
        assert_eq!(self.info("openai", model).await.state, CircuitState::Open);
    }
}

#[test]
fn opens_after_n_failures_within_the_window() {
    run(async {
        let w = world();
        for n in 1..=4 {
            w.fail("gpt-4o").await;
            w.clock.advance(1_000);
            let i = w.info("openai", "gpt-4o").await;
            assert_eq!(
                (i.state, i.failures_in_window, i.opens),
                (CircuitState::Closed, n, 0)
            );
        }
        // Successes in between do not reset the count.
        w.h.admit("openai", "gpt-4o")
            .await
            .unwrap()
            .finish(Outcome::Success)
            .await;
        w.fail("gpt-4o").await;
        let opened_at = T0 + 4_000;
        let i = w.info("openai", "gpt-4o").await;
        assert_eq!(i.state, CircuitState::Open);
        assert_eq!(i.opens, 1);
        assert_eq!(i.last_transition_ms, Some(opened_at));
        assert_eq!(i.next_probe_ms, Some(opened_at + 60_000));
        assert_eq!(
            i.last_reason.as_deref(),
            Some("5 failures within 60s (last: HTTP 500)")
        );
        assert_eq!(
            (i.requests, i.failures, i.threshold, i.window_ms),
            (6, 5, 5, 60_000)
        );
        let r = w.refused("gpt-4o");
        assert_eq!(
            (r.state, r.next_probe_ms),
            (CircuitState::Open, Some(opened_at + 60_000))
        );
        assert_eq!(
            r.describe(opened_at + 17_500),
            "circuit openai/gpt-4o is open (next probe in 43s)"
        );
        assert_eq!(w.info("openai", "gpt-4o").await.rejected, 1);
        // Other models are not affected.
        assert!(matches!(w.h.check("openai", "gpt-4o-mini"), Check::Pass(_)));
    });
}

#[test]
fn failures_older_than_the_window_expire() {
    run(async {
        let w = world();
        for _ in 0..4 {
            w.fail("gpt-4o").await;
        }
        w.clock.advance(60_000);
        assert_eq!(w.info("openai", "gpt-4o").await.failures_in_window, 0);
        w.fail("gpt-4o").await;
        let i = w.info("openai", "gpt-4o").await;
        assert_eq!((i.state, i.failures_in_window), (CircuitState::Closed, 1));
        // Spread over just under a window, five do open it.
        for _ in 0..3 {
            w.clock.advance(14_999);
            w.fail("gpt-4o").await;
        }
        w.clock.advance(14_999);
        w.fail("gpt-4o").await;
        assert_eq!(w.info("openai", "gpt-4o").await.state, CircuitState::Open);
    });
}

#[test]
fn thresholds_are_per_provider() {
    run(async {
        let w = world();
        for _ in 0..2 {
            w.h.admit("anthropic", "claude-sonnet-4-5")
                .await
                .unwrap()
                .finish(fail500())
                .await;
            w.fail("gpt-4o").await;
        }
        assert_eq!(
            w.info("anthropic", "claude-sonnet-4-5").await.state,
            CircuitState::Open
        );
        assert_eq!(w.info("anthropic", "claude-sonnet-4-5").await.threshold, 2);
        assert_eq!(w.info("openai", "gpt-4o").await.state, CircuitState::Closed);
    });
}

#[test]
fn cooldown_then_exactly_one_probe_even_with_many_concurrent_callers() {
    run(async {
        let w = world();
        w.open("gpt-4o").await;
        w.clock.advance(59_999);
        assert_eq!(w.refused("gpt-4o").next_probe_ms, Some(T0 + 60_000));
        w.clock.advance(1);
        assert!(matches!(w.h.check("openai", "gpt-4o"), Check::ProbeDue));

        // 8 threads x 25 concurrent callers, released together.
        let h = w.h.clone();
        let results = tokio::task::spawn_blocking(move || {
            let barrier = Arc::new(std::sync::Barrier::new(8));
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    let (h, barrier) = (h.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        let rt = tokio::runtime::Builder::new_current_thread()
                            .build()
                            .unwrap();
                        barrier.wait();
                        rt.block_on(join_all((0..25).map(|_| h.admit("openai", "gpt-4o"))))
                    })
                })
                .collect();
            threads
                .into_iter()
                .flat_map(|t| t.join().unwrap())
                .collect::<Vec<_>>()
        })
        .await
        .unwrap();
        assert_eq!(results.len(), 200);
        let mut probes: Vec<Ticket> = results.into_iter().filter_map(Result::ok).collect();
        assert_eq!(probes.len(), 1, "exactly one probe");
        let probe = probes.pop().unwrap();
        assert!(probe.is_probe());
        let i = w.info("openai", "gpt-4o").await;
        // 199 refused here, one before the cooldown ended.
        assert_eq!(
            (i.state, i.next_probe_ms, i.rejected),
            (CircuitState::HalfOpen, None, 200)
        );
        assert_eq!(w.refused("gpt-4o").state, CircuitState::HalfOpen);

        w.clock.advance(250);
        probe.finish(Outcome::Success).await;
        let i = w.info("openai", "gpt-4o").await;
        assert_eq!(
            (i.state, i.failures_in_window, i.last_transition_ms),
            (CircuitState::Closed, 0, Some(T0 + 60_250))
        );
        assert!(matches!(w.h.check("openai", "gpt-4o"), Check::Pass(_)));
    });
}

#[test]
fn a_failed_probe_reopens_for_another_cooldown() {
    run(async {
        let w = world();
        w.open("gpt-4o").await;
        w.clock.advance(60_000);
        let probe = w.h.admit("openai", "gpt-4o").await.unwrap();
        assert!(probe.is_probe());
        w.clock.advance(3_000);
        probe.finish(Outcome::Failure("HTTP 503".to_owned())).await;
        let i = w.info("openai", "gpt-4o").await;
        assert_eq!((i.state, i.opens), (CircuitState::Open, 2));
        assert_eq!(i.next_probe_ms, Some(T0 + 63_000 + 60_000));
        assert_eq!(
            i.last_reason.as_deref(),
            Some("the probe call failed: HTTP 503")
        );
        // A probe answered with a client error shows the provider is up.
        w.clock.advance(60_000);
        let probe = w.h.admit("openai", "gpt-4o").await.unwrap();
        probe.finish(Outcome::ClientError(400)).await;
        assert_eq!(w.info("openai", "gpt-4o").await.state, CircuitState::Closed);
    });
}

#[test]
fn an_abandoned_probe_lets_the_next_call_probe() {
    run(async {
        let w = world();
        w.open("gpt-4o").await;
        w.clock.advance(60_000);
        let probe = w.h.admit("openai", "gpt-4o").await.unwrap();
        assert!(w.h.admit("openai", "gpt-4o").await.is_err());
        drop(probe);
        // The drop's message is handled before this list.
        let i = w.info("openai", "gpt-4o").await;
        assert_eq!(
            (i.state, i.next_probe_ms, i.opens),
            (CircuitState::Open, Some(T0 + 60_000), 1)
        );
        assert!(w.h.admit("openai", "gpt-4o").await.unwrap().is_probe());
    });
}

#[test]
fn retry_after_holds_the_circuit_exactly_that_long() {
    run(async {
        let w = world();
        let t = w.h.admit("openai", "gpt-4o").await.unwrap();
        let stale = w.h.admit("openai", "gpt-4o").await.unwrap();
        t.finish(Outcome::RateLimited {
            retry_after: Some(Duration::from_secs(2)),
        })
        .await;
        let i = w.info("openai", "gpt-4o").await;
        assert_eq!((i.state, i.opens), (CircuitState::Open, 1));
        assert_eq!(i.last_transition_ms, Some(T0));
        assert_eq!(i.next_probe_ms, Some(T0 + 2_000));
        assert_eq!(i.last_reason.as_deref(), Some("HTTP 429, Retry-After 2s"));
        w.clock.advance(1_999);
        assert_eq!(w.refused("gpt-4o").next_probe_ms, Some(T0 + 2_000));
        w.clock.advance(1);
        assert!(matches!(w.h.check("openai", "gpt-4o"), Check::ProbeDue));

        // A later 429 (from a call admitted earlier) can only push it back.
        stale
            .finish(Outcome::RateLimited {
                retry_after: Some(Duration::from_secs(10)),
            })
            .await;
        let i = w.info("openai", "gpt-4o").await;
        assert_eq!((i.next_probe_ms, i.opens), (Some(T0 + 2_000 + 10_000), 1));
        // Without Retry-After a 429 is an ordinary failure.
        for _ in 0..5 {
            w.h.admit("openai", "o1")
                .await
                .unwrap()
                .finish(Outcome::RateLimited { retry_after: None })
                .await;
        }
        let i = w.info("openai", "o1").await;
        assert_eq!(
            (i.state, i.next_probe_ms),
            (CircuitState::Open, Some(T0 + 2_000 + 60_000))
        );
    });
}

#[test]
fn retry_after_headers() {
    let mut h = http::HeaderMap::new();
    assert_eq!(retry_after(&h), None);
    h.insert("retry-after", http::HeaderValue::from_static("2"));
    assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
    h.insert("retry-after-ms", http::HeaderValue::from_static("1500"));
    assert_eq!(retry_after(&h), Some(Duration::from_millis(1500)));
    h.remove("retry-after-ms");
    h.insert("retry-after", http::HeaderValue::from_static("99999"));
    assert_eq!(retry_after(&h), Some(MAX_RETRY_AFTER));
    h.insert(
        "retry-after",
        http::HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
    );
    assert_eq!(retry_after(&h), None);
    h.insert("retry-after", http::HeaderValue::from_static("-3"));
    assert_eq!(retry_after(&h), None);
}

#[test]
fn auth_errors_never_count_and_alert_at_most_every_five_minutes() {
    run(async {
        let w = world();
        for _ in 0..20 {
            w.h.admit("openai", "gpt-4o")
                .await
                .unwrap()
                .finish(Outcome::AuthRejected(401))
                .await;
        }
        w.h.admit("openai", "gpt-4o")
            .await
            .unwrap()
            .finish(Outcome::AuthRejected(403))
            .await;
        let i = w.info("openai", "gpt-4o").await;
        assert_eq!(
            (i.state, i.failures_in_window, i.failures, i.requests),
            (CircuitState::Closed, 0, 0, 21)
        );
    });
    let mut m = Machine::new();
    assert!(m.auth_alert_due(T0));
    assert!(!m.auth_alert_due(T0 + 1));
    assert!(!m.auth_alert_due(T0 + 299_999));
    assert!(m.auth_alert_due(T0 + 300_000));
}

#[test]
fn reports_of_calls_admitted_before_a_transition_do_not_move_it() {
    run(async {
        let w = world();
        let mut early = Vec::new();
        for _ in 0..5 {
            early.push(w.h.admit("openai", "gpt-4o").await.unwrap());
        }
        w.open("gpt-4o").await;
        assert_eq!(
            w.h.reset("openai/gpt-4o".parse().unwrap()).await,
            Ok(CircuitState::Open)
        );
        for t in early {
            t.finish(fail500()).await;
        }
        let i = w.info("openai", "gpt-4o").await;
        assert_eq!(
            (i.state, i.failures_in_window, i.failures),
            (CircuitState::Closed, 0, 10)
        );
    });
}

#[test]
fn reset_closes_and_names_unknown_circuits() {
    run(async {
        let w = world();
        w.open("gpt-4o").await;
        assert_eq!(
            w.h.reset("openai/gpt-4o".parse().unwrap()).await,
            Ok(CircuitState::Open)
        );
        assert_eq!(w.info("openai", "gpt-4o").await.state, CircuitState::Closed);
        assert!(matches!(w.h.check("openai", "gpt-4o"), Check::Pass(_)));
        assert_eq!(
            w.h.reset("openai/gpt-4o".parse().unwrap()).await,
            Ok(CircuitState::Closed)
        );
        let e = w.h.reset("openai/nope".parse().unwrap()).await.unwrap_err();
        assert!(e.to_string().contains("no circuit openai/nope"), "{e}");
    });
}

#[test]
fn reload_applies_new_thresholds_and_drops_removed_providers() {
    run(async {
        let w = world();
        w.fail("gpt-4o").await;
        w.h.admit("anthropic", "claude-sonnet-4-5")
            .await
            .unwrap()
            .finish(Outcome::Success)
            .await;
        let mut c = config(settings(2, 60, 5));
        c.providers.remove("anthropic");
        w.h.apply_config(c).await;
        let list = w.h.list().await.unwrap();
        assert_eq!(list.len(), 1, "{list:?}");
        w.fail("gpt-4o").await;
        let i = w.info("openai", "gpt-4o").await;
        assert_eq!(
            (i.state, i.threshold, i.next_probe_ms),
            (CircuitState::Open, 2, Some(T0 + 5_000))
        );
    });
}

#[test]
fn the_table_of_breakers_is_bounded() {
    run(async {
        let w = world();
        for i in 0..MAX_BREAKERS {
            assert!(matches!(
                w.h.check("openai", &format!("m{i}")),
                Check::Pass(_)
            ));
        }
        // Past the bound a new model passes untracked, and its failures move nothing.
        for _ in 0..5 {
            w.fail("one-too-many").await;
        }
        assert!(matches!(
            w.h.check("openai", "one-too-many"),
            Check::Pass(_)
        ));
        let list = w.h.list().await.unwrap();
        assert_eq!(list.len(), MAX_BREAKERS);
        assert!(list.iter().all(|c| c.model != "one-too-many"));
        // Known ones still work, and a reload that drops a provider frees room.
        w.open("m0").await;
        w.h.apply_config(BreakerConfig {
            default: settings(5, 60, 60),
            providers: HashMap::new(),
        })
        .await;
        assert!(w.h.list().await.unwrap().is_empty());
        w.fail("fresh").await;
        assert_eq!(w.info("openai", "fresh").await.failures_in_window, 1);
    });
}

#[test]
fn latency_percentiles_of_recent_successes() {
    let s = Stats::default();
    assert_eq!(s.figures().p50_us, None);
    for ms in 1..=100u64 {
        s.record(&Outcome::Success, Duration::from_millis(ms));
    }
    s.record(&fail500(), Duration::from_secs(30));
    let f = s.figures();
    assert_eq!((f.p50_us, f.p99_us), (Some(50_000), Some(99_000)));
    assert_eq!((f.requests, f.failures), (101, 1));
    // Only the last LATENCY_SAMPLES count.
    for _ in 0..LATENCY_SAMPLES {
        s.record(&Outcome::Success, Duration::from_micros(7));
    }
    assert_eq!(s.figures().p99_us, Some(7));
    assert_eq!(percentile(&[1, 2, 3], 50), Some(2));
    assert_eq!(percentile(&[5], 99), Some(5));
}

/// The request-path cost of a breaker check (and of finishing a successful
/// call), on 64 models of which 8 are open, from 2 threads at once. Prints
/// figures; never asserts on time.
///
/// `cargo test --release -p ironcaged bench_breaker_check -- --ignored --nocapture`
#[test]
#[ignore = "benchmark; run with --release --ignored --nocapture"]
fn bench_breaker_check() {
    run(async {
        let s = settings(5, 60, 3600);
        let h = BreakerHandle::start(config(s), Arc::new(SystemClock));
        let models: Vec<String> = (0..64).map(|i| format!("model-{i}")).collect();
        for m in &models[..8] {
            for _ in 0..5 {
                h.admit("openai", m).await.unwrap().finish(fail500()).await;
            }
        }
        for m in &models {
            let _ = h.admit("openai", m).await;
        }
        const THREADS: usize = 2;
        const N: usize = 1_000_000;
        let h2 = h.clone();
        let (mut check, mut both) = tokio::task::spawn_blocking(move || {
            let barrier = Arc::new(std::sync::Barrier::new(THREADS));
            let threads: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (h, models, barrier) = (h2.clone(), models.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        let mut check = Vec::with_capacity(N);
                        let mut both = Vec::with_capacity(N);
                        barrier.wait();
                        for i in 0..N {
                            let m = &models[(i * 7 + t) % models.len()];
                            let start = Instant::now();
                            let c = h.check("openai", m);
                            check.push(start.elapsed().as_nanos() as u64);
                            if let Check::Pass(ticket) = c {
                                ticket
                                    .finish(Outcome::Success)
                                    .now_or_never()
                                    .expect("no wait on success");
                            }
                            both.push(start.elapsed().as_nanos() as u64);
                        }
                        (check, both)
                    })
                })
                .collect();
            let mut check = Vec::new();
            let mut both = Vec::new();
            for t in threads {
                let (c, b) = t.join().unwrap();
                check.extend(c);
                both.extend(b);
            }
            (check, both)
        })
        .await
        .unwrap();
        let pct = |v: &mut Vec<u64>, label: &str| {
            v.sort_unstable();
            let at = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)];
            println!(
                "{label}: {} samples from {THREADS} threads: p50 {} ns, p99 {} ns, p99.9 {} ns, max {} ns",
                v.len(),
                at(0.50),
                at(0.99),
                at(0.999),
                v[v.len() - 1]
            );
        };
        pct(&mut check, "breaker check");
        pct(&mut both, "check + finish(success)");
    });
}

#[test]
fn every_state_change_is_on_the_audit_trail() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(crate::store::Store::open(dir.path()).unwrap());
    let audit = crate::audit::AuditHandle::start(Arc::new(
        crate::audit::AuditLog::open(store, None).unwrap(),
    ));
    run(async {
        let w = world();
        w.h.set_audit(audit.clone());
        w.open("gpt-4o").await;
        w.h.reset("openai/gpt-4o".parse().unwrap()).await.unwrap();
    });
    // A durable entry after them: the queued transitions are committed too.
    let a = crate::audit::Actor::daemon();
    audit
        .record_durable_blocking(crate::audit::Draft::new(
            a,
            "mark",
            "",
            ironcage_shared::protocol::AuditOutcome::Ok,
        ))
        .unwrap();
    let got: Vec<(String, String)> = audit
        .log()
        .entries(None, 10)
        .unwrap()
        .into_iter()
        .map(|e| (e.action, e.target))
        .collect();
    assert_eq!(
        got[..2],
        [
            ("breaker opened".to_owned(), "openai/gpt-4o".to_owned()),
            ("breaker closed".to_owned(), "openai/gpt-4o".to_owned()),
        ]
    );
}
