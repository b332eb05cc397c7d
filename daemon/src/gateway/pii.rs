//! The PII policy at the gateway: requests are scanned before they are
//! forwarded, answers before they reach the agent.
//!
//! Only text fields are scanned, walked in place in the already-parsed body
//! (no copy when nothing is found):
//!
//! | API | request | answer |
//! |---|---|---|
//! | Chat Completions | `messages[].content` (string, parts' `text`, `refusal` parts), `.refusal`, `.reasoning_content`, `tool_calls[].function.arguments`, `function_call.arguments` | `choices[].message.content`, `.refusal`, `.reasoning_content`, `.tool_calls[].function.arguments`, `.function_call.arguments` |
//! | Responses | `instructions`, `input` (string, items' `content` / parts' `text` and `refusal`, `reasoning` items' `summary[].text`, `arguments`, `custom_tool_call.input`, `output`) | `output[]` the same way, `output_text` |
//! | Anthropic Messages | `system`, `messages[].content` (string, `text` blocks and their `citations[].cited_text`, `thinking` blocks' `thinking`, `tool_use` / `server_tool_use` / `mcp_tool_use` input (every string), `tool_result` / `mcp_tool_result` / `search_result` content, `document` blocks' `title`, `context` and text or content `source`) | `content[]` the same way |
//! | Embeddings | `input` (string or strings) | - |
//!
//! Actions: `block` answers an error in the provider's shape naming the kinds
//! found (never values): 400 `pii_blocked` for a prompt, 422
//! `pii_blocked_output` for an answer (4xx: the SDKs do not retry them); `redact` rewrites the field (label, mask
//! or reversible token, the tokens stored before the text is released); `log`
//! records kinds and spans (field number, byte range), never values.
//!
//! Streams ([`StreamFilter`]): each text channel (a choice's content, refusal,
//! `reasoning_content`, one tool call's or the legacy function call's
//! arguments; one Anthropic content block's `text_delta`, `thinking_delta` or
//! `input_json_delta`; one Responses output text, refusal, function arguments,
//! custom tool input, reasoning summary or reasoning text) has its own
//! [`StreamScanner`](ironcage_shared::pii::StreamScanner), so an entity split
//! across events is still caught: each delta event is re-serialized carrying
//! only what is safe to release, and what is held back goes out in an event of
//! the same shape when its channel ends. A blocked kind ends the stream with an
//! error event the SDKs raise. Whole fields in stream events (Responses
//! `.done`, part and item events, Anthropic `citations_delta`) are scanned
//! whole.
//!
//! Anthropic `thinking` is scanned like any text: redacting it changes text
//! its `signature` covers, so the provider may refuse that block when the
//! agent sends it back; `block` or a policy that allows the kind avoids that.
//! `redacted_thinking`, `signature` and `encrypted_content` are opaque.
//!
//! Fail closed: a body that cannot be parsed where a policy applies, a token
//! that cannot be stored, or any redaction error blocks the call.

use super::Body;
use super::errors;
use super::routes::Api;
use super::sse::SseEvent;
use crate::config::{PiiSpec, PiiStyle, ProviderKind};
use crate::pii_vault::{Minter, PiiVault};
use bytes::Bytes;
use http::{Response, StatusCode};
use ironcage_shared::AgentName;
use ironcage_shared::pii::{
    Action, Direction, Finding, Kind, PiiError, PiiPolicies, Policy, RedactStyle, Scanner,
    ScannerConfig, StreamScanner,
};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

/// One agent's PII settings, ready to use (scanners built).
#[derive(Debug)]
pub struct AgentPii {
    /// One scanner per direction (prompt, output, logs): the agent's scanner
    /// config scoped to that direction's policy
    /// ([`ScannerConfig::scoped_to`]: under the built-in prompt policy, the
    /// secrets pass alone). Directions with the same scope share one.
    scanners: [Arc<Scanner>; 3],
    pub policies: PiiPolicies,
    pub style: PiiStyle,
}

impl AgentPii {
    /// Builds the agent's scanners, taking from `cache` any it already holds.
    pub fn build(spec: &PiiSpec, cache: &mut ScannerCache) -> Result<AgentPii, PiiError> {
        let mut scoped = |d: Direction| cache.get(&spec.scanner.scoped_to(spec.policies.get(d)));
        Ok(AgentPii {
            scanners: [
                scoped(Direction::Prompt)?,
                scoped(Direction::Output)?,
                scoped(Direction::Logs)?,
            ],
            policies: spec.policies.clone(),
            style: spec.style,
        })
    }

    /// The scanner for `direction`.
    pub fn scanner(&self, direction: Direction) -> &Arc<Scanner> {
        &self.scanners[match direction {
            Direction::Prompt => 0,
            Direction::Output => 1,
            Direction::Logs => 2,
        }]
    }

    /// Whether `direction` needs a scan at all.
    pub fn active(&self, direction: Direction) -> bool {
        self.policies.get(direction).strictest_possible() > Action::Allow
    }
}

/// Scanners by config, so agents (and directions) with the same config share
/// one: a scanner holds compiled automata and regexes.
#[derive(Debug, Default)]
pub struct ScannerCache(Vec<(ScannerConfig, Arc<Scanner>)>);

impl ScannerCache {
    /// The scanner for `config`, built on first use.
    pub fn get(&mut self, config: &ScannerConfig) -> Result<Arc<Scanner>, PiiError> {
        if let Some((_, s)) = self.0.iter().find(|(c, _)| c == config) {
            return Ok(s.clone());
        }
        let s = Arc::new(Scanner::new(config)?);
        self.0.push((config.clone(), s.clone()));
        Ok(s)
    }
}

/// Why a text was refused; carries kinds and the reason, never values.
#[derive(Debug)]
pub enum Refused {
    /// The policy blocks these kinds.
    Blocked(Vec<Kind>),
    /// Scanning or redacting failed (fail closed).
    Failed(String),
}

impl Refused {
    /// The answer for the agent, in `family`'s error shape.
    pub fn response(&self, family: ProviderKind, direction: Direction) -> Response<Body> {
        let (status, code, msg) = self.parts(direction);
        errors::error(family, status, "invalid_request_error", code, &msg)
    }

    fn parts(&self, direction: Direction) -> (StatusCode, &'static str, String) {
        let what = match direction {
            Direction::Prompt => "the request",
            Direction::Output => "the provider's answer",
            Direction::Logs => "the log line",
        };
        match self {
            Refused::Blocked(kinds) => {
                let (status, code, hint) = match direction {
                    Direction::Output => (
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "pii_blocked_output",
                        "the answer was withheld by this agent's PII policy (output)",
                    ),
                    _ => (
                        StatusCode::BAD_REQUEST,
                        "pii_blocked",
                        "remove them, or change this agent's PII policy (prompt) in the daemon config",
                    ),
                };
                (
                    status,
                    code,
                    format!(
                        "Iron Cage gateway: {what} contains {} ({hint}); the call was blocked",
                        kind_list(kinds)
                    ),
                )
            }
            // 4xx, not 5xx: the SDKs retry 5xx, and a retry would pay for the
            // call again only to fail the same way.
            Refused::Failed(why) => (
                match direction {
                    Direction::Prompt => StatusCode::BAD_REQUEST,
                    _ => StatusCode::UNPROCESSABLE_ENTITY,
                },
                "pii_scan_failed",
                format!(
                    "Iron Cage gateway: {what} could not be checked against this agent's PII policy ({why}); the call was blocked"
                ),
            ),
        }
    }
}

/// `email, openai_key` (deduplicated, in order).
fn kind_list(kinds: &[Kind]) -> String {
    let mut out = String::new();
    for (i, k) in kinds.iter().enumerate() {
        if kinds[..i].contains(k) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push_str(k.name());
    }
    out
}

// ---------------------------------------------------------------------------
// Walkers: every text field of a body, in place.
// ---------------------------------------------------------------------------

type Visit<'a> = dyn FnMut(&mut String) + 'a;

fn text(v: Option<&mut Value>, f: &mut Visit<'_>) {
    if let Some(Value::String(s)) = v {
        f(s);
    }
}

/// Every string anywhere under `v` (tool inputs given as JSON objects).
fn all_strings(v: &mut Value, f: &mut Visit<'_>) {
    match v {
        Value::String(s) => f(s),
        Value::Array(a) => a.iter_mut().for_each(|x| all_strings(x, f)),
        Value::Object(o) => o.values_mut().for_each(|x| all_strings(x, f)),
        _ => {}
    }
}

/// A string, or an array of parts/blocks whose `text` is scanned (and
/// `refusal` parts; for Anthropic blocks, `citations[].cited_text`,
/// `thinking`, `tool_use` / `server_tool_use` / `mcp_tool_use` input,
/// `tool_result` / `mcp_tool_result` / `search_result` content and
/// `document`s).
fn content(v: Option<&mut Value>, f: &mut Visit<'_>) {
    match v {
        Some(Value::String(s)) => f(s),
        Some(Value::Array(parts)) => {
            for p in parts {
                block(p, f);
            }
        }
        _ => {}
    }
}

fn block(p: &mut Value, f: &mut Visit<'_>) {
    let Some(o) = p.as_object_mut() else {
        if let Value::String(s) = p {
            f(s);
        }
        return;
    };
    text(o.get_mut("text"), f);
    // Anthropic citations quote the documents they cite.
    if let Some(Value::Array(cs)) = o.get_mut("citations") {
        for c in cs {
            text(c.get_mut("cited_text"), f);
        }
    }
    match o.get("type").and_then(Value::as_str) {
        Some("tool_use" | "server_tool_use" | "mcp_tool_use") => {
            if let Some(i) = o.get_mut("input") {
                all_strings(i, f);
            }
        }
        Some("tool_result" | "search_result" | "mcp_tool_result") => {
            content(o.get_mut("content"), f)
        }
        // Chat Completions and Responses refusal parts.
        Some("refusal") => text(o.get_mut("refusal"), f),
        // Anthropic visible reasoning, in answers and sent back in requests
        // (`redacted_thinking.data` is opaque and left alone).
        Some("thinking") => text(o.get_mut("thinking"), f),
        Some("document") => document(o, f),
        _ => {}
    }
}

/// An Anthropic `document` block: its `title`, `context` and a plain-text
/// (`source.type: text`, `data`) or custom-content (`source.type: content`)
/// source. PDF (base64), URL and file sources carry no text here.
fn document(o: &mut Map<String, Value>, f: &mut Visit<'_>) {
    text(o.get_mut("title"), f);
    text(o.get_mut("context"), f);
    let Some(src) = o.get_mut("source").and_then(Value::as_object_mut) else {
        return;
    };
    match src.get("type").and_then(Value::as_str) {
        Some("text") => text(src.get_mut("data"), f),
        Some("content") => content(src.get_mut("content"), f),
        _ => {}
    }
}

fn tool_calls(v: Option<&mut Value>, f: &mut Visit<'_>) {
    if let Some(Value::Array(calls)) = v {
        for c in calls {
            text(c.pointer_mut("/function/arguments"), f);
        }
    }
}

