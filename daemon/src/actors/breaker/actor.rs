//! The breaker actor: owns every [`Machine`], applies reports one at a time,
//! publishes each new state into its [`Cell`], and logs every transition.
//! Reached only through [`super::BreakerHandle`] and [`super::Ticket`].

use super::cell::{Cell, Registry};
use super::machine::{Grant, Machine, Transition, secs_text};
use super::{BreakerConfig, BreakerError, Outcome, Rejected};
use crate::actors::budget::Clock;
use actix::prelude::*;
use ironcage_shared::protocol::{CircuitInfo, CircuitRef, CircuitState};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub(crate) struct BreakerActor {
    config: BreakerConfig,
    clock: Arc<dyn Clock>,
    registry: Arc<Registry>,
    machines: HashMap<CircuitRef, Machine>,
}

impl std::fmt::Debug for BreakerActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BreakerActor")
            .field("breakers", &self.machines.len())
            .finish_non_exhaustive()
    }
}

impl Actor for BreakerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Unbounded: a dropped probe ticket's `do_send` must never be lost.
        ctx.set_mailbox_capacity(0);
    }
}

impl BreakerActor {
    pub fn new(config: BreakerConfig, clock: Arc<dyn Clock>, registry: Arc<Registry>) -> Self {
        BreakerActor {
            config,
            clock,
            registry,
            machines: HashMap::new(),
        }
    }

    /// The machine behind `cell`, or `None` when the cell is no longer in the
    /// table (its provider was removed by a reload while a call was in flight).
    fn machine(&mut self, cell: &Cell) -> Option<&mut Machine> {
        let c = cell.circuit();
        let live = self
            .registry
            .get(&c.provider, &c.model)
            .is_some_and(|live| std::ptr::eq(Arc::as_ptr(&live), cell));
        if !live {
            return None;
        }
        if !self.machines.contains_key(c) {
            self.machines.insert(c.clone(), Machine::new());
        }
        self.machines.get_mut(c)
    }

    /// Puts a transition on the audit trail (queued, group-committed).
    fn audit(&self, cell: &Cell, t: &Transition) {
        let Some(audit) = self.registry.audit.get() else {
            return;
        };
        let (action, detail) = match t {
            Transition::Opened { from, reason, .. } => (
                "breaker opened",
                format!("from {}: {reason}", from.as_str()),
            ),
            Transition::HalfOpened => ("breaker half-opened", String::new()),
            Transition::Closed { from, why } => {
                ("breaker closed", format!("from {}: {why}", from.as_str()))
            }
            // Not state changes: a moved probe time, a re-armed probe.
            Transition::Extended { .. } | Transition::Rearmed => return,
        };
        audit.record(
            crate::audit::Draft::new(
                crate::audit::Actor::daemon(),
                action,
                cell.circuit().to_string(),
                ironcage_shared::protocol::AuditOutcome::Ok,
            )
            .detail(detail),
        );
    }

    fn publish(cell: &Cell, m: &Machine, t: &Transition, now: u64) {
        cell.publish(m.state, m.generation, m.next_probe_ms);
        log(cell.circuit(), m, t, now);
    }

    fn info(&self, cell: &Cell, now: u64) -> CircuitInfo {
        let c = cell.circuit();
        let s = self.config.for_provider(&c.provider);
        let fresh = Machine::new();
        let m = self.machines.get(c).unwrap_or(&fresh);
        let f = cell.stats.figures();
        CircuitInfo {
            provider: c.provider.clone(),
            model: c.model.clone(),
            state: m.state,
            failures_in_window: m.failures_in_window(now, s.window),
            threshold: s.failures,
            window_ms: u64::try_from(s.window.as_millis()).unwrap_or(u64::MAX),
            opens: m.opens,
            last_transition_ms: m.last_transition_ms,
            next_probe_ms: (m.state == CircuitState::Open).then_some(m.next_probe_ms),
            last_reason: m.last_reason.clone(),
            requests: f.requests,
            failures: f.failures,
            rejected: f.rejected,
            latency_p50_us: f.p50_us,
            latency_p99_us: f.p99_us,
        }
    }
}

fn log(c: &CircuitRef, m: &Machine, t: &Transition, now: u64) {
    let (provider, model) = (c.provider.as_str(), c.model.as_str());
    match t {
        Transition::Opened {
            from,
            reason,
            next_probe_ms,
        } => {
            let wait = secs_text(Duration::from_millis(next_probe_ms.saturating_sub(now)));
            tracing::warn!(
                target: "breaker",
                provider, model, from = from.as_str(), to = "open", reason = %reason,
                next_probe_ms, opens = m.opens,
                "circuit {c} opened: {reason}; calls fall back until one probe is let through in {wait}"
            );
        }
        Transition::HalfOpened => tracing::info!(
            target: "breaker",
            provider, model, from = "open", to = "half-open",
            "circuit {c} half-open: letting one probe call through"
        ),
        Transition::Closed { from, why } => tracing::info!(
            target: "breaker",
            provider, model, from = from.as_str(), to = "closed", reason = why,
            "circuit {c} closed: {why}"
        ),
        Transition::Extended { next_probe_ms } => {
            let wait = secs_text(Duration::from_millis(next_probe_ms.saturating_sub(now)));
            tracing::info!(
                target: "breaker",
                provider, model, from = "open", to = "open", next_probe_ms,
                "circuit {c} stays open: a Retry-After moved its next probe to {wait} from now"
            );
        }
        Transition::Rearmed => tracing::info!(
            target: "breaker",
            provider, model, from = "half-open", to = "open", next_probe_ms = m.next_probe_ms,
            "circuit {c}: the probe call was abandoned before it answered; the next call probes"
        ),
    }
}

