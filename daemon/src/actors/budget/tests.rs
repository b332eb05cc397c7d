//! The ledger end to end: a real actix System (the daemon's runtime), real redb files in temporary
//! directories, a [`ManualClock`]. No sleeps: every wait is on a future that
//! resolves when the awaited thing happened (`settle` resolves once durable,
//! `flush_alerts` once alert commands finished).

use super::persist::{self, StoredEvent};
use super::*;
use crate::config::{BudgetSection, BudgetSpec, OnExhausted};
use crate::store::Store;
use ironcage_shared::protocol::{CostsBy, CostsRequest};
use std::path::Path;
use std::sync::Mutex;

/// 2024-02-29T12:00:00Z, a Thursday in a leap February.
const T0_MS: u64 = 1_709_208_000_000;
const DAY_MS: u64 = 86_400_000;
/// 2024-03-01T00:00:00Z.
const MAR_1_MS: u64 = 1_709_251_200_000;
/// 2024-03-04T00:00:00Z, a Monday.
const MON_MAR_4_MS: u64 = 1_709_510_400_000;

fn name(s: &str) -> AgentName {
    AgentName::new(s).unwrap()
}

fn usd(s: &str) -> Micros {
    Micros::parse_usd(s).unwrap()
}

fn spec(limit: &str, period: BudgetPeriod, on_exhausted: OnExhausted) -> Option<BudgetSpec> {
    Some(BudgetSpec {
        limit: usd(limit),
        period,
        on_exhausted,
        max_cost_per_call: None,
    })
}

fn day(limit: &str) -> Option<BudgetSpec> {
    spec(limit, BudgetPeriod::Day, OnExhausted::Refuse)
}

fn section() -> BudgetSection {
    BudgetSection {
        alert_thresholds: vec![50, 80, 100],
        alert_command: None,
        keep_cost_history_days: None,
    }
}

fn record(agent: &str, cost: &str) -> CostRecord {
    CostRecord {
        agent: name(agent),
        provider: "openai".into(),
        model: "gpt-4o".into(),
        tag: None,
        usage: Usage {
            input_tokens: 100,
            output_tokens: 20,
            ..Usage::default()
        },
        cost: usd(cost),
        at_ms: T0_MS,
    }
}

/// One test's world: a state dir, a clock, and the agents the stop callback saw.
struct World {
    dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    stops: Arc<Mutex<Vec<AgentName>>>,
}

impl World {
    fn new() -> Self {
        World {
            dir: tempfile::tempdir().unwrap(),
            clock: Arc::new(ManualClock::new(T0_MS)),
            stops: Arc::default(),
        }
    }

    fn start_with(
        &self,
        agents: Vec<(AgentName, Option<BudgetSpec>)>,
        section: BudgetSection,
    ) -> BudgetHandle {
        let store = Arc::new(Store::open(self.dir.path()).unwrap());
        let stops = self.stops.clone();
        let on_stop = Arc::new(move |a: AgentName| stops.lock().unwrap().push(a));
        BudgetHandle::start(store, agents, section, self.clock.clone(), on_stop).unwrap()
    }

    fn start(&self, agents: Vec<(AgentName, Option<BudgetSpec>)>) -> BudgetHandle {
        self.start_with(agents, section())
    }

    fn stops(&self) -> usize {
        self.stops.lock().unwrap().len()
    }
}

/// Stops the ledger and releases the database file, so it can be reopened.
async fn shut(h: BudgetHandle) {
    h.close().await;
    drop(h);
}

fn run<F: std::future::Future<Output = ()>>(f: F) {
    actix_rt::System::new().block_on(f);
}

async fn info(h: &BudgetHandle, agent: &str) -> BudgetInfo {
    h.show(Some(name(agent))).await.unwrap().remove(0)
}

/// `ironctl costs --by BY [--since SINCE]`, all agents.
async fn costs(h: &BudgetHandle, by: CostsBy, since: Option<u64>) -> CostsReport {
    h.costs(CostsRequest {
        by,
        since,
        agent: None,
    })
    .await
    .unwrap()
}

async fn spend(h: &BudgetHandle, agent: &str, reserve: &str, cost: &str) {
    let r = h.reserve(&name(agent), usd(reserve)).await.unwrap();
    h.settle(r, record(agent, cost)).await.unwrap();
}

#[test]
fn reservation_arithmetic_is_exact() {
    run(async {
        let w = World::new();
        let h = w.start(vec![(name("a"), day("1"))]);
        let a = name("a");
        let r1 = h.reserve(&a, usd("0.999999")).await.unwrap();
        let r2 = h.reserve(&a, Micros(1)).await.unwrap();
        assert_eq!((r1.amount(), r2.agent()), (Micros(999_999), &a));
        assert_eq!(h.remaining(&a).await, Some(Micros::ZERO));
        let Err(Refusal::Exhausted(e)) = h.reserve(&a, Micros(1)).await else {
            panic!("must refuse")
        };
        assert_eq!(
            (e.limit, e.spent, e.reserved, e.requested),
            (usd("1"), Micros::ZERO, usd("1"), Micros(1))
        );
        h.settle(r1, record("a", "0.25")).await.unwrap();
        let i = info(&h, "a").await;
        assert_eq!(
            (i.spent, i.reserved, i.remaining, i.calls),
            (usd("0.25"), Micros(1), Some(usd("0.749999")), 1)
        );
        drop(r2);
        assert_eq!(h.remaining(&a).await, Some(usd("0.75")));
        let r = h.reserve(&a, usd("0.75")).await.unwrap();
        assert!(h.reserve(&a, Micros(1)).await.is_err());
        drop(r);
        shut(h).await;
    });
}

#[test]
fn refusal_names_agent_budget_spent_and_reserved() {
    run(async {
        let w = World::new();
        let h = w.start(vec![(name("researcher"), day("5"))]);
        spend(&h, "researcher", "5", "4.71").await;
        let _inflight = h.reserve(&name("researcher"), usd("0.12")).await.unwrap();
        let e = h
            .reserve(&name("researcher"), usd("0.42"))
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "agent researcher's day budget of $5.00 cannot cover this call (worst case $0.42): $4.71 spent, $0.12 reserved by calls in flight"
        );
        shut(h).await;
    });
}

