//! The audit table, its hash chain and its chain of HMAC checkpoints.
//!
//! Tables (in the daemon's one redb file, component `audit`, schema 2):
//! - `audit`: seq (from 1) -> postcard [`AuditEntry`], each carrying the hash
//!   of the one before ([`entry_hash`]);
//! - `audit_checkpoints`: seq -> a checkpoint covering entries 1..=seq;
//! - `audit_uncovered`: seq -> unix ms: "entries from seq on were written
//!   without a master key" (see below).
//!
//! # Checkpoints
//! While a checkpoint key is available (a master key unlocked the store),
//! EVERY write transaction that appends entries ends with a checkpoint of its
//! last entry (one HMAC per commit; commits are group commits), so a keyed
//! daemon never leaves an entry outside a checkpoint. A checkpoint row is
//! versioned:
//! - v1 (written by schema-1 daemons, still verified): a bare 32-byte
//!   HMAC(checkpoint key, "ironcage audit checkpoint v1" || seq || entry hash);
//! - v2: `0x02 || prev seq (8 bytes BE) || mac (32)` with mac =
//!   HMAC(checkpoint key, "ironcage audit checkpoint v2" || seq || entry hash
//!   || prev seq || prev mac), where prev is the checkpoint row before it (v1
//!   or v2; seq 0 and 32 zero bytes for the first). The MACs form a chain:
//!   deleting, moving or replaying any checkpoint breaks the next one.
//!
//! # Uncovered entries, and the rule `verify` applies
//! A daemon without a master key cannot write checkpoints. When its write
//! transaction starts an uncovered stretch (its first entry directly follows
//! the last checkpoint, or is seq 1), the same transaction records that seq in
//! `audit_uncovered`. A schema-1 database whose tail has no checkpoint gets
//! that record once, when this code first opens it. The next keyed commit's
//! checkpoint covers the stretch. With a key, [`AuditLog::verify`] fails on:
//! - any edit, deletion, reorder or insertion of an entry (hash chain);
//! - a checkpoint whose MAC does not match its entry and its predecessor
//!   (rewritten chain, checkpoint copied to another seq, replayed, or a
//!   checkpoint before it deleted), whose stored predecessor is not the
//!   checkpoint row before it (deleted or inserted checkpoint), a v1 row after
//!   a v2 row, or an undecodable row;
//! - a checkpoint past the last entry (truncated tail);
//! - entries after the last checkpoint C unless `audit_uncovered` has C+1,
//!   i.e. unless they were written without a key (deleted checkpoints).
//!
//! What no in-file scheme catches: someone with write access to the file can
//! roll back the newest entries together with their checkpoints, or delete the
//! checkpoints from some point on and claim (via `audit_uncovered`) that the
//! rest was written without a key (anyone can play a key-less daemon). The
//! defence is an external anchor: `verify` reports the head (last checkpoint
//! seq and MAC), the daemon logs it at shutdown, operators record it (cron),
//! and [`AuditLog::verify_anchored`] fails unless the anchored checkpoint is
//! still on the verified chain with exactly that MAC.

use super::{AuditError, Draft};
use crate::secrets::crypto::Key;
use crate::store::Store;
use hmac::{Hmac, Mac};
use ironcage_shared::protocol::{AuditEntry, AuditVerifyReport};
use redb::{ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
const CHECKPOINTS: TableDefinition<u64, &[u8]> = TableDefinition::new("audit_checkpoints");
const UNCOVERED: TableDefinition<u64, u64> = TableDefinition::new("audit_uncovered");
/// Schema version of the audit tables. 2: chained (v2) checkpoints and
/// `audit_uncovered`; a schema-1 daemon would read v2 rows as bad MACs, so it
/// must refuse the file (the store's schema check does).
pub const SCHEMA_VERSION: u32 = 2;
/// Version byte of a chained checkpoint row.
const CHECKPOINT_V2: u8 = 2;
/// Length of a v2 checkpoint row.
const V2_LEN: usize = 1 + 8 + 32;

type HmacSha256 = Hmac<Sha256>;

/// Keys for checkpoints and value HMACs, derived (HKDF-SHA256) from the audit
/// key material kept wrapped under the KEK in the secrets tables.
pub struct AuditKey {
    checkpoint: Key,
    value: Key,
}

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuditKey([REDACTED])")
    }
}

