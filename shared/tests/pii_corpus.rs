//! Precision and recall of the PII engine on the labelled corpus in `tests/pii/`,
//! per kind, with floors that must hold. Runs without the test harness so the
//! table is printed on every `cargo test` (not only on failure).
//!
//! Corpus format: one example per line; entities marked `[[kind:value]]`; `\n`
//! is a newline; `#` starts a comment line. A finding counts only if kind and
//! byte span match a label exactly; every other finding is a false positive.

use ironcage_shared::pii::{Kind, Scanner};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

const FILES: &[&str] = &["positives.txt", "negatives.txt", "generated.txt"];

/// (precision, recall) floors per kind: a bit under what the engine measures on
/// this corpus today, so a regression fails the build.
const FLOORS: &[(&str, f64, f64)] = &[
    ("email", 0.99, 0.99),
    ("phone", 0.95, 0.97),
    ("ssn", 0.99, 0.99),
    ("card", 0.97, 0.99),
    ("iban", 0.99, 0.99),
    ("ipv4", 0.95, 0.99),
    ("ipv6", 0.99, 0.99),
    ("secrets", 0.99, 0.98),
];

struct Example {
    text: String,
    labels: Vec<(Kind, usize, usize)>,
}

fn unescape(line: &str) -> String {
    line.replace("\\n", "\n")
}

/// Strips `[[kind:value]]` markers, recording the spans they had.
fn parse(line: &str) -> Result<Example, String> {
    let src = unescape(line);
    let mut text = String::with_capacity(src.len());
    let mut labels = Vec::new();
    let mut rest = src.as_str();
    while let Some(p) = rest.find("[[") {
        let after = &rest[p + 2..];
        let Some((kind_name, value_and_rest)) = after.split_once(':') else {
            text.push_str(&rest[..p + 1]);
            rest = &rest[p + 1..];
            continue;
        };
        let Some(kind) = Kind::builtin(kind_name).filter(|_| !kind_name.contains(' ')) else {
            // Not a marker here (`[[[ipv6:...]]]`): keep one '[' and look again.
            text.push_str(&rest[..p + 1]);
            rest = &rest[p + 1..];
            continue;
        };
        let end = value_and_rest
            .find("]]")
            .ok_or_else(|| format!("unclosed marker in {line:?}"))?;
        text.push_str(&rest[..p]);
        let start = text.len();
        text.push_str(&value_and_rest[..end]);
        labels.push((kind, start, text.len()));
        rest = &value_and_rest[end + 2..];
    }
    text.push_str(rest);
    Ok(Example { text, labels })
}

fn load() -> Result<Vec<(String, Example)>, String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/pii");
    let mut out = Vec::new();
    for name in FILES {
        let path = dir.join(name);
        let body = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        for (n, line) in body.lines().enumerate() {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let ex = parse(line).map_err(|e| format!("{name}:{}: {e}", n + 1))?;
            out.push((format!("{name}:{}", n + 1), ex));
        }
    }
    Ok(out)
}

/// The row a kind is scored under: secrets together, the rest by name.
fn group(kind: &Kind) -> String {
    if kind.is_secret() {
        "secrets".to_owned()
    } else {
        kind.name().to_owned()
    }
}

#[derive(Default)]
struct Score {
    gold: usize,
    tp: usize,
    fp: usize,
    fn_: usize,
}

impl Score {
    fn precision(&self) -> f64 {
        let found = self.tp + self.fp;
        if found == 0 {
            1.0
        } else {
            self.tp as f64 / found as f64
        }
    }

    fn recall(&self) -> f64 {
        if self.gold == 0 {
            1.0
        } else {
            self.tp as f64 / self.gold as f64
        }
    }
}

