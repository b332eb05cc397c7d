//! The ledger on disk, and the writer thread that puts it there.
//!
//! Layout in the daemon's redb file (component `budget`, schema version
//! [`SCHEMA_VERSION`] in the store's `schema` table):
//!
//! | table            | key            | value (postcard)                                  |
//! |------------------|----------------|---------------------------------------------------|
//! | `budget_events`  | `u64` sequence | [`StoredEvent`]: a spend (agent, provider, model, tag, tokens, estimated, cost, reserved, times) or a reset |
//! | `budget_agents`  | agent name     | [`AgentRow`]: per-period windows (start, spent, calls), fired alerts, override |
//!
//! `budget_events` is append-only: history for `ironctl costs`, never rewritten.
//! `budget_agents` is a checkpoint so start-up does not replay history; it is
//! written in the same transaction as the events it summarizes, so the two
//! always agree.
//!
//! Values are postcard; the ledger's own structs (not the gateway's `Usage`)
//! are encoded, so the file format changes only with [`SCHEMA_VERSION`].
//! Enum variants are only ever appended.

use super::{BudgetError, CostRecord, WriterStats};
use crate::store::Store;
use ironcage_shared::AgentName;
use ironcage_shared::money::Micros;
use ironcage_shared::protocol::{
    BudgetInfo, BudgetPeriod, CostRow, CostsBy, CostsReport, CostsRequest,
};
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use tokio::sync::oneshot;

/// Version of the budget tables' layout.
pub const SCHEMA_VERSION: u32 = 1;
/// Component name in the store's schema table.
pub const COMPONENT: &str = "budget";

pub(super) const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("budget_events");
pub(super) const AGENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("budget_agents");

/// Least time between the starts of two commits. A commit (redb page writes
/// plus an fdatasync) costs the same whether it carries one settle or
/// hundreds, ~0.5-1 ms of CPU on a VM where the fsync traps to the
/// hypervisor; at 2,000 calls/s a commit per 2 ms made the writer a tenth of
/// the daemon's CPU. So: when the writer has been idle this long, a settle is
/// committed at once (light load: durable within one commit); under load,
/// commits are at most this often and carry everything queued meanwhile.
/// This bounds how long a settled cost can stay only in memory (held as
/// `pending` against the budget, so budgets stay exact) to this interval
/// plus one commit.
pub(super) const COMMIT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);

/// Most operations committed in one transaction.
const MAX_BATCH: usize = 8192;

/// One period window of an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// Unix seconds the window started.
    pub start: u64,
    pub spent: Micros,
    pub calls: u64,
}

/// Alert thresholds fired in one period window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fired {
    pub period: BudgetPeriod,
    pub start: u64,
    pub thresholds: Vec<u32>,
}

/// An `ironctl budget set` override.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Override {
    pub limit: Micros,
    pub period: BudgetPeriod,
    /// The configured (limit, period) when it was made (`None`: no budget was
    /// configured). When the config no longer says this, the override is dropped.
    pub base: Option<(Micros, BudgetPeriod)>,
    pub set_at_ms: u64,
}

/// The `budget_agents` row of one agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRow {
    /// Day, week, month, total.
    pub windows: [Window; 4],
    pub fired: Option<Fired>,
    pub override_: Option<Override>,
}

/// Token counts of a spend event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
    pub cache_write_1h: u64,
    pub reasoning: u64,
}

/// One settled call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendEvent {
    pub agent: AgentName,
    pub provider: String,
    pub model: String,
    pub tag: Option<String>,
    pub tokens: Tokens,
    /// The usage was counted locally, not reported by the provider.
    pub estimated: bool,
    pub cost: Micros,
    /// The worst case that was reserved for it.
    pub reserved: Micros,
    /// When the call happened (gateway's time).
    pub at_ms: u64,
    /// When the ledger booked it; decides the budget period it counts in.
    pub booked_at_ms: u64,
}

