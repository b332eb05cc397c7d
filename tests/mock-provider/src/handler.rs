//! One API request, start to finish: count it, record it, apply the faults it asks
//! for, check its key, then answer as the provider would.
//!
//! Order: counters and recording → malformed `x-mock-*` header (400) →
//! `x-mock-delay-ms` → `x-mock-drop-after: 0` → unknown path (404) → auth (401) →
//! `x-mock-status` → per-model fault → body validation (400) → the endpoint.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderMap, Method, Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::Value;

use crate::body::MockBody;
use crate::reply::{self, Call, Provider};
use crate::state::{FaultAction, RecordedRequest, State};
use crate::summary::Summary;
use crate::usage::UsageOverride;
use crate::{anthropic, control, openai};

/// Largest request body accepted.
const MAX_BODY: usize = 32 * 1024 * 1024;

/// Returned to hyper to close the connection without writing any response.
#[derive(Debug)]
pub(crate) struct Dropped;

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("mock provider dropped the connection")
    }
}

impl std::error::Error for Dropped {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    ChatCompletions,
    Responses,
    Embeddings,
    Messages,
    CountTokens,
    Models,
}

fn route(method: &Method, path: &str) -> Option<Endpoint> {
    let path = path.strip_suffix('/').unwrap_or(path);
    match (method, path) {
        (&Method::POST, "/v1/chat/completions") => Some(Endpoint::ChatCompletions),
        (&Method::POST, "/v1/responses") => Some(Endpoint::Responses),
        (&Method::POST, "/v1/embeddings") => Some(Endpoint::Embeddings),
        (&Method::POST, "/v1/messages") => Some(Endpoint::Messages),
        (&Method::POST, "/v1/messages/count_tokens") => Some(Endpoint::CountTokens),
        (&Method::GET, "/v1/models") => Some(Endpoint::Models),
        _ => None,
    }
}

/// Anthropic paths, and `GET /v1/models` asked with Anthropic headers, get
/// Anthropic auth and error shapes; everything else is OpenAI's.
fn provider_of(endpoint: Option<Endpoint>, path: &str, headers: &HeaderMap) -> Provider {
    let anthropic_headers = headers.contains_key("anthropic-version")
        || (headers.contains_key("x-api-key") && !headers.contains_key(AUTHORIZATION));
    match endpoint {
        Some(Endpoint::Messages | Endpoint::CountTokens) => Provider::Anthropic,
        Some(Endpoint::Models) if anthropic_headers => Provider::Anthropic,
        None if path.starts_with("/v1/messages") => Provider::Anthropic,
        _ => Provider::OpenAi,
    }
}

/// The `x-mock-*` request headers.
#[derive(Debug, Default)]
struct HeaderFaults {
    status: Option<u16>,
    retry_after: Option<u64>,
    delay: Option<Duration>,
    chunk_delay: Option<Duration>,
    drop_after: Option<usize>,
    no_usage: bool,
    usage: UsageOverride,
    reply: Option<String>,
    reply_chunk: Option<usize>,
    thinking: Option<String>,
}

fn number<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, String> {
    value
        .trim()
        .parse()
        .map_err(|_| format!("{name}: not a non-negative integer: {value:?}"))
}

