//! The API shapes and the usage rules, over real HTTP.

mod common;

use common::{anthropic, openai, send, start, words};
use http::Method;
use serde_json::{Value, json};

#[tokio::test]
async fn chat_counts_words_and_caps_output() {
    let mock = start().await;
    let body = json!({
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "You are  terse."},
            {"role": "user", "content": [
                {"type": "text", "text": "one two\nthree"},
                {"type": "image_url", "image_url": {"url": "data:x y"}}
            ]}
        ],
        "max_tokens": 5
    });
    let reply = openai(mock.addr(), "/v1/chat/completions", &[], &body).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert!(reply.header("x-request-id").is_some());
    let json = reply.json();
    assert_eq!(json["object"], "chat.completion");
    assert_eq!(json["model"], "gpt-4o");
    assert!(
        json["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("chatcmpl-"))
    );
    assert!(json["created"].as_u64().is_some());
    let choice = &json["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], words(5));
    assert_eq!(json["usage"]["prompt_tokens"], 6);
    assert_eq!(json["usage"]["completion_tokens"], 5);
    assert_eq!(json["usage"]["total_tokens"], 11);
    assert_eq!(json["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(
        json["usage"]["completion_tokens_details"]["reasoning_tokens"],
        0
    );
}

#[tokio::test]
async fn output_defaults_to_twelve_and_honours_every_max_field() {
    let mock = start().await;
    let msgs = json!([{"role": "user", "content": "hi"}]);
    let cases = [
        (json!({"model": "m", "messages": msgs}), 12),
        (
            json!({"model": "m", "messages": msgs, "max_tokens": 100}),
            12,
        ),
        (
            json!({"model": "m", "messages": msgs, "max_completion_tokens": 2}),
            2,
        ),
        (json!({"model": "m", "messages": msgs, "max_tokens": 0}), 0),
    ];
    for (body, expected) in cases {
        let json = openai(mock.addr(), "/v1/chat/completions", &[], &body)
            .await
            .json();
        assert_eq!(json["usage"]["completion_tokens"], expected, "{body}");
        assert_eq!(json["choices"][0]["message"]["content"], words(expected));
    }
}

#[tokio::test]
async fn usage_header_overrides_every_api() {
    let mock = start().await;
    let header = (
        "x-mock-usage",
        "prompt=100,completion=20,cached=30,reasoning=5,cache_creation=10,cache_read=40",
    );
    let chat = openai(
        mock.addr(),
        "/v1/chat/completions",
        &[header],
        &json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 3}),
    )
    .await
    .json();
    let usage = &chat["usage"];
    assert_eq!(usage["prompt_tokens"], 100);
    assert_eq!(usage["completion_tokens"], 20);
    assert_eq!(usage["total_tokens"], 120);
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 30);
    assert_eq!(usage["completion_tokens_details"]["reasoning_tokens"], 5);
    assert_eq!(chat["choices"][0]["message"]["content"], words(20));

    let responses = openai(
        mock.addr(),
        "/v1/responses",
        &[header],
        &json!({"model": "m", "input": "x"}),
    )
    .await
    .json();
    let usage = &responses["usage"];
    assert_eq!(usage["input_tokens"], 100);
    assert_eq!(usage["input_tokens_details"]["cached_tokens"], 30);
    assert_eq!(usage["output_tokens"], 20);
    assert_eq!(usage["output_tokens_details"]["reasoning_tokens"], 5);
    assert_eq!(usage["total_tokens"], 120);

    let message = anthropic(
        mock.addr(),
        &[header],
        &json!({"model": "claude", "max_tokens": 4, "messages": [{"role": "user", "content": "x"}]}),
    )
    .await
    .json();
    let usage = &message["usage"];
    assert_eq!(usage["input_tokens"], 100);
    assert_eq!(usage["output_tokens"], 20);
    assert_eq!(usage["cache_creation_input_tokens"], 10);
    assert_eq!(usage["cache_read_input_tokens"], 40);
    assert_eq!(message["content"][0]["text"], words(20));

    let partial = openai(
        mock.addr(),
        "/v1/chat/completions",
        &[("x-mock-usage", "cached=2")],
        &json!({"model": "m", "messages": [{"role": "user", "content": "a b c"}]}),
    )
    .await
    .json();
    assert_eq!(partial["usage"]["prompt_tokens"], 3);
    assert_eq!(partial["usage"]["completion_tokens"], 12);
    assert_eq!(
        partial["usage"]["prompt_tokens_details"]["cached_tokens"],
        2
    );

    let bad = openai(
        mock.addr(),
        "/v1/chat/completions",
        &[("x-mock-usage", "prompt=lots")],
        &json!({"model": "m", "messages": []}),
    )
    .await;
    assert_eq!(bad.status, 400);
}

