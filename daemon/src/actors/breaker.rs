//! Circuit breakers: one per (provider, model), shared by every agent.
//!
//! ```text
//!            N failures within the window            cooldown (or Retry-After) elapsed,
//!   closed ─────────────────────────────────► open ──────────────────────────────────► half-open
//!     ▲        (or one 429 with Retry-After)   ▲        the next call becomes the probe      │
//!     │                                        └──────────── probe failed ──────────────────┤
//!     └──────────────────────────────────────────────────── probe answered ─────────────────┘
//! ```
//!
//! What counts as a failure: HTTP 5xx (529 included), timeouts, connection
//! errors, a stream that dies (or reports an error) before its first event,
//! and a 429 without `Retry-After`. A 429 with `Retry-After` opens the circuit
//! for exactly that long. 401 and 403 never count: they mean a misconfigured
//! key, so they raise an operator alert instead (a `tracing` error, at most once
//! per breaker every [`AUTH_ALERT_INTERVAL`]). Other 4xx answers show the
//! provider is up.
//!
//! Who does what:
//! - The **check** on the request path ([`BreakerHandle::check`]) never waits:
//!   a read lock on the table of breakers and one atomic load tell whether the
//!   circuit is closed (pass), open (refuse), or due for its probe. Closed is
//!   the common case and costs well under a microsecond (see the `bench_`
//!   test in `tests.rs`).
//! - The **actor** owns every transition. Because it handles one message at a
//!   time, exactly one caller gets the half-open probe however many agents
//!   arrive at once, and failures reported concurrently are counted once each.
//!   It publishes each new state into the breaker's atomics, which the check
//!   reads.
//! - A [`Ticket`] is the right to make one upstream attempt. Finishing it with
//!   an [`Outcome`] records the figures (atomics, no message when the circuit
//!   is closed and the call succeeded) and, for failures and probes, waits until
//!   the actor has applied the transition, so the next call already sees it.
//!   A probe ticket dropped unfinished (the agent hung up) re-arms the probe.
//!
//! Times come from the injected [`Clock`], so tests move time without sleeping.
//! Every transition is a structured `tracing` event with target `breaker`.

mod actor;
mod cell;
mod machine;
#[cfg(test)]
mod tests;

use crate::actors::budget::Clock;
use crate::config::{BreakerSettings, Config};
use actix::prelude::*;
use actor::BreakerActor;
use cell::{Cell, Registry};
use ironcage_shared::protocol::{CircuitInfo, CircuitRef, CircuitState};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// 401/403 alerts for one breaker are logged at most this often.
pub const AUTH_ALERT_INTERVAL: Duration = Duration::from_secs(300);

/// Longest `Retry-After` honoured; a longer one holds the circuit this long.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Thresholds in effect: the `[breaker]` defaults and each provider's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BreakerConfig {
    pub default: BreakerSettings,
    pub providers: HashMap<String, BreakerSettings>,
}

impl BreakerConfig {
    pub fn from_config(config: &Config) -> Self {
        BreakerConfig {
            default: config.breaker,
            providers: config
                .providers
                .iter()
                .map(|p| (p.name.clone(), p.breaker))
                .collect(),
        }
    }

    pub fn for_provider(&self, provider: &str) -> BreakerSettings {
        self.providers
            .get(provider)
            .copied()
            .unwrap_or(self.default)
    }
}

/// How one upstream attempt ended, as far as its breaker is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The model answered (2xx; for a stream, its first event arrived).
    Success,
    /// The provider answered with a client error other than 401, 403 and 429
    /// (the request's fault): the provider is up. Not a failure.
    ClientError(u16),
    /// 401 or 403: a key problem. Not a failure; alerts the operator.
    AuthRejected(u16),
    /// HTTP 429: with `Retry-After`, opens the circuit for that long; without, a
    /// failure like any other.
    RateLimited { retry_after: Option<Duration> },
    /// 5xx, timeout, connection error, stream dead before its first event.
    /// The text says which, for `circuits list` and the logs.
    Failure(String),
}

