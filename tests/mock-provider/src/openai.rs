//! OpenAI: Chat Completions, Responses, Embeddings and the model list, in the shapes
//! the official SDK parses.
//!
//! Usage mapping: `prompt` → `prompt_tokens` / `input_tokens` (cached tokens are part
//! of it by OpenAI's convention; the mock reports what it is told), `cached` →
//! `*_tokens_details.cached_tokens`, `reasoning` → `*_tokens_details.reasoning_tokens`.

use bytes::Bytes;
use http::Response;
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::body::MockBody;
use crate::reply::{Call, Provider, sse_data, sse_event};
use crate::summary::Summary;
use crate::usage::{Usage, content_words, embedding_input_tokens, output_tokens};

const FINGERPRINT: &str = "fp_mock";

fn is_stream(body: &Value) -> bool {
    body.get("stream").and_then(Value::as_bool).unwrap_or(false)
}

// Chat Completions is the benchmark's hot path: its bodies are typed structs
// serialized straight to bytes, with no `Value` tree in between.

#[derive(Serialize)]
struct PromptDetails {
    cached_tokens: u64,
    audio_tokens: u64,
}

#[derive(Serialize)]
struct CompletionDetails {
    reasoning_tokens: u64,
    audio_tokens: u64,
    accepted_prediction_tokens: u64,
    rejected_prediction_tokens: u64,
}

#[derive(Serialize)]
struct ChatUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: PromptDetails,
    completion_tokens_details: CompletionDetails,
}

impl From<&Usage> for ChatUsage {
    fn from(usage: &Usage) -> Self {
        Self {
            prompt_tokens: usage.prompt,
            completion_tokens: usage.completion,
            total_tokens: usage.prompt + usage.completion,
            prompt_tokens_details: PromptDetails {
                cached_tokens: usage.cached,
                audio_tokens: 0,
            },
            completion_tokens_details: CompletionDetails {
                reasoning_tokens: usage.reasoning,
                audio_tokens: 0,
                accepted_prediction_tokens: 0,
                rejected_prediction_tokens: 0,
            },
        }
    }
}

#[derive(Serialize)]
struct ChatMessage<'a> {
    role: &'static str,
    content: &'a str,
    refusal: Option<()>,
    annotations: [(); 0],
}

#[derive(Serialize)]
struct ChatChoice<'a> {
    index: u32,
    message: ChatMessage<'a>,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct ChatCompletion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [ChatChoice<'a>; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<ChatUsage>,
    service_tier: &'static str,
    system_fingerprint: &'static str,
}

/// A chunk's `usage`: absent (no `include_usage`), `null`, or the figures.
enum ChunkUsage {
    Absent,
    Null,
    Figures(ChatUsage),
}

impl ChunkUsage {
    fn is_absent(&self) -> bool {
        matches!(self, Self::Absent)
    }
}

impl Serialize for ChunkUsage {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Absent | Self::Null => serializer.serialize_none(),
            Self::Figures(usage) => usage.serialize(serializer),
        }
    }
}

#[derive(Serialize)]
struct RoleDelta {
    role: &'static str,
    content: &'static str,
    refusal: Option<()>,
}

#[derive(Serialize)]
struct ContentDelta<'a> {
    content: &'a str,
}

#[derive(Serialize)]
struct EmptyDelta {}

#[derive(Serialize)]
struct ChunkChoice<D> {
    index: u32,
    delta: D,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize)]
struct ChatChunk<'a, C> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    service_tier: &'static str,
    system_fingerprint: &'static str,
    choices: C,
    #[serde(skip_serializing_if = "ChunkUsage::is_absent")]
    usage: ChunkUsage,
}

/// What every chunk of one stream shares.
struct ChunkHead<'a> {
    id: &'a str,
    call: &'a Call,
    include_usage: bool,
}

impl<'a> ChunkHead<'a> {
    fn with<C>(&self, choices: C) -> ChatChunk<'a, C> {
        ChatChunk {
            id: self.id,
            object: "chat.completion.chunk",
            created: self.call.created,
            model: &self.call.model,
            service_tier: "default",
            system_fingerprint: FINGERPRINT,
            choices,
            usage: if self.include_usage {
                ChunkUsage::Null
            } else {
                ChunkUsage::Absent
            },
        }
    }
}

