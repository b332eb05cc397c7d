//! `ironctl secrets list|get|set|rm|versions|rollback|reload|rekey|export|import`.
//!
//! Values never travel on the command line (where `ps` and shell history see
//! them): `set` reads `--value-stdin` or `--from-file`, `rekey` the new key the
//! same way, and `export --output` creates its file with mode 0600.

use super::{Ctx, mutate};
use crate::client::ClientError;
use crate::output::{self, Align, Table};
use crate::utc;
use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use ironcage_shared::protocol::{
    Request, Response, SecretEnv, SecretRef, SecretRollbackRequest, SecretSetRequest, SecretValue,
    SecretsExportRequest, SecretsFormat, SecretsImportRequest, SecretsListRequest,
    SecretsRekeyRequest,
};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

#[derive(Debug, Clone, Args)]
pub struct EnvArg {
    /// Environment: development, staging or production.
    #[arg(
        long = "env",
        short = 'e',
        value_name = "ENV",
        default_value = "production"
    )]
    pub env: SecretEnv,
}

#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub struct ValueSource {
    /// Read the value from standard input (one trailing newline is dropped).
    #[arg(long)]
    pub value_stdin: bool,
    /// Read the value from this file (one trailing newline is dropped).
    #[arg(long, value_name = "FILE")]
    pub from_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub struct NewKeySource {
    /// Read the new master key from standard input.
    #[arg(long)]
    pub new_key_stdin: bool,
    /// Read the new master key from this file.
    #[arg(long, value_name = "FILE")]
    pub new_key_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Every secret's metadata with a masked value (viewers may run this).
    List {
        /// Only this environment.
        #[arg(long = "env", short = 'e', value_name = "ENV")]
        env: Option<SecretEnv>,
    },
    /// Print a secret's value (admin; the read is audited).
    Get {
        name: String,
        #[command(flatten)]
        env: EnvArg,
        /// A kept older version instead of the current one.
        #[arg(long = "at-version", value_name = "N")]
        at_version: Option<u32>,
    },
    /// Store a new version of a secret (never give the value as an argument).
    Set {
        name: String,
        #[command(flatten)]
        env: EnvArg,
        #[command(flatten)]
        source: ValueSource,
    },
    /// Remove a secret and all its versions.
    Rm {
        name: String,
        #[command(flatten)]
        env: EnvArg,
    },
    /// A secret's kept versions.
    Versions {
        name: String,
        #[command(flatten)]
        env: EnvArg,
    },
    /// Make a kept older version's value current again (stored as a new version).
    Rollback {
        name: String,
        /// The version to return to (see `secrets versions`).
        #[arg(value_name = "VERSION")]
        to_version: u32,
        #[command(flatten)]
        env: EnvArg,
    },
    /// Hand the current values to the gateway and running agents (as SIGUSR1).
    Reload,
    /// Re-wrap every data key under a new master key.
    Rekey {
        #[command(flatten)]
        source: NewKeySource,
    },
    /// Export current values (admin, audited) as Vault KV v2 JSON or a flat map.
    Export {
        /// vault-kv2 (`vault kv get -format=json` documents) or flat (`{"KEY": "value"}`).
        #[arg(long, default_value = "vault-kv2")]
        format: SecretsFormat,
        /// Only this environment (required for flat).
        #[arg(long = "env", short = 'e', value_name = "ENV")]
        env: Option<SecretEnv>,
        /// Write to this new file (created 0600) instead of standard output.
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Import a document from `secrets export` or Vault (`-` = standard input).
    Import {
        file: PathBuf,
        /// Detected from the document when omitted.
        #[arg(long)]
        format: Option<SecretsFormat>,
        /// Environment for flat documents.
        #[command(flatten)]
        env: EnvArg,
    },
}

/// Reads all of `r` into a buffer zeroized on drop. It grows by copying into
/// a new zeroized buffer (the old one is wiped as it is dropped), so no
/// reallocation leaves a copy of the value behind in freed memory.
fn read_zeroizing(mut r: impl Read, hint: usize) -> std::io::Result<Zeroizing<Vec<u8>>> {
    let mut buf = Zeroizing::new(Vec::with_capacity(hint.max(4096)));
    let mut chunk = Zeroizing::new([0u8; 4096]);
    loop {
        let n = match r.read(&mut chunk[..]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.len() + n > buf.capacity() {
            let mut bigger = Zeroizing::new(Vec::with_capacity(
                (buf.len() + n).max(buf.capacity().saturating_mul(2)),
            ));
            bigger.extend_from_slice(&buf);
            buf = bigger;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(buf)
}

/// Reads a value from stdin or a file, dropping one trailing newline. Every
/// buffer that holds it is zeroized.
fn read_value(stdin: bool, file: Option<&Path>) -> anyhow::Result<SecretValue> {
    let mut buf = match file {
        Some(f) => {
            let fh =
                std::fs::File::open(f).with_context(|| format!("cannot read {}", f.display()))?;
            let hint = fh.metadata().map_or(0, |m| m.len() as usize + 1);
            read_zeroizing(fh, hint).with_context(|| format!("cannot read {}", f.display()))?
        }
        None if stdin => read_zeroizing(std::io::stdin().lock(), 0)
            .context("cannot read the value from standard input")?,
        None => bail!("give --value-stdin or --from-file"),
    };
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    }
    if buf.is_empty() {
        bail!("the value is empty; nothing was sent");
    }
    match String::from_utf8(std::mem::take(&mut *buf)) {
        Ok(s) => Ok(SecretValue::new(s)),
        Err(e) => {
            drop(Zeroizing::new(e.into_bytes()));
            bail!("the value is not UTF-8 text; nothing was sent")
        }
    }
}

pub fn run(ctx: &Ctx, c: SecretsCommand) -> anyhow::Result<()> {
    match c {
        SecretsCommand::List { env } => list(ctx, env),
        SecretsCommand::Get {
            name,
            env,
            at_version,
        } => get(ctx, name, env.env, at_version),
        SecretsCommand::Set { name, env, source } => {
            let value = read_value(source.value_stdin, source.from_file.as_deref())?;
            mutate(
                ctx,
                Request::SecretSet(SecretSetRequest {
                    name,
                    env: env.env,
                    value,
                }),
            )
        }
        SecretsCommand::Rm { name, env } => mutate(
            ctx,
            Request::SecretRm(SecretRef {
                name,
                env: env.env,
                version: None,
            }),
        ),
        SecretsCommand::Versions { name, env } => versions(ctx, name, env.env),
        SecretsCommand::Rollback {
            name,
            to_version,
            env,
        } => mutate(
            ctx,
            Request::SecretRollback(SecretRollbackRequest {
                name,
                env: env.env,
                version: to_version,
            }),
        ),
        SecretsCommand::Reload => mutate(ctx, Request::SecretsReload),
        SecretsCommand::Rekey { source } => {
            let key = read_value(source.new_key_stdin, source.new_key_file.as_deref())?;
            mutate(
                ctx,
                Request::SecretsRekey(SecretsRekeyRequest {
                    new_master_key: key,
                }),
            )
        }
        SecretsCommand::Export {
            format,
            env,
            output,
        } => export(ctx, format, env, output.as_deref()),
        SecretsCommand::Import { file, format, env } => {
            let doc = if file.as_os_str() == "-" {
                read_value(true, None)?
            } else {
                read_value(false, Some(&file))?
            };
            mutate(
                ctx,
                Request::SecretsImport(SecretsImportRequest {
                    format,
                    env: env.env,
                    document: doc,
                }),
            )
        }
    }
}

fn list(ctx: &Ctx, env: Option<SecretEnv>) -> anyhow::Result<()> {
    let req = Request::SecretsList(SecretsListRequest { env });
    let items = match ctx.call(&req)? {
        Response::Secrets(s) => s,
        other => return Err(ClientError::unexpected(&req, &other).into()),
    };
    let text = if ctx.json {
        output::json_pretty(&items)?
    } else {
        let mut t = Table::new(&[
            ("NAME", Align::Left),
            ("ENV", Align::Left),
            ("VERSION", Align::Right),
            ("KEPT", Align::Right),
            ("VALUE", Align::Left),
            ("UPDATED", Align::Left),
            ("BY", Align::Left),
        ]);
        for s in &items {
            t.row(vec![
                s.name.clone(),
                s.env.to_string(),
                s.version.to_string(),
                s.versions.to_string(),
                s.masked.clone(),
                utc::format_rfc3339_ms(s.updated_ms),
                s.updated_by.clone(),
            ]);
        }
        t.render()
    };
    output::emit(&text)?;
    Ok(())
}

fn get(ctx: &Ctx, name: String, env: SecretEnv, version: Option<u32>) -> anyhow::Result<()> {
    let req = Request::SecretGet(SecretRef { name, env, version });
    let v = match ctx.call(&req)? {
        Response::SecretValue(v) => v,
        other => return Err(ClientError::unexpected(&req, &other).into()),
    };
    let text = if ctx.json {
        output::json_pretty(&serde_json::json!({
            "name": v.name,
            "env": v.env,
            "version": v.version,
            "value": v.value.expose(),
        }))?
    } else {
        format!("{}\n", v.value.expose())
    };
    output::emit(&text)?;
    Ok(())
}

fn versions(ctx: &Ctx, name: String, env: SecretEnv) -> anyhow::Result<()> {
    let req = Request::SecretVersions(SecretRef {
        name,
        env,
        version: None,
    });
    let items = match ctx.call(&req)? {
        Response::SecretVersions(v) => v,
        other => return Err(ClientError::unexpected(&req, &other).into()),
    };
    let text = if ctx.json {
        output::json_pretty(&items)?
    } else {
        let mut t = Table::new(&[
            ("VERSION", Align::Right),
            ("CURRENT", Align::Left),
            ("CREATED", Align::Left),
            ("BY", Align::Left),
        ]);
        for v in &items {
            t.row(vec![
                v.version.to_string(),
                if v.current { "*".into() } else { String::new() },
                utc::format_rfc3339_ms(v.created_ms),
                v.created_by.clone(),
            ]);
        }
        t.render()
    };
    output::emit(&text)?;
    Ok(())
}

fn export(
    ctx: &Ctx,
    format: SecretsFormat,
    env: Option<SecretEnv>,
    out: Option<&Path>,
) -> anyhow::Result<()> {
    // Create the file first: a refusal should not cost an audited export.
    let file = match out {
        Some(p) => Some(output::create_private(p)?),
        None => None,
    };
    let req = Request::SecretsExport(SecretsExportRequest { format, env });
    let doc = match ctx.call(&req) {
        Ok(Response::SecretsDocument(d)) => d,
        Ok(other) => return Err(ClientError::unexpected(&req, &other).into()),
        Err(e) => {
            if let Some(p) = out {
                let _ = std::fs::remove_file(p);
            }
            return Err(e.into());
        }
    };
    match (file, out) {
        (Some(mut f), Some(p)) => {
            f.write_all(doc.expose().as_bytes())
                .and_then(|()| f.write_all(b"\n"))
                .and_then(|()| f.sync_all())
                .with_context(|| format!("cannot write {}", p.display()))?;
            eprintln!("exported to {} (mode 0600)", p.display());
        }
        // Straight from the zeroized document: no formatted copy.
        _ => {
            let mut out = std::io::stdout().lock();
            out.write_all(doc.expose().as_bytes())
                .and_then(|()| out.write_all(b"\n"))
                .and_then(|()| out.flush())
                .map_err(output::StdoutError)?;
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[command(subcommand)]
        c: super::SecretsCommand,
    }

    #[test]
    fn values_read_through_zeroized_buffers_whole_and_trimmed() {
        // Larger than the first buffer and the chunk: grows several times.
        let big: Vec<u8> = (0..100_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let got = super::read_zeroizing(&big[..], 0).unwrap();
        assert_eq!(&got[..], &big[..]);
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("v");
        std::fs::write(&f, "value with a newline\r\n").unwrap();
        let v = super::read_value(false, Some(&f)).unwrap();
        assert_eq!(v.expose(), "value with a newline");
        std::fs::write(&f, [0xff, 0xfe, b'x']).unwrap();
        let e = super::read_value(false, Some(&f)).unwrap_err().to_string();
        assert!(e.contains("not UTF-8"), "{e}");
        std::fs::write(&f, "\n").unwrap();
        assert!(super::read_value(false, Some(&f)).is_err());
    }

    #[test]
    fn every_subcommand_parses_and_values_never_come_from_argv() {
        for args in [
            &["t", "list", "--env", "staging"][..],
            &["t", "get", "K", "--at-version", "2", "-e", "dev"],
            &["t", "set", "K", "--value-stdin"],
            &["t", "set", "K", "--from-file", "/x"],
            &["t", "rm", "K"],
            &["t", "versions", "K"],
            &["t", "rollback", "K", "3", "--env", "production"],
            &["t", "reload"],
            &["t", "rekey", "--new-key-stdin"],
            &[
                "t", "export", "--format", "flat", "--env", "staging", "-o", "/tmp/x",
            ],
            &["t", "import", "-", "--format", "vault-kv2"],
        ] {
            T::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        }
        for bad in [
            &["t", "set", "K"][..],
            &["t", "set", "K", "the-value"],
            &["t", "set", "K", "--value-stdin", "--from-file", "/x"],
            &["t", "rekey"],
            &["t", "list", "--env", "qa"],
            &["t", "set", "K", "--value", "x"],
        ] {
            assert!(T::try_parse_from(bad).is_err(), "{bad:?} parsed");
        }
    }
}
