//! Reversible PII tokens: `[EMAIL:tok_…]` stands for a value whose original is
//! kept encrypted (AES-256-GCM) in the daemon's redb store, so an admin can reveal
//! it later (`ironctl pii reveal TOKEN`).
//!
//! - Table `pii_tokens` (component `pii_vault`, schema version
//!   [`SCHEMA_VERSION`]): token → `kind_len u8 | kind | nonce (12) | ciphertext`,
//!   with [`SEALED_BY_MASTER`] set in the first byte when the master-derived key
//!   sealed it. The kind is stored in clear (it is not personal); the AEAD's
//!   associated data binds the token, the kind and the key used to the
//!   ciphertext, so a row copied under another token does not decrypt.
//! - The key: with a master key (secrets enabled), one derived from the
//!   secrets store's key material ([`crate::secrets::crypto::pii_token_key`]):
//!   never on disk, opened only by the master key, unchanged by a rekey.
//!   Without one, 256 random bits created on first use in
//!   `STATE_DIR/pii-vault.key` (mode 0600, refused if group/world-readable),
//!   loaded lazily, so a daemon that never tokenizes has no key file. Each row
//!   says which key sealed it (the high bit of its first byte), so a daemon
//!   given a master key after running without one still reveals the older
//!   tokens, and [`PiiVault::seal_file_tokens_under_master`] (run at start)
//!   re-seals them under the master key and deletes the key file.
//! - Writes are batched: a [`Minter`] encrypts as the redactor asks for tokens
//!   and [`Minter::commit`] writes them all in one durable transaction, before
//!   the redacted text is released (a token that could not be stored is never
//!   sent: the caller fails closed).
//! - Every reveal goes through [`record_reveal`], the one place the audit trail
//!   hooks into.

use crate::store::{Store, StoreError};
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use ironcage_shared::pii::{Kind, TokenizeError, Tokenizer};
use rand::RngCore;
use redb::{ReadableTable, TableDefinition};
use std::fmt;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use zeroize::Zeroizing;

/// Version of the `pii_tokens` table layout.
pub const SCHEMA_VERSION: u32 = 1;
/// The key file inside the state directory.
pub const KEY_FILE: &str = "pii-vault.key";
/// Token prefix (`tok_` + 24 hex digits: 96 random bits).
pub const TOKEN_PREFIX: &str = "tok_";
const TOKEN_HEX: usize = 24;

const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("pii_tokens");

/// Set in a row's first byte (the kind name's length, at most 32) when the
/// master-derived key sealed the row; clear for the key file.
pub const SEALED_BY_MASTER: u8 = 0x80;

/// Why the vault could not do something. Never holds a value.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "cannot read the PII token key {}: {source}; restore it (tokens minted with it cannot be revealed without it) or fix its permissions for the daemon's user",
        path.display()
    )]
    KeyUnreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the PII token key {} is {len} bytes, not 32; restore it from a backup (tokens minted with it cannot be revealed without it)",
        path.display()
    )]
    KeyBadLength { path: PathBuf, len: usize },
    #[error(
        "the PII token key {} is readable by group or others (mode {mode:o}); run chmod 600 on it",
        path.display()
    )]
    KeyTooOpen { path: PathBuf, mode: u32 },
    #[error("cannot create the PII token key {}: {source}", path.display())]
    KeyCreate {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not shaped like a token. The input is not echoed: it may be a value.
    #[error(
        "that is not a PII token; tokens look like tok_ followed by 24 hex digits, as in [EMAIL:tok_0123456789abcdef01234567]"
    )]
    BadToken,
    #[error("no PII token {token} is stored in this daemon's state directory")]
    NotFound { token: String },
    #[error(
        "PII token {token} cannot be decrypted with the current key (the key file was replaced, or the row is damaged)"
    )]
    Decrypt { token: String },
    #[error(
        "PII token {token} is sealed with the secrets master key, and ironcaged runs without one; start it with its master key to reveal the token"
    )]
    NeedsMasterKey { token: String },
    #[error("PII token {token}: its stored row is damaged")]
    BadRow { token: String },
    #[error("cannot encrypt a PII value")]
    Encrypt,
}

