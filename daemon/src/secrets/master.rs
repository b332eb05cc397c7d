//! Where the master key comes from, in order: `IRON_SECRETS_MASTER_KEY`, a key
//! file (`--master-key-file` or `[secrets] master_key_file`), or a systemd
//! credential (`$CREDENTIALS_DIRECTORY/<[secrets] credential>`, which is how
//! `LoadCredentialEncrypted=` hands it over). None of them: secrets disabled.

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// The environment variable holding the master key.
pub const ENV_VAR: &str = "IRON_SECRETS_MASTER_KEY";

/// The value [`take_env_var`] moved out of the environment, until
/// [`resolve`] takes it.
static FROM_ENV: std::sync::Mutex<Option<Zeroizing<Vec<u8>>>> = std::sync::Mutex::new(None);

/// Moves `IRON_SECRETS_MASTER_KEY` out of the process environment: the value
/// is kept (zeroized on drop) for [`resolve`], its bytes in the environment
/// block are overwritten with zeros (so `/proc/<pid>/environ`, which shows
/// the block the process started with, no longer holds it), and the variable
/// is removed (so no child can inherit it, even one spawned without a
/// cleared environment). Returns whether it was set.
///
/// # Safety
/// Call at the very start of `main`, before any other thread exists: the
/// environment is read and written without the lock `std::env` takes, and
/// another thread reading it meanwhile would race.
pub unsafe fn take_env_var() -> bool {
    let name = c"IRON_SECRETS_MASTER_KEY";
    // SAFETY: single-threaded (the caller's contract); `getenv` returns null
    // or a pointer to the NUL-terminated value inside the environment, which
    // stays valid until the environment is changed below.
    let p = unsafe { libc::getenv(name.as_ptr()) };
    if p.is_null() {
        return false;
    }
    // SAFETY: `p` is a valid NUL-terminated string (see above).
    let len = unsafe { libc::strlen(p) };
    // SAFETY: `len` bytes from `p` are the value, readable and writable (the
    // initial environment block on the stack, or a heap copy if it was set
    // at run time); nothing else references them while we copy and zero.
    let value = Zeroizing::new(unsafe { std::slice::from_raw_parts(p as *const u8, len) }.to_vec());
    // SAFETY: as above; overwriting the value in place leaves `NAME=` followed
    // by NULs, still a valid entry for `remove_var` to find.
    unsafe { std::ptr::write_bytes(p, 0, len) };
    // SAFETY: single-threaded (the caller's contract), so no other thread can
    // read the environment while it changes.
    unsafe { std::env::remove_var(ENV_VAR) };
    *FROM_ENV.lock().unwrap_or_else(|p| p.into_inner()) = Some(value);
    true
}
/// Default systemd credential name.
pub const DEFAULT_CREDENTIAL: &str = "ironcage-master-key";
/// Shortest master key accepted, in bytes.
pub const MIN_LEN: usize = 16;

/// The master key: zeroized on drop, never printed.
pub struct MasterKey {
    bytes: Zeroizing<Vec<u8>>,
    /// Where it came from, for messages (`IRON_SECRETS_MASTER_KEY`, a path).
    pub source: String,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey([REDACTED] from {})", self.source)
    }
}

/// A master key that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MasterKeyError {
    #[error("cannot read the master key file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the master key file {} is readable by other users (mode {mode:o}); run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error(
        "the master key from {source_name} is {len} bytes; it must be at least {MIN_LEN} (generate one with `head -c 32 /dev/urandom | base64`)"
    )]
    TooShort { source_name: String, len: usize },
}

