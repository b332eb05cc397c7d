//! What to do with a finding: `allow`, `log`, `redact` or `block`, per kind and per
//! direction (`prompt`, `output`, `logs`).
//!
//! A [`Policy`] maps kinds, groups and a default to an [`Action`]; the most specific
//! entry wins (kind name > group > `default`), and anything unnamed is allowed. It
//! parses from the config's inline tables:
//!
//! ```toml
//! [agent.pii]
//! prompt = { email = "redact", phone = "redact", secrets = "block", default = "log" }
//! output = { secrets = "redact" }
//! logs   = { default = "redact" }
//! ```
//!
//! Keys: a built-in kind (`email`, `card`, `openai_key`, ...), a group (`pii`,
//! `secrets`, `ip`, `custom`), `default` (alias `all`, `*`), or the name of a custom
//! pattern. Custom names cannot be checked without the scanner:
//! [`Policy::check_names`] does that once both are built (config validation).

use super::kind::{BUILTIN_KINDS, Finding, Kind};
use super::redact::{RedactError, RedactStyle, redact};
use super::scanner::{Scanner, reserved_name};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// What happens to a finding, from mildest to strictest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Pass unchanged, unrecorded.
    Allow,
    /// Pass unchanged; record the kind (never the value).
    Log,
    /// Replace the value (label, mask or token) and pass.
    Redact,
    /// Refuse the whole text.
    Block,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Log => "log",
            Action::Redact => "redact",
            Action::Block => "block",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a policy could not be parsed or does not fit its scanner.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "PII policy for {key:?}: unknown action {value:?}; expected allow, log, redact or block"
    )]
    UnknownAction { key: String, value: String },
    #[error(
        "PII policy key {key:?} is not a kind, a group (pii, secrets, ip, custom), default, or a custom pattern name"
    )]
    UnknownKind { key: String },
    #[error("PII policy entry {entry:?} is not KEY=ACTION")]
    Syntax { entry: String },
    #[error("PII policy names {key:?} twice")]
    Duplicate { key: String },
}

impl FromStr for Action {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, PolicyError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "allow" => Ok(Action::Allow),
            "log" => Ok(Action::Log),
            "redact" => Ok(Action::Redact),
            "block" => Ok(Action::Block),
            _ => Err(PolicyError::UnknownAction {
                key: String::new(),
                value: s.to_owned(),
            }),
        }
    }
}

/// Per-kind actions for one direction.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Policy {
    default: Option<Action>,
    personal: Option<Action>,
    secrets: Option<Action>,
    ip: Option<Action>,
    custom_group: Option<Action>,
    builtin: [Option<Action>; BUILTIN_KINDS],
    custom: Vec<(Box<str>, Action)>,
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Policy { ")?;
        for (i, (k, a)) in self.entries().iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{k}: {a}")?;
        }
        f.write_str(" }")
    }
}

impl Policy {
    /// Everything allowed (the same as `Policy::default()`).
    pub fn allow_all() -> Policy {
        Policy::default()
    }

    /// One action for everything.
    pub fn uniform(action: Action) -> Policy {
        Policy {
            default: Some(action),
            ..Policy::default()
        }
    }

    /// Sets one key (kind, group, `default` or a custom pattern name).
    pub fn set(&mut self, key: &str, action: Action) -> Result<(), PolicyError> {
        let k = key.trim();
        let slot = match k.to_ascii_lowercase().as_str() {
            "default" | "all" | "*" => &mut self.default,
            "pii" | "personal" => &mut self.personal,
            "secrets" | "secret" => &mut self.secrets,
            "ip" => &mut self.ip,
            "custom" => &mut self.custom_group,
            lower => match Kind::builtin(lower).and_then(|kind| kind.index()) {
                Some(i) => &mut self.builtin[i],
                None => {
                    let valid = !k.is_empty()
                        && k.bytes()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_');
                    if !valid {
                        return Err(PolicyError::UnknownKind { key: k.to_owned() });
                    }
                    if self.custom.iter().any(|(n, _)| &**n == k) {
                        return Err(PolicyError::Duplicate { key: k.to_owned() });
                    }
                    self.custom.push((k.into(), action));
                    return Ok(());
                }
            },
        };
        if slot.is_some() {
            return Err(PolicyError::Duplicate { key: k.to_owned() });
        }
        *slot = Some(action);
        Ok(())
    }

    /// Builds a policy from `(key, action)` pairs, as in a TOML inline table.
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Policy, PolicyError> {
        let mut p = Policy::default();
        for (key, value) in pairs {
            let action = value
                .parse::<Action>()
                .map_err(|_| PolicyError::UnknownAction {
                    key: key.to_owned(),
                    value: value.to_owned(),
                })?;
            p.set(key, action)?;
        }
        Ok(p)
    }