/// The token store: table in the daemon's redb file; key derived from the
/// master key, or in the state directory without one.
pub struct PiiVault {
    store: Arc<Store>,
    key_path: PathBuf,
    /// With a master key: the cipher new tokens are sealed with.
    master: Option<Arc<Aes256Gcm>>,
    /// The key file's cipher, loaded on first use.
    file: Mutex<Option<Arc<Aes256Gcm>>>,
}

impl fmt::Debug for PiiVault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PiiVault")
            .field("key_path", &self.key_path)
            .field("master_key", &self.master.is_some())
            .field(
                "key_file_loaded",
                &self.file.lock().is_ok_and(|c| c.is_some()),
            )
            .finish()
    }
}

/// What [`PiiVault::seal_file_tokens_under_master`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resealed {
    /// Tokens now sealed with the master-derived key.
    pub moved: usize,
    /// Tokens the key file could not open (left as they were).
    pub left: usize,
    /// Whether the key file was deleted (nothing is left that needs it).
    pub key_removed: bool,
}

/// A revealed original. Printed as `[REDACTED]`.
pub struct Revealed {
    pub kind: String,
    pub value: Zeroizing<String>,
}

impl fmt::Debug for Revealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Revealed")
            .field("kind", &self.kind)
            .field("value", &"[REDACTED]")
            .finish()
    }
}

impl PiiVault {
    /// Creates the table and claims its schema version (the key is loaded on
    /// first use).
    pub fn open(store: Arc<Store>, state_dir: &Path) -> Result<PiiVault, VaultError> {
        let txn = store.begin_write()?;
        let before = store.claim_schema(&txn, "pii_vault", SCHEMA_VERSION)?;
        if before == Some(SCHEMA_VERSION) {
            txn.abort()
                .map_err(|e| store.err("abort the PII vault schema check", e))?;
        } else {
            txn.open_table(TOKENS)
                .map_err(|e| store.err("create the PII token table", e))?;
            store.commit(txn, "create the PII token table")?;
        }
        Ok(PiiVault {
            store,
            key_path: state_dir.join(KEY_FILE),
            master: None,
            file: Mutex::new(None),
        })
    }

    /// Seals new tokens with `key` (the secrets store's
    /// [`crate::secrets::Secrets::pii_token_key`]) instead of the key file.
    pub fn with_master_key(mut self, key: &crate::secrets::crypto::Key) -> PiiVault {
        self.master = Some(Arc::new(
            Aes256Gcm::new_from_slice(&key.expose()[..]).expect("32-byte key"),
        ));
        self
    }