/// Asks for the half-open probe.
#[derive(Debug, Message)]
#[rtype(result = "Result<Grant, Rejected>")]
pub(super) struct Acquire {
    pub cell: Arc<Cell>,
}

impl Handler<Acquire> for BreakerActor {
    type Result = Result<Grant, Rejected>;
    fn handle(&mut self, m: Acquire, _: &mut Context<Self>) -> Self::Result {
        let now = self.clock.now_ms();
        let Some(machine) = self.machine(&m.cell) else {
            return Err(m.cell.rejected(CircuitState::Open, None));
        };
        match machine.acquire(now) {
            Ok((grant, t)) => {
                if let Some(t) = t {
                    Self::publish(&m.cell, machine, &t, now);
                    self.audit(&m.cell, &t);
                }
                Ok(grant)
            }
            Err(Some(at)) => Err(m.cell.rejected(CircuitState::Open, Some(at))),
            Err(None) => Err(m.cell.rejected(CircuitState::HalfOpen, None)),
        }
    }
}

/// How an attempt ended (failures, 429s, auth errors, and every probe).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(super) struct Report {
    pub cell: Arc<Cell>,
    pub generation: u64,
    pub probe: bool,
    pub outcome: Outcome,
}

impl Handler<Report> for BreakerActor {
    type Result = ();
    fn handle(&mut self, m: Report, _: &mut Context<Self>) {
        let now = self.clock.now_ms();
        let settings = self.config.for_provider(&m.cell.circuit().provider);
        let Some(machine) = self.machine(&m.cell) else {
            return;
        };
        if let Outcome::AuthRejected(status) = m.outcome
            && machine.auth_alert_due(now)
        {
            let c = m.cell.circuit();
            tracing::error!(
                target: "breaker",
                provider = %c.provider, model = %c.model, status, alert = "provider_key_rejected",
                "provider {} answered HTTP {status} to a call for model {}: the provider rejected the API key \
                 or its access (check the provider's api_key_env and the key's permissions). Not counted as an \
                 outage; repeats for this model are not logged for {}",
                c.provider, c.model, secs_text(super::AUTH_ALERT_INTERVAL)
            );
        }
        if let Some(t) = machine.report(now, &settings, m.generation, m.probe, &m.outcome) {
            Self::publish(&m.cell, machine, &t, now);
            self.audit(&m.cell, &t);
        }
    }
}

/// A probe ticket was dropped unfinished.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(super) struct Abandon {
    pub cell: Arc<Cell>,
    pub generation: u64,
}

impl Handler<Abandon> for BreakerActor {
    type Result = ();
    fn handle(&mut self, m: Abandon, _: &mut Context<Self>) {
        let now = self.clock.now_ms();
        let Some(machine) = self.machine(&m.cell) else {
            return;
        };
        if let Some(t) = machine.abandon(now, m.generation) {
            Self::publish(&m.cell, machine, &t, now);
            self.audit(&m.cell, &t);
        }
    }
}

#[derive(Debug, Message)]
#[rtype(result = "Vec<CircuitInfo>")]
pub(super) struct List;

impl Handler<List> for BreakerActor {
    type Result = Vec<CircuitInfo>;
    fn handle(&mut self, _: List, _: &mut Context<Self>) -> Self::Result {
        let now = self.clock.now_ms();
        let mut out: Vec<CircuitInfo> = self
            .registry
            .all()
            .iter()
            .map(|c| self.info(c, now))
            .collect();
        out.sort_by(|a, b| (&a.provider, &a.model).cmp(&(&b.provider, &b.model)));
        out
    }
}

/// Closes a circuit; answers the state it had.
#[derive(Debug, Message)]
#[rtype(result = "Result<CircuitState, BreakerError>")]
pub(super) struct Reset(pub CircuitRef);

impl Handler<Reset> for BreakerActor {
    type Result = Result<CircuitState, BreakerError>;
    fn handle(&mut self, m: Reset, _: &mut Context<Self>) -> Self::Result {
        let now = self.clock.now_ms();
        let Some(cell) = self.registry.get(&m.0.provider, &m.0.model) else {
            return Err(BreakerError::NotFound(m.0));
        };
        let Some(machine) = self.machine(&cell) else {
            return Err(BreakerError::NotFound(m.0));
        };
        let before = machine.state;
        if let Some(t) = machine.reset(now) {
            Self::publish(&cell, machine, &t, now);
            self.audit(&cell, &t);
        }
        Ok(before)
    }
}

#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(super) struct ApplyConfig(pub BreakerConfig);

impl Handler<ApplyConfig> for BreakerActor {
    type Result = ();
    fn handle(&mut self, m: ApplyConfig, _: &mut Context<Self>) {
        let keep = m.0.providers.clone();
        let gone = self.registry.retain_providers(|p| keep.contains_key(p));
        self.machines.retain(|c, _| keep.contains_key(&c.provider));
        for p in gone {
            tracing::info!(target: "breaker", provider = %p, "provider removed from the config: its circuit breakers are dropped");
        }
        self.config = m.0;
    }
}
