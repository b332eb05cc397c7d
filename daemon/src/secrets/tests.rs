//! The secrets store over a real redb file: the tests trusted secret stores run.

use super::master::MasterKey;
use super::vault::{RekeyStep, VERSIONS, VersionRecord};
use super::*;
use crate::audit::Actor;
use ironcage_shared::protocol::SecretEnv::{Development, Production, Staging};
use redb::ReadableTable;
use std::path::Path;

const KEY_A: &str = "correct horse battery staple A";
const KEY_B: &str = "correct horse battery staple B";
const CANARY: &str = "sk-canary-7f3a9c1e5b2d4f6a8c0e2b4d6f8a0c2e";

fn key(s: &str) -> MasterKey {
    MasterKey::new(s.as_bytes().to_vec(), "test").unwrap()
}

fn admin() -> Actor {
    Actor::peer(
        0,
        Some(ironcage_shared::protocol::Role::Admin),
        "uid 0 (root)".into(),
    )
}

fn open(dir: &Path, k: Option<&str>) -> Result<Secrets, SecretsError> {
    let store = Arc::new(Store::open(dir).unwrap());
    Secrets::open(store, k.map(key).as_ref(), 3)
}

fn file_bytes(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join(crate::store::FILE_NAME)).unwrap()
}

#[test]
fn set_get_list_versions_rollback_rm_each_on_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), Some(KEY_A)).unwrap();
    let v = s.vault().unwrap();
    let a = admin();
    assert_eq!(v.set(&a, "DB_PASSWORD", Production, "pw-one").unwrap(), 1);
    assert_eq!(v.set(&a, "DB_PASSWORD", Production, "pw-two").unwrap(), 2);
    assert_eq!(v.set(&a, "DB_PASSWORD", Staging, "pw-staging").unwrap(), 1);
    assert_eq!(
        v.get(&a, "DB_PASSWORD", Production, None)
            .unwrap()
            .1
            .expose(),
        "pw-two"
    );
    assert_eq!(
        v.get(&a, "DB_PASSWORD", Production, Some(1))
            .unwrap()
            .1
            .expose(),
        "pw-one"
    );
    assert_eq!(
        v.get(&a, "DB_PASSWORD", Staging, None).unwrap().1.expose(),
        "pw-staging"
    );
    assert!(matches!(
        v.get(&a, "DB_PASSWORD", Development, None),
        Err(SecretsError::NotFound { .. })
    ));

    let list = v.list(None).unwrap();
    assert_eq!(list.len(), 2);
    assert!(list.iter().all(|i| i.masked == "****"));
    assert_eq!(v.list(Some(Staging)).unwrap().len(), 1);

    // A rollback stores the old value as a new version (Vault KV v2 style).
    assert_eq!(v.rollback(&a, "DB_PASSWORD", Production, 1).unwrap(), 3);
    assert_eq!(
        v.read_current("DB_PASSWORD", Production).unwrap().expose(),
        "pw-one"
    );
    let vs = v.versions("DB_PASSWORD", Production).unwrap();
    assert_eq!(
        vs.iter()
            .map(|x| (x.version, x.current))
            .collect::<Vec<_>>(),
        vec![(1, false), (2, false), (3, true)]
    );
    assert!(matches!(
        v.rollback(&a, "DB_PASSWORD", Production, 9),
        Err(SecretsError::VersionNotKept { .. })
    ));

    assert_eq!(v.remove(&a, "DB_PASSWORD", Production).unwrap(), 3);
    assert!(matches!(
        v.read_current("DB_PASSWORD", Production),
        Err(SecretsError::NotFound { .. })
    ));

    let entries = s.audit().log().entries(None, 100).unwrap();
    let actions: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e.action.as_str(), e.target.as_str()))
        .collect();
    for want in [
        ("secrets set", "DB_PASSWORD@production"),
        ("secrets set", "DB_PASSWORD@staging"),
        ("secrets get", "DB_PASSWORD@production"),
        ("secrets rollback", "DB_PASSWORD@production"),
        ("secrets rm", "DB_PASSWORD@production"),
    ] {
        assert!(actions.contains(&want), "{want:?} missing from {actions:?}");
    }
    let read = entries.iter().find(|e| e.action == "secrets get").unwrap();
    assert!(read.detail.contains("hmac-sha256:"), "{}", read.detail);
    assert_eq!(read.actor_uid, Some(0));
    assert!(s.audit().log().verify().unwrap().first_bad.is_none());
}

