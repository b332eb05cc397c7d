//! Email addresses, found from their `@`.
//!
//! The local part is read backwards from the `@` (at most 64 bytes of
//! `[A-Za-z0-9._%+-]`), the domain forwards (at most 253 bytes, at least two labels,
//! an alphabetic or punycode top-level label). Not addresses: `logo@2x.png` (retina
//! asset names), `pkg@1.2.3` (numeric "TLD"), `name@file.json` (file extensions that
//! are not top-level domains), `git@github.com:org/repo` (an SSH remote).

use super::checks::is_word;

const MAX_LOCAL: usize = 64;
const MAX_DOMAIN: usize = 253;

/// Local-part characters: letters and digits (any script: RFC 6531 allows UTF-8)
/// and `._%+-`.
#[inline]
fn is_local(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '.' | '_' | '%' | '+' | '-')
}

#[inline]
fn is_domain(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '.' | '-')
}

/// File extensions that look like top-level domains but are not delegated ones.
const NOT_TLDS: &[&str] = &[
    "png", "jpg", "jpeg", "gif", "svg", "webp", "bmp", "ico", "tif", "tiff", "js", "mjs", "cjs",
    "ts", "tsx", "jsx", "css", "scss", "json", "yaml", "yml", "toml", "lock", "txt", "html", "htm",
    "exe", "dll", "whl", "map", "mp4", "mp3", "wav", "pdf", "csv", "tgz", "gz", "zip",
];

/// The email address around the `@` at byte `at` of `text`, if there is one: its
/// span.
pub(crate) fn find(text: &str, at: usize) -> Option<(usize, usize)> {
    let mut s = at;
    for (i, c) in text[..at].char_indices().rev() {
        if !is_local(c) {
            break;
        }
        s = i;
        if at - s > MAX_LOCAL {
            return None;
        }
    }
    let b = text.as_bytes();
    // Punctuation before an address is not part of it (`--user@x.org`, `...a@b.c`).
    while s < at && matches!(b[s], b'.' | b'-' | b'+' | b'%') {
        s += 1;
    }
    if s == at {
        return None;
    }
    let local = &text[s..at];
    if local.ends_with('.') || local.contains("..") {
        return None;
    }
    let mut e = at + 1;
    for (i, c) in text[at + 1..].char_indices() {
        if !is_domain(c) {
            break;
        }
        e = at + 1 + i + c.len_utf8();
        if e - at > MAX_DOMAIN + 1 {
            return None;
        }
    }
    while e > at + 1 && matches!(b[e - 1], b'.' | b'-') {
        e -= 1;
    }
    let domain = &text[at + 1..e];
    if !domain_ok(domain) {
        return None;
    }
    match b.get(e) {
        // `a@b.com@c` or `a@b.com_x`: something else.
        Some(&c) if c == b'@' || is_word(c) => return None,
        // `git@github.com:org/repo.git` is an SSH remote, not a mailbox.
        Some(b':') if local == "git" => return None,
        _ => {}
    }
    Some((s, e))
}

fn domain_ok(domain: &str) -> bool {
    let mut labels = 0;
    let mut first = "";
    let mut last = "";
    for label in domain.split('.') {
        if label.is_empty() || label.len() > 63 || label.starts_with('-') || label.ends_with('-') {
            return false;
        }
        if labels == 0 {
            first = label;
        }
        last = label;
        labels += 1;
    }
    if labels < 2 {
        return false;
    }
    let chars = last.chars().count();
    let tld_ok = ((2..=24).contains(&chars) && last.chars().all(char::is_alphabetic))
        || (last.len() >= 5 && last[..4].eq_ignore_ascii_case("xn--"));
    if !tld_ok || NOT_TLDS.iter().any(|t| t.eq_ignore_ascii_case(last)) {
        return false;
    }
    // `icon@2x.png`, `img@3x.webp`: retina suffixes.
    let retina = labels == 2
        && first.len() >= 2
        && first.ends_with(['x', 'X'])
        && first[..first.len() - 1].bytes().all(|c| c.is_ascii_digit());
    !retina
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Option<&str> {
        let at = text.find('@')?;
        find(text, at).map(|(s, e)| &text[s..e])
    }

    #[test]
    fn addresses() {
        assert_eq!(
            one("mail jane.doe@example.com."),
            Some("jane.doe@example.com")
        );
        assert_eq!(
            one("<first.last+tag@mail.example.co.uk>"),
            Some("first.last+tag@mail.example.co.uk")
        );
        assert_eq!(
            one("mailto:a_b-c@sub.example.io"),
            Some("a_b-c@sub.example.io")
        );
        assert_eq!(
            one("x@xn--bcher-kva.example"),
            Some("x@xn--bcher-kva.example")
        );
        assert_eq!(one("(jo@ex.org)"), Some("jo@ex.org"));
        assert_eq!(one("— jürgen@münchen.de —"), Some("jürgen@münchen.de"));
    }

    #[test]
    fn not_addresses() {
        for t in [
            "@property",
            "user@localhost",
            "logo@2x.png",
            "lodash@4.17.21",
            "config@file.json",
            "git@github.com:org/repo.git",
            "a..b@example.com",
            "a.@example.com",
            "x@-bad.com",
            "x@example.c",
            "x@example.123",
        ] {
            assert_eq!(one(t), None, "{t}");
        }
    }
}
