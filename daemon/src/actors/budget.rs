//! The budget ledger: reserve before a call, settle after, release on error.
//!
//! Money is integer [`Micros`]. Every agent has a ledger, budgeted or not
//! (unlimited agents are metered all the same). For one agent, at any instant:
//!
//! ```text
//! limit >= spent + pending + reserved        (checked on every reserve)
//!          │       │         └ worst cases held by calls in flight
//!          │       └ settled real costs queued for the disk, not yet durable
//!          └ durable spend of the current period (what operators see as "spent")
//! ```
//!
//! How a call flows:
//! 1. [`BudgetHandle::reserve`] checks the inequality and adds the worst case to
//!    `reserved` in one step under the ledger's lock, on the caller's own
//!    thread: concurrent calls cannot race past the budget, and the request
//!    path never waits for another thread. No disk access on this path.
//! 2. [`BudgetHandle::settle`] moves the reservation out of `reserved` and books
//!    the real cost (even above the reservation: estimates can be low) as
//!    `pending`, then queues the event for the writer thread.
//! 3. The writer thread commits everything queued in one redb transaction (group
//!    commit, [`redb::Durability::Immediate`]), then, under the same lock, moves
//!    the amounts from `pending` to `spent`, checks alert thresholds, and only
//!    then resolves the `settle` futures.
//! 4. A [`Reservation`] dropped unsettled (client gone, upstream error) releases
//!    its amount.
//! 5. A commit that fails does not drop its settles: they stay `pending`
//!    (held against the budget), their waiters are told they are not durable
//!    yet, and the writer holds the writes and commits them, ahead of
//!    anything newer, once a commit succeeds (tried every second, and once
//!    more at shutdown). A `budget set`/`reset` whose commit fails is taken
//!    back instead: its operator was told it failed. Limit: after an I/O
//!    error (a full disk) redb refuses every write until the database is
//!    reopened, so the held costs then last until the daemon is restarted
//!    (logged: free space, then restart) and are lost with it.
//!
//! Why a lock and not an actor: an actor put two thread hand-offs (and their
//! futex wake-ups) on every LLM call, which was most of the gateway's overhead.
//! The critical sections are a few arithmetic steps on one agent's ledger;
//! nothing blocking, no I/O and no callback runs under the lock.
//!
//! Periods (day, ISO week, month, total) roll over at UTC boundaries, read from
//! the injected [`Clock`]. Each ledger keeps a window per period kind, so a
//! change of period (`ironctl budget set --period`) takes effect at once with
//! the right spend.
//!
//! Overrides: `ironctl budget set` stores an override that survives restarts and
//! reloads **until the agent's configured budget (`budget_usd` or
//! `budget_period`) differs from what it was when the override was made**; then
//! the configuration wins and the override is dropped (logged). `budget reset`
//! zeroes the current period's spend and call count and re-arms alerts; it does
//! not touch overrides, and the spend history stays for `ironctl costs`.
//!
//! Threads: operations run on their callers' threads under the lock; redb
//! writes happen on a dedicated writer thread, `costs` reads on tokio's
//! blocking pool, alert commands on tokio tasks.
//!
//! Persistence layout is described in [`persist`].

mod alerts;
mod core;
mod ledger;
mod period;
pub mod persist;
#[cfg(test)]
mod tests;

use self::core::Core;
use crate::config::{BudgetSection, BudgetSpec, OnExhausted};
use crate::store::{Store, StoreError};
use ironcage_shared::AgentName;
use ironcage_shared::money::Micros;
use ironcage_shared::pricing::Usage;
use ironcage_shared::protocol::{BudgetInfo, BudgetPeriod, CostsReport, CostsRequest};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::oneshot;