impl HeaderFaults {
    fn parse(headers: &HeaderMap) -> Result<Self, String> {
        let mut faults = Self::default();
        for (name, value) in headers {
            let name = name.as_str();
            let Some(suffix) = name.strip_prefix("x-mock-") else {
                continue;
            };
            let value = value
                .to_str()
                .map_err(|_| format!("{name}: not visible ASCII"))?;
            match suffix {
                "status" => {
                    let status: u16 = number(name, value)?;
                    if !(400..=599).contains(&status) {
                        return Err(format!("{name}: must be 400..=599, got {status}"));
                    }
                    faults.status = Some(status);
                }
                "retry-after" => faults.retry_after = Some(number(name, value)?),
                "delay-ms" => faults.delay = Some(Duration::from_millis(number(name, value)?)),
                "chunk-delay-ms" => {
                    faults.chunk_delay = Some(Duration::from_millis(number(name, value)?));
                }
                "drop-after" => faults.drop_after = Some(number(name, value)?),
                "no-usage" => {
                    faults.no_usage = matches!(value.trim(), "1" | "true" | "yes");
                }
                "usage" => faults.usage = UsageOverride::parse(value)?,
                "reply" => faults.reply = Some(value.to_owned()),
                "reply-chunk" => faults.reply_chunk = Some(number(name, value)?),
                "thinking" => faults.thinking = Some(value.to_owned()),
                // Unknown x-mock-* headers are ignored, like any other header.
                _ => {}
            }
        }
        Ok(faults)
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
}

/// `Ok(())`, or the 401 message.
///
/// OpenAI keys come as `Authorization: Bearer`. Anthropic keys come as `x-api-key`
/// or, as recent Anthropic SDKs send them, `Authorization: Bearer`; `x-api-key`
/// wins when both are present.
fn check_auth(state: &State, provider: Provider, headers: &HeaderMap) -> Result<(), String> {
    let (key, known) = match provider {
        Provider::OpenAi => (bearer(headers), &state.opts.openai_keys),
        Provider::Anthropic => {
            let api_key = headers
                .get("x-api-key")
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|k| !k.is_empty());
            (
                api_key.or_else(|| bearer(headers)),
                &state.opts.anthropic_keys,
            )
        }
    };
    let key = key.unwrap_or("");
    if key.is_empty() {
        return Err(match provider {
            Provider::OpenAi => "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).".to_owned(),
            Provider::Anthropic => "x-api-key header is required".to_owned(),
        });
    }
    if !known.is_empty() && !known.iter().any(|k| k == key) {
        return Err(match provider {
            Provider::OpenAi => {
                format!("Incorrect API key provided: {}. (mock provider)", mask(key))
            }
            Provider::Anthropic => "invalid x-api-key".to_owned(),
        });
    }
    Ok(())
}

/// `sk-abc...xyz` as OpenAI prints it: enough to tell keys apart, not to use one.
fn mask(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 8 {
        return "****".to_owned();
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}****{tail}")
}

fn record(
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    model: Option<&str>,
    json: Option<&Value>,
    bytes: &Bytes,
) -> RecordedRequest {
    let mut recorded_headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        recorded_headers
            .entry(name.as_str().to_owned())
            .and_modify(|existing| {
                existing.push_str(", ");
                existing.push_str(&value);
            })
            .or_insert(value);
    }
    let body = match json {
        Some(json) => json.clone(),
        None if bytes.is_empty() => Value::Null,
        None => Value::String(String::from_utf8_lossy(bytes).into_owned()),
    };
    RecordedRequest {
        method: method.to_string(),
        path: path.to_owned(),
        model: model.map(str::to_owned),
        headers: recorded_headers,
        body,
    }
}