/// `POST /v1/chat/completions`
pub(crate) fn chat_completions(call: &Call, request: &Summary) -> Response<MockBody> {
    let usage = call.usage(request.message_words, request.output_tokens());
    let id = format!("chatcmpl-mock{:016x}", call.seq);
    if !request.stream {
        let text = call.text(usage.completion);
        let response = ChatCompletion {
            id: &id,
            object: "chat.completion",
            created: call.created,
            model: &call.model,
            choices: [ChatChoice {
                index: 0,
                message: ChatMessage {
                    role: "assistant",
                    content: &text,
                    refusal: None,
                    annotations: [],
                },
                logprobs: None,
                finish_reason: "stop",
            }],
            usage: (!call.no_usage).then(|| ChatUsage::from(&usage)),
            service_tier: "default",
            system_fingerprint: FINGERPRINT,
        };
        return call.json(Provider::OpenAi, &response);
    }

    let include_usage = request.include_usage && !call.no_usage;
    let chunk = ChunkHead {
        id: &id,
        call,
        include_usage,
    };
    let mut events = Vec::with_capacity(usage.completion as usize + 4);
    events.push(sse_data(&chunk.with([ChunkChoice {
        index: 0,
        delta: RoleDelta {
            role: "assistant",
            content: "",
            refusal: None,
        },
        logprobs: None,
        finish_reason: None,
    }])));
    for word in call.pieces(usage.completion) {
        events.push(sse_data(&chunk.with([ChunkChoice {
            index: 0,
            delta: ContentDelta { content: &word },
            logprobs: None,
            finish_reason: None,
        }])));
    }
    events.push(sse_data(&chunk.with([ChunkChoice {
        index: 0,
        delta: EmptyDelta {},
        logprobs: None,
        finish_reason: Some("stop"),
    }])));
    if include_usage {
        let mut last = chunk.with([(); 0]);
        last.usage = ChunkUsage::Figures(ChatUsage::from(&usage));
        events.push(sse_data(&last));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    call.stream(Provider::OpenAi, events)
}

fn responses_usage(usage: &Usage) -> Value {
    json!({
        "input_tokens": usage.prompt,
        "input_tokens_details": {"cached_tokens": usage.cached},
        "output_tokens": usage.completion,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning},
        "total_tokens": usage.prompt + usage.completion
    })
}

