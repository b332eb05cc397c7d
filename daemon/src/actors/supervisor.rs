//! The supervisor: one [`AgentActor`] per configured agent, created, updated and
//! removed as the configuration changes.

use super::agent::{AgentActor, Kill, SpawnEnv, Start, Stop, Terminate, UpdateSpec};
use crate::config::AgentSpec;
use crate::logs::AgentLogs;
use crate::registry::{AgentKeys, StatusBoard};
use actix::prelude::*;
use futures_util::future::join_all;
use ironcage_shared::AgentName;
use ironcage_shared::protocol::{AgentInfo, StopReason};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug)]
struct Supervised {
    addr: Addr<AgentActor>,
    spec: AgentSpec,
    logs: Arc<AgentLogs>,
}

#[derive(Debug)]
pub struct Supervisor {
    agents: HashMap<AgentName, Supervised>,
    env: Arc<SpawnEnv>,
    keys: Arc<AgentKeys>,
    board: Arc<StatusBoard>,
    log_dir: PathBuf,
}

impl Actor for Supervisor {
    type Context = Context<Self>;
}

/// What a config (re)load changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadSummary {
    pub added: Vec<AgentName>,
    pub removed: Vec<AgentName>,
    pub changed: Vec<AgentName>,
}

impl std::fmt::Display for ReloadSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |v: &[AgentName]| {
            if v.is_empty() {
                "none".to_owned()
            } else {
                v.iter()
                    .map(AgentName::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        write!(
            f,
            "added: {}; removed: {}; restarted with changes: {}",
            list(&self.added),
            list(&self.removed),
            list(&self.changed)
        )
    }
}

#[derive(Debug, Message)]
#[rtype(result = "ReloadSummary")]
struct Apply(Vec<AgentSpec>);

impl Handler<Apply> for Supervisor {
    type Result = ResponseFuture<ReloadSummary>;
    fn handle(&mut self, m: Apply, _: &mut Context<Self>) -> Self::Result {
        let mut summary = ReloadSummary::default();
        let mut pending = Vec::new();
        let wanted: HashMap<_, _> = m.0.iter().map(|s| (s.name.clone(), s)).collect();
        let gone: Vec<AgentName> = self
            .agents
            .keys()
            .filter(|n| !wanted.contains_key(*n))
            .cloned()
            .collect();
        for name in gone {
            if let Some(s) = self.agents.remove(&name) {
                summary.removed.push(name);
                pending.push(Box::pin(async move {
                    let _ = s
                        .addr
                        .send(Stop {
                            reason: StopReason::Reload,
                            then_start: false,
                        })
                        .await;
                    let _ = s.addr.send(Terminate).await;
                })
                    as std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>);
            }
        }
        for spec in m.0 {
            match self.agents.get_mut(&spec.name) {
                Some(s) if s.spec == spec => {}
                Some(s) => {
                    // Only a change to what runs restarts the agent; budget,
                    // restart policy and the like apply in place.
                    let restart = !s.spec.same_process(&spec);
                    if restart {
                        summary.changed.push(spec.name.clone());
                    }
                    s.spec = spec.clone();
                    s.logs.set_pii(&spec.pii);
                    let addr = s.addr.clone();
                    pending.push(Box::pin(async move {
                        let _ = addr.send(UpdateSpec { spec, restart }).await;
                    }));
                }
                None => {
                    summary.added.push(spec.name.clone());
                    let logs = AgentLogs::new(spec.name.clone(), &self.log_dir);
                    logs.set_pii(&spec.pii);
                    let autostart = spec.autostart;
                    let addr = AgentActor::new(
                        spec.clone(),
                        self.env.clone(),
                        self.keys.clone(),
                        self.board.clone(),
                        logs.clone(),
                    )
                    .start();
                    if autostart {
                        addr.do_send(Start);
                    }
                    self.agents
                        .insert(spec.name.clone(), Supervised { addr, spec, logs });
                }
            }
        }
        summary.added.sort();
        summary.removed.sort();
        summary.changed.sort();
        Box::pin(async move {
            join_all(pending).await;
            summary
        })
    }
}

#[derive(Debug, Message)]
#[rtype(result = "Option<(Addr<AgentActor>, Arc<AgentLogs>)>")]
struct Lookup(AgentName);

impl Handler<Lookup> for Supervisor {
    type Result = Option<(Addr<AgentActor>, Arc<AgentLogs>)>;
    fn handle(&mut self, m: Lookup, _: &mut Context<Self>) -> Self::Result {
        self.agents
            .get(&m.0)
            .map(|s| (s.addr.clone(), s.logs.clone()))
    }
}

#[derive(Debug, Message)]
#[rtype(result = "()")]
struct StopAll(StopReason);

impl Handler<StopAll> for Supervisor {
    type Result = ResponseFuture<()>;
    fn handle(&mut self, m: StopAll, _: &mut Context<Self>) -> Self::Result {
        let addrs: Vec<_> = self.agents.values().map(|s| s.addr.clone()).collect();
        Box::pin(async move {
            join_all(addrs.iter().map(|a| {
                a.send(Stop {
                    reason: m.0,
                    then_start: false,
                })
            }))
            .await;
        })
    }
}

/// Errors of supervisor operations, phrased for the operator.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("no agent named {0}; `ironctl agents list` shows the configured ones")]
    NotFound(AgentName),
    #[error("{0}")]
    Refused(String),
    #[error("the supervisor is shutting down")]
    Gone,
}

