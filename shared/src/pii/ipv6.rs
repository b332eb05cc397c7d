//! IPv6 addresses, found from a `:`.
//!
//! The run of hex digits, colons and dots around the colon is cut out and parsed
//! with the standard library (`Ipv6Addr`), so compression (`::`), embedded IPv4
//! (`::ffff:10.0.0.1`) and group counts follow the RFC exactly. Not addresses:
//! times (`10:30:00`), MAC addresses (six groups), Rust/C++ paths (`std::io`, `a::b`:
//! need a digit and two groups), a bare `::`.

use super::checks::is_word;
use super::kind::Confidence;

const MAX_V6: usize = 45;

#[inline]
fn is_hex(b: u8) -> bool {
    b.is_ascii_hexdigit()
}

/// The IPv6 address around the colon at `colon`, and where scanning should resume.
pub(crate) fn find(text: &str, colon: usize) -> (Option<(usize, usize, Confidence)>, usize) {
    let b = text.as_bytes();
    // Most colons (`key: value`, `f(x):`, `http://`) have no hex digit or colon
    // on either side.
    let near = |c: Option<&u8>| c.is_some_and(|&c| is_hex(c) || c == b':');
    if !near(colon.checked_sub(1).and_then(|p| b.get(p))) && !near(b.get(colon + 1)) {
        return (None, colon + 1);
    }
    let mut s = colon;
    while s > 0 && (is_hex(b[s - 1]) || b[s - 1] == b':') && colon - s < MAX_V6 {
        s -= 1;
    }
    let mut e = colon + 1;
    while e < b.len() && (is_hex(b[e]) || b[e] == b':' || b[e] == b'.') && e - s < MAX_V6 + 1 {
        e += 1;
    }
    let resume = e;
    if s > 0 && (is_word(b[s - 1]) || matches!(b[s - 1], b'.' | b':' | b'-')) {
        return (None, resume);
    }
    if e < b.len() && (is_word(b[e]) || b[e] == b'-') {
        return (None, resume);
    }
    while e > colon + 1 && b[e - 1] == b'.' {
        e -= 1;
    }
    if e - s >= 2 && b[e - 1] == b':' && b[e - 2] != b':' {
        e -= 1;
    }
    let cand = &b[s..e];
    let colons = cand.iter().filter(|&&c| c == b':').count();
    // Without `::`, an address has exactly seven colons (six before a dotted
    // IPv4 tail): `10:23:45.123` is a time.
    let compressed = cand.windows(2).any(|w| w == b"::");
    if colons < 2 || (!compressed && !(6..=7).contains(&colons)) {
        return (None, resume);
    }
    if !cand.iter().any(u8::is_ascii_digit) {
        return (None, resume);
    }
    let groups = cand.split(|&c| c == b':').filter(|g| !g.is_empty()).count();
    if groups < 2 && cand != b"::1" {
        return (None, resume);
    }
    // Code paths that happen to be hex (`c::B0`, `a::B50` in Rust or C++): real
    // addresses are written in one case, and two groups need a real-looking one.
    let lower = cand.iter().any(u8::is_ascii_lowercase);
    let upper = cand.iter().any(u8::is_ascii_uppercase);
    let longest = cand
        .split(|&c| c == b':')
        .map(<[u8]>::len)
        .max()
        .unwrap_or(0);
    if (lower && upper) || (groups == 2 && longest < 3) {
        return (None, resume);
    }
    let Some(cand_str) = text.get(s..e) else {
        return (None, resume);
    };
    if cand_str.parse::<std::net::Ipv6Addr>().is_err() {
        return (None, resume);
    }
    let conf = if groups >= 3 {
        Confidence::High
    } else {
        Confidence::Medium
    };
    (Some((s, e, conf)), resume.max(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Option<&str> {
        let colon = text.find(':')?;
        find(text, colon).0.map(|(s, e, _)| &text[s..e])
    }

    #[test]
    fn addresses() {
        assert_eq!(
            one("at 2001:db8:85a3::8a2e:370:7334."),
            Some("2001:db8:85a3::8a2e:370:7334")
        );
        assert_eq!(one("[::1]:8080"), Some("::1"));
        assert_eq!(
            one("fe80::1ff:fe23:4567:890a%eth0"),
            Some("fe80::1ff:fe23:4567:890a")
        );
        assert_eq!(one("::ffff:192.0.2.128 ok"), Some("::ffff:192.0.2.128"));
        assert_eq!(
            one("2001:0db8:0000:0000:0000:ff00:0042:8329"),
            Some("2001:0db8:0000:0000:0000:ff00:0042:8329")
        );
    }

    #[test]
    fn not_addresses() {
        for t in [
            "at 10:30:00",
            "mac 00:1a:2b:3c:4d:5e",
            "std::io::Result",
            "a::b",
            "x :: y",
            "de::Error",
            "T10:30:00Z",
            "sha256:abcdef0123",
            "c::B0 => Some(0)",
            "const_assert_eq!(c::B50, 50)",
            "d::d1",
        ] {
            assert_eq!(one(t), None, "{t}");
        }
    }
}
