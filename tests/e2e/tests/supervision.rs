//! Supervision end to end: listing, status, logs, clean environment, process
//! groups, stop grace, operator signals and restart policies.

// Helpers here run only inside tests: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use ironcage_e2e::*;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

#[test]
fn list_status_and_logs_of_several_agents() {
    let mut cfg = String::new();
    cfg += &sh_agent(
        "alpha",
        "echo alpha-out; echo alpha-err >&2; exec sleep 1000",
        "",
    );
    cfg += &sh_agent("beta", "echo beta-out; exec sleep 1000", "");
    cfg += &sh_agent(
        "gamma",
        "for i in 1 2 3 4 5 6 7 8 9 10; do echo line-$i; done; exec sleep 1000",
        "",
    );
    let mut d = Daemon::new(&cfg);
    d.start();
    let pids: Vec<i32> = ["alpha", "beta", "gamma"]
        .iter()
        .map(|n| d.wait_running(n))
        .collect();

    // JSON list: one object per agent, with the documented fields.
    let list = d.agents();
    assert_eq!(list.len(), 3, "{list:?}");
    for (a, (name, pid)) in list
        .iter()
        .zip(["alpha", "beta", "gamma"].iter().zip(&pids))
    {
        assert_eq!(a["name"], *name, "{a}");
        assert_eq!(a["state"], "running", "{a}");
        assert_eq!(a["pid"].as_i64(), Some(i64::from(*pid)), "{a}");
        assert_eq!(a["restarts"], 0, "{a}");
        assert!(
            a["uptime_secs"].is_u64(),
            "uptime_secs of a running agent is a number: {a}"
        );
        assert!(pid_alive(*pid));
    }

    // Table.
    let table = d.ctl_ok(&["agents", "list"]);
    let mut lines = table.lines();
    let header = lines.next().expect("header");
    for col in ["NAME", "STATE", "PID", "RESTARTS", "UPTIME"] {
        assert!(header.contains(col), "header {header:?} lacks {col}");
    }
    for (name, pid) in ["alpha", "beta", "gamma"].iter().zip(&pids) {
        let row = table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no row for {name} in\n{table}"));
        assert!(row.contains("running"), "{row}");
        assert!(
            row.split_whitespace().any(|w| w == pid.to_string()),
            "{row} lacks pid {pid}"
        );
    }

    // Status, human and JSON.
    let st = d.ctl_ok(&["agents", "status", "beta"]);
    assert!(
        st.contains("beta") && st.contains("running") && st.contains(&pids[1].to_string()),
        "{st}"
    );
    let js = d.agent("beta");
    assert_eq!(js["pid"].as_i64(), Some(i64::from(pids[1])));
    assert_eq!(js["restart_policy"], "on-failure");

    // An unknown agent is an error from the daemon: exit 1.
    let out = d.ctl(&["agents", "status", "nosuch"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nosuch"),
        "{out:?}"
    );

    // Logs capture stdout and stderr.
    let lines = d.wait_log("alpha", "alpha-err");
    assert!(lines.iter().any(|l| l == "alpha-out"), "{lines:?}");
    assert!(lines.iter().any(|l| l == "alpha-err"), "{lines:?}");
    let json = d.ctl_ok(&["--json", "agents", "logs", "alpha", "-n", "100"]);
    let streams: Vec<(String, String)> = json
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("one JSON object per line");
            (
                v["stream"].as_str().unwrap().to_owned(),
                v["line"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        streams.contains(&("stdout".into(), "alpha-out".into())),
        "{streams:?}"
    );
    assert!(
        streams.contains(&("stderr".into(), "alpha-err".into())),
        "{streams:?}"
    );

    // -n N: the N most recent lines.
    d.wait_log("gamma", "line-10");
    assert_eq!(d.logs("gamma", 3), vec!["line-8", "line-9", "line-10"]);
    assert_eq!(d.logs("gamma", 100).len(), 10);

    // The per-agent log file under the state dir has them too.
    let file = std::fs::read_to_string(d.state_dir.join("logs/alpha.log")).expect("alpha.log");
    assert!(
        file.contains("alpha-out") && file.contains("alpha-err"),
        "{file}"
    );
}

#[test]
fn logs_follow_streams_new_lines() {
    // The agent echoes whatever is written to its FIFO.
    let cfg = sh_agent(
        "echoer",
        "echo ready; while :; do read line < fifo && echo \"got $line\"; done",
        "working_dir = \"{dir}/work\"",
    );
    let mut d = Daemon::new(&cfg);
    let work = d.path().join("work");
    std::fs::create_dir(&work).unwrap();
    nix::unistd::mkfifo(
        &work.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    d.start();
    d.wait_running("echoer");
    d.wait_log("echoer", "ready");

    let mut follower = Command::new(bin("ironctl"))
        .arg("--socket")
        .arg(&d.socket)
        .args(["agents", "logs", "echoer", "-n", "5", "-f"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = |what: &str| -> String {
        rx.recv_timeout(WAIT)
            .unwrap_or_else(|e| panic!("no line from `logs -f` while waiting for {what}: {e}"))
    };
    // The tail comes first.
    assert_eq!(next("the tail"), "ready");
    // A line written after the follow began is streamed.
    std::fs::OpenOptions::new()
        .write(true)
        .open(work.join("fifo"))
        .unwrap()
        .write_all(b"hello-1\n")
        .unwrap();
    assert_eq!(next("the first new line"), "got hello-1");
    std::fs::OpenOptions::new()
        .write(true)
        .open(work.join("fifo"))
        .unwrap()
        .write_all(b"hello-2\n")
        .unwrap();
    assert_eq!(next("the second new line"), "got hello-2");

    follower.kill().unwrap();
    follower.wait().unwrap();
    // The daemon keeps serving, the agent keeps running.
    d.ctl_ok(&["daemon", "ping"]);
    assert_eq!(d.agent("echoer")["state"], "running");
    std::fs::OpenOptions::new()
        .write(true)
        .open(work.join("fifo"))
        .unwrap()
        .write_all(b"hello-3\n")
        .unwrap();
    d.wait_log("echoer", "got hello-3");
}

#[test]
fn agents_get_a_clean_environment_and_their_working_dir() {
    let cfg = sh_agent(
        "envdump",
        "env; echo PWD-IS=$(pwd); echo END-OF-DUMP",
        "restart = \"never\"\nworking_dir = \"{dir}/wd\"\ninherit_env = [\"IRONCAGE_E2E_PASS\", \"IRONCAGE_E2E_UNSET\"]\n\
         env = { CONFIGURED = \"from-config\", SPACED = \"a b\" }",
    );
    let mut d = Daemon::new(&cfg);
    std::fs::create_dir(d.path().join("wd")).unwrap();
    d.start_with(|c| {
        c.env("IRONCAGE_E2E_LEAK", "secret")
            .env("IRONCAGE_E2E_PASS", "passed")
            .env_remove("IRONCAGE_E2E_UNSET");
    });
    d.wait_state("envdump", "exited");
    let lines = d.wait_log("envdump", "END-OF-DUMP");
    let has = |l: &str| lines.iter().any(|x| x == l);
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("IRONCAGE_E2E_LEAK") || l.contains("secret")),
        "{lines:#?}"
    );
    // The harness runs the daemon with RUST_LOG; it must not reach the agent either.
    assert!(
        !lines.iter().any(|l| l.starts_with("RUST_LOG=")),
        "{lines:#?}"
    );
    assert!(has("IRONCAGE_AGENT=envdump"), "{lines:#?}");
    assert!(has("CONFIGURED=from-config"), "{lines:#?}");
    assert!(has("SPACED=a b"), "{lines:#?}");
    assert!(has("IRONCAGE_E2E_PASS=passed"), "{lines:#?}");
    assert!(
        !lines.iter().any(|l| l.starts_with("IRONCAGE_E2E_UNSET")),
        "{lines:#?}"
    );
    let wd = std::fs::canonicalize(d.path().join("wd")).unwrap();
    assert!(has(&format!("PWD-IS={}", wd.display())), "{lines:#?}");
    let a = d.agent("envdump");
    assert_eq!(a["last_exit"]["code"], 0, "{a}");
}

#[test]
fn stop_kills_the_whole_process_group() {
    let cfg = sh_agent(
        "group",
        "sleep 1000 & echo child=$!; sleep 1000 & echo child=$!; wait",
        "",
    );
    let mut d = Daemon::new(&cfg);
    d.start();
    let pid = d.wait_running("group");
    let logged: Vec<i32> = wait_for("two child pids in the log", || {
        let pids: Vec<i32> = d
            .logs("group", 100)
            .iter()
            .filter_map(|l| l.strip_prefix("child=")?.parse().ok())
            .collect();
        (pids.len() == 2).then_some(pids)
    });
    let members = group_members(pid);
    for c in &logged {
        assert!(
            members.contains(c),
            "child {c} not in the agent's group {pid}: {members:?}"
        );
        assert!(pid_alive(*c));
    }
    assert!(
        members.contains(&pid),
        "the agent leads its own group: {members:?}"
    );
    assert_ne!(
        proc_stat(pid).unwrap().1,
        nix::unistd::getpgrp().as_raw(),
        "the agent must not share the test's process group"
    );

    d.ctl_ok(&["agents", "stop", "group"]);
    let a = d.agent("group");
    assert_eq!(a["state"], "stopped", "{a}");
    assert!(a["pid"].is_null(), "{a}");
    assert!(a["uptime_secs"].is_null(), "{a}");
    let mut all = members.clone();
    all.extend(&logged);
    wait_gone("the agent's process group", &all);
    assert!(group_members(pid).is_empty());

    // Start brings it back with a new group.
    d.ctl_ok(&["agents", "start", "group"]);
    let pid2 = d.wait_running("group");
    assert_ne!(pid, pid2);
}

#[test]
fn stop_grace_then_sigkill() {
    let cfg = sh_agent(
        "stubborn",
        "trap '' TERM; echo trapped; while :; do sleep 1; done",
        "stop_grace_secs = 1\nrestart = \"always\"",
    );
    let mut d = Daemon::new(&cfg);
    d.start();
    let pid = d.wait_running("stubborn");
    d.wait_log("stubborn", "trapped");
    let members = group_members(pid);
    let t = Instant::now();
    d.ctl_ok(&["agents", "stop", "stubborn"]);
    let took = t.elapsed();
    assert!(
        took.as_millis() >= 900,
        "SIGKILL came before the 1 s grace was over ({took:?})"
    );
    let a = d.agent("stubborn");
    assert_eq!(a["state"], "stopped", "{a}");
    assert_eq!(a["last_exit"]["signal"], 9, "{a}");
    wait_gone("the stubborn group", &members);
    let lines = d.logs("stubborn", 100);
    assert!(
        lines.iter().any(|l| l.contains("grace")),
        "the log says why it was killed: {lines:?}"
    );
    // Not restarted: `always` applies to exits on its own, not to operator stops.
    assert_eq!(d.agent("stubborn")["state"], "stopped");
}

#[test]
fn kill_and_signals() {
    let mut cfg = String::new();
    // restart = always with a short backoff: a kill must still not restart it.
    let quick = "restart = \"always\"\nbackoff_initial_ms = 50\nmax_restarts = 1000";
    cfg += &sh_agent("victim", "exec sleep 1000", quick);
    cfg += &sh_agent("termed", "exec sleep 1000", quick);
    cfg += &sh_agent(
        "hupper",
        "trap 'echo got-hup' HUP; echo ready; while :; do sleep 1000 & wait $!; done",
        quick,
    );
    // A witness that exits by itself: once it has restarted twice, the backoff
    // time has passed and a (wrong) restart of the killed agents would show.
    cfg += &sh_agent("witness", "exit 0", quick);
    let mut d = Daemon::new(&cfg);
    d.start();
    let victim = d.wait_running("victim");
    let termed = d.wait_running("termed");
    let hupper = d.wait_running("hupper");
    d.wait_log("hupper", "ready");

    let out = d.ctl_ok(&["agents", "kill", "victim"]);
    assert!(out.contains("victim"), "{out}");
    let a = d.wait_state("victim", "stopped");
    assert_eq!(a["last_exit"]["signal"], 9, "{a}");
    assert_eq!(a["stop_reason"], "killed_by_operator", "{a}");
    assert!(!pid_alive(victim));

    d.ctl_ok(&["agents", "kill", "termed", "--signal", "TERM"]);
    let a = d.wait_state("termed", "stopped");
    assert_eq!(a["last_exit"]["signal"], 15, "{a}");
    assert!(!pid_alive(termed));

    d.ctl_ok(&["agents", "kill", "hupper", "--signal", "HUP"]);
    d.wait_log("hupper", "got-hup");
    let a = d.agent("hupper");
    assert_eq!(a["state"], "running", "{a}");
    assert_eq!(
        a["pid"].as_i64(),
        Some(i64::from(hupper)),
        "HUP must not restart it: {a}"
    );

    let w0 = d.agent("witness")["restarts"].as_u64().unwrap();
    d.wait_agent("witness", "two more restarts", |a| {
        a["restarts"].as_u64().unwrap() >= w0 + 2
    });
    for name in ["victim", "termed"] {
        let a = d.agent(name);
        assert_eq!(
            a["state"], "stopped",
            "{name} was restarted after an operator kill: {a}"
        );
        assert_eq!(a["restarts"], 0, "{a}");
    }

    // Killing an agent that is not running is an error (exit 1).
    let out = d.ctl(&["agents", "kill", "victim"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    // A bad signal name is a usage error (exit 2).
    let out = d.ctl(&["agents", "kill", "hupper", "--signal", "NOPE"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn crash_loop_backs_off_then_fails_and_start_revives() {
    let cfg = sh_agent(
        "crasher",
        "if [ -e ok ]; then echo healthy; exec sleep 1000; fi; echo crashing; exit 1",
        "working_dir = \"{dir}/cw\"\nrestart = \"on-failure\"\nbackoff_initial_ms = 100\nmax_restarts = 3\nrestart_window_secs = 60",
    );
    let mut d = Daemon::new(&cfg);
    std::fs::create_dir(d.path().join("cw")).unwrap();
    d.start();
    // The restart count only ever goes up on the way to `failed`.
    let mut max_restarts = 0;
    let a = d.wait_agent("crasher", "failed", |a| {
        let r = a["restarts"].as_u64().unwrap();
        assert!(r >= max_restarts, "restarts went down: {a}");
        max_restarts = r;
        a["state"] == "failed"
    });
    assert_eq!(a["restarts"], 3, "{a}");
    assert_eq!(a["last_exit"]["code"], 1, "{a}");
    assert!(a["pid"].is_null(), "{a}");
    // One initial run and three restarts.
    let lines = wait_for("four runs in the log", || {
        let lines = d.logs("crasher", 100);
        (lines.iter().filter(|l| *l == "crashing").count() >= 4).then_some(lines)
    });
    assert_eq!(
        lines.iter().filter(|l| *l == "crashing").count(),
        4,
        "{lines:?}"
    );
    assert!(lines.iter().any(|l| l.contains("crash loop")), "{lines:?}");
    let table = d.ctl_ok(&["agents", "list"]);
    assert!(table.contains("failed"), "{table}");

    // An operator start brings a failed agent back.
    std::fs::write(d.path().join("cw/ok"), "").unwrap();
    d.ctl_ok(&["agents", "start", "crasher"]);
    d.wait_running("crasher");
    d.wait_log("crasher", "healthy");
}

#[test]
fn backoff_grows_exponentially() {
    // 300 ms, 600 ms, 1200 ms: the agent stamps each start; the gaps must grow.
    let cfg = sh_agent(
        "slowcrash",
        "date +%s%N >> starts; exit 1",
        "working_dir = \"{dir}/bw\"\nbackoff_initial_ms = 300\nmax_restarts = 3\nrestart_window_secs = 60",
    );
    let mut d = Daemon::new(&cfg);
    std::fs::create_dir(d.path().join("bw")).unwrap();
    d.start();
    let a = d.wait_state("slowcrash", "failed");
    assert_eq!(a["restarts"], 3, "{a}");
    let starts: Vec<u128> = std::fs::read_to_string(d.path().join("bw/starts"))
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(starts.len(), 4, "{starts:?}");
    let gaps: Vec<u128> = starts
        .windows(2)
        .map(|w| (w[1] - w[0]) / 1_000_000)
        .collect();
    // Lower bounds only (the delays are minimums): 300, 600, 1200 ms.
    for (gap, min) in gaps.iter().zip([300u128, 600, 1200]) {
        assert!(
            *gap >= min - 20,
            "backoff gaps {gaps:?} ms; expected at least 300/600/1200"
        );
    }
}

#[test]
fn restart_policies() {
    let mut cfg = String::new();
    cfg += &sh_agent("never", "echo never-ran; exit 3", "restart = \"never\"");
    cfg += &sh_agent("onfail-ok", "exit 0", "restart = \"on-failure\"");
    cfg += &sh_agent(
        "always-ok",
        "echo run; exit 0",
        "restart = \"always\"\nbackoff_initial_ms = 50\nmax_restarts = 1000",
    );
    let mut d = Daemon::new(&cfg);
    d.start();
    let a = d.wait_state("never", "exited");
    assert_eq!(a["last_exit"]["code"], 3, "{a}");
    assert_eq!(a["restarts"], 0, "{a}");
    assert!(a["pid"].is_null());
    let a = d.wait_state("onfail-ok", "exited");
    assert_eq!(a["last_exit"]["code"], 0, "{a}");
    assert_eq!(a["restarts"], 0, "{a}");
    let a = d.wait_agent("always-ok", "restarted at least twice", |a| {
        a["restarts"].as_u64().unwrap() >= 2
    });
    assert_ne!(a["state"], "failed", "{a}");
    // Once the others have been restarted twice, a restart of the exited ones would
    // have shown.
    assert_eq!(d.agent("never")["restarts"], 0);
    assert_eq!(d.agent("onfail-ok")["restarts"], 0);
    assert_eq!(d.agent("never")["state"], "exited");

    // An exited agent can be started again by an operator.
    d.ctl_ok(&["agents", "start", "never"]);
    wait_for("the second run of `never`", || {
        let runs = d
            .logs("never", 100)
            .iter()
            .filter(|l| *l == "never-ran")
            .count();
        (runs == 2 && d.agent("never")["state"] == "exited").then_some(())
    });
}

#[test]
fn restart_gives_a_new_process() {
    let cfg = sh_agent("r", "exec sleep 1000", "");
    let mut d = Daemon::new(&cfg);
    d.start();
    let p1 = d.wait_running("r");
    let out = d.ctl_ok(&["agents", "restart", "r"]);
    assert!(out.contains('r'), "{out}");
    let p2 = d.wait_running("r");
    assert_ne!(p1, p2);
    wait_gone("the old process", &[p1]);
    // Start of a running agent is refused (exit 1) and changes nothing.
    let out = d.ctl(&["agents", "start", "r"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(d.wait_running("r"), p2);
}

#[test]
fn an_agent_killed_from_outside_is_restarted() {
    let cfg = sh_agent("victim", "exec sleep 1000", "backoff_initial_ms = 50");
    let mut d = Daemon::new(&cfg);
    d.start();
    let pid = d.wait_running("victim");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let a = d.wait_agent("victim", "running again", |a| {
        a["state"] == "running" && a["pid"].as_i64() != Some(i64::from(pid))
    });
    assert_eq!(a["restarts"], 1, "{a}");
    assert_eq!(a["last_exit"]["signal"], 9, "{a}");
    assert!(
        a["stop_reason"].is_null(),
        "a crash is not an operator stop: {a}"
    );
}

#[test]
fn a_command_that_cannot_start() {
    let cfg = "\n[[agent]]\nname = \"ghost\"\ncommand = [\"/nonexistent/ironcage-e2e-agent\"]\nrestart = \"never\"\n";
    let mut d = Daemon::new(cfg);
    d.start();
    let a = d.wait_state("ghost", "exited");
    assert!(a["pid"].is_null(), "{a}");
    assert_ne!(a["last_exit"]["code"], 0, "{a}");
    let lines = d.wait_log("ghost", "cannot start");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("/nonexistent/ironcage-e2e-agent")),
        "{lines:?}"
    );
    // The daemon is fine.
    d.ctl_ok(&["daemon", "ping"]);
}

#[test]
fn a_command_that_cannot_start_crash_loops_to_failed() {
    let cfg = "\n[[agent]]\nname = \"ghost\"\ncommand = [\"ironcage-e2e-no-such-command\"]\nbackoff_initial_ms = 10\nmax_restarts = 2\n";
    let mut d = Daemon::new(cfg);
    d.start();
    let a = d.wait_state("ghost", "failed");
    assert_eq!(a["restarts"], 2, "{a}");
}

#[test]
fn autostart_false_waits_for_an_operator() {
    let mut cfg = sh_agent(
        "manual",
        "echo manual-ran; exec sleep 1000",
        "autostart = false",
    );
    cfg += &sh_agent("auto", "exec sleep 1000", "");
    let mut d = Daemon::new(&cfg);
    d.start();
    d.wait_running("auto");
    let a = d.agent("manual");
    assert_eq!(a["state"], "stopped", "{a}");
    assert!(a["pid"].is_null() && a["uptime_secs"].is_null(), "{a}");
    assert!(d.logs("manual", 10).is_empty());
    d.ctl_ok(&["agents", "start", "manual"]);
    d.wait_running("manual");
    d.wait_log("manual", "manual-ran");
}

#[test]
fn stop_during_backoff_cancels_the_restart() {
    let mut cfg = sh_agent(
        "crashy",
        "echo crash; exit 1",
        "backoff_initial_ms = 300\nmax_restarts = 1000",
    );
    // Witness: restarts every 300 ms too; two of its restarts prove enough time passed.
    cfg += &sh_agent(
        "witness",
        "exit 1",
        "backoff_initial_ms = 300\nbackoff_max_secs = 1\nmax_restarts = 1000",
    );
    let mut d = Daemon::new(&cfg);
    d.start();
    d.wait_state("crashy", "backoff");
    d.ctl_ok(&["agents", "stop", "crashy"]);
    let a = d.agent("crashy");
    assert_eq!(a["state"], "stopped", "{a}");
    let runs = d
        .logs("crashy", 100)
        .iter()
        .filter(|l| *l == "crash")
        .count();
    let w0 = d.agent("witness")["restarts"].as_u64().unwrap();
    d.wait_agent("witness", "two more restarts", |a| {
        a["restarts"].as_u64().unwrap() >= w0 + 2
    });
    assert_eq!(d.agent("crashy")["state"], "stopped");
    assert_eq!(
        d.logs("crashy", 100)
            .iter()
            .filter(|l| *l == "crash")
            .count(),
        runs,
        "it ran again after the stop"
    );
}

#[test]
fn relative_working_dir_is_relative_to_the_config_file() {
    let cfg = sh_agent(
        "rel",
        "echo PWD-IS=$(pwd); exec sleep 1000",
        "working_dir = \"rel-wd\"",
    );
    let mut d = Daemon::new(&cfg);
    std::fs::create_dir(d.path().join("rel-wd")).unwrap();
    d.start();
    let wd = std::fs::canonicalize(d.path().join("rel-wd")).unwrap();
    d.wait_log("rel", &format!("PWD-IS={}", wd.display()));
}

#[test]
fn logs_survive_a_restart_and_follow_sees_the_new_run() {
    let cfg = sh_agent("phoenix", "echo run-$$; exec sleep 1000", "");
    let mut d = Daemon::new(&cfg);
    d.start();
    let p1 = d.wait_running("phoenix");
    d.wait_log("phoenix", &format!("run-{p1}"));
    let mut follower = Command::new(bin("ironctl"))
        .arg("--socket")
        .arg(&d.socket)
        .args(["agents", "logs", "phoenix", "-n", "1", "-f"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The tail line proves the follow is registered before the restart.
    assert_eq!(
        rx.recv_timeout(WAIT).expect("the tail"),
        format!("run-{p1}")
    );
    d.ctl_ok(&["agents", "restart", "phoenix"]);
    let p2 = d.wait_running("phoenix");
    assert_ne!(p1, p2);
    let line = rx.recv_timeout(WAIT).expect("the follower saw the new run");
    assert_eq!(line, format!("run-{p2}"));
    let lines = d.wait_log("phoenix", &format!("run-{p2}"));
    assert!(
        lines.contains(&format!("run-{p1}")),
        "old lines are kept: {lines:?}"
    );
    follower.kill().unwrap();
    follower.wait().unwrap();
}
