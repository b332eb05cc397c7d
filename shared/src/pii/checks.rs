//! Check digits and encodings the validators rely on: Luhn (cards), ISO 7064
//! mod 97-10 (IBAN), CRC-32 + base62 (GitHub token checksums), base64url (JWT
//! headers). All work on the stack; none allocates.

/// ASCII letter, digit or `_`: what makes a byte part of a "word".
#[inline]
pub(crate) const fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Luhn check over the ASCII digits of `digits` (other bytes must not be there).
pub(crate) fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d - b'0');
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum % 10 == 0
}

/// ISO 13616 check: move the first four characters to the end, letters become
/// 10..=35, and the number mod 97 must be 1. `iban` is upper-case alphanumeric.
pub(crate) fn iban_mod97(iban: &[u8]) -> bool {
    if iban.len() < 5 {
        return false;
    }
    let mut rem = 0u32;
    for &c in iban[4..].iter().chain(&iban[..4]) {
        match c {
            b'0'..=b'9' => rem = (rem * 10 + u32::from(c - b'0')) % 97,
            b'A'..=b'Z' => rem = (rem * 100 + u32::from(c - b'A') + 10) % 97,
            _ => return false,
        }
    }
    rem == 1
}

const fn crc32_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

static CRC32: [u32; 256] = crc32_table();

/// CRC-32 (IEEE 802.3, as zlib).
pub(crate) fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c = CRC32[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

/// `0-9A-Za-z`, the alphabet of GitHub's token checksums.
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// `v` in base62, left-padded with `0` to 6 digits (a u32 needs at most 6).
pub(crate) fn base62_6(mut v: u32) -> [u8; 6] {
    let mut out = [b'0'; 6];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(v % 62) as usize];
        v /= 62;
    }
    out
}

/// GitHub's classic token checksum: the last 6 characters are the base62 CRC-32 of
/// the 30 random characters before them.
pub(crate) fn github_checksum_ok(body36: &[u8]) -> bool {
    body36.len() == 36 && base62_6(crc32(&body36[..30])) == body36[30..]
}

#[inline]
fn b64url_value(c: u8) -> Option<u32> {
    Some(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'-' | b'+' => 62,
        b'_' | b'/' => 63,
        _ => return None,
    } as u32)
}

/// Decodes unpadded base64url (standard alphabet tolerated) into `out`; returns the
/// number of bytes written, or `None` for bad input or a too-small `out`.
pub(crate) fn b64url_decode(input: &[u8], out: &mut [u8]) -> Option<usize> {
    let mut acc = 0u32;
    let mut bits = 0u32;
    let mut n = 0;
    for &c in input {
        if c == b'=' {
            break;
        }
        acc = (acc << 6) | b64url_value(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            *out.get_mut(n)? = (acc >> bits) as u8;
            n += 1;
            acc &= (1 << bits) - 1;
        }
    }
    Some(n)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn luhn_known_values() {
        assert!(luhn(b"4111111111111111"));
        assert!(luhn(b"378282246310005"));
        assert!(!luhn(b"4111111111111112"));
    }

    #[test]
    fn iban_known_values() {
        assert!(iban_mod97(b"DE89370400440532013000"));
        assert!(iban_mod97(b"GB29NWBK60161331926819"));
        assert!(!iban_mod97(b"GB28NWBK60161331926819"));
    }

    #[test]
    fn crc32_matches_zlib() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn base62_pads() {
        assert_eq!(&base62_6(0), b"000000");
        assert_eq!(&base62_6(61), b"00000z");
        assert_eq!(&base62_6(62), b"000010");
    }

    #[test]
    fn base64url() {
        let mut out = [0u8; 64];
        let n = b64url_decode(b"eyJhbGciOiJIUzI1NiJ9", &mut out).unwrap();
        assert_eq!(&out[..n], br#"{"alg":"HS256"}"#);
        assert!(b64url_decode(b"ey J", &mut out).is_none());
        assert!(b64url_decode(b"eyJhbGciOiJIUzI1NiJ9", &mut out[..3]).is_none());
    }
}
