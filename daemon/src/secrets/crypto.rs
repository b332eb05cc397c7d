//! Envelope encryption: a random data key (DEK) per secret version seals the
//! value with AES-256-GCM; the key-encryption key (KEK), derived from the master
//! key with Argon2id, wraps the DEK (AES-256-GCM again).
//!
//! Every sealed blob is `nonce (12) || ciphertext || tag (16)` with a fresh
//! random nonce. The value's AAD binds it to its name, environment and version
//! ([`value_aad`]), and the wrapped DEK's AAD binds it to the same plus the KEK
//! generation, so a ciphertext moved to another secret (or a DEK moved to
//! another version) fails to open. Keys are zeroized on drop and print
//! `[REDACTED]`.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;
use std::fmt;
use zeroize::{Zeroize, Zeroizing};

/// Bytes of a nonce, a key and a tag.
pub const NONCE_LEN: usize = 12;
pub const KEY_LEN: usize = 32;
pub const TAG_LEN: usize = 16;
/// Bytes of an Argon2 salt.
pub const SALT_LEN: usize = 16;

/// Argon2id cost (OWASP's first recommendation): 19 MiB, 2 passes, 1 lane.
pub const ARGON2_M_KIB: u32 = 19_456;
pub const ARGON2_T: u32 = 2;
pub const ARGON2_P: u32 = 1;

/// A 256-bit key: zeroized on drop, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Key(Zeroizing<[u8; KEY_LEN]>);

impl Key {
    /// A fresh random key from the OS generator.
    pub fn random() -> Key {
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        rand::rng().fill_bytes(&mut k[..]);
        Key(k)
    }

    /// Takes the bytes of a key (the slice must be [`KEY_LEN`] long).
    pub fn from_slice(b: &[u8]) -> Option<Key> {
        let arr: [u8; KEY_LEN] = b.try_into().ok()?;
        Some(Key(Zeroizing::new(arr)))
    }

    /// The raw bytes (for wrapping and HKDF only).
    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new_from_slice(&self.0[..]).expect("32-byte key")
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key([REDACTED])")
    }
}

/// Why a blob did not open. Deliberately says nothing about the content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("authentication failed: wrong key, or the data was altered or moved")]
    Auth,
    #[error("sealed data is too short to be valid")]
    Short,
    #[error("key derivation failed")]
    Kdf,
}

/// Derives the KEK from the master key with Argon2id and `salt` (about 50 ms
/// and 19 MiB: run once at unlock, never per read).
pub fn derive_kek(master: &[u8], salt: &[u8]) -> Result<Key, CryptoError> {
    let params = argon2::Params::new(ARGON2_M_KIB, ARGON2_T, ARGON2_P, Some(KEY_LEN))
        .map_err(|_| CryptoError::Kdf)?;
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    a.hash_password_into(master, salt, &mut out[..])
        .map_err(|_| CryptoError::Kdf)?;
    Ok(Key(out))
}

/// A fresh random salt.
pub fn random_salt() -> [u8; SALT_LEN] {
    let mut s = [0u8; SALT_LEN];
    rand::rng().fill_bytes(&mut s);
    s
}

/// Seals `plain` under `key` with a random nonce: `nonce || ct || tag`.
pub fn seal(key: &Key, plain: &[u8], aad: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut nonce);
    let ct = key
        .cipher()
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: plain, aad })
        .expect("AES-GCM encryption of an in-memory buffer cannot fail");
    let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

/// Opens a blob from [`seal`]; the plaintext is zeroized when dropped.
pub fn open(key: &Key, sealed: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return Err(CryptoError::Short);
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    key.cipher()
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
        .map(Zeroizing::new)
        .map_err(|_| CryptoError::Auth)
}