    /// Parses `"email=redact, secrets=block"` (command lines, environment variables).
    pub fn parse(spec: &str) -> Result<Policy, PolicyError> {
        let mut pairs = Vec::new();
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (k, v) = entry
                .split_once('=')
                .or_else(|| entry.split_once(':'))
                .ok_or_else(|| PolicyError::Syntax {
                    entry: entry.to_owned(),
                })?;
            pairs.push((k.trim(), v.trim()));
        }
        Policy::from_pairs(pairs)
    }

    /// The action for one kind: its own entry, else its group's, else `default`,
    /// else allow.
    pub fn action_for(&self, kind: &Kind) -> Action {
        let own = match kind {
            Kind::Custom(name) => self
                .custom
                .iter()
                .find(|(n, _)| **n == **name)
                .map(|(_, a)| *a),
            k => k.index().and_then(|i| self.builtin[i]),
        };
        let group = if kind.is_secret() {
            self.secrets
        } else if kind.is_personal() {
            self.personal
        } else if kind.is_ip() {
            self.ip
        } else {
            self.custom_group
        };
        own.or(group).or(self.default).unwrap_or(Action::Allow)
    }

    /// The strictest action any finding can get under this policy: `Allow` means
    /// a scan cannot change anything (callers skip it), `Log` means text passes
    /// unchanged (streams need not be held back).
    pub fn strictest_possible(&self) -> Action {
        [
            self.default,
            self.personal,
            self.secrets,
            self.ip,
            self.custom_group,
        ]
        .into_iter()
        .chain(self.builtin)
        .flatten()
        .chain(self.custom.iter().map(|(_, a)| *a))
        .max()
        .unwrap_or(Action::Allow)
    }

    /// The strictest action over `findings` (`Allow` when there are none).
    pub fn strictest(&self, findings: &[Finding]) -> Action {
        findings
            .iter()
            .map(|f| self.action_for(&f.kind))
            .max()
            .unwrap_or(Action::Allow)
    }

    /// Checks that every custom name in the policy is a custom pattern of `scanner`
    /// (so a typo such as `emial` is a config error, not a silent allow).
    pub fn check_names(&self, scanner: &Scanner) -> Result<(), PolicyError> {
        for (name, _) in &self.custom {
            let known = !reserved_name(name) && scanner.resolve_kind(name).is_some();
            if !known {
                return Err(PolicyError::UnknownKind {
                    key: name.to_string(),
                });
            }
        }
        Ok(())
    }

    /// The configured entries as `(key, action)`, for display.
    pub fn entries(&self) -> Vec<(String, Action)> {
        let mut v = Vec::new();
        let groups = [
            ("default", self.default),
            ("pii", self.personal),
            ("secrets", self.secrets),
            ("ip", self.ip),
            ("custom", self.custom_group),
        ];
        for (k, a) in groups {
            if let Some(a) = a {
                v.push((k.to_owned(), a));
            }
        }
        for (kind, a) in Kind::BUILTIN.iter().zip(self.builtin) {
            if let Some(a) = a {
                v.push((kind.name().to_owned(), a));
            }
        }
        for (n, a) in &self.custom {
            v.push((n.to_string(), *a));
        }
        v
    }

    /// Applies the policy to `text` and its `findings` (from a scan of `text`):
    /// blocks, redacts the findings whose action is `redact` (in `style`), or
    /// passes. Counts per kind and action are returned for logging and audit;
    /// values never are. A redaction error (a failing tokenizer) is returned as
    /// such: the caller must block (fail closed).
    pub fn apply(
        &self,
        text: &str,
        findings: &[Finding],
        style: RedactStyle<'_>,
    ) -> Result<Outcome, RedactError> {
        let mut counts: Vec<KindCount> = Vec::new();
        let mut strictest = Action::Allow;
        let mut to_redact = Vec::new();
        for f in findings {
            let action = self.action_for(&f.kind);
            strictest = strictest.max(action);
            match counts
                .iter_mut()
                .find(|c| c.kind == f.kind && c.action == action)
            {
                Some(c) => c.count += 1,
                None => counts.push(KindCount {
                    kind: f.kind.clone(),
                    action,
                    count: 1,
                }),
            }
            if action == Action::Redact {
                to_redact.push(f.clone());
            }
        }
        let text = match strictest {
            Action::Redact => Some(redact(text, &to_redact, style)?),
            _ => None,
        };
        Ok(Outcome {
            action: strictest,
            text,
            counts,
        })
    }
}