    /// With a master key and a key file: re-seals every token the key file
    /// sealed under the master-derived key, in one durable transaction, then
    /// deletes the key file, so no key to the stored originals is left on
    /// disk. `None` when there is nothing to do. Idempotent; a token the key
    /// file cannot open is left as it is, and the file kept for it. Blocking:
    /// run at start, before the gateway mints.
    pub fn seal_file_tokens_under_master(&self) -> Result<Option<Resealed>, VaultError> {
        let Some(master) = &self.master else {
            return Ok(None);
        };
        match std::fs::symlink_metadata(&self.key_path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            _ => {}
        }
        let file = self.file_cipher(false)?;
        let store = &self.store;
        let txn = store.begin_write()?;
        let mut left = 0usize;
        let moved = {
            let mut table = txn
                .open_table(TOKENS)
                .map_err(|e| store.err("open the PII token table", e))?;
            let mut resealed: Vec<(String, Vec<u8>)> = Vec::new();
            for entry in table
                .iter()
                .map_err(|e| store.err("read the PII token table", e))?
            {
                let (token, row) = entry.map_err(|e| store.err("read the PII token table", e))?;
                let token = token.value();
                let Ok(r) = Row::parse(row.value()) else {
                    left += 1;
                    continue;
                };
                if r.by_master {
                    continue;
                }
                match r.open(&file, token) {
                    Some(plain) => resealed
                        .push((token.to_owned(), seal(master, true, token, r.kind, &plain)?)),
                    None => left += 1,
                }
            }
            for (token, row) in &resealed {
                table
                    .insert(token.as_str(), row.as_slice())
                    .map_err(|e| store.err("write a PII token", e))?;
            }
            resealed.len()
        };
        if moved > 0 {
            store.commit(txn, "re-seal PII tokens under the master key")?;
        } else {
            txn.abort()
                .map_err(|e| store.err("abort the PII token re-seal", e))?;
        }
        let key_removed = left == 0;
        if key_removed {
            std::fs::remove_file(&self.key_path).map_err(|source| VaultError::KeyUnreadable {
                path: self.key_path.clone(),
                source,
            })?;
            if let Some(dir) = self.key_path.parent()
                && let Ok(d) = std::fs::File::open(dir)
            {
                let _ = d.sync_all();
            }
            *self.file.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
        Ok(Some(Resealed {
            moved,
            left,
            key_removed,
        }))
    }

    /// The key file's cipher, loading the key (or creating it, when
    /// `create`) on first use.
    fn file_cipher(&self, create: bool) -> Result<Arc<Aes256Gcm>, VaultError> {
        let mut slot = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let key = load_or_create_key(&self.key_path, create)?;
        let cipher = Arc::new(Aes256Gcm::new_from_slice(&key[..]).map_err(|_| {
            VaultError::KeyBadLength {
                path: self.key_path.clone(),
                len: key.len(),
            }
        })?);
        *slot = Some(cipher.clone());
        Ok(cipher)
    }

    /// A tokenizer for one text (or one request): tokens are minted in memory
    /// and stored by [`Minter::commit`].
    pub fn minter(self: &Arc<Self>) -> Result<Minter, VaultError> {
        let (cipher, by_master) = match &self.master {
            Some(m) => (m.clone(), true),
            None => (self.file_cipher(true)?, false),
        };
        Ok(Minter {
            vault: self.clone(),
            cipher,
            by_master,
            rows: Vec::new(),
        })
    }

    /// The original behind `token` (`tok_…`, or the whole `[KIND:tok_…]`).
    /// Blocking (a redb read): call from a blocking thread.
    pub fn reveal(&self, token: &str) -> Result<Revealed, VaultError> {
        let token = normalize_token(token)?;
        let txn = self.store.begin_read()?;
        let table = txn
            .open_table(TOKENS)
            .map_err(|e| self.store.err("open the PII token table", e))?;
        let row = table
            .get(token.as_str())
            .map_err(|e| self.store.err("read the PII token table", e))?
            .ok_or_else(|| VaultError::NotFound {
                token: token.clone(),
            })?;
        let row = row.value();
        let bad = || VaultError::BadRow {
            token: token.clone(),
        };
        let r = Row::parse(row).map_err(|()| bad())?;
        let cipher = if r.by_master {
            self.master
                .clone()
                .ok_or_else(|| VaultError::NeedsMasterKey {
                    token: token.clone(),
                })?
        } else {
            self.file_cipher(false)?
        };
        let plain = r.open(&cipher, &token).ok_or_else(|| VaultError::Decrypt {
            token: token.clone(),
        })?;
        let value = String::from_utf8(plain.to_vec()).map_err(|e| {
            let mut b = e.into_bytes();
            zeroize::Zeroize::zeroize(&mut b);
            bad()
        })?;
        Ok(Revealed {
            kind: r.kind.to_owned(),
            value: Zeroizing::new(value),
        })
    }
}

/// A stored row, split (see the module docs for the layout).
struct Row<'a> {
    by_master: bool,
    kind: &'a str,
    nonce: &'a [u8],
    ct: &'a [u8],
}