#[test]
fn twenty_concurrent_reservations_against_a_budget_for_five() {
    run(async {
        let w = World::new();
        let h = w.start(vec![(name("a"), day("1"))]);
        // Real parallelism: the gateway calls from tokio worker threads.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .build()
            .unwrap();
        let barrier = Arc::new(tokio::sync::Barrier::new(20));
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (h, barrier) = (h.clone(), barrier.clone());
                rt.spawn(async move {
                    barrier.wait().await;
                    h.reserve(&name("a"), usd("0.2")).await
                })
            })
            .collect();
        let mut granted = Vec::new();
        let mut refused = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(r) => granted.push(r),
                Err(Refusal::Exhausted(_)) => refused += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!((granted.len(), refused), (5, 15));
        assert_eq!(info(&h, "a").await.reserved, usd("1"));
        // Settle them concurrently from the worker threads too: one group commit or a few.
        let settles: Vec<_> = granted
            .into_iter()
            .map(|r| {
                let h = h.clone();
                rt.spawn(async move { h.settle(r, record("a", "0.15")).await })
            })
            .collect();
        for s in settles {
            s.await.unwrap().unwrap();
        }
        let i = info(&h, "a").await;
        assert_eq!(
            (i.spent, i.reserved, i.calls),
            (usd("0.75"), Micros::ZERO, 5)
        );
        rt.shutdown_background();
        shut(h).await;
    });
}

#[test]
fn dropping_a_reservation_or_the_reserve_future_releases_it() {
    run(async {
        let w = World::new();
        let h = w.start(vec![(name("a"), day("1"))]);
        let a = name("a");
        let r = h.reserve(&a, usd("0.6")).await.unwrap();
        assert_eq!(h.remaining(&a).await, Some(usd("0.4")));
        drop(r);
        assert_eq!(h.remaining(&a).await, Some(usd("1")));
        // A reserve future dropped unpolled reserves nothing.
        drop(h.reserve(&a, usd("0.7")));
        assert_eq!(h.remaining(&a).await, Some(usd("1")));
        // A settle is booked when called, even if its future is never polled.
        let r = h.reserve(&a, usd("0.5")).await.unwrap();
        drop(h.settle(r, record("a", "0.25")));
        h.flush().await.unwrap();
        let i = info(&h, "a").await;
        assert_eq!((i.spent, i.reserved), (usd("0.25"), Micros::ZERO));
        shut(h).await;
    });
}

#[test]
fn settle_above_the_reservation_books_the_real_cost() {
    run(async {
        let w = World::new();
        let h = w.start(vec![(name("a"), day("1"))]);
        spend(&h, "a", "0.1", "0.3").await;
        let i = info(&h, "a").await;
        assert_eq!(
            (i.spent, i.reserved, i.remaining),
            (usd("0.3"), Micros::ZERO, Some(usd("0.7")))
        );
        // Even past the limit: the money is gone, the next call is refused.
        spend(&h, "a", "0.7", "0.9").await;
        let i = info(&h, "a").await;
        assert_eq!((i.spent, i.remaining), (usd("1.2"), Some(Micros::ZERO)));
        assert!(
            h.reserve(&name("a"), Micros::ZERO).await.is_err(),
            "overspent: nothing fits"
        );
        shut(h).await;
    });
}

#[test]
fn unlimited_and_unknown_agents_are_metered() {
    run(async {
        let w = World::new();
        let h = w.start(vec![(name("free"), None)]);
        let r = h.reserve(&name("free"), Micros(i64::MAX)).await.unwrap();
        h.settle(r, record("free", "12.5")).await.unwrap();
        let i = info(&h, "free").await;
        assert_eq!(
            (i.limit, i.spent, i.calls, i.remaining),
            (None, usd("12.5"), 1, None)
        );
        spend(&h, "stranger", "1", "0.5").await;
        let all = h.show(None).await.unwrap();
        assert_eq!(all.len(), 1, "only configured agents are listed");
        assert_eq!(info(&h, "stranger").await.spent, usd("0.5"));
        let c = costs(&h, CostsBy::Agent, None).await;
        assert_eq!(c.total, usd("13"));
        assert!(matches!(
            h.show(Some(name("nobody"))).await,
            Err(BudgetError::UnknownAgent(_))
        ));
        shut(h).await;
    });
}

#[test]
fn durable_spend_survives_reopening_the_file() {
    run(async {
        let w = World::new();
        let h = w.start(vec![(name("a"), day("10")), (name("b"), None)]);
        for _ in 0..7 {
            spend(&h, "a", "0.5", "0.25").await;
        }
        spend(&h, "b", "0", "1").await;
        let _held = h.reserve(&name("a"), usd("3")).await.unwrap();
        shut(h).await;
        drop(_held);
        let h = w.start(vec![(name("a"), day("10")), (name("b"), None)]);
        let i = info(&h, "a").await;
        assert_eq!(
            (i.spent, i.calls, i.reserved),
            (usd("1.75"), 7, Micros::ZERO)
        );
        assert_eq!(info(&h, "b").await.spent, usd("1"));
        // The sequence continues after a restart.
        spend(&h, "a", "0.5", "0.25").await;
        shut(h).await;
        let store = Store::open(w.dir.path()).unwrap();
        let seqs: Vec<u64> = persist::read_events(&store)
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(seqs, (0..9).collect::<Vec<_>>());
    });
}

/// The other half of `settled_spend_survives_sigkill`: run in a child process
/// that is killed mid-flight. Does nothing when run on its own.
#[test]
#[ignore = "helper process for settled_spend_survives_sigkill"]
fn crash_child() {
    let Ok(dir) = std::env::var("IRONCAGE_BUDGET_CRASH_DIR") else {
        return;
    };
    run(async move {
        let store = Arc::new(Store::open(Path::new(&dir)).unwrap());
        let clock = Arc::new(ManualClock::new(T0_MS));
        let h = BudgetHandle::start(
            store,
            vec![(name("a"), day("1000"))],
            section(),
            clock,
            Arc::new(|_| {}),
        )
        .unwrap();
        for _ in 0..40 {
            spend(&h, "a", "1", "0.5").await;
        }
        // Settles in flight and reservations held when the kill comes.
        for _ in 0..20 {
            let r = h.reserve(&name("a"), usd("1")).await.unwrap();
            let h = h.clone();
            actix_rt::spawn(async move {
                let _ = h.settle(r, record("a", "0.5")).await;
            });
        }
        let a = name("a");
        let _held: Vec<_> =
            futures_util::future::join_all((0..5).map(|_| h.reserve(&a, usd("2")))).await;
        println!("DURABLE 40");
        use std::io::Write;
        std::io::stdout().flush().unwrap();
        std::future::pending::<()>().await;
    });
}

