//! `ironctl secrets ...`: every operation runs on a blocking thread (Argon2id,
//! fsync'd commits), records its audit entry in the same transaction, and a
//! failure is on the record too.

use crate::audit::{Actor, Draft};
use crate::daemon::Daemon;
use crate::secrets::master::MasterKey;
use crate::secrets::{SecretsError, Vault};
use ironcage_shared::protocol::{
    AuditOutcome, ErrorCode, Response, SecretRef, SecretRollbackRequest, SecretSetRequest,
    SecretValue, SecretValueResponse, SecretsExportRequest, SecretsImportRequest,
    SecretsListRequest, SecretsRekeyRequest,
};
use std::sync::Arc;

fn code(e: &SecretsError) -> ErrorCode {
    match e {
        SecretsError::NotFound { .. } | SecretsError::VersionNotKept { .. } => ErrorCode::NotFound,
        SecretsError::Disabled | SecretsError::Invalid(_) | SecretsError::MasterKey(_) => {
            ErrorCode::Invalid
        }
        _ => ErrorCode::Internal,
    }
}

/// Runs `f` on a blocking thread with the unlocked vault. On failure records a
/// `failed` entry (`action` on `target`) and answers the error.
async fn run<T: Send + 'static>(
    d: &Daemon,
    actor: &Actor,
    action: &str,
    target: String,
    f: impl FnOnce(&Vault) -> Result<T, SecretsError> + Send + 'static,
    ok: impl FnOnce(T) -> Response,
) -> Response {
    let result = match d.secrets.vault() {
        Ok(v) => {
            let v: Arc<Vault> = v.clone();
            tokio::task::spawn_blocking(move || f(&v))
                .await
                .unwrap_or_else(|e| Err(SecretsError::Invalid(format!("internal error: {e}"))))
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(t) => ok(t),
        Err(e) => {
            let msg = e.to_string();
            let draft =
                Draft::new(actor.clone(), action, target, AuditOutcome::Failed).detail(&msg);
            if let Err(ae) = d.secrets.audit().record_durable(draft).await {
                tracing::error!("cannot record a failed {action}: {ae}");
            }
            Response::error(code(&e), msg)
        }
    }
}

pub async fn list(d: &Daemon, actor: &Actor, r: SecretsListRequest) -> Response {
    run(
        d,
        actor,
        "secrets list",
        r.env.map_or("*".into(), |e| e.to_string()),
        move |v| v.list(r.env),
        Response::Secrets,
    )
    .await
}

pub async fn get(d: &Daemon, actor: &Actor, r: SecretRef) -> Response {
    let a = actor.clone();
    let t = format!("{}@{}", r.name, r.env);
    run(
        d,
        actor,
        "secrets get",
        t,
        move |v| {
            let (version, s) = v.get(&a, &r.name, r.env, r.version)?;
            Ok(SecretValueResponse {
                name: r.name,
                env: r.env,
                version,
                value: SecretValue::new(s.expose().to_owned()),
            })
        },
        Response::SecretValue,
    )
    .await
}

pub async fn set(d: &Daemon, actor: &Actor, r: SecretSetRequest) -> Response {
    let a = actor.clone();
    let t = format!("{}@{}", r.name, r.env);
    let (name, env) = (r.name.clone(), r.env);
    run(d, actor, "secrets set", t, move |v| v.set(&a, &r.name, r.env, r.value.expose()), move |version| {
        Response::ok(format!(
            "stored {name}@{env} version {version}; running agents and the gateway pick it up on `ironctl secrets reload` or SIGUSR1"
        ))
    })
    .await
}

pub async fn rm(d: &Daemon, actor: &Actor, r: SecretRef) -> Response {
    let a = actor.clone();
    let t = format!("{}@{}", r.name, r.env);
    let (name, env) = (r.name.clone(), r.env);
    run(
        d,
        actor,
        "secrets rm",
        t,
        move |v| v.remove(&a, &r.name, r.env),
        move |n| Response::ok(format!("removed {name}@{env} ({n} versions)")),
    )
    .await
}

pub async fn versions(d: &Daemon, actor: &Actor, r: SecretRef) -> Response {
    let t = format!("{}@{}", r.name, r.env);
    run(
        d,
        actor,
        "secrets versions",
        t,
        move |v| v.versions(&r.name, r.env),
        Response::SecretVersions,
    )
    .await
}

pub async fn rollback(d: &Daemon, actor: &Actor, r: SecretRollbackRequest) -> Response {
    let a = actor.clone();
    let t = format!("{}@{}", r.name, r.env);
    let (name, env, version) = (r.name.clone(), r.env, r.version);
    run(
        d,
        actor,
        "secrets rollback",
        t,
        move |v| v.rollback(&a, &r.name, r.env, r.version),
        move |new| {
            Response::ok(format!(
                "{name}@{env} has the value of version {version} again, as version {new}; `ironctl secrets reload` hands it out"
            ))
        },
    )
    .await
}

pub async fn rekey(d: &Daemon, actor: &Actor, r: SecretsRekeyRequest) -> Response {
    let a = actor.clone();
    run(d, actor, "secrets rekey", "master key".into(), move |v| {
        let key = MasterKey::new(r.new_master_key.expose().as_bytes().to_vec(), "the new master key")?;
        v.rekey(&a, &key)
    }, |n| {
        Response::ok(format!(
            "re-wrapped {n} data keys under the new master key. Put the new key where ironcaged reads it ({}, the key file or the systemd credential) now: the old key no longer opens the store at the next start",
            crate::secrets::master::ENV_VAR
        ))
    })
    .await
}

pub async fn reload(d: &Daemon, actor: &Actor) -> Response {
    match d.reload_secrets(actor).await {
        Ok(summary) => Response::ok(summary),
        Err(e) => Response::error(
            ErrorCode::Invalid,
            format!("secrets reload failed, the running keys and files stay: {e}"),
        ),
    }
}

pub async fn export(d: &Daemon, actor: &Actor, r: SecretsExportRequest) -> Response {
    let a = actor.clone();
    run(
        d,
        actor,
        "secrets export",
        r.env.map_or("*".into(), |e| e.to_string()),
        move |v| crate::secrets::transfer::export(v, &a, r.format, r.env),
        Response::SecretsDocument,
    )
    .await
}

pub async fn import(d: &Daemon, actor: &Actor, r: SecretsImportRequest) -> Response {
    let a = actor.clone();
    run(
        d,
        actor,
        "secrets import",
        r.env.to_string(),
        move |v| crate::secrets::transfer::import(v, &a, r.format, r.env, r.document.expose()),
        |n| {
            Response::ok(format!(
                "imported {n} secrets; `ironctl secrets reload` hands them out"
            ))
        },
    )
    .await
}
