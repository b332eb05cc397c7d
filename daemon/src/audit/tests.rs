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
    // Checkpoints at 5, 10...: entry 7 has none of its own.
    let (_d, log, _) = sparse_trail();
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
    // Checkpoints at 5, 10...: the forged entry at 8 has none of its own.
    let (_d, log, _) = sparse_trail();
    // Shift 8..=20 up by one and put a forged entry at 8, chained to 7.
    for seq in (8..=20).rev() {
        let mut e = read(&log, seq);
        e.seq += 1;
        put(&log, seq + 1, &e);
    }
    let prev = read(&log, 7);
    let mut forged = read(&log, 8);
    forged.seq = 8;
    forged.action = "forged".into();
    forged.prev_hash = prev.hash.clone();
    forged.hash = log::hex(&log::entry_hash(&forged));
    put(&log, 8, &forged);
    // 9 (the old 8) no longer follows 8.
    assert_eq!(first_bad(&log).0, Some(9));
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
    // after it: the chain is consistent, the checkpoint HMAC of 2 is not.
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
    assert_eq!(bad, Some(2), "{why}");
    assert!(why.contains("checkpoint"), "{why}");
}

#[test]
fn every_keyed_commit_ends_on_a_checkpoint_and_the_chain_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let k = Key::random();
    {
        let log = keyed_log(dir.path(), &k);
        fill(&log, 10);
        let r = log.verify().unwrap();
        assert_eq!(
            (r.first_bad, r.checkpoints, r.last_checkpoint),
            (None, 10, Some(10)),
            "{r:?}"
        );
        assert_eq!(r.head_mac, log.head().map(|(_, m)| log::hex(&m)));
    }
    // Reopened: the chain of checkpoints continues where it was.
    let log = keyed_log(dir.path(), &k);
    fill(&log, 1);
    let r = log.verify().unwrap();
    assert_eq!((r.first_bad, r.checkpoints, r.entries), (None, 11, 11));
    drop(log);
    // Another key: the first checkpoint fails.
    let other = keyed_log(dir.path(), &Key::random());
    assert_eq!(other.verify().unwrap().first_bad, Some(1));
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

/// Edits entry `from`, recomputes the hash chain from there to the end (no key
/// needed) and deletes every checkpoint at or after `from`.
fn rewrite_from_and_drop_checkpoints(log: &AuditLog, from: u64) {
    let last = log.last_seq();
    let mut prev = read(log, from - 1).hash;
    for seq in from..=last {
        let mut e = read(log, seq);
        if seq == from {
            e.target = "rewritten".into();
        }
        e.prev_hash = prev;
        e.hash = log::hex(&log::entry_hash(&e));
        prev = e.hash.clone();
        put(log, seq, &e);
    }
    for seq in from..=last {
        log.raw_put_checkpoint(seq, None);
    }
}

#[test]
fn verify_catches_a_rewritten_tail_whose_checkpoints_were_deleted() {
    let (_d, log, _) = trail();
    rewrite_from_and_drop_checkpoints(&log, 7);
    let (bad, why) = first_bad(&log);
    assert_eq!(bad, Some(7), "{why}");
    assert!(why.contains("not covered"), "{why}");
}

/// `batches` commits of `per` entries each: checkpoints at per, 2*per...
fn fill_batches(log: &AuditLog, batches: u64, per: u64) {
    for b in 0..batches {
        log.write(|_, app| {
            for i in 0..per {
                app.append(draft(b * per + i))?;
            }
            Ok::<_, AuditError>(())
        })
        .unwrap();
    }
}

/// 20 entries in commits of 5: checkpoints at 5, 10, 15, 20.
fn sparse_trail() -> (tempfile::TempDir, Arc<AuditLog>, Key) {
    let dir = tempfile::tempdir().unwrap();
    let k = Key::random();
    let log = keyed_log(dir.path(), &k);
    fill_batches(&log, 4, 5);
    for seq in 1..=20 {
        assert_eq!(log.raw_checkpoint(seq).is_some(), seq % 5 == 0, "{seq}");
    }
    let r = log.verify().unwrap();
    assert_eq!((r.first_bad, r.checkpoints), (None, 4), "{r:?}");
    (dir, log, k)
}

