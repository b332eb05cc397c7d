//! Turning samples into the text table or the one JSON object `--json` prints.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::stats::{Latency, Samples};

/// What one phase (or the merge of the direct phases) measured.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    pub name: String,
    pub url: String,
    /// Measured requests scheduled (warm-up excluded).
    pub scheduled: u64,
    /// Of those, how many got any HTTP response.
    pub responses: u64,
    /// Of those, how many were 2xx.
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    /// Responses per second, over the measured duration or, when the server fell
    /// behind, over the time it took to answer them.
    pub achieved_rps: f64,
    /// Server CPU time per request sent (warm-up included), with `--*-pid`.
    pub server_cpu_us_per_request: Option<f64>,
    /// This client's CPU time per request sent.
    pub client_cpu_us_per_request: f64,
    /// Share of the machine's CPU time the hypervisor stole during the phase,
    /// in percent (`None` where `/proc/stat` has no steal count).
    pub steal_pct: Option<f64>,
    /// Scheduled send → last body byte, 2xx only.
    pub latency_ms: Latency,
    /// Scheduled send → response headers, 2xx only.
    pub ttfb_ms: Latency,
    /// Scheduled send → actually sent: the client's own queueing.
    pub send_lag_ms: Latency,
}

impl PhaseReport {
    pub fn new(name: &str, url: &str, mut samples: Samples) -> Self {
        let latency_ms = Latency::of(&mut samples.latency);
        let span = samples.span.as_secs_f64();
        let per_request = |cpu: std::time::Duration| {
            if samples.sent_total == 0 {
                return 0.0;
            }
            (cpu.as_secs_f64() * 1e6 / samples.sent_total as f64 * 10.0).round() / 10.0
        };
        Self {
            name: name.to_owned(),
            url: url.to_owned(),
            scheduled: samples.scheduled,
            responses: samples.responses,
            ok: latency_ms.count as u64,
            achieved_rps: if span > 0.0 {
                (samples.responses as f64 / span * 10.0).round() / 10.0
            } else {
                0.0
            },
            server_cpu_us_per_request: samples.server_cpu.map(per_request),
            client_cpu_us_per_request: per_request(samples.client_cpu),
            steal_pct: samples.steal.map(|st| {
                let wall = samples.cpu_wall.as_secs_f64();
                if wall > 0.0 {
                    (st.as_secs_f64() / wall * 1000.0).round() / 10.0
                } else {
                    0.0
                }
            }),
            errors: samples.errors,
            latency_ms,
            ttfb_ms: Latency::of(&mut samples.ttfb),
            send_lag_ms: Latency::of(&mut samples.send_lag),
        }
    }
}

/// Target minus direct, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Overhead {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    #[serde(rename = "p99.9")]
    pub p999: f64,
}

fn round_us(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

impl Overhead {
    pub fn between(target: &Latency, direct: &Latency) -> Self {
        Self {
            p50: round_us(target.p50 - direct.p50),
            p90: round_us(target.p90 - direct.p90),
            p99: round_us(target.p99 - direct.p99),
            p999: round_us(target.p999 - direct.p999),
        }
    }
}

/// The settings, echoed in the report.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub target: String,
    pub direct: Option<String>,
    pub rate: f64,
    pub duration_secs: f64,
    /// Direct/target alternations (`--rounds`).
    pub rounds: u32,
    pub warmup_secs: f64,
    pub connections: usize,
    pub prompt_bytes: usize,
    pub model: String,
    pub max_tokens: u64,
    pub stream: bool,
    pub threads: usize,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub config: Config,
    /// Every phase in the order it ran.
    pub phases: Vec<PhaseReport>,
    pub target: PhaseReport,
    /// The direct phases merged (only with `--direct`).
    pub direct: Option<PhaseReport>,
    pub overhead_ms: Option<Overhead>,
}