impl SpendEvent {
    pub fn new(record: CostRecord, reserved: Micros, booked_at_ms: u64) -> Self {
        let u = record.usage;
        SpendEvent {
            agent: record.agent,
            provider: record.provider,
            model: record.model,
            tag: record.tag,
            tokens: Tokens {
                input: u.input_tokens,
                output: u.output_tokens,
                cache_read: u.cache_read_tokens,
                cache_write: u.cache_write_tokens,
                cache_write_1h: u.cache_write_1h_tokens,
                reasoning: u.reasoning_tokens,
            },
            estimated: u.estimated,
            cost: record.cost,
            reserved,
            at_ms: record.at_ms,
            booked_at_ms,
        }
    }
}

/// `ironctl budget reset`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResetEvent {
    pub agent: AgentName,
    pub at_ms: u64,
    pub period: BudgetPeriod,
    /// Spend (durable + pending) of the period when it was reset.
    pub spent_before: Micros,
}

/// A `budget_events` value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoredEvent {
    Spend(SpendEvent),
    Reset(ResetEvent),
}

// ------------------------------------------------------------------ start-up

/// What start-up reads back.
#[derive(Debug)]
pub(super) struct Loaded {
    pub rows: Vec<(AgentName, AgentRow)>,
    pub next_seq: u64,
}

/// Creates the tables if needed, checks the schema version, and reads every
/// agent row. Blocking; runs once at start-up.
pub(super) fn load(store: &Store) -> Result<Loaded, BudgetError> {
    let txn = store.begin_write()?;
    store.claim_schema(&txn, COMPONENT, SCHEMA_VERSION)?;
    let loaded = {
        let events = txn
            .open_table(EVENTS)
            .map_err(|e| store.err("open budget_events", e))?;
        let agents = txn
            .open_table(AGENTS)
            .map_err(|e| store.err("open budget_agents", e))?;
        let next_seq = match events
            .last()
            .map_err(|e| store.err("read budget_events", e))?
        {
            Some((k, _)) => k.value() + 1,
            None => 0,
        };
        let mut rows = Vec::new();
        for item in agents
            .iter()
            .map_err(|e| store.err("read budget_agents", e))?
        {
            let (k, v) = item.map_err(|e| store.err("read budget_agents", e))?;
            let name = k.value();
            let corrupt = |reason: String| BudgetError::Corrupt {
                path: store.path().to_owned(),
                what: format!("budget_agents row {name:?}"),
                reason,
            };
            let agent = AgentName::new(name).map_err(|e| corrupt(e.to_string()))?;
            let row: AgentRow =
                postcard::from_bytes(v.value()).map_err(|e| corrupt(e.to_string()))?;
            rows.push((agent, row));
        }
        Loaded { rows, next_seq }
    };
    store.commit(txn, "create the budget tables")?;
    Ok(loaded)
}

// ------------------------------------------------------------ writer thread

/// Whom to tell when an operation is durable.
pub(super) enum Done {
    Nothing,
    Spend(SpendDone),
    Unit(oneshot::Sender<Result<(), BudgetError>>),
    /// `budget set` / `budget reset`: the reply, the audit entry that
    /// commits in the same transaction as the change (if audited), and how to
    /// take the change back if that transaction fails.
    Info(
        AgentName,
        oneshot::Sender<Result<BudgetInfo, BudgetError>>,
        Option<Audited>,
        Box<Undo>,
    ),
}

/// How to take back a `budget set` or `reset` that is applied in memory
/// when queued but whose commit failed: the operator was told it failed, so
/// it must not stay in force, nor reach the file with the next settle's row.
pub(super) enum Undo {
    /// The override `set` replaced, and the one it installed.
    Set {
        before: Option<Override>,
        installed: Override,
    },
    /// What `reset` zeroed, and the generation it started.
    Reset {
        durable: super::ledger::Windows,
        tail: super::ledger::Windows,
        fired: Option<Fired>,
        generation: u64,
    },
}

/// An audit entry to commit with an operation, and the trail it goes to.
pub(super) struct Audited {
    pub log: Arc<crate::audit::AuditLog>,
    pub draft: crate::audit::Draft,
}

/// A failed batch write (the audit trail's errors included).
struct WriteError(String);

