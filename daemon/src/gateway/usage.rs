//! Reading the provider's own token usage out of its responses, whole or streamed.
//!
//! Every figure becomes an [`ironcage_shared::pricing::Usage`] through
//! [`Usage::from_openai`] or [`Usage::from_anthropic`], which apply each provider's
//! convention (OpenAI's prompt tokens include the cached ones, Anthropic's input
//! tokens exclude them), so nothing here subtracts or adds token classes itself.
//!
//! This runs on the hot path, once per response or per streamed event, so bodies
//! are read with serde into small typed structs that borrow strings from the input
//! and skip everything else, not into `serde_json::Value` trees. Fields of an
//! unexpected type are treated as absent rather than failing the whole event:
//! a provider adding a field shape must not stop metering.
//!
//! - Whole responses: [`extract`] (usage and answering model, or `None`),
//!   [`parse_response`] and the per-API functions for the details, and
//!   [`output_text`] for a local count when the provider reported no usage.
//! - Streams: a [`StreamUsage`] sees each [`SseEvent`] and says what it was
//!   ([`EventKind`], notably [`EventKind::UsageOnly`] for the OpenAI usage chunk the
//!   gateway asked for and may have to strip), collects the model name, the usage
//!   and (bounded) the streamed output text, for a local count when no usage comes.

use super::routes::Api;
use super::sse::SseEvent;
use ironcage_shared::pricing::Usage;
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use std::borrow::Cow;
use std::fmt;

/// What a whole (non-streamed) response said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseUsage {
    /// The `model` the provider answered with (often a dated snapshot of the one
    /// asked for).
    pub model: Option<String>,
    /// `None` when the response carried no usage.
    pub usage: Option<Usage>,
}

/// Reads the model and usage of a whole response body of `api`. Fails only when
/// the body is not JSON.
pub fn parse_response(api: Api, body: &[u8]) -> Result<ResponseUsage, serde_json::Error> {
    match api {
        Api::ChatCompletions => openai_chat_response(body),
        Api::Responses => openai_responses_response(body),
        Api::Embeddings => openai_embeddings_response(body),
        Api::AnthropicMessages => anthropic_response(body),
    }
}

/// A response's usage and the model that answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extracted {
    pub model: Option<String>,
    pub usage: Usage,
}

/// The provider's usage of a whole response body, or `None` when the body is not
/// JSON or reports no usage (then count locally with [`output_text`]).
pub fn extract(api: Api, body: &[u8]) -> Option<Extracted> {
    let r = parse_response(api, body).ok()?;
    Some(Extracted {
        model: r.model,
        usage: r.usage?,
    })
}

/// The generated output of a whole response body, for a local count when the
/// provider reported no usage: message text, refusals, tool-call names and
/// arguments, thinking and reasoning summaries. Empty for embeddings and for a
/// body that is not JSON. Not on the hot path (only when usage is missing), so
/// it reads a `serde_json::Value`.
pub fn output_text(api: Api, body: &[u8]) -> String {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return String::new();
    };
    let mut out = String::new();
    let o = &mut out;
    match api {
        Api::Embeddings => {}
        Api::ChatCompletions => {
            for choice in items(v.get("choices")) {
                let Some(m) = choice.get("message") else {
                    continue;
                };
                match m.get("content") {
                    Some(Value::Array(parts)) => parts.iter().for_each(|p| push(o, p.get("text"))),
                    c => push(o, c),
                }
                push(o, m.get("refusal"));
                push(o, m.get("reasoning_content"));
                let calls = items(m.get("tool_calls"))
                    .iter()
                    .filter_map(|c| c.get("function"));
                for f in calls.chain(m.get("function_call")) {
                    push(o, f.get("name"));
                    push(o, f.get("arguments"));
                }
            }
        }
        Api::Responses => {
            for item in items(v.get("output")) {
                for part in items(item.get("content")) {
                    push(o, part.get("text"));
                    push(o, part.get("refusal"));
                }
                for part in items(item.get("summary")) {
                    push(o, part.get("text"));
                }
                push(o, item.get("name"));
                push(o, item.get("arguments"));
                push(o, item.get("input"));
            }
        }
        Api::AnthropicMessages => {
            for block in items(v.get("content")) {
                push(o, block.get("text"));
                push(o, block.get("thinking"));
                push(o, block.get("name"));
                if let Some(input) = block.get("input").filter(|i| !i.is_null()) {
                    o.push_str(&input.to_string());
                }
            }
        }
    }
    out
}

fn items(v: Option<&Value>) -> &[Value] {
    v.and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

fn push(out: &mut String, s: Option<&Value>) {
    if let Some(s) = s.and_then(Value::as_str) {
        out.push_str(s);
    }
}

/// Chat Completions: `usage.prompt_tokens` (cached included),
/// `usage.prompt_tokens_details.cached_tokens`, `usage.completion_tokens` (reasoning
/// included), `usage.completion_tokens_details.reasoning_tokens`.
pub fn openai_chat_response(body: &[u8]) -> Result<ResponseUsage, serde_json::Error> {
    let b: Body<'_, ChatUsageRaw> = serde_json::from_slice(body)?;
    Ok(ResponseUsage {
        model: b.model.into_string(),
        usage: b.usage.and_then(ChatUsageRaw::into_usage),
    })
}

/// Responses API: `usage.input_tokens` (cached included),
/// `usage.input_tokens_details.cached_tokens`, `usage.output_tokens` (reasoning
/// included), `usage.output_tokens_details.reasoning_tokens`.
pub fn openai_responses_response(body: &[u8]) -> Result<ResponseUsage, serde_json::Error> {
    let b: Body<'_, ResponsesUsageRaw> = serde_json::from_slice(body)?;
    Ok(ResponseUsage {
        model: b.model.into_string(),
        usage: b.usage.and_then(ResponsesUsageRaw::into_usage),
    })
}

/// Embeddings: `usage.prompt_tokens` (or `total_tokens`); there is no output.
pub fn openai_embeddings_response(body: &[u8]) -> Result<ResponseUsage, serde_json::Error> {
    let b: Body<'_, EmbeddingsUsageRaw> = serde_json::from_slice(body)?;
    Ok(ResponseUsage {
        model: b.model.into_string(),
        usage: b.usage.and_then(EmbeddingsUsageRaw::into_usage),
    })
}

/// Anthropic Messages: `usage.input_tokens` (cache excluded), `output_tokens`,
/// `cache_creation_input_tokens`, `cache_read_input_tokens`, and the 1-hour part of
/// the cache writes from `cache_creation.ephemeral_1h_input_tokens`.
pub fn anthropic_response(body: &[u8]) -> Result<ResponseUsage, serde_json::Error> {
    let b: Body<'_, AnthropicUsageRaw> = serde_json::from_slice(body)?;
    Ok(ResponseUsage {
        model: b.model.into_string(),
        usage: b.usage.and_then(|u| u.to_usage()),
    })
}

// ------------------------------------------------------------------ streams

/// What one streamed event was, for the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// Nothing the gateway acts on: keep-alives, comments, metadata, and events
    /// that are not JSON (passed through untouched).
    Other,
    /// Output: text, tool-call arguments, thinking.
    Content,
    /// Usage, possibly with other things (Anthropic `message_start` and
    /// `message_delta`, Responses `response.completed`, an OpenAI-compatible
    /// server's last content chunk).
    Usage,
    /// An OpenAI chat chunk with no choices and a usage: the one
    /// `stream_options.include_usage` adds. Strip it if the agent did not ask.
    UsageOnly,
    /// The normal end: `[DONE]`, `message_stop`, `response.completed`.
    Done,
    /// The provider reported an error inside the stream (including Responses
    /// `response.failed`, whose usage is still recorded).
    Error,
}

