//! Numbers: payment cards, US SSNs, phone numbers and IPv4 addresses.
//!
//! The scanner hands over each *cluster*: a run of digit groups joined by single
//! separators (`4111 1111 1111 1111`, `+1 (555) 123-4567`, `10.0.0.1`) that starts at
//! a digit not glued to a word. The cluster is parsed once into at most
//! [`MAX_GROUPS`] groups on the stack; each detector then looks for its grouping at
//! every group where an entity may start (the cluster start, or after a space), the
//! longest first. Most clusters are one short group (`2`, `200`, `2024`) and are
//! rejected by the digit count before any detector runs.
//!
//! Decisions (and why):
//! - A bare digit run is never a phone number (timestamps, order ids, amounts), unless
//!   it carries a `+` (E.164). National formats need separators.
//! - A bare 9-digit run is an SSN only after "SSN" / "social security" / "SS#"
//!   nearby; dashed or spaced SSNs must pass the area/group/serial rules.
//! - Cards need Luhn *and* a known network prefix with a length that network issues;
//!   with separators only the usual groupings (4-4-4-4[-3], 4-6-5, 4-6-4) count.
//! - A dotted quad right after a version word ("version 1.2.3.4", "build", "v") or
//!   glued to a letter ("v1.2.3.4") is a version, not an address; five or more
//!   dotted parts (OIDs, `1.2.3.4.5`) are never an address.

use super::checks::{is_word, luhn};
use super::kind::{Confidence, Finding, Kind, KindSet};

/// Most digit groups in one cluster; the rest of a longer run starts a new cluster.
pub(crate) const MAX_GROUPS: usize = 8;
/// Longest cluster, in bytes.
pub(crate) const MAX_CLUSTER: usize = 64;

/// What joins two digit groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sep {
    Space,
    Dash,
    Dot,
    Slash,
    /// ` (`: a parenthesised group follows (`+1 (555)`).
    Open,
    /// `)`, `) ` or `)-` after a parenthesised group.
    Close,
    CloseSpace,
    CloseDash,
}

impl Sep {
    fn is_close(self) -> bool {
        matches!(self, Sep::Close | Sep::CloseSpace | Sep::CloseDash)
    }
}

/// A parsed cluster: digit groups (byte ranges) and the separators between them.
#[derive(Debug)]
pub(crate) struct Cluster {
    groups: [(usize, usize); MAX_GROUPS],
    seps: [Sep; MAX_GROUPS],
    n: usize,
    /// A `+` right before the first digit, itself not glued to a word.
    plus: bool,
    /// A `(` right before the first digit (or before its `+`: `(+44) 20 ...`).
    paren: bool,
    /// `(+` right before the first digit.
    paren_plus: bool,
    /// The cluster may start an entity (not glued to a word on its left).
    left_ok: bool,
    /// The cluster may end an entity (not glued to a word on its right).
    right_ok: bool,
    /// Byte after the last digit.
    pub(crate) end: usize,
}

