//! `ironctl circuits list|reset`: the gateway's circuit breakers, one per
//! provider and model, shared by every agent.

use super::{Ctx, mutate};
use crate::client::ClientError;
use crate::output::{self, Align, Table};
use crate::utc;
use ironcage_shared::protocol::{CircuitInfo, CircuitRef, CircuitState, Request, Response};
use serde::Serialize;
use std::time::{SystemTime, UNIX_EPOCH};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One circuit as `--json` prints it: every [`CircuitInfo`] field (times in
/// Unix milliseconds) plus `circuit` (`provider/model`) and `next_probe`
/// (RFC 3339) for people reading JSON.
#[derive(Debug, Serialize)]
pub struct CircuitJson<'a> {
    pub circuit: String,
    #[serde(flatten)]
    pub info: &'a CircuitInfo,
    pub next_probe: Option<String>,
}

impl<'a> From<&'a CircuitInfo> for CircuitJson<'a> {
    fn from(info: &'a CircuitInfo) -> Self {
        Self {
            circuit: format!("{}/{}", info.provider, info.model),
            info,
            next_probe: info.next_probe_ms.map(utc::format_rfc3339_ms),
        }
    }
}

/// `circuits list`.
pub fn list(ctx: &Ctx) -> anyhow::Result<()> {
    let req = Request::CircuitsList;
    let circuits = match ctx.call(&req)? {
        Response::Circuits(c) => c,
        other => return Err(ClientError::unexpected(&req, &other).into()),
    };
    let text = if ctx.json {
        let view: Vec<CircuitJson<'_>> = circuits.iter().map(CircuitJson::from).collect();
        output::json_pretty(&view)?
    } else {
        render_table(&circuits, now_ms())
    };
    output::emit(&text)?;
    Ok(())
}

/// `0.4ms`, `12ms`, `1.5s`.
fn latency(us: u64) -> String {
    match us {
        u if u < 10_000 => format!("{:.1}ms", u as f64 / 1000.0),
        u if u < 1_000_000 => format!("{}ms", u / 1000),
        u => format!("{:.1}s", u as f64 / 1_000_000.0),
    }
}

fn next_probe(c: &CircuitInfo, now_ms: u64) -> String {
    match (c.state, c.next_probe_ms) {
        (CircuitState::HalfOpen, _) => "probing".to_owned(),
        (CircuitState::Open, Some(at)) if at > now_ms => {
            format!("in {}", output::duration_ms(at - now_ms))
        }
        (CircuitState::Open, _) => "due".to_owned(),
        (CircuitState::Closed, _) => "-".to_owned(),
    }
}

/// PROVIDER/MODEL STATE FAILURES OPENS NEXT-PROBE REQUESTS P50 P99, as of
/// `now_ms`. FAILURES is failures in the current window / the threshold.
pub fn render_table(circuits: &[CircuitInfo], now_ms: u64) -> String {
    let mut t = Table::new(&[
        ("PROVIDER/MODEL", Align::Left),
        ("STATE", Align::Left),
        ("FAILURES", Align::Right),
        ("OPENS", Align::Right),
        ("NEXT-PROBE", Align::Left),
        ("REQUESTS", Align::Right),
        ("P50", Align::Right),
        ("P99", Align::Right),
    ]);
    for c in circuits {
        t.row(vec![
            format!("{}/{}", c.provider, c.model),
            c.state.as_str().to_owned(),
            format!("{}/{}", c.failures_in_window, c.threshold),
            c.opens.to_string(),
            next_probe(c, now_ms),
            c.requests.to_string(),
            output::or_dash(c.latency_p50_us.map(latency)),
            output::or_dash(c.latency_p99_us.map(latency)),
        ]);
    }
    t.render()
}

/// `circuits reset PROVIDER/MODEL`: close it now.
pub fn reset(ctx: &Ctx, circuit: CircuitRef) -> anyhow::Result<()> {
    mutate(ctx, circuit.into())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a panic is the failure report
mod tests {
    use super::*;

    fn sample() -> Vec<CircuitInfo> {
        let closed = CircuitInfo {
            provider: "openai".into(),
            model: "gpt-4o-mini".into(),
            state: CircuitState::Closed,
            failures_in_window: 1,
            threshold: 5,
            window_ms: 60_000,
            opens: 0,
            last_transition_ms: None,
            next_probe_ms: None,
            last_reason: None,
            requests: 1234,
            failures: 1,
            rejected: 0,
            latency_p50_us: Some(420),
            latency_p99_us: Some(1_250_000),
        };
        let open = CircuitInfo {
            model: "gpt-4o".into(),
            state: CircuitState::Open,
            failures_in_window: 0,
            opens: 2,
            last_transition_ms: Some(1_000_000),
            next_probe_ms: Some(1_042_000),
            last_reason: Some("5 failures within 60s (last: HTTP 500)".into()),
            requests: 7,
            failures: 7,
            rejected: 30,
            latency_p50_us: Some(35_000),
            latency_p99_us: Some(35_000),
            ..closed.clone()
        };
        let probing = CircuitInfo {
            provider: "anthropic".into(),
            model: "claude-sonnet-4-5".into(),
            state: CircuitState::HalfOpen,
            next_probe_ms: None,
            requests: 0,
            latency_p50_us: None,
            latency_p99_us: None,
            ..open.clone()
        };
        vec![closed, open, probing]
    }

    #[test]
    fn table() {
        assert_eq!(
            render_table(&sample(), 1_000_000),
            "PROVIDER/MODEL               STATE      FAILURES  OPENS  NEXT-PROBE  REQUESTS    P50   P99\n\
             openai/gpt-4o-mini           closed          1/5      0  -               1234  0.4ms  1.2s\n\
             openai/gpt-4o                open            0/5      2  in 42.0s           7   35ms  35ms\n\
             anthropic/claude-sonnet-4-5  half-open       0/5      2  probing            0      -     -\n"
        );
        let due = render_table(&sample()[1..2], 2_000_000);
        assert!(due.contains("  due  "), "{due}");
    }

    #[test]
    fn json_has_raw_fields_and_readable_ones() {
        let s = sample();
        let v = serde_json::to_value(CircuitJson::from(&s[1])).unwrap();
        assert_eq!(v["circuit"], "openai/gpt-4o");
        assert_eq!(v["state"], "open");
        assert_eq!(v["next_probe_ms"], 1_042_000);
        assert_eq!(v["next_probe"], "1970-01-01T00:17:22.000Z");
        assert_eq!(v["opens"], 2);
        assert_eq!(v["latency_p99_us"], 35_000);
        let v = serde_json::to_value(CircuitJson::from(&s[2])).unwrap();
        assert_eq!(v["state"], "half_open");
        assert!(v["next_probe"].is_null());
    }
}