#[test]
fn settled_spend_survives_sigkill() {
    use std::io::BufRead;
    let w = World::new();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "actors::budget::tests::crash_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("IRONCAGE_BUDGET_CRASH_DIR", w.dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let out = child.stdout.take().unwrap();
    let mut guard = Kill(child);
    let durable = std::io::BufReader::new(out)
        .lines()
        .map_while(Result::ok)
        // libtest may print the test's name on the same line first.
        .find_map(|l| {
            l.split_once("DURABLE ")
                .map(|(_, n)| n.trim().parse::<u64>().unwrap())
        })
        .expect("the child reports its durable settles");
    // SIGKILL: no destructor, no flush, no clean close of the database.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(guard.0.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = guard.0.wait();
    drop(guard);

    let store = Store::open(w.dir.path()).expect("redb recovers the file");
    let spends: Vec<Micros> = persist::read_events(&store)
        .unwrap()
        .into_iter()
        .filter_map(|(_, e)| match e {
            StoredEvent::Spend(s) => Some(s.cost),
            StoredEvent::Reset(_) => None,
        })
        .collect();
    drop(store);
    let n = spends.len() as u64;
    assert!(
        (durable..=durable + 20).contains(&n),
        "{n} events for {durable} durable settles"
    );
    run(async move {
        let h = w.start(vec![(name("a"), day("1000"))]);
        let i = info(&h, "a").await;
        // The checkpoint row agrees exactly with the events it was committed with.
        assert_eq!(i.spent, spends.iter().copied().sum::<Micros>());
        assert_eq!(i.calls, n);
        assert_eq!(
            i.reserved,
            Micros::ZERO,
            "reservations of a dead process are gone"
        );
        shut(h).await;
    });
}

#[test]
fn day_week_and_month_roll_over_at_utc_boundaries() {
    run(async {
        let w = World::new();
        let h = w.start(vec![
            (name("d"), day("1")),
            (
                name("w"),
                spec("1", BudgetPeriod::Week, OnExhausted::Refuse),
            ),
            (
                name("m"),
                spec("1", BudgetPeriod::Month, OnExhausted::Refuse),
            ),
            (
                name("t"),
                spec("1", BudgetPeriod::Total, OnExhausted::Refuse),
            ),
        ]);
        for a in ["d", "w", "m", "t"] {
            spend(&h, a, "0.9", "0.9").await;
            assert!(h.reserve(&name(a), usd("0.2")).await.is_err(), "{a}");
        }
        assert_eq!(info(&h, "d").await.period_start, 1_709_164_800);
        assert_eq!(info(&h, "d").await.period_end, Some(1_709_251_200));
        assert_eq!(
            info(&h, "w").await.period_start,
            1_708_905_600,
            "Monday 2024-02-26"
        );

        // One millisecond before midnight: still February 29th.
        w.clock.set(MAR_1_MS - 1);
        assert!(h.reserve(&name("d"), usd("0.2")).await.is_err());
        w.clock.set(MAR_1_MS);
        let d = info(&h, "d").await;
        assert_eq!(
            (d.spent, d.calls, d.period_start),
            (Micros::ZERO, 0, MAR_1_MS / 1000)
        );
        assert!(h.reserve(&name("d"), usd("1")).await.is_ok());
        assert_eq!(info(&h, "m").await.spent, Micros::ZERO, "March started");
        assert_eq!(info(&h, "w").await.spent, usd("0.9"), "same ISO week");
        assert_eq!(info(&h, "t").await.spent, usd("0.9"), "total never rolls");

        // Sunday 23:59:59.999 then Monday 00:00.
        spend(&h, "w", "0", "0.05").await;
        w.clock.set(MON_MAR_4_MS - 1);
        assert_eq!(info(&h, "w").await.spent, usd("0.95"));
        w.clock.set(MON_MAR_4_MS);
        let wk = info(&h, "w").await;
        assert_eq!(
            (wk.spent, wk.period_start, wk.period_end),
            (Micros::ZERO, MON_MAR_4_MS / 1000, Some(1_710_115_200))
        );
        assert_eq!(info(&h, "t").await.spent, usd("0.9"));

        // The rolled-over state is what a restart sees too.
        shut(h).await;
        w.clock.set(MON_MAR_4_MS + DAY_MS);
        let h = w.start(vec![
            (
                name("m"),
                spec("1", BudgetPeriod::Month, OnExhausted::Refuse),
            ),
            (
                name("t"),
                spec("1", BudgetPeriod::Total, OnExhausted::Refuse),
            ),
        ]);
        assert_eq!(info(&h, "m").await.spent, Micros::ZERO);
        assert_eq!(info(&h, "t").await.spent, usd("0.9"));
        shut(h).await;
    });
}

