//! The encrypted secrets tables and every operation on them.
//!
//! Tables (component `secrets` in the daemon's redb file):
//! - `secrets_meta`: `current_gen` -> the KEK generation in force;
//! - `secrets_keks`: generation -> [`KekRecord`] (Argon2 salt, key-check blob,
//!   the audit key wrapped under that KEK);
//! - `secrets_heads`: (name, env) -> [`Head`] (current version, metadata)
//!   followed by its MAC ([`HeadKey`]: HMAC-SHA256 over the domain, name,
//!   env and every field, keyed from the audit key material);
//! - `secrets_versions`: (name, env, version) -> [`VersionRecord`] (the DEK
//!   wrapped under the KEK of `kek_gen`, the sealed value).
//!
//! Every change commits in one transaction together with its audit entry
//! ([`AuditLog::write`]). Rekey re-wraps every DEK and the audit key under the
//! new KEK, records the new generation and drops the old one in one
//! transaction: before the commit everything opens under the old key only,
//! after it under the new key only. The head MAC key comes from the audit key
//! material, which a rekey re-wraps unchanged, so heads stay valid as written.
//!
//! Every read of a head ([`load_head`]) checks its MAC and that no version at
//! or above its `next` exists: a head edited (`current` set back), copied to
//! another name or environment, stripped of its MAC, or replayed from before
//! a later `set` or `rollback` (which stores the old value as a new version,
//! so `current` never moves backwards) is refused with
//! [`SecretsError::HeadTampered`]. Limits: a
//! replayed head together with the deletion of every newer version, or a
//! restore of the whole file from an older copy, looks consistent (the audit
//! trail still shows the `set` entries that were lost).

use super::SecretsError;
use super::crypto::{self, CryptoError, HEAD_MAC_LEN, HeadFields, HeadKey, Key};
use super::mask::mask;
use super::master::MasterKey;
use crate::audit::{Actor, AuditError, AuditHandle, AuditLog, Draft};
use crate::secret::SecretString;
use crate::store::Store;
use ironcage_shared::protocol::{AuditOutcome, SecretEnv, SecretInfo, SecretVersionInfo};
use redb::{ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

/// Each secret's current version and when it last changed:
/// `(name, env) -> (version, updated_ms)` ([`Vault::heads`]).
pub type Heads = BTreeMap<(String, SecretEnv), (u32, u64)>;

pub(super) const META: TableDefinition<&str, u32> = TableDefinition::new("secrets_meta");
pub(super) const KEKS: TableDefinition<u32, &[u8]> = TableDefinition::new("secrets_keks");
pub(super) const HEADS: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("secrets_heads");
pub(super) const VERSIONS: TableDefinition<(&str, &str, u32), &[u8]> =
    TableDefinition::new("secrets_versions");
/// Schema version of the secrets tables.
pub const SCHEMA_VERSION: u32 = 1;

/// One KEK generation.
#[derive(Serialize, Deserialize)]
struct KekRecord {
    salt: Vec<u8>,
    /// [`crypto::CHECK_PLAINTEXT_HEADS_MAC`] (or, before heads were
    /// authenticated, [`crypto::CHECK_PLAINTEXT`]) sealed under this KEK.
    check: Vec<u8>,
    /// The audit key material wrapped under this KEK.
    audit_key: Vec<u8>,
}

/// A secret's current version and metadata.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub(super) struct Head {
    pub(super) current: u32,
    pub(super) next: u32,
    pub(super) created_ms: u64,
    pub(super) updated_ms: u64,
    pub(super) updated_by: String,
}

/// One sealed version.
#[derive(Serialize, Deserialize)]
pub(super) struct VersionRecord {
    pub(super) kek_gen: u32,
    pub(super) wrapped_dek: Vec<u8>,
    pub(super) sealed: Vec<u8>,
    pub(super) created_ms: u64,
    pub(super) created_by: String,
}

/// Metadata carried over by an import (Vault `custom_metadata`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Original {
    pub version: u32,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub updated_by: String,
}

/// One secret to import.
#[derive(Debug, Clone)]
pub struct ImportItem {
    pub name: String,
    pub env: SecretEnv,
    pub value: ironcage_shared::protocol::SecretValue,
    pub original: Option<Original>,
}

/// Where a rekey stands, for crash-point tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RekeyStep {
    /// The new KEK is derived; nothing written yet.
    Derived,
    /// The new generation's record is in the (uncommitted) transaction.
    NewGenerationWritten,
    /// About half the DEKs are re-wrapped.
    Halfway,
    /// Every DEK is re-wrapped.
    AllRewrapped,
    /// The current generation points at the new KEK; not yet committed.
    Switched,
    /// Committed.
    Committed,
}

/// The unlocked KEK in force.
struct Unlocked {
    generation: u32,
    kek: Key,
}

/// The unlocked store. Reads run on the caller's thread (a read transaction
/// and two AES-GCM opens); writes block on an fsync'd commit.
pub struct Vault {
    audit: AuditHandle,
    unlocked: RwLock<Unlocked>,
    /// Authenticates head records; unchanged by a rekey.
    head_key: HeadKey,
    keep_versions: std::sync::atomic::AtomicU32,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vault([REDACTED])")
    }
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).expect("encode a secrets record")
}

fn dec<'a, T: Deserialize<'a>>(b: &'a [u8], what: &str) -> Result<T, SecretsError> {
    postcard::from_bytes(b).map_err(|e| SecretsError::Damaged(format!("{what}: {e}")))
}

impl Head {
    fn fields(&self) -> HeadFields<'_> {
        HeadFields {
            current: self.current,
            next: self.next,
            created_ms: self.created_ms,
            updated_ms: self.updated_ms,
            updated_by: &self.updated_by,
        }
    }
}