fn chunk_content(event: &Value) -> Option<&str> {
    event["choices"][0]["delta"]["content"].as_str()
}

#[tokio::test]
async fn chat_stream_without_include_usage() {
    let mock = start().await;
    let body = json!({"model": "gpt-4o", "stream": true, "max_tokens": 3,
        "messages": [{"role": "user", "content": "a b"}]});
    let reply = openai(mock.addr(), "/v1/chat/completions", &[], &body).await;
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .header("content-type")
            .is_some_and(|c| c.starts_with("text/event-stream"))
    );
    let events = reply.events();
    // role, 3 words, finish, [DONE]
    assert_eq!(events.len(), 6, "{events:?}");
    assert_eq!(events[5].data, "[DONE]");
    let chunks: Vec<Value> = events[..5].iter().map(|e| e.json()).collect();
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["model"], "gpt-4o");
        assert_eq!(chunk["id"], chunks[0]["id"]);
        assert!(chunk.get("usage").is_none(), "no usage key: {chunk}");
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks[1..4].iter().filter_map(chunk_content).collect();
    assert_eq!(text, words(3));
    assert_eq!(chunks[4]["choices"][0]["finish_reason"], "stop");
    assert!(
        chunks[..4]
            .iter()
            .all(|c| c["choices"][0]["finish_reason"].is_null())
    );
}

#[tokio::test]
async fn chat_stream_with_include_usage() {
    let mock = start().await;
    let body = json!({"model": "gpt-4o", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "a b c d"}]});
    let events = openai(mock.addr(), "/v1/chat/completions", &[], &body)
        .await
        .events();
    // role, 12 words, finish, usage, [DONE]
    assert_eq!(events.len(), 16);
    assert_eq!(events[15].data, "[DONE]");
    let chunks: Vec<Value> = events[..15].iter().map(|e| e.json()).collect();
    for chunk in &chunks[..14] {
        assert!(
            chunk["usage"].is_null() && chunk.get("usage").is_some(),
            "{chunk}"
        );
    }
    let text: String = chunks.iter().filter_map(chunk_content).collect();
    assert_eq!(text, words(12));
    let last = &chunks[14];
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["prompt_tokens"], 4);
    assert_eq!(last["usage"]["completion_tokens"], 12);

    // x-mock-no-usage removes the usage chunk even when it was asked for.
    let events = openai(
        mock.addr(),
        "/v1/chat/completions",
        &[("x-mock-no-usage", "1")],
        &body,
    )
    .await
    .events();
    assert_eq!(events.len(), 15);
    assert!(events.iter().all(|e| !e.data.contains("\"usage\"")));
}

