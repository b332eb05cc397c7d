//! One supervised agent: its process, its restarts, its stop.
//!
//! The process runs in its own process group (so signals reach everything it
//! started) with a clean environment built here, never the daemon's. Its exit is
//! observed by a future spawned in this actor's context and delivered back as a
//! method call, tagged with a generation number so a late exit of an old process
//! can never be mistaken for the current one.

use crate::cage::{CageServices, Liveness};
use crate::config::{AgentSpec, RestartPolicy};
use crate::logs::AgentLogs;
use crate::registry::{AgentKeys, StatusBoard};
use actix::prelude::*;
use ironcage_shared::agent_channel::{ENV_FD, ENV_HEARTBEAT_MS};
use ironcage_shared::protocol::{AgentState, ExitInfo, StopReason, Stream};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::oneshot;

/// Where agents reach the daemon's gateway, handed to every spawn.
#[derive(Debug, Clone)]
pub struct SpawnEnv {
    /// `http://127.0.0.1:PORT`, or `None` when the gateway is not running.
    pub gateway_url: Option<String>,
    /// What each agent's channel serves (see `crate::cage`).
    pub cage: Arc<CageServices>,
    /// The secrets store and audit trail (granted secrets, lifecycle entries).
    pub secrets: Option<crate::secrets::Secrets>,
    /// Where per-agent credentials directories are made (runtime dir).
    pub credentials_root: std::path::PathBuf,
}

impl SpawnEnv {
    /// Records a lifecycle entry (queued; group-committed).
    fn audit(&self, agent: &str, action: &str, detail: String) {
        if let Some(s) = &self.secrets {
            s.audit().record(
                crate::audit::Draft::new(
                    crate::audit::Actor::daemon(),
                    action,
                    agent,
                    ironcage_shared::protocol::AuditOutcome::Ok,
                )
                .detail(detail),
            );
        }
    }

    /// Writes the agent's granted secrets; `Ok(None)` when it has none.
    fn deliver(
        &self,
        spec: &AgentSpec,
    ) -> Result<Option<crate::secrets::delivery::Delivered>, String> {
        if spec.secrets.is_empty() {
            return Ok(None);
        }
        let vault = self
            .secrets
            .as_ref()
            .ok_or_else(|| crate::secrets::SecretsError::Disabled.to_string())?
            .vault()
            .map_err(|e| e.to_string())?;
        // A rotation (`secrets reload`) that runs while this delivery is
        // under way finds no directory to refresh yet. So: note the granted
        // secrets' heads, deliver, and deliver again if any of them moved
        // meanwhile; a change after the last look finds the files in place
        // and the reload refreshes them.
        let granted = |vault: &crate::secrets::vault::Vault| {
            vault.heads_of(
                spec.secrets
                    .iter()
                    .map(|g| (g.secret.name.as_str(), g.secret.env)),
            )
        };
        let mut tries = 0;
        loop {
            let before = granted(vault).map_err(|e| e.to_string())?;
            let d = crate::secrets::delivery::deliver(
                vault,
                spec.name.as_str(),
                &spec.secrets,
                &self.credentials_root,
                spec.user.as_ref().map(|u| (u.uid, u.gid)),
            )
            .map_err(|e| e.to_string())?;
            tries += 1;
            if tries >= 3 || granted(vault).map_err(|e| e.to_string())? == before {
                return Ok(Some(d));
            }
        }
    }
}

/// Default `PATH` of an agent, unless its config sets one.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Environment variables the daemon sets for every agent; the config may not.
pub const RESERVED_ENV: &[&str] = &[
    "IRONCAGE_AGENT",
    "OPENAI_BASE_URL",
    "OPENAI_API_BASE",
    "OPENAI_API_KEY",
    "ANTHROPIC_BASE_URL",
    "ANTHROPIC_API_KEY",
    "IRONCAGE_FD",
    "IRONCAGE_HEARTBEAT_MS",
];

