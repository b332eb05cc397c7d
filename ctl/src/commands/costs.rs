//! `ironctl costs [--by agent|model|provider|tag] [--since SPEC] [--agent NAME]`:
//! where the money went.

use super::Ctx;
use crate::client::ClientError;
use crate::output::{self, Align, Table};
use crate::utc;
use ironcage_shared::AgentName;
use ironcage_shared::Micros;
use ironcage_shared::protocol::{CostRow, CostsBy, CostsReport, CostsRequest, Request, Response};
use serde::Serialize;
use std::time::{SystemTime, UNIX_EPOCH};

/// `costs`.
pub fn run(
    ctx: &Ctx,
    by: CostsBy,
    since: Option<u64>,
    agent: Option<AgentName>,
) -> anyhow::Result<()> {
    let req: Request = CostsRequest { by, since, agent }.into();
    let report = match ctx.call(&req)? {
        Response::Costs(r) => r,
        other => return Err(ClientError::unexpected(&req, &other).into()),
    };
    let text = if ctx.json {
        output::json_pretty(&CostsJson::from(&report))?
    } else {
        render_table(&report)
    };
    output::emit(&text)?;
    Ok(())
}

/// KEY CALLS INPUT OUTPUT CACHE-R CACHE-W REASONING COST, then a TOTAL line.
/// Costs that include locally estimated usage are marked `~` and explained below.
pub fn render_table(report: &CostsReport) -> String {
    let mut t = Table::new(&[
        ("KEY", Align::Left),
        ("CALLS", Align::Right),
        ("INPUT", Align::Right),
        ("OUTPUT", Align::Right),
        ("CACHE-R", Align::Right),
        ("CACHE-W", Align::Right),
        ("REASONING", Align::Right),
        ("COST", Align::Right),
    ]);
    let mut sum = CostRow {
        cost: report.total,
        ..CostRow::empty("TOTAL")
    };
    let row = |r: &CostRow| {
        let mark = if r.estimated_calls > 0 { "~" } else { "" };
        vec![
            r.key.clone(),
            r.calls.to_string(),
            r.input_tokens.to_string(),
            r.output_tokens.to_string(),
            r.cache_read_tokens.to_string(),
            r.cache_write_tokens.to_string(),
            r.reasoning_tokens.to_string(),
            format!("{mark}{}", r.cost),
        ]
    };
    for r in &report.rows {
        t.row(row(r));
        sum.calls += r.calls;
        sum.input_tokens += r.input_tokens;
        sum.output_tokens += r.output_tokens;
        sum.cache_read_tokens += r.cache_read_tokens;
        sum.cache_write_tokens += r.cache_write_tokens;
        sum.reasoning_tokens += r.reasoning_tokens;
        sum.estimated_calls += r.estimated_calls;
    }
    t.row(row(&sum));
    let mut out = t.render();
    if sum.estimated_calls > 0 {
        out.push_str(&format!(
            "~ includes {} of {} calls whose usage the provider did not report (counted locally)\n",
            sum.estimated_calls, sum.calls
        ));
    }
    out
}

/// One row as `--json` prints it: the [`CostRow`] plus `cost_usd`.
#[derive(Debug, Serialize)]
pub struct CostRowJson<'a> {
    #[serde(flatten)]
    pub row: &'a CostRow,
    pub cost_usd: f64,
}

/// The report as `--json` prints it: the [`CostsReport`] fields plus `*_usd`.
#[derive(Debug, Serialize)]
pub struct CostsJson<'a> {
    pub by: CostsBy,
    pub since: Option<u64>,
    pub rows: Vec<CostRowJson<'a>>,
    pub total: Micros,
    pub total_usd: f64,
}

impl<'a> From<&'a CostsReport> for CostsJson<'a> {
    fn from(r: &'a CostsReport) -> Self {
        Self {
            by: r.by,
            since: r.since,
            rows: r
                .rows
                .iter()
                .map(|row| CostRowJson {
                    row,
                    cost_usd: row.cost.as_usd_f64(),
                })
                .collect(),
            total: r.total,
            total_usd: r.total.as_usd_f64(),
        }
    }
}

/// Parses `--since` relative to the current time; see [`parse_since_at`].
pub fn parse_since(s: &str) -> Result<u64, String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    parse_since_at(s, now)
}

/// Parses `--since` into Unix seconds:
/// - a duration back from `now`: `30m`, `24h`, `7d`, `2w`, `90s`, or combined `1h30m`;
/// - a date `2026-11-01` (its UTC midnight);
/// - an RFC 3339 timestamp `2026-11-01T12:00:00Z` / `...+02:00`;
/// - Unix seconds `1793491200`.
pub fn parse_since_at(s: &str, now: u64) -> Result<u64, String> {
    let t = s.trim();
    let help = || {
        format!(
            "cannot read {s:?} as a time; use a duration like 30m, 24h or 7d, a date like 2026-11-01, \
             an RFC 3339 timestamp like 2026-11-01T12:00:00Z, or Unix seconds"
        )
    };
    if t.is_empty() {
        return Err(help());
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse().map_err(|_| help());
    }
    if let Some(secs) = parse_duration(t) {
        return now
            .checked_sub(secs)
            .ok_or_else(|| format!("{s:?} reaches back before 1970"));
    }
    let at = utc::parse_date(t)
        .or_else(|| utc::parse_rfc3339(t))
        .ok_or_else(help)?;
    u64::try_from(at).map_err(|_| format!("{s:?} is before 1970"))
}

