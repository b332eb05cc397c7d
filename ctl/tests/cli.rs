//! Runs the real `ironctl` binary against a tiny in-test Unix-socket server that
//! speaks the real framing and protocol.
//!
//! The server stands in for the daemon only to check the client's side: the
//! handshake it sends, how it treats a version mismatch, a malformed or lying
//! reply, a daemon error or a dropped connection, and the exit codes and messages
//! an operator sees. End-to-end tests against the real daemon live elsewhere.
//!
//! Deterministic: the listener is bound before ironctl starts, each server thread
//! serves exactly one scripted connection, and nothing sleeps.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

use ironcage_shared::framing;
use ironcage_shared::protocol::{
    AgentInfo, AgentState, BudgetPeriod, BudgetSetRequest, ErrorCode, ExitInfo, HelloResponse,
    KillRequest, LogLine, LogsRequest, PROTOCOL_VERSION, Request, Response, Role, Stream,
};
use ironcage_shared::{AgentName, Micros};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread::JoinHandle;
use std::time::Duration;

/// A bound socket in a private temp dir, served by one scripted thread.
struct FakeDaemon<T> {
    _dir: tempfile::TempDir,
    path: PathBuf,
    server: Option<JoinHandle<T>>,
}

impl<T: Send + 'static> FakeDaemon<T> {
    /// Binds the socket, then serves one connection with `script` on a thread.
    fn start(script: impl FnOnce(UnixStream) -> T + Send + 'static) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ironcaged.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            drop(listener);
            // A safety net against a client bug hanging the test, not a sleep.
            stream
                .set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            script(stream)
        });
        Self {
            _dir: dir,
            path,
            server: Some(server),
        }
    }

    /// Waits for the script and returns what it collected.
    fn finish(mut self) -> T {
        // If ironctl never connected, this wakes the accept so the script fails
        // loudly (it reads EOF instead of a Hello) rather than hanging the test.
        let _ = UnixStream::connect(&self.path);
        self.server.take().unwrap().join().unwrap()
    }
}

fn read_request(s: &mut UnixStream) -> Option<Request> {
    framing::read_frame_sync(s)
        .unwrap()
        .map(|p| framing::decode(&p).unwrap())
}

fn send(s: &mut UnixStream, r: &Response) {
    framing::write_message_sync(s, r).unwrap();
}

/// Reads the client's `Hello`, checks it, answers as daemon version "9.9.9".
fn handshake(s: &mut UnixStream, role: Role) {
    match read_request(s) {
        Some(Request::Hello(h)) => {
            assert_eq!(h.protocol_version, PROTOCOL_VERSION);
            assert_eq!(h.client, concat!("ironctl ", env!("CARGO_PKG_VERSION")));
        }
        other => panic!("expected Hello first, got {other:?}"),
    }
    send(
        s,
        &Response::Hello(HelloResponse {
            protocol_version: PROTOCOL_VERSION,
            daemon_version: "9.9.9".into(),
            role,
        }),
    );
}

fn ironctl(socket: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ironctl"))
        .env_remove("IRONCAGE_SOCKET")
        .arg("--socket")
        .arg(socket)
        .args(["--timeout", "20"])
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

fn agents() -> Vec<AgentInfo> {
    let base = AgentInfo {
        name: AgentName::new("research").unwrap(),
        state: AgentState::Running,
        pid: Some(4242),
        restarts: 1,
        uptime_secs: Some(192),
        last_exit: Some(ExitInfo {
            code: Some(1),
            signal: None,
            at: 1_793_534_400,
        }),
        stop_reason: None,
        restart_policy: "always".into(),
        command: vec!["python".into(), "agent.py".into()],
        next_restart_in_ms: None,
        user: None,
    };
    let stopped = AgentInfo {
        name: AgentName::new("idle").unwrap(),
        state: AgentState::Stopped,
        pid: None,
        uptime_secs: None,
        restarts: 0,
        ..base.clone()
    };
    vec![base, stopped]
}

/// Serves the handshake and one request with `reply`; returns the request.
fn one_request(reply: Response) -> FakeDaemon<Option<Request>> {
    FakeDaemon::start(move |mut s| {
        handshake(&mut s, Role::Admin);
        let req = read_request(&mut s);
        send(&mut s, &reply);
        req
    })
}

#[test]
fn agents_list_json_after_a_handshake() {
    let d = one_request(Response::Agents(agents()));
    let out = ironctl(&d.path, &["agents", "list", "--json"]);
    assert_eq!(d.finish(), Some(Request::ListAgents));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 2);
    assert_eq!(arr[0]["name"], "research");
    assert_eq!(arr[0]["state"], "running");
    assert_eq!(arr[0]["pid"], 4242);
    assert_eq!(arr[0]["restarts"], 1);
    assert_eq!(arr[0]["uptime_secs"], 192);
    assert_eq!(arr[1]["state"], "stopped");
    assert!(arr[1]["pid"].is_null());
}