impl<'a> Row<'a> {
    fn parse(row: &'a [u8]) -> Result<Row<'a>, ()> {
        let (&first, rest) = row.split_first().ok_or(())?;
        let klen = usize::from(first & !SEALED_BY_MASTER);
        if rest.len() < klen + 12 {
            return Err(());
        }
        Ok(Row {
            by_master: first & SEALED_BY_MASTER != 0,
            kind: std::str::from_utf8(&rest[..klen]).map_err(|_| ())?,
            nonce: &rest[klen..klen + 12],
            ct: &rest[klen + 12..],
        })
    }

    /// The plaintext, or `None` when `cipher` does not open the row.
    fn open(&self, cipher: &Aes256Gcm, token: &str) -> Option<Zeroizing<Vec<u8>>> {
        let aad = aad(token, self.kind, self.by_master);
        cipher
            .decrypt(
                Nonce::from_slice(self.nonce),
                Payload {
                    msg: self.ct,
                    aad: &aad,
                },
            )
            .ok()
            .map(Zeroizing::new)
    }
}

/// A row holding `value` sealed with `cipher` under a fresh nonce.
fn seal(
    cipher: &Aes256Gcm,
    by_master: bool,
    token: &str,
    kind: &str,
    value: &[u8],
) -> Result<Vec<u8>, VaultError> {
    let klen = u8::try_from(kind.len())
        .ok()
        .filter(|n| n & SEALED_BY_MASTER == 0)
        .ok_or(VaultError::Encrypt)?;
    let mut nonce = [0u8; 12];
    rand::rng().fill_bytes(&mut nonce);
    let aad = aad(token, kind, by_master);
    let ct = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: value,
                aad: &aad,
            },
        )
        .map_err(|_| VaultError::Encrypt)?;
    let mut row = Vec::with_capacity(1 + kind.len() + 12 + ct.len());
    row.push(if by_master {
        klen | SEALED_BY_MASTER
    } else {
        klen
    });
    row.extend_from_slice(kind.as_bytes());
    row.extend_from_slice(&nonce);
    row.extend_from_slice(&ct);
    Ok(row)
}

/// Records that `uid` revealed `token` (or tried to): the one call site the audit
/// trail hooks into. Never the value.
pub fn record_reveal(uid: u32, token: &str, outcome: Result<&str, &str>) {
    match outcome {
        Ok(kind) => {
            tracing::warn!(target: "audit", event = "pii_reveal", uid, token, kind, "PII token revealed")
        }
        Err(why) => {
            tracing::warn!(target: "audit", event = "pii_reveal_failed", uid, token, why, "PII token reveal failed")
        }
    }
}

/// `input` as it may appear in a log: the token when it is shaped like one,
/// otherwise a placeholder (an operator may paste anything, even a value).
pub fn token_for_log(input: &str) -> String {
    normalize_token(input).unwrap_or_else(|_| "(not a token)".to_owned())
}

/// `token NUL kind`, plus `NUL master` for rows the master-derived key seals
/// (so the key a row was sealed with is authenticated too).
fn aad(token: &str, kind: &str, by_master: bool) -> Vec<u8> {
    let mut a = Vec::with_capacity(token.len() + kind.len() + 8);
    a.extend_from_slice(token.as_bytes());
    a.push(0);
    a.extend_from_slice(kind.as_bytes());
    if by_master {
        a.extend_from_slice(b"\0master");
    }
    a
}

/// `tok_…` from `tok_…`, `[EMAIL:tok_…]` or `EMAIL:tok_…`.
fn normalize_token(input: &str) -> Result<String, VaultError> {
    let t = input.trim();
    let t = t.strip_prefix('[').unwrap_or(t);
    let t = t.strip_suffix(']').unwrap_or(t);
    let t = t.rsplit_once(':').map_or(t, |(_, tok)| tok);
    let ok = t
        .strip_prefix(TOKEN_PREFIX)
        .is_some_and(|h| h.len() == TOKEN_HEX && h.bytes().all(|b| b.is_ascii_hexdigit()));
    if !ok {
        return Err(VaultError::BadToken);
    }
    Ok(t.to_ascii_lowercase())
}