impl From<crate::audit::AuditError> for WriteError {
    fn from(e: crate::audit::AuditError) -> Self {
        WriteError(e.to_string())
    }
}

/// A settle waiting for durability.
pub(super) struct SpendDone {
    pub agent: AgentName,
    pub cost: Micros,
    pub booked_at_s: u64,
    pub generation: u64,
    /// `None` for a settle nobody waits on (the gateway's); a failed commit
    /// is logged by the writer either way.
    pub reply: Option<oneshot::Sender<Result<(), BudgetError>>>,
}

/// One unit of work for the writer: an event to append and/or a row to put.
pub(super) struct Op {
    pub event: Option<StoredEvent>,
    pub row: Option<(AgentName, AgentRow)>,
    pub done: Done,
}

/// The writer's answer for one batch.
pub(super) struct Committed {
    /// `Err(reason)` when the transaction failed: nothing in the batch is durable.
    pub result: Result<(), String>,
    pub done: Vec<Done>,
}

#[derive(Debug, Default)]
pub(super) struct Counters {
    commits: AtomicU64,
    events: AtomicU64,
}

impl Counters {
    pub fn get(&self) -> WriterStats {
        WriterStats {
            commits: self.commits.load(Ordering::Relaxed),
            events: self.events.load(Ordering::Relaxed),
        }
    }
}

/// Starts the writer thread. It commits whatever is queued in one transaction,
/// then calls `deliver`; it exits (signalling `exited`) once every sender is
/// dropped and the queue is drained.
pub(super) fn spawn_writer(
    store: Arc<Store>,
    rx: mpsc::Receiver<Op>,
    mut next_seq: u64,
    counters: Arc<Counters>,
    retention: Arc<Retention>,
    deliver: Box<dyn Fn(Committed) + Send>,
    exited: oneshot::Sender<()>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("ironcaged-ledger".into())
        .spawn(move || {
            lower_priority();
            let mut last_commit: Option<std::time::Instant> = None;
            // Settled costs whose commit failed (a full disk, say), kept in
            // order and committed again before anything newer.
            let mut held = Held::default();
            let mut pruner = Pruner::default();
            loop {
                let first = if held.ops.is_empty() {
                    match rx.recv() {
                        Ok(op) => Some(op),
                        Err(_) => break,
                    }
                } else {
                    let due = held
                        .last_try
                        .map_or(std::time::Duration::ZERO, |t| {
                            RETRY_INTERVAL.saturating_sub(t.elapsed())
                        });
                    match rx.recv_timeout(due) {
                        Ok(op) => Some(op),
                        Err(mpsc::RecvTimeoutError::Timeout) => None,
                        Err(mpsc::RecvTimeoutError::Disconnected) => {
                            // Shutting down: one last try for what is held.
                            let part = std::mem::take(&mut held.ops);
                            if let Err(e) = write_batch(&store, next_seq, &part) {
                                tracing::error!(
                                    "budget ledger: {e}; {} settled costs could not be written before shutdown and are lost",
                                    part.iter().filter(|o| o.event.is_some()).count()
                                );
                            }
                            break;
                        }
                    }
                };
                // While commits fail, what arrives joins what is held without
                // a commit of its own until the next retry is due: a try
                // costs the whole held batch.
                if held.waiting() {
                    let mut new: Vec<Op> = first.into_iter().collect();
                    while new.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(op) => new.push(op),
                            Err(_) => break,
                        }
                    }
                    let done = held.hold(new);
                    deliver(Committed {
                        result: Err(held.reason.clone()),
                        done,
                    });
                    continue;
                }
                let mut batch = std::mem::take(&mut held.ops);
                if let Some(first) = first {
                    batch.push(first);
                    // Sleeping out the interval rather than waiting on the
                    // queue means the settles sent meanwhile wake nobody:
                    // they cost the gateway a queue push and nothing else.
                    if let Some(wait) =
                        last_commit.map(|t| COMMIT_INTERVAL.saturating_sub(t.elapsed()))
                        && !wait.is_zero()
                    {
                        std::thread::sleep(wait);
                    }
                }
                last_commit = Some(std::time::Instant::now());
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(op) => batch.push(op),
                        Err(_) => break,
                    }
                }
                let mut failed: Option<String> = None;
                for part in split_audited(batch) {
                    let writes = part.iter().any(|o| o.event.is_some() || o.row.is_some());
                    let audited = matches!(part.first(), Some(o) if matches!(o.done, Done::Info(_, _, Some(_), _)));
                    // After a plain part failed, nothing later in the batch
                    // is tried: committing it would put rows newer than
                    // what is held, which the retry would then overwrite.
                    // (An audited part that fails holds nothing back: it is
                    // taken back, and the rest goes on.)
                    let result = match (&failed, writes) {
                        (Some(e), _) => Err(e.clone()),
                        (None, false) => Ok(()),
                        (None, true) => match write_batch(&store, next_seq, &part) {
                            Ok(n) => {
                                next_seq += n;
                                counters.commits.fetch_add(1, Ordering::Relaxed);
                                counters.events.fetch_add(n, Ordering::Relaxed);
                                held.recovered();
                                Ok(())
                            }
                            Err(e) => {
                                if !audited {
                                    failed = Some(e.clone());
                                }
                                Err(e)
                            }
                        },
                    };
                    let done = match result {
                        Err(e) if !audited => {
                            // Hold the writes and retry them; tell whoever
                            // waits that they are not durable yet.
                            let done = held.hold(part);
                            held.failed(&e);
                            deliver(Committed {
                                result: Err(e),
                                done,
                            });
                            continue;
                        }
                        Err(e) => {
                            tracing::error!("budget ledger: {e}");
                            Committed {
                                result: Err(e),
                                done: part.into_iter().map(|o| o.done).collect(),
                            }
                        }
                        Ok(()) => Committed {
                            result: Ok(()),
                            done: part.into_iter().map(|o| o.done).collect(),
                        },
                    };
                    deliver(done);
                }
                if failed.is_none() {
                    pruner.after_commit(&store, &retention);
                }
            }
            drop(store);
            let _ = exited.send(());
        })?;
    Ok(())
}

