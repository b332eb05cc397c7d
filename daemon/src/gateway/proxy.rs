//! The per-request path: identify, pick a model, reserve, forward, meter, settle.
//!
//! Order matters and is the product: nothing reaches a provider before the
//! worst-case cost is reserved; a reservation is released (dropped) on every
//! error path; the real cost is settled from the provider's own usage, or a
//! local count marked `estimated` when the provider gives none.
//!
//! Circuit breakers and fallback. The candidates are the model asked for, then
//! the agent's `fallback` entries of the same API family, in order (the one
//! asked for is not repeated). For each candidate in turn:
//! 1. its circuit must admit the call (closed, or this call is the one
//!    half-open probe); if not, it is passed over without reserving anything;
//! 2. the budget must pay its worst case: one reservation per candidate, the
//!    previous one released first. A fallback the budget cannot pay is passed
//!    over, never used; the model asked for gets the usual 402;
//! 3. it is attempted. A failure before any byte reached the agent (5xx,
//!    timeout, connection error, a stream dead or erroring before its first
//!    event) is retried up to the provider's `retries` with jittered backoff,
//!    while its circuit still admits calls; then the next candidate is tried.
//!    A 429 goes to the next candidate at once. 401, 403 and other 4xx answers
//!    go to the agent as they are: they are not outages.
//!
//! A stream is held back until its first data event, so one that dies before
//! it can still fall back; once an event reached the agent, a break is the
//! agent's to see. The answer names the model that answered
//! (`x-iron-cage-model`; `x-iron-cage-fallback-from` names the one asked for)
//! and the cost is booked on it. When no candidate answers: with a single
//! candidate, the provider's own last error (as without a breaker); otherwise,
//! or when circuits refused every candidate, a 503 naming each candidate and
//! why it was passed over, with `Retry-After` at the earliest next probe.

use super::errors;
use super::pii::{self as pii_filter, AgentPii, StreamFilter};
use super::routes::{Api, family_from_headers, upstream_url};
use super::sse::{SseEvent, SseParser};
use super::usage::{self, EventKind, StreamUsage};
use super::{Body, ChannelBody, Gateway, Provider, Snapshot, tokens};
use crate::actors::breaker::{self, Check, Outcome, Rejected, Ticket};
use crate::actors::budget::{CostRecord, Exhausted, Refusal, Reservation};
use crate::config::ProviderKind;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use ironcage_shared::AgentName;
use ironcage_shared::money::Micros;
use ironcage_shared::pii::Direction;
use ironcage_shared::pricing::{ModelPrice, Usage};
use rand::Rng;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Largest request body accepted from an agent.
const MAX_REQUEST_BODY: usize = 32 << 20;
/// Largest non-streamed response body read from a provider.
const MAX_RESPONSE_BODY: usize = 64 << 20;
/// Input bound for a model whose context window the price table does not give.
const DEFAULT_CONTEXT_TOKENS: u64 = 200_000;
/// Longest accepted `X-Iron-Cage-Tag`.
const MAX_TAG: usize = 128;
/// Largest provider error body kept, to pass on if no other model answers.
const MAX_ERROR_BODY: usize = 1 << 20;
/// Longest provider error text quoted in our own messages.
const MAX_QUOTED: usize = 300;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// The caller's virtual key: `Authorization: Bearer K` or `x-api-key: K`.
fn virtual_key(req: &Request<Incoming>) -> Option<&str> {
    let h = req.headers();
    if let Some(v) = h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())
        && let Some(k) = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
    {
        return Some(k.trim());
    }
    h.get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

fn tag_of(req: &Request<Incoming>) -> Result<Option<String>, String> {
    let Some(v) = req.headers().get("x-iron-cage-tag") else {
        return Ok(None);
    };
    let s = v
        .to_str()
        .map_err(|_| "X-Iron-Cage-Tag must be visible ASCII".to_owned())?
        .trim();
    if s.is_empty() {
        return Ok(None);
    }
    if s.len() > MAX_TAG || !s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(format!(
            "X-Iron-Cage-Tag must be 1-{MAX_TAG} visible ASCII characters"
        ));
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
    keys.iter()
        .find_map(|k| body.get(*k).and_then(Value::as_u64))
}

