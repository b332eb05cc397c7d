//! The ledger's in-memory state and every operation on it, behind one mutex.
//!
//! Reached only through [`super::BudgetHandle`] and [`super::Reservation`].
//! The gateway reserves and settles on its own tokio worker: a lock held for a
//! few hundred nanoseconds, no message to another thread, no wake-up. The only
//! other thread is the writer ([`persist::spawn_writer`]), which commits queued
//! operations and then reports back through [`Core::committed`], on its own
//! thread, under the same lock.

use super::alerts::{Alert, AlertQueue, Inflight};
use super::ledger::Ledger;
use super::persist::{
    self, Committed, Counters, Done, Op, Override, ResetEvent, Retention, SpendDone, SpendEvent,
    StoredEvent, Undo,
};
use super::{BudgetError, Clock, CostRecord, Refusal, WriterStats};
use crate::audit::{Actor, AuditHandle, Draft};
use crate::config::{BudgetSection, BudgetSpec, OnExhausted};
use crate::store::Store;
use ironcage_shared::AgentName;
use ironcage_shared::money::Micros;
use ironcage_shared::protocol::AuditOutcome;
use ironcage_shared::protocol::{BudgetInfo, BudgetPeriod};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak, mpsc};
use tokio::sync::oneshot;

/// The ledger: state under a lock, plus what the lock need not cover.
pub(super) struct Core {
    state: Mutex<State>,
    clock: Arc<dyn Clock>,
    on_stop: Arc<dyn Fn(AgentName) + Send + Sync>,
    alerts: AlertQueue,
    pub inflight: Arc<Inflight>,
    counters: Arc<Counters>,
    retention: Arc<Retention>,
    path: PathBuf,
    audit: OnceLock<AuditHandle>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

struct State {
    ledgers: HashMap<AgentName, Ledger>,
    thresholds: Vec<u32>,
    alert_command: Option<Vec<String>>,
    /// `None` after [`Core::close`]: reservations are refused from then on.
    writer: Option<mpsc::Sender<Op>>,
    writer_exited: Option<oneshot::Receiver<()>>,
}

/// Loads the persisted ledgers, applies the configuration and starts the
/// writer thread.
pub(super) fn start(
    store: Arc<Store>,
    agents: Vec<(AgentName, Option<BudgetSpec>)>,
    section: BudgetSection,
    clock: Arc<dyn Clock>,
    on_stop: Arc<dyn Fn(AgentName) + Send + Sync>,
) -> Result<Arc<Core>, BudgetError> {
    let loaded = persist::load(&store)?;
    let now_s = clock.now_ms() / 1000;
    let ledgers = loaded
        .rows
        .into_iter()
        .map(|(name, row)| (name, Ledger::from_row(row, now_s)))
        .collect();
    let (tx, rx) = mpsc::channel();
    let (exit_tx, exit_rx) = oneshot::channel();
    let inflight = Arc::new(Inflight::default());
    let counters = Arc::new(Counters::default());
    let retention = Arc::new(Retention {
        keep_ms: AtomicU64::new(0),
        clock: clock.clone(),
    });
    let core = Arc::new(Core {
        state: Mutex::new(State {
            ledgers,
            thresholds: Vec::new(),
            alert_command: None,
            writer: Some(tx),
            writer_exited: Some(exit_rx),
        }),
        clock,
        on_stop,
        alerts: AlertQueue::start(inflight.clone()),
        inflight,
        counters: counters.clone(),
        retention: retention.clone(),
        path: store.path().to_owned(),
        audit: OnceLock::new(),
    });
    // Overrides dropped because the config changed while we were down, and
    // thresholds crossed but not fired (a crash between commit and alert), are
    // handled exactly as on a reload.
    core.apply_config(agents, section);
    // Weak: the writer must not keep the ledger alive (the ledger owns the
    // writer's queue; the writer exits once the queue is closed).
    let weak: Weak<Core> = Arc::downgrade(&core);
    let deliver = Box::new(move |c: Committed| match weak.upgrade() {
        Some(core) => core.committed(c),
        None => orphaned(c),
    });
    persist::spawn_writer(
        store,
        rx,
        loaded.next_seq,
        counters,
        retention,
        deliver,
        exit_tx,
    )
    .map_err(BudgetError::Thread)?;
    Ok(core)
}

/// The ledger is gone: answer what can be answered without it.
fn orphaned(c: Committed) {
    for d in c.done {
        match d {
            Done::Spend(s) => {
                if let Some(tx) = s.reply {
                    let _ = tx.send(c.result.clone().map_err(|_| BudgetError::Unavailable));
                }
            }
            Done::Unit(tx) => {
                let _ = tx.send(c.result.clone().map_err(|_| BudgetError::Unavailable));
            }
            Done::Info(_, tx, _, _) => {
                let _ = tx.send(Err(BudgetError::Unavailable));
            }
            Done::Nothing => {}
        }
    }
}

impl State {
    /// The agent's ledger, rolled to `now_s`; created (unlimited, unlisted) for
    /// an agent never seen before, so its spend is still metered.
    fn ledger(&mut self, agent: &AgentName, now_s: u64) -> &mut Ledger {
        if !self.ledgers.contains_key(agent) {
            self.ledgers.insert(agent.clone(), Ledger::new(now_s));
        }
        let l = self
            .ledgers
            .get_mut(agent)
            .unwrap_or_else(|| unreachable!("inserted above"));
        l.roll(now_s);
        l
    }

