//! An incremental Server-Sent Events parser for the gateway's streaming
//! pass-through.
//!
//! The gateway forwards a provider's stream to the agent as it arrives, but must
//! look at each event (usage, output text, PII) and sometimes drop one (the usage
//! chunk it injected). So the parser cuts the byte stream into events **without
//! changing a byte**: each [`SseEvent`] carries its raw bytes exactly as received,
//! terminating blank line included, and the raw bytes of all events (plus the
//! unterminated tail from [`SseParser::finish`]) concatenate back to the input.
//! Every segment is an event, including comment-only keep-alives (`: ping`) and
//! stray blank lines, so forwarding them all reproduces the stream exactly.
//!
//! Parsing follows the WHATWG rules: lines end with `\n`, `\r\n` or `\r`; a blank
//! line ends an event; `:` starts a comment; one space after the colon is dropped;
//! `data` lines are joined with `\n`. A `\r` at the very end of the buffered bytes
//! is held until the next byte shows whether it is a `\r\n`, so an event split
//! anywhere (even between `\r` and `\n`) parses the same as one that is not.
//!
//! Memory is bounded: an event that grows past `max_event_bytes` (default
//! [`DEFAULT_MAX_EVENT_BYTES`]) without ending is an error, and the parser stays
//! failed.

use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;

/// 4 MiB: far above any real provider event, low enough to bound a bad stream.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

/// Why a stream could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("an event in the provider's stream exceeds {limit} bytes without ending")]
    EventTooLarge { limit: usize },
}

/// One event: its raw bytes and its parsed fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    raw: Bytes,
    event: Option<String>,
    data: String,
    has_data: bool,
    id: Option<String>,
    retry: Option<u64>,
    terminated: bool,
}

impl SseEvent {
    /// Parses one complete event from its raw bytes (ending with a blank line, or
    /// not, for the tail of a stream). Mostly for tests and for events the gateway
    /// builds itself.
    pub fn parse(raw: impl Into<Bytes>) -> SseEvent {
        parse_fields(raw.into(), false)
    }

    /// The bytes exactly as received, terminating blank line included.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    pub fn into_raw(self) -> Bytes {
        self.raw
    }

    /// The `event:` field; `None` means the default type, `message`.
    pub fn event(&self) -> Option<&str> {
        self.event.as_deref()
    }

    /// The `data:` lines joined with `\n` (empty when there were none). Invalid
    /// UTF-8 is replaced with U+FFFD here; [`SseEvent::raw`] keeps the original.
    pub fn data(&self) -> &str {
        &self.data
    }

    /// Whether the event had at least one `data` line (a browser dispatches only
    /// those). Comment-only keep-alives and stray blank lines do not.
    pub fn has_data(&self) -> bool {
        self.has_data
    }

    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    pub fn retry(&self) -> Option<u64> {
        self.retry
    }

    /// False only for the unterminated tail returned by [`SseParser::finish`].
    pub fn is_terminated(&self) -> bool {
        self.terminated
    }
}

/// Incremental parser: [`feed`](SseParser::feed) chunks as they arrive, take the
/// complete events with [`next_event`](SseParser::next_event), and call
/// [`finish`](SseParser::finish) at the end of the stream.
#[derive(Debug)]
pub struct SseParser {
    /// Bytes of the event in progress (complete events are split off at once).
    buf: BytesMut,
    /// Start of the current, unfinished line in `buf`.
    line_start: usize,
    /// Where to resume looking for the end of the current line.
    search_from: usize,
    ready: VecDeque<SseEvent>,
    max_event_bytes: usize,
    at_stream_start: bool,
    failed: Option<SseError>,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new()
    }
}

impl SseParser {
    pub fn new() -> SseParser {
        SseParser::with_max_event_bytes(DEFAULT_MAX_EVENT_BYTES)
    }

    pub fn with_max_event_bytes(max_event_bytes: usize) -> SseParser {
        SseParser {
            buf: BytesMut::new(),
            line_start: 0,
            search_from: 0,
            ready: VecDeque::new(),
            max_event_bytes,
            at_stream_start: true,
            failed: None,
        }
    }