/// Puts the provider's real key on an upstream request. The value is marked
/// sensitive so hyper never prints it.
fn inject_key(h: &mut http::HeaderMap, provider: &Provider) -> Result<(), String> {
    let Some(key) = &provider.key else {
        return Ok(());
    };
    let (name, value) = match provider.kind {
        ProviderKind::OpenAi => (header::AUTHORIZATION, format!("Bearer {}", key.expose())),
        ProviderKind::Anthropic => (
            http::HeaderName::from_static("x-api-key"),
            key.expose().to_owned(),
        ),
    };
    let mut v = HeaderValue::from_str(&value).map_err(|_| {
        format!(
            "provider {}'s API key is not a valid header value",
            provider.name
        )
    })?;
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

    /// Books the call now; durable shortly after (group commit), without
    /// holding up the response.
    fn settle(&self, r: Reservation, record: CostRecord) {
        self.gw.budget.settle_detached(r, record);
    }
}

/// One model the call may go to.
struct Candidate {
    provider: Arc<Provider>,
    model: String,
}

impl Candidate {
    fn label(&self) -> String {
        format!("{}/{}", self.provider.name, self.model)
    }
}

/// The model asked for, then the agent's fallbacks of the same API family.
fn candidates(
    snap: &Snapshot,
    agent: &AgentName,
    family: ProviderKind,
    first: Candidate,
) -> Vec<Candidate> {
    let mut out = vec![first];
    let Some(policy) = snap.agents.get(agent) else {
        return out;
    };
    for f in &policy.fallback {
        let Some(p) = snap.providers.iter().find(|p| p.name == f.provider) else {
            continue;
        };
        if p.kind != family
            || out
                .iter()
                .any(|c| c.provider.name == f.provider && c.model == f.model)
        {
            continue;
        }
        out.push(Candidate {
            provider: p.clone(),
            model: f.model.clone(),
        });
    }
    out
}

/// The inputs of a call's worst case that do not depend on the model.
struct WorstCase {
    /// The request's own output ceiling.
    max_out: Option<u64>,
    /// The agent's `max_cost_per_call_usd`.
    cap: Option<Micros>,
    default_max_tokens: u64,
    /// A cheap upper bound on the input tokens, when one exists.
    bound: Option<u64>,
}

impl WorstCase {
    fn cost(&self, price: Option<&ModelPrice>, input_upper: Option<u64>) -> Micros {
        let Some(p) = price else { return Micros::ZERO };
        // Input that cannot be bounded locally (server-side tools, stored
        // conversations) is bounded by the model's context window.
        let input =
            input_upper.unwrap_or_else(|| p.max_input_tokens.unwrap_or(DEFAULT_CONTEXT_TOKENS));
        match (self.max_out, self.cap) {
            (None, Some(cap)) => cap,
            (Some(out), _) => p.worst_case(input, out),
            (None, None) => p.worst_case(
                input,
                p.max_output_tokens.unwrap_or(self.default_max_tokens),
            ),
        }
    }
}

/// Reserves the worst case on one model: first with the cheap input bound,
/// then, only if that does not fit, with an exact local count.
async fn reserve(
    gw: &Gateway,
    agent: &AgentName,
    api: Api,
    model: &str,
    request: &Value,
    price: Option<&ModelPrice>,
    w: &WorstCase,
) -> Result<Reservation, Refusal> {
    match gw.budget.try_reserve(agent, w.cost(price, w.bound)) {
        Err(Refusal::Exhausted(first)) => {
            if let Some(upper) = w.bound {
                tokens::ready(model).await;
                let exact = tokens::count_request_input(api, model, request);
                if exact < upper {
                    return gw.budget.try_reserve(agent, w.cost(price, Some(exact)));
                }
            }
            Err(Refusal::Exhausted(first))
        }
        other => other,
    }
}

/// Backoff before retry number `n` (1-based): the base doubled per retry,
/// times a random factor between 0.5 and 1.5 so agents do not retry in step.
fn backoff(base: Duration, n: u32) -> Duration {
    let doubled = base.saturating_mul(1 << n.saturating_sub(1).min(10));
    doubled.mul_f64(rand::rng().random_range(0.5..1.5))
}

/// Why one candidate did not answer, for the final 503.
#[derive(Default)]
struct Note {
    /// The last failure and how many attempts failed.
    failed: Option<(String, u32)>,
    /// Why it was then (or from the start) passed over.
    passed: Option<Passed>,
}

enum Passed {
    Circuit(Rejected),
    Budget(Exhausted),
    Unpriced,
}

impl Note {
    fn describe(&self, now_ms: u64) -> String {
        let mut parts = Vec::new();
        if let Some((why, n)) = &self.failed {
            parts.push(if *n > 1 {
                format!("failed {n} times (last: {why})")
            } else {
                format!("failed ({why})")
            });
        }
        match &self.passed {
            None => {}
            Some(Passed::Circuit(r)) => parts.push(r.describe(now_ms)),
            Some(Passed::Budget(e)) => parts.push(format!("skipped: {e}")),
            Some(Passed::Unpriced) => {
                parts.push(
                    "skipped: no price is known for it, so the budget cannot be enforced"
                        .to_owned(),
                );
            }
        }
        parts.join(", then ")
    }
}

