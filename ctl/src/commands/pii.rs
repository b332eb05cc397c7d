//! `ironctl pii scan [FILE|-] [--kinds LIST] [--json]`: the PII engine, run
//! locally (no daemon needed), for scripts, CI and checking a file before it is sent
//! anywhere.
//!
//! Values are never printed: each finding shows its kind, `line:column`, byte
//! offset, confidence and a masked value (`j***@example.com`,
//! `**** **** **** 4242`, `sk-pro...xyz`). Exit status: 0 clean, 1 something found,
//! 2 usage error or unreadable input.

use crate::output::{self, Align, Table};
use ironcage_shared::pii::{Confidence, Finding, KindSet, Scanner, ScannerConfig, mask};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::PathBuf;

#[derive(Debug, clap::Subcommand)]
pub enum PiiCommand {
    /// Scan a file or standard input for personal data and secrets (values shown
    /// masked). Exit status: 0 clean, 1 found, 2 usage error or unreadable input.
    Scan(ScanArgs),
    /// Print the original behind a reversible PII token (admin only; every
    /// reveal is recorded by the daemon).
    Reveal {
        /// The token: `tok_…` or the whole `[EMAIL:tok_…]`.
        token: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct ScanArgs {
    /// The file to scan; `-` or nothing: standard input.
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Only these kinds: names (email, phone, ssn, card, iban, ipv4, ipv6,
    /// openai_key, anthropic_key, aws_access_key, github_token, gitlab_token,
    /// slack_token, stripe_key, jwt, private_key) or groups (all, pii, secrets, ip),
    /// comma-separated.
    #[arg(long, value_name = "LIST", value_parser = parse_kinds)]
    pub kinds: Option<KindSet>,
    /// Report only findings at least this sure.
    #[arg(long, value_name = "LEVEL", value_parser = parse_confidence)]
    pub min_confidence: Option<Confidence>,
}

fn parse_kinds(s: &str) -> Result<KindSet, String> {
    let set = KindSet::parse(s).map_err(|e| e.to_string())?;
    if set.is_empty() {
        return Err("no kind given".to_owned());
    }
    Ok(set)
}

fn parse_confidence(s: &str) -> Result<Confidence, String> {
    match s.to_ascii_lowercase().as_str() {
        "low" => Ok(Confidence::Low),
        "medium" => Ok(Confidence::Medium),
        "high" => Ok(Confidence::High),
        _ => Err(format!("{s:?} is not low, medium or high")),
    }
}

/// How `pii scan` ends when it is not clean.
#[derive(Debug, thiserror::Error)]
pub enum ScanExit {
    /// Something was found (already reported on standard output): exit 1.
    #[error("personal data or secrets found")]
    Found,
    /// The input could not be read: exit 2.
    #[error("cannot read {source_name}: {error}")]
    Input {
        source_name: String,
        #[source]
        error: io::Error,
    },
}

impl ScanExit {
    pub fn code(&self) -> u8 {
        match self {
            ScanExit::Found => 1,
            ScanExit::Input { .. } => 2,
        }
    }

    /// Whether the message still needs printing (a `Found` was reported already).
    pub fn needs_message(&self) -> bool {
        !matches!(self, ScanExit::Found)
    }
}

/// One finding as printed: never the raw value.
#[derive(Debug, Serialize)]
struct Row {
    kind: String,
    line: usize,
    column: usize,
    offset: usize,
    length: usize,
    confidence: Confidence,
    value: String,
}

#[derive(Debug, Serialize)]
struct Report<'a> {
    source: &'a str,
    bytes: usize,
    count: usize,
    by_kind: BTreeMap<String, usize>,
    findings: Vec<Row>,
}

/// `pii ...`.
pub fn run(ctx: &super::Ctx, command: PiiCommand) -> anyhow::Result<()> {
    match command {
        PiiCommand::Scan(args) => scan(ctx.json, args),
        PiiCommand::Reveal { token } => reveal(ctx, token),
    }
}

/// `pii reveal TOKEN`: the value on its own line (or `--json`: token, kind,
/// value).
fn reveal(ctx: &super::Ctx, token: String) -> anyhow::Result<()> {
    use crate::client::ClientError;
    use ironcage_shared::protocol::{PiiRevealRequest, Request, Response};
    let req = Request::PiiReveal(PiiRevealRequest { token });
    let r = match ctx.call(&req)? {
        Response::PiiRevealed(r) => r,
        other => return Err(ClientError::unexpected(&req, &other).into()),
    };
    let text = if ctx.json {
        #[derive(Serialize)]
        struct Json<'a> {
            token: &'a str,
            kind: &'a str,
            value: &'a str,
        }
        output::json_pretty(&Json {
            token: &r.token,
            kind: &r.kind,
            value: &r.value,
        })?
    } else {
        format!("{}\n", r.value)
    };
    output::emit(&text)?;
    Ok(())
}

fn scan(json: bool, args: ScanArgs) -> anyhow::Result<()> {
    let stdin = args.file.as_ref().is_none_or(|p| p.as_os_str() == "-");
    let source_name = if stdin {
        "standard input".to_owned()
    } else {
        args.file
            .as_ref()
            .map_or_else(String::new, |p| p.display().to_string())
    };
    let data =
        read_input(args.file.as_ref().filter(|_| !stdin)).map_err(|error| ScanExit::Input {
            source_name: source_name.clone(),
            error,
        })?;
    let scanner = Scanner::new(&ScannerConfig {
        kinds: args.kinds,
        min_confidence: args.min_confidence,
        ..ScannerConfig::default()
    })?;
    let rows = find(&scanner, &data);
    let mut by_kind = BTreeMap::new();
    for r in &rows {
        *by_kind.entry(r.kind.clone()).or_insert(0) += 1;
    }
    let report = Report {
        source: &source_name,
        bytes: data.len(),
        count: rows.len(),
        by_kind,
        findings: rows,
    };
    let text = if json {
        output::json_pretty(&report)?
    } else {
        render(&report)
    };
    output::emit(&text)?;
    if report.count > 0 {
        return Err(ScanExit::Found.into());
    }
    Ok(())
}

fn read_input(path: Option<&PathBuf>) -> io::Result<Vec<u8>> {
    match path {
        Some(p) => std::fs::read(p),
        None => {
            let mut v = Vec::new();
            io::stdin().lock().read_to_end(&mut v)?;
            Ok(v)
        }
    }
}

/// Scans `data`: each valid UTF-8 stretch on its own (invalid bytes end an
/// entity), with offsets in `data` and masked values.
fn find(scanner: &Scanner, data: &[u8]) -> Vec<Row> {
    let mut found: Vec<(usize, Finding, String)> = Vec::new();
    let mut base = 0;
    for chunk in data.utf8_chunks() {
        let text = chunk.valid();
        for f in scanner.scan(text) {
            let masked = mask(&f.kind, f.value(text));
            found.push((base, f, masked));
        }
        base += text.len() + chunk.invalid().len();
    }
    let mut rows = Vec::with_capacity(found.len());
    let mut pos = Position::default();
    for (base, f, masked) in found {
        let offset = base + f.start;
        let (line, column) = pos.advance(data, offset);
        rows.push(Row {
            kind: f.kind.name().to_owned(),
            line,
            column,
            offset,
            length: f.len(),
            confidence: f.confidence,
            value: masked,
        });
    }
    rows
}

/// A cursor turning increasing byte offsets into 1-based line and column
/// (columns count characters; an invalid byte counts as one).
#[derive(Debug)]
struct Position {
    at: usize,
    line: usize,
    column: usize,
}

impl Default for Position {
    fn default() -> Self {
        Position {
            at: 0,
            line: 1,
            column: 1,
        }
    }
}

impl Position {
    fn advance(&mut self, data: &[u8], to: usize) -> (usize, usize) {
        for &b in &data[self.at..to.min(data.len())] {
            if b == b'\n' {
                self.line += 1;
                self.column = 1;
            } else if !(0x80..0xC0).contains(&b) {
                // Not a UTF-8 continuation byte: a new character.
                self.column += 1;
            }
        }
        self.at = self.at.max(to);
        (self.line, self.column)
    }
}

fn render(report: &Report<'_>) -> String {
    if report.count == 0 {
        return format!("no personal data or secrets found in {}\n", report.source);
    }
    let mut table = Table::new(&[
        ("LINE:COL", Align::Left),
        ("OFFSET", Align::Right),
        ("KIND", Align::Left),
        ("CONFIDENCE", Align::Left),
        ("VALUE (MASKED)", Align::Left),
    ]);
    for r in &report.findings {
        table.row(vec![
            format!("{}:{}", r.line, r.column),
            r.offset.to_string(),
            r.kind.clone(),
            r.confidence.to_string(),
            r.value.clone(),
        ]);
    }
    let kinds: Vec<String> = report
        .by_kind
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    format!(
        "{}{} finding{} in {} ({})\n",
        table.render(),
        report.count,
        if report.count == 1 { "" } else { "s" },
        report.source,
        kinds.join(", ")
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rows_have_positions_and_masked_values_only() {
        let data =
            "first line\nmail: jane.doe@example.com\n\u{e9}\u{e9} card 4242 4242 4242 4242\n";
        let rows = find(&Scanner::default(), data.as_bytes());
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].line, rows[0].column, rows[0].offset), (2, 7, 17));
        assert_eq!(rows[0].value, "j***@example.com");
        assert_eq!((rows[1].line, rows[1].column), (3, 9));
        assert_eq!(rows[1].value, "**** **** **** 4242");
        let out = render(&Report {
            source: "x",
            bytes: data.len(),
            count: rows.len(),
            by_kind: BTreeMap::new(),
            findings: rows,
        });
        assert!(!out.contains("jane.doe") && !out.contains("4242 4242 4242 4242"));
    }

    #[test]
    fn invalid_utf8_keeps_file_offsets() {
        let mut data = b"\xff\xfe bad bytes then ".to_vec();
        let at = data.len();
        data.extend_from_slice(b"bob@example.org \xc3");
        let rows = find(&Scanner::default(), &data);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].offset, at);
        assert_eq!(rows[0].column, at + 1);
    }

    #[test]
    fn kinds_and_confidence_parse() {
        assert!(parse_kinds("email,secrets").is_ok());
        assert!(parse_kinds("emial").unwrap_err().contains("emial"));
        assert!(parse_kinds("").is_err());
        assert_eq!(parse_confidence("HIGH"), Ok(Confidence::High));
        assert!(parse_confidence("sure").is_err());
    }

    #[test]
    fn cli_parses_and_rejects() {
        use clap::Parser;
        let cli =
            crate::Cli::try_parse_from(["ironctl", "pii", "scan", "-", "--kinds", "email,ip"])
                .unwrap();
        assert!(!cli.json);
        for bad in [
            &["ironctl", "pii", "scan", "--kinds", "emial"][..],
            &["ironctl", "pii", "scan", "--min-confidence", "sure"],
            &["ironctl", "pii", "scan", "a", "b"],
            &["ironctl", "pii"],
        ] {
            let err = crate::Cli::try_parse_from(bad).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn exit_codes() {
        assert_eq!(ScanExit::Found.code(), 1);
        assert!(!ScanExit::Found.needs_message());
        let e = ScanExit::Input {
            source_name: "f".into(),
            error: io::Error::from(io::ErrorKind::NotFound),
        };
        assert_eq!(e.code(), 2);
    }
}
