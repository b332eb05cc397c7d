//! What the request path reads without asking the actor: the table of
//! breakers, each breaker's published state, and its figures.

use super::{Outcome, Rejected};
use ironcage_shared::protocol::{CircuitRef, CircuitState};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Most breakers kept. Agents choose model names, so without a bound a
/// misbehaving one could grow the table without end; past it, calls to models
/// never seen before pass untracked (warned once).
pub(super) const MAX_BREAKERS: usize = 4096;

/// Every breaker, by provider then model (two levels so a lookup borrows the
/// request's strings instead of building a key).
#[derive(Debug, Default)]
pub(super) struct Registry {
    map: RwLock<HashMap<String, HashMap<String, Arc<Cell>>>>,
    len: AtomicUsize,
    warned_full: AtomicBool,
    /// Where transitions are recorded (set once at start).
    pub audit: std::sync::OnceLock<crate::audit::AuditHandle>,
}

impl Registry {
    pub fn get(&self, provider: &str, model: &str) -> Option<Arc<Cell>> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        map.get(provider).and_then(|m| m.get(model)).cloned()
    }

    /// The breaker, created closed the first time a model is seen. When the
    /// table is full, a closed breaker outside it (the actor ignores its
    /// reports).
    pub fn get_or_insert(&self, provider: &str, model: &str) -> Arc<Cell> {
        if let Some(c) = self.get(provider, model) {
            return c;
        }
        let new = || {
            Arc::new(Cell::new(CircuitRef {
                provider: provider.to_owned(),
                model: model.to_owned(),
            }))
        };
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = map.get(provider).and_then(|m| m.get(model)) {
            return c.clone();
        }
        if self.len.load(Ordering::Relaxed) >= MAX_BREAKERS {
            if !self.warned_full.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    target: "breaker",
                    provider, model,
                    "{MAX_BREAKERS} circuit breakers exist already; calls to models not seen before pass without one"
                );
            }
            return new();
        }
        self.len.fetch_add(1, Ordering::Relaxed);
        map.entry(provider.to_owned())
            .or_default()
            .entry(model.to_owned())
            .or_insert_with(new)
            .clone()
    }

    pub fn all(&self) -> Vec<Arc<Cell>> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        map.values().flat_map(|m| m.values().cloned()).collect()
    }

    /// Drops the breakers of providers `keep` rejects.
    pub fn retain_providers(&self, keep: impl Fn(&str) -> bool) -> Vec<String> {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let gone: Vec<String> = map.keys().filter(|p| !keep(p)).cloned().collect();
        for p in &gone {
            if let Some(m) = map.remove(p) {
                self.len.fetch_sub(m.len(), Ordering::Relaxed);
            }
        }
        gone
    }
}

const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const HALF_OPEN: u64 = 2;

fn code(s: CircuitState) -> u64 {
    match s {
        CircuitState::Closed => CLOSED,
        CircuitState::Open => OPEN,
        CircuitState::HalfOpen => HALF_OPEN,
    }
}

/// One breaker as the request path sees it. Only the actor writes the state.
#[derive(Debug)]
pub(super) struct Cell {
    circuit: CircuitRef,
    /// `generation << 2 | state`: one load gives a consistent pair.
    word: AtomicU64,
    /// Meaningful when open; written before `word` is published.
    next_probe_ms: AtomicU64,
    pub stats: Stats,
}

impl Cell {
    fn new(circuit: CircuitRef) -> Self {
        Cell {
            circuit,
            word: AtomicU64::new(CLOSED),
            next_probe_ms: AtomicU64::new(0),
            stats: Stats::default(),
        }
    }

    pub fn circuit(&self) -> &CircuitRef {
        &self.circuit
    }

    pub fn load(&self) -> (CircuitState, u64) {
        let w = self.word.load(Ordering::Acquire);
        let state = match w & 3 {
            OPEN => CircuitState::Open,
            HALF_OPEN => CircuitState::HalfOpen,
            _ => CircuitState::Closed,
        };
        (state, w >> 2)
    }

    pub fn next_probe_ms(&self) -> u64 {
        self.next_probe_ms.load(Ordering::Acquire)
    }

    /// Makes a new state visible to the request path (actor only).
    pub fn publish(&self, state: CircuitState, generation: u64, next_probe_ms: u64) {
        self.next_probe_ms.store(next_probe_ms, Ordering::Release);
        self.word
            .store(generation << 2 | code(state), Ordering::Release);
    }

    pub fn rejected(&self, state: CircuitState, next_probe_ms: Option<u64>) -> Rejected {
        Rejected {
            circuit: self.circuit.clone(),
            state,
            next_probe_ms,
        }
    }
}

/// Recent latencies kept per breaker.
pub(super) const LATENCY_SAMPLES: usize = 256;

/// Counters and a ring of the last [`LATENCY_SAMPLES`] latencies, all atomics:
/// any thread records without a lock.
#[derive(Debug)]
pub(super) struct Stats {
    requests: AtomicU64,
    failures: AtomicU64,
    rejected: AtomicU64,
    samples: AtomicU64,
    /// Microseconds, saturating at `u32::MAX` (71 minutes).
    ring: [AtomicU32; LATENCY_SAMPLES],
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            samples: AtomicU64::new(0),
            ring: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }
}

/// A snapshot of [`Stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Figures {
    pub requests: u64,
    pub failures: u64,
    pub rejected: u64,
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
}

impl Stats {
    pub fn record(&self, outcome: &Outcome, elapsed: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if outcome.is_failure() {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        if *outcome == Outcome::Success {
            let us = u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX);
            let i = self.samples.fetch_add(1, Ordering::Relaxed) as usize % LATENCY_SAMPLES;
            self.ring[i].store(us, Ordering::Relaxed);
        }
    }

    pub fn rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    pub fn figures(&self) -> Figures {
        let n = (self.samples.load(Ordering::Relaxed) as usize).min(LATENCY_SAMPLES);
        let mut v: Vec<u32> = self.ring[..n]
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect();
        v.sort_unstable();
        Figures {
            requests: self.requests.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            p50_us: percentile(&v, 50),
            p99_us: percentile(&v, 99),
        }
    }
}

/// Nearest-rank percentile of sorted samples.
pub(super) fn percentile(sorted: &[u32], p: usize) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    Some(u64::from(sorted[rank - 1]))
}
