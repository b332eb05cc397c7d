//! Scanning a stream (SSE deltas, a child's output) without letting an entity
//! split across chunks slip through.
//!
//! [`StreamScanner::push`] appends a chunk and releases only the text that can no
//! longer change what is found in it; the rest is held back:
//!
//! - the last `window` bytes (at least [`MIN_WINDOW`]): longer than any entity that
//!   contains whitespace (a spaced card, IBAN or phone number) and any context a
//!   boundary check reads after an entity;
//! - the trailing run of non-whitespace, however long (up to `max_hold`): a key, a
//!   JWT or an email still arriving has no whitespace in it;
//! - any finding that reaches into the held part, from its start (an unterminated
//!   PEM block is a finding that runs to the end of the text).
//!
//! Released text comes with the findings inside it (spans relative to that text)
//! and its offset in the stream; the caller applies its policy to each piece. A
//! lookbehind of already-released text stays in the buffer so boundaries and
//! context words ("SSN") before new text still count. [`StreamScanner::finish`]
//! releases the rest.
//!
//! Holding is bounded: when more than `max_hold` bytes would be held, the oldest are
//! released anyway. If that cuts through a finding, the released part is reported
//! as that finding, and the rest of the entity is reported as the same kind when
//! it is released (fail closed: over-redact rather than leak).

use super::kind::{Confidence, Finding, Kind};
use super::scanner::Scanner;
use super::secrets;
use std::fmt;
use std::sync::Arc;

/// The smallest hold-back window (bytes).
pub const MIN_WINDOW: usize = 64;
/// The default window when custom patterns are configured (bytes).
pub const CUSTOM_WINDOW: usize = 256;
/// The default bound on held-back text (bytes): the longest PEM block.
pub const DEFAULT_MAX_HOLD: usize = secrets::MAX_PEM;
/// Released text kept for context (bytes).
const LOOKBEHIND: usize = 64;

/// An incremental scanner over a stream of text chunks.
pub struct StreamScanner {
    scanner: Arc<Scanner>,
    buf: String,
    /// `buf[..ctx]` was already released (kept as lookbehind).
    ctx: usize,
    /// Stream offset of `buf[ctx]`.
    offset: u64,
    window: usize,
    max_hold: usize,
    found: Vec<Finding>,
    out: String,
    out_findings: Vec<Finding>,
    /// An entity cut by a forced release continues at the start of what is held.
    carry: Option<Kind>,
}

impl fmt::Debug for StreamScanner {
    // Never the buffered text.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamScanner")
            .field("held", &(self.buf.len() - self.ctx))
            .field("offset", &self.offset)
            .field("window", &self.window)
            .field("max_hold", &self.max_hold)
            .finish()
    }
}

/// Text a [`StreamScanner`] released, valid until the next call.
#[derive(Clone, Copy)]
pub struct Released<'a> {
    /// The released text (possibly empty).
    pub text: &'a str,
    /// Findings in `text`, spans relative to it.
    pub findings: &'a [Finding],
    /// Offset of `text` in the whole stream (bytes).
    pub offset: u64,
}

impl fmt::Debug for Released<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Released")
            .field("text_len", &self.text.len())
            .field("findings", &self.findings)
            .field("offset", &self.offset)
            .finish()
    }
}

impl StreamScanner {
    /// A stream scanner with the default window ([`MIN_WINDOW`], or
    /// [`CUSTOM_WINDOW`] with custom patterns) and hold bound.
    pub fn new(scanner: Arc<Scanner>) -> StreamScanner {
        let window = if scanner.has_custom() {
            CUSTOM_WINDOW
        } else {
            MIN_WINDOW
        };
        StreamScanner {
            scanner,
            buf: String::new(),
            ctx: 0,
            offset: 0,
            window,
            max_hold: DEFAULT_MAX_HOLD,
            found: Vec::new(),
            out: String::new(),
            out_findings: Vec::new(),
            carry: None,
        }
    }

    /// Holds back at least `window` bytes (raised to [`MIN_WINDOW`]); use more when
    /// custom patterns can match text with spaces longer than that.
    pub fn with_window(mut self, window: usize) -> StreamScanner {
        self.window = window.max(MIN_WINDOW);
        self.max_hold = self.max_hold.max(self.window);
        self
    }

    /// Bounds the held-back text (raised to the window).
    pub fn with_max_hold(mut self, max_hold: usize) -> StreamScanner {
        self.max_hold = max_hold.max(self.window);
        self
    }

    /// Bytes received but not yet released.
    pub fn held(&self) -> usize {
        self.buf.len() - self.ctx
    }

