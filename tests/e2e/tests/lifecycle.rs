//! The daemon's own life: graceful stop on SIGTERM/SIGINT, the single-instance
//! lock, stale sockets, `--check-config`, systemd notifications, log formats, and
//! what ironctl says when there is no daemon.

// Helpers here run only inside tests: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use ironcage_e2e::*;
use nix::sys::signal::Signal;
use std::os::unix::net::UnixDatagram;
use std::path::Path;

/// Agents for the shutdown tests: a process group with children, an agent that
/// handles TERM itself (and proves it ran), one that ignores TERM (SIGKILL after
/// its grace), and one in backoff.
fn shutdown_config() -> String {
    let mut cfg = String::new();
    cfg += &sh_agent(
        "grouped",
        "sleep 1000 & sleep 1000 & echo started; wait",
        "",
    );
    cfg += &sh_agent(
        "graceful",
        "trap 'echo bye > {dir}/graceful.bye; exit 0' TERM; echo started; while :; do sleep 1000 & wait $!; done",
        "",
    );
    cfg += &sh_agent(
        "stubborn",
        "trap '' TERM; echo started; while :; do sleep 1; done",
        "stop_grace_secs = 1",
    );
    cfg += &sh_agent(
        "crashy",
        "exit 1",
        "backoff_initial_ms = 60000\nmax_restarts = 100",
    );
    cfg
}

fn graceful_stop(sig: Signal) {
    let mut d = Daemon::new(&shutdown_config());
    d.start();
    let mut pids = Vec::new();
    for name in ["grouped", "graceful", "stubborn"] {
        let pid = d.wait_running(name);
        d.wait_log(name, "started");
        pids.extend(group_members(pid));
        assert!(pids.contains(&pid));
    }
    d.wait_state("crashy", "backoff");
    assert!(
        pids.len() >= 6,
        "expected the agents and their children: {pids:?}"
    );
    assert!(d.socket.exists());

    let status = d.signal_and_wait(sig);
    assert_eq!(
        status.code(),
        Some(0),
        "ironcaged exit status after {sig}: {status}"
    );
    // Every process of every agent is gone by the time the daemon exited.
    let alive: Vec<i32> = pids.iter().copied().filter(|p| pid_alive(*p)).collect();
    assert!(
        alive.is_empty(),
        "agent processes outlived the daemon: {alive:?}"
    );
    assert!(
        std::fs::read_to_string(d.path().join("graceful.bye")).is_ok(),
        "the graceful agent never got SIGTERM"
    );
    assert!(!d.socket.exists(), "the socket file was left behind");
    // ironctl now says there is no daemon.
    let out = d.ctl(&["daemon", "ping"]);
    assert_eq!(out.status.code(), Some(1));

    // The lock is released: a new daemon starts on the same state dir and socket.
    d.start();
    d.wait_running("grouped");
}

#[test]
fn sigterm_stops_every_agent_and_exits_0() {
    graceful_stop(Signal::SIGTERM);
}

#[test]
fn sigint_stops_every_agent_and_exits_0() {
    graceful_stop(Signal::SIGINT);
}

fn daemon_cmd(config: &Path, socket: &Path, state_dir: &Path) -> std::process::Command {
    let mut c = std::process::Command::new(bin("ironcaged"));
    c.arg("--config")
        .arg(config)
        .arg("--socket")
        .arg(socket)
        .arg("--state-dir")
        .arg(state_dir);
    c.env_remove("NOTIFY_SOCKET").env_remove("JOURNAL_STREAM");
    c
}