/// How long the writer keeps cost history (`[budget] keep_cost_history_days`,
/// changed on reload), read by the writer after its commits.
pub(super) struct Retention {
    /// Milliseconds of history to keep; 0 keeps all.
    pub keep_ms: AtomicU64,
    pub clock: Arc<dyn super::Clock>,
}

/// Least time between two prunes of the cost history (the clock's time).
const PRUNE_EVERY_MS: u64 = 3_600_000;
/// Most events deleted in one transaction, so a first prune of a long
/// history does not hold up the settles' commits for long.
const PRUNE_CHUNK: u64 = 50_000;

/// Deletes up to [`PRUNE_CHUNK`] of the events older than `before_ms` (spend
/// and resets: `costs` and nothing else reads them; budgets live in the
/// agents' rows), in one commit; the writer calls it again on its next pass
/// while more are left, so settles' commits go in between. What goes is
/// found by the same seek as `costs --since`, a day early
/// ([`SEEK_SLACK_MS`]): history is kept at least as long as asked, up to a
/// day more. Returns how many went and whether more are left.
fn prune(store: &Store, before_ms: u64) -> Result<(u64, bool), String> {
    let cut = {
        let txn = store.begin_read().map_err(|e| e.to_string())?;
        let events = match txn.open_table(EVENTS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok((0, false)),
            Err(e) => return Err(store.err("open budget_events", e).to_string()),
        };
        first_seq_at(store, &events, before_ms.saturating_sub(SEEK_SLACK_MS))
            .map_err(|e| e.to_string())?
    };
    let txn = store.begin_write().map_err(|e| e.to_string())?;
    let (n, more) = {
        let mut events = txn
            .open_table(EVENTS)
            .map_err(|e| store.err("open budget_events", e).to_string())?;
        let first = events
            .first()
            .map_err(|e| store.err("read budget_events", e).to_string())?
            .map(|(k, _)| k.value());
        let Some(first) = first.filter(|f| *f < cut) else {
            return Ok((0, false));
        };
        let end = cut.min(first.saturating_add(PRUNE_CHUNK));
        let mut n = 0u64;
        events
            .retain_in(first..end, |_, _| {
                n += 1;
                false
            })
            .map_err(|e| store.err("prune budget_events", e).to_string())?;
        (n, end < cut)
    };
    store
        .commit(txn, "prune budget events")
        .map_err(|e| e.to_string())?;
    Ok((n, more))
}

