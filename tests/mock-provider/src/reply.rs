//! Building responses: JSON documents, SSE streams and each provider's error shape.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};
use hyper::ext::ReasonPhrase;
use serde::Serialize;
use serde_json::{Value, json};

use crate::body::MockBody;
use crate::usage::{Usage, UsageOverride};

/// Which API family a path belongs to; decides auth and the error shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Provider {
    OpenAi,
    Anthropic,
}

/// What one API call needs to render its answer.
#[derive(Debug)]
pub(crate) struct Call {
    /// Unique per request; goes into ids.
    pub(crate) seq: u64,
    pub(crate) created: u64,
    pub(crate) model: String,
    pub(crate) usage: UsageOverride,
    pub(crate) no_usage: bool,
    pub(crate) chunk_delay: Option<Duration>,
    /// From `x-mock-drop-after` (never 0: that is handled before the call) or a
    /// per-model `drop_after` fault (0 there: headers, then the abort).
    pub(crate) drop_after: Option<usize>,
    /// From `x-mock-reply`: the output text instead of `w1 w2 ...`.
    pub(crate) reply: Option<String>,
    /// From `x-mock-reply-chunk`: bytes per streamed piece of `reply` (default 5).
    pub(crate) reply_chunk: usize,
    /// From `x-mock-thinking`: Anthropic answers start with a `thinking` block
    /// of this text (streamed in `reply_chunk` pieces).
    pub(crate) thinking: Option<String>,
}

impl Call {
    /// The whole output text for `n` output tokens.
    pub(crate) fn text(&self, n: u64) -> String {
        match &self.reply {
            Some(r) => r.clone(),
            None => crate::usage::output_text(n),
        }
    }

    /// The streamed pieces of [`Call::text`]: one word each, or `reply` cut
    /// every `reply_chunk` bytes (on character boundaries).
    pub(crate) fn pieces(&self, n: u64) -> Vec<String> {
        let Some(r) = &self.reply else {
            return (1..=n).map(crate::usage::delta_word).collect();
        };
        self.chunks(r)
    }

    /// `r` cut every `reply_chunk` bytes (on character boundaries).
    pub(crate) fn chunks(&self, r: &str) -> Vec<String> {
        let step = self.reply_chunk.max(1);
        let mut out = Vec::new();
        let mut start = 0;
        while start < r.len() {
            let mut end = (start + step).min(r.len());
            while !r.is_char_boundary(end) {
                end += 1;
            }
            out.push(r[start..end].to_owned());
            start = end;
        }
        out
    }

    pub(crate) fn usage(&self, prompt: u64, completion: u64) -> Usage {
        self.usage.apply(prompt, completion)
    }

    /// A 200 JSON answer; with `x-mock-drop-after` it is cut in half and aborted.
    pub(crate) fn json(&self, provider: Provider, value: &impl Serialize) -> Response<MockBody> {
        let bytes = Bytes::from(to_vec(value));
        match self.drop_after {
            None => json_bytes(provider, self.seq, StatusCode::OK, bytes),
            Some(_) => {
                let len = bytes.len();
                let mut response = base(provider, self.seq, StatusCode::OK, "application/json")
                    .body(MockBody::truncated(bytes))
                    .unwrap_or_else(|_| unreachable_response());
                response
                    .headers_mut()
                    .insert(CONTENT_LENGTH, HeaderValue::from(len));
                response
            }
        }
    }