/// `POST /v1/responses`
pub(crate) fn responses(call: &Call, body: &Value) -> Response<MockBody> {
    let prompt = body.get("input").map_or(0, content_words)
        + body.get("instructions").map_or(0, content_words);
    let usage = call.usage(prompt, output_tokens(body));
    let id = format!("resp_mock{:016x}", call.seq);
    let item_id = format!("msg_mock{:016x}", call.seq);
    let text = call.text(usage.completion);
    let part = json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []});
    let item = |status: &str, content: Value| json!({"id": item_id, "type": "message", "status": status, "role": "assistant", "content": content});
    let echo = |key: &str, default: Value| body.get(key).cloned().unwrap_or(default);
    let response = |status: &str, output: Value, usage: Value| {
        json!({
            "id": id,
            "object": "response",
            "created_at": call.created,
            "status": status,
            "background": false,
            "error": null,
            "incomplete_details": null,
            "instructions": echo("instructions", Value::Null),
            "max_output_tokens": echo("max_output_tokens", Value::Null),
            "model": call.model,
            "output": output,
            "parallel_tool_calls": echo("parallel_tool_calls", json!(true)),
            "previous_response_id": echo("previous_response_id", Value::Null),
            "reasoning": {"effort": null, "summary": null},
            "service_tier": "default",
            "store": echo("store", json!(true)),
            "temperature": echo("temperature", json!(1.0)),
            "text": {"format": {"type": "text"}},
            "tool_choice": echo("tool_choice", json!("auto")),
            "tools": echo("tools", json!([])),
            "top_p": echo("top_p", json!(1.0)),
            "truncation": "disabled",
            "usage": usage,
            "user": null,
            "metadata": echo("metadata", json!({}))
        })
    };
    let final_usage = if call.no_usage {
        Value::Null
    } else {
        responses_usage(&usage)
    };
    let completed = response(
        "completed",
        json!([item("completed", json!([part]))]),
        final_usage,
    );
    if !is_stream(body) {
        return call.json(Provider::OpenAi, &completed);
    }

    let mut sequence = 0u64;
    let mut event = |name: &str, mut payload: Value| {
        if let Value::Object(map) = &mut payload {
            map.insert("type".to_owned(), json!(name));
            map.insert("sequence_number".to_owned(), json!(sequence));
        }
        sequence += 1;
        sse_event(name, &payload)
    };
    let in_progress = response("in_progress", json!([]), Value::Null);
    let mut events = Vec::with_capacity(usage.completion as usize + 8);
    events.push(event("response.created", json!({"response": in_progress})));
    events.push(event(
        "response.in_progress",
        json!({"response": in_progress}),
    ));
    events.push(event(
        "response.output_item.added",
        json!({"output_index": 0, "item": item("in_progress", json!([]))}),
    ));
    let location = |extra: Value| {
        let mut map = Map::new();
        map.insert("item_id".to_owned(), json!(item_id));
        map.insert("output_index".to_owned(), json!(0));
        map.insert("content_index".to_owned(), json!(0));
        if let Value::Object(extra) = extra {
            map.extend(extra);
        }
        Value::Object(map)
    };
    events.push(event(
        "response.content_part.added",
        location(
            json!({"part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}),
        ),
    ));
    for word in call.pieces(usage.completion) {
        events.push(event(
            "response.output_text.delta",
            location(json!({"delta": word, "logprobs": []})),
        ));
    }
    events.push(event(
        "response.output_text.done",
        location(json!({"text": text, "logprobs": []})),
    ));
    events.push(event(
        "response.content_part.done",
        location(json!({"part": part})),
    ));
    events.push(event(
        "response.output_item.done",
        json!({"output_index": 0, "item": item("completed", json!([part]))}),
    ));
    events.push(event("response.completed", json!({"response": completed})));
    call.stream(Provider::OpenAi, events)
}

/// Default vector size when the request gives no `dimensions`.
const EMBEDDING_DIMENSIONS: usize = 8;

/// `POST /v1/embeddings`
pub(crate) fn embeddings(call: &Call, body: &Value) -> Response<MockBody> {
    let input = body.get("input").unwrap_or(&Value::Null);
    let prompt = embedding_input_tokens(input);
    let usage = call.usage(prompt, 0);
    let count = match input {
        Value::Array(items) if items.iter().all(|i| !i.is_number()) => items.len(),
        _ => 1,
    };
    let dimensions = body
        .get("dimensions")
        .and_then(Value::as_u64)
        .map_or(EMBEDDING_DIMENSIONS, |d| d.clamp(1, 4096) as usize);
    let base64 = body.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let data: Vec<Value> = (0..count)
        .map(|index| {
            let vector: Vec<f32> = (0..dimensions)
                .map(|j| ((index * 31 + j * 7) % 100) as f32 / 100.0 - 0.5)
                .collect();
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
                json!(base64_encode(&bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let mut response = json!({"object": "list", "data": data, "model": call.model});
    if !call.no_usage {
        response["usage"] = json!({"prompt_tokens": usage.prompt, "total_tokens": usage.prompt});
    }
    call.json(Provider::OpenAi, &response)
}

/// Models `GET /v1/models` lists (OpenAI shape).
pub(crate) const MODELS: &[&str] = &[
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4.1",
    "gpt-4.1-mini",
    "o3-mini",
    "text-embedding-3-small",
];

/// `GET /v1/models`
pub(crate) fn models(call: &Call) -> Response<MockBody> {
    let data: Vec<Value> = MODELS
        .iter()
        .map(|id| json!({"id": id, "object": "model", "created": 1_700_000_000, "owned_by": "system"}))
        .collect();
    call.json(Provider::OpenAi, &json!({"object": "list", "data": data}))
}

/// Standard base64 with padding (the embeddings `encoding_format: "base64"`).
fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_known_vectors() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foo"), "Zm9v");
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
    }
}
