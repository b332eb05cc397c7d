//! `ironctl agents ...`: list, inspect, start, stop, restart, signal and tail the
//! supervised agents.

use super::{Ctx, mutate};
use crate::client::ClientError;
use crate::output::{self, Align, Table, key_values, or_dash};
use crate::utc;
use ironcage_shared::AgentName;
use ironcage_shared::protocol::{
    AgentInfo, AgentRef, KillRequest, LogLine, LogsRequest, Request, Response, StopReason,
};
use nix::sys::signal::Signal;
use std::fmt::Write as _;
use std::str::FromStr;

/// `agents list`.
pub fn list(ctx: &Ctx) -> anyhow::Result<()> {
    let req = Request::ListAgents;
    let agents = match ctx.call(&req)? {
        Response::Agents(a) => a,
        other => return Err(ClientError::unexpected(&req, &other).into()),
    };
    let text = if ctx.json {
        output::json_pretty(&agents)?
    } else {
        render_list(&agents)
    };
    output::emit(&text)?;
    Ok(())
}

/// The `agents list` table: NAME STATE PID RESTARTS UPTIME LAST EXIT.
pub fn render_list(agents: &[AgentInfo]) -> String {
    let mut t = Table::new(&[
        ("NAME", Align::Left),
        ("STATE", Align::Left),
        ("PID", Align::Right),
        ("RESTARTS", Align::Right),
        ("UPTIME", Align::Right),
        ("LAST EXIT", Align::Left),
    ]);
    for a in agents {
        t.row(vec![
            a.name.to_string(),
            a.state.as_str().to_owned(),
            or_dash(a.pid),
            a.restarts.to_string(),
            or_dash(a.uptime_secs.map(output::duration)),
            output::exit_status(a.last_exit.as_ref()),
        ]);
    }
    t.render()
}

/// `agents status NAME`.
pub fn status(ctx: &Ctx, name: AgentName) -> anyhow::Result<()> {
    let req = Request::AgentStatus(AgentRef { name });
    let agent = match ctx.call(&req)? {
        Response::Agent(a) => a,
        other => return Err(ClientError::unexpected(&req, &other).into()),
    };
    let text = if ctx.json {
        output::json_pretty(&agent)?
    } else {
        render_status(&agent)
    };
    output::emit(&text)?;
    Ok(())
}

fn stop_reason(r: StopReason) -> &'static str {
    match r {
        StopReason::Operator => "stopped by an operator",
        StopReason::KilledByOperator => "killed by an operator",
        StopReason::Reload => "removed by a config reload",
        StopReason::Shutdown => "daemon shutdown",
        StopReason::BudgetExhausted => "budget exhausted",
        StopReason::Watchdog => "watchdog",
    }
}

/// `agents status NAME` for humans: one `label: value` line per field.
pub fn render_status(a: &AgentInfo) -> String {
    let last_exit = match &a.last_exit {
        Some(e) => format!(
            "{} at {}",
            output::exit_status(Some(e)),
            utc::format_utc(e.at)
        ),
        None => "-".to_owned(),
    };
    let mut pairs = vec![
        ("name", a.name.to_string()),
        ("state", a.state.as_str().to_owned()),
        ("pid", or_dash(a.pid)),
        ("uptime", or_dash(a.uptime_secs.map(output::duration))),
        ("restarts", a.restarts.to_string()),
        ("restart policy", a.restart_policy.clone()),
        ("last exit", last_exit),
        (
            "user",
            a.user
                .clone()
                .unwrap_or_else(|| "the daemon's own".to_owned()),
        ),
    ];
    if let Some(r) = a.stop_reason {
        pairs.push(("stop reason", stop_reason(r).to_owned()));
    }
    if let Some(ms) = a.next_restart_in_ms {
        pairs.push(("next restart in", output::duration_ms(ms)));
    }
    pairs.push(("command", shell_words(&a.command)));
    key_values(&pairs)
}

/// The command line as a shell would need it typed (single-quoting where needed).
fn shell_words(argv: &[String]) -> String {
    let mut out = String::new();
    for (i, w) in argv.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let plain = !w.is_empty()
            && w.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b));
        if plain {
            out.push_str(w);
        } else {
            let _ = write!(out, "'{}'", w.replace('\'', r"'\''"));
        }
    }
    out
}

pub fn start(ctx: &Ctx, name: AgentName) -> anyhow::Result<()> {
    mutate(ctx, Request::StartAgent(AgentRef { name }))
}

