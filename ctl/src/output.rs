//! Rendering for humans and for scripts: aligned tables, short durations, exit
//! statuses, and the one place that writes to standard output.
//!
//! Renderers are pure functions returning `String`s so they can be unit-tested; the
//! command files decide what to render and [`emit`] writes it. A closed standard
//! output (`ironctl agents logs -f NAME | head`) surfaces as [`StdoutError`], which
//! `main` turns into a quiet, successful exit rather than a panic.

use ironcage_shared::protocol::ExitInfo;
use serde::Serialize;
use std::fmt::Display;
use std::fmt::Write as _;
use std::io::{self, Write};

/// Writing to standard output failed (most often: the reader went away).
#[derive(Debug, thiserror::Error)]
#[error("cannot write to standard output")]
pub struct StdoutError(#[source] pub io::Error);

/// Writes `text` to standard output and flushes it.
pub fn emit(text: &str) -> Result<(), StdoutError> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes()).map_err(StdoutError)?;
    out.flush().map_err(StdoutError)
}

/// Pretty JSON of `value`, newline-terminated.
/// A new file only its owner can read (exports hold secrets or the audit
/// trail); refuses to overwrite an existing one.
pub fn create_private(p: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use anyhow::Context as _;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(p)
        .with_context(|| format!("cannot create {} (it must not exist yet)", p.display()))
}

pub fn json_pretty<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<String> {
    let mut s = serde_json::to_string_pretty(value)?;
    s.push('\n');
    Ok(s)
}

/// How a column's cells line up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A plain-text table: a header row and columns separated by two spaces, each as
/// wide as its widest cell. No trailing spaces, so `awk` and `cut -w` behave.
#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<&'static str>,
    align: Vec<Align>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(columns: &[(&'static str, Align)]) -> Self {
        Self {
            headers: columns.iter().map(|c| c.0).collect(),
            align: columns.iter().map(|c| c.1).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row; missing cells render empty, extra cells are ignored.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let cols = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::with_capacity(
            (self.rows.len() + 1) * (widths.iter().sum::<usize>() + 2 * cols + 1),
        );
        let headers: Vec<String> = self.headers.iter().map(|h| (*h).to_owned()).collect();
        for row in std::iter::once(&headers).chain(&self.rows) {
            let start = out.len();
            for (i, width) in widths.iter().enumerate() {
                let cell = row.get(i).map_or("", String::as_str);
                if i > 0 {
                    out.push_str("  ");
                }
                let pad = width - cell.chars().count();
                match self.align[i] {
                    Align::Left => {
                        out.push_str(cell);
                        out.extend(std::iter::repeat_n(' ', pad));
                    }
                    Align::Right => {
                        out.extend(std::iter::repeat_n(' ', pad));
                        out.push_str(cell);
                    }
                }
            }
            let trimmed = out[start..].trim_end().len();
            out.truncate(start + trimmed);
            out.push('\n');
        }
        out
    }
}

/// Renders `label: value` lines with the values aligned (for single-object views).
pub fn key_values(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in pairs {
        let _ = writeln!(out, "{:<width$} {v}", format!("{k}:"));
    }
    out
}

/// A short human duration: `45s`, `3m12s`, `5h7m`, `2d3h`.
pub fn duration(secs: u64) -> String {
    const MIN: u64 = 60;
    const HOUR: u64 = 60 * MIN;
    const DAY: u64 = 24 * HOUR;
    match secs {
        s if s < MIN => format!("{s}s"),
        s if s < HOUR => format!("{}m{}s", s / MIN, s % MIN),
        s if s < DAY => format!("{}h{}m", s / HOUR, s % HOUR / MIN),
        s => format!("{}d{}h", s / DAY, s % DAY / HOUR),
    }
}

/// Like [`duration`] but for milliseconds, keeping sub-minute precision:
/// `250ms`, `1.5s`, then as [`duration`].
pub fn duration_ms(ms: u64) -> String {
    match ms {
        m if m < 1000 => format!("{m}ms"),
        m if m < 60_000 => format!("{}.{}s", m / 1000, m % 1000 / 100),
        m => duration(m / 1000),
    }
}

/// `code 1`, `signal 9`, or `-` when the process has not exited yet.
pub fn exit_status(exit: Option<&ExitInfo>) -> String {
    match exit {
        Some(ExitInfo {
            signal: Some(sig), ..
        }) => format!("signal {sig}"),
        Some(ExitInfo { code: Some(c), .. }) => format!("code {c}"),
        Some(_) => "unknown".to_owned(),
        None => "-".to_owned(),
    }
}

/// The value, or `-` when there is none.
pub fn or_dash<T: Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a panic is the failure report
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns_and_trims() {
        let mut t = Table::new(&[
            ("NAME", Align::Left),
            ("PID", Align::Right),
            ("NOTE", Align::Left),
        ]);
        t.row(vec!["a".into(), "12345".into(), "".into()]);
        t.row(vec!["longer-name".into(), "7".into(), "x".into()]);
        assert_eq!(
            t.render(),
            "NAME           PID  NOTE\n\
             a            12345\n\
             longer-name      7  x\n"
        );
    }

    #[test]
    fn table_with_no_rows_is_a_header() {
        let t = Table::new(&[("KEY", Align::Left), ("COST", Align::Right)]);
        assert_eq!(t.render(), "KEY  COST\n");
    }

    #[test]
    fn table_counts_characters_not_bytes() {
        let mut t = Table::new(&[("TAG", Align::Left), ("N", Align::Right)]);
        t.row(vec!["café".into(), "1".into()]);
        t.row(vec!["abcde".into(), "22".into()]);
        assert_eq!(t.render(), "TAG     N\ncafé    1\nabcde  22\n");
    }

    #[test]
    fn durations() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(59), "59s");
        assert_eq!(duration(192), "3m12s");
        assert_eq!(duration(3600), "1h0m");
        assert_eq!(duration(3600 * 5 + 7 * 60 + 59), "5h7m");
        assert_eq!(duration(86_400 * 2 + 3 * 3600 + 1), "2d3h");
        assert_eq!(duration_ms(250), "250ms");
        assert_eq!(duration_ms(1_580), "1.5s");
        assert_eq!(duration_ms(192_000), "3m12s");
    }

    #[test]
    fn exit_statuses() {
        let code = ExitInfo {
            code: Some(1),
            signal: None,
            at: 0,
        };
        let sig = ExitInfo {
            code: None,
            signal: Some(9),
            at: 0,
        };
        assert_eq!(exit_status(Some(&code)), "code 1");
        assert_eq!(exit_status(Some(&sig)), "signal 9");
        assert_eq!(exit_status(None), "-");
    }

    #[test]
    fn key_values_align() {
        let s = key_values(&[("name", "a".into()), ("restarts", "2".into())]);
        assert_eq!(s, "name:     a\nrestarts: 2\n");
    }
}
