//! Start-up, signals and shutdown of the daemon.
//!
//! Start: validate the config, take the state-dir and socket locks (a second
//! daemon refuses with a clear message), remove a stale socket left by a crash,
//! bind, start the actors and agents, then tell systemd `READY=1`.
//! Shutdown (SIGTERM, SIGINT or [`Shutdown::trigger`]): `STOPPING=1`, stop
//! accepting, stop every agent gracefully, remove the socket, exit 0.

use crate::actors::SupervisorHandle;
use crate::actors::agent::SpawnEnv;
use crate::actors::breaker::{BreakerConfig, BreakerHandle};
use crate::actors::budget::{BudgetHandle, SystemClock};
use crate::config::Config;
use crate::config::ConfigError;
use crate::daemon::{Daemon, Paths};
use crate::gateway::Gateway;
use crate::registry::AgentKeys;
use anyhow::{Context as _, bail};
use ironcage_shared::protocol::StopReason;
use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// How to start the daemon.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub config: PathBuf,
    /// Overrides `[daemon] socket` (flag or `IRONCAGE_SOCKET`).
    pub socket: Option<PathBuf>,
    /// Overrides `[daemon] state_dir` (flag or `IRONCAGE_STATE_DIR`).
    pub state_dir: Option<PathBuf>,
    /// Listen for SIGTERM/SIGINT/SIGHUP/SIGUSR1 (the binary does; in-process tests don't).
    pub handle_signals: bool,
    /// Overrides `[secrets] master_key_file` (flag).
    pub master_key_file: Option<PathBuf>,
}

/// Makes the process non-dumpable: no core dumps, and no ptrace or
/// /proc/PID/mem by other processes of the same user (keys live in memory).
fn set_non_dumpable() {
    // SAFETY: prctl with PR_SET_DUMPABLE takes plain integers.
    let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if rc != 0 {
        tracing::warn!(
            "cannot make the daemon non-dumpable: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Resolves the master key and opens the secrets store and the audit trail.
/// A wrong key is an error before anything is written.
fn open_secrets(
    config: &Config,
    opts: &RunOptions,
    store: Arc<crate::store::Store>,
) -> anyhow::Result<crate::secrets::Secrets> {
    let key_file = opts
        .master_key_file
        .as_deref()
        .or(config.secrets.master_key_file.as_deref());
    let master = crate::secrets::master::resolve(
        &|k| std::env::var(k).ok(),
        key_file,
        &config.secrets.credential,
    )?;
    let started = std::time::Instant::now();
    let secrets =
        crate::secrets::Secrets::open(store, master.as_ref(), config.secrets.keep_versions)?;
    match (&master, secrets.vault()) {
        (Some(m), Ok(v)) => tracing::info!(
            key_from = %m.source,
            generation = v.generation(),
            unlock_ms = started.elapsed().as_millis() as u64,
            "secrets store unlocked"
        ),
        _ => tracing::info!(
            "secrets disabled: no master key ({} unset, no key file, no credential {:?}); the audit trail runs without checkpoints",
            crate::secrets::master::ENV_VAR,
            config.secrets.credential
        ),
    }
    Ok(secrets)
}

/// The PII token store, sealing with the master key when the daemon has one;
/// tokens an earlier run sealed with the key file move under it (and the file
/// goes) before anything is served. A re-seal that cannot run is logged, not
/// fatal: those tokens stay revealable with the file, as before.
fn open_pii_vault(
    store: &Arc<crate::store::Store>,
    state_dir: &Path,
    secrets: &crate::secrets::Secrets,
) -> anyhow::Result<crate::pii_vault::PiiVault> {
    let mut vault = crate::pii_vault::PiiVault::open(store.clone(), state_dir)?;
    let Some(key) = secrets.pii_token_key() else {
        return Ok(vault);
    };
    vault = vault.with_master_key(key);
    let resealed = vault.seal_file_tokens_under_master();
    if let Ok(Some(r)) = &resealed {
        secrets.audit().record(
            crate::audit::Draft::new(
                crate::audit::Actor::daemon(),
                "pii_tokens_resealed",
                crate::pii_vault::KEY_FILE,
                ironcage_shared::protocol::AuditOutcome::Ok,
            )
            .detail(format!(
                "{} tokens re-sealed with the secrets master key; {} left under the key file, which was {}",
                r.moved,
                r.left,
                if r.key_removed { "deleted" } else { "kept" }
            )),
        );
    }
    match resealed {
        Ok(None) => {}
        Ok(Some(r)) if r.key_removed => tracing::info!(
            tokens = r.moved,
            "PII tokens re-sealed with the secrets master key; the token key file {} was deleted",
            crate::pii_vault::KEY_FILE
        ),
        Ok(Some(r)) => tracing::warn!(
            tokens = r.moved,
            unreadable = r.left,
            "PII tokens re-sealed with the secrets master key, except {} the token key file {} cannot open; the file is kept for them",
            r.left,
            crate::pii_vault::KEY_FILE
        ),
        Err(e) => tracing::warn!(
            "PII tokens sealed with the token key file stay so (with the master key, new ones are not): {e}"
        ),
    }
    Ok(vault)
}

/// Stops a running daemon from another thread (tests, embedding).
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Sender<bool>);

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown(watch::channel(false).0)
    }
}