    /// Appends `chunk`; returns what is now safe to release.
    pub fn push(&mut self, chunk: &str) -> Released<'_> {
        self.buf.push_str(chunk);
        self.release(false)
    }

    /// Releases everything still held; the scanner is then ready for a new stream.
    pub fn finish(&mut self) -> Released<'_> {
        self.release(true)
    }

    fn release(&mut self, fin: bool) -> Released<'_> {
        let len = self.buf.len();
        self.scanner.scan_into(&self.buf, &mut self.found);
        let carried = self.carry.take().and_then(|k| self.apply_carry(k));
        let mut r = if fin { len } else { self.cut() };
        r = r.max(self.ctx);
        if let Some((kind, end)) = carried {
            if end > r && !fin {
                // Part of it is still held: it must be reported again next time.
                self.carry = Some(kind);
            }
        }
        // Forced release: never hold more than max_hold.
        if !fin && len - r > self.max_hold {
            r = floor_boundary(&self.buf, len - self.max_hold).max(self.ctx);
            if let Some(f) = self.found.iter().find(|f| f.start < r && f.end > r) {
                self.carry = Some(f.kind.clone());
            }
        }
        let ctx = self.ctx;
        self.out.clear();
        self.out.push_str(&self.buf[ctx..r]);
        self.out_findings.clear();
        for f in &self.found {
            if f.end <= ctx || f.start >= r {
                continue;
            }
            // Clipped only when it straddles released text (fail closed).
            self.out_findings.push(Finding {
                kind: f.kind.clone(),
                start: f.start.max(ctx) - ctx,
                end: f.end.min(r) - ctx,
                confidence: f.confidence,
            });
        }
        let offset = self.offset;
        if fin {
            self.buf.clear();
            self.ctx = 0;
            self.offset = 0;
            self.carry = None;
        } else {
            self.offset += (r - ctx) as u64;
            let keep = floor_boundary(&self.buf, r.saturating_sub(LOOKBEHIND));
            self.buf.drain(..keep);
            self.ctx = r - keep;
        }
        Released {
            text: &self.out,
            findings: &self.out_findings,
            offset,
        }
    }

    /// Where to stop releasing (before the forced-release bound).
    fn cut(&self) -> usize {
        let b = self.buf.as_bytes();
        let len = b.len();
        let mut r = len.saturating_sub(self.window);
        // The trailing run of non-whitespace (bounded).
        let floor = len.saturating_sub(self.max_hold);
        let mut run = len;
        while run > floor && !b[run - 1].is_ascii_whitespace() {
            run -= 1;
        }
        r = r.min(run);
        // Findings reaching into the held part are held whole.
        for f in self.found.iter().rev() {
            if f.start < r && f.end > r {
                r = f.start;
            }
        }
        floor_boundary(&self.buf, r)
    }

    /// The rest of an entity cut by a forced release: reported as a finding of
    /// its kind from the start of the held text. Returns the kind and its end.
    fn apply_carry(&mut self, kind: Kind) -> Option<(Kind, usize)> {
        let b = self.buf.as_bytes();
        let from = self.ctx;
        let end = if kind == Kind::PrivateKey {
            secrets::pem_continuation_end(b, from)
        } else {
            b[from..]
                .iter()
                .position(u8::is_ascii_whitespace)
                .map_or(b.len(), |p| from + p)
        };
        let mut end = floor_boundary(&self.buf, end);
        if end <= from {
            return None;
        }
        // The scan still sees the entity whole (its start is in the lookbehind).
        if self.found.iter().any(|f| f.start <= from && f.end > from) {
            return None;
        }
        // Merge what overlaps the continuation into it.
        for f in &self.found {
            if f.start < end && f.end > from {
                end = end.max(f.end);
            }
        }
        self.found.retain(|f| f.end <= from || f.start >= end);
        let at = self.found.partition_point(|f| f.start < from);
        self.found.insert(
            at,
            Finding {
                kind: kind.clone(),
                start: from,
                end,
                confidence: Confidence::High,
            },
        );
        Some((kind, end))
    }
}