    /// Queues `op` for the writer; hands it back when the ledger is closed.
    fn enqueue(&mut self, op: Op) -> Result<(), Box<Op>> {
        match &self.writer {
            Some(w) => w.send(op).map_err(|e| Box::new(e.0)),
            None => Err(Box::new(op)),
        }
    }

    /// Persists the agent's row (no reply).
    fn save_row(&mut self, agent: &AgentName) {
        if let Some(l) = self.ledgers.get(agent) {
            let op = Op {
                event: None,
                row: Some((agent.clone(), l.row())),
                done: Done::Nothing,
            };
            if self.enqueue(op).is_err() {
                tracing::warn!(agent = %agent, "budget ledger is closed; a change of agent {agent}'s budget state was not saved");
            }
        }
    }

    /// Thresholds the agent's durable spend has newly crossed, marked fired
    /// (and the row queued so they stay fired across a restart).
    fn crossed_alerts(&mut self, agent: &AgentName, now_s: u64) -> Vec<Alert> {
        let Some(l) = self.ledgers.get_mut(agent) else {
            return Vec::new();
        };
        let (Some(limit), true) = (l.limit(), l.configured) else {
            return Vec::new();
        };
        let fresh = l.newly_crossed(&self.thresholds);
        if fresh.is_empty() {
            return Vec::new();
        }
        let p = l.period();
        let (spent, start) = (l.spent(), l.durable.get(p).start);
        let alerts = fresh
            .into_iter()
            .map(|t| Alert {
                agent: agent.clone(),
                threshold_percent: t,
                limit,
                spent,
                period: p,
                period_start: start,
                at_s: now_s,
            })
            .collect();
        self.save_row(agent);
        alerts
    }
}

impl Core {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent under a panic (every change is a few
        // arithmetic steps on one ledger), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn now(&self) -> (u64, u64) {
        let ms = self.clock.now_ms();
        (ms, ms / 1000)
    }

    pub fn stats(&self) -> WriterStats {
        self.counters.get()
    }

    /// Logs the alerts and queues their commands (after the lock is released).
    fn dispatch(&self, alerts: Vec<Alert>, command: Option<&[String]>) {
        for a in &alerts {
            self.alerts.dispatch(a, command);
            if let Some(audit) = self.audit.get() {
                audit.record(
                    Draft::new(
                        Actor::daemon(),
                        "budget alert",
                        a.agent.as_str(),
                        AuditOutcome::Ok,
                    )
                    .detail(a.message()),
                );
            }
        }
    }

    /// Budget alerts and cutoffs go on this trail from now on.
    pub fn set_audit(&self, audit: AuditHandle) {
        let _ = self.audit.set(audit);
    }

