//! The `[pii]` section and each agent's `[agent.pii]`: what the PII engine looks
//! for and what happens to what it finds, per direction.
//!
//! ```toml
//! [pii]                                   # daemon-wide; every agent starts from it
//! prompt = { secrets = "block" }          # agent -> provider
//! output = {}                             # provider -> agent
//! logs   = { secrets = "redact", pii = "redact" }   # agent stdout/stderr
//! style  = "label"                        # label | mask | token
//! kinds  = ["all"]                        # what the scanner looks for
//! min_confidence = "low"
//! custom = [{ name = "employee_id", pattern = 'EMP-\d{6}' }]
//! allow  = { exact = ["support@example.com"], regex = ['.*@example\.org'] }
//!
//! [[agent]]
//! name = "support-bot"
//! # ...
//! [agent.pii]
//! prompt = { email = "redact", secrets = "block" }  # replaces the [pii] prompt policy
//! style = "token"
//! custom = [{ name = "ticket", pattern = 'TCK-\d{8}' }] # added to the [pii] ones
//! ```
//!
//! Merging: an agent's `prompt`, `output` or `logs` table replaces the daemon-wide
//! one for that direction (so `prompt = {}` turns prompt scanning off for that
//! agent); `style`, `kinds` and `min_confidence` replace; `custom` patterns and
//! `allow` entries are added to the daemon-wide ones.
//!
//! Defaults (nothing configured): secrets (API keys, tokens, private keys) in a
//! prompt block the call; personal data and secrets printed by an agent are
//! redacted before its output is stored or logged; provider output passes. IP
//! addresses are never touched by default (agents print listen addresses).

use super::{ConfigError, Ctx};
use ironcage_shared::pii::{
    Action, Allowlist, Confidence, CustomPattern, KindSet, PiiPolicies, Policy, Scanner,
    ScannerConfig,
};
use serde::Deserialize;
use toml::Spanned;

/// How a `redact` action rewrites a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PiiStyle {
    /// `[EMAIL]`.
    Label,
    /// `j***@example.com`, `**** **** **** 4242`.
    Mask,
    /// `[EMAIL:tok_...]`; the original is kept encrypted in the daemon and an
    /// admin can reveal it (`ironctl pii reveal`). Agent logs use labels instead.
    Token,
}

impl PiiStyle {
    pub fn as_str(self) -> &'static str {
        match self {
            PiiStyle::Label => "label",
            PiiStyle::Mask => "mask",
            PiiStyle::Token => "token",
        }
    }
}

/// One agent's PII settings, daemon-wide defaults applied; validated (its
/// scanner builds and every custom name in its policies is a custom pattern).
#[derive(Debug, Clone, PartialEq)]
pub struct PiiSpec {
    pub policies: PiiPolicies,
    pub style: PiiStyle,
    pub scanner: ScannerConfig,
}

impl PiiSpec {
    /// Builds the scanner (cannot fail for a validated spec; errors are still
    /// returned, never unwrapped).
    pub fn build_scanner(&self) -> Result<Scanner, ironcage_shared::pii::PiiError> {
        Scanner::new(&self.scanner)
    }
}

/// What nothing configured means: see the module docs.
pub fn default_policies() -> PiiPolicies {
    let mut prompt = Policy::default();
    let mut logs = Policy::default();
    // Fixed, valid keys: these cannot fail.
    let _ = prompt.set("secrets", Action::Block);
    let _ = logs.set("secrets", Action::Redact);
    let _ = logs.set("pii", Action::Redact);
    PiiPolicies {
        prompt,
        output: Policy::allow_all(),
        logs,
    }
}

impl Default for PiiSpec {
    fn default() -> Self {
        PiiSpec {
            policies: default_policies(),
            style: PiiStyle::Label,
            scanner: ScannerConfig::default(),
        }
    }
}

pub(super) mod raw {
    use super::*;

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Pii {
        pub prompt: Option<Spanned<Policy>>,
        pub output: Option<Spanned<Policy>>,
        pub logs: Option<Spanned<Policy>>,
        pub style: Option<PiiStyle>,
        pub kinds: Option<KindSet>,
        pub min_confidence: Option<Confidence>,
        pub custom: Option<Spanned<Vec<CustomPattern>>>,
        pub allow: Option<Spanned<Allowlist>>,
    }
}

