//! One breaker's state machine, pure: every method takes the time, nothing
//! reads a clock or logs. The actor drives it and publishes the result.

use super::{AUTH_ALERT_INTERVAL, Outcome};
use crate::config::BreakerSettings;
use ironcage_shared::protocol::CircuitState;
use std::collections::VecDeque;
use std::time::Duration;

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `2s`, `1.5s`, `250ms`.
pub(super) fn secs_text(d: Duration) -> String {
    let m = ms(d);
    if m % 1000 == 0 {
        format!("{}s", m / 1000)
    } else if m >= 1000 {
        format!("{}s", d.as_secs_f64())
    } else {
        format!("{m}ms")
    }
}

/// A state change, for the actor to publish and log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Transition {
    Opened {
        from: CircuitState,
        reason: String,
        next_probe_ms: u64,
    },
    HalfOpened,
    Closed {
        from: CircuitState,
        why: &'static str,
    },
    /// Still open; a later `Retry-After` pushed the probe back.
    Extended {
        next_probe_ms: u64,
    },
    /// The probe was abandoned (its caller went away): open again, and the
    /// next call may probe at once.
    Rearmed,
}

/// What [`Machine::acquire`] grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Grant {
    pub generation: u64,
    /// False when the circuit turned out closed (reset meanwhile): a plain pass.
    pub probe: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Machine {
    pub state: CircuitState,
    /// Bumped at every transition; reports from an earlier generation (calls
    /// admitted before the change) do not move the state.
    pub generation: u64,
    /// Times of the failures in the current window, oldest first.
    window: VecDeque<u64>,
    pub next_probe_ms: u64,
    pub opens: u64,
    pub last_transition_ms: Option<u64>,
    pub last_reason: Option<String>,
    last_auth_alert_ms: Option<u64>,
}

impl Machine {
    pub fn new() -> Self {
        Machine {
            state: CircuitState::Closed,
            generation: 0,
            window: VecDeque::new(),
            next_probe_ms: 0,
            opens: 0,
            last_transition_ms: None,
            last_reason: None,
            last_auth_alert_ms: None,
        }
    }

    /// Failures counted in the window ending at `now`.
    pub fn failures_in_window(&self, now: u64, window: Duration) -> u32 {
        let since = now.saturating_sub(ms(window));
        let n = self.window.iter().filter(|t| **t > since).count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// The half-open probe, if the circuit is open and its time has come.
    pub fn acquire(&mut self, now: u64) -> Result<(Grant, Option<Transition>), Option<u64>> {
        match self.state {
            CircuitState::Closed => Ok((
                Grant {
                    generation: self.generation,
                    probe: false,
                },
                None,
            )),
            CircuitState::HalfOpen => Err(None),
            CircuitState::Open if now < self.next_probe_ms => Err(Some(self.next_probe_ms)),
            CircuitState::Open => {
                self.state = CircuitState::HalfOpen;
                self.bump(now);
                let grant = Grant {
                    generation: self.generation,
                    probe: true,
                };
                Ok((grant, Some(Transition::HalfOpened)))
            }
        }
    }

    /// Applies how an attempt admitted at `generation` ended.
    pub fn report(
        &mut self,
        now: u64,
        s: &BreakerSettings,
        generation: u64,
        probe: bool,
        outcome: &Outcome,
    ) -> Option<Transition> {
        let current = generation == self.generation;
        let is_probe = probe && current && self.state == CircuitState::HalfOpen;
        match outcome {
            Outcome::Success | Outcome::ClientError(_) | Outcome::AuthRejected(_) => {
                is_probe.then(|| self.close(now, "the probe call was answered"))
            }
            Outcome::RateLimited {
                retry_after: Some(d),
            } => {
                let reason = format!("HTTP 429, Retry-After {}", secs_text(*d));
                match self.state {
                    CircuitState::Closed => Some(self.open(now, *d, reason)),
                    CircuitState::HalfOpen if is_probe => Some(self.open(now, *d, reason)),
                    CircuitState::HalfOpen => None,
                    CircuitState::Open => {
                        let until = now.saturating_add(ms(*d));
                        (until > self.next_probe_ms).then(|| {
                            self.next_probe_ms = until;
                            Transition::Extended {
                                next_probe_ms: until,
                            }
                        })
                    }
                }
            }
            Outcome::RateLimited { retry_after: None } => {
                self.failure(now, s, current, is_probe, "HTTP 429 without Retry-After")
            }
            Outcome::Failure(reason) => self.failure(now, s, current, is_probe, reason),
        }
    }

    fn failure(
        &mut self,
        now: u64,
        s: &BreakerSettings,
        current: bool,
        is_probe: bool,
        reason: &str,
    ) -> Option<Transition> {
        if is_probe {
            return Some(self.open(now, s.cooldown, format!("the probe call failed: {reason}")));
        }
        if self.state != CircuitState::Closed || !current {
            return None;
        }
        let since = now.saturating_sub(ms(s.window));
        while self.window.front().is_some_and(|t| *t <= since) {
            self.window.pop_front();
        }
        self.window.push_back(now);
        let n = self.window.len();
        if n >= s.failures as usize {
            let why = format!(
                "{n} failures within {} (last: {reason})",
                secs_text(s.window)
            );
            return Some(self.open(now, s.cooldown, why));
        }
        None
    }

    /// The probe's caller went away without an answer.
    pub fn abandon(&mut self, now: u64, generation: u64) -> Option<Transition> {
        if self.state != CircuitState::HalfOpen || generation != self.generation {
            return None;
        }
        self.state = CircuitState::Open;
        self.next_probe_ms = now;
        self.bump(now);
        Some(Transition::Rearmed)
    }

    /// Closes the circuit now (operator).
    pub fn reset(&mut self, now: u64) -> Option<Transition> {
        self.window.clear();
        (self.state != CircuitState::Closed).then(|| self.close(now, "reset by an operator"))
    }

    /// Whether a 401/403 at `now` should alert (at most once per interval).
    pub fn auth_alert_due(&mut self, now: u64) -> bool {
        let due = self
            .last_auth_alert_ms
            .is_none_or(|t| now.saturating_sub(t) >= ms(AUTH_ALERT_INTERVAL));
        if due {
            self.last_auth_alert_ms = Some(now);
        }
        due
    }

    fn bump(&mut self, now: u64) {
        self.generation += 1;
        self.last_transition_ms = Some(now);
    }

    fn open(&mut self, now: u64, hold: Duration, reason: String) -> Transition {
        let from = self.state;
        self.state = CircuitState::Open;
        self.next_probe_ms = now.saturating_add(ms(hold));
        self.opens += 1;
        self.window.clear();
        self.last_reason = Some(reason.clone());
        self.bump(now);
        Transition::Opened {
            from,
            reason,
            next_probe_ms: self.next_probe_ms,
        }
    }

    fn close(&mut self, now: u64, why: &'static str) -> Transition {
        let from = self.state;
        self.state = CircuitState::Closed;
        self.next_probe_ms = 0;
        self.window.clear();
        self.bump(now);
        Transition::Closed { from, why }
    }
}
