//! `ironctl agents ...`.

use crate::actors::supervisor::SupervisorError;
use crate::daemon::Daemon;
use ironcage_shared::AgentName;
use ironcage_shared::framing::{self, FrameError};
use ironcage_shared::protocol::{ErrorCode, LogsRequest, Response, StopReason};
use tokio::net::UnixStream;
use tokio::sync::watch;

fn err(e: SupervisorError) -> Response {
    let code = match e {
        SupervisorError::NotFound(_) => ErrorCode::NotFound,
        SupervisorError::Refused(_) => ErrorCode::Invalid,
        SupervisorError::Gone => ErrorCode::Internal,
    };
    Response::error(code, e.to_string())
}

fn reply(r: Result<String, SupervisorError>) -> Response {
    r.map_or_else(err, Response::ok)
}

pub fn list(d: &Daemon) -> Response {
    Response::Agents(d.supervisor.list())
}

pub fn status(d: &Daemon, name: &AgentName) -> Response {
    d.supervisor.status(name).map_or_else(err, Response::Agent)
}

pub async fn start(d: &Daemon, name: &AgentName) -> Response {
    reply(d.supervisor.start_agent(name).await)
}

pub async fn stop(d: &Daemon, name: &AgentName) -> Response {
    reply(d.supervisor.stop_agent(name, StopReason::Operator).await)
}

pub async fn restart(d: &Daemon, name: &AgentName) -> Response {
    reply(d.supervisor.restart_agent(name).await)
}

pub async fn kill(d: &Daemon, name: &AgentName, signal: i32) -> Response {
    reply(d.supervisor.kill_agent(name, signal).await)
}

pub async fn logs(d: &Daemon, l: &LogsRequest) -> Response {
    match d.supervisor.logs(&l.name).await {
        Ok(logs) => Response::LogLines(logs.tail(l.lines as usize).0),
        Err(e) => err(e),
    }
}

/// Streams the tail, then every new line, until the client hangs up or the
/// daemon shuts down.
pub async fn follow_logs(
    stream: &mut UnixStream,
    d: &Daemon,
    l: &LogsRequest,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), FrameError> {
    let logs = match d.supervisor.logs(&l.name).await {
        Ok(logs) => logs,
        Err(e) => return framing::write_message(stream, &err(e)).await,
    };
    let (first, mut seq) = logs.tail(l.lines as usize);
    framing::write_message(stream, &Response::LogLines(first)).await?;
    let mut probe = [0u8; 1];
    loop {
        tokio::select! {
            _ = logs.wait_newer(seq) => {}
            _ = shutdown.changed() => return Ok(()),
            // The client never sends after a follow request: a read returning
            // means it hung up.
            _ = tokio::io::AsyncReadExt::read(stream, &mut probe) => return Ok(()),
        }
        let (lines, next) = logs.since(seq);
        seq = next;
        if !lines.is_empty() {
            framing::write_message(stream, &Response::LogLines(lines)).await?;
        }
    }
}