/// When the writer prunes cost history, and how far a prune in chunks got.
#[derive(Default)]
struct Pruner {
    /// The clock's time of the last prune that started.
    last: Option<u64>,
    /// A prune left events to delete: the next pass goes on with it.
    more: bool,
    /// Events deleted by the prune under way (logged when it ends).
    pruned: u64,
}

impl Pruner {
    /// After a successful pass: one chunk of a prune, when one is due
    /// ([`PRUNE_EVERY_MS`]) or under way, and history is limited at all.
    fn after_commit(&mut self, store: &Store, retention: &Retention) {
        let keep = retention.keep_ms.load(Ordering::Relaxed);
        let now = retention.clock.now_ms();
        let due = self.more
            || self
                .last
                .is_none_or(|t| now.saturating_sub(t) >= PRUNE_EVERY_MS);
        if keep == 0 || !due {
            return;
        }
        if !self.more {
            self.last = Some(now);
        }
        match prune(store, now.saturating_sub(keep)) {
            Ok((n, more)) => {
                self.pruned += n;
                self.more = more;
                if !more && self.pruned > 0 {
                    tracing::info!(
                        events = self.pruned,
                        "budget ledger: cost history older than {} days pruned",
                        keep / 86_400_000
                    );
                    self.pruned = 0;
                }
            }
            Err(e) => {
                self.more = false;
                tracing::warn!("budget ledger: cannot prune cost history: {e}");
            }
        }
    }
}

/// How soon writes held after a failed commit are tried again.
const RETRY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// Most operations held for retry; beyond, the oldest are dropped (logged):
/// about 200 MB at worst.
const MAX_HELD: usize = 1_000_000;

/// Writes whose commit failed, held for the next one, and the failure streak
/// (logged once when it starts, when writes are dropped, and when it ends).
#[derive(Default)]
struct Held {
    ops: Vec<Op>,
    since: Option<std::time::Instant>,
    /// When the last commit that failed was tried, and why it failed.
    last_try: Option<std::time::Instant>,
    reason: String,
    dropped: u64,
}

impl Held {
    /// Keeps `part`'s writes for a retry and returns what to tell now: a
    /// settle's waiter learns it is not durable yet, and its amount stays
    /// pending until the retry commits it (then it moves to spent). A
    /// `budget set`/`reset` is not retried: it fails and is taken back.
    fn hold(&mut self, part: Vec<Op>) -> Vec<Done> {
        let mut tell = Vec::with_capacity(part.len());
        for op in part {
            match op.done {
                Done::Info(..) => tell.push(op.done),
                Done::Spend(mut s) => {
                    if let Some(reply) = s.reply.take() {
                        tell.push(Done::Unit(reply));
                    }
                    self.ops.push(Op {
                        done: Done::Spend(s),
                        ..op
                    });
                }
                Done::Unit(tx) => {
                    tell.push(Done::Unit(tx));
                    self.keep(Op {
                        done: Done::Nothing,
                        ..op
                    });
                }
                Done::Nothing => self.keep(op),
            }
        }
        if self.ops.len() > MAX_HELD {
            let over = self.ops.len() - MAX_HELD;
            self.ops.drain(..over);
            self.dropped += over as u64;
            tracing::error!(
                "budget ledger: {over} held writes dropped (more than {MAX_HELD} waiting); their costs still count against budgets until the daemon restarts, but `ironctl costs` will not show them"
            );
        }
        tell
    }

    /// Whether writes are held and their next try is not due yet.
    fn waiting(&self) -> bool {
        !self.ops.is_empty() && self.last_try.is_some_and(|t| t.elapsed() < RETRY_INTERVAL)
    }