/// A head record as stored: `postcard(Head) || MAC`.
fn enc_head(key: &HeadKey, name: &str, env: &str, head: &Head) -> Vec<u8> {
    let mut b = enc(head);
    b.extend_from_slice(&key.mac(name, env, &head.fields()));
    b
}

/// Splits a stored head record into the head and its MAC (`None`: a record
/// written before heads were authenticated, or one stripped of its MAC).
fn split_head(b: &[u8]) -> Result<(Head, Option<&[u8]>), SecretsError> {
    let (head, rest) = postcard::take_from_bytes::<Head>(b)
        .map_err(|e| SecretsError::Damaged(format!("secret head: {e}")))?;
    match rest.len() {
        0 => Ok((head, None)),
        HEAD_MAC_LEN => Ok((head, Some(rest))),
        n => Err(SecretsError::Damaged(format!(
            "secret head: {n} trailing bytes where a {HEAD_MAC_LEN}-byte MAC belongs"
        ))),
    }
}

/// Checks a stored head of `name@env`: its MAC, `current < next`, and that no
/// version at or above `next` exists (a cheap range lookup that catches an
/// old head put back after a later `set`).
fn check_head(
    bytes: &[u8],
    versions: &impl ReadableTable<(&'static str, &'static str, u32), &'static [u8]>,
    store: &Store,
    key: &HeadKey,
    name: &str,
    env: SecretEnv,
) -> Result<Head, SecretsError> {
    let tampered = |why: String| SecretsError::HeadTampered {
        name: name.into(),
        env,
        why,
    };
    let (head, mac) = split_head(bytes)?;
    let Some(mac) = mac else {
        return Err(tampered("it has no MAC".into()));
    };
    if !key.verify(name, env.as_str(), &head.fields(), mac) {
        return Err(tampered(
            "its MAC does not match its contents, name and environment".into(),
        ));
    }
    if head.current >= head.next {
        return Err(tampered(format!(
            "its current version {} is not below its next {}",
            head.current, head.next
        )));
    }
    if let Some(r) = versions
        .range((name, env.as_str(), head.next)..=(name, env.as_str(), u32::MAX))
        .map_err(|e| store.err("read secrets_versions", e))?
        .next()
    {
        let (k, _) = r.map_err(|e| store.err("read secrets_versions", e))?;
        return Err(tampered(format!(
            "version {} exists but the head says the next version is {}: an older head was put back",
            k.value().2,
            head.next
        )));
    }
    Ok(head)
}

/// The authenticated head (current version, metadata) of `name@env`;
/// `NotFound` if unset, `HeadTampered` if it fails [`check_head`].
fn load_head(
    heads: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    versions: &impl ReadableTable<(&'static str, &'static str, u32), &'static [u8]>,
    store: &Store,
    key: &HeadKey,
    name: &str,
    env: SecretEnv,
) -> Result<Head, SecretsError> {
    match heads
        .get((name, env.as_str()))
        .map_err(|e| store.err("read secrets_heads", e))?
    {
        Some(h) => check_head(h.value(), versions, store, key, name, env),
        None => Err(SecretsError::NotFound {
            name: name.into(),
            env,
        }),
    }
}

/// What `list` shows in place of the masked value of a secret whose head
/// record fails authentication (reading it is refused).
pub const TAMPERED_MARK: &str = "<TAMPERED: head record fails authentication>";

fn target(name: &str, env: SecretEnv) -> String {
    format!("{name}@{env}")
}

/// Outcome of [`unlock`]: the KEK and the audit key material.
pub struct Unlock {
    generation: u32,
    kek: Key,
    /// Audit key material (HKDF input for checkpoints and value HMACs).
    pub audit_material: Key,
    /// Whether the store was initialised by this unlock (first use).
    pub initialised: bool,
    /// Whether every head record carries a MAC (the key-check record says
    /// so). `false` for a store written before heads were authenticated:
    /// [`Vault::upgrade_heads`] MACs them.
    pub heads_authenticated: bool,
}

impl std::fmt::Debug for Unlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Unlock(generation {}, [REDACTED])", self.generation)
    }
}