/// What one attempt produced.
enum Attempt {
    /// An answer for the agent: a success, or an error that is not an outage.
    Answer(Response<Body>),
    /// Failed before any byte reached the agent; the reservation comes back.
    Failed {
        reservation: Reservation,
        why: String,
        /// Worth retrying on the same model (not after a 429).
        retry: bool,
        /// What the agent gets if no other attempt answers: the provider's
        /// own error, or ours.
        answer: Response<Body>,
    },
}

/// What every attempt of one call shares.
struct Attempts<'a> {
    gw: &'a Arc<Gateway>,
    snap: &'a Snapshot,
    agent: &'a AgentName,
    api: Api,
    family: ProviderKind,
    tag: &'a Option<String>,
    parts: &'a http::request::Parts,
    path_and_query: &'a str,
    strip_usage_chunk: bool,
    /// The agent's PII settings (output policy applied to answers).
    pii: &'a Arc<AgentPii>,
}

pub async fn handle(gw: Arc<Gateway>, req: Request<Incoming>) -> Response<Body> {
    let snap = gw.snapshot();
    let api = Api::from_path(req.uri().path());
    let family = api.map_or_else(
        || family_from_headers(req.headers().contains_key("x-api-key")),
        Api::family,
    );
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
    let (path_and_query, parts, bytes) = match read_request(family, req).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let mut request: Value = match serde_json::from_slice(&bytes) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return errors::bad_request(
                family,
                "invalid_json",
                "the request body is not a JSON object",
            );
        }
    };
    let Some(model_asked) = request
        .get("model")
        .and_then(Value::as_str)
        .map(str::to_owned)
    else {
        return errors::bad_request(family, "missing_model", "the request names no \"model\"");
    };
    let first = match snap.route(&agent, family, &model_asked) {
        Ok((provider, m)) => Candidate {
            provider,
            model: m.to_owned(),
        },
        Err(m) => return errors::bad_request(family, "no_provider", &m),
    };
    let budget_spec = snap.agents.get(&agent).and_then(|p| p.budget);

    // The prompt policy, before anything is reserved or forwarded.
    let pii = snap.pii_for(&agent);
    let mut pii_rewritten = false;
    if pii.active(Direction::Prompt) {
        match pii_filter::apply_body(
            &pii,
            gw.vault.as_ref(),
            &agent,
            Direction::Prompt,
            &mut request,
            |b, f| pii_filter::walk_request(api, b, f),
        )
        .await
        {
            Ok(r) => pii_rewritten = r,
            Err(refused) => {
                pii_filter::audit_refusal(gw.audit(), &agent, Direction::Prompt, &refused);
                return refused.response(family, Direction::Prompt);
            }
        }
    }
    // A redacted body can be longer than the one received (tokens): bound the
    // input by what is actually sent.
    // The rewritten body, encoded once: forwarded as it is unless something
    // below changes the request again (which clears it).
    let mut encoded: Option<Bytes> = None;
    let sent_len = if pii_rewritten {
        match serde_json::to_vec(&request) {
            Ok(v) => {
                let n = v.len().max(bytes.len());
                encoded = Some(Bytes::from(v));
                n
            }
            Err(_) => bytes.len(),
        }
    } else {
        bytes.len()
    };

    // Worst case: a cheap local bound on the input tokens (for plain text the
    // byte length: a token is at least one byte), plus the output ceiling.
    // Exact counting happens only when that bound does not fit the budget.
    let worst = WorstCase {
        max_out: requested_max_output(api, &request),
        cap: budget_spec.and_then(|b| b.max_cost_per_call),
        default_max_tokens: snap.default_max_tokens,
        bound: match tokens::upper_bound_request_input(api, &request, sent_len) {
            tokens::InputBound::Bounded(n) => Some(n),
            tokens::InputBound::Unbounded(_) => None,
        },
    };

    let streaming =
        api != Api::Embeddings && request.get("stream").and_then(Value::as_bool) == Some(true);
    // OpenAI streams carry usage only when asked; ask, and hide that extra chunk
    // from an agent that did not.
    let mut rewritten = pii_rewritten;
    let mut strip_usage_chunk = false;
    if streaming && api == Api::ChatCompletions {
        let asked = request
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            == Some(true);
        if !asked {
            match request.get_mut("stream_options") {
                Some(Value::Object(o)) => {
                    o.insert("include_usage".into(), Value::Bool(true));
                }
                _ => request["stream_options"] = serde_json::json!({ "include_usage": true }),
            }
            strip_usage_chunk = true;
            rewritten = true;
            encoded = None;
        }
    }

    let cands = candidates(&snap, &agent, family, first);
    let attempts = Attempts {
        gw: &gw,
        snap: &snap,
        agent: &agent,
        api,
        family,
        tag: &tag,
        parts: &parts,
        path_and_query: &path_and_query,
        strip_usage_chunk,
        pii: &pii,
    };
    let mut notes: Vec<Note> = Vec::with_capacity(cands.len());
    let mut last_answer: Option<Response<Body>> = None;
    for (i, cand) in cands.iter().enumerate() {
        notes.push(Note::default());
        let note = notes.last_mut().expect("just pushed");
        let price = snap
            .prices
            .lookup(Some(&cand.provider.name), &cand.model)
            .cloned();
        if price.is_none() && budget_spec.is_some() {
            if i == 0 {
                let msg = format!(
                    "no price is known for model {:?} (provider {}), so agent {agent}'s budget cannot be enforced; add it under [gateway.prices] in the config",
                    cand.model, cand.provider.name
                );
                return errors::bad_request(family, "unpriced_model", &msg);
            }
            note.passed = Some(Passed::Unpriced);
            continue;
        }
        // The circuit first: an open one costs no reservation.
        let mut pending = match gw.breaker.check(&cand.provider.name, &cand.model) {
            Check::Refused(r) => {
                note.passed = Some(Passed::Circuit(r));
                continue;
            }
            c => Some(c),
        };
        if request.get("model").and_then(Value::as_str) != Some(cand.model.as_str()) {
            request["model"] = Value::String(cand.model.clone());
            rewritten = true;
            encoded = None;
        }
        let mut reservation = match reserve(
            &gw,
            &agent,
            api,
            &cand.model,
            &request,
            price.as_ref(),
            &worst,
        )
        .await
        {
            Ok(r) => r,
            Err(Refusal::Exhausted(e)) if i == 0 => return refuse(family, &agent, &cand.model, &e),
            Err(Refusal::Exhausted(e)) => {
                tracing::info!(agent = %agent, model = %cand.label(), "fallback skipped: {e}");
                note.passed = Some(Passed::Budget(e));
                continue;
            }
            Err(Refusal::Unavailable) => {
                return errors::unavailable(
                    family,
                    "ledger_unavailable",
                    "the budget ledger is not running; the call was not forwarded",
                );
            }
        };
        let out_body = if rewritten {
            encoded
                .get_or_insert_with(|| {
                    Bytes::from(serde_json::to_vec(&request).unwrap_or_default())
                })
                .clone()
        } else {
            bytes.clone()
        };
        let settings = cand.provider.breaker;
        for n in 0..=settings.retries {
            let check = match pending.take() {
                Some(c) => c,
                None => {
                    tokio::time::sleep(backoff(settings.retry_backoff, n)).await;
                    gw.breaker.check(&cand.provider.name, &cand.model)
                }
            };
            let ticket = match check {
                Check::Pass(t) => t,
                Check::ProbeDue => match gw.breaker.probe(&cand.provider.name, &cand.model).await {
                    Ok(t) => t,
                    Err(r) => {
                        note.passed = Some(Passed::Circuit(r));
                        break;
                    }
                },
                Check::Refused(r) => {
                    note.passed = Some(Passed::Circuit(r));
                    break;
                }
            };
            let from = (i > 0).then(|| cands[0].label());
            match attempts
                .one(
                    cand,
                    price.clone(),
                    &mut request,
                    out_body.clone(),
                    ticket,
                    reservation,
                    from,
                )
                .await
            {
                Attempt::Answer(r) => return r,
                Attempt::Failed {
                    reservation: r,
                    why,
                    retry,
                    answer,
                } => {
                    reservation = r;
                    tracing::warn!(agent = %agent, model = %cand.label(), attempt = n + 1, "call failed before any byte reached the agent: {why}");
                    let count = note.failed.as_ref().map_or(0, |f| f.1) + 1;
                    note.failed = Some((why, count));
                    last_answer = Some(answer);
                    if !retry {
                        break;
                    }
                }
            }
        }
        drop(reservation);
    }

    // Nothing answered.
    if cands.len() == 1
        && let Some(mut answer) = last_answer
    {
        annotate_model(&mut answer, &cands[0].model);
        return answer;
    }
    let now = gw.breaker.now_ms();
    let all_circuits = notes
        .iter()
        .all(|n| n.failed.is_none() && matches!(n.passed, Some(Passed::Circuit(_))));
    let listed: Vec<String> = cands
        .iter()
        .zip(&notes)
        .map(|(c, n)| format!("{}: {}", c.label(), n.describe(now)))
        .collect();
    let msg = format!(
        "no model could take this call for agent {agent}: {}",
        listed.join("; ")
    );
    tracing::warn!(agent = %agent, "call refused: {msg}");
    let code = if all_circuits {
        "circuit_open"
    } else {
        "no_model_available"
    };
    let mut out = errors::unavailable(family, code, &msg);
    let next_probe = notes
        .iter()
        .filter_map(|n| match &n.passed {
            Some(Passed::Circuit(r)) => r.next_probe_ms,
            _ => None,
        })
        .min();
    if let Some(at) = next_probe {
        let secs = at.saturating_sub(now).div_ceil(1000).max(1);
        out.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    out
}

