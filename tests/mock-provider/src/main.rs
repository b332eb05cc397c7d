//! `ironcage-mock-provider`: the mock OpenAI/Anthropic server as a process.
//!
//! Prints exactly one line, `listening on http://HOST:PORT`, once it accepts
//! connections, optionally writes that URL to `--addr-file` (atomically), and
//! exits 0 on SIGTERM or SIGINT.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Parser;
use ironcage_mock_provider::{Options, serve_with_shutdown};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

#[derive(Debug, Parser)]
#[command(
    name = "ironcage-mock-provider",
    about = "A fast local stand-in for the OpenAI and Anthropic APIs"
)]
struct Args {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Write `http://HOST:PORT` to this file once listening (tmp file + rename).
    #[arg(long)]
    addr_file: Option<PathBuf>,
    /// Accepted OpenAI key (repeat for several). None: any non-empty key.
    #[arg(long = "openai-key", value_name = "KEY")]
    openai_keys: Vec<String>,
    /// Accepted Anthropic key (repeat for several). None: any non-empty key.
    #[arg(long = "anthropic-key", value_name = "KEY")]
    anthropic_keys: Vec<String>,
    /// Keep the last 1000 requests for `GET /_mock/requests`.
    #[arg(long)]
    record: bool,
    /// Tokio worker threads (default: one per CPU).
    #[arg(long)]
    threads: Option<usize>,
}

fn write_addr_file(path: &Path, url: &str) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, url).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<()> {
    // Installed before the "listening" line, so a supervisor that signals right
    // after reading it gets a clean exit, not the default signal death.
    let mut terminate = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let url = format!("http://{}", listener.local_addr()?);
    if let Some(path) = &args.addr_file {
        write_addr_file(path, &url)?;
    }
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on {url}")?;
        stdout.flush()?;
    }
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    };
    let opts = Options {
        openai_keys: args.openai_keys,
        anthropic_keys: args.anthropic_keys,
        record: args.record,
    };
    serve_with_shutdown(listener, opts, shutdown)
        .await
        .context("serving")?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(threads) = args.threads {
        builder.worker_threads(threads.max(1));
    }
    let runtime = builder.build().context("starting the tokio runtime")?;
    runtime.block_on(run(args))
}