    /// Adds bytes from the stream and cuts out every event they complete. Fails
    /// when the event in progress grows past the limit; after that the parser is
    /// dead and every call fails the same way (events completed before the failure
    /// can still be taken).
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), SseError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        self.buf.extend_from_slice(chunk);
        self.scan(false);
        if self.buf.len() > self.max_event_bytes {
            let e = SseError::EventTooLarge {
                limit: self.max_event_bytes,
            };
            self.failed = Some(e.clone());
            self.buf = BytesMut::new();
            return Err(e);
        }
        Ok(())
    }

    /// The next complete event, in stream order.
    pub fn next_event(&mut self) -> Option<SseEvent> {
        self.ready.pop_front()
    }

    /// Takes every complete event.
    pub fn drain(&mut self) -> impl Iterator<Item = SseEvent> + '_ {
        self.ready.drain(..)
    }

    /// Bytes held for the event in progress.
    pub fn buffered_len(&self) -> usize {
        self.buf.len()
    }

    /// End of stream: a held `\r` counts as a line end, and whatever remains (an
    /// event the provider never terminated) is returned as a last event with
    /// [`SseEvent::is_terminated`] false. Complete events not yet taken stay
    /// available through [`next_event`](SseParser::next_event).
    pub fn finish(&mut self) -> Option<SseEvent> {
        if self.failed.is_some() {
            return None;
        }
        self.scan(true);
        if self.buf.is_empty() {
            return None;
        }
        let raw = self.buf.split().freeze();
        self.line_start = 0;
        self.search_from = 0;
        let strip_bom = std::mem::replace(&mut self.at_stream_start, false);
        Some(parse_fields(raw, strip_bom))
    }

    fn scan(&mut self, at_eof: bool) {
        loop {
            let Some(rel) = self.buf[self.search_from..]
                .iter()
                .position(|&b| b == b'\n' || b == b'\r')
            else {
                self.search_from = self.buf.len();
                return;
            };
            let i = self.search_from + rel;
            let eol_len = if self.buf[i] == b'\n' {
                1
            } else if i + 1 < self.buf.len() {
                if self.buf[i + 1] == b'\n' { 2 } else { 1 }
            } else if at_eof {
                1
            } else {
                // A trailing '\r': wait for the next byte, it may be '\n'.
                self.search_from = i;
                return;
            };
            let line_end = i + eol_len;
            if i == self.line_start {
                // A blank line: the event ends here.
                let raw = self.buf.split_to(line_end).freeze();
                let strip_bom = std::mem::replace(&mut self.at_stream_start, false);
                self.ready.push_back(parse_fields(raw, strip_bom));
                self.line_start = 0;
                self.search_from = 0;
            } else {
                self.line_start = line_end;
                self.search_from = line_end;
            }
        }
    }
}

