//! Head record authentication over real redb files: a head edited, replayed,
//! copied or stripped of its MAC with the daemon stopped is refused on every
//! read path; legitimate rollback and rekey keep heads valid; a store written
//! before heads were authenticated is upgraded once, on the record.

use super::master::MasterKey;
use super::vault::{HEADS, Head, TAMPERED_MARK, write_legacy};
use super::*;
use crate::audit::Actor;
use ironcage_shared::protocol::SecretEnv::{Production, Staging};
use ironcage_shared::protocol::{AuditOutcome, SecretEnv};
use redb::ReadableTable;
use std::path::Path;

const KEY_A: &str = "correct horse battery staple A";
const KEY_B: &str = "correct horse battery staple B";

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

fn open(dir: &Path, k: &str) -> Secrets {
    let store = Arc::new(Store::open(dir).unwrap());
    Secrets::open(store, Some(&key(k)), 3).unwrap()
}

/// The raw stored bytes of the head of `name@env` (store closed).
fn raw_head(dir: &Path, name: &str, env: &str) -> Option<Vec<u8>> {
    raw_head_in(&Store::open(dir).unwrap(), name, env)
}

/// The raw stored bytes of the head of `name@env` in an open store.
fn raw_head_in(store: &Store, name: &str, env: &str) -> Option<Vec<u8>> {
    let txn = store.begin_read().unwrap();
    let t = txn.open_table(HEADS).unwrap();
    t.get((name, env)).unwrap().map(|v| v.value().to_vec())
}

/// Writes raw head bytes with the daemon stopped (no `Secrets` open).
fn put_raw_head(dir: &Path, name: &str, env: &str, bytes: &[u8]) {
    let store = Store::open(dir).unwrap();
    let txn = store.begin_write().unwrap();
    txn.open_table(HEADS)
        .unwrap()
        .insert((name, env), bytes)
        .unwrap();
    txn.commit().unwrap();
}

/// Splits stored head bytes into the decoded head and whatever follows it.
fn decode(bytes: &[u8]) -> (Head, Vec<u8>) {
    let (h, rest) = postcard::take_from_bytes::<Head>(bytes).unwrap();
    (h, rest.to_vec())
}

fn encode(h: &Head, mac: &[u8]) -> Vec<u8> {
    let mut b = postcard::to_stdvec(h).unwrap();
    b.extend_from_slice(mac);
    b
}

/// Every read path refuses `name@Production` with `HeadTampered`, never a value.
fn assert_refused_everywhere(s: &Secrets, name: &str) {
    let v = s.vault().unwrap();
    let is_tampered = |r: &SecretsError| matches!(r, SecretsError::HeadTampered { name: n, env: Production, .. } if n == name);
    let e = v.get(&admin(), name, Production, None).unwrap_err();
    assert!(is_tampered(&e), "get: {e}");
    let msg = e.to_string();
    assert!(
        msg.contains("fails authentication") && msg.contains("ironctl secrets rm"),
        "{msg}"
    );
    let e = v.get(&admin(), name, Production, Some(1)).unwrap_err();
    assert!(is_tampered(&e), "get version 1: {e}");
    let e = v.read_current(name, Production).unwrap_err();
    assert!(is_tampered(&e), "read_current (delivery, gateway): {e}");
    let grants = [crate::config::SecretGrant {
        secret: crate::config::SecretRef {
            name: name.into(),
            env: Production,
        },
        delivery: crate::config::Delivery::File,
    }];
    let e = v.read_for_agent("worker", &grants, name).unwrap_err();
    assert!(is_tampered(&e), "read_for_agent: {e}");
    let e = v.versions(name, Production).unwrap_err();
    assert!(is_tampered(&e), "versions: {e}");
    let e = v.heads().unwrap_err();
    assert!(matches!(e, SecretsError::HeadTampered { .. }), "heads: {e}");
    let e = v.rollback(&admin(), name, Production, 1).unwrap_err();
    assert!(is_tampered(&e), "rollback: {e}");
    let e = v.set(&admin(), name, Production, "new-value").unwrap_err();
    assert!(is_tampered(&e), "set: {e}");
    let e = v.read_all(&admin(), "secrets export", None).unwrap_err();
    assert!(
        matches!(e, SecretsError::HeadTampered { .. }),
        "export: {e}"
    );
    // list marks the one row, the others list normally.
    let list = v.list(None).unwrap();
    let row = list
        .iter()
        .find(|i| i.name == name && i.env == Production)
        .unwrap();
    assert_eq!(row.masked, TAMPERED_MARK);
}

