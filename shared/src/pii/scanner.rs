//! The scanner: configuration, the scan loop, overlaps, the allowlist.
//!
//! A scan makes two linear passes over the bytes and allocates nothing but the
//! findings it returns:
//!
//! 1. the secrets prefilter (one Aho-Corasick automaton over all credential
//!    prefixes, SIMD-accelerated), validating each prefix hit;
//! 2. a byte-class walk that stops only at digits, `@` and `:` (skipping eight bytes
//!    at a time when none is among them), where the numeric, email, IBAN and IPv6
//!    detectors take over. A digit inside a word (`a1b2c3`, `utf8`, a SHA) skips the
//!    whole word; a digit that starts a cluster is parsed once.
//!
//! Custom patterns then run as one regex pass each; overlapping findings are
//! resolved (the higher-priority kind wins, then the longer span), and the
//! allowlist drops findings whose exact text it names.

use super::checks::is_word;
use super::kind::{Confidence, Finding, Kind, KindSet, UnknownKind};
use super::numeric::{self, Cluster};
use super::policy::{Action, Policy};
use super::secrets::Prefilter;
use super::{email, iban, ipv6};
use regex::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};
use serde::Deserialize;
use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

/// Most custom patterns in one scanner.
pub const MAX_CUSTOM_PATTERNS: usize = 64;
/// Compiled-size limit for each custom or allowlist regex (bytes).
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A custom pattern from the config: a name (becomes the finding's kind and its
/// redaction label) and a regex (Rust `regex` syntax; the whole match is the
/// finding).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomPattern {
    pub name: String,
    pub pattern: String,
}

/// Values never to report: exact strings (compared with the matched text) and
/// regexes (which must match the whole matched text).
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Allowlist {
    #[serde(default)]
    pub exact: Vec<String>,
    #[serde(default)]
    pub regex: Vec<String>,
}

impl fmt::Debug for Allowlist {
    // The entries are values (addresses, numbers): counted, never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Allowlist")
            .field("exact", &self.exact.len())
            .field("regex", &self.regex.len())
            .finish()
    }
}

/// What a scanner looks for; `Default` is every built-in kind, nothing custom.
/// Deserializes from the config's `[pii]` table:
///
/// ```toml
/// kinds = ["pii", "secrets"]          # default: all
/// min_confidence = "medium"           # default: low (everything)
/// custom = [{ name = "employee_id", pattern = 'EMP-\d{6}' }]
/// allow = { exact = ["support@example.com"], regex = ['.*@example\.org'] }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScannerConfig {
    #[serde(default)]
    pub kinds: Option<KindSet>,
    #[serde(default)]
    pub min_confidence: Option<Confidence>,
    #[serde(default)]
    pub custom: Vec<CustomPattern>,
    #[serde(default)]
    pub allow: Allowlist,
}

impl ScannerConfig {
    /// The part of this config a text direction under `policy` needs: when
    /// every kind `policy` acts on (an action above `allow`) is a secret, the
    /// personal-data and IP detectors and the custom patterns are dropped, so
    /// the scan is the secrets prefilter alone. That is the built-in prompt
    /// policy (`secrets = "block"`), and it halves the gateway's work on a
    /// prose prompt (the byte walk and the numeric and e-mail parsers are most
    /// of a scan).
    ///
    /// Exact: the scoped scanner reports the same findings of the acted-on
    /// kinds as the full one. The secrets pass runs on its own; what the
    /// dropped detectors find is only ever allowed, and cannot hide a secret
    /// in an overlap (every secret outranks every other kind, custom
    /// patterns included, see `Kind::priority`). Any other policy keeps the
    /// whole config, since personal-data kinds and custom patterns do hide
    /// one another in overlaps and in the numeric parser's order.
    pub fn scoped_to(&self, policy: &Policy) -> ScannerConfig {
        let kinds = self.kinds.unwrap_or_default();
        let acts = |k: &Kind| policy.action_for(k) > Action::Allow;
        let beyond_secrets = kinds.iter().any(|k| !k.is_secret() && acts(&k))
            || self
                .custom
                .iter()
                .any(|c| acts(&Kind::Custom(Arc::from(c.name.as_str()))));
        if beyond_secrets {
            return self.clone();
        }
        ScannerConfig {
            kinds: Some(kinds.intersection(KindSet::secrets())),
            custom: Vec::new(),
            ..self.clone()
        }
    }
}