#[test]
fn keeps_the_configured_number_of_versions() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), Some(KEY_A)).unwrap();
    let v = s.vault().unwrap();
    for i in 1..=5 {
        v.set(&admin(), "K", Production, &format!("value-{i}"))
            .unwrap();
    }
    let kept: Vec<u32> = v
        .versions("K", Production)
        .unwrap()
        .iter()
        .map(|x| x.version)
        .collect();
    assert_eq!(kept, vec![3, 4, 5]);
    assert!(matches!(
        v.get(&admin(), "K", Production, Some(2)),
        Err(SecretsError::VersionNotKept { .. })
    ));
}

#[test]
fn bad_names_and_values_are_refused_with_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), Some(KEY_A)).unwrap();
    let v = s.vault().unwrap();
    let before = s.audit().log().last_seq();
    for (name, value) in [("../x", "v"), ("", "v"), ("a b", "v"), ("ok", "")] {
        let e = v.set(&admin(), name, Production, value).unwrap_err();
        assert!(matches!(e, SecretsError::Invalid(_)), "{e}");
    }
    let big = "x".repeat(ironcage_shared::protocol::MAX_SECRET_LEN + 1);
    assert!(
        v.set(&admin(), "big", Production, &big)
            .unwrap_err()
            .to_string()
            .contains("limit")
    );
    assert_eq!(s.audit().log().last_seq(), before);
    assert!(v.list(None).unwrap().is_empty());
}

#[test]
fn wrong_master_key_is_refused_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path(), Some(KEY_A)).unwrap();
        s.vault()
            .unwrap()
            .set(&admin(), "K", Production, "v")
            .unwrap();
    }
    let before = file_bytes(dir.path());
    let e = open(dir.path(), Some(KEY_B)).unwrap_err();
    assert!(matches!(e, SecretsError::WrongKey { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("does not open") && msg.contains("Nothing was written"),
        "{msg}"
    );
    assert!(!msg.contains(KEY_B) && !msg.contains(KEY_A), "{msg}");
    assert_eq!(file_bytes(dir.path()), before, "the file changed");
    // The right key still works.
    let s = open(dir.path(), Some(KEY_A)).unwrap();
    assert_eq!(
        s.vault()
            .unwrap()
            .read_current("K", Production)
            .unwrap()
            .expose(),
        "v"
    );
}

#[test]
fn without_a_master_key_secrets_are_disabled_and_say_how_to_enable_them() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), None).unwrap();
    assert!(!s.enabled());
    let e = s.vault().unwrap_err().to_string();
    assert!(
        e.contains(master::ENV_VAR) && e.contains("master_key_file"),
        "{e}"
    );
    // The trail still works, unkeyed.
    s.audit()
        .record_durable_blocking(crate::audit::Draft::new(
            admin(),
            "x",
            "y",
            ironcage_shared::protocol::AuditOutcome::Ok,
        ))
        .unwrap();
    let r = s.audit().log().verify().unwrap();
    assert!(!r.keyed && r.first_bad.is_none() && r.entries == 1);
}