    fn keep(&mut self, op: Op) {
        if op.event.is_some() || op.row.is_some() {
            self.ops.push(op);
        }
    }

    fn failed(&mut self, e: &str) {
        self.last_try = Some(std::time::Instant::now());
        e.clone_into(&mut self.reason);
        if self.since.is_none() {
            self.since = Some(std::time::Instant::now());
            tracing::error!(
                "budget ledger: {e}; settled costs are held in memory (they count against budgets) and written as soon as a commit succeeds, tried every {}s; they are lost if the daemon stops before then. After an I/O error (a full disk) the database refuses every write until ironcaged is restarted: free space, then restart it",
                RETRY_INTERVAL.as_secs()
            );
        }
    }

    fn recovered(&mut self) {
        self.last_try = None;
        if let Some(since) = self.since.take() {
            tracing::warn!(
                "budget ledger: commits succeed again after {:.1}s; the held costs are durable{}",
                since.elapsed().as_secs_f64(),
                match std::mem::take(&mut self.dropped) {
                    0 => String::new(),
                    n => format!(" ({n} writes were dropped meanwhile)"),
                }
            );
        }
    }
}

/// Splits a batch, in order, so that each audited operation (`budget set` or
/// `reset`, whose entry commits with it) is a transaction of its own: an
/// audit write that fails then fails that operation alone, never the settles
/// that happened to be queued with it.
fn split_audited(batch: Vec<Op>) -> Vec<Vec<Op>> {
    let mut parts: Vec<Vec<Op>> = Vec::new();
    let mut plain: Vec<Op> = Vec::new();
    for op in batch {
        if matches!(op.done, Done::Info(_, _, Some(_), _)) {
            if !plain.is_empty() {
                parts.push(std::mem::take(&mut plain));
            }
            parts.push(vec![op]);
        } else {
            plain.push(op);
        }
    }
    if !plain.is_empty() {
        parts.push(plain);
    }
    parts
}