#[test]
fn second_daemon_on_the_same_state_dir_or_socket_refuses() {
    let mut d = Daemon::new(&sh_agent("a", "exec sleep 1000", ""));
    d.start();
    let pid = d.wait_running("a");

    // Same state dir, same socket.
    let out = run_bounded(&mut d.command());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "second daemon started: {err}");
    assert!(
        err.contains("another ironcaged") && err.contains("lock"),
        "{err}"
    );
    assert!(
        err.contains(&d.pid().to_string()),
        "message names the running daemon's pid: {err}"
    );

    // Same state dir, other socket.
    let other_sock = d.path().join("other/other.sock");
    let out = run_bounded(&mut daemon_cmd(&d.config, &other_sock, &d.state_dir));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "second daemon started: {err}");
    assert!(
        err.contains("another ironcaged") && err.contains(&d.state_dir.display().to_string()),
        "{err}"
    );
    assert!(!other_sock.exists());

    // Same socket, other state dir.
    let other_state = d.path().join("other-state");
    let out = run_bounded(&mut daemon_cmd(&d.config, &d.socket, &other_state));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "second daemon started: {err}");
    assert!(
        err.contains("another ironcaged") && err.contains("socket"),
        "{err}"
    );

    // The first one is untouched: its socket answers, its agent runs.
    assert!(d.socket.exists());
    d.ctl_ok(&["daemon", "ping"]);
    assert_eq!(d.wait_running("a"), pid);
}

#[test]
fn stale_socket_is_cleaned_up() {
    let mut d = Daemon::new(&sh_agent("a", "exec sleep 1000", ""));
    std::fs::create_dir_all(d.socket.parent().unwrap()).unwrap();
    // A crashed daemon leaves its socket file: bound, then closed without unlink.
    drop(std::os::unix::net::UnixListener::bind(&d.socket).unwrap());
    assert!(d.socket.exists());
    // ironctl reports it as a dead daemon, in one line naming the socket.
    let out = d.ctl(&["agents", "list"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains(&d.socket.display().to_string()), "{err}");

    d.start();
    d.wait_running("a");
    d.wait_stderr("stale socket");
}

#[test]
fn a_regular_file_at_the_socket_path_is_not_deleted() {
    let d = Daemon::new(&sh_agent("a", "exec sleep 1000", ""));
    std::fs::create_dir_all(d.socket.parent().unwrap()).unwrap();
    std::fs::write(&d.socket, "precious").unwrap();
    let out = run_bounded(&mut d.command());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&d.socket.display().to_string()) && err.contains("not a socket"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&d.socket).unwrap(), "precious");
}

#[test]
fn check_config() {
    let d = Daemon::new(&sh_agent("a", "exec sleep 1000", ""));
    let check = |path: &Path| {
        run_bounded(
            std::process::Command::new(bin("ironcaged"))
                .arg("--check-config")
                .arg("--config")
                .arg(path),
        )
    };

    let out = check(&d.config);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("OK"),
        "{out:?}"
    );
    // It only checks: no state dir, no socket.
    assert!(!d.state_dir.exists() && !d.socket.exists());

    // Unknown key on line 5.
    let bad = d.path().join("bad-key.toml");
    std::fs::write(
        &bad,
        "[[agent]]\nname = \"a\"\ncommand = [\"true\"]\n\nrestrat = \"always\"\n",
    )
    .unwrap();
    let out = check(&bad);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains(&format!("{}:5", bad.display())), "{err}");
    assert!(err.contains("restrat"), "{err}");

    // Syntax error on line 3.
    let bad = d.path().join("bad-syntax.toml");
    std::fs::write(&bad, "[[agent]]\nname = \"a\"\ncommand = [\"true\"\n").unwrap();
    let out = check(&bad);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains(&format!("{}:3", bad.display())), "{err}");

    // A bad value: names the key.
    let bad = d.path().join("bad-value.toml");
    std::fs::write(
        &bad,
        "[[agent]]\nname = \"a\"\ncommand = [\"true\"]\nrestart = \"sometimes\"\n",
    )
    .unwrap();
    let out = check(&bad);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains(&format!("{}:4", bad.display())) && err.contains("restart"),
        "{err}"
    );

    // A missing file.
    let out = check(&d.path().join("missing.toml"));
    assert_ne!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("missing.toml"),
        "{out:?}"
    );

    // The daemon refuses to start on a bad config, with the same message.
    let out = run_bounded(&mut daemon_cmd(&bad, &d.socket, &d.state_dir));
    assert_ne!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("{}:4", bad.display())),
        "{out:?}"
    );
    assert!(!d.socket.exists());
}