fn load_or_create_key(path: &Path, create: bool) -> Result<Zeroizing<Vec<u8>>, VaultError> {
    match std::fs::OpenOptions::new().read(true).open(path) {
        Ok(mut f) => {
            let meta = f.metadata().map_err(|source| VaultError::KeyUnreadable {
                path: path.to_owned(),
                source,
            })?;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(VaultError::KeyTooOpen {
                    path: path.to_owned(),
                    mode,
                });
            }
            let mut key = Zeroizing::new(Vec::with_capacity(33));
            Read::by_ref(&mut f)
                .take(33)
                .read_to_end(&mut key)
                .map_err(|source| VaultError::KeyUnreadable {
                    path: path.to_owned(),
                    source,
                })?;
            if key.len() != 32 {
                return Err(VaultError::KeyBadLength {
                    path: path.to_owned(),
                    len: meta.len() as usize,
                });
            }
            Ok(key)
        }
        Err(e) if create && e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = Zeroizing::new(vec![0u8; 32]);
            rand::rng().fill_bytes(&mut key);
            let create = |source| VaultError::KeyCreate {
                path: path.to_owned(),
                source,
            };
            // Written to a temporary file, then linked in place: a crash never
            // leaves a short key, and two creators cannot both win.
            let tmp = path.with_extension("key.tmp");
            let _ = std::fs::remove_file(&tmp);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(create)?;
            f.write_all(&key).map_err(create)?;
            f.sync_all().map_err(create)?;
            drop(f);
            let linked = std::fs::hard_link(&tmp, path);
            let _ = std::fs::remove_file(&tmp);
            match linked {
                Ok(()) => {
                    if let Some(dir) = path.parent()
                        && let Ok(d) = std::fs::File::open(dir)
                    {
                        let _ = d.sync_all();
                    }
                    tracing::info!(path = %path.display(), "created the PII token key");
                    Ok(key)
                }
                // Someone else created it first: use theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    load_or_create_key(path, false)
                }
                Err(e) => Err(create(e)),
            }
        }
        Err(source) => Err(VaultError::KeyUnreadable {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Mints tokens for one text or request; nothing is stored until
/// [`Minter::commit`].
pub struct Minter {
    vault: Arc<PiiVault>,
    cipher: Arc<Aes256Gcm>,
    /// Whether `cipher` is the master-derived key.
    by_master: bool,
    rows: Vec<(String, Vec<u8>)>,
}

impl fmt::Debug for Minter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Minter")
            .field("pending", &self.rows.len())
            .finish()
    }
}

impl Minter {
    /// Tokens minted and not yet stored.
    pub fn pending(&self) -> usize {
        self.rows.len()
    }

    /// Stores every minted token in one durable transaction. Blocking: call
    /// from a blocking thread.
    pub fn commit(self) -> Result<usize, VaultError> {
        if self.rows.is_empty() {
            return Ok(0);
        }
        let store = &self.vault.store;
        let txn = store.begin_write()?;
        {
            let mut t = txn
                .open_table(TOKENS)
                .map_err(|e| store.err("open the PII token table", e))?;
            for (token, row) in &self.rows {
                t.insert(token.as_str(), row.as_slice())
                    .map_err(|e| store.err("write a PII token", e))?;
            }
        }
        store.commit(txn, "store PII tokens")?;
        Ok(self.rows.len())
    }
}