#[derive(Debug)]
enum Phase {
    /// Not running and not scheduled: stopped, exited or failed.
    Idle,
    /// Its secrets are being delivered (on the blocking pool); the process
    /// starts when they are. `stop`: a stop arrived meanwhile (reason, and
    /// whether to start again), applied instead of starting.
    Starting {
        stop: Option<(StopReason, bool)>,
    },
    Running {
        pid: u32,
        started: Instant,
    },
    /// SIGTERM sent; `then_start` restarts it once it exited.
    Stopping {
        pid: u32,
        started: Instant,
        reason: StopReason,
        then_start: bool,
    },
    Backoff {
        until: Instant,
        handle: SpawnHandle,
    },
}

pub struct AgentActor {
    spec: AgentSpec,
    env: Arc<SpawnEnv>,
    keys: Arc<AgentKeys>,
    board: Arc<StatusBoard>,
    logs: Arc<AgentLogs>,
    phase: Phase,
    /// What operators see while `Idle`.
    idle_state: AgentState,
    generation: u64,
    restarts: u32,
    /// When recent restarts happened, for the crash-loop limit.
    restart_times: VecDeque<Instant>,
    consecutive_failures: u32,
    last_exit: Option<ExitInfo>,
    stop_reason: Option<StopReason>,
    started_wall: Option<SystemTime>,
    /// An operator sent a terminating signal: its exit is a stop, not a crash.
    operator_kill: bool,
    stop_waiters: Vec<oneshot::Sender<()>>,
    /// The current process's channel activity (the watchdog's input).
    liveness: Option<Arc<Liveness>>,
}

impl std::fmt::Debug for AgentActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentActor")
            .field("name", &self.spec.name)
            .field("phase", &self.phase)
            .finish()
    }
}

impl AgentActor {
    pub fn new(
        spec: AgentSpec,
        env: Arc<SpawnEnv>,
        keys: Arc<AgentKeys>,
        board: Arc<StatusBoard>,
        logs: Arc<AgentLogs>,
    ) -> Self {
        let a = AgentActor {
            spec,
            env,
            keys,
            board,
            logs,
            phase: Phase::Idle,
            idle_state: AgentState::Stopped,
            generation: 0,
            restarts: 0,
            restart_times: VecDeque::new(),
            consecutive_failures: 0,
            last_exit: None,
            stop_reason: None,
            started_wall: None,
            operator_kill: false,
            stop_waiters: Vec::new(),
            liveness: None,
        };
        a.publish();
        a
    }

    fn state(&self) -> AgentState {
        match self.phase {
            Phase::Idle => self.idle_state,
            Phase::Starting { .. } => AgentState::Starting,
            Phase::Running { .. } => AgentState::Running,
            Phase::Stopping { .. } => AgentState::Stopping,
            Phase::Backoff { .. } => AgentState::Backoff,
        }
    }

    fn pid(&self) -> Option<u32> {
        match self.phase {
            Phase::Running { pid, .. } | Phase::Stopping { pid, .. } => Some(pid),
            _ => None,
        }
    }

    fn publish(&self) {
        let next_restart = match &self.phase {
            Phase::Backoff { until, .. } => Some(*until),
            _ => None,
        };
        self.board.update(crate::registry::AgentStatus {
            name: self.spec.name.clone(),
            state: self.state(),
            pid: self.pid(),
            restarts: self.restarts,
            started: match self.phase {
                Phase::Running { .. } | Phase::Stopping { .. } => self.started_wall,
                _ => None,
            },
            last_exit: self.last_exit,
            stop_reason: self.stop_reason,
            restart_policy: self.spec.restart.as_str(),
            command: self.spec.command.clone(),
            next_restart,
            user: self
                .spec
                .user
                .as_ref()
                .map(crate::agent_user::AgentUser::describe_with_group),
        });
    }

    fn note(&self, msg: String) {
        self.logs.push(Stream::Stderr, format!("[ironcaged] {msg}"));
    }