    /// A 200 SSE answer, one event per flush.
    pub(crate) fn stream(&self, provider: Provider, events: Vec<Bytes>) -> Response<MockBody> {
        base(
            provider,
            self.seq,
            StatusCode::OK,
            "text/event-stream; charset=utf-8",
        )
        .header(CACHE_CONTROL, "no-cache")
        .body(MockBody::events(events, self.chunk_delay, self.drop_after))
        .unwrap_or_else(|_| unreachable_response())
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(crate) fn to_vec(value: &impl Serialize) -> Vec<u8> {
    // Serializing a `Value` or plain derived structs cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

/// `data: {json}\n\n`
pub(crate) fn sse_data(value: &impl Serialize) -> Bytes {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(&to_vec(value));
    out.extend_from_slice(b"\n\n");
    out.into()
}

/// `event: name\ndata: {json}\n\n`
pub(crate) fn sse_event(name: &str, value: &impl Serialize) -> Bytes {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(&to_vec(value));
    out.extend_from_slice(b"\n\n");
    out.into()
}

fn base(
    provider: Provider,
    seq: u64,
    status: StatusCode,
    content_type: &str,
) -> http::response::Builder {
    let request_id_header = match provider {
        Provider::OpenAi => "x-request-id",
        Provider::Anthropic => "request-id",
    };
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, content_type)
        .header(request_id_header, format!("req_mock{seq:016x}"))
}

fn unreachable_response() -> Response<MockBody> {
    // Only reachable if a header value above were invalid, which they never are.
    let mut response = Response::new(MockBody::full(Bytes::new()));
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response
}

pub(crate) fn json_bytes(
    provider: Provider,
    seq: u64,
    status: StatusCode,
    bytes: Bytes,
) -> Response<MockBody> {
    base(provider, seq, status, "application/json")
        .body(MockBody::full(bytes))
        .unwrap_or_else(|_| unreachable_response())
}

/// A JSON answer for the control endpoints (`/_mock/...`).
pub(crate) fn control_json(status: StatusCode, value: &impl Serialize) -> Response<MockBody> {
    let mut response = Response::new(MockBody::full(to_vec(value)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// An error in the provider's own shape, which its SDK turns into the right
/// exception (`openai.RateLimitError`, `anthropic.OverloadedError`, ...).
pub(crate) fn error(
    provider: Provider,
    seq: u64,
    status: u16,
    message: &str,
    retry_after: Option<u64>,
) -> Response<MockBody> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = match provider {
        Provider::OpenAi => openai_error_body(status, message),
        Provider::Anthropic => anthropic_error_body(status, message, seq),
    };
    let mut response = json_bytes(provider, seq, status, to_vec(&body).into());
    if status.canonical_reason().is_none() {
        // hyper would write "529 <none>"; give it a phrase like the providers do.
        let phrase = if status.as_u16() == 529 {
            ReasonPhrase::from_static(b"Overloaded")
        } else {
            ReasonPhrase::from_static(b"Error")
        };
        response.extensions_mut().insert(phrase);
    }
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

fn openai_error_body(status: StatusCode, message: &str) -> Value {
    let (kind, code) = match status.as_u16() {
        401 => ("invalid_request_error", Value::from("invalid_api_key")),
        403 => (
            "invalid_request_error",
            Value::from("unsupported_country_region_territory"),
        ),
        404 => ("invalid_request_error", Value::Null),
        429 => ("requests", Value::from("rate_limit_exceeded")),
        500..=599 => ("server_error", Value::Null),
        _ => ("invalid_request_error", Value::Null),
    };
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

fn anthropic_error_body(status: StatusCode, message: &str, seq: u64) -> Value {
    let kind = match status.as_u16() {
        400 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    };
    json!({
        "type": "error",
        "error": {"type": kind, "message": message},
        "request_id": format!("req_mock{seq:016x}"),
    })
}

/// The message of an injected error.
pub(crate) fn injected_message(provider: Provider, status: u16) -> String {
    match (provider, status) {
        (Provider::Anthropic, 529) => "Overloaded".to_owned(),
        (Provider::OpenAi, 429) => "Rate limit reached (mock provider: injected 429)".to_owned(),
        (Provider::Anthropic, 429) => {
            "Number of requests has exceeded your rate limit (mock provider: injected 429)"
                .to_owned()
        }
        (Provider::OpenAi, 500..=599) => format!(
            "The server had an error while processing your request. Sorry about that! (mock provider: injected {status})"
        ),
        _ => format!("mock provider: injected HTTP {status}"),
    }
}
