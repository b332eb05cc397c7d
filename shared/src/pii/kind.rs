//! What a finding is: its kind, where it is, and how sure the engine is.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::ops::Range;
use std::str::FromStr;
use std::sync::Arc;

/// The kind of a finding: a built-in detector or a custom pattern from the config.
///
/// Names (`email`, `openai_key`, ...) are what the config, `ironctl pii scan --kinds`
/// and JSON output use; labels (`[EMAIL]`) are what the label redaction writes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Email,
    Phone,
    /// A US Social Security number.
    Ssn,
    /// A payment card number (PAN).
    Card,
    Iban,
    Ipv4,
    Ipv6,
    /// `sk-...`, `sk-proj-...`, `sk-svcacct-...`.
    OpenAiKey,
    /// `sk-ant-...`.
    AnthropicKey,
    /// `AKIA...` / `ASIA...` access key ids.
    AwsAccessKey,
    /// `ghp_`, `gho_`, `ghu_`, `ghs_`, `ghr_`, `github_pat_`.
    GithubToken,
    /// `glpat-...`.
    GitlabToken,
    /// `xoxb-`, `xoxa-`, `xoxp-`, `xoxr-`, `xoxs-`.
    SlackToken,
    /// `sk_live_`, `rk_live_`, `sk_test_`, `rk_test_` (publishable `pk_` keys are public
    /// by design and not reported).
    StripeKey,
    Jwt,
    /// A PEM block whose label ends in `PRIVATE KEY` (RSA, EC, OPENSSH, PKCS#8, PGP).
    PrivateKey,
    /// A custom pattern from the config, by its name.
    Custom(Arc<str>),
}

/// Number of built-in kinds (every variant but [`Kind::Custom`]).
pub const BUILTIN_KINDS: usize = 16;

impl Kind {
    /// Every built-in kind, in a stable order (the bit order of [`KindSet`]).
    pub const BUILTIN: [Kind; BUILTIN_KINDS] = [
        Kind::Email,
        Kind::Phone,
        Kind::Ssn,
        Kind::Card,
        Kind::Iban,
        Kind::Ipv4,
        Kind::Ipv6,
        Kind::OpenAiKey,
        Kind::AnthropicKey,
        Kind::AwsAccessKey,
        Kind::GithubToken,
        Kind::GitlabToken,
        Kind::SlackToken,
        Kind::StripeKey,
        Kind::Jwt,
        Kind::PrivateKey,
    ];

    /// The kind's name: `email`, `openai_key`, or a custom pattern's own name.
    pub fn name(&self) -> &str {
        match self {
            Kind::Email => "email",
            Kind::Phone => "phone",
            Kind::Ssn => "ssn",
            Kind::Card => "card",
            Kind::Iban => "iban",
            Kind::Ipv4 => "ipv4",
            Kind::Ipv6 => "ipv6",
            Kind::OpenAiKey => "openai_key",
            Kind::AnthropicKey => "anthropic_key",
            Kind::AwsAccessKey => "aws_access_key",
            Kind::GithubToken => "github_token",
            Kind::GitlabToken => "gitlab_token",
            Kind::SlackToken => "slack_token",
            Kind::StripeKey => "stripe_key",
            Kind::Jwt => "jwt",
            Kind::PrivateKey => "private_key",
            Kind::Custom(name) => name,
        }
    }

    /// A built-in kind by name (or a common alias: `credit_card`, `ip`... are groups,
    /// see [`KindSet::parse`]). Custom kinds are resolved by the scanner, not here.
    pub fn builtin(name: &str) -> Option<Kind> {
        let name = name.trim();
        let k = match name {
            "email" => Kind::Email,
            "phone" => Kind::Phone,
            "ssn" | "us_ssn" => Kind::Ssn,
            "card" | "credit_card" | "payment_card" => Kind::Card,
            "iban" => Kind::Iban,
            "ipv4" => Kind::Ipv4,
            "ipv6" => Kind::Ipv6,
            "openai_key" => Kind::OpenAiKey,
            "anthropic_key" => Kind::AnthropicKey,
            "aws_access_key" => Kind::AwsAccessKey,
            "github_token" => Kind::GithubToken,
            "gitlab_token" => Kind::GitlabToken,
            "slack_token" => Kind::SlackToken,
            "stripe_key" => Kind::StripeKey,
            "jwt" => Kind::Jwt,
            "private_key" => Kind::PrivateKey,
            _ => return None,
        };
        Some(k)
    }

    /// Whether this is a credential rather than personal data. Custom patterns count
    /// as neither; policies address them by name or with the `custom` group.
    pub fn is_secret(&self) -> bool {
        matches!(
            self,
            Kind::OpenAiKey
                | Kind::AnthropicKey
                | Kind::AwsAccessKey
                | Kind::GithubToken
                | Kind::GitlabToken
                | Kind::SlackToken
                | Kind::StripeKey
                | Kind::Jwt
                | Kind::PrivateKey
        )
    }