/// A Responses API item (input or output).
fn responses_item(item: &mut Value, f: &mut Visit<'_>) {
    match item {
        Value::String(s) => f(s),
        Value::Object(o) => {
            content(o.get_mut("content"), f);
            // `reasoning` items: `summary[].text`.
            content(o.get_mut("summary"), f);
            text(o.get_mut("arguments"), f);
            if o.get("type").and_then(Value::as_str) == Some("custom_tool_call") {
                text(o.get_mut("input"), f);
            }
            match o.get_mut("output") {
                Some(Value::String(s)) => f(s),
                Some(Value::Array(parts)) => parts.iter_mut().for_each(|p| block(p, f)),
                _ => {}
            }
        }
        _ => {}
    }
}

/// Visits every text field of a request body.
pub fn walk_request(api: Api, body: &mut Value, f: &mut Visit<'_>) {
    let Some(o) = body.as_object_mut() else {
        return;
    };
    match api {
        Api::ChatCompletions => {
            if let Some(Value::Array(msgs)) = o.get_mut("messages") {
                for m in msgs {
                    content(m.get_mut("content"), f);
                    text(m.get_mut("refusal"), f);
                    // OpenAI-compatible reasoning models.
                    text(m.get_mut("reasoning_content"), f);
                    tool_calls(m.get_mut("tool_calls"), f);
                    text(m.pointer_mut("/function_call/arguments"), f);
                }
            }
        }
        Api::Responses => {
            text(o.get_mut("instructions"), f);
            match o.get_mut("input") {
                Some(Value::String(s)) => f(s),
                Some(Value::Array(items)) => items.iter_mut().for_each(|i| responses_item(i, f)),
                _ => {}
            }
        }
        Api::AnthropicMessages => {
            content(o.get_mut("system"), f);
            if let Some(Value::Array(msgs)) = o.get_mut("messages") {
                for m in msgs {
                    content(m.get_mut("content"), f);
                }
            }
        }
        Api::Embeddings => match o.get_mut("input") {
            Some(Value::String(s)) => f(s),
            Some(Value::Array(a)) => a.iter_mut().for_each(|x| text(Some(x), f)),
            _ => {}
        },
    }
}

/// Visits every text field of a (non-streamed) answer.
pub fn walk_response(api: Api, body: &mut Value, f: &mut Visit<'_>) {
    let Some(o) = body.as_object_mut() else {
        return;
    };
    match api {
        Api::ChatCompletions => {
            if let Some(Value::Array(choices)) = o.get_mut("choices") {
                for c in choices {
                    if let Some(m) = c.get_mut("message") {
                        text(m.get_mut("content"), f);
                        text(m.get_mut("refusal"), f);
                        text(m.get_mut("reasoning_content"), f);
                        tool_calls(m.get_mut("tool_calls"), f);
                        text(m.pointer_mut("/function_call/arguments"), f);
                    }
                }
            }
        }
        Api::Responses => {
            if let Some(Value::Array(items)) = o.get_mut("output") {
                items.iter_mut().for_each(|i| responses_item(i, f));
            }
            text(o.get_mut("output_text"), f);
        }
        Api::AnthropicMessages => content(o.get_mut("content"), f),
        Api::Embeddings => {}
    }
}

// ---------------------------------------------------------------------------
// Whole bodies.
// ---------------------------------------------------------------------------

/// What a scan of a body found: the strictest action and, for the log, each
/// finding's field number, kind, action and span.
#[derive(Default)]
struct Tally {
    strictest: Option<Action>,
    blocked: Vec<Kind>,
    /// The first [`MAX_NOTED`] findings to log, as they came; formatted only
    /// when the log event is enabled (a `log` policy on prose meets dozens
    /// of findings per call, and formatting them cost more than the scan's
    /// numeric parsing).
    notes: Vec<Note>,
    noted: usize,
}

struct Note {
    field: usize,
    kind: Kind,
    action: Action,
    start: usize,
    end: usize,
}

/// At most this many findings are itemised in one log event.
const MAX_NOTED: usize = 32;

impl Tally {
    fn add(&mut self, field: usize, f: &Finding, action: Action) {
        self.strictest = self.strictest.max(Some(action));
        if action == Action::Block && !self.blocked.contains(&f.kind) {
            self.blocked.push(f.kind.clone());
        }
        if action >= Action::Log {
            self.noted += 1;
            if self.notes.len() < MAX_NOTED {
                self.notes.push(Note {
                    field,
                    kind: f.kind.clone(),
                    action,
                    start: f.start,
                    end: f.end,
                });
            }
        }
    }

    fn log(&self, agent: &AgentName, direction: Direction) {
        if self.noted == 0 || !tracing::enabled!(target: "pii", tracing::Level::INFO) {
            return;
        }
        let mut notes = String::new();
        for (i, n) in self.notes.iter().enumerate() {
            if i > 0 {
                notes.push_str(", ");
            }
            let _ = write!(
                notes,
                "{}:{} field {} bytes {}..{}",
                n.kind.name(),
                n.action,
                n.field,
                n.start,
                n.end
            );
        }
        let more = self.noted.saturating_sub(MAX_NOTED);
        tracing::info!(
            target: "pii",
            agent = %agent,
            direction = ?direction,
            findings = self.noted,
            "PII found: {}{}",
            notes,
            if more > 0 { format!(" (+{more} more)") } else { String::new() }
        );
    }
}

/// Puts a refused call on the audit trail: the agent as actor, the direction
/// and the kinds (never a value), or why the check failed. Queued (group
/// commit): the call is refused whether or not the entry is written.
pub fn audit_refusal(
    audit: Option<&crate::audit::AuditHandle>,
    agent: &AgentName,
    direction: Direction,
    r: &Refused,
) {
    let Some(audit) = audit else { return };
    let direction = match direction {
        Direction::Prompt => "prompt",
        Direction::Output => "output",
        Direction::Logs => "logs",
    };
    let detail = match r {
        Refused::Blocked(kinds) => format!("{direction}: {}", kind_list(kinds)),
        Refused::Failed(why) => format!("{direction}: the PII check failed: {why}"),
    };
    audit.record(
        crate::audit::Draft::new(
            crate::audit::Actor::agent(agent.as_str()),
            "pii block",
            agent.as_str(),
            ironcage_shared::protocol::AuditOutcome::Denied,
        )
        .detail(detail),
    );
}

/// Scans `body`'s text fields (walked by `walk`) and applies the agent's
/// `direction` policy in place. Returns whether the body was rewritten.
pub async fn apply_body(
    pii: &AgentPii,
    vault: Option<&Arc<PiiVault>>,
    agent: &AgentName,
    direction: Direction,
    body: &mut Value,
    walk: impl Fn(&mut Value, &mut Visit<'_>),
) -> Result<bool, Refused> {
    let policy = pii.policies.get(direction);
    let mut tally = Tally::default();
    let mut found = Vec::new();
    let mut field = 0usize;
    // The findings of each field that has any, by field number: a redaction
    // rewrites with them rather than scanning the body a second time (the
    // walk visits the same fields in the same order, and nothing changes in
    // between).
    let mut per_field: Vec<(usize, Vec<Finding>)> = Vec::new();
    walk(body, &mut |s: &mut String| {
        field += 1;
        pii.scanner(direction).scan_into(s, &mut found);
        for f in &found {
            tally.add(field, f, policy.action_for(&f.kind));
        }
        if !found.is_empty() {
            per_field.push((field, std::mem::take(&mut found)));
        }
    });
    tally.log(agent, direction);
    match tally.strictest {
        None | Some(Action::Allow | Action::Log) => return Ok(false),
        Some(Action::Block) => {
            tracing::warn!(target: "pii", agent = %agent, direction = ?direction, kinds = %kind_list(&tally.blocked), "call blocked by the PII policy");
            return Err(Refused::Blocked(tally.blocked));
        }
        Some(Action::Redact) => {}
    }
    let mut minter = minter_for(pii.style, vault)?;
    let mut error = None;
    let mut field = 0usize;
    let mut next = per_field.iter().peekable();
    walk(body, &mut |s: &mut String| {
        field += 1;
        let Some((_, found)) = next.next_if(|(i, _)| *i == field) else {
            return;
        };
        if error.is_some() {
            return;
        }
        match apply_text(policy, pii.style, minter.as_mut(), s, found) {
            Ok(Some(new)) => *s = new,
            Ok(None) => {}
            Err(e) => error = Some(e),
        }
    });
    if let Some(e) = error {
        return Err(e);
    }
    commit(minter).await?;
    Ok(true)
}

fn minter_for(style: PiiStyle, vault: Option<&Arc<PiiVault>>) -> Result<Option<Minter>, Refused> {
    if style != PiiStyle::Token {
        return Ok(None);
    }
    let v = vault.ok_or_else(|| {
        Refused::Failed("reversible tokens are configured but the token store is not open".into())
    })?;
    v.minter()
        .map(Some)
        .map_err(|e| Refused::Failed(format!("the PII token store is unavailable: {e}")))
}

async fn commit(minter: Option<Minter>) -> Result<(), Refused> {
    let Some(m) = minter.filter(|m| m.pending() > 0) else {
        return Ok(());
    };
    match tokio::task::spawn_blocking(move || m.commit()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(Refused::Failed(format!("cannot store PII tokens: {e}"))),
        Err(_) => Err(Refused::Failed("the PII token writer failed".into())),
    }
}

/// `text` with `findings` handled per `policy`: `Some(new)` when rewritten.
fn apply_text(
    policy: &Policy,
    style: PiiStyle,
    minter: Option<&mut Minter>,
    text: &str,
    findings: &[Finding],
) -> Result<Option<String>, Refused> {
    let style = match (style, minter) {
        (PiiStyle::Token, Some(m)) => RedactStyle::Token(m),
        (PiiStyle::Mask, _) => RedactStyle::Mask,
        _ => RedactStyle::Label,
    };
    let outcome = policy
        .apply(text, findings, style)
        .map_err(|e| Refused::Failed(e.to_string()))?;
    if outcome.is_blocked() {
        return Err(Refused::Blocked(outcome.blocked_kinds().cloned().collect()));
    }
    Ok(outcome.text)
}

/// Applies the output policy to a non-streamed answer: `Some(bytes)` when it
/// was rewritten, `None` when it passes as it is.
pub async fn filter_answer(
    pii: &AgentPii,
    vault: Option<&Arc<PiiVault>>,
    agent: &AgentName,
    api: Api,
    body: &[u8],
) -> Result<Option<Bytes>, Refused> {
    let mut v: Value = serde_json::from_slice(body)
        .map_err(|e| Refused::Failed(format!("the answer is not JSON ({e})")))?;
    let rewritten = apply_body(pii, vault, agent, Direction::Output, &mut v, |b, f| {
        walk_response(api, b, f)
    })
    .await?;
    if !rewritten {
        return Ok(None);
    }
    serde_json::to_vec(&v)
        .map(|b| Some(Bytes::from(b)))
        .map_err(|e| Refused::Failed(format!("cannot re-encode the answer ({e})")))
}

// ---------------------------------------------------------------------------
// Streams.
// ---------------------------------------------------------------------------

/// One text channel of a stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Channel {
    /// Chat: choice `i`'s content.
    ChatContent(u64),
    /// Chat: choice `i`, tool call `k`'s arguments.
    ChatTool(u64, u64),
    /// Chat: choice `i`'s refusal.
    ChatRefusal(u64),
    /// Chat: choice `i`'s legacy `function_call.arguments`.
    ChatFunction(u64),
    /// Chat: choice `i`'s `reasoning_content` (OpenAI-compatible reasoning models).
    ChatReasoning(u64),
    /// Anthropic: content block `i` (text, thinking or tool input JSON).
    Block(u64),
    /// Responses: output item `i`, content part `j`'s text.
    RespText(u64, u64),
    /// Responses: output item `i`, content part `j`'s refusal.
    RespRefusal(u64, u64),
    /// Responses: output item `i`'s function call arguments.
    RespArgs(u64),
    /// Responses: output item `i`'s custom tool call input.
    RespInput(u64),
    /// Responses: reasoning item `i`, summary part `k`'s text.
    RespSummary(u64, u64),
    /// Responses: reasoning item `i`, content part `j`'s reasoning text.
    RespReasoning(u64, u64),
}