impl<'de> Deserialize<'de> for Policy {
    /// From a table of `kind = "action"`.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<String, String>::deserialize(d)?;
        Policy::from_pairs(map.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .map_err(serde::de::Error::custom)
    }
}

/// How many findings of one kind met one action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KindCount {
    pub kind: Kind,
    pub action: Action,
    pub count: u32,
}

/// The result of [`Policy::apply`].
#[derive(Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The strictest action met: `Block` means refuse the text; `Redact` means
    /// release [`Outcome::text`] instead; `Log`/`Allow` mean release the original.
    pub action: Action,
    /// The redacted text, when `action` is `Redact`.
    pub text: Option<String>,
    /// Findings per kind and action, in order of first appearance.
    pub counts: Vec<KindCount>,
}

impl Outcome {
    pub fn is_blocked(&self) -> bool {
        self.action == Action::Block
    }

    /// The kinds whose action is `block` (for an error message naming kinds, never
    /// values).
    pub fn blocked_kinds(&self) -> impl Iterator<Item = &Kind> {
        self.counts
            .iter()
            .filter(|c| c.action == Action::Block)
            .map(|c| &c.kind)
    }
}

impl fmt::Debug for Outcome {
    // The text may still hold values the policy allowed or logged: length only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outcome")
            .field("action", &self.action)
            .field("text_len", &self.text.as_ref().map(String::len))
            .field("counts", &self.counts)
            .finish()
    }
}

/// Which way a text is going.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Agent → provider (request bodies).
    Prompt,
    /// Provider → agent (responses, streams).
    Output,
    /// Agent stdout/stderr → the daemon's log store.
    Logs,
}

/// An agent's policies, one per direction. Defaults: prompts and outputs pass
/// (opt in per agent), logs are redacted (no personal data or secret is ever
/// written to the daemon's logs unless an operator allows it).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PiiPolicies {
    pub prompt: Policy,
    pub output: Policy,
    pub logs: Policy,
}

impl Default for PiiPolicies {
    fn default() -> Self {
        PiiPolicies {
            prompt: Policy::allow_all(),
            output: Policy::allow_all(),
            logs: Policy::uniform(Action::Redact),
        }
    }
}

impl PiiPolicies {
    pub fn get(&self, direction: Direction) -> &Policy {
        match direction {
            Direction::Prompt => &self.prompt,
            Direction::Output => &self.output,
            Direction::Logs => &self.logs,
        }
    }