/// Commits are throughput work: under CPU contention the gateway's threads
/// (latency work) should win, and a commit that starts a little later only
/// makes the next batch larger. Best effort: nice +10 for this thread.
fn lower_priority() {
    // SAFETY: plain syscalls on the calling thread; no memory is shared.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10) };
    if r != 0 {
        tracing::debug!(
            "cannot lower the ledger writer's priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Appends the batch's events and puts the last row of each agent; one
/// durable commit, which also carries the audit entries of audited
/// operations (`budget set`/`reset`): the change and its entry are durable
/// together or not at all. Returns the number of events written.
fn write_batch(store: &Store, first_seq: u64, batch: &[Op]) -> Result<u64, String> {
    let audited: Vec<&Audited> = batch
        .iter()
        .filter_map(|o| match &o.done {
            Done::Info(_, _, Some(a), _) => Some(a),
            _ => None,
        })
        .collect();
    let Some(first) = audited.first() else {
        let txn = store.begin_write().map_err(|e| e.to_string())?;
        let n = write_into(&txn, store, first_seq, batch)?;
        store
            .commit(txn, "budget events")
            .map_err(|e| e.to_string())?;
        return Ok(n);
    };
    // One trail per daemon: every audited op names the same log.
    first
        .log
        .write(|txn, app| {
            let n = write_into(txn, store, first_seq, batch).map_err(WriteError)?;
            for a in &audited {
                app.append(a.draft.clone())?;
            }
            Ok::<_, WriteError>(n)
        })
        .map_err(|e| e.0)
}

/// [`write_batch`]'s writes, inside `txn`.
fn write_into(
    txn: &redb::WriteTransaction,
    store: &Store,
    first_seq: u64,
    batch: &[Op],
) -> Result<u64, String> {
    let mut seq = first_seq;
    {
        let mut events = txn
            .open_table(EVENTS)
            .map_err(|e| store.err("open budget_events", e).to_string())?;
        let mut buf = Vec::with_capacity(256);
        for ev in batch.iter().filter_map(|o| o.event.as_ref()) {
            buf.clear();
            let bytes = postcard::to_extend(ev, std::mem::take(&mut buf))
                .map_err(|e| format!("cannot encode a budget event: {e}"))?;
            events
                .insert(seq, bytes.as_slice())
                .map_err(|e| store.err("append to budget_events", e).to_string())?;
            buf = bytes;
            seq += 1;
        }
        // Later snapshots supersede earlier ones: write each agent once.
        let mut last: HashMap<&AgentName, &AgentRow> = HashMap::new();
        for (agent, row) in batch.iter().filter_map(|o| o.row.as_ref()) {
            last.insert(agent, row);
        }
        let mut agents = txn
            .open_table(AGENTS)
            .map_err(|e| store.err("open budget_agents", e).to_string())?;
        for (agent, row) in last {
            let bytes =
                postcard::to_stdvec(row).map_err(|e| format!("cannot encode a budget row: {e}"))?;
            agents
                .insert(agent.as_str(), bytes.as_slice())
                .map_err(|e| store.err("write budget_agents", e).to_string())?;
        }
    }
    Ok(seq - first_seq)
}

// --------------------------------------------------------------------- costs

/// How far out of time order events may be (`at_ms` is when a call started,
/// and a call settles when it ends, so a long call lands after shorter later
/// ones; a wall clock set back does the same). `costs --since` starts its scan
/// at the first event this much before `since` in sequence order.
const SEEK_SLACK_MS: u64 = 86_400_000;

fn decode_event(store: &Store, seq: u64, bytes: &[u8]) -> Result<StoredEvent, BudgetError> {
    postcard::from_bytes(bytes).map_err(|e| BudgetError::Corrupt {
        path: store.path().to_owned(),
        what: format!("budget_events entry {seq}"),
        reason: e.to_string(),
    })
}

/// The first sequence number whose event is at or after `at_ms`, found by
/// binary search on the (nearly) time-ordered sequence: O(log² n) reads, so
/// `costs --since 1h` does not read months of history. The result is exact
/// when events are in time order within [`SEEK_SLACK_MS`] (the caller seeks
/// that much earlier, then filters each event by its own time).
fn first_seq_at(
    store: &Store,
    events: &redb::ReadOnlyTable<u64, &[u8]>,
    at_ms: u64,
) -> Result<u64, BudgetError> {
    let read = |e| store.err("read budget_events", e);
    let (Some(first), Some(last)) = (
        events.first().map_err(read)?.map(|(k, _)| k.value()),
        events.last().map_err(read)?.map(|(k, _)| k.value()),
    ) else {
        return Ok(0);
    };
    let (mut lo, mut hi) = (first, last.saturating_add(1));
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        // The first event at or after `mid` (sequence numbers may have gaps).
        let Some(item) = events.range(mid..hi).map_err(read)?.next() else {
            hi = mid;
            continue;
        };
        let (k, v) = item.map_err(read)?;
        let t = match decode_event(store, k.value(), v.value())? {
            StoredEvent::Spend(s) => s.at_ms,
            StoredEvent::Reset(r) => r.at_ms,
        };
        if t < at_ms {
            lo = k.value() + 1;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}

/// Aggregates the durable spend events for `ironctl costs`. Blocking (a scan
/// of the events since `since`, or of all).
pub(super) fn costs(store: &Store, req: &CostsRequest) -> Result<CostsReport, BudgetError> {
    let txn = store.begin_read()?;
    let events = match txn.open_table(EVENTS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => {
            return Ok(CostsReport {
                by: req.by,
                since: req.since,
                rows: Vec::new(),
                total: Micros::ZERO,
            });
        }
        Err(e) => return Err(store.err("open budget_events", e).into()),
    };
    let since_ms = req.since.map(|s| s.saturating_mul(1000));
    let from = match since_ms {
        Some(t) => first_seq_at(store, &events, t.saturating_sub(SEEK_SLACK_MS))?,
        None => 0,
    };
    let mut rows: HashMap<String, CostRow> = HashMap::new();
    for item in events
        .range(from..)
        .map_err(|e| store.err("read budget_events", e))?
    {
        let (k, v) = item.map_err(|e| store.err("read budget_events", e))?;
        let ev = decode_event(store, k.value(), v.value())?;
        let StoredEvent::Spend(s) = ev else { continue };
        if since_ms.is_some_and(|t| s.at_ms < t)
            || req.agent.as_ref().is_some_and(|a| *a != s.agent)
        {
            continue;
        }
        let key = match req.by {
            CostsBy::Agent => s.agent.to_string(),
            CostsBy::Model => format!("{}/{}", s.provider, s.model),
            CostsBy::Provider => s.provider.clone(),
            CostsBy::Tag => s.tag.clone().unwrap_or_else(|| "-".to_owned()),
        };
        let r = rows
            .entry(key)
            .or_insert_with_key(|k| CostRow::empty(k.clone()));
        r.calls += 1;
        r.input_tokens += s.tokens.input;
        r.output_tokens += s.tokens.output;
        r.cache_read_tokens += s.tokens.cache_read;
        r.cache_write_tokens += s.tokens.cache_write;
        r.reasoning_tokens += s.tokens.reasoning;
        r.cost += s.cost;
        r.estimated_calls += u64::from(s.estimated);
    }
    let mut rows: Vec<CostRow> = rows.into_values().collect();
    rows.sort_by(|a, b| b.cost.cmp(&a.cost).then_with(|| a.key.cmp(&b.key)));
    let total = rows.iter().map(|r| r.cost).sum();
    Ok(CostsReport {
        by: req.by,
        since: req.since,
        rows,
        total,
    })
}

/// Every event in the table, in order (tests and diagnostics).
pub fn read_events(store: &Store) -> Result<Vec<(u64, StoredEvent)>, BudgetError> {
    let txn = store.begin_read()?;
    let events = match txn.open_table(EVENTS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(store.err("open budget_events", e).into()),
    };
    let mut out = Vec::new();
    for item in events
        .iter()
        .map_err(|e| store.err("read budget_events", e))?
    {
        let (k, v) = item.map_err(|e| store.err("read budget_events", e))?;
        let ev = postcard::from_bytes(v.value()).map_err(|e| BudgetError::Corrupt {
            path: store.path().to_owned(),
            what: format!("budget_events entry {}", k.value()),
            reason: e.to_string(),
        })?;
        out.push((k.value(), ev));
    }
    Ok(out)
}

#[cfg(test)]
mod split_tests {
    use super::*;
    use crate::audit::{Actor, AuditLog, Draft};
    use ironcage_shared::protocol::AuditOutcome;

    fn plain() -> Op {
        Op {
            event: None,
            row: None,
            done: Done::Nothing,
        }
    }

    fn audited(log: &Arc<AuditLog>) -> Op {
        let (tx, _rx) = oneshot::channel();
        Op {
            event: None,
            row: None,
            done: Done::Info(
                AgentName::try_from("a".to_owned()).unwrap(),
                tx,
                Some(Audited {
                    log: log.clone(),
                    draft: Draft::new(Actor::daemon(), "budget set", "a", AuditOutcome::Ok),
                }),
                Box::new(Undo::Set {
                    before: None,
                    installed: Override {
                        limit: Micros(1),
                        period: BudgetPeriod::Day,
                        base: None,
                        set_at_ms: 0,
                    },
                }),
            ),
        }
    }

    fn shape(parts: &[Vec<Op>]) -> Vec<Vec<bool>> {
        parts
            .iter()
            .map(|p| {
                p.iter()
                    .map(|o| matches!(o.done, Done::Info(_, _, Some(_), _)))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn each_audited_change_commits_alone_and_order_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let log = Arc::new(AuditLog::open(store, None).unwrap());
        let batch = vec![plain(), plain(), audited(&log), audited(&log), plain()];
        assert_eq!(
            shape(&split_audited(batch)),
            vec![vec![false, false], vec![true], vec![true], vec![false]]
        );
        assert_eq!(
            shape(&split_audited(vec![plain(), plain()])),
            vec![vec![false, false]]
        );
        assert!(split_audited(Vec::new()).is_empty());
    }
}
