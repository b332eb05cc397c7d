//! `ironctl audit tail|verify|export`: the daemon's tamper-evident trail.

use super::Ctx;
use crate::client::ClientError;
use crate::output;
use crate::utc;
use anyhow::{Context as _, bail};
use clap::Subcommand;
use ironcage_shared::protocol::{AuditEntry, AuditTailRequest, Request, Response};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Entries per page of `export` (the daemon's maximum).
const PAGE: u32 = 1000;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// The most recent entries; with --json, one JSON object per line.
    Tail {
        /// How many recent entries.
        #[arg(short = 'n', long = "lines", default_value_t = 20)]
        lines: u32,
        /// Keep printing new entries until Ctrl-C.
        #[arg(short, long)]
        follow: bool,
    },
    /// Recompute the hash chain and checkpoints; exit 1 naming the first bad seq.
    Verify,
    /// Every entry as JSON lines, to stdout or a new file (mode 0600).
    Export {
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

pub fn run(ctx: &Ctx, c: AuditCommand) -> anyhow::Result<()> {
    match c {
        AuditCommand::Tail { lines, follow } => tail(ctx, lines, follow),
        AuditCommand::Verify => verify(ctx),
        AuditCommand::Export { output } => export(ctx, output.as_deref()),
    }
}

fn page(
    client: &mut crate::client::Client,
    r: AuditTailRequest,
) -> anyhow::Result<Vec<AuditEntry>> {
    let req = Request::AuditTail(r);
    match client.request(&req)? {
        Response::AuditEntries(e) => Ok(e),
        other => Err(ClientError::unexpected(&req, &other).into()),
    }
}

fn line(e: &AuditEntry) -> String {
    let who = match (&e.actor_agent, e.actor_uid) {
        (Some(a), _) => format!("agent:{a}"),
        (None, Some(u)) => format!("uid:{u}/{}", e.actor_role),
        (None, None) => e.actor_role.clone(),
    };
    format!(
        "{:>6} {} {:<16} {:<20} {:<28} {:<9} {}",
        e.seq,
        utc::format_rfc3339_ms(e.time_ms),
        who,
        e.action,
        e.target,
        e.outcome.as_str(),
        e.detail
    )
}

fn render(ctx: &Ctx, entries: &[AuditEntry]) -> anyhow::Result<String> {
    let mut s = String::new();
    for e in entries {
        if ctx.json {
            s.push_str(&serde_json::to_string(e)?);
        } else {
            s.push_str(&line(e));
        }
        s.push('\n');
    }
    Ok(s)
}

fn tail(ctx: &Ctx, lines: u32, follow: bool) -> anyhow::Result<()> {
    let mut client = ctx.connect()?;
    let first = page(
        &mut client,
        AuditTailRequest {
            after: None,
            limit: lines.max(1),
            wait_ms: 0,
        },
    )?;
    let mut last = first.last().map_or(0, |e| e.seq);
    if lines > 0 {
        output::emit(&render(ctx, &first)?)?;
    }
    if !follow {
        return Ok(());
    }
    // Long-poll: the daemon answers as soon as something newer commits.
    client.set_timeout(None)?;
    loop {
        let more = page(
            &mut client,
            AuditTailRequest {
                after: Some(last),
                limit: PAGE,
                wait_ms: 30_000,
            },
        )?;
        if let Some(e) = more.last() {
            last = e.seq;
        }
        output::emit(&render(ctx, &more)?)?;
    }
}

fn verify(ctx: &Ctx) -> anyhow::Result<()> {
    let req = Request::AuditVerify;
    let r = match ctx.call(&req)? {
        Response::AuditVerify(r) => r,
        other => return Err(ClientError::unexpected(&req, &other).into()),
    };
    if ctx.json {
        output::emit(&output::json_pretty(&r)?)?;
    } else {
        output::emit(&output::key_values(&[
            ("entries", r.entries.to_string()),
            ("checkpoints checked", r.checkpoints.to_string()),
            ("last checkpoint", output::or_dash(r.last_checkpoint)),
        ]))?;
        if !r.keyed {
            output::emit(
                "no master key: checkpoints cannot be checked, so a truncated tail or a chain rewritten from scratch would not show; configure a master key\n",
            )?;
        }
    }
    match (r.first_bad, &r.reason) {
        (Some(seq), reason) => bail!(
            "the audit trail fails verification at seq {seq}: {}",
            reason.as_deref().unwrap_or("bad entry")
        ),
        (None, _) => {
            if !ctx.json {
                output::emit("audit trail OK\n")?;
            }
            Ok(())
        }
    }
}

fn export(ctx: &Ctx, out: Option<&Path>) -> anyhow::Result<()> {
    let mut file = match out {
        Some(p) => Some(output::create_private(p)?),
        None => None,
    };
    let mut client = ctx.connect()?;
    let mut after = 0u64;
    loop {
        let entries = page(
            &mut client,
            AuditTailRequest {
                after: Some(after),
                limit: PAGE,
                wait_ms: 0,
            },
        )?;
        let Some(last) = entries.last() else { break };
        after = last.seq;
        let mut s = String::new();
        for e in &entries {
            s.push_str(&serde_json::to_string(e)?);
            s.push('\n');
        }
        match &mut file {
            Some(f) => f
                .write_all(s.as_bytes())
                .context("cannot write the export file")?,
            None => output::emit(&s)?,
        }
    }
    if let Some(f) = &mut file {
        f.sync_all().context("cannot write the export file")?;
    }
    Ok(())
}
