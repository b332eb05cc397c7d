//! `ironctl circuits list|reset`.

use crate::actors::breaker::BreakerError;
use crate::daemon::Daemon;
use ironcage_shared::protocol::{CircuitRef, ErrorCode, Response};

fn err(e: BreakerError) -> Response {
    let code = match e {
        BreakerError::NotFound(_) => ErrorCode::NotFound,
        BreakerError::Unavailable => ErrorCode::Internal,
    };
    Response::error(code, e.to_string())
}

pub async fn list(d: &Daemon) -> Response {
    d.breaker.list().await.map_or_else(err, Response::Circuits)
}

pub async fn reset(d: &Daemon, circuit: CircuitRef) -> Response {
    match d.breaker.reset(circuit.clone()).await {
        Ok(before) => {
            tracing::warn!(target: "breaker", circuit = %circuit, was = before.as_str(), "circuit reset by an operator");
            Response::ok(format!(
                "circuit {circuit} is closed (it was {})",
                before.as_str()
            ))
        }
        Err(e) => err(e),
    }
}