#[test]
fn verify_catches_newest_checkpoints_deleted_without_an_edit() {
    let (_d, log, _) = sparse_trail();
    log.raw_put_checkpoint(20, None);
    let (bad, why) = first_bad(&log);
    assert_eq!(bad, Some(16), "{why}");
    assert!(why.contains("not covered"), "{why}");
}

#[test]
fn verify_catches_a_deleted_middle_checkpoint() {
    let (_d, log, _) = sparse_trail();
    let row15 = log.raw_checkpoint(15).unwrap();
    log.raw_put_checkpoint(10, None);
    let (bad, why) = first_bad(&log);
    assert_eq!(bad, Some(15), "{why}");
    assert!(why.contains("checkpoint 10, which is missing"), "{why}");
    // Repointing 15 at 5 (no key needed for that byte) breaks its HMAC.
    let mut forged = row15.clone();
    forged[1..9].copy_from_slice(&5u64.to_be_bytes());
    log.raw_put_checkpoint(15, Some(&forged));
    let (bad, why) = first_bad(&log);
    assert_eq!(bad, Some(15), "{why}");
    assert!(why.contains("HMAC"), "{why}");
}

#[test]
fn verify_catches_a_checkpoint_replayed_at_another_seq() {
    let (_d, log, _) = sparse_trail();
    // Checkpoint 10's row put at 15, in place of 15's.
    let row10 = log.raw_checkpoint(10).unwrap();
    log.raw_put_checkpoint(15, Some(&row10));
    let (bad, why) = first_bad(&log);
    assert_eq!(bad, Some(15), "{why}");
    // The same row replayed at its own seq is the original: fine again.
    let (_d2, log2, _) = sparse_trail();
    let r = log2.raw_checkpoint(10).unwrap();
    log2.raw_put_checkpoint(10, Some(&r));
    assert_eq!(first_bad(&log2).0, None);
    // A checkpoint added at an entry that had none (copied from 10).
    log2.raw_put_checkpoint(12, Some(&r));
    let (bad, why) = first_bad(&log2);
    assert_eq!(bad, Some(12), "{why}");
}

#[test]
fn verify_catches_a_damaged_checkpoint_row() {
    let (_d, log, _) = sparse_trail();
    log.raw_put_checkpoint(10, Some(&[9u8; 7]));
    let (bad, why) = first_bad(&log);
    assert_eq!(bad, Some(10), "{why}");
    assert!(why.contains("edited"), "{why}");
}

#[test]
fn an_anchor_catches_a_tail_rolled_back_with_its_checkpoints() {
    let (_d, log, _) = sparse_trail();
    let (head_seq, head_mac) = log.head().unwrap();
    assert_eq!(head_seq, 20);
    let r = log.verify_anchored(20, &head_mac).unwrap();
    assert_eq!((r.first_bad, r.anchor_error), (None, None));
    let mac15: [u8; 32] = log.raw_checkpoint(15).unwrap()[9..].try_into().unwrap();

    // Roll back entries 16..=20 and their checkpoint: nothing in the file shows it.
    for seq in 16..=20 {
        log.raw_put(seq, None);
    }
    log.raw_put_checkpoint(20, None);
    let plain = log.verify().unwrap();
    assert_eq!(
        (plain.first_bad, plain.entries, plain.last_checkpoint),
        (None, 15, Some(15)),
        "{plain:?}"
    );
    // The anchor recorded earlier does.
    let r = log.verify_anchored(20, &head_mac).unwrap();
    assert_eq!(r.first_bad, None);
    let why = r.anchor_error.unwrap();
    assert!(why.contains("rolled back"), "{why}");
    // An older anchor still holds; a wrong MAC for it does not.
    assert_eq!(log.verify_anchored(15, &mac15).unwrap().anchor_error, None);
    let why = log
        .verify_anchored(15, &[0u8; 32])
        .unwrap()
        .anchor_error
        .unwrap();
    assert!(why.contains("has MAC"), "{why}");
}

