//! `ironctl`: the operator's command line for `ironcaged`.
//!
//! It connects to the daemon's control socket, says `Hello` with the protocol
//! version, sends one request and prints the reply: an aligned table for humans or,
//! with `--json`, JSON for scripts. Layout follows pueue's client:
//!
//! - `main.rs`: the command-line surface (clap derive) and dispatch;
//! - [`client`]: connection, handshake, typed errors;
//! - [`output`]: tables, durations, writing to stdout;
//! - [`commands`]: one file per subcommand group.
//!
//! Exit codes: 0 success; 1 the daemon refused or failed the request, or could
//! not be reached (one line on stderr says why and what to do); 2 usage errors.

mod client;
mod commands;
mod output;
mod utc;

use clap::{Parser, Subcommand, ValueEnum};
use commands::Ctx;
use ironcage_shared::protocol::{BudgetPeriod, CircuitRef, CostsBy};
use ironcage_shared::{AgentName, Micros};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Where the packaged daemon listens.
const DEFAULT_SOCKET: &str = "/run/ironcage/ironcaged.sock";

#[derive(Debug, Parser)]
#[command(
    name = "ironctl",
    version,
    about = "Control the Iron Cage daemon (ironcaged): agents, budgets, costs, circuits",
    propagate_version = true,
    after_help = "Exit status: 0 success, 1 the daemon refused the request or is unreachable, 2 usage error."
)]
struct Cli {
    /// The daemon's control socket [default: $IRONCAGE_SOCKET, else
    /// /run/ironcage/ironcaged.sock].
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,

    /// Print JSON instead of tables (money as integer micro-dollars plus *_usd).
    #[arg(long, global = true)]
    json: bool,

    /// Seconds to wait for each reply of the daemon (0: no limit).
    #[arg(long, global = true, value_name = "SECS", default_value_t = 120)]
    timeout: u64,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The daemon itself: status, ping, reload.
    #[command(subcommand)]
    Daemon(DaemonCommand),
    /// Supervised agents: list, inspect, start, stop, signal, logs.
    #[command(subcommand)]
    Agents(AgentsCommand),
    /// Spending limits per agent.
    #[command(subcommand)]
    Budget(BudgetCommand),
    /// Spend report, grouped by agent, model, provider or tag.
    Costs(CostsArgs),
    /// Circuit breakers per provider and model: list, reset.
    #[command(subcommand)]
    Circuits(CircuitsCommand),
    /// Personal data and secrets: scan a file locally (no daemon needed).
    #[command(subcommand)]
    Pii(commands::pii::PiiCommand),
    /// Encrypted secrets: list, get, set, rotate, rekey, export/import.
    #[command(subcommand)]
    Secrets(commands::secrets::SecretsCommand),
    /// The tamper-evident audit trail: tail, verify, export.
    #[command(subcommand)]
    Audit(commands::audit::AuditCommand),
}

#[derive(Debug, Subcommand)]
enum CircuitsCommand {
    /// Every circuit with its state, failures, next probe and latency.
    List,
    /// Close a circuit now, whatever its state (the next call goes to the model).
    Reset {
        /// The circuit, as PROVIDER/MODEL (e.g. openai/gpt-4o).
        circuit: CircuitRef,
    },
}

#[derive(Debug, Subcommand)]
enum DaemonCommand {
    /// Version, paths, uptime and agent counts.
    Status,
    /// Check the daemon answers (handshake and one round trip).
    Ping,
    /// Re-read the configuration file; fails with the daemon's reason if it is rejected.
    Reload,
}