fn read_alerts(path: &Path) -> Vec<serde_json::Value> {
    match std::fs::read_to_string(path) {
        Ok(s) => s
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn alerts_fire_once_each_per_period_and_persist() {
    run(async {
        let w = World::new();
        let file = w.dir.path().join("alerts.jsonl");
        let cmd = vec![
            "sh".to_owned(),
            "-c".to_owned(),
            format!("cat >> '{}'", file.display()),
        ];
        let sec = BudgetSection {
            alert_thresholds: vec![50, 80, 100],
            alert_command: Some(cmd),
            keep_cost_history_days: None,
        };
        let agents = || vec![(name("a"), day("1")), (name("quiet"), None)];
        let h = w.start_with(agents(), sec.clone());
        for cost in ["0.55", "0.3", "0.01", "0.2"] {
            spend(&h, "a", "0", cost).await;
            spend(&h, "quiet", "0", cost).await;
        }
        assert!(h.reserve(&name("a"), Micros::ZERO).await.is_err());
        h.flush_alerts().await;
        let got = read_alerts(&file);
        let fired: Vec<(u64, i64)> = got
            .iter()
            .map(|v| {
                (
                    v["threshold_percent"].as_u64().unwrap(),
                    v["spent_micros"].as_i64().unwrap(),
                )
            })
            .collect();
        assert_eq!(fired, vec![(50, 550_000), (80, 850_000), (100, 1_060_000)]);
        let first = &got[0];
        assert_eq!(first["kind"], "budget_alert");
        assert_eq!(first["agent"], "a");
        assert_eq!(first["limit_micros"], 1_000_000);
        assert_eq!(first["period"], "day");
        assert_eq!(first["period_start"], 1_709_164_800u64);
        assert_eq!(first["at"], T0_MS / 1000);
        assert_eq!(info(&h, "a").await.alerts_fired, vec![50, 80, 100]);

        // A restart in the same period (which re-checks every threshold) does
        // not fire them again.
        shut(h).await;
        let h = w.start_with(agents(), sec.clone());
        h.flush_alerts().await;
        assert_eq!(read_alerts(&file).len(), 3);
        assert_eq!(info(&h, "a").await.alerts_fired, vec![50, 80, 100]);

        // A new day re-arms them.
        w.clock.set(MAR_1_MS + 1000);
        assert!(info(&h, "a").await.alerts_fired.is_empty());
        spend(&h, "a", "0", "0.6").await;
        h.flush_alerts().await;
        let got = read_alerts(&file);
        assert_eq!(got.len(), 4);
        assert_eq!(
            (
                got[3]["threshold_percent"].as_u64(),
                got[3]["period_start"].as_u64()
            ),
            (Some(50), Some(MAR_1_MS / 1000))
        );

        // Raising the limit re-arms what is no longer crossed; lowering it fires at once.
        h.set(name("a"), usd("2"), None).await.unwrap();
        assert!(info(&h, "a").await.alerts_fired.is_empty());
        h.set(name("a"), usd("0.7"), None).await.unwrap();
        h.flush_alerts().await;
        let th: Vec<u64> = read_alerts(&file)
            .iter()
            .skip(4)
            .map(|v| v["threshold_percent"].as_u64().unwrap())
            .collect();
        assert_eq!(th, vec![50, 80]);
        shut(h).await;
    });
}

#[test]
fn set_persists_until_the_configured_budget_changes() {
    run(async {
        let w = World::new();
        let h = w.start(vec![(name("a"), day("1"))]);
        spend(&h, "a", "0", "0.4").await;
        let i = h.set(name("a"), usd("0.5"), None).await.unwrap();
        assert_eq!(
            (i.limit, i.period, i.overridden, i.remaining),
            (Some(usd("0.5")), BudgetPeriod::Day, true, Some(usd("0.1")))
        );
        assert!(h.reserve(&name("a"), usd("0.2")).await.is_err());
        // Reload with the same config: the override stays.
        h.apply_config(vec![(name("a"), day("1"))], section()).await;
        assert!(info(&h, "a").await.overridden);
        shut(h).await;

        // Restart with the same config: still overridden.
        let h = w.start(vec![(name("a"), day("1"))]);
        let i = info(&h, "a").await;
        assert_eq!(
            (i.limit, i.overridden, i.spent),
            (Some(usd("0.5")), true, usd("0.4"))
        );
        // The config's budget changes: the config wins.
        h.apply_config(vec![(name("a"), day("3"))], section()).await;
        let i = info(&h, "a").await;
        assert_eq!((i.limit, i.overridden), (Some(usd("3")), false));
        h.set(name("a"), usd("0.5"), Some(BudgetPeriod::Month))
            .await
            .unwrap();
        shut(h).await;

        // Changed in the file while the daemon was down: the config wins at start.
        let h = w.start(vec![(name("a"), day("2"))]);
        let i = info(&h, "a").await;
        assert_eq!(
            (i.limit, i.period, i.overridden),
            (Some(usd("2")), BudgetPeriod::Day, false)
        );
        assert!(matches!(
            h.set(name("ghost"), usd("1"), None).await,
            Err(BudgetError::UnknownAgent(_))
        ));
        assert!(matches!(
            h.set(name("a"), Micros(-1), None).await,
            Err(BudgetError::NegativeLimit(_))
        ));
        shut(h).await;
    });
}

#[test]
fn set_can_change_the_period_with_the_right_spend() {
    run(async {
        let w = World::new();
        let h = w.start(vec![(name("a"), day("1"))]);
        spend(&h, "a", "0", "0.3").await;
        w.clock.advance(DAY_MS); // March 1st: a new day and a new month.
        spend(&h, "a", "0", "0.2").await;
        w.clock.advance(DAY_MS); // March 2nd.
        spend(&h, "a", "0", "0.1").await;
        assert_eq!(info(&h, "a").await.spent, usd("0.1"));
        let i = h
            .set(name("a"), usd("5"), Some(BudgetPeriod::Month))
            .await
            .unwrap();
        assert_eq!(
            (i.spent, i.calls, i.period_start),
            (usd("0.3"), 2, MAR_1_MS / 1000)
        );
        let i = h
            .set(name("a"), usd("5"), Some(BudgetPeriod::Total))
            .await
            .unwrap();
        assert_eq!((i.spent, i.period_end), (usd("0.6"), None));
        shut(h).await;
    });
}

#[test]
fn reset_zeroes_the_period_and_keeps_history() {
    run(async {
        let w = World::new();
        let h = w.start(vec![(name("a"), day("1"))]);
        spend(&h, "a", "0", "0.6").await;
        assert_eq!(info(&h, "a").await.alerts_fired, vec![50]);
        let i = h.reset(name("a")).await.unwrap();
        assert_eq!(
            (i.spent, i.calls, i.alerts_fired.len()),
            (Micros::ZERO, 0, 0)
        );
        assert!(h.reserve(&name("a"), usd("1")).await.is_ok());
        let c = costs(&h, CostsBy::Agent, None).await;
        assert_eq!(c.total, usd("0.6"), "history stays");
        assert!(matches!(
            h.reset(name("ghost")).await,
            Err(BudgetError::UnknownAgent(_))
        ));
        shut(h).await;
        let store = Store::open(w.dir.path()).unwrap();
        let ev = persist::read_events(&store).unwrap();
        let StoredEvent::Reset(r) = &ev[1].1 else {
            panic!("{ev:?}")
        };
        assert_eq!((r.spent_before, r.period), (usd("0.6"), BudgetPeriod::Day));
        drop(store);
        let h = w.start(vec![(name("a"), day("1"))]);
        assert_eq!(
            info(&h, "a").await.spent,
            Micros::ZERO,
            "the reset is durable"
        );
        shut(h).await;
    });
}

#[test]
fn costs_group_and_filter() {
    run(async {
        let w = World::new();
        let h = w.start(vec![(name("a"), None), (name("b"), None)]);
        let mk = |agent: &str,
                  provider: &str,
                  model: &str,
                  tag: Option<&str>,
                  cost: &str,
                  at_ms: u64,
                  estimated: bool| {
            CostRecord {
                agent: name(agent),
                provider: provider.into(),
                model: model.into(),
                tag: tag.map(Into::into),
                usage: Usage {
                    input_tokens: 10,
                    output_tokens: 5,
                    cache_read_tokens: 3,
                    cache_write_tokens: 2,
                    reasoning_tokens: 1,
                    estimated,
                    ..Usage::default()
                },
                cost: usd(cost),
                at_ms,
            }
        };
        let records = [
            mk(
                "a",
                "openai",
                "gpt-4o",
                Some("search"),
                "1",
                1_000_000,
                false,
            ),
            mk("a", "openai", "gpt-4o-mini", None, "0.25", 2_000_000, true),
            mk(
                "b",
                "anthropic",
                "claude-sonnet-4-5",
                Some("search"),
                "2",
                3_000_000,
                false,
            ),
            mk(
                "b",
                "openai",
                "gpt-4o",
                Some("write"),
                "0.5",
                4_000_000,
                false,
            ),
        ];
        for r in records {
            let res = h.reserve(&r.agent, Micros::ZERO).await.unwrap();
            h.settle(res, r).await.unwrap();
        }
        let q = |by, since, agent: Option<&str>| {
            let (h, agent) = (h.clone(), agent.map(name));
            async move { h.costs(CostsRequest { by, since, agent }).await.unwrap() }
        };
        let keys = |c: &CostsReport| {
            c.rows
                .iter()
                .map(|r| (r.key.clone(), r.cost, r.calls))
                .collect::<Vec<_>>()
        };

        let by_agent = q(CostsBy::Agent, None, None).await;
        assert_eq!(
            keys(&by_agent),
            vec![("b".into(), usd("2.5"), 2), ("a".into(), usd("1.25"), 2)]
        );
        assert_eq!(by_agent.total, usd("3.75"));
        let a = &by_agent.rows[1];
        assert_eq!(
            (
                a.input_tokens,
                a.output_tokens,
                a.cache_read_tokens,
                a.cache_write_tokens,
                a.reasoning_tokens,
                a.estimated_calls
            ),
            (20, 10, 6, 4, 2, 1)
        );
        assert_eq!(
            keys(&q(CostsBy::Model, None, None).await),
            vec![
                ("anthropic/claude-sonnet-4-5".into(), usd("2"), 1),
                ("openai/gpt-4o".into(), usd("1.5"), 2),
                ("openai/gpt-4o-mini".into(), usd("0.25"), 1),
            ]
        );
        assert_eq!(
            keys(&q(CostsBy::Provider, None, None).await),
            vec![
                ("anthropic".into(), usd("2"), 1),
                ("openai".into(), usd("1.75"), 3)
            ]
        );
        assert_eq!(
            keys(&q(CostsBy::Tag, None, None).await),
            vec![
                ("search".into(), usd("3"), 2),
                ("write".into(), usd("0.5"), 1),
                ("-".into(), usd("0.25"), 1)
            ]
        );
        let since = q(CostsBy::Agent, Some(2000), None).await;
        assert_eq!((since.total, since.since), (usd("2.75"), Some(2000)));
        let only_a = q(CostsBy::Tag, Some(2000), Some("a")).await;
        assert_eq!(keys(&only_a), vec![("-".into(), usd("0.25"), 1)]);
        let none = q(CostsBy::Agent, Some(10_000), None).await;
        assert!(none.rows.is_empty() && none.total == Micros::ZERO);
        shut(h).await;
    });
}

#[test]
fn on_exhausted_stop_calls_back_once_per_period() {
    run(async {
        let w = World::new();
        let h = w.start(vec![
            (name("a"), spec("1", BudgetPeriod::Day, OnExhausted::Stop)),
            (name("r"), day("1")),
        ]);
        let held = h.reserve(&name("a"), usd("0.8")).await.unwrap();
        let e = h.reserve(&name("a"), usd("0.3")).await.unwrap_err();
        assert!(
            e.to_string()
                .ends_with("the agent is being stopped (on_exhausted = \"stop\")"),
            "{e}"
        );
        for _ in 0..5 {
            assert!(h.reserve(&name("a"), usd("0.3")).await.is_err());
        }
        assert_eq!(w.stops(), 1);
        assert_eq!(w.stops.lock().unwrap()[0], name("a"));
        // on_exhausted = refuse never calls back.
        assert!(h.reserve(&name("r"), usd("2")).await.is_err());
        assert_eq!(w.stops(), 1);
        // A new period: exhausted again, stopped again.
        drop(held);
        w.clock.set(MAR_1_MS);
        spend(&h, "a", "1", "1").await;
        assert!(h.reserve(&name("a"), usd("0.01")).await.is_err());
        assert!(h.reserve(&name("a"), usd("0.01")).await.is_err());
        assert_eq!(w.stops(), 2);
        // A reset re-arms it as well.
        h.reset(name("a")).await.unwrap();
        spend(&h, "a", "1", "1").await;
        assert!(h.reserve(&name("a"), usd("0.01")).await.is_err());
        assert_eq!(w.stops(), 3);
        shut(h).await;
    });
}

#[test]
fn reload_adds_and_removes_agents_and_close_fails_closed() {
    run(async {
        let w = World::new();
        let h = w.start(vec![(name("a"), day("1"))]);
        spend(&h, "a", "0", "0.5").await;
        h.apply_config(vec![(name("b"), day("2"))], section()).await;
        let all = h.show(None).await.unwrap();
        assert_eq!(
            all.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
            vec!["b"]
        );
        // Back again the same day: its spend is still there.
        h.apply_config(
            vec![(name("a"), day("1")), (name("b"), day("2"))],
            section(),
        )
        .await;
        assert_eq!(info(&h, "a").await.spent, usd("0.5"));
        let r = h.reserve(&name("a"), usd("0.1")).await.unwrap();
        h.close().await;
        assert_eq!(
            h.reserve(&name("a"), Micros(1)).await.unwrap_err(),
            Refusal::Unavailable
        );
        assert!(matches!(
            h.settle(r, record("a", "0.1")).await,
            Err(BudgetError::Unavailable)
        ));
        assert_eq!(h.remaining(&name("a")).await, Some(Micros::ZERO));
        drop(h);
        // The writer released the file.
        Store::open(w.dir.path()).unwrap();
    });
}

// ---------------------------------------------------------------- benchmark

/// `cargo test --release -p ironcaged budget::tests::bench -- --ignored --nocapture`
/// (set `IRONCAGE_BENCH_DIR` to put the database on a particular disk).
#[test]
#[ignore = "benchmark; prints figures"]
fn bench_reserve_settle() {
    use std::time::{Duration, Instant};
    fn pct(v: &mut [Duration], p: f64) -> Duration {
        v.sort_unstable();
        v[((v.len() as f64 - 1.0) * p) as usize]
    }
    let base = std::env::var("IRONCAGE_BENCH_DIR").ok();
    let dir = match &base {
        Some(b) => tempfile::tempdir_in(b).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    println!("database in {}", dir.path().display());
    // Production threading: the actor on the System thread, callers on a
    // two-worker tokio runtime underneath.
    let system = actix_rt::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    });
    let path = dir.path().to_owned();
    system.block_on(async move {
        let store = Arc::new(Store::open(&path).unwrap());
        let h = BudgetHandle::start(
            store,
            vec![(name("a"), day("1000000")), (name("u"), None)],
            section(),
            Arc::new(SystemClock),
            Arc::new(|_| {}),
        )
        .unwrap();

        // 1. reserve + release (drop): the per-request path without durability.
        let n = 200_000;
        let h1 = h.clone();
        let (elapsed, mut lat) = tokio::spawn(async move {
            let mut lat = Vec::with_capacity(n);
            let t = Instant::now();
            for _ in 0..n {
                let s = Instant::now();
                let r = h1.reserve(&name("a"), Micros(1000)).await.unwrap();
                lat.push(s.elapsed());
                drop(r);
            }
            (t.elapsed(), lat)
        })
        .await
        .unwrap();
        println!(
            "reserve+release, 1 caller: {:.0} round trips/s; reserve latency p50 {:?} p99 {:?}",
            n as f64 / elapsed.as_secs_f64(),
            pct(&mut lat, 0.5),
            pct(&mut lat, 0.99)
        );

        // 2. reserve + settle awaited to durability, C concurrent callers.
        for c in [1usize, 16, 64, 256] {
            let per = (4000 / c).max(20);
            let before = h.writer_stats();
            let t = Instant::now();
            let tasks: Vec<_> = (0..c)
                .map(|_| {
                    let h = h.clone();
                    tokio::spawn(async move {
                        let mut reserve = Vec::with_capacity(per);
                        let mut durable = Vec::with_capacity(per);
                        for _ in 0..per {
                            let s = Instant::now();
                            let r = h.reserve(&name("a"), Micros(1000)).await.unwrap();
                            let s2 = Instant::now();
                            reserve.push(s2 - s);
                            h.settle(r, record("a", "0.0005")).await.unwrap();
                            durable.push(s2.elapsed());
                        }
                        (reserve, durable)
                    })
                })
                .collect();
            let mut reserve = Vec::new();
            let mut durable = Vec::new();
            for t in tasks {
                let (r, d) = t.await.unwrap();
                reserve.extend(r);
                durable.extend(d);
            }
            let el = t.elapsed();
            let after = h.writer_stats();
            let commits = after.commits - before.commits;
            let events = after.events - before.events;
            println!(
                "reserve+settle(durable), {c:>3} concurrent: {:>7.0} calls/s; settle-to-durable p50 {:?} p99 {:?}; reserve p50 {:?} p99 {:?}; {commits} commits, {:.1} events/commit",
                (c * per) as f64 / el.as_secs_f64(),
                pct(&mut durable, 0.5),
                pct(&mut durable, 0.99),
                pct(&mut reserve, 0.5),
                pct(&mut reserve, 0.99),
                events as f64 / commits.max(1) as f64
            );
        }

        // 3. The gateway's shape at 2,000 req/s: reserve on the request path,
        // settle spawned (not awaited by the response).
        let rate = 2000u64;
        let total = 10_000u64;
        let t = Instant::now();
        let mut lat = Vec::with_capacity(total as usize);
        let mut settles = Vec::with_capacity(total as usize);
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
        for _ in 0..total {
            tick.tick().await;
            let h = h.clone();
            settles.push(tokio::spawn(async move {
                let s = Instant::now();
                let r = h.reserve(&name("a"), Micros(1000)).await.unwrap();
                let took = s.elapsed();
                let settle = h.clone();
                let done = tokio::spawn(async move { settle.settle(r, record("a", "0.0005")).await.unwrap() });
                (took, done)
            }));
        }
        for s in settles {
            let (took, done) = s.await.unwrap();
            lat.push(took);
            done.await.unwrap();
        }
        println!(
            "paced {rate} req/s for {:?}: reserve p50 {:?} p99 {:?}",
            t.elapsed(),
            pct(&mut lat, 0.5),
            pct(&mut lat, 0.99)
        );
        h.close().await;
    });
}

#[test]
fn costs_since_seeks_and_misses_no_event_out_of_time_order() {
    run(async {
        let w = World::new();
        let h = w.start(vec![(name("a"), None)]);
        // 300 calls ten minutes apart; every seventh started 20 hours before
        // it settled (a long call, or a clock set back), within the seek's
        // slack; and a reset in the middle.
        let mut calls = Vec::new();
        for i in 0..300u64 {
            let mut at_ms = T0_MS + i * 600_000;
            if i % 7 == 3 {
                at_ms -= 20 * 3_600_000;
            }
            let mut r = record("a", "0");
            r.cost = Micros(i as i64 + 1);
            r.at_ms = at_ms;
            let res = h.reserve(&name("a"), Micros::ZERO).await.unwrap();
            h.settle(res, r).await.unwrap();
            calls.push((at_ms, Micros(i as i64 + 1)));
            if i == 150 {
                h.reset(name("a")).await.unwrap();
            }
        }
        let first_s = (T0_MS - DAY_MS) / 1000;
        for since in (first_s..first_s + 3 * 86_400).step_by(1_800) {
            let want: Micros = calls
                .iter()
                .filter(|(at, _)| *at >= since * 1000)
                .map(|(_, c)| *c)
                .sum();
            let n = calls.iter().filter(|(at, _)| *at >= since * 1000).count() as u64;
            let got = costs(&h, CostsBy::Agent, Some(since)).await;
            assert_eq!(got.total, want, "since {since}");
            assert_eq!(got.rows.first().map_or(0, |r| r.calls), n, "since {since}");
        }
        shut(h).await;
    });
}

/// `ironctl costs` over a long history: `IRONCAGE_BENCH_EVENTS` calls (default
/// 1,000,000), one per second, then the whole history, the last day and the
/// last hour, best of three each.
#[test]
#[ignore = "benchmark; prints figures"]
fn bench_costs() {
    use std::time::{Duration, Instant};
    let n: u64 = std::env::var("IRONCAGE_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    run(async move {
        let w = World::new();
        let h = w.start(vec![(name("a"), None)]);
        let t = Instant::now();
        for i in 0..n {
            let mut r = record("a", "0.001");
            r.at_ms = T0_MS + i * 1000;
            r.model = format!("gpt-4o-{}", i % 8);
            let res = h.reserve(&name("a"), Micros::ZERO).await.unwrap();
            h.settle_detached(res, r);
        }
        h.flush().await.unwrap();
        println!("{n} events written in {:.1?}", t.elapsed());
        let end_s = (T0_MS + n * 1000) / 1000;
        for (what, since) in [
            ("all history", None),
            ("--since 1 day", Some(end_s - 86_400)),
            ("--since 1 hour", Some(end_s - 3_600)),
        ] {
            let mut best = Duration::MAX;
            let mut calls = 0;
            for _ in 0..3 {
                let t = Instant::now();
                let c = costs(&h, CostsBy::Model, since).await;
                best = best.min(t.elapsed());
                calls = c.rows.iter().map(|r| r.calls).sum::<u64>();
            }
            println!("costs {what:<15} {calls:>9} calls  {best:>10.1?}");
        }
        shut(h).await;
    });
}