impl Channel {
    /// Chat: the choice this channel belongs to.
    fn chat_choice(&self) -> Option<u64> {
        match self {
            Channel::ChatContent(i)
            | Channel::ChatTool(i, _)
            | Channel::ChatRefusal(i)
            | Channel::ChatFunction(i)
            | Channel::ChatReasoning(i) => Some(*i),
            _ => None,
        }
    }
}

struct ChannelState {
    scanner: StreamScanner,
    /// What to put in a synthesized delta for this channel's held-back tail.
    template: Value,
}

/// Applies the output policy to a streamed answer, event by event.
pub struct StreamFilter {
    pii: Arc<AgentPii>,
    vault: Option<Arc<PiiVault>>,
    agent: AgentName,
    api: Api,
    /// `log` at most: events pass unchanged; findings are only recorded.
    passive: bool,
    channels: HashMap<Channel, ChannelState>,
    /// Order channels were opened (flushing in a stable order).
    order: Vec<Channel>,
    /// The first chat chunk's head (id, created, model...), for a chunk that
    /// carries held-back text at the end of the stream.
    chat_head: Option<Map<String, Value>>,
    tally: Tally,
    field: usize,
    family: ProviderKind,
    /// Where a stream ended by the policy is recorded.
    audit: Option<crate::audit::AuditHandle>,
}

impl std::fmt::Debug for StreamFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamFilter")
            .field("agent", &self.agent)
            .field("api", &self.api)
            .field("channels", &self.channels.len())
            .finish_non_exhaustive()
    }
}

/// Events to send, or the error event that ends the stream.
pub type Filtered = Result<Vec<Bytes>, Bytes>;

impl StreamFilter {
    pub fn new(
        pii: Arc<AgentPii>,
        vault: Option<Arc<PiiVault>>,
        agent: AgentName,
        api: Api,
        family: ProviderKind,
    ) -> StreamFilter {
        let passive = pii.policies.output.strictest_possible() <= Action::Log;
        StreamFilter {
            pii,
            vault,
            agent,
            api,
            passive,
            channels: HashMap::new(),
            order: Vec::new(),
            chat_head: None,
            tally: Tally::default(),
            field: 0,
            family,
            audit: None,
        }
    }

    /// Records the stream's refusal, if any, on this audit trail.
    pub fn with_audit(mut self, audit: Option<crate::audit::AuditHandle>) -> Self {
        self.audit = audit;
        self
    }

    /// Filters one event.
    pub async fn on_event(&mut self, ev: SseEvent) -> Filtered {
        if !ev.has_data() {
            return Ok(vec![ev.into_raw()]);
        }
        let data = ev.data();
        if data.trim() == "[DONE]" {
            let mut out = self.flush_all().await?;
            out.push(ev.into_raw());
            return Ok(out);
        }
        let mut v: Value = match serde_json::from_str(data) {
            Ok(v) => v,
            Err(e) => return Err(self.fail(&format!("a stream event is not JSON ({e})"))),
        };
        let name = ev.event().map(str::to_owned);
        let mut minter = if self.passive {
            None
        } else {
            minter_for(self.pii.style, self.vault.as_ref()).map_err(|r| self.refuse(r))?
        };
        let res = match self.api {
            Api::ChatCompletions => self.chat(&mut v, minter.as_mut()),
            Api::AnthropicMessages => self.anthropic(&mut v, minter.as_mut()),
            Api::Responses => self.responses(&mut v, minter.as_mut()),
            Api::Embeddings => Ok((Vec::new(), false)),
        };
        let (mut before, changed) = res.map_err(|r| self.refuse(r))?;
        commit(minter).await.map_err(|r| self.refuse(r))?;
        if self.passive || !changed {
            before.push(ev.into_raw());
        } else {
            before.push(encode(name.as_deref(), &v));
        }
        Ok(before)
    }

    /// At the end of the stream: what is still held back, then the findings
    /// are logged.
    pub async fn finish(&mut self) -> Filtered {
        let out = self.flush_all().await;
        self.tally.log(&self.agent, Direction::Output);
        self.tally = Tally::default();
        out
    }

    fn fail(&mut self, why: &str) -> Bytes {
        self.refuse(Refused::Failed(why.to_owned()))
    }

    /// The error event ending a stream (and the log line saying why).
    fn refuse(&mut self, r: Refused) -> Bytes {
        self.tally.log(&self.agent, Direction::Output);
        self.tally = Tally::default();
        audit_refusal(self.audit.as_ref(), &self.agent, Direction::Output, &r);
        match &r {
            Refused::Blocked(k) => {
                tracing::warn!(target: "pii", agent = %self.agent, direction = "output", kinds = %kind_list(k), "stream ended by the PII policy")
            }
            Refused::Failed(why) => {
                tracing::warn!(target: "pii", agent = %self.agent, direction = "output", "stream ended: PII check failed: {why}")
            }
        }
        let (_, code, msg) = r.parts(Direction::Output);
        let (name, body) = match (self.family, self.api) {
            (ProviderKind::Anthropic, _) => (
                Some("error"),
                serde_json::json!({"type": "error", "error": {"type": "invalid_request_error", "message": msg}}),
            ),
            (_, Api::Responses) => (
                Some("error"),
                serde_json::json!({"type": "error", "code": code, "message": msg, "param": null,
                    "error": {"type": "invalid_request_error", "code": code, "message": msg}}),
            ),
            _ => (
                None,
                serde_json::json!({"error": {"message": msg, "type": "invalid_request_error", "param": null, "code": code}}),
            ),
        };
        encode(name, &body)
    }

    /// Pushes `delta` into `ch`; returns the text to release now (redacted).
    fn push(
        &mut self,
        ch: Channel,
        template: impl FnOnce() -> Value,
        delta: &str,
        minter: Option<&mut Minter>,
    ) -> Result<String, Refused> {
        if !self.channels.contains_key(&ch) {
            self.channels.insert(
                ch.clone(),
                ChannelState {
                    scanner: StreamScanner::new(self.pii.scanner(Direction::Output).clone()),
                    template: template(),
                },
            );
            self.order.push(ch.clone());
            self.field += 1;
        }
        let Some(state) = self.channels.get_mut(&ch) else {
            return Ok(delta.to_owned());
        };
        let r = state.scanner.push(delta);
        release(
            &mut self.tally,
            self.field,
            &self.pii,
            self.passive,
            minter,
            r.text,
            r.findings,
            r.offset,
        )
    }

    /// Ends `ch`: its held-back text, redacted (empty when nothing was held).
    fn end(
        &mut self,
        ch: &Channel,
        minter: Option<&mut Minter>,
    ) -> Result<(String, Value), Refused> {
        let Some(mut state) = self.channels.remove(ch) else {
            return Ok((String::new(), Value::Null));
        };
        self.order.retain(|c| c != ch);
        let r = state.scanner.finish();
        let text = release(
            &mut self.tally,
            self.field,
            &self.pii,
            self.passive,
            minter,
            r.text,
            r.findings,
            r.offset,
        )?;
        Ok((text, state.template))
    }

    /// Every open channel's tail, as synthesized delta events.
    async fn flush_all(&mut self) -> Filtered {
        if self.order.is_empty() {
            return Ok(Vec::new());
        }
        let mut minter = if self.passive {
            None
        } else {
            minter_for(self.pii.style, self.vault.as_ref()).map_err(|r| self.refuse(r))?
        };
        let mut out = Vec::new();
        for ch in self.order.clone() {
            let (tail, template) = self.end(&ch, minter.as_mut()).map_err(|r| self.refuse(r))?;
            if tail.is_empty() || self.passive {
                continue;
            }
            if let Some(ev) = self.synthesize(&ch, template, tail) {
                out.push(ev);
            }
        }
        commit(minter).await.map_err(|r| self.refuse(r))?;
        Ok(out)
    }

    /// A delta event carrying `tail` for `ch`.
    fn synthesize(&self, ch: &Channel, template: Value, tail: String) -> Option<Bytes> {
        match ch {
            Channel::ChatContent(i)
            | Channel::ChatTool(i, _)
            | Channel::ChatRefusal(i)
            | Channel::ChatFunction(i)
            | Channel::ChatReasoning(i) => {
                let mut head = self.chat_head.clone().unwrap_or_default();
                let delta = match ch {
                    Channel::ChatTool(_, k) => {
                        serde_json::json!({"tool_calls": [{"index": k, "function": {"arguments": tail}}]})
                    }
                    Channel::ChatRefusal(_) => serde_json::json!({"refusal": tail}),
                    Channel::ChatReasoning(_) => serde_json::json!({"reasoning_content": tail}),
                    Channel::ChatFunction(_) => {
                        serde_json::json!({"function_call": {"arguments": tail}})
                    }
                    _ => serde_json::json!({"content": tail}),
                };
                head.insert(
                    "choices".into(),
                    serde_json::json!([{"index": i, "delta": delta, "finish_reason": null}]),
                );
                Some(encode(None, &Value::Object(head)))
            }
            Channel::Block(_)
            | Channel::RespText(..)
            | Channel::RespRefusal(..)
            | Channel::RespArgs(_)
            | Channel::RespInput(_)
            | Channel::RespSummary(..)
            | Channel::RespReasoning(..) => {
                let mut t = template;
                let field = match ch {
                    Channel::Block(_) => {
                        anthropic_delta_field(t.pointer("/delta/type").and_then(Value::as_str))
                            .unwrap_or("/delta/text")
                    }
                    _ => "/delta",
                };
                *t.pointer_mut(field)? = Value::String(tail);
                let name = t.get("type").and_then(Value::as_str).map(str::to_owned);
                Some(encode(name.as_deref(), &t))
            }
        }
    }