impl AuditKey {
    /// Derives the checkpoint and value-HMAC keys from the audit material.
    pub fn derive(material: &Key) -> AuditKey {
        let hk = hkdf::Hkdf::<Sha256>::new(Some(b"ironcage-audit"), material.expose());
        let mut c = zeroize::Zeroizing::new([0u8; 32]);
        let mut v = zeroize::Zeroizing::new([0u8; 32]);
        hk.expand(b"checkpoint v1", &mut c[..]).expect("32 bytes");
        hk.expand(b"value hmac v1", &mut v[..]).expect("32 bytes");
        AuditKey {
            checkpoint: Key::from_slice(&c[..]).expect("32"),
            value: Key::from_slice(&v[..]).expect("32"),
        }
    }

    /// `hmac-sha256:<hex>` of a secret value, for the entry recording its read.
    pub fn value_mac(&self, value: &[u8]) -> String {
        let mut m = HmacSha256::new_from_slice(self.value.expose()).expect("any key length");
        m.update(value);
        format!("hmac-sha256:{}", hex(&m.finalize().into_bytes()))
    }

    /// The unchained v1 checkpoint MAC (schema-1 databases).
    pub(crate) fn checkpoint_mac_v1(&self, seq: u64, hash: &[u8; 32]) -> HmacSha256 {
        let mut m = HmacSha256::new_from_slice(self.checkpoint.expose()).expect("any key length");
        m.update(b"ironcage audit checkpoint v1");
        m.update(&seq.to_be_bytes());
        m.update(hash);
        m
    }

    /// The chained v2 checkpoint MAC.
    fn checkpoint_mac_v2(
        &self,
        seq: u64,
        hash: &[u8; 32],
        prev_seq: u64,
        prev_mac: &[u8; 32],
    ) -> HmacSha256 {
        let mut m = HmacSha256::new_from_slice(self.checkpoint.expose()).expect("any key length");
        m.update(b"ironcage audit checkpoint v2");
        m.update(&seq.to_be_bytes());
        m.update(hash);
        m.update(&prev_seq.to_be_bytes());
        m.update(prev_mac);
        m
    }
}

/// A stored checkpoint row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Checkpoint {
    /// Schema 1: a bare MAC, not chained.
    V1 { mac: [u8; 32] },
    /// Chained to the checkpoint at `prev` (0: none).
    V2 { prev: u64, mac: [u8; 32] },
}

impl Checkpoint {
    fn decode(b: &[u8]) -> Result<Checkpoint, String> {
        if b.len() == 32 {
            let mut mac = [0u8; 32];
            mac.copy_from_slice(b);
            return Ok(Checkpoint::V1 { mac });
        }
        match b.first() {
            Some(&CHECKPOINT_V2) if b.len() == V2_LEN => {
                let mut prev = [0u8; 8];
                prev.copy_from_slice(&b[1..9]);
                let mut mac = [0u8; 32];
                mac.copy_from_slice(&b[9..]);
                Ok(Checkpoint::V2 {
                    prev: u64::from_be_bytes(prev),
                    mac,
                })
            }
            Some(&v) => Err(format!(
                "checkpoint row of {} bytes, version byte {v}: not a checkpoint this daemon wrote",
                b.len()
            )),
            None => Err("empty checkpoint row".into()),
        }
    }

    fn encode_v2(prev: u64, mac: &[u8; 32]) -> [u8; V2_LEN] {
        let mut out = [0u8; V2_LEN];
        out[0] = CHECKPOINT_V2;
        out[1..9].copy_from_slice(&prev.to_be_bytes());
        out[9..].copy_from_slice(mac);
        out
    }

    fn mac(&self) -> &[u8; 32] {
        match self {
            Checkpoint::V1 { mac } | Checkpoint::V2 { mac, .. } => mac,
        }
    }
}