impl Cluster {
    /// Parses the cluster whose first digit is at `start` (the byte before it, if
    /// any, is not a word byte).
    pub(crate) fn parse(b: &[u8], start: usize) -> Cluster {
        let mut c = Cluster {
            groups: [(0, 0); MAX_GROUPS],
            seps: [Sep::Space; MAX_GROUPS],
            n: 0,
            plus: false,
            paren: false,
            paren_plus: false,
            left_ok: true,
            right_ok: true,
            end: start,
        };
        let prev = start.checked_sub(1).map(|p| b[p]);
        let prev2 = start.checked_sub(2).map(|p| b[p]);
        let glued2 = prev2.is_some_and(is_word);
        match prev {
            Some(b'+') if !glued2 => {
                c.plus = true;
                if prev2 == Some(b'(') {
                    c.paren = true;
                    c.paren_plus = true;
                }
            }
            Some(b'(') => c.paren = true,
            // `ORD-2024`, `x.509`, `a/123`, `1+2`: part of something else.
            Some(b'-' | b'.' | b'/' | b'+' | b'\\' | b'$') if glued2 => c.left_ok = false,
            // Prices and amounts.
            Some(b'$') => c.left_ok = false,
            Some(p) if is_word(p) => c.left_ok = false,
            _ => {}
        }
        let n = b.len();
        let limit = (start + MAX_CLUSTER).min(n);
        // An unclosed `(` (for `(+44)`, only a `)` right after the first group
        // closes it; otherwise it is the prose's own parenthesis).
        let mut open = c.paren && !c.paren_plus;
        let mut j = start;
        loop {
            let gs = j;
            while j < limit && b[j].is_ascii_digit() {
                j += 1;
            }
            c.groups[c.n] = (gs, j);
            c.n += 1;
            if c.n == MAX_GROUPS || j >= limit {
                break;
            }
            let at = |k: usize| b.get(j + k).copied().unwrap_or(0);
            let digit = |k: usize| at(k).is_ascii_digit();
            let (sep, len) = match at(0) {
                b' ' if digit(1) => (Sep::Space, 1),
                b'-' if digit(1) => (Sep::Dash, 1),
                b'.' if digit(1) => (Sep::Dot, 1),
                b'/' if digit(1) => (Sep::Slash, 1),
                b' ' if !open && at(1) == b'(' && digit(2) => {
                    open = true;
                    (Sep::Open, 2)
                }
                b')' if (open || (c.paren_plus && c.n == 1)) && digit(1) => (Sep::Close, 1),
                b')' if (open || (c.paren_plus && c.n == 1)) && at(1) == b' ' && digit(2) => {
                    (Sep::CloseSpace, 2)
                }
                b')' if (open || (c.paren_plus && c.n == 1)) && at(1) == b'-' && digit(2) => {
                    (Sep::CloseDash, 2)
                }
                _ => break,
            };
            if sep.is_close() {
                open = false;
            }
            if j + len >= limit {
                break;
            }
            c.seps[c.n - 1] = sep;
            j += len;
        }
        c.end = j;
        // Cut short by the group limit while the numbers go on: nothing may end
        // at the last group (`01 02 03 04 05 06 07 08 09 10`).
        let more = |k: usize| b.get(j + k).copied().unwrap_or(0);
        let truncated = c.n == MAX_GROUPS
            && matches!(more(0), b' ' | b'-' | b'.' | b'/')
            && more(1).is_ascii_digit();
        let after = b.get(j).copied();
        let after2 = b.get(j + 1).copied();
        c.right_ok = !truncated
            && match after {
                None => true,
                Some(a) if is_word(a) => false,
                // `1.2.3.4-beta`, `555-123-4567.x`, `4111...@x`: glued to more (a `/`
                // after is a path or a CIDR suffix: fine).
                Some(b'.' | b'-' | b'@' | b'+') => !after2.is_some_and(is_word),
                Some(_) => true,
            };
        c
    }

    fn len(&self, g: usize) -> usize {
        self.groups[g].1 - self.groups[g].0
    }

    fn digits(&self, g: usize, j: usize) -> usize {
        (g..=j).map(|k| self.len(k)).sum()
    }

    /// An entity may start at group `g`: the cluster start, or after a space (or
    /// ` (`).
    fn can_start(&self, g: usize) -> bool {
        if g == 0 {
            self.left_ok
        } else {
            matches!(self.seps[g - 1], Sep::Space | Sep::Open)
        }
    }

    /// A `(` right before group `g`.
    fn open_before(&self, g: usize) -> bool {
        if g == 0 {
            self.paren
        } else {
            self.seps[g - 1] == Sep::Open
        }
    }

    /// An entity may end at group `j`: the cluster end, or before a space.
    fn can_end(&self, j: usize) -> bool {
        if j + 1 == self.n {
            self.right_ok
        } else {
            self.seps[j] == Sep::Space
        }
    }

    /// The separators between groups `g..=j` are all `sep`.
    fn seps_all(&self, g: usize, j: usize, sep: Sep) -> bool {
        self.seps[g..j].iter().all(|&s| s == sep)
    }

    /// Copies the digits of groups `g..=j` to `out`; returns how many.
    fn collect(&self, b: &[u8], g: usize, j: usize, out: &mut [u8; 20]) -> usize {
        let mut k = 0;
        for &(s, e) in &self.groups[g..=j] {
            for &d in &b[s..e] {
                if k < out.len() {
                    out[k] = d;
                    k += 1;
                }
            }
        }
        k
    }