/// The masked value `list` shows for `name@env`.
fn listed(s: &Secrets, name: &str, env: SecretEnv) -> String {
    s.vault()
        .unwrap()
        .list(None)
        .unwrap()
        .into_iter()
        .find(|i| i.name == name && i.env == env)
        .unwrap()
        .masked
}

#[test]
fn head_current_set_back_to_an_older_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path(), KEY_A);
        let v = s.vault().unwrap();
        v.set(&admin(), "DB", Production, "old-password").unwrap();
        v.set(&admin(), "DB", Production, "new-password").unwrap();
        v.set(&admin(), "OTHER", Production, "other-value").unwrap();
    }
    let (mut h, mac) = decode(&raw_head(dir.path(), "DB", "production").unwrap());
    assert_eq!((h.current, h.next, mac.len()), (2, 3, 32));
    h.current = 1;
    put_raw_head(dir.path(), "DB", "production", &encode(&h, &mac));
    let s = open(dir.path(), KEY_A);
    assert_refused_everywhere(&s, "DB");
    // The untouched secret still lists and reads.
    assert_eq!(listed(&s, "OTHER", Production), "****");
    let v = s.vault().unwrap();
    assert_eq!(
        v.read_current("OTHER", Production).unwrap().expose(),
        "other-value"
    );
    // Recovery: rm, then set again.
    v.remove(&admin(), "DB", Production).unwrap();
    v.set(&admin(), "DB", Production, "reset-password").unwrap();
    assert_eq!(
        v.read_current("DB", Production).unwrap().expose(),
        "reset-password"
    );
}

#[test]
fn every_edited_field_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path(), KEY_A);
        s.vault()
            .unwrap()
            .set(&admin(), "K", Production, "value-k")
            .unwrap();
    }
    let orig = raw_head(dir.path(), "K", "production").unwrap();
    let (h, mac) = decode(&orig);
    let edits: Vec<(&str, Head)> = vec![
        (
            "next",
            Head {
                next: 5,
                ..h.clone()
            },
        ),
        (
            "created_ms",
            Head {
                created_ms: 1,
                ..h.clone()
            },
        ),
        (
            "updated_ms",
            Head {
                updated_ms: h.updated_ms + 1,
                ..h.clone()
            },
        ),
        (
            "updated_by",
            Head {
                updated_by: "uid 1000 (mallory)".into(),
                ..h.clone()
            },
        ),
    ];
    for (what, bad) in edits {
        put_raw_head(dir.path(), "K", "production", &encode(&bad, &mac));
        let s = open(dir.path(), KEY_A);
        let e = s
            .vault()
            .unwrap()
            .read_current("K", Production)
            .unwrap_err();
        assert!(
            matches!(e, SecretsError::HeadTampered { .. }),
            "{what}: {e}"
        );
        drop(s);
    }
    // A flipped MAC byte, a stripped MAC, a truncated MAC.
    let mut flipped = orig.clone();
    *flipped.last_mut().unwrap() ^= 1;
    for (what, bytes, tampered) in [
        ("flipped MAC", flipped, true),
        ("no MAC", encode(&h, &[]), true),
        ("short MAC", orig[..orig.len() - 1].to_vec(), false),
    ] {
        put_raw_head(dir.path(), "K", "production", &bytes);
        let s = open(dir.path(), KEY_A);
        let e = s
            .vault()
            .unwrap()
            .read_current("K", Production)
            .unwrap_err();
        if tampered {
            assert!(
                matches!(e, SecretsError::HeadTampered { .. }),
                "{what}: {e}"
            );
        } else {
            assert!(matches!(e, SecretsError::Damaged(_)), "{what}: {e}");
        }
        drop(s);
    }
    // The original bytes put back: valid again.
    put_raw_head(dir.path(), "K", "production", &orig);
    let s = open(dir.path(), KEY_A);
    assert_eq!(
        s.vault()
            .unwrap()
            .read_current("K", Production)
            .unwrap()
            .expose(),
        "value-k"
    );
}

