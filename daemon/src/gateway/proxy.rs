//! The per-request path: identify, reserve, forward, meter, settle.
//!
//! Order matters and is the product: nothing reaches a provider before the
//! worst-case cost is reserved; a reservation is released (dropped) on every
//! error path; the real cost is settled from the provider's own usage, or a
//! local count marked `estimated` when the provider gives none.

use super::errors;
use super::routes::{Api, family_from_headers, upstream_url};
use super::sse::SseParser;
use super::usage;
use super::{Body, ChannelBody, Gateway, Provider, Snapshot, tokens};
use crate::actors::budget::{CostRecord, Exhausted, Refusal, Reservation};
use crate::config::ProviderKind;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use ironcage_shared::AgentName;
use ironcage_shared::money::Micros;
use ironcage_shared::pricing::{ModelPrice, Usage};
use serde_json::Value;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Largest request body accepted from an agent.
const MAX_REQUEST_BODY: usize = 32 << 20;
/// Largest non-streamed response body read from a provider.
const MAX_RESPONSE_BODY: usize = 64 << 20;
/// Input bound for a model whose context window the price table does not give.
const DEFAULT_CONTEXT_TOKENS: u64 = 200_000;
/// Longest accepted `X-Iron-Cage-Tag`.
const MAX_TAG: usize = 128;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// The caller's virtual key: `Authorization: Bearer K` or `x-api-key: K`.
fn virtual_key(req: &Request<Incoming>) -> Option<&str> {
    let h = req.headers();
    if let Some(v) = h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())
        && let Some(k) = v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer "))
    {
        return Some(k.trim());
    }
    h.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim)
}

fn tag_of(req: &Request<Incoming>) -> Result<Option<String>, String> {
    let Some(v) = req.headers().get("x-iron-cage-tag") else {
        return Ok(None);
    };
    let s = v.to_str().map_err(|_| "X-Iron-Cage-Tag must be visible ASCII".to_owned())?.trim();
    if s.is_empty() {
        return Ok(None);
    }
    if s.len() > MAX_TAG || !s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(format!("X-Iron-Cage-Tag must be 1-{MAX_TAG} visible ASCII characters"));
    }
    Ok(Some(s.to_owned()))
}

/// The output-token ceiling the request itself sets, if any.
fn requested_max_output(api: Api, body: &Value) -> Option<u64> {
    let keys: &[&str] = match api {
        Api::ChatCompletions => &["max_completion_tokens", "max_tokens"],
        Api::Responses => &["max_output_tokens"],
        Api::AnthropicMessages => &["max_tokens"],
        Api::Embeddings => return Some(0),
    };
    keys.iter().find_map(|k| body.get(*k).and_then(Value::as_u64))
}

/// Puts the provider's real key on an upstream request. The value is marked
/// sensitive so hyper never prints it.
fn inject_key(h: &mut http::HeaderMap, provider: &Provider) -> Result<(), String> {
    let Some(key) = &provider.key else {
        return Ok(());
    };
    let (name, value) = match provider.kind {
        ProviderKind::OpenAi => (header::AUTHORIZATION, format!("Bearer {}", key.expose())),
        ProviderKind::Anthropic => (http::HeaderName::from_static("x-api-key"), key.expose().to_owned()),
    };
    let mut v = HeaderValue::from_str(&value)
        .map_err(|_| format!("provider {}'s API key is not a valid header value", provider.name))?;
    v.set_sensitive(true);
    h.insert(name, v);
    Ok(())
}

fn refuse(family: ProviderKind, agent: &AgentName, model: &str, e: &Exhausted) -> Response<Body> {
    tracing::warn!(agent = %agent, model = %model, "call refused: {e}");
    errors::budget_refused(family, &e.to_string())
}

/// Everything known about a call once it is admitted.
struct Call {
    gw: Arc<Gateway>,
    agent: AgentName,
    api: Api,
    provider: Arc<Provider>,
    model: String,
    tag: Option<String>,
    price: Option<ModelPrice>,
    request: Value,
}

impl Call {
    fn record(&self, usage: Usage, answered_model: Option<&str>) -> CostRecord {
        let cost = self.price.as_ref().map_or(Micros::ZERO, |p| p.cost(&usage));
        CostRecord {
            agent: self.agent.clone(),
            provider: self.provider.name.clone(),
            model: answered_model.map_or_else(|| self.model.clone(), |m| m.to_owned()),
            tag: self.tag.clone(),
            usage,
            cost,
            at_ms: crate::util::unix_ms(),
        }
    }

