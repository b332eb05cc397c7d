//! `ironctl pii reveal TOKEN` (admin only: the connection loop refuses viewers).

use crate::audit::Actor;
use crate::daemon::Daemon;
use crate::pii_vault::{VaultError, record_reveal, token_for_log};
use ironcage_shared::protocol::{ErrorCode, PiiRevealRequest, PiiRevealed, Response};

/// Looks `r.token` up in the token store. Every attempt is recorded
/// ([`record_reveal`]) with `uid`, the token and the kind, never the value.
pub async fn reveal(d: &Daemon, actor: &Actor, r: PiiRevealRequest) -> Response {
    let uid = actor.uid.unwrap_or(u32::MAX);
    let Some(vault) = d.gateway.vault.clone() else {
        return Response::error(ErrorCode::Internal, "the PII token store is not open");
    };
    let token = r.token.clone();
    let logged = token_for_log(&r.token);
    let result = tokio::task::spawn_blocking(move || vault.reveal(&token)).await;
    match result {
        Ok(Ok(found)) => {
            record_reveal(uid, &logged, Ok(&found.kind));
            Response::PiiRevealed(PiiRevealed {
                token: logged.clone(),
                kind: found.kind.clone(),
                value: found.value.as_str().to_owned(),
            })
        }
        Ok(Err(e)) => {
            let code = match e {
                VaultError::BadToken => ErrorCode::Invalid,
                VaultError::NotFound { .. } => ErrorCode::NotFound,
                _ => ErrorCode::Internal,
            };
            let msg = e.to_string();
            record_reveal(uid, &logged, Err(&msg));
            Response::error(code, msg)
        }
        Err(_) => {
            record_reveal(uid, &logged, Err("the reveal task failed"));
            Response::error(ErrorCode::Internal, "the reveal task failed")
        }
    }
}