impl Tokenizer for Minter {
    fn tokenize(&mut self, kind: &Kind, value: &str) -> Result<String, TokenizeError> {
        let mut raw = [0u8; TOKEN_HEX / 2];
        rand::rng().fill_bytes(&mut raw);
        let mut token = String::with_capacity(TOKEN_PREFIX.len() + TOKEN_HEX);
        token.push_str(TOKEN_PREFIX);
        for b in raw {
            token.push_str(&format!("{b:02x}"));
        }
        let row = seal(
            &self.cipher,
            self.by_master,
            &token,
            kind.name(),
            value.as_bytes(),
        )
        .map_err(|e| TokenizeError(e.to_string()))?;
        self.rows.push((token.clone(), row));
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::crypto::Key;
    use ironcage_shared::pii::{RedactStyle, Scanner, redact};

    fn vault(dir: &Path) -> Arc<PiiVault> {
        let store = Arc::new(Store::open(dir).unwrap());
        Arc::new(PiiVault::open(store, dir).unwrap())
    }

    fn vault_with(dir: &Path, master: &Key) -> Arc<PiiVault> {
        let store = Arc::new(Store::open(dir).unwrap());
        Arc::new(PiiVault::open(store, dir).unwrap().with_master_key(master))
    }

    fn mint(v: &Arc<PiiVault>, value: &str) -> String {
        let mut m = v.minter().unwrap();
        let t = m.tokenize(&Kind::Email, value).unwrap();
        m.commit().unwrap();
        t
    }

    fn first_byte(v: &PiiVault, token: &str) -> u8 {
        let txn = v.store.begin_read().unwrap();
        let t = txn.open_table(TOKENS).unwrap();
        t.get(token).unwrap().unwrap().value()[0]
    }

    #[test]
    fn with_a_master_key_no_key_file_is_written_and_only_that_key_reveals() {
        let dir = tempfile::tempdir().unwrap();
        let k = Key::random();
        let v = vault_with(dir.path(), &k);
        let t = mint(&v, "a@example.com");
        assert!(!dir.path().join(KEY_FILE).exists());
        assert_eq!(first_byte(&v, &t), SEALED_BY_MASTER | 5);
        assert_eq!(v.reveal(&t).unwrap().value.as_str(), "a@example.com");
        drop(v);
        // Restarted with the same key: still revealed.
        let v = vault_with(dir.path(), &k);
        assert_eq!(v.reveal(&t).unwrap().value.as_str(), "a@example.com");
        drop(v);
        // Without a master key: says which key it needs, creates no key file.
        let e = vault(dir.path()).reveal(&t).unwrap_err();
        assert!(matches!(e, VaultError::NeedsMasterKey { .. }), "{e}");
        assert!(e.to_string().contains("master key"), "{e}");
        assert!(!dir.path().join(KEY_FILE).exists());
        // Another master key does not open it.
        let e = vault_with(dir.path(), &Key::random())
            .reveal(&t)
            .unwrap_err();
        assert!(matches!(e, VaultError::Decrypt { .. }), "{e}");
    }

    #[test]
    fn a_master_key_re_seals_the_key_files_tokens_and_deletes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (t1, t2) = {
            let v = vault(dir.path());
            (mint(&v, "one@example.com"), mint(&v, "two@example.com"))
        };
        let key_file = dir.path().join(KEY_FILE);
        assert!(key_file.exists());
        let k = Key::random();
        let v = vault_with(dir.path(), &k);
        // Before the re-seal, a key-file token still reveals.
        assert_eq!(v.reveal(&t1).unwrap().value.as_str(), "one@example.com");
        let t3 = mint(&v, "three@example.com");
        assert_eq!(
            v.seal_file_tokens_under_master().unwrap(),
            Some(Resealed {
                moved: 2,
                left: 0,
                key_removed: true
            })
        );
        assert!(!key_file.exists());
        for (t, want) in [
            (&t1, "one@example.com"),
            (&t2, "two@example.com"),
            (&t3, "three@example.com"),
        ] {
            assert_eq!(first_byte(&v, t) & SEALED_BY_MASTER, SEALED_BY_MASTER);
            assert_eq!(v.reveal(t).unwrap().value.as_str(), want);
        }
        drop(v);
        // Nothing left to do on the next start.
        let v = vault_with(dir.path(), &k);
        assert_eq!(v.seal_file_tokens_under_master().unwrap(), None);
        assert_eq!(v.reveal(&t2).unwrap().value.as_str(), "two@example.com");
        drop(v);
        let e = vault(dir.path()).reveal(&t1).unwrap_err();
        assert!(matches!(e, VaultError::NeedsMasterKey { .. }), "{e}");
    }

