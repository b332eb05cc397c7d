//! One file per request family; [`handle`] routes a request to its handler.

pub mod agents;
pub mod budget;
pub mod circuits;
pub mod daemon;
pub mod pii;

use crate::daemon::Daemon;
use ironcage_shared::protocol::{ErrorCode, Request, Response};

pub async fn handle(d: &Daemon, req: Request) -> Response {
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
        Request::BudgetSet(r) => budget::set(d, r).await,
        Request::BudgetReset(r) => budget::reset(d, r.name).await,
        Request::Costs(r) => budget::costs(d, r).await,
        Request::CircuitsList => circuits::list(d).await,
        Request::CircuitReset(r) => circuits::reset(d, r).await,
        // Answered with the caller's uid by the connection loop (see `pii::reveal`).
        Request::PiiReveal(r) => pii::reveal(d, r, None).await,
    }
}