impl Outcome {
    /// Whether it counts in the `failures` figure.
    pub fn is_failure(&self) -> bool {
        matches!(self, Outcome::Failure(_) | Outcome::RateLimited { .. })
    }
}

/// A call turned away by an open (or probing) circuit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub circuit: CircuitRef,
    /// `Open` or `HalfOpen` (a probe is in flight).
    pub state: CircuitState,
    /// Unix milliseconds from which it lets a probe through; `None` while a
    /// probe is in flight.
    pub next_probe_ms: Option<u64>,
}

impl Rejected {
    /// `circuit openai/gpt-4o is open (next probe in 42s)`, as of `now_ms`.
    pub fn describe(&self, now_ms: u64) -> String {
        match self.next_probe_ms {
            Some(at) => {
                let secs = at.saturating_sub(now_ms).div_ceil(1000);
                format!("circuit {} is open (next probe in {secs}s)", self.circuit)
            }
            None => format!(
                "circuit {} is half-open (a probe call is in flight)",
                self.circuit
            ),
        }
    }
}

/// What [`BreakerHandle::check`] found.
#[derive(Debug)]
pub enum Check {
    /// Closed: go ahead.
    Pass(Ticket),
    /// Open and its cooldown is over: ask for the probe with
    /// [`BreakerHandle::probe`] (only one caller will get it).
    ProbeDue,
    /// Open or probing.
    Refused(Rejected),
}

/// Errors of breaker operations, phrased for the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BreakerError {
    #[error(
        "no circuit {0}: no call has used that model yet; `ironctl circuits list` shows the known ones"
    )]
    NotFound(CircuitRef),
    #[error("the circuit breakers are not running (the daemon is shutting down)")]
    Unavailable,
}

/// What tickets share: the actor's address and the clock.
struct Inner {
    addr: Addr<BreakerActor>,
    clock: Arc<dyn Clock>,
    registry: Arc<Registry>,
}

/// Cheap, cloneable, `Send + Sync` access to the breakers from any thread.
#[derive(Clone)]
pub struct BreakerHandle {
    inner: Arc<Inner>,
}

impl fmt::Debug for BreakerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerHandle").finish_non_exhaustive()
    }
}

impl BreakerHandle {
    /// Starts the actor on the current actix System.
    pub fn start(config: BreakerConfig, clock: Arc<dyn Clock>) -> Self {
        let registry = Arc::new(Registry::default());
        let addr = BreakerActor::new(config, clock.clone(), registry.clone()).start();
        BreakerHandle {
            inner: Arc::new(Inner {
                addr,
                clock,
                registry,
            }),
        }
    }

    /// Records every state change on the audit trail from now on.
    pub fn set_audit(&self, audit: crate::audit::AuditHandle) {
        let _ = self.inner.registry.audit.set(audit);
    }

    /// The request-path check: never waits. Creates the breaker (closed) the
    /// first time a model is seen.
    pub fn check(&self, provider: &str, model: &str) -> Check {
        let cell = self.inner.registry.get_or_insert(provider, model);
        let (state, generation) = cell.load();
        match state {
            CircuitState::Closed => {
                Check::Pass(Ticket::new(self.inner.clone(), cell, generation, false))
            }
            CircuitState::HalfOpen => {
                cell.stats.rejected();
                Check::Refused(cell.rejected(CircuitState::HalfOpen, None))
            }
            CircuitState::Open => {
                let at = cell.next_probe_ms();
                if self.inner.clock.now_ms() >= at {
                    Check::ProbeDue
                } else {
                    cell.stats.rejected();
                    Check::Refused(cell.rejected(CircuitState::Open, Some(at)))
                }
            }
        }
    }

