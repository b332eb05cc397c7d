//! The one response body type: a whole JSON document, or a list of SSE events
//! written one per flush, with an optional pause between events and an optional
//! abort after some of them.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

/// The error a body returns to make hyper abort the connection mid-response.
#[derive(Debug)]
pub struct Aborted;

impl fmt::Display for Aborted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("mock provider aborted the response (x-mock-drop-after)")
    }
}

impl std::error::Error for Aborted {}

/// A response body. See the module docs.
pub struct MockBody {
    chunks: VecDeque<Bytes>,
    sent: usize,
    /// Abort the connection once this many chunks were sent.
    abort_after: Option<usize>,
    /// Pause between chunks.
    delay: Option<Duration>,
    sleep: Option<Pin<Box<Sleep>>>,
    /// Return `Pending` once after each chunk, which makes hyper flush it on its own.
    flush_each: bool,
    must_yield: bool,
    exact_len: Option<u64>,
}

impl fmt::Debug for MockBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockBody")
            .field("chunks_left", &self.chunks.len())
            .field("sent", &self.sent)
            .field("abort_after", &self.abort_after)
            .field("delay", &self.delay)
            .finish_non_exhaustive()
    }
}

impl MockBody {
    /// A complete body with a known length (hyper sends `Content-Length`).
    pub(crate) fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes: Bytes = bytes.into();
        let exact_len = Some(bytes.len() as u64);
        Self {
            chunks: VecDeque::from([bytes]),
            sent: 0,
            abort_after: None,
            delay: None,
            sleep: None,
            flush_each: false,
            must_yield: false,
            exact_len,
        }
    }

    /// SSE events, each written and flushed on its own.
    pub(crate) fn events(
        events: Vec<Bytes>,
        delay: Option<Duration>,
        abort_after: Option<usize>,
    ) -> Self {
        Self {
            chunks: events.into(),
            sent: 0,
            abort_after,
            delay,
            sleep: None,
            flush_each: true,
            // An abort before the first event still lets the headers out first.
            must_yield: abort_after == Some(0),
            exact_len: None,
        }
    }

    /// The first half of `bytes`, then an abort. The caller sets `Content-Length`
    /// to the full length so the client sees a truncated body.
    pub(crate) fn truncated(bytes: Bytes) -> Self {
        let half = bytes.slice(..bytes.len() / 2);
        Self {
            chunks: VecDeque::from([half]),
            sent: 0,
            abort_after: Some(1),
            delay: None,
            sleep: None,
            flush_each: true,
            must_yield: false,
            exact_len: None,
        }
    }

    fn abort_now(&self) -> bool {
        self.abort_after == Some(self.sent)
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = Aborted;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Aborted>>> {
        let this = self.get_mut();
        if this.must_yield {
            // hyper buffers frames that are ready at once; returning Pending here
            // makes it flush the previous event before asking for the next one.
            this.must_yield = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if let Some(sleep) = this.sleep.as_mut() {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.sleep = None;
        }
        if this.abort_now() {
            return Poll::Ready(Some(Err(Aborted)));
        }
        let Some(chunk) = this.chunks.pop_front() else {
            return Poll::Ready(None);
        };
        this.sent += 1;
        let more = !this.chunks.is_empty() || this.abort_now();
        if more {
            match this.delay {
                Some(delay) => this.sleep = Some(Box::pin(tokio::time::sleep(delay))),
                None => this.must_yield = this.flush_each,
            }
        }
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty() && !self.abort_now()
    }

    fn size_hint(&self) -> SizeHint {
        match self.exact_len {
            Some(len) if self.sent == 0 => SizeHint::with_exact(len),
            _ => SizeHint::default(),
        }
    }
}