#[test]
fn cost_history_past_what_is_kept_is_pruned_and_budgets_keep_their_spend() {
    run(async {
        let w = World::new();
        let agents = || {
            vec![(
                name("a"),
                spec("100", BudgetPeriod::Total, OnExhausted::Refuse),
            )]
        };
        let h = w.start(agents());
        let calls = |h: &BudgetHandle| {
            let h = h.clone();
            async move {
                let c = costs(&h, CostsBy::Agent, None).await;
                (c.rows.first().map_or(0, |r| r.calls), c.total)
            }
        };
        // Ten calls a day apart, at the clock's time.
        for d in 0..10 {
            w.clock.set(T0_MS + d * DAY_MS);
            let mut r = record("a", "1");
            r.at_ms = T0_MS + d * DAY_MS;
            let res = h.reserve(&name("a"), Micros::ZERO).await.unwrap();
            h.settle(res, r).await.unwrap();
        }
        h.flush().await.unwrap();
        // Nothing configured: everything kept.
        assert_eq!(calls(&h).await, (10, usd("10")));
        // Reloaded with two days, an hour on: the next commit prunes what is
        // older than two days plus the seek's day of slack (days 0-6 of
        // 0-9; day 7 is kept as slack).
        h.apply_config(
            agents(),
            BudgetSection {
                keep_cost_history_days: Some(2),
                ..section()
            },
        )
        .await;
        w.clock.advance(3_600_000);
        spend(&h, "a", "1", "1").await;
        h.flush().await.unwrap();
        assert_eq!(calls(&h).await, (4, usd("4")));
        // The budget is the agents' rows, not the history.
        assert_eq!(info(&h, "a").await.spent, usd("11"));
        shut(h).await;
        let h = w.start(agents());
        assert_eq!(info(&h, "a").await.spent, usd("11"));
        assert_eq!(calls(&h).await, (4, usd("4")));
        shut(h).await;
    });
}