/// Why a scanner could not be built from its config.
#[derive(Debug, thiserror::Error)]
pub enum PiiError {
    #[error(transparent)]
    UnknownKind(#[from] UnknownKind),
    #[error(
        "custom PII pattern name {name:?} is invalid: use 1-32 of [a-z0-9_], starting with a letter"
    )]
    BadCustomName { name: String },
    #[error(
        "custom PII pattern name {name:?} is already taken (by a built-in kind, a group or another pattern)"
    )]
    DuplicateCustomName { name: String },
    #[error("custom PII pattern {name:?} does not compile: {source}")]
    BadCustomPattern {
        name: String,
        #[source]
        source: regex::Error,
    },
    #[error("custom PII pattern {name:?} matches the empty string")]
    EmptyCustomPattern { name: String },
    #[error("too many custom PII patterns ({count}); the maximum is {MAX_CUSTOM_PATTERNS}")]
    TooManyCustomPatterns { count: usize },
    #[error("PII allowlist regex #{index} does not compile: {source}")]
    BadAllowRegex {
        index: usize,
        #[source]
        source: regex::Error,
    },
}

#[derive(Debug)]
struct Custom {
    kind: Kind,
    re: Regex,
}

// Byte classes of the scan loop.
const DIGIT: u8 = 1;
const AT: u8 = 2;
const COLON: u8 = 3;

/// The PII and secrets scanner. Build once (per config snapshot), share (`Arc`),
/// scan from any thread: `scan` takes `&self`.
pub struct Scanner {
    kinds: KindSet,
    min_confidence: Confidence,
    class: [u8; 256],
    /// Some byte class is on (a shortcut for the skip loop).
    any_class: bool,
    secrets: Option<Prefilter>,
    custom: Vec<Custom>,
    allow_exact: HashSet<Box<str>>,
    allow_re: Option<RegexSet>,
}

impl fmt::Debug for Scanner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scanner")
            .field("kinds", &self.kinds)
            .field("min_confidence", &self.min_confidence)
            .field(
                "custom",
                &self
                    .custom
                    .iter()
                    .map(|c| c.kind.name())
                    .collect::<Vec<_>>(),
            )
            .field("allow_exact", &self.allow_exact.len())
            .field(
                "allow_regex",
                &self.allow_re.as_ref().map_or(0, RegexSet::len),
            )
            .finish()
    }
}

impl Default for Scanner {
    /// Every built-in kind, no custom pattern, no allowlist.
    fn default() -> Self {
        Scanner::with_kinds(KindSet::all())
    }
}

fn valid_custom_name(name: &str) -> bool {
    let b = name.as_bytes();
    (1..=32).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
}

/// Names a custom pattern may not take (built-in kinds and groups).
pub(crate) fn reserved_name(name: &str) -> bool {
    Kind::builtin(name).is_some()
        || matches!(
            name,
            "all" | "pii" | "personal" | "secrets" | "secret" | "ip" | "custom" | "default"
        )
}

impl Scanner {
    /// A scanner for these built-in kinds only.
    pub fn with_kinds(kinds: KindSet) -> Scanner {
        let mut class = [0u8; 256];
        let mut numeric = KindSet::personal().union(KindSet::ip());
        numeric.remove(&Kind::Email);
        numeric.remove(&Kind::Ipv6);
        if kinds.intersects(numeric) {
            for d in b'0'..=b'9' {
                class[d as usize] = DIGIT;
            }
        }
        if kinds.contains(&Kind::Email) {
            class[b'@' as usize] = AT;
        }
        if kinds.contains(&Kind::Ipv6) {
            class[b':' as usize] = COLON;
        }
        Scanner {
            kinds,
            min_confidence: Confidence::Low,
            any_class: class.iter().any(|&c| c != 0),
            class,
            secrets: Prefilter::new(kinds),
            custom: Vec::new(),
            allow_exact: HashSet::new(),
            allow_re: None,
        }
    }