/// The first data event of a stream, with any comments or keep-alives before it.
async fn first_event(
    rbody: &mut Incoming,
    parser: &mut SseParser,
) -> Result<Vec<SseEvent>, String> {
    let mut held = Vec::new();
    loop {
        while let Some(ev) = parser.next_event() {
            let data = ev.has_data();
            held.push(ev);
            if data {
                return Ok(held);
            }
        }
        match rbody.frame().await {
            None => {
                return match parser.finish() {
                    Some(ev) if ev.has_data() => {
                        held.push(ev);
                        Ok(held)
                    }
                    _ => Err("the stream ended before its first event".to_owned()),
                };
            }
            Some(Err(e)) => return Err(format!("the stream broke before its first event ({e})")),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    parser.feed(&data).map_err(|e| e.to_string())?;
                }
            }
        }
    }
}

fn quote(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let s = s.trim();
    match s.char_indices().nth(MAX_QUOTED) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

fn passthrough(rparts: http::response::Parts, rbody: Incoming, model: &str) -> Response<Body> {
    let mut out = Response::from_parts(rparts, rbody.map_err(std::io::Error::other).boxed());
    *out.headers_mut() = super::upstream::forward_response_headers(out.headers(), false);
    annotate_model(&mut out, model);
    out
}

/// Reads a provider's error answer (bounded) so it can be passed on later.
async fn buffered(
    rparts: http::response::Parts,
    rbody: Incoming,
    model: &str,
    timeout: Duration,
) -> Response<Body> {
    let body =
        match tokio::time::timeout(timeout, Limited::new(rbody, MAX_ERROR_BODY).collect()).await {
            Ok(Ok(b)) => b.to_bytes(),
            _ => Bytes::new(),
        };
    let mut out = Response::from_parts(rparts, full(body));
    *out.headers_mut() = super::upstream::forward_response_headers(out.headers(), false);
    annotate_model(&mut out, model);
    out
}

impl Attempts<'_> {
    /// One upstream attempt on `cand`, holding `ticket` and `reservation`.
    #[allow(clippy::too_many_arguments)]
    async fn one(
        &self,
        cand: &Candidate,
        price: Option<ModelPrice>,
        request: &mut Value,
        body: Bytes,
        mut ticket: Ticket,
        reservation: Reservation,
        fallback_from: Option<String>,
    ) -> Attempt {
        let (family, provider, model) = (self.family, &cand.provider, cand.model.as_str());
        let mut up = Request::builder()
            .method(self.parts.method.clone())
            .uri(upstream_url(
                &provider.base_url,
                family,
                self.path_and_query,
            ));
        if let Some(h) = up.headers_mut() {
            *h = super::upstream::forward_request_headers(&self.parts.headers);
            if let Err(m) = inject_key(h, provider) {
                return Attempt::Answer(errors::unavailable(family, "bad_provider_key", &m));
            }
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        let Ok(up) = up.body(Full::new(body)) else {
            return Attempt::Answer(errors::bad_gateway(
                family,
                "cannot build the upstream request",
            ));
        };
        let timeout = self.snap.upstream_timeout;
        ticket.start_timer();
        let failed = |reservation, why: String, answer| Attempt::Failed {
            reservation,
            why,
            retry: true,
            answer,
        };
        let resp = match tokio::time::timeout(timeout, self.gw.client().request(up)).await {
            Err(_) => {
                let why = format!(
                    "provider {} did not answer within {}s",
                    provider.name,
                    timeout.as_secs()
                );
                ticket.finish(Outcome::Failure("timeout".to_owned())).await;
                let answer = errors::error(
                    family,
                    StatusCode::GATEWAY_TIMEOUT,
                    "api_error",
                    "upstream_timeout",
                    &format!("Iron Cage gateway: {why}"),
                );
                return failed(reservation, why, answer);
            }
            Ok(Err(e)) => {
                let why = format!(
                    "cannot reach provider {} at {}: {e}",
                    provider.name, provider.base_url
                );
                ticket
                    .finish(Outcome::Failure("connection error".to_owned()))
                    .await;
                let answer = errors::bad_gateway(family, &why);
                return failed(reservation, why, answer);
            }
            Ok(Ok(r)) => r,
        };
        let (rparts, mut rbody) = resp.into_parts();
        let status = rparts.status;
        if !status.is_success() {
            return match status.as_u16() {
                401 | 403 => {
                    ticket.finish(Outcome::AuthRejected(status.as_u16())).await;
                    drop(reservation);
                    Attempt::Answer(passthrough(rparts, rbody, model))
                }
                429 => {
                    let retry_after = breaker::retry_after(&rparts.headers);
                    ticket.finish(Outcome::RateLimited { retry_after }).await;
                    let why = match retry_after {
                        Some(d) => format!("HTTP 429, Retry-After {}s", d.as_secs_f64()),
                        None => "HTTP 429".to_owned(),
                    };
                    let answer = buffered(rparts, rbody, model, timeout).await;
                    Attempt::Failed {
                        reservation,
                        why,
                        retry: false,
                        answer,
                    }
                }
                500..=599 => {
                    ticket
                        .finish(Outcome::Failure(format!("HTTP {}", status.as_u16())))
                        .await;
                    let answer = buffered(rparts, rbody, model, timeout).await;
                    failed(reservation, format!("HTTP {}", status.as_u16()), answer)
                }
                s => {
                    ticket.finish(Outcome::ClientError(s)).await;
                    drop(reservation);
                    Attempt::Answer(passthrough(rparts, rbody, model))
                }
            };
        }
        let is_stream = rparts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));

        if is_stream {
            let mut parser = SseParser::new();
            let mut acc = StreamUsage::new(self.api);
            let first =
                match tokio::time::timeout(timeout, first_event(&mut rbody, &mut parser)).await {
                    Err(_) => Err(format!("no first event within {}s", timeout.as_secs())),
                    Ok(r) => r,
                };
            let first = first.and_then(|held| {
                let kinds: Vec<EventKind> = held.iter().map(|ev| acc.on_event(ev)).collect();
                match held.last() {
                    Some(ev) if kinds.last() == Some(&EventKind::Error) => Err(format!(
                        "the stream reported an error before any output: {}",
                        quote(ev.data().as_bytes())
                    )),
                    _ => Ok(held.into_iter().zip(kinds).collect::<Vec<_>>()),
                }
            });
            return match first {
                Ok(held) => {
                    ticket.finish(Outcome::Success).await;
                    let call = self.call(cand, price, request);
                    let filter = self.pii.active(Direction::Output).then(|| {
                        StreamFilter::new(
                            self.pii.clone(),
                            self.gw.vault.clone(),
                            self.agent.clone(),
                            self.api,
                            family,
                        )
                        .with_audit(self.gw.audit().cloned())
                    });
                    Attempt::Answer(relay_stream(
                        call,
                        filter,
                        reservation,
                        rparts,
                        rbody,
                        parser,
                        acc,
                        held,
                        self.strip_usage_chunk,
                        fallback_from,
                    ))
                }
                Err(why) => {
                    ticket
                        .finish(Outcome::Failure(
                            "stream died before its first event".to_owned(),
                        ))
                        .await;
                    let answer =
                        errors::bad_gateway(family, &format!("provider {}: {why}", provider.name));
                    failed(reservation, why, answer)
                }
            };
        }

        let body = match Limited::new(rbody, MAX_RESPONSE_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                let why = format!(
                    "provider {}'s response could not be read: {e}",
                    provider.name
                );
                ticket
                    .finish(Outcome::Failure("response body broke".to_owned()))
                    .await;
                let answer = errors::bad_gateway(family, &why);
                return failed(reservation, why, answer);
            }
        };
        ticket.finish(Outcome::Success).await;
        let call = self.call(cand, price, request);
        let extracted = usage::extract(call.api, &body);
        let (usage, answered) = match extracted {
            Some(x) => (x.usage, x.model),
            None => {
                tokens::ready(&call.model).await;
                (call.estimate(&usage::output_text(call.api, &body)), None)
            }
        };
        let record = call.record(usage, answered.as_deref());
        let cost = record.cost;
        call.settle(reservation, record);
        let mut body_rewritten = false;
        let body = if self.pii.active(Direction::Output) {
            match pii_filter::filter_answer(
                self.pii,
                self.gw.vault.as_ref(),
                self.agent,
                self.api,
                &body,
            )
            .await
            {
                Ok(None) => body,
                Ok(Some(new)) => {
                    body_rewritten = true;
                    new
                }
                Err(refused) => {
                    pii_filter::audit_refusal(
                        self.gw.audit(),
                        self.agent,
                        Direction::Output,
                        &refused,
                    );
                    let mut out = refused.response(family, Direction::Output);
                    annotate(&mut out, &call.model, cost, fallback_from.as_deref());
                    return Attempt::Answer(out);
                }
            }
        } else {
            body
        };
        let mut out = Response::from_parts(rparts, full(body));
        *out.headers_mut() =
            super::upstream::forward_response_headers(out.headers(), body_rewritten);
        annotate(&mut out, &call.model, cost, fallback_from.as_deref());
        Attempt::Answer(out)
    }

    fn call(&self, cand: &Candidate, price: Option<ModelPrice>, request: &mut Value) -> Call {
        Call {
            gw: self.gw.clone(),
            agent: self.agent.clone(),
            api: self.api,
            provider: cand.provider.clone(),
            model: cand.model.clone(),
            tag: self.tag.clone(),
            price,
            request: std::mem::take(request),
        }
    }
}

