//! `pii-bench`: throughput of the PII engine on one core.
//!
//! Generates a deterministic mixed corpus (prose, code, logs, JSON, tables, sparse
//! personal data and secrets; see `corpus.rs`), then measures, single-threaded:
//!
//! - whole-buffer scans (MB/s);
//! - the corpus cut into 4 KiB "prompts", each scanned on its own as the gateway
//!   would (MB/s, and µs per prompt: p50, p90, p99);
//! - the stream scanner fed 64-byte chunks (MB/s), as for streamed output.
//!
//! MB/s are bytes per second of this thread's CPU time, so the figure is "per core"
//! even on a machine busy with other work (where wall-clock rates drop); the
//! fastest wall-clock pass and per-prompt wall-clock percentiles are shown too.
//! `--write-corpus FILE` writes the corpus instead, for `presidio.sh`.
//!
//! ```text
//! cargo run --release -p ironcage-bench --bin pii-bench -- --size-mib 16
//! ```

mod corpus;

use anyhow::Context;
use clap::Parser;
use ironcage_shared::pii::{KindSet, Scanner, ScannerConfig, StreamScanner};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(
    name = "pii-bench",
    about = "Throughput of the Iron Cage PII engine on one core"
)]
struct Args {
    /// Corpus size in MiB.
    #[arg(long, default_value_t = 16)]
    size_mib: usize,
    /// Corpus size in KiB (instead of --size-mib).
    #[arg(long, value_name = "KIB")]
    size_kib: Option<usize>,
    /// Weights of the corpus blocks: prose,code,logs,tables (e.g. 20,30,40,10 for
    /// a log-heavy worst case).
    #[arg(long, value_name = "P,C,L,T", value_parser = corpus::Mix::parse, default_value = "62,25,7,6")]
    mix: corpus::Mix,
    /// Seed of the corpus generator.
    #[arg(long, default_value_t = 6)]
    seed: u64,
    /// Minimum measuring time per mode, in seconds.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Kinds to scan for (names or groups: all, pii, secrets, ip).
    #[arg(long, default_value = "all")]
    kinds: String,
    /// Only scan the whole corpus this many times and exit (for `perf stat`:
    /// cycles and instructions per byte do not depend on other load).
    #[arg(long, value_name = "N")]
    passes: Option<usize>,
    /// Write the corpus to this file and exit.
    #[arg(long, value_name = "FILE")]
    write_corpus: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

const PROMPT: usize = 4096;

fn mb_per_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e6
}

/// CPU time of this thread: what "per core" means on a machine shared with other
/// work (wall-clock time also counts the time the thread was not running).
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A throughput figure measured both ways.
struct Rate {
    /// Bytes per second of this thread's CPU time.
    cpu: f64,
    /// Bytes per second of the fastest wall-clock repetition.
    best_wall: f64,
}

/// Runs `f` (which processes `bytes` bytes) repeatedly for at least `min`.
fn measure(min: Duration, bytes: usize, mut f: impl FnMut()) -> Rate {
    f(); // warm-up
    let start = Instant::now();
    let cpu0 = thread_cpu();
    let mut total = 0;
    let mut best = Duration::MAX;
    while start.elapsed() < min {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed());
        total += bytes;
    }
    Rate {
        cpu: mb_per_s(total, thread_cpu() - cpu0),
        best_wall: mb_per_s(bytes, best),
    }
}