/// Derives the KEK and checks it against the key-check record. A wrong key
/// writes nothing. A store without secrets tables is initialised (generation
/// 1 with a fresh salt); that write is the only one an unlock makes.
pub fn unlock(store: &Store, master: &MasterKey) -> Result<Unlock, SecretsError> {
    // Read first: a wrong key must not write a byte.
    let existing = {
        let txn = store.begin_read()?;
        match txn.open_table(META) {
            Ok(meta) => match meta
                .get("current_gen")
                .map_err(|e| store.err("read secrets_meta", e))?
            {
                Some(g) => {
                    let g = g.value();
                    let keks = txn
                        .open_table(KEKS)
                        .map_err(|e| store.err("open secrets_keks", e))?;
                    let rec = keks
                        .get(g)
                        .map_err(|e| store.err("read secrets_keks", e))?
                        .ok_or_else(|| {
                            SecretsError::Damaged(format!("KEK generation {g} is missing"))
                        })?;
                    let rec: KekRecord = dec(rec.value(), "KEK record")?;
                    Some((g, rec))
                }
                None => None,
            },
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(store.err("open secrets_meta", e).into()),
        }
    };
    if let Some((generation, rec)) = existing {
        if store
            .schema_version("secrets")?
            .is_some_and(|v| v > SCHEMA_VERSION)
        {
            return Err(SecretsError::Store(crate::store::StoreError::NewerSchema {
                path: store.path().to_owned(),
                component: "secrets".into(),
                found: store.schema_version("secrets")?.unwrap_or(0),
                supported: SCHEMA_VERSION,
            }));
        }
        let kek = crypto::derive_kek(master.expose(), &rec.salt).map_err(|_| SecretsError::Kdf)?;
        let Ok(check) = crypto::open(&kek, &rec.check, &crypto::check_aad(generation)) else {
            return Err(SecretsError::WrongKey {
                source_name: master.source.clone(),
                path: store.path().display().to_string(),
            });
        };
        let heads_authenticated = match &check[..] {
            c if c == crypto::CHECK_PLAINTEXT_HEADS_MAC => true,
            c if c == crypto::CHECK_PLAINTEXT => false,
            _ => {
                return Err(SecretsError::Damaged(
                    "the key-check record opens but holds an unknown marker".into(),
                ));
            }
        };
        let audit_material =
            crypto::unwrap(&kek, &rec.audit_key, &crypto::audit_key_aad(generation))
                .map_err(|_| SecretsError::Damaged("the wrapped audit key does not open".into()))?;
        return Ok(Unlock {
            generation,
            kek,
            audit_material,
            initialised: false,
            heads_authenticated,
        });
    }
    let salt = crypto::random_salt();
    let kek = crypto::derive_kek(master.expose(), &salt).map_err(|_| SecretsError::Kdf)?;
    let audit_material = Key::random();
    let generation = 1;
    let rec = KekRecord {
        salt: salt.to_vec(),
        check: crypto::seal(
            &kek,
            crypto::CHECK_PLAINTEXT_HEADS_MAC,
            &crypto::check_aad(generation),
        ),
        audit_key: crypto::wrap(&kek, &audit_material, &crypto::audit_key_aad(generation)),
    };
    let txn = store.begin_write()?;
    store.claim_schema(&txn, "secrets", SCHEMA_VERSION)?;
    create_tables(store, &txn)?;
    {
        let mut keks = txn
            .open_table(KEKS)
            .map_err(|e| store.err("open secrets_keks", e))?;
        keks.insert(generation, enc(&rec).as_slice())
            .map_err(|e| store.err("write secrets_keks", e))?;
        let mut meta = txn
            .open_table(META)
            .map_err(|e| store.err("open secrets_meta", e))?;
        meta.insert("current_gen", generation)
            .map_err(|e| store.err("write secrets_meta", e))?;
    }
    store.commit(txn, "initialise the secrets store")?;
    Ok(Unlock {
        generation,
        kek,
        audit_material,
        initialised: true,
        heads_authenticated: true,
    })
}

fn create_tables(store: &Store, txn: &WriteTransaction) -> Result<(), SecretsError> {
    txn.open_table(META)
        .map_err(|e| store.err("create secrets_meta", e))?;
    txn.open_table(KEKS)
        .map_err(|e| store.err("create secrets_keks", e))?;
    txn.open_table(HEADS)
        .map_err(|e| store.err("create secrets_heads", e))?;
    txn.open_table(VERSIONS)
        .map_err(|e| store.err("create secrets_versions", e))?;
    Ok(())
}

impl Vault {
    /// The store unlocked by `unlock`; entries go to `audit`.
    pub fn new(unlock: Unlock, audit: AuditHandle, keep_versions: u32) -> Vault {
        Vault {
            audit,
            head_key: HeadKey::derive(&unlock.audit_material),
            unlocked: RwLock::new(Unlocked {
                generation: unlock.generation,
                kek: unlock.kek,
            }),
            keep_versions: std::sync::atomic::AtomicU32::new(keep_versions.max(1)),
        }
    }