    fn build_command(
        &self,
        key: &str,
        channel_fd: RawFd,
        switch: Option<crate::agent_user::Switch>,
    ) -> tokio::process::Command {
        let spec = &self.spec;
        let mut cmd = match &spec.python {
            None => {
                let mut c = tokio::process::Command::new(&spec.command[0]);
                c.args(&spec.command[1..]);
                c
            }
            Some(py) => {
                let mut c = tokio::process::Command::new(&py.interpreter);
                c.arg("-c")
                    .arg(crate::cage::module::BOOTSTRAP)
                    .arg(&py.script)
                    .args(&py.args);
                c
            }
        };
        cmd.env_clear()
            .current_dir(&spec.working_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(false);
        cmd.env("PATH", DEFAULT_PATH)
            .env("HOME", &spec.working_dir)
            .env("LANG", "C.UTF-8")
            .env("PYTHONUNBUFFERED", "1");
        // Its own user's HOME, USER and LOGNAME, as a login would set them
        // (the config's env and inherit_env, applied below, win).
        if let Some(u) = &spec.user {
            if let Some(home) = &u.home {
                cmd.env("HOME", home);
            }
            if let Some(name) = &u.name {
                cmd.env("USER", name).env("LOGNAME", name);
            }
        }
        for k in &spec.inherit_env {
            if let Some(v) = std::env::var_os(k) {
                cmd.env(k, v);
            }
        }
        cmd.envs(&spec.env);
        cmd.env("IRONCAGE_AGENT", spec.name.as_str());
        cmd.env(ENV_FD, channel_fd.to_string());
        if let Some(w) = spec.watchdog {
            // Several beats per watchdog period, so one late beat is no restart.
            let ms = (w.as_millis() as u64 / 4).clamp(10, 10_000);
            cmd.env(ENV_HEARTBEAT_MS, ms.to_string());
        }
        if let Some(py) = &spec.python {
            // The module first, then whatever the agent configured.
            let configured = spec.env.get("PYTHONPATH").cloned().or_else(|| {
                spec.inherit_env
                    .iter()
                    .any(|k| k == "PYTHONPATH")
                    .then(|| std::env::var("PYTHONPATH").ok())
                    .flatten()
            });
            let mut path = py.module_dir.as_os_str().to_owned();
            if let Some(c) = configured.filter(|c| !c.is_empty()) {
                path.push(":");
                path.push(c);
            }
            cmd.env("PYTHONPATH", path);
        }
        if let Some(url) = &self.env.gateway_url {
            cmd.env("OPENAI_BASE_URL", format!("{url}/v1"))
                .env("OPENAI_API_BASE", format!("{url}/v1"))
                .env("ANTHROPIC_BASE_URL", url)
                .env("OPENAI_API_KEY", key)
                .env("ANTHROPIC_API_KEY", key);
        }
        let parent = std::process::id();
        let umask = crate::util::agent_umask();
        // SAFETY: only async-signal-safe calls (setgroups, setgid, setuid,
        // access, chdir, write, prctl, capget, capset, getppid, signal,
        // fcntl, umask) run
        // between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // First: the identity. PR_SET_PDEATHSIG below is cleared by a
                // uid change, so it must come after.
                if let Some(s) = &switch {
                    s.apply()?;
                }
                // Capabilities the daemon was given (systemd
                // AmbientCapabilities=) never pass to an agent. (EINVAL on
                // kernels without ambient capabilities, which have none to pass.)
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                );
                // Nor the inheritable set systemd fills from the same line
                // (with it, a binary carrying file capabilities would get
                // them back). capget/capset, version 3: a header
                // {version, pid} and two {effective, permitted, inheritable}.
                let mut header: [u32; 2] = [0x2008_0522, 0];
                let mut data: [u32; 6] = [0; 6];
                if libc::syscall(libc::SYS_capget, header.as_mut_ptr(), data.as_mut_ptr()) == 0
                    && (data[2] != 0 || data[5] != 0)
                {
                    data[2] = 0;
                    data[5] = 0;
                    if libc::syscall(libc::SYS_capset, header.as_mut_ptr(), data.as_ptr()) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // The daemon's own files are private (umask 077); the agent
                // gets the umask the daemon was started with.
                libc::umask(umask);
                // The agent's end of its channel is the one descriptor it
                // inherits (everything the daemon opens is close-on-exec, and
                // this is cleared only here, in the child).
                if libc::fcntl(channel_fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Rust ignores SIGPIPE in the daemon; agents get the default back.
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
                // If the daemon dies without stopping it, the agent dies too, so a
                // restarted daemon never runs a second copy.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() != parent as libc::pid_t {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        cmd
    }

    /// A spawn that did not happen: logged on the agent, counted as a failed
    /// run (same backoff and crash-loop rules).
    fn spawn_failed(&mut self, generation: u64, key: String, e: String, ctx: &mut Context<Self>) {
        self.keys.revoke(&key);
        crate::secrets::delivery::remove(&self.env.credentials_root, self.spec.name.as_str());
        let msg = format!(
            "cannot start {:?} in {}: {e}",
            self.spec.command[0],
            self.spec.working_dir.display()
        );
        // note() logs it too (target "agent"), once.
        self.note(msg);
        self.phase = Phase::Running {
            pid: 0,
            started: Instant::now(),
        };
        self.on_exit(
            generation,
            ExitInfo {
                code: Some(127),
                signal: None,
                at: crate::util::unix_secs(),
            },
            key,
            ctx,
        );
    }

    fn spawn(&mut self, ctx: &mut Context<Self>) {
        self.generation += 1;
        let generation = self.generation;
        self.operator_kill = false;
        self.stop_reason = None;
        let key = self.keys.mint(&self.spec.name);
        if self.spec.secrets.is_empty() {
            return self.launch(generation, key, Ok(None), ctx);
        }
        // Delivery reads the store and makes its audit entries durable (an
        // fsync) before any file appears: blocking work, done on the blocking
        // pool rather than on the actor thread every agent shares. The order
        // (audited durably, then delivered) is deliver()'s own.
        let env = self.env.clone();
        let spec = self.spec.clone();
        self.phase = Phase::Starting { stop: None };
        self.publish();
        let task = tokio::task::spawn_blocking(move || env.deliver(&spec));
        let delivered = async move {
            task.await
                .unwrap_or_else(|e| Err(format!("the delivery task failed: {e}")))
        };
        ctx.spawn(
            delivered
                .into_actor(self)
                .map(move |d, act, ctx| act.delivered(generation, key, d, ctx)),
        );
    }

    /// The secrets of spawn `generation` are delivered (or not): start the
    /// process, or, if a stop arrived meanwhile, clean up and apply it.
    fn delivered(
        &mut self,
        generation: u64,
        key: String,
        delivered: Result<Option<crate::secrets::delivery::Delivered>, String>,
        ctx: &mut Context<Self>,
    ) {
        let stop = match self.phase {
            Phase::Starting { stop } if self.generation == generation => stop,
            // No other spawn begins while one is starting; nothing to do.
            _ => {
                self.keys.revoke(&key);
                return;
            }
        };
        let Some((reason, then_start)) = stop else {
            return self.launch(generation, key, delivered, ctx);
        };
        self.keys.revoke(&key);
        crate::secrets::delivery::remove(&self.env.credentials_root, self.spec.name.as_str());
        self.phase = Phase::Idle;
        self.idle_state = AgentState::Stopped;
        self.stop_reason = Some(reason);
        self.finish_stop();
        if then_start {
            self.spawn(ctx);
        } else {
            self.publish();
        }
    }

    /// Starts the process of spawn `generation` with what was delivered.
    fn launch(
        &mut self,
        generation: u64,
        key: String,
        delivered: Result<Option<crate::secrets::delivery::Delivered>, String>,
        ctx: &mut Context<Self>,
    ) {
        let pair = std::os::unix::net::UnixStream::pair().and_then(|(ours, theirs)| {
            // A daemon started with stdin/out/err closed could get 0-2 here,
            // which the child's own stdio would replace: move it above 2
            // (`try_clone` duplicates to the lowest free number >= 3).
            let theirs = if theirs.as_raw_fd() <= 2 {
                theirs.try_clone()?
            } else {
                theirs
            };
            Ok((ours, theirs))
        });
        let spawned = match (&pair, delivered) {
            (Err(e), _) => Err(format!("cannot create the agent's channel: {e}")),
            (_, Err(e)) => Err(format!("its secrets cannot be delivered: {e}")),
            (Ok((_, child_end)), Ok(delivered)) => {
                let switch = match &self.spec.user {
                    None => Ok(None),
                    Some(u) => crate::agent_user::prepare(
                        u,
                        &self.spec.working_dir,
                        self.spec.python.as_ref().map(|p| p.module_dir.as_path()),
                        delivered.as_ref().and_then(|d| d.dir.as_deref()),
                    )
                    .map(Some),
                };
                let (switch, probe) = match switch {
                    Ok(Some((s, p))) => (Some(s), Some(p)),
                    Ok(None) => (None, None),
                    Err(e) => {
                        return self.spawn_failed(
                            generation,
                            key,
                            format!("cannot prepare the switch to its user: {e}"),
                            ctx,
                        );
                    }
                };
                let mut cmd = self.build_command(&key, child_end.as_raw_fd(), switch);
                if let Some(d) = &delivered {
                    for (k, v) in &d.env {
                        cmd.env(k, v.expose());
                    }
                    if let Some(dir) = &d.dir {
                        cmd.env(crate::secrets::delivery::CREDENTIALS_ENV, dir);
                    }
                    // Before the first line it prints.
                    self.logs.mask_secrets(d.values.iter().cloned());
                }
                let r = cmd.spawn();
                // Our copy of the probe's write end went with `cmd`.
                drop(cmd);
                r.map_err(|e| match &probe {
                    Some(p) => p.describe_failure(&e),
                    None => e.to_string(),
                })
            }
        };
        match spawned {
            Err(e) => self.spawn_failed(generation, key, e, ctx),
            Ok(mut child) => {
                let pid = child.id().unwrap_or(0);
                if let Ok((ours, theirs)) = pair {
                    drop(theirs);
                    self.start_channel(ours, generation, ctx);
                }
                if let Some(out) = child.stdout.take() {
                    tokio::spawn(self.logs.clone().capture(out, Stream::Stdout));
                }
                if let Some(err) = child.stderr.take() {
                    tokio::spawn(self.logs.clone().capture(err, Stream::Stderr));
                }
                tracing::info!(agent = %self.spec.name, pid, "agent started");
                self.env.audit(
                    self.spec.name.as_str(),
                    "agent started",
                    format!("pid {pid}, restarts {}", self.restarts),
                );
                self.phase = Phase::Running {
                    pid,
                    started: Instant::now(),
                };
                self.started_wall = Some(SystemTime::now());
                self.publish();
                let wait = async move { child.wait().await };
                ctx.spawn(wait.into_actor(self).map(move |res, act, ctx| {
                    let at = crate::util::unix_secs();
                    let info = match res {
                        Ok(st) => ExitInfo {
                            code: st.code(),
                            signal: st.signal(),
                            at,
                        },
                        Err(_) => ExitInfo {
                            code: None,
                            signal: None,
                            at,
                        },
                    };
                    act.on_exit(generation, info, key, ctx);
                }));
            }
        }
    }

    /// Serves the daemon's end of the new process's channel, and arms the
    /// watchdog if the agent has one.
    fn start_channel(
        &mut self,
        ours: std::os::unix::net::UnixStream,
        generation: u64,
        ctx: &mut Context<Self>,
    ) {
        let live = Liveness::new();
        self.liveness = Some(live.clone());
        match ours
            .set_nonblocking(true)
            .and_then(|()| tokio::net::UnixStream::from_std(ours))
        {
            Ok(stream) => {
                tokio::spawn(crate::cage::channel::serve(
                    stream,
                    self.spec.name.clone(),
                    self.spec.secrets.clone(),
                    self.env.cage.clone(),
                    live,
                    Some(self.logs.clone()),
                ));
            }
            Err(e) => {
                self.note(format!("cannot serve the agent's channel: {e}"));
            }
        }
        if self.spec.watchdog.is_some() {
            self.schedule_watchdog(generation, ctx);
        }
    }

    /// Checks the channel's silence a few times per watchdog period; a silent
    /// agent is restarted (SIGTERM, SIGKILL after the grace, then a fresh start).
    fn schedule_watchdog(&mut self, generation: u64, ctx: &mut Context<Self>) {
        let Some(limit) = self.spec.watchdog else {
            return;
        };
        let every = (limit / 10).clamp(Duration::from_millis(50), Duration::from_secs(1));
        ctx.run_later(every, move |act, ctx| {
            if act.generation != generation || !matches!(act.phase, Phase::Running { .. }) {
                return;
            }
            let Some(limit) = act.spec.watchdog else {
                return;
            };
            let silent = act
                .liveness
                .as_ref()
                .map_or(Duration::ZERO, |l| l.silent_for());
            if silent < limit {
                act.schedule_watchdog(generation, ctx);
                return;
            }
            let msg = format!(
                "watchdog: no heartbeat on the agent channel for {:.1}s (watchdog_secs = {}); restarting the agent",
                silent.as_secs_f64(),
                limit.as_secs_f64()
            );
            tracing::warn!(agent = %act.spec.name, "{msg}");
            act.note(msg);
            act.restarts += 1;
            drop(act.begin_stop(StopReason::Watchdog, true, ctx));
        });
    }

    fn signal_group(&self, pid: u32, sig: Signal) -> nix::Result<()> {
        if pid == 0 {
            return Ok(());
        }
        killpg(Pid::from_raw(pid as i32), sig)
    }

    fn on_exit(&mut self, generation: u64, exit: ExitInfo, key: String, ctx: &mut Context<Self>) {
        self.keys.revoke(&key);
        if generation != self.generation {
            return;
        }
        crate::secrets::delivery::remove(&self.env.credentials_root, self.spec.name.as_str());
        let (pid, started) = match self.phase {
            Phase::Running { pid, started } | Phase::Stopping { pid, started, .. } => {
                (pid, started)
            }
            _ => return,
        };
        // Whatever the leader left behind in its group goes with it.
        if self.signal_group(pid, Signal::SIGKILL).is_ok() && pid != 0 {
            tracing::debug!(agent = %self.spec.name, pid, "killed leftover processes of the agent's group");
        }
        self.last_exit = Some(exit);
        let how = match (exit.code, exit.signal) {
            (Some(c), _) => format!("exited with code {c}"),
            (_, Some(s)) => format!("killed by signal {s}"),
            _ => "ended".to_owned(),
        };
        tracing::info!(agent = %self.spec.name, pid, "agent {how}");
        self.env.audit(
            self.spec.name.as_str(),
            "agent exited",
            format!("pid {pid} {how}"),
        );

        if let Phase::Stopping {
            reason, then_start, ..
        } = self.phase
        {
            self.phase = Phase::Idle;
            self.idle_state = AgentState::Stopped;
            self.stop_reason = Some(reason);
            self.finish_stop();
            if then_start {
                self.spawn(ctx);
                if reason == StopReason::Watchdog {
                    // Keep saying why the process was replaced.
                    self.stop_reason = Some(reason);
                    self.publish();
                }
            } else {
                self.publish();
            }
            return;
        }
        if self.operator_kill {
            self.phase = Phase::Idle;
            self.idle_state = AgentState::Stopped;
            self.stop_reason = Some(StopReason::KilledByOperator);
            self.publish();
            return;
        }

        let failed = exit.code != Some(0);
        let restart = match self.spec.restart {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => failed,
            RestartPolicy::Never => false,
        };
        self.phase = Phase::Idle;
        if !restart {
            self.idle_state = AgentState::Exited;
            self.publish();
            return;
        }
        let now = Instant::now();
        // A run that outlived the window was healthy: the backoff starts over.
        if now.duration_since(started) >= self.spec.restart_window {
            self.consecutive_failures = 0;
        }
        while self
            .restart_times
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.spec.restart_window)
        {
            self.restart_times.pop_front();
        }
        if self.restart_times.len() >= self.spec.max_restarts as usize {
            let msg = format!(
                "crash loop: {} restarts within {}s; not restarting until an operator starts it",
                self.restart_times.len(),
                self.spec.restart_window.as_secs()
            );
            tracing::error!(agent = %self.spec.name, "{msg}");
            self.note(msg);
            self.idle_state = AgentState::Failed;
            self.publish();
            return;
        }
        let exp = self.consecutive_failures.min(20);
        let delay = self
            .spec
            .backoff_initial
            .saturating_mul(1u32 << exp)
            .min(self.spec.backoff_max);
        self.consecutive_failures += 1;
        self.restart_times.push_back(now);
        self.restarts += 1;
        tracing::info!(agent = %self.spec.name, delay_ms = delay.as_millis() as u64, "restarting after backoff");
        let generation = self.generation;
        let handle = ctx.run_later(delay, move |act, ctx| {
            if act.generation == generation && matches!(act.phase, Phase::Backoff { .. }) {
                act.spawn(ctx);
            }
        });
        self.phase = Phase::Backoff {
            until: now + delay,
            handle,
        };
        self.publish();
    }

    fn finish_stop(&mut self) {
        for w in self.stop_waiters.drain(..) {
            let _ = w.send(());
        }
    }

    /// Begins a stop; returns a receiver resolved once the process is gone.
    fn begin_stop(
        &mut self,
        reason: StopReason,
        then_start: bool,
        ctx: &mut Context<Self>,
    ) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        match std::mem::replace(&mut self.phase, Phase::Idle) {
            Phase::Running { pid, started } => {
                tracing::info!(agent = %self.spec.name, pid, ?reason, "stopping agent");
                let _ = self.signal_group(pid, Signal::SIGTERM);
                self.phase = Phase::Stopping {
                    pid,
                    started,
                    reason,
                    then_start,
                };
                self.stop_waiters.push(tx);
                let generation = self.generation;
                ctx.run_later(self.spec.stop_grace, move |act, _| {
                    if act.generation == generation
                        && let Phase::Stopping { pid, .. } = act.phase
                    {
                        tracing::warn!(agent = %act.spec.name, pid, "grace period over; sending SIGKILL to the group");
                        act.note("did not stop within its grace period; killed".into());
                        let _ = act.signal_group(pid, Signal::SIGKILL);
                    }
                });
            }
            Phase::Stopping {
                pid,
                started,
                reason: r,
                then_start: t,
            } => {
                self.phase = Phase::Stopping {
                    pid,
                    started,
                    reason: r,
                    then_start: t || then_start,
                };
                self.stop_waiters.push(tx);
            }
            Phase::Starting { stop } => {
                // Applied once the delivery in flight is done (see delivered()).
                let stop = match stop {
                    Some((r, t)) => (r, t || then_start),
                    None => (reason, then_start),
                };
                self.phase = Phase::Starting { stop: Some(stop) };
                self.stop_waiters.push(tx);
            }
            Phase::Backoff { handle, .. } => {
                ctx.cancel_future(handle);
                self.idle_state = AgentState::Stopped;
                self.stop_reason = Some(reason);
                let _ = tx.send(());
                if then_start {
                    self.spawn(ctx);
                }
            }
            Phase::Idle => {
                // Not running: nothing to stop. A restart starts it afresh.
                let _ = tx.send(());
                if then_start {
                    self.reset_crash_counters();
                    self.spawn(ctx);
                }
            }
        }
        self.publish();
        rx
    }

