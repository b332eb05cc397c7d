//! Anthropic: Messages (plain and streamed) and the model list, in the shapes the
//! official SDK parses.
//!
//! Usage mapping: `prompt` → `input_tokens` (which, by Anthropic's convention,
//! excludes cached tokens), `completion` → `output_tokens`, `cache_creation` →
//! `cache_creation_input_tokens`, `cache_read` → `cache_read_input_tokens`.

use http::Response;
use serde::Serialize;
use serde_json::{Value, json};

use crate::body::MockBody;
use crate::reply::{Call, Provider, sse_event};
use crate::summary::Summary;
use crate::usage::Usage;

#[derive(Serialize)]
struct AnthropicUsage {
    input_tokens: u64,
    cache_creation_input_tokens: u64,
    cache_read_input_tokens: u64,
    output_tokens: u64,
    service_tier: &'static str,
}

impl AnthropicUsage {
    fn new(usage: &Usage, output_tokens: u64) -> Self {
        Self {
            input_tokens: usage.prompt,
            cache_creation_input_tokens: usage.cache_creation,
            cache_read_input_tokens: usage.cache_read,
            output_tokens,
            service_tier: "standard",
        }
    }
}

#[derive(Serialize)]
struct TextBlock<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
}

#[derive(Serialize)]
struct Message<'a, C> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: C,
    stop_reason: Option<&'static str>,
    stop_sequence: Option<()>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<AnthropicUsage>,
}

#[derive(Serialize)]
struct MessageStart<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: Message<'a, [(); 0]>,
}

#[derive(Serialize)]
struct BlockStart<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    index: u32,
    content_block: TextBlock<'a>,
}

#[derive(Serialize)]
struct BlockDelta<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    index: u32,
    delta: TextBlock<'a>,
}

#[derive(Serialize)]
struct BlockStop {
    #[serde(rename = "type")]
    kind: &'static str,
    index: u32,
}

#[derive(Serialize)]
struct StopDelta {
    stop_reason: &'static str,
    stop_sequence: Option<()>,
}

#[derive(Serialize)]
struct OutputUsage {
    output_tokens: u64,
}

#[derive(Serialize)]
struct MessageDelta {
    #[serde(rename = "type")]
    kind: &'static str,
    delta: StopDelta,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<OutputUsage>,
}

#[derive(Serialize)]
struct MessageStop {
    #[serde(rename = "type")]
    kind: &'static str,
}

fn input_words(request: &Summary) -> u64 {
    request.message_words + request.system_words
}

/// The fixed signature of a mock `thinking` block.
const SIGNATURE: &str = "EqQBmock";

/// `POST /v1/messages`
pub(crate) fn messages(call: &Call, request: &Summary) -> Response<MockBody> {
    let usage = call.usage(input_words(request), request.output_tokens());
    let id = format!("msg_mock{:016x}", call.seq);
    if !request.stream {
        let text = call.text(usage.completion);
        let mut content = Vec::with_capacity(2);
        if let Some(t) = &call.thinking {
            content.push(json!({"type": "thinking", "thinking": t, "signature": SIGNATURE}));
        }
        content.push(json!({"type": "text", "text": text}));
        let message = Message {
            id: &id,
            kind: "message",
            role: "assistant",
            model: &call.model,
            content,
            stop_reason: Some("end_turn"),
            stop_sequence: None,
            usage: (!call.no_usage).then(|| AnthropicUsage::new(&usage, usage.completion)),
        };
        return call.json(Provider::Anthropic, &message);
    }

    let mut events = Vec::with_capacity(usage.completion as usize + 5);
    let start = MessageStart {
        kind: "message_start",
        message: Message {
            id: &id,
            kind: "message",
            role: "assistant",
            model: &call.model,
            content: [],
            stop_reason: None,
            stop_sequence: None,
            usage: (!call.no_usage).then(|| AnthropicUsage::new(&usage, 1)),
        },
    };
    events.push(sse_event("message_start", &start));
    let mut index = 0;
    if let Some(t) = &call.thinking {
        events.push(sse_event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "thinking", "thinking": ""}}),
        ));
        for piece in call.chunks(t) {
            events.push(sse_event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "thinking_delta", "thinking": piece}}),
            ));
        }
        events.push(sse_event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "signature_delta", "signature": SIGNATURE}}),
        ));
        events.push(sse_event(
            "content_block_stop",
            &BlockStop {
                kind: "content_block_stop",
                index: 0,
            },
        ));
        index = 1;
    }
    events.push(sse_event(
        "content_block_start",
        &BlockStart {
            kind: "content_block_start",
            index,
            content_block: TextBlock {
                kind: "text",
                text: "",
            },
        },
    ));
    for word in call.pieces(usage.completion) {
        events.push(sse_event(
            "content_block_delta",
            &BlockDelta {
                kind: "content_block_delta",
                index,
                delta: TextBlock {
                    kind: "text_delta",
                    text: &word,
                },
            },
        ));
    }
    events.push(sse_event(
        "content_block_stop",
        &BlockStop {
            kind: "content_block_stop",
            index,
        },
    ));
    events.push(sse_event(
        "message_delta",
        &MessageDelta {
            kind: "message_delta",
            delta: StopDelta {
                stop_reason: "end_turn",
                stop_sequence: None,
            },
            usage: (!call.no_usage).then_some(OutputUsage {
                output_tokens: usage.completion,
            }),
        },
    ));
    events.push(sse_event(
        "message_stop",
        &MessageStop {
            kind: "message_stop",
        },
    ));
    call.stream(Provider::Anthropic, events)
}

/// Models `GET /v1/models` lists when asked Anthropic-style.
pub(crate) const MODELS: &[(&str, &str)] = &[
    ("claude-sonnet-4-20250514", "Claude Sonnet 4"),
    ("claude-3-7-sonnet-20250219", "Claude Sonnet 3.7"),
    ("claude-3-5-haiku-20241022", "Claude Haiku 3.5"),
];

/// `GET /v1/models` with Anthropic auth.
pub(crate) fn models(call: &Call) -> Response<MockBody> {
    let data: Vec<Value> = MODELS
        .iter()
        .map(|(id, name)| {
            json!({"type": "model", "id": id, "display_name": name, "created_at": "2025-02-19T00:00:00Z"})
        })
        .collect();
    let first = MODELS.first().map(|(id, _)| *id);
    let last = MODELS.last().map(|(id, _)| *id);
    call.json(
        Provider::Anthropic,
        &json!({"data": data, "has_more": false, "first_id": first, "last_id": last}),
    )
}

/// `POST /v1/messages/count_tokens`
pub(crate) fn count_tokens(call: &Call, request: &Summary) -> Response<MockBody> {
    let usage = call.usage(input_words(request), 0);
    call.json(Provider::Anthropic, &json!({"input_tokens": usage.prompt}))
}