    /// The value of group `g` as a number (groups here are at most a few digits).
    fn value(&self, b: &[u8], g: usize) -> u32 {
        let (s, e) = self.groups[g];
        b[s..e]
            .iter()
            .take(9)
            .fold(0u32, |v, d| v * 10 + u32::from(d - b'0'))
    }
}

/// Could anything be in this cluster? Phones without `+` have 10+ digits, SSNs 9,
/// cards 12+, E.164 with `+` 8+, IPv4 four groups; so dates (`2026-05-12`), times,
/// decimals and short ids are out before any detector runs.
pub(crate) fn worth_checking(c: &Cluster) -> bool {
    let total = c.digits(0, c.n - 1);
    total >= 9 || (c.plus && total >= 8) || c.n >= 4
}

/// Runs the enabled numeric detectors over a cluster.
pub(crate) fn detect(b: &[u8], c: &Cluster, kinds: KindSet, out: &mut Vec<Finding>) {
    let mut g = 0;
    while g < c.n {
        if let Some((end_g, start, kind, confidence)) = detect_at(b, c, g, kinds) {
            out.push(Finding {
                kind,
                start,
                end: c.groups[end_g].1,
                confidence,
            });
            g = end_g + 1;
        } else {
            g += 1;
        }
    }
}

/// The first detector that matches starting at group `g`: (last group, start byte,
/// kind, confidence).
fn detect_at(
    b: &[u8],
    c: &Cluster,
    g: usize,
    kinds: KindSet,
) -> Option<(usize, usize, Kind, Confidence)> {
    let start = c.groups[g].0;
    if kinds.contains(&Kind::Ipv4) {
        if let Some(j) = ipv4(b, c, g) {
            let conf = if (g..=j).all(|k| c.len(k) == 1) {
                Confidence::Medium
            } else {
                Confidence::High
            };
            return Some((j, start, Kind::Ipv4, conf));
        }
    }
    if !c.can_start(g) {
        return None;
    }
    if kinds.contains(&Kind::Card) {
        if let Some((j, conf)) = card(b, c, g) {
            return Some((j, start, Kind::Card, conf));
        }
    }
    if kinds.contains(&Kind::Ssn) {
        if let Some((j, conf)) = ssn(b, c, g) {
            return Some((j, start, Kind::Ssn, conf));
        }
    }
    if kinds.contains(&Kind::Phone) {
        if let Some((j, s, conf)) = phone(b, c, g) {
            return Some((j, s, Kind::Phone, conf));
        }
    }
    None
}

// ---- cards ------------------------------------------------------------------------

/// A card number starting at group `g`: the longest grouping that passes.
fn card(b: &[u8], c: &Cluster, g: usize) -> Option<(usize, Confidence)> {
    for j in (g..c.n).rev() {
        let digits = c.digits(g, j);
        if digits > 19 {
            continue;
        }
        if digits < 12 {
            break;
        }
        if !c.can_end(j) || !card_grouping(c, g, j) {
            continue;
        }
        let mut buf = [0u8; 20];
        let k = c.collect(b, g, j, &mut buf);
        let d = &buf[..k];
        if network_accepts(d) && luhn(d) && !all_same(d) {
            let conf = if j > g {
                Confidence::High
            } else {
                Confidence::Medium
            };
            return Some((j, conf));
        }
    }
    None
}

/// Bare, or groups as printed on cards: 4-4-4-4(-3) (any short last group), 4-6-5
/// (Amex) or 4-6-4 (Diners), one separator kind (space or dash) throughout.
fn card_grouping(c: &Cluster, g: usize, j: usize) -> bool {
    if j == g {
        return true;
    }
    if !(c.seps_all(g, j, Sep::Space) || c.seps_all(g, j, Sep::Dash)) {
        return false;
    }
    let fours = (g..j).all(|k| c.len(k) == 4) && (1..=4).contains(&c.len(j));
    let amex = j == g + 2 && c.len(g) == 4 && c.len(g + 1) == 6 && matches!(c.len(j), 4 | 5);
    fours || amex
}

