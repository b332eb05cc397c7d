//! `ironcaged`: the Iron Cage daemon binary.

use anyhow::Context;
use clap::{Parser, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc rather than glibc's malloc: a gateway call allocates and frees
/// its request tree, headers and buffers on one worker thread, and mimalloc's
/// thread-local free lists do that in fewer instructions (186.3k -> 173.1k
/// per call on the gateway threads, `bench/gateway-instructions.sh`). It
/// starts no thread of its own.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
    Journald,
}

/// Supervises AI agents, meters and polices their LLM calls.
#[derive(Debug, Parser)]
#[command(name = "ironcaged", version)]
struct Cli {
    /// Configuration file.
    #[arg(long, env = "IRONCAGE_CONFIG", default_value = ironcaged::config::DEFAULT_CONFIG)]
    config: PathBuf,
    /// Validate the configuration and exit (0 = valid).
    #[arg(long)]
    check_config: bool,
    /// Control socket (overrides the config file).
    #[arg(long, env = "IRONCAGE_SOCKET")]
    socket: Option<PathBuf>,
    /// State directory (overrides the config file).
    #[arg(long, env = "IRONCAGE_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Log format; journald is the default when started by systemd with its
    /// output connected to the journal (JOURNAL_STREAM set), text otherwise.
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// File holding the secrets master key (overrides `[secrets]
    /// master_key_file`; `IRONCAGE_SECRETS_MASTER_KEY` wins over both).
    #[arg(long)]
    master_key_file: Option<PathBuf>,
}

fn init_logging(format: Option<LogFormat>) -> anyhow::Result<()> {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let format = format.unwrap_or(if std::env::var_os("JOURNAL_STREAM").is_some() {
        LogFormat::Journald
    } else {
        LogFormat::Text
    });
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .init(),
        LogFormat::Journald => {
            let layer = tracing_journald::layer()
                .context("cannot connect to journald; use --log-format text")?;
            registry.with(layer).init()
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    // SAFETY: the first thing `main` does: no other thread exists yet (the
    // runtime, the logger and every actor start later), so changing the
    // environment cannot race a reader. The key is removed so that no child
    // can inherit it, and zeroed in the initial environment block.
    unsafe { ironcaged::secrets::master::take_env_var() };
    let cli = Cli::parse();
    if cli.check_config {
        return match ironcaged::config::Config::load(&cli.config) {
            Ok(c) => {
                println!(
                    "{}: OK ({} agents, {} providers)",
                    cli.config.display(),
                    c.agents.len(),
                    c.providers.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ironcaged: invalid configuration: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Err(e) = init_logging(cli.log_format) {
        eprintln!("ironcaged: {e:#}");
        return ExitCode::FAILURE;
    }
    let opts = ironcaged::RunOptions {
        config: cli.config,
        socket: cli.socket,
        state_dir: cli.state_dir,
        handle_signals: true,
        master_key_file: cli.master_key_file,
    };
    match ironcaged::run(opts, ironcaged::Shutdown::default()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("ironcaged: {e:#}");
            ExitCode::FAILURE
        }
    }
}