/// Wall-clock time for the ledger, injected so tests can cross period
/// boundaries deterministically.
pub trait Clock: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// A clock that moves only when told to (tests).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(now_ms: u64) -> Self {
        ManualClock(AtomicU64::new(now_ms))
    }
    pub fn set(&self, now_ms: u64) {
        self.0.store(now_ms, Ordering::SeqCst);
    }
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// The real cost of one call, as the gateway measured it.
#[derive(Debug, Clone, PartialEq)]
pub struct CostRecord {
    pub agent: AgentName,
    pub provider: String,
    pub model: String,
    /// Cost-attribution tag (`iron_cage.tag(...)`), if any.
    pub tag: Option<String>,
    pub usage: Usage,
    pub cost: Micros,
    /// When the call happened (Unix milliseconds); `ironctl costs --since` filters on it.
    pub at_ms: u64,
}

/// Money held for one call in flight. Settle it with [`BudgetHandle::settle`];
/// dropping it unsettled releases the amount (client disconnect, upstream error).
pub struct Reservation {
    agent: AgentName,
    amount: Micros,
    /// `None` once settled or released.
    core: Option<Arc<Core>>,
}

impl Reservation {
    pub fn amount(&self) -> Micros {
        self.amount
    }
    pub fn agent(&self) -> &AgentName {
        &self.agent
    }
}

impl fmt::Debug for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation")
            .field("agent", &self.agent)
            .field("amount", &self.amount)
            .field("armed", &self.core.is_some())
            .finish()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(core) = self.core.take() {
            core.release(&self.agent, self.amount);
        }
    }
}

/// Why a call was not allowed to start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The budget cannot pay the worst case (the gateway answers HTTP 402).
    #[error("{0}")]
    Exhausted(Exhausted),
    /// The ledger is not running (the daemon is shutting down); fail closed
    /// (the gateway answers HTTP 503).
    #[error(
        "the budget ledger is not running (the daemon is shutting down); the call was not forwarded"
    )]
    Unavailable,
}

/// The figures of a refused call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exhausted {
    pub agent: AgentName,
    pub limit: Micros,
    pub period: BudgetPeriod,
    /// Durable spend this period.
    pub spent: Micros,
    /// Held by calls in flight plus settled costs not yet durable.
    pub reserved: Micros,
    /// The worst case this call asked for.
    pub requested: Micros,
    pub on_exhausted: OnExhausted,
}

impl fmt::Display for Exhausted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "agent {}'s {} budget of {} cannot cover this call (worst case {}): {} spent, {} reserved by calls in flight",
            self.agent,
            self.period.as_str(),
            self.limit,
            self.requested,
            self.spent,
            self.reserved
        )?;
        if self.on_exhausted == OnExhausted::Stop {
            f.write_str("; the agent is being stopped (on_exhausted = \"stop\")")?;
        }
        Ok(())
    }
}

/// Errors of ledger operations, phrased for the operator.
#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no agent named {0}; `ironctl agents list` shows the configured ones")]
    UnknownAgent(AgentName),
    #[error("a budget cannot be negative ({0})")]
    NegativeLimit(Micros),
    #[error("the budget ledger is not running (the daemon is shutting down)")]
    Unavailable,
    #[error("could not record budget data durably in {}: {reason}", path.display())]
    NotDurable { path: PathBuf, reason: String },
    #[error("the budget data in {} is unreadable ({what}): {reason}; restore the file from a backup", path.display())]
    Corrupt {
        path: PathBuf,
        what: String,
        reason: String,
    },
    #[error("cannot start the budget writer thread: {0}")]
    Thread(std::io::Error),
}

/// Counters of the writer thread, for benchmarks and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// redb transactions committed.
    pub commits: u64,
    /// Spend and reset events written.
    pub events: u64,
}

/// Cheap, cloneable, `Send + Sync` access to the ledger from any thread.
#[derive(Clone)]
pub struct BudgetHandle {
    core: Arc<Core>,
    store: Arc<Store>,
}

impl fmt::Debug for BudgetHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BudgetHandle")
            .field("store", &self.store.path())
            .finish_non_exhaustive()
    }
}