    /// Changes how many versions `set` keeps (config reload).
    pub fn set_keep_versions(&self, n: u32) {
        self.keep_versions
            .store(n.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    fn log(&self) -> &Arc<AuditLog> {
        self.audit.log()
    }

    fn store(&self) -> &Store {
        self.log().store()
    }

    /// The audit handle entries go to.
    pub fn audit(&self) -> &AuditHandle {
        &self.audit
    }

    /// The current KEK generation.
    pub fn generation(&self) -> u32 {
        self.unlocked.read().expect("kek lock").generation
    }

    /// Stores a new version of `name@env` and makes it current; returns the
    /// version. Older versions beyond `keep_versions` are deleted.
    pub fn set(
        &self,
        actor: &Actor,
        name: &str,
        env: SecretEnv,
        value: &str,
    ) -> Result<u32, SecretsError> {
        super::check_value(name, value)?;
        let un = self.unlocked.read().expect("kek lock");
        self.log().write(|txn, app| {
            let version = self.put_in(txn, &un, actor, name, env, value, None)?;
            app.append(
                Draft::new(
                    actor.clone(),
                    "secrets set",
                    target(name, env),
                    AuditOutcome::Ok,
                )
                .detail(format!("version {version}")),
            )?;
            Ok(version)
        })
    }

    /// Sets every `(name, env, value, original)` in ONE transaction with one
    /// entry each: all or nothing. Returns how many.
    pub fn import(&self, actor: &Actor, items: &[ImportItem]) -> Result<usize, SecretsError> {
        for it in items {
            super::check_value(&it.name, it.value.expose())?;
        }
        let un = self.unlocked.read().expect("kek lock");
        self.log().write(|txn, app| {
            for it in items {
                let version = self.put_in(
                    txn,
                    &un,
                    actor,
                    &it.name,
                    it.env,
                    it.value.expose(),
                    it.original.as_ref(),
                )?;
                app.append(
                    Draft::new(
                        actor.clone(),
                        "secrets import",
                        target(&it.name, it.env),
                        AuditOutcome::Ok,
                    )
                    .detail(format!("version {version}")),
                )?;
            }
            Ok(items.len())
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn put_in(
        &self,
        txn: &WriteTransaction,
        un: &Unlocked,
        actor: &Actor,
        name: &str,
        env: SecretEnv,
        value: &str,
        original: Option<&Original>,
    ) -> Result<u32, SecretsError> {
        let keep = self
            .keep_versions
            .load(std::sync::atomic::Ordering::Relaxed);
        let store = self.store();
        let now = crate::util::unix_ms();
        let mut heads = txn
            .open_table(HEADS)
            .map_err(|e| store.err("open secrets_heads", e))?;
        let mut versions = txn
            .open_table(VERSIONS)
            .map_err(|e| store.err("open secrets_versions", e))?;
        // A tampered head is refused here too: its `next` must not be
        // trusted to pick the new version number.
        let head: Option<Head> =
            match load_head(&heads, &versions, store, &self.head_key, name, env) {
                Ok(h) => Some(h),
                Err(SecretsError::NotFound { .. }) => None,
                Err(e) => return Err(e),
            };
        let mut head = head.unwrap_or(Head {
            current: 0,
            next: 1,
            created_ms: original.map_or(now, |o| o.created_ms),
            updated_ms: now,
            updated_by: String::new(),
        });
        let version = original.map_or(head.next, |o| o.version.max(head.next));
        let by = original.map_or_else(|| actor.describe.clone(), |o| o.updated_by.clone());
        let updated = original.map_or(now, |o| o.updated_ms);
        let dek = Key::random();
        let rec = VersionRecord {
            kek_gen: un.generation,
            wrapped_dek: crypto::wrap(
                &un.kek,
                &dek,
                &crypto::dek_aad(name, env.as_str(), version, un.generation),
            ),
            sealed: crypto::seal(
                &dek,
                value.as_bytes(),
                &crypto::value_aad(name, env.as_str(), version),
            ),
            created_ms: updated,
            created_by: by.clone(),
        };
        versions
            .insert((name, env.as_str(), version), enc(&rec).as_slice())
            .map_err(|e| store.err("write secrets_versions", e))?;
        head.current = version;
        head.next = version.checked_add(1).ok_or_else(|| {
            SecretsError::Invalid(format!(
                "{name}@{env} cannot take another version (version {version} is the last one); remove it and set it again"
            ))
        })?;
        head.updated_ms = updated;
        head.updated_by = by;
        heads
            .insert(
                (name, env.as_str()),
                enc_head(&self.head_key, name, env.as_str(), &head).as_slice(),
            )
            .map_err(|e| store.err("write secrets_heads", e))?;
        // Keep the newest `keep` versions.
        let mut kept: Vec<u32> = Vec::new();
        for r in versions
            .range((name, env.as_str(), 0)..=(name, env.as_str(), u32::MAX))
            .map_err(|e| store.err("read secrets_versions", e))?
        {
            let (k, _) = r.map_err(|e| store.err("read secrets_versions", e))?;
            kept.push(k.value().2);
        }
        kept.sort_unstable();
        let drop_n = kept.len().saturating_sub(keep as usize);
        for v in &kept[..drop_n] {
            versions
                .remove((name, env.as_str(), *v))
                .map_err(|e| store.err("prune secrets_versions", e))?;
        }
        Ok(version)
    }

    fn read_version(
        &self,
        name: &str,
        env: SecretEnv,
        version: Option<u32>,
    ) -> Result<(u32, SecretString), SecretsError> {
        // The KEK lock first, then the snapshot: a rekey (which holds the
        // lock across its commit) cannot slip between them, so the KEK always
        // matches the generation of the records this snapshot shows.
        let un = self.unlocked.read().expect("kek lock");
        let store = self.store();
        let txn = store.begin_read()?;
        let heads = match txn.open_table(HEADS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => {
                return Err(SecretsError::NotFound {
                    name: name.into(),
                    env,
                });
            }
            Err(e) => return Err(store.err("open secrets_heads", e).into()),
        };
        let versions = txn
            .open_table(VERSIONS)
            .map_err(|e| store.err("open secrets_versions", e))?;
        let head = load_head(&heads, &versions, store, &self.head_key, name, env)?;
        let version = version.unwrap_or(head.current);
        let rec: VersionRecord = match versions
            .get((name, env.as_str(), version))
            .map_err(|e| store.err("read secrets_versions", e))?
        {
            Some(r) => dec(r.value(), "secret version")?,
            None => {
                return Err(SecretsError::VersionNotKept {
                    name: name.into(),
                    env,
                    version,
                });
            }
        };
        let opened = (|| {
            if rec.kek_gen != un.generation {
                return Err(CryptoError::Auth);
            }
            let dek = crypto::unwrap(
                &un.kek,
                &rec.wrapped_dek,
                &crypto::dek_aad(name, env.as_str(), version, rec.kek_gen),
            )?;
            crypto::open(
                &dek,
                &rec.sealed,
                &crypto::value_aad(name, env.as_str(), version),
            )
        })()
        .map_err(|_| SecretsError::Tampered {
            name: name.into(),
            env,
            version,
        })?;
        let s = String::from_utf8(opened.to_vec()).map_err(|_| SecretsError::Tampered {
            name: name.into(),
            env,
            version,
        })?;
        Ok((version, SecretString::new(s)))
    }

    /// The current value for the daemon's own use (the gateway's provider keys,
    /// delivery to agents); the caller records the access.
    pub fn read_current(&self, name: &str, env: SecretEnv) -> Result<SecretString, SecretsError> {
        self.read_version(name, env, None).map(|(_, s)| s)
    }

    /// Reads a value for `actor` and records the read (with an HMAC of the
    /// value) durably before returning it. Blocks.
    pub fn get(
        &self,
        actor: &Actor,
        name: &str,
        env: SecretEnv,
        version: Option<u32>,
    ) -> Result<(u32, SecretString), SecretsError> {
        let (v, s) = self.read_version(name, env, version)?;
        let mac = self
            .log()
            .value_mac(s.expose().as_bytes())
            .unwrap_or_default();
        self.audit.record_durable_blocking(
            Draft::new(
                actor.clone(),
                "secrets get",
                target(name, env),
                AuditOutcome::Ok,
            )
            .detail(format!("version {v} {mac}")),
        )?;
        Ok((v, s))
    }

    /// `iron_cage.secret(name)` from an agent's own channel: the current value
    /// of a secret granted to `agent` (by name; the grant fixes the
    /// environment). A name not granted is refused and the refusal recorded;
    /// a read is recorded with an HMAC of the value, durably, before it is
    /// returned. Blocks.
    pub fn read_for_agent(
        &self,
        agent: &str,
        grants: &[crate::config::SecretGrant],
        name: &str,
    ) -> Result<SecretString, SecretsError> {
        let actor = Actor::agent(agent);
        let Some(g) = grants.iter().find(|g| g.secret.name == name) else {
            self.audit.record_durable_blocking(
                Draft::new(actor, "secret read", name, AuditOutcome::Denied)
                    .detail("not granted to this agent"),
            )?;
            return Err(SecretsError::NotGranted {
                agent: agent.to_owned(),
                name: name.to_owned(),
            });
        };
        let value = self.read_current(&g.secret.name, g.secret.env)?;
        let mac = self
            .log()
            .value_mac(value.expose().as_bytes())
            .unwrap_or_default();
        self.audit.record_durable_blocking(
            Draft::new(actor, "secret read", g.secret.to_string(), AuditOutcome::Ok).detail(mac),
        )?;
        Ok(value)
    }

    /// Every secret (or those of `env`) with metadata and a masked value.
    pub fn list(&self, env: Option<SecretEnv>) -> Result<Vec<SecretInfo>, SecretsError> {
        let store = self.store();
        let txn = store.begin_read()?;
        let heads = match txn.open_table(HEADS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(store.err("open secrets_heads", e).into()),
        };
        let versions = txn
            .open_table(VERSIONS)
            .map_err(|e| store.err("open secrets_versions", e))?;
        let mut out = Vec::new();
        for r in heads
            .iter()
            .map_err(|e| store.err("read secrets_heads", e))?
        {
            let (k, v) = r.map_err(|e| store.err("read secrets_heads", e))?;
            let (name, env_s) = k.value();
            let Ok(e) = env_s.parse::<SecretEnv>() else {
                continue;
            };
            if env.is_some_and(|want| want != e) {
                continue;
            }
            let count = versions
                .range((name, env_s, 0)..=(name, env_s, u32::MAX))
                .map_err(|e| store.err("read secrets_versions", e))?
                .count() as u32;
            // One tampered head marks its own row; the others still list.
            let (head, masked) =
                match check_head(v.value(), &versions, store, &self.head_key, name, e) {
                    Ok(head) => {
                        let masked = match self.read_version(name, e, None) {
                            Ok((_, s)) => mask(s.expose()),
                            Err(SecretsError::Tampered { .. }) => "<cannot decrypt>".into(),
                            Err(SecretsError::HeadTampered { .. }) => TAMPERED_MARK.into(),
                            Err(err) => return Err(err),
                        };
                        (head, masked)
                    }
                    Err(SecretsError::HeadTampered { .. }) => {
                        (split_head(v.value())?.0, TAMPERED_MARK.into())
                    }
                    Err(err) => return Err(err),
                };
            out.push(SecretInfo {
                name: name.to_owned(),
                env: e,
                version: head.current,
                versions: count,
                masked,
                created_ms: head.created_ms,
                updated_ms: head.updated_ms,
                updated_by: head.updated_by,
            });
        }
        Ok(out)
    }

    /// Which version of each secret is current, and when it last changed:
    /// `(name, env) -> (version, updated_ms)`. Reads no value (rotation
    /// pushes compare two of these). A head that fails authentication fails
    /// the whole call (a reload is refused and keeps the old state).
    pub fn heads(&self) -> Result<Heads, SecretsError> {
        let store = self.store();
        let txn = store.begin_read()?;
        let heads = match txn.open_table(HEADS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(BTreeMap::new()),
            Err(e) => return Err(store.err("open secrets_heads", e).into()),
        };
        let versions = txn
            .open_table(VERSIONS)
            .map_err(|e| store.err("open secrets_versions", e))?;
        let mut out = BTreeMap::new();
        for r in heads
            .iter()
            .map_err(|e| store.err("read secrets_heads", e))?
        {
            let (k, v) = r.map_err(|e| store.err("read secrets_heads", e))?;
            let (name, env_s) = k.value();
            let Ok(env) = env_s.parse::<SecretEnv>() else {
                continue;
            };
            let head = check_head(v.value(), &versions, store, &self.head_key, name, env)?;
            out.insert((name.to_owned(), env), (head.current, head.updated_ms));
        }
        Ok(out)
    }

    /// `(current version, updated_ms)` of each of `secrets` (`None`: not
    /// set), read in one snapshot; only these heads are read and checked.
    pub fn heads_of<'a>(
        &self,
        secrets: impl IntoIterator<Item = (&'a str, SecretEnv)>,
    ) -> Result<Vec<Option<(u32, u64)>>, SecretsError> {
        let store = self.store();
        let txn = store.begin_read()?;
        let heads = match txn.open_table(HEADS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => {
                return Ok(secrets.into_iter().map(|_| None).collect());
            }
            Err(e) => return Err(store.err("open secrets_heads", e).into()),
        };
        let versions = txn
            .open_table(VERSIONS)
            .map_err(|e| store.err("open secrets_versions", e))?;
        secrets
            .into_iter()
            .map(|(name, env)| {
                match load_head(&heads, &versions, store, &self.head_key, name, env) {
                    Ok(h) => Ok(Some((h.current, h.updated_ms))),
                    Err(SecretsError::NotFound { .. }) => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .collect()
    }

    /// Every current value (of `env`, or all) with its metadata, for export;
    /// records one read entry per secret (with an HMAC of the value) durably
    /// before returning. Blocks.
    pub fn read_all(
        &self,
        actor: &Actor,
        action: &str,
        env: Option<SecretEnv>,
    ) -> Result<Vec<(SecretInfo, SecretString)>, SecretsError> {
        let mut out = Vec::new();
        for mut info in self.list(env)? {
            let (_, s) = self.read_version(&info.name, info.env, Some(info.version))?;
            info.masked = mask(s.expose());
            out.push((info, s));
        }
        self.log().write(|_, app| {
            for (info, s) in &out {
                let mac = app.value_mac(s.expose().as_bytes()).unwrap_or_default();
                app.append(
                    Draft::new(
                        actor.clone(),
                        action,
                        target(&info.name, info.env),
                        AuditOutcome::Ok,
                    )
                    .detail(format!("version {} {mac}", info.version)),
                )?;
            }
            Ok::<_, SecretsError>(())
        })?;
        Ok(out)
    }

    /// The kept versions of `name@env`, oldest first.
    pub fn versions(
        &self,
        name: &str,
        env: SecretEnv,
    ) -> Result<Vec<SecretVersionInfo>, SecretsError> {
        let store = self.store();
        let txn = store.begin_read()?;
        let (heads, versions) = match (txn.open_table(HEADS), txn.open_table(VERSIONS)) {
            (Ok(h), Ok(v)) => (h, v),
            _ => {
                return Err(SecretsError::NotFound {
                    name: name.into(),
                    env,
                });
            }
        };
        let head = load_head(&heads, &versions, store, &self.head_key, name, env)?;
        let mut out = Vec::new();
        for r in versions
            .range((name, env.as_str(), 0)..=(name, env.as_str(), u32::MAX))
            .map_err(|e| store.err("read secrets_versions", e))?
        {
            let (k, v) = r.map_err(|e| store.err("read secrets_versions", e))?;
            let rec: VersionRecord = dec(v.value(), "secret version")?;
            let version = k.value().2;
            out.push(SecretVersionInfo {
                version,
                created_ms: rec.created_ms,
                created_by: rec.created_by,
                current: version == head.current,
            });
        }
        Ok(out)
    }

    /// Makes the value of kept `version` current again by storing it as a
    /// NEW version (as Vault KV v2's rollback does); returns that version.
    /// Never moving `current` backwards is what keeps head records
    /// replay-proof: a head from before the rollback names a `next` that a
    /// stored version has reached, so it is refused.
    pub fn rollback(
        &self,
        actor: &Actor,
        name: &str,
        env: SecretEnv,
        version: u32,
    ) -> Result<u32, SecretsError> {
        // It must still open: never roll back to something unreadable.
        let (_, value) = self.read_version(name, env, Some(version))?;
        let un = self.unlocked.read().expect("kek lock");
        let store = self.store();
        self.log().write(|txn, app| {
            let from = {
                let heads = txn
                    .open_table(HEADS)
                    .map_err(|e| store.err("open secrets_heads", e))?;
                let versions = txn
                    .open_table(VERSIONS)
                    .map_err(|e| store.err("open secrets_versions", e))?;
                load_head(&heads, &versions, store, &self.head_key, name, env)?.current
            };
            let new = self.put_in(txn, &un, actor, name, env, value.expose(), None)?;
            app.append(
                Draft::new(
                    actor.clone(),
                    "secrets rollback",
                    target(name, env),
                    AuditOutcome::Ok,
                )
                .detail(format!(
                    "version {from} -> {new} (the value of version {version})"
                )),
            )?;
            Ok(new)
        })
    }

    /// Removes `name@env` and every kept version.
    pub fn remove(&self, actor: &Actor, name: &str, env: SecretEnv) -> Result<u32, SecretsError> {
        let store = self.store();
        self.log().write(|txn, app| {
            let mut heads = txn
                .open_table(HEADS)
                .map_err(|e| store.err("open secrets_heads", e))?;
            let mut versions = txn
                .open_table(VERSIONS)
                .map_err(|e| store.err("open secrets_versions", e))?;
            if heads
                .remove((name, env.as_str()))
                .map_err(|e| store.err("write secrets_heads", e))?
                .is_none()
            {
                return Err(SecretsError::NotFound {
                    name: name.into(),
                    env,
                });
            }
            let mut n = 0;
            let keys: Vec<u32> = versions
                .range((name, env.as_str(), 0)..=(name, env.as_str(), u32::MAX))
                .map_err(|e| store.err("read secrets_versions", e))?
                .filter_map(|r| r.ok().map(|(k, _)| k.value().2))
                .collect();
            for v in keys {
                versions
                    .remove((name, env.as_str(), v))
                    .map_err(|e| store.err("write secrets_versions", e))?;
                n += 1;
            }
            app.append(
                Draft::new(
                    actor.clone(),
                    "secrets rm",
                    target(name, env),
                    AuditOutcome::Ok,
                )
                .detail(format!("{n} versions removed")),
            )?;
            Ok(n)
        })
    }

    /// Gives every head record written before heads were authenticated its
    /// MAC, and reseals the key-check record with the marker saying every
    /// head now has one; one transaction, one audit entry. Called once at
    /// open for such a store (see [`Unlock::heads_authenticated`]). A legacy
    /// head that already points below an existing version is left without a
    /// MAC (so reading it is refused) and counted in the entry. Returns how
    /// many heads were given a MAC.
    pub fn upgrade_heads(&self, actor: &Actor) -> Result<usize, SecretsError> {
        // The upgrade happens once per store. If the trail already holds it,
        // the legacy marker was put back from an older copy of the key-check
        // record, and upgrading again would authenticate heads stripped and
        // edited since: refuse. (Deleting that entry too breaks the audit
        // chain, which `ironctl audit verify` reports.)
        let mut after = None;
        loop {
            let page = self.log().entries(after, 4096)?;
            let Some(last) = page.last() else { break };
            after = Some(last.seq);
            if page.iter().any(|e| e.action == UPGRADE_ACTION) {
                return Err(SecretsError::Damaged(REPLAYED_MARKER.to_owned()));
            }
        }
        let un = self.unlocked.read().expect("kek lock");
        let store = self.store();
        self.log().write(|txn, app| {
            let mut heads = txn
                .open_table(HEADS)
                .map_err(|e| store.err("open secrets_heads", e))?;
            let versions = txn
                .open_table(VERSIONS)
                .map_err(|e| store.err("open secrets_versions", e))?;
            let mut rewrite = Vec::new();
            let mut refused = Vec::new();
            for r in heads
                .iter()
                .map_err(|e| store.err("read secrets_heads", e))?
            {
                let (k, v) = r.map_err(|e| store.err("read secrets_heads", e))?;
                let (name, env) = k.value();
                let (head, mac) = split_head(v.value())?;
                if mac.is_some() {
                    // Only an upgraded store has MAC'd heads, and the upgrade
                    // sets the marker in the same transaction: a legacy marker
                    // next to a MAC'd head means the key-check record was put
                    // back from an older copy (which would let stripped,
                    // edited heads be authenticated here). Refuse.
                    return Err(SecretsError::Damaged(format!(
                        "{REPLAYED_MARKER} ({name}@{env} carries a MAC)"
                    )));
                }
                let newer = versions
                    .range((name, env, head.next)..=(name, env, u32::MAX))
                    .map_err(|e| store.err("read secrets_versions", e))?
                    .next()
                    .is_some();
                if newer || head.current >= head.next {
                    refused.push(format!("{name}@{env}"));
                } else {
                    rewrite.push((name.to_owned(), env.to_owned(), head));
                }
            }
            for (name, env, head) in &rewrite {
                heads
                    .insert(
                        (name.as_str(), env.as_str()),
                        enc_head(&self.head_key, name, env, head).as_slice(),
                    )
                    .map_err(|e| store.err("write secrets_heads", e))?;
            }
            let mut keks = txn
                .open_table(KEKS)
                .map_err(|e| store.err("open secrets_keks", e))?;
            let mut rec: KekRecord = match keks
                .get(un.generation)
                .map_err(|e| store.err("read secrets_keks", e))?
            {
                Some(r) => dec(r.value(), "KEK record")?,
                None => {
                    return Err(SecretsError::Damaged(format!(
                        "KEK generation {} is missing",
                        un.generation
                    )));
                }
            };
            rec.check = crypto::seal(
                &un.kek,
                crypto::CHECK_PLAINTEXT_HEADS_MAC,
                &crypto::check_aad(un.generation),
            );
            keks.insert(un.generation, enc(&rec).as_slice())
                .map_err(|e| store.err("write secrets_keks", e))?;
            let mut detail = format!(
                "{} head records written before heads were authenticated given a MAC",
                rewrite.len()
            );
            if !refused.is_empty() {
                detail.push_str(&format!(
                    "; left unauthenticated (an existing version is at or above their next version, reads refused): {}",
                    refused.join(", ")
                ));
            }
            app.append(
                Draft::new(
                    actor.clone(),
                    UPGRADE_ACTION,
                    "secret heads",
                    if refused.is_empty() {
                        AuditOutcome::Ok
                    } else {
                        AuditOutcome::Failed
                    },
                )
                .detail(detail),
            )?;
            Ok(rewrite.len())
        })
    }

    /// Re-wraps every data key (and the audit key) under a KEK derived from
    /// `new_master`, in one transaction; returns how many DEKs were re-wrapped.
    pub fn rekey(&self, actor: &Actor, new_master: &MasterKey) -> Result<u64, SecretsError> {
        self.rekey_with(actor, new_master, &|_| {})
    }

    /// [`Vault::rekey`] calling `step` at each point (crash-point tests).
    pub fn rekey_with(
        &self,
        actor: &Actor,
        new_master: &MasterKey,
        step: &dyn Fn(RekeyStep),
    ) -> Result<u64, SecretsError> {
        let salt = crypto::random_salt();
        let new_kek =
            crypto::derive_kek(new_master.expose(), &salt).map_err(|_| SecretsError::Kdf)?;
        step(RekeyStep::Derived);
        // Writers of secrets wait; readers keep the old KEK until the commit.
        let mut un = self.unlocked.write().expect("kek lock");
        let store = self.store();
        let old_gen = un.generation;
        let new_gen = old_gen + 1;
        let n = self.log().write(|txn, app| {
            let mut keks = txn
                .open_table(KEKS)
                .map_err(|e| store.err("open secrets_keks", e))?;
            let old: KekRecord = match keks
                .get(old_gen)
                .map_err(|e| store.err("read secrets_keks", e))?
            {
                Some(r) => dec(r.value(), "KEK record")?,
                None => {
                    return Err(SecretsError::Damaged(format!(
                        "KEK generation {old_gen} is missing"
                    )));
                }
            };
            let audit_material =
                crypto::unwrap(&un.kek, &old.audit_key, &crypto::audit_key_aad(old_gen)).map_err(
                    |_| SecretsError::Damaged("the wrapped audit key does not open".into()),
                )?;
            let rec = KekRecord {
                salt: salt.to_vec(),
                check: crypto::seal(
                    &new_kek,
                    crypto::CHECK_PLAINTEXT_HEADS_MAC,
                    &crypto::check_aad(new_gen),
                ),
                audit_key: crypto::wrap(&new_kek, &audit_material, &crypto::audit_key_aad(new_gen)),
            };
            keks.insert(new_gen, enc(&rec).as_slice())
                .map_err(|e| store.err("write secrets_keks", e))?;
            step(RekeyStep::NewGenerationWritten);
            let mut versions = txn
                .open_table(VERSIONS)
                .map_err(|e| store.err("open secrets_versions", e))?;
            let keys: Vec<(String, String, u32)> = versions
                .iter()
                .map_err(|e| store.err("read secrets_versions", e))?
                .map(|r| {
                    r.map(|(k, _)| {
                        let (a, b, c) = k.value();
                        (a.to_owned(), b.to_owned(), c)
                    })
                })
                .collect::<Result<_, _>>()
                .map_err(|e| store.err("read secrets_versions", e))?;
            let total = keys.len();
            for (i, (name, env, version)) in keys.iter().enumerate() {
                if i == total / 2 {
                    step(RekeyStep::Halfway);
                }
                let mut rec: VersionRecord = {
                    let v = versions
                        .get((name.as_str(), env.as_str(), *version))
                        .map_err(|e| store.err("read secrets_versions", e))?
                        .ok_or_else(|| {
                            SecretsError::Damaged("a version vanished during rekey".into())
                        })?;
                    dec(v.value(), "secret version")?
                };
                let dek = crypto::unwrap(
                    &un.kek,
                    &rec.wrapped_dek,
                    &crypto::dek_aad(name, env, *version, rec.kek_gen),
                )
                .map_err(|_| SecretsError::Tampered {
                    name: name.clone(),
                    env: env.parse().unwrap_or(SecretEnv::Production),
                    version: *version,
                })?;
                rec.kek_gen = new_gen;
                rec.wrapped_dek = crypto::wrap(
                    &new_kek,
                    &dek,
                    &crypto::dek_aad(name, env, *version, new_gen),
                );
                versions
                    .insert(
                        (name.as_str(), env.as_str(), *version),
                        enc(&rec).as_slice(),
                    )
                    .map_err(|e| store.err("write secrets_versions", e))?;
            }
            step(RekeyStep::AllRewrapped);
            let mut meta = txn
                .open_table(META)
                .map_err(|e| store.err("open secrets_meta", e))?;
            meta.insert("current_gen", new_gen)
                .map_err(|e| store.err("write secrets_meta", e))?;
            keks.remove(old_gen)
                .map_err(|e| store.err("write secrets_keks", e))?;
            step(RekeyStep::Switched);
            app.append(
                Draft::new(
                    actor.clone(),
                    "secrets rekey",
                    "master key",
                    AuditOutcome::Ok,
                )
                .detail(format!(
                    "generation {old_gen} -> {new_gen}, {total} data keys re-wrapped"
                )),
            )?;
            Ok(total as u64)
        })?;
        un.generation = new_gen;
        un.kek = new_kek;
        step(RekeyStep::Committed);
        Ok(n)
    }
}

/// The audit action of the one-time head upgrade.
const UPGRADE_ACTION: &str = "secrets upgrade heads";

/// Why an upgrade is refused when the legacy marker cannot be genuine.
const REPLAYED_MARKER: &str = "the key-check record says secret heads are not authenticated yet, but this store was already upgraded: the record was put back from an older copy of the store; restore the state directory from a backup";

/// Rewrites a store the way the code before head authentication wrote it:
/// heads as bare `postcard(Head)` and the key-check record sealed over
/// [`crypto::CHECK_PLAINTEXT`] (legacy-upgrade tests).
#[cfg(test)]
pub(super) fn write_legacy(store: &Store, master: &MasterKey) {
    let txn = store.begin_write().unwrap();
    {
        let meta = txn.open_table(META).unwrap();
        let generation = meta.get("current_gen").unwrap().unwrap().value();
        let mut keks = txn.open_table(KEKS).unwrap();
        let mut rec: KekRecord =
            postcard::from_bytes(keks.get(generation).unwrap().unwrap().value()).unwrap();
        let kek = crypto::derive_kek(master.expose(), &rec.salt).unwrap();
        rec.check = crypto::seal(
            &kek,
            crypto::CHECK_PLAINTEXT,
            &crypto::check_aad(generation),
        );
        keks.insert(generation, enc(&rec).as_slice()).unwrap();
        let mut heads = txn.open_table(HEADS).unwrap();
        let all: Vec<((String, String), Head)> = heads
            .iter()
            .unwrap()
            .map(|r| {
                let (k, v) = r.unwrap();
                let (n, e) = k.value();
                (
                    (n.to_owned(), e.to_owned()),
                    split_head(v.value()).unwrap().0,
                )
            })
            .collect();
        for ((n, e), h) in all {
            heads
                .insert((n.as_str(), e.as_str()), enc(&h).as_slice())
                .unwrap();
        }
    }
    txn.commit().unwrap();
}

impl From<AuditError> for SecretsError {
    fn from(e: AuditError) -> Self {
        SecretsError::Audit(e)
    }
}
