//! `gateway-bench`: an open-loop load generator that measures what an
//! OpenAI-compatible gateway adds to a call's latency.
//!
//! With `--direct`, one run measures the provider (usually
//! `ironcage-mock-provider`) directly, then through the gateway, then directly
//! again, and reports the difference. See `bench/README.md`.
//!
//! - [`payload`]: realistic prompts (prose with emails and numbers) and bodies.
//! - [`load`]: the scheduler, the connection pool, one phase.
//! - [`pacer`]: waking at an exact instant (a `timerfd`; tokio's timer has 1 ms steps).
//! - [`stats`]: exact percentiles.
//! - [`report`]: the text table and the `--json` object.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use http::header::{HeaderName, HeaderValue};

mod load;
mod pacer;
mod payload;
mod report;
mod stats;

use load::{Endpoint, Load};
use payload::Api;
use report::{Config, Overhead, PhaseReport, Report};
use stats::Samples;

#[derive(Debug, Parser)]
#[command(
    name = "gateway-bench",
    about = "Open-loop load generator measuring an OpenAI-compatible gateway's overhead"
)]
struct Args {
    /// Base URL of the gateway (or anything under test), e.g. http://127.0.0.1:8080.
    #[arg(long)]
    target: String,
    /// API key for --target (sent as `Authorization: Bearer`, or `x-api-key` for
    /// an Anthropic /messages path).
    #[arg(long, default_value = "")]
    api_key: String,
    /// Base URL of the provider itself: measure it before and after the target
    /// and report the difference.
    #[arg(long)]
    direct: Option<String>,
    /// API key for --direct (default: --api-key).
    #[arg(long)]
    direct_api_key: Option<String>,
    /// Requests per second, scheduled at fixed intervals.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Measured seconds per phase (split over the rounds with --rounds).
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,
    /// With --direct: alternate direct and target this many times (direct,
    /// target, direct, ..., target, direct), each phase measuring
    /// duration-secs / rounds. On a shared or virtual machine whose noise comes
    /// and goes over seconds, short alternating phases expose both sides to the
    /// same noise instead of giving one side a quiet stretch.
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// Unmeasured seconds at the start of each phase.
    #[arg(long, default_value_t = 2.0)]
    warmup_secs: f64,
    /// Keep-alive connections per phase; requests queue when all are busy.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Size of the user prompt in bytes.
    #[arg(long, default_value_t = 4096)]
    prompt_bytes: usize,
    #[arg(long, default_value = "gpt-4o-mini")]
    model: String,
    #[arg(long, default_value_t = 16)]
    max_tokens: u64,
    /// Request path, joined to the base URLs (a base ending in /v1 is not doubled).
    /// /v1/chat/completions, /v1/responses, /v1/embeddings or /v1/messages.
    #[arg(long, default_value = "/v1/chat/completions")]
    path: String,
    /// Extra header for every request, `Name: value`; repeatable.
    #[arg(long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// Ask for a streamed (SSE) response; latency is still to the last byte.
    #[arg(long)]
    stream: bool,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 10.0)]
    timeout_secs: f64,
    /// After the last scheduled send, how long queued requests may still start.
    #[arg(long, default_value_t = 5.0)]
    drain_secs: f64,
    /// Client runtime threads (1: everything on one thread).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Pid of the process behind --target (the gateway): report its CPU time
    /// per request.
    #[arg(long)]
    target_pid: Option<u32>,
    /// Pid of the process behind --direct (the provider): report its CPU time
    /// per request.
    #[arg(long)]
    direct_pid: Option<u32>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

fn parse_header(raw: &str) -> anyhow::Result<(HeaderName, HeaderValue)> {
    let (name, value) = raw
        .split_once(':')
        .with_context(|| format!("--header {raw:?}: expected 'Name: value'"))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .with_context(|| format!("--header {raw:?}: bad header name"))?;
    let value = HeaderValue::from_str(value.trim())
        .with_context(|| format!("--header {raw:?}: bad header value"))?;
    Ok((name, value))
}

fn seconds(name: &str, value: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .with_context(|| format!("--{name} must be a non-negative number of seconds"))
}

