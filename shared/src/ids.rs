//! Identifiers that cross process boundaries.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest agent name accepted (bytes).
pub const MAX_AGENT_NAME: usize = 64;

/// A validated agent name: 1–64 of `[A-Za-z0-9_.-]`, not starting with `.` or `-`.
///
/// Names become file names under the state directory and appear in shell-friendly
/// CLI output, so the alphabet is deliberately narrow.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AgentName(String);

/// Why a string is not a valid agent name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("agent name is empty")]
    Empty,
    #[error("agent name is {0} bytes long; the maximum is {MAX_AGENT_NAME}")]
    TooLong(usize),
    #[error(
        "agent name {0:?} contains {1:?}; use only letters, digits, '_', '-' and '.' (not first)"
    )]
    BadChar(String, char),
}

impl AgentName {
    /// Validates `name`.
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        let name = name.into();
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > MAX_AGENT_NAME {
            return Err(NameError::TooLong(name.len()));
        }
        for (i, c) in name.chars().enumerate() {
            let ok = c.is_ascii_alphanumeric() || c == '_' || ((c == '-' || c == '.') && i > 0);
            if !ok {
                return Err(NameError::BadChar(name.clone(), c));
            }
        }
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for AgentName {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        Self::new(s)
    }
}

impl From<AgentName> for String {
    fn from(n: AgentName) -> String {
        n.0
    }
}

impl fmt::Display for AgentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for AgentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl std::str::FromStr for AgentName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_names() {
        for n in ["a", "agent-1", "Research_Bot.v2", "0"] {
            assert_eq!(AgentName::new(n).unwrap().as_str(), n);
        }
    }

    #[test]
    fn rejects_paths_and_flags() {
        assert_eq!(AgentName::new(""), Err(NameError::Empty));
        assert!(matches!(
            AgentName::new("../x"),
            Err(NameError::BadChar(_, '.'))
        ));
        assert!(matches!(
            AgentName::new("-rf"),
            Err(NameError::BadChar(_, '-'))
        ));
        assert!(matches!(
            AgentName::new("a/b"),
            Err(NameError::BadChar(_, '/'))
        ));
        assert!(matches!(
            AgentName::new("x".repeat(65)),
            Err(NameError::TooLong(65))
        ));
    }

    #[test]
    fn serde_validates() {
        let bad: Result<AgentName, _> = serde_json::from_str("\"a b\"");
        assert!(bad.is_err());
    }
}
