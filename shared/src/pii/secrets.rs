//! Credentials, found from their literal prefixes.
//!
//! One Aho-Corasick automaton over every prefix (`sk-`, `AKIA`, `ghp_`, `eyJ`,
//! `-----BEGIN `, ...; its SIMD prefilter makes the pass over text without any of
//! them nearly free), then a validator per prefix that reads the token that
//! follows and checks its shape:
//!
//! - OpenAI `sk-` / `sk-proj-` / `sk-svcacct-` and Anthropic `sk-ant-`: 20+ token
//!   characters with a digit, a letter and a run of 16+ alphanumerics, so
//!   `sk-your-api-key-here` and `task-1234` are not keys.
//! - AWS `AKIA`/`ASIA` + 16 of `[A-Z0-9]`, exactly; AWS's documented
//!   `...EXAMPLE` ids are not reported.
//! - GitHub classic tokens: 36 characters whose last 6 are the CRC-32 checksum (then
//!   `High`; right shape with a wrong checksum is still reported, `Medium`);
//!   fine-grained `github_pat_` tokens; GitLab `glpat-`; Slack `xox[abprs]-`.
//! - Stripe secret and restricted keys, live (`High`) and test (`Medium`); `pk_`
//!   publishable keys are public by design and not reported.
//! - JWTs: three base64url parts whose header decodes to a JSON object with `"alg"`.
//! - PEM private keys: `-----BEGIN ... PRIVATE KEY-----` through the matching
//!   `-----END` line; an unterminated block runs to the end of its base64 body (so a
//!   stream holds it back until it ends).

use super::checks::{b64url_decode, github_checksum_ok, is_word};
use super::kind::{Confidence, Finding, Kind, KindSet};
use aho_corasick::{AhoCorasick, Input, MatchKind};

/// Longest token read after a prefix (longer runs are data, not a key).
const MAX_TOKEN: usize = 512;
/// Longest JWT.
const MAX_JWT: usize = 16 * 1024;
/// Longest PEM block.
pub(crate) const MAX_PEM: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trigger {
    SkDash,
    StripeLive,
    StripeTest,
    Aws,
    GithubClassic,
    GithubPat,
    Gitlab,
    Slack,
    Jwt,
    Pem,
}

impl Trigger {
    fn kind(self) -> Kind {
        match self {
            // Refined to Anthropic by the validator.
            Trigger::SkDash => Kind::OpenAiKey,
            Trigger::StripeLive | Trigger::StripeTest => Kind::StripeKey,
            Trigger::Aws => Kind::AwsAccessKey,
            Trigger::GithubClassic | Trigger::GithubPat => Kind::GithubToken,
            Trigger::Gitlab => Kind::GitlabToken,
            Trigger::Slack => Kind::SlackToken,
            Trigger::Jwt => Kind::Jwt,
            Trigger::Pem => Kind::PrivateKey,
        }
    }
}

const TRIGGERS: &[(&str, Trigger)] = &[
    ("sk-", Trigger::SkDash),
    ("sk_live_", Trigger::StripeLive),
    ("rk_live_", Trigger::StripeLive),
    ("sk_test_", Trigger::StripeTest),
    ("rk_test_", Trigger::StripeTest),
    ("AKIA", Trigger::Aws),
    ("ASIA", Trigger::Aws),
    ("ghp_", Trigger::GithubClassic),
    ("gho_", Trigger::GithubClassic),
    ("ghu_", Trigger::GithubClassic),
    ("ghs_", Trigger::GithubClassic),
    ("ghr_", Trigger::GithubClassic),
    ("github_pat_", Trigger::GithubPat),
    ("glpat-", Trigger::Gitlab),
    ("xoxb-", Trigger::Slack),
    ("xoxa-", Trigger::Slack),
    ("xoxp-", Trigger::Slack),
    ("xoxr-", Trigger::Slack),
    ("xoxs-", Trigger::Slack),
    ("eyJ", Trigger::Jwt),
    ("-----BEGIN ", Trigger::Pem),
];

/// The prefix automaton for the enabled secret kinds.
#[derive(Debug)]
pub(crate) struct Prefilter {
    ac: AhoCorasick,
    triggers: Vec<Trigger>,
    kinds: KindSet,
}

