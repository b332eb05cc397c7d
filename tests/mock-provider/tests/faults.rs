//! Fault injection (headers and per-model), stats and recording, over real HTTP.

mod common;

use std::time::Duration;

use common::{anthropic, openai, send, start, try_send};
use http::Method;
use ironcage_mock_provider::{FaultSpec, MockServer, Options};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
}

fn chat_stream(model: &str) -> Value {
    let mut body = chat(model);
    body["stream"] = json!(true);
    body
}

#[tokio::test]
async fn injected_status_uses_each_providers_error_shape() {
    let mock = start().await;
    let reply = openai(
        mock.addr(),
        "/v1/chat/completions",
        &[("x-mock-status", "500")],
        &chat("gpt-4o"),
    )
    .await;
    assert_eq!(reply.status, 500);
    assert_eq!(reply.json()["error"]["type"], "server_error");
    assert!(reply.json()["error"]["message"].is_string());
    assert_eq!(reply.header("retry-after"), None);

    let reply = openai(
        mock.addr(),
        "/v1/chat/completions",
        &[("x-mock-status", "429"), ("x-mock-retry-after", "7")],
        &chat_stream("gpt-4o"),
    )
    .await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.header("retry-after"), Some("7"));
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.json()["error"]["code"], "rate_limit_exceeded");

    let body = json!({"model": "claude", "max_tokens": 3, "messages": []});
    let reply = anthropic(mock.addr(), &[("x-mock-status", "529")], &body).await;
    assert_eq!(reply.status, 529);
    assert_eq!(reply.json()["type"], "error");
    assert_eq!(reply.json()["error"]["type"], "overloaded_error");
    let reply = anthropic(mock.addr(), &[("x-mock-status", "429")], &body).await;
    assert_eq!(reply.json()["error"]["type"], "rate_limit_error");
    let reply = anthropic(mock.addr(), &[("x-mock-status", "500")], &body).await;
    assert_eq!(reply.json()["error"]["type"], "api_error");

    let reply = openai(
        mock.addr(),
        "/v1/chat/completions",
        &[("x-mock-status", "abc")],
        &chat("gpt-4o"),
    )
    .await;
    assert_eq!(reply.status, 400);
}

#[tokio::test]
async fn auth_is_checked_before_injected_status() {
    let mock = start().await;
    let reply = send(
        mock.addr(),
        Method::POST,
        "/v1/chat/completions",
        &[("authorization", "Bearer wrong"), ("x-mock-status", "500")],
        Some(&chat("m")),
    )
    .await;
    assert_eq!(reply.status, 401);
}