impl BudgetHandle {
    /// Loads persisted state (a blocking read, once, at start-up) and starts
    /// the writer thread. Call it within a tokio runtime: alert commands run
    /// as tasks on it.
    ///
    /// `on_exhausted_stop` is called on the refused caller's thread, at most
    /// once per agent and period, when a call of an agent with `on_exhausted
    /// = "stop"` is refused; it must not block (spawn the stop). It is not
    /// persisted: after a daemon restart, the first refused call stops the
    /// agent again.
    pub fn start(
        store: Arc<Store>,
        agents: Vec<(AgentName, Option<BudgetSpec>)>,
        section: BudgetSection,
        clock: Arc<dyn Clock>,
        on_exhausted_stop: Arc<dyn Fn(AgentName) + Send + Sync>,
    ) -> Result<Self, BudgetError> {
        let core = core::start(store.clone(), agents, section, clock, on_exhausted_stop)?;
        Ok(BudgetHandle { core, store })
    }

    /// Atomically reserves `worst_case` for one call, or refuses. Negative
    /// amounts count as zero. Agents the ledger does not know are metered as
    /// unlimited. Never waits for another thread.
    pub fn try_reserve(
        &self,
        agent: &AgentName,
        worst_case: Micros,
    ) -> Result<Reservation, Refusal> {
        let amount = Micros(worst_case.0.max(0));
        self.core.reserve(agent, amount)?;
        Ok(Reservation {
            agent: agent.clone(),
            amount,
            core: Some(self.core.clone()),
        })
    }

    /// [`Self::try_reserve`], for async callers.
    pub async fn reserve(
        &self,
        agent: &AgentName,
        worst_case: Micros,
    ) -> Result<Reservation, Refusal> {
        self.try_reserve(agent, worst_case)
    }