fn split_prompts(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < text.len() {
        let mut e = (i + PROMPT).min(text.len());
        while !text.is_char_boundary(e) {
            e -= 1;
        }
        out.push(&text[i..e]);
        i = e;
    }
    out
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let size = args.size_kib.map_or(args.size_mib << 20, |k| k << 10);
    let text = corpus::generate(size, args.seed, args.mix);
    if let Some(path) = &args.write_corpus {
        std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {} bytes to {}", text.len(), path.display());
        return Ok(());
    }
    let kinds = KindSet::parse(&args.kinds)?;
    let scanner = Scanner::new(&ScannerConfig {
        kinds: Some(kinds),
        ..ScannerConfig::default()
    })?;
    let min = Duration::from_secs_f64(args.seconds);
    if let Some(passes) = args.passes {
        let mut out = Vec::new();
        let cpu0 = thread_cpu();
        for _ in 0..passes {
            scanner.scan_into(black_box(&text), &mut out);
            black_box(out.len());
        }
        let cpu = thread_cpu() - cpu0;
        println!(
            "{passes} passes over {} bytes: {:.0} MB/s (CPU time)",
            text.len(),
            mb_per_s(text.len() * passes, cpu)
        );
        return Ok(());
    }

    // What is in the corpus.
    let findings = scanner.scan(&text);
    let mut per_kind: BTreeMap<String, usize> = BTreeMap::new();
    for f in &findings {
        *per_kind.entry(f.kind.name().to_owned()).or_default() += 1;
    }

    // Whole buffer.
    let mut out = Vec::new();
    let whole = measure(min, text.len(), || {
        scanner.scan_into(black_box(&text), &mut out);
        black_box(out.len());
    });

    // 4 KiB prompts, timed one by one (wall clock; the median is robust to the
    // scheduler), and in total (CPU time).
    let prompts = split_prompts(&text);
    let mut times_us = Vec::with_capacity(prompts.len() * 4);
    let start = Instant::now();
    let cpu0 = thread_cpu();
    let mut prompt_bytes = 0usize;
    while start.elapsed() < min {
        for p in &prompts {
            let t = Instant::now();
            scanner.scan_into(black_box(p), &mut out);
            black_box(out.len());
            let e = t.elapsed();
            prompt_bytes += p.len();
            if p.len() == PROMPT {
                times_us.push(e.as_secs_f64() * 1e6);
            }
        }
    }
    let prompts_cpu = mb_per_s(prompt_bytes, thread_cpu() - cpu0);
    times_us.sort_by(f64::total_cmp);
    let p50_us = percentile(&times_us, 0.50);
    let p90_us = percentile(&times_us, 0.90);
    let p99_us = percentile(&times_us, 0.99);

    // Streaming, 64-byte chunks.
    let shared = Arc::new(scanner);
    let chunks: Vec<&str> = {
        let mut v = Vec::new();
        let mut i = 0;
        while i < text.len() {
            let mut e = (i + 64).min(text.len());
            while !text.is_char_boundary(e) {
                e -= 1;
            }
            v.push(&text[i..e]);
            i = e;
        }
        v
    };
    let mut stream = StreamScanner::new(shared.clone());
    let streamed = measure(min, text.len(), || {
        for c in &chunks {
            let r = stream.push(black_box(c));
            black_box(r.findings.len());
        }
        black_box(stream.finish().text.len());
    });
    let digits = text.bytes().filter(u8::is_ascii_digit).count() as f64 / text.len() as f64;

    if args.json {
        let v = serde_json::json!({
            "corpus_bytes": text.len(),
            "mix_prose_code_logs_tables": args.mix.0,
            "digit_fraction": digits,
            "kinds": args.kinds,
            "findings": per_kind,
            "whole_mb_s_cpu": whole.cpu,
            "whole_mb_s_best_wall": whole.best_wall,
            "prompt_4k_mb_s_cpu": prompts_cpu,
            "prompt_4k_us_wall": { "p50": p50_us, "p90": p90_us, "p99": p99_us },
            "stream_64b_mb_s_cpu": streamed.cpu,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "corpus: {:.1} MiB mixed text (seed {}, mix {:?} prose/code/logs/tables, {:.1}% digits), kinds: {}",
            text.len() as f64 / (1 << 20) as f64,
            args.seed,
            args.mix.0,
            digits * 100.0,
            args.kinds
        );
        let list: Vec<String> = per_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
        println!("findings: {} ({})", findings.len(), list.join(", "));
        println!("one core (MB/s per second of this thread's CPU time; release build):");
        println!(
            "  whole buffer          {:7.0} MB/s   (fastest pass, wall clock: {:.0} MB/s)",
            whole.cpu, whole.best_wall
        );
        println!(
            "  4 KiB prompts         {prompts_cpu:7.0} MB/s   per prompt (wall): {p50_us:.2} µs p50, {p90_us:.2} µs p90, {p99_us:.2} µs p99"
        );
        println!("  stream, 64 B chunks   {:7.0} MB/s", streamed.cpu);
    }
    Ok(())
}