    /// [`Policy::check_names`] for all three.
    pub fn check_names(&self, scanner: &Scanner) -> Result<(), PolicyError> {
        self.prompt.check_names(scanner)?;
        self.output.check_names(scanner)?;
        self.logs.check_names(scanner)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::pii::ScannerConfig;

    #[test]
    fn precedence_kind_group_default() {
        let p = Policy::parse("email=redact, secrets=block, default=log, ip=allow").unwrap();
        assert_eq!(p.action_for(&Kind::Email), Action::Redact);
        assert_eq!(p.action_for(&Kind::Phone), Action::Log);
        assert_eq!(p.action_for(&Kind::Jwt), Action::Block);
        assert_eq!(p.action_for(&Kind::Ipv6), Action::Allow);
        assert_eq!(p.action_for(&Kind::Custom("emp".into())), Action::Log);
        let p =
            Policy::parse("secrets=block, openai_key=redact, pii=redact, custom=block").unwrap();
        assert_eq!(p.action_for(&Kind::OpenAiKey), Action::Redact);
        assert_eq!(p.action_for(&Kind::AwsAccessKey), Action::Block);
        assert_eq!(p.action_for(&Kind::Card), Action::Redact);
        assert_eq!(p.action_for(&Kind::Ipv4), Action::Allow);
        assert_eq!(p.action_for(&Kind::Custom("emp".into())), Action::Block);
        assert_eq!(Policy::default().action_for(&Kind::Card), Action::Allow);
    }

    #[test]
    fn strictest_possible() {
        assert_eq!(Policy::allow_all().strictest_possible(), Action::Allow);
        assert_eq!(
            Policy::parse("email=log, ip=allow")
                .unwrap()
                .strictest_possible(),
            Action::Log
        );
        assert_eq!(
            Policy::parse("default=log, emp=block")
                .unwrap()
                .strictest_possible(),
            Action::Block
        );
        assert_eq!(
            Policy::parse("secrets=redact")
                .unwrap()
                .strictest_possible(),
            Action::Redact
        );
    }

    #[test]
    fn parse_errors() {
        let e = Policy::parse("email=hide").unwrap_err();
        assert_eq!(
            e,
            PolicyError::UnknownAction {
                key: "email".into(),
                value: "hide".into()
            }
        );
        assert!(matches!(
            Policy::parse("email"),
            Err(PolicyError::Syntax { .. })
        ));
        assert!(matches!(
            Policy::parse("e-mail=block"),
            Err(PolicyError::UnknownKind { .. })
        ));
        assert!(matches!(
            Policy::parse("email=block,email=log"),
            Err(PolicyError::Duplicate { .. })
        ));
        assert!(Policy::parse("EMAIL = Redact").is_ok());
    }

    #[test]
    fn deserializes_from_toml_tables() {
        let p: PiiPolicies = toml_like(
            r#"{"prompt": {"email": "redact", "secrets": "block"}, "logs": {"default": "log"}}"#,
        );
        assert_eq!(p.prompt.action_for(&Kind::Email), Action::Redact);
        assert_eq!(p.prompt.action_for(&Kind::SlackToken), Action::Block);
        assert_eq!(p.output, Policy::allow_all());
        assert_eq!(p.logs.action_for(&Kind::Card), Action::Log);
        let d = PiiPolicies::default();
        assert_eq!(
            d.get(Direction::Logs).action_for(&Kind::Email),
            Action::Redact
        );
        let err = serde_json::from_str::<PiiPolicies>(r#"{"prompt": {"email": "hide"}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("hide"), "{err}");
    }

    #[test]
    fn parses_the_config_file_shape() {
        #[derive(Debug, Deserialize)]
        struct Agent {
            pii: PiiPolicies,
            scanner: crate::pii::ScannerConfig,
        }
        let agent: Agent = toml::from_str(
            r#"
            [pii]
            prompt = { email = "redact", secrets = "block", default = "log" }
            output = { secrets = "redact" }

            [scanner]
            kinds = ["pii", "secrets"]
            min_confidence = "medium"
            custom = [{ name = "employee_id", pattern = 'EMP-\d{6}' }]
            allow = { exact = ["support@example.com"], regex = ['.*@example\.org'] }
            "#,
        )
        .unwrap();
        assert_eq!(agent.pii.prompt.action_for(&Kind::Email), Action::Redact);
        assert_eq!(agent.pii.prompt.action_for(&Kind::Phone), Action::Log);
        assert_eq!(agent.pii.output.action_for(&Kind::Jwt), Action::Redact);
        assert_eq!(agent.pii.logs, Policy::uniform(Action::Redact));
        let scanner = Scanner::new(&agent.scanner).unwrap();
        assert!(!scanner.kinds().contains(&Kind::Ipv4));
        agent.pii.check_names(&scanner).unwrap();
        let err = toml::from_str::<Agent>("[pii]\nprompt = { email = \"hide\" }\n[scanner]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("hide") && err.contains("line"), "{err}");
    }

    fn toml_like(json: &str) -> PiiPolicies {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn custom_names_are_checked_against_the_scanner() {
        let cfg: ScannerConfig = serde_json::from_value(serde_json::json!({
            "custom": [{"name": "employee_id", "pattern": r"EMP-\d{6}"}]
        }))
        .unwrap();
        let scanner = Scanner::new(&cfg).unwrap();
        assert!(
            Policy::parse("employee_id=block")
                .unwrap()
                .check_names(&scanner)
                .is_ok()
        );
        assert_eq!(
            Policy::parse("emial=block").unwrap().check_names(&scanner),
            Err(PolicyError::UnknownKind {
                key: "emial".into()
            })
        );
    }

    #[test]
    fn apply_blocks_redacts_logs() {
        let s = Scanner::default();
        let text = "jane@example.com paid with 4111 1111 1111 1111 from 203.0.113.7";
        let f = s.scan(text);
        let p = Policy::parse("email=redact, card=redact, ip=log").unwrap();
        let o = p.apply(text, &f, RedactStyle::Label).unwrap();
        assert_eq!(o.action, Action::Redact);
        assert_eq!(
            o.text.as_deref(),
            Some("[EMAIL] paid with [CARD] from 203.0.113.7")
        );
        assert_eq!(o.counts.len(), 3);
        assert!(!format!("{o:?}").contains("203.0"));

        let p = Policy::parse("card=block, email=redact").unwrap();
        let o = p.apply(text, &f, RedactStyle::Label).unwrap();
        assert!(o.is_blocked());
        assert_eq!(o.text, None);
        assert_eq!(o.blocked_kinds().collect::<Vec<_>>(), [&Kind::Card]);

        let o = Policy::parse("ip=log")
            .unwrap()
            .apply(text, &f, RedactStyle::Label)
            .unwrap();
        assert_eq!((o.action, o.text), (Action::Log, None));
    }
}