fn annotate_model(resp: &mut Response<Body>, model: &str) {
    if let Ok(v) = HeaderValue::from_str(model) {
        resp.headers_mut().insert("x-iron-cage-model", v);
    }
}

fn annotate(resp: &mut Response<Body>, model: &str, cost: Micros, fallback_from: Option<&str>) {
    annotate_model(resp, model);
    let h = resp.headers_mut();
    h.insert(
        "x-iron-cage-cost-micros",
        HeaderValue::from(cost.0.max(0) as u64),
    );
    if let Some(v) = fallback_from.and_then(|f| HeaderValue::from_str(f).ok()) {
        h.insert("x-iron-cage-fallback-from", v);
    }
}

/// Relays an SSE stream event by event (no buffering beyond one event) while
/// accumulating usage, then settles. `held` are the events read before the
/// response started (up to the first data event), already seen by `acc`. If
/// the agent hangs up, the upstream call is dropped and what was streamed so
/// far is booked as an estimate.
#[allow(clippy::too_many_arguments)]
fn relay_stream(
    call: Call,
    mut filter: Option<StreamFilter>,
    reservation: Reservation,
    rparts: http::response::Parts,
    mut rbody: Incoming,
    mut parser: SseParser,
    mut acc: StreamUsage,
    held: Vec<(SseEvent, EventKind)>,
    strip_usage_chunk: bool,
    fallback_from: Option<String>,
) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    let model = call.model.clone();
    tokio::spawn(async move {
        let mut agent_gone = false;
        let mut upstream_error = None;
        let mut blocked = false;
        for (ev, kind) in held {
            if kind.is_usage_only() && strip_usage_chunk {
                continue;
            }
            match send_event(&tx, filter.as_mut(), ev).await {
                Sent::Ok => {}
                Sent::AgentGone => agent_gone = true,
                Sent::Blocked => blocked = true,
            }
            if agent_gone || blocked {
                break;
            }
        }
        'outer: while !agent_gone && !blocked {
            while let Some(ev) = parser.next_event() {
                let usage_only = acc.on_event(&ev).is_usage_only();
                if usage_only && strip_usage_chunk {
                    continue;
                }
                match send_event(&tx, filter.as_mut(), ev).await {
                    Sent::Ok => {}
                    Sent::AgentGone => {
                        agent_gone = true;
                        break 'outer;
                    }
                    Sent::Blocked => {
                        blocked = true;
                        break 'outer;
                    }
                }
            }
            match rbody.frame().await {
                None => break,
                Some(Err(e)) => {
                    upstream_error = Some(e.to_string());
                    break;
                }
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if let Err(e) = parser.feed(&data) {
                        upstream_error = Some(e.to_string());
                        break;
                    }
                }
            }
        }
        if !agent_gone
            && !blocked
            && let Some(ev) = parser.finish()
        {
            let usage_only = acc.on_event(&ev).is_usage_only();
            if !(usage_only && strip_usage_chunk)
                && let Sent::Blocked = send_event(&tx, filter.as_mut(), ev).await
            {
                blocked = true;
            }
        }
        // What the PII filter still holds back (a stream cut short, or one
        // without end-of-channel events).
        if !agent_gone
            && !blocked
            && let Some(f) = filter.as_mut()
        {
            match f.finish().await {
                Ok(evs) => {
                    for ev in evs {
                        let _ = tx.send(Ok(ev)).await;
                    }
                }
                Err(error_event) => {
                    let _ = tx.send(Ok(error_event)).await;
                    blocked = true;
                }
            }
        }
        if let Some(e) = &upstream_error {
            tracing::warn!(agent = %call.agent, provider = %call.provider.name, "stream from provider broke: {e}");
            let _ = tx
                .send(Err(std::io::Error::other(format!(
                    "upstream stream broke: {e}"
                ))))
                .await;
        }
        let complete = !agent_gone && !blocked && upstream_error.is_none();
        let answered = acc.model().map(str::to_owned);
        let usage = match acc.usage() {
            Some(u) if complete => u,
            _ => {
                tokens::ready(&call.model).await;
                call.estimate(acc.output_text())
            }
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
    annotate_model(&mut out, &model);
    if let Some(v) = fallback_from.and_then(|f| HeaderValue::from_str(&f).ok()) {
        out.headers_mut().insert("x-iron-cage-fallback-from", v);
    }
    out
}

