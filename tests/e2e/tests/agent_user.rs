//! Agents under their own uid (`user =`), end to end with the real daemon as
//! root. Every test here needs root to switch users; as another user it says
//! so and passes without checking anything (CI runs as root: .ci/run).

// Helpers here run only inside tests: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use ironcage_e2e::*;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

const KEY: &str = "e2e master key for agent users";
const PROVIDER_KEY: &str = "sk-provider-user-test-000000000000000000";
const NOBODY: u32 = 65534;

fn skip_unless_root() -> bool {
    if is_root() {
        return false;
    }
    eprintln!("skipped: switching an agent's user needs root; run the e2e tests as root (CI does)");
    true
}

fn nobody_gid() -> u32 {
    nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("user nobody")
        .gid
        .as_raw()
}

fn start(d: &mut Daemon) {
    d.start_with(|c| {
        c.env("IRON_SECRETS_MASTER_KEY", KEY);
    });
}

fn set(d: &Daemon, name: &str, value: &str) {
    let mut child = Command::new(bin("ironctl"))
        .arg("--socket")
        .arg(&d.socket)
        .args(["secrets", "set", name, "--value-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(value.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "set {name}: {out:?}");
}

/// The mock provider accepting `key`.
struct Mock {
    child: std::process::Child,
    url: String,
}

impl Mock {
    fn start(dir: &Path) -> Mock {
        let addr_file = dir.join("mock.addr");
        let child = Command::new(bin("ironcage-mock-provider"))
            .arg("--addr-file")
            .arg(&addr_file)
            .args(["--threads", "1", "--openai-key", PROVIDER_KEY])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let url = wait_for("the mock to listen", || {
            std::fs::read_to_string(&addr_file).ok()
        });
        Mock {
            child,
            url: url.trim().to_owned(),
        }
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value after `key=` on the first log line holding it.
fn field(lines: &[String], key: &str) -> String {
    lines
        .iter()
        .find_map(|l| l.split_once(&format!("{key}=")).map(|(_, v)| v.to_owned()))
        .unwrap_or_else(|| panic!("no {key}= in {lines:?}"))
}

#[test]
fn an_agent_with_its_own_user_runs_as_it_reads_only_its_own_files_and_is_metered() {
    if skip_unless_root() {
        return;
    }
    let mut d = Daemon::new("");
    let mock = Mock::start(d.path());
    // Each attempt prints the error the agent itself got.
    let caged = sh_agent(
        "caged",
        r#"grep -E '^(Uid|Gid|Groups):' /proc/self/status | tr '\t' ' '
echo "home=$HOME user=$USER logname=$LOGNAME"
echo "redb=$(cat {dir}/state/ironcage.redb 2>&1 >/dev/null)"
echo "statedir=$(ls {dir}/state 2>&1 >/dev/null)"
echo "othercred=$(cat {dir}/run/credentials/other/OTHER 2>&1 >/dev/null)"
echo "credroot=$(ls {dir}/run/credentials 2>&1 >/dev/null)"
echo "otherenv=$(cat /proc/$(cat {dir}/other.pid)/environ 2>&1 >/dev/null)"
echo "mine=$(cat "$IRONCAGE_CREDENTIALS_DIRECTORY/MINE")"
curl -s -o /dev/null -w 'code=%{http_code}\n' "$OPENAI_BASE_URL/chat/completions" -H "Authorization: Bearer $OPENAI_API_KEY" -H 'content-type: application/json' -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":5}'
while [ ! -e {dir}/rotated ]; do sleep 0.05; done
echo "mine2=$(tr a-z A-Z < "$IRONCAGE_CREDENTIALS_DIRECTORY/MINE")"
exec sleep 1000"#,
        "user = \"nobody\"\nautostart = false\nsecrets = [\"MINE\"]\nbudget_usd = 5",
    );
    let other = sh_agent(
        "other",
        "echo other-up; exec sleep 1000",
        "autostart = false\nsecrets = [\"OTHER\"]",
    );
    d.write_config(&format!(
        "[[provider]]\nname = \"openai\"\nkind = \"openai\"\nbase_url = \"{}/v1\"\napi_key_secret = \"OPENAI_KEY\"\n{caged}{other}",
        mock.url
    ));
    start(&mut d);
    set(&d, "OPENAI_KEY", PROVIDER_KEY);
    set(&d, "MINE", "mine-value-1");
    set(&d, "OTHER", "other-agents-value");
    d.ctl_ok(&["secrets", "reload"]);
    d.ctl_ok(&["agents", "start", "other"]);
    d.wait_log("other", "other-up");
    let other_pid = d.wait_running("other");
    std::fs::write(d.path().join("other.pid"), other_pid.to_string()).unwrap();
    d.ctl_ok(&["agents", "start", "caged"]);
    let pid = d.wait_running("caged");
    let logs = d.wait_log("caged", "code=");

    // Its identity, read by the agent itself, and from outside.
    let gid = nobody_gid();
    assert!(
        logs.iter()
            .any(|l| l.trim() == format!("Uid: {NOBODY} {NOBODY} {NOBODY} {NOBODY}")),
        "{logs:?}"
    );
    assert!(
        logs.iter()
            .any(|l| l.trim() == format!("Gid: {gid} {gid} {gid} {gid}")),
        "{logs:?}"
    );
    let groups = logs
        .iter()
        .find_map(|l| l.trim().strip_prefix("Groups:"))
        .map(|g| g.trim().to_owned());
    assert_eq!(
        groups,
        Some(gid.to_string()),
        "only nobody's own groups: {logs:?}"
    );
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.contains(&format!("Uid:\t{NOBODY}\t")), "{status}");
    // And as the operator sees it.
    let user_line = |name: &str| {
        d.ctl_ok(&["agents", "status", name])
            .lines()
            .find_map(|l| l.strip_prefix("user:").map(|v| v.trim().to_owned()))
    };
    assert_eq!(
        user_line("caged"),
        Some(format!("nobody (uid {NOBODY}, gid {gid})"))
    );
    assert_eq!(user_line("other"), Some("the daemon's own".to_owned()));
    assert_eq!(
        field(&logs, "home"),
        format!("/nonexistent user=nobody logname=nobody"),
        "HOME, USER, LOGNAME from the passwd entry"
    );

    // What it must not read: the state dir and its redb file, the other
    // agent's credentials, the list of credentials directories, the other
    // agent's environment (where secret_env values live).
    for key in ["redb", "statedir", "othercred", "credroot", "otherenv"] {
        let v = field(&logs, key);
        assert!(v.contains("Permission denied"), "{key}: {v:?}");
    }
    // What it must read: its own file, which it owns (0400 in a 0700 dir).
    assert_eq!(
        field(&logs, "mine"),
        "[secret MINE]",
        "read, and masked by name"
    );
    let root = d.path().join("run/credentials");
    let own = root.join("caged");
    let meta = |p: &Path| std::fs::metadata(p).unwrap();
    assert_eq!(meta(&root).permissions().mode() & 0o777, 0o711);
    assert_eq!(
        (
            meta(&own).uid(),
            meta(&own).gid(),
            meta(&own).mode() & 0o777
        ),
        (NOBODY, gid, 0o700)
    );
    let file = own.join("MINE");
    assert_eq!(
        (
            meta(&file).uid(),
            meta(&file).gid(),
            meta(&file).mode() & 0o777
        ),
        (NOBODY, gid, 0o400)
    );
    // The agent without a user keeps the daemon's uid on its files.
    assert_eq!(meta(&root.join("other/OTHER")).uid(), 0);

    // Its LLM call went through the gateway with its virtual key, metered.
    assert_eq!(field(&logs, "code"), "200", "{logs:?}");
    // Settles are group-committed: `calls` and `spent` count once durable.
    let budget = wait_for("the call to be settled", || {
        let b = d.ctl_json(&["budget", "show", "caged"]);
        (b[0]["calls"] == 1).then_some(b)
    });
    assert!(budget[0]["spent"].as_u64().unwrap() > 0, "{budget}");

    // Rotation replaces the file, still the agent's own.
    set(&d, "MINE", "mine-value-2");
    d.ctl_ok(&["secrets", "reload"]);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "mine-value-2");
    assert_eq!(
        (
            meta(&file).uid(),
            meta(&file).gid(),
            meta(&file).mode() & 0o777
        ),
        (NOBODY, gid, 0o400)
    );
    std::fs::write(d.path().join("rotated"), "").unwrap();
    let logs = d.wait_log("caged", "mine2=");
    // Upper-cased, so not the value itself (which would show masked).
    assert_eq!(field(&logs, "mine2"), "MINE-VALUE-2");

    // Stopped: its directory goes.
    d.ctl_ok(&["agents", "stop", "caged"]);
    wait_for("the credentials directory to be removed", || {
        (!own.exists()).then_some(())
    });
    assert!(
        d.signal_and_wait(nix::sys::signal::Signal::SIGTERM)
            .success()
    );
}

#[test]
fn paths_the_user_cannot_use_fail_the_spawn_naming_the_path_and_the_user() {
    if skip_unless_root() {
        return;
    }
    let mut d = Daemon::new("");
    let private = d.path().join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let in_private = sh_agent(
        "locked-out",
        "echo should-not-run",
        "user = \"nobody\"\nworking_dir = \"private\"\nrestart = \"never\"",
    );
    let creds = sh_agent(
        "no-creds",
        "echo should-not-run",
        "user = \"nobody\"\nrestart = \"never\"\nautostart = false\nsecrets = [\"S\"]",
    );
    d.write_config(&format!("{in_private}{creds}"));
    start(&mut d);
    let logs = d.wait_log("locked-out", "cannot enter the working directory");
    let line = logs
        .iter()
        .find(|l| l.contains("cannot enter"))
        .unwrap()
        .clone();
    assert!(
        line.contains("nobody (uid 65534)")
            && line.contains(&private.display().to_string())
            && line.contains("Permission denied"),
        "{line}"
    );
    assert!(!logs.iter().any(|l| l.contains("should-not-run")));
    d.wait_state("locked-out", "exited");

    // The runtime directory closed to others (systemd's RuntimeDirectoryMode=0750):
    // the agent could not reach its credentials, and the spawn says so.
    set(&d, "S", "v");
    let run = d.path().join("run");
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o750)).unwrap();
    let _ = d.ctl(&["agents", "start", "no-creds"]);
    let logs = d.wait_log("no-creds", "cannot read its credentials directory");
    let line = logs
        .iter()
        .find(|l| l.contains("credentials directory"))
        .unwrap();
    assert!(
        line.contains("nobody (uid 65534)")
            && line.contains(&run.join("credentials/no-creds").display().to_string())
            && line.contains("RuntimeDirectoryMode=0751"),
        "{line}"
    );
    assert!(!logs.iter().any(|l| l.contains("should-not-run")));
    // Nothing is left behind.
    assert!(!run.join("credentials/no-creds").exists());
}