    /// Holds `amount` for one call of `agent`, or refuses.
    pub fn reserve(&self, agent: &AgentName, amount: Micros) -> Result<(), Refusal> {
        let (_, now_s) = self.now();
        let mut st = self.lock();
        if st.writer.is_none() {
            return Err(Refusal::Unavailable);
        }
        let l = st.ledger(agent, now_s);
        match l.try_reserve(agent, amount) {
            Ok(()) => Ok(()),
            Err(e) => {
                let key = (l.period(), l.durable.get(l.period()).start);
                let first = l.cutoff_noted != Some(key);
                if first {
                    l.cutoff_noted = Some(key);
                }
                drop(st);
                if first {
                    tracing::warn!(agent = %agent, "budget cutoff: {e}");
                    if let Some(audit) = self.audit.get() {
                        audit.record(
                            Draft::new(
                                Actor::daemon(),
                                "budget cutoff",
                                agent.as_str(),
                                AuditOutcome::Denied,
                            )
                            .detail(e.to_string()),
                        );
                    }
                    if e.on_exhausted == OnExhausted::Stop {
                        (self.on_stop)(agent.clone());
                    }
                }
                Err(Refusal::Exhausted(*e))
            }
        }
    }

    pub fn release(&self, agent: &AgentName, amount: Micros) {
        if let Some(l) = self.lock().ledgers.get_mut(agent) {
            l.release(amount);
        }
    }

    /// Releases the reservation and books the real cost now; durable once the
    /// writer commits it (then `reply`, if any, is answered).
    pub fn settle(
        &self,
        agent: &AgentName,
        reserved: Micros,
        record: CostRecord,
        reply: Option<oneshot::Sender<Result<(), BudgetError>>>,
    ) {
        let (now_ms, now_s) = self.now();
        let mut st = self.lock();
        if let Some(l) = st.ledgers.get_mut(agent) {
            l.release(reserved);
        }
        if st.writer.is_none() {
            drop(st);
            if let Some(tx) = reply {
                let _ = tx.send(Err(BudgetError::Unavailable));
            }
            return;
        }
        // Booked against the agent the gateway measured; normally the same one.
        let booked = record.agent.clone();
        let cost = Micros(record.cost.0.max(0));
        let l = st.ledger(&booked, now_s);
        let generation = l.book(cost, now_s);
        let row = l.row();
        let event = StoredEvent::Spend(SpendEvent::new(record, reserved, now_ms));
        let done = Done::Spend(SpendDone {
            agent: booked.clone(),
            cost,
            booked_at_s: now_s,
            generation,
            reply,
        });
        if let Err(op) = st.enqueue(Op {
            event: Some(event),
            row: Some((booked, row)),
            done,
        }) {
            drop(st);
            if let Done::Spend(SpendDone {
                reply: Some(tx), ..
            }) = op.done
            {
                let _ = tx.send(Err(BudgetError::Unavailable));
            }
        }
    }

    /// The writer committed (or failed to commit) a batch. Runs on the writer
    /// thread.
    fn committed(&self, c: Committed) {
        let (_, now_s) = self.now();
        let failed = |reason: &str| BudgetError::NotDurable {
            path: self.path.clone(),
            reason: reason.to_owned(),
        };
        let mut replies = Vec::with_capacity(c.done.len());
        let mut alerts = Vec::new();
        let command;
        {
            let mut st = self.lock();
            let mut touched: Vec<AgentName> = Vec::new();
            for d in c.done {
                match d {
                    Done::Spend(s) => match &c.result {
                        Ok(()) => {
                            if let Some(l) = st.ledgers.get_mut(&s.agent) {
                                l.roll(now_s);
                                l.on_durable(s.cost, s.booked_at_s, s.generation);
                                if touched.last() != Some(&s.agent) {
                                    touched.push(s.agent.clone());
                                }
                            }
                            if let Some(tx) = s.reply {
                                replies.push(Done::Unit(tx));
                            }
                        }
                        // Not durable: the cost stays pending (still held against the
                        // budget) until the period ends or a reset. The writer
                        // logged why.
                        Err(reason) => {
                            if let Some(tx) = s.reply {
                                let _ = tx.send(Err(failed(reason)));
                            }
                        }
                    },
                    Done::Info(agent, tx, _, undo) => {
                        let r = match &c.result {
                            Ok(()) => {
                                let l = st.ledger(&agent, now_s);
                                Ok(l.info(&agent))
                            }
                            Err(reason) => {
                                // Told it failed, so it must not stay in
                                // force; and a settle queued meanwhile wrote
                                // the changed row, so the file is put right.
                                let l = st.ledger(&agent, now_s);
                                if l.undo(*undo) {
                                    tracing::warn!(agent = %agent, "a budget change of agent {agent} was not committed and is taken back");
                                    st.save_row(&agent);
                                }
                                Err(failed(reason))
                            }
                        };
                        let _ = tx.send(r);
                    }
                    other => replies.push(other),
                }
            }
            touched.sort();
            touched.dedup();
            for agent in &touched {
                alerts.extend(st.crossed_alerts(agent, now_s));
            }
            command = st.alert_command.clone();
        }
        self.dispatch(alerts, command.as_deref());
        for d in replies {
            if let Done::Unit(tx) = d {
                let _ = tx.send(c.result.as_ref().map(|_| ()).map_err(|r| failed(r)));
            }
        }
    }