/// Appends `s` length-prefixed (u32 BE), so no two field lists encode alike.
fn field(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

/// AAD of a secret value: domain, name, environment, version, unambiguous.
pub fn value_aad(name: &str, env: &str, version: u32) -> Vec<u8> {
    let mut a = Vec::with_capacity(32 + name.len());
    field(&mut a, b"ironcage/value/v1");
    field(&mut a, name.as_bytes());
    field(&mut a, env.as_bytes());
    a.extend_from_slice(&version.to_be_bytes());
    a
}

/// AAD of a wrapped DEK: the value's identity plus the KEK generation.
pub fn dek_aad(name: &str, env: &str, version: u32, kek_gen: u32) -> Vec<u8> {
    let mut a = Vec::with_capacity(40 + name.len());
    field(&mut a, b"ironcage/dek/v1");
    field(&mut a, name.as_bytes());
    field(&mut a, env.as_bytes());
    a.extend_from_slice(&version.to_be_bytes());
    a.extend_from_slice(&kek_gen.to_be_bytes());
    a
}

/// AAD of the key-check record of a KEK generation.
pub fn check_aad(kek_gen: u32) -> Vec<u8> {
    let mut a = Vec::new();
    field(&mut a, b"ironcage/key-check/v1");
    a.extend_from_slice(&kek_gen.to_be_bytes());
    a
}

/// AAD of the wrapped audit key under a KEK generation.
pub fn audit_key_aad(kek_gen: u32) -> Vec<u8> {
    let mut a = Vec::new();
    field(&mut a, b"ironcage/audit-key/v1");
    a.extend_from_slice(&kek_gen.to_be_bytes());
    a
}

/// The plaintext of a key-check record written before head records were
/// authenticated: a constant; only the right KEK opens it. A store whose check
/// opens to this one has heads without a MAC, upgraded at unlock.
pub const CHECK_PLAINTEXT: &[u8] = b"iron-cage key check";

/// The plaintext of a key-check record of a store whose every head record
/// carries a MAC ([`HeadKey`]). Sealed under the KEK, so nobody without the
/// master key can forge a [`CHECK_PLAINTEXT`] record; an old one can be put
/// back from a copy of the store, which is why the upgrade refuses to run
/// twice (its audit entry) or next to a head that already has a MAC. A head
/// without a MAC in an upgraded store is tampering, never a legacy record.
pub const CHECK_PLAINTEXT_HEADS_MAC: &[u8] = b"iron-cage key check; heads authenticated v1";

/// Bytes of a head record's MAC (HMAC-SHA256).
pub const HEAD_MAC_LEN: usize = 32;

/// The key authenticating secret head records: HMAC-SHA256 under a subkey
/// derived (HKDF-SHA256, its own salt and info) from the audit key material,
/// which is wrapped under the KEK and survives a rekey unchanged, so a rekey
/// never re-MACs heads. Zeroized on drop, never printed.
pub struct HeadKey(Key);

impl fmt::Debug for HeadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HeadKey([REDACTED])")
    }
}

/// The key sealing reversible PII tokens (see `pii_vault`), derived
/// (HKDF-SHA256, its own info) from the audit key material: like the head key
/// it is never stored, opens only with the master key, and survives a rekey
/// unchanged.
pub fn pii_token_key(material: &Key) -> Key {
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(b"ironcage-secrets"), material.expose());
    let mut k = Zeroizing::new([0u8; KEY_LEN]);
    hk.expand(b"pii token key v1", &mut k[..])
        .expect("32 bytes from HKDF-SHA256");
    Key(k)
}

/// The fields of a head record a MAC covers (everything the record holds).
#[derive(Debug, Clone, Copy)]
pub struct HeadFields<'a> {
    pub current: u32,
    pub next: u32,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub updated_by: &'a str,
}