#[test]
fn an_unknown_user_is_a_config_error_with_its_line() {
    let d = Daemon::new(&sh_agent(
        "a",
        "exec sleep 1000",
        "user = \"no-such-user-e2e\"",
    ));
    let out = run_bounded(
        Command::new(bin("ironcaged"))
            .arg("--check-config")
            .arg("--config")
            .arg(&d.config),
    );
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    // sh_agent starts with a blank line: `user` is on line 5.
    assert!(
        err.contains(&format!("{}:5", d.config.display()))
            && err.contains("agent[0].user")
            && err.contains("\"no-such-user-e2e\" does not exist"),
        "{err}"
    );
}

/// A daemon that may not switch users (here: run as nobody, no capabilities)
/// refuses a config with `user`, saying what to do, before it starts anything.
#[test]
fn a_daemon_without_the_privilege_refuses_user_and_says_what_to_do() {
    if skip_unless_root() {
        return;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("skipped: setpriv (util-linux) is needed to run the daemon as another user");
        return;
    }
    let d = Daemon::new(&sh_agent("a", "exec sleep 1000", "user = \"nobody\""));
    let mut c = Command::new("setpriv");
    c.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
    ]);
    let daemon = d.command();
    c.arg(daemon.get_program()).args(daemon.get_args());
    c.env("RUST_LOG", "info");
    let out = run_bounded(&mut c);
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:5", d.config.display()))
            && err.contains("CAP_SETUID")
            && err.contains("CAP_SETGID")
            && err.contains("run the daemon as root")
            && err.contains("AmbientCapabilities=")
            && err.contains("remove `user`"),
        "{err}"
    );
    // It stopped before creating its state.
    assert!(!d.state_dir.join("ironcage.redb").exists());
}

