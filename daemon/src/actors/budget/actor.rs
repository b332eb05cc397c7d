//! The budget actor: owns every [`Ledger`] and serializes all changes to them.
//! Reached only through [`super::BudgetHandle`].

use super::alerts::{Alert, AlertQueue, Inflight};
use super::ledger::Ledger;
use super::persist::{
    self, Committed, Counters, Done, Op, Override, ResetEvent, SpendDone, SpendEvent, StoredEvent,
};
use super::{BudgetError, Clock, CostRecord, Refusal, Reservation, WriterStats};
use crate::config::{BudgetSection, BudgetSpec, OnExhausted};
use crate::store::Store;
use actix::prelude::*;
use ironcage_shared::AgentName;
use ironcage_shared::money::Micros;
use ironcage_shared::protocol::{BudgetInfo, BudgetPeriod};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, mpsc};
use tokio::sync::oneshot;

/// State shared between the actor, the writer and the handles.
#[derive(Debug, Default)]
pub(super) struct Shared {
    pub alerts: Arc<Inflight>,
    pub counters: Arc<Counters>,
}

impl Shared {
    pub fn stats(&self) -> WriterStats {
        self.counters.get()
    }
}

pub(crate) struct BudgetActor {
    ledgers: HashMap<AgentName, Ledger>,
    thresholds: Vec<u32>,
    alert_command: Option<Vec<String>>,
    clock: Arc<dyn Clock>,
    on_stop: Arc<dyn Fn(AgentName) + Send + Sync>,
    /// `None` after `Close`.
    writer: Option<mpsc::Sender<Op>>,
    writer_exited: Option<oneshot::Receiver<()>>,
    alerts: AlertQueue,
    path: PathBuf,
}

impl std::fmt::Debug for BudgetActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BudgetActor")
            .field("agents", &self.ledgers.len())
            .finish_non_exhaustive()
    }
}

impl Actor for BudgetActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Unbounded: the gateway's senders must never park on a full mailbox.
        ctx.set_mailbox_capacity(0);
    }
}

pub(super) fn start(
    store: Arc<Store>,
    agents: Vec<(AgentName, Option<BudgetSpec>)>,
    section: BudgetSection,
    clock: Arc<dyn Clock>,
    on_stop: Arc<dyn Fn(AgentName) + Send + Sync>,
) -> Result<(Addr<BudgetActor>, Arc<Shared>), BudgetError> {
    let loaded = persist::load(&store)?;
    let now_s = clock.now_ms() / 1000;
    let ledgers = loaded
        .rows
        .into_iter()
        .map(|(name, row)| (name, Ledger::from_row(row, now_s)))
        .collect();
    let (tx, rx) = mpsc::channel();
    let (exit_tx, exit_rx) = oneshot::channel();
    let shared = Arc::new(Shared::default());
    let mut actor = BudgetActor {
        ledgers,
        thresholds: Vec::new(),
        alert_command: None,
        clock,
        on_stop,
        writer: Some(tx),
        writer_exited: Some(exit_rx),
        alerts: AlertQueue::start(shared.alerts.clone()),
        path: store.path().to_owned(),
    };
    // Overrides dropped because the config changed while we were down, and
    // thresholds crossed but not fired (a crash between commit and alert), are
    // handled exactly as on a reload.
    actor.apply(agents, section);
    let counters = shared.counters.clone();
    let ctx = Context::new();
    let weak = ctx.address().downgrade();
    let deliver = Box::new(move |c: Committed| match weak.upgrade() {
        Some(addr) => addr.do_send(c),
        None => orphaned(c),
    });
    persist::spawn_writer(store, rx, loaded.next_seq, counters, deliver, exit_tx)
        .map_err(BudgetError::Thread)?;
    Ok((ctx.run(actor), shared))
}

/// The actor is gone (shutdown): answer what can be answered without it.
fn orphaned(c: Committed) {
    for d in c.done {
        match d {
            Done::Spend(s) => {
                let _ = s
                    .reply
                    .send(c.result.clone().map_err(|_| BudgetError::Unavailable));
            }
            Done::Unit(tx) => {
                let _ = tx.send(c.result.clone().map_err(|_| BudgetError::Unavailable));
            }
            Done::Info(_, tx) => {
                let _ = tx.send(Err(BudgetError::Unavailable));
            }
            Done::Nothing => {}
        }
    }
}