fn all_same(d: &[u8]) -> bool {
    d.iter().all(|&x| x == d[0])
}

/// Whether a known network issues numbers with this prefix and length.
fn network_accepts(d: &[u8]) -> bool {
    let len = d.len();
    let p = |k: usize| -> u32 {
        d.iter()
            .take(k)
            .fold(0u32, |v, x| v * 10 + u32::from(x - b'0'))
    };
    let (p2, p3, p4) = (p(2), p(3), p(4));
    let long = (16..=19).contains(&len);
    match d[0] {
        // Visa.
        b'4' => matches!(len, 13 | 16 | 19),
        b'5' => {
            // Mastercard 51-55; Maestro 5018/5020/5038/5893.
            ((51..=55).contains(&p2) && len == 16)
                || (matches!(p4, 5018 | 5020 | 5038 | 5893) && (12..=19).contains(&len))
        }
        // Mastercard 2-series; Mir 2200-2204.
        b'2' => ((2221..=2720).contains(&p4) && len == 16) || ((2200..=2204).contains(&p4) && long),
        b'3' => {
            // Amex; JCB; Diners Club.
            (matches!(p2, 34 | 37) && len == 15)
                || ((3528..=3589).contains(&p4) && long)
                || (((300..=305).contains(&p3) || p4 == 3095 || matches!(p2, 36 | 38 | 39))
                    && (14..=19).contains(&len))
        }
        b'6' => {
            // Discover (6011, 644-649, 65); UnionPay 62 (which includes Discover's
            // 622126-622925 co-brand); Maestro.
            ((p4 == 6011 || (644..=649).contains(&p3) || matches!(p2, 62 | 65)) && long)
                || (matches!(p4, 6304 | 6759 | 6761..=6763) && (12..=19).contains(&len))
        }
        _ => false,
    }
}

// ---- SSN --------------------------------------------------------------------------

/// `AAA-GG-SSSS` or `AAA GG SSSS` passing the SSA rules, or a bare 9-digit run with
/// "SSN" in the text just before it.
fn ssn(b: &[u8], c: &Cluster, g: usize) -> Option<(usize, Confidence)> {
    if g + 2 < c.n
        && c.len(g) == 3
        && c.len(g + 1) == 2
        && c.len(g + 2) == 4
        && c.can_end(g + 2)
        && c.seps[g] == c.seps[g + 1]
        && matches!(c.seps[g], Sep::Dash | Sep::Space)
        && ssn_valid(c.value(b, g), c.value(b, g + 1), c.value(b, g + 2))
    {
        let conf = if c.seps[g] == Sep::Dash {
            Confidence::High
        } else {
            Confidence::Medium
        };
        return Some((g + 2, conf));
    }
    if c.len(g) == 9 && c.can_end(g) && !(g == 0 && c.plus) {
        let (s, _) = c.groups[g];
        let v = |a: usize, e: usize| {
            b[s + a..s + e]
                .iter()
                .fold(0u32, |v, d| v * 10 + u32::from(d - b'0'))
        };
        if ssn_valid(v(0, 3), v(3, 5), v(5, 9)) && ssn_context(b, s) {
            return Some((g, Confidence::Medium));
        }
    }
    None
}

