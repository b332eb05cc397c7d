//! `ironctl budget ...` and `ironctl costs`.

use crate::actors::budget::BudgetError;
use crate::daemon::Daemon;
use ironcage_shared::AgentName;
use ironcage_shared::protocol::{BudgetSetRequest, CostsRequest, ErrorCode, Response};

fn err(e: BudgetError) -> Response {
    let code = match e {
        BudgetError::UnknownAgent(_) => ErrorCode::NotFound,
        BudgetError::NegativeLimit(_) => ErrorCode::Invalid,
        _ => ErrorCode::Internal,
    };
    Response::error(code, e.to_string())
}

pub async fn show(d: &Daemon, name: Option<AgentName>) -> Response {
    if let Some(n) = &name
        && d.config().agent(n).is_none()
    {
        return Response::error(
            ErrorCode::NotFound,
            format!("no agent named {n}; `ironctl agents list` shows the configured ones"),
        );
    }
    d.budget
        .show(name)
        .await
        .map_or_else(err, Response::Budgets)
}

pub async fn set(d: &Daemon, r: BudgetSetRequest) -> Response {
    let name = r.name.clone();
    match d.budget.set(r.name, r.limit, r.period).await {
        Ok(b) => Response::ok(format!(
            "agent {name}'s budget is now {} per {} (until the config changes it); {} spent this period",
            r.limit,
            b.period.as_str(),
            b.spent
        )),
        Err(e) => err(e),
    }
}

pub async fn reset(d: &Daemon, name: AgentName) -> Response {
    match d.budget.reset(name.clone()).await {
        Ok(_) => Response::ok(format!(
            "agent {name}'s spend for the current period is reset to $0.00"
        )),
        Err(e) => err(e),
    }
}

pub async fn costs(d: &Daemon, r: CostsRequest) -> Response {
    d.budget.costs(r).await.map_or_else(err, Response::Costs)
}
