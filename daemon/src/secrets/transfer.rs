//! Export and import: HashiCorp Vault KV v2 documents (the `vault kv get
//! -format=json` shape, one per secret) and flat `{"NAME": "value"}` maps (for
//! `vault kv put PATH @file`). Our own timestamps, version and author travel
//! in `custom_metadata`, so export -> import -> export is identical.

use super::SecretsError;
use super::vault::{ImportItem, Original, Vault};
use crate::audit::Actor;
use ironcage_shared::protocol::{SecretEnv, SecretValue, SecretsFormat};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

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

/// The export document (JSON text). `flat` needs one environment.
pub fn export(
    v: &Vault,
    actor: &Actor,
    format: SecretsFormat,
    env: Option<SecretEnv>,
) -> Result<String, SecretsError> {
    if format == SecretsFormat::Flat && env.is_none() {
        return Err(SecretsError::Invalid(
            "the flat format holds one environment; give --env".into(),
        ));
    }
    let all = v.read_all(actor, "secrets export", env)?;
    let doc = match format {
        SecretsFormat::Flat => {
            let mut m = Map::new();
            for (info, s) in &all {
                m.insert(info.name.clone(), Value::String(s.expose().to_owned()));
            }
            Value::Object(m)
        }
        SecretsFormat::VaultKv2 => Value::Array(
            all.iter()
                .map(|(info, s)| {
                    let mut data = Map::new();
                    data.insert(info.name.clone(), Value::String(s.expose().to_owned()));
                    json!({
                        "request_id": "",
                        "lease_id": "",
                        "lease_duration": 0,
                        "renewable": false,
                        "data": {
                            "data": data,
                            "metadata": {
                                "created_time": rfc3339(info.updated_ms),
                                "custom_metadata": {
                                    "ironcage_name": info.name,
                                    "ironcage_env": info.env.as_str(),
                                    "ironcage_created_time": rfc3339(info.created_ms),
                                    "ironcage_updated_time": rfc3339(info.updated_ms),
                                    "ironcage_updated_by": info.updated_by,
                                    "ironcage_version": info.version.to_string(),
                                },
                                "deletion_time": "",
                                "destroyed": false,
                                "version": info.version,
                            }
                        },
                        "warnings": null
                    })
                })
                .collect(),
        ),
    };
    Ok(serde_json::to_string_pretty(&doc).expect("serialize JSON"))
}

fn invalid(m: impl Into<String>) -> SecretsError {
    SecretsError::Invalid(m.into())
}

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
    // serde_json errors name a line and column, never the content.
    let parsed: Value =
        serde_json::from_str(doc).map_err(|e| invalid(format!("the document is not JSON: {e}")))?;
    let is_vault = |d: &Value| d.get("data").and_then(|x| x.get("data")).is_some();
    let format = format.unwrap_or(match &parsed {
        Value::Array(_) => SecretsFormat::VaultKv2,
        d if is_vault(d) => SecretsFormat::VaultKv2,
        _ => SecretsFormat::Flat,
    });
    let mut items = Vec::new();
    match format {
        SecretsFormat::Flat => {
            let Value::Object(m) = parsed else {
                return Err(invalid(
                    "a flat document is one JSON object of \"NAME\": \"value\"",
                ));
            };
            for (k, val) in m {
                let Value::String(s) = val else {
                    return Err(invalid(format!("{k}: the value must be a string")));
                };
                items.push(ImportItem {
                    name: k,
                    env,
                    value: SecretValue::new(s),
                    original: None,
                });
            }
        }
        SecretsFormat::VaultKv2 => {
            let docs = match parsed {
                Value::Array(a) => a,
                d => vec![d],
            };
            for (i, d) in docs.into_iter().enumerate() {
                let data = d
                    .get("data")
                    .and_then(|x| x.get("data"))
                    .and_then(Value::as_object)
                    .ok_or_else(|| invalid(format!("document {i}: no data.data object (is it `vault kv get -format=json` output?)")))?;
                let meta = d.get("data").and_then(|x| x.get("metadata"));
                let custom = meta
                    .and_then(|m| m.get("custom_metadata"))
                    .and_then(Value::as_object);
                let cm = |k: &str| custom.and_then(|c| c.get(k)).and_then(Value::as_str);
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
                for (k, val) in data {
                    let Value::String(s) = val else {
                        return Err(invalid(format!(
                            "document {i}: {k}: the value must be a string"
                        )));
                    };
                    items.push(ImportItem {
                        name: k.clone(),
                        env: doc_env,
                        value: SecretValue::new(s.clone()),
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
