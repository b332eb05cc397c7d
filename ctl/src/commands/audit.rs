//! `ironctl audit tail|verify|export`: the daemon's tamper-evident trail.

use super::Ctx;
use crate::client::ClientError;
use crate::output;
use crate::utc;
use anyhow::{Context as _, bail};
use clap::Subcommand;
use ironcage_shared::protocol::{
    AuditAnchor, AuditEntry, AuditTailRequest, AuditVerifyReport, Request, Response,
};
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
    /// Recompute the hash chain and checkpoints; exit 1 naming the first bad
    /// seq. Prints the head as `anchor SEQ:MAC`: record it off the machine.
    Verify {
        /// Also fail unless the checkpoint at SEQ is still on the verified
        /// chain with exactly this MAC (an anchor recorded earlier): catches
        /// newest entries rolled back together with their checkpoints.
        #[arg(long, value_name = "SEQ:MAC", value_parser = parse_anchor)]
        anchor: Option<AuditAnchor>,
    },
    /// Every entry as JSON lines, to stdout or a new file (mode 0600).
    Export {
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

pub fn run(ctx: &Ctx, c: AuditCommand) -> anyhow::Result<()> {
    match c {
        AuditCommand::Tail { lines, follow } => tail(ctx, lines, follow),
        AuditCommand::Verify { anchor } => verify(ctx, anchor),
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

/// `SEQ:MAC` as `audit verify` prints it (MAC: 64 hex digits).
fn parse_anchor(s: &str) -> Result<AuditAnchor, String> {
    let (seq, mac) = s.trim().split_once(':').ok_or_else(|| {
        format!("`{s}` is not SEQ:MAC; pass the `anchor` that `ironctl audit verify` printed, e.g. 120:3f9a...")
    })?;
    let seq: u64 = seq
        .parse()
        .map_err(|_| format!("`{seq}` before the `:` is not a checkpoint seq (a number)"))?;
    if mac.len() != 64 || !mac.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "the MAC after the `:` must be 64 hex digits; got {} characters",
            mac.len()
        ));
    }
    Ok(AuditAnchor {
        seq,
        mac: mac.to_ascii_lowercase(),
    })
}

fn verify(ctx: &Ctx, anchor: Option<AuditAnchor>) -> anyhow::Result<()> {
    let given = anchor.as_ref().map(|a| format!("{}:{}", a.seq, a.mac));
    let req = match anchor {
        Some(a) => Request::AuditVerifyAnchored(a),
        None => Request::AuditVerify,
    };
    let r = match ctx.call(&req)? {
        Response::AuditVerify(r) => r,
        other => return Err(ClientError::unexpected(&req, &other).into()),
    };
    if ctx.json {
        // One line, so `ironctl --json audit verify >> FILE` keeps JSON lines.
        output::emit(&format!("{}\n", json_line(&r)?))?;
    } else {
        output::emit(&output::key_values(&[
            ("entries", r.entries.to_string()),
            ("checkpoints checked", r.checkpoints.to_string()),
            ("last checkpoint", output::or_dash(r.last_checkpoint)),
            ("anchor", r.anchor().unwrap_or_else(|| "-".into())),
        ]))?;
        if let Some(from) = r.uncovered_from {
            output::emit(&format!(
                "entries from {from} on were written without a master key: no checkpoint covers them yet\n"
            ))?;
        }
        if !r.keyed {
            output::emit(
                "no master key: checkpoints cannot be checked, so a truncated tail or a chain rewritten from scratch would not show; configure a master key\n",
            )?;
        }
    }
    if let Some(seq) = r.first_bad {
        bail!(
            "the audit trail fails verification at seq {seq}: {}",
            r.reason.as_deref().unwrap_or("bad entry")
        );
    }
    if let (Some(given), Some(why)) = (&given, &r.anchor_error) {
        bail!("the audit trail does not hold the anchor {given}: {why}");
    }
    if !ctx.json {
        if let Some(given) = &given {
            output::emit(&format!("anchor {given} is on the verified chain\n"))?;
        }
        output::emit("audit trail OK\n")?;
    }
    Ok(())
}

/// The report as one JSON object, with `anchor` (`SEQ:MAC`) added.
fn json_line(r: &AuditVerifyReport) -> anyhow::Result<String> {
    let mut v = serde_json::to_value(r)?;
    if let serde_json::Value::Object(m) = &mut v {
        m.insert(
            "anchor".into(),
            r.anchor().map_or(serde_json::Value::Null, Into::into),
        );
    }
    Ok(serde_json::to_string(&v)?)
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