    /// Personal data proper (the `pii` group): email, phone, SSN, card, IBAN.
    pub fn is_personal(&self) -> bool {
        matches!(
            self,
            Kind::Email | Kind::Phone | Kind::Ssn | Kind::Card | Kind::Iban
        )
    }

    /// Network addresses (the `ip` group).
    pub fn is_ip(&self) -> bool {
        matches!(self, Kind::Ipv4 | Kind::Ipv6)
    }

    /// The bit of a built-in kind in a [`KindSet`]; `None` for custom kinds.
    pub(crate) fn index(&self) -> Option<usize> {
        Some(match self {
            Kind::Email => 0,
            Kind::Phone => 1,
            Kind::Ssn => 2,
            Kind::Card => 3,
            Kind::Iban => 4,
            Kind::Ipv4 => 5,
            Kind::Ipv6 => 6,
            Kind::OpenAiKey => 7,
            Kind::AnthropicKey => 8,
            Kind::AwsAccessKey => 9,
            Kind::GithubToken => 10,
            Kind::GitlabToken => 11,
            Kind::SlackToken => 12,
            Kind::StripeKey => 13,
            Kind::Jwt => 14,
            Kind::PrivateKey => 15,
            Kind::Custom(_) => return None,
        })
    }

    /// Which finding wins when two overlap (higher wins; then the longer one).
    /// Validated structures beat loose ones; a secret beats what is inside it.
    pub(crate) fn priority(&self) -> u8 {
        match self {
            Kind::PrivateKey => 100,
            Kind::Jwt => 95,
            Kind::OpenAiKey
            | Kind::AnthropicKey
            | Kind::AwsAccessKey
            | Kind::GithubToken
            | Kind::GitlabToken
            | Kind::SlackToken
            | Kind::StripeKey => 90,
            Kind::Custom(_) => 85,
            Kind::Card => 80,
            Kind::Iban => 75,
            Kind::Ssn => 70,
            Kind::Email => 60,
            Kind::Phone => 50,
            Kind::Ipv6 => 45,
            Kind::Ipv4 => 40,
        }
    }

    /// Writes the redaction label's inner text (`EMAIL`, `OPENAI_KEY`, a custom
    /// name upper-cased) to `out`.
    pub(crate) fn write_label_name(&self, out: &mut String) {
        for c in self.name().chars() {
            out.push(c.to_ascii_uppercase());
        }
    }

    /// The label redaction writes for this kind: `[EMAIL]`.
    pub fn label(&self) -> String {
        let mut s = String::with_capacity(self.name().len() + 2);
        s.push('[');
        self.write_label_name(&mut s);
        s.push(']');
        s
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Kind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// How sure the engine is. `High`: validated structure (checksum, exact token
/// format, separators in a standard grouping). `Medium`: right shape and valid, but a
/// plausible coincidence (a bare Luhn-valid number, a space-separated phone, a bare
/// SSN next to the word "SSN"). `Low` is reserved for custom filters; no built-in
/// detector reports it today.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Confidence {
    Low,
    Medium,
    High,
}

impl Confidence {
    /// A number in 0..=1 for consumers that want one.
    pub fn score(self) -> f32 {
        match self {
            Confidence::Low => 0.4,
            Confidence::Medium => 0.7,
            Confidence::High => 0.95,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Confidence::Low => "low",
            Confidence::Medium => "medium",
            Confidence::High => "high",
        }
    }
}

impl fmt::Display for Confidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One detected entity: its kind, its byte span in the scanned text, and a
/// confidence. It never holds the matched text, so `Debug` and logs cannot leak it;
/// use [`Finding::value`] with the original text when the value is really needed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Finding {
    pub kind: Kind,
    /// Byte offset of the first byte (always on a `char` boundary).
    pub start: usize,
    /// Byte offset one past the last byte (always on a `char` boundary).
    pub end: usize,
    pub confidence: Confidence,
}

impl Finding {
    pub fn span(&self) -> Range<usize> {
        self.start..self.end
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }

    /// The matched text, read back from the text that was scanned ("" when the
    /// span does not fit `text`).
    pub fn value<'t>(&self, text: &'t str) -> &'t str {
        text.get(self.span()).unwrap_or("")
    }
}

/// A set of built-in kinds (a bit set; custom patterns are always on when
/// configured).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KindSet(u32);

/// A name in a kind list is neither a kind nor a group.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown PII kind {name:?}; expected one of: {}, or a group: all, pii, secrets, ip",
    KindSet::all().iter().map(|k| k.name().to_owned()).collect::<Vec<_>>().join(", ")
)]
pub struct UnknownKind {
    pub name: String,
}

impl KindSet {
    pub const fn empty() -> Self {
        KindSet(0)
    }

    /// Every built-in kind: the default.
    pub const fn all() -> Self {
        KindSet((1 << BUILTIN_KINDS) - 1)
    }

    /// The credentials.
    pub fn secrets() -> Self {
        Self::from_pred(Kind::is_secret)
    }