/// What [`send_event`] did.
enum Sent {
    Ok,
    AgentGone,
    /// The PII filter ended the stream (its error event was sent).
    Blocked,
}

/// Sends one event to the agent, through the PII filter when there is one.
async fn send_event(
    tx: &mpsc::Sender<Result<Bytes, std::io::Error>>,
    filter: Option<&mut StreamFilter>,
    ev: SseEvent,
) -> Sent {
    let Some(f) = filter else {
        return match tx.send(Ok(ev.into_raw())).await {
            Ok(()) => Sent::Ok,
            Err(_) => Sent::AgentGone,
        };
    };
    match f.on_event(ev).await {
        Ok(evs) => {
            for e in evs {
                if tx.send(Ok(e)).await.is_err() {
                    return Sent::AgentGone;
                }
            }
            Sent::Ok
        }
        Err(error_event) => {
            let _ = tx.send(Ok(error_event)).await;
            Sent::Blocked
        }
    }
}

/// Splits an agent's request into its path and query, its head, and its body
/// (read whole, up to [`MAX_REQUEST_BODY`]).
async fn read_request(
    family: ProviderKind,
    req: Request<Incoming>,
) -> Result<(String, http::request::Parts, Bytes), Response<Body>> {
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let (parts, body) = req.into_parts();
    match Limited::new(body, MAX_REQUEST_BODY).collect().await {
        Ok(b) => Ok((path_and_query, parts, b.to_bytes())),
        Err(e) => Err(errors::error(
            family,
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request_too_large",
            &format!(
                "Iron Cage gateway: cannot read the request body ({e}); the limit is {} MiB",
                MAX_REQUEST_BODY >> 20
            ),
        )),
    }
}