#[test]
fn an_anchor_catches_a_rewritten_tail_dressed_up_as_written_without_a_key() {
    // The limit of any in-file scheme: delete the checkpoints from 7 on,
    // rewrite 7.., and record "7.. was written without a master key" (anyone
    // can play a key-less daemon). Plain verify cannot tell; an anchor can.
    let (_d, log, _) = sparse_trail();
    let (_, head_mac) = log.head().unwrap();
    rewrite_from_and_drop_checkpoints(&log, 7);
    // The claim must start right after the last checkpoint left (5).
    log.raw_put_uncovered(7);
    let (bad, why) = first_bad(&log);
    assert_eq!(bad, Some(6), "{why}");
    log.raw_put_uncovered(6);
    let plain = log.verify().unwrap();
    assert_eq!(
        (plain.first_bad, plain.uncovered_from),
        (None, Some(6)),
        "{plain:?}"
    );
    let why = log
        .verify_anchored(20, &head_mac)
        .unwrap()
        .anchor_error
        .unwrap();
    assert!(why.contains("no checkpoint at 20"), "{why}");
}

#[test]
fn unkeyed_then_keyed_history_verifies_and_is_covered_by_the_next_keyed_write() {
    let dir = tempfile::tempdir().unwrap();
    let k = Key::random();
    let unkeyed = |dir: &std::path::Path| {
        Arc::new(AuditLog::open(Arc::new(Store::open(dir).unwrap()), None).unwrap())
    };
    // Unkeyed from the start, then keyed, then unkeyed again, then keyed.
    {
        let log = unkeyed(dir.path());
        fill(&log, 3);
        assert_eq!(log.head(), None);
        let r = log.verify().unwrap();
        assert_eq!(
            (r.first_bad, r.keyed, r.uncovered_from),
            (None, false, Some(1))
        );
    }
    {
        let log = keyed_log(dir.path(), &k);
        // Before any keyed write: the key-less tail is recognised as such.
        let r = log.verify().unwrap();
        assert_eq!((r.first_bad, r.uncovered_from), (None, Some(1)), "{r:?}");
        fill(&log, 2);
        let r = log.verify().unwrap();
        assert_eq!(
            (r.first_bad, r.uncovered_from, r.last_checkpoint),
            (None, None, Some(5)),
            "{r:?}"
        );
    }
    {
        let log = unkeyed(dir.path());
        fill(&log, 4);
    }
    let log = keyed_log(dir.path(), &k);
    let r = log.verify().unwrap();
    assert_eq!((r.first_bad, r.uncovered_from), (None, Some(6)), "{r:?}");
    // Without the record of the key-less stretch, it reads as deleted checkpoints.
    log.raw_put_uncovered_delete(6);
    let (bad, why) = first_bad(&log);
    assert_eq!(bad, Some(6), "{why}");
    log.raw_put_uncovered(6);
    fill(&log, 1);
    let r = log.verify().unwrap();
    assert_eq!(
        (
            r.first_bad,
            r.uncovered_from,
            r.last_checkpoint,
            r.checkpoints
        ),
        (None, None, Some(10), 3),
        "{r:?}"
    );
    // Once covered, the key-less entries cannot be changed either.
    let mut e = read(&log, 7);
    e.target = "changed".into();
    e.hash = log::hex(&log::entry_hash(&e));
    put(&log, 7, &e);
    assert_eq!(first_bad(&log).0, Some(8));
}