/// The capabilities the shipped systemd unit gives the daemon (ambient).
const UNIT_CAPS: &str = "+setuid,+setgid,+chown,+dac_override,+kill";

/// The capability lines of a process's status, e.g. `CapEff: 0000000000000000`.
fn caps_zero(logs: &[String], agent: &str) {
    for cap in ["CapInh:", "CapPrm:", "CapEff:", "CapAmb:"] {
        let v = logs
            .iter()
            .find_map(|l| l.trim().strip_prefix(cap))
            .unwrap_or_else(|| panic!("{agent}: no {cap} in {logs:?}"));
        assert_eq!(
            u64::from_str_radix(v.trim(), 16).unwrap(),
            0,
            "{agent} holds capabilities: {cap} {v}"
        );
    }
}

/// The daemon as the systemd unit runs it: an unprivileged uid (nobody here)
/// with the unit's ambient capabilities. An agent with `user` runs as that
/// user, gets its files, keeps them through a rotation, and is stopped; no
/// agent (with or without `user`) gets any of the daemon's capabilities.
#[test]
fn an_unprivileged_daemon_with_the_units_capabilities_runs_agents_as_other_users() {
    if skip_unless_root() {
        return;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("skipped: setpriv (util-linux) is needed to run the daemon as another user");
        return;
    }
    let daemon_user = nix::unistd::User::from_name("daemon").unwrap();
    let Some(daemon_user) = daemon_user else {
        eprintln!("skipped: no user `daemon` on this host to run the agent as");
        return;
    };
    let agent_uid = daemon_user.uid.as_raw();
    let script = r#"grep -E '^(Uid|Cap(Inh|Prm|Eff|Amb)):' /proc/self/status | tr '\t' ' '
echo "mine=$(cat "$IRONCAGE_CREDENTIALS_DIRECTORY/MINE")"
echo "up"; exec sleep 1000"#;
    let caged = sh_agent(
        "caged",
        script,
        "user = \"daemon\"\nautostart = false\nsecrets = [\"MINE\"]",
    );
    let plain = sh_agent(
        "plain",
        r#"grep -E '^(Uid|Cap(Inh|Prm|Eff|Amb)):' /proc/self/status | tr '\t' ' '; echo up; exec sleep 1000"#,
        "",
    );
    let mut d = Daemon::new(&format!("{caged}{plain}"));
    // The daemon's uid owns its directory (StateDirectory= does this under systemd).
    nix::unistd::chown(
        d.path(),
        Some(nix::unistd::Uid::from_raw(NOBODY)),
        Some(nix::unistd::Gid::from_raw(NOBODY)),
    )
    .unwrap();
    let daemon = d.command();
    let mut c = Command::new("setpriv");
    c.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        &format!("--inh-caps={UNIT_CAPS}"),
        &format!("--ambient-caps={UNIT_CAPS}"),
    ])
    .arg(daemon.get_program())
    .args(daemon.get_args())
    .env("RUST_LOG", "info")
    .env("IRON_SECRETS_MASTER_KEY", KEY)
    .stdout(Stdio::null())
    .stderr(Stdio::inherit());
    d.child = Some(c.spawn().unwrap());
    let pid = d.pid() as i32;
    wait_for("the daemon to answer ping", || {
        assert!(
            pid_alive(pid),
            "ironcaged exited during start; its stderr is above"
        );
        d.ctl(&["daemon", "ping"]).status.success().then_some(())
    });
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.contains(&format!("Uid:\t{NOBODY}\t")), "{status}");

    let logs = d.wait_log("plain", "up");
    assert!(
        logs.iter()
            .any(|l| l.trim() == format!("Uid: {NOBODY} {NOBODY} {NOBODY} {NOBODY}")),
        "{logs:?}"
    );
    caps_zero(&logs, "plain");

    set(&d, "MINE", "mine-1");
    d.ctl_ok(&["agents", "start", "caged"]);
    let logs = d.wait_log("caged", "up");
    let u = agent_uid;
    assert!(
        logs.iter()
            .any(|l| l.trim() == format!("Uid: {u} {u} {u} {u}")),
        "{logs:?}"
    );
    caps_zero(&logs, "caged");
    // It read the value (printed, it shows masked by name).
    assert_eq!(field(&logs, "mine"), "[secret MINE]");
    let own = d.path().join("run/credentials/caged");
    let file = own.join("MINE");
    let meta = |p: &Path| std::fs::metadata(p).unwrap();
    assert_eq!((meta(&own).uid(), meta(&file).uid()), (u, u));

    // Rotation by the unprivileged daemon into the agent's own directory.
    set(&d, "MINE", "mine-2");
    d.ctl_ok(&["secrets", "reload"]);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "mine-2");
    assert_eq!((meta(&file).uid(), meta(&file).mode() & 0o777), (u, 0o400));

    // Stopping it signals another uid's process, and removes its directory.
    let agent_pid = d.wait_running("caged");
    d.ctl_ok(&["agents", "stop", "caged"]);
    wait_gone("the agent", &[agent_pid]);
    wait_for("the credentials directory to be removed", || {
        (!own.exists()).then_some(())
    });
    assert!(
        d.signal_and_wait(nix::sys::signal::Signal::SIGTERM)
            .success()
    );
}