/// Replaces the events table by one of another type (`broken`), so that every
/// commit carrying a settle fails as it would on a full disk, or puts the
/// right one back (empty: the rows before the break go with it).
fn retype_events(store: &Store, broken: bool) {
    let right = redb::TableDefinition::<u64, &[u8]>::new("budget_events");
    let wrong = redb::TableDefinition::<&str, &str>::new("budget_events");
    let txn = store.begin_write().unwrap();
    if broken {
        txn.delete_table(right).unwrap();
        txn.open_table(wrong).unwrap();
    } else {
        txn.delete_table(wrong).unwrap();
        txn.open_table(right).unwrap();
    }
    txn.commit().unwrap();
}

/// The ledger on `store` (the test keeps it to tamper with), agent `a` with
/// $10 a day.
fn start_on(store: &Arc<Store>, w: &World) -> BudgetHandle {
    BudgetHandle::start(
        store.clone(),
        vec![(name("a"), day("10"))],
        section(),
        w.clock.clone(),
        Arc::new(|_| {}),
    )
    .unwrap()
}

/// Agent `a` ($10 a day) with $0.50 spent durably, then the events table
/// broken ([`retype_events`]); the store is returned to repair it.
async fn broken_after_one_spend(w: &World) -> (Arc<Store>, BudgetHandle) {
    let store = Arc::new(Store::open(w.dir.path()).unwrap());
    let h = start_on(&store, w);
    spend(&h, "a", "1", "0.5").await;
    retype_events(&store, true);
    (store, h)
}

