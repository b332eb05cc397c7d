//! Rewriting text without its findings: labels, partial masks, reversible tokens.
//!
//! - [`RedactStyle::Label`]: `[EMAIL]`, `[CARD]`, `[OPENAI_KEY]`.
//! - [`RedactStyle::Mask`]: what [`mask`] shows: enough to recognise, not to use
//!   (`j***@example.com`, `**** **** **** 4242`, `sk-pro...xyz`).
//! - [`RedactStyle::Token`]: `[EMAIL:tok_...]`, the token coming from a
//!   [`Tokenizer`]. The daemon's tokenizer keeps each original encrypted so an admin
//!   can reveal it later; this crate only defines the hook.

use super::kind::{Finding, Kind};
use std::fmt;

/// Turns a value into a token that stands for it (and, in the daemon, stores the
/// original encrypted). Closures `FnMut(&Kind, &str) -> Result<String, TokenizeError>`
/// are tokenizers too.
pub trait Tokenizer {
    /// A token for `value` (of kind `kind`). Must not put `value` in the error.
    fn tokenize(&mut self, kind: &Kind, value: &str) -> Result<String, TokenizeError>;
}

impl<F> Tokenizer for F
where
    F: FnMut(&Kind, &str) -> Result<String, TokenizeError>,
{
    fn tokenize(&mut self, kind: &Kind, value: &str) -> Result<String, TokenizeError> {
        self(kind, value)
    }
}

/// A tokenizer failed (the token store is unavailable, full, locked...). The
/// message must describe the failure, never the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TokenizeError(pub String);

/// How [`redact`] replaces each finding.
pub enum RedactStyle<'a> {
    /// `[EMAIL]`.
    Label,
    /// A partial mask, see [`mask`].
    Mask,
    /// `[EMAIL:<token>]`.
    Token(&'a mut dyn Tokenizer),
}

impl fmt::Debug for RedactStyle<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RedactStyle::Label => "Label",
            RedactStyle::Mask => "Mask",
            RedactStyle::Token(_) => "Token",
        })
    }
}

/// Why a text could not be redacted. Callers must then not release the text (fail
/// closed).
#[derive(Debug, thiserror::Error)]
pub enum RedactError {
    #[error("cannot tokenize a {kind} finding: {source}")]
    Tokenize {
        kind: String,
        #[source]
        source: TokenizeError,
    },
    #[error(
        "finding at bytes {start}..{end} does not fit the text (length {len}) or splits a character"
    )]
    BadSpan {
        start: usize,
        end: usize,
        len: usize,
    },
}

/// `text` with every finding replaced in `style`. Findings may come in any order
/// and may overlap (overlaps are replaced as one span, labelled by the first).
pub fn redact(
    text: &str,
    findings: &[Finding],
    mut style: RedactStyle<'_>,
) -> Result<String, RedactError> {
    for f in findings {
        if f.start > f.end || text.get(f.start..f.end).is_none() {
            return Err(RedactError::BadSpan {
                start: f.start,
                end: f.end,
                len: text.len(),
            });
        }
    }
    let mut order: Vec<&Finding> = findings.iter().collect();
    if !order.is_sorted_by_key(|f| f.start) {
        order.sort_by_key(|f| f.start);
    }
    let mut out = String::with_capacity(text.len() + 16 * findings.len());
    let mut cursor = 0;
    let mut k = 0;
    while k < order.len() {
        let f = order[k];
        let start = f.start.max(cursor);
        // Merge everything overlapping this finding into one span.
        let mut end = f.end;
        k += 1;
        while k < order.len() && order[k].start < end {
            end = end.max(order[k].end);
            k += 1;
        }
        if end <= cursor {
            continue;
        }
        out.push_str(&text[cursor..start]);
        let value = &text[start..end];
        match &mut style {
            RedactStyle::Label => {
                out.push('[');
                f.kind.write_label_name(&mut out);
                out.push(']');
            }
            RedactStyle::Mask => out.push_str(&mask(&f.kind, value)),
            RedactStyle::Token(t) => {
                let token = t
                    .tokenize(&f.kind, value)
                    .map_err(|source| RedactError::Tokenize {
                        kind: f.kind.name().to_owned(),
                        source,
                    })?;
                out.push('[');
                f.kind.write_label_name(&mut out);
                out.push(':');
                out.push_str(&token);
                out.push(']');
            }
        }
        cursor = end;
    }
    out.push_str(&text[cursor..]);
    Ok(out)
}