    /// Chat chunk: `choices[].delta.content` and tool call arguments; a choice
    /// that finishes gets its channels' tails in the same chunk.
    fn chat(
        &mut self,
        v: &mut Value,
        mut minter: Option<&mut Minter>,
    ) -> Result<(Vec<Bytes>, bool), Refused> {
        if self.chat_head.is_none()
            && let Some(o) = v.as_object()
        {
            let mut head = Map::new();
            for (k, x) in o {
                if k != "choices" && k != "usage" {
                    head.insert(k.clone(), x.clone());
                }
            }
            head.insert(
                "object".into(),
                Value::String("chat.completion.chunk".into()),
            );
            self.chat_head = Some(head);
        }
        let Some(Value::Array(choices)) = v.get_mut("choices") else {
            return Ok((Vec::new(), false));
        };
        let mut changed = false;
        for c in choices.iter_mut() {
            let i = c.get("index").and_then(Value::as_u64).unwrap_or(0);
            let finished = c.get("finish_reason").is_some_and(|r| !r.is_null());
            let Some(delta) = c.get_mut("delta").and_then(Value::as_object_mut) else {
                continue;
            };
            for (key, ch) in [
                ("content", Channel::ChatContent(i)),
                ("refusal", Channel::ChatRefusal(i)),
                ("reasoning_content", Channel::ChatReasoning(i)),
            ] {
                if let Some(Value::String(s)) = delta.get_mut(key) {
                    *s = self.push(ch, || Value::Null, s, minter.as_deref_mut())?;
                    changed = true;
                }
            }
            if let Some(Value::String(s)) = delta
                .get_mut("function_call")
                .and_then(|c| c.get_mut("arguments"))
            {
                *s = self.push(
                    Channel::ChatFunction(i),
                    || Value::Null,
                    s,
                    minter.as_deref_mut(),
                )?;
                changed = true;
            }
            if let Some(Value::Array(calls)) = delta.get_mut("tool_calls") {
                for call in calls.iter_mut() {
                    let k = call.get("index").and_then(Value::as_u64).unwrap_or(0);
                    if let Some(Value::String(s)) = call.pointer_mut("/function/arguments") {
                        *s = self.push(
                            Channel::ChatTool(i, k),
                            || Value::Null,
                            s,
                            minter.as_deref_mut(),
                        )?;
                        changed = true;
                    }
                }
            }
            if finished {
                let mine: Vec<Channel> = self
                    .order
                    .iter()
                    .filter(|ch| ch.chat_choice() == Some(i))
                    .cloned()
                    .collect();
                for ch in mine {
                    let (tail, _) = self.end(&ch, minter.as_deref_mut())?;
                    if tail.is_empty() || self.passive {
                        continue;
                    }
                    changed = true;
                    match ch {
                        Channel::ChatContent(_)
                        | Channel::ChatRefusal(_)
                        | Channel::ChatReasoning(_) => {
                            let key = match ch {
                                Channel::ChatRefusal(_) => "refusal",
                                Channel::ChatReasoning(_) => "reasoning_content",
                                _ => "content",
                            };
                            let prev = delta.get(key).and_then(Value::as_str).unwrap_or("");
                            let joined = format!("{prev}{tail}");
                            delta.insert(key.into(), Value::String(joined));
                        }
                        Channel::ChatFunction(_) => {
                            let call = delta
                                .entry("function_call")
                                .or_insert_with(|| Value::Object(Map::new()));
                            if let Some(call) = call.as_object_mut() {
                                let prev =
                                    call.get("arguments").and_then(Value::as_str).unwrap_or("");
                                let joined = format!("{prev}{tail}");
                                call.insert("arguments".into(), Value::String(joined));
                            }
                        }
                        Channel::ChatTool(_, k) => {
                            let calls = delta
                                .entry("tool_calls")
                                .or_insert_with(|| Value::Array(Vec::new()));
                            if let Value::Array(calls) = calls {
                                calls.push(serde_json::json!({"index": k, "function": {"arguments": tail}}));
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok((Vec::new(), changed))
    }

    /// Anthropic: `content_block_delta` text, thinking and tool input JSON; a block's tail
    /// goes out in a delta just before its `content_block_stop`.
    fn anthropic(
        &mut self,
        v: &mut Value,
        minter: Option<&mut Minter>,
    ) -> Result<(Vec<Bytes>, bool), Refused> {
        let ty = v.get("type").and_then(Value::as_str).unwrap_or("");
        let i = v.get("index").and_then(Value::as_u64).unwrap_or(0);
        match ty {
            "content_block_delta"
                if v.pointer("/delta/type").and_then(Value::as_str) == Some("citations_delta") =>
            {
                // A citation comes whole, in one event.
                let changed = self.whole(v.pointer_mut("/delta/citation/cited_text"), minter)?;
                Ok((Vec::new(), changed))
            }
            "content_block_delta" => {
                let Some(field) =
                    anthropic_delta_field(v.pointer("/delta/type").and_then(Value::as_str))
                else {
                    return Ok((Vec::new(), false));
                };
                let mut template = v.clone();
                let Some(Value::String(s)) = v.pointer_mut(field) else {
                    return Ok((Vec::new(), false));
                };
                if let Some(t) = template.pointer_mut(field) {
                    *t = Value::String(String::new());
                }
                *s = self.push(Channel::Block(i), || template, s, minter)?;
                Ok((Vec::new(), true))
            }
            "content_block_stop" => {
                let (tail, template) = self.end(&Channel::Block(i), minter)?;
                if tail.is_empty() || self.passive {
                    return Ok((Vec::new(), false));
                }
                Ok((
                    self.synthesize(&Channel::Block(i), template, tail)
                        .into_iter()
                        .collect(),
                    false,
                ))
            }
            _ => Ok((Vec::new(), false)),
        }
    }

    /// Responses: text, refusal, argument and reasoning (summary) deltas
    /// through the channel scanners; the `.done` events (which repeat the
    /// whole text) are scanned whole.
    fn responses(
        &mut self,
        v: &mut Value,
        mut minter: Option<&mut Minter>,
    ) -> Result<(Vec<Bytes>, bool), Refused> {
        let ty = v
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let out_i = v.get("output_index").and_then(Value::as_u64).unwrap_or(0);
        let part_j = v.get("content_index").and_then(Value::as_u64).unwrap_or(0);
        let sum_k = v.get("summary_index").and_then(Value::as_u64).unwrap_or(0);
        let delta_channel = match ty.as_str() {
            "response.output_text.delta" => Some(Channel::RespText(out_i, part_j)),
            "response.refusal.delta" => Some(Channel::RespRefusal(out_i, part_j)),
            "response.function_call_arguments.delta" => Some(Channel::RespArgs(out_i)),
            "response.custom_tool_call_input.delta" => Some(Channel::RespInput(out_i)),
            "response.reasoning_summary_text.delta" => Some(Channel::RespSummary(out_i, sum_k)),
            "response.reasoning_text.delta" => Some(Channel::RespReasoning(out_i, part_j)),
            _ => None,
        };
        let done = match ty.as_str() {
            "response.output_text.done" => Some((Channel::RespText(out_i, part_j), "text")),
            "response.refusal.done" => Some((Channel::RespRefusal(out_i, part_j), "refusal")),
            "response.function_call_arguments.done" => {
                Some((Channel::RespArgs(out_i), "arguments"))
            }
            "response.custom_tool_call_input.done" => Some((Channel::RespInput(out_i), "input")),
            "response.reasoning_summary_text.done" => {
                Some((Channel::RespSummary(out_i, sum_k), "text"))
            }
            "response.reasoning_text.done" => Some((Channel::RespReasoning(out_i, part_j), "text")),
            _ => None,
        };
        if let Some(ch) = delta_channel {
            let mut template = v.clone();
            if let Some(t) = template.get_mut("delta") {
                *t = Value::String(String::new());
            }
            let Some(Value::String(s)) = v.get_mut("delta") else {
                return Ok((Vec::new(), false));
            };
            *s = self.push(ch, || template, s, minter)?;
            Ok((Vec::new(), true))
        } else if let Some((ch, field)) = done {
            let (tail, template) = self.end(&ch, minter.as_deref_mut())?;
            let before: Vec<Bytes> = if tail.is_empty() || self.passive {
                Vec::new()
            } else {
                self.synthesize(&ch, template, tail).into_iter().collect()
            };
            let changed = self.whole(v.get_mut(field), minter)?;
            Ok((before, changed))
        } else {
            match ty.as_str() {
                "response.content_part.done"
                | "response.content_part.added"
                | "response.reasoning_summary_part.done"
                | "response.reasoning_summary_part.added" => {
                    let mut changed =
                        self.whole(v.pointer_mut("/part/text"), minter.as_deref_mut())?;
                    changed |= self.whole(v.pointer_mut("/part/refusal"), minter)?;
                    Ok((Vec::new(), changed))
                }
                "response.output_item.done" | "response.output_item.added" => {
                    let mut changed = false;
                    if let Some(item) = v.get_mut("item") {
                        changed = self.whole_all(item, minter)?;
                    }
                    Ok((Vec::new(), changed))
                }
                "response.completed"
                | "response.incomplete"
                | "response.failed"
                | "response.done" => {
                    let changed = match v.get_mut("response") {
                        Some(r) => {
                            let mut changed = false;
                            if let Some(Value::Array(items)) = r.get_mut("output") {
                                for item in items.iter_mut() {
                                    changed |= self.whole_all(item, minter.as_deref_mut())?;
                                }
                            }
                            changed
                        }
                        None => false,
                    };
                    Ok((Vec::new(), changed))
                }
                _ => Ok((Vec::new(), false)),
            }
        }
    }

    /// Applies the policy to one complete text field.
    fn whole(
        &mut self,
        field: Option<&mut Value>,
        minter: Option<&mut Minter>,
    ) -> Result<bool, Refused> {
        let Some(Value::String(s)) = field else {
            return Ok(false);
        };
        let mut found = Vec::new();
        self.pii.scanner(Direction::Output).scan_into(s, &mut found);
        if found.is_empty() {
            return Ok(false);
        }
        let policy = self.pii.policies.get(Direction::Output);
        for f in &found {
            self.tally.add(self.field, f, policy.action_for(&f.kind));
        }
        if self.passive {
            return Ok(false);
        }
        match apply_text(policy, self.pii.style, minter, s, &found)? {
            Some(new) => {
                *s = new;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// [`Self::whole`] on every text field of a Responses item.
    fn whole_all(
        &mut self,
        item: &mut Value,
        mut minter: Option<&mut Minter>,
    ) -> Result<bool, Refused> {
        let mut changed = false;
        let mut err = None;
        let pii = self.pii.clone();
        let policy = pii.policies.get(Direction::Output);
        let passive = self.passive;
        let field = self.field;
        let mut found = Vec::new();
        let tally = &mut self.tally;
        responses_item(item, &mut |s: &mut String| {
            if err.is_some() {
                return;
            }
            pii.scanner(Direction::Output).scan_into(s, &mut found);
            for f in &found {
                tally.add(field, f, policy.action_for(&f.kind));
            }
            if found.is_empty() || passive {
                return;
            }
            match apply_text(policy, pii.style, minter.as_deref_mut(), s, &found) {
                Ok(Some(new)) => {
                    *s = new;
                    changed = true;
                }
                Ok(None) => {}
                Err(e) => err = Some(e),
            }
        });
        match err {
            Some(e) => Err(e),
            None => Ok(changed),
        }
    }
}

/// The streamed text field of an Anthropic `content_block_delta` of this
/// type (`signature_delta` and `citations_delta` are not streamed text).
fn anthropic_delta_field(ty: Option<&str>) -> Option<&'static str> {
    match ty {
        Some("text_delta") => Some("/delta/text"),
        Some("input_json_delta") => Some("/delta/partial_json"),
        Some("thinking_delta") => Some("/delta/thinking"),
        _ => None,
    }
}

/// Released stream text with the policy applied (tallied; redacted unless
/// passive).
#[allow(clippy::too_many_arguments)]
fn release(
    tally: &mut Tally,
    field: usize,
    pii: &AgentPii,
    passive: bool,
    minter: Option<&mut Minter>,
    text: &str,
    findings: &[Finding],
    offset: u64,
) -> Result<String, Refused> {
    if findings.is_empty() {
        return Ok(text.to_owned());
    }
    let policy = pii.policies.get(Direction::Output);
    for f in findings {
        let mut at = f.clone();
        at.start += offset as usize;
        at.end += offset as usize;
        tally.add(field, &at, policy.action_for(&f.kind));
    }
    if passive {
        return Ok(text.to_owned());
    }
    Ok(apply_text(policy, pii.style, minter, text, findings)?.unwrap_or_else(|| text.to_owned()))
}

/// `event: NAME\ndata: JSON\n\n` (no `event:` line without a name).
fn encode(name: Option<&str>, v: &Value) -> Bytes {
    let json = serde_json::to_string(v).unwrap_or_else(|_| "{}".to_owned());
    let mut out = String::with_capacity(json.len() + 32);
    if let Some(n) = name {
        out.push_str("event: ");
        out.push_str(n);
        out.push('\n');
    }
    out.push_str("data: ");
    out.push_str(&json);
    out.push_str("\n\n");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ironcage_shared::pii::KindSet;
    use serde_json::json;

    fn agent() -> AgentName {
        AgentName::new("a").unwrap()
    }

    fn pii(prompt: &str, output: &str) -> Arc<AgentPii> {
        pii_styled(prompt, output, PiiStyle::Label)
    }

    fn pii_styled(prompt: &str, output: &str, style: PiiStyle) -> Arc<AgentPii> {
        let spec = PiiSpec {
            policies: PiiPolicies {
                prompt: Policy::parse(prompt).unwrap(),
                output: Policy::parse(output).unwrap(),
                logs: Policy::allow_all(),
            },
            style,
            scanner: ScannerConfig::default(),
        };
        Arc::new(AgentPii::build(&spec, &mut ScannerCache::default()).unwrap())
    }

    fn collect(api: Api, body: &mut Value, req: bool) -> Vec<String> {
        let mut seen = Vec::new();
        let mut f = |s: &mut String| seen.push(s.clone());
        if req {
            walk_request(api, body, &mut f);
        } else {
            walk_response(api, body, &mut f);
        }
        seen
    }

    #[test]
    fn walkers_visit_every_text_field_and_nothing_else() {
        let mut chat = json!({"model": "gpt-4o", "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": [{"type": "text", "text": "part"}, {"type": "image_url", "image_url": {"url": "data:x"}}]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"to\":\"x\"}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "tool out"}
        ]});
        assert_eq!(
            collect(Api::ChatCompletions, &mut chat, true),
            ["sys", "part", "{\"to\":\"x\"}", "tool out"]
        );
        let mut resp = json!({"model": "m", "instructions": "ins", "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "in"}]},
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": "args"},
            {"type": "function_call_output", "call_id": "c", "output": "out"}
        ]});
        assert_eq!(
            collect(Api::Responses, &mut resp, true),
            ["ins", "in", "args", "out"]
        );
        let mut ant = json!({"model": "claude", "system": [{"type": "text", "text": "sys"}], "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {"email": "e", "n": 3, "list": ["l"]}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": "res"}]}]}
        ]});
        assert_eq!(
            collect(Api::AnthropicMessages, &mut ant, true),
            ["sys", "hi", "e", "l", "res"]
        );
        let mut emb = json!({"model": "e", "input": ["a", "b"]});
        assert_eq!(collect(Api::Embeddings, &mut emb, true), ["a", "b"]);

        let mut chat_out = json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": "txt",
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "a"}}]}}]});
        assert_eq!(
            collect(Api::ChatCompletions, &mut chat_out, false),
            ["txt", "a"]
        );
        let mut ant_out = json!({"content": [{"type": "text", "text": "t"}, {"type": "tool_use", "input": {"q": "v"}}]});
        assert_eq!(
            collect(Api::AnthropicMessages, &mut ant_out, false),
            ["t", "v"]
        );
        let mut resp_out = json!({"output": [{"type": "message", "content": [{"type": "output_text", "text": "o"}]},
            {"type": "function_call", "arguments": "g"}]});
        assert_eq!(collect(Api::Responses, &mut resp_out, false), ["o", "g"]);
    }

    #[test]
    fn each_direction_scans_for_what_its_policy_acts_on() {
        let mut cache = ScannerCache::default();
        let built_in = AgentPii::build(&PiiSpec::default(), &mut cache).unwrap();
        // Prompts: the built-in policy blocks secrets and nothing else.
        let prompt = built_in.scanner(Direction::Prompt);
        assert_eq!(prompt.kinds(), KindSet::secrets());
        // Logs redact personal data too: the whole scanner.
        assert_eq!(built_in.scanner(Direction::Logs).kinds(), KindSet::all());
        assert!(prompt.scan("jane@example.com, +1 415-555-2671").is_empty());
        assert_eq!(
            prompt.scan("key sk-proj-Q2x9Lm4Tz8Kp1Rw7Yb3Nc6Vd5Fg0Hj2Kl4Mn6Pq8Rs")[0].kind,
            Kind::OpenAiKey
        );
        // Another agent with the same settings shares the scanners.
        let again = AgentPii::build(&PiiSpec::default(), &mut cache).unwrap();
        assert!(Arc::ptr_eq(prompt, again.scanner(Direction::Prompt)));
        // A prompt policy that redacts e-mail gets every detector.
        let p = pii("email=redact, secrets=block", "");
        assert_eq!(p.scanner(Direction::Prompt).kinds(), KindSet::all());
    }

    #[tokio::test]
    async fn bodies_are_redacted_blocked_or_passed() {
        let p = pii("email=redact, secrets=block, ip=allow", "");
        let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "mail jane.doe@example.com from 10.1.2.3"}]});
        let walk = |b: &mut Value, f: &mut Visit<'_>| walk_request(Api::ChatCompletions, b, f);
        assert!(
            apply_body(&p, None, &agent(), Direction::Prompt, &mut body, walk)
                .await
                .unwrap()
        );
        assert_eq!(body["messages"][0]["content"], "mail [EMAIL] from 10.1.2.3");

        let mut clean = json!({"model": "m", "messages": [{"role": "user", "content": "build 1.2.3.4 at 1700000000"}]});
        let before = clean.clone();
        assert!(
            !apply_body(&p, None, &agent(), Direction::Prompt, &mut clean, walk)
                .await
                .unwrap()
        );
        assert_eq!(clean, before);

        let key = "sk-proj-Q2x9Lm4Tz8Kp1Rw7Yb3Nc6Vd5Fg0Hj2Kl4Mn6Pq8Rs";
        let mut secret = json!({"model": "m", "messages": [{"role": "assistant", "content": null,
            "tool_calls": [{"function": {"name": "f", "arguments": format!("{{\"key\":\"{key}\",\"to\":\"a@example.com\"}}")}}]}]});
        let before = secret.clone();
        let e = apply_body(&p, None, &agent(), Direction::Prompt, &mut secret, walk)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, Refused::Blocked(k) if k == &[Kind::OpenAiKey]),
            "{e:?}"
        );
        assert_eq!(secret, before, "a blocked body is not half-redacted");
        let (status, code, msg) = e.parts(Direction::Prompt);
        assert_eq!((status.as_u16(), code), (400, "pii_blocked"));
        assert!(
            msg.contains("openai_key") && !msg.contains("sk-proj"),
            "{msg}"
        );

        // Token style without a store: fail closed.
        let tok = pii_styled("email=redact, secrets=block, ip=allow", "", PiiStyle::Token);
        let mut body =
            json!({"model": "m", "messages": [{"role": "user", "content": "jane@example.com"}]});
        let e = apply_body(&tok, None, &agent(), Direction::Prompt, &mut body, walk)
            .await
            .unwrap_err();
        assert!(matches!(e, Refused::Failed(_)), "{e:?}");
    }

    #[tokio::test]
    async fn answers_that_are_not_json_fail_closed() {
        let p = pii("", "email=redact");
        let e = filter_answer(&p, None, &agent(), Api::ChatCompletions, b"<html>")
            .await
            .unwrap_err();
        let (status, code, _) = e.parts(Direction::Output);
        assert_eq!((status.as_u16(), code), (422, "pii_scan_failed"));
        let ok = br#"{"choices":[{"index":0,"message":{"role":"assistant","content":"w1 w2"}}]}"#;
        assert!(
            filter_answer(&p, None, &agent(), Api::ChatCompletions, ok)
                .await
                .unwrap()
                .is_none()
        );
        let hit = br#"{"choices":[{"index":0,"message":{"role":"assistant","content":"to jane@example.com"}}]}"#;
        let out = filter_answer(&p, None, &agent(), Api::ChatCompletions, hit)
            .await
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "to [EMAIL]");
    }

    fn chat_chunk(content: Option<&str>, finish: Option<&str>) -> SseEvent {
        let delta = match content {
            Some(c) => json!({"content": c}),
            None => json!({}),
        };
        let v = json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        SseEvent::parse(format!("data: {v}\n\n"))
    }

    /// Runs events through a filter; returns the raw output, or the error event.
    async fn run(f: &mut StreamFilter, events: Vec<SseEvent>) -> Result<Vec<Bytes>, Bytes> {
        let mut out = Vec::new();
        for ev in events {
            out.extend(f.on_event(ev).await?);
        }
        out.extend(f.finish().await?);
        Ok(out)
    }

    /// Every output event parses back (valid SSE, valid JSON).
    fn parse_all(out: &[Bytes]) -> Vec<SseEvent> {
        let mut p = super::super::sse::SseParser::new();
        for b in out {
            p.feed(b).unwrap();
        }
        let evs: Vec<SseEvent> = p.drain().collect();
        assert!(p.finish().is_none());
        for e in &evs {
            if e.data() != "[DONE]" {
                serde_json::from_str::<Value>(e.data()).unwrap();
            }
        }
        evs
    }

    #[tokio::test]
    async fn chat_stream_catches_an_email_split_across_chunks() {
        let p = pii("", "email=redact, secrets=block");
        let mut f = StreamFilter::new(p, None, agent(), Api::ChatCompletions, ProviderKind::OpenAi);
        let pieces = [
            "Contact jane.",
            "doe@exa",
            "mple.com",
            " today about order 1234.",
        ];
        let mut evs: Vec<SseEvent> = pieces.iter().map(|p| chat_chunk(Some(p), None)).collect();
        evs.push(chat_chunk(None, Some("stop")));
        evs.push(SseEvent::parse("data: [DONE]\n\n"));
        let out = run(&mut f, evs).await.unwrap();
        let all: String = out
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect();
        assert!(
            !all.contains("jane") && !all.contains("doe@") && !all.contains("exa"),
            "{all}"
        );
        let evs = parse_all(&out);
        let text: String = evs
            .iter()
            .filter(|e| e.data() != "[DONE]")
            .filter_map(|e| {
                let v: Value = serde_json::from_str(e.data()).unwrap();
                v.pointer("/choices/0/delta/content")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .collect();
        assert_eq!(text, "Contact [EMAIL] today about order 1234.");
        assert_eq!(evs.last().unwrap().data(), "[DONE]");
    }

    #[tokio::test]
    async fn chat_stream_block_ends_with_an_error_event_naming_the_kind() {
        let p = pii("", "secrets=block");
        let mut f = StreamFilter::new(p, None, agent(), Api::ChatCompletions, ProviderKind::OpenAi);
        let key = "sk-proj-Q2x9Lm4Tz8Kp1Rw7Yb3Nc6Vd5Fg0Hj2Kl4Mn6Pq8Rs";
        let (a, b) = key.split_at(12);
        let mut sent = Vec::new();
        let mut blocked = None;
        for ev in [
            chat_chunk(Some("here: "), None),
            chat_chunk(Some(a), None),
            chat_chunk(Some(b), None),
            chat_chunk(Some(" ok"), None),
            chat_chunk(None, Some("stop")),
        ] {
            match f.on_event(ev).await {
                Ok(o) => sent.extend(o),
                Err(e) => {
                    blocked = Some(e);
                    break;
                }
            }
        }
        let err = blocked.expect("the stream is ended");
        let all: String = sent
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect();
        assert!(!all.contains("sk-proj"), "{all}");
        let e = String::from_utf8_lossy(&err).into_owned();
        assert!(
            e.starts_with("data: {\"error\"") && e.contains("openai_key") && !e.contains("Q2x9"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn chat_stream_tool_call_arguments_are_redacted() {
        let p = pii("", "email=redact");
        let mut f = StreamFilter::new(p, None, agent(), Api::ChatCompletions, ProviderKind::OpenAi);
        let tc = |args: &str| {
            let v = json!({"id": "c1", "created": 1, "model": "m", "choices": [{"index": 0,
                "delta": {"tool_calls": [{"index": 0, "function": {"arguments": args}}]}, "finish_reason": null}]});
            SseEvent::parse(format!("data: {v}\n\n"))
        };
        let out = run(
            &mut f,
            vec![
                tc("{\"to\":\"ja"),
                tc("ne@example.com\"}"),
                chat_chunk(None, Some("tool_calls")),
            ],
        )
        .await
        .unwrap();
        let args: String = parse_all(&out)
            .iter()
            .flat_map(|e| {
                let v: Value = serde_json::from_str(e.data()).unwrap();
                v.pointer("/choices/0/delta/tool_calls")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
            })
            .filter_map(|c| {
                c.pointer("/function/arguments")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .collect();
        assert_eq!(args, "{\"to\":\"[EMAIL]\"}");
    }

    #[tokio::test]
    async fn anthropic_stream_flushes_before_block_stop() {
        let p = pii("", "email=redact");
        let mut f = StreamFilter::new(
            p,
            None,
            agent(),
            Api::AnthropicMessages,
            ProviderKind::Anthropic,
        );
        let delta = |t: &str| {
            let v = json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}});
            SseEvent::parse(format!("event: content_block_delta\ndata: {v}\n\n"))
        };
        let stop = SseEvent::parse(
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        );
        let out = run(&mut f, vec![delta("write to jane"), delta("@example.com")]).await;
        // Without a stop, finish() releases the tail.
        let text: String = parse_all(&out.unwrap())
            .iter()
            .filter_map(|e| {
                serde_json::from_str::<Value>(e.data())
                    .ok()?
                    .pointer("/delta/text")?
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        assert_eq!(text, "write to [EMAIL]");
        let mut f = stream_filter(Api::AnthropicMessages, "email=redact");
        let out = run(
            &mut f,
            vec![delta("write to jane"), delta("@example.com"), stop],
        )
        .await
        .unwrap();
        let evs = parse_all(&out);
        assert_eq!(evs.last().unwrap().event(), Some("content_block_stop"));
        let text: String = evs
            .iter()
            .filter(|e| e.event() == Some("content_block_delta"))
            .filter_map(|e| {
                serde_json::from_str::<Value>(e.data())
                    .ok()?
                    .pointer("/delta/text")?
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        assert_eq!(text, "write to [EMAIL]");
    }

    #[tokio::test]
    async fn anthropic_tool_input_json_is_redacted_across_deltas() {
        let p = pii("", "email=redact");
        let mut f = StreamFilter::new(
            p,
            None,
            agent(),
            Api::AnthropicMessages,
            ProviderKind::Anthropic,
        );
        let delta = |t: &str| {
            let v = json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": t}});
            SseEvent::parse(format!("event: content_block_delta\ndata: {v}\n\n"))
        };
        let stop = SseEvent::parse(
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
        );
        let out = run(
            &mut f,
            vec![delta("{\"to\": \"jane.d"), delta("oe@example.com\"}"), stop],
        )
        .await
        .unwrap();
        let evs = parse_all(&out);
        let json_text: String = evs
            .iter()
            .filter(|e| e.event() == Some("content_block_delta"))
            .filter_map(|e| {
                let v: Value = serde_json::from_str(e.data()).ok()?;
                assert_eq!(v["delta"]["type"], "input_json_delta");
                v["delta"]["partial_json"].as_str().map(str::to_owned)
            })
            .collect();
        assert_eq!(
            serde_json::from_str::<Value>(&json_text).unwrap(),
            json!({"to": "[EMAIL]"})
        );
    }

    #[tokio::test]
    async fn responses_stream_redacts_deltas_and_done_events() {
        let p = pii("", "email=redact");
        let mut f = StreamFilter::new(p, None, agent(), Api::Responses, ProviderKind::OpenAi);
        let ev = |v: Value| {
            let name = v["type"].as_str().unwrap().to_owned();
            SseEvent::parse(format!("event: {name}\ndata: {v}\n\n"))
        };
        let full = "mail jane@example.com now";
        let out = run(&mut f, vec![
            ev(json!({"type": "response.output_text.delta", "item_id": "i", "output_index": 0, "content_index": 0, "delta": "mail ja"})),
            ev(json!({"type": "response.output_text.delta", "item_id": "i", "output_index": 0, "content_index": 0, "delta": "ne@example.com now"})),
            ev(json!({"type": "response.output_text.done", "item_id": "i", "output_index": 0, "content_index": 0, "text": full})),
            ev(json!({"type": "response.completed", "response": {"output": [{"type": "message", "content": [{"type": "output_text", "text": full}]}]}})),
        ]).await.unwrap();
        let all: String = out
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect();
        assert!(!all.contains("jane"), "{all}");
        let evs = parse_all(&out);
        let deltas: String = evs
            .iter()
            .filter(|e| e.event() == Some("response.output_text.delta"))
            .filter_map(|e| {
                serde_json::from_str::<Value>(e.data()).ok()?["delta"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        assert_eq!(deltas, "mail [EMAIL] now");
        assert!(all.contains("\"text\":\"mail [EMAIL] now\""), "{all}");
    }

    #[tokio::test]
    async fn log_only_streams_pass_bytes_unchanged() {
        let p = pii("", "email=log");
        let mut f = StreamFilter::new(p, None, agent(), Api::ChatCompletions, ProviderKind::OpenAi);
        let evs = vec![
            chat_chunk(Some("to jane@"), None),
            chat_chunk(Some("example.com"), None),
            chat_chunk(None, Some("stop")),
        ];
        let raw: Vec<Bytes> = evs.iter().map(|e| e.raw().clone()).collect();
        let out = run(&mut f, evs).await.unwrap();
        assert_eq!(out, raw);
    }

    #[tokio::test]
    async fn a_stream_event_that_is_not_json_fails_closed() {
        let p = pii("", "email=redact");
        let mut f = StreamFilter::new(p, None, agent(), Api::ChatCompletions, ProviderKind::OpenAi);
        let e = f
            .on_event(SseEvent::parse("data: {not json\n\n"))
            .await
            .unwrap_err();
        let e = String::from_utf8_lossy(&e).into_owned();
        assert!(e.contains("pii_scan_failed"), "{e}");
    }

    // -----------------------------------------------------------------------
    // Fields that carry model- or user-written text beyond plain content.
    // -----------------------------------------------------------------------

    const PLANTED_KEY: &str = "sk-proj-Q2x9Lm4Tz8Kp1Rw7Yb3Nc6Vd5Fg0Hj2Kl4Mn6Pq8Rs";

    /// `body` with `see {what} now` at `at`.
    fn plant(body: &Value, at: &str, what: &str) -> Value {
        let mut b = body.clone();
        *b.pointer_mut(at)
            .unwrap_or_else(|| panic!("{at} is not in the test body")) =
            Value::String(format!("see {what} now"));
        b
    }

    /// A prompt with an email planted at `at` is redacted there and nowhere
    /// else (same shape); one with an API key there is blocked, untouched.
    async fn prompt_field_is_scanned(api: Api, body: Value, at: &str) {
        let p = pii("email=redact, secrets=block", "");
        let walk = move |b: &mut Value, f: &mut Visit<'_>| walk_request(api, b, f);
        let mut b = plant(&body, at, "jane.doe@example.com");
        let rewritten = apply_body(&p, None, &agent(), Direction::Prompt, &mut b, walk)
            .await
            .unwrap();
        assert!(rewritten, "{at}: the email was not seen");
        assert_eq!(b, plant(&body, at, "[EMAIL]"), "{at}");

        let mut b = plant(&body, at, PLANTED_KEY);
        let before = b.clone();
        let e = apply_body(&p, None, &agent(), Direction::Prompt, &mut b, walk)
            .await
            .expect_err(at);
        assert!(
            matches!(&e, Refused::Blocked(k) if k == &[Kind::OpenAiKey]),
            "{at}: {e:?}"
        );
        assert_eq!(b, before, "{at}: a blocked body is not rewritten");
    }

    /// The same for a non-streamed answer, through the bytes path.
    async fn answer_field_is_scanned(api: Api, body: Value, at: &str) {
        let p = pii("", "email=redact, secrets=block");
        let raw = serde_json::to_vec(&plant(&body, at, "jane.doe@example.com")).unwrap();
        let out = filter_answer(&p, None, &agent(), api, &raw)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{at}: the email was not seen"));
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v, plant(&body, at, "[EMAIL]"), "{at}");

        let raw = serde_json::to_vec(&plant(&body, at, PLANTED_KEY)).unwrap();
        let e = filter_answer(&p, None, &agent(), api, &raw)
            .await
            .expect_err(at);
        assert!(
            matches!(&e, Refused::Blocked(k) if k == &[Kind::OpenAiKey]),
            "{at}: {e:?}"
        );
    }

    #[tokio::test]
    async fn anthropic_prompt_document_text_source_is_scanned() {
        let body = json!({"model": "claude", "messages": [{"role": "user", "content": [
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"},
             "title": "Notes", "citations": {"enabled": true}},
            {"type": "text", "text": "Summarise."}]}]});
        prompt_field_is_scanned(
            Api::AnthropicMessages,
            body,
            "/messages/0/content/0/source/data",
        )
        .await;
    }

    #[tokio::test]
    async fn anthropic_prompt_document_content_source_title_and_context_are_scanned() {
        let body = json!({"model": "claude", "messages": [{"role": "user", "content": [
            {"type": "document", "title": "t", "context": "c",
             "source": {"type": "content", "content": [{"type": "text", "text": "chunk"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}}]}},
            {"type": "document", "source": {"type": "content", "content": "whole"}},
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0"}}]}]});
        for at in [
            "/messages/0/content/0/source/content/0/text",
            "/messages/0/content/0/title",
            "/messages/0/content/0/context",
            "/messages/0/content/1/source/content",
        ] {
            prompt_field_is_scanned(Api::AnthropicMessages, body.clone(), at).await;
        }
    }

    #[tokio::test]
    async fn anthropic_prompt_thinking_sent_back_is_scanned() {
        let body = json!({"model": "claude", "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "t", "signature": "EqQB"},
                {"type": "redacted_thinking", "data": "EmwKAhgB"},
                {"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]}]});
        prompt_field_is_scanned(
            Api::AnthropicMessages,
            body,
            "/messages/1/content/0/thinking",
        )
        .await;
    }

    #[tokio::test]
    async fn anthropic_prompt_search_result_content_is_scanned() {
        let body = json!({"model": "claude", "messages": [{"role": "user", "content": [
            {"type": "search_result", "source": "https://x.invalid/kb", "title": "KB",
             "content": [{"type": "text", "text": "r"}]}]}]});
        prompt_field_is_scanned(
            Api::AnthropicMessages,
            body,
            "/messages/0/content/0/content/0/text",
        )
        .await;
    }

    #[tokio::test]
    async fn chat_prompt_refusals_are_scanned() {
        let body = json!({"model": "gpt-4o", "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": null, "refusal": "r"},
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "r"}]}]});
        prompt_field_is_scanned(Api::ChatCompletions, body.clone(), "/messages/1/refusal").await;
        prompt_field_is_scanned(Api::ChatCompletions, body, "/messages/2/content/0/refusal").await;
    }

    #[tokio::test]
    async fn responses_prompt_reasoning_summary_and_refusal_parts_are_scanned() {
        let body = json!({"model": "o4-mini", "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "q"}]},
            {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "s"}],
             "encrypted_content": "gAAAA"},
            {"type": "message", "role": "assistant", "content": [
                {"type": "output_text", "text": "o", "annotations": []},
                {"type": "refusal", "refusal": "r"}]},
            {"type": "function_call_output", "call_id": "c", "output": "out"}]});
        for at in [
            "/input/1/summary/0/text",
            "/input/2/content/1/refusal",
            "/input/2/content/0/text",
            "/input/3/output",
        ] {
            prompt_field_is_scanned(Api::Responses, body.clone(), at).await;
        }
    }

    #[tokio::test]
    async fn anthropic_answer_thinking_is_scanned() {
        let body = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
            "content": [{"type": "thinking", "thinking": "t", "signature": "EqQB"},
                        {"type": "redacted_thinking", "data": "EmwKAhgB"},
                        {"type": "text", "text": "answer"}],
            "stop_reason": "end_turn", "usage": {"input_tokens": 1, "output_tokens": 2}});
        answer_field_is_scanned(Api::AnthropicMessages, body, "/content/0/thinking").await;
    }

    #[tokio::test]
    async fn responses_answer_reasoning_summary_and_refusal_are_scanned() {
        let body = json!({"id": "resp_1", "object": "response", "status": "completed", "output": [
            {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "s"}]},
            {"type": "message", "id": "m", "role": "assistant", "content": [{"type": "refusal", "refusal": "r"}]}]});
        answer_field_is_scanned(Api::Responses, body.clone(), "/output/0/summary/0/text").await;
        answer_field_is_scanned(Api::Responses, body, "/output/1/content/0/refusal").await;
    }

    #[tokio::test]
    async fn chat_answer_refusal_stays_scanned() {
        // `message.refusal` was already scanned; kept here with the new fields.
        let body = json!({"choices": [{"index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": null, "refusal": "r"}}]});
        answer_field_is_scanned(Api::ChatCompletions, body, "/choices/0/message/refusal").await;
    }

    /// All the text a stream released for `pointer` in events named `name`
    /// (any, for `None`), concatenated.
    fn released(out: &[Bytes], name: Option<&str>, pointer: &str) -> String {
        parse_all(out)
            .iter()
            .filter(|e| e.data() != "[DONE]")
            .filter(|e| name.is_none() || e.event() == name)
            .filter_map(|e| {
                serde_json::from_str::<Value>(e.data())
                    .ok()?
                    .pointer(pointer)?
                    .as_str()
                    .map(str::to_owned)
            })
            .collect()
    }

    fn all_text(out: &[Bytes]) -> String {
        out.iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect()
    }

    /// Feeds events until the filter ends the stream; the error event.
    async fn run_until_blocked(f: &mut StreamFilter, events: Vec<SseEvent>) -> (String, String) {
        let mut sent = Vec::new();
        for ev in events {
            match f.on_event(ev).await {
                Ok(o) => sent.extend(o),
                Err(e) => return (all_text(&sent), String::from_utf8_lossy(&e).into_owned()),
            }
        }
        match f.finish().await {
            Ok(o) => panic!("not blocked: {}", all_text(&[sent, o].concat())),
            Err(e) => (all_text(&sent), String::from_utf8_lossy(&e).into_owned()),
        }
    }

    fn chat_delta(delta: Value, finish: Option<&str>) -> SseEvent {
        let v = json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        SseEvent::parse(format!("data: {v}\n\n"))
    }

    #[tokio::test]
    async fn chat_stream_refusal_delta_is_redacted_across_chunks() {
        let mut f = stream_filter(Api::ChatCompletions, "email=redact");
        let out = run(
            &mut f,
            vec![
                chat_delta(json!({"role": "assistant", "refusal": ""}), None),
                chat_delta(json!({"refusal": "I won't mail jane.d"}), None),
                chat_delta(json!({"refusal": "oe@example.com"}), None),
                chat_delta(json!({}), Some("stop")),
                SseEvent::parse("data: [DONE]\n\n"),
            ],
        )
        .await
        .unwrap();
        assert!(!all_text(&out).contains("jane"), "{}", all_text(&out));
        assert_eq!(
            released(&out, None, "/choices/0/delta/refusal"),
            "I won't mail [EMAIL]"
        );
        // The tail went out in the finishing chunk, not after [DONE].
        assert_eq!(parse_all(&out).last().unwrap().data(), "[DONE]");
    }

    #[tokio::test]
    async fn chat_stream_refusal_delta_with_a_key_ends_the_stream() {
        let mut f = stream_filter(Api::ChatCompletions, "secrets=block");
        let (a, b) = PLANTED_KEY.split_at(12);
        let (sent, err) = run_until_blocked(
            &mut f,
            vec![
                chat_delta(json!({"refusal": "no: "}), None),
                chat_delta(json!({"refusal": a}), None),
                chat_delta(json!({"refusal": b}), None),
                chat_delta(json!({}), Some("stop")),
            ],
        )
        .await;
        assert!(!sent.contains("sk-proj"), "{sent}");
        assert!(err.contains("openai_key") && !err.contains("Q2x9"), "{err}");
    }

    #[tokio::test]
    async fn chat_stream_legacy_function_call_arguments_are_redacted() {
        let mut f = stream_filter(Api::ChatCompletions, "email=redact");
        let out = run(
            &mut f,
            vec![
                chat_delta(
                    json!({"function_call": {"name": "send", "arguments": ""}}),
                    None,
                ),
                chat_delta(
                    json!({"function_call": {"arguments": "{\"to\":\"ja"}}),
                    None,
                ),
                chat_delta(
                    json!({"function_call": {"arguments": "ne@example.com\"}"}}),
                    None,
                ),
                chat_delta(json!({}), Some("function_call")),
            ],
        )
        .await
        .unwrap();
        assert!(!all_text(&out).contains("jane"), "{}", all_text(&out));
        assert_eq!(
            released(&out, None, "/choices/0/delta/function_call/arguments"),
            "{\"to\":\"[EMAIL]\"}"
        );
        assert_eq!(
            released(&out, None, "/choices/0/delta/function_call/name"),
            "send"
        );
    }

    fn anthropic_ev(v: Value) -> SseEvent {
        let name = v["type"].as_str().unwrap().to_owned();
        SseEvent::parse(format!("event: {name}\ndata: {v}\n\n"))
    }

    fn thinking(t: &str) -> SseEvent {
        anthropic_ev(json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "thinking_delta", "thinking": t}}))
    }

    #[tokio::test]
    async fn anthropic_stream_thinking_delta_is_redacted_across_deltas() {
        let mut f = stream_filter(Api::AnthropicMessages, "email=redact");
        let out = run(
            &mut f,
            vec![
                anthropic_ev(json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "thinking", "thinking": ""}})),
                thinking("The user is jane.d"),
                thinking("oe@exa"),
                thinking("mple.com"),
                anthropic_ev(json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "signature_delta", "signature": "EqQB"}})),
                anthropic_ev(json!({"type": "content_block_stop", "index": 0})),
            ],
        )
        .await
        .unwrap();
        assert!(!all_text(&out).contains("jane"), "{}", all_text(&out));
        let evs = parse_all(&out);
        assert_eq!(evs.last().unwrap().event(), Some("content_block_stop"));
        for e in evs
            .iter()
            .filter(|e| e.event() == Some("content_block_delta"))
        {
            let v: Value = serde_json::from_str(e.data()).unwrap();
            let ty = v["delta"]["type"].as_str().unwrap();
            assert!(ty == "thinking_delta" || ty == "signature_delta", "{v}");
            assert!(v["delta"].get("text").is_none(), "{v}");
        }
        assert_eq!(
            released(&out, Some("content_block_delta"), "/delta/thinking"),
            "The user is [EMAIL]"
        );
        assert_eq!(
            released(&out, Some("content_block_delta"), "/delta/signature"),
            "EqQB"
        );
    }

    #[tokio::test]
    async fn anthropic_stream_thinking_delta_with_a_key_ends_the_stream() {
        let mut f = stream_filter(Api::AnthropicMessages, "secrets=block");
        let (a, b) = PLANTED_KEY.split_at(20);
        let (sent, err) = run_until_blocked(
            &mut f,
            vec![
                thinking("use "),
                thinking(a),
                thinking(b),
                anthropic_ev(json!({"type": "content_block_stop", "index": 0})),
            ],
        )
        .await;
        assert!(!sent.contains("sk-proj"), "{sent}");
        assert!(
            err.starts_with("event: error\n")
                && err.contains("openai_key")
                && !err.contains("Q2x9"),
            "{err}"
        );
    }

    /// A stream filter for `api` with this output policy.
    fn stream_filter(api: Api, output: &str) -> StreamFilter {
        StreamFilter::new(pii("", output), None, agent(), api, api.family())
    }

    fn responses_ev(v: Value) -> SseEvent {
        let name = v["type"].as_str().unwrap().to_owned();
        SseEvent::parse(format!("event: {name}\ndata: {v}\n\n"))
    }

    #[tokio::test]
    async fn responses_stream_reasoning_summary_delta_is_redacted() {
        let mut f = stream_filter(Api::Responses, "email=redact");
        let full = "Asked to mail jane.doe@example.com.";
        let sum = |d: &str| {
            responses_ev(
                json!({"type": "response.reasoning_summary_text.delta", "item_id": "rs_1",
                "output_index": 0, "summary_index": 0, "delta": d, "sequence_number": 3}),
            )
        };
        let out = run(
            &mut f,
            vec![
                responses_ev(json!({"type": "response.reasoning_summary_part.added", "item_id": "rs_1",
                    "output_index": 0, "summary_index": 0, "part": {"type": "summary_text", "text": ""}})),
                sum("Asked to mail jane.d"),
                sum("oe@example"),
                sum(".com."),
                responses_ev(json!({"type": "response.reasoning_summary_text.done", "item_id": "rs_1",
                    "output_index": 0, "summary_index": 0, "text": full})),
                responses_ev(json!({"type": "response.reasoning_summary_part.done", "item_id": "rs_1",
                    "output_index": 0, "summary_index": 0, "part": {"type": "summary_text", "text": full}})),
                responses_ev(json!({"type": "response.output_item.done", "output_index": 0,
                    "item": {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": full}]}})),
                responses_ev(json!({"type": "response.completed", "response": {"output": [
                    {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": full}]}]}})),
            ],
        )
        .await
        .unwrap();
        let all = all_text(&out);
        assert!(!all.contains("jane"), "{all}");
        assert_eq!(
            released(
                &out,
                Some("response.reasoning_summary_text.delta"),
                "/delta"
            ),
            "Asked to mail [EMAIL]."
        );
        let redacted = "Asked to mail [EMAIL].";
        for (name, at) in [
            ("response.reasoning_summary_text.done", "/text"),
            ("response.reasoning_summary_part.done", "/part/text"),
            ("response.output_item.done", "/item/summary/0/text"),
            ("response.completed", "/response/output/0/summary/0/text"),
        ] {
            assert_eq!(released(&out, Some(name), at), redacted, "{name}");
        }
        // Every event kept its name and its summary_index.
        let evs = parse_all(&out);
        for e in evs
            .iter()
            .filter(|e| e.event() == Some("response.reasoning_summary_text.delta"))
        {
            let v: Value = serde_json::from_str(e.data()).unwrap();
            assert_eq!(v["type"], "response.reasoning_summary_text.delta");
            assert_eq!(v["summary_index"], 0);
        }
    }

    #[tokio::test]
    async fn responses_stream_refusal_delta_is_redacted_and_blocked() {
        let refusal = |d: &str| {
            responses_ev(json!({"type": "response.refusal.delta", "item_id": "m",
                "output_index": 0, "content_index": 0, "delta": d}))
        };
        let full = "I cannot mail jane.doe@example.com";
        let mut f = stream_filter(Api::Responses, "email=redact");
        let out = run(
            &mut f,
            vec![
                refusal("I cannot mail ja"),
                refusal("ne.doe@example.com"),
                responses_ev(json!({"type": "response.refusal.done", "item_id": "m",
                    "output_index": 0, "content_index": 0, "refusal": full})),
                responses_ev(json!({"type": "response.content_part.done", "item_id": "m",
                    "output_index": 0, "content_index": 0, "part": {"type": "refusal", "refusal": full}})),
            ],
        )
        .await
        .unwrap();
        assert!(!all_text(&out).contains("jane"), "{}", all_text(&out));
        assert_eq!(
            released(&out, Some("response.refusal.delta"), "/delta"),
            "I cannot mail [EMAIL]"
        );
        assert_eq!(
            released(&out, Some("response.refusal.done"), "/refusal"),
            "I cannot mail [EMAIL]"
        );
        assert_eq!(
            released(&out, Some("response.content_part.done"), "/part/refusal"),
            "I cannot mail [EMAIL]"
        );

        let mut f = stream_filter(Api::Responses, "secrets=block");
        let (a, b) = PLANTED_KEY.split_at(9);
        let (sent, err) = run_until_blocked(&mut f, vec![refusal(a), refusal(b)]).await;
        assert!(!sent.contains("sk-proj"), "{sent}");
        assert!(
            err.starts_with("event: error\n")
                && err.contains("openai_key")
                && !err.contains("Q2x9"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn responses_stream_reasoning_text_delta_is_redacted() {
        let mut f = stream_filter(Api::Responses, "email=redact");
        let full = "mail jane.doe@example.com";
        let d = |t: &str| {
            responses_ev(
                json!({"type": "response.reasoning_text.delta", "item_id": "rs_1",
                "output_index": 0, "content_index": 0, "delta": t}),
            )
        };
        let out = run(
            &mut f,
            vec![
                d("mail jane"),
                d(".doe@example.com"),
                responses_ev(
                    json!({"type": "response.reasoning_text.done", "item_id": "rs_1",
                    "output_index": 0, "content_index": 0, "text": full}),
                ),
                responses_ev(
                    json!({"type": "response.output_item.done", "output_index": 0,
                    "item": {"type": "reasoning", "id": "rs_1", "summary": [],
                        "content": [{"type": "reasoning_text", "text": full}]}}),
                ),
            ],
        )
        .await
        .unwrap();
        assert!(!all_text(&out).contains("jane"), "{}", all_text(&out));
        assert_eq!(
            released(&out, Some("response.reasoning_text.delta"), "/delta"),
            "mail [EMAIL]"
        );
        assert_eq!(
            released(&out, Some("response.reasoning_text.done"), "/text"),
            "mail [EMAIL]"
        );
    }

    // Fields of OpenAI-compatible reasoning models, custom tools, server
    // tools and citations.

    #[tokio::test]
    async fn chat_reasoning_content_is_scanned_in_prompts_and_answers() {
        let body = json!({"model": "deepseek-reasoner", "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a", "reasoning_content": "r"}]});
        prompt_field_is_scanned(Api::ChatCompletions, body, "/messages/1/reasoning_content").await;
        let body = json!({"choices": [{"index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": "a", "reasoning_content": "r"}}]});
        answer_field_is_scanned(
            Api::ChatCompletions,
            body,
            "/choices/0/message/reasoning_content",
        )
        .await;
    }

    #[tokio::test]
    async fn chat_stream_reasoning_content_delta_is_redacted() {
        let mut f = stream_filter(Api::ChatCompletions, "email=redact");
        let out = run(
            &mut f,
            vec![
                chat_delta(json!({"reasoning_content": "They are jane"}), None),
                chat_delta(json!({"reasoning_content": ".doe@example.com"}), None),
                chat_delta(json!({"content": "ok"}), None),
                chat_delta(json!({}), Some("stop")),
            ],
        )
        .await
        .unwrap();
        assert!(!all_text(&out).contains("jane"), "{}", all_text(&out));
        assert_eq!(
            released(&out, None, "/choices/0/delta/reasoning_content"),
            "They are [EMAIL]"
        );
        assert_eq!(released(&out, None, "/choices/0/delta/content"), "ok");
    }

    #[tokio::test]
    async fn responses_custom_tool_call_input_is_scanned() {
        let body = json!({"model": "gpt-5", "input": [
            {"role": "user", "content": "q"},
            {"type": "custom_tool_call", "call_id": "c", "name": "sql", "input": "i"},
            {"type": "custom_tool_call_output", "call_id": "c", "output": "o"}]});
        prompt_field_is_scanned(Api::Responses, body.clone(), "/input/1/input").await;
        prompt_field_is_scanned(Api::Responses, body, "/input/2/output").await;
        let body = json!({"output": [{"type": "custom_tool_call", "call_id": "c", "name": "sql", "input": "i"}]});
        answer_field_is_scanned(Api::Responses, body, "/output/0/input").await;
    }

    #[tokio::test]
    async fn responses_stream_custom_tool_call_input_delta_is_redacted() {
        let mut f = stream_filter(Api::Responses, "email=redact");
        let full = "SELECT * WHERE mail = 'jane.doe@example.com'";
        let d = |t: &str| {
            responses_ev(
                json!({"type": "response.custom_tool_call_input.delta", "item_id": "ct",
                "output_index": 0, "delta": t}),
            )
        };
        let out = run(
            &mut f,
            vec![
                d("SELECT * WHERE mail = 'jane.d"),
                d("oe@example.com'"),
                responses_ev(json!({"type": "response.custom_tool_call_input.done", "item_id": "ct",
                    "output_index": 0, "input": full})),
                responses_ev(json!({"type": "response.output_item.done", "output_index": 0,
                    "item": {"type": "custom_tool_call", "call_id": "c", "name": "sql", "input": full}})),
            ],
        )
        .await
        .unwrap();
        assert!(!all_text(&out).contains("jane"), "{}", all_text(&out));
        let want = "SELECT * WHERE mail = '[EMAIL]'";
        assert_eq!(
            released(
                &out,
                Some("response.custom_tool_call_input.delta"),
                "/delta"
            ),
            want
        );
        assert_eq!(
            released(&out, Some("response.custom_tool_call_input.done"), "/input"),
            want
        );
        assert_eq!(
            released(&out, Some("response.output_item.done"), "/item/input"),
            want
        );
    }

    #[tokio::test]
    async fn anthropic_server_and_mcp_tool_blocks_are_scanned() {
        let body = json!({"model": "claude", "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": [
                {"type": "server_tool_use", "id": "s", "name": "web_search", "input": {"query": "q"}},
                {"type": "mcp_tool_use", "id": "m", "name": "crm", "server_name": "crm", "input": {"who": "w"}},
                {"type": "mcp_tool_result", "tool_use_id": "m", "is_error": false,
                 "content": [{"type": "text", "text": "r"}]}]}]});
        for at in [
            "/messages/1/content/0/input/query",
            "/messages/1/content/1/input/who",
            "/messages/1/content/2/content/0/text",
        ] {
            prompt_field_is_scanned(Api::AnthropicMessages, body.clone(), at).await;
        }
        let body = json!({"content": [
            {"type": "server_tool_use", "id": "s", "name": "web_search", "input": {"query": "q"}},
            {"type": "text", "text": "t"}]});
        answer_field_is_scanned(Api::AnthropicMessages, body, "/content/0/input/query").await;
    }

    #[tokio::test]
    async fn anthropic_citations_cited_text_is_scanned() {
        let body = json!({"content": [{"type": "text", "text": "As noted,", "citations": [
            {"type": "char_location", "cited_text": "c", "document_index": 0,
             "document_title": "Notes", "start_char_index": 0, "end_char_index": 9}]}]});
        answer_field_is_scanned(
            Api::AnthropicMessages,
            body,
            "/content/0/citations/0/cited_text",
        )
        .await;
    }

    #[tokio::test]
    async fn anthropic_stream_citations_delta_is_redacted() {
        let mut f = stream_filter(Api::AnthropicMessages, "email=redact");
        let out = run(
            &mut f,
            vec![
                anthropic_ev(json!({"type": "content_block_delta", "index": 0, "delta": {
                    "type": "citations_delta", "citation": {"type": "char_location",
                        "cited_text": "write to jane.doe@example.com", "document_index": 0,
                        "document_title": "Notes", "start_char_index": 0, "end_char_index": 29}}})),
                anthropic_ev(json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": "As noted."}})),
                anthropic_ev(json!({"type": "content_block_stop", "index": 0})),
            ],
        )
        .await
        .unwrap();
        assert!(!all_text(&out).contains("jane"), "{}", all_text(&out));
        assert_eq!(
            released(&out, None, "/delta/citation/cited_text"),
            "write to [EMAIL]"
        );
        assert_eq!(released(&out, None, "/delta/text"), "As noted.");
    }
}
