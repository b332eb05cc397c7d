//! Agent output passes the agent's `logs` PII policy before it is stored (ring,
//! file) or logged by the daemon: a real agent prints an email and an API key.

#![allow(clippy::unwrap_used)]

use ironcage_e2e::{Daemon, sh_agent};

const EMAIL: &str = "jane.doe@example.com";
const AWS_KEY: &str = "AKIAZ7Q4RT2WX9YB3N5K";
const OPENAI_KEY: &str = "sk-proj-Q2x9Lm4Tz8Kp1Rw7Yb3Nc6Vd5Fg0Hj2Kl4Mn6Pq8Rs";

fn script() -> String {
    format!(
        "echo customer {EMAIL} wrote; echo key {AWS_KEY} >&2; echo listening on 127.0.0.1:8080; echo done-marker; exec sleep 1000"
    )
}

fn assert_nowhere(d: &Daemon, name: &str, needles: &[&str]) {
    let file = std::fs::read_to_string(d.path().join("state/logs").join(format!("{name}.log")))
        .unwrap_or_default();
    let ring = d.logs(name, 1000).join("\n");
    let daemon = d.stderr_text();
    for n in needles {
        assert!(!file.contains(n), "log file holds {n}: {file}");
        assert!(!ring.contains(n), "ring holds {n}: {ring}");
        assert!(!daemon.contains(n), "daemon log holds {n}");
    }
}

#[test]
fn default_policy_redacts_personal_data_and_secrets_in_agent_output() {
    let mut d = Daemon::new(&sh_agent("a", &script(), ""));
    d.start();
    let lines = d.wait_log("a", "done-marker");
    let text = lines.join("\n");
    assert!(text.contains("customer [EMAIL] wrote"), "{text}");
    assert!(text.contains("key [AWS_ACCESS_KEY]"), "{text}");
    // IP addresses are left alone by default.
    assert!(text.contains("listening on 127.0.0.1:8080"), "{text}");
    assert_nowhere(&d, "a", &[EMAIL, AWS_KEY]);
}

#[test]
fn block_replaces_the_line_with_a_notice_naming_the_kinds() {
    let extra = "[agent.pii]\nlogs = { secrets = \"block\", email = \"mask\" }\n";
    // `mask` is not an action: the config is refused, naming it.
    let bad = Daemon::new(&sh_agent("a", &script(), extra));
    let out = bad.command().arg("--check-config").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("mask"), "{err}");
    drop(bad);

    let extra =
        "[agent.pii]\nlogs = { secrets = \"block\", email = \"redact\" }\nstyle = \"mask\"\n";
    let script = format!("echo token {OPENAI_KEY} in use; {}", script());
    let mut d = Daemon::new(&sh_agent("a", &script, extra));
    d.start();
    let lines = d.wait_log("a", "done-marker");
    let text = lines.join("\n");
    assert!(
        text.contains(
            "[ironcaged] line withheld by the PII policy (logs): it contained openai_key"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "[ironcaged] line withheld by the PII policy (logs): it contained aws_access_key"
        ),
        "{text}"
    );
    assert!(text.contains("customer j***@example.com wrote"), "{text}");
    assert_nowhere(&d, "a", &[EMAIL, AWS_KEY, OPENAI_KEY]);
}