/// Checks the checkpoint row `raw` at entry `seq` (whose hash is `hash`)
/// against the row before it (`prev`: seq and MAC, or 0 and zeros). MACs only
/// with a key; the structure always.
fn check_checkpoint(
    key: Option<&AuditKey>,
    seq: u64,
    hash: &[u8; 32],
    raw: &[u8],
    prev: (u64, [u8; 32]),
    seen_v2: bool,
) -> Result<Checkpoint, String> {
    let cp = Checkpoint::decode(raw).map_err(|why| format!("{why}: edited"))?;
    match cp {
        Checkpoint::V1 { mac } => {
            if seen_v2 {
                return Err(
                    "an unchained (v1) checkpoint after chained ones: inserted, or replayed from an older copy"
                        .into(),
                );
            }
            if let Some(key) = key
                && key.checkpoint_mac_v1(seq, hash).verify_slice(&mac).is_err()
            {
                return Err(
                    "checkpoint HMAC does not match: the chain up to here was rewritten, or the checkpoint was moved from another seq"
                        .into(),
                );
            }
        }
        Checkpoint::V2 { prev: p, mac } => {
            if p != prev.0 {
                return Err(if p > prev.0 && p < seq {
                    format!("the checkpoint here follows checkpoint {p}, which is missing: deleted")
                } else {
                    format!(
                        "the checkpoint here says it follows checkpoint {p}, but the one before it is {}: a checkpoint was inserted, moved or replayed",
                        prev.0
                    )
                });
            }
            if let Some(key) = key
                && key
                    .checkpoint_mac_v2(seq, hash, prev.0, &prev.1)
                    .verify_slice(&mac)
                    .is_err()
            {
                return Err(
                    "checkpoint HMAC does not match: the entries up to here or the checkpoints before it were rewritten, or this checkpoint was copied from another seq"
                        .into(),
                );
            }
        }
    }
    Ok(cp)
}

/// Why an anchor (`seq`, `mac`) does not hold on a verified `report`, if it
/// does not. `row` is the checkpoint row stored at `seq`.
fn anchor_error(
    report: &AuditVerifyReport,
    keyed: bool,
    seq: u64,
    mac: &[u8; 32],
    row: Option<&[u8]>,
    last_entry: u64,
) -> Option<String> {
    if !keyed {
        return Some(
            "the daemon has no master key, so it cannot check checkpoint MACs and an anchor proves nothing; start it with its master key"
                .into(),
        );
    }
    if let Some(bad) = report.first_bad
        && bad <= seq
    {
        return Some(format!(
            "the trail fails verification at seq {bad}, at or before the anchor at {seq}"
        ));
    }
    match row.map(Checkpoint::decode) {
        None if seq > last_entry => Some(format!(
            "the anchor is the checkpoint at {seq} but the trail ends at entry {last_entry} (last checkpoint {}): the newest entries and their checkpoints were removed (rolled back)",
            report
                .last_checkpoint
                .map_or_else(|| "none".to_owned(), |c| c.to_string())
        )),
        None => Some(format!(
            "there is no checkpoint at {seq} any more: it was deleted and the trail after it rewritten or rolled back"
        )),
        Some(Err(why)) => Some(format!("the checkpoint at {seq}: {why}")),
        Some(Ok(cp)) if cp.mac() == mac => None,
        Some(Ok(cp)) => Some(format!(
            "the checkpoint at {seq} has MAC {}, the anchor records {}: the trail up to {seq} was rewritten, or the anchor is from another database",
            hex(cp.mac()),
            hex(mac)
        )),
    }
}

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

/// 64 hex digits (either case) as 32 bytes.
pub fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The entry's hash: SHA-256(prev_hash || postcard(entry with `hash` empty)).
pub fn entry_hash(e: &AuditEntry) -> [u8; 32] {
    let mut body = e.clone();
    body.hash.clear();
    let prev = unhex32(&e.prev_hash).unwrap_or([0xff; 32]);
    let enc = postcard::to_stdvec(&body).expect("encode audit entry");
    let mut h = Sha256::new();
    h.update(prev);
    h.update(&enc);
    h.finalize().into()
}