/// A Python agent whose `iron_cage` module directory its user cannot read
/// fails to spawn with a message naming the directory and the user.
#[test]
fn a_module_directory_the_user_cannot_read_fails_the_spawn_naming_it() {
    if skip_unless_root() {
        return;
    }
    let built = bin_dir().join("python/iron_cage");
    if !built.join("_native.abi3.so").is_file() {
        eprintln!(
            "skipped: the iron_cage module is not built in {} (scripts/test.sh builds it)",
            built.display()
        );
        return;
    }
    let d = Daemon::new("");
    // A copy of the module inside a directory only root may enter.
    let private = d.path().join("private");
    let module = private.join("python");
    std::fs::create_dir_all(module.join("iron_cage")).unwrap();
    for e in std::fs::read_dir(&built).unwrap() {
        let e = e.unwrap();
        // Files only (not __pycache__/).
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), module.join("iron_cage").join(e.file_name())).unwrap();
        }
    }
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(d.path().join("agent.py"), "print('should-not-run')\n").unwrap();
    let mut d = d;
    d.write_config(&format!(
        "[daemon]\npython_path = \"{}\"\n[[agent]]\nname = \"py\"\npython = \"python3\"\nscript = \"agent.py\"\nuser = \"nobody\"\nrestart = \"never\"\n",
        module.display()
    ));
    start(&mut d);
    let logs = d.wait_log("py", "cannot read the iron_cage module directory");
    let line = logs
        .iter()
        .find(|l| l.contains("module directory"))
        .unwrap();
    assert!(
        line.contains("nobody (uid 65534)")
            && line.contains(&module.display().to_string())
            && line.contains("python_path"),
        "{line}"
    );
    assert!(!logs.iter().any(|l| l.contains("should-not-run")));
}