impl EventKind {
    /// Whether this is the usage-only chunk to strip when the agent did not ask
    /// for usage.
    pub fn is_usage_only(self) -> bool {
        self == EventKind::UsageOnly
    }
}

/// Default bound on the output text kept for a local count (256 KiB). Past it the
/// text is dropped but its length is still counted, and the token count
/// extrapolated.
pub const DEFAULT_TEXT_CAP: usize = 256 * 1024;

/// Follows one streamed response: call [`on_event`](StreamUsage::on_event)
/// for every event, then [`finish`](StreamUsage::finish).
#[derive(Debug, Clone)]
pub struct StreamUsage {
    api: Api,
    model: Option<String>,
    /// Final usage (OpenAI chat, Responses).
    usage: Option<Usage>,
    /// Anthropic: `message_start.message.usage` and the merged `message_delta`s.
    anthropic_start: Option<AnthropicUsageRaw>,
    anthropic_delta: Option<AnthropicUsageRaw>,
    text: BoundedText,
    done: bool,
    error: bool,
}

impl StreamUsage {
    pub fn new(api: Api) -> StreamUsage {
        StreamUsage::with_text_cap(api, DEFAULT_TEXT_CAP)
    }

    /// Keeps at most `text_cap` bytes of output text.
    pub fn with_text_cap(api: Api, text_cap: usize) -> StreamUsage {
        StreamUsage {
            api,
            model: None,
            usage: None,
            anthropic_start: None,
            anthropic_delta: None,
            text: BoundedText::new(text_cap),
            done: false,
            error: false,
        }
    }

    /// Looks at one event. Never fails: an event it cannot read is
    /// [`EventKind::Other`].
    pub fn on_event(&mut self, event: &SseEvent) -> EventKind {
        if !event.has_data() {
            return EventKind::Other;
        }
        match self.api {
            Api::ChatCompletions | Api::Embeddings => self.on_chat(event.data()),
            Api::Responses => self.on_responses(event.event(), event.data()),
            Api::AnthropicMessages => self.on_anthropic(event.event(), event.data()),
        }
    }