#[tokio::test]
async fn delay_holds_back_the_response_headers() {
    let mock = start().await;
    let started = Instant::now();
    let reply = openai(
        mock.addr(),
        "/v1/chat/completions",
        &[("x-mock-delay-ms", "150")],
        &chat("m"),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn chunk_delay_spaces_stream_events() {
    let mock = start().await;
    let started = Instant::now();
    let reply = openai(
        mock.addr(),
        "/v1/chat/completions",
        &[("x-mock-chunk-delay-ms", "40")],
        &chat_stream("m"),
    )
    .await;
    // role + 3 words + finish + [DONE] = 6 events, 5 gaps.
    assert_eq!(reply.events().len(), 6);
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn drop_after_n_aborts_a_stream_after_n_events() {
    let mock = start().await;
    let reply = openai(
        mock.addr(),
        "/v1/chat/completions",
        &[("x-mock-drop-after", "3")],
        &chat_stream("m"),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert!(reply.aborted, "the body ends in an error");
    let events = reply.events();
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(
        events
            .iter()
            .all(|e| e.json()["object"] == "chat.completion.chunk")
    );

    let body = json!({"model": "c", "max_tokens": 5, "stream": true, "messages": []});
    let reply = anthropic(mock.addr(), &[("x-mock-drop-after", "1")], &body).await;
    assert!(reply.aborted);
    let events = reply.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event.as_deref(), Some("message_start"));

    // A limit past the end lets the stream finish.
    let reply = openai(
        mock.addr(),
        "/v1/chat/completions",
        &[("x-mock-drop-after", "100")],
        &chat_stream("m"),
    )
    .await;
    assert!(!reply.aborted);
    assert_eq!(reply.events().len(), 6);
}

#[tokio::test]
async fn drop_after_zero_closes_without_a_response() {
    let mock = start().await;
    let auth = common::openai_auth();
    let result = try_send(
        mock.addr(),
        Method::POST,
        "/v1/chat/completions",
        &[("authorization", &auth), ("x-mock-drop-after", "0")],
        Some(&chat("m")),
    )
    .await;
    assert!(result.is_err(), "no response: {result:?}");

    // Byte-level: not a single byte comes back before the close.
    let mut stream = tokio::net::TcpStream::connect(mock.addr())
        .await
        .expect("connect");
    let body = chat("m").to_string();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: mock\r\nauthorization: {auth}\r\nx-mock-drop-after: 0\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write request");
    let mut received = Vec::new();
    let _ = stream.read_to_end(&mut received).await;
    assert!(
        received.is_empty(),
        "got {:?}",
        String::from_utf8_lossy(&received)
    );
}

#[tokio::test]
async fn drop_after_on_a_plain_response_truncates_the_body() {
    let mock = start().await;
    let reply = openai(
        mock.addr(),
        "/v1/chat/completions",
        &[("x-mock-drop-after", "1")],
        &chat("m"),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert!(reply.aborted);
    let declared: usize = reply
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .expect("content-length");
    assert!(reply.body.len() < declared);
}

async fn control(
    mock: &MockServer,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> common::Reply {
    send(mock.addr(), method, path, &[], body).await
}

#[tokio::test]
async fn per_model_fault_with_count_then_recovery() {
    let mock = start().await;
    let set = control(
        &mock,
        Method::POST,
        "/_mock/faults",
        Some(&json!({"model": "gpt-4o", "status": 500, "count": 2})),
    )
    .await;
    assert_eq!(set.status, 200);
    let listed = control(&mock, Method::GET, "/_mock/faults", None)
        .await
        .json();
    assert_eq!(listed[0]["model"], "gpt-4o");
    assert_eq!(listed[0]["count"], 2);

    let path = "/v1/chat/completions";
    assert_eq!(
        openai(mock.addr(), path, &[], &chat("gpt-4o-mini"))
            .await
            .status,
        200
    );
    let first = openai(mock.addr(), path, &[], &chat("gpt-4o")).await;
    assert_eq!(first.status, 500);
    assert_eq!(first.json()["error"]["type"], "server_error");
    assert_eq!(
        openai(mock.addr(), path, &[], &chat_stream("gpt-4o"))
            .await
            .status,
        500
    );
    assert_eq!(
        openai(mock.addr(), path, &[], &chat("gpt-4o")).await.status,
        200
    );
    let listed = control(&mock, Method::GET, "/_mock/faults", None)
        .await
        .json();
    assert_eq!(listed, json!([]));
}

#[tokio::test]
async fn per_model_fault_until_cleared_with_retry_after() {
    let mock = start().await;
    control(
        &mock,
        Method::POST,
        "/_mock/faults",
        Some(&json!({"model": "claude-x", "status": 429, "retry_after": 2})),
    )
    .await;
    let body = json!({"model": "claude-x", "max_tokens": 1, "messages": []});
    for _ in 0..3 {
        let reply = anthropic(mock.addr(), &[], &body).await;
        assert_eq!(reply.status, 429);
        assert_eq!(reply.header("retry-after"), Some("2"));
        assert_eq!(reply.json()["error"]["type"], "rate_limit_error");
    }
    let cleared = control(&mock, Method::DELETE, "/_mock/faults", None).await;
    assert_eq!(cleared.status, 200);
    assert_eq!(anthropic(mock.addr(), &[], &body).await.status, 200);
}

#[tokio::test]
async fn per_model_drop_fault_closes_the_connection() {
    let mock = start().await;
    mock.set_fault(FaultSpec {
        drop: true,
        count: Some(1),
        ..FaultSpec::new("gpt-4o", 500)
    });
    let auth = common::openai_auth();
    let headers = [("authorization", auth.as_str())];
    let result = try_send(
        mock.addr(),
        Method::POST,
        "/v1/chat/completions",
        &headers,
        Some(&chat("gpt-4o")),
    )
    .await;
    assert!(result.is_err());
    let reply = openai(mock.addr(), "/v1/chat/completions", &[], &chat("gpt-4o")).await;
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn bad_fault_requests_are_refused() {
    let mock = start().await;
    for body in [
        json!({"model": "m", "status": 200}),
        json!({"status": 500}),
        json!({"model": "m", "count": 0}),
    ] {
        let reply = control(&mock, Method::POST, "/_mock/faults", Some(&body)).await;
        assert_eq!(reply.status, 400, "{body}");
    }
    let reply = control(&mock, Method::GET, "/_mock/nothing", None).await;
    assert_eq!(reply.status, 404);
}

#[tokio::test]
async fn stats_count_every_request_and_reset_zeroes_them() {
    let mock = start().await;
    let path = "/v1/chat/completions";
    openai(mock.addr(), path, &[], &chat("gpt-4o")).await;
    openai(
        mock.addr(),
        path,
        &[("x-mock-status", "503")],
        &chat("gpt-4o"),
    )
    .await;
    send(mock.addr(), Method::POST, path, &[], Some(&chat("gpt-4o"))).await; // 401
    anthropic(
        mock.addr(),
        &[],
        &json!({"model": "claude", "max_tokens": 1, "messages": []}),
    )
    .await;
    let stats = control(&mock, Method::GET, "/_mock/stats", None)
        .await
        .json();
    assert_eq!(stats["total"], 4);
    assert_eq!(stats["by_model"], json!({"gpt-4o": 3, "claude": 1}));
    assert_eq!(
        stats["by_path"],
        json!({"/v1/chat/completions": 3, "/v1/messages": 1})
    );
    assert_eq!(mock.stats().total, 4);

    let reset = control(&mock, Method::POST, "/_mock/reset", None).await;
    assert_eq!(reset.status, 200);
    let stats = control(&mock, Method::GET, "/_mock/stats", None)
        .await
        .json();
    assert_eq!(stats, json!({"total": 0, "by_model": {}, "by_path": {}}));
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn recording_keeps_headers_and_bodies() {
    let mock = start().await;
    openai(
        mock.addr(),
        "/v1/chat/completions",
        &[("X-Custom-Tag", "team-a")],
        &chat("gpt-4o"),
    )
    .await;
    anthropic(
        mock.addr(),
        &[],
        &json!({"model": "claude", "max_tokens": 1, "messages": []}),
    )
    .await;
    let recorded = control(&mock, Method::GET, "/_mock/requests", None)
        .await
        .json();
    let list = recorded.as_array().expect("a list");
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["path"], "/v1/chat/completions");
    assert_eq!(list[0]["model"], "gpt-4o");
    assert_eq!(
        list[0]["headers"]["authorization"],
        common::openai_auth().as_str()
    );
    assert_eq!(list[0]["headers"]["x-custom-tag"], "team-a");
    assert_eq!(list[0]["body"], chat("gpt-4o"));
    assert_eq!(list[1]["headers"]["x-api-key"], common::ANTHROPIC_KEY);
    assert_eq!(mock.requests().len(), 2);

    let quiet = MockServer::start(Options::default()).await.expect("start");
    let reply = control(&quiet, Method::GET, "/_mock/requests", None).await;
    assert_eq!(reply.status, 404);
}

#[tokio::test]
async fn per_model_drop_after_zero_sends_headers_then_aborts() {
    let mock = start().await;
    mock.set_fault(FaultSpec {
        drop_after: Some(0),
        count: Some(1),
        ..FaultSpec::new("gpt-4o", 500)
    });
    let reply = openai(
        mock.addr(),
        "/v1/chat/completions",
        &[],
        &chat_stream("gpt-4o"),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert!(reply.aborted);
    assert!(reply.body.is_empty(), "{}", reply.text());
    let reply = openai(
        mock.addr(),
        "/v1/chat/completions",
        &[],
        &chat_stream("gpt-4o"),
    )
    .await;
    assert!(!reply.aborted);
    assert_eq!(reply.events().len(), 6);
}