fn main() -> ExitCode {
    let examples = match load() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("pii corpus: {e}");
            return ExitCode::FAILURE;
        }
    };
    let verbose = std::env::var_os("PII_CORPUS_VERBOSE").is_some();
    let scanner = Scanner::default();
    let mut scores: BTreeMap<String, Score> = BTreeMap::new();
    let mut secret_kinds: BTreeMap<String, Score> = BTreeMap::new();
    let mut mistakes = Vec::new();
    for (where_, ex) in &examples {
        let found: Vec<(Kind, usize, usize)> = scanner
            .scan(&ex.text)
            .into_iter()
            .map(|f| (f.kind, f.start, f.end))
            .collect();
        for l in &ex.labels {
            let hit = found.contains(l);
            let count = |s: &mut Score| {
                s.gold += 1;
                if hit {
                    s.tp += 1;
                } else {
                    s.fn_ += 1;
                }
            };
            count(scores.entry(group(&l.0)).or_default());
            if l.0.is_secret() {
                count(secret_kinds.entry(l.0.name().to_owned()).or_default());
            }
            if !hit {
                mistakes.push(format!("missed {} at {where_}", l.0));
            }
        }
        for f in &found {
            if !ex.labels.contains(f) {
                scores.entry(group(&f.0)).or_default().fp += 1;
                if f.0.is_secret() {
                    secret_kinds.entry(f.0.name().to_owned()).or_default().fp += 1;
                }
                mistakes.push(format!(
                    "false {} at {where_} (bytes {}..{})",
                    f.0, f.1, f.2
                ));
            }
        }
    }

    let labelled = examples
        .iter()
        .filter(|(_, e)| !e.labels.is_empty())
        .count();
    println!(
        "\nPII corpus: {} examples ({} with entities, {} without) from tests/pii/{{{}}}; exact kind and span match",
        examples.len(),
        labelled,
        examples.len() - labelled,
        FILES.join(",")
    );
    println!(
        "{:<16}{:>6}{:>6}{:>6}{:>6}{:>11}{:>9}   floor P / R",
        "kind", "gold", "tp", "fp", "fn", "precision", "recall"
    );
    let mut failed: Vec<String> = Vec::new();
    let mut total = Score::default();
    for (name, p_floor, r_floor) in FLOORS {
        let s = scores.remove(*name).unwrap_or_default();
        let (p, r) = (s.precision(), s.recall());
        let ok = p >= *p_floor && r >= *r_floor && s.gold > 0;
        println!(
            "{:<16}{:>6}{:>6}{:>6}{:>6}{:>11.3}{:>9.3}   {:.2} / {:.2}{}",
            name,
            s.gold,
            s.tp,
            s.fp,
            s.fn_,
            p,
            r,
            p_floor,
            r_floor,
            if ok { "" } else { "   BELOW FLOOR" }
        );
        if !ok {
            failed.push((*name).to_owned());
        }
        total.gold += s.gold;
        total.tp += s.tp;
        total.fp += s.fp;
        total.fn_ += s.fn_;
        if *name == "secrets" {
            for (k, s) in &secret_kinds {
                println!(
                    "  {:<14}{:>6}{:>6}{:>6}{:>6}{:>11.3}{:>9.3}",
                    k,
                    s.gold,
                    s.tp,
                    s.fp,
                    s.fn_,
                    s.precision(),
                    s.recall()
                );
            }
        }
    }
    // A kind without a floor is a kind nobody measured: fail until one is set.
    failed.extend(scores.into_keys().map(|k| format!("{k} (no floor)")));
    println!(
        "{:<16}{:>6}{:>6}{:>6}{:>6}{:>11.3}{:>9.3}",
        "all",
        total.gold,
        total.tp,
        total.fp,
        total.fn_,
        total.precision(),
        total.recall()
    );
    if verbose || !failed.is_empty() {
        for m in &mistakes {
            println!("  {m}");
        }
    } else if !mistakes.is_empty() {
        println!(
            "({} mistakes; PII_CORPUS_VERBOSE=1 lists them)",
            mistakes.len()
        );
    }
    if failed.is_empty() {
        println!("pii corpus: every floor met\n");
        ExitCode::SUCCESS
    } else {
        println!("pii corpus: FAILED for {}\n", failed.join(", "));
        ExitCode::FAILURE
    }
}
