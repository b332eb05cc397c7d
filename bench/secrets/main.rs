//! `secrets-bench`: the secrets store's costs, in process over a real redb
//! file. Prints one line per figure (and JSON with `--json`):
//!
//! - unlock: opening the store with the master key (one Argon2id, m=19 MiB,
//!   t=2, p=1, plus the key check); target about one Argon2id;
//! - read: one secret after unlock (read transaction, unwrap the DEK, open the
//!   value); target <= 1 ms;
//! - audited get: `secrets get` as an operator runs it (the read plus its
//!   audit entry, durable: an fsync'd commit);
//! - one durable audit entry per commit (with a master key, each commit ends
//!   on a chained checkpoint), and a burst of 1,000 queued entries;
//! - spawn delivery: what 50 granted secrets add to an agent's spawn (read
//!   all, write 50 files 0400 into a fresh 0700 directory); target <= 5 ms.
//!
//! Run with `cargo run --release -p ironcage-bench --bin secrets-bench`.

use anyhow::Context as _;
use clap::Parser;
use ironcage_shared::protocol::{Role, SecretEnv};
use ironcaged::audit::Actor;
use ironcaged::config::{Delivery, SecretGrant, SecretRef};
use ironcaged::secrets::{Secrets, delivery, master::MasterKey};
use ironcaged::store::Store;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(name = "secrets-bench", about = "Costs of the Iron Cage secrets store")]
struct Args {
    /// Reads to time.
    #[arg(long, default_value_t = 20_000)]
    reads: usize,
    /// Single durable audit entries to time (one commit each).
    #[arg(long, default_value_t = 500)]
    entries: usize,
    /// Spawn deliveries to time.
    #[arg(long, default_value_t = 200)]
    spawns: usize,
    /// Secrets granted per spawn.
    #[arg(long, default_value_t = 50)]
    grants: usize,
    /// Directory for the credentials (default: /dev/shm when present, as the
    /// daemon's runtime directory is a tmpfs under systemd).
    #[arg(long)]
    runtime_dir: Option<std::path::PathBuf>,
    #[arg(long)]
    json: bool,
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

struct Figure {
    name: &'static str,
    n: usize,
    p50: Duration,
    p99: Duration,
    target: &'static str,
}

fn time(
    n: usize,
    mut f: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<(Duration, Duration)> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f()?;
        v.push(t.elapsed());
    }
    v.sort_unstable();
    Ok((pct(&v, 0.5), pct(&v, 0.99)))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let key = MasterKey::new(b"benchmark master key, 32 bytes long".to_vec(), "bench")?;
    let admin = Actor::peer(0, Some(Role::Admin), "uid 0 (root)".into());
    let names: Vec<String> = (0..args.grants).map(|i| format!("SECRET_{i:03}")).collect();
    {
        let s = Secrets::open(Arc::new(Store::open(dir.path())?), Some(&key), 10)?;
        let v = s.vault()?;
        for n in &names {
            v.set(
                &admin,
                n,
                SecretEnv::Production,
                &format!("sk-value-{n}-{}", "x".repeat(48)),
            )?;
        }
    }
    let mut figures = Vec::new();

    let (p50, p99) = time(5, || {
        ironcaged::secrets::crypto::derive_kek(key.expose(), &[7u8; 16])
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(())
    })?;
    figures.push(Figure {
        name: "one Argon2id alone (reference)",
        n: 5,
        p50,
        p99,
        target: "-",
    });

    let (p50, p99) = time(5, || {
        let s = Secrets::open(Arc::new(Store::open(dir.path())?), Some(&key), 10)?;
        drop(s);
        Ok(())
    })?;
    figures.push(Figure {
        name: "unlock (Argon2id + key check)",
        n: 5,
        p50,
        p99,
        target: "~ one Argon2id",
    });