/// Makes `dir`'s trail look exactly as a schema-1 daemon left it: v1
/// checkpoint rows (bare MACs) at `at`, no uncovered records, schema 1.
fn make_v1(log: &AuditLog, k: &Key, at: &[u64]) {
    use hmac::Mac;
    let key = AuditKey::derive(k);
    log.raw_clear_checkpoints_and_uncovered();
    for &seq in at {
        let h = log::unhex32(&read(log, seq).hash).unwrap();
        let mac = key.checkpoint_mac_v1(seq, &h).finalize().into_bytes();
        log.raw_put_checkpoint(seq, Some(&mac[..]));
    }
    log.raw_set_schema(1);
}

#[test]
fn a_schema_1_database_opens_verifies_and_chains_on_from_its_newest_v1_checkpoint() {
    use hmac::Mac;
    let dir = tempfile::tempdir().unwrap();
    let k = Key::random();
    {
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let log = AuditLog::open(store, None).unwrap();
        fill(&log, 150);
        make_v1(&log, &k, &[64, 128]);
    }
    let log = keyed_log(dir.path(), &k);
    assert_eq!(
        log.store().schema_version("audit").unwrap(),
        Some(log::SCHEMA_VERSION)
    );
    let r = log.verify().unwrap();
    assert_eq!(
        (
            r.first_bad,
            r.checkpoints,
            r.uncovered_from,
            r.last_checkpoint
        ),
        (None, 2, Some(129), Some(128)),
        "{r:?}"
    );
    let mac128: [u8; 32] = log.raw_checkpoint(128).unwrap().try_into().unwrap();
    assert_eq!(
        log.verify_anchored(128, &mac128).unwrap().anchor_error,
        None
    );
    // The next keyed write covers 129..=151 with a v2 checkpoint chained to 128.
    fill(&log, 1);
    let row = log.raw_checkpoint(151).unwrap();
    assert_eq!((row.len(), row[0]), (41, 2));
    assert_eq!(&row[1..9], &128u64.to_be_bytes());
    let r = log.verify().unwrap();
    assert_eq!(
        (r.first_bad, r.checkpoints, r.uncovered_from),
        (None, 3, None)
    );
    // A v1 row inserted after it is refused; so is deleting the v1 it chains to.
    let h = log::unhex32(&read(&log, 140).hash).unwrap();
    let v1 = AuditKey::derive(&k)
        .checkpoint_mac_v1(140, &h)
        .finalize()
        .into_bytes();
    log.raw_put_checkpoint(140, Some(&v1[..]));
    assert_eq!(
        first_bad(&log).0,
        Some(151),
        "140 is fine as v1; 151 no longer follows 128"
    );
    log.raw_put_checkpoint(140, None);
    log.raw_put_checkpoint(128, None);
    let (bad, why) = first_bad(&log);
    assert_eq!(bad, Some(151), "{why}");
    assert!(why.contains("checkpoint 128, which is missing"), "{why}");
}

#[test]
fn a_schema_1_database_without_a_key_and_with_a_clean_tail_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let k = Key::random();
    {
        let log = keyed_log(dir.path(), &k);
        fill(&log, 70);
        make_v1(&log, &k, &[64, 70]);
    }
    // A schema-1 daemon after a clean shutdown: the tail ends on a checkpoint.
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let log = AuditLog::open(store, None).unwrap();
    let r = log.verify().unwrap();
    assert_eq!((r.first_bad, r.uncovered_from), (None, None), "{r:?}");
    fill(&log, 2);
    drop(log);
    let log = keyed_log(dir.path(), &k);
    let r = log.verify().unwrap();
    assert_eq!(
        (r.first_bad, r.uncovered_from, r.checkpoints),
        (None, Some(71), 2),
        "{r:?}"
    );
}

#[test]
fn an_anchor_mac_is_exactly_64_hex_digits() {
    let good = "aB".repeat(32);
    assert_eq!(log::unhex32(&good), Some([0xab; 32]));
    for bad in [
        "ab".repeat(31),
        "ab".repeat(33),
        format!("+f{}", "ab".repeat(31)),
        format!("zz{}", "ab".repeat(31)),
        format!("é{}", "a".repeat(62)),
    ] {
        assert_eq!(log::unhex32(&bad), None, "{bad}");
    }
}
