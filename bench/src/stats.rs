//! Latency percentiles. Every sample is kept (8 bytes each: a million requests is
//! 8 MB), so percentiles are exact, not bucketed.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

/// Nanoseconds to milliseconds, rounded to the microsecond.
pub fn ms(ns: u64) -> f64 {
    (ns as f64 / 1000.0).round() / 1000.0
}

/// Percentiles of one set of latencies, in milliseconds with µs precision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    pub count: usize,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    #[serde(rename = "p99.9")]
    pub p999: f64,
    pub max: f64,
}

/// The nearest-rank percentile of sorted samples, `per_mille` = 990 for p99
/// (integer arithmetic: `0.999 * 1000` is not 999 in floating point).
fn percentile(sorted: &[u64], per_mille: usize) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (per_mille * sorted.len()).div_ceil(1000);
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl Latency {
    /// Sorts `samples` (nanoseconds) in place and summarizes them.
    pub fn of(samples: &mut [u64]) -> Self {
        samples.sort_unstable();
        if samples.is_empty() {
            return Self::default();
        }
        let sum: u128 = samples.iter().map(|&s| u128::from(s)).sum();
        Self {
            count: samples.len(),
            mean: ms((sum / samples.len() as u128) as u64),
            p50: ms(percentile(samples, 500)),
            p90: ms(percentile(samples, 900)),
            p99: ms(percentile(samples, 990)),
            p999: ms(percentile(samples, 999)),
            max: ms(samples.last().copied().unwrap_or(0)),
        }
    }
}

/// Everything one phase (or a merge of phases) measured.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    /// Scheduled send → last body byte of each 2xx response, in ns.
    pub latency: Vec<u64>,
    /// Scheduled send → response headers of each 2xx response, in ns.
    pub ttfb: Vec<u64>,
    /// Scheduled send → the request actually leaving the client, in ns. Large
    /// values mean the client (not the server) was the bottleneck.
    pub send_lag: Vec<u64>,
    /// Measured requests that got any HTTP response.
    pub responses: u64,
    /// Measured requests scheduled.
    pub scheduled: u64,
    /// Requests sent, warm-up included (what the CPU figures are divided by).
    pub sent_total: u64,
    /// First measured scheduled time → last measured completion (at least the
    /// nominal duration): what the achieved rate is computed over.
    pub span: Duration,
    /// CPU time the server process used during the phase, if its pid was given.
    pub server_cpu: Option<Duration>,
    /// CPU time this process used during the phase.
    pub client_cpu: Duration,
    /// Time the hypervisor kept this machine's CPUs from running while they
    /// had work (`steal` in `/proc/stat`), summed over CPUs, during the phase;
    /// `None` where the kernel does not report it.
    pub steal: Option<Duration>,
    /// Wall-clock time × online CPUs during the phase: what `steal` is a share of.
    pub cpu_wall: Duration,
    /// Failures by HTTP status (`"500"`) or kind (`"connect"`, `"io"`, `"timeout"`,
    /// `"body"`, `"unfinished"`).
    pub errors: BTreeMap<String, u64>,
}

impl Samples {
    pub fn merge(&mut self, other: Samples) {
        self.latency.extend(other.latency);
        self.ttfb.extend(other.ttfb);
        self.send_lag.extend(other.send_lag);
        self.responses += other.responses;
        self.scheduled += other.scheduled;
        self.sent_total += other.sent_total;
        self.span += other.span;
        self.server_cpu = match (self.server_cpu, other.server_cpu) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        self.client_cpu += other.client_cpu;
        self.steal = match (self.steal, other.steal) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        self.cpu_wall += other.cpu_wall;
        for (kind, count) in other.errors {
            *self.errors.entry(kind).or_insert(0) += count;
        }
    }

    pub fn error(&mut self, kind: impl Into<String>) {
        *self.errors.entry(kind.into()).or_insert(0) += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut samples: Vec<u64> = (1..=1000).rev().map(|i| i * 1000).collect();
        let latency = Latency::of(&mut samples);
        assert_eq!(latency.count, 1000);
        assert_eq!(latency.p50, 0.5);
        assert_eq!(latency.p90, 0.9);
        assert_eq!(latency.p99, 0.99);
        assert_eq!(latency.p999, 0.999);
        assert_eq!(latency.max, 1.0);
        assert_eq!(latency.mean, 0.501); // 500.5 µs, rounded to the µs
        assert_eq!(Latency::of(&mut []), Latency::default());
        assert_eq!(Latency::of(&mut [7_000]).p999, 0.007);
    }

    #[test]
    fn ms_rounds_to_the_microsecond() {
        assert_eq!(ms(1_234_567), 1.235);
        assert_eq!(ms(999), 0.001);
    }

    #[test]
    fn merge_adds_everything() {
        let mut a = Samples::default();
        a.error("500");
        a.latency.push(1);
        let mut b = Samples::default();
        b.error("500");
        b.error("io");
        b.latency.push(2);
        b.scheduled = 3;
        a.merge(b);
        assert_eq!(a.errors.get("500"), Some(&2));
        assert_eq!(a.errors.get("io"), Some(&1));
        assert_eq!(a.latency, vec![1, 2]);
        assert_eq!(a.scheduled, 3);
    }
}
