//! Configuration reload: by SIGHUP and by `ironctl daemon reload`. New agents
//! start, removed ones stop, changed ones restart; an invalid config changes
//! nothing.

// Helpers here run only inside tests: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use ironcage_e2e::*;
use nix::sys::signal::Signal;
use std::collections::HashMap;

fn config_v1() -> String {
    let mut c = String::new();
    c += &sh_agent("keep", "exec sleep 1000", "");
    c += &sh_agent("gone", "sleep 1000 & echo child=$!; wait", "");
    c += &sh_agent(
        "changed",
        "echo version=$VERSION; exec sleep 1000",
        "env = { VERSION = \"1\" }",
    );
    c
}

fn config_v2() -> String {
    let mut c = String::new();
    c += &sh_agent("keep", "exec sleep 1000", "");
    c += &sh_agent(
        "changed",
        "echo version=$VERSION; exec sleep 1000",
        "env = { VERSION = \"2\" }",
    );
    c += &sh_agent("added", "echo added-ran; exec sleep 1000", "");
    c
}

fn running_pids(d: &Daemon) -> HashMap<String, i64> {
    d.agents()
        .iter()
        .filter(|a| a["state"] == "running")
        .map(|a| {
            (
                a["name"].as_str().unwrap().to_owned(),
                a["pid"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[derive(Clone, Copy)]
enum Trigger {
    Sighup,
    Ctl,
}

fn add_remove_change(trigger: Trigger) {
    let mut d = Daemon::new(&config_v1());
    d.start();
    let keep = d.wait_running("keep");
    let gone = d.wait_running("gone");
    let changed = d.wait_running("changed");
    d.wait_log("changed", "version=1");
    let gone_child: i32 = wait_for("the child pid of `gone`", || {
        d.logs("gone", 10)
            .iter()
            .find_map(|l| l.strip_prefix("child=")?.parse().ok())
    });
    let gone_group = group_members(gone);
    assert!(gone_group.contains(&gone_child));

    d.write_config(&config_v2());
    match trigger {
        Trigger::Ctl => {
            let out = d.ctl_ok(&["daemon", "reload"]);
            assert!(out.contains("reloaded"), "{out}");
            assert!(
                out.contains("added") && out.contains("gone") && out.contains("changed"),
                "{out}"
            );
            // Synchronous: when the command returns, the new config is applied.
            let names: Vec<String> = d
                .agents()
                .iter()
                .map(|a| a["name"].as_str().unwrap().to_owned())
                .collect();
            assert_eq!(names, ["added", "changed", "keep"]);
        }
        Trigger::Sighup => {
            d.signal(Signal::SIGHUP);
            wait_for("the reload to add `added` and drop `gone`", || {
                let names: Vec<String> = d
                    .agents()
                    .iter()
                    .map(|a| a["name"].as_str().unwrap().to_owned())
                    .collect();
                (names == ["added", "changed", "keep"]).then_some(())
            });
        }
    }
    d.wait_running("added");
    d.wait_log("added", "added-ran");
    // The removed agent's whole group is gone; it is no longer known.
    wait_gone("the removed agent's processes", &gone_group);
    let out = d.ctl(&["agents", "status", "gone"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    // The changed agent runs again, as a new process with the new config.
    let new_changed = d.wait_agent("changed", "a new process", |a| {
        a["state"] == "running" && a["pid"].as_i64() != Some(i64::from(changed))
    });
    assert_eq!(
        new_changed["restarts"], 0,
        "a reload is not a crash: {new_changed}"
    );
    d.wait_log("changed", "version=2");
    wait_gone("the changed agent's old process", &[changed]);
    // The unchanged one was not touched.
    assert_eq!(d.wait_running("keep"), keep);

    // Daemon status counts the new set.
    let s = d.ctl_json(&["daemon", "status"]);
    assert_eq!(s["agents_total"], 3, "{s}");
}

#[test]
fn sighup_adds_removes_and_restarts_changed_agents() {
    add_remove_change(Trigger::Sighup);
}

#[test]
fn ctl_reload_adds_removes_and_restarts_changed_agents() {
    add_remove_change(Trigger::Ctl);
}

/// The v1 config with `bad` appended, and the 1-based number of the last line
/// equal to `at` (where the error is).
fn broken(bad: &str, at: &str) -> (String, usize) {
    let text = format!("{}{bad}", config_v1());
    let line = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.trim() == at)
        .map(|(i, _)| i + 1)
        .last()
        .unwrap();
    (text, line)
}

fn invalid_reload_keeps_running(bad: &str, at: &str, key: Option<&str>) {
    let mut d = Daemon::new(&config_v1());
    d.start();
    for n in ["keep", "gone", "changed"] {
        d.wait_running(n);
    }
    let before = running_pids(&d);
    assert_eq!(before.len(), 3);

    // Also an otherwise wanted change, which must not be applied.
    let (text, line) = broken(bad, at);
    d.write_config(&text.replace("VERSION = \"1\"", "VERSION = \"3\""));
    let out = d.ctl(&["daemon", "reload"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let file = std::fs::canonicalize(&d.config).unwrap();
    assert!(
        err.contains(&format!("{}:{line}", file.display()))
            || err.contains(&format!("{}:{line}", d.config.display())),
        "the error names the file and line {line}: {err}"
    );
    if let Some(k) = key {
        assert!(err.contains(k), "the error names the key {k}: {err}");
    }
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert_eq!(
        running_pids(&d),
        before,
        "a rejected reload touched the agents"
    );

    // SIGHUP with the same invalid file: logged, nothing changes, still serving.
    d.signal(Signal::SIGHUP);
    d.wait_stderr("reload rejected");
    assert!(pid_alive(d.pid() as i32));
    d.ctl_ok(&["daemon", "ping"]);
    assert_eq!(
        running_pids(&d),
        before,
        "a rejected SIGHUP reload touched the agents"
    );
    assert!(!d.logs("changed", 100).iter().any(|l| l == "version=3"));

    // Fixing the file makes the next reload work.
    d.write_config(&config_v2());
    d.ctl_ok(&["daemon", "reload"]);
    d.wait_running("added");
}

#[test]
fn reload_rejects_a_syntax_error() {
    invalid_reload_keeps_running("\n[[agent]\nname = \"x\"\n", "[[agent]", None);
}

#[test]
fn reload_rejects_an_unknown_key() {
    invalid_reload_keeps_running(
        "\n[[agent]]\nname = \"x\"\ncommand = [\"true\"]\nrestrat = \"always\"\n",
        "restrat = \"always\"",
        Some("restrat"),
    );
}

#[test]
fn reload_rejects_a_duplicate_agent() {
    invalid_reload_keeps_running(
        "\n[[agent]]\nname = \"keep\"\ncommand = [\"true\"]\n",
        "name = \"keep\"",
        Some("keep"),
    );
}

#[test]
fn sighup_with_an_invalid_config_keeps_the_old_one() {
    let mut d = Daemon::new(&config_v1());
    d.start();
    for n in ["keep", "gone", "changed"] {
        d.wait_running(n);
    }
    let before = running_pids(&d);
    d.write_config("this is not toml\n");
    d.signal(Signal::SIGHUP);
    d.wait_stderr("reload rejected");
    d.ctl_ok(&["daemon", "ping"]);
    assert_eq!(running_pids(&d), before);
    // The running config is still the old one: a reload with the good v2 only
    // shows the v1 -> v2 difference.
    d.write_config(&config_v2());
    let out = d.ctl_ok(&["daemon", "reload"]);
    assert!(out.contains("added") && out.contains("gone"), "{out}");
    d.wait_running("added");
}

#[test]
fn reload_of_an_unchanged_config_touches_nothing() {
    let mut d = Daemon::new(&config_v1());
    d.start();
    for n in ["keep", "gone", "changed"] {
        d.wait_running(n);
    }
    let before = running_pids(&d);
    let out = d.ctl_ok(&["daemon", "reload"]);
    assert!(out.contains("reloaded"), "{out}");
    assert_eq!(running_pids(&d), before);
}
