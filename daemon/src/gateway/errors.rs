//! Error responses shaped like each provider's own, so the official SDKs raise
//! a readable exception (`openai.APIStatusError`, `anthropic.APIStatusError`)
//! whose message is ours.

use super::Body;
use crate::config::ProviderKind;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

/// Builds an error response in `kind`'s JSON format.
pub fn error(
    kind: ProviderKind,
    status: StatusCode,
    err_type: &str,
    code: &str,
    message: &str,
) -> Response<Body> {
    let body = match kind {
        ProviderKind::OpenAi => serde_json::json!({
            "error": { "message": message, "type": err_type, "param": null, "code": code }
        }),
        ProviderKind::Anthropic => serde_json::json!({
            "type": "error",
            "error": { "type": err_type, "message": message }
        }),
    };
    let mut resp = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().insert(
        "x-iron-cage-error",
        HeaderValue::from_str(code).unwrap_or(HeaderValue::from_static("error")),
    );
    resp
}

pub fn unauthorized(kind: ProviderKind) -> Response<Body> {
    error(
        kind,
        StatusCode::UNAUTHORIZED,
        "authentication_error",
        "invalid_virtual_key",
        "Iron Cage gateway: unknown or expired virtual API key. This gateway serves only agents started by ironcaged, with the key it put in OPENAI_API_KEY / ANTHROPIC_API_KEY; a restarted agent gets a new key.",
    )
}

pub fn budget_refused(kind: ProviderKind, message: &str) -> Response<Body> {
    let t = match kind {
        ProviderKind::OpenAi => "insufficient_quota",
        ProviderKind::Anthropic => "budget_exceeded_error",
    };
    error(
        kind,
        StatusCode::PAYMENT_REQUIRED,
        t,
        "budget_exceeded",
        &format!("Iron Cage: {message}"),
    )
}

pub fn bad_request(kind: ProviderKind, code: &str, message: &str) -> Response<Body> {
    error(
        kind,
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        code,
        &format!("Iron Cage gateway: {message}"),
    )
}

pub fn bad_gateway(kind: ProviderKind, message: &str) -> Response<Body> {
    error(
        kind,
        StatusCode::BAD_GATEWAY,
        "api_error",
        "upstream_unreachable",
        &format!("Iron Cage gateway: {message}"),
    )
}

pub fn unavailable(kind: ProviderKind, code: &str, message: &str) -> Response<Body> {
    error(
        kind,
        StatusCode::SERVICE_UNAVAILABLE,
        "api_error",
        code,
        &format!("Iron Cage gateway: {message}"),
    )
}

pub fn not_found(kind: ProviderKind, message: &str) -> Response<Body> {
    error(
        kind,
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "path_not_allowed",
        &format!("Iron Cage gateway: {message}"),
    )
}