    /// Usage counted locally: the request's input plus `output_text`.
    fn estimate(&self, output_text: &str) -> Usage {
        let input = tokens::count_request_input(self.api, &self.model, &self.request);
        let output = tokens::count_text(&self.model, output_text);
        Usage::estimated(input, output)
    }

    /// Books the call; durable shortly after (group commit), without holding up
    /// the response.
    fn settle(&self, r: Reservation, record: CostRecord) {
        let budget = self.gw.budget.clone();
        tokio::spawn(async move {
            if let Err(e) = budget.settle(r, record).await {
                tracing::error!("cannot record the cost of a call: {e}");
            }
        });
    }
}

pub async fn handle(gw: Arc<Gateway>, req: Request<Incoming>) -> Response<Body> {
    let snap = gw.snapshot();
    let api = Api::from_path(req.uri().path());
    let family = api.map_or_else(|| family_from_headers(req.headers().contains_key("x-api-key")), Api::family);
    let Some(agent) = virtual_key(&req).and_then(|k| gw.keys.resolve(k)) else {
        return errors::unauthorized(family);
    };
    let Some(api) = api else {
        if snap.allow_unmetered {
            return unmetered(gw, &snap, agent, family, req).await;
        }
        let msg = format!(
            "{} is not a metered API (chat/completions, responses, embeddings, messages); set [gateway] allow_unmetered_paths = true to proxy other paths unmetered",
            req.uri().path()
        );
        return errors::not_found(family, &msg);
    };
    let tag = match tag_of(&req) {
        Ok(t) => t,
        Err(m) => return errors::bad_request(family, "bad_tag", &m),
    };
    let path_and_query = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let (parts, body) = req.into_parts();
    let bytes = match Limited::new(body, MAX_REQUEST_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return errors::error(
                family,
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                "request_too_large",
                &format!("Iron Cage gateway: cannot read the request body ({e}); the limit is {} MiB", MAX_REQUEST_BODY >> 20),
            );
        }
    };
    let mut request: Value = match serde_json::from_slice(&bytes) {
        Ok(v @ Value::Object(_)) => v,
        _ => return errors::bad_request(family, "invalid_json", "the request body is not a JSON object"),
    };
    let Some(model_asked) = request.get("model").and_then(Value::as_str).map(str::to_owned) else {
        return errors::bad_request(family, "missing_model", "the request names no \"model\"");
    };
    let (provider, model) = match snap.route(&agent, family, &model_asked) {
        Ok((p, m)) => (p, m.to_owned()),
        Err(m) => return errors::bad_request(family, "no_provider", &m),
    };
    let mut rewritten = false;
    if model != model_asked {
        request["model"] = Value::String(model.clone());
        rewritten = true;
    }
    let policy = snap.agents.get(&agent).cloned();
    let budget_spec = policy.as_ref().and_then(|p| p.budget);
    let price = snap.prices.lookup(Some(&provider.name), &model).cloned();
    if price.is_none() && budget_spec.is_some() {
        let msg = format!(
            "no price is known for model {model:?} (provider {}), so agent {agent}'s budget cannot be enforced; add it under [gateway.prices] in the config",
            provider.name
        );
        return errors::bad_request(family, "unpriced_model", &msg);
    }

    // Worst case: a cheap local bound on the input tokens (for plain text the
    // byte length: a token is at least one byte), plus the output ceiling.
    // Exact counting happens only when that bound does not fit the budget.
    let max_out = requested_max_output(api, &request);
    let cap = budget_spec.and_then(|b| b.max_cost_per_call);
    let bound = match tokens::upper_bound_request_input(api, &request, bytes.len()) {
        tokens::InputBound::Bounded(n) => Some(n),
        tokens::InputBound::Unbounded(_) => None,
    };
    let worst = |input_upper: Option<u64>| -> Micros {
        let Some(p) = &price else { return Micros::ZERO };
        // Input that cannot be bounded locally (server-side tools, stored
        // conversations) is bounded by the model's context window.
        let input = input_upper.unwrap_or_else(|| p.max_input_tokens.unwrap_or(DEFAULT_CONTEXT_TOKENS));
        match (max_out, cap) {
            (None, Some(cap)) => cap,
            (Some(out), _) => p.worst_case(input, out),
            (None, None) => p.worst_case(input, p.max_output_tokens.unwrap_or(snap.default_max_tokens)),
        }
    };
    let reservation = match gw.budget.reserve(&agent, worst(bound)).await {
        Ok(r) => r,
        Err(Refusal::Exhausted(first)) => {
            let retry = match bound {
                Some(upper) => {
                    let exact = tokens::count_request_input(api, &model, &request);
                    if exact < upper { Some(gw.budget.reserve(&agent, worst(Some(exact))).await) } else { None }
                }
                None => None,
            };
            match retry {
                Some(Ok(r)) => r,
                Some(Err(Refusal::Exhausted(refusal))) => return refuse(family, &agent, &model, &refusal),
                None => return refuse(family, &agent, &model, &first),
                Some(Err(Refusal::Unavailable)) => return errors::unavailable(family, "ledger_unavailable", "the budget ledger is not running; the call was not forwarded"),
            }
        }
        Err(Refusal::Unavailable) => {
            return errors::unavailable(family, "ledger_unavailable", "the budget ledger is not running; the call was not forwarded");
        }
    };

    let streaming = api != Api::Embeddings && request.get("stream").and_then(Value::as_bool) == Some(true);
    // OpenAI streams carry usage only when asked; ask, and hide that extra chunk
    // from an agent that did not.
    let mut strip_usage_chunk = false;
    if streaming && api == Api::ChatCompletions {
        let asked = request.pointer("/stream_options/include_usage").and_then(Value::as_bool) == Some(true);
        if !asked {
            match request.get_mut("stream_options") {
                Some(Value::Object(o)) => {
                    o.insert("include_usage".into(), Value::Bool(true));
                }
                _ => request["stream_options"] = serde_json::json!({ "include_usage": true }),
            }
            strip_usage_chunk = true;
            rewritten = true;
        }
    }
    let out_body = if rewritten {
        Bytes::from(serde_json::to_vec(&request).unwrap_or_default())
    } else {
        bytes
    };

    let mut up = Request::builder()
        .method(parts.method.clone())
        .uri(upstream_url(&provider.base_url, family, &path_and_query));
    if let Some(h) = up.headers_mut() {
        *h = super::upstream::forward_request_headers(&parts.headers);
        if let Err(m) = inject_key(h, &provider) {
            return errors::unavailable(family, "bad_provider_key", &m);
        }
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    let Ok(up) = up.body(Full::new(out_body)) else {
        return errors::bad_gateway(family, "cannot build the upstream request");
    };

    let call = Call { gw: gw.clone(), agent, api, provider: provider.clone(), model, tag, price, request };
    let resp = match tokio::time::timeout(snap.upstream_timeout, gw.client.request(up)).await {
        Err(_) => {
            let msg = format!("provider {} did not answer within {}s", provider.name, snap.upstream_timeout.as_secs());
            return errors::error(family, StatusCode::GATEWAY_TIMEOUT, "api_error", "upstream_timeout", &format!("Iron Cage gateway: {msg}"));
        }
        Ok(Err(e)) => {
            let msg = format!("cannot reach provider {} at {}: {e}", provider.name, provider.base_url);
            tracing::warn!(agent = %call.agent, "{msg}");
            return errors::bad_gateway(family, &msg);
        }
        Ok(Ok(r)) => r,
    };
    let (rparts, rbody) = resp.into_parts();
    let is_stream = rparts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));

    if !rparts.status.is_success() {
        // Not billed by the provider: release, and pass the provider's answer on.
        drop(reservation);
        let mut out = Response::from_parts(rparts, rbody.map_err(std::io::Error::other).boxed());
        *out.headers_mut() = super::upstream::forward_response_headers(out.headers(), false);
        return out;
    }

    if is_stream {
        return relay_stream(call, reservation, rparts, rbody, strip_usage_chunk);
    }

    let body = match Limited::new(rbody, MAX_RESPONSE_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            drop(reservation);
            return errors::bad_gateway(family, &format!("provider {}'s response could not be read: {e}", provider.name));
        }
    };
    let extracted = usage::extract(call.api, &body);
    let (usage, answered) = match extracted {
        Some(x) => (x.usage, x.model),
        None => (call.estimate(&usage::output_text(call.api, &body)), None),
    };
    let record = call.record(usage, answered.as_deref());
    let cost = record.cost;
    call.settle(reservation, record);
    let mut out = Response::from_parts(rparts, full(body));
    *out.headers_mut() = super::upstream::forward_response_headers(out.headers(), false);
    annotate(&mut out, &call.model, cost);
    out
}

