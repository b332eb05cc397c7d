//! Secrets and the audit trail, end to end with the real daemon and ironctl.

// Helpers here run only inside tests: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use ironcage_e2e::*;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};

const KEY_A: &str = "e2e master key A, long enough";
const KEY_B: &str = "e2e master key B, long enough";
const CANARY: &str = "sk-canary-e2e-5d1f0b9a7c3e2d4f6a8b0c1d2e3f4a5b";
const NOBODY: u32 = 65534;

fn start(d: &mut Daemon, key: &str) {
    let key = key.to_owned();
    d.start_with(move |c| {
        c.env("IRON_SECRETS_MASTER_KEY", key);
    });
}

/// Runs ironctl with `input` on stdin.
fn ctl_stdin(d: &Daemon, args: &[&str], input: &str) -> Output {
    let mut child = Command::new(bin("ironctl"))
        .arg("--socket")
        .arg(&d.socket)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ironctl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("ironctl output")
}

fn set(d: &Daemon, name: &str, env: &str, value: &str) {
    let out = ctl_stdin(
        d,
        &["secrets", "set", name, "--env", env, "--value-stdin"],
        value,
    );
    assert!(out.status.success(), "set {name}: {out:?}");
}

fn audit(d: &Daemon) -> Vec<serde_json::Value> {
    let out = d.ctl_ok(&["--json", "audit", "tail", "-n", "1000"]);
    out.lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

fn redb_bytes(d: &Daemon) -> Vec<u8> {
    std::fs::read(d.state_dir.join("ironcage.redb")).expect("read redb")
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn sigkill_right_after_set_keeps_the_value_and_its_audit_entry() {
    let mut d = Daemon::new("");
    start(&mut d, KEY_A);
    set(&d, "DB_PASSWORD", "production", "the-value-1");
    // `set` returned: the value and its entry are durable. Kill -9 now.
    d.signal_and_wait(nix::sys::signal::Signal::SIGKILL);
    start(&mut d, KEY_A);
    assert_eq!(
        d.ctl_ok(&["secrets", "get", "DB_PASSWORD"]),
        "the-value-1\n"
    );
    let entries = audit(&d);
    assert!(
        entries.iter().any(|e| e["action"] == "secrets set"
            && e["target"] == "DB_PASSWORD@production"
            && e["outcome"] == "ok"),
        "{entries:?}"
    );
    // `get` was recorded with an HMAC, not the value.
    let read = entries
        .iter()
        .rev()
        .find(|e| e["action"] == "secrets get")
        .expect("get entry");
    assert!(read["detail"].as_str().unwrap().contains("hmac-sha256:"));
    assert!(d.ctl_ok(&["audit", "verify"]).contains("audit trail OK"));
}

#[test]
fn wrong_master_key_stops_the_daemon_having_written_nothing() {
    let mut d = Daemon::new("");
    start(&mut d, KEY_A);
    set(&d, "K", "staging", "v");
    assert!(
        d.signal_and_wait(nix::sys::signal::Signal::SIGTERM)
            .success()
    );
    let before = redb_bytes(&d);
    let out = run_bounded(d.command().env("IRON_SECRETS_MASTER_KEY", KEY_B));
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("does not open the secrets store") && err.contains("Nothing was written"),
        "{err}"
    );
    assert!(!err.contains(KEY_B), "{err}");
    assert_eq!(redb_bytes(&d), before, "the database changed");
    start(&mut d, KEY_A);
    assert_eq!(
        d.ctl_ok(&["secrets", "get", "K", "--env", "staging"]),
        "v\n"
    );
}

#[test]
fn without_a_master_key_secrets_say_how_to_configure_one() {
    let mut d = Daemon::new("");
    d.start_with(|c| {
        c.env_remove("IRON_SECRETS_MASTER_KEY");
    });
    let out = d.ctl(&["secrets", "list"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("IRON_SECRETS_MASTER_KEY") && err.contains("master_key_file"),
        "{err}"
    );
    // The trail runs, and verify says what it cannot check.
    d.ctl_ok(&["daemon", "reload"]);
    let v = d.ctl_ok(&["audit", "verify"]);
    assert!(
        v.contains("no master key") && v.contains("audit trail OK"),
        "{v}"
    );
    assert!(
        audit(&d)
            .iter()
            .any(|e| e["action"] == "daemon reload" && e["outcome"] == "ok")
    );
}

#[test]
fn role_by_operation_matrix_with_every_denial_audited() {
    if !is_root() {
        println!(
            "SKIP role_by_operation_matrix_with_every_denial_audited: needs root to run ironctl as uid {NOBODY}"
        );
        return;
    }
    let mut d = Daemon::new(&format!(
        "[daemon]\nsocket_group = \"nogroup\"\n\n[access]\nviewers = [\"uid:{NOBODY}\"]\n"
    ));
    start(&mut d, KEY_A);
    set(
        &d,
        "OPENAI_KEY",
        "production",
        "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789",
    );
    set(
        &d,
        "OPENAI_KEY",
        "production",
        "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789-v2",
    );
    let value_file = d.path().join("value.txt");
    std::fs::write(&value_file, "viewer-value").unwrap();
    std::fs::set_permissions(&value_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let vf = value_file.to_str().unwrap();
    let doc = d.path().join("doc.json");
    std::fs::write(&doc, "{\"X\": \"y\"}").unwrap();
    std::fs::set_permissions(&doc, std::fs::Permissions::from_mode(0o644)).unwrap();
    let docf = doc.to_str().unwrap();

    // Viewers: metadata and masked values.
    for args in [
        &["secrets", "list"][..],
        &["--json", "secrets", "list"],
        &["secrets", "versions", "OPENAI_KEY"],
        &["audit", "tail"],
        &["audit", "verify"],
    ] {
        let out = d.ctl_as(NOBODY, NOBODY, args);
        assert!(out.status.success(), "viewer {args:?}: {out:?}");
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("0123456789"),
            "viewer saw a value: {args:?}"
        );
    }
    let out = d.ctl_as(NOBODY, NOBODY, &["secrets", "list"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("sk-proj-abc..."),
        "{out:?}"
    );
    // Everything else is refused, naming the role.
    let denied: Vec<(Vec<&str>, &str)> = vec![
        (vec!["secrets", "get", "OPENAI_KEY"], "secrets get"),
        (
            vec!["secrets", "set", "OPENAI_KEY", "--from-file", vf],
            "secrets set",
        ),
        (vec!["secrets", "rm", "OPENAI_KEY"], "secrets rm"),
        (
            vec!["secrets", "rollback", "OPENAI_KEY", "1"],
            "secrets rollback",
        ),
        (vec!["secrets", "reload"], "secrets reload"),
        (
            vec!["secrets", "rekey", "--new-key-file", vf],
            "secrets rekey",
        ),
        (vec!["secrets", "export"], "secrets export"),
        (vec!["secrets", "import", docf], "secrets import"),
        (vec!["daemon", "reload"], "daemon reload"),
    ];
    for (args, _) in &denied {
        let out = d.ctl_as(NOBODY, NOBODY, args);
        assert_eq!(out.status.code(), Some(1), "viewer {args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("needs role admin"), "{args:?}: {err}");
    }
    // Nothing changed, and each denial is on the record.
    assert!(
        d.ctl_ok(&["secrets", "get", "OPENAI_KEY"])
            .ends_with("-v2\n")
    );
    let entries = audit(&d);
    for (_, action) in &denied {
        assert!(
            entries.iter().any(|e| e["action"] == *action
                && e["outcome"] == "denied"
                && e["actor_uid"] == NOBODY
                && e["actor_role"] == "viewer"),
            "no denial entry for {action}"
        );
    }
    // Admins can do all of it.
    d.ctl_ok(&["secrets", "rollback", "OPENAI_KEY", "1"]);
    d.ctl_ok(&["secrets", "reload"]);
    let exported = d.path().join("export.json");
    d.ctl_ok(&["secrets", "export", "--output", exported.to_str().unwrap()]);
    let mode = std::fs::metadata(&exported).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    d.ctl_ok(&["secrets", "import", docf]);
    d.ctl_ok(&["secrets", "rm", "X"]);
    let key_file = d.path().join("new.key");
    std::fs::write(&key_file, KEY_B).unwrap();
    d.ctl_ok(&[
        "secrets",
        "rekey",
        "--new-key-file",
        key_file.to_str().unwrap(),
    ]);
    assert!(
        d.ctl_ok(&["secrets", "get", "OPENAI_KEY"])
            .ends_with("0123456789\n")
    );
    assert!(d.ctl_ok(&["audit", "verify"]).contains("audit trail OK"));
}

#[test]
fn canary_reaches_only_its_agent_and_never_logs_audit_raw_file_or_daemon_env() {
    let granted = sh_agent(
        "holder",
        r#"d="$IRONCAGE_CREDENTIALS_DIRECTORY"; test "$(cat "$d/CANARY")" = "$CANARY_ENV" && echo file-matches-env; stat -c 'dir=%a' "$d"; stat -c 'file=%a' "$d/CANARY"; echo "dir-path=$d"; exec sleep 1000"#,
        "secrets = [\"CANARY\"]\nsecret_env = { CANARY_ENV = \"CANARY\" }",
    );
    let other = sh_agent("other", "echo other-up; exec sleep 1000", "");
    let mut d = Daemon::new(&format!("{granted}{other}"));
    start(&mut d, KEY_A);
    // Granted but not set yet: the agent cannot start, and says why.
    d.wait_log("holder", "not in the store");
    set(&d, "CANARY", "production", CANARY);
    d.ctl_ok(&["agents", "restart", "holder"]);
    let holder = d.wait_running("holder");
    d.wait_log("holder", "file-matches-env");
    let logs = d.wait_log("holder", "dir-path=");
    assert!(logs.iter().any(|l| l.contains("dir=700")), "{logs:?}");
    assert!(logs.iter().any(|l| l.contains("file=400")), "{logs:?}");
    let dir = logs
        .iter()
        .find_map(|l| l.split("dir-path=").nth(1))
        .expect("dir path")
        .trim()
        .to_owned();
    assert!(std::path::Path::new(&dir).join("CANARY").exists());
    let other = d.wait_running("other");
    d.wait_log("other", "other-up");
    d.ctl_ok(&["secrets", "get", "CANARY"]);

    let environ = |pid: i32| std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    assert!(
        contains(&environ(holder), CANARY),
        "the granted agent has it in its env"
    );
    let other_env = environ(other);
    assert!(!contains(&other_env, CANARY), "another agent's env");
    assert!(
        !contains(&other_env, "IRONCAGE_CREDENTIALS_DIRECTORY"),
        "another agent got a credentials dir"
    );
    assert!(
        !contains(&environ(d.pid() as i32), CANARY),
        "the daemon's env"
    );
    for a in ["holder", "other"] {
        assert!(
            !d.logs(a, 1000).iter().any(|l| l.contains(CANARY)),
            "agent {a} logs"
        );
    }
    let export = d.ctl_ok(&["audit", "export"]);
    assert!(
        !export.contains(CANARY) && export.contains("secret delivered"),
        "audit"
    );
    let err = d.ctl(&["secrets", "rollback", "CANARY", "99"]);
    assert!(!String::from_utf8_lossy(&err.stderr).contains(CANARY));

    // Rotation replaces the file; a failed reload (a granted secret gone)
    // keeps the running state.
    let file = std::path::Path::new(&dir).join("CANARY");
    set(&d, "CANARY", "production", &format!("{CANARY}-v2"));
    d.ctl_ok(&["secrets", "reload"]);
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        format!("{CANARY}-v2")
    );
    d.ctl_ok(&["secrets", "rm", "CANARY"]);
    let out = d.ctl(&["secrets", "reload"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("stay") && err.contains("not in the store"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        format!("{CANARY}-v2")
    );

    // The agent's directory goes when it stops.
    d.ctl_ok(&["agents", "stop", "holder"]);
    wait_for("the credentials directory to be removed", || {
        (!std::path::Path::new(&dir).exists()).then_some(())
    });
    assert!(
        d.signal_and_wait(nix::sys::signal::Signal::SIGTERM)
            .success()
    );
    assert!(!d.stderr_text().contains(CANARY), "daemon log");
    assert!(!contains(&redb_bytes(&d), CANARY), "raw redb file");
}

/// The mock provider accepting exactly `keys`, recording requests.
struct Mock {
    child: std::process::Child,
    url: String,
}

impl Mock {
    fn start(dir: &std::path::Path, keys: &[&str]) -> Mock {
        let addr_file = dir.join("mock.addr");
        let mut c = Command::new(bin("ironcage-mock-provider"));
        c.arg("--record")
            .arg("--addr-file")
            .arg(&addr_file)
            .arg("--threads")
            .arg("1");
        for k in keys {
            c.arg("--openai-key").arg(k);
        }
        let child = c
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mock");
        let url = wait_for("the mock to listen", || {
            std::fs::read_to_string(&addr_file).ok()
        });
        Mock {
            child,
            url: url.trim().to_owned(),
        }
    }

    /// The bearer keys of the recorded requests, oldest first.
    fn keys(&self) -> Vec<String> {
        let out = Command::new("curl")
            .args(["-sf", &format!("{}/_mock/requests", self.url)])
            .output()
            .expect("curl");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("requests JSON");
        v.as_array()
            .expect("array")
            .iter()
            .map(|r| {
                r["headers"]["authorization"]
                    .as_str()
                    .unwrap_or("")
                    .trim_start_matches("Bearer ")
                    .to_owned()
            })
            .collect()
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sigusr1_rotation_switches_the_provider_key_with_no_failed_or_torn_call() {
    const OLD: &str = "sk-provider-old-0000000000000000000000000000";
    const NEW: &str = "sk-provider-new-1111111111111111111111111111";
    let mut d = Daemon::new("");
    let mock = Mock::start(d.path(), &[OLD, NEW]);
    let stop = d.path().join("stop");
    // The agent calls the gateway in a loop and prints each status code.
    let agent = sh_agent(
        "caller",
        &format!(
            r#"while [ ! -e {stop} ]; do curl -s -o /dev/null -w 'code=%{{http_code}}\n' "$OPENAI_BASE_URL/chat/completions" -H "Authorization: Bearer $OPENAI_API_KEY" -H 'content-type: application/json' -d '{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"hi"}}],"max_tokens":5}}'; done; echo done; exec sleep 1000"#,
            stop = stop.display()
        ),
        "autostart = false",
    );
    d.write_config(&format!(
        "[[provider]]\nname = \"openai\"\nkind = \"openai\"\nbase_url = \"{}/v1\"\napi_key_secret = \"OPENAI_KEY\"\n{agent}",
        mock.url
    ));
    start(&mut d, KEY_A);
    set(&d, "OPENAI_KEY", "production", OLD);
    d.ctl_ok(&["secrets", "reload"]);
    d.ctl_ok(&["agents", "start", "caller"]);
    let count = |d: &Daemon| {
        d.logs("caller", 100_000)
            .iter()
            .filter(|l| l.contains("code="))
            .count()
    };
    wait_for("calls on the old key", || (count(&d) >= 20).then_some(()));
    // Rotate from "cron": set, then SIGUSR1; calls keep flowing.
    set(&d, "OPENAI_KEY", "production", NEW);
    let before = count(&d);
    d.signal(nix::sys::signal::Signal::SIGUSR1);
    d.wait_stderr("secrets reloaded");
    wait_for("calls on the new key", || {
        (count(&d) >= before + 20).then_some(())
    });
    std::fs::write(&stop, "").unwrap();
    d.wait_log("caller", "done");
    let logs = d.logs("caller", 100_000);
    let codes: Vec<&String> = logs.iter().filter(|l| l.contains("code=")).collect();
    assert!(
        codes.iter().all(|l| l.contains("code=200")),
        "a call failed: {:?}",
        codes.iter().find(|l| !l.contains("code=200"))
    );
    let keys = mock.keys();
    assert!(
        keys.iter().all(|k| k == OLD || k == NEW),
        "a torn or foreign key reached the provider"
    );
    assert_eq!(keys.first().map(String::as_str), Some(OLD));
    assert_eq!(keys.last().map(String::as_str), Some(NEW));
    // The agent never saw the provider key.
    let pid = d.wait_running("caller");
    let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    assert!(!contains(&env, OLD) && !contains(&env, NEW));
}

/// Rewrites the daemon's audit table while it is stopped.
fn tamper(d: &Daemon, f: impl FnOnce(&mut redb::Table<u64, &[u8]>)) {
    let db = redb::Database::create(d.state_dir.join("ironcage.redb")).expect("open redb");
    let txn = db.begin_write().unwrap();
    {
        let mut t = txn
            .open_table(redb::TableDefinition::<u64, &[u8]>::new("audit"))
            .unwrap();
        f(&mut t);
    }
    txn.commit().unwrap();
}

fn entry(t: &redb::Table<u64, &[u8]>, seq: u64) -> ironcage_shared::protocol::AuditEntry {
    use redb::ReadableTable;
    postcard::from_bytes(t.get(seq).unwrap().expect("entry").value()).unwrap()
}

#[test]
fn audit_verify_names_the_first_edited_or_deleted_entry() {
    let mut d = Daemon::new("");
    start(&mut d, KEY_A);
    for i in 0..5 {
        set(&d, &format!("K{i}"), "production", "v");
    }
    assert!(d.ctl_ok(&["audit", "verify"]).contains("audit trail OK"));
    assert!(
        d.signal_and_wait(nix::sys::signal::Signal::SIGTERM)
            .success()
    );

    // An edited entry: the actor of entry 2 changed.
    tamper(&d, |t| {
        let mut e = entry(t, 2);
        e.actor_uid = Some(1234);
        t.insert(2, postcard::to_stdvec(&e).unwrap().as_slice())
            .unwrap();
    });
    start(&mut d, KEY_A);
    let out = d.ctl(&["audit", "verify"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("at seq 2") && err.contains("edited"), "{err}");
    let out = d.ctl(&["--json", "audit", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["first_bad"], 2);
    assert!(
        d.signal_and_wait(nix::sys::signal::Signal::SIGTERM)
            .success()
    );

    // A deleted one further on is reported after the first, once that is fixed:
    // here, a fresh trail and a deletion only.
    let mut d = Daemon::new("");
    start(&mut d, KEY_A);
    for i in 0..5 {
        set(&d, &format!("K{i}"), "production", "v");
    }
    assert!(
        d.signal_and_wait(nix::sys::signal::Signal::SIGTERM)
            .success()
    );
    tamper(&d, |t| {
        t.remove(3).unwrap();
    });
    start(&mut d, KEY_A);
    let out = d.ctl(&["audit", "verify"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("at seq 3") && err.contains("missing"), "{err}");
}

/// Rolls the daemon's trail back to `seq` while it is stopped: deletes every
/// newer entry and checkpoint, which nothing inside the file can show.
fn roll_back(d: &Daemon, seq: u64) {
    use redb::ReadableTable;
    let db = redb::Database::create(d.state_dir.join("ironcage.redb")).expect("open redb");
    let txn = db.begin_write().unwrap();
    for name in ["audit", "audit_checkpoints"] {
        let mut t = txn
            .open_table(redb::TableDefinition::<u64, &[u8]>::new(name))
            .unwrap();
        let newer: Vec<u64> = t
            .range(seq + 1..)
            .unwrap()
            .map(|r| r.unwrap().0.value())
            .collect();
        assert!(!newer.is_empty(), "nothing in {name} after {seq}");
        for k in newer {
            t.remove(k).unwrap();
        }
    }
    txn.commit().unwrap();
}

#[test]
fn audit_verify_anchor_catches_a_tail_rolled_back_while_the_daemon_was_stopped() {
    let mut d = Daemon::new("");
    start(&mut d, KEY_A);
    for i in 0..3 {
        set(&d, &format!("K{i}"), "production", "v");
    }
    // The operator's cron line records the head as one JSON line.
    let out = d.ctl(&["--json", "audit", "verify"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 1, "{text}");
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    let early = report["anchor"].as_str().expect("anchor").to_owned();
    let early_seq: u64 = early.split_once(':').unwrap().0.parse().unwrap();
    assert_eq!(report["last_checkpoint"], early_seq);
    assert!(early.ends_with(report["head_mac"].as_str().unwrap()));
    let v = d.ctl_ok(&["audit", "verify", "--anchor", &early]);
    assert!(
        v.contains("is on the verified chain") && v.contains("audit trail OK"),
        "{v}"
    );

    for i in 3..6 {
        set(&d, &format!("K{i}"), "production", "v");
    }
    let plain = d.ctl_ok(&["audit", "verify"]);
    let line = plain
        .lines()
        .find(|l| l.starts_with("anchor"))
        .expect("anchor line");
    let late = line.split_whitespace().last().unwrap().to_owned();
    assert_ne!(late, early);
    assert!(
        d.signal_and_wait(nix::sys::signal::Signal::SIGTERM)
            .success()
    );
    // The journal is the second witness: the head at shutdown.
    d.wait_stderr("audit trail head at shutdown: anchor ");
    let shutdown = d
        .stderr_text()
        .lines()
        .rev()
        .find_map(|l| {
            l.split_once("audit trail head at shutdown: anchor ")
                .map(|(_, rest)| rest.split_whitespace().next().unwrap().to_owned())
        })
        .expect("the head in the daemon's log at shutdown");

    // Roll back to the early anchor while the daemon is stopped.
    roll_back(&d, early_seq);
    start(&mut d, KEY_A);
    let v = d.ctl_ok(&["audit", "verify"]);
    assert!(
        v.contains("audit trail OK"),
        "plain verify cannot see it: {v}"
    );
    for anchor in [&late, &shutdown] {
        let out = d.ctl(&["audit", "verify", "--anchor", anchor]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("does not hold the anchor {anchor}")),
            "{err}"
        );
    }
    let out = d.ctl(&["--json", "audit", "verify", "--anchor", &shutdown]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["anchor_error"].is_string(), "{report}");
    // The early anchor is still on the chain.
    d.ctl_ok(&["audit", "verify", "--anchor", &early]);
    // A malformed anchor is refused with what to pass.
    let out = d.ctl(&["audit", "verify", "--anchor", "12:xyz"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("64 hex digits"), "{err}");
}

#[test]
fn audit_tail_follow_prints_new_entries_as_they_commit() {
    use std::io::BufRead;
    let mut d = Daemon::new("");
    start(&mut d, KEY_A);
    let mut tail = Command::new(bin("ironctl"))
        .arg("--socket")
        .arg(&d.socket)
        .args(["--json", "audit", "tail", "-f", "-n", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("tail -f");
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = tail.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    set(&d, "FOLLOWED", "staging", "v");
    let mut seen = Vec::new();
    let found = wait_for("tail -f to print the set", || {
        while let Ok(l) = rx.try_recv() {
            seen.push(l);
        }
        seen.iter()
            .find(|l| l.contains("FOLLOWED@staging"))
            .cloned()
    });
    let e: serde_json::Value = serde_json::from_str(&found).unwrap();
    assert_eq!(e["action"], "secrets set");
    let _ = tail.kill();
    let _ = tail.wait();
}

/// A prompt-injected tool call runs `ironctl` inside the agent, with the
/// daemon's uid: it gets no role at all (not the admin role that uid would
/// have), so it cannot export the secrets or steer the daemon.
#[test]
fn an_agent_cannot_use_the_control_socket_even_with_the_daemons_uid() {
    let ctl = bin("ironctl");
    let script = format!(
        "while [ ! -e {{dir}}/go ]; do sleep 0.05; done; c={ctl}; s={{dir}}/run/ironcaged.sock; \"$c\" --socket \"$s\" secrets export --format flat --env production; echo \"export-exit=$?\"; \"$c\" --socket \"$s\" agents kill victim; echo \"kill-exit=$?\"; exec sleep 1000",
        ctl = ctl.display()
    );
    let agent = sh_agent("injected", &script, "");
    let victim = sh_agent("victim", "exec sleep 1000", "");
    let mut d = Daemon::new(&format!("{agent}{victim}"));
    start(&mut d, KEY_A);
    set(&d, "CANARY", "production", CANARY);
    let victim_pid = d.wait_running("victim");
    // The agent goes once the secret is there to steal.
    std::fs::write(d.path().join("go"), "").unwrap();
    let logs = d.wait_log("injected", "kill-exit=");
    let text = logs.join("\n");
    assert!(text.contains("export-exit=1"), "{text}");
    assert!(text.contains("kill-exit=1"), "{text}");
    assert!(text.contains("runs inside an agent"), "{text}");
    assert!(!text.contains(CANARY), "the export leaked: {text}");
    assert_eq!(
        d.wait_running("victim"),
        victim_pid,
        "the victim was not killed"
    );
    // The same uid from outside the agent (this test) is still an admin.
    assert!(
        d.ctl_ok(&[
            "secrets",
            "export",
            "--format",
            "flat",
            "--env",
            "production"
        ])
        .contains(CANARY)
    );
    let denials: Vec<_> = audit(&d)
        .into_iter()
        .filter(|e| e["action"] == "connect" && e["detail"] == "caller runs inside an agent")
        .collect();
    assert_eq!(denials.len(), 2, "{denials:?}");
}

/// Reads (`put` None) or writes the raw head record of `name@env` while the
/// daemon is stopped.
fn raw_head(d: &Daemon, name: &str, env: &str, put: Option<&[u8]>) -> Vec<u8> {
    use redb::ReadableTable;
    let db = redb::Database::create(d.state_dir.join("ironcage.redb")).expect("open redb");
    let def = redb::TableDefinition::<(&str, &str), &[u8]>::new("secrets_heads");
    let txn = db.begin_write().unwrap();
    let out = {
        let mut t = txn.open_table(def).unwrap();
        if let Some(b) = put {
            t.insert((name, env), b).unwrap();
        }
        t.get((name, env)).unwrap().expect("head").value().to_vec()
    };
    txn.commit().unwrap();
    out
}

#[test]
fn a_head_record_put_back_from_before_a_rotation_is_refused_with_a_clear_message() {
    const OLD: &str = "db-password-before-rotation";
    const NEW: &str = "db-password-after-rotation";
    let mut d = Daemon::new("");
    start(&mut d, KEY_A);
    set(&d, "DB_PASSWORD", "production", OLD);
    set(&d, "OTHER", "production", "other-value");
    assert!(
        d.signal_and_wait(nix::sys::signal::Signal::SIGTERM)
            .success()
    );
    let old_head = raw_head(&d, "DB_PASSWORD", "production", None);
    start(&mut d, KEY_A);
    set(&d, "DB_PASSWORD", "production", NEW);
    assert!(
        d.signal_and_wait(nix::sys::signal::Signal::SIGTERM)
            .success()
    );
    // Someone with write access to the file rolls the rotation back.
    raw_head(&d, "DB_PASSWORD", "production", Some(&old_head));
    start(&mut d, KEY_A);

    let out = d.ctl(&["secrets", "get", "DB_PASSWORD"]);
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("DB_PASSWORD@production is refused")
            && err.contains("fails authentication")
            && err.contains("an older head was put back")
            && err.contains("restore it from a backup")
            && err.contains("ironctl secrets rm DB_PASSWORD --env production"),
        "{err}"
    );
    assert!(!err.contains(OLD) && !err.contains(NEW), "{err}");
    // `list` marks that one secret; the other still reads.
    let list = d.ctl_ok(&["secrets", "list"]);
    assert!(list.contains("TAMPERED"), "{list}");
    assert_eq!(d.ctl_ok(&["secrets", "get", "OTHER"]), "other-value\n");
    // Nothing in the logs or the trail holds either value.
    let logs = d.stderr_text();
    assert!(!logs.contains(OLD) && !logs.contains(NEW));
    assert!(!audit(&d).iter().any(|e| {
        let s = e.to_string();
        s.contains(OLD) || s.contains(NEW)
    }));
}

#[test]
fn the_master_key_leaves_the_daemons_environment_at_start() {
    let agent = sh_agent(
        "worker",
        "echo worker-up; exec sleep 1000",
        "secrets = [\"TOKEN\"]",
    );
    let mut d = Daemon::new(&agent);
    start(&mut d, KEY_A);
    set(&d, "TOKEN", "production", "token-value");
    d.ctl_ok(&["agents", "restart", "worker"]);
    let worker = d.wait_running("worker");
    d.wait_log("worker", "worker-up");
    // Unlocked with it: the store works.
    assert_eq!(d.ctl_ok(&["secrets", "get", "TOKEN"]), "token-value\n");
    // Neither the daemon's initial environment block nor the agent's holds it.
    let daemon_env = std::fs::read(format!("/proc/{}/environ", d.pid())).expect("daemon environ");
    assert!(!daemon_env.is_empty());
    assert!(
        !contains(&daemon_env, KEY_A),
        "the key is in the daemon's environ"
    );
    let agent_env = std::fs::read(format!("/proc/{worker}/environ")).expect("agent environ");
    assert!(!contains(&agent_env, KEY_A));
    assert!(!contains(&agent_env, "IRON_SECRETS_MASTER_KEY"));
    // A restart (the key given again) still unlocks the same store.
    assert!(
        d.signal_and_wait(nix::sys::signal::Signal::SIGTERM)
            .success()
    );
    start(&mut d, KEY_A);
    assert_eq!(d.ctl_ok(&["secrets", "get", "TOKEN"]), "token-value\n");
}

#[test]
fn budget_set_and_reset_are_on_the_trail_with_their_change() {
    let agent = sh_agent(
        "spender",
        "exec sleep 1000",
        "budget_usd = 5.0\nbudget_period = \"day\"",
    );
    let mut d = Daemon::new(&agent);
    start(&mut d, KEY_A);
    d.ctl_ok(&[
        "budget", "set", "spender", "--usd", "10", "--period", "week",
    ]);
    d.ctl_ok(&["budget", "reset", "spender"]);
    let out = d.ctl(&["budget", "set", "nobody", "--usd", "1"]);
    assert!(!out.status.success(), "{out:?}");
    let entries: Vec<_> = audit(&d)
        .into_iter()
        .filter(|e| e["action"].as_str().unwrap_or("").starts_with("budget "))
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["target"].as_str().unwrap().to_owned(),
                e["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let s = |a: &str, t: &str, o: &str| (a.to_owned(), t.to_owned(), o.to_owned());
    assert_eq!(
        entries,
        vec![
            s("budget set", "spender", "requested"),
            s("budget set", "spender", "ok"),
            s("budget reset", "spender", "requested"),
            s("budget reset", "spender", "ok"),
            s("budget set", "nobody", "requested"),
            s("budget set", "nobody", "failed"),
        ]
    );
    // The change itself survived a SIGKILL right after the reply.
    d.signal_and_wait(nix::sys::signal::Signal::SIGKILL);
    start(&mut d, KEY_A);
    let b = d.ctl_ok(&["budget", "show", "spender"]);
    assert!(b.contains("10.00") && b.contains("week"), "{b}");
    assert!(d.ctl_ok(&["audit", "verify"]).contains("audit trail OK"));
}

#[test]
fn an_agent_printing_its_secrets_shows_their_names_in_every_log() {
    // Neither value looks like a key or any other PII pattern: only the
    // daemon's knowledge of what it delivered can mask them.
    const DB: &str = "db-pass-Correct-Horse-e2e-17";
    const TOKEN_V1: &str = "tok-first-Battery-Staple-e2e";
    const TOKEN_V2: &str = "tok-second-Stapler-Fire-e2e";
    let agent = sh_agent(
        "printer",
        r#"echo "env=$DB_PASSWORD"; last=""; while :; do v=$(cat "$IRONCAGE_CREDENTIALS_DIRECTORY/API_TOKEN"); if [ "$v" != "$last" ]; then echo "token=$v" >&2; last=$v; fi; sleep 0.05; done"#,
        "secrets = [\"API_TOKEN\"]\nsecret_env = { DB_PASSWORD = \"DB_PASSWORD\" }",
    );
    let mut d = Daemon::new(&agent);
    start(&mut d, KEY_A);
    set(&d, "DB_PASSWORD", "production", DB);
    set(&d, "API_TOKEN", "production", TOKEN_V1);
    d.ctl_ok(&["agents", "restart", "printer"]);
    d.wait_log("printer", "env=[secret DB_PASSWORD]");
    d.wait_log("printer", "token=[secret API_TOKEN]");

    // A rotated value, written to the agent's file by a reload, is masked
    // from the first line that shows it.
    set(&d, "API_TOKEN", "production", TOKEN_V2);
    d.ctl_ok(&["secrets", "reload"]);
    wait_for("the agent to print the rotated token", || {
        (d.logs("printer", 100)
            .iter()
            .filter(|l| l.contains("token=[secret API_TOKEN]"))
            .count()
            >= 2)
            .then_some(())
    });
    let file = std::fs::read_to_string(d.path().join("state/logs/printer.log")).unwrap();
    for v in [DB, TOKEN_V1, TOKEN_V2] {
        assert!(
            !d.logs("printer", 1000).iter().any(|l| l.contains(v)),
            "ironctl agents logs"
        );
        assert!(!file.contains(v), "the agent's log file");
    }
    assert!(
        d.signal_and_wait(nix::sys::signal::Signal::SIGTERM)
            .success()
    );
    let journal = d.stderr_text();
    assert!(journal.contains("[secret API_TOKEN]"), "{journal}");
    for v in [DB, TOKEN_V1, TOKEN_V2] {
        assert!(!journal.contains(v), "the daemon's own log");
    }
}