#[test]
fn agents_list_table() {
    let d = one_request(Response::Agents(agents()));
    let out = ironctl(&d.path, &["agents", "list"]);
    d.finish();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "NAME      STATE     PID  RESTARTS  UPTIME  LAST EXIT\n\
         research  running  4242         1   3m12s  code 1\n\
         idle      stopped     -         0       -  code 1\n"
    );
}

#[test]
fn version_mismatch_prints_the_daemons_message() {
    let d = FakeDaemon::start(|mut s| {
        assert!(matches!(read_request(&mut s), Some(Request::Hello(_))));
        send(
            &mut s,
            &Response::error(
                ErrorCode::VersionMismatch,
                "ironcaged 9.9.9 speaks control protocol 2, the client speaks 1",
            ),
        );
        // The client must not send anything after being refused.
        read_request(&mut s)
    });
    let out = ironctl(&d.path, &["agents", "list"]);
    assert_eq!(d.finish(), None);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "ironctl: ironcaged 9.9.9 speaks control protocol 2, the client speaks 1\n"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn a_hello_with_another_protocol_version_is_refused_by_the_client() {
    let d = FakeDaemon::start(|mut s| {
        read_request(&mut s);
        send(
            &mut s,
            &Response::Hello(HelloResponse {
                protocol_version: PROTOCOL_VERSION + 98,
                daemon_version: "9.9.9".into(),
                role: Role::Admin,
            }),
        );
        read_request(&mut s)
    });
    let out = ironctl(&d.path, &["daemon", "ping"]);
    assert_eq!(d.finish(), None);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "ironcaged 9.9.9 speaks control protocol {}",
            PROTOCOL_VERSION + 98
        )),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1);
}

#[test]
fn a_malformed_reply_is_an_error_not_a_crash() {
    let d = FakeDaemon::start(|mut s| {
        handshake(&mut s, Role::Admin);
        read_request(&mut s);
        // A frame whose payload is no Response (variant 255...).
        s.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).unwrap();
    });
    let out = ironctl(&d.path, &["agents", "list"]);
    d.finish();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with("ironctl: cannot decode the reply of the daemon at "),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_lying_length_header_is_refused_without_allocating() {
    let d = FakeDaemon::start(|mut s| {
        handshake(&mut s, Role::Admin);
        read_request(&mut s);
        s.write_all(&u32::MAX.to_be_bytes()).unwrap();
    });
    let out = ironctl(&d.path, &["budget", "show"]);
    d.finish();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("exceeds the maximum"), "{err}");
}

#[test]
fn a_reply_cut_short_is_an_error() {
    let d = FakeDaemon::start(|mut s| {
        handshake(&mut s, Role::Admin);
        read_request(&mut s);
        s.write_all(&[0, 0, 0, 100, 1, 2, 3]).unwrap();
    });
    let out = ironctl(&d.path, &["agents", "list"]);
    d.finish();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("closed in the middle of a frame"), "{err}");
}

#[test]
fn a_connection_closed_without_reply_is_an_error() {
    let d = FakeDaemon::start(|mut s| {
        handshake(&mut s, Role::Admin);
        read_request(&mut s)
    });
    let out = ironctl(&d.path, &["daemon", "status"]);
    assert_eq!(d.finish(), Some(Request::DaemonStatus));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("closed the connection without replying"),
        "{err}"
    );
}

#[test]
fn a_connection_closed_during_the_handshake_is_an_error() {
    let d = FakeDaemon::start(|mut s| {
        read_request(&mut s);
    });
    let out = ironctl(&d.path, &["daemon", "status"]);
    d.finish();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("during the handshake"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_reply_of_the_wrong_kind_is_an_error() {
    let d = one_request(Response::Pong);
    let out = ironctl(&d.path, &["agents", "list"]);
    d.finish();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("answered 'agents list' with an unexpected pong reply"),
        "{err}"
    );
}

#[test]
fn a_daemon_error_is_printed_verbatim_with_exit_1() {
    let msg = "permission denied: uid 1000 has role viewer; 'agents kill' needs admin";
    let d = FakeDaemon::start(move |mut s| {
        handshake(&mut s, Role::Viewer);
        let req = read_request(&mut s);
        send(&mut s, &Response::error(ErrorCode::PermissionDenied, msg));
        req
    });
    let out = ironctl(&d.path, &["--json", "agents", "kill", "research"]);
    let req = d.finish();
    assert_eq!(
        req,
        Some(Request::KillAgent(KillRequest {
            name: AgentName::new("research").unwrap(),
            signal: 9,
        }))
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out), format!("ironctl: {msg}\n"));
    assert!(out.stdout.is_empty());
}