    /// Builds a scanner from its config, checking every name and regex.
    pub fn new(config: &ScannerConfig) -> Result<Scanner, PiiError> {
        let mut s = Scanner::with_kinds(config.kinds.unwrap_or_default());
        s.min_confidence = config.min_confidence.unwrap_or(Confidence::Low);
        if config.custom.len() > MAX_CUSTOM_PATTERNS {
            return Err(PiiError::TooManyCustomPatterns {
                count: config.custom.len(),
            });
        }
        let mut names = HashSet::new();
        for c in &config.custom {
            if !valid_custom_name(&c.name) {
                return Err(PiiError::BadCustomName {
                    name: c.name.clone(),
                });
            }
            if reserved_name(&c.name) || !names.insert(c.name.as_str()) {
                return Err(PiiError::DuplicateCustomName {
                    name: c.name.clone(),
                });
            }
            let re = RegexBuilder::new(&c.pattern)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|source| PiiError::BadCustomPattern {
                    name: c.name.clone(),
                    source,
                })?;
            if re.is_match("") {
                return Err(PiiError::EmptyCustomPattern {
                    name: c.name.clone(),
                });
            }
            s.custom.push(Custom {
                kind: Kind::Custom(Arc::from(c.name.as_str())),
                re,
            });
        }
        s.allow_exact = config
            .allow
            .exact
            .iter()
            .map(|v| Box::from(v.as_str()))
            .collect();
        if !config.allow.regex.is_empty() {
            // Check each alone first, so the error names the bad one.
            for (index, r) in config.allow.regex.iter().enumerate() {
                RegexBuilder::new(r)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|source| PiiError::BadAllowRegex { index, source })?;
            }
            let anchored = config.allow.regex.iter().map(|r| format!("^(?:{r})$"));
            let set = RegexSetBuilder::new(anchored)
                .size_limit(REGEX_SIZE_LIMIT * 4)
                .build()
                .map_err(|source| PiiError::BadAllowRegex { index: 0, source })?;
            s.allow_re = Some(set);
        }
        Ok(s)
    }

    /// The built-in kinds this scanner looks for.
    pub fn kinds(&self) -> KindSet {
        self.kinds
    }

    /// Whether custom patterns are configured (they may match longer spans with
    /// spaces, so a stream holds back more text).
    pub fn has_custom(&self) -> bool {
        !self.custom.is_empty()
    }

    /// The kinds of the custom patterns, in config order.
    pub fn custom_kinds(&self) -> impl Iterator<Item = &Kind> {
        self.custom.iter().map(|c| &c.kind)
    }

    /// The kind a name means for this scanner: built-in or one of its custom
    /// patterns.
    pub fn resolve_kind(&self, name: &str) -> Option<Kind> {
        Kind::builtin(name).or_else(|| {
            self.custom
                .iter()
                .find(|c| c.kind.name() == name)
                .map(|c| c.kind.clone())
        })
    }

    /// Every finding in `text`, in order, without overlaps.
    pub fn scan(&self, text: &str) -> Vec<Finding> {
        let mut out = Vec::new();
        self.scan_into(text, &mut out);
        out
    }

    /// Like [`Scanner::scan`], reusing `out` (cleared first) to avoid allocating.
    pub fn scan_into(&self, text: &str, out: &mut Vec<Finding>) {
        out.clear();
        let b = text.as_bytes();
        if let Some(p) = &self.secrets {
            p.scan(b, out);
        }
        let secrets_end = out.len();
        if self.any_class {
            self.walk(text, out);
        }
        for c in &self.custom {
            for m in c.re.find_iter(text) {
                if !m.is_empty() {
                    out.push(Finding {
                        kind: c.kind.clone(),
                        start: m.start(),
                        end: m.end(),
                        confidence: Confidence::High,
                    });
                }
            }
        }
        if out.is_empty() {
            return;
        }
        // Each pass is already in order; sort only when there was more than one.
        if secrets_end > 0 && secrets_end < out.len() || !self.custom.is_empty() {
            out.sort_by(|a, b| a.start.cmp(&b.start).then(b.end.cmp(&a.end)));
        }
        resolve_overlaps(out);
        if self.min_confidence > Confidence::Low {
            out.retain(|f| f.confidence >= self.min_confidence);
        }
        if !self.allow_exact.is_empty() || self.allow_re.is_some() {
            out.retain(|f| !self.allowed(f.value(text)));
        }
    }

    /// Whether the allowlist names this exact value.
    fn allowed(&self, value: &str) -> bool {
        self.allow_exact.contains(value)
            || self.allow_re.as_ref().is_some_and(|r| r.is_match(value))
    }

    /// The byte-class walk (pass 2).
    fn walk(&self, text: &str, out: &mut Vec<Finding>) {
        let b = text.as_bytes();
        let n = b.len();
        let class = &self.class;
        let mut i = 0;
        while i < n {
            // Skip eight bytes at a time while none is a digit, ':' or '@'.
            while let Some(chunk) = b[i..].first_chunk::<8>() {
                let m = candidates(u64::from_le_bytes(*chunk));
                if m != 0 {
                    i += (m.trailing_zeros() / 8) as usize;
                    break;
                }
                i += 8;
            }
            if i >= n {
                break;
            }
            i = match class[b[i] as usize] {
                0 => i + 1,
                DIGIT => self.on_digit(b, i, out),
                AT => match email::find(text, i) {
                    Some((s, e)) => {
                        out.push(Finding {
                            kind: Kind::Email,
                            start: s,
                            end: e,
                            confidence: Confidence::High,
                        });
                        e
                    }
                    None => i + 1,
                },
                _ => {
                    let (found, resume) = ipv6::find(text, i);
                    if let Some((s, e, confidence)) = found {
                        out.push(Finding {
                            kind: Kind::Ipv6,
                            start: s,
                            end: e,
                            confidence,
                        });
                    }
                    resume.max(i + 1)
                }
            };
        }
    }

    /// A digit at `i`: an IBAN's check digits, a digit inside a word (skipped with
    /// its word), or the start of a numeric cluster. Returns where to resume.
    fn on_digit(&self, b: &[u8], i: usize, out: &mut Vec<Finding>) -> usize {
        if i > 0 && is_word(b[i - 1]) {
            if self.kinds.contains(&Kind::Iban)
                && i >= 2
                && b[i - 1].is_ascii_uppercase()
                && b[i - 2].is_ascii_uppercase()
                && (i == 2 || !is_word(b[i - 3]))
            {
                if let Some(end) = iban::find(b, i - 2) {
                    out.push(Finding {
                        kind: Kind::Iban,
                        start: i - 2,
                        end,
                        confidence: Confidence::High,
                    });
                    return end;
                }
            }
            return skip_word(b, i);
        }
        // Most numbers (`2`, `404`, `0.5`, `2026-05-12`, `10:30`, `3px`) cannot be
        // anything: count groups and digits without parsing, with a superset of
        // the cluster separators, and skip unless a detector could match.
        let mut j = i;
        let mut digits = 0;
        let mut groups = 0;
        loop {
            let gs = j;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            digits += j - gs;
            groups += 1;
            if digits >= 8 || groups >= 4 {
                break;
            }
            let sep = |k: usize| matches!(b.get(k), Some(b' ' | b'-' | b'.' | b'/' | b'(' | b')'));
            let digit = |k: usize| b.get(k).is_some_and(u8::is_ascii_digit);
            if sep(j) && digit(j + 1) {
                j += 1;
            } else if sep(j) && sep(j + 1) && digit(j + 2) {
                j += 2;
            } else {
                break;
            }
        }
        // A lone run without `+` can only be a bare SSN (9 digits) or card (12-19).
        let lone = groups == 1 && !(i > 0 && b[i - 1] == b'+');
        if (digits < 8 && groups < 4) || (lone && digits != 9 && !(12..=19).contains(&digits)) {
            return skip_word(b, j).max(i + 1);
        }
        let c = Cluster::parse(b, i);
        if numeric::worth_checking(&c) {
            numeric::detect(b, &c, self.kinds, out);
        }
        let mut j = c.end;
        if j < b.len() && is_word(b[j]) {
            j = skip_word(b, j);
        }
        j.max(i + 1)
    }
}