#[test]
fn an_old_head_replayed_after_a_set_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let old = {
        let s = open(dir.path(), KEY_A);
        let v = s.vault().unwrap();
        v.set(&admin(), "DB", Production, "first").unwrap();
        v.set(&admin(), "DB", Production, "second").unwrap();
        let old = raw_head_in(s.audit().log().store(), "DB", "production").unwrap();
        v.set(&admin(), "DB", Production, "third-after-rotation")
            .unwrap();
        old
    };
    // The head from before the rotation, with its own valid MAC, put back.
    put_raw_head(dir.path(), "DB", "production", &old);
    let s = open(dir.path(), KEY_A);
    assert_refused_everywhere(&s, "DB");
    let e = s
        .vault()
        .unwrap()
        .read_current("DB", Production)
        .unwrap_err()
        .to_string();
    assert!(e.contains("version 3 exists"), "{e}");
    assert!(!e.contains("second") && !e.contains("third"), "{e}");
}

#[test]
fn a_head_replayed_from_before_a_rollback_and_set_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let after_rollback = {
        let s = open(dir.path(), KEY_A);
        let v = s.vault().unwrap();
        v.set(&admin(), "DB", Production, "one").unwrap();
        v.set(&admin(), "DB", Production, "two").unwrap();
        v.rollback(&admin(), "DB", Production, 1).unwrap();
        let h = raw_head_in(s.audit().log().store(), "DB", "production").unwrap();
        v.set(&admin(), "DB", Production, "three").unwrap();
        h
    };
    put_raw_head(dir.path(), "DB", "production", &after_rollback);
    let s = open(dir.path(), KEY_A);
    assert_refused_everywhere(&s, "DB");
}

#[test]
fn a_head_replayed_from_before_a_rollback_is_refused() {
    // An operator rolls a compromised v2 back to v1's value; putting back the
    // head from before the rollback must not serve v2 again.
    let dir = tempfile::tempdir().unwrap();
    let before_rollback = {
        let s = open(dir.path(), KEY_A);
        let v = s.vault().unwrap();
        v.set(&admin(), "DB", Production, "one").unwrap();
        v.set(&admin(), "DB", Production, "compromised").unwrap();
        let h = raw_head_in(s.audit().log().store(), "DB", "production").unwrap();
        v.rollback(&admin(), "DB", Production, 1).unwrap();
        assert_eq!(v.read_current("DB", Production).unwrap().expose(), "one");
        h
    };
    put_raw_head(dir.path(), "DB", "production", &before_rollback);
    let s = open(dir.path(), KEY_A);
    assert_refused_everywhere(&s, "DB");
}

#[test]
fn a_head_copied_to_another_name_or_environment_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path(), KEY_A);
        let v = s.vault().unwrap();
        // Both have versions 1 and 2, so only the MAC tells them apart.
        for (n, e) in [("A", Production), ("B", Production), ("A", Staging)] {
            v.set(&admin(), n, e, "value-one").unwrap();
            v.set(&admin(), n, e, "value-two").unwrap();
        }
        v.rollback(&admin(), "A", Production, 1).unwrap();
    }
    let a = raw_head(dir.path(), "A", "production").unwrap();
    put_raw_head(dir.path(), "B", "production", &a);
    put_raw_head(dir.path(), "A", "staging", &a);
    let s = open(dir.path(), KEY_A);
    assert_refused_everywhere(&s, "B");
    let v = s.vault().unwrap();
    assert!(matches!(
        v.read_current("A", Staging),
        Err(SecretsError::HeadTampered { env: Staging, .. })
    ));
    assert_eq!(
        v.read_current("A", Production).unwrap().expose(),
        "value-one"
    );
    assert_eq!(listed(&s, "A", Staging), TAMPERED_MARK);
    assert_eq!(listed(&s, "A", Production), "****");
}

#[test]
fn rollback_and_set_after_it_keep_heads_valid_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path(), KEY_A);
        let v = s.vault().unwrap();
        v.set(&admin(), "DB", Production, "one").unwrap();
        v.set(&admin(), "DB", Production, "two").unwrap();
        assert_eq!(v.rollback(&admin(), "DB", Production, 1).unwrap(), 3);
        assert_eq!(v.read_current("DB", Production).unwrap().expose(), "one");
    }
    let s = open(dir.path(), KEY_A);
    let v = s.vault().unwrap();
    assert_eq!(v.read_current("DB", Production).unwrap().expose(), "one");
    let vs = v.versions("DB", Production).unwrap();
    assert_eq!(
        vs.iter()
            .map(|x| (x.version, x.current))
            .collect::<Vec<_>>(),
        vec![(1, false), (2, false), (3, true)]
    );
    assert_eq!(v.set(&admin(), "DB", Production, "three").unwrap(), 4);
    assert_eq!(v.heads().unwrap().len(), 1);
    assert_eq!(v.list(None).unwrap()[0].masked, "****");
}