#[test]
fn settles_whose_commit_fails_are_held_and_written_by_the_next_commit() {
    run(async {
        let w = World::new();
        let (store, h) = broken_after_one_spend(&w).await;
        for _ in 0..3 {
            let r = h.reserve(&name("a"), usd("1")).await.unwrap();
            let e = h.settle(r, record("a", "0.25")).await.unwrap_err();
            assert!(matches!(e, BudgetError::NotDurable { .. }), "{e}");
        }
        assert!(h.flush().await.is_err());
        // Not durable, but held against the budget all the same.
        let a = info(&h, "a").await;
        assert_eq!(
            (a.spent, a.reserved, a.remaining),
            (usd("0.5"), usd("0.75"), Some(usd("8.75")))
        );
        // Once a commit can succeed, the held settles are written first, at
        // the next retry (a flush before it is due is held and told so).
        retype_events(&store, false);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while h.flush().await.is_err() {
            assert!(std::time::Instant::now() < deadline, "never retried");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let a = info(&h, "a").await;
        assert_eq!(
            (a.spent, a.reserved, a.calls),
            (usd("1.25"), Micros::ZERO, 4)
        );
        let costs = costs(&h, CostsBy::Agent, None).await;
        assert_eq!((costs.rows[0].calls, costs.total), (3, usd("0.75")));
        shut(h).await;
        drop(store);
        // And they survive a restart.
        let h = w.start(vec![(name("a"), day("10"))]);
        let a = info(&h, "a").await;
        assert_eq!((a.spent, a.calls), (usd("1.25"), 4));
        shut(h).await;
    });
}

#[test]
fn writes_held_at_shutdown_get_one_last_try() {
    run(async {
        let w = World::new();
        let (store, h) = broken_after_one_spend(&w).await;
        let r = h.reserve(&name("a"), usd("1")).await.unwrap();
        assert!(h.settle(r, record("a", "0.25")).await.is_err());
        retype_events(&store, false);
        // No commit after the repair but the shutdown's own.
        shut(h).await;
        drop(store);
        let h = w.start(vec![(name("a"), day("10"))]);
        assert_eq!(info(&h, "a").await.spent, usd("0.75"));
        shut(h).await;
    });
}

/// `budget set`/`reset` with their audit entries: the ledger and the trail
/// share one store, and each change commits with its entry.
mod audited {
    use super::*;
    use crate::audit::{Actor, Draft};
    use crate::secrets::Secrets;
    use ironcage_shared::protocol::AuditOutcome;

    fn draft(action: &str) -> Draft {
        Draft::new(
            Actor::peer(
                0,
                Some(ironcage_shared::protocol::Role::Admin),
                "uid 0".into(),
            ),
            action,
            "a",
            AuditOutcome::Ok,
        )
        .detail("test change")
    }

    /// The durable override of agent `a`, read from the file.
    fn stored_override(store: &Store) -> Option<persist::Override> {
        let txn = store.begin_read().unwrap();
        let t = txn.open_table(persist::AGENTS).unwrap();
        let row: persist::AgentRow = postcard::from_bytes(t.get("a").unwrap()?.value()).unwrap();
        row.override_
    }

    fn start(store: &Arc<Store>, w: &World) -> (BudgetHandle, Secrets) {
        let secrets = Secrets::open(store.clone(), None, 3).unwrap();
        let h = start_on(store, w);
        h.set_audit(secrets.audit().clone());
        (h, secrets)
    }

    #[test]
    fn set_and_reset_commit_with_their_entry_before_the_reply() {
        run(async {
            let w = World::new();
            let store = Arc::new(Store::open(w.dir.path()).unwrap());
            let (h, secrets) = start(&store, &w);
            let log = secrets.audit().log().clone();
            let before = log.last_seq();
            let commits = h.writer_stats().commits;
            h.set_audited(name("a"), usd("3"), None, draft("budget set"))
                .await
                .unwrap();
            // Durable on return: the entry and the override are in the file.
            let e = log.entries(Some(before), 10).unwrap();
            assert_eq!(e.len(), 1, "{e:?}");
            assert_eq!(
                (e[0].action.as_str(), e[0].outcome),
                ("budget set", AuditOutcome::Ok)
            );
            assert_eq!(stored_override(&store).unwrap().limit, usd("3"));
            assert_eq!(h.writer_stats().commits, commits + 1);

            spend(&h, "a", "1", "1").await;
            assert_eq!(info(&h, "a").await.spent, usd("1"));
            let before = log.last_seq();
            h.reset_audited(name("a"), draft("budget reset"))
                .await
                .unwrap();
            let e = log.entries(Some(before), 10).unwrap();
            assert_eq!(e.len(), 1, "{e:?}");
            assert_eq!(e[0].action, "budget reset");
            let resets = persist::read_events(&store)
                .unwrap()
                .into_iter()
                .filter(|(_, ev)| matches!(ev, StoredEvent::Reset(_)))
                .count();
            assert_eq!(resets, 1);
            assert!(log.verify().unwrap().first_bad.is_none());
        });
    }

    /// The durable row of agent `a`.
    fn stored_row(store: &Store) -> persist::AgentRow {
        let txn = store.begin_read().unwrap();
        let t = txn.open_table(persist::AGENTS).unwrap();
        postcard::from_bytes(t.get("a").unwrap().unwrap().value()).unwrap()
    }

    /// Whether a `reset` event reached the file.
    fn has_reset(store: &Store) -> bool {
        persist::read_events(store)
            .unwrap()
            .iter()
            .any(|(_, ev)| matches!(ev, StoredEvent::Reset(_)))
    }

    /// Makes appending to the trail fail: the `audit` table replaced by one of
    /// another type (the trail's own writes fail the same way). Settles,
    /// which write no audit entry, still commit.
    fn break_trail(store: &Store) {
        let txn = store.begin_write().unwrap();
        txn.delete_table(redb::TableDefinition::<u64, &[u8]>::new("audit"))
            .unwrap();
        txn.open_table(redb::TableDefinition::<&str, &str>::new("audit"))
            .unwrap();
        txn.commit().unwrap();
    }

    #[test]
    fn when_the_entry_cannot_be_written_the_change_is_not_committed_either() {
        run(async {
            let w = World::new();
            let store = Arc::new(Store::open(w.dir.path()).unwrap());
            let (h, secrets) = start(&store, &w);
            let log = secrets.audit().log().clone();
            break_trail(&store);
            let last = log.last_seq();

            let e = h
                .set_audited(name("a"), usd("3"), None, draft("budget set"))
                .await
                .unwrap_err();
            assert!(matches!(e, BudgetError::NotDurable { .. }), "{e}");
            // The row write shared the failed transaction: nothing of the
            // change reached the file.
            assert_eq!(stored_override(&store), None);
            assert_eq!(log.last_seq(), last);
            // Nor is it in force: the operator was told it failed.
            assert_eq!(info(&h, "a").await.limit, Some(usd("10")));
            // A settle committed after it writes the agent's row, which must
            // not carry the failed change either.
            spend(&h, "a", "1", "1").await;
            assert_eq!(stored_override(&store), None);
            assert!(
                h.reset_audited(name("a"), draft("budget reset"))
                    .await
                    .is_err()
            );
            assert!(!has_reset(&store), "a reset event in the file");
        });
    }

    #[test]
    fn a_failed_set_is_taken_back_even_when_a_settle_queued_behind_it_committed() {
        run(async {
            let w = World::new();
            let store = Arc::new(Store::open(w.dir.path()).unwrap());
            let (h, _secrets) = start(&store, &w);
            break_trail(&store);
            let r = h.reserve(&name("a"), usd("1")).await.unwrap();
            // An open write transaction holds the writer back until both are
            // queued, the set first (join! polls in order, and `settle`
            // books when called): the settle's row is taken while the
            // override is in force, and commits after the set failed.
            let hold = store.begin_write().unwrap();
            let (set, settled, ()) = tokio::join!(
                h.set_audited(name("a"), usd("3"), None, draft("budget set")),
                async { h.settle(r, record("a", "0.5")).await },
                async move { drop(hold) },
            );
            assert!(set.is_err());
            settled.unwrap();
            h.flush().await.unwrap();
            assert_eq!(stored_override(&store), None);
            let a = info(&h, "a").await;
            assert_eq!((a.limit, a.spent), (Some(usd("10")), usd("0.5")));
        });
    }

    #[test]
    fn a_failed_reset_gives_back_the_spend_it_zeroed() {
        run(async {
            let w = World::new();
            let store = Arc::new(Store::open(w.dir.path()).unwrap());
            let (h, _secrets) = start(&store, &w);
            spend(&h, "a", "1", "1").await;
            break_trail(&store);
            let r = h.reserve(&name("a"), usd("1")).await.unwrap();
            let hold = store.begin_write().unwrap();
            let (reset, settled, ()) = tokio::join!(
                h.reset_audited(name("a"), draft("budget reset")),
                async { h.settle(r, record("a", "0.5")).await },
                async move { drop(hold) },
            );
            assert!(matches!(reset, Err(BudgetError::NotDurable { .. })));
            settled.unwrap();
            h.flush().await.unwrap();
            // In memory and in the file: the spend before the failed reset
            // and the call settled after it.
            let a = info(&h, "a").await;
            assert_eq!(
                (a.spent, a.reserved, a.calls),
                (usd("1.5"), Micros::ZERO, 2)
            );
            let day = stored_row(&store).windows[super::super::period::index(BudgetPeriod::Day)];
            assert_eq!((day.spent, day.calls), (usd("1.5"), 2));
            assert!(!has_reset(&store), "a reset event in the file");
            // The budget still holds: 8.5 left of 10.
            assert!(h.reserve(&name("a"), usd("8.6")).await.is_err());
            h.reserve(&name("a"), usd("8.5")).await.unwrap();
        });
    }

    #[test]
    fn an_audited_change_without_a_trail_is_refused() {
        run(async {
            let w = World::new();
            let h = w.start(vec![(name("a"), day("10"))]);
            assert!(matches!(
                h.set_audited(name("a"), usd("3"), None, draft("budget set"))
                    .await,
                Err(BudgetError::Unavailable)
            ));
            assert_eq!(info(&h, "a").await.limit, Some(usd("10")));
        });
    }
}
