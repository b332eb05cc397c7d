//! The audit trail over a real redb file: chain, checkpoints, tampering, group
//! commit and failing closed.

use super::*;
use crate::secrets::crypto::Key;
use crate::store::Store;
use ironcage_shared::protocol::{AuditEntry, AuditOutcome};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

fn draft(i: u64) -> Draft {
    Draft::new(Actor::daemon(), "test", format!("t{i}"), AuditOutcome::Ok)
}

fn keyed_log(dir: &std::path::Path, material: &Key) -> Arc<AuditLog> {
    let store = Arc::new(Store::open(dir).unwrap());
    Arc::new(AuditLog::open(store, Some(AuditKey::derive(material))).unwrap())
}

fn fill(log: &AuditLog, n: u64) {
    for i in 0..n {
        log.write(|_, app| app.append(draft(i))).unwrap();
    }
}

fn read(log: &AuditLog, seq: u64) -> AuditEntry {
    log.entries(Some(seq - 1), 1).unwrap().remove(0)
}

fn put(log: &AuditLog, seq: u64, e: &AuditEntry) {
    log.raw_put(seq, Some(&postcard::to_stdvec(e).unwrap()));
}

/// A fresh trail of 20 entries with a checkpoint at the end.
fn trail() -> (tempfile::TempDir, Arc<AuditLog>, Key) {
    let dir = tempfile::tempdir().unwrap();
    let k = Key::random();
    let log = keyed_log(dir.path(), &k);
    fill(&log, 20);
    log.checkpoint_now().unwrap();
    let r = log.verify().unwrap();
    assert_eq!(
        (r.entries, r.first_bad, r.last_checkpoint),
        (20, None, Some(20)),
        "{r:?}"
    );
    (dir, log, k)
}

fn first_bad(log: &AuditLog) -> (Option<u64>, String) {
    let r = log.verify().unwrap();
    (r.first_bad, r.reason.unwrap_or_default())
}

#[test]
fn verify_catches_an_edit() {
    let (_d, log, _) = trail();
    let mut e = read(&log, 7);
    e.outcome = AuditOutcome::Denied;
    put(&log, 7, &e);
    assert_eq!(first_bad(&log).0, Some(7));
}

#[test]
fn verify_catches_an_edit_with_its_own_hash_recomputed() {
    let (_d, log, _) = trail();
    let mut e = read(&log, 7);
    e.target = "someone else".into();
    e.hash = log::hex(&log::entry_hash(&e));
    put(&log, 7, &e);
    // The next entry's prev_hash no longer matches.
    assert_eq!(first_bad(&log).0, Some(8));
}

#[test]
fn verify_catches_a_deletion() {
    let (_d, log, _) = trail();
    log.raw_put(5, None);
    let (bad, why) = first_bad(&log);
    assert_eq!(bad, Some(5), "{why}");
    assert!(why.contains("missing"), "{why}");
}

#[test]
fn verify_catches_a_reorder() {
    let (_d, log, _) = trail();
    let a = read(&log, 3);
    let b = read(&log, 4);
    put(&log, 3, &b);
    put(&log, 4, &a);
    assert_eq!(first_bad(&log).0, Some(3));
}

#[test]
fn verify_catches_an_insertion() {
    let (_d, log, _) = trail();
    // Shift 10..=20 up by one and put a forged entry at 10, chained to 9.
    for seq in (10..=20).rev() {
        let mut e = read(&log, seq);
        e.seq += 1;
        put(&log, seq + 1, &e);
    }
    let prev = read(&log, 9);
    let mut forged = read(&log, 10);
    forged.seq = 10;
    forged.action = "forged".into();
    forged.prev_hash = prev.hash.clone();
    forged.hash = log::hex(&log::entry_hash(&forged));
    put(&log, 10, &forged);
    // 11 (the old 10) no longer follows 10.
    assert_eq!(first_bad(&log).0, Some(11));
}

#[test]
fn verify_catches_truncation_before_the_last_checkpoint() {
    let (_d, log, _) = trail();
    for seq in 15..=20 {
        log.raw_put(seq, None);
    }
    let (bad, why) = first_bad(&log);
    assert_eq!(bad, Some(15), "{why}");
    assert!(why.contains("truncated"), "{why}");
}

#[test]
fn verify_catches_a_chain_rewritten_from_scratch() {
    // Someone without the master key edits entry 2 and recomputes every hash
    // after it: the chain is consistent, the checkpoint HMAC is not.
    let (_d, log, _) = trail();
    let mut prev = read(&log, 1).hash;
    for seq in 2..=20 {
        let mut e = read(&log, seq);
        if seq == 2 {
            e.action = "rewritten".into();
        }
        e.prev_hash = prev;
        e.hash = log::hex(&log::entry_hash(&e));
        prev = e.hash.clone();
        put(&log, seq, &e);
    }
    let (bad, why) = first_bad(&log);
    assert_eq!(bad, Some(20), "{why}");
    assert!(why.contains("checkpoint"), "{why}");
}

