//! Shared, read-mostly views that the request paths consult without a round trip
//! through an actor: agent status for `ironctl agents list`, and the per-agent
//! virtual keys the gateway identifies callers by.
//!
//! Only the owning actors write here (each agent its own entry); readers get a
//! consistent snapshot under a short read lock.

use ironcage_shared::AgentName;
use ironcage_shared::protocol::{AgentInfo, AgentState, ExitInfo, StopReason};
use rand::RngCore;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::RwLock;
use std::time::{Instant, SystemTime};

/// What an agent actor publishes on every transition.
#[derive(Debug, Clone)]
pub struct AgentStatus {
    pub name: AgentName,
    pub state: AgentState,
    pub pid: Option<u32>,
    pub restarts: u32,
    pub started: Option<SystemTime>,
    pub last_exit: Option<ExitInfo>,
    pub stop_reason: Option<StopReason>,
    pub restart_policy: &'static str,
    pub command: Vec<String>,
    pub next_restart: Option<Instant>,
    /// `AgentUser::describe_with_group`, when it runs as its own user.
    pub user: Option<String>,
}

impl AgentStatus {
    pub fn to_info(&self) -> AgentInfo {
        AgentInfo {
            name: self.name.clone(),
            state: self.state,
            pid: self.pid,
            restarts: self.restarts,
            uptime_secs: self.started.map(|s| {
                SystemTime::now()
                    .duration_since(s)
                    .map_or(0, |d| d.as_secs())
            }),
            last_exit: self.last_exit,
            stop_reason: self.stop_reason,
            restart_policy: self.restart_policy.to_owned(),
            command: self.command.clone(),
            next_restart_in_ms: self
                .next_restart
                .map(|t| t.saturating_duration_since(Instant::now()).as_millis() as u64),
            user: self.user.clone(),
        }
    }
}

/// Current status of every supervised agent, sorted by name.
#[derive(Debug, Default)]
pub struct StatusBoard {
    agents: RwLock<BTreeMap<AgentName, AgentStatus>>,
}

impl StatusBoard {
    pub fn update(&self, s: AgentStatus) {
        self.agents
            .write()
            .expect("status board lock")
            .insert(s.name.clone(), s);
    }
    pub fn remove(&self, name: &AgentName) {
        self.agents.write().expect("status board lock").remove(name);
    }
    pub fn get(&self, name: &AgentName) -> Option<AgentInfo> {
        self.agents
            .read()
            .expect("status board lock")
            .get(name)
            .map(AgentStatus::to_info)
    }
    pub fn list(&self) -> Vec<AgentInfo> {
        self.agents
            .read()
            .expect("status board lock")
            .values()
            .map(AgentStatus::to_info)
            .collect()
    }
    pub fn counts(&self) -> (u32, u32) {
        let g = self.agents.read().expect("status board lock");
        let running = g
            .values()
            .filter(|s| s.state == AgentState::Running)
            .count();
        (g.len() as u32, running as u32)
    }
}

/// Per-agent virtual API keys. An agent gets a fresh key at every spawn; the key
/// is revoked when that process exits. Keys are random, so holding one proves
/// only that the caller is (a child of) that agent's process.
#[derive(Default)]
pub struct AgentKeys {
    keys: RwLock<HashMap<String, AgentName>>,
}

impl fmt::Debug for AgentKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.keys.read().map_or(0, |k| k.len());
        write!(f, "AgentKeys([REDACTED]; {n} keys)")
    }
}

/// Prefix of every virtual key, so one is recognisable in a leaked log.
pub const VIRTUAL_KEY_PREFIX: &str = "ic-vk-";

impl AgentKeys {
    pub fn mint(&self, agent: &AgentName) -> String {
        let mut bytes = [0u8; 24];
        rand::rng().fill_bytes(&mut bytes);
        let mut key = String::with_capacity(VIRTUAL_KEY_PREFIX.len() + 48);
        key.push_str(VIRTUAL_KEY_PREFIX);
        for b in bytes {
            key.push_str(&format!("{b:02x}"));
        }
        self.keys
            .write()
            .expect("keys lock")
            .insert(key.clone(), agent.clone());
        key
    }

    pub fn revoke(&self, key: &str) {
        self.keys.write().expect("keys lock").remove(key);
    }

    /// The agent holding `key`, if any.
    pub fn resolve(&self, key: &str) -> Option<AgentName> {
        self.keys.read().expect("keys lock").get(key).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unique_and_revocable() {
        let keys = AgentKeys::default();
        let a = AgentName::new("a").unwrap();
        let k1 = keys.mint(&a);
        let k2 = keys.mint(&a);
        assert_ne!(k1, k2);
        assert!(k1.starts_with(VIRTUAL_KEY_PREFIX));
        assert_eq!(keys.resolve(&k1), Some(a.clone()));
        keys.revoke(&k1);
        assert_eq!(keys.resolve(&k1), None);
        assert!(!format!("{keys:?}").contains(&k2));
    }
}