impl BudgetActor {
    fn now(&self) -> (u64, u64) {
        let ms = self.clock.now_ms();
        (ms, ms / 1000)
    }

    /// The agent's ledger, rolled to `now_s`; created (unlimited, unlisted) for
    /// an agent never seen before, so its spend is still metered.
    fn ledger(&mut self, agent: &AgentName, now_s: u64) -> &mut Ledger {
        let l = self
            .ledgers
            .entry(agent.clone())
            .or_insert_with(|| Ledger::new(now_s));
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

    /// Fires every threshold the agent's durable spend has newly crossed.
    fn check_alerts(&mut self, agent: &AgentName, now_s: u64) {
        let Some(l) = self.ledgers.get_mut(agent) else {
            return;
        };
        let (Some(limit), true) = (l.limit(), l.configured) else {
            return;
        };
        let fresh = l.newly_crossed(&self.thresholds);
        if fresh.is_empty() {
            return;
        }
        let p = l.period();
        let (spent, start) = (l.spent(), l.durable.get(p).start);
        for t in fresh {
            let alert = Alert {
                agent: agent.clone(),
                threshold_percent: t,
                limit,
                spent,
                period: p,
                period_start: start,
                at_s: now_s,
            };
            self.alerts.dispatch(&alert, self.alert_command.as_deref());
        }
        self.save_row(agent);
    }

    /// Start-up and reload: configured agents, overrides, thresholds.
    fn apply(&mut self, agents: Vec<(AgentName, Option<BudgetSpec>)>, section: BudgetSection) {
        let (_, now_s) = self.now();
        self.thresholds = section.alert_thresholds;
        self.thresholds.sort_unstable();
        self.thresholds.dedup();
        self.alert_command = section.alert_command;
        let wanted: HashSet<&AgentName> = agents.iter().map(|(n, _)| n).collect();
        for (name, l) in &mut self.ledgers {
            if !wanted.contains(name) {
                l.configured = false;
            }
        }
        for (name, spec) in &agents {
            let l = self.ledger(name, now_s);
            l.configured = true;
            let before = (l.limit(), l.period());
            let dropped = l.apply_spec(*spec);
            if (l.limit(), l.period()) != before {
                l.rearm();
                l.stop_notified = None;
            }
            if dropped {
                tracing::info!(
                    agent = %name,
                    "the configured budget of agent {name} changed; the override from `ironctl budget set` no longer applies"
                );
                self.save_row(name);
            }
        }
        for (name, _) in &agents {
            self.check_alerts(name, now_s);
        }
    }
}

// ------------------------------------------------------------------ messages

#[derive(Debug, Message)]
#[rtype(result = "Result<Reservation, Refusal>")]
pub(super) struct Reserve {
    pub agent: AgentName,
    pub amount: Micros,
}

impl Handler<Reserve> for BudgetActor {
    type Result = Result<Reservation, Refusal>;
    fn handle(&mut self, m: Reserve, ctx: &mut Context<Self>) -> Self::Result {
        if self.writer.is_none() {
            return Err(Refusal::Unavailable);
        }
        let (_, now_s) = self.now();
        let l = self.ledger(&m.agent, now_s);
        match l.try_reserve(&m.agent, m.amount) {
            // Built here so that if the caller went away meanwhile, dropping the
            // undelivered reply releases the amount again.
            Ok(()) => Ok(Reservation {
                agent: m.agent,
                amount: m.amount,
                addr: Some(ctx.address()),
            }),
            Err(e) => {
                if e.on_exhausted == OnExhausted::Stop {
                    let key = (l.period(), l.durable.get(l.period()).start);
                    if l.stop_notified != Some(key) {
                        l.stop_notified = Some(key);
                        tracing::warn!(agent = %m.agent, "{e}");
                        (self.on_stop)(m.agent.clone());
                    }
                }
                Err(Refusal::Exhausted(*e))
            }
        }
    }
}

#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(super) struct Release {
    pub agent: AgentName,
    pub amount: Micros,
}

impl Handler<Release> for BudgetActor {
    type Result = ();
    fn handle(&mut self, m: Release, _: &mut Context<Self>) {
        if let Some(l) = self.ledgers.get_mut(&m.agent) {
            l.release(m.amount);
        }
    }
}

#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(super) struct Settle {
    pub agent: AgentName,
    pub reserved: Micros,
    pub record: CostRecord,
    pub reply: oneshot::Sender<Result<(), BudgetError>>,
}