#[test]
fn checkpoints_need_the_key_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let k = Key::random();
    {
        let log = keyed_log(dir.path(), &k);
        fill(&log, log::CHECKPOINT_EVERY * 2 + 3);
        let r = log.verify().unwrap();
        assert_eq!(r.checkpoints, 2, "{r:?}");
    }
    // Reopened: the chain continues where it was.
    let log = keyed_log(dir.path(), &k);
    fill(&log, 1);
    log.checkpoint_now().unwrap();
    let r = log.verify().unwrap();
    assert_eq!(
        (r.first_bad, r.checkpoints, r.entries),
        (None, 3, log::CHECKPOINT_EVERY * 2 + 4)
    );
    drop(log);
    // Another key: every checkpoint fails, the first one is named.
    let other = keyed_log(dir.path(), &Key::random());
    assert_eq!(
        other.verify().unwrap().first_bad,
        Some(log::CHECKPOINT_EVERY)
    );
}

#[test]
fn group_commit_records_a_burst_from_many_threads_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let h = AuditHandle::start(Arc::new(AuditLog::open(store, None).unwrap()));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let h = h.clone();
            std::thread::spawn(move || {
                for i in 0..125 {
                    h.record(draft(t * 1000 + i));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // A durable entry after the burst: everything before it is committed too.
    let seq = h.record_durable_blocking(draft(9999)).unwrap();
    assert_eq!(seq, 1001);
    let r = h.log().verify().unwrap();
    assert_eq!((r.entries, r.first_bad, r.keyed), (1001, None, false));
}

/// redb's file backend with a switch that makes every write fail like a
/// read-only filesystem (EROFS), for fail-closed tests.
#[derive(Debug)]
struct ReadOnlySwitch {
    inner: redb::backends::FileBackend,
    read_only: Arc<AtomicBool>,
}

impl redb::StorageBackend for ReadOnlySwitch {
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn read(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        self.inner.read(offset, len)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.check()?;
        self.inner.set_len(len)
    }
    fn sync_data(&self, eventual: bool) -> std::io::Result<()> {
        self.check()?;
        self.inner.sync_data(eventual)
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.check()?;
        self.inner.write(offset, data)
    }
}

impl ReadOnlySwitch {
    fn check(&self) -> std::io::Result<()> {
        if self.read_only.load(Ordering::SeqCst) {
            Err(std::io::Error::from_raw_os_error(libc::EROFS))
        } else {
            Ok(())
        }
    }
}

#[test]
fn fails_closed_when_the_state_dir_turns_read_only() {
    use crate::secrets::{Secrets, SecretsError, master::MasterKey};
    use ironcage_shared::protocol::SecretEnv::Production;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ironcage.redb");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .unwrap();
    let read_only = Arc::new(AtomicBool::new(false));
    let backend = ReadOnlySwitch {
        inner: redb::backends::FileBackend::new(file).unwrap(),
        read_only: read_only.clone(),
    };
    let store = Arc::new(Store::open_backend(&path, backend).unwrap());
    let key = MasterKey::new(b"a master key for the test".to_vec(), "test").unwrap();
    let s = Secrets::open(store, Some(&key), 5).unwrap();
    let v = s.vault().unwrap();
    let admin = Actor::peer(0, None, "uid 0".into());
    v.set(&admin, "K", Production, "old-value").unwrap();
    let before = s.audit().log().last_seq();

    read_only.store(true, Ordering::SeqCst);
    // A change whose entry cannot be written does not happen.
    let e = v.set(&admin, "K", Production, "new-value").unwrap_err();
    assert!(matches!(e, SecretsError::Audit(_)), "{e}");
    assert!(e.to_string().contains("not carried out"), "{e}");
    // A read whose entry cannot be written is not answered.
    assert!(v.get(&admin, "K", Production, None).is_err());
    // A control mutation's `requested` entry fails: the handler refuses it.
    assert!(s.audit().record_durable_blocking(draft(1)).is_err());

    // redb refuses writes after a failed I/O until the file is reopened (the
    // operator fixes the disk and restarts): nothing of the failed change is
    // there, and it works again.
    read_only.store(false, Ordering::SeqCst);
    drop(s);
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let s = Secrets::open(store, Some(&key), 5).unwrap();
    let v = s.vault().unwrap();
    assert_eq!(
        v.read_current("K", Production).unwrap().expose(),
        "old-value"
    );
    assert_eq!(s.audit().log().last_seq(), before);
    v.set(&admin, "K", Production, "new-value").unwrap();
    assert_eq!(
        v.read_current("K", Production).unwrap().expose(),
        "new-value"
    );
    assert!(s.audit().log().verify().unwrap().first_bad.is_none());
}