/// With a relative `--config`, working_dir is relative to the daemon's
/// directory; the switch checks and enters that same directory.
#[test]
fn a_relative_working_dir_is_entered_as_the_agent_user() {
    if skip_unless_root() {
        return;
    }
    let mut d = Daemon::new(&sh_agent(
        "rel",
        "echo \"cwd=$(pwd)\"; exec sleep 1000",
        "user = \"nobody\"\nworking_dir = \"work\"",
    ));
    std::fs::create_dir(d.path().join("work")).unwrap();
    d.child = Some(
        Command::new(bin("ironcaged"))
            .current_dir(d.path())
            .args(["--config", "ironcaged.toml", "--socket"])
            .arg(&d.socket)
            .arg("--state-dir")
            .arg(&d.state_dir)
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let pid = d.pid() as i32;
    wait_for("the daemon to answer ping", || {
        assert!(
            pid_alive(pid),
            "ironcaged exited during start; its stderr is above"
        );
        d.ctl(&["daemon", "ping"]).status.success().then_some(())
    });
    let logs = d.wait_log("rel", "cwd=");
    assert_eq!(
        field(&logs, "cwd"),
        d.path().join("work").display().to_string(),
        "{logs:?}"
    );
    assert!(
        d.signal_and_wait(nix::sys::signal::Signal::SIGTERM)
            .success()
    );
}