impl Prefilter {
    /// `None` when no secret kind is enabled.
    pub(crate) fn new(kinds: KindSet) -> Option<Prefilter> {
        let mut patterns = Vec::new();
        let mut triggers = Vec::new();
        for &(p, t) in TRIGGERS {
            let on = kinds.contains(&t.kind())
                || (t == Trigger::SkDash && kinds.contains(&Kind::AnthropicKey));
            if on {
                patterns.push(p);
                triggers.push(t);
            }
        }
        if patterns.is_empty() {
            return None;
        }
        // Fixed, short literal patterns: building cannot fail, and silently
        // scanning without the secret detectors would fail open.
        #[allow(clippy::expect_used)]
        let ac = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostFirst)
            .build(&patterns)
            .expect("the fixed secret prefixes always build an automaton");
        Some(Prefilter {
            ac,
            triggers,
            kinds,
        })
    }

    /// Appends every credential in `b` to `out` (in text order).
    pub(crate) fn scan(&self, b: &[u8], out: &mut Vec<Finding>) {
        let mut pos = 0;
        while pos < b.len() {
            let Some(m) = self.ac.find(Input::new(b).range(pos..)) else {
                break;
            };
            let trig = self.triggers[m.pattern().as_usize()];
            let start = m.start();
            pos = m.end();
            if let Some((end, kind, confidence)) = validate(b, start, m.end(), trig) {
                if self.kinds.contains(&kind) {
                    out.push(Finding {
                        kind,
                        start,
                        end,
                        confidence,
                    });
                    pos = pos.max(end);
                }
            }
        }
    }
}

/// End of the run of bytes matching `pred` from `from`, at most `max` long; `None`
/// if the run is longer.
fn run(b: &[u8], from: usize, max: usize, pred: impl Fn(u8) -> bool) -> Option<usize> {
    let limit = (from + max).min(b.len());
    let mut e = from;
    while e < limit && pred(b[e]) {
        e += 1;
    }
    if e == from + max && b.get(e).is_some_and(|&c| pred(c)) {
        return None;
    }
    Some(e)
}

fn is_token(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-' || c == b'_'
}

/// How many different bytes `s` has (placeholders such as `xxxx...` have few).
fn distinct(s: &[u8]) -> usize {
    let mut seen = [false; 256];
    let mut n = 0;
    for &c in s {
        if !seen[c as usize] {
            seen[c as usize] = true;
            n += 1;
        }
    }
    n
}

/// Has a digit, a letter, and a run of 16+ alphanumerics: random, not prose
/// (`sk-this-is-not-a-real-key`) or a placeholder (`sk-xxxxxxxxxxxxxxxxxxxxxxxx`).
fn looks_random(s: &[u8]) -> bool {
    let has_digit = s.iter().any(u8::is_ascii_digit);
    let has_alpha = s.iter().any(u8::is_ascii_alphabetic);
    let longest = s
        .split(|&c| c == b'-' || c == b'_')
        .map(<[u8]>::len)
        .max()
        .unwrap_or(0);
    has_digit && has_alpha && longest >= 16 && distinct(s) >= 10
}

