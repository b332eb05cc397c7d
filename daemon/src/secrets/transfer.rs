//! Export and import: HashiCorp Vault KV v2 documents (the `vault kv get
//! -format=json` shape, one per secret) and flat `{"NAME": "value"}` maps (for
//! `vault kv put PATH @file`). Our own timestamps, version and author travel
//! in `custom_metadata`, so export -> import -> export is identical.
//!
//! Values never pass through a `serde_json::Value` tree: export serializes
//! borrowed values into one exactly sized buffer that is zeroized on drop
//! (a [`SecretValue`]), and import deserializes them straight into
//! [`SecretValue`]s. (serde_json's internal scratch buffer for strings with
//! escapes is not ours to wipe.)

use super::SecretsError;
use super::vault::{ImportItem, Original, Vault};
use crate::audit::Actor;
use ironcage_shared::protocol::{SecretEnv, SecretValue, SecretsFormat};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use zeroize::Zeroizing;

fn rfc3339(ms: u64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

fn parse_rfc3339(s: &str) -> Option<u64> {
    let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// One `vault kv get -format=json` document, serialized from borrowed
/// values: no `serde_json::Value` copy of a secret is ever made.
#[derive(Serialize)]
struct KvDocOut<'a> {
    request_id: &'static str,
    lease_id: &'static str,
    lease_duration: u32,
    renewable: bool,
    data: KvDataOut<'a>,
    warnings: Option<()>,
}

#[derive(Serialize)]
struct KvDataOut<'a> {
    data: BTreeMap<&'a str, &'a str>,
    metadata: KvMetaOut,
}

#[derive(Serialize)]
struct KvMetaOut {
    created_time: String,
    custom_metadata: BTreeMap<&'static str, String>,
    deletion_time: &'static str,
    destroyed: bool,
    version: u32,
}

/// Serializes `v` pretty-printed into a buffer allocated once at its exact
/// size (a first pass counts the bytes), so no reallocation leaves a copy of
/// a value behind in freed memory; the result is zeroized on drop.
fn to_secret_json<T: Serialize>(v: &T) -> SecretValue {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut n = Count(0);
    serde_json::to_writer_pretty(&mut n, v).expect("serialize JSON");
    let mut buf = Zeroizing::new(Vec::with_capacity(n.0));
    serde_json::to_writer_pretty(&mut *buf, v).expect("serialize JSON");
    debug_assert_eq!(buf.len(), buf.capacity());
    let s = String::from_utf8(std::mem::take(&mut *buf)).expect("serde_json writes UTF-8");
    SecretValue::new(s)
}

/// The export document (JSON text, zeroized on drop). `flat` needs one
/// environment.
pub fn export(
    v: &Vault,
    actor: &Actor,
    format: SecretsFormat,
    env: Option<SecretEnv>,
) -> Result<SecretValue, SecretsError> {
    if format == SecretsFormat::Flat && env.is_none() {
        return Err(SecretsError::Invalid(
            "the flat format holds one environment; give --env".into(),
        ));
    }
    let all = v.read_all(actor, "secrets export", env)?;
    Ok(match format {
        SecretsFormat::Flat => {
            let m: BTreeMap<&str, &str> = all
                .iter()
                .map(|(info, s)| (info.name.as_str(), s.expose()))
                .collect();
            to_secret_json(&m)
        }
        SecretsFormat::VaultKv2 => {
            let docs: Vec<KvDocOut<'_>> = all
                .iter()
                .map(|(info, s)| KvDocOut {
                    request_id: "",
                    lease_id: "",
                    lease_duration: 0,
                    renewable: false,
                    data: KvDataOut {
                        data: BTreeMap::from([(info.name.as_str(), s.expose())]),
                        metadata: KvMetaOut {
                            created_time: rfc3339(info.updated_ms),
                            custom_metadata: BTreeMap::from([
                                ("ironcage_name", info.name.clone()),
                                ("ironcage_env", info.env.as_str().to_owned()),
                                ("ironcage_created_time", rfc3339(info.created_ms)),
                                ("ironcage_updated_time", rfc3339(info.updated_ms)),
                                ("ironcage_updated_by", info.updated_by.clone()),
                                ("ironcage_version", info.version.to_string()),
                            ]),
                            deletion_time: "",
                            destroyed: false,
                            version: info.version,
                        },
                    },
                    warnings: None,
                })
                .collect();
            to_secret_json(&docs)
        }
    })
}

fn invalid(m: impl Into<String>) -> SecretsError {
    SecretsError::Invalid(m.into())
}

