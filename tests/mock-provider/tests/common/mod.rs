//! A tiny HTTP client for the tests: one connection per request unless told
//! otherwise, full access to partial bodies and connection drops.

#![allow(dead_code)]

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use ironcage_mock_provider::{MockServer, Options};
use serde_json::Value;
use tokio::net::TcpStream;

pub const OPENAI_KEY: &str = "sk-test-openai-0123456789";
pub const ANTHROPIC_KEY: &str = "sk-ant-test-0123456789";

/// A mock that accepts only the two test keys and records requests.
pub async fn start() -> MockServer {
    MockServer::start(Options {
        openai_keys: vec![OPENAI_KEY.to_owned()],
        anthropic_keys: vec![ANTHROPIC_KEY.to_owned()],
        record: true,
    })
    .await
    .expect("start mock")
}

/// What came back.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    /// Every body byte received, even when the body was cut short.
    pub body: Vec<u8>,
    /// The body ended in an error (the server aborted the connection).
    pub aborted: bool,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The SSE events, in order.
    pub fn events(&self) -> Vec<Event> {
        parse_sse(&self.text())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub event: Option<String>,
    pub data: String,
}

impl Event {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).expect("event data is JSON")
    }
}

pub fn parse_sse(text: &str) -> Vec<Event> {
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            let mut event = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(name) = line.strip_prefix("event: ") {
                    event = Some(name.to_owned());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            Event { event, data }
        })
        .collect()
}

pub async fn connect(addr: SocketAddr) -> SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

/// Sends one request on `sender`. `Err` when the connection closed before any
/// response.
pub async fn send_on(
    sender: &mut SendRequest<Full<Bytes>>,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Result<Reply, hyper::Error> {
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "mock");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let bytes = body
        .map(|b| Bytes::from(serde_json::to_vec(b).expect("serialize")))
        .unwrap_or_default();
    if body.is_some() {
        builder = builder.header("content-type", "application/json");
    }
    let request = builder.body(Full::new(bytes)).expect("request");
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let mut incoming = response.into_body();
    let mut body = Vec::new();
    let mut aborted = false;
    while let Some(frame) = incoming.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    body.extend_from_slice(data);
                }
            }
            Err(_) => {
                aborted = true;
                break;
            }
        }
    }
    Ok(Reply {
        status,
        headers,
        body,
        aborted,
    })
}

/// One request on a fresh connection; `Err` when it closed before any response.
pub async fn try_send(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Result<Reply, hyper::Error> {
    let mut sender = connect(addr).await;
    send_on(&mut sender, method, path, headers, body).await
}

pub async fn send(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Reply {
    try_send(addr, method, path, headers, body)
        .await
        .expect("a response")
}

pub fn openai_auth() -> String {
    format!("Bearer {OPENAI_KEY}")
}

/// POST to an OpenAI path with the right key and extra headers.
pub async fn openai(addr: SocketAddr, path: &str, extra: &[(&str, &str)], body: &Value) -> Reply {
    let auth = openai_auth();
    let mut headers = vec![("authorization", auth.as_str())];
    headers.extend_from_slice(extra);
    send(addr, Method::POST, path, &headers, Some(body)).await
}

/// POST /v1/messages with the right key and extra headers.
pub async fn anthropic(addr: SocketAddr, extra: &[(&str, &str)], body: &Value) -> Reply {
    let mut headers = vec![
        ("x-api-key", ANTHROPIC_KEY),
        ("anthropic-version", "2023-06-01"),
    ];
    headers.extend_from_slice(extra);
    send(addr, Method::POST, "/v1/messages", &headers, Some(body)).await
}

/// `"w1 w2 ... wN"`
pub fn words(n: u64) -> String {
    (1..=n)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ")
}