impl HeadKey {
    /// Derives the head MAC key from the audit key material.
    pub fn derive(material: &Key) -> HeadKey {
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(b"ironcage-secrets"), material.expose());
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        hk.expand(b"secret head mac v1", &mut k[..])
            .expect("32 bytes from HKDF-SHA256");
        HeadKey(Key(k))
    }

    fn hmac(&self, name: &str, env: &str, h: &HeadFields<'_>) -> hmac::Hmac<sha2::Sha256> {
        use hmac::Mac;
        let mut msg = Vec::with_capacity(96 + name.len() + h.updated_by.len());
        field(&mut msg, b"ironcage/secret-head/v1");
        field(&mut msg, name.as_bytes());
        field(&mut msg, env.as_bytes());
        msg.extend_from_slice(&h.current.to_be_bytes());
        msg.extend_from_slice(&h.next.to_be_bytes());
        msg.extend_from_slice(&h.created_ms.to_be_bytes());
        msg.extend_from_slice(&h.updated_ms.to_be_bytes());
        field(&mut msg, h.updated_by.as_bytes());
        let mut m = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(self.0.expose())
            .expect("HMAC takes any key length");
        m.update(&msg);
        m
    }

    /// The MAC of the head of `name@env` holding `h`.
    pub fn mac(&self, name: &str, env: &str, h: &HeadFields<'_>) -> [u8; HEAD_MAC_LEN] {
        use hmac::Mac;
        self.hmac(name, env, h).finalize().into_bytes().into()
    }

    /// Whether `mac` authenticates `h` as the head of `name@env` (constant time).
    pub fn verify(&self, name: &str, env: &str, h: &HeadFields<'_>, mac: &[u8]) -> bool {
        use hmac::Mac;
        self.hmac(name, env, h).verify_slice(mac).is_ok()
    }
}

/// Wraps `dek` under `kek`.
pub fn wrap(kek: &Key, dek: &Key, aad: &[u8]) -> Vec<u8> {
    seal(kek, dek.expose(), aad)
}