    /// Asks the actor for the probe of a circuit whose cooldown is over. One
    /// caller gets it; the others are refused until it answers.
    pub async fn probe(&self, provider: &str, model: &str) -> Result<Ticket, Rejected> {
        let cell = self.inner.registry.get_or_insert(provider, model);
        let msg = actor::Acquire { cell: cell.clone() };
        match self.inner.addr.send(msg).await {
            Ok(Ok(grant)) => Ok(Ticket::new(
                self.inner.clone(),
                cell,
                grant.generation,
                grant.probe,
            )),
            Ok(Err(r)) => {
                cell.stats.rejected();
                Err(r)
            }
            Err(_) => {
                cell.stats.rejected();
                Err(cell.rejected(CircuitState::Open, None))
            }
        }
    }

    /// [`check`](Self::check), then [`probe`](Self::probe) when one is due.
    pub async fn admit(&self, provider: &str, model: &str) -> Result<Ticket, Rejected> {
        match self.check(provider, model) {
            Check::Pass(t) => Ok(t),
            Check::Refused(r) => Err(r),
            Check::ProbeDue => self.probe(provider, model).await,
        }
    }

    /// Every breaker, sorted by provider and model.
    pub async fn list(&self) -> Result<Vec<CircuitInfo>, BreakerError> {
        self.inner
            .addr
            .send(actor::List)
            .await
            .map_err(|_| BreakerError::Unavailable)
    }

    /// `ironctl circuits reset`: closes the circuit now and forgets its
    /// failures. Returns the state it had.
    pub async fn reset(&self, circuit: CircuitRef) -> Result<CircuitState, BreakerError> {
        self.inner
            .addr
            .send(actor::Reset(circuit))
            .await
            .map_err(|_| BreakerError::Unavailable)?
    }

    /// Config reload: new thresholds apply from the next transition; breakers
    /// of providers no longer configured are dropped.
    pub async fn apply_config(&self, config: BreakerConfig) {
        let _ = self.inner.addr.send(actor::ApplyConfig(config)).await;
    }

    /// The clock the breakers run on (Unix milliseconds).
    pub fn now_ms(&self) -> u64 {
        self.inner.clock.now_ms()
    }
}

/// The right to make one upstream attempt on one model. Finish it with the
/// attempt's [`Outcome`]; a probe ticket dropped unfinished re-arms the probe.
pub struct Ticket {
    inner: Arc<Inner>,
    cell: Arc<Cell>,
    generation: u64,
    probe: bool,
    started: Instant,
    finished: bool,
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket")
            .field("circuit", &self.cell.circuit())
            .field("generation", &self.generation)
            .field("probe", &self.probe)
            .finish()
    }
}

impl Ticket {
    fn new(inner: Arc<Inner>, cell: Arc<Cell>, generation: u64, probe: bool) -> Self {
        Ticket {
            inner,
            cell,
            generation,
            probe,
            started: Instant::now(),
            finished: false,
        }
    }

    /// Whether this attempt is the half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// Restarts the latency clock (call just before sending upstream).
    pub fn start_timer(&mut self) {
        self.started = Instant::now();
    }

    /// Records how the attempt ended. Returns once the breaker's state
    /// reflects it (immediately for a success on a closed circuit).
    pub async fn finish(mut self, outcome: Outcome) {
        self.finished = true;
        let elapsed = self.started.elapsed();
        self.cell.stats.record(&outcome, elapsed);
        if outcome == Outcome::Success && !self.probe {
            return;
        }
        let msg = actor::Report {
            cell: self.cell.clone(),
            generation: self.generation,
            probe: self.probe,
            outcome,
        };
        let _ = self.inner.addr.send(msg).await;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.probe && !self.finished {
            self.inner.addr.do_send(actor::Abandon {
                cell: self.cell.clone(),
                generation: self.generation,
            });
        }
    }
}

/// Reads `Retry-After` (or OpenAI's `retry-after-ms`) from a 429 answer, capped
/// at [`MAX_RETRY_AFTER`]. HTTP-date values are not honoured (`None`).
pub fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let d = if let Some(ms) = get("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        ms / 1000.0
    } else {
        get("retry-after").and_then(|v| v.parse::<f64>().ok())?
    };
    if !d.is_finite() || d < 0.0 {
        return None;
    }
    Some(Duration::from_secs_f64(
        d.min(MAX_RETRY_AFTER.as_secs_f64()),
    ))
}