    let s = Secrets::open(Arc::new(Store::open(dir.path())?), Some(&key), 10)?;
    let v = s.vault()?.clone();
    let (p50, p99) = time(args.reads, || {
        v.read_current(&names[7], SecretEnv::Production)?;
        Ok(())
    })?;
    figures.push(Figure {
        name: "secret read after unlock",
        n: args.reads,
        p50,
        p99,
        target: "<= 1 ms",
    });

    let (p50, p99) = time(200, || {
        v.get(&admin, &names[7], SecretEnv::Production, None)?;
        Ok(())
    })?;
    figures.push(Figure {
        name: "audited get (read + durable entry)",
        n: 200,
        p50,
        p99,
        target: "-",
    });

    // One entry per commit: the audit trail's per-transaction cost (fsync,
    // and with a master key one checkpoint HMAC per commit).
    let (p50, p99) = time(args.entries, || {
        s.audit()
            .record_durable_blocking(ironcaged::audit::Draft::new(
                Actor::daemon(),
                "bench entry",
                "",
                ironcage_shared::protocol::AuditOutcome::Ok,
            ))?;
        Ok(())
    })?;
    figures.push(Figure {
        name: "one durable audit entry (own commit)",
        n: args.entries,
        p50,
        p99,
        target: "-",
    });

    // A burst of lifecycle entries (1,000 agents starting), then one durable
    // entry: the writer thread group-commits the queue in a few transactions.
    let (p50, p99) = time(20, || {
        let audit = s.audit();
        for i in 0..1000 {
            audit.record(ironcaged::audit::Draft::new(
                Actor::daemon(),
                "agent started",
                format!("agent-{i}"),
                ironcage_shared::protocol::AuditOutcome::Ok,
            ));
        }
        audit.record_durable_blocking(ironcaged::audit::Draft::new(
            Actor::daemon(),
            "burst done",
            "",
            ironcage_shared::protocol::AuditOutcome::Ok,
        ))?;
        Ok(())
    })?;
    figures.push(Figure {
        name: "1,000 audit entries queued + durable",
        n: 20,
        p50,
        p99,
        target: "-",
    });

    let runtime = match &args.runtime_dir {
        Some(d) => d.clone(),
        None if std::path::Path::new("/dev/shm").is_dir() => std::path::PathBuf::from("/dev/shm"),
        None => dir.path().to_path_buf(),
    };
    let root = tempfile::Builder::new()
        .prefix("ironcage-bench-credentials-")
        .tempdir_in(&runtime)
        .with_context(|| format!("cannot create a directory in {}", runtime.display()))?;
    let grants: Vec<SecretGrant> = names
        .iter()
        .map(|n| SecretGrant {
            secret: SecretRef {
                name: n.clone(),
                env: SecretEnv::Production,
            },
            delivery: Delivery::File,
        })
        .collect();
    let (p50, p99) = time(args.spawns, || {
        let d = delivery::deliver(&v, "bench-agent", &grants, root.path(), None)?;
        anyhow::ensure!(d.dir.is_some());
        delivery::remove(root.path(), "bench-agent");
        Ok(())
    })?;
    figures.push(Figure {
        name: "spawn delivery of the grants (files)",
        n: args.spawns,
        p50,
        p99,
        target: "<= 5 ms for 50",
    });

    if args.json {
        let v: Vec<_> = figures
            .iter()
            .map(|f| serde_json::json!({"name": f.name, "n": f.n, "p50_us": us(f.p50), "p99_us": us(f.p99), "target": f.target}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"grants": args.grants, "figures": v})
            )?
        );
    } else {
        println!(
            "secrets-bench: {} grants per spawn, credentials in {}",
            args.grants,
            runtime.display()
        );
        for f in &figures {
            println!(
                "{:<40} n={:<6} p50 {:>10.1} us  p99 {:>10.1} us   target {}",
                f.name,
                f.n,
                us(f.p50),
                us(f.p99),
                f.target
            );
        }
    }
    Ok(())
}