#[derive(Debug, Clone, Copy)]
struct Chain {
    next_seq: u64,
    last_hash: [u8; 32],
    /// Seq of the last checkpoint row (0: none) and its MAC (zeros: none).
    last_checkpoint: u64,
    last_checkpoint_mac: [u8; 32],
}

/// The audit trail in the store.
pub struct AuditLog {
    store: Arc<Store>,
    chain: Mutex<Chain>,
    key: RwLock<Option<Arc<AuditKey>>>,
    committed: tokio::sync::watch::Sender<u64>,
}

impl fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLog")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// Appends entries inside the caller's write transaction.
pub struct Appender<'a> {
    txn: &'a WriteTransaction,
    store: &'a Store,
    chain: Chain,
    /// `chain.next_seq` when the transaction began.
    first_seq: u64,
    key: Option<&'a AuditKey>,
}

impl fmt::Debug for Appender<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Appender")
            .field("next_seq", &self.chain.next_seq)
            .finish()
    }
}

impl Appender<'_> {
    /// Appends `d` (committed with the caller's change); returns its seq.
    pub fn append(&mut self, d: Draft) -> Result<u64, AuditError> {
        let mut e = AuditEntry {
            seq: self.chain.next_seq,
            time_ms: crate::util::unix_ms(),
            actor_uid: d.actor.uid,
            actor_role: d.actor.role.to_owned(),
            actor_agent: d.actor.agent,
            action: d.action,
            target: d.target,
            outcome: d.outcome,
            detail: d.detail,
            prev_hash: hex(&self.chain.last_hash),
            hash: String::new(),
        };
        let h = entry_hash(&e);
        e.hash = hex(&h);
        let bytes = postcard::to_stdvec(&e).expect("encode audit entry");
        let mut t = self
            .txn
            .open_table(ENTRIES)
            .map_err(|err| self.store.err("open the audit table", err))?;
        t.insert(e.seq, bytes.as_slice())
            .map_err(|err| self.store.err("append to the audit table", err))?;
        self.chain.next_seq += 1;
        self.chain.last_hash = h;
        Ok(e.seq)
    }

    /// HMAC of a secret value for an entry (`None` without a master key).
    pub fn value_mac(&self, value: &[u8]) -> Option<String> {
        self.key.map(|k| k.value_mac(value))
    }

    /// Ends the transaction's audit part: with a key, a chained checkpoint of
    /// the last entry whenever any entry is uncovered; without one, the start
    /// of a new uncovered stretch is recorded.
    fn finish(&mut self) -> Result<(), AuditError> {
        let last = self.chain.next_seq - 1;
        if last == self.chain.last_checkpoint {
            return Ok(());
        }
        match self.key {
            Some(key) => {
                let prev = self.chain.last_checkpoint;
                let mac: [u8; 32] = key
                    .checkpoint_mac_v2(
                        last,
                        &self.chain.last_hash,
                        prev,
                        &self.chain.last_checkpoint_mac,
                    )
                    .finalize()
                    .into_bytes()
                    .into();
                let mut t = self
                    .txn
                    .open_table(CHECKPOINTS)
                    .map_err(|e| self.store.err("open the audit checkpoint table", e))?;
                t.insert(last, &Checkpoint::encode_v2(prev, &mac)[..])
                    .map_err(|e| self.store.err("write an audit checkpoint", e))?;
                self.chain.last_checkpoint = last;
                self.chain.last_checkpoint_mac = mac;
            }
            None => {
                if self.chain.next_seq > self.first_seq
                    && self.first_seq == self.chain.last_checkpoint + 1
                {
                    let mut t = self
                        .txn
                        .open_table(UNCOVERED)
                        .map_err(|e| self.store.err("open the audit uncovered table", e))?;
                    t.insert(self.first_seq, crate::util::unix_ms())
                        .map_err(|e| self.store.err("record uncovered audit entries", e))?;
                }
            }
        }
        Ok(())
    }
}