/// `1h30m` → 5400. Units: s, m, h, d, w. `None` if `s` is not such a duration.
fn parse_duration(s: &str) -> Option<u64> {
    let mut total: u64 = 0;
    let mut num: Option<u64> = None;
    for c in s.chars() {
        if let Some(d) = c.to_digit(10) {
            num = Some(
                num.unwrap_or(0)
                    .checked_mul(10)?
                    .checked_add(u64::from(d))?,
            );
            continue;
        }
        let unit: u64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => return None,
        };
        total = total.checked_add(num.take()?.checked_mul(unit)?)?;
    }
    // A trailing bare number ("1h30") is ambiguous: refuse it.
    if num.is_some() { None } else { Some(total) }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a panic is the failure report
mod tests {
    use super::*;

    const NOW: u64 = 1_793_534_400; // 2026-11-01T12:00:00Z

    #[test]
    fn since_durations() {
        assert_eq!(parse_since_at("24h", NOW), Ok(NOW - 86_400));
        assert_eq!(parse_since_at("7d", NOW), Ok(NOW - 7 * 86_400));
        assert_eq!(parse_since_at("30m", NOW), Ok(NOW - 1800));
        assert_eq!(parse_since_at("90s", NOW), Ok(NOW - 90));
        assert_eq!(parse_since_at("2w", NOW), Ok(NOW - 14 * 86_400));
        assert_eq!(parse_since_at("1h30m", NOW), Ok(NOW - 5400));
        assert_eq!(parse_since_at(" 24h ", NOW), Ok(NOW - 86_400));
        assert!(parse_since_at("100000w", NOW).is_err());
    }

    #[test]
    fn since_absolute() {
        assert_eq!(parse_since_at("2026-11-01", NOW), Ok(1_793_491_200));
        assert_eq!(
            parse_since_at("2026-11-01T12:00:00Z", NOW),
            Ok(1_793_534_400)
        );
        assert_eq!(
            parse_since_at("2026-11-01T13:00:00+01:00", NOW),
            Ok(1_793_534_400)
        );
        assert_eq!(parse_since_at("1793491200", NOW), Ok(1_793_491_200));
        assert_eq!(parse_since_at("0", NOW), Ok(0));
    }

    #[test]
    fn since_rejects_junk() {
        for bad in [
            "",
            "h",
            "24",
            "24x",
            "1h30",
            "-1d",
            "2026-02-30",
            "yesterday",
            "1.5h",
            "1969-12-31",
            "2026-11-01T12:00",
        ] {
            // "24" alone is Unix seconds, not a duration.
            if bad == "24" {
                assert_eq!(parse_since_at(bad, NOW), Ok(24));
                continue;
            }
            assert!(
                parse_since_at(bad, NOW).is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    fn row(key: &str, calls: u64, cost: i64, estimated: u64) -> CostRow {
        CostRow {
            key: key.into(),
            calls,
            input_tokens: calls * 1000,
            output_tokens: calls * 100,
            cache_read_tokens: 0,
            cache_write_tokens: calls,
            reasoning_tokens: 0,
            cost: Micros(cost),
            estimated_calls: estimated,
        }
    }

    #[test]
    fn table_with_total() {
        let report = CostsReport {
            by: CostsBy::Model,
            since: None,
            rows: vec![
                row("openai/gpt-4o", 12, 1_234_567, 0),
                row("anthropic/claude-sonnet-4", 3, 500_000, 1),
            ],
            total: Micros(1_734_567),
        };
        assert_eq!(
            render_table(&report),
            "KEY                        CALLS  INPUT  OUTPUT  CACHE-R  CACHE-W  REASONING        COST\n\
             openai/gpt-4o                 12  12000    1200        0       12          0   $1.234567\n\
             anthropic/claude-sonnet-4      3   3000     300        0        3          0      ~$0.50\n\
             TOTAL                         15  15000    1500        0       15          0  ~$1.734567\n\
             ~ includes 1 of 15 calls whose usage the provider did not report (counted locally)\n"
        );
    }

    #[test]
    fn empty_report_still_totals() {
        let report = CostsReport {
            by: CostsBy::Agent,
            since: Some(5),
            rows: vec![],
            total: Micros::ZERO,
        };
        let text = render_table(&report);
        assert_eq!(text.lines().count(), 2);
        assert!(
            text.ends_with("TOTAL      0      0       0        0        0          0  $0.00\n")
        );
    }

    #[test]
    fn json_shape() {
        let report = CostsReport {
            by: CostsBy::Tag,
            since: Some(NOW),
            rows: vec![row("-", 2, 1_500_000, 0)],
            total: Micros(1_500_000),
        };
        let v = serde_json::to_value(CostsJson::from(&report)).unwrap();
        assert_eq!(v["by"], "tag");
        assert_eq!(v["since"], NOW);
        assert_eq!(v["total"], 1_500_000);
        assert_eq!(v["total_usd"], 1.5);
        assert_eq!(v["rows"][0]["key"], "-");
        assert_eq!(v["rows"][0]["cost"], 1_500_000);
        assert_eq!(v["rows"][0]["cost_usd"], 1.5);
        assert_eq!(v["rows"][0]["input_tokens"], 2000);
        assert_eq!(v["rows"][0]["estimated_calls"], 0);
    }
}
