//! IBANs: two letters, two check digits, the country's exact length, mod 97 = 1.
//!
//! Accepted in the electronic form (`DE89370400440532013000`) and the printed form
//! (groups of four separated by single spaces). Upper case only, as the standard
//! writes them; the scanner calls [`find`] when a digit follows two capitals at the
//! start of a word.

use super::checks::{iban_mod97, is_word};

/// The IBAN length for a country (SWIFT IBAN registry), or `None` if that country
/// does not use IBANs.
fn country_len(a: u8, b: u8) -> Option<usize> {
    let n = match [a, b] {
        [b'N', b'O'] => 15,
        [b'B', b'E'] => 16,
        [b'D', b'K'] | [b'F', b'I' | b'K' | b'O'] | [b'G', b'L'] | [b'N', b'L'] => 18,
        [b'S', b'D'] => 18,
        [b'M', b'K'] | [b'S', b'I'] => 19,
        [b'A', b'T'] | [b'B', b'A'] | [b'E', b'E'] | [b'K', b'Z'] | [b'L', b'T' | b'U'] => 20,
        [b'M', b'N'] | [b'X', b'K'] => 20,
        [b'C', b'H'] | [b'H', b'R'] | [b'L', b'I' | b'V'] => 21,
        [b'B', b'G' | b'H'] | [b'C', b'R'] | [b'D', b'E'] | [b'G', b'B' | b'E'] => 22,
        [b'I', b'E'] | [b'M', b'E'] | [b'R', b'S'] | [b'V', b'A'] => 22,
        [b'A', b'E'] | [b'G', b'I'] | [b'I', b'L' | b'Q'] | [b'O', b'M'] | [b'S', b'O'] => 23,
        [b'T', b'L'] => 23,
        [b'A', b'D'] | [b'C', b'Z'] | [b'E', b'S'] | [b'M', b'D'] | [b'P', b'K'] => 24,
        [b'R', b'O'] | [b'S', b'A' | b'E' | b'K'] | [b'T', b'N'] | [b'V', b'G'] => 24,
        [b'L', b'Y'] | [b'P', b'T'] | [b'S', b'T'] => 25,
        [b'I', b'S'] | [b'T', b'R'] => 26,
        [b'B', b'I'] | [b'D', b'J'] | [b'F', b'R'] | [b'G', b'R'] | [b'I', b'T'] => 27,
        [b'M', b'C' | b'R'] | [b'S', b'M'] => 27,
        [b'A', b'L' | b'Z'] | [b'B', b'Y'] | [b'C', b'Y'] | [b'D', b'O'] | [b'G', b'T'] => 28,
        [b'H', b'U'] | [b'L', b'B'] | [b'N', b'I'] | [b'P', b'L'] | [b'S', b'V'] => 28,
        [b'B', b'R'] | [b'E', b'G'] | [b'P', b'S'] | [b'Q', b'A'] | [b'U', b'A'] => 29,
        [b'J', b'O'] | [b'K', b'W'] | [b'M', b'U'] | [b'Y', b'E'] => 30,
        [b'M', b'T'] | [b'S', b'C'] => 31,
        [b'L', b'C'] => 32,
        [b'R', b'U'] => 33,
        _ => return None,
    };
    Some(n)
}

/// The IBAN starting at `s` (two capitals, then digits), if valid: its end.
pub(crate) fn find(b: &[u8], s: usize) -> Option<usize> {
    let len = country_len(b[s], *b.get(s + 1)?)?;
    let mut buf = [0u8; 34];
    let mut k = 0;
    let mut j = s;
    let mut spaces = 0;
    while k < len {
        let c = *b.get(j)?;
        if c.is_ascii_uppercase() || c.is_ascii_digit() {
            buf[k] = c;
            k += 1;
            j += 1;
        } else if c == b' '
            && k % 4 == 0
            && k > 0
            && b.get(j + 1).is_some_and(|x| x.is_ascii_alphanumeric())
        {
            spaces += 1;
            j += 1;
        } else {
            return None;
        }
    }
    // Either no spaces, or one before every group of four.
    if spaces != 0 && spaces != (len - 1) / 4 {
        return None;
    }
    if b.get(j).is_some_and(|&c| is_word(c)) {
        return None;
    }
    let check = &buf[2..4];
    if !check.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let cd = u32::from(check[0] - b'0') * 10 + u32::from(check[1] - b'0');
    if !(2..=98).contains(&cd) || !iban_mod97(&buf[..len]) {
        return None;
    }
    Some(j)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Option<&str> {
        find(text.as_bytes(), 0).map(|e| &text[..e])
    }

    #[test]
    fn valid_ibans() {
        assert_eq!(
            at("DE89370400440532013000 ok"),
            Some("DE89370400440532013000")
        );
        assert_eq!(
            at("DE89 3704 0044 0532 0130 00."),
            Some("DE89 3704 0044 0532 0130 00")
        );
        assert_eq!(
            at("GB29 NWBK 6016 1331 9268 19"),
            Some("GB29 NWBK 6016 1331 9268 19")
        );
        assert_eq!(at("NO9386011117947"), Some("NO9386011117947"));
    }

    #[test]
    fn invalid_ibans() {
        assert_eq!(at("DE88370400440532013000"), None); // check digits
        assert_eq!(at("DE8937040044053201300"), None); // too short
        assert_eq!(at("DE893704004405320130001"), None); // too long
        assert_eq!(at("ZZ89370400440532013000"), None); // no such country
        assert_eq!(at("DE89 3704 00440532013000"), None); // ragged spacing
        assert_eq!(at("de89370400440532013000"), None);
    }
}