impl AuditLog {
    /// Opens the audit tables in `store` (creating them), loading the chain
    /// head. A schema-1 trail is migrated in place: its tail after the last
    /// (v1) checkpoint, if any, is recorded as uncovered.
    pub fn open(store: Arc<Store>, key: Option<AuditKey>) -> Result<AuditLog, AuditError> {
        let txn = store.begin_write()?;
        let previous = store.claim_schema(&txn, "audit", SCHEMA_VERSION)?;
        let chain = {
            let t = txn
                .open_table(ENTRIES)
                .map_err(|e| store.err("open the audit table", e))?;
            let c = txn
                .open_table(CHECKPOINTS)
                .map_err(|e| store.err("open the audit checkpoint table", e))?;
            let mut u = txn
                .open_table(UNCOVERED)
                .map_err(|e| store.err("open the audit uncovered table", e))?;
            let last = t.last().map_err(|e| store.err("read the audit table", e))?;
            let (last_checkpoint, last_checkpoint_mac) = match c
                .last()
                .map_err(|e| store.err("read the audit checkpoints", e))?
            {
                None => (0, [0u8; 32]),
                Some((k, v)) => {
                    let seq = k.value();
                    let cp = Checkpoint::decode(v.value()).map_err(|reason| {
                        AuditError::Decode {
                            seq,
                            reason: format!(
                                "{reason}; `ironctl audit verify` with the daemon stopped on a copy shows the damage, restore the state directory from a backup"
                            ),
                        }
                    })?;
                    (seq, *cp.mac())
                }
            };
            let chain = match last {
                None => Chain {
                    next_seq: 1,
                    last_hash: [0; 32],
                    last_checkpoint,
                    last_checkpoint_mac,
                },
                Some((k, v)) => {
                    let seq = k.value();
                    let e: AuditEntry =
                        postcard::from_bytes(v.value()).map_err(|e| AuditError::Decode {
                            seq,
                            reason: e.to_string(),
                        })?;
                    Chain {
                        next_seq: seq + 1,
                        last_hash: unhex32(&e.hash).ok_or(AuditError::Decode {
                            seq,
                            reason: "bad hash".into(),
                        })?,
                        last_checkpoint,
                        last_checkpoint_mac,
                    }
                }
            };
            let last_seq = chain.next_seq - 1;
            if previous == Some(1) && last_seq > last_checkpoint {
                u.insert(last_checkpoint + 1, crate::util::unix_ms())
                    .map_err(|e| store.err("record uncovered audit entries", e))?;
            }
            if key.is_some() && last_seq > last_checkpoint {
                tracing::warn!(
                    "audit entries {}..={last_seq} are not covered by a checkpoint: written without the master key, or their checkpoints were deleted while the daemon was stopped; the next audit write covers them (`ironctl audit verify --anchor` with a recorded head tells which)",
                    last_checkpoint + 1
                );
            }
            chain
        };
        if previous == Some(SCHEMA_VERSION) {
            txn.abort().map_err(|e| store.err("abort", e))?;
        } else {
            store.commit(txn, "create or migrate the audit tables")?;
        }
        let (committed, _) = tokio::sync::watch::channel(chain.next_seq - 1);
        Ok(AuditLog {
            store,
            chain: Mutex::new(chain),
            key: RwLock::new(key.map(Arc::new)),
            committed,
        })
    }

    /// Sets the checkpoint key (after the secrets store unlocked).
    pub fn set_key(&self, key: Option<AuditKey>) {
        *self.key.write().expect("audit key lock") = key.map(Arc::new);
    }

    /// Whether checkpoints and value HMACs are available.
    pub fn keyed(&self) -> bool {
        self.key.read().expect("audit key lock").is_some()
    }