pub fn stop(ctx: &Ctx, name: AgentName) -> anyhow::Result<()> {
    mutate(ctx, Request::StopAgent(AgentRef { name }))
}

pub fn restart(ctx: &Ctx, name: AgentName) -> anyhow::Result<()> {
    mutate(ctx, Request::RestartAgent(AgentRef { name }))
}

/// `agents kill NAME --signal SIG`: the daemon signals the agent's whole group.
pub fn kill(ctx: &Ctx, name: AgentName, signal: i32) -> anyhow::Result<()> {
    mutate(ctx, KillRequest { name, signal }.into())
}

/// Highest signal number Linux has (`SIGRTMAX`).
const MAX_SIGNAL: i32 = 64;

/// Parses `--signal`: a name with or without `SIG`, any case (`KILL`, `sigterm`,
/// `hup`), or a number 1–64 (real-time signals included).
pub fn parse_signal(s: &str) -> Result<i32, String> {
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return match t.parse::<i32>() {
            Ok(n) if (1..=MAX_SIGNAL).contains(&n) => Ok(n),
            _ => Err(format!(
                "signal number {t} is out of range; use 1 to {MAX_SIGNAL}"
            )),
        };
    }
    let upper = t.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    let bare = match bare {
        "IOT" => "ABRT",
        "CLD" => "CHLD",
        "POLL" => "IO",
        other => other,
    };
    Signal::from_str(&format!("SIG{bare}"))
        .map(|sig| sig as i32)
        .map_err(|_| {
            format!("unknown signal {s:?}; use a name like KILL, TERM, HUP, INT, USR1 or a number")
        })
}

/// `agents logs NAME [-n N] [-f]`: the last N lines, then (with `-f`) new lines as
/// they come, until the daemon closes the stream or the user presses Ctrl-C.
pub fn logs(
    ctx: &Ctx,
    name: AgentName,
    lines: u32,
    follow: bool,
    timestamps: bool,
) -> anyhow::Result<()> {
    let mut client = ctx.connect()?;
    let req: Request = LogsRequest {
        name,
        lines,
        follow,
    }
    .into();
    client.send(&req)?;
    if follow {
        // A quiet agent is not a hung daemon: wait as long as it takes.
        client.set_timeout(None)?;
    }
    loop {
        match client.recv()? {
            Some(Response::LogLines(batch)) => {
                output::emit(&render_log_lines(&batch, ctx.json, timestamps)?)?;
            }
            Some(other) => return Err(ClientError::unexpected(&req, &other).into()),
            None if follow => return Ok(()),
            None => {
                return Err(ClientError::Closed {
                    path: ctx.socket.clone(),
                    during: "without sending the log",
                }
                .into());
            }
        }
        if !follow {
            return Ok(());
        }
    }
}