/// The hyper service: every request on every connection comes here.
pub(crate) async fn handle(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<MockBody>, Dropped> {
    if request.uri().path().starts_with("/_mock") {
        return Ok(control::handle(&state, request).await);
    }
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    state.total.fetch_add(1, Ordering::Relaxed);
    state.by_path.incr(path);

    let endpoint = route(&parts.method, path);
    let provider = provider_of(endpoint, path, &parts.headers);
    let seq = state.next_id();
    let bytes = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) => {
            if err
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                let message = format!("request body larger than {MAX_BODY} bytes");
                return Ok(reply::error(provider, seq, 413, &message, None));
            }
            // The client went away mid-body.
            return Err(Dropped);
        }
    };
    // One pass over the body for what every endpoint needs; a full `Value` only
    // where it is needed (recording, Responses, Embeddings), off the hot path.
    let summary = if bytes.is_empty() {
        None
    } else {
        Summary::parse(&bytes).ok()
    };
    let model = summary.as_ref().and_then(|s| s.model.as_deref());
    if let Some(model) = model {
        state.by_model.incr(model);
    }
    if let Some(recorder) = &state.recorder {
        let json: Option<Value> = serde_json::from_slice(&bytes).ok();
        recorder.push(record(
            &parts.method,
            path,
            &parts.headers,
            model,
            json.as_ref(),
            &bytes,
        ));
    }

    let faults = match HeaderFaults::parse(&parts.headers) {
        Ok(faults) => faults,
        Err(message) => return Ok(reply::error(provider, seq, 400, &message, None)),
    };
    if let Some(delay) = faults.delay {
        tokio::time::sleep(delay).await;
    }
    if faults.drop_after == Some(0) {
        return Err(Dropped);
    }
    let Some(endpoint) = endpoint else {
        let message = format!("Invalid URL ({} {})", parts.method, path);
        return Ok(reply::error(provider, seq, 404, &message, None));
    };
    if let Err(message) = check_auth(&state, provider, &parts.headers) {
        return Ok(reply::error(provider, seq, 401, &message, None));
    }
    if let Some(status) = faults.status {
        let message = reply::injected_message(provider, status);
        return Ok(reply::error(
            provider,
            seq,
            status,
            &message,
            faults.retry_after,
        ));
    }
    let mut drop_after = faults.drop_after;
    match state.faults.take(model) {
        Some(FaultAction::Drop) => return Err(Dropped),
        Some(FaultAction::Cut(n)) => drop_after = Some(n),
        Some(FaultAction::Respond {
            status,
            retry_after,
        }) => {
            let message = reply::injected_message(provider, status);
            return Ok(reply::error(provider, seq, status, &message, retry_after));
        }
        None => {}
    }

    let call = Call {
        seq,
        created: reply::unix_now(),
        model: model.unwrap_or_default().to_owned(),
        usage: faults.usage,
        no_usage: faults.no_usage,
        chunk_delay: faults.chunk_delay,
        drop_after,
        reply: faults.reply,
        reply_chunk: faults.reply_chunk.unwrap_or(5),
        thinking: faults.thinking,
    };
    if endpoint == Endpoint::Models {
        return Ok(match provider {
            Provider::OpenAi => openai::models(&call),
            Provider::Anthropic => anthropic::models(&call),
        });
    }
    let Some(summary) = summary.as_ref() else {
        let message = "We could not parse the JSON body of your request. (mock provider: expected a JSON object)";
        return Ok(reply::error(provider, seq, 400, message, None));
    };
    if model.is_none() {
        let message = "you must provide a model parameter";
        return Ok(reply::error(provider, seq, 400, message, None));
    }
    Ok(match endpoint {
        Endpoint::ChatCompletions => openai::chat_completions(&call, summary),
        Endpoint::Messages => anthropic::messages(&call, summary),
        Endpoint::CountTokens => anthropic::count_tokens(&call, summary),
        Endpoint::Responses | Endpoint::Embeddings => {
            // Parsed as a JSON object above, so this parse succeeds too.
            let body: Value = serde_json::from_slice(&bytes).unwrap_or_default();
            if endpoint == Endpoint::Responses {
                openai::responses(&call, &body)
            } else {
                openai::embeddings(&call, &body)
            }
        }
        Endpoint::Models => openai::models(&call),
    })
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn parses_fault_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("x-mock-status", HeaderValue::from_static("429"));
        headers.insert("x-mock-retry-after", HeaderValue::from_static("7"));
        headers.insert("x-mock-delay-ms", HeaderValue::from_static("5"));
        headers.insert("x-mock-chunk-delay-ms", HeaderValue::from_static("6"));
        headers.insert("x-mock-drop-after", HeaderValue::from_static("3"));
        headers.insert("x-mock-no-usage", HeaderValue::from_static("1"));
        let faults = HeaderFaults::parse(&headers).expect("valid headers");
        assert_eq!(faults.status, Some(429));
        assert_eq!(faults.retry_after, Some(7));
        assert_eq!(faults.delay, Some(Duration::from_millis(5)));
        assert_eq!(faults.chunk_delay, Some(Duration::from_millis(6)));
        assert_eq!(faults.drop_after, Some(3));
        assert!(faults.no_usage);

        headers.insert("x-mock-status", HeaderValue::from_static("200"));
        assert!(HeaderFaults::parse(&headers).is_err());
        headers.insert("x-mock-status", HeaderValue::from_static("abc"));
        assert!(HeaderFaults::parse(&headers).is_err());
    }

    #[test]
    fn routes_and_providers() {
        assert_eq!(
            route(&Method::POST, "/v1/chat/completions/"),
            Some(Endpoint::ChatCompletions)
        );
        assert_eq!(route(&Method::GET, "/v1/chat/completions"), None);
        let mut headers = HeaderMap::new();
        let models = Some(Endpoint::Models);
        assert_eq!(
            provider_of(models, "/v1/models", &headers),
            Provider::OpenAi
        );
        headers.insert("x-api-key", HeaderValue::from_static("k"));
        assert_eq!(
            provider_of(models, "/v1/models", &headers),
            Provider::Anthropic
        );
        let chat = Some(Endpoint::ChatCompletions);
        assert_eq!(
            provider_of(chat, "/v1/chat/completions", &headers),
            Provider::OpenAi
        );
        assert_eq!(
            provider_of(None, "/v1/messages/x", &headers),
            Provider::Anthropic
        );
    }

    #[test]
    fn masks_keys() {
        assert_eq!(mask("sk-1234567890abcd"), "sk-****abcd");
        assert_eq!(mask("short"), "****");
    }
}
