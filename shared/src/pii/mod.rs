//! The PII and secrets engine: one scanner for the daemon (gateway, agent logs),
//! `ironctl pii scan` and the `iron_cage` Python module.
//!
//! ```
//! use ironcage_shared::pii::{redact, RedactStyle, Scanner};
//!
//! let scanner = Scanner::default();
//! let text = "Reply to jane.doe@example.com, card 4242 4242 4242 4242.";
//! let findings = scanner.scan(text);
//! assert_eq!(findings.len(), 2);
//! let safe = redact(text, &findings, RedactStyle::Label).unwrap();
//! assert_eq!(safe, "Reply to [EMAIL], card [CARD].");
//! ```
//!
//! - [`Scanner`]: built from a [`ScannerConfig`] (kinds, custom patterns,
//!   allowlist, minimum confidence); `scan(&self, text) -> Vec<Finding>`.
//! - [`Finding`]: kind, byte span, [`Confidence`]; it never holds the text.
//! - [`redact`] / [`mask`]: labels, partial masks, tokens via a [`Tokenizer`].
//! - [`Policy`] / [`PiiPolicies`]: `allow | log | redact | block` per kind and
//!   direction, parsed from config tables; [`Policy::apply`] does all three.
//! - [`StreamScanner`]: chunked input, held-back window, split entities caught.
//!
//! How it stays exact and fast: detectors key on cheap anchors (digits, `@`, `:`,
//! literal credential prefixes) and validate only candidates, with checksums where
//! the format has one (Luhn, IBAN mod 97, GitHub CRC-32), strict structure where it
//! does not (SSN rules, card network prefixes and lengths, E.164 country codes,
//! JWT headers), and boundary rules that keep out what naive patterns flag: Unix
//! timestamps and bare digit runs (never phones), git SHAs and UUIDs (digits inside
//! words are skipped), version numbers (`v1.2.3.4`, "version 1.2.3.4", OIDs: not
//! IPs), words like "S3" and "EKS" (nothing keys on them). Each detector's module
//! documents its decisions.
//!
//! No value ever reaches a log, an error or a `Debug` output from here: findings
//! carry spans, errors carry kinds and config names, and the types that hold text
//! (`StreamScanner`, `Outcome`, `Released`) print lengths.

mod checks;
mod email;
mod iban;
mod ipv6;
mod kind;
mod numeric;
pub mod policy;
pub mod redact;
mod scanner;
mod secrets;
pub mod stream;

pub use kind::{BUILTIN_KINDS, Confidence, Finding, Kind, KindSet, UnknownKind};
pub use policy::{Action, Direction, KindCount, Outcome, PiiPolicies, Policy, PolicyError};
pub use redact::{RedactError, RedactStyle, TokenizeError, Tokenizer, mask, redact};
pub use scanner::{
    Allowlist, CustomPattern, MAX_CUSTOM_PATTERNS, PiiError, Scanner, ScannerConfig,
};
pub use stream::{Released, StreamScanner};
