//! The control server: `ironctl` and other clients on the Unix socket.
//!
//! One task per connection. The first frame must be a `Hello` with our protocol
//! version; then each request frame gets one response frame. Any bad frame (too
//! large, truncated, undecodable) gets an error reply when possible and closes
//! *that* connection only. Authorization happens once per connection from the
//! peer's kernel credentials, and again per request against its role.

pub mod auth;
pub mod handlers;

use crate::audit::{Actor, Draft};
use crate::daemon::Daemon;
use auth::Peer;
use ironcage_shared::framing::{self, FrameError};
use ironcage_shared::protocol::{
    AuditOutcome, ErrorCode, HelloResponse, PROTOCOL_VERSION, Request, Response, Role,
};
use std::sync::Arc;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

/// Accepts connections until `shutdown` flips to true.
pub async fn serve(
    listener: UnixListener,
    daemon: Arc<Daemon>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let daemon = daemon.clone();
                    let shutdown = shutdown.clone();
                    tokio::spawn(async move {
                        if let Err(e) = connection(stream, daemon, shutdown).await {
                            tracing::debug!("control connection closed: {e}");
                        }
                    });
                }
                Err(e) => {
                    // EMFILE and friends: log and keep serving.
                    tracing::warn!("accept on the control socket failed: {e}");
                    tokio::task::yield_now().await;
                }
            },
        }
    }
}

async fn send(stream: &mut UnixStream, resp: &Response) -> Result<(), FrameError> {
    framing::write_message(stream, resp).await
}

/// Reads one request; on a bad frame answers with an error (if the socket still
/// takes it) and returns the error so the caller closes the connection.
async fn read_request(stream: &mut UnixStream) -> Result<Option<Request>, FrameError> {
    let payload = match framing::read_frame(stream).await {
        Ok(Some(p)) => p,
        Ok(None) => return Ok(None),
        Err(e) => {
            if !matches!(e, FrameError::Io(_) | FrameError::Truncated { .. }) {
                let _ = send(
                    stream,
                    &Response::error(
                        ErrorCode::Malformed,
                        format!("bad frame: {e}; closing the connection"),
                    ),
                )
                .await;
            }
            return Err(e);
        }
    };
    match framing::decode::<Request>(&payload) {
        Ok(r) => Ok(Some(r)),
        Err(e) => {
            let _ = send(
                stream,
                &Response::error(
                    ErrorCode::Malformed,
                    format!("cannot decode the request ({e}); is the client from a different release? closing the connection"),
                ),
            )
            .await;
            Err(e)
        }
    }
}

async fn connection(
    mut stream: UnixStream,
    daemon: Arc<Daemon>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), FrameError> {
    let peer = Peer::from_stream(&stream)?;
    let hello = match read_request(&mut stream).await? {
        None => return Ok(()),
        Some(Request::Hello(h)) => h,
        Some(other) => {
            let msg = format!(
                "expected Hello first, got `{}`; closing the connection",
                other.name()
            );
            send(&mut stream, &Response::error(ErrorCode::HelloRequired, msg)).await?;
            return Ok(());
        }
    };
    if hello.protocol_version != PROTOCOL_VERSION {
        let msg = format!(
            "protocol version mismatch: the client ({}) speaks v{}, this ironcaged {} speaks v{}; use an ironctl from the same release as the daemon",
            hello.client,
            hello.protocol_version,
            env!("CARGO_PKG_VERSION"),
            PROTOCOL_VERSION
        );
        tracing::warn!(uid = peer.uid, "{msg}");
        send(
            &mut stream,
            &Response::error(ErrorCode::VersionMismatch, msg),
        )
        .await?;
        return Ok(());
    }
    let config = daemon.config();
    let Some(role) = auth::role_for(&peer, &config.access, daemon.daemon_uid) else {
        let msg = if peer.in_agent {
            "this process runs inside an agent supervised by ironcaged, and agents may not use the control socket; an agent asks the daemon through its own channel (the iron_cage module, IRONCAGE_FD)".to_owned()
        } else {
            format!(
                "{} may not use this socket: it needs the viewer or admin role; add \"uid:{}\" (or its user or group) to [access] viewers or admins in {}",
                peer.describe(),
                peer.uid,
                daemon.paths.config.display()
            )
        };
        tracing::warn!(uid = peer.uid, pid = ?peer.pid, "refused control connection: no role");
        let denial = Draft::new(
            Actor::peer(peer.uid, None, peer.describe()),
            "connect",
            "control socket",
            AuditOutcome::Denied,
        )
        .detail(if peer.in_agent {
            "caller runs inside an agent"
        } else {
            "no role"
        });
        if let Err(e) = daemon.secrets.audit().record_durable(denial).await {
            tracing::error!("cannot record a denial: {e}");
        }
        send(
            &mut stream,
            &Response::error(ErrorCode::PermissionDenied, msg),
        )
        .await?;
        return Ok(());
    };
    send(
        &mut stream,
        &Response::Hello(HelloResponse {
            protocol_version: PROTOCOL_VERSION,
            daemon_version: env!("CARGO_PKG_VERSION").to_owned(),
            role,
        }),
    )
    .await?;

    let actor = Actor::peer(peer.uid, Some(role), peer.describe());
    while let Some(req) = read_request(&mut stream).await? {
        if req.requires_admin() && role != Role::Admin {
            let msg = format!(
                "{} has role {}; `{}` needs role admin",
                peer.describe(),
                role.as_str(),
                req.name()
            );
            tracing::warn!(uid = peer.uid, request = req.name(), "permission denied");
            let denial = Draft::new(
                actor.clone(),
                req.name(),
                handlers::target(&req),
                AuditOutcome::Denied,
            )
            .detail(format!("needs role admin, has {}", role.as_str()));
            if let Err(e) = daemon.secrets.audit().record_durable(denial).await {
                tracing::error!("cannot record a denial: {e}");
            }
            send(
                &mut stream,
                &Response::error(ErrorCode::PermissionDenied, msg),
            )
            .await?;
            continue;
        }
        if let Request::AgentLogs(l) = &req
            && l.follow
        {
            return handlers::agents::follow_logs(&mut stream, &daemon, l, shutdown.clone()).await;
        }
        if matches!(req, Request::Hello(_)) {
            send(
                &mut stream,
                &Response::error(
                    ErrorCode::Invalid,
                    "Hello was already exchanged on this connection",
                ),
            )
            .await?;
            continue;
        }
        tracing::debug!(uid = peer.uid, request = req.name(), "control request");
        let resp = handlers::handle_as(&daemon, &actor, req).await;
        send(&mut stream, &resp).await?;
    }
    Ok(())
}
