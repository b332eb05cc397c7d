//! The running daemon's shared context: what every request handler can reach.

use crate::actors::SupervisorHandle;
use crate::actors::breaker::{BreakerConfig, BreakerHandle};
use crate::actors::budget::BudgetHandle;
use crate::actors::supervisor::ReloadSummary;
use crate::config::Config;
use crate::gateway::Gateway;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Instant;

/// Paths fixed for the daemon's lifetime (flags and env win over the file, and a
/// reload never moves them).
#[derive(Debug, Clone)]
pub struct Paths {
    pub config: PathBuf,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
}

impl Paths {
    /// Where agents' credentials directories go: next to the socket (the
    /// runtime directory, a tmpfs under systemd), never the state directory.
    pub fn credentials_root(&self) -> PathBuf {
        self.socket.parent().map_or_else(
            || self.state_dir.join("credentials"),
            |d| d.join("credentials"),
        )
    }
}

#[derive(Debug)]
pub struct Daemon {
    pub paths: Paths,
    pub supervisor: SupervisorHandle,
    pub budget: BudgetHandle,
    pub breaker: BreakerHandle,
    pub gateway: Arc<Gateway>,
    config: RwLock<Arc<Config>>,
    config_loaded_at: RwLock<u64>,
    pub started: Instant,
    pub gateway_addr: Option<SocketAddr>,
    pub daemon_uid: u32,
    /// Serializes reloads (SIGHUP and `ironctl daemon reload` may race).
    reload_lock: tokio::sync::Mutex<()>,
    /// The secrets store (maybe disabled) and the audit trail.
    pub secrets: crate::secrets::Secrets,
    /// What agents' channels share: rotation pushes go out through it.
    pub cage: Arc<crate::cage::CageServices>,
}