/// Unwraps a DEK sealed by [`wrap`].
pub fn unwrap(kek: &Key, wrapped: &[u8], aad: &[u8]) -> Result<Key, CryptoError> {
    let mut raw = open(kek, wrapped, aad)?;
    let k = Key::from_slice(&raw).ok_or(CryptoError::Auth);
    raw.zeroize();
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn sealed_value(kek: &Key, name: &str, env: &str, v: u32, plain: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let dek = Key::random();
        let wrapped = wrap(kek, &dek, &dek_aad(name, env, v, 1));
        let ct = seal(&dek, plain, &value_aad(name, env, v));
        (wrapped, ct)
    }

    fn read(
        kek: &Key,
        name: &str,
        env: &str,
        v: u32,
        wrapped: &[u8],
        ct: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let dek = unwrap(kek, wrapped, &dek_aad(name, env, v, 1))?;
        Ok(open(&dek, ct, &value_aad(name, env, v))?.to_vec())
    }

    #[test]
    fn tamper_matrix_every_byte_of_nonce_ciphertext_tag_and_wrapped_key() {
        let kek = Key::random();
        let (wrapped, ct) = sealed_value(&kek, "db", "production", 3, b"hunter2-the-password");
        assert_eq!(
            read(&kek, "db", "production", 3, &wrapped, &ct).unwrap(),
            b"hunter2-the-password"
        );
        // Every byte of the value blob: nonce (0..12), ciphertext, tag (last 16).
        for i in 0..ct.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = ct.clone();
                bad[i] ^= bit;
                assert_eq!(
                    read(&kek, "db", "production", 3, &wrapped, &bad),
                    Err(CryptoError::Auth),
                    "value byte {i} flipped"
                );
            }
        }
        // Every byte of the wrapped DEK.
        for i in 0..wrapped.len() {
            let mut bad = wrapped.clone();
            bad[i] ^= 0x01;
            assert_eq!(
                read(&kek, "db", "production", 3, &bad, &ct),
                Err(CryptoError::Auth),
                "wrapped byte {i}"
            );
        }
        // Truncated or extended blobs.
        assert!(read(&kek, "db", "production", 3, &wrapped, &ct[..ct.len() - 1]).is_err());
        let mut long = ct.clone();
        long.push(0);
        assert!(read(&kek, "db", "production", 3, &wrapped, &long).is_err());
        assert_eq!(
            read(&kek, "db", "production", 3, &wrapped, &ct[..10]),
            Err(CryptoError::Short)
        );
        // Moved to another name, environment or version: refused.
        assert!(read(&kek, "db2", "production", 3, &wrapped, &ct).is_err());
        assert!(read(&kek, "db", "staging", 3, &wrapped, &ct).is_err());
        assert!(read(&kek, "db", "production", 2, &wrapped, &ct).is_err());
        // The DEK alone, moved: the value AAD still refuses.
        let dek = unwrap(&kek, &wrapped, &dek_aad("db", "production", 3, 1)).unwrap();
        assert!(open(&dek, &ct, &value_aad("db", "staging", 3)).is_err());
        // Another KEK: refused.
        assert!(read(&Key::random(), "db", "production", 3, &wrapped, &ct).is_err());
    }

    #[test]
    fn aad_encoding_is_unambiguous() {
        assert_ne!(value_aad("ab", "c", 1), value_aad("a", "bc", 1));
        assert_ne!(value_aad("a", "b", 1), dek_aad("a", "b", 1, 0)[..].to_vec());
        assert_ne!(dek_aad("a", "b", 1, 2), dek_aad("a", "b", 2, 1));
    }

    #[test]
    fn head_mac_covers_name_env_and_every_field() {
        let k = HeadKey::derive(&Key::random());
        let h = HeadFields {
            current: 2,
            next: 3,
            created_ms: 10,
            updated_ms: 20,
            updated_by: "uid 0 (root)",
        };
        let mac = k.mac("db", "production", &h);
        assert!(k.verify("db", "production", &h, &mac));
        assert!(!k.verify("db2", "production", &h, &mac));
        assert!(!k.verify("db", "staging", &h, &mac));
        assert!(!k.verify("d", "bproduction", &h, &mac));
        for bad in [
            HeadFields { current: 1, ..h },
            HeadFields { next: 4, ..h },
            HeadFields {
                created_ms: 11,
                ..h
            },
            HeadFields {
                updated_ms: 21,
                ..h
            },
            HeadFields {
                updated_by: "uid 1",
                ..h
            },
        ] {
            assert!(!k.verify("db", "production", &bad, &mac), "{bad:?}");
        }
        assert!(!k.verify("db", "production", &h, &mac[..31]));
        // Another key material: another key.
        let other = HeadKey::derive(&Key::random());
        assert!(!other.verify("db", "production", &h, &mac));
        assert_eq!(format!("{k:?}"), "HeadKey([REDACTED])");
    }

    #[test]
    fn ten_thousand_encryptions_have_distinct_nonces_keys_and_ciphertexts() {
        let kek = Key::random();
        let mut nonces = HashSet::new();
        let mut deks = HashSet::new();
        let mut cts = HashSet::new();
        let mut wrapped_nonces = HashSet::new();
        for _ in 0..10_000 {
            let dek = Key::random();
            let w = wrap(&kek, &dek, &dek_aad("k", "production", 1, 1));
            let ct = seal(
                &dek,
                b"the same value every time",
                &value_aad("k", "production", 1),
            );
            assert!(nonces.insert(ct[..NONCE_LEN].to_vec()), "nonce repeated");
            assert!(
                wrapped_nonces.insert(w[..NONCE_LEN].to_vec()),
                "wrap nonce repeated"
            );
            assert!(deks.insert(*dek.expose()), "data key repeated");
            assert!(cts.insert(ct[NONCE_LEN..].to_vec()), "ciphertext repeated");
        }
    }

    #[test]
    fn kek_depends_on_master_and_salt_and_prints_redacted() {
        let s1 = [1u8; SALT_LEN];
        let s2 = [2u8; SALT_LEN];
        let a = derive_kek(b"master one", &s1).unwrap();
        assert_eq!(a, derive_kek(b"master one", &s1).unwrap());
        assert_ne!(a, derive_kek(b"master two", &s1).unwrap());
        assert_ne!(a, derive_kek(b"master one", &s2).unwrap());
        assert_eq!(format!("{a:?}"), "Key([REDACTED])");
    }
}