    #[test]
    fn a_token_the_key_file_cannot_open_keeps_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (bad, good) = {
            let v = vault(dir.path());
            let bad = mint(&v, "bad@example.com");
            let good = mint(&v, "good@example.com");
            // Damage one row's ciphertext.
            let txn = v.store.begin_write().unwrap();
            {
                let mut t = txn.open_table(TOKENS).unwrap();
                let mut row = t.get(bad.as_str()).unwrap().unwrap().value().to_vec();
                *row.last_mut().unwrap() ^= 1;
                t.insert(bad.as_str(), row.as_slice()).unwrap();
            }
            txn.commit().unwrap();
            (bad, good)
        };
        let v = vault_with(dir.path(), &Key::random());
        assert_eq!(
            v.seal_file_tokens_under_master().unwrap(),
            Some(Resealed {
                moved: 1,
                left: 1,
                key_removed: false
            })
        );
        assert!(dir.path().join(KEY_FILE).exists());
        assert_eq!(v.reveal(&good).unwrap().value.as_str(), "good@example.com");
        assert!(matches!(v.reveal(&bad), Err(VaultError::Decrypt { .. })));
        // A key file that cannot be read fails the re-seal clearly and changes nothing.
        drop(v);
        std::fs::set_permissions(
            dir.path().join(KEY_FILE),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let v = vault_with(dir.path(), &Key::random());
        let e = v.seal_file_tokens_under_master().unwrap_err();
        assert!(matches!(e, VaultError::KeyTooOpen { .. }), "{e}");
    }

    #[test]
    fn tokens_round_trip_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let text = "write to jane.doe@example.com today";
        let token = {
            let v = vault(dir.path());
            let mut m = v.minter().unwrap();
            let f = Scanner::default().scan(text);
            let out = redact(text, &f, RedactStyle::Token(&mut m)).unwrap();
            assert!(out.starts_with("write to [EMAIL:tok_"), "{out}");
            assert!(!out.contains("jane"));
            assert_eq!(m.commit().unwrap(), 1);
            let token = out
                .split("[EMAIL:")
                .nth(1)
                .unwrap()
                .split(']')
                .next()
                .unwrap()
                .to_owned();
            let r = v.reveal(&token).unwrap();
            assert_eq!(
                (r.kind.as_str(), r.value.as_str()),
                ("email", "jane.doe@example.com")
            );
            assert!(!format!("{r:?} {v:?}").contains("jane"));
            token
        };
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Reopened: same key, same table.
        let v = vault(dir.path());
        let r = v.reveal(&format!("[EMAIL:{token}]")).unwrap();
        assert_eq!(r.value.as_str(), "jane.doe@example.com");
        assert!(matches!(
            v.reveal("tok_000000000000000000000000"),
            Err(VaultError::NotFound { .. })
        ));
        let e = v.reveal("jane.doe@example.com").unwrap_err();
        assert!(matches!(e, VaultError::BadToken));
        assert!(!e.to_string().contains("jane"), "{e}");
    }

    #[test]
    fn a_replaced_or_open_key_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let token = {
            let v = vault(dir.path());
            let mut m = v.minter().unwrap();
            let t = m.tokenize(&Kind::Email, "a@example.com").unwrap();
            m.commit().unwrap();
            t
        };
        let key = dir.path().join(KEY_FILE);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = vault(dir.path()).reveal(&token).unwrap_err();
        assert!(matches!(e, VaultError::KeyTooOpen { .. }), "{e}");
        assert!(e.to_string().contains("chmod 600"), "{e}");
        std::fs::remove_file(&key).unwrap();
        let e = vault(dir.path()).reveal(&token).unwrap_err();
        assert!(matches!(e, VaultError::KeyUnreadable { .. }), "{e}");
        // A new key (minted on the next tokenize) cannot open the old rows.
        let v = vault(dir.path());
        v.minter().unwrap();
        let e = v.reveal(&token).unwrap_err();
        assert!(matches!(e, VaultError::Decrypt { .. }), "{e}");
        drop(v);
        std::fs::remove_file(&key).unwrap();
        std::fs::write(&key, b"short").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = vault(dir.path()).minter().unwrap_err();
        assert!(matches!(e, VaultError::KeyBadLength { len: 5, .. }), "{e}");
    }

    #[test]
    fn nothing_is_stored_without_commit() {
        let dir = tempfile::tempdir().unwrap();
        let v = vault(dir.path());
        let mut m = v.minter().unwrap();
        let t = m.tokenize(&Kind::Card, "4242424242424242").unwrap();
        assert_eq!(m.pending(), 1);
        drop(m);
        assert!(matches!(v.reveal(&t), Err(VaultError::NotFound { .. })));
    }
}