/// One Vault KV v2 document as read: values straight into [`SecretValue`]s
/// (zeroized on drop), never a `serde_json::Value`.
#[derive(Deserialize)]
struct KvDocIn {
    data: KvDataIn,
}

#[derive(Deserialize)]
struct KvDataIn {
    data: BTreeMap<String, SecretValue>,
    #[serde(default)]
    metadata: Option<KvMetaIn>,
}

#[derive(Deserialize, Default)]
struct KvMetaIn {
    #[serde(default)]
    custom_metadata: Option<BTreeMap<String, String>>,
}

/// A parse error without the document's content: serde's data errors can
/// quote the offending value (`invalid type: string "..."`), so only the
/// position and what was expected of the shape are told.
fn parse_error(e: &serde_json::Error, shape: &str) -> SecretsError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => invalid(format!(
            "the document is not JSON (line {}, column {})",
            e.line(),
            e.column()
        )),
        Category::Data => invalid(format!(
            "the document is not {shape} (line {}, column {}: every value must be a string)",
            e.line(),
            e.column()
        )),
    }
}

const FLAT_SHAPE: &str = "a flat document (one JSON object of \"NAME\": \"value\")";
const VAULT_SHAPE: &str = "a Vault KV v2 document (`vault kv get -format=json` output, or an array of them, each with a data.data object)";

/// Parses `doc` (format detected when `None`) and sets every secret in it in
/// one transaction. Flat documents go to `env`; Vault documents carry their
/// environment in `custom_metadata.ironcage_env` (else `env`).
pub fn import(
    v: &Vault,
    actor: &Actor,
    format: Option<SecretsFormat>,
    env: SecretEnv,
    doc: &str,
) -> Result<usize, SecretsError> {
    let t = doc.trim_start();
    // Detected without building a JSON tree: an array is Vault's; an object
    // with a data.data object is Vault's; any other object is flat.
    let vault_docs: Option<Vec<KvDocIn>> = match format {
        Some(SecretsFormat::Flat) => None,
        Some(SecretsFormat::VaultKv2) if t.starts_with('[') => {
            Some(serde_json::from_str(doc).map_err(|e| parse_error(&e, VAULT_SHAPE))?)
        }
        Some(SecretsFormat::VaultKv2) => Some(vec![
            serde_json::from_str(doc).map_err(|e| parse_error(&e, VAULT_SHAPE))?,
        ]),
        None if t.starts_with('[') => {
            Some(serde_json::from_str(doc).map_err(|e| parse_error(&e, VAULT_SHAPE))?)
        }
        None => serde_json::from_str::<KvDocIn>(doc).ok().map(|d| vec![d]),
    };
    let mut items = Vec::new();
    match vault_docs {
        None => {
            let m: BTreeMap<String, SecretValue> =
                serde_json::from_str(doc).map_err(|e| parse_error(&e, FLAT_SHAPE))?;
            for (name, value) in m {
                items.push(ImportItem {
                    name,
                    env,
                    value,
                    original: None,
                });
            }
        }
        Some(docs) => {
            for (i, d) in docs.into_iter().enumerate() {
                let custom = d
                    .data
                    .metadata
                    .unwrap_or_default()
                    .custom_metadata
                    .unwrap_or_default();
                let cm = |k: &str| custom.get(k).map(String::as_str);
                let doc_env = match cm("ironcage_env") {
                    Some(e) => e
                        .parse::<SecretEnv>()
                        .map_err(|m| invalid(format!("document {i}: {m}")))?,
                    None => env,
                };
                let original = match (
                    cm("ironcage_version"),
                    cm("ironcage_created_time"),
                    cm("ironcage_updated_time"),
                ) {
                    (Some(ver), Some(c), Some(u)) => Some(Original {
                        version: ver.parse().map_err(|_| {
                            invalid(format!("document {i}: ironcage_version is not a number"))
                        })?,
                        created_ms: parse_rfc3339(c).ok_or_else(|| {
                            invalid(format!("document {i}: bad ironcage_created_time"))
                        })?,
                        updated_ms: parse_rfc3339(u).ok_or_else(|| {
                            invalid(format!("document {i}: bad ironcage_updated_time"))
                        })?,
                        updated_by: cm("ironcage_updated_by").unwrap_or("import").to_owned(),
                    }),
                    _ => None,
                };
                for (name, value) in d.data.data {
                    items.push(ImportItem {
                        name,
                        env: doc_env,
                        value,
                        original: original.clone(),
                    });
                }
            }
        }
    }
    if items.is_empty() {
        return Err(invalid(
            "the document holds no secrets; nothing was imported",
        ));
    }
    v.import(actor, &items)
}