fn errors_text(errors: &BTreeMap<String, u64>) -> String {
    if errors.is_empty() {
        return "-".to_owned();
    }
    errors
        .iter()
        .map(|(kind, count)| format!("{kind}x{count}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn row(out: &mut String, phase: &PhaseReport) {
    let l = &phase.latency_ms;
    let _ = writeln!(
        out,
        "{:<14} {:>8} {:>8} {:>10.1} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>7}  {}",
        phase.name,
        phase.scheduled,
        phase.ok,
        phase.achieved_rps,
        l.p50,
        l.p90,
        l.p99,
        l.p999,
        l.max,
        phase
            .steal_pct
            .map_or_else(|| "-".to_owned(), |p| format!("{p:.1}%")),
        errors_text(&phase.errors)
    );
}

impl Report {
    pub fn text(&self) -> String {
        let c = &self.config;
        let mut out = String::new();
        let timing = if c.rounds > 1 {
            format!(
                "{} s per side in {} alternating rounds (+{} s warm-up per phase)",
                c.duration_secs, c.rounds, c.warmup_secs
            )
        } else {
            format!("{} s (+{} s warm-up)", c.duration_secs, c.warmup_secs)
        };
        let _ = writeln!(
            out,
            "gateway-bench: {} req/s for {timing}, {} connections, {}-byte prompt, model {}{}",
            c.rate,
            c.connections,
            c.prompt_bytes,
            c.model,
            if c.stream { ", streaming" } else { "" }
        );
        let _ = writeln!(out, "  target: {}", self.target.url);
        if let Some(direct) = &self.direct {
            let _ = writeln!(out, "  direct: {}", direct.url);
        }
        let _ = writeln!(
            out,
            "\nlatency from the scheduled send time to the last byte, 2xx only, in ms \
             (steal: the share of this machine's CPU time its hypervisor took away)"
        );
        let _ = writeln!(
            out,
            "{:<14} {:>8} {:>8} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}  errors",
            "phase", "sent", "ok", "achieved/s", "p50", "p90", "p99", "p99.9", "max", "steal"
        );
        for phase in &self.phases {
            row(&mut out, phase);
        }
        if let Some(direct) = &self.direct {
            let _ = writeln!(out);
            row(&mut out, direct);
            row(&mut out, &self.target);
        }
        let _ = writeln!(out, "\nCPU per request (warm-up included), in µs:");
        let merged = [self.direct.as_ref(), Some(&self.target)];
        let merged = if c.rounds > 1 { &merged[..] } else { &[] };
        for phase in self.phases.iter().chain(merged.iter().flatten().copied()) {
            let server = phase
                .server_cpu_us_per_request
                .map_or_else(|| "-".to_owned(), |us| format!("{us:.1}"));
            let _ = writeln!(
                out,
                "{:<14} server {:>8}   client {:>8.1}",
                phase.name, server, phase.client_cpu_us_per_request
            );
        }
        if let Some(overhead) = &self.overhead_ms {
            let _ = writeln!(
                out,
                "\noverhead (target - direct): p50 {:+.3} ms, p90 {:+.3} ms, p99 {:+.3} ms, p99.9 {:+.3} ms",
                overhead.p50, overhead.p90, overhead.p99, overhead.p999
            );
        }
        let worst_lag = self
            .phases
            .iter()
            .map(|p| p.send_lag_ms.p99)
            .fold(0.0_f64, f64::max);
        if worst_lag > 1.0 {
            let _ = writeln!(
                out,
                "\nwarning: requests went out up to {worst_lag:.3} ms (p99) after their scheduled \
                 time: all connections were busy or the client did not get the CPU in time \
                 (more --connections, a lower --rate, or fewer busy threads than cores)"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(latencies_us: &[u64]) -> Samples {
        Samples {
            sent_total: 8,
            span: std::time::Duration::from_secs(1),
            server_cpu: Some(std::time::Duration::from_micros(200)),
            client_cpu: std::time::Duration::from_micros(80),
            steal: Some(std::time::Duration::from_millis(50)),
            cpu_wall: std::time::Duration::from_secs(2),
            latency: latencies_us.iter().map(|us| us * 1000).collect(),
            ttfb: latencies_us.iter().map(|us| us * 500).collect(),
            send_lag: vec![1000; latencies_us.len()],
            responses: latencies_us.len() as u64 + 1,
            scheduled: latencies_us.len() as u64 + 1,
            errors: BTreeMap::from([("500".to_owned(), 1)]),
        }
    }

    #[test]
    fn report_has_overhead_and_both_sets() {
        let direct = PhaseReport::new("direct", "http://d", samples(&[100, 200, 300]));
        let target = PhaseReport::new("target", "http://t", samples(&[150, 260, 420]));
        assert_eq!(target.ok, 3);
        assert_eq!(target.achieved_rps, 4.0);
        assert_eq!(target.server_cpu_us_per_request, Some(25.0));
        assert_eq!(target.client_cpu_us_per_request, 10.0);
        let overhead = Overhead::between(&target.latency_ms, &direct.latency_ms);
        assert_eq!(overhead.p50, 0.06);
        assert_eq!(overhead.p99, 0.12);
        let report = Report {
            config: Config {
                target: "http://t".into(),
                direct: Some("http://d".into()),
                rate: 10.0,
                duration_secs: 1.0,
                rounds: 1,
                warmup_secs: 0.0,
                connections: 1,
                prompt_bytes: 10,
                model: "m".into(),
                max_tokens: 16,
                stream: false,
                threads: 1,
            },
            phases: vec![direct.clone(), target.clone()],
            target,
            direct: Some(direct),
            overhead_ms: Some(overhead),
        };
        let text = report.text();
        assert!(
            text.contains("overhead (target - direct): p50 +0.060 ms"),
            "{text}"
        );
        assert!(text.contains("500x1"));
        assert!(text.contains("2.5%"), "{text}");
        let json = serde_json::to_value(&report).expect("serializable");
        assert_eq!(json["overhead_ms"]["p99"], 0.12);
        assert_eq!(json["direct"]["latency_ms"]["p50"], 0.2);
        assert_eq!(json["target"]["latency_ms"]["p99.9"], 0.42);
    }
}
