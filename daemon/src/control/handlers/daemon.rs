//! `ironctl daemon status|reload`.

use crate::daemon::Daemon;
use ironcage_shared::protocol::{DaemonStatus, ErrorCode, Response};

pub fn status(d: &Daemon) -> Response {
    let (total, running) = d.supervisor.counts();
    Response::DaemonStatus(DaemonStatus {
        daemon_version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        uptime_secs: d.started.elapsed().as_secs(),
        config_path: d.paths.config.display().to_string(),
        socket_path: d.paths.socket.display().to_string(),
        state_dir: d.paths.state_dir.display().to_string(),
        gateway_addr: d.gateway_addr.map(|a| format!("http://{a}")),
        agents_total: total,
        agents_running: running,
        config_loaded_at: d.config_loaded_at(),
    })
}

pub async fn reload(d: &Daemon) -> Response {
    match d.reload().await {
        Ok(summary) => Response::ok(format!("configuration reloaded; {summary}")),
        Err(e) => Response::error(
            ErrorCode::Invalid,
            format!("configuration rejected, the running one stays: {e}"),
        ),
    }
}
