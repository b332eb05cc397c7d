//! One file per request family; [`handle`] routes a request to its handler.
//!
//! Every mutation is on the audit trail: an entry `requested` is durable
//! before the handler runs (if it cannot be written, the request is refused:
//! fail closed), and its outcome follows. Secrets requests record their own
//! entries in the same transaction as the change; `budget set` and `budget
//! reset` get the `requested` entry first and commit their outcome in the
//! ledger's transaction with the change.

pub mod agents;
pub mod audit;
pub mod budget;
pub mod circuits;
pub mod daemon;
pub mod pii;
pub mod secrets;

use crate::audit::{Actor, Draft};
use crate::daemon::Daemon;
use ironcage_shared::protocol::{AuditOutcome, ErrorCode, Request, Response};

/// What the audited target of a request is.
pub fn target(req: &Request) -> String {
    match req {
        Request::StartAgent(r) | Request::StopAgent(r) | Request::RestartAgent(r) => {
            r.name.to_string()
        }
        Request::BudgetReset(r) => r.name.to_string(),
        Request::KillAgent(k) => format!("{} signal {}", k.name, k.signal),
        Request::BudgetSet(b) => b.name.to_string(),
        Request::CircuitReset(c) => c.to_string(),
        Request::Reload => "configuration".into(),
        // The token (never what it stands for); anything else is not echoed.
        Request::PiiReveal(r) => crate::pii_vault::token_for_log(&r.token),
        Request::SecretGet(r) | Request::SecretRm(r) | Request::SecretVersions(r) => {
            format!("{}@{}", r.name, r.env)
        }
        Request::SecretSet(r) => format!("{}@{}", r.name, r.env),
        Request::SecretRollback(r) => format!("{}@{}", r.name, r.env),
        Request::SecretsRekey(_) => "master key".into(),
        Request::SecretsExport(_) | Request::SecretsImport(_) | Request::SecretsReload => {
            "*".into()
        }
        _ => String::new(),
    }
}

fn is_secrets(req: &Request) -> bool {
    matches!(
        req,
        Request::SecretsList(_)
            | Request::SecretGet(_)
            | Request::SecretSet(_)
            | Request::SecretRm(_)
            | Request::SecretVersions(_)
            | Request::SecretRollback(_)
            | Request::SecretsReload
            | Request::SecretsRekey(_)
            | Request::SecretsExport(_)
            | Request::SecretsImport(_)
    )
}

/// Routes `req` from `actor`, auditing mutations around it.
pub async fn handle_as(d: &Daemon, actor: &Actor, req: Request) -> Response {
    if !req.is_mutation() || is_secrets(&req) {
        return route(d, actor, req).await;
    }
    // The ledger applies these in memory before its commit, so the durable
    // `requested` entry is what keeps them fail closed; their outcome is
    // committed in the ledger's own transaction (or recorded as failed).
    let outcome_in_txn = matches!(req, Request::BudgetSet(_) | Request::BudgetReset(_));
    let action = req.name();
    let tgt = target(&req);
    let audit = d.secrets.audit();
    if let Err(e) = audit
        .record_durable(Draft::new(
            actor.clone(),
            action,
            tgt.clone(),
            AuditOutcome::Requested,
        ))
        .await
    {
        tracing::error!(
            request = action,
            "refused: the audit trail cannot be written: {e}"
        );
        return Response::error(ErrorCode::Internal, format!("`{action}` refused: {e}"));
    }
    let resp = route(d, actor, req).await;
    if outcome_in_txn {
        return resp;
    }
    let (outcome, detail) = match &resp {
        Response::Error(e) => (AuditOutcome::Failed, e.message.clone()),
        _ => (AuditOutcome::Ok, String::new()),
    };
    if let Err(e) = audit
        .record_durable(Draft::new(actor.clone(), action, tgt, outcome).detail(detail))
        .await
    {
        tracing::error!(request = action, "the outcome could not be audited: {e}");
        return Response::error(
            ErrorCode::Internal,
            format!("`{action}` was carried out, but its outcome could not be recorded: {e}"),
        );
    }
    resp
}

/// Routes `req` as the daemon itself (in-process callers).
pub async fn handle(d: &Daemon, req: Request) -> Response {
    handle_as(d, &Actor::daemon(), req).await
}

async fn route(d: &Daemon, actor: &Actor, req: Request) -> Response {
    match req {
        Request::Hello(_) => Response::error(ErrorCode::Invalid, "Hello was already exchanged"),
        Request::Ping => Response::Pong,
        Request::DaemonStatus => daemon::status(d),
        Request::Reload => daemon::reload(d).await,
        Request::ListAgents => agents::list(d),
        Request::AgentStatus(r) => agents::status(d, &r.name),
        Request::StartAgent(r) => agents::start(d, &r.name).await,
        Request::StopAgent(r) => agents::stop(d, &r.name).await,
        Request::RestartAgent(r) => agents::restart(d, &r.name).await,
        Request::KillAgent(k) => agents::kill(d, &k.name, k.signal).await,
        Request::AgentLogs(l) => agents::logs(d, &l).await,
        Request::BudgetShow(r) => budget::show(d, r.name).await,
        Request::BudgetSet(r) => budget::set(d, actor, r).await,
        Request::BudgetReset(r) => budget::reset(d, actor, r.name).await,
        Request::Costs(r) => budget::costs(d, r).await,
        Request::CircuitsList => circuits::list(d).await,
        Request::CircuitReset(r) => circuits::reset(d, r).await,
        Request::PiiReveal(r) => pii::reveal(d, actor, r).await,
        Request::SecretsList(r) => secrets::list(d, actor, r).await,
        Request::SecretGet(r) => secrets::get(d, actor, r).await,
        Request::SecretSet(r) => secrets::set(d, actor, r).await,
        Request::SecretRm(r) => secrets::rm(d, actor, r).await,
        Request::SecretVersions(r) => secrets::versions(d, actor, r).await,
        Request::SecretRollback(r) => secrets::rollback(d, actor, r).await,
        Request::SecretsReload => secrets::reload(d, actor).await,
        Request::SecretsRekey(r) => secrets::rekey(d, actor, r).await,
        Request::SecretsExport(r) => secrets::export(d, actor, r).await,
        Request::SecretsImport(r) => secrets::import(d, actor, r).await,
        Request::AuditTail(r) => audit::tail(d, r).await,
        Request::AuditVerify => audit::verify(d).await,
        Request::AuditVerifyAnchored(a) => audit::verify_anchored(d, a).await,
    }
}