#[test]
fn a_stored_value_that_was_altered_or_moved_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), Some(KEY_A)).unwrap();
    let v = s.vault().unwrap();
    v.set(&admin(), "A", Production, "value-of-a").unwrap();
    v.set(&admin(), "B", Production, "value-of-b").unwrap();
    let store = s.audit().log().store().clone();
    let rewrite = |name: &str, f: &dyn Fn(&mut VersionRecord)| {
        let txn = store.begin_write().unwrap();
        {
            let mut t = txn.open_table(VERSIONS).unwrap();
            let mut rec: VersionRecord =
                postcard::from_bytes(t.get((name, "production", 1)).unwrap().unwrap().value())
                    .unwrap();
            f(&mut rec);
            t.insert(
                (name, "production", 1),
                postcard::to_stdvec(&rec).unwrap().as_slice(),
            )
            .unwrap();
        }
        txn.commit().unwrap();
    };
    rewrite("A", &|r| {
        let n = r.sealed.len();
        r.sealed[n - 1] ^= 1;
    });
    let e = v.read_current("A", Production).unwrap_err();
    assert!(matches!(e, SecretsError::Tampered { .. }), "{e}");
    // B's whole record moved under A's name: refused (AAD binds the name).
    let b: VersionRecord = {
        let txn = store.begin_read().unwrap();
        let t = txn.open_table(VERSIONS).unwrap();
        postcard::from_bytes(t.get(("B", "production", 1)).unwrap().unwrap().value()).unwrap()
    };
    rewrite("A", &|r| {
        r.sealed = b.sealed.clone();
        r.wrapped_dek = b.wrapped_dek.clone();
    });
    assert!(matches!(
        v.read_current("A", Production),
        Err(SecretsError::Tampered { .. })
    ));
    assert_eq!(
        v.read_current("B", Production).unwrap().expose(),
        "value-of-b"
    );
}

#[test]
fn canary_never_in_the_raw_file_the_trail_errors_or_debug_output() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), Some(KEY_A)).unwrap();
    let v = s.vault().unwrap();
    v.set(&admin(), "CANARY", Production, CANARY).unwrap();
    let (_, got) = v.get(&admin(), "CANARY", Production, None).unwrap();
    assert_eq!(got.expose(), CANARY);
    let list = v.list(None).unwrap();
    assert_eq!(list[0].masked, "sk-canary-...c2e");
    let mut seen = format!("{got:?} {got} {list:?} {v:?} {s:?}");
    seen.push_str(
        &v.rollback(&admin(), "CANARY", Production, 7)
            .unwrap_err()
            .to_string(),
    );
    seen.push_str(
        &v.set(&admin(), "bad name", Production, CANARY)
            .unwrap_err()
            .to_string(),
    );
    for e in s.audit().log().entries(None, 1000).unwrap() {
        seen.push_str(&serde_json::to_string(&e).unwrap());
    }
    assert!(
        !seen.contains(CANARY) && !seen.contains("7f3a9c1e"),
        "canary leaked: {seen}"
    );
    drop(s);
    let raw = file_bytes(dir.path());
    assert!(
        !raw.windows(CANARY.len()).any(|w| w == CANARY.as_bytes()),
        "canary in the redb file"
    );
    assert!(
        !raw.windows(8).any(|w| w == b"7f3a9c1e"),
        "part of the canary in the redb file"
    );
}

#[test]
fn rekey_rewraps_everything_and_only_the_new_key_opens() {
    let dir = tempfile::tempdir().unwrap();
    let pii_key = {
        let s = open(dir.path(), Some(KEY_A)).unwrap();
        let pii_key = s.pii_token_key().unwrap().clone();
        let v = s.vault().unwrap();
        for i in 0..10 {
            v.set(
                &admin(),
                &format!("S{i}"),
                Production,
                &format!("value-{i}"),
            )
            .unwrap();
            v.set(&admin(), &format!("S{i}"), Staging, &format!("staging-{i}"))
                .unwrap();
        }
        assert_eq!(v.rekey(&admin(), &key(KEY_B)).unwrap(), 20);
        assert_eq!(v.generation(), 2);
        // Readable at once, and writes go under the new key.
        assert_eq!(
            v.read_current("S3", Production).unwrap().expose(),
            "value-3"
        );
        v.set(&admin(), "S0", Production, "after-rekey").unwrap();
        pii_key
    };
    assert!(matches!(
        open(dir.path(), Some(KEY_A)),
        Err(SecretsError::WrongKey { .. })
    ));
    let s = open(dir.path(), Some(KEY_B)).unwrap();
    // The PII token key comes from the same material: PII tokens sealed
    // before the rekey still open.
    assert!(s.pii_token_key() == Some(&pii_key));
    let v = s.vault().unwrap();
    assert_eq!(
        v.read_current("S0", Production).unwrap().expose(),
        "after-rekey"
    );
    for i in 1..10 {
        assert_eq!(
            v.read_current(&format!("S{i}"), Staging).unwrap().expose(),
            format!("staging-{i}")
        );
    }
    // The audit key survived the rekey: old checkpoints still verify.
    let r = s.audit().log().verify().unwrap();
    assert!(
        r.keyed && r.first_bad.is_none() && r.checkpoints > 20,
        "{r:?}"
    );
    drop(s);
    assert!(open(dir.path(), None).unwrap().pii_token_key().is_none());
}