/// Cheap, cloneable, `Send` access to the supervisor from any thread.
#[derive(Clone)]
pub struct SupervisorHandle {
    addr: Addr<Supervisor>,
    board: Arc<StatusBoard>,
}

impl std::fmt::Debug for SupervisorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SupervisorHandle")
    }
}

impl SupervisorHandle {
    /// Starts the supervisor actor on the current actix system.
    pub fn start(env: SpawnEnv, keys: Arc<AgentKeys>, log_dir: PathBuf) -> Self {
        let board = Arc::new(StatusBoard::default());
        let addr = Supervisor {
            agents: HashMap::new(),
            env: Arc::new(env),
            keys,
            board: board.clone(),
            log_dir,
        }
        .start();
        SupervisorHandle { addr, board }
    }

    pub fn list(&self) -> Vec<AgentInfo> {
        self.board.list()
    }

    pub fn status(&self, name: &AgentName) -> Result<AgentInfo, SupervisorError> {
        self.board
            .get(name)
            .ok_or_else(|| SupervisorError::NotFound(name.clone()))
    }

    /// (total, running)
    pub fn counts(&self) -> (u32, u32) {
        self.board.counts()
    }

    async fn lookup(
        &self,
        name: &AgentName,
    ) -> Result<(Addr<AgentActor>, Arc<AgentLogs>), SupervisorError> {
        self.addr
            .send(Lookup(name.clone()))
            .await
            .map_err(|_| SupervisorError::Gone)?
            .ok_or_else(|| SupervisorError::NotFound(name.clone()))
    }

    pub async fn logs(&self, name: &AgentName) -> Result<Arc<AgentLogs>, SupervisorError> {
        Ok(self.lookup(name).await?.1)
    }

    pub async fn start_agent(&self, name: &AgentName) -> Result<String, SupervisorError> {
        let (a, _) = self.lookup(name).await?;
        a.send(Start)
            .await
            .map_err(|_| SupervisorError::Gone)?
            .map_err(SupervisorError::Refused)
    }

    pub async fn stop_agent(
        &self,
        name: &AgentName,
        reason: StopReason,
    ) -> Result<String, SupervisorError> {
        let (a, _) = self.lookup(name).await?;
        a.send(Stop {
            reason,
            then_start: false,
        })
        .await
        .map_err(|_| SupervisorError::Gone)?;
        Ok(format!("agent {name} stopped"))
    }

    pub async fn restart_agent(&self, name: &AgentName) -> Result<String, SupervisorError> {
        let (a, _) = self.lookup(name).await?;
        a.send(Stop {
            reason: StopReason::Operator,
            then_start: true,
        })
        .await
        .map_err(|_| SupervisorError::Gone)?;
        let pid = self.board.get(name).and_then(|i| i.pid);
        Ok(match pid {
            Some(pid) => format!("agent {name} restarted (pid {pid})"),
            None => format!("agent {name} restarted"),
        })
    }

    pub async fn kill_agent(
        &self,
        name: &AgentName,
        signal: i32,
    ) -> Result<String, SupervisorError> {
        let (a, _) = self.lookup(name).await?;
        a.send(Kill { signal })
            .await
            .map_err(|_| SupervisorError::Gone)?
            .map_err(SupervisorError::Refused)
    }

    /// Brings the set of agents in line with `specs`.
    pub async fn apply(&self, specs: Vec<AgentSpec>) -> Result<ReloadSummary, SupervisorError> {
        self.addr
            .send(Apply(specs))
            .await
            .map_err(|_| SupervisorError::Gone)
    }

    /// Stops every agent and waits until all are gone.
    pub async fn stop_all(&self, reason: StopReason) {
        let _ = self.addr.send(StopAll(reason)).await;
    }
}