    /// Budgets of every configured agent (sorted by name), or of one.
    pub fn show(&self, agent: Option<AgentName>) -> Result<Vec<BudgetInfo>, BudgetError> {
        let (_, now_s) = self.now();
        let mut st = self.lock();
        match agent {
            Some(agent) => match st.ledgers.get_mut(&agent) {
                Some(l) => {
                    l.roll(now_s);
                    Ok(vec![l.info(&agent)])
                }
                None => Err(BudgetError::UnknownAgent(agent)),
            },
            None => {
                let mut out: Vec<BudgetInfo> = st
                    .ledgers
                    .iter_mut()
                    .filter(|(_, l)| l.configured)
                    .map(|(n, l)| {
                        l.roll(now_s);
                        l.info(n)
                    })
                    .collect();
                out.sort_by(|a, b| a.name.cmp(&b.name));
                Ok(out)
            }
        }
    }

    /// The entry `audit` (if any) bound to the trail it commits to; `Err`
    /// when one is asked for but the ledger has no trail (fail closed).
    fn audited(&self, audit: Option<Draft>) -> Result<Option<persist::Audited>, BudgetError> {
        match (audit, self.audit.get()) {
            (None, _) => Ok(None),
            (Some(draft), Some(h)) => Ok(Some(persist::Audited {
                log: h.log().clone(),
                draft,
            })),
            (Some(_), None) => Err(BudgetError::Unavailable),
        }
    }