/// The SSA's rules: area 001-899 but not 666, group 01-99, serial 0001-9999.
fn ssn_valid(area: u32, group: u32, serial: u32) -> bool {
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

/// "SSN", "SS#", "social security" within the 40 bytes before `at`.
fn ssn_context(b: &[u8], at: usize) -> bool {
    let from = at.saturating_sub(40);
    let mut buf = [0u8; 40];
    let w = &b[from..at];
    for (o, &x) in buf.iter_mut().zip(w) {
        *o = x.to_ascii_lowercase();
    }
    let w = &buf[..w.len()];
    // Windows over at most 40 bytes: cheaper than building substring searchers.
    let has = |needle: &[u8]| w.windows(needle.len()).any(|x| x == needle);
    // `ssn` as a word (not "lessnumber"): check the byte before it.
    let ssn_word = w
        .windows(3)
        .enumerate()
        .any(|(p, x)| x == b"ssn" && (p == 0 || !w[p - 1].is_ascii_alphabetic()));
    ssn_word || has(b"social security") || has(b"ss#") || has(b"ss #")
}

// ---- IPv4 -------------------------------------------------------------------------

/// Four dotted groups 0-255 without leading zeros, not part of a longer dotted run,
/// not right after a version word.
fn ipv4(b: &[u8], c: &Cluster, g: usize) -> Option<usize> {
    let j = g + 3;
    if j >= c.n || !c.seps_all(g, j, Sep::Dot) {
        return None;
    }
    let start_ok = if g == 0 {
        c.left_ok
    } else {
        matches!(c.seps[g - 1], Sep::Space | Sep::Dash)
    };
    let end_ok = if j + 1 == c.n {
        c.right_ok
    } else {
        // `10.0.0.0/8`, `10.0.0.1-10.0.0.9`, `10.0.0.1 10.0.0.2`; never a 5th dot.
        matches!(c.seps[j], Sep::Space | Sep::Dash | Sep::Slash)
    };
    if !start_ok || !end_ok {
        return None;
    }
    for k in g..=j {
        let (s, e) = c.groups[k];
        if e - s > 3 || (e - s > 1 && b[s] == b'0') || c.value(b, k) > 255 {
            return None;
        }
    }
    if version_before(b, c.groups[g].0) {
        return None;
    }
    Some(j)
}

/// A version word right before `at`: "version 1.2.3.4", "ver: ", "build ",
/// "Section 6.1.7.1", "since 1.5.5.5", or "upgrade(d) to", "bumped from".
fn version_before(b: &[u8], at: usize) -> bool {
    let mut buf = [0u8; 16];
    let Some((w1, k)) = word_before(b, at, &mut buf) else {
        return false;
    };
    let w1: &[u8] = w1;
    if matches!(
        w1,
        b"v" | b"ver"
            | b"version"
            | b"versions"
            | b"release"
            | b"released"
            | b"build"
            | b"firmware"
            | b"fw"
            | b"rev"
            | b"revision"
            | b"patch"
            | b"tag"
            | b"sdk"
            | b"api"
            | b"since"
            | b"section"
            | b"sec"
            | b"chapter"
            | b"clause"
            | b"appendix"
            | b"oid"
    ) {
        return true;
    }
    if !matches!(w1, b"to" | b"from" | b"of") {
        return false;
    }
    let mut buf2 = [0u8; 16];
    let Some((w2, _)) = word_before(b, k, &mut buf2) else {
        return false;
    };
    matches!(
        w2,
        b"upgrade"
            | b"upgraded"
            | b"upgrades"
            | b"upgrading"
            | b"update"
            | b"updated"
            | b"updates"
            | b"updating"
            | b"downgrade"
            | b"downgraded"
            | b"bump"
            | b"bumped"
            | b"bumps"
            | b"migrate"
            | b"migrated"
            | b"version"
            | b"release"
    )
}

/// The word (letters only, lower-cased into `buf`) ending just before `at`, after
/// at most two glue bytes (` `, `:`, `=`, `#`, tab); and where it starts.
fn word_before<'a>(b: &[u8], at: usize, buf: &'a mut [u8; 16]) -> Option<(&'a [u8], usize)> {
    let mut k = at;
    while k > 0 && matches!(b[k - 1], b' ' | b':' | b'=' | b'#' | b'\t') && at - k < 3 {
        k -= 1;
    }
    let ws = k;
    while k > 0 && b[k - 1].is_ascii_alphabetic() && ws - k < 16 {
        k -= 1;
    }
    if k > 0 && is_word(b[k - 1]) {
        return None;
    }
    let w = &b[k..ws];
    if w.is_empty() {
        return None;
    }
    for (o, &x) in buf.iter_mut().zip(w) {
        *o = x.to_ascii_lowercase();
    }
    Some((&buf[..w.len()], k))
}

// ---- phone numbers ----------------------------------------------------------------