#[derive(Debug, Subcommand)]
enum AgentsCommand {
    /// Every configured agent with its state.
    List,
    /// One agent in detail.
    Status {
        /// The agent, as named in the config.
        name: AgentName,
    },
    /// Start a stopped, exited or failed agent.
    Start {
        /// The agent, as named in the config.
        name: AgentName,
    },
    /// Stop an agent (SIGTERM to its process group, SIGKILL after the grace period).
    Stop {
        /// The agent, as named in the config.
        name: AgentName,
    },
    /// Stop, then start an agent.
    Restart {
        /// The agent, as named in the config.
        name: AgentName,
    },
    /// Send a signal to an agent's process group.
    Kill {
        /// The agent, as named in the config.
        name: AgentName,
        /// Signal name (KILL, SIGTERM, hup, ...) or number.
        #[arg(short, long, value_name = "SIG", default_value = "KILL",
              value_parser = commands::agents::parse_signal)]
        signal: i32,
    },
    /// An agent's recent output (stdout and stderr, PII-redacted).
    Logs {
        /// The agent, as named in the config.
        name: AgentName,
        /// How many recent lines to show.
        #[arg(short = 'n', long = "lines", value_name = "N", default_value_t = 100)]
        lines: u32,
        /// Keep printing new lines until the daemon closes the stream or Ctrl-C.
        #[arg(short, long)]
        follow: bool,
        /// Prefix each line with its UTC time (RFC 3339).
        #[arg(short, long)]
        timestamps: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum PeriodArg {
    Day,
    Week,
    Month,
    Total,
}

impl From<PeriodArg> for BudgetPeriod {
    fn from(p: PeriodArg) -> Self {
        match p {
            PeriodArg::Day => BudgetPeriod::Day,
            PeriodArg::Week => BudgetPeriod::Week,
            PeriodArg::Month => BudgetPeriod::Month,
            PeriodArg::Total => BudgetPeriod::Total,
        }
    }
}

#[derive(Debug, Subcommand)]
enum BudgetCommand {
    /// Limits, spend, reservations and calls, for one agent or all.
    Show {
        /// Only this agent (all agents when omitted).
        name: Option<AgentName>,
    },
    /// Set an agent's spending limit, overriding the one in the config.
    Set {
        /// The agent, as named in the config.
        name: AgentName,
        /// The limit in US dollars, e.g. 25 or 12.50 (at most 6 decimals).
        #[arg(long, value_name = "X", value_parser = Micros::parse_usd)]
        usd: Micros,
        /// The period the limit applies to; keeps the current one when omitted.
        #[arg(long, value_enum)]
        period: Option<PeriodArg>,
    },
    /// Reset an agent's spend for the current period to zero.
    Reset {
        /// The agent, as named in the config.
        name: AgentName,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ByArg {
    Agent,
    Model,
    Provider,
    Tag,
}

impl From<ByArg> for CostsBy {
    fn from(b: ByArg) -> Self {
        match b {
            ByArg::Agent => CostsBy::Agent,
            ByArg::Model => CostsBy::Model,
            ByArg::Provider => CostsBy::Provider,
            ByArg::Tag => CostsBy::Tag,
        }
    }
}

#[derive(Debug, clap::Args)]
struct CostsArgs {
    /// How to group the rows.
    #[arg(long, value_enum, default_value = "agent")]
    by: ByArg,
    /// Only calls since then: 24h, 7d, 30m, a date 2026-11-01 (UTC), an RFC 3339
    /// timestamp, or Unix seconds.
    #[arg(long, value_name = "SPEC", value_parser = commands::costs::parse_since)]
    since: Option<u64>,
    /// Only this agent's calls.
    #[arg(long, value_name = "NAME")]
    agent: Option<AgentName>,
}

fn run(ctx: &Ctx, command: Command) -> anyhow::Result<()> {
    use commands::{agents, budget, circuits, costs, daemon};
    match command {
        Command::Daemon(c) => match c {
            DaemonCommand::Status => daemon::status(ctx),
            DaemonCommand::Ping => daemon::ping(ctx),
            DaemonCommand::Reload => daemon::reload(ctx),
        },
        Command::Agents(c) => match c {
            AgentsCommand::List => agents::list(ctx),
            AgentsCommand::Status { name } => agents::status(ctx, name),
            AgentsCommand::Start { name } => agents::start(ctx, name),
            AgentsCommand::Stop { name } => agents::stop(ctx, name),
            AgentsCommand::Restart { name } => agents::restart(ctx, name),
            AgentsCommand::Kill { name, signal } => agents::kill(ctx, name, signal),
            AgentsCommand::Logs {
                name,
                lines,
                follow,
                timestamps,
            } => agents::logs(ctx, name, lines, follow, timestamps),
        },
        Command::Budget(c) => match c {
            BudgetCommand::Show { name } => budget::show(ctx, name),
            BudgetCommand::Set { name, usd, period } => {
                budget::set(ctx, name, usd, period.map(Into::into))
            }
            BudgetCommand::Reset { name } => budget::reset(ctx, name),
        },
        Command::Costs(a) => costs::run(ctx, a.by.into(), a.since, a.agent),
        Command::Circuits(c) => match c {
            CircuitsCommand::List => circuits::list(ctx),
            CircuitsCommand::Reset { circuit } => circuits::reset(ctx, circuit),
        },
        Command::Pii(c) => commands::pii::run(ctx, c),
        Command::Secrets(c) => commands::secrets::run(ctx, c),
        Command::Audit(c) => commands::audit::run(ctx, c),
    }
}

/// `--socket`, else a non-empty `IRONCAGE_SOCKET`, else the packaged path. (An
/// empty variable counts as unset, as `IRONCAGE_SOCKET= ironctl ...` means.)
fn socket_path(flag: Option<PathBuf>, env: Option<OsString>) -> PathBuf {
    flag.or_else(|| env.filter(|v| !v.is_empty()).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

fn main() -> ExitCode {
    let cli = Cli::parse(); // usage errors exit 2 here
    let ctx = Ctx {
        socket: socket_path(cli.socket, std::env::var_os("IRONCAGE_SOCKET")),
        json: cli.json,
        timeout: (cli.timeout > 0).then(|| Duration::from_secs(cli.timeout)),
    };
    match run(&ctx, cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // `ironctl ... | head` closing the pipe is not a failure.
            if let Some(out) = err.downcast_ref::<output::StdoutError>() {
                if out.0.kind() == std::io::ErrorKind::BrokenPipe {
                    return ExitCode::SUCCESS;
                }
            }
            // `pii scan`: 1 when something was found, 2 when the input is unreadable.
            if let Some(exit) = err.downcast_ref::<commands::pii::ScanExit>() {
                if exit.needs_message() {
                    eprintln!("ironctl: {exit:#}");
                }
                return ExitCode::from(exit.code());
            }
            eprintln!("ironctl: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a panic is the failure report
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn json_is_accepted_before_and_after_the_subcommand() {
        let a = Cli::try_parse_from(["ironctl", "--json", "agents", "list"]).unwrap();
        let b = Cli::try_parse_from(["ironctl", "agents", "list", "--json"]).unwrap();
        assert!(a.json && b.json);
        let c = Cli::try_parse_from(["ironctl", "agents", "--socket", "/x", "list"]).unwrap();
        assert_eq!(c.socket, Some(PathBuf::from("/x")));
    }

    #[test]
    fn socket_flag_then_env_then_default() {
        let flag = || Some(PathBuf::from("/flag.sock"));
        let env = || Some(OsString::from("/env.sock"));
        assert_eq!(socket_path(flag(), env()), PathBuf::from("/flag.sock"));
        assert_eq!(socket_path(None, env()), PathBuf::from("/env.sock"));
        assert_eq!(socket_path(None, None), PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(
            socket_path(None, Some(OsString::new())),
            PathBuf::from(DEFAULT_SOCKET)
        );
    }

    #[test]
    fn parses_typed_arguments() {
        let cli = Cli::try_parse_from([
            "ironctl", "budget", "set", "bot", "--usd", "12.5", "--period", "week",
        ])
        .unwrap();
        match cli.command {
            Command::Budget(BudgetCommand::Set { name, usd, period }) => {
                assert_eq!(name.as_str(), "bot");
                assert_eq!(usd, Micros(12_500_000));
                assert!(matches!(period, Some(PeriodArg::Week)));
            }
            other => panic!("parsed as {other:?}"),
        }
        let cli = Cli::try_parse_from(["ironctl", "agents", "kill", "bot"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Agents(AgentsCommand::Kill { signal: 9, .. })
        ));
        let cli =
            Cli::try_parse_from(["ironctl", "agents", "kill", "bot", "--signal", "term"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Agents(AgentsCommand::Kill { signal: 15, .. })
        ));
        let cli = Cli::try_parse_from(["ironctl", "circuits", "reset", "openai/org/m"]).unwrap();
        match cli.command {
            Command::Circuits(CircuitsCommand::Reset { circuit }) => {
                assert_eq!(
                    (circuit.provider.as_str(), circuit.model.as_str()),
                    ("openai", "org/m")
                );
            }
            other => panic!("parsed as {other:?}"),
        }
        let cli = Cli::try_parse_from(["ironctl", "costs"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Costs(CostsArgs {
                by: ByArg::Agent,
                since: None,
                agent: None
            })
        ));
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        for args in [
            &["ironctl", "budget", "set", "bot", "--usd", "1.0000001"][..],
            &["ironctl", "budget", "set", "bot", "--usd", "-3"],
            &["ironctl", "agents", "kill", "bot", "--signal", "NOPE"],
            &["ironctl", "agents", "status", "../etc"],
            &["ironctl", "costs", "--since", "yesterday"],
            &["ironctl", "costs", "--by", "color"],
            &["ironctl", "circuits", "reset", "gpt-4o"],
        ] {
            let err = Cli::try_parse_from(args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }
}