    fn reset_crash_counters(&mut self) {
        self.restart_times.clear();
        self.consecutive_failures = 0;
    }
}

impl Actor for AgentActor {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Self::Context) {
        self.board.remove(&self.spec.name);
    }
}

/// Start the agent if it is not running.
#[derive(Debug, Message)]
#[rtype(result = "Result<String, String>")]
pub struct Start;

impl Handler<Start> for AgentActor {
    type Result = Result<String, String>;
    fn handle(&mut self, _: Start, ctx: &mut Context<Self>) -> Self::Result {
        match &self.phase {
            Phase::Running { pid, .. } => Err(format!(
                "agent {} is already running (pid {pid})",
                self.spec.name
            )),
            Phase::Stopping { .. } => Err(format!(
                "agent {} is stopping; try again once it stopped",
                self.spec.name
            )),
            Phase::Starting { .. } => Err(format!(
                "agent {} is already starting (its secrets are being delivered)",
                self.spec.name
            )),
            Phase::Backoff { .. } | Phase::Idle => {
                if let Phase::Backoff { handle, .. } =
                    std::mem::replace(&mut self.phase, Phase::Idle)
                {
                    ctx.cancel_future(handle);
                }
                self.reset_crash_counters();
                self.spawn(ctx);
                Ok(match self.pid() {
                    Some(pid) => format!("agent {} started (pid {pid})", self.spec.name),
                    None if matches!(self.phase, Phase::Starting { .. }) => format!(
                        "agent {} is starting (its secrets are being delivered)",
                        self.spec.name
                    ),
                    None => format!(
                        "agent {} could not be started; see `ironctl agents logs {}`",
                        self.spec.name, self.spec.name
                    ),
                })
            }
        }
    }
}