impl Handler<Settle> for BudgetActor {
    type Result = ();
    fn handle(&mut self, m: Settle, _: &mut Context<Self>) {
        let (now_ms, now_s) = self.now();
        if let Some(l) = self.ledgers.get_mut(&m.agent) {
            l.release(m.reserved);
        }
        if self.writer.is_none() {
            let _ = m.reply.send(Err(BudgetError::Unavailable));
            return;
        }
        // Booked against the agent the gateway measured; normally the same one.
        let agent = m.record.agent.clone();
        let cost = Micros(m.record.cost.0.max(0));
        let l = self.ledger(&agent, now_s);
        let generation = l.book(cost, now_s);
        let row = l.row();
        let event = StoredEvent::Spend(SpendEvent::new(m.record, m.reserved, now_ms));
        let done = Done::Spend(SpendDone {
            agent: agent.clone(),
            cost,
            booked_at_s: now_s,
            generation,
            reply: m.reply,
        });
        if let Err(op) = self.enqueue(Op {
            event: Some(event),
            row: Some((agent, row)),
            done,
        }) {
            if let Done::Spend(s) = op.done {
                let _ = s.reply.send(Err(BudgetError::Unavailable));
            }
        }
    }
}

impl Message for Committed {
    type Result = ();
}

impl Handler<Committed> for BudgetActor {
    type Result = ();
    fn handle(&mut self, c: Committed, _: &mut Context<Self>) {
        let (_, now_s) = self.now();
        let path = self.path.clone();
        let failed = |reason: &str| BudgetError::NotDurable {
            path: path.clone(),
            reason: reason.to_owned(),
        };
        let mut touched: Vec<AgentName> = Vec::new();
        let mut replies = Vec::with_capacity(c.done.len());
        for d in c.done {
            match d {
                Done::Spend(s) => {
                    match &c.result {
                        Ok(()) => {
                            if let Some(l) = self.ledgers.get_mut(&s.agent) {
                                l.roll(now_s);
                                l.on_durable(s.cost, s.booked_at_s, s.generation);
                                if touched.last() != Some(&s.agent) {
                                    touched.push(s.agent.clone());
                                }
                            }
                            replies.push(Done::Unit(s.reply));
                        }
                        // Not durable: the cost stays pending (still held against the
                        // budget) until the period ends or a reset.
                        Err(reason) => {
                            let _ = s.reply.send(Err(failed(reason)));
                        }
                    }
                }
                other => replies.push(other),
            }
        }
        touched.sort();
        touched.dedup();
        for agent in &touched {
            self.check_alerts(agent, now_s);
        }
        for d in replies {
            match d {
                Done::Unit(tx) => {
                    let _ = tx.send(c.result.as_ref().map(|_| ()).map_err(|r| failed(r)));
                }
                Done::Info(agent, tx) => {
                    let r = match &c.result {
                        Ok(()) => {
                            let l = self.ledger(&agent, now_s);
                            Ok(l.info(&agent))
                        }
                        Err(reason) => Err(failed(reason)),
                    };
                    let _ = tx.send(r);
                }
                Done::Spend(_) | Done::Nothing => {}
            }
        }
    }
}

#[derive(Debug, Message)]
#[rtype(result = "Result<Vec<BudgetInfo>, BudgetError>")]
pub(super) struct Show(pub Option<AgentName>);