#[test]
fn ironctl_without_a_daemon() {
    let d = Daemon::new("");
    for args in [
        &["daemon", "ping"][..],
        &["agents", "list"],
        &["--json", "agents", "list"],
        &["daemon", "reload"],
    ] {
        let out = d.ctl(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        assert!(
            err.contains(&d.socket.display().to_string()),
            "names the socket: {err}"
        );
        assert!(err.contains("ironcaged"), "says how to start it: {err}");
        assert!(out.stdout.is_empty(), "{out:?}");
    }
    // IRONCAGE_SOCKET is honoured.
    let out = run_bounded(
        std::process::Command::new(bin("ironctl"))
            .env("IRONCAGE_SOCKET", &d.socket)
            .args(["daemon", "ping"]),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&d.socket.display().to_string()),
        "{out:?}"
    );
    // Usage errors exit 2.
    let out = d.ctl(&["agents", "frobnicate"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// Receives the next datagram as text, failing after [`WAIT`].
fn next_notify(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    loop {
        match sock.recv(&mut buf) {
            Ok(n) => return String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("no notification from the daemon within {WAIT:?}: {e}"),
        }
    }
}

fn expect_reload_pair(sock: &UnixDatagram) {
    let m = next_notify(sock);
    let mut lines = m.lines();
    assert_eq!(lines.next(), Some("RELOADING=1"), "{m:?}");
    let usec = lines
        .next()
        .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("{m:?}"));
    assert!(usec.parse::<u64>().is_ok_and(|u| u > 0), "{m:?}");
    assert_eq!(next_notify(sock), "READY=1");
}

#[test]
fn systemd_notifications() {
    let mut d = Daemon::new(&sh_agent("a", "exec sleep 1000", ""));
    let path = d.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    d.start_with(|c| {
        c.env("NOTIFY_SOCKET", &path);
    });
    assert_eq!(next_notify(&sock), "READY=1");
    // READY comes once the agents were started.
    assert_eq!(d.agent("a")["state"], "running");

    d.ctl_ok(&["daemon", "reload"]);
    expect_reload_pair(&sock);

    d.signal(Signal::SIGHUP);
    expect_reload_pair(&sock);

    // A rejected reload still ends with READY=1.
    std::fs::write(&d.config, "[[agent]\n").unwrap();
    assert_eq!(d.ctl(&["daemon", "reload"]).status.code(), Some(1));
    expect_reload_pair(&sock);

    d.signal(Signal::SIGTERM);
    assert_eq!(next_notify(&sock), "STOPPING=1");
    assert_eq!(d.wait_exit().code(), Some(0));
}

#[test]
fn systemd_notifications_on_an_abstract_socket() {
    use std::os::linux::net::SocketAddrExt;
    let mut d = Daemon::new(&sh_agent("a", "exec sleep 1000", ""));
    let name = format!(
        "ironcage-e2e-notify-{}-{}",
        std::process::id(),
        d.path().file_name().unwrap().to_string_lossy()
    );
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let sock = UnixDatagram::bind_addr(&addr).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    d.start_with(|c| {
        c.env("NOTIFY_SOCKET", format!("@{name}"));
    });
    assert_eq!(next_notify(&sock), "READY=1");
    // (A reload first: SIGTERM right after READY=1 is its own test.)
    d.ctl_ok(&["daemon", "reload"]);
    expect_reload_pair(&sock);
    d.signal(Signal::SIGTERM);
    assert_eq!(next_notify(&sock), "STOPPING=1");
    assert_eq!(d.wait_exit().code(), Some(0));
}

#[test]
fn json_log_format() {
    let mut d = Daemon::new(&sh_agent(
        "chatty",
        "echo hello-from-agent; exec sleep 1000",
        "",
    ));
    d.start_with(|c| {
        c.arg("--log-format").arg("json");
    });
    d.wait_running("chatty");
    d.wait_stderr("ironcaged ready");
    d.wait_stderr("hello-from-agent");
    let lines = d.stderr_lines.lock().unwrap().clone();
    assert!(!lines.is_empty());
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l)
            .unwrap_or_else(|e| panic!("stderr line is not JSON ({e}): {l:?}"));
        assert!(v.is_object(), "{l}");
        assert!(v.get("level").is_some() && v.get("fields").is_some(), "{l}");
    }
    // Agent output is logged with the agent's name.
    let agent_line = lines
        .iter()
        .find(|l| l.contains("hello-from-agent"))
        .unwrap();
    assert!(agent_line.contains("chatty"), "{agent_line}");
}