    /// The store underneath.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Runs `f` in one durable write transaction, with an [`Appender`] for its
    /// entries: the change and its entries commit together or not at all.
    /// Blocks (fsync): call from a blocking thread, not an actor or the runtime.
    pub fn write<T, E: From<AuditError>>(
        &self,
        f: impl FnOnce(&WriteTransaction, &mut Appender<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let key = self.key.read().expect("audit key lock").clone();
        let mut chain = self.chain.lock().expect("audit chain lock");
        let txn = self.store.begin_write().map_err(AuditError::from)?;
        let mut app = Appender {
            txn: &txn,
            store: &self.store,
            chain: *chain,
            first_seq: chain.next_seq,
            key: key.as_deref(),
        };
        let out = f(&txn, &mut app)?;
        app.finish()?;
        let new_chain = app.chain;
        self.store
            .commit(txn, "audit entries")
            .map_err(AuditError::from)?;
        *chain = new_chain;
        self.committed.send_replace(new_chain.next_seq - 1);
        Ok(out)
    }

    /// With a key, covers any uncovered entries with a checkpoint now
    /// (shutdown, tests); a keyed write does so anyway.
    pub fn checkpoint_now(&self) -> Result<(), AuditError> {
        self.write(|_, _| Ok::<_, AuditError>(()))
    }

    /// The head for an external anchor: the last checkpoint's seq and MAC
    /// (`None` before the first checkpoint). The MAC is not secret.
    pub fn head(&self) -> Option<(u64, [u8; 32])> {
        let c = self.chain.lock().expect("audit chain lock");
        (c.last_checkpoint > 0).then_some((c.last_checkpoint, c.last_checkpoint_mac))
    }

    /// Seq of the last committed entry (0: none).
    pub fn last_seq(&self) -> u64 {
        *self.committed.borrow()
    }

    /// Changes whenever entries commit.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.committed.subscribe()
    }

    /// HMAC of a secret value for an entry (`None` without a master key).
    pub fn value_mac(&self, value: &[u8]) -> Option<String> {
        self.key
            .read()
            .expect("audit key lock")
            .as_ref()
            .map(|k| k.value_mac(value))
    }