/// Proxies a non-metered path (only when the config allows it).
async fn unmetered(
    gw: Arc<Gateway>,
    snap: &Snapshot,
    agent: AgentName,
    family: ProviderKind,
    req: Request<Incoming>,
) -> Response<Body> {
    let Some(provider) = snap.route(&agent, family, "").ok().map(|(p, _)| p) else {
        return errors::bad_request(
            family,
            "no_provider",
            &format!("no {} provider is configured", family.as_str()),
        );
    };
    let (path_and_query, parts, bytes) = match read_request(family, req).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    // A body on a path whose text fields the PII policy does not know cannot be
    // checked: fail closed. (Bodiless calls such as GET /v1/models pass; their
    // answers are not scanned.)
    if !bytes.is_empty() && snap.pii_for(&agent).active(Direction::Prompt) {
        tracing::warn!(agent = %agent, path = %path_and_query, "unmetered call blocked: its body cannot be checked by the PII policy");
        return errors::bad_request(
            family,
            "pii_scan_failed",
            &format!(
                "{} is not an API whose request the PII policy (prompt) can check, so the call was blocked; use a metered API, or set prompt = {{}} under this agent's [agent.pii]",
                parts.uri.path()
            ),
        );
    }
    let mut up = Request::builder()
        .method(parts.method.clone())
        .uri(upstream_url(&provider.base_url, family, &path_and_query));
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
    match tokio::time::timeout(snap.upstream_timeout, gw.client().request(up)).await {
        Ok(Ok(r)) => {
            let (p, b) = r.into_parts();
            let mut out = Response::from_parts(p, b.map_err(std::io::Error::other).boxed());
            *out.headers_mut() = super::upstream::forward_response_headers(out.headers(), false);
            out
        }
        Ok(Err(e)) => errors::bad_gateway(
            family,
            &format!("cannot reach provider {}: {e}", provider.name),
        ),
        Err(_) => errors::bad_gateway(
            family,
            &format!("provider {} did not answer in time", provider.name),
        ),
    }
}
