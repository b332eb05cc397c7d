//! The upstream HTTP client and header hygiene between agent and provider.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

pub type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The HTTP(S) connector every client shares (the system's CA roots, loaded
/// once).
pub type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// Loads the system's CA certificates and builds the connector.
pub fn connector() -> Result<Connector, std::io::Error> {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()?
        .https_or_http()
        .enable_http1()
        .wrap_connector(http))
}

/// A pooled client (keep-alive per host). Its connections are driven by tasks
/// of the runtime that opened them, so each gateway worker has its own.
pub fn client(connector: Connector) -> HttpsClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(512)
        .build(connector)
}

/// Headers never forwarded in either direction: hop-by-hop ones, those we
/// recompute, and the caller's credentials (replaced by the real key).
fn dropped(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
            | "authorization"
            | "x-api-key"
            | "accept-encoding"
    ) || name.as_str().starts_with("x-iron-cage-")
}

/// Request headers to send upstream: the agent's, minus the dropped ones.
/// `accept-encoding` is dropped so responses come back uncompressed and their
/// usage can be read without inflating them.
pub fn forward_request_headers(from: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(from.len());
    for (k, v) in from {
        if !dropped(k) {
            out.append(k.clone(), v.clone());
        }
    }
    out
}

/// Response headers to send back to the agent.
pub fn forward_response_headers(from: &HeaderMap, body_rewritten: bool) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(from.len() + 2);
    for (k, v) in from {
        if matches!(
            k.as_str(),
            "connection"
                | "keep-alive"
                | "transfer-encoding"
                | "te"
                | "trailer"
                | "upgrade"
                | "proxy-authenticate"
        ) || (body_rewritten && k == header::CONTENT_LENGTH)
        {
            continue;
        }
        out.append(k.clone(), v.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn credentials_and_hop_headers_never_forwarded() {
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            HeaderValue::from_static("Bearer ic-vk-123"),
        );
        h.insert("x-api-key", HeaderValue::from_static("ic-vk-123"));
        h.insert("connection", HeaderValue::from_static("keep-alive"));
        h.insert("x-iron-cage-tag", HeaderValue::from_static("t"));
        h.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
        h.insert("openai-organization", HeaderValue::from_static("org"));
        let f = forward_request_headers(&h);
        assert_eq!(f.len(), 2);
        assert!(f.contains_key("anthropic-version"));
        assert!(f.contains_key("openai-organization"));
    }
}