/// Log lines as raw text (optionally time-stamped), or one JSON object per line
/// (`{"at_ms":..,"stream":"stdout","line":".."}`) so `-f --json` can be piped to `jq`.
pub fn render_log_lines(
    batch: &[LogLine],
    json: bool,
    timestamps: bool,
) -> serde_json::Result<String> {
    let mut out = String::new();
    for l in batch {
        if json {
            out.push_str(&serde_json::to_string(l)?);
        } else {
            if timestamps {
                out.push_str(&utc::format_rfc3339_ms(l.at_ms));
                out.push(' ');
            }
            out.push_str(&l.line);
        }
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a panic is the failure report
mod tests {
    use super::*;
    use ironcage_shared::protocol::{AgentState, ExitInfo, Stream};

    fn agent(name: &str, state: AgentState) -> AgentInfo {
        AgentInfo {
            name: AgentName::new(name).unwrap(),
            state,
            pid: None,
            restarts: 0,
            uptime_secs: None,
            last_exit: None,
            stop_reason: None,
            restart_policy: "on-failure".into(),
            command: vec!["python".into(), "agent.py".into()],
            next_restart_in_ms: None,
            user: None,
        }
    }

    fn sample() -> Vec<AgentInfo> {
        let mut a = agent("research", AgentState::Running);
        a.pid = Some(4242);
        a.uptime_secs = Some(192);
        a.restarts = 2;
        a.last_exit = Some(ExitInfo {
            code: Some(1),
            signal: None,
            at: 0,
        });
        let mut b = agent("billing-bot", AgentState::Failed);
        b.restarts = 10;
        b.last_exit = Some(ExitInfo {
            code: None,
            signal: Some(9),
            at: 0,
        });
        vec![a, b, agent("idle", AgentState::Stopped)]
    }

    #[test]
    fn signal_names_and_numbers() {
        for (s, n) in [
            ("KILL", 9),
            ("kill", 9),
            ("SIGKILL", 9),
            ("sigterm", 15),
            ("TERM", 15),
            ("term", 15),
            ("HUP", 1),
            ("SigHup", 1),
            ("INT", 2),
            ("USR1", nix::libc::SIGUSR1),
            ("usr2", nix::libc::SIGUSR2),
            ("CONT", nix::libc::SIGCONT),
            ("STOP", nix::libc::SIGSTOP),
            ("IOT", 6),
            ("9", 9),
            ("15", 15),
            ("34", 34),
            ("64", 64),
        ] {
            assert_eq!(parse_signal(s), Ok(n), "{s}");
        }
        for bad in [
            "",
            "0",
            "65",
            "99999999999",
            "-9",
            "SIG",
            "NOPE",
            "SIGKILLX",
            "9x",
        ] {
            assert!(parse_signal(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn list_table() {
        assert_eq!(
            render_list(&sample()),
            "NAME         STATE     PID  RESTARTS  UPTIME  LAST EXIT\n\
             research     running  4242         2   3m12s  code 1\n\
             billing-bot  failed      -        10       -  signal 9\n\
             idle         stopped     -         0       -  -\n"
        );
    }

    #[test]
    fn list_json_shape() {
        let json = output::json_pretty(&sample()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let arr = v.as_array().unwrap();
        assert_eq!(arr.len(), 3);
        let a = &arr[0];
        assert_eq!(a["name"], "research");
        assert_eq!(a["state"], "running");
        assert_eq!(a["pid"], 4242);
        assert_eq!(a["restarts"], 2);
        assert_eq!(a["uptime_secs"], 192);
        assert_eq!(a["last_exit"]["code"], 1);
        assert_eq!(a["restart_policy"], "on-failure");
        assert_eq!(a["command"][1], "agent.py");
        let b = &arr[1];
        assert_eq!(b["state"], "failed");
        assert!(b["pid"].is_null());
        assert!(b["uptime_secs"].is_null());
        assert_eq!(b["last_exit"]["signal"], 9);
        for key in [
            "name",
            "state",
            "pid",
            "restarts",
            "uptime_secs",
            "last_exit",
            "stop_reason",
            "restart_policy",
            "command",
            "next_restart_in_ms",
            "user",
        ] {
            assert!(a.get(key).is_some(), "missing {key}");
        }
    }

    #[test]
    fn status_view() {
        let mut a = agent("x", AgentState::Backoff);
        a.next_restart_in_ms = Some(1500);
        a.stop_reason = Some(StopReason::BudgetExhausted);
        a.command = vec!["sh".into(), "-c".into(), "echo 'hi' && sleep 1".into()];
        let text = render_status(&a);
        assert!(text.contains("state:           backoff\n"), "{text}");
        assert!(
            text.contains("user:            the daemon's own\n"),
            "{text}"
        );
        a.user = Some("nobody (uid 65534, gid 65534)".into());
        assert!(
            render_status(&a).contains("user:            nobody (uid 65534, gid 65534)\n"),
            "{text}"
        );
        assert!(text.contains("next restart in: 1.5s\n"), "{text}");
        assert!(
            text.contains("stop reason:     budget exhausted\n"),
            "{text}"
        );
        assert!(
            text.contains(r"command:         sh -c 'echo '\''hi'\'' && sleep 1'"),
            "{text}"
        );
    }

    #[test]
    fn log_lines() {
        let batch = vec![
            LogLine {
                at_ms: 1_793_534_400_123,
                stream: Stream::Stdout,
                line: "hello".into(),
            },
            LogLine {
                at_ms: 1_793_534_400_500,
                stream: Stream::Stderr,
                line: "oops".into(),
            },
        ];
        assert_eq!(
            render_log_lines(&batch, false, false).unwrap(),
            "hello\noops\n"
        );
        assert_eq!(
            render_log_lines(&batch, false, true).unwrap(),
            "2026-11-01T12:00:00.123Z hello\n2026-11-01T12:00:00.500Z oops\n"
        );
        assert_eq!(
            render_log_lines(&batch[1..], true, false).unwrap(),
            "{\"at_ms\":1793534400500,\"stream\":\"stderr\",\"line\":\"oops\"}\n"
        );
    }
}