    /// Up to `limit` entries after `after`, or the last `limit` when `None`.
    pub fn entries(&self, after: Option<u64>, limit: usize) -> Result<Vec<AuditEntry>, AuditError> {
        let txn = self.store.begin_read()?;
        let t = match txn.open_table(ENTRIES) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(self.store.err("open the audit table", e).into()),
        };
        let decode = |k: u64, v: &[u8]| {
            postcard::from_bytes::<AuditEntry>(v).map_err(|e| AuditError::Decode {
                seq: k,
                reason: e.to_string(),
            })
        };
        let mut out = Vec::new();
        match after {
            Some(a) => {
                for r in t
                    .range(a.saturating_add(1)..)
                    .map_err(|e| self.store.err("read the audit table", e))?
                    .take(limit)
                {
                    let (k, v) = r.map_err(|e| self.store.err("read the audit table", e))?;
                    out.push(decode(k.value(), v.value())?);
                }
            }
            None => {
                for r in t
                    .iter()
                    .map_err(|e| self.store.err("read the audit table", e))?
                    .rev()
                    .take(limit)
                {
                    let (k, v) = r.map_err(|e| self.store.err("read the audit table", e))?;
                    out.push(decode(k.value(), v.value())?);
                }
                out.reverse();
            }
        }
        Ok(out)
    }

    /// Recomputes the chain and checks every checkpoint; names the first bad
    /// seq and why (the rule is in the module doc). Reports the head
    /// (`last_checkpoint`, `head_mac`) for an external anchor.
    pub fn verify(&self) -> Result<AuditVerifyReport, AuditError> {
        self.verify_inner(None)
    }

    /// [`AuditLog::verify`], and `anchor_error` unless the checkpoint at `seq`
    /// exists with exactly `mac` and is on the verified chain (catches a
    /// rolled-back tail, which nothing inside the file can show).
    pub fn verify_anchored(
        &self,
        seq: u64,
        mac: &[u8; 32],
    ) -> Result<AuditVerifyReport, AuditError> {
        self.verify_inner(Some((seq, *mac)))
    }

    fn verify_inner(
        &self,
        anchor: Option<(u64, [u8; 32])>,
    ) -> Result<AuditVerifyReport, AuditError> {
        let key = self.key.read().expect("audit key lock").clone();
        let txn = self.store.begin_read()?;
        let mut report = AuditVerifyReport {
            entries: 0,
            first_bad: None,
            reason: None,
            checkpoints: 0,
            last_checkpoint: None,
            keyed: key.is_some(),
            head_mac: None,
            uncovered_from: None,
            anchor_error: None,
        };
        let mut checkpoints: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        match txn.open_table(CHECKPOINTS) {
            Ok(c) => {
                for r in c
                    .iter()
                    .map_err(|e| self.store.err("read the audit checkpoints", e))?
                {
                    let (k, v) = r.map_err(|e| self.store.err("read the audit checkpoints", e))?;
                    checkpoints.insert(k.value(), v.value().to_vec());
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(self.store.err("open the audit checkpoints", e).into()),
        }
        let mut uncovered = std::collections::BTreeSet::new();
        match txn.open_table(UNCOVERED) {
            Ok(u) => {
                for r in u
                    .iter()
                    .map_err(|e| self.store.err("read the audit uncovered table", e))?
                {
                    let (k, _) =
                        r.map_err(|e| self.store.err("read the audit uncovered table", e))?;
                    uncovered.insert(k.value());
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(self.store.err("open the audit uncovered table", e).into()),
        }
        if let Some((&seq, raw)) = checkpoints.iter().next_back() {
            report.last_checkpoint = Some(seq);
            report.head_mac = Checkpoint::decode(raw).ok().map(|c| hex(c.mac()));
        }
        let bad = |report: &mut AuditVerifyReport, seq: u64, why: String| {
            if report.first_bad.is_none() {
                report.first_bad = Some(seq);
                report.reason = Some(why);
            }
        };
        if checkpoints.contains_key(&0) {
            bad(
                &mut report,
                0,
                "a checkpoint row at seq 0, which no daemon writes: inserted".into(),
            );
        }
        let t = match txn.open_table(ENTRIES) {
            Ok(t) => Some(t),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(self.store.err("open the audit table", e).into()),
        };
        let mut expected = 1u64;
        let mut prev = [0u8; 32];
        // The last checkpoint row walked past, and whether a v2 row was seen.
        let mut prev_cp: (u64, [u8; 32]) = (0, [0u8; 32]);
        let mut seen_v2 = false;
        if let Some(t) = &t {
            report.entries = t
                .len()
                .map_err(|e| self.store.err("read the audit table", e))?;
            for r in t
                .iter()
                .map_err(|e| self.store.err("read the audit table", e))?
            {
                if report.first_bad.is_some() {
                    break;
                }
                let (k, v) = r.map_err(|e| self.store.err("read the audit table", e))?;
                let k = k.value();
                if k != expected {
                    let why = if k > expected {
                        format!("entries {expected}..{} are missing (deleted)", k - 1)
                    } else {
                        format!("unexpected seq {k}")
                    };
                    bad(&mut report, expected, why);
                    break;
                }
                let e: AuditEntry = match postcard::from_bytes(v.value()) {
                    Ok(e) => e,
                    Err(e) => {
                        bad(
                            &mut report,
                            k,
                            format!("entry cannot be decoded ({e}): edited"),
                        );
                        break;
                    }
                };
                if e.seq != k {
                    bad(
                        &mut report,
                        k,
                        format!(
                            "entry stored at {k} says it is {}: reordered or inserted",
                            e.seq
                        ),
                    );
                    break;
                }
                if e.prev_hash != hex(&prev) {
                    bad(&mut report, k, "prev_hash does not match the entry before: an entry was inserted, removed or reordered".into());
                    break;
                }
                let h = entry_hash(&e);
                if e.hash != hex(&h) {
                    bad(
                        &mut report,
                        k,
                        "hash does not match the content: the entry was edited".into(),
                    );
                    break;
                }
                if let Some(raw) = checkpoints.get(&k) {
                    match check_checkpoint(key.as_deref(), k, &h, raw, prev_cp, seen_v2) {
                        Ok(cp) => {
                            seen_v2 |= matches!(cp, Checkpoint::V2 { .. });
                            if key.is_some() {
                                report.checkpoints += 1;
                            }
                            prev_cp = (k, *cp.mac());
                        }
                        Err(why) => {
                            bad(&mut report, k, why);
                            break;
                        }
                    }
                }
                prev = h;
                expected += 1;
            }
        }
        let last_entry = expected - 1;
        if report.first_bad.is_none()
            && let Some(last_cp) = report.last_checkpoint
            && last_cp > last_entry
        {
            bad(
                &mut report,
                expected,
                format!(
                    "the trail ends at {last_entry} but a checkpoint covers up to {last_cp}: truncated"
                ),
            );
        }
        if report.first_bad.is_none() && last_entry > prev_cp.0 {
            let from = prev_cp.0 + 1;
            if uncovered.contains(&from) {
                report.uncovered_from = Some(from);
            } else {
                bad(
                    &mut report,
                    from,
                    format!(
                        "entries {from}..={last_entry} are not covered by a checkpoint and nothing records that they were written without a master key: the checkpoints after {} were deleted (and the entries possibly rewritten)",
                        prev_cp.0
                    ),
                );
            }
        }
        if let Some((aseq, amac)) = anchor {
            report.anchor_error = anchor_error(
                &report,
                key.is_some(),
                aseq,
                &amac,
                checkpoints.get(&aseq).map(Vec::as_slice),
                last_entry,
            );
        }
        Ok(report)
    }

    /// Test and tooling access to raw rows (tamper tests rewrite them).
    #[cfg(test)]
    pub(crate) fn raw_put(&self, seq: u64, bytes: Option<&[u8]>) {
        self.raw_put_in(ENTRIES, seq, bytes);
    }

    /// Writes (`Some`) or deletes (`None`) the raw row `seq` of `table`.
    #[cfg(test)]
    fn raw_put_in(&self, table: TableDefinition<u64, &[u8]>, seq: u64, bytes: Option<&[u8]>) {
        let txn = self.store.begin_write().unwrap();
        {
            let mut t = txn.open_table(table).unwrap();
            match bytes {
                Some(b) => {
                    t.insert(seq, b).unwrap();
                }
                None => {
                    t.remove(seq).unwrap();
                }
            }
        }
        txn.commit().unwrap();
    }
}

#[cfg(test)]
impl AuditLog {
    /// A raw checkpoint row (tamper tests read, move and delete them).
    pub(crate) fn raw_checkpoint(&self, seq: u64) -> Option<Vec<u8>> {
        let txn = self.store.begin_read().unwrap();
        let t = txn.open_table(CHECKPOINTS).unwrap();
        t.get(seq).unwrap().map(|v| v.value().to_vec())
    }

    /// Writes (`Some`) or deletes (`None`) a raw checkpoint row.
    pub(crate) fn raw_put_checkpoint(&self, seq: u64, bytes: Option<&[u8]>) {
        self.raw_put_in(CHECKPOINTS, seq, bytes);
    }
}

#[cfg(test)]
impl AuditLog {
    /// Records "written without a key from `seq`" as a tamperer could.
    pub(crate) fn raw_put_uncovered(&self, seq: u64) {
        let txn = self.store.begin_write().unwrap();
        txn.open_table(UNCOVERED).unwrap().insert(seq, 0).unwrap();
        txn.commit().unwrap();
    }

    /// Deletes that record.
    pub(crate) fn raw_put_uncovered_delete(&self, seq: u64) {
        let txn = self.store.begin_write().unwrap();
        txn.open_table(UNCOVERED).unwrap().remove(seq).unwrap();
        txn.commit().unwrap();
    }

    /// Empties the checkpoint and uncovered tables (to build a schema-1 file).
    pub(crate) fn raw_clear_checkpoints_and_uncovered(&self) {
        let txn = self.store.begin_write().unwrap();
        txn.delete_table(CHECKPOINTS).unwrap();
        txn.delete_table(UNCOVERED).unwrap();
        txn.commit().unwrap();
    }

    /// Sets the recorded schema version of the audit tables.
    pub(crate) fn raw_set_schema(&self, v: u32) {
        let txn = self.store.begin_write().unwrap();
        txn.open_table(TableDefinition::<&str, u32>::new("schema"))
            .unwrap()
            .insert("audit", v)
            .unwrap();
        txn.commit().unwrap();
    }
}