const CRASH_DIR: &str = "IRONCAGE_TEST_REKEY_CRASH_DIR";
const CRASH_STEP: &str = "IRONCAGE_TEST_REKEY_CRASH_STEP";
const STEPS: [RekeyStep; 6] = [
    RekeyStep::Derived,
    RekeyStep::NewGenerationWritten,
    RekeyStep::Halfway,
    RekeyStep::AllRewrapped,
    RekeyStep::Switched,
    RekeyStep::Committed,
];

/// Not a test on its own: the child process of
/// `rekey_survives_a_crash_at_every_step`, which SIGKILLs itself at the step
/// it is given.
#[test]
fn rekey_crash_child() {
    let (Ok(dir), Ok(step)) = (std::env::var(CRASH_DIR), std::env::var(CRASH_STEP)) else {
        return;
    };
    let step: usize = step.parse().unwrap();
    let s = open(Path::new(&dir), Some(KEY_A)).unwrap();
    s.vault()
        .unwrap()
        .rekey_with(&admin(), &key(KEY_B), &|at| {
            if at == STEPS[step] {
                let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
            }
        })
        .unwrap();
    unreachable!("the child is killed before this");
}

#[test]
fn rekey_survives_a_crash_at_every_step() {
    use std::os::unix::process::ExitStatusExt;
    for (i, step) in STEPS.iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open(dir.path(), Some(KEY_A)).unwrap();
            let v = s.vault().unwrap();
            for n in 0..8 {
                v.set(
                    &admin(),
                    &format!("S{n}"),
                    Production,
                    &format!("value-{n}"),
                )
                .unwrap();
            }
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "secrets::tests::rekey_crash_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_DIR, dir.path())
            .env(CRASH_STEP, i.to_string())
            .output()
            .unwrap();
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGKILL),
            "step {step:?}: {out:?}"
        );
        // Exactly one key opens the store, and every secret reads under it.
        let opens = |k: &str| match open(dir.path(), Some(k)) {
            Ok(_) => true,
            Err(SecretsError::WrongKey { .. }) => false,
            Err(e) => panic!("step {step:?}: {e}"),
        };
        let (a_ok, b_ok) = (opens(KEY_A), opens(KEY_B));
        assert!(
            a_ok != b_ok,
            "step {step:?}: key A opens: {a_ok}, key B opens: {b_ok}"
        );
        let good = open(dir.path(), Some(if b_ok { KEY_B } else { KEY_A })).unwrap();
        let expect_new = *step == RekeyStep::Committed;
        assert_eq!(
            good.vault().unwrap().generation(),
            if expect_new { 2 } else { 1 },
            "step {step:?}"
        );
        for n in 0..8 {
            assert_eq!(
                good.vault()
                    .unwrap()
                    .read_current(&format!("S{n}"), Production)
                    .unwrap()
                    .expose(),
                format!("value-{n}"),
                "step {step:?}"
            );
        }
        assert!(good.audit().log().verify().unwrap().first_bad.is_none());
    }
}

