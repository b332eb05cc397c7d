//! The audit trail: who did what, when, and how it ended, in a hash chain that
//! shows any edit, deletion, reorder or insertion.
//!
//! - [`log`]: the `audit` table in the daemon's redb file. [`AuditLog::write`]
//!   runs a caller's change and its entries in ONE write transaction (so a
//!   secret and the entry recording it commit together, or neither does);
//!   a chained HMAC checkpoint keyed from the master key at the end of every
//!   keyed commit; [`AuditLog::verify`] and external anchors (the precise
//!   rule, and what only an anchor catches, are in the [`log`] module doc).
//! - [`handle`]: [`AuditHandle`], cloneable and callable from any thread or
//!   actor. A writer thread group-commits queued entries (one fsync for a burst
//!   of agent starts); [`AuditHandle::record_durable`] returns once the entry is
//!   on disk, [`AuditHandle::record`] does not wait.
//!
//! Entries never hold a secret value: a secret read records an HMAC of it
//! (keyed, so the trail cannot be used to guess short values).

pub mod handle;
pub mod log;

pub use handle::AuditHandle;
pub use log::{Appender, AuditKey, AuditLog};

use ironcage_shared::protocol::{AuditOutcome, Role};

/// Who acted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub uid: Option<u32>,
    /// `admin`, `viewer`, `agent`, `none`, `daemon`.
    pub role: &'static str,
    pub agent: Option<String>,
    /// `uid 0 (root)` or `daemon`, for metadata such as `updated_by`.
    pub describe: String,
}

impl Actor {
    /// The daemon itself (lifecycle, breakers, rotation by signal).
    pub fn daemon() -> Actor {
        Actor {
            uid: None,
            role: "daemon",
            agent: None,
            describe: "daemon".into(),
        }
    }

    /// A control-socket peer with `role` (`None`: no role at all).
    pub fn peer(uid: u32, role: Option<Role>, describe: String) -> Actor {
        Actor {
            uid: Some(uid),
            role: role.map_or("none", Role::as_str),
            agent: None,
            describe,
        }
    }

    /// An agent acting through its own channel.
    pub fn agent(name: &str) -> Actor {
        Actor {
            uid: None,
            role: "agent",
            agent: Some(name.to_owned()),
            describe: format!("agent {name}"),
        }
    }
}

/// An entry before it gets its seq, time and hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Draft {
    pub actor: Actor,
    pub action: String,
    pub target: String,
    pub outcome: AuditOutcome,
    /// Never a secret value.
    pub detail: String,
}

impl Draft {
    pub fn new(
        actor: Actor,
        action: impl Into<String>,
        target: impl Into<String>,
        outcome: AuditOutcome,
    ) -> Draft {
        Draft {
            actor,
            action: action.into(),
            target: target.into(),
            outcome,
            detail: String::new(),
        }
    }

    pub fn detail(mut self, d: impl Into<String>) -> Draft {
        self.detail = d.into();
        self
    }
}

/// The audit trail could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit trail: {0}; the operation was not carried out")]
    Store(#[from] crate::store::StoreError),
    #[error("audit trail entry {seq} cannot be decoded: {reason}")]
    Decode { seq: u64, reason: String },
    #[error("the audit writer has stopped; the operation was not carried out")]
    Closed,
    #[error("{0}")]
    Write(String),
}

#[cfg(test)]
mod tests;