fn annotate(resp: &mut Response<Body>, model: &str, cost: Micros) {
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(model) {
        h.insert("x-iron-cage-model", v);
    }
    h.insert("x-iron-cage-cost-micros", HeaderValue::from(cost.0.max(0) as u64));
}

/// Relays an SSE stream event by event (no buffering beyond one event) while
/// accumulating usage, then settles. If the agent hangs up, the upstream call is
/// dropped and what was streamed so far is booked as an estimate.
fn relay_stream(
    call: Call,
    reservation: Reservation,
    rparts: http::response::Parts,
    mut rbody: Incoming,
    strip_usage_chunk: bool,
) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    let model = call.model.clone();
    tokio::spawn(async move {
        let mut parser = SseParser::new();
        let mut acc = usage::StreamUsage::new(call.api);
        let mut agent_gone = false;
        let mut upstream_error = None;
        'outer: loop {
            match rbody.frame().await {
                None => break,
                Some(Err(e)) => {
                    upstream_error = Some(e.to_string());
                    break;
                }
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else { continue };
                    if let Err(e) = parser.feed(&data) {
                        upstream_error = Some(e.to_string());
                        break;
                    }
                    while let Some(ev) = parser.next_event() {
                        let usage_only = acc.on_event(&ev).is_usage_only();
                        if usage_only && strip_usage_chunk {
                            continue;
                        }
                        if tx.send(Ok(ev.into_raw())).await.is_err() {
                            agent_gone = true;
                            break 'outer;
                        }
                    }
                }
            }
        }
        if !agent_gone && let Some(ev) = parser.finish() {
            let usage_only = acc.on_event(&ev).is_usage_only();
            if !(usage_only && strip_usage_chunk) {
                let _ = tx.send(Ok(ev.into_raw())).await;
            }
        }
        if let Some(e) = &upstream_error {
            tracing::warn!(agent = %call.agent, provider = %call.provider.name, "stream from provider broke: {e}");
            let _ = tx.send(Err(std::io::Error::other(format!("upstream stream broke: {e}")))).await;
        }
        let complete = !agent_gone && upstream_error.is_none();
        let answered = acc.model().map(str::to_owned);
        let usage = match acc.usage() {
            Some(u) if complete => u,
            _ => call.estimate(acc.output_text()),
        };
        if agent_gone && acc.output_text().is_empty() && acc.usage().is_none() {
            drop(reservation);
            return;
        }
        let record = call.record(usage, answered.as_deref());
        call.settle(reservation, record);
    });
    let mut out = Response::from_parts(rparts, ChannelBody(rx).boxed());
    *out.headers_mut() = super::upstream::forward_response_headers(out.headers(), true);
    if let Ok(v) = HeaderValue::from_str(&model) {
        out.headers_mut().insert("x-iron-cage-model", v);
    }
    out
}