/// `base` with `raw` applied (see the module docs), validated. `key` names the
/// table in errors (`pii`, `agent[2].pii`).
pub(super) fn apply(
    cx: &Ctx<'_>,
    key: &str,
    raw: Option<raw::Pii>,
    base: &PiiSpec,
) -> Result<PiiSpec, ConfigError> {
    let Some(raw) = raw else {
        return Ok(base.clone());
    };
    let mut spec = base.clone();
    let mut spans = [None, None, None];
    for ((dir, slot), span) in [
        (raw.prompt, &mut spec.policies.prompt),
        (raw.output, &mut spec.policies.output),
        (raw.logs, &mut spec.policies.logs),
    ]
    .into_iter()
    .zip(spans.iter_mut())
    {
        if let Some(p) = dir {
            *span = Some(p.span());
            *slot = p.into_inner();
        }
    }
    if let Some(s) = raw.style {
        spec.style = s;
    }
    if let Some(k) = raw.kinds {
        spec.scanner.kinds = Some(k);
    }
    if let Some(c) = raw.min_confidence {
        spec.scanner.min_confidence = Some(c);
    }
    let custom_span = raw.custom.as_ref().map(Spanned::span);
    if let Some(c) = raw.custom {
        spec.scanner.custom.extend(c.into_inner());
    }
    let allow_span = raw.allow.as_ref().map(Spanned::span);
    if let Some(a) = raw.allow {
        let a = a.into_inner();
        spec.scanner.allow.exact.extend(a.exact);
        spec.scanner.allow.regex.extend(a.regex);
    }
    let located = |span: Option<std::ops::Range<usize>>, msg: String| match span {
        Some(s) => cx.at(s, msg),
        None => cx.plain(key, msg),
    };
    let scanner = Scanner::new(&spec.scanner).map_err(|e| {
        let span = match &e {
            ironcage_shared::pii::PiiError::BadAllowRegex { .. } => allow_span.clone(),
            ironcage_shared::pii::PiiError::UnknownKind(_) => None,
            _ => custom_span.clone(),
        };
        located(span, e.to_string())
    })?;
    let policies = [
        &spec.policies.prompt,
        &spec.policies.output,
        &spec.policies.logs,
    ];
    for (policy, span) in policies.into_iter().zip(spans) {
        policy.check_names(&scanner).map_err(|e| {
            located(
                span,
                format!("{e}; define it under `custom` in [pii] or in this agent's [agent.pii]"),
            )
        })?;
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, PiiStyle};
    use ironcage_shared::pii::{Action, Direction, Kind};
    use std::path::Path;

    fn parse(src: &str) -> Result<Config, crate::config::ConfigError> {
        Config::parse(Path::new("/etc/ironcage/test.toml"), src)
    }

    const AGENT: &str = "[[agent]]\nname = \"a\"\ncommand = [\"true\"]\n";

    #[test]
    fn defaults_block_secrets_in_prompts_and_redact_logs() {
        let c = parse(AGENT).unwrap();
        let p = &c.agents[0].pii.policies;
        assert_eq!(p.prompt.action_for(&Kind::OpenAiKey), Action::Block);
        assert_eq!(p.prompt.action_for(&Kind::Email), Action::Allow);
        assert_eq!(p.output.strictest_possible(), Action::Allow);
        assert_eq!(p.logs.action_for(&Kind::Email), Action::Redact);
        assert_eq!(p.logs.action_for(&Kind::Ipv4), Action::Allow);
        assert_eq!(c.agents[0].pii.style, PiiStyle::Label);
    }

    #[test]
    fn agent_tables_replace_per_direction_and_add_patterns() {
        let c = parse(&format!(
            "[pii]\nprompt = {{ email = \"redact\" }}\nlogs = {{ default = \"log\" }}\ncustom = [{{ name = \"emp\", pattern = 'EMP-\\d{{6}}' }}]\n\n{AGENT}[agent.pii]\nprompt = {{ emp = \"block\", tck = \"redact\" }}\nstyle = \"token\"\ncustom = [{{ name = \"tck\", pattern = 'TCK-\\d{{8}}' }}]\n\n[[agent]]\nname = \"b\"\ncommand = [\"true\"]\n"
        ))
        .unwrap();
        let a = &c.agents[0].pii;
        assert_eq!(
            a.policies.get(Direction::Prompt).action_for(&Kind::Email),
            Action::Allow
        );
        assert_eq!(
            a.policies.prompt.action_for(&Kind::Custom("emp".into())),
            Action::Block
        );
        assert_eq!(a.policies.logs.action_for(&Kind::Card), Action::Log);
        assert_eq!(a.style, PiiStyle::Token);
        assert_eq!(a.scanner.custom.len(), 2);
        let b = &c.agents[1].pii;
        assert_eq!(b.policies.prompt.action_for(&Kind::Email), Action::Redact);
        assert_eq!(b.style, PiiStyle::Label);
        assert_eq!(b.scanner.custom.len(), 1);
    }

    #[test]
    fn bad_actions_kinds_and_patterns_are_located() {
        let e = parse("[pii]\nprompt = { email = \"hide\" }\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        assert!(e.to_string().contains("hide"), "{e}");
        let e = parse(&format!(
            "{AGENT}[agent.pii]\nprompt = {{ emial = \"block\" }}\n"
        ))
        .unwrap_err();
        assert_eq!(e.line, Some(5), "{e}");
        assert!(
            e.to_string().contains("emial") && e.to_string().contains("agent.pii.prompt"),
            "{e}"
        );
        let e = parse("[pii]\ncustom = [{ name = \"x\", pattern = '(' }]\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        assert!(e.to_string().contains("does not compile"), "{e}");
        let e = parse("[pii]\nstyle = \"blur\"\n").unwrap_err();
        assert!(e.to_string().contains("blur"), "{e}");
        let e = parse("[pii]\nkinds = [\"emails\"]\n").unwrap_err();
        assert!(e.to_string().contains("emails"), "{e}");
    }
}
