//! `ironctl budget ...` and `ironctl costs`.

use crate::actors::budget::BudgetError;
use crate::audit::{Actor, Draft};
use crate::daemon::Daemon;
use ironcage_shared::AgentName;
use ironcage_shared::protocol::{
    AuditOutcome, BudgetInfo, BudgetSetRequest, CostsRequest, ErrorCode, Response,
};

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

/// The change's `ok` entry commits in the ledger's transaction, with the
/// change; a failure is recorded (durably) before the reply.
async fn audited(
    d: &Daemon,
    actor: &Actor,
    action: &str,
    name: &AgentName,
    r: Result<BudgetInfo, BudgetError>,
    ok: impl FnOnce(BudgetInfo) -> Response,
) -> Response {
    match r {
        Ok(b) => ok(b),
        Err(e) => {
            let msg = e.to_string();
            let draft = Draft::new(
                actor.clone(),
                action,
                name.to_string(),
                AuditOutcome::Failed,
            )
            .detail(&msg);
            if let Err(ae) = d.secrets.audit().record_durable(draft).await {
                tracing::error!("cannot record a failed {action}: {ae}");
            }
            err(e)
        }
    }
}

pub async fn set(d: &Daemon, actor: &Actor, r: BudgetSetRequest) -> Response {
    let name = r.name.clone();
    let draft = Draft::new(
        actor.clone(),
        "budget set",
        name.to_string(),
        AuditOutcome::Ok,
    )
    .detail(match r.period {
        Some(p) => format!("limit {} per {}", r.limit, p.as_str()),
        None => format!("limit {} (period unchanged)", r.limit),
    });
    let res = d.budget.set_audited(r.name, r.limit, r.period, draft).await;
    audited(d, actor, "budget set", &name, res, |b| {
        Response::ok(format!(
            "agent {name}'s budget is now {} per {} (until the config changes it); {} spent this period",
            r.limit,
            b.period.as_str(),
            b.spent
        ))
    })
    .await
}

pub async fn reset(d: &Daemon, actor: &Actor, name: AgentName) -> Response {
    let draft = Draft::new(
        actor.clone(),
        "budget reset",
        name.to_string(),
        AuditOutcome::Ok,
    )
    .detail("current period's spend reset to $0.00");
    let res = d.budget.reset_audited(name.clone(), draft).await;
    audited(d, actor, "budget reset", &name, res, |_| {
        Response::ok(format!(
            "agent {name}'s spend for the current period is reset to $0.00"
        ))
    })
    .await
}

pub async fn costs(d: &Daemon, r: CostsRequest) -> Response {
    d.budget.costs(r).await.map_or_else(err, Response::Costs)
}