    /// Personal data: email, phone, SSN, card, IBAN.
    pub fn personal() -> Self {
        Self::from_pred(Kind::is_personal)
    }

    /// IPv4 and IPv6.
    pub fn ip() -> Self {
        Self::from_pred(Kind::is_ip)
    }

    fn from_pred(pred: impl Fn(&Kind) -> bool) -> Self {
        let mut s = Self::empty();
        for k in Kind::BUILTIN.iter().filter(|k| pred(k)) {
            s.insert(k);
        }
        s
    }

    /// Adds a built-in kind (custom kinds are ignored).
    pub fn insert(&mut self, kind: &Kind) {
        if let Some(i) = kind.index() {
            self.0 |= 1 << i;
        }
    }

    pub fn remove(&mut self, kind: &Kind) {
        if let Some(i) = kind.index() {
            self.0 &= !(1 << i);
        }
    }

    /// Whether a built-in kind is in the set (custom kinds: false).
    pub fn contains(&self, kind: &Kind) -> bool {
        kind.index().is_some_and(|i| self.0 & (1 << i) != 0)
    }

    pub fn union(self, other: KindSet) -> KindSet {
        KindSet(self.0 | other.0)
    }

    pub fn intersection(self, other: KindSet) -> KindSet {
        KindSet(self.0 & other.0)
    }

    pub fn intersects(self, other: KindSet) -> bool {
        self.0 & other.0 != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The built-in kinds in the set, in [`Kind::BUILTIN`] order.
    pub fn iter(self) -> impl Iterator<Item = Kind> {
        Kind::BUILTIN.into_iter().filter(move |k| self.contains(k))
    }

    /// Parses a comma-separated list of kind names and groups
    /// (`all`, `pii`, `secrets`, `ip`): `"email,phone,secrets"`.
    pub fn parse(list: &str) -> Result<KindSet, UnknownKind> {
        let mut set = KindSet::empty();
        for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            set = set.union(Self::parse_one(name)?);
        }
        Ok(set)
    }

    /// One kind name or group name.
    pub fn parse_one(name: &str) -> Result<KindSet, UnknownKind> {
        let lower = name.trim().to_ascii_lowercase();
        let set = match lower.as_str() {
            "all" | "*" => KindSet::all(),
            "pii" | "personal" => KindSet::personal(),
            "secrets" | "secret" => KindSet::secrets(),
            "ip" => KindSet::ip(),
            other => match Kind::builtin(other) {
                Some(k) => {
                    let mut s = KindSet::empty();
                    s.insert(&k);
                    s
                }
                None => {
                    return Err(UnknownKind {
                        name: name.to_owned(),
                    });
                }
            },
        };
        Ok(set)
    }
}

impl Default for KindSet {
    fn default() -> Self {
        KindSet::all()
    }
}

impl fmt::Debug for KindSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(self.iter().map(|k| k.name().to_owned()))
            .finish()
    }
}

impl FromStr for KindSet {
    type Err = UnknownKind;
    fn from_str(s: &str) -> Result<Self, UnknownKind> {
        KindSet::parse(s)
    }
}

/// Deserializes from a list of names (`["email", "secrets"]`) or one
/// comma-separated string (`"email,secrets"`).
impl<'de> Deserialize<'de> for KindSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            List(Vec<String>),
            One(String),
        }
        let list = match Repr::deserialize(d)? {
            Repr::List(v) => v.join(","),
            Repr::One(s) => s,
        };
        KindSet::parse(&list).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_bits_are_distinct() {
        let mut seen = KindSet::empty();
        for k in Kind::BUILTIN {
            assert_eq!(Kind::builtin(k.name()), Some(k.clone()));
            assert!(!seen.contains(&k));
            seen.insert(&k);
        }
        assert_eq!(seen, KindSet::all());
    }

    #[test]
    fn groups_parse() {
        let s = KindSet::parse("email, secrets").unwrap();
        assert!(s.contains(&Kind::Email) && s.contains(&Kind::Jwt));
        assert!(!s.contains(&Kind::Phone));
        assert_eq!(KindSet::parse("ip").unwrap().iter().count(), 2);
        assert_eq!(KindSet::parse("ALL").unwrap(), KindSet::all());
        let err = KindSet::parse("email,emial").unwrap_err();
        assert_eq!(err.name, "emial");
        assert!(err.to_string().contains("openai_key"));
    }

    #[test]
    fn labels() {
        assert_eq!(Kind::Email.label(), "[EMAIL]");
        assert_eq!(Kind::OpenAiKey.label(), "[OPENAI_KEY]");
        assert_eq!(Kind::Custom("employee_id".into()).label(), "[EMPLOYEE_ID]");
    }

    #[test]
    fn finding_debug_has_no_text() {
        let text = "mail jane@example.com";
        let f = Finding {
            kind: Kind::Email,
            start: 5,
            end: text.len(),
            confidence: Confidence::High,
        };
        assert_eq!(f.value(text), "jane@example.com");
        assert!(!format!("{f:?}").contains("jane"));
    }
}
