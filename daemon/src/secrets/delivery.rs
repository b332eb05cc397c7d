//! Handing granted secrets to an agent: files in a private per-agent directory
//! (dir 0700, files 0400, like systemd's `$CREDENTIALS_DIRECTORY`) whose path
//! is in `IRONCAGE_CREDENTIALS_DIRECTORY`, and environment variables where the
//! config asks. Files are replaced atomically (temp file + rename) on
//! rotation, and the directory is removed when the agent exits.
//!
//! The directory lives under the runtime directory (next to the socket, a
//! tmpfs under systemd), never in the state directory on disk.
//!
//! Agents with their own `user`: the root of these directories is 0711 (an
//! agent may pass through it to its own directory but not list it), and the
//! agent's directory and files belong to its uid and gid, so it can read them
//! and no other agent can. A rotated file is given to the same owner before it
//! is renamed into place, so it never appears owned by anyone else.

use super::{SecretsError, Vault};
use crate::audit::{Actor, Draft};
use crate::config::{Delivery, SecretGrant};
use crate::secret::SecretString;
use ironcage_shared::protocol::AuditOutcome;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The variable that tells an agent where its credential files are.
pub const CREDENTIALS_ENV: &str = "IRONCAGE_CREDENTIALS_DIRECTORY";

/// What a spawn gets.
#[derive(Debug, Default)]
pub struct Delivered {
    /// The agent's credentials directory, when it has file grants.
    pub dir: Option<PathBuf>,
    /// Environment variables to set (name, value).
    pub env: Vec<(String, SecretString)>,
    /// Every delivered value with its secret's name, file and env alike: to
    /// be masked out of the agent's output ([`crate::logs::AgentLogs::mask_secrets`]).
    pub values: Vec<(String, SecretString)>,
}

/// `root/<agent>`.
pub fn agent_dir(root: &Path, agent: &str) -> PathBuf {
    root.join(agent)
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> SecretsError {
    move |e| SecretsError::Invalid(format!("{what}: {e}"))
}

/// Who owns an agent's credentials directory and files (uid, gid).
pub type Owner = (u32, u32);

/// Writes `bytes` to `dir/name` with mode 0400, atomically: a reader sees the
/// old file or the new one, never a mix. With `owner`, the file is given to
/// it before the rename.
pub fn write_atomic(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    owner: Option<Owner>,
) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.{}.tmp", rand::random::<u64>()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .open(&tmp)?;
        // No fsync: the directory is runtime state (tmpfs), never reused.
        f.write_all(bytes)?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
        }
        std::fs::rename(&tmp, dir.join(name))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Reads every grant (all or nothing: a missing secret fails the spawn with
/// nothing written), writes the file grants into a fresh `root/<agent>` and
/// returns the env grants. Each delivery is on the audit trail with an HMAC.
/// With `owner` (an agent running as its own user), the directory and files
/// are that user's.
pub fn deliver(
    vault: &Vault,
    agent: &str,
    grants: &[SecretGrant],
    root: &Path,
    owner: Option<Owner>,
) -> Result<Delivered, SecretsError> {
    if grants.is_empty() {
        return Ok(Delivered::default());
    }
    let values = read_all(vault, agent, grants)?;
    let mut out = Delivered::default();
    let has_files = grants.iter().any(|g| g.delivery == Delivery::File);
    if has_files {
        std::fs::create_dir_all(root).map_err(io(format!("cannot create {}", root.display())))?;
        // Search but no listing for others: an agent with its own uid passes
        // through to its own directory (0700, its own), and sees no other.
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o711))
            .map_err(io(format!("cannot set the mode of {}", root.display())))?;
        let dir = agent_dir(root, agent);
        // A directory left by a crash holds stale values: start clean.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(io(format!("cannot create {}", dir.display())))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .map_err(io(format!("cannot give {} to uid {uid}", dir.display())))?;
        }
        out.dir = Some(dir);
    }
    for (g, v) in grants.iter().zip(values) {
        out.values.push((g.secret.name.clone(), v.clone()));
        match &g.delivery {
            Delivery::File => {
                let dir = out.dir.as_ref().expect("created above");
                write_atomic(dir, &g.secret.name, v.expose().as_bytes(), owner).map_err(io(
                    format!("cannot write {} into {}", g.secret.name, dir.display()),
                ))?;
            }
            Delivery::Env(var) => out.env.push((var.clone(), v)),
        }
    }
    Ok(out)
}