/// Checks the token whose prefix (matched at `start..after`) is `trig`.
fn validate(
    b: &[u8],
    start: usize,
    after: usize,
    trig: Trigger,
) -> Option<(usize, Kind, Confidence)> {
    let glued = start > 0 && b[start - 1].is_ascii_alphanumeric();
    match trig {
        Trigger::SkDash => {
            if glued {
                return None;
            }
            let e = run(b, after, MAX_TOKEN, is_token)?;
            let body = &b[after..e];
            if let Some(rest) = body.strip_prefix(b"ant-") {
                (rest.len() >= 32 && looks_random(rest)).then_some((
                    e,
                    Kind::AnthropicKey,
                    Confidence::High,
                ))
            } else {
                (body.len() >= 20 && looks_random(body)).then_some((
                    e,
                    Kind::OpenAiKey,
                    Confidence::High,
                ))
            }
        }
        Trigger::StripeLive | Trigger::StripeTest => {
            if glued {
                return None;
            }
            let e = run(b, after, 255, |c| c.is_ascii_alphanumeric())?;
            if e - after < 16 || b.get(e).is_some_and(|&c| c == b'_') {
                return None;
            }
            let conf = if trig == Trigger::StripeLive {
                Confidence::High
            } else {
                Confidence::Medium
            };
            Some((e, Kind::StripeKey, conf))
        }
        Trigger::Aws => {
            if glued {
                return None;
            }
            let e = after + 16;
            let body = b.get(after..e)?;
            if !body
                .iter()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
                || b.get(e).is_some_and(|&c| is_word(c))
                || body.ends_with(b"EXAMPLE")
            {
                return None;
            }
            let conf = if body.iter().any(u8::is_ascii_digit) {
                Confidence::High
            } else {
                Confidence::Medium
            };
            Some((e, Kind::AwsAccessKey, conf))
        }
        Trigger::GithubClassic => {
            if glued || (start > 0 && b[start - 1] == b'_') {
                return None;
            }
            let e = after + 36;
            let body = b.get(after..e)?;
            if !body.iter().all(u8::is_ascii_alphanumeric)
                || b.get(e).is_some_and(|&c| is_word(c))
                || distinct(body) < 10
            {
                return None;
            }
            let conf = if github_checksum_ok(body) {
                Confidence::High
            } else {
                Confidence::Medium
            };
            Some((e, Kind::GithubToken, conf))
        }
        Trigger::GithubPat => {
            if glued {
                return None;
            }
            let e = run(b, after, 255, is_word)?;
            (e - after >= 40 && looks_random(&b[after..e])).then_some((
                e,
                Kind::GithubToken,
                Confidence::High,
            ))
        }
        Trigger::Gitlab => {
            if glued {
                return None;
            }
            let mut e = run(b, after, 255, |c| is_token(c) || c == b'.')?;
            // A sentence's full stop is not part of the token.
            while e > after && b[e - 1] == b'.' {
                e -= 1;
            }
            let body = &b[after..e];
            (body.len() >= 20
                && body.iter().any(u8::is_ascii_digit)
                && body.iter().any(u8::is_ascii_alphabetic))
            .then_some((e, Kind::GitlabToken, Confidence::High))
        }
        Trigger::Slack => {
            if glued {
                return None;
            }
            let mut e = run(b, after, 255, |c| c.is_ascii_alphanumeric() || c == b'-')?;
            while e > after && b[e - 1] == b'-' {
                e -= 1;
            }
            let body = &b[after..e];
            (body.len() >= 10 && body.iter().filter(|c| c.is_ascii_digit()).count() >= 4)
                .then_some((e, Kind::SlackToken, Confidence::High))
        }
        Trigger::Jwt => jwt(b, start),
        Trigger::Pem => pem(b, start, after),
    }
}

fn is_b64url(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-' || c == b'_'
}

/// `header.payload.signature`, each base64url; the header must decode to a JSON
/// object naming its `"alg"`.
fn jwt(b: &[u8], start: usize) -> Option<(usize, Kind, Confidence)> {
    if start > 0 && (is_b64url(b[start - 1]) || b[start - 1] == b'.') {
        return None;
    }
    let h_end = run(b, start, MAX_JWT, is_b64url)?;
    if h_end - start < 16 || b.get(h_end) != Some(&b'.') {
        return None;
    }
    let p_end = run(b, h_end + 1, MAX_JWT, is_b64url)?;
    if p_end - (h_end + 1) < 4 || b.get(p_end) != Some(&b'.') {
        return None;
    }
    let s_end = run(b, p_end + 1, MAX_JWT, is_b64url)?;
    // A fourth part (`.x`) would make it something else (JWE has five).
    if b.get(s_end) == Some(&b'.') && b.get(s_end + 1).is_some_and(|&c| is_b64url(c)) {
        return None;
    }
    let mut header = [0u8; 768];
    let n = b64url_decode(&b[start..h_end], &mut header)?;
    let json = header[..n].trim_ascii();
    if !(json.starts_with(b"{") && json.ends_with(b"}"))
        || memchr::memmem::find(json, b"\"alg\"").is_none()
    {
        return None;
    }
    let conf = if s_end - (p_end + 1) >= 16 {
        Confidence::High
    } else {
        Confidence::Medium
    };
    Some((s_end, Kind::Jwt, conf))
}