/// Proxies a non-metered path (only when the config allows it).
async fn unmetered(gw: Arc<Gateway>, snap: &Snapshot, agent: AgentName, family: ProviderKind, req: Request<Incoming>) -> Response<Body> {
    let Some(provider) = snap.route(&agent, family, "").ok().map(|(p, _)| p) else {
        return errors::bad_request(family, "no_provider", &format!("no {} provider is configured", family.as_str()));
    };
    let path_and_query = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let (parts, body) = req.into_parts();
    let bytes = match Limited::new(body, MAX_REQUEST_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return errors::bad_request(family, "request_too_large", &e.to_string()),
    };
    let mut up = Request::builder().method(parts.method.clone()).uri(upstream_url(&provider.base_url, family, &path_and_query));
    if let Some(h) = up.headers_mut() {
        *h = super::upstream::forward_request_headers(&parts.headers);
        if let Err(m) = inject_key(h, &provider) {
            return errors::unavailable(family, "bad_provider_key", &m);
        }
    }
    let Ok(up) = up.body(Full::new(bytes)) else {
        return errors::bad_gateway(family, "cannot build the upstream request");
    };
    tracing::info!(agent = %agent, path = %path_and_query, provider = %provider.name, "unmetered call");
    match tokio::time::timeout(snap.upstream_timeout, gw.client.request(up)).await {
        Ok(Ok(r)) => {
            let (p, b) = r.into_parts();
            let mut out = Response::from_parts(p, b.map_err(std::io::Error::other).boxed());
            *out.headers_mut() = super::upstream::forward_response_headers(out.headers(), false);
            out
        }
        Ok(Err(e)) => errors::bad_gateway(family, &format!("cannot reach provider {}: {e}", provider.name)),
        Err(_) => errors::bad_gateway(family, &format!("provider {} did not answer in time", provider.name)),
    }
}