impl Daemon {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        paths: Paths,
        config: Config,
        supervisor: SupervisorHandle,
        budget: BudgetHandle,
        breaker: BreakerHandle,
        gateway: Arc<Gateway>,
        gateway_addr: Option<SocketAddr>,
        secrets: crate::secrets::Secrets,
    ) -> Self {
        Daemon {
            paths,
            supervisor,
            budget,
            breaker,
            gateway,
            config: RwLock::new(Arc::new(config)),
            config_loaded_at: RwLock::new(crate::util::unix_secs()),
            started: Instant::now(),
            gateway_addr,
            daemon_uid: nix::unistd::geteuid().as_raw(),
            reload_lock: tokio::sync::Mutex::new(()),
            secrets,
            cage: Arc::new(crate::cage::CageServices::default()),
        }
    }

    /// The services agents' channels were started with (set at start, so a
    /// secrets reload can push rotations to running agents).
    pub fn with_cage(mut self, cage: Arc<crate::cage::CageServices>) -> Self {
        self.cage = cage;
        self
    }

    /// Rotation (`ironctl secrets reload`, SIGUSR1): rebuilds the gateway's
    /// provider keys from the store (calls in flight finish on the old ones)
    /// and rewrites running agents' credential files atomically. Everything is
    /// read before anything changes: a failure keeps the old state. Running
    /// agents granted a secret that changed since the last reload get a
    /// `SecretsRotated` push on their channel.
    pub async fn reload_secrets(&self, actor: &crate::audit::Actor) -> Result<String, String> {
        use crate::audit::Draft;
        use ironcage_shared::protocol::AuditOutcome;
        let _guard = self.reload_lock.lock().await;
        let config = self.config();
        // No entry, no action: the reload is on record before it changes anything.
        if let Err(e) = self
            .secrets
            .audit()
            .record_durable(Draft::new(
                actor.clone(),
                "secrets reload",
                "*",
                AuditOutcome::Requested,
            ))
            .await
        {
            tracing::error!("secrets reload refused: the audit trail cannot be written: {e}");
            return Err(format!(
                "secrets reload refused: the audit trail cannot be written: {e}"
            ));
        }
        let result = async {
            let vault = self.secrets.vault().map_err(|e| e.to_string())?.clone();
            let root = self.paths.credentials_root();
            let agents = config.agents.clone();
            let secrets = self.secrets.clone();
            // The new values are masked out of the agents' output before
            // their files are written.
            let mut logs = std::collections::HashMap::new();
            for a in agents.iter().filter(|a| !a.secrets.is_empty()) {
                if let Ok(l) = self.supervisor.logs(&a.name).await {
                    logs.insert(a.name.to_string(), l);
                }
            }
            // Store reads and file writes: off the async threads.
            let files = tokio::task::spawn_blocking(move || {
                let snapshot = crate::gateway::Snapshot::build_with(&config, Some(&secrets), true)?;
                // Every agent's values first: a missing one changes no file.
                let mut pending = Vec::new();
                for a in &agents {
                    if let Some(r) = crate::secrets::delivery::prepare_refresh(&vault, a.name.as_str(), &a.secrets, &root)
                        .map_err(|e| e.to_string())?
                    {
                        pending.push(r);
                    }
                }
                let heads = vault.heads().map_err(|e| e.to_string())?;
                let mut n = 0;
                for r in pending {
                    let (agent, values) = r.values();
                    if let Some(l) = logs.get(agent) {
                        l.mask_secrets(values);
                    }
                    n += r.apply().map_err(|e| e.to_string())?;
                }
                Ok::<_, String>((n, heads, snapshot))
            })
            .await
            .map_err(|e| e.to_string())??;
            let (files, heads, snapshot) = files;
            let keys = snapshot.providers.iter().filter(|p| p.key.is_some()).count();
            self.gateway.swap_snapshot(snapshot);
            let rotated = self.cage.secrets_reloaded(heads);
            Ok::<String, String>(format!(
                "secrets reloaded: {keys} provider keys in the gateway, {files} credential files rewritten, {rotated} secrets changed since the last reload (running agents granted one are told)"
            ))
        }
        .await;
        let (outcome, detail) = match &result {
            Ok(s) => (AuditOutcome::Ok, s.clone()),
            Err(e) => (AuditOutcome::Failed, e.clone()),
        };
        if let Err(e) = self
            .secrets
            .audit()
            .record_durable(
                Draft::new(actor.clone(), "secrets reload", "*", outcome).detail(detail),
            )
            .await
        {
            tracing::error!("cannot record the secrets reload: {e}");
            return Err(match result {
                Ok(_) => {
                    format!("secrets were reloaded, but the outcome could not be recorded: {e}")
                }
                Err(why) => format!("{why}; and the failure could not be recorded: {e}"),
            });
        }
        result
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.read().expect("config lock").clone()
    }

    pub fn config_loaded_at(&self) -> u64 {
        *self.config_loaded_at.read().expect("config lock")
    }

    /// Loads the config with the daemon's fixed paths applied.
    pub fn load_config(paths: &Paths) -> Result<Config, crate::config::ConfigError> {
        let mut c = Config::load(&paths.config)?;
        c.daemon.socket = paths.socket.clone();
        c.daemon.state_dir = paths.state_dir.clone();
        Ok(c)
    }

    /// Re-reads the config file and applies it. An invalid file changes nothing.
    pub async fn reload(&self) -> Result<ReloadSummary, String> {
        let _guard = self.reload_lock.lock().await;
        crate::notify::reloading();
        let result = self.reload_locked().await;
        crate::notify::notify("READY=1");
        match &result {
            Ok(s) => tracing::info!("configuration reloaded: {s}"),
            Err(e) => tracing::error!(
                "configuration reload rejected; the running configuration stays: {e}"
            ),
        }
        result
    }

    async fn reload_locked(&self) -> Result<ReloadSummary, String> {
        let new = Self::load_config(&self.paths).map_err(|e| e.to_string())?;
        let old = self.config();
        if new.gateway.listen != old.gateway.listen {
            tracing::warn!("gateway.listen changed; it takes effect at the next daemon restart");
        }
        // Everything that can fail is checked before anything changes.
        self.gateway.reload(&new)?;
        self.budget
            .apply_config(crate::lifecycle::budget_agents(&new), new.budget.clone())
            .await;
        self.breaker
            .apply_config(BreakerConfig::from_config(&new))
            .await;
        let summary = self
            .supervisor
            .apply(new.agents.clone())
            .await
            .map_err(|e| e.to_string())?;
        if let Ok(v) = self.secrets.vault() {
            v.set_keep_versions(new.secrets.keep_versions);
        }
        *self.config.write().expect("config lock") = Arc::new(new);
        *self.config_loaded_at.write().expect("config lock") = crate::util::unix_secs();
        Ok(summary)
    }
}