async fn run(args: Args) -> anyhow::Result<Report> {
    if !(args.rate.is_finite() && args.rate > 0.0) {
        bail!("--rate must be positive");
    }
    if args.connections == 0 {
        bail!("--connections must be at least 1");
    }
    let api = Api::from_path(&args.path);
    let extra = args
        .headers
        .iter()
        .map(|h| parse_header(h))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let target =
        Endpoint::new(&args.target, &args.path, api, &args.api_key, &extra).context("--target")?;
    let direct = match &args.direct {
        Some(url) => {
            let key = args.direct_api_key.as_deref().unwrap_or(&args.api_key);
            Some(Endpoint::new(url, &args.path, api, key, &extra).context("--direct")?)
        }
        None => None,
    };
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let phase_secs = args.duration_secs / f64::from(args.rounds);
    let load = Load {
        rate: args.rate,
        warmup: seconds("warmup-secs", args.warmup_secs)?,
        duration: seconds("duration-secs", phase_secs)?,
        connections: args.connections,
        timeout: seconds("timeout-secs", args.timeout_secs)?,
        drain: seconds("drain-secs", args.drain_secs)?,
        bodies: Arc::new(payload::bodies(
            api,
            &args.model,
            args.prompt_bytes,
            args.max_tokens,
            args.stream,
        )),
    };

    let progress = |name: &str, endpoint: &Endpoint, secs: f64| {
        if !args.json {
            eprintln!(
                "gateway-bench: {name}: {} ({} s)",
                endpoint.url(),
                args.warmup_secs + secs
            );
        }
    };
    let mut phases = Vec::new();
    let (target_report, direct_report) = match &direct {
        Some(direct) => {
            // Direct, target, direct (and so on with --rounds): drift during the
            // run (CPU frequency, page cache, other load) shows up on both sides
            // instead of in the overhead.
            let rounds = args.rounds;
            let numbered = |kind: &str, n: u32| {
                if kind == "target" && rounds == 1 {
                    "target".to_owned()
                } else {
                    format!("{kind} #{n}")
                }
            };
            let mut direct_samples = Samples::default();
            let mut target_samples = Samples::default();
            for n in 1..=rounds + 1 {
                let name = numbered("direct", n);
                progress(&name, direct, phase_secs);
                let s = load::run(direct.clone(), &load, args.direct_pid)
                    .await
                    .with_context(|| name.clone())?;
                phases.push(PhaseReport::new(&name, &direct.url(), s.clone()));
                direct_samples.merge(s);
                if n > rounds {
                    break;
                }
                let name = numbered("target", n);
                progress(&name, &target, phase_secs);
                let s = load::run(target.clone(), &load, args.target_pid)
                    .await
                    .with_context(|| name.clone())?;
                phases.push(PhaseReport::new(&name, &target.url(), s.clone()));
                target_samples.merge(s);
            }
            let target_name = if rounds == 1 {
                "target"
            } else {
                "target (all)"
            };
            (
                PhaseReport::new(target_name, &target.url(), target_samples),
                Some(PhaseReport::new(
                    "direct (all)",
                    &direct.url(),
                    direct_samples,
                )),
            )
        }
        None => {
            progress("target", &target, args.duration_secs);
            let through = load::run(target.clone(), &load, args.target_pid)
                .await
                .context("target")?;
            let target_report = PhaseReport::new("target", &target.url(), through);
            phases.push(target_report.clone());
            (target_report, None)
        }
    };
    let overhead_ms = direct_report
        .as_ref()
        .map(|direct| Overhead::between(&target_report.latency_ms, &direct.latency_ms));
    Ok(Report {
        config: Config {
            target: args.target.clone(),
            direct: args.direct.clone(),
            rate: args.rate,
            duration_secs: args.duration_secs,
            rounds: args.rounds,
            warmup_secs: args.warmup_secs,
            connections: args.connections,
            prompt_bytes: args.prompt_bytes,
            model: args.model.clone(),
            max_tokens: args.max_tokens,
            stream: args.stream,
            threads: args.threads,
        },
        phases,
        target: target_report,
        direct: direct_report,
        overhead_ms,
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let json = args.json;
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    }
    .context("starting the tokio runtime")?;
    let report = runtime.block_on(run(args))?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.text());
    }
    Ok(())
}