impl Shutdown {
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }
    fn subscribe(&self) -> watch::Receiver<bool> {
        self.0.subscribe()
    }
}

/// A held `flock`, released on drop.
struct LockFile {
    _lock: Flock<File>,
}

fn lock(path: &Path, what: &str) -> anyhow::Result<LockFile> {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("cannot open lock file {}", path.display()))?;
    let mut holder = String::new();
    let _ = f.read_to_string(&mut holder);
    let mut lock = match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            let pid = holder.trim();
            bail!(
                "another ironcaged{} is already using {what} (lock {} is held); stop it first, or give this one its own --state-dir and --socket",
                if pid.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {pid})")
                },
                path.display()
            );
        }
        Err((_, e)) => bail!("cannot lock {}: {e}", path.display()),
    };
    lock.set_len(0)?;
    lock.rewind()?;
    writeln!(lock, "{}", std::process::id())?;
    Ok(LockFile { _lock: lock })
}

/// Removes a socket file left behind by a daemon that died without cleaning up;
/// refuses if something still answers on it.
fn clear_stale_socket(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", path.display())),
    };
    if !meta.file_type().is_socket() {
        bail!(
            "{} exists and is not a socket; remove it or choose another --socket",
            path.display()
        );
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => bail!(
            "another daemon is answering on {}; stop it first or choose another --socket",
            path.display()
        ),
        Err(_) => {
            std::fs::remove_file(path)
                .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
            tracing::info!(socket = %path.display(), "removed a stale socket left by a daemon that did not shut down");
            Ok(())
        }
    }
}

/// Creates the socket's directory if needed, searchable by all (0755): the
/// socket's own mode and the roles decide who may talk, and the daemon's umask
/// (077) would otherwise lock viewers out. An existing directory is left as
/// it is (systemd's RuntimeDirectory=, an operator's choice).
fn socket_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create socket directory {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot open up socket directory {}", dir.display()))
}

fn bind_socket(
    path: &Path,
    group: Option<&str>,
) -> anyhow::Result<std::os::unix::net::UnixListener> {
    if let Some(dir) = path.parent() {
        socket_dir(dir)?;
    }
    clear_stale_socket(path)?;
    let l = std::os::unix::net::UnixListener::bind(path)
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    if let Some(g) = group {
        let gid = nix::unistd::Group::from_name(g)?
            .with_context(|| {
                format!("socket_group {g:?} does not exist; create it or remove the setting")
            })?
            .gid;
        nix::unistd::chown(path, None, Some(gid))
            .with_context(|| format!("cannot give {} to group {g}", path.display()))?;
    }
    l.set_nonblocking(true)?;
    Ok(l)
}

/// Each agent with its budget, as the ledger wants them.
pub(crate) fn budget_agents(
    config: &Config,
) -> Vec<(
    ironcage_shared::AgentName,
    Option<crate::config::BudgetSpec>,
)> {
    config
        .agents
        .iter()
        .map(|a| (a.name.clone(), a.budget))
        .collect()
}

/// Raises the open-file soft limit to the hard limit: every agent costs a few
/// descriptors (two pipes, a log file).
fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::warn!("cannot raise the open-file limit from {soft} to {hard}: {e}");
    }
}