/// A phone number starting at group `g`: (last group, start byte, confidence).
fn phone(b: &[u8], c: &Cluster, g: usize) -> Option<(usize, usize, Confidence)> {
    let plus = g == 0 && c.plus;
    let open_first = c.open_before(g);
    for j in (g..c.n).rev() {
        let digits = c.digits(g, j);
        if digits > 15 {
            continue;
        }
        if digits < 8 {
            break;
        }
        if !c.can_end(j) {
            continue;
        }
        let first = c.groups[g].0;
        // `(+44) 20 ...` when the `(+` closes right after the country code.
        let paren_cc = plus && c.paren_plus && international(b, c, g, j, true).is_some();
        let shape = if paren_cc {
            Some(Confidence::High)
        } else if plus {
            international(b, c, g, j, false)
        } else if g == 0 || open_first {
            nanp(b, c, g, j, open_first)
                .or_else(|| trunk(b, c, g, j, open_first))
                .or_else(|| idd(b, c, g, j))
        } else {
            // Inside a run of numbers (`3704 0044 0532 0130 00`, the tail of a
            // card), only a strongly formatted NANP number counts.
            nanp(b, c, g, j, false).filter(|_| c.seps[g] != Sep::Space)
        };
        if let Some(conf) = shape {
            let start = if plus {
                first - 1 - usize::from(paren_cc)
            } else if open_first && c.seps[g].is_close() {
                first - 1
            } else {
                first
            };
            return Some((j, start, conf));
        }
    }
    None
}

/// Parentheses in groups `g..=j` are balanced: each ` (` is closed right after the
/// next group, and a `)` closes a `(` (before `g` when `open_first`).
fn parens_ok(c: &Cluster, g: usize, j: usize, open_first: bool) -> bool {
    let mut open = open_first;
    for k in g..j {
        let s = c.seps[k];
        if s == Sep::Open {
            if open {
                return false;
            }
            open = true;
        } else if s.is_close() {
            if !open {
                return false;
            }
            open = false;
        } else if open {
            // A parenthesised part is a single group.
            return false;
        }
    }
    !open
}

/// `+CC ...`: 8-15 digits (E.164), a valid country code, any of the usual
/// separators.
fn international(
    b: &[u8],
    c: &Cluster,
    g: usize,
    j: usize,
    open_first: bool,
) -> Option<Confidence> {
    let digits = c.digits(g, j);
    if !(8..=15).contains(&digits) || !parens_ok(c, g, j, open_first) {
        return None;
    }
    if c.seps[g..j].contains(&Sep::Slash) {
        return None;
    }
    if j > g {
        if !(1..=3).contains(&c.len(g)) || !country_code(c.value(b, g), c.len(g)) {
            return None;
        }
    } else {
        let s = c.groups[g].0;
        let v = |k: usize| {
            b[s..s + k]
                .iter()
                .fold(0u32, |v, d| v * 10 + u32::from(d - b'0'))
        };
        if !(1..=3).any(|k| country_code(v(k), k)) {
            return None;
        }
    }
    Some(Confidence::High)
}

/// E.164 country codes: 1 and 7, the assigned two-digit codes, and three-digit
/// codes in the zones that use them.
fn country_code(v: u32, len: usize) -> bool {
    match len {
        1 => v == 1 || v == 7,
        2 => matches!(
            v,
            20 | 27
                | 30..=34
                | 36
                | 39
                | 40
                | 41
                | 43..=49
                | 51..=58
                | 60..=66
                | 81
                | 82
                | 84
                | 86
                | 90..=95
                | 98
        ),
        3 => matches!(
            v / 10,
            21..=26 | 29 | 35 | 37 | 38 | 42 | 50 | 59 | 67..=69 | 80 | 85 | 87 | 88 | 96 | 97 | 99
        ),
        _ => false,
    }
}

/// International numbers dialled with the `00` prefix: `0044 20 7946 0958`,
/// `00 33 1 23 45 67 89`: a valid country code, then 8-15 digits as E.164.
fn idd(b: &[u8], c: &Cluster, g: usize, j: usize) -> Option<Confidence> {
    if j == g
        || c.seps[g..j]
            .iter()
            .any(|s| matches!(s, Sep::Slash | Sep::Dot))
    {
        return None;
    }
    let (s, e) = c.groups[g];
    if e - s < 2 || &b[s..s + 2] != b"00" {
        return None;
    }
    let (cc, cc_len, e164) = if e - s == 2 {
        // `00 44 20 ...`: the country code is the next group.
        (c.value(b, g + 1), c.len(g + 1), c.digits(g + 1, j))
    } else {
        let v = b[s + 2..e]
            .iter()
            .fold(0u32, |v, d| v * 10 + u32::from(d - b'0'));
        (v, e - s - 2, c.digits(g, j) - 2)
    };
    let sep = c.seps[g];
    (country_code(cc, cc_len) && (8..=15).contains(&e164) && c.seps_all(g, j, sep))
        .then_some(Confidence::Medium)
}

