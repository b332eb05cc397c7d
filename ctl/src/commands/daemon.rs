//! `ironctl daemon status|ping|reload`: the daemon itself.

use super::{Ctx, mutate};
use crate::client::ClientError;
use crate::output::{self, key_values};
use crate::utc;
use ironcage_shared::protocol::{DaemonStatus, HelloResponse, Request, Response, Role};
use serde::Serialize;
use std::time::Instant;

/// `daemon status`: versions, paths, uptime and agent counts.
pub fn status(ctx: &Ctx) -> anyhow::Result<()> {
    let mut client = ctx.connect()?;
    let req = Request::DaemonStatus;
    let status = match client.request(&req)? {
        Response::DaemonStatus(s) => s,
        other => return Err(ClientError::unexpected(&req, &other).into()),
    };
    let text = if ctx.json {
        output::json_pretty(&status)?
    } else {
        render_status(&status, client.hello())
    };
    output::emit(&text)?;
    Ok(())
}

fn render_status(s: &DaemonStatus, hello: &HelloResponse) -> String {
    key_values(&[
        (
            "daemon",
            format!(
                "ironcaged {} (pid {}), up {}",
                s.daemon_version,
                s.pid,
                output::duration(s.uptime_secs)
            ),
        ),
        (
            "agents",
            format!("{} running of {}", s.agents_running, s.agents_total),
        ),
        (
            "config",
            format!(
                "{} (loaded {})",
                s.config_path,
                utc::format_utc(s.config_loaded_at)
            ),
        ),
        ("socket", s.socket_path.clone()),
        ("state dir", s.state_dir.clone()),
        (
            "gateway",
            s.gateway_addr
                .clone()
                .unwrap_or_else(|| "not running".to_owned()),
        ),
        (
            "you",
            format!(
                "{} (protocol {})",
                hello.role.as_str(),
                hello.protocol_version
            ),
        ),
    ])
}

/// What `daemon ping --json` prints.
#[derive(Debug, Serialize)]
struct PingJson<'a> {
    ok: bool,
    message: &'a str,
    daemon_version: &'a str,
    protocol_version: u32,
    role: Role,
    /// Round trip of the ping itself, handshake excluded.
    rtt_ms: f64,
}

/// `daemon ping`: handshake plus one round trip.
pub fn ping(ctx: &Ctx) -> anyhow::Result<()> {
    let mut client = ctx.connect()?;
    let started = Instant::now();
    let req = Request::Ping;
    match client.request(&req)? {
        Response::Pong => {}
        other => return Err(ClientError::unexpected(&req, &other).into()),
    }
    let rtt_ms = started.elapsed().as_secs_f64() * 1000.0;
    let hello = client.hello();
    let text = if ctx.json {
        output::json_pretty(&PingJson {
            ok: true,
            message: "pong",
            daemon_version: &hello.daemon_version,
            protocol_version: hello.protocol_version,
            role: hello.role,
            rtt_ms,
        })?
    } else {
        format!(
            "pong from ironcaged {} in {rtt_ms:.2} ms (protocol {}, role {})\n",
            hello.daemon_version,
            hello.protocol_version,
            hello.role.as_str()
        )
    };
    output::emit(&text)?;
    Ok(())
}

/// `daemon reload`: synchronous; the reply says whether the new config applied.
pub fn reload(ctx: &Ctx) -> anyhow::Result<()> {
    mutate(ctx, Request::Reload)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a panic is the failure report
mod tests {
    use super::*;

    #[test]
    fn status_renders_every_field() {
        let s = DaemonStatus {
            daemon_version: "0.1.0".into(),
            pid: 42,
            uptime_secs: 192,
            config_path: "/etc/ironcage/ironcaged.toml".into(),
            socket_path: "/run/ironcage/ironcaged.sock".into(),
            state_dir: "/var/lib/ironcage".into(),
            gateway_addr: None,
            agents_total: 3,
            agents_running: 2,
            config_loaded_at: 0,
        };
        let hello = HelloResponse {
            protocol_version: 1,
            daemon_version: "0.1.0".into(),
            role: Role::Viewer,
        };
        let text = render_status(&s, &hello);
        assert!(text.starts_with("daemon:    ironcaged 0.1.0 (pid 42), up 3m12s\n"));
        assert!(text.contains("agents:    2 running of 3\n"));
        assert!(text.contains("(loaded 1970-01-01 00:00:00 UTC)"));
        assert!(text.contains("gateway:   not running\n"));
        assert!(text.contains("you:       viewer (protocol 1)\n"));
    }
}