    /// Settles a reservation with the real cost (booked even when it exceeds the
    /// reservation). The cost is booked when this is *called*, not when the
    /// future is first polled, so `tokio::spawn(budget.settle(r, rec))` cannot
    /// lose it to a shutdown that overtakes the spawned task. The future
    /// resolves once the record is durable (group commit); dropping it does not
    /// undo the booking.
    pub fn settle(
        &self,
        mut r: Reservation,
        record: CostRecord,
    ) -> impl Future<Output = Result<(), BudgetError>> + Send + 'static {
        let rx = r.core.take().map(|core| {
            let (tx, rx) = oneshot::channel();
            core.settle(&r.agent, r.amount, record, Some(tx));
            rx
        });
        async move {
            match rx {
                Some(rx) => rx.await.unwrap_or(Err(BudgetError::Unavailable)),
                None => Err(BudgetError::Unavailable),
            }
        }
    }

    /// [`Self::settle`] for a caller that does not wait for durability (the
    /// gateway): booked now, committed with the next group; a failed commit
    /// is logged by the writer and the cost stays held against the budget.
    pub fn settle_detached(&self, mut r: Reservation, record: CostRecord) {
        if let Some(core) = r.core.take() {
            core.settle(&r.agent, r.amount, record, None);
        } else {
            tracing::error!(agent = %r.agent, "the budget ledger is closed; the cost of a call was not recorded");
        }
    }

    /// Books a cost that did not go through the gateway (`iron_cage.report_cost`
    /// from an agent's channel): no reservation, and booked even above the
    /// limit, since the money was already spent. Like [`Self::settle`], booked
    /// when called; the future resolves once the record is durable.
    pub fn book(
        &self,
        record: CostRecord,
    ) -> impl Future<Output = Result<(), BudgetError>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let agent = record.agent.clone();
        self.core.settle(&agent, Micros::ZERO, record, Some(tx));
        async move { rx.await.unwrap_or(Err(BudgetError::Unavailable)) }
    }

    /// Budgets of every configured agent (sorted by name), or of one.
    pub async fn show(&self, agent: Option<AgentName>) -> Result<Vec<BudgetInfo>, BudgetError> {
        self.core.show(agent)
    }

    /// `ironctl budget set`: overrides the agent's limit (and period, if given)
    /// until its configured budget changes. Resolves once durable.
    pub async fn set(
        &self,
        agent: AgentName,
        limit: Micros,
        period: Option<BudgetPeriod>,
    ) -> Result<BudgetInfo, BudgetError> {
        let (tx, rx) = oneshot::channel();
        self.core.set(agent, limit, period, None, tx);
        rx.await.unwrap_or(Err(BudgetError::Unavailable))
    }

    /// [`Self::set`] with `audit` committed in the same redb transaction as
    /// the change: both durable before this resolves, or neither. Fails
    /// ([`BudgetError::Unavailable`]) if no trail was given ([`Self::set_audit`]).
    pub async fn set_audited(
        &self,
        agent: AgentName,
        limit: Micros,
        period: Option<BudgetPeriod>,
        audit: crate::audit::Draft,
    ) -> Result<BudgetInfo, BudgetError> {
        let (tx, rx) = oneshot::channel();
        self.core.set(agent, limit, period, Some(audit), tx);
        rx.await.unwrap_or(Err(BudgetError::Unavailable))
    }

    /// [`Self::reset`] with `audit` committed in the same redb transaction
    /// as the change (see [`Self::set_audited`]).
    pub async fn reset_audited(
        &self,
        agent: AgentName,
        audit: crate::audit::Draft,
    ) -> Result<BudgetInfo, BudgetError> {
        let (tx, rx) = oneshot::channel();
        self.core.reset(agent, Some(audit), tx);
        rx.await.unwrap_or(Err(BudgetError::Unavailable))
    }

    /// `ironctl budget reset`: zeroes the current period's spend and re-arms its
    /// alerts (recorded as an event; the history stays). Resolves once durable.
    pub async fn reset(&self, agent: AgentName) -> Result<BudgetInfo, BudgetError> {
        let (tx, rx) = oneshot::channel();
        self.core.reset(agent, None, tx);
        rx.await.unwrap_or(Err(BudgetError::Unavailable))
    }

    /// `ironctl costs`: durable spend events aggregated as asked. Reads the
    /// database on tokio's blocking pool (a full scan of the event table).
    pub async fn costs(&self, req: CostsRequest) -> Result<CostsReport, BudgetError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || persist::costs(&store, &req))
            .await
            .map_err(|_| BudgetError::Unavailable)?
    }

    /// Config reload: new and removed agents, changed limits and periods,
    /// thresholds, alert command.
    pub async fn apply_config(
        &self,
        agents: Vec<(AgentName, Option<BudgetSpec>)>,
        section: BudgetSection,
    ) {
        self.core.apply_config(agents, section);
    }

    /// `limit - spent - pending - reserved`, floored at zero; `None` when the
    /// agent has no budget. Zero when the ledger is not running (fail closed).
    pub async fn remaining(&self, agent: &AgentName) -> Option<Micros> {
        self.core.remaining(agent)
    }

    /// Resolves once everything settled before this call is durable.
    pub async fn flush(&self) -> Result<(), BudgetError> {
        let (tx, rx) = oneshot::channel();
        self.core.flush(tx);
        rx.await.unwrap_or(Err(BudgetError::Unavailable))
    }

    /// Waits until every alert command started so far has finished (or was
    /// killed at its timeout).
    pub async fn flush_alerts(&self) {
        self.core.inflight.wait_idle().await;
    }

    /// Shutdown: commits everything queued, stops the writer thread and waits
    /// for it. Afterwards reservations are refused and settles fail; the
    /// database stays open until the last handle is dropped.
    pub async fn close(&self) {
        if let Some(exited) = self.core.close() {
            let _ = exited.await;
        }
    }

    /// Records budget alerts and cutoffs (the first refused call of a period)
    /// on `audit` from now on. Set once at start-up.
    pub fn set_audit(&self, audit: crate::audit::AuditHandle) {
        self.core.set_audit(audit);
    }

    /// Commits and events written so far.
    pub fn writer_stats(&self) -> WriterStats {
        self.core.stats()
    }
}