/// Bytes of `[A-Za-z0-9_]`.
static WORD: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        t[c] = is_word(c as u8);
        c += 1;
    }
    t
};

fn skip_word(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && WORD[b[i] as usize] {
        i += 1;
    }
    i
}

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// For eight bytes (little-endian), a mask whose lowest set bit marks the first
/// byte that is a digit, ':' or '@' (bit-twiddling "has between" and "has zero";
/// bytes >= 0x80 never match; only the lowest bit is exact, which is all the walk
/// uses).
#[inline]
fn candidates(w: u64) -> u64 {
    let x7 = w & (LO * 127);
    // 0x30..=0x3A: digits and ':'.
    let digit_colon = (LO * (127 + 0x3B)).wrapping_sub(x7) & !w & (x7 + LO * (127 - 0x2F)) & HI;
    let at = w ^ (LO * u64::from(b'@'));
    let at_zero = at.wrapping_sub(LO) & !at & HI;
    digit_colon | at_zero
}

/// Keeps, among overlapping findings, the one with the higher-priority kind, then
/// the longer one. `v` is sorted by start.
fn resolve_overlaps(v: &mut Vec<Finding>) {
    let mut w = 0;
    for r in 0..v.len() {
        if w > 0 && v[r].start < v[w - 1].end {
            let better =
                (v[r].kind.priority(), v[r].len()) > (v[w - 1].kind.priority(), v[w - 1].len());
            if better {
                v.swap(r, w - 1);
            }
            continue;
        }
        v.swap(w, r);
        w += 1;
    }
    v.truncate(w);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn kinds_and_values(s: &Scanner, text: &str) -> Vec<(String, String)> {
        s.scan(text)
            .iter()
            .map(|f| (f.kind.name().to_owned(), f.value(text).to_owned()))
            .collect()
    }

    #[test]
    fn swar_finds_the_first_candidate() {
        for pos in 0..8 {
            for &c in b"0123456789:@" {
                let mut w = *b"abcdefgh";
                w[pos] = c;
                // A later candidate must not hide the first.
                if pos < 7 {
                    w[7] = b'@';
                }
                let m = candidates(u64::from_le_bytes(w));
                assert_eq!((m.trailing_zeros() / 8) as usize, pos, "{c} at {pos}");
            }
        }
        for w in [
            *b"abcdefgh",
            *b"/;?AZaz ",
            [0xC3, 0xA9, 0xE2, 0x80, 0x94, 0xFF, 0x2F, 0x3B],
        ] {
            assert_eq!(candidates(u64::from_le_bytes(w)), 0, "{w:?}");
        }
    }

    #[test]
    fn mixed_text() {
        let s = Scanner::default();
        let text = "Hi, I'm Jane (jane.doe@example.com, +1 415-555-2671). Card 4111 1111 1111 1111, \
                    SSN 123-45-6789, IBAN DE89 3704 0044 0532 0130 00, from 203.0.113.7 and 2001:db8::7. \
                    Key AKIAZ3MHQ5XW7T2LNB4K. Build 1700000000, sha 3f786850e387550fdab836ed7e6dc881de23001b.";
        let got = kinds_and_values(&s, text);
        let want = [
            ("email", "jane.doe@example.com"),
            ("phone", "+1 415-555-2671"),
            ("card", "4111 1111 1111 1111"),
            ("ssn", "123-45-6789"),
            ("iban", "DE89 3704 0044 0532 0130 00"),
            ("ipv4", "203.0.113.7"),
            ("ipv6", "2001:db8::7"),
            ("aws_access_key", "AKIAZ3MHQ5XW7T2LNB4K"),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        assert_eq!(got, want);
    }

    fn config(toml_like: serde_json::Value) -> ScannerConfig {
        serde_json::from_value(toml_like).unwrap()
    }

    #[test]
    fn scoping_to_a_secrets_only_policy_keeps_the_secrets_alone() {
        let full = config(serde_json::json!({
            "custom": [{"name": "emp", "pattern": "EMP-\\d{6}"}],
            "allow": {"exact": ["a@b.co"]},
        }));
        let scoped = full.scoped_to(&Policy::parse("secrets=block").unwrap());
        assert_eq!(scoped.kinds, Some(KindSet::secrets()));
        assert!(scoped.custom.is_empty());
        assert_eq!(scoped.allow, full.allow);
        // A single secret kind, or an explicit allow for the rest: the same.
        for p in ["openai_key=block", "secrets=redact,pii=allow,emp=allow"] {
            let got = full.scoped_to(&Policy::parse(p).unwrap());
            assert_eq!(got.kinds, Some(KindSet::secrets()), "{p}");
        }
        // Configured kinds stay a ceiling.
        let narrow = config(serde_json::json!({"kinds": ["openai_key", "email"]}));
        let got = narrow.scoped_to(&Policy::parse("secrets=block").unwrap());
        assert_eq!(got.kinds, Some(KindSet::parse("openai_key").unwrap()));
    }

    #[test]
    fn scoping_keeps_everything_once_the_policy_acts_beyond_secrets() {
        let full = config(serde_json::json!({
            "custom": [{"name": "emp", "pattern": "EMP-\\d{6}"}],
        }));
        for p in [
            "secrets=block,email=redact",
            "phone=log",
            "default=log",
            "secrets=block,emp=redact",
            "custom=log",
            "ip=redact",
        ] {
            assert_eq!(full.scoped_to(&Policy::parse(p).unwrap()), full, "{p}");
        }
    }

    #[test]
    fn every_secret_outranks_every_other_kind() {
        // What makes scoping exact: a dropped kind never wins an overlap
        // against a kept secret.
        let custom = Kind::Custom(Arc::from("emp"));
        for secret in KindSet::secrets().iter() {
            for other in KindSet::all().iter().filter(|k| !k.is_secret()) {
                assert!(
                    secret.priority() > other.priority(),
                    "{secret:?} vs {other:?}"
                );
            }
            assert!(
                secret.priority() > custom.priority(),
                "{secret:?} vs custom"
            );
        }
    }

    #[test]
    fn a_scoped_scan_finds_what_the_full_scan_finds_of_the_acted_on_kinds() {
        let full_config = config(serde_json::json!({
            "custom": [{"name": "tok", "pattern": "[A-Za-z0-9_-]{12,}"}],
            "allow": {"exact": ["AKIAZ3MHQ5XW7T2LNB4K"]},
        }));
        let policy = Policy::parse("secrets=block").unwrap();
        let full = Scanner::new(&full_config).unwrap();
        let scoped = Scanner::new(&full_config.scoped_to(&policy)).unwrap();
        assert!(!scoped.has_custom());
        let texts = [
            "mail jane.doe@example.com key sk-proj-Q2x9Lm4Tz8Kp1Rw7Yb3Nc6Vd0 done",
            // A key inside what also reads as a custom token and an e-mail.
            "x sk-proj-Q2x9Lm4Tz8Kp1Rw7Yb3Nc6Vd0@example.com y",
            "ghp_0123456789abcdefghijklmnopqrstuvwxyzAB 4111 1111 1111 1111",
            "allowed AKIAZ3MHQ5XW7T2LNB4K but not AKIAQ7WXZ2LMN4PRS5TB, call +1 415-555-2671",
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEow==\n-----END RSA PRIVATE KEY----- 203.0.113.7",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            "nothing here but prose, 42 apples and 2001:db8::7",
        ];
        let mut any = 0;
        for text in texts {
            let want: Vec<Finding> = full
                .scan(text)
                .into_iter()
                .filter(|f| policy.action_for(&f.kind) > Action::Allow)
                .collect();
            any += want.len();
            assert_eq!(scoped.scan(text), want, "{text}");
        }
        assert!(
            any >= 5,
            "the texts must hold secrets for this to test anything"
        );
    }

    #[test]
    fn scanner_is_shareable() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Scanner>();
        shareable::<Finding>();
    }

    #[test]
    fn kinds_filter() {
        let s = Scanner::with_kinds(KindSet::parse("email").unwrap());
        let got = kinds_and_values(
            &s,
            "a@b.co 4111111111111111 sk-proj-Q2x9Lm4Tz8Kp1Rw7Yb3Nc6Vd0",
        );
        assert_eq!(got, [("email".to_owned(), "a@b.co".to_owned())]);
        let s = Scanner::with_kinds(KindSet::secrets());
        assert_eq!(s.scan("a@b.co 4111111111111111").len(), 0);
    }

    #[test]
    fn custom_and_allowlist() {
        let cfg: ScannerConfig = serde_json::from_value(serde_json::json!({
            "custom": [{"name": "employee_id", "pattern": r"\bEMP-\d{6}\b"}],
            "allow": {"exact": ["support@example.com"], "regex": [r".*@example\.org"]}
        }))
        .unwrap();
        let s = Scanner::new(&cfg).unwrap();
        let got = kinds_and_values(
            &s,
            "EMP-123456 support@example.com bob@example.org bob@example.net",
        );
        assert_eq!(
            got,
            [
                ("employee_id".to_owned(), "EMP-123456".to_owned()),
                ("email".to_owned(), "bob@example.net".to_owned())
            ]
        );
        let dbg = format!("{s:?}");
        assert!(dbg.contains("employee_id") && !dbg.contains("support@"));
        assert_eq!(
            s.resolve_kind("employee_id"),
            Some(Kind::Custom("employee_id".into()))
        );
    }

    #[test]
    fn config_errors_name_the_problem() {
        let bad = |v: serde_json::Value| {
            let cfg: ScannerConfig = serde_json::from_value(v).unwrap();
            Scanner::new(&cfg).unwrap_err().to_string()
        };
        assert!(
            bad(serde_json::json!({"custom": [{"name": "Bad Name", "pattern": "x"}]}))
                .contains("Bad Name")
        );
        assert!(
            bad(serde_json::json!({"custom": [{"name": "email", "pattern": "x"}]}))
                .contains("taken")
        );
        assert!(
            bad(serde_json::json!({"custom": [{"name": "x", "pattern": "("}]}))
                .contains("does not compile")
        );
        assert!(
            bad(serde_json::json!({"custom": [{"name": "x", "pattern": "a*"}]})).contains("empty")
        );
        assert!(bad(serde_json::json!({"allow": {"regex": ["ok", "("]}})).contains("#1"));
        let err = serde_json::from_value::<ScannerConfig>(serde_json::json!({"kinds": ["emial"]}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("emial"), "{err}");
    }

    #[test]
    fn overlaps_prefer_priority_then_length() {
        let s = Scanner::default();
        // A phone-shaped run inside an email's local part: the email wins.
        let text = "555-123-4567@example.com";
        let got = s.scan(text);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].kind, Kind::Email);
    }

    #[test]
    fn min_confidence() {
        let cfg = ScannerConfig {
            min_confidence: Some(Confidence::High),
            ..ScannerConfig::default()
        };
        let s = Scanner::new(&cfg).unwrap();
        // A bare Luhn-valid number is Medium; grouped it is High.
        assert!(s.scan("4111111111111111").is_empty());
        assert_eq!(s.scan("4111 1111 1111 1111").len(), 1);
    }

    #[test]
    fn non_ascii_text_keeps_char_boundaries() {
        let s = Scanner::default();
        let text = "Grüße — jürgen@example.de ☎ +49 30 1234567 ü";
        for f in s.scan(text) {
            assert!(text.is_char_boundary(f.start) && text.is_char_boundary(f.end));
        }
        let got = kinds_and_values(&s, text);
        assert_eq!(got.len(), 2, "{got:?}");
    }
}