#[tokio::test]
async fn responses_plain_and_streamed() {
    let mock = start().await;
    let body = json!({"model": "gpt-4.1", "instructions": "be kind",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "one two three"}]}],
        "max_output_tokens": 4});
    let json = openai(mock.addr(), "/v1/responses", &[], &body)
        .await
        .json();
    assert_eq!(json["object"], "response");
    assert_eq!(json["status"], "completed");
    assert_eq!(json["model"], "gpt-4.1");
    assert_eq!(json["instructions"], "be kind");
    assert_eq!(json["output"][0]["type"], "message");
    assert_eq!(json["output"][0]["content"][0]["type"], "output_text");
    assert_eq!(json["output"][0]["content"][0]["text"], words(4));
    assert_eq!(json["usage"]["input_tokens"], 5);
    assert_eq!(json["usage"]["output_tokens"], 4);

    let mut stream_body = body.clone();
    stream_body["stream"] = json!(true);
    let events = openai(mock.addr(), "/v1/responses", &[], &stream_body)
        .await
        .events();
    let names: Vec<&str> = events.iter().filter_map(|e| e.event.as_deref()).collect();
    let mut expected = vec![
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ];
    expected.extend(["response.output_text.delta"; 4]);
    expected.extend([
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]);
    assert_eq!(names, expected);
    for (i, event) in events.iter().enumerate() {
        let json = event.json();
        assert_eq!(json["type"], expected[i]);
        assert_eq!(json["sequence_number"], i);
    }
    let text: String = events[4..8]
        .iter()
        .map(|e| e.json()["delta"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(text, words(4));
    assert_eq!(events[8].json()["text"], words(4));
    let completed = events[11].json();
    assert_eq!(completed["response"]["status"], "completed");
    assert_eq!(completed["response"]["usage"]["input_tokens"], 5);
    assert_eq!(completed["response"]["usage"]["output_tokens"], 4);
    assert!(events[0].json()["response"]["usage"].is_null());
}

#[tokio::test]
async fn anthropic_plain_and_streamed() {
    let mock = start().await;
    let body = json!({"model": "claude-sonnet-4-20250514", "max_tokens": 3,
        "system": [{"type": "text", "text": "be brief"}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello there you"}]}]});
    let reply = anthropic(mock.addr(), &[], &body).await;
    assert_eq!(reply.status, 200);
    assert!(reply.header("request-id").is_some());
    let json = reply.json();
    assert_eq!(json["type"], "message");
    assert_eq!(json["role"], "assistant");
    assert_eq!(json["model"], "claude-sonnet-4-20250514");
    assert!(json["id"].as_str().is_some_and(|id| id.starts_with("msg_")));
    assert_eq!(json["content"], json!([{"type": "text", "text": words(3)}]));
    assert_eq!(json["stop_reason"], "end_turn");
    assert!(json["stop_sequence"].is_null());
    assert_eq!(json["usage"]["input_tokens"], 5);
    assert_eq!(json["usage"]["output_tokens"], 3);
    assert_eq!(json["usage"]["cache_creation_input_tokens"], 0);
    assert_eq!(json["usage"]["cache_read_input_tokens"], 0);

    let mut stream_body = body.clone();
    stream_body["stream"] = json!(true);
    let events = anthropic(
        mock.addr(),
        &[("x-mock-usage", "cache_read=7")],
        &stream_body,
    )
    .await
    .events();
    let names: Vec<&str> = events.iter().filter_map(|e| e.event.as_deref()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    for event in &events {
        assert_eq!(
            event.json()["type"],
            event.event.as_deref().unwrap_or_default()
        );
    }
    let start = events[0].json();
    assert_eq!(start["message"]["usage"]["input_tokens"], 5);
    assert_eq!(start["message"]["usage"]["output_tokens"], 1);
    assert_eq!(start["message"]["usage"]["cache_read_input_tokens"], 7);
    assert_eq!(start["message"]["usage"]["cache_creation_input_tokens"], 0);
    let text: String = events[2..5]
        .iter()
        .map(|e| {
            let json = e.json();
            assert_eq!(json["delta"]["type"], "text_delta");
            json["delta"]["text"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(text, words(3));
    let delta = events[6].json();
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["usage"]["output_tokens"], 3);
}

#[tokio::test]
async fn anthropic_thinking_header_adds_a_thinking_block() {
    let mock = start().await;
    let body = json!({"model": "claude-sonnet-4-20250514", "max_tokens": 2,
        "messages": [{"role": "user", "content": "hi"}]});
    let headers = [
        ("x-mock-thinking", "Let me think."),
        ("x-mock-reply-chunk", "4"),
    ];
    let json = anthropic(mock.addr(), &headers, &body).await.json();
    assert_eq!(
        json["content"],
        json!([{"type": "thinking", "thinking": "Let me think.", "signature": "EqQBmock"},
               {"type": "text", "text": words(2)}])
    );

    let mut stream_body = body.clone();
    stream_body["stream"] = json!(true);
    let events = anthropic(mock.addr(), &headers, &stream_body)
        .await
        .events();
    let blocks: Vec<(String, u64, String)> = events
        .iter()
        .map(|e| e.json())
        .filter(|j| j["type"] == "content_block_delta")
        .map(|j| {
            let d = &j["delta"];
            let ty = d["type"].as_str().unwrap_or_default().to_owned();
            let field = match ty.as_str() {
                "thinking_delta" => "thinking",
                "signature_delta" => "signature",
                _ => "text",
            };
            let v = d[field].as_str().unwrap_or_default().to_owned();
            (ty, j["index"].as_u64().unwrap_or(99), v)
        })
        .collect();
    let thinking: String = blocks
        .iter()
        .filter(|b| b.0 == "thinking_delta")
        .map(|b| {
            assert_eq!(b.1, 0);
            assert!(b.2.len() <= 4, "{b:?}");
            b.2.as_str()
        })
        .collect();
    assert_eq!(thinking, "Let me think.");
    assert!(blocks.contains(&("signature_delta".into(), 0, "EqQBmock".into())));
    let text: String = blocks
        .iter()
        .filter(|b| b.0 == "text_delta")
        .map(|b| {
            assert_eq!(b.1, 1);
            b.2.as_str()
        })
        .collect();
    assert_eq!(text, words(2));
    let starts: Vec<Value> = events
        .iter()
        .map(|e| e.json())
        .filter(|j| j["type"] == "content_block_start")
        .map(|j| j["content_block"]["type"].clone())
        .collect();
    assert_eq!(starts, [json!("thinking"), json!("text")]);
}

#[tokio::test]
async fn no_usage_header_removes_usage_everywhere() {
    let mock = start().await;
    let no_usage = [("x-mock-no-usage", "1")];
    let chat = openai(
        mock.addr(),
        "/v1/chat/completions",
        &no_usage,
        &json!({"model": "m", "messages": []}),
    )
    .await
    .json();
    assert!(chat.get("usage").is_none());
    let responses = openai(
        mock.addr(),
        "/v1/responses",
        &no_usage,
        &json!({"model": "m", "input": "x"}),
    )
    .await
    .json();
    assert!(responses["usage"].is_null());
    let body = json!({"model": "c", "max_tokens": 2, "stream": true, "messages": []});
    let events = anthropic(mock.addr(), &no_usage, &body).await.events();
    assert_eq!(events.len(), 7);
    assert!(events.iter().all(|e| !e.data.contains("usage")));
}

#[tokio::test]
async fn embeddings_float_and_base64() {
    let mock = start().await;
    let json = openai(
        mock.addr(),
        "/v1/embeddings",
        &[],
        &json!({"model": "text-embedding-3-small", "input": ["a b", "c d e"], "dimensions": 4}),
    )
    .await
    .json();
    assert_eq!(json["object"], "list");
    assert_eq!(json["model"], "text-embedding-3-small");
    assert_eq!(json["data"].as_array().map(Vec::len), Some(2));
    assert_eq!(json["data"][1]["index"], 1);
    assert_eq!(json["data"][1]["object"], "embedding");
    assert_eq!(
        json["data"][0]["embedding"].as_array().map(Vec::len),
        Some(4)
    );
    assert_eq!(
        json["usage"],
        json!({"prompt_tokens": 5, "total_tokens": 5})
    );

    let json = openai(
        mock.addr(),
        "/v1/embeddings",
        &[],
        &json!({"model": "e", "input": "x", "encoding_format": "base64"}),
    )
    .await
    .json();
    // 8 floats = 32 bytes = 44 base64 characters with padding.
    assert_eq!(
        json["data"][0]["embedding"].as_str().map(str::len),
        Some(44)
    );
}

#[tokio::test]
async fn model_lists_in_both_shapes() {
    let mock = start().await;
    let auth = common::openai_auth();
    let list = send(
        mock.addr(),
        Method::GET,
        "/v1/models",
        &[("authorization", &auth)],
        None,
    )
    .await
    .json();
    assert_eq!(list["object"], "list");
    assert!(list["data"].as_array().is_some_and(|d| {
        d.iter()
            .any(|m| m["id"] == "gpt-4o" && m["object"] == "model")
    }));
    let list = send(
        mock.addr(),
        Method::GET,
        "/v1/models",
        &[
            ("x-api-key", common::ANTHROPIC_KEY),
            ("anthropic-version", "2023-06-01"),
        ],
        None,
    )
    .await
    .json();
    assert_eq!(list["has_more"], false);
    assert_eq!(list["data"][0]["type"], "model");
}

#[tokio::test]
async fn count_tokens_counts_words() {
    let mock = start().await;
    let reply = send(
        mock.addr(),
        Method::POST,
        "/v1/messages/count_tokens",
        &[("x-api-key", common::ANTHROPIC_KEY)],
        Some(&json!({"model": "c", "system": "s t", "messages": [{"role": "user", "content": "a b c"}]})),
    )
    .await;
    assert_eq!(reply.json(), json!({"input_tokens": 5}));
}

#[tokio::test]
async fn bad_requests_get_provider_errors() {
    let mock = start().await;
    let auth = common::openai_auth();
    let headers = [("authorization", auth.as_str())];
    let not_json = send(
        mock.addr(),
        Method::POST,
        "/v1/chat/completions",
        &headers,
        None,
    )
    .await;
    assert_eq!(not_json.status, 400);
    assert_eq!(not_json.json()["error"]["type"], "invalid_request_error");
    let no_model = openai(
        mock.addr(),
        "/v1/chat/completions",
        &[],
        &json!({"messages": []}),
    )
    .await;
    assert_eq!(no_model.status, 400);
    let unknown = openai(mock.addr(), "/v1/nope", &[], &json!({})).await;
    assert_eq!(unknown.status, 404);
    assert!(unknown.json()["error"]["message"].is_string());
    let wrong_method = send(
        mock.addr(),
        Method::GET,
        "/v1/chat/completions",
        &headers,
        None,
    )
    .await;
    assert_eq!(wrong_method.status, 404);
    let anthropic_no_model = anthropic(mock.addr(), &[], &json!({"messages": []})).await;
    assert_eq!(anthropic_no_model.status, 400);
    assert_eq!(anthropic_no_model.json()["type"], "error");
    assert_eq!(
        anthropic_no_model.json()["error"]["type"],
        "invalid_request_error"
    );
}

#[tokio::test]
async fn auth_is_checked_per_provider() {
    let mock = start().await;
    let chat = json!({"model": "m", "messages": []});
    let wrong = send(
        mock.addr(),
        Method::POST,
        "/v1/chat/completions",
        &[("authorization", "Bearer sk-wrong-key-123456")],
        Some(&chat),
    )
    .await;
    assert_eq!(wrong.status, 401);
    let error = &wrong.json()["error"];
    assert_eq!(error["code"], "invalid_api_key");
    assert_eq!(error["type"], "invalid_request_error");
    assert!(
        !error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("sk-wrong-key-123456"),
        "the key is masked"
    );
    let missing = send(
        mock.addr(),
        Method::POST,
        "/v1/chat/completions",
        &[],
        Some(&chat),
    )
    .await;
    assert_eq!(missing.status, 401);
    // The Anthropic key is not an OpenAI key.
    let crossed = send(
        mock.addr(),
        Method::POST,
        "/v1/chat/completions",
        &[(
            "authorization",
            &format!("Bearer {}", common::ANTHROPIC_KEY),
        )],
        Some(&chat),
    )
    .await;
    assert_eq!(crossed.status, 401);

    let message = json!({"model": "c", "max_tokens": 1, "messages": []});
    let wrong = send(
        mock.addr(),
        Method::POST,
        "/v1/messages",
        &[("x-api-key", "nope")],
        Some(&message),
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.json()["type"], "error");
    assert_eq!(wrong.json()["error"]["type"], "authentication_error");
    let missing = send(
        mock.addr(),
        Method::POST,
        "/v1/messages",
        &[],
        Some(&message),
    )
    .await;
    assert_eq!(missing.status, 401);
    // Recent Anthropic SDKs send the API key as a bearer token.
    let bearer = send(
        mock.addr(),
        Method::POST,
        "/v1/messages",
        &[(
            "authorization",
            &format!("Bearer {}", common::ANTHROPIC_KEY),
        )],
        Some(&message),
    )
    .await;
    assert_eq!(bearer.status, 200);
}

#[tokio::test]
async fn without_configured_keys_any_non_empty_key_works() {
    let mock = ironcage_mock_provider::MockServer::start(Default::default())
        .await
        .expect("start");
    let chat = json!({"model": "m", "messages": []});
    let ok = send(
        mock.addr(),
        Method::POST,
        "/v1/chat/completions",
        &[("authorization", "Bearer anything")],
        Some(&chat),
    )
    .await;
    assert_eq!(ok.status, 200);
    let ok = send(
        mock.addr(),
        Method::POST,
        "/v1/messages",
        &[("x-api-key", "anything")],
        Some(&chat),
    )
    .await;
    assert_eq!(ok.status, 200);
    let empty = send(
        mock.addr(),
        Method::POST,
        "/v1/chat/completions",
        &[("authorization", "Bearer ")],
        Some(&chat),
    )
    .await;
    assert_eq!(empty.status, 401);
}

#[tokio::test]
async fn keep_alive_serves_many_requests_on_one_connection() {
    let mock = start().await;
    let mut sender = common::connect(mock.addr()).await;
    let auth = common::openai_auth();
    for _ in 0..20 {
        let reply = common::send_on(
            &mut sender,
            Method::POST,
            "/v1/chat/completions",
            &[("authorization", &auth)],
            Some(&json!({"model": "m", "messages": []})),
        )
        .await
        .expect("response");
        assert_eq!(reply.status, 200);
    }
    assert_eq!(mock.stats().total, 20);
}
