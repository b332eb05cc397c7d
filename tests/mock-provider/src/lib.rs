//! A fast local stand-in for the OpenAI and Anthropic HTTP APIs.
//!
//! Iron Cage's gateway tests, the demo and the gateway-overhead benchmark point the
//! gateway at this server instead of a real provider. It answers Chat Completions,
//! Responses, Embeddings, Anthropic Messages and the model lists in shapes the
//! official SDKs parse, with usage that is deterministic (input tokens = words in
//! the request, output tokens = `min(max tokens, 12)`) or pinned by a header, and
//! with faults injected per request (`x-mock-*` headers) or per model
//! (`POST /_mock/faults`). The README-level description of the interface is in
//! the crate's `README.md`.
//!
//! - [`handler`]: one request start to finish, and the order faults apply in.
//! - [`openai`] / [`anthropic`]: the response shapes.
//! - [`usage`]: the counting rules and the `x-mock-usage` override; [`summary`]
//!   applies them while parsing, for the hot path.
//! - [`body`]: whole bodies and SSE streams flushed one event at a time.
//! - [`state`]: counters, per-model faults, the request recorder.
//! - [`control`]: the `/_mock/...` endpoints.
//!
//! Start it in process with [`MockServer::start`], or as the
//! `ironcage-mock-provider` binary.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

mod anthropic;
mod body;
mod control;
mod handler;
mod openai;
mod reply;
mod server;
mod state;
mod summary;
mod usage;

pub use state::{FaultSpec, RECORD_CAPACITY, RecordedRequest, Stats};
pub use usage::DEFAULT_OUTPUT_TOKENS;

/// How the mock behaves.
#[derive(Clone, Default)]
pub struct Options {
    /// Keys accepted in `Authorization: Bearer` on OpenAI paths. Empty: any
    /// non-empty key.
    pub openai_keys: Vec<String>,
    /// Keys accepted in `x-api-key` on Anthropic paths. Empty: any non-empty key.
    pub anthropic_keys: Vec<String>,
    /// Keep the last [`RECORD_CAPACITY`] requests for `GET /_mock/requests`.
    pub record: bool,
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |keys: &[String]| vec!["[REDACTED]"; keys.len()];
        f.debug_struct("Options")
            .field("openai_keys", &redacted(&self.openai_keys))
            .field("anthropic_keys", &redacted(&self.anthropic_keys))
            .field("record", &self.record)
            .finish()
    }
}

/// Serves on `listener` forever (until the task is dropped).
pub async fn serve(listener: TcpListener, opts: Options) -> io::Result<()> {
    serve_with_shutdown(listener, opts, std::future::pending()).await
}

/// Serves on `listener` until `shutdown` completes, then closes all connections.
pub async fn serve_with_shutdown(
    listener: TcpListener,
    opts: Options,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    server::run(listener, Arc::new(state::State::new(opts)), shutdown).await
}

/// A mock running in the current tokio runtime, for tests. Dropping it stops it.
pub struct MockServer {
    addr: SocketAddr,
    state: Arc<state::State>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl fmt::Debug for MockServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockServer")
            .field("addr", &self.addr)
            .field("opts", &self.state.opts)
            .finish_non_exhaustive()
    }
}

impl MockServer {
    /// Starts a mock on `127.0.0.1` and a free port.
    pub async fn start(opts: Options) -> io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        Self::start_on(listener, opts)
    }

    /// Starts a mock on a listener the caller bound. Needs a tokio runtime.
    pub fn start_on(listener: TcpListener, opts: Options) -> io::Result<Self> {
        let addr = listener.local_addr()?;
        let state = Arc::new(state::State::new(opts));
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server::run(listener, Arc::clone(&state), async move {
            // Either an explicit shutdown or the handle being dropped stops it.
            let _ = stopped.await;
        }));
        Ok(Self {
            addr,
            state,
            shutdown: Some(shutdown),
            task: Some(task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, the base URL to give a client (append `/v1`
    /// for SDKs that expect it in the base URL).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stats(&self) -> Stats {
        self.state.stats()
    }

    /// The recorded requests, oldest first (empty unless [`Options::record`]).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state
            .recorder
            .as_ref()
            .map(|r| r.list())
            .unwrap_or_default()
    }

    pub fn set_fault(&self, fault: FaultSpec) {
        self.state.faults.set(fault);
    }

    pub fn clear_faults(&self) {
        self.state.faults.clear();
    }

    /// Zeroes the stats and forgets recorded requests.
    pub fn reset(&self) {
        self.state.reset();
    }

    /// Stops accepting, closes every connection and waits for the server task.
    pub async fn shutdown(mut self) -> io::Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        match self.task.take() {
            Some(task) => task.await.map_err(io::Error::other)?,
            None => Ok(()),
        }
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