#[test]
fn concurrent_reads_during_rotation_never_fail_or_tear() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), Some(KEY_A)).unwrap();
    let v = s.vault().unwrap().clone();
    let value = |i: u32| format!("rotated-key-{i:04}-{}", "x".repeat(40));
    v.set(&admin(), "API_KEY", Production, &value(0)).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let v = v.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) || reads == 0 {
                    let got = v
                        .read_current("API_KEY", Production)
                        .expect("read during rotation");
                    let g = got.expose();
                    let i: u32 = g["rotated-key-".len()..][..4].parse().expect("whole value");
                    assert_eq!(g, value(i), "torn value");
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    for i in 1..=30 {
        v.set(&admin(), "API_KEY", Production, &value(i)).unwrap();
    }
    v.rekey(&admin(), &key(KEY_B)).unwrap();
    for i in 31..=40 {
        v.set(&admin(), "API_KEY", Production, &value(i)).unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
    assert_eq!(
        v.read_current("API_KEY", Production).unwrap().expose(),
        value(40)
    );
}

#[test]
fn export_import_round_trip_is_identical() {
    use ironcage_shared::protocol::SecretsFormat;
    let a_dir = tempfile::tempdir().unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    let a = open(a_dir.path(), Some(KEY_A)).unwrap();
    let va = a.vault().unwrap();
    va.set(
        &admin(),
        "OPENAI_KEY",
        Production,
        "sk-proj-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    )
    .unwrap();
    va.set(
        &admin(),
        "OPENAI_KEY",
        Production,
        "sk-proj-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
    )
    .unwrap();
    va.set(&admin(), "DB", Staging, "p@ss \"quoted\" \n newline")
        .unwrap();
    let doc = transfer::export(va, &admin(), SecretsFormat::VaultKv2, None).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(doc.expose()).unwrap();
    assert_eq!(
        parsed[0]["data"]["metadata"]["custom_metadata"]["ironcage_env"],
        "staging"
    );
    assert!(
        parsed[1]["data"]["data"]["OPENAI_KEY"]
            .as_str()
            .unwrap()
            .starts_with("sk-proj-bbb")
    );

    let b = open(b_dir.path(), Some(KEY_B)).unwrap();
    let vb = b.vault().unwrap();
    assert_eq!(
        transfer::import(vb, &admin(), None, Production, doc.expose()).unwrap(),
        2
    );
    let again = transfer::export(vb, &admin(), SecretsFormat::VaultKv2, None).unwrap();
    assert_eq!(again, doc, "export -> import -> export differs");

    // Flat: one environment.
    let flat = transfer::export(va, &admin(), SecretsFormat::Flat, Some(Staging)).unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(flat.expose()).unwrap()["DB"],
        "p@ss \"quoted\" \n newline"
    );
    assert!(transfer::export(va, &admin(), SecretsFormat::Flat, None).is_err());
    transfer::import(
        vb,
        &admin(),
        Some(SecretsFormat::Flat),
        Development,
        flat.expose(),
    )
    .unwrap();
    assert_eq!(
        vb.read_current("DB", Development).unwrap().expose(),
        "p@ss \"quoted\" \n newline"
    );
    // Exports and imports are on the record, values as HMACs only.
    let entries = b.audit().log().entries(None, 100).unwrap();
    assert!(entries.iter().any(|e| e.action == "secrets import"));
    assert!(
        a.audit()
            .log()
            .entries(None, 100)
            .unwrap()
            .iter()
            .any(|e| e.action == "secrets export" && e.detail.contains("hmac-sha256:"))
    );
    // Bad documents change nothing and do not echo the content.
    for bad in [
        "{\"A\": 1}",
        "[{\"data\": {}}]",
        "not json sk-secret-text",
        "{}",
        // A value where an object belongs, and a nested value: never echoed.
        "[{\"data\": \"sk-secret-text\"}]",
        "{\"A\": {\"x\": \"sk-secret-text\"}}",
        "{\"data\": {\"data\": {\"K\": [\"sk-secret-text\"]}}}",
    ] {
        let e = transfer::import(vb, &admin(), None, Production, bad)
            .unwrap_err()
            .to_string();
        assert!(!e.contains("sk-secret-text"), "{e}");
    }
}

#[test]
fn agents_read_only_their_grants_and_every_read_is_recorded() {
    use crate::config::{Delivery, SecretGrant, SecretRef};
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), Some(KEY_A)).unwrap();
    let v = s.vault().unwrap();
    v.set(&admin(), "DB", Staging, "db-staging").unwrap();
    v.set(&admin(), "OTHER", Production, "not-yours").unwrap();
    let grants = vec![SecretGrant {
        secret: SecretRef {
            name: "DB".into(),
            env: Staging,
        },
        delivery: Delivery::File,
    }];
    assert_eq!(
        v.read_for_agent("bot", &grants, "DB").unwrap().expose(),
        "db-staging"
    );
    let e = v.read_for_agent("bot", &grants, "OTHER").unwrap_err();
    assert!(matches!(e, SecretsError::NotGranted { .. }), "{e}");
    let entries = s.audit().log().entries(None, 100).unwrap();
    let reads: Vec<_> = entries
        .iter()
        .filter(|e| e.action == "secret read")
        .collect();
    assert_eq!(reads.len(), 2);
    assert_eq!(
        (reads[0].outcome, reads[0].actor_agent.as_deref()),
        (ironcage_shared::protocol::AuditOutcome::Ok, Some("bot"))
    );
    assert!(reads[0].detail.starts_with("hmac-sha256:"));
    assert_eq!(
        reads[1].outcome,
        ironcage_shared::protocol::AuditOutcome::Denied
    );
}