#[test]
fn rekey_keeps_heads_valid_without_rewriting_them() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let s = open(dir.path(), KEY_A);
        let v = s.vault().unwrap();
        for i in 0..5 {
            v.set(
                &admin(),
                &format!("S{i}"),
                Production,
                &format!("value-{i}"),
            )
            .unwrap();
        }
        let before = raw_head_in(s.audit().log().store(), "S3", "production").unwrap();
        v.rekey(&admin(), &key(KEY_B)).unwrap();
        assert_eq!(
            v.read_current("S3", Production).unwrap().expose(),
            "value-3"
        );
        before
    };
    // The head bytes are the same: the MAC key did not change with the KEK.
    assert_eq!(raw_head(dir.path(), "S3", "production").unwrap(), before);
    let s = open(dir.path(), KEY_B);
    let v = s.vault().unwrap();
    for i in 0..5 {
        assert_eq!(
            v.read_current(&format!("S{i}"), Production)
                .unwrap()
                .expose(),
            format!("value-{i}")
        );
    }
    assert_eq!(v.heads().unwrap().len(), 5);
    // And tampering is still caught under the new key.
    let (mut h, mac) = decode(&before);
    h.updated_by = "someone else".into();
    drop(s);
    put_raw_head(dir.path(), "S3", "production", &encode(&h, &mac));
    let s = open(dir.path(), KEY_B);
    assert!(matches!(
        s.vault().unwrap().read_current("S3", Production),
        Err(SecretsError::HeadTampered { .. })
    ));
}

fn upgrade_entries(s: &Secrets) -> Vec<ironcage_shared::protocol::AuditEntry> {
    s.audit()
        .log()
        .entries(None, 10_000)
        .unwrap()
        .into_iter()
        .filter(|e| e.action == "secrets upgrade heads")
        .collect()
}

#[test]
fn a_store_written_before_head_macs_is_upgraded_once_on_the_record() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path(), KEY_A);
        let v = s.vault().unwrap();
        v.set(&admin(), "A", Production, "a-one").unwrap();
        v.set(&admin(), "A", Production, "a-two").unwrap();
        v.rollback(&admin(), "A", Production, 1).unwrap();
        v.set(&admin(), "B", Staging, "b-one").unwrap();
        assert!(upgrade_entries(&s).is_empty());
    }
    write_legacy(&Store::open(dir.path()).unwrap(), &key(KEY_A));
    let (_, rest) = decode(&raw_head(dir.path(), "A", "production").unwrap());
    assert!(rest.is_empty(), "the legacy head has no MAC");
    // A wrong key on a legacy store still writes nothing.
    let before = std::fs::read(dir.path().join(crate::store::FILE_NAME)).unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    assert!(matches!(
        Secrets::open(store, Some(&key(KEY_B)), 3),
        Err(SecretsError::WrongKey { .. })
    ));
    assert_eq!(
        std::fs::read(dir.path().join(crate::store::FILE_NAME)).unwrap(),
        before
    );

    let s = open(dir.path(), KEY_A);
    let entries = upgrade_entries(&s);
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].outcome, AuditOutcome::Ok);
    assert_eq!(entries[0].actor_role, "daemon");
    assert!(
        entries[0].detail.starts_with("2 head records"),
        "{}",
        entries[0].detail
    );
    let v = s.vault().unwrap();
    assert_eq!(v.read_current("A", Production).unwrap().expose(), "a-one");
    assert_eq!(v.read_current("B", Staging).unwrap().expose(), "b-one");
    let (_, rest) = decode(&raw_head_in(s.audit().log().store(), "A", "production").unwrap());
    assert_eq!(rest.len(), 32, "the head now has a MAC");
    assert!(s.audit().log().verify().unwrap().first_bad.is_none());
    drop(s);

    // Opened again: no second upgrade.
    let s = open(dir.path(), KEY_A);
    assert_eq!(upgrade_entries(&s).len(), 1);
    drop(s);

    // After the upgrade a head without MAC is tampering, not legacy.
    let (h, _) = decode(&raw_head(dir.path(), "B", "staging").unwrap());
    put_raw_head(dir.path(), "B", "staging", &encode(&h, &[]));
    let s = open(dir.path(), KEY_A);
    assert_eq!(upgrade_entries(&s).len(), 1);
    assert!(matches!(
        s.vault().unwrap().read_current("B", Staging),
        Err(SecretsError::HeadTampered { .. })
    ));
}