/// The largest char boundary at or below `i`.
fn floor_boundary(s: &str, mut i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Feeds `chunks`, checks the released text reassembles to the input, and
    /// returns the findings as (kind, stream span).
    fn stream(scanner: &Arc<Scanner>, chunks: &[&str]) -> Vec<(Kind, usize, usize)> {
        let mut s = StreamScanner::new(scanner.clone());
        let mut text = String::new();
        let mut found = Vec::new();
        let mut take = |r: Released<'_>, text: &mut String| {
            assert_eq!(r.offset as usize, text.len());
            for f in r.findings {
                found.push((f.kind.clone(), text.len() + f.start, text.len() + f.end));
            }
            text.push_str(r.text);
        };
        for c in chunks {
            let r = s.push(c);
            take(r, &mut text);
        }
        let r = s.finish();
        take(r, &mut text);
        assert_eq!(text, chunks.concat());
        // Merge findings that a forced release split in two.
        found.dedup_by(|b, a| {
            if a.0 == b.0 && a.2 == b.1 {
                a.2 = b.2;
                true
            } else {
                false
            }
        });
        found
    }

    fn whole(scanner: &Scanner, text: &str) -> Vec<(Kind, usize, usize)> {
        scanner
            .scan(text)
            .into_iter()
            .map(|f| (f.kind, f.start, f.end))
            .collect()
    }

    const SAMPLES: &[&str] = &[
        "Contact jane.doe@example.com today.",
        "Card: 4111 1111 1111 1111, exp 12/29.",
        "Call +1 (415) 555-2671 or 020 7946 0958!",
        "SSN: 123-45-6789; ssn 123456789 too.",
        "IBAN GB29 NWBK 6016 1331 9268 19 ok",
        "from 203.0.113.7 and [2001:db8:85a3::8a2e:370:7334]",
        "export OPENAI_API_KEY=sk-proj-Q2x9Lm4Tz8Kp1Rw7Yb3Nc6Vd0Hs5Jf2Ag8Ue4Io1Pq7 # x",
        "Authorization: Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U done",
        "key:\n-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo\n4lgOEePzNm0tRgeLezV6ffAt0gunVTLw\n-----END RSA PRIVATE KEY-----\nbye",
        "né à Zürich — écrire à zoë@exemple.fr ☎ +33 1 23 45 67 89 «fin»",
        "no findings here, just 1700000000 and version 1.2.3.4 and 3f786850e387550f",
    ];

    #[test]
    fn every_two_way_split_finds_the_same() {
        let scanner = Arc::new(Scanner::default());
        for text in SAMPLES {
            let want = whole(&scanner, text);
            for k in 0..=text.len() {
                if !text.is_char_boundary(k) {
                    continue;
                }
                let got = stream(&scanner, &[&text[..k], &text[k..]]);
                assert_eq!(got, want, "split at {k} of {text:?}");
            }
        }
    }

    #[test]
    fn byte_at_a_time_and_three_way_splits() {
        let scanner = Arc::new(Scanner::default());
        for text in SAMPLES {
            let want = whole(&scanner, text);
            let chars: Vec<String> = text.chars().map(String::from).collect();
            let refs: Vec<&str> = chars.iter().map(String::as_str).collect();
            assert_eq!(stream(&scanner, &refs), want, "char by char: {text:?}");
            let bounds: Vec<usize> = (0..=text.len())
                .filter(|&k| text.is_char_boundary(k))
                .collect();
            for (x, &i) in bounds.iter().enumerate().step_by(3) {
                for &j in bounds[x..].iter().step_by(5) {
                    let got = stream(&scanner, &[&text[..i], &text[i..j], &text[j..]]);
                    assert_eq!(got, want, "splits {i},{j} of {text:?}");
                }
            }
        }
    }

    #[test]
    fn releases_early_when_safe() {
        let scanner = Arc::new(Scanner::default());
        let mut s = StreamScanner::new(scanner);
        let prose = "The quick brown fox jumps over the lazy dog. ".repeat(10);
        let r = s.push(&prose);
        // Everything but the window (and the last word) is out at once.
        assert!(
            r.text.len() >= prose.len() - MIN_WINDOW - 8,
            "{}",
            r.text.len()
        );
        assert!(s.held() <= MIN_WINDOW + 8);
        let long_token = "x".repeat(1000);
        let r = s.push(&long_token);
        assert!(r.text.len() < 200);
        assert!(s.held() >= 1000);
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("quick"));
    }

    #[test]
    fn forced_release_fails_closed() {
        let scanner = Arc::new(Scanner::default());
        let mut s = StreamScanner::new(scanner).with_max_hold(256);
        // A PEM body far longer than the hold bound, in small chunks.
        let body: String = (0..60)
            .map(|i| format!("MIIEowIBAAKCAQEAu1SU1LfVLPHC{i:04}\n"))
            .collect();
        let text = format!(
            "key:\n-----BEGIN RSA PRIVATE KEY-----\n{body}-----END RSA PRIVATE KEY-----\nbye"
        );
        let mut released = String::new();
        let mut covered = vec![false; text.len()];
        let mut feed = |r: Released<'_>| {
            for f in r.findings {
                assert_eq!(f.kind, Kind::PrivateKey);
                for c in &mut covered[r.offset as usize + f.start..r.offset as usize + f.end] {
                    *c = true;
                }
            }
            released.push_str(r.text);
        };
        for chunk in text.as_bytes().chunks(40) {
            feed(s.push(std::str::from_utf8(chunk).unwrap()));
            assert!(s.held() <= 256 + 40);
        }
        feed(s.finish());
        assert_eq!(released, text);
        let start = text.find("-----BEGIN").unwrap();
        let end = text.find("\nbye").unwrap();
        let gaps: Vec<usize> = (start..end).filter(|&i| !covered[i]).collect();
        assert!(
            gaps.is_empty(),
            "uncovered bytes {gaps:?} of {start}..{end}"
        );
    }
}
