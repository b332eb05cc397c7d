//! `ironctl budget show|set|reset`: per-agent spending limits and the ledger.

use super::{Ctx, mutate};
use crate::client::ClientError;
use crate::output::{self, Align, Table};
use ironcage_shared::protocol::{
    AgentRef, BudgetInfo, BudgetPeriod, BudgetSetRequest, BudgetShowRequest, Request, Response,
};
use ironcage_shared::{AgentName, Micros};
use serde::Serialize;

/// One budget as `--json` prints it: every [`BudgetInfo`] field (money in integer
/// micro-dollars) plus `*_usd` float companions for humans reading JSON.
#[derive(Debug, Serialize)]
pub struct BudgetJson<'a> {
    #[serde(flatten)]
    pub info: &'a BudgetInfo,
    pub limit_usd: Option<f64>,
    pub spent_usd: f64,
    pub reserved_usd: f64,
    pub remaining_usd: Option<f64>,
}

impl<'a> From<&'a BudgetInfo> for BudgetJson<'a> {
    fn from(info: &'a BudgetInfo) -> Self {
        Self {
            info,
            limit_usd: info.limit.map(Micros::as_usd_f64),
            spent_usd: info.spent.as_usd_f64(),
            reserved_usd: info.reserved.as_usd_f64(),
            remaining_usd: info.remaining.map(Micros::as_usd_f64),
        }
    }
}

/// `budget show [NAME]`: always a list (of one, with NAME).
pub fn show(ctx: &Ctx, name: Option<AgentName>) -> anyhow::Result<()> {
    let req = Request::BudgetShow(BudgetShowRequest { name });
    let budgets = match ctx.call(&req)? {
        Response::Budgets(b) => b,
        other => return Err(ClientError::unexpected(&req, &other).into()),
    };
    let text = if ctx.json {
        let view: Vec<BudgetJson<'_>> = budgets.iter().map(BudgetJson::from).collect();
        output::json_pretty(&view)?
    } else {
        render_table(&budgets)
    };
    output::emit(&text)?;
    Ok(())
}

/// AGENT LIMIT PERIOD SPENT RESERVED REMAINING CALLS.
pub fn render_table(budgets: &[BudgetInfo]) -> String {
    let mut t = Table::new(&[
        ("AGENT", Align::Left),
        ("LIMIT", Align::Right),
        ("PERIOD", Align::Left),
        ("SPENT", Align::Right),
        ("RESERVED", Align::Right),
        ("REMAINING", Align::Right),
        ("CALLS", Align::Right),
    ]);
    for b in budgets {
        t.row(vec![
            b.name.to_string(),
            b.limit
                .map_or_else(|| "unlimited".to_owned(), |l| l.to_string()),
            b.period.as_str().to_owned(),
            b.spent.to_string(),
            b.reserved.to_string(),
            output::or_dash(b.remaining),
            b.calls.to_string(),
        ]);
    }
    t.render()
}

/// `budget set NAME --usd X [--period P]`.
pub fn set(
    ctx: &Ctx,
    name: AgentName,
    limit: Micros,
    period: Option<BudgetPeriod>,
) -> anyhow::Result<()> {
    mutate(
        ctx,
        BudgetSetRequest {
            name,
            limit,
            period,
        }
        .into(),
    )
}

/// `budget reset NAME`: the current period's spend back to zero.
pub fn reset(ctx: &Ctx, name: AgentName) -> anyhow::Result<()> {
    mutate(ctx, Request::BudgetReset(AgentRef { name }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a panic is the failure report
mod tests {
    use super::*;

    fn sample() -> Vec<BudgetInfo> {
        vec![
            BudgetInfo {
                name: AgentName::new("research").unwrap(),
                limit: Some(Micros(50_000_000)),
                period: BudgetPeriod::Day,
                period_start: 1_793_491_200,
                period_end: Some(1_793_577_600),
                spent: Micros(12_345_678),
                reserved: Micros(250_000),
                remaining: Some(Micros(37_404_322)),
                calls: 1234,
                overridden: true,
                alerts_fired: vec![50],
            },
            BudgetInfo {
                name: AgentName::new("free").unwrap(),
                limit: None,
                period: BudgetPeriod::Total,
                period_start: 0,
                period_end: None,
                spent: Micros(0),
                reserved: Micros(0),
                remaining: None,
                calls: 0,
                overridden: false,
                alerts_fired: vec![],
            },
        ]
    }

    #[test]
    fn table() {
        assert_eq!(
            render_table(&sample()),
            "AGENT         LIMIT  PERIOD       SPENT  RESERVED   REMAINING  CALLS\n\
             research     $50.00  day     $12.345678     $0.25  $37.404322   1234\n\
             free      unlimited  total        $0.00     $0.00           -      0\n"
        );
    }

    #[test]
    fn json_has_micros_and_usd() {
        let b = sample();
        let v = serde_json::to_value(BudgetJson::from(&b[0])).unwrap();
        assert_eq!(v["name"], "research");
        assert_eq!(v["limit"], 50_000_000);
        assert_eq!(v["limit_usd"], 50.0);
        assert_eq!(v["spent"], 12_345_678);
        assert_eq!(v["spent_usd"], 12.345678);
        assert_eq!(v["reserved_usd"], 0.25);
        assert_eq!(v["remaining"], 37_404_322);
        assert_eq!(v["period"], "day");
        assert_eq!(v["overridden"], true);
        let v = serde_json::to_value(BudgetJson::from(&b[1])).unwrap();
        assert!(v["limit"].is_null() && v["limit_usd"].is_null());
        assert!(v["remaining_usd"].is_null());
    }
}