/// North American numbers: `(NXX) NXX-XXXX`, `NXX-NXX-XXXX`, `NXX.NXX.XXXX`,
/// `NXX NXX XXXX`, with an optional leading `1`.
fn nanp(b: &[u8], c: &Cluster, g: usize, j: usize, open_first: bool) -> Option<Confidence> {
    let (a, lead) = match j - g {
        2 => (g, false),
        3 if c.len(g) == 1 && c.value(b, g) == 1 => (g + 1, true),
        _ => return None,
    };
    if c.len(a) != 3 || c.len(a + 1) != 3 || c.len(a + 2) != 4 {
        return None;
    }
    let first_digit = |k: usize| b[c.groups[k].0];
    if !matches!(first_digit(a), b'2'..=b'9') {
        return None;
    }
    // Real exchanges start 2-9; the ubiquitous `(555) 123-4567` does not, so a
    // 0/1 exchange is accepted only in the strong formats (parentheses, dashes).
    let strong_exchange = matches!(first_digit(a + 1), b'2'..=b'9');
    // The area code in parentheses: `(555) 123-4567`, `1 (555) 123-4567`.
    let paren_area = if lead {
        c.seps[g] == Sep::Open
    } else {
        open_first && c.seps[a].is_close()
    };
    if paren_area {
        if !c.seps[a].is_close() || !matches!(c.seps[a + 1], Sep::Dash | Sep::Space | Sep::Dot) {
            return None;
        }
        return Some(Confidence::High);
    }
    let sep = c.seps[g];
    if !matches!(sep, Sep::Dash | Sep::Dot | Sep::Space) || !c.seps_all(g, j, sep) {
        return None;
    }
    if !strong_exchange && sep != Sep::Dash {
        return None;
    }
    // Space-separated numbers that go on (`212 455 1200 300`) are a list.
    if sep == Sep::Space && j + 1 < c.n {
        return None;
    }
    Some(if sep == Sep::Dash {
        Confidence::High
    } else {
        Confidence::Medium
    })
}

