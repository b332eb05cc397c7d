//! Masked display of a secret value: enough to tell two keys apart, not enough
//! to use one.

/// Values shorter than this show as `****`.
pub const MIN_MASKED_LEN: usize = 24;

/// `sk-proj-abc...xyz` for long values (a prefix of at most 11 characters and
/// a quarter of the value, a suffix of at most 3 and an eighth), `****` for
/// values under [`MIN_MASKED_LEN`] characters.
pub fn mask(value: &str) -> String {
    let chars: Vec<char> = value.chars().collect();
    let n = chars.len();
    if n < MIN_MASKED_LEN {
        return "****".to_owned();
    }
    let pre = (n / 4).min(11);
    let suf = (n / 8).min(3);
    let mut s: String = chars[..pre].iter().collect();
    s.push_str("...");
    s.extend(&chars[n - suf..]);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        assert_eq!(mask("short"), "****");
        assert_eq!(mask(&"x".repeat(23)), "****");
        assert_eq!(
            mask("sk-proj-abcdefghijklmnopqrstuvwxyz0123456789xyz"),
            "sk-proj-abc...xyz"
        );
        // 24 characters: 6 shown in front, 3 behind; most stays hidden.
        assert_eq!(mask("abcdefghijklmnopqrstuvwx"), "abcdef...vwx");
        // Multi-byte characters are not split.
        assert_eq!(
            mask(&"é".repeat(30)),
            format!("{}...{}", "é".repeat(7), "é".repeat(3))
        );
    }
}