/// `-----BEGIN <LABEL> PRIVATE KEY[ BLOCK]-----` to its `-----END ...-----` line.
fn pem(b: &[u8], start: usize, after: usize) -> Option<(usize, Kind, Confidence)> {
    // The label: capitals, digits and spaces, then `-----`.
    let label_end = run(b, after, 48, |c| {
        c.is_ascii_uppercase() || c.is_ascii_digit() || c == b' '
    })?;
    let label = &b[after..label_end];
    if !b[label_end..].starts_with(b"-----")
        || !(label.ends_with(b"PRIVATE KEY") || label.ends_with(b"PRIVATE KEY BLOCK"))
    {
        return None;
    }
    let body = label_end + 5;
    let limit = (start + MAX_PEM).min(b.len());
    if let Some(p) = memchr::memmem::find(&b[body..limit], b"-----END ") {
        return Some((
            end_line_end(b, body + p, limit),
            Kind::PrivateKey,
            Confidence::High,
        ));
    }
    // Unterminated: the body's lines (`Key: value` headers, a blank line, base64)
    // up to the first line that is none of these, or the end of the text.
    Some((
        unterminated_end(b, body, limit),
        Kind::PrivateKey,
        Confidence::High,
    ))
}

/// The end of the `-----END ...-----` line starting at `end`: after its closing
/// dashes, or (cut off, as in a stream mid-line) at the end of the line.
fn end_line_end(b: &[u8], end: usize, limit: usize) -> usize {
    let label = end + 9;
    let line_end = memchr::memchr(b'\n', &b[label..limit]).map_or(limit, |q| label + q);
    match memchr::memmem::find(&b[label..line_end.min(label + 64)], b"-----") {
        Some(close) => label + close + 5,
        None => line_end,
    }
}

/// Where the rest of a PEM body that began before `from` ends (a stream that had
/// to release the start of a huge block): through its END line, else through its
/// base64 lines.
pub(crate) fn pem_continuation_end(b: &[u8], from: usize) -> usize {
    let limit = (from + MAX_PEM).min(b.len());
    match memchr::memmem::find(&b[from..limit], b"-----END ") {
        Some(p) => end_line_end(b, from + p, limit),
        None => {
            // The rest of the line it was cut in, then base64 lines.
            let mut e = memchr::memchr(b'\n', &b[from..limit]).map_or(limit, |q| from + q);
            while e < limit
                && (b[e].is_ascii_alphanumeric()
                    || matches!(b[e], b'+' | b'/' | b'=' | b'\n' | b'\r'))
            {
                e += 1;
            }
            e
        }
    }
}