impl Handler<Show> for BudgetActor {
    type Result = Result<Vec<BudgetInfo>, BudgetError>;
    fn handle(&mut self, m: Show, _: &mut Context<Self>) -> Self::Result {
        let (_, now_s) = self.now();
        match m.0 {
            Some(agent) => match self.ledgers.get_mut(&agent) {
                Some(l) => {
                    l.roll(now_s);
                    Ok(vec![l.info(&agent)])
                }
                None => Err(BudgetError::UnknownAgent(agent)),
            },
            None => {
                let mut out: Vec<BudgetInfo> = self
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
}

#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(super) struct Set {
    pub agent: AgentName,
    pub limit: Micros,
    pub period: Option<BudgetPeriod>,
    pub reply: oneshot::Sender<Result<BudgetInfo, BudgetError>>,
}

impl Handler<Set> for BudgetActor {
    type Result = ();
    fn handle(&mut self, m: Set, _: &mut Context<Self>) {
        if m.limit.0 < 0 {
            let _ = m.reply.send(Err(BudgetError::NegativeLimit(m.limit)));
            return;
        }
        let (now_ms, now_s) = self.now();
        let Some(l) = self.ledgers.get_mut(&m.agent).filter(|l| l.configured) else {
            let _ = m.reply.send(Err(BudgetError::UnknownAgent(m.agent)));
            return;
        };
        l.roll(now_s);
        l.override_ = Some(Override {
            limit: m.limit,
            period: m.period.unwrap_or(l.period()),
            base: l.config.map(|c| (c.limit, c.period)),
            set_at_ms: now_ms,
        });
        l.rearm();
        l.stop_notified = None;
        tracing::info!(agent = %m.agent, limit = %m.limit, period = l.period().as_str(), "budget override set");
        let op = Op {
            event: None,
            row: Some((m.agent.clone(), l.row())),
            done: Done::Info(m.agent.clone(), m.reply),
        };
        if let Err(op) = self.enqueue(op) {
            if let Done::Info(_, tx) = op.done {
                let _ = tx.send(Err(BudgetError::Unavailable));
            }
            return;
        }
        // A lower limit may already be crossed.
        self.check_alerts(&m.agent, now_s);
    }
}

#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(super) struct Reset {
    pub agent: AgentName,
    pub reply: oneshot::Sender<Result<BudgetInfo, BudgetError>>,
}

impl Handler<Reset> for BudgetActor {
    type Result = ();
    fn handle(&mut self, m: Reset, _: &mut Context<Self>) {
        let (now_ms, now_s) = self.now();
        let Some(l) = self.ledgers.get_mut(&m.agent).filter(|l| l.configured) else {
            let _ = m.reply.send(Err(BudgetError::UnknownAgent(m.agent)));
            return;
        };
        l.roll(now_s);
        let event = StoredEvent::Reset(ResetEvent {
            agent: m.agent.clone(),
            at_ms: now_ms,
            period: l.period(),
            spent_before: l.spent() + l.pending(),
        });
        l.reset();
        tracing::info!(agent = %m.agent, "budget reset");
        let op = Op {
            event: Some(event),
            row: Some((m.agent.clone(), l.row())),
            done: Done::Info(m.agent, m.reply),
        };
        if let Err(op) = self.enqueue(op)
            && let Done::Info(_, tx) = op.done
        {
            let _ = tx.send(Err(BudgetError::Unavailable));
        }
    }
}

#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(super) struct ApplyConfig {
    pub agents: Vec<(AgentName, Option<BudgetSpec>)>,
    pub section: BudgetSection,
}

impl Handler<ApplyConfig> for BudgetActor {
    type Result = ();
    fn handle(&mut self, m: ApplyConfig, _: &mut Context<Self>) {
        self.apply(m.agents, m.section);
    }
}

#[derive(Debug, Message)]
#[rtype(result = "Option<Micros>")]
pub(super) struct Remaining(pub AgentName);

impl Handler<Remaining> for BudgetActor {
    type Result = Option<Micros>;
    fn handle(&mut self, m: Remaining, _: &mut Context<Self>) -> Option<Micros> {
        if self.writer.is_none() {
            return Some(Micros::ZERO);
        }
        let (_, now_s) = self.now();
        let l = self.ledgers.get_mut(&m.0)?;
        l.roll(now_s);
        l.remaining()
    }
}

#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(super) struct Flush {
    pub reply: oneshot::Sender<Result<(), BudgetError>>,
}

impl Handler<Flush> for BudgetActor {
    type Result = ();
    fn handle(&mut self, m: Flush, _: &mut Context<Self>) {
        if let Err(op) = self.enqueue(Op {
            event: None,
            row: None,
            done: Done::Unit(m.reply),
        }) && let Done::Unit(tx) = op.done
        {
            let _ = tx.send(Err(BudgetError::Unavailable));
        }
    }
}

#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(super) struct Close;

impl Handler<Close> for BudgetActor {
    type Result = ResponseFuture<()>;
    fn handle(&mut self, _: Close, _: &mut Context<Self>) -> Self::Result {
        // Dropping the sender lets the writer drain the queue and exit.
        self.writer = None;
        let exited = self.writer_exited.take();
        Box::pin(async move {
            if let Some(rx) = exited {
                let _ = rx.await;
            }
        })
    }
}
