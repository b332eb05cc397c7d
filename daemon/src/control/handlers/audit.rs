//! `ironctl audit tail|verify|export`.

use crate::daemon::Daemon;
use ironcage_shared::protocol::{AuditAnchor, AuditTailRequest, ErrorCode, Response};
use std::time::Duration;

/// Most entries in one answer (frames are at most 1 MiB).
pub const MAX_PAGE: u32 = 1000;

pub async fn tail(d: &Daemon, r: AuditTailRequest) -> Response {
    let log = d.secrets.audit().log().clone();
    let limit = r.limit.clamp(1, MAX_PAGE) as usize;
    if let Some(after) = r.after
        && r.wait_ms > 0
        && log.last_seq() <= after
    {
        let mut rx = log.subscribe();
        let _ = tokio::time::timeout(
            Duration::from_millis(u64::from(r.wait_ms)),
            rx.wait_for(|seq| *seq > after),
        )
        .await;
    }
    match tokio::task::spawn_blocking(move || log.entries(r.after, limit)).await {
        Ok(Ok(entries)) => Response::AuditEntries(entries),
        Ok(Err(e)) => Response::error(ErrorCode::Internal, e.to_string()),
        Err(e) => Response::error(ErrorCode::Internal, e.to_string()),
    }
}

pub async fn verify(d: &Daemon) -> Response {
    let log = d.secrets.audit().log().clone();
    match tokio::task::spawn_blocking(move || log.verify()).await {
        Ok(Ok(report)) => Response::AuditVerify(report),
        Ok(Err(e)) => Response::error(ErrorCode::Internal, e.to_string()),
        Err(e) => Response::error(ErrorCode::Internal, e.to_string()),
    }
}

/// `audit verify --anchor SEQ:MAC`: a malformed MAC is refused with what to
/// pass; otherwise the report carries `anchor_error` when the anchor fails.
pub async fn verify_anchored(d: &Daemon, a: AuditAnchor) -> Response {
    let Some(mac) = crate::audit::log::unhex32(&a.mac) else {
        return Response::error(
            ErrorCode::Invalid,
            format!(
                "the anchor MAC must be 64 hex digits (the `head_mac` or the part after `:` of `anchor` that `ironctl audit verify` printed); got {} characters",
                a.mac.len()
            ),
        );
    };
    let log = d.secrets.audit().log().clone();
    match tokio::task::spawn_blocking(move || log.verify_anchored(a.seq, &mac)).await {
        Ok(Ok(report)) => Response::AuditVerify(report),
        Ok(Err(e)) => Response::error(ErrorCode::Internal, e.to_string()),
        Err(e) => Response::error(ErrorCode::Internal, e.to_string()),
    }
}