#[test]
fn kill_sends_the_named_signal() {
    let d = one_request(Response::ok("sent SIGTERM to research (pid 4242)"));
    let out = ironctl(
        &d.path,
        &["agents", "kill", "research", "--signal", "sigterm"],
    );
    let req = d.finish();
    assert_eq!(
        req,
        Some(Request::KillAgent(KillRequest {
            name: AgentName::new("research").unwrap(),
            signal: 15,
        }))
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stdout(&out), "sent SIGTERM to research (pid 4242)\n");
}

#[test]
fn budget_set_sends_exact_micros_and_prints_ok_json() {
    let d = one_request(Response::ok("budget of bot set to $12.50 per week"));
    let out = ironctl(
        &d.path,
        &[
            "budget", "set", "bot", "--usd", "12.5", "--period", "week", "--json",
        ],
    );
    let req = d.finish();
    assert_eq!(
        req,
        Some(Request::BudgetSet(BudgetSetRequest {
            name: AgentName::new("bot").unwrap(),
            limit: Micros(12_500_000),
            period: Some(BudgetPeriod::Week),
        }))
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"ok": true, "message": "budget of bot set to $12.50 per week"})
    );
}

#[test]
fn logs_follow_prints_every_batch_until_the_daemon_closes() {
    let line = |n: u64, text: &str| LogLine {
        at_ms: 1_793_534_400_000 + n,
        stream: Stream::Stdout,
        line: text.into(),
    };
    let d = FakeDaemon::start(move |mut s| {
        handshake(&mut s, Role::Viewer);
        let req = read_request(&mut s);
        send(
            &mut s,
            &Response::LogLines(vec![line(0, "one"), line(1, "two")]),
        );
        send(&mut s, &Response::LogLines(vec![]));
        send(&mut s, &Response::LogLines(vec![line(2, "three")]));
        req
    });
    let out = ironctl(&d.path, &["agents", "logs", "research", "-n", "5", "-f"]);
    let req = d.finish();
    assert_eq!(
        req,
        Some(Request::AgentLogs(LogsRequest {
            name: AgentName::new("research").unwrap(),
            lines: 5,
            follow: true,
        }))
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "one\ntwo\nthree\n");
}

#[test]
fn no_socket_file_is_one_line_with_where_and_how() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.sock");
    let out = ironctl(&path, &["agents", "list"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "ironctl: no daemon at {} (no such socket file); start it with 'systemctl start ironcaged'",
            path.display()
        )),
        "{err}"
    );
    assert!(err.contains("--socket/IRONCAGE_SOCKET"), "{err}");
}

#[test]
fn the_env_variable_names_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("from-env.sock");
    let out = Command::new(env!("CARGO_BIN_EXE_ironctl"))
        .env("IRONCAGE_SOCKET", &path)
        .args(["daemon", "ping"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("no daemon at {} ", path.display())),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_stale_socket_is_connection_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stale.sock");
    drop(UnixListener::bind(&path).unwrap()); // the file stays, nobody listens
    let out = ironctl(&path, &["agents", "list"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("(connection refused"), "{err}");
    assert!(err.contains("systemctl start ironcaged"), "{err}");
}

#[test]
fn a_socket_we_may_not_open_names_its_group() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("ironcaged.sock");
    let _listener = UnixListener::bind(&path).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ironctl"));
    cmd.env_remove("IRONCAGE_SOCKET")
        .arg("--socket")
        .arg(&path)
        .args(["agents", "list"]);
    let root = nix::unistd::geteuid().is_root();
    if root {
        // Root ignores file modes: run ironctl as `nobody` against a 0660 socket.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660)).unwrap();
        std::os::unix::process::CommandExt::uid(&mut cmd, 65_534);
        std::os::unix::process::CommandExt::gid(&mut cmd, 65_534);
    } else {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).unwrap();
    }
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) if root => {
            eprintln!("skipped: cannot drop privileges here ({e})");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    if root && out.status.code() == Some(126) {
        eprintln!("skipped: `nobody` cannot execute the test binary here");
        return;
    }
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "ironctl: permission denied connecting to {} as uid ",
            path.display()
        )),
        "{err}"
    );
    let group = nix::unistd::Group::from_gid(nix::unistd::getegid())
        .unwrap()
        .map(|g| g.name)
        .unwrap();
    assert!(err.contains(&format!("group '{group}'")), "{err}");
}

#[test]
fn usage_errors_exit_2_without_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("unused.sock");
    for args in [
        &["agents", "kill", "bot", "--signal", "NOPE"][..],
        &["budget", "set", "bot", "--usd", "1.0000001"],
        &["budget", "set", "bot"],
        &["costs", "--since", "last tuesday"],
        &["agents", "status", "../etc/passwd"],
        &["frobnicate"],
        &[],
    ] {
        let out = ironctl(&path, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
}