impl MasterKey {
    /// Takes `bytes` (one trailing newline is dropped, as editors add one).
    pub fn new(mut bytes: Vec<u8>, source: impl Into<String>) -> Result<MasterKey, MasterKeyError> {
        let source = source.into();
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
            if bytes.last() == Some(&b'\r') {
                bytes.pop();
            }
        }
        let bytes = Zeroizing::new(bytes);
        if bytes.len() < MIN_LEN {
            return Err(MasterKeyError::TooShort {
                source_name: source,
                len: bytes.len(),
            });
        }
        Ok(MasterKey { bytes, source })
    }

    /// Reads a key file, refusing one that other users can read.
    pub fn from_file(path: &Path) -> Result<MasterKey, MasterKeyError> {
        let meta = std::fs::metadata(path).map_err(|source| MasterKeyError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o007 != 0 {
            return Err(MasterKeyError::Exposed {
                path: path.to_owned(),
                mode,
            });
        }
        let bytes = std::fs::read(path).map_err(|source| MasterKeyError::Read {
            path: path.to_owned(),
            source,
        })?;
        MasterKey::new(bytes, path.display().to_string())
    }

    /// The key material (for Argon2 only).
    pub fn expose(&self) -> &[u8] {
        &self.bytes
    }
}

/// Resolves the master key from the environment `env` (a lookup function, so
/// tests need not touch the process environment), the key file, and the
/// credential directory. `Ok(None)`: none configured.
pub fn resolve(
    env: &dyn Fn(&str) -> Option<String>,
    key_file: Option<&Path>,
    credential: &str,
) -> Result<Option<MasterKey>, MasterKeyError> {
    if let Some(v) = env(ENV_VAR) {
        return MasterKey::new(v.into_bytes(), ENV_VAR).map(Some);
    }
    // Moved out of the environment at start ([`take_env_var`]).
    if let Some(mut v) = FROM_ENV.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return MasterKey::new(std::mem::take(&mut *v), ENV_VAR).map(Some);
    }
    if let Some(p) = key_file {
        return MasterKey::from_file(p).map(Some);
    }
    if let Some(dir) = env("CREDENTIALS_DIRECTORY") {
        let p = Path::new(&dir).join(credential);
        if p.exists() {
            // systemd makes these 0400 root-owned in a private mount.
            return MasterKey::from_file(&p).map(Some);
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_in_order_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, "file-key-0123456789\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let cred_dir = dir.path().join("creds");
        std::fs::create_dir(&cred_dir).unwrap();
        std::fs::write(cred_dir.join(DEFAULT_CREDENTIAL), "cred-key-0123456789").unwrap();
        std::fs::set_permissions(
            cred_dir.join(DEFAULT_CREDENTIAL),
            std::fs::Permissions::from_mode(0o400),
        )
        .unwrap();
        let cd = cred_dir.display().to_string();

        let env_all = |k: &str| match k {
            ENV_VAR => Some("env-key-0123456789".to_owned()),
            "CREDENTIALS_DIRECTORY" => Some(cd.clone()),
            _ => None,
        };
        let k = resolve(&env_all, Some(&file), DEFAULT_CREDENTIAL)
            .unwrap()
            .unwrap();
        assert_eq!(k.expose(), b"env-key-0123456789");
        assert!(!format!("{k:?}").contains("env-key"));

        let env_cred = |k: &str| (k == "CREDENTIALS_DIRECTORY").then(|| cd.clone());
        let k = resolve(&env_cred, Some(&file), DEFAULT_CREDENTIAL)
            .unwrap()
            .unwrap();
        assert_eq!(
            k.expose(),
            b"file-key-0123456789",
            "trailing newline dropped"
        );
        let k = resolve(&env_cred, None, DEFAULT_CREDENTIAL)
            .unwrap()
            .unwrap();
        assert_eq!(k.expose(), b"cred-key-0123456789");
        assert!(resolve(&env_cred, None, "other-name").unwrap().is_none());
        assert!(
            resolve(&|_| None, None, DEFAULT_CREDENTIAL)
                .unwrap()
                .is_none()
        );

        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = resolve(&|_| None, Some(&file), DEFAULT_CREDENTIAL).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        let short = |k: &str| (k == ENV_VAR).then(|| "short".to_owned());
        let e = resolve(&short, None, DEFAULT_CREDENTIAL).unwrap_err();
        assert!(e.to_string().contains("at least 16"), "{e}");
        assert!(!e.to_string().contains("short\""), "{e}");
    }
}