#[test]
fn delivery_writes_private_files_replaces_them_atomically_and_cleans_up() {
    use crate::config::{Delivery, SecretGrant, SecretRef};
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("run/credentials");
    let s = open(&dir.path().join("state"), Some(KEY_A)).unwrap();
    let v = s.vault().unwrap();
    v.set(&admin(), "TOKEN", Production, "token-1").unwrap();
    v.set(&admin(), "PASS", Production, "pass-1").unwrap();
    let g = |name: &str, d: Delivery| SecretGrant {
        secret: SecretRef {
            name: name.into(),
            env: Production,
        },
        delivery: d,
    };
    let grants = vec![
        g("TOKEN", Delivery::File),
        g("PASS", Delivery::Env("DB_PASS".into())),
    ];
    let d = delivery::deliver(v, "bot", &grants, &root, None).unwrap();
    let agent_dir = d.dir.clone().unwrap();
    assert_eq!(
        std::fs::metadata(&agent_dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let f = agent_dir.join("TOKEN");
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "token-1");
    assert_eq!(
        std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
        0o400
    );
    assert_eq!(d.env.len(), 1);
    assert_eq!(
        (d.env[0].0.as_str(), d.env[0].1.expose()),
        ("DB_PASS", "pass-1")
    );
    assert!(!agent_dir.join("PASS").exists(), "env grants are not files");
    // Rotation: a reader holding the old file keeps it; the path gets the new one.
    let held = std::fs::File::open(&f).unwrap();
    v.set(&admin(), "TOKEN", Production, "token-2").unwrap();
    assert_eq!(delivery::refresh(v, "bot", &grants, &root).unwrap(), 1);
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "token-2");
    assert_eq!(std::io::read_to_string(held).unwrap(), "token-1");
    let leftovers: Vec<_> = std::fs::read_dir(&agent_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    // A grant missing from the store fails with nothing rewritten.
    v.remove(&admin(), "TOKEN", Production).unwrap();
    assert!(
        delivery::refresh(v, "bot", &grants, &root)
            .unwrap_err()
            .to_string()
            .contains("not in the store")
    );
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "token-2");
    delivery::remove(&root, "bot");
    assert!(!agent_dir.exists());
    // Not running: refresh does not create a directory.
    assert_eq!(delivery::refresh(v, "bot", &grants, &root).unwrap(), 0);
    assert!(!agent_dir.exists());
}
