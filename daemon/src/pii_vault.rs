//! Reversible PII tokens: `[EMAIL:tok_…]` stands for a value whose original is
//! kept encrypted (AES-256-GCM) in the daemon's redb store, so an admin can reveal
//! it later (`ironctl pii reveal TOKEN`).
//!
//! - Table `pii_tokens` (component `pii_vault`, schema version
//!   [`SCHEMA_VERSION`]): token → `kind_len u8 | kind | nonce (12) | ciphertext`.
//!   The kind is stored in clear (it is not personal); the AEAD's associated data
//!   binds the token and kind to the ciphertext, so a row copied under another
//!   token does not decrypt.
//! - The key: for now 256 random bits created on first use in
//!   `STATE_DIR/pii-vault.key` (mode 0600, refused if group/world-readable). It
//!   is loaded lazily, so a daemon that never tokenizes has no key file. The
//!   secrets store's master key may later replace it: only [`PiiVault::cipher`]
//!   knows where the key comes from.
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
use redb::TableDefinition;
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
    #[error("PII token {token}: its stored row is damaged")]
    BadRow { token: String },
    #[error("cannot encrypt a PII value")]
    Encrypt,
}

/// The token store: table in the daemon's redb file, key in the state directory.
pub struct PiiVault {
    store: Arc<Store>,
    key_path: PathBuf,
    cipher: Mutex<Option<Arc<Aes256Gcm>>>,
}

impl fmt::Debug for PiiVault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PiiVault")
            .field("key_path", &self.key_path)
            .field("key_loaded", &self.cipher.lock().is_ok_and(|c| c.is_some()))
            .finish()
    }
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
            cipher: Mutex::new(None),
        })
    }

    /// The cipher, loading the key (or creating it, when `create`) on first use.
    fn cipher(&self, create: bool) -> Result<Arc<Aes256Gcm>, VaultError> {
        let mut slot = self.cipher.lock().unwrap_or_else(|p| p.into_inner());
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
        Ok(Minter {
            vault: self.clone(),
            cipher: self.cipher(true)?,
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
        let (&klen, rest) = row.split_first().ok_or_else(bad)?;
        let klen = klen as usize;
        if rest.len() < klen + 12 {
            return Err(bad());
        }
        let kind = std::str::from_utf8(&rest[..klen]).map_err(|_| bad())?;
        let nonce = &rest[klen..klen + 12];
        let ct = &rest[klen + 12..];
        let cipher = self.cipher(false)?;
        let aad = aad(&token, kind);
        let plain = cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: &aad })
            .map_err(|_| VaultError::Decrypt {
                token: token.clone(),
            })?;
        let value = String::from_utf8(plain).map_err(|e| {
            let mut b = e.into_bytes();
            zeroize::Zeroize::zeroize(&mut b);
            bad()
        })?;
        Ok(Revealed {
            kind: kind.to_owned(),
            value: Zeroizing::new(value),
        })
    }
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

fn aad(token: &str, kind: &str) -> Vec<u8> {
    let mut a = Vec::with_capacity(token.len() + kind.len() + 1);
    a.extend_from_slice(token.as_bytes());
    a.push(0);
    a.extend_from_slice(kind.as_bytes());
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
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let kind_name = kind.name();
        let aad = aad(&token, kind_name);
        let ct = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: value.as_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|_| TokenizeError(VaultError::Encrypt.to_string()))?;
        let klen = u8::try_from(kind_name.len())
            .map_err(|_| TokenizeError("PII kind name too long to store".to_owned()))?;
        let mut row = Vec::with_capacity(1 + kind_name.len() + 12 + ct.len());
        row.push(klen);
        row.extend_from_slice(kind_name.as_bytes());
        row.extend_from_slice(&nonce);
        row.extend_from_slice(&ct);
        self.rows.push((token.clone(), row));
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ironcage_shared::pii::{RedactStyle, Scanner, redact};

    fn vault(dir: &Path) -> Arc<PiiVault> {
        let store = Arc::new(Store::open(dir).unwrap());
        Arc::new(PiiVault::open(store, dir).unwrap())
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