fn read_all(
    vault: &Vault,
    agent: &str,
    grants: &[SecretGrant],
) -> Result<Vec<SecretString>, SecretsError> {
    let mut values = Vec::with_capacity(grants.len());
    let mut drafts = Vec::with_capacity(grants.len());
    for g in grants {
        let v = vault.read_current(&g.secret.name, g.secret.env).map_err(|e| match e {
            SecretsError::NotFound { name, env } => SecretsError::Invalid(format!(
                "agent {agent} is granted {name}@{env}, which is not in the store; set it with `ironctl secrets set {name} --env {env} --value-stdin`"
            )),
            other => other,
        })?;
        let how = match &g.delivery {
            Delivery::File => "file".to_owned(),
            Delivery::Env(var) => format!("env {var}"),
        };
        let mac = vault
            .audit()
            .log()
            .value_mac(v.expose().as_bytes())
            .unwrap_or_default();
        drafts.push(
            Draft::new(
                Actor::agent(agent),
                "secret delivered",
                g.secret.to_string(),
                AuditOutcome::Ok,
            )
            .detail(format!("as {how} {mac}")),
        );
        values.push(v);
    }
    // Every read is on record (one group commit) before a value is written
    // anywhere; if the trail cannot be written, nothing is delivered.
    vault.audit().record_all_durable_blocking(drafts)?;
    Ok(values)
}

/// New values for one running agent's files, read and not yet written.
pub struct Refresh {
    agent: String,
    dir: PathBuf,
    files: Vec<(String, SecretString)>,
}

impl std::fmt::Debug for Refresh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refresh")
            .field("agent", &self.agent)
            .field("dir", &self.dir)
            .field("files", &self.files.len())
            .finish()
    }
}

/// Reads the current values of a running agent's file grants (rotation);
/// `None` when it has no directory (not running) or no file grants. Writes
/// nothing, so a reload can read every agent's values before changing any.
pub fn prepare_refresh(
    vault: &Vault,
    agent: &str,
    grants: &[SecretGrant],
    root: &Path,
) -> Result<Option<Refresh>, SecretsError> {
    let dir = agent_dir(root, agent);
    let files: Vec<SecretGrant> = grants
        .iter()
        .filter(|g| g.delivery == Delivery::File)
        .cloned()
        .collect();
    if files.is_empty() || !dir.is_dir() {
        return Ok(None);
    }
    let values = read_all(vault, agent, &files)?;
    Ok(Some(Refresh {
        agent: agent.to_owned(),
        dir,
        files: files
            .into_iter()
            .map(|g| g.secret.name)
            .zip(values)
            .collect(),
    }))
}

impl Refresh {
    /// The agent, and the new values with their secrets' names (to mask out
    /// of its output once written).
    pub fn values(&self) -> (&str, Vec<(String, SecretString)>) {
        (&self.agent, self.files.clone())
    }

    /// Replaces each file atomically, owned like the directory (the agent's
    /// user); returns how many. An agent that exited meanwhile (its directory
    /// gone) is not an error.
    pub fn apply(self) -> Result<usize, SecretsError> {
        use std::os::unix::fs::MetadataExt;
        let owner = match std::fs::metadata(&self.dir) {
            Ok(m)
                if m.uid() != nix::unistd::geteuid().as_raw()
                    || m.gid() != nix::unistd::getegid().as_raw() =>
            {
                Some((m.uid(), m.gid()))
            }
            Ok(_) => None,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => {
                return Err(io(format!("cannot inspect {}", self.dir.display()))(e));
            }
        };
        let mut n = 0;
        for (name, v) in &self.files {
            match write_atomic(&self.dir, name, v.expose().as_bytes(), owner) {
                Ok(()) => n += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(n),
                Err(e) => {
                    return Err(io(format!(
                        "cannot write {name} into {}",
                        self.dir.display()
                    ))(e));
                }
            }
        }
        Ok(n)
    }
}

/// [`prepare_refresh`] then [`Refresh::apply`] for one agent.
pub fn refresh(
    vault: &Vault,
    agent: &str,
    grants: &[SecretGrant],
    root: &Path,
) -> Result<usize, SecretsError> {
    match prepare_refresh(vault, agent, grants, root)? {
        Some(r) => r.apply(),
        None => Ok(0),
    }
}

/// Removes the agent's directory (it exited).
pub fn remove(root: &Path, agent: &str) {
    let dir = agent_dir(root, agent);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(
            agent,
            "cannot remove the credentials directory {}: {e}",
            dir.display()
        ),
    }
}