    fn on_chat(&mut self, data: &str) -> EventKind {
        if data.trim() == "[DONE]" {
            self.done = true;
            return EventKind::Done;
        }
        let Ok(chunk) = serde_json::from_str::<ChatChunk<'_>>(data) else {
            return EventKind::Other;
        };
        if chunk.error.is_some() {
            self.error = true;
            return EventKind::Error;
        }
        self.note_model(chunk.model);
        let mut content = false;
        let no_choices = chunk.choices.as_ref().is_none_or(Vec::is_empty);
        for choice in chunk.choices.unwrap_or_default() {
            let Some(d) = choice.delta else { continue };
            for s in [d.content, d.refusal, d.reasoning_content] {
                content |= self.text.push(s.0.as_deref());
            }
            let calls = d.tool_calls.unwrap_or_default().into_iter();
            for f in calls.filter_map(|c| c.function).chain(d.function_call) {
                content |= self.text.push(f.name.0.as_deref());
                content |= self.text.push(f.arguments.0.as_deref());
            }
        }
        match chunk.usage.and_then(ChatUsageRaw::into_usage) {
            Some(u) => {
                self.usage = Some(u);
                if no_choices {
                    EventKind::UsageOnly
                } else {
                    EventKind::Usage
                }
            }
            None if content => EventKind::Content,
            None => EventKind::Other,
        }
    }

    fn on_responses(&mut self, sse_name: Option<&str>, data: &str) -> EventKind {
        let Ok(ev) = serde_json::from_str::<ResponsesEvent<'_>>(data) else {
            return EventKind::Other;
        };
        let kind = ev.kind.0.as_deref().or(sse_name).unwrap_or("");
        if let Some(resp) = ev.response {
            self.note_model(resp.model);
            if let Some(u) = resp.usage.and_then(ResponsesUsageRaw::into_usage) {
                self.usage = Some(u);
            }
        }
        match kind {
            "response.completed" | "response.incomplete" => {
                self.done = true;
                EventKind::Done
            }
            "response.failed" | "error" => {
                self.error = true;
                EventKind::Error
            }
            // Base64 audio is not text.
            "response.audio.delta" => EventKind::Other,
            k if k.ends_with(".delta") && self.text.push(ev.delta.0.as_deref()) => {
                EventKind::Content
            }
            _ => EventKind::Other,
        }
    }

    fn on_anthropic(&mut self, sse_name: Option<&str>, data: &str) -> EventKind {
        let Ok(ev) = serde_json::from_str::<AnthropicEvent<'_>>(data) else {
            return EventKind::Other;
        };
        let kind = ev.kind.0.as_deref().or(sse_name).unwrap_or("");
        match kind {
            "message_start" => {
                let Some(msg) = ev.message else {
                    return EventKind::Other;
                };
                self.note_model(msg.model);
                match msg.usage {
                    Some(u) => {
                        self.anthropic_start = Some(u);
                        EventKind::Usage
                    }
                    None => EventKind::Other,
                }
            }
            "content_block_start" => {
                let pushed = ev.content_block.is_some_and(|b| {
                    let name = self.text.push(b.name.0.as_deref());
                    self.text.push(b.text.0.as_deref()) | name
                });
                if pushed {
                    EventKind::Content
                } else {
                    EventKind::Other
                }
            }
            "content_block_delta" => {
                let pushed = ev.delta.is_some_and(|d| {
                    [d.text, d.partial_json, d.thinking]
                        .into_iter()
                        .fold(false, |any, s| self.text.push(s.0.as_deref()) | any)
                });
                if pushed {
                    EventKind::Content
                } else {
                    EventKind::Other
                }
            }
            "message_delta" => match ev.usage {
                Some(u) => {
                    // output_tokens is cumulative; newer API versions may repeat the
                    // input and cache fields: the latest value of each field wins.
                    self.anthropic_delta = Some(match self.anthropic_delta.take() {
                        Some(prev) => u.or(&prev),
                        None => u,
                    });
                    EventKind::Usage
                }
                None => EventKind::Other,
            },
            "message_stop" => {
                self.done = true;
                EventKind::Done
            }
            "error" => {
                self.error = true;
                EventKind::Error
            }
            _ => EventKind::Other,
        }
    }

    fn note_model(&mut self, model: MaybeStr<'_>) {
        if self.model.is_none() {
            self.model = model.into_string().filter(|m| !m.is_empty());
        }
    }

    pub fn api(&self) -> Api {
        self.api
    }

    /// The model the provider said it answered with.
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// The streamed output kept so far (at most the text cap).
    pub fn output_text(&self) -> &str {
        &self.text.text
    }

    /// Bytes of output seen, kept or not.
    pub fn output_bytes(&self) -> u64 {
        self.text.seen
    }

    /// Whether output past the text cap was dropped.
    pub fn text_truncated(&self) -> bool {
        self.text.truncated()
    }

    /// Whether the stream reached its normal end event.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Whether the provider reported an error in the stream.
    pub fn saw_error(&self) -> bool {
        self.error
    }

    /// Whether the provider's final usage has been seen.
    pub fn has_final_usage(&self) -> bool {
        self.final_usage().is_some()
    }

    fn final_usage(&self) -> Option<Usage> {
        match self.api {
            Api::AnthropicMessages => {
                // Final only once a message_delta carried usage: message_start's
                // output_tokens is a placeholder.
                let delta = self.anthropic_delta.as_ref()?;
                let merged = match &self.anthropic_start {
                    Some(start) => delta.or(start),
                    None => delta.clone(),
                };
                merged.to_usage()
            }
            _ => self.usage,
        }
    }

    /// The provider's final usage so far (see [`StreamUsage::finish`]).
    pub fn usage(&self) -> Option<Usage> {
        self.final_usage()
    }

    /// The provider's final usage, or `None` if the stream ended without one (cut
    /// off, or the provider does not report usage on streams).
    pub fn finish(self) -> Option<Usage> {
        self.final_usage()
    }

    /// The provider's final usage, or else an estimate marked
    /// [`Usage::estimated`]: input from Anthropic's `message_start` when it came
    /// (exact), else `estimated_input_tokens`; output from `count_output` applied to
    /// the kept text, scaled up by bytes when text was dropped, and never below what
    /// `message_start` already reported.
    pub fn finish_or_estimate(
        self,
        estimated_input_tokens: u64,
        count_output: impl FnOnce(&str) -> u64,
    ) -> Usage {
        if let Some(u) = self.final_usage() {
            return u;
        }
        let counted = count_output(&self.text.text);
        let output = self.text.extrapolate(counted);
        let mut usage = match self.anthropic_start.as_ref().and_then(|s| s.to_usage()) {
            Some(start) => Usage {
                output_tokens: start.output_tokens.max(output),
                ..start
            },
            None => Usage::estimated(estimated_input_tokens, output),
        };
        usage.estimated = true;
        usage
    }
}

/// Output text kept up to a cap, with the total length seen.
#[derive(Debug, Clone)]
struct BoundedText {
    text: String,
    cap: usize,
    seen: u64,
}

impl BoundedText {
    fn new(cap: usize) -> BoundedText {
        BoundedText {
            text: String::new(),
            cap,
            seen: 0,
        }
    }

    /// Appends what fits; returns whether there was any text.
    fn push(&mut self, s: Option<&str>) -> bool {
        let Some(s) = s.filter(|s| !s.is_empty()) else {
            return false;
        };
        self.seen = self.seen.saturating_add(s.len() as u64);
        let room = self.cap.saturating_sub(self.text.len());
        if s.len() <= room {
            self.text.push_str(s);
        } else {
            let mut cut = room;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            self.text.push_str(&s[..cut]);
        }
        true
    }

    fn truncated(&self) -> bool {
        self.seen > self.text.len() as u64
    }

    /// Scales a token count of the kept text to all the text seen (rounding up).
    fn extrapolate(&self, counted: u64) -> u64 {
        let kept = self.text.len() as u64;
        if !self.truncated() {
            return counted;
        }
        if kept == 0 {
            return self.seen; // nothing kept: one token per byte, the upper bound
        }
        let scaled = u128::from(counted) * u128::from(self.seen);
        u64::try_from(scaled.div_ceil(u128::from(kept))).unwrap_or(u64::MAX)
    }
}

// ------------------------------------------------------- serde shapes, lenient

/// A string field that may be absent, `null`, or of another type (then treated as
/// absent). Borrows from the input when it has no escapes.
#[derive(Debug, Default)]
struct MaybeStr<'a>(Option<Cow<'a, str>>);