/// Runs the daemon until SIGTERM/SIGINT or `shutdown` fires. Blocks the calling
/// thread, which becomes the actor thread.
pub fn run(opts: RunOptions, shutdown: Shutdown) -> anyhow::Result<()> {
    crate::util::restrict_umask();
    let mut config =
        crate::config::Config::load(&opts.config).map_err(|e: ConfigError| anyhow::anyhow!(e))?;
    if let Some(s) = &opts.socket {
        config.daemon.socket = s.clone();
    }
    if let Some(s) = &opts.state_dir {
        config.daemon.state_dir = s.clone();
    }
    let paths = Paths {
        config: std::fs::canonicalize(&opts.config).unwrap_or_else(|_| opts.config.clone()),
        socket: config.daemon.socket.clone(),
        state_dir: config.daemon.state_dir.clone(),
    };
    std::fs::create_dir_all(&paths.state_dir).with_context(|| {
        format!(
            "cannot create state directory {}",
            paths.state_dir.display()
        )
    })?;
    let _state_lock = lock(
        &paths.state_dir.join("ironcaged.lock"),
        &format!("state directory {}", paths.state_dir.display()),
    )?;
    let mut socket_lock_path = paths.socket.clone().into_os_string();
    socket_lock_path.push(".lock");
    if let Some(dir) = paths.socket.parent() {
        socket_dir(dir)?;
    }
    let _socket_lock = lock(
        Path::new(&socket_lock_path),
        &format!("socket {}", paths.socket.display()),
    )?;
    let log_dir = paths.state_dir.join("logs");
    std::fs::create_dir_all(&log_dir)
        .with_context(|| format!("cannot create {}", log_dir.display()))?;
    raise_nofile();
    set_non_dumpable();
    let store = Arc::new(crate::store::Store::open(&paths.state_dir)?);
    let secrets = open_secrets(&config, &opts, store.clone())?;
    let credentials_root = paths.credentials_root();
    let gateway_listener =
        std::net::TcpListener::bind(config.gateway.listen).with_context(|| {
            format!(
                "cannot listen on {} for the LLM gateway ([gateway] listen)",
                config.gateway.listen
            )
        })?;
    gateway_listener.set_nonblocking(true)?;
    let gateway_addr = gateway_listener.local_addr()?;
    let std_listener = bind_socket(&paths.socket, config.daemon.socket_group.as_deref())?;

    let system = actix_rt::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ironcaged-io")
            .enable_all()
            .build()
            .expect("tokio runtime")
    });
    let socket_path = paths.socket.clone();
    let result = system.block_on(async move {
        let signals = if opts.handle_signals { Some(Signals::install()?) } else { None };
        let keys = Arc::new(AgentKeys::default());
        let cage = Arc::new(crate::cage::CageServices::default());
        let env = SpawnEnv {
            gateway_url: Some(format!("http://{gateway_addr}")),
            cage: cage.clone(),
            secrets: Some(secrets.clone()),
            credentials_root,
        };
        let supervisor = SupervisorHandle::start(env, keys.clone(), log_dir);
        let stopper = supervisor.clone();
        let on_exhausted_stop: Arc<dyn Fn(ironcage_shared::AgentName) + Send + Sync> = Arc::new(move |agent| {
            let s = stopper.clone();
            tokio::spawn(async move {
                tracing::warn!(agent = %agent, "budget exhausted: stopping the agent (on_exhausted = \"stop\")");
                if let Err(e) = s.stop_agent(&agent, StopReason::BudgetExhausted).await {
                    tracing::error!(agent = %agent, "cannot stop the agent: {e}");
                }
            });
        });
        let pii_vault = Arc::new(open_pii_vault(&store, &paths.state_dir, &secrets)?);
        let budget = BudgetHandle::start(
            store,
            budget_agents(&config),
            config.budget.clone(),
            Arc::new(SystemClock),
            on_exhausted_stop,
        )?;
        cage.set_budget(budget.clone());
        cage.set_secrets(secrets.clone());
        let breaker = BreakerHandle::start(BreakerConfig::from_config(&config), Arc::new(SystemClock));
        breaker.set_audit(secrets.audit().clone());
        budget.set_audit(secrets.audit().clone());
        let gateway = Arc::new(
            Gateway::with_secrets(&config, keys, budget.clone(), breaker.clone(), Some(secrets.clone()))
                .map_err(anyhow::Error::msg)?
                .with_vault(pii_vault),
        );
        let agents = config.agents.clone();
        let daemon = Arc::new(Daemon::new(paths, config, supervisor.clone(), budget.clone(), breaker, gateway.clone(), Some(gateway_addr), secrets.clone()).with_cage(cage.clone()));
        let listener = tokio::net::UnixListener::from_std(std_listener)?;
        let (stop_tx, stop_rx) = watch::channel(false);
        // The gateway keeps serving while agents stop (they may finish calls
        // in their grace period); it stops once they are gone.
        let (gw_stop_tx, gw_stop_rx) = watch::channel(false);
        let gw_workers = crate::gateway::spawn_workers(gateway_listener, gateway, gw_stop_rx)
            .context("cannot start the LLM gateway's worker threads")?;
        tracing::info!(gateway = %format!("http://{gateway_addr}"), "LLM gateway listening");
        supervisor.apply(agents).await?;
        // Clients connecting before this wait in the listen backlog, and then
        // see every configured agent.
        let server = tokio::spawn(crate::control::serve(listener, daemon.clone(), stop_rx));
        tracing::info!(socket = %daemon.paths.socket.display(), pid = std::process::id(), "ironcaged ready");
        crate::notify::notify("READY=1");

        wait_for_stop(&daemon, shutdown, signals).await?;

        crate::notify::notify("STOPPING=1");
        tracing::info!("shutting down: stopping every agent");
        let _ = stop_tx.send(true);
        let _ = server.await;
        supervisor.stop_all(StopReason::Shutdown).await;
        let _ = gw_stop_tx.send(true);
        let _ = tokio::task::spawn_blocking(move || gw_workers.join()).await;
        // Everything settled so far is committed before we exit.
        budget.close().await;
        // The trail ends on a checkpoint (when keyed), so truncation shows.
        let log = secrets.audit().log().clone();
        if log.keyed() {
            let cp = log.clone();
            match tokio::task::spawn_blocking(move || cp.checkpoint_now()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!("cannot write the final audit checkpoint: {e}"),
                Err(e) => tracing::error!("cannot write the final audit checkpoint: {e}"),
            }
        }
        // The journal is a second witness of the head (the MAC is not secret):
        // a later `ironctl audit verify --anchor SEQ:MAC` catches a rollback.
        match log.head() {
            Some((seq, mac)) => tracing::info!(
                "audit trail head at shutdown: anchor {seq}:{} ({} entries)",
                crate::audit::log::hex(&mac),
                log.last_seq()
            ),
            None => tracing::info!(
                "audit trail head at shutdown: no checkpoint yet ({} entries)",
                log.last_seq()
            ),
        }
        tracing::info!("all agents stopped; bye");
        anyhow::Ok(())
    });
    let _ = std::fs::remove_file(&socket_path);
    result
}