    /// `ironctl budget set`; `reply` is answered once durable, with `audit`
    /// (if given) committed in the same transaction as the change.
    pub fn set(
        &self,
        agent: AgentName,
        limit: Micros,
        period: Option<BudgetPeriod>,
        audit: Option<Draft>,
        reply: oneshot::Sender<Result<BudgetInfo, BudgetError>>,
    ) {
        if limit.0 < 0 {
            let _ = reply.send(Err(BudgetError::NegativeLimit(limit)));
            return;
        }
        let audit = match self.audited(audit) {
            Ok(a) => a,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let (now_ms, now_s) = self.now();
        let mut st = self.lock();
        let Some(l) = st.ledgers.get_mut(&agent).filter(|l| l.configured) else {
            drop(st);
            let _ = reply.send(Err(BudgetError::UnknownAgent(agent)));
            return;
        };
        l.roll(now_s);
        let installed = Override {
            limit,
            period: period.unwrap_or(l.period()),
            base: l.config.map(|c| (c.limit, c.period)),
            set_at_ms: now_ms,
        };
        let undo = Box::new(Undo::Set {
            before: l.override_.replace(installed),
            installed,
        });
        l.rearm();
        l.cutoff_noted = None;
        tracing::info!(agent = %agent, limit = %limit, period = l.period().as_str(), "budget override set");
        let op = Op {
            event: None,
            row: Some((agent.clone(), l.row())),
            done: Done::Info(agent.clone(), reply, audit, undo),
        };
        if let Err(op) = st.enqueue(op) {
            drop(st);
            if let Done::Info(_, tx, _, _) = op.done {
                let _ = tx.send(Err(BudgetError::Unavailable));
            }
            return;
        }
        // A lower limit may already be crossed.
        let alerts = st.crossed_alerts(&agent, now_s);
        let command = st.alert_command.clone();
        drop(st);
        self.dispatch(alerts, command.as_deref());
    }

    /// `ironctl budget reset`; `reply` is answered once durable, with
    /// `audit` (if given) committed in the same transaction as the change.
    pub fn reset(
        &self,
        agent: AgentName,
        audit: Option<Draft>,
        reply: oneshot::Sender<Result<BudgetInfo, BudgetError>>,
    ) {
        let audit = match self.audited(audit) {
            Ok(a) => a,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let (now_ms, now_s) = self.now();
        let mut st = self.lock();
        let Some(l) = st.ledgers.get_mut(&agent).filter(|l| l.configured) else {
            drop(st);
            let _ = reply.send(Err(BudgetError::UnknownAgent(agent)));
            return;
        };
        l.roll(now_s);
        let event = StoredEvent::Reset(ResetEvent {
            agent: agent.clone(),
            at_ms: now_ms,
            period: l.period(),
            spent_before: l.spent() + l.pending(),
        });
        let undo = Box::new(l.reset(now_s));
        tracing::info!(agent = %agent, "budget reset");
        let op = Op {
            event: Some(event),
            row: Some((agent.clone(), l.row())),
            done: Done::Info(agent, reply, audit, undo),
        };
        if let Err(op) = st.enqueue(op) {
            drop(st);
            if let Done::Info(_, tx, _, _) = op.done {
                let _ = tx.send(Err(BudgetError::Unavailable));
            }
        }
    }

    /// Start-up and reload: configured agents, overrides, thresholds.
    pub fn apply_config(
        &self,
        agents: Vec<(AgentName, Option<BudgetSpec>)>,
        section: BudgetSection,
    ) {
        let (_, now_s) = self.now();
        let mut st = self.lock();
        st.thresholds = section.alert_thresholds;
        st.thresholds.sort_unstable();
        st.thresholds.dedup();
        st.alert_command = section.alert_command;
        self.retention.keep_ms.store(
            section
                .keep_cost_history_days
                .map_or(0, |d| u64::from(d) * 86_400_000),
            std::sync::atomic::Ordering::Relaxed,
        );
        let wanted: HashSet<&AgentName> = agents.iter().map(|(n, _)| n).collect();
        for (name, l) in &mut st.ledgers {
            if !wanted.contains(name) {
                l.configured = false;
            }
        }
        for (name, spec) in &agents {
            let l = st.ledger(name, now_s);
            l.configured = true;
            let before = (l.limit(), l.period());
            let dropped = l.apply_spec(*spec);
            if (l.limit(), l.period()) != before {
                l.rearm();
                l.cutoff_noted = None;
            }
            if dropped {
                tracing::info!(
                    agent = %name,
                    "the configured budget of agent {name} changed; the override from `ironctl budget set` no longer applies"
                );
                st.save_row(name);
            }
        }
        let mut alerts = Vec::new();
        for (name, _) in &agents {
            alerts.extend(st.crossed_alerts(name, now_s));
        }
        let command = st.alert_command.clone();
        drop(st);
        self.dispatch(alerts, command.as_deref());
    }

    /// `limit - spent - pending - reserved`, floored at zero; `None` without a
    /// budget; zero once closed (fail closed).
    pub fn remaining(&self, agent: &AgentName) -> Option<Micros> {
        let (_, now_s) = self.now();
        let mut st = self.lock();
        if st.writer.is_none() {
            return Some(Micros::ZERO);
        }
        let l = st.ledgers.get_mut(agent)?;
        l.roll(now_s);
        l.remaining()
    }

    /// `reply` is answered once everything queued before is durable.
    pub fn flush(&self, reply: oneshot::Sender<Result<(), BudgetError>>) {
        let mut st = self.lock();
        if let Err(op) = st.enqueue(Op {
            event: None,
            row: None,
            done: Done::Unit(reply),
        }) {
            drop(st);
            if let Done::Unit(tx) = op.done {
                let _ = tx.send(Err(BudgetError::Unavailable));
            }
        }
    }

    /// Closes the writer's queue; the returned receiver resolves once the
    /// writer drained it and exited (`None` if already closed).
    pub fn close(&self) -> Option<oneshot::Receiver<()>> {
        let mut st = self.lock();
        st.writer = None;
        st.writer_exited.take()
    }
}
