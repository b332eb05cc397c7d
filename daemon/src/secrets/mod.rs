//! The secrets store: values encrypted at rest in the daemon's redb file,
//! unlocked once at start from a master key, every access on the audit trail.
//!
//! - [`crypto`]: AES-256-GCM envelope encryption, Argon2id KEK derivation.
//! - [`master`]: where the master key comes from (env, file, systemd credential).
//! - [`vault`]: the tables and operations (set, get, list, versions, rollback,
//!   rm, rekey), each committed with its audit entry.
//! - [`mask`]: masked display for viewers.
//!
//! Without a master key the daemon runs with secrets disabled: [`Secrets`]
//! answers every operation with [`SecretsError::Disabled`], which says how to
//! configure one.

pub mod crypto;
pub mod delivery;
pub mod mask;
pub mod master;
pub mod transfer;
pub mod vault;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_heads;

use crate::audit::{AuditHandle, AuditKey, AuditLog};
use crate::store::Store;
use ironcage_shared::protocol::{MAX_SECRET_LEN, SecretEnv, check_secret_name};
use master::MasterKey;
use std::sync::Arc;
pub use vault::Vault;

/// Versions kept per secret when the config does not say.
pub const DEFAULT_KEEP_VERSIONS: u32 = 10;

/// What went wrong with a secrets operation. Never holds a value.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error(
        "secrets are disabled: ironcaged was started without a master key; set {} in its environment, `[secrets] master_key_file` (or --master-key-file), or a systemd credential named `{}` (LoadCredentialEncrypted=), then restart it",
        master::ENV_VAR,
        master::DEFAULT_CREDENTIAL
    )]
    Disabled,
    #[error(
        "the master key from {source_name} does not open the secrets store in {path} (key check failed); start with the key the store was created or last rekeyed with. Nothing was written"
    )]
    WrongKey { source_name: String, path: String },
    #[error("no secret {name}@{env}; `ironctl secrets list` shows what exists")]
    NotFound { name: String, env: SecretEnv },
    #[error(
        "secret {name}@{env} has no version {version} any more; `ironctl secrets versions {name} --env {env}` lists the kept ones"
    )]
    VersionNotKept {
        name: String,
        env: SecretEnv,
        version: u32,
    },
    #[error(
        "secret {name}@{env} version {version} fails authentication: the stored data was altered or moved, or belongs to another key"
    )]
    Tampered {
        name: String,
        env: SecretEnv,
        version: u32,
    },
    #[error(
        "secret {name}@{env} is refused: its head record (which version is current) fails authentication ({why}). The secrets store was edited outside ironcaged, or an old copy of the record was put back, so it may point at a rolled-back value; nothing was served. Find out who had write access to the state directory, then restore it from a backup, or remove the secret (`ironctl secrets rm {name} --env {env}`) and set it again"
    )]
    HeadTampered {
        name: String,
        env: SecretEnv,
        /// Which check failed (never a value).
        why: String,
    },
    #[error(
        "agent {agent} is not granted the secret {name}; add it to the agent's `secrets` or `secret_env` in the config"
    )]
    NotGranted { agent: String, name: String },
    #[error("{0}")]
    Invalid(String),
    #[error("the secrets store is damaged: {0}; restore the state directory from a backup")]
    Damaged(String),
    #[error("the master key could not be turned into a key (Argon2id failed)")]
    Kdf,
    #[error("{0}")]
    Audit(crate::audit::AuditError),
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    MasterKey(#[from] master::MasterKeyError),
}

/// Checks a name and a value before anything is written.
pub fn check_value(name: &str, value: &str) -> Result<(), SecretsError> {
    check_secret_name(name).map_err(SecretsError::Invalid)?;
    if value.is_empty() {
        return Err(SecretsError::Invalid(format!(
            "the value for {name} is empty; nothing was stored"
        )));
    }
    if value.len() > MAX_SECRET_LEN {
        return Err(SecretsError::Invalid(format!(
            "the value for {name} is {} bytes; the limit is {MAX_SECRET_LEN}",
            value.len()
        )));
    }
    Ok(())
}

/// The secrets store as the daemon holds it: enabled (unlocked) or disabled.
#[derive(Debug, Clone)]
pub struct Secrets {
    vault: Option<Arc<Vault>>,
    audit: AuditHandle,
    /// The PII token key ([`crypto::pii_token_key`]), with a master key.
    pii_key: Option<crypto::Key>,
}

impl Secrets {
    /// Unlocks the store (if `master` is given) and opens the audit trail.
    /// A wrong key fails before anything is written. Runs Argon2id once:
    /// call it off the actor thread.
    pub fn open(
        store: Arc<Store>,
        master: Option<&MasterKey>,
        keep_versions: u32,
    ) -> Result<Secrets, SecretsError> {
        let unlock = match master {
            Some(m) => Some(vault::unlock(&store, m)?),
            None => None,
        };
        let audit_key = unlock.as_ref().map(|u| AuditKey::derive(&u.audit_material));
        let pii_key = unlock
            .as_ref()
            .map(|u| crypto::pii_token_key(&u.audit_material));
        let log = Arc::new(AuditLog::open(store, audit_key)?);
        let audit = AuditHandle::start(log);
        let legacy_heads = unlock.as_ref().is_some_and(|u| !u.heads_authenticated);
        let vault = unlock.map(|u| Arc::new(Vault::new(u, audit.clone(), keep_versions)));
        if let (true, Some(v)) = (legacy_heads, &vault) {
            // A store written before heads were authenticated: MAC them all
            // now, in one transaction, before anything reads one.
            let n = v.upgrade_heads(&crate::audit::Actor::daemon())?;
            tracing::info!("secrets store upgraded: {n} head records now carry a MAC");
        }
        Ok(Secrets {
            vault,
            audit,
            pii_key,
        })
    }

    /// The key reversible PII tokens are sealed with when the daemon has a
    /// master key (derived from the store's key material: never on disk).
    pub fn pii_token_key(&self) -> Option<&crypto::Key> {
        self.pii_key.as_ref()
    }

    /// The unlocked store, or [`SecretsError::Disabled`].
    pub fn vault(&self) -> Result<&Arc<Vault>, SecretsError> {
        self.vault.as_ref().ok_or(SecretsError::Disabled)
    }

    /// Whether a master key unlocked the store.
    pub fn enabled(&self) -> bool {
        self.vault.is_some()
    }

    /// The audit trail (works with or without secrets).
    pub fn audit(&self) -> &AuditHandle {
        &self.audit
    }
}