/// The daemon's signal streams, installed before anything else starts so a
/// signal that arrives during start-up waits to be handled instead of taking
/// its default action.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("cannot install SIGHUP handler")?,
            usr1: signal(SignalKind::user_defined1()).context("cannot install SIGUSR1 handler")?,
        })
    }
}

async fn wait_for_stop(
    daemon: &Daemon,
    shutdown: Shutdown,
    signals: Option<Signals>,
) -> anyhow::Result<()> {
    let mut stop = shutdown.subscribe();
    let Some(Signals {
        mut term,
        mut int,
        mut hup,
        mut usr1,
    }) = signals
    else {
        let _ = stop.wait_for(|s| *s).await;
        return Ok(());
    };
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM received"); return Ok(()); }
            _ = int.recv() => { tracing::info!("SIGINT received"); return Ok(()); }
            _ = stop.wait_for(|s| *s) => return Ok(()),
            _ = hup.recv() => {
                tracing::info!("SIGHUP received: reloading the configuration");
                // Errors are logged by reload(); the running config stays.
                let _ = daemon.reload().await;
            }
            _ = usr1.recv() => {
                tracing::info!("SIGUSR1 received: reloading secrets");
                match daemon.reload_secrets(&crate::audit::Actor::daemon()).await {
                    Ok(s) => tracing::info!("{s}"),
                    Err(e) => tracing::error!("secrets reload failed; the running keys and files stay: {e}"),
                }
            }
        }
    }
}