#[test]
fn a_legacy_head_already_rolled_back_is_left_unauthenticated_and_refused() {
    let dir = tempfile::tempdir().unwrap();
    let old = {
        let s = open(dir.path(), KEY_A);
        let v = s.vault().unwrap();
        v.set(&admin(), "DB", Production, "one").unwrap();
        let old = raw_head_in(s.audit().log().store(), "DB", "production").unwrap();
        v.set(&admin(), "DB", Production, "two").unwrap();
        v.set(&admin(), "OK", Production, "fine").unwrap();
        old
    };
    // A legacy store in which someone had already put an old head back.
    put_raw_head(dir.path(), "DB", "production", &old);
    write_legacy(&Store::open(dir.path()).unwrap(), &key(KEY_A));
    let s = open(dir.path(), KEY_A);
    let entries = upgrade_entries(&s);
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].outcome, AuditOutcome::Failed);
    assert!(
        entries[0].detail.contains("DB@production"),
        "{}",
        entries[0].detail
    );
    assert_refused_everywhere(&s, "DB");
    assert_eq!(
        s.vault()
            .unwrap()
            .read_current("OK", Production)
            .unwrap()
            .expose(),
        "fine"
    );
}

/// The raw bytes of every KEK record (the key-check record lives in them).
fn raw_keks(dir: &Path) -> Vec<(u32, Vec<u8>)> {
    let store = Store::open(dir).unwrap();
    let txn = store.begin_read().unwrap();
    let t = txn.open_table(super::vault::KEKS).unwrap();
    t.iter()
        .unwrap()
        .map(|r| {
            let (k, v) = r.unwrap();
            (k.value(), v.value().to_vec())
        })
        .collect()
}

#[test]
fn a_key_check_record_put_back_from_before_the_upgrade_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path(), KEY_A);
        let v = s.vault().unwrap();
        v.set(&admin(), "A", Production, "a-one").unwrap();
        v.set(&admin(), "A", Production, "a-two").unwrap();
    }
    write_legacy(&Store::open(dir.path()).unwrap(), &key(KEY_A));
    let legacy_keks = raw_keks(dir.path());
    drop(open(dir.path(), KEY_A)); // upgraded: heads MAC'd, marker set

    // The attacker puts the pre-upgrade key-check record back, strips the MAC
    // of A's head and sets it back to version 1: an upgrade would now
    // authenticate the edited head.
    {
        let store = Store::open(dir.path()).unwrap();
        let txn = store.begin_write().unwrap();
        {
            let mut t = txn.open_table(super::vault::KEKS).unwrap();
            for (g, b) in &legacy_keks {
                t.insert(*g, b.as_slice()).unwrap();
            }
        }
        txn.commit().unwrap();
    }
    let (mut h, _) = decode(&raw_head(dir.path(), "A", "production").unwrap());
    h.current = 1;
    put_raw_head(dir.path(), "A", "production", &encode(&h, &[]));
    let before = std::fs::read(dir.path().join(crate::store::FILE_NAME)).unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    match Secrets::open(store, Some(&key(KEY_A)), 3) {
        Err(SecretsError::Damaged(m)) => {
            assert!(m.contains("put back from an older copy"), "{m}")
        }
        other => panic!("expected the upgrade to be refused, got {other:?}"),
    }
    assert_eq!(
        std::fs::read(dir.path().join(crate::store::FILE_NAME)).unwrap(),
        before,
        "a refused upgrade writes nothing"
    );
}

#[test]
fn heads_of_reads_only_the_named_secrets() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path(), KEY_A);
        let v = s.vault().unwrap();
        v.set(&admin(), "MINE", Production, "one").unwrap();
        v.set(&admin(), "MINE", Production, "two").unwrap();
        v.set(&admin(), "OTHER", Production, "x").unwrap();
    }
    // Another secret's head is tampered with: a spawn granted only MINE
    // still reads its heads; one granted OTHER is refused.
    let (mut h, mac) = decode(&raw_head(dir.path(), "OTHER", "production").unwrap());
    h.current = 0;
    put_raw_head(dir.path(), "OTHER", "production", &encode(&h, &mac));
    let s = open(dir.path(), KEY_A);
    let v = s.vault().unwrap();
    let got = v
        .heads_of([("MINE", Production), ("UNSET", Production)])
        .unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].map(|(version, _)| version), Some(2));
    assert_eq!(got[1], None);
    assert!(matches!(
        v.heads_of([("OTHER", Production)]),
        Err(SecretsError::HeadTampered { .. })
    ));
    assert!(
        v.heads().is_err(),
        "the whole scan fails on the tampered head"
    );
}