/// Splits raw event bytes into lines and applies the field rules. The event is
/// terminated when its last line is blank and ended by a line break.
fn parse_fields(raw: Bytes, strip_bom: bool) -> SseEvent {
    let mut event = None;
    let mut data: Vec<u8> = Vec::new();
    let mut has_data = false;
    let mut id = None;
    let mut retry = None;
    let mut terminated = false;

    let mut rest: &[u8] = &raw;
    if strip_bom {
        rest = rest.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(rest);
    }
    while !rest.is_empty() {
        let (line, next, had_eol) = match rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            Some(i) => {
                let len = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                (&rest[..i], &rest[i + len..], true)
            }
            None => (rest, &b""[..], false),
        };
        rest = next;
        terminated = line.is_empty() && had_eol;
        if line.is_empty() || line[0] == b':' {
            continue; // blank line or comment
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(c) => {
                let v = &line[c + 1..];
                (&line[..c], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match name {
            b"event" => event = Some(lossy(value)),
            b"data" => {
                if has_data {
                    data.push(b'\n');
                }
                data.extend_from_slice(value);
                has_data = true;
            }
            b"id" if !value.contains(&0) => id = Some(lossy(value)),
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                retry = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok());
            }
            _ => {}
        }
    }
    let data = match String::from_utf8(data) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    };
    SseEvent {
        raw,
        event,
        data,
        has_data,
        id,
        retry,
        terminated,
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Feeds `chunks`, then finishes; returns every event.
    fn parse_chunks(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c).unwrap();
            out.extend(p.drain());
        }
        out.extend(p.finish());
        out.extend(p.drain());
        out
    }

    fn parse_all(stream: &[u8]) -> Vec<SseEvent> {
        parse_chunks(&[stream])
    }

    /// An OpenAI-style chat stream, with a comment, a named event, CRLF and CR
    /// line ends, a multi-line data field, a BOM and a retry, ending unterminated.
    const RECORDED: &[u8] = b"\xEF\xBB\xBF: keep-alive\n\n\
data: {\"id\":\"c1\",\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n\
data: {\"id\":\"c1\",\"choices\":[{\"delta\":{\"content\":\"lo \\u00e9t\xC3\xA9\"}}]}\r\n\r\n\
event: message_delta\r\ndata: {\"usage\":{\"output_tokens\":7}}\r\n\r\n\
data: line one\rdata: line two\r\r\
id: 42\nretry: 3000\ndata:no-space\ndata:  two-spaces\n\n\
\n\
event: ping\n: comment inside\ndata\n\n\
data: [DONE]\n\n\
data: trailing without end";

    #[test]
    fn parses_a_recorded_stream() {
        let events = parse_all(RECORDED);
        let summary: Vec<(Option<&str>, &str, bool)> = events
            .iter()
            .map(|e| (e.event(), e.data(), e.has_data()))
            .collect();
        assert_eq!(
            summary,
            vec![
                (None, "", false),
                (
                    None,
                    r#"{"id":"c1","choices":[{"delta":{"content":"Hel"}}]}"#,
                    true
                ),
                (
                    None,
                    "{\"id\":\"c1\",\"choices\":[{\"delta\":{\"content\":\"lo \\u00e9t\u{e9}\"}}]}",
                    true
                ),
                (
                    Some("message_delta"),
                    r#"{"usage":{"output_tokens":7}}"#,
                    true
                ),
                (None, "line one\nline two", true),
                (None, "no-space\n two-spaces", true),
                (None, "", false),
                (Some("ping"), "", true),
                (None, "[DONE]", true),
                (None, "trailing without end", true),
            ]
        );
        assert_eq!(events[5].id(), Some("42"));
        assert_eq!(events[5].retry(), Some(3000));
        assert!(events[..9].iter().all(SseEvent::is_terminated));
        assert!(!events[9].is_terminated());
        // Byte-exact: the raw parts rebuild the stream.
        let rebuilt: Vec<u8> = events.iter().flat_map(|e| e.raw().to_vec()).collect();
        assert_eq!(rebuilt, RECORDED);
        let second = events[1].raw();
        assert!(second.starts_with(b"data: {") && second.ends_with(b"}\n\n"));
        assert_eq!(&RECORDED[17..17 + second.len()], second.as_ref());
    }

    #[test]
    fn splitting_at_every_offset_gives_identical_events() {
        let whole = parse_all(RECORDED);
        for cut in 0..=RECORDED.len() {
            let (a, b) = RECORDED.split_at(cut);
            assert_eq!(parse_chunks(&[a, b]), whole, "split at {cut}");
        }
        for first in (0..=RECORDED.len()).step_by(7) {
            for second in first..=RECORDED.len() {
                let chunks = [
                    &RECORDED[..first],
                    &RECORDED[first..second],
                    &RECORDED[second..],
                ];
                assert_eq!(parse_chunks(&chunks), whole, "split at {first}, {second}");
            }
        }
        let bytes: Vec<&[u8]> = RECORDED.chunks(1).collect();
        assert_eq!(parse_chunks(&bytes), whole, "one byte at a time");
    }

    #[test]
    fn crlf_split_between_cr_and_lf_is_one_line_end() {
        let events = parse_chunks(&[b"data: a\r\n\r", b"\ndata: b\r\n\r\n"]);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].raw().as_ref(), b"data: a\r\n\r\n");
        assert_eq!(events[1].data(), "b");
        // But at EOF a held '\r' is a line end.
        let events = parse_chunks(&[b"data: a\r\r"]);
        assert_eq!(events.len(), 1);
        assert!(events[0].is_terminated());
        let mut p = SseParser::new();
        p.feed(b"data: a\r\r").unwrap();
        assert!(p.next_event().is_none(), "held until the next byte or EOF");
        assert!(p.finish().is_none());
        assert_eq!(p.next_event().unwrap().data(), "a");
    }

    #[test]
    fn all_three_line_endings() {
        for sep in [&b"\n"[..], b"\r\n", b"\r"] {
            let stream = [b"event: e".as_ref(), sep, b"data: x", sep, sep].concat();
            let events = parse_all(&stream);
            assert_eq!(events.len(), 1, "{sep:?}");
            assert_eq!((events[0].event(), events[0].data()), (Some("e"), "x"));
            assert_eq!(events[0].raw().as_ref(), stream.as_slice());
        }
    }

    #[test]
    fn events_come_out_as_soon_as_they_are_complete() {
        let mut p = SseParser::new();
        p.feed(b"data: 1\n\ndata: 2\n").unwrap();
        assert_eq!(p.next_event().unwrap().data(), "1");
        assert!(p.next_event().is_none());
        assert_eq!(p.buffered_len(), 8);
        p.feed(b"\n").unwrap();
        assert_eq!(p.next_event().unwrap().data(), "2");
        assert_eq!(p.buffered_len(), 0);
        assert!(p.finish().is_none());
    }

    #[test]
    fn oversized_event_is_an_error_and_the_parser_stays_failed() {
        let mut p = SseParser::with_max_event_bytes(32);
        p.feed(b"data: small\n\n").unwrap();
        assert!(p.feed(b"data: 0123456789").is_ok());
        assert_eq!(
            p.feed(b"0123456789012345678901234567890"),
            Err(SseError::EventTooLarge { limit: 32 })
        );
        assert_eq!(
            p.next_event().unwrap().data(),
            "small",
            "earlier events survive"
        );
        assert!(p.feed(b"\n\n").is_err());
        assert!(p.finish().is_none());
        // Many small events in one big chunk are fine: only an unfinished event counts.
        let mut p = SseParser::with_max_event_bytes(32);
        let many = b"data: 0123456789\n\n".repeat(100);
        p.feed(&many).unwrap();
        assert_eq!(p.drain().count(), 100);
    }

    #[test]
    fn field_rules() {
        let e = SseEvent::parse(&b"data\ndata:\ndata: x\nevent:\nunknown: y\n:c\n\n"[..]);
        assert_eq!(e.data(), "\n\nx");
        assert_eq!(e.event(), Some(""));
        assert!(e.is_terminated());
        let e = SseEvent::parse(&b"retry: 12a\nid: a\0b\ndata: \xFF\n\n"[..]);
        assert_eq!((e.retry(), e.id()), (None, None));
        assert_eq!(e.data(), "\u{FFFD}");
        assert_eq!(e.raw().as_ref(), b"retry: 12a\nid: a\0b\ndata: \xFF\n\n");
        assert!(!SseEvent::parse(&b"data: x\n"[..]).is_terminated());
        assert!(!SseEvent::parse(&b"data: x\r\n"[..]).is_terminated());
        assert!(SseEvent::parse(&b"data: x\r\r\n"[..]).is_terminated());
        assert!(SseEvent::parse(&b"data: x\n\r"[..]).is_terminated());
        assert!(!SseEvent::parse(&b""[..]).is_terminated());
        // A BOM is only stripped at the start of a stream.
        let events = parse_all(b"data: 1\n\n\xEF\xBB\xBFdata: 2\n\n");
        assert_eq!(events[1].data(), "");
    }

    #[test]
    fn empty_input() {
        assert!(parse_all(b"").is_empty());
        let mut p = SseParser::new();
        p.feed(b"").unwrap();
        assert!(p.next_event().is_none());
        assert!(p.finish().is_none());
    }
}