impl MaybeStr<'_> {
    fn into_string(self) -> Option<String> {
        self.0.map(Cow::into_owned)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for MaybeStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MaybeStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(MaybeStr(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(MaybeStr(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(MaybeStr(Some(Cow::Owned(v))))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(MaybeStr(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(MaybeStr(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// A token count that may be absent, `null`, negative, fractional or not a number
/// (all treated as absent, except a whole float like `12.0`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Count(Option<u64>);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Count;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a token count")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Count, E> {
                Ok(Count(Some(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Count, E> {
                Ok(Count(u64::try_from(v).ok()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Count, E> {
                let whole = v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v < 1.8e19;
                Ok(Count(whole.then_some(v as u64)))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Count, E> {
                Ok(Count(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Count, E> {
                Ok(Count(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Count, E> {
                Ok(Count(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<Count, E> {
                Ok(Count(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Count, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Count(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Count, A::Error> {
                while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Count(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// A sub-object that may be absent, `null` or of another type.
#[derive(Debug, Clone)]
struct MaybeObj<T>(Option<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for MaybeObj<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Only objects are read as T; anything else is skipped.
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = MaybeObj<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, a: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(a)).map(|t| MaybeObj(Some(t)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(MaybeObj(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(MaybeObj(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(MaybeObj(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(MaybeObj(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(MaybeObj(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(MaybeObj(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(MaybeObj(None))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(MaybeObj(None))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

impl<T> Default for MaybeObj<T> {
    fn default() -> Self {
        MaybeObj(None)
    }
}

impl<T> MaybeObj<T> {
    fn none() -> MaybeObj<T> {
        MaybeObj(None)
    }

    fn and_then<U>(self, f: impl FnOnce(T) -> Option<U>) -> Option<U> {
        self.0.and_then(f)
    }
}

/// A whole response: only `model` and `usage` are read.
#[derive(Deserialize)]
struct Body<'a, U> {
    #[serde(borrow, default)]
    model: MaybeStr<'a>,
    #[serde(default = "MaybeObj::none", bound(deserialize = "U: Deserialize<'de>"))]
    usage: MaybeObj<U>,
}

#[derive(Deserialize, Default)]
struct ChatUsageRaw {
    #[serde(default)]
    prompt_tokens: Count,
    #[serde(default)]
    completion_tokens: Count,
    #[serde(default = "MaybeObj::none")]
    prompt_tokens_details: MaybeObj<CachedDetails>,
    #[serde(default = "MaybeObj::none")]
    completion_tokens_details: MaybeObj<ReasoningDetails>,
}

#[derive(Deserialize, Default)]
struct CachedDetails {
    #[serde(default)]
    cached_tokens: Count,
}

#[derive(Deserialize, Default)]
struct ReasoningDetails {
    #[serde(default)]
    reasoning_tokens: Count,
}

impl ChatUsageRaw {
    fn into_usage(self) -> Option<Usage> {
        if self.prompt_tokens.0.is_none() && self.completion_tokens.0.is_none() {
            return None;
        }
        Some(Usage::from_openai(
            self.prompt_tokens.0.unwrap_or(0),
            self.completion_tokens.0.unwrap_or(0),
            self.prompt_tokens_details
                .0
                .and_then(|d| d.cached_tokens.0)
                .unwrap_or(0),
            self.completion_tokens_details
                .0
                .and_then(|d| d.reasoning_tokens.0)
                .unwrap_or(0),
        ))
    }
}

#[derive(Deserialize, Default)]
struct ResponsesUsageRaw {
    #[serde(default)]
    input_tokens: Count,
    #[serde(default)]
    output_tokens: Count,
    #[serde(default = "MaybeObj::none")]
    input_tokens_details: MaybeObj<CachedDetails>,
    #[serde(default = "MaybeObj::none")]
    output_tokens_details: MaybeObj<ReasoningDetails>,
}

impl ResponsesUsageRaw {
    fn into_usage(self) -> Option<Usage> {
        if self.input_tokens.0.is_none() && self.output_tokens.0.is_none() {
            return None;
        }
        Some(Usage::from_openai(
            self.input_tokens.0.unwrap_or(0),
            self.output_tokens.0.unwrap_or(0),
            self.input_tokens_details
                .0
                .and_then(|d| d.cached_tokens.0)
                .unwrap_or(0),
            self.output_tokens_details
                .0
                .and_then(|d| d.reasoning_tokens.0)
                .unwrap_or(0),
        ))
    }
}

#[derive(Deserialize, Default)]
struct EmbeddingsUsageRaw {
    #[serde(default)]
    prompt_tokens: Count,
    #[serde(default)]
    total_tokens: Count,
}

impl EmbeddingsUsageRaw {
    fn into_usage(self) -> Option<Usage> {
        let tokens = self.prompt_tokens.0.or(self.total_tokens.0)?;
        Some(Usage::from_openai(tokens, 0, 0, 0))
    }
}

#[derive(Deserialize, Default, Clone, Debug)]
struct AnthropicUsageRaw {
    #[serde(default)]
    input_tokens: Count,
    #[serde(default)]
    output_tokens: Count,
    #[serde(default)]
    cache_creation_input_tokens: Count,
    #[serde(default)]
    cache_read_input_tokens: Count,
    #[serde(default = "MaybeObj::none")]
    cache_creation: MaybeObj<CacheCreation>,
}

#[derive(Deserialize, Default, Clone, Copy, Debug)]
struct CacheCreation {
    #[serde(default)]
    ephemeral_5m_input_tokens: Count,
    #[serde(default)]
    ephemeral_1h_input_tokens: Count,
}

impl AnthropicUsageRaw {
    /// Field by field: ours where present, else `base`'s.
    fn or(&self, base: &AnthropicUsageRaw) -> AnthropicUsageRaw {
        AnthropicUsageRaw {
            input_tokens: Count(self.input_tokens.0.or(base.input_tokens.0)),
            output_tokens: Count(self.output_tokens.0.or(base.output_tokens.0)),
            cache_creation_input_tokens: Count(
                self.cache_creation_input_tokens
                    .0
                    .or(base.cache_creation_input_tokens.0),
            ),
            cache_read_input_tokens: Count(
                self.cache_read_input_tokens
                    .0
                    .or(base.cache_read_input_tokens.0),
            ),
            cache_creation: MaybeObj(self.cache_creation.0.or(base.cache_creation.0)),
        }
    }

    fn to_usage(&self) -> Option<Usage> {
        if self.input_tokens.0.is_none() && self.output_tokens.0.is_none() {
            return None;
        }
        let split = self.cache_creation.0.unwrap_or_default();
        let one_hour = split.ephemeral_1h_input_tokens.0.unwrap_or(0);
        let cache_write = self.cache_creation_input_tokens.0.unwrap_or_else(|| {
            split
                .ephemeral_5m_input_tokens
                .0
                .unwrap_or(0)
                .saturating_add(one_hour)
        });
        Some(
            Usage::from_anthropic(
                self.input_tokens.0.unwrap_or(0),
                self.output_tokens.0.unwrap_or(0),
                cache_write,
                self.cache_read_input_tokens.0.unwrap_or(0),
            )
            .with_cache_write_1h(one_hour),
        )
    }
}

#[derive(Deserialize)]
struct ChatChunk<'a> {
    #[serde(borrow, default)]
    model: MaybeStr<'a>,
    #[serde(borrow, default)]
    choices: Option<Vec<ChunkChoice<'a>>>,
    #[serde(default = "MaybeObj::none")]
    usage: MaybeObj<ChatUsageRaw>,
    #[serde(default)]
    error: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct ChunkChoice<'a> {
    #[serde(borrow, default)]
    delta: Option<ChatDelta<'a>>,
}

#[derive(Deserialize)]
struct ChatDelta<'a> {
    #[serde(borrow, default)]
    content: MaybeStr<'a>,
    #[serde(borrow, default)]
    refusal: MaybeStr<'a>,
    #[serde(borrow, default)]
    reasoning_content: MaybeStr<'a>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<ToolCallDelta<'a>>>,
    #[serde(borrow, default)]
    function_call: Option<FunctionDelta<'a>>,
}

#[derive(Deserialize)]
struct ToolCallDelta<'a> {
    #[serde(borrow, default)]
    function: Option<FunctionDelta<'a>>,
}

#[derive(Deserialize)]
struct FunctionDelta<'a> {
    #[serde(borrow, default)]
    name: MaybeStr<'a>,
    #[serde(borrow, default)]
    arguments: MaybeStr<'a>,
}

#[derive(Deserialize)]
struct ResponsesEvent<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: MaybeStr<'a>,
    #[serde(borrow, default)]
    delta: MaybeStr<'a>,
    #[serde(borrow, default)]
    response: Option<ResponseObj<'a>>,
}

#[derive(Deserialize)]
struct ResponseObj<'a> {
    #[serde(borrow, default)]
    model: MaybeStr<'a>,
    #[serde(default = "MaybeObj::none")]
    usage: MaybeObj<ResponsesUsageRaw>,
}

#[derive(Deserialize)]
struct AnthropicEvent<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: MaybeStr<'a>,
    #[serde(borrow, default)]
    message: Option<AnthropicMessage<'a>>,
    #[serde(borrow, default)]
    delta: Option<AnthropicDelta<'a>>,
    #[serde(borrow, default)]
    content_block: Option<AnthropicBlock<'a>>,
    #[serde(default)]
    usage: Option<AnthropicUsageRaw>,
}

#[derive(Deserialize)]
struct AnthropicMessage<'a> {
    #[serde(borrow, default)]
    model: MaybeStr<'a>,
    #[serde(default)]
    usage: Option<AnthropicUsageRaw>,
}

#[derive(Deserialize)]
struct AnthropicDelta<'a> {
    #[serde(borrow, default)]
    text: MaybeStr<'a>,
    #[serde(borrow, default)]
    partial_json: MaybeStr<'a>,
    #[serde(borrow, default)]
    thinking: MaybeStr<'a>,
}

#[derive(Deserialize)]
struct AnthropicBlock<'a> {
    #[serde(borrow, default)]
    name: MaybeStr<'a>,
    #[serde(borrow, default)]
    text: MaybeStr<'a>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::gateway::sse::SseParser;
    use serde_json::json;

    fn events(stream: &str) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        p.feed(stream.as_bytes()).unwrap();
        let mut out: Vec<SseEvent> = p.drain().collect();
        out.extend(p.finish());
        out
    }

    fn run(api: Api, stream: &str) -> (StreamUsage, Vec<EventKind>) {
        let mut acc = StreamUsage::new(api);
        let kinds = events(stream).iter().map(|e| acc.on_event(e)).collect();
        (acc, kinds)
    }

    // ------------------------------------------------------------ whole bodies

    #[test]
    fn openai_chat_completion() {
        let body = json!({
            "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-2024-08-06",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 2006, "completion_tokens": 300, "total_tokens": 2306,
                      "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
                      "completion_tokens_details": {"reasoning_tokens": 64,
                                                    "accepted_prediction_tokens": 0}}
        });
        let r = parse_response(Api::ChatCompletions, body.to_string().as_bytes()).unwrap();
        assert_eq!(r.model.as_deref(), Some("gpt-4o-2024-08-06"));
        assert_eq!(r.usage, Some(Usage::from_openai(2006, 300, 1920, 64)));
        let u = r.usage.unwrap();
        assert_eq!((u.input_tokens, u.cache_read_tokens), (86, 1920));
        assert_eq!((u.output_tokens, u.reasoning_tokens), (236, 64));
    }

    #[test]
    fn openai_chat_without_details_or_usage() {
        let r = openai_chat_response(
            br#"{"model":"gpt-4o","usage":{"prompt_tokens":5,"completion_tokens":7,
                 "prompt_tokens_details":null}}"#,
        )
        .unwrap();
        assert_eq!(r.usage, Some(Usage::from_openai(5, 7, 0, 0)));
        let r = openai_chat_response(br#"{"model":"gpt-4o","choices":[]}"#).unwrap();
        assert_eq!(r.usage, None);
        let r = openai_chat_response(br#"{"usage":null}"#).unwrap();
        assert_eq!(r, ResponseUsage::default());
        let r = openai_chat_response(br#"{"usage":{}}"#).unwrap();
        assert_eq!(r.usage, None);
        // Odd shapes are ignored, not fatal.
        let r = openai_chat_response(
            br#"{"model":7,"usage":{"prompt_tokens":"5","completion_tokens":3.0,
                 "prompt_tokens_details":[1],"completion_tokens_details":{"reasoning_tokens":-1}}}"#,
        )
        .unwrap();
        assert_eq!(r.model, None);
        assert_eq!(r.usage, Some(Usage::from_openai(0, 3, 0, 0)));
        assert!(openai_chat_response(b"not json").is_err());
        assert_eq!(
            openai_chat_response(b"[1]").unwrap(),
            ResponseUsage::default()
        );
    }

    #[test]
    fn openai_responses_api() {
        let body = json!({
            "id": "resp_1", "object": "response", "model": "o3-2025-04-16", "status": "completed",
            "output": [{"type": "message", "content": [{"type": "output_text", "text": "x"}]}],
            "usage": {"input_tokens": 5000, "input_tokens_details": {"cached_tokens": 4096},
                      "output_tokens": 3000, "output_tokens_details": {"reasoning_tokens": 2048},
                      "total_tokens": 8000}
        });
        let r = parse_response(Api::Responses, body.to_string().as_bytes()).unwrap();
        assert_eq!(r.model.as_deref(), Some("o3-2025-04-16"));
        assert_eq!(r.usage, Some(Usage::from_openai(5000, 3000, 4096, 2048)));
    }

    #[test]
    fn openai_embeddings() {
        let body = json!({
            "object": "list", "model": "text-embedding-3-small",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.0023, -0.0093, 0.5]}],
            "usage": {"prompt_tokens": 8, "total_tokens": 8}
        });
        let r = parse_response(Api::Embeddings, body.to_string().as_bytes()).unwrap();
        assert_eq!(r.model.as_deref(), Some("text-embedding-3-small"));
        assert_eq!(r.usage, Some(Usage::from_openai(8, 0, 0, 0)));
        let r = openai_embeddings_response(br#"{"usage":{"total_tokens":9}}"#).unwrap();
        assert_eq!(r.usage.unwrap().input_tokens, 9);
    }

    #[test]
    fn anthropic_messages() {
        let body = json!({
            "id": "msg_1", "type": "message", "role": "assistant",
            "model": "claude-sonnet-4-5-20250929",
            "content": [{"type": "text", "text": "Hello"}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 1200, "cache_creation_input_tokens": 2000,
                      "cache_read_input_tokens": 10000, "output_tokens": 350,
                      "cache_creation": {"ephemeral_5m_input_tokens": 1500,
                                         "ephemeral_1h_input_tokens": 500},
                      "service_tier": "standard"}
        });
        let r = parse_response(Api::AnthropicMessages, body.to_string().as_bytes()).unwrap();
        assert_eq!(r.model.as_deref(), Some("claude-sonnet-4-5-20250929"));
        let u = r.usage.unwrap();
        assert_eq!(
            u,
            Usage::from_anthropic(1200, 350, 2000, 10_000).with_cache_write_1h(500)
        );
        assert_eq!(
            u.input_tokens, 1200,
            "Anthropic input excludes cache: nothing subtracted"
        );
        // Older API versions: no breakdown, no cache fields at all.
        let r = anthropic_response(br#"{"usage":{"input_tokens":10,"output_tokens":2}}"#).unwrap();
        assert_eq!(r.usage, Some(Usage::from_anthropic(10, 2, 0, 0)));
        // Only the breakdown: its sum is the cache write.
        let r = anthropic_response(
            br#"{"usage":{"input_tokens":1,"output_tokens":1,
                 "cache_creation":{"ephemeral_5m_input_tokens":3,"ephemeral_1h_input_tokens":4}}}"#,
        )
        .unwrap();
        assert_eq!(
            r.usage,
            Some(Usage::from_anthropic(1, 1, 7, 0).with_cache_write_1h(4))
        );
    }

    #[test]
    fn model_with_escapes_is_unescaped() {
        let r = openai_chat_response(br#"{"model":"gpt-4o\u002dmini"}"#).unwrap();
        assert_eq!(r.model.as_deref(), Some("gpt-4o-mini"));
    }

    #[test]
    fn extract_and_output_text() {
        let chat = json!({"model": "gpt-4o", "choices": [{"message": {"role": "assistant",
            "content": "Hi", "tool_calls": [{"type": "function",
            "function": {"name": "f", "arguments": "{}"}}]}}]});
        let body = chat.to_string();
        assert_eq!(output_text(Api::ChatCompletions, body.as_bytes()), "Hif{}");
        assert_eq!(
            extract(Api::ChatCompletions, body.as_bytes()),
            None,
            "no usage"
        );
        let with_usage =
            json!({"model": "gpt-4o", "usage": {"prompt_tokens": 3, "completion_tokens": 1}});
        assert_eq!(
            extract(Api::ChatCompletions, with_usage.to_string().as_bytes()),
            Some(Extracted {
                model: Some("gpt-4o".into()),
                usage: Usage::from_openai(3, 1, 0, 0)
            })
        );
        assert_eq!(extract(Api::ChatCompletions, b"<html>"), None);
        let resp = json!({"output": [
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "R."}]},
            {"type": "message", "content": [{"type": "output_text", "text": "Out"}]},
            {"type": "function_call", "name": "g", "arguments": "{\"a\":1}"}]});
        assert_eq!(
            output_text(Api::Responses, resp.to_string().as_bytes()),
            "R.Outg{\"a\":1}"
        );
        let msg = json!({"content": [{"type": "thinking", "thinking": "T."},
            {"type": "text", "text": "Yes"},
            {"type": "tool_use", "name": "h", "input": {"k": "v"}}]});
        assert_eq!(
            output_text(Api::AnthropicMessages, msg.to_string().as_bytes()),
            "T.Yesh{\"k\":\"v\"}"
        );
        assert_eq!(output_text(Api::Embeddings, b"{}"), "");
        assert_eq!(output_text(Api::AnthropicMessages, b"nope"), "");
    }

    // ----------------------------------------------------------------- streams

    const OPENAI_CHAT_STREAM: &str = concat!(
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini-2024-07-18\",",
        "\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}],\"usage\":null}\n\n",
        "data: {\"id\":\"c\",\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"index\":0,",
        "\"delta\":{\"content\":\"Hello\"}}],\"usage\":null}\n\n",
        ": keep-alive\n\n",
        "data: {\"id\":\"c\",\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"index\":0,",
        "\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",",
        "\"function\":{\"name\":\"get_weather\",\"arguments\":\"{\\\"city\\\":\"}}]}}],\"usage\":null}\n\n",
        "data: {\"id\":\"c\",\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"index\":0,",
        "\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
        "data: {\"id\":\"c\",\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[],",
        "\"usage\":{\"prompt_tokens\":1234,\"completion_tokens\":567,\"total_tokens\":1801,",
        "\"prompt_tokens_details\":{\"cached_tokens\":1024},",
        "\"completion_tokens_details\":{\"reasoning_tokens\":0}}}\n\n",
        "data: [DONE]\n\n",
    );

    #[test]
    fn openai_chat_stream_with_usage_chunk() {
        let (acc, kinds) = run(Api::ChatCompletions, OPENAI_CHAT_STREAM);
        assert_eq!(
            kinds,
            [
                EventKind::Other, // role, empty content
                EventKind::Content,
                EventKind::Other, // keep-alive
                EventKind::Content,
                EventKind::Other, // finish_reason
                EventKind::UsageOnly,
                EventKind::Done,
            ]
        );
        assert_eq!(acc.model(), Some("gpt-4o-mini-2024-07-18"));
        assert_eq!(acc.output_text(), "Helloget_weather{\"city\":");
        assert!(acc.is_done() && !acc.saw_error() && acc.has_final_usage());
        assert_eq!(acc.usage(), Some(Usage::from_openai(1234, 567, 1024, 0)));
        assert!(kinds[5].is_usage_only() && !kinds[1].is_usage_only());
        assert_eq!(acc.finish(), Some(Usage::from_openai(1234, 567, 1024, 0)));
    }

    #[test]
    fn openai_chat_stream_without_usage_is_estimated() {
        let stream: String = OPENAI_CHAT_STREAM
            .split("\n\n")
            .filter(|e| !e.contains("\"usage\":{"))
            .map(|e| format!("{e}\n\n"))
            .collect();
        let (acc, _) = run(Api::ChatCompletions, &stream);
        assert!(!acc.has_final_usage());
        let text = "Helloget_weather{\"city\":";
        assert_eq!(acc.output_text(), text);
        let u = acc.clone().finish_or_estimate(40, |t| t.len() as u64);
        assert_eq!(u, Usage::estimated(40, text.len() as u64));
        assert!(acc.finish().is_none());
    }

    #[test]
    fn usage_in_a_content_chunk_is_not_usage_only() {
        // Some OpenAI-compatible servers put usage on the last content chunk.
        let (acc, kinds) = run(
            Api::ChatCompletions,
            "data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}],\
             \"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\n",
        );
        assert_eq!(kinds, [EventKind::Usage]);
        assert_eq!(acc.output_text(), "x");
        assert_eq!(acc.finish(), Some(Usage::from_openai(3, 1, 0, 0)));
    }

    #[test]
    fn openai_stream_error_and_garbage() {
        let (acc, kinds) = run(
            Api::ChatCompletions,
            "data: not json\n\ndata: {\"error\":{\"message\":\"overloaded\"}}\n\n",
        );
        assert_eq!(kinds, [EventKind::Other, EventKind::Error]);
        assert!(acc.saw_error() && !acc.is_done());
    }

    const RESPONSES_STREAM: &str = concat!(
        "event: response.created\n",
        "data: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_1\",",
        "\"model\":\"gpt-5-2025-08-07\",\"status\":\"in_progress\",\"usage\":null}}\n\n",
        "event: response.reasoning_summary_text.delta\n",
        "data: {\"type\":\"response.reasoning_summary_text.delta\",\"delta\":\"Thinking\"}\n\n",
        "event: response.output_text.delta\n",
        "data: {\"type\":\"response.output_text.delta\",\"item_id\":\"m\",\"delta\":\"Hi \"}\n\n",
        "event: response.output_text.delta\n",
        "data: {\"type\":\"response.output_text.delta\",\"item_id\":\"m\",\"delta\":\"there\"}\n\n",
        "event: response.function_call_arguments.delta\n",
        "data: {\"type\":\"response.function_call_arguments.delta\",\"delta\":\"{}\"}\n\n",
        "event: response.audio.delta\n",
        "data: {\"type\":\"response.audio.delta\",\"delta\":\"AAAA\"}\n\n",
        "event: response.output_text.done\n",
        "data: {\"type\":\"response.output_text.done\",\"text\":\"Hi there\"}\n\n",
        "event: response.completed\n",
        "data: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_1\",",
        "\"model\":\"gpt-5-2025-08-07\",\"status\":\"completed\",\"output\":[],",
        "\"usage\":{\"input_tokens\":300,\"input_tokens_details\":{\"cached_tokens\":256},",
        "\"output_tokens\":900,\"output_tokens_details\":{\"reasoning_tokens\":768},",
        "\"total_tokens\":1200}}}\n\n",
    );

    #[test]
    fn responses_stream() {
        let (acc, kinds) = run(Api::Responses, RESPONSES_STREAM);
        assert_eq!(
            kinds,
            [
                EventKind::Other,
                EventKind::Content,
                EventKind::Content,
                EventKind::Content,
                EventKind::Content,
                EventKind::Other,
                EventKind::Other,
                EventKind::Done,
            ]
        );
        assert_eq!(acc.model(), Some("gpt-5-2025-08-07"));
        assert_eq!(acc.output_text(), "ThinkingHi there{}");
        assert_eq!(acc.finish(), Some(Usage::from_openai(300, 900, 256, 768)));
    }

    #[test]
    fn responses_incomplete_and_failed_still_bill() {
        let (acc, kinds) = run(
            Api::Responses,
            "data: {\"type\":\"response.incomplete\",\"response\":{\"usage\":\
             {\"input_tokens\":10,\"output_tokens\":64}}}\n\n",
        );
        assert_eq!(kinds, [EventKind::Done]);
        assert_eq!(acc.finish(), Some(Usage::from_openai(10, 64, 0, 0)));
        let (acc, kinds) = run(
            Api::Responses,
            "event: response.failed\ndata: {\"response\":{\"usage\":\
             {\"input_tokens\":10,\"output_tokens\":3}}}\n\n",
        );
        assert_eq!(
            kinds,
            [EventKind::Error],
            "type taken from the SSE event name"
        );
        assert!(acc.saw_error());
        assert_eq!(acc.finish(), Some(Usage::from_openai(10, 3, 0, 0)));
    }

    const ANTHROPIC_STREAM: &str = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",",
        "\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5-20250929\",\"content\":[],",
        "\"usage\":{\"input_tokens\":1200,\"cache_creation_input_tokens\":2000,",
        "\"cache_read_input_tokens\":10000,\"output_tokens\":1,",
        "\"cache_creation\":{\"ephemeral_5m_input_tokens\":2000,\"ephemeral_1h_input_tokens\":0}}}}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"Hmm. \"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"signature_delta\",\"signature\":\"EqQB\"}}\n\n",
        "event: ping\n",
        "data: {\"type\": \"ping\"}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"tool_use\",",
        "\"id\":\"toolu_1\",\"name\":\"get_weather\",\"input\":{}}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",",
        "\"partial_json\":\"{\\\"city\\\": \\\"Paris\\\"}\"}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":2}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},",
        "\"usage\":{\"output_tokens\":350}}\n\n",
        "event: message_stop\n",
        "data: {\"type\":\"message_stop\"}\n\n",
    );

    #[test]
    fn anthropic_stream_merges_start_and_delta_usage() {
        let (acc, kinds) = run(Api::AnthropicMessages, ANTHROPIC_STREAM);
        assert_eq!(
            kinds,
            [
                EventKind::Usage,
                EventKind::Other, // empty thinking block start
                EventKind::Content,
                EventKind::Other, // signature
                EventKind::Other, // ping
                EventKind::Content,
                EventKind::Content, // tool_use name
                EventKind::Content,
                EventKind::Other,
                EventKind::Usage,
                EventKind::Done,
            ]
        );
        assert_eq!(acc.model(), Some("claude-sonnet-4-5-20250929"));
        assert_eq!(
            acc.output_text(),
            "Hmm. Helloget_weather{\"city\": \"Paris\"}"
        );
        assert_eq!(
            acc.finish(),
            Some(Usage::from_anthropic(1200, 350, 2000, 10_000))
        );
    }

    #[test]
    fn anthropic_message_delta_values_win_when_repeated() {
        // Newer API versions repeat input and cache counts in message_delta.
        let stream = ANTHROPIC_STREAM.replace(
            "\"usage\":{\"output_tokens\":350}",
            "\"usage\":{\"input_tokens\":1300,\"cache_creation_input_tokens\":2100,\
             \"cache_read_input_tokens\":null,\"output_tokens\":350}",
        );
        let (acc, _) = run(Api::AnthropicMessages, &stream);
        // input and cache write from message_delta; cache read (null there) from start.
        assert_eq!(
            acc.finish(),
            Some(Usage::from_anthropic(1300, 350, 2100, 10_000))
        );
        // Several message_deltas: output is cumulative, the last one counts.
        let two = ANTHROPIC_STREAM.replace(
            "event: message_stop\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":420}}\n\n\
             event: message_stop\n",
        );
        let (acc, _) = run(Api::AnthropicMessages, &two);
        assert_eq!(
            acc.finish(),
            Some(Usage::from_anthropic(1200, 420, 2000, 10_000))
        );
    }

    #[test]
    fn anthropic_stream_cut_before_message_delta() {
        let cut = &ANTHROPIC_STREAM[..ANTHROPIC_STREAM.find("event: message_delta").unwrap()];
        let (acc, _) = run(Api::AnthropicMessages, cut);
        assert!(!acc.has_final_usage() && !acc.is_done());
        // Input side exact from message_start; output counted locally.
        let u = acc.clone().finish_or_estimate(99_999, |t| t.len() as u64);
        let text_len = "Hmm. Helloget_weather{\"city\": \"Paris\"}".len() as u64;
        assert_eq!(
            u,
            Usage {
                estimated: true,
                ..Usage::from_anthropic(1200, text_len, 2000, 10_000)
            }
        );
        assert!(acc.finish().is_none());
    }

    #[test]
    fn anthropic_error_event() {
        let (acc, kinds) = run(
            Api::AnthropicMessages,
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\"}}\n\n",
        );
        assert_eq!(kinds, [EventKind::Error]);
        assert!(acc.saw_error());
    }

    #[test]
    fn streams_split_anywhere_give_the_same_result() {
        for (api, stream) in [
            (Api::ChatCompletions, OPENAI_CHAT_STREAM),
            (Api::Responses, RESPONSES_STREAM),
            (Api::AnthropicMessages, ANTHROPIC_STREAM),
        ] {
            let (whole, whole_kinds) = run(api, stream);
            let expected = (whole.output_text().to_owned(), whole.finish());
            for cut in 0..=stream.len() {
                let mut p = SseParser::new();
                let mut acc = StreamUsage::new(api);
                let mut kinds = Vec::new();
                for part in [&stream.as_bytes()[..cut], &stream.as_bytes()[cut..]] {
                    p.feed(part).unwrap();
                    kinds.extend(p.drain().map(|e| acc.on_event(&e)));
                }
                kinds.extend(p.finish().map(|e| acc.on_event(&e)));
                assert_eq!(kinds, whole_kinds, "{api:?} cut at {cut}");
                assert_eq!(
                    (acc.output_text().to_owned(), acc.finish()),
                    expected,
                    "{api:?} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn output_text_is_bounded_and_extrapolated() {
        let mut acc = StreamUsage::with_text_cap(Api::ChatCompletions, 10);
        for piece in ["héllo ", "wörld ", "again"] {
            let data = json!({"choices": [{"delta": {"content": piece}}]});
            let ev = SseEvent::parse(format!("data: {data}\n\n").into_bytes());
            assert_eq!(acc.on_event(&ev), EventKind::Content);
        }
        assert_eq!(acc.output_text(), "héllo wö", "cut on a char boundary");
        assert_eq!(acc.output_bytes(), 19);
        assert!(acc.text_truncated());
        // 10 kept bytes counted as 3 tokens -> 3 * 19 / 10 = 5.7 -> 6.
        let u = acc.finish_or_estimate(5, |t| {
            assert_eq!(t.len(), 10);
            3
        });
        assert_eq!(u, Usage::estimated(5, 6));
        // A cap inside a multi-byte char keeps less.
        let mut acc = StreamUsage::with_text_cap(Api::ChatCompletions, 2);
        let data = json!({"choices": [{"delta": {"content": "hé"}}]});
        acc.on_event(&SseEvent::parse(format!("data: {data}\n\n").into_bytes()));
        assert_eq!(acc.output_text(), "h");
        // Nothing kept at all: one token per byte.
        let mut acc = StreamUsage::with_text_cap(Api::AnthropicMessages, 0);
        let ev = SseEvent::parse(
            &b"data: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"abc\"}}\n\n"[..],
        );
        assert_eq!(acc.on_event(&ev), EventKind::Content);
        assert_eq!(acc.finish_or_estimate(0, |_| 0).output_tokens, 3);
    }

    #[test]
    fn events_without_data_are_other() {
        let mut acc = StreamUsage::new(Api::AnthropicMessages);
        assert_eq!(
            acc.on_event(&SseEvent::parse(&b": ping\n\n"[..])),
            EventKind::Other
        );
        assert_eq!(acc.on_event(&SseEvent::parse(&b"\n"[..])), EventKind::Other);
    }
}