/// Where an unterminated PEM body ends: after its last header or base64 line; at
/// `limit` when a line runs into it (the block may still be arriving).
fn unterminated_end(b: &[u8], body: usize, limit: usize) -> usize {
    let is_b64 = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=');
    let mut e = body;
    let mut pos = body;
    let mut seen_b64 = false;
    let mut first = true;
    while pos < limit {
        let (line_end, next) = match memchr::memchr(b'\n', &b[pos..limit]) {
            Some(p) => (pos + p, pos + p + 1),
            None => (limit, limit),
        };
        let line = b[pos..line_end]
            .strip_suffix(b"\r")
            .unwrap_or(&b[pos..line_end]);
        let ok = if first {
            // The rest of the BEGIN line.
            line.is_empty()
        } else if line.is_empty() {
            !seen_b64
        } else if line.iter().all(|&c| is_b64(c)) {
            seen_b64 = true;
            true
        } else {
            !seen_b64
                && line[0].is_ascii_uppercase()
                && memchr::memmem::find(line, b": ").is_some()
                && line.iter().all(|c| c.is_ascii_graphic() || *c == b' ')
        };
        // A partial last line (no newline yet) that could still become valid.
        let partial = line_end == limit && line.iter().all(|&c| is_b64(c));
        if !ok && !partial {
            break;
        }
        first = false;
        e = next;
        pos = next;
    }
    // Keep the trailing newline only if the block runs to the end of the text.
    if e != b.len() {
        while e > body && b[e - 1].is_ascii_whitespace() {
            e -= 1;
        }
    }
    e
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn scan(text: &str) -> Vec<(Kind, &str, Confidence)> {
        let p = Prefilter::new(KindSet::all()).unwrap();
        let mut out = Vec::new();
        p.scan(text.as_bytes(), &mut out);
        out.into_iter()
            .map(|f| (f.kind, &text[f.start..f.end], f.confidence))
            .collect()
    }

    fn gh(prefix: &str, random30: &str) -> String {
        let sum = crate::pii::checks::base62_6(crate::pii::checks::crc32(random30.as_bytes()));
        format!("{prefix}{random30}{}", std::str::from_utf8(&sum).unwrap())
    }

    #[test]
    fn openai_and_anthropic() {
        let k = "sk-proj-Q2x9Lm4Tz8Kp1Rw7Yb3Nc6Vd0Hs5Jf2Ag8Ue4Io1Pq7";
        assert_eq!(
            scan(&format!("key={k}\n")),
            [(Kind::OpenAiKey, k, Confidence::High)]
        );
        let a = "sk-ant-api03-Zx8Qw2Er4Ty6Ui8Op0As2Df4Gh6Jk8Lz0Xc2Vb4Nm6Qw8Er0Ty2AA";
        assert_eq!(scan(a), [(Kind::AnthropicKey, a, Confidence::High)]);
        for not in [
            "sk-your-api-key-here",
            "task-1234567890abcdefghij",
            "sk-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            "sk-this-is-a-test-key-1234567890",
            "sk-1234",
        ] {
            assert!(scan(not).is_empty(), "{not}");
        }
    }

    #[test]
    fn aws_github_gitlab_slack_stripe() {
        assert_eq!(scan("AKIAZ3MHQ5XW7EXAMPLE").len(), 0);
        assert_eq!(
            scan("id AKIAZ3MHQ5XW7T2LNB4K,"),
            [(Kind::AwsAccessKey, "AKIAZ3MHQ5XW7T2LNB4K", Confidence::High)]
        );
        assert!(scan("AKIAZ3MHQ5XW7T2LNB4KX").is_empty());
        let t = gh("ghp_", "aB3dE5fG7hI9jK1lM3nO5pQ7rS9tU1");
        assert_eq!(
            scan(&t),
            [(Kind::GithubToken, t.as_str(), Confidence::High)]
        );
        let bad = "ghp_aB3dE5fG7hI9jK1lM3nO5pQ7rS9tU1000000";
        assert_eq!(scan(bad), [(Kind::GithubToken, bad, Confidence::Medium)]);
        assert!(scan("ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx").is_empty());
        assert_eq!(scan("glpat-xY7kP2mQ9rT4vW1zB6nC").len(), 1);
        assert_eq!(
            scan("xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx").len(),
            1
        );
        assert_eq!(scan("sk_live_4eC39HqLyjWDarjtT1zdp7dc").len(), 1);
        assert!(scan("pk_live_4eC39HqLyjWDarjtT1zdp7dc").is_empty());
        assert!(scan("task_live_4eC39HqLyjWDarjtT1zdp7dc").is_empty());
    }

    #[test]
    fn jwts() {
        let j = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
        assert_eq!(
            scan(&format!("Bearer {j}.")),
            [(Kind::Jwt, j, Confidence::High)]
        );
        // Header is not JSON with "alg".
        assert!(scan("eyJmb28iOiJiYXIifQ.eyJzdWIiOiIxIn0.abcdefghijklmnopqrstu").is_empty());
        assert!(scan("eyJhbGciOiJIUzI1NiJ9 is a header").is_empty());
    }

    #[test]
    fn pem_blocks() {
        let k = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo\n4lgOEePzNm0tRgeLezV6ffAt0gunVTLw\n-----END RSA PRIVATE KEY-----";
        assert_eq!(
            scan(&format!("x\n{k}\ny")),
            [(Kind::PrivateKey, k, Confidence::High)]
        );
        let open =
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n";
        assert_eq!(scan(open), [(Kind::PrivateKey, open, Confidence::High)]);
        assert!(scan("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----").is_empty());
        assert!(scan("-----BEGIN PUBLIC KEY-----").is_empty());
        // Cut off in its END line (a stream mid-line): runs to the end.
        let cut =
            "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIIrYSSNQFaA2Hwf1duRSxKtLYX5\n-----END EC PRIV";
        assert_eq!(scan(cut), [(Kind::PrivateKey, cut, Confidence::High)]);
        // Unterminated, then prose: the body only.
        let prose =
            "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIIrYSSNQFaA2Hwf1duRSxKtLYX5\nThanks, Bob";
        assert_eq!(scan(prose)[0].1, &prose[..prose.len() - 12]);
    }
}