/// A display form of `value` (a finding of kind `kind`) that identifies it without
/// disclosing it:
///
/// | kind | shown |
/// |---|---|
/// | email | first character and the domain: `j***@example.com` |
/// | card | last four digits, separators kept: `**** **** **** 4242` |
/// | SSN | last four: `***-**-6789` |
/// | phone | last two digits: `+1 (***) ***-**71` |
/// | IBAN | country and last four: `DE** **** **** **** **30 00` |
/// | IPv4 / IPv6 | first part: `203.*.*.*`, `2001:****` |
/// | private key | its BEGIN line: `-----BEGIN RSA PRIVATE KEY----- ****` |
/// | other secrets, custom | 20+ characters: first six and last three (`sk-pro...xyz`); shorter: `****` |
pub fn mask(kind: &Kind, value: &str) -> String {
    match kind {
        Kind::Email => match value.rsplit_once('@') {
            Some((local, domain)) => {
                let first = local.chars().next().unwrap_or('*');
                format!("{first}***@{domain}")
            }
            None => "****".to_owned(),
        },
        Kind::Card | Kind::Ssn => mask_digits_keep_last(value, 4),
        Kind::Phone => mask_digits_keep_last(value, 2),
        Kind::Iban => {
            let alnum = value.chars().filter(char::is_ascii_alphanumeric).count();
            let mut seen = 0;
            value
                .chars()
                .map(|c| {
                    if !c.is_ascii_alphanumeric() {
                        return c;
                    }
                    seen += 1;
                    if seen <= 2 || seen + 4 > alnum {
                        c
                    } else {
                        '*'
                    }
                })
                .collect()
        }
        Kind::Ipv4 => match value.split_once('.') {
            Some((first, _)) => format!("{first}.*.*.*"),
            None => "****".to_owned(),
        },
        Kind::Ipv6 => match value.split_once(':') {
            Some((first, _)) if !first.is_empty() => format!("{first}:****"),
            _ => "****".to_owned(),
        },
        Kind::PrivateKey => {
            let first = value.lines().next().unwrap_or("");
            if first.starts_with("-----BEGIN ") && first.len() <= 64 {
                let head = first.find("KEY-----").map_or(first, |p| &first[..p + 8]);
                format!("{head} ****")
            } else {
                "****".to_owned()
            }
        }
        _ => mask_secret(value),
    }
}

fn mask_digits_keep_last(value: &str, keep: usize) -> String {
    let digits = value.chars().filter(char::is_ascii_digit).count();
    let mut seen = 0;
    value
        .chars()
        .map(|c| {
            if !c.is_ascii_digit() {
                return c;
            }
            seen += 1;
            if seen + keep > digits { c } else { '*' }
        })
        .collect()
}

/// `sk-pro...xyz` for values of 20+ characters, `****` otherwise.
pub(crate) fn mask_secret(value: &str) -> String {
    let n = value.chars().count();
    if n < 20 {
        return "****".to_owned();
    }
    let head: String = value.chars().take(6).collect();
    let tail: String = value.chars().skip(n - 3).collect();
    format!("{head}...{tail}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::pii::Scanner;

    const TEXT: &str =
        "Mail jane.doe@example.com or call +1 415-555-2671; card 4242 4242 4242 4242.";

    #[test]
    fn label_style() {
        let s = Scanner::default();
        let f = s.scan(TEXT);
        assert_eq!(
            redact(TEXT, &f, RedactStyle::Label).unwrap(),
            "Mail [EMAIL] or call [PHONE]; card [CARD]."
        );
    }

    #[test]
    fn mask_style() {
        let s = Scanner::default();
        let f = s.scan(TEXT);
        assert_eq!(
            redact(TEXT, &f, RedactStyle::Mask).unwrap(),
            "Mail j***@example.com or call +* ***-***-**71; card **** **** **** 4242."
        );
    }

    #[test]
    fn token_style_and_failure_is_an_error() {
        let s = Scanner::default();
        let f = s.scan(TEXT);
        let mut n = 0;
        let mut tok = |k: &Kind, _v: &str| -> Result<String, TokenizeError> {
            n += 1;
            Ok(format!("tok_{}{n}", k.name()))
        };
        let out = redact(TEXT, &f, RedactStyle::Token(&mut tok)).unwrap();
        assert_eq!(
            out,
            "Mail [EMAIL:tok_email1] or call [PHONE:tok_phone2]; card [CARD:tok_card3]."
        );
        let mut failing = |_: &Kind, _: &str| -> Result<String, TokenizeError> {
            Err(TokenizeError("store locked".into()))
        };
        let err = redact(TEXT, &f, RedactStyle::Token(&mut failing)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("email") && msg.contains("store locked") && !msg.contains("jane"));
    }

    #[test]
    fn overlaps_unsorted_and_bad_spans() {
        let text = "abcdefghij";
        let f = |s, e| Finding {
            kind: Kind::Email,
            start: s,
            end: e,
            confidence: crate::pii::Confidence::High,
        };
        let out = redact(text, &[f(6, 8), f(1, 4), f(2, 5)], RedactStyle::Label).unwrap();
        assert_eq!(out, "a[EMAIL]f[EMAIL]ij");
        assert!(redact(text, &[f(5, 11)], RedactStyle::Label).is_err());
        assert!(redact("é", &[f(1, 2)], RedactStyle::Label).is_err());
    }

    #[test]
    fn masks() {
        assert_eq!(mask(&Kind::Email, "jane@example.com"), "j***@example.com");
        assert_eq!(mask(&Kind::Card, "4242424242424242"), "************4242");
        assert_eq!(mask(&Kind::Ssn, "123-45-6789"), "***-**-6789");
        assert_eq!(mask(&Kind::Phone, "(415) 555-2671"), "(***) ***-**71");
        assert_eq!(
            mask(&Kind::Iban, "DE89 3704 0044 0532 0130 00"),
            "DE** **** **** **** **30 00"
        );
        assert_eq!(mask(&Kind::Ipv4, "203.0.113.7"), "203.*.*.*");
        assert_eq!(mask(&Kind::Ipv6, "2001:db8::7"), "2001:****");
        assert_eq!(mask(&Kind::Ipv6, "::1"), "****");
        assert_eq!(
            mask(&Kind::OpenAiKey, "sk-proj-Q2x9Lm4Tz8Kp1Rw7Yb3Nc6Vd0xyz"),
            "sk-pro...xyz"
        );
        assert_eq!(mask(&Kind::Custom("x".into()), "EMP-123456"), "****");
        assert_eq!(
            mask(
                &Kind::PrivateKey,
                "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----"
            ),
            "-----BEGIN RSA PRIVATE KEY----- ****"
        );
    }
}