#[test]
fn text_log_format_is_the_default() {
    let mut d = Daemon::new(&sh_agent("a", "exec sleep 1000", ""));
    d.start();
    d.wait_stderr("ironcaged ready");
    let lines = d.stderr_lines.lock().unwrap().clone();
    let ready = lines
        .iter()
        .find(|l| l.contains("ironcaged ready"))
        .unwrap();
    assert!(
        serde_json::from_str::<serde_json::Value>(ready).is_err(),
        "{ready}"
    );
    assert!(ready.contains("INFO"), "{ready}");
}

#[test]
fn daemon_status() {
    let mut d = Daemon::new(
        &(sh_agent("a", "exec sleep 1000", "") + &sh_agent("b", "exit 0", "restart = \"never\"")),
    );
    d.start();
    d.wait_running("a");
    d.wait_state("b", "exited");
    let s = d.ctl_json(&["daemon", "status"]);
    assert_eq!(s["pid"].as_u64(), Some(u64::from(d.pid())), "{s}");
    assert_eq!(s["agents_total"], 2, "{s}");
    assert_eq!(s["agents_running"], 1, "{s}");
    assert_eq!(
        s["socket_path"].as_str(),
        Some(d.socket.to_str().unwrap()),
        "{s}"
    );
    assert_eq!(
        s["state_dir"].as_str(),
        Some(d.state_dir.to_str().unwrap()),
        "{s}"
    );
    let text = d.ctl_ok(&["daemon", "status"]);
    assert!(text.contains(&d.pid().to_string()), "{text}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&d.socket).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o660, "socket mode {mode:o}");
}

#[test]
fn shutdown_with_clients_attached() {
    let mut d = Daemon::new(&sh_agent("a", "echo hi; exec sleep 1000", ""));
    d.start();
    let pid = d.wait_running("a");
    d.wait_log("a", "hi");
    // A follower, an idle greeted client, a half-sent frame.
    let mut follower = std::process::Command::new(bin("ironctl"))
        .arg("--socket")
        .arg(&d.socket)
        .args(["agents", "logs", "a", "-f"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(follower.stdout.as_mut().unwrap()),
        &mut first,
    )
    .unwrap();
    assert_eq!(first.trim(), "hi");
    let mut idle = RawClient::connect(&d.socket);
    idle.hello();
    let mut half = RawClient::connect(&d.socket);
    half.send_raw(&[0, 0, 0, 9, 1]);

    let status = d.signal_and_wait(Signal::SIGTERM);
    assert_eq!(status.code(), Some(0));
    assert!(!pid_alive(pid));
    // The follower ends when the daemon goes away (exit 0: the stream ended).
    let st = wait_for("the follower to end", || follower.try_wait().unwrap());
    assert!(st.success(), "{st}");
    assert_eq!(idle.recv(), None);
}

#[test]
fn crashed_daemon_takes_its_agents_and_a_new_one_recovers() {
    let mut d = Daemon::new(&sh_agent("a", "exec sleep 1000", ""));
    d.start();
    let pid = d.wait_running("a");
    // SIGKILL: no cleanup at all. The agent dies with it (parent-death signal)...
    let status = d.signal_and_wait(Signal::SIGKILL);
    assert_eq!(status.code(), None);
    wait_gone("the agent of the killed daemon", &[pid]);
    // ...and its socket file stays behind, stale.
    assert!(d.socket.exists());
    let out = d.ctl(&["daemon", "ping"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    // A new daemon takes over the state dir and the socket.
    d.start();
    let pid2 = d.wait_running("a");
    assert_ne!(pid, pid2);
}

/// Spawns a daemon with `NOTIFY_SOCKET` on a fresh path socket and returns the
/// socket as soon as `READY=1` arrived (without waiting for anything else, as
/// systemd would).
fn start_notified(d: &mut Daemon) -> UnixDatagram {
    let path = d.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    let child = d
        .command()
        .env("NOTIFY_SOCKET", &path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    d.child = Some(child);
    assert_eq!(notify_while_alive(&sock, d), "READY=1");
    sock
}

/// The next notification, failing at once if the daemon dies instead.
fn notify_while_alive(sock: &UnixDatagram, d: &mut Daemon) -> String {
    sock.set_read_timeout(Some(std::time::Duration::from_millis(50)))
        .unwrap();
    let mut buf = [0u8; 4096];
    let start = std::time::Instant::now();
    loop {
        match sock.recv(&mut buf) {
            Ok(n) => return String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => panic!("notify socket: {e}"),
        }
        if let Some(st) = d.child.as_mut().unwrap().try_wait().unwrap() {
            d.child = None;
            panic!("the daemon died ({st}) instead of notifying systemd");
        }
        assert!(
            start.elapsed() < WAIT,
            "no notification from the daemon within {WAIT:?}"
        );
    }
}

#[test]
fn sigterm_right_after_ready_is_a_graceful_stop() {
    // systemd may stop a unit the moment it reported READY=1: the daemon must
    // handle SIGTERM by then. Several rounds, as the window is small.
    for round in 0..5 {
        let mut d = Daemon::new(&sh_agent("a", "exec sleep 1000", ""));
        let sock = start_notified(&mut d);
        d.signal(Signal::SIGTERM);
        let status = d.wait_exit();
        assert_eq!(
            status.code(),
            Some(0),
            "round {round}: SIGTERM right after READY=1 ended the daemon with {status} \
             (the default action: no handler installed yet)"
        );
        sock.set_read_timeout(Some(WAIT)).unwrap();
        assert_eq!(next_notify(&sock), "STOPPING=1");
        assert!(!d.socket.exists(), "round {round}: socket left behind");
    }
}

#[test]
fn sighup_right_after_ready_reloads() {
    for round in 0..5 {
        let mut d = Daemon::new(&sh_agent("a", "exec sleep 1000", ""));
        let sock = start_notified(&mut d);
        d.signal(Signal::SIGHUP);
        let m = notify_while_alive(&sock, &mut d);
        assert!(m.starts_with("RELOADING=1"), "round {round}: {m:?}");
        assert_eq!(
            notify_while_alive(&sock, &mut d),
            "READY=1",
            "round {round}"
        );
        d.ctl_ok(&["daemon", "ping"]);
    }
}

#[test]
fn configured_agents_are_known_as_soon_as_the_socket_answers() {
    // A client that connects the moment the socket exists (a script right after
    // `ironcaged &`) must see every configured agent, not "no agent named ...".
    const N: usize = 200;
    let cfg: String = (0..N)
        .map(|i| sh_agent(&format!("a{i:03}"), "exec sleep 1000", "autostart = false"))
        .collect();
    for round in 0..3 {
        let mut d = Daemon::new(&cfg);
        let mut child = d
            .command()
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut c = wait_for("the socket to accept", || {
            std::os::unix::net::UnixStream::connect(&d.socket)
                .ok()
                .map(|stream| {
                    stream.set_read_timeout(Some(WAIT)).unwrap();
                    RawClient { stream }
                })
        });
        assert!(matches!(
            c.hello(),
            ironcage_shared::protocol::Response::Hello(_)
        ));
        c.send(&ironcage_shared::protocol::Request::ListAgents);
        let n = match c.recv() {
            Some(ironcage_shared::protocol::Response::Agents(a)) => a.len(),
            other => panic!("{other:?}"),
        };
        d.child = Some(
            child
                .try_wait()
                .unwrap()
                .map_or(child, |st| panic!("daemon exited: {st}")),
        );
        assert_eq!(
            n, N,
            "round {round}: the daemon answered before it knew its agents"
        );
    }
}