/// Stop the agent (SIGTERM, then SIGKILL after the grace period); resolves once
/// the process is gone.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Stop {
    pub reason: StopReason,
    pub then_start: bool,
}

impl Handler<Stop> for AgentActor {
    type Result = ResponseFuture<()>;
    fn handle(&mut self, m: Stop, ctx: &mut Context<Self>) -> Self::Result {
        let rx = self.begin_stop(m.reason, m.then_start, ctx);
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

/// Send a signal to the agent's process group.
#[derive(Debug, Message)]
#[rtype(result = "Result<String, String>")]
pub struct Kill {
    pub signal: i32,
}

impl Handler<Kill> for AgentActor {
    type Result = Result<String, String>;
    fn handle(&mut self, m: Kill, ctx: &mut Context<Self>) -> Self::Result {
        let sig = Signal::try_from(m.signal)
            .map_err(|_| format!("{} is not a signal number", m.signal))?;
        let pid = self.pid().ok_or_else(|| {
            format!(
                "agent {} is not running ({})",
                self.spec.name,
                self.state().as_str()
            )
        })?;
        if matches!(
            sig,
            Signal::SIGKILL | Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT
        ) {
            // Its exit within the grace period is the operator's stop; if it
            // handles the signal and lives on, a later crash is just a crash.
            self.operator_kill = true;
            let generation = self.generation;
            ctx.run_later(
                self.spec.stop_grace.max(Duration::from_secs(5)),
                move |act, _| {
                    if act.generation == generation {
                        act.operator_kill = false;
                    }
                },
            );
        }
        self.signal_group(pid, sig)
            .map_err(|e| format!("cannot signal agent {}: {e}", self.spec.name))?;
        tracing::info!(agent = %self.spec.name, pid, signal = %sig, "operator signalled agent");
        Ok(format!(
            "sent {sig} to agent {} (process group {pid})",
            self.spec.name
        ))
    }
}

/// Replace the spec (config reload). With `restart`, an active agent (running
/// or waiting to restart) restarts with the new spec, and one that had exited
/// or failed gets a fresh start; without it (only settings that do not affect
/// the process changed, e.g. its budget) the new spec applies from the next
/// spawn on.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct UpdateSpec {
    pub spec: AgentSpec,
    pub restart: bool,
}

impl Handler<UpdateSpec> for AgentActor {
    type Result = ResponseFuture<()>;
    fn handle(&mut self, m: UpdateSpec, ctx: &mut Context<Self>) -> Self::Result {
        let active = matches!(
            self.phase,
            Phase::Running { .. }
                | Phase::Backoff { .. }
                | Phase::Stopping { .. }
                | Phase::Starting { .. }
        );
        let ended = matches!(self.phase, Phase::Idle)
            && matches!(self.idle_state, AgentState::Exited | AgentState::Failed);
        let autostart = m.spec.autostart;
        self.spec = m.spec;
        let rx = if m.restart && (active || (autostart && ended)) {
            self.begin_stop(StopReason::Reload, true, ctx)
        } else {
            self.publish();
            let (tx, rx) = oneshot::channel();
            let _ = tx.send(());
            rx
        };
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

/// Stop the actor itself (the agent was removed from the config).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Terminate;

impl Handler<Terminate> for AgentActor {
    type Result = ();
    fn handle(&mut self, _: Terminate, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// Grace used by tests and shutdown: how long a stop may take at most.
pub fn max_stop_time(spec: &AgentSpec) -> Duration {
    spec.stop_grace + Duration::from_secs(5)
}
