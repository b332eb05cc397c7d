//! The audit table, its hash chain and HMAC checkpoints.
//!
//! Tables (in the daemon's one redb file, component `audit`):
//! - `audit`: seq (from 1) -> postcard [`AuditEntry`];
//! - `audit_checkpoints`: seq -> HMAC-SHA256(checkpoint key, seq || hash of
//!   entry seq). Written every [`CHECKPOINT_EVERY`] entries, at every secret
//!   change, and at shutdown, only when a master key is configured. The hash
//!   chain alone catches edits, deletions, reorders and insertions inside the
//!   trail; checkpoints, which nobody without the master key can forge, also
//!   catch a truncated tail and a chain recomputed from scratch (up to the last
//!   checkpoint).

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
/// Schema version of the audit tables.
pub const SCHEMA_VERSION: u32 = 1;
/// Entries between two automatic checkpoints.
pub const CHECKPOINT_EVERY: u64 = 64;

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

    fn checkpoint_mac(&self, seq: u64, hash: &[u8; 32]) -> HmacSha256 {
        let mut m = HmacSha256::new_from_slice(self.checkpoint.expose()).expect("any key length");
        m.update(b"ironcage audit checkpoint v1");
        m.update(&seq.to_be_bytes());
        m.update(hash);
        m
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

fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
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
    last_checkpoint: u64,
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
    key: Option<&'a AuditKey>,
    force_checkpoint: bool,
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

    /// Ask for a checkpoint at the end of this transaction (secret changes).
    pub fn checkpoint(&mut self) {
        self.force_checkpoint = true;
    }

    /// HMAC of a secret value for an entry (`None` without a master key).
    pub fn value_mac(&self, value: &[u8]) -> Option<String> {
        self.key.map(|k| k.value_mac(value))
    }

    fn finish(&mut self) -> Result<(), AuditError> {
        let last = self.chain.next_seq - 1;
        let Some(key) = self.key else { return Ok(()) };
        if last == 0 || last == self.chain.last_checkpoint {
            return Ok(());
        }
        if self.force_checkpoint || last - self.chain.last_checkpoint >= CHECKPOINT_EVERY {
            let mac = key
                .checkpoint_mac(last, &self.chain.last_hash)
                .finalize()
                .into_bytes();
            let mut t = self
                .txn
                .open_table(CHECKPOINTS)
                .map_err(|e| self.store.err("open the audit checkpoint table", e))?;
            t.insert(last, &mac[..])
                .map_err(|e| self.store.err("write an audit checkpoint", e))?;
            self.chain.last_checkpoint = last;
        }
        Ok(())
    }
}

impl AuditLog {
    /// Opens the audit tables in `store` (creating them), loading the chain head.
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
            let last = t.last().map_err(|e| store.err("read the audit table", e))?;
            let last_checkpoint = c
                .last()
                .map_err(|e| store.err("read the audit checkpoints", e))?
                .map_or(0, |(k, _)| k.value());
            match last {
                None => Chain {
                    next_seq: 1,
                    last_hash: [0; 32],
                    last_checkpoint,
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
                    }
                }
            }
        };
        if previous == Some(SCHEMA_VERSION) {
            txn.abort().map_err(|e| store.err("abort", e))?;
        } else {
            store.commit(txn, "create the audit tables")?;
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
            key: key.as_deref(),
            force_checkpoint: false,
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

    /// Forces a checkpoint of the current head (shutdown, tests).
    pub fn checkpoint_now(&self) -> Result<(), AuditError> {
        self.write(|_, app| {
            app.checkpoint();
            Ok::<_, AuditError>(())
        })
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

    /// Recomputes the chain and checks every checkpoint; names the first bad seq.
    pub fn verify(&self) -> Result<AuditVerifyReport, AuditError> {
        let key = self.key.read().expect("audit key lock").clone();
        let txn = self.store.begin_read()?;
        let mut report = AuditVerifyReport {
            entries: 0,
            first_bad: None,
            reason: None,
            checkpoints: 0,
            last_checkpoint: None,
            keyed: key.is_some(),
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
        report.last_checkpoint = checkpoints.keys().next_back().copied();
        let bad = |report: &mut AuditVerifyReport, seq: u64, why: String| {
            if report.first_bad.is_none() {
                report.first_bad = Some(seq);
                report.reason = Some(why);
            }
        };
        let t = match txn.open_table(ENTRIES) {
            Ok(t) => Some(t),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(self.store.err("open the audit table", e).into()),
        };
        let mut expected = 1u64;
        let mut prev = [0u8; 32];
        if let Some(t) = &t {
            report.entries = t
                .len()
                .map_err(|e| self.store.err("read the audit table", e))?;
            for r in t
                .iter()
                .map_err(|e| self.store.err("read the audit table", e))?
            {
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
                if let Some(mac) = checkpoints.get(&k)
                    && let Some(key) = &key
                {
                    report.checkpoints += 1;
                    if key.checkpoint_mac(k, &h).verify_slice(mac).is_err() {
                        bad(
                            &mut report,
                            k,
                            "checkpoint HMAC does not match: the chain up to here was rewritten"
                                .into(),
                        );
                        break;
                    }
                }
                prev = h;
                expected += 1;
            }
        }
        if report.first_bad.is_none()
            && let Some(last_cp) = report.last_checkpoint
            && last_cp >= expected
        {
            bad(
                &mut report,
                expected,
                format!(
                    "the trail ends at {} but a checkpoint covers up to {last_cp}: truncated",
                    expected - 1
                ),
            );
        }
        Ok(report)
    }

    /// Test and tooling access to raw rows (tamper tests rewrite them).
    #[cfg(test)]
    pub(crate) fn raw_put(&self, seq: u64, bytes: Option<&[u8]>) {
        let txn = self.store.begin_write().unwrap();
        {
            let mut t = txn.open_table(ENTRIES).unwrap();
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