/// National numbers with a trunk `0` (UK, FR, DE, NL, AU, ...): 10-12 digits in
/// 2-5 groups of two or more, one separator kind, optionally `(0xx)` first.
fn trunk(b: &[u8], c: &Cluster, g: usize, j: usize, open_first: bool) -> Option<Confidence> {
    let digits = c.digits(g, j);
    let (s, _) = c.groups[g];
    if !(10..=12).contains(&digits) || b[s] != b'0' || b[s + 1] == b'0' {
        return None;
    }
    let groups = j - g + 1;
    if !(2..=5).contains(&groups) || (g..=j).any(|k| c.len(k) < 2) {
        return None;
    }
    let rest_from = if open_first && c.seps[g].is_close() {
        g + 1
    } else {
        g
    };
    if rest_from < j {
        let sep = c.seps[rest_from];
        if !matches!(sep, Sep::Space | Sep::Dash | Sep::Dot | Sep::Slash)
            || !c.seps_all(rest_from, j, sep)
        {
            return None;
        }
        // `01 02 03 04 05 06 ...` is a list, not `01 23 45 67 89`.
        if sep == Sep::Space && j + 1 < c.n {
            return None;
        }
    }
    Some(Confidence::Medium)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn run(text: &str) -> Vec<(Kind, &str)> {
        let b = text.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i].is_ascii_digit() && (i == 0 || !is_word(b[i - 1])) {
                let c = Cluster::parse(b, i);
                if worth_checking(&c) {
                    detect(b, &c, KindSet::all(), &mut out);
                }
                i = c.end.max(i + 1);
            } else {
                i += 1;
            }
        }
        out.into_iter()
            .map(|f| (f.kind, &text[f.start..f.end]))
            .collect()
    }

    #[test]
    fn cards() {
        assert_eq!(
            run("card 4111 1111 1111 1111 exp"),
            [(Kind::Card, "4111 1111 1111 1111")]
        );
        assert_eq!(
            run("4111-1111-1111-1111"),
            [(Kind::Card, "4111-1111-1111-1111")]
        );
        assert_eq!(
            run("4242 (4242 4242 4242 4242)."),
            [(Kind::Card, "4242 4242 4242 4242")]
        );
        assert_eq!(
            run("amex 3782 822463 10005."),
            [(Kind::Card, "3782 822463 10005")]
        );
        assert_eq!(
            run("n=5555555555554444"),
            [(Kind::Card, "5555555555554444")]
        );
        // Luhn fails; wrong grouping; unknown prefix; mixed separators.
        assert!(run("4111 1111 1111 1112").is_empty());
        assert!(run("41 1111 1111 1111 11").is_empty());
        assert!(run("9111111111111111 1234567812345678").is_empty());
        assert!(run("4111-1111 1111-1111").is_empty());
    }

    #[test]
    fn ssns() {
        assert_eq!(run("SSN 123-45-6789."), [(Kind::Ssn, "123-45-6789")]);
        assert_eq!(run("ssn: 123 45 6789"), [(Kind::Ssn, "123 45 6789")]);
        assert_eq!(run("SSN#123456789"), [(Kind::Ssn, "123456789")]);
        for bad in [
            "000-12-3456",
            "666-12-3456",
            "912-12-3456",
            "123-00-4567",
            "123-45-0000",
        ] {
            assert!(run(bad).is_empty(), "{bad}");
        }
        assert!(run("order 123456789 shipped").is_empty());
    }

    #[test]
    fn ipv4s() {
        assert_eq!(run("from 10.0.0.1:8080"), [(Kind::Ipv4, "10.0.0.1")]);
        assert_eq!(run("net 10.0.0.0/8"), [(Kind::Ipv4, "10.0.0.0")]);
        assert_eq!(
            run("10.0.0.1-10.0.0.9"),
            [(Kind::Ipv4, "10.0.0.1"), (Kind::Ipv4, "10.0.0.9")]
        );
        for bad in [
            "version 1.2.3.4",
            "Version: 10.0.19041.1",
            "1.3.6.1.4.1",
            "256.1.1.1",
            "01.2.3.4",
            "1.2.3",
            "build 4.2.0.1",
            "Fixes since 1.5.5.5",
            "[Section 24.1.1.3]",
            "upgraded to 4.2.1.0",
            "bumped from 1.26.4.1",
        ] {
            assert!(run(bad).is_empty(), "{bad}");
        }
    }

    #[test]
    fn phones() {
        let ok = [
            "+1 415 555 2671",
            "+14155552671",
            "+44 20 7946 0958",
            "+44 (0) 20 7946 0958",
            "+1 (415) 555-2671",
            "(415) 555-2671",
            "415-555-2671",
            "415.555.2671",
            "1-800-555-0199",
            "020 7946 0958",
            "07700 900123",
            "01 23 45 67 89",
            "030/12345678",
            "(02) 9876 5432",
            "(+44) 20 7946 0958",
            "+1 (415) 555-2671",
            "0044 20 7946 0958",
            "00 33 1 23 45 67 89",
            "(555) 123-4567",
            "555-123-4567",
        ];
        for p in ok {
            let text = format!("call {p} now");
            let r = run(&text);
            assert_eq!(r, [(Kind::Phone, p)], "{p}");
        }
        let bad = [
            "1700000000",
            "4155552671",
            "2024-01-15",
            "123-456-7890",
            "415-555-2671-99",
            "12 34 56 78 90",
            "3.14159265",
            "1+415 555 2671",
            "+0 12 3456 7890",
            "ORD-415-555-2671",
            "DE88 3704 0044 0532 0130 00",
            "card 4501 0891 9308 4304",
            "555 123 4567",
            "0099 20 7946 0958",
            "01 02 03 04 05 06 07 08 09 10",
            "212 455 1200 300 400",
        ];
        for p in bad {
            assert!(run(p).is_empty(), "{p}");
        }
    }
}
