//! UTC calendar arithmetic: printing Unix timestamps and parsing dates for `--since`.
//!
//! Hand-rolled (Howard Hinnant's `days_from_civil` / `civil_from_days`) so the CLI
//! needs no date crate for the handful of conversions it makes. Everything here is
//! UTC; ironctl never consults the local time zone, so its output is the same on
//! every host (and in every test).

/// Days since 1970-01-01 of a proleptic Gregorian date.
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = i64::from((month + 9) % 12); // March = 0
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date (year, month, day) of a day count since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    // Both casts are of values the algorithm bounds to 1..=31 and 1..=12.
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// `2026-11-01 12:00:00 UTC`, for human output.
pub fn format_utc(unix_secs: u64) -> String {
    let secs = unix_secs as i64;
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let tod = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02} {:02}:{:02}:{:02} UTC",
        tod / 3600,
        tod / 60 % 60,
        tod % 60
    )
}

/// `2026-11-01T12:00:00.123Z`, for log timestamps.
pub fn format_rfc3339_ms(unix_ms: u64) -> String {
    let ms = unix_ms as i64;
    let secs = ms.div_euclid(1000);
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let tod = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        tod / 3600,
        tod / 60 % 60,
        tod % 60,
        ms.rem_euclid(1000)
    )
}

/// Parses a fixed-width run of ASCII digits.
fn digits(s: &[u8]) -> Option<u32> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0u32, |acc, b| {
        acc.checked_mul(10)?.checked_add(u32::from(b - b'0'))
    })
}

/// `YYYY-MM-DD` as days since 1970-01-01, checking the calendar.
fn parse_ymd(s: &[u8]) -> Option<i64> {
    if s.len() != 10 || s[4] != b'-' || s[7] != b'-' {
        return None;
    }
    let year = i64::from(digits(&s[0..4])?);
    let month = digits(&s[5..7])?;
    let day = digits(&s[8..10])?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    Some(days_from_civil(year, month, day))
}

/// A calendar date `YYYY-MM-DD`, as Unix seconds of its UTC midnight.
pub fn parse_date(s: &str) -> Option<i64> {
    parse_ymd(s.as_bytes()).map(|days| days * 86_400)
}

/// An RFC 3339 timestamp (`2026-11-01T12:30:00Z`, `2026-11-01T14:30:00.5+02:00`;
/// `t`, `z` and a space separator are accepted too) as Unix seconds, fraction
/// truncated.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let days = parse_ymd(&b[..10])?;
    let (h, m, sec) = (
        digits(&b[11..13])?,
        digits(&b[14..16])?,
        digits(&b[17..19])?,
    );
    if h > 23 || m > 59 || sec > 60 {
        return None;
    }
    let mut rest = &b[19..];
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        rest = &frac[n..];
    }
    let offset = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), oh1, oh2, b':', om1, om2] => {
            let (oh, om) = (digits(&[*oh1, *oh2])?, digits(&[*om1, *om2])?);
            if oh > 23 || om > 59 {
                return None;
            }
            let off = i64::from(oh * 3600 + om * 60);
            if *sign == b'-' { -off } else { off }
        }
        _ => return None,
    };
    Some(days * 86_400 + i64::from(h * 3600 + m * 60 + sec) - offset)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a panic is the failure report
mod tests {
    use super::*;

    #[test]
    fn civil_roundtrip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        for days in (-800_000..800_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn formats() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(1_793_534_400), "2026-11-01 12:00:00 UTC");
        assert_eq!(
            format_rfc3339_ms(1_793_534_400_123),
            "2026-11-01T12:00:00.123Z"
        );
    }

    #[test]
    fn parses_dates_and_timestamps() {
        assert_eq!(parse_date("2026-11-01"), Some(1_793_491_200));
        assert_eq!(parse_date("2024-02-29"), Some(1_709_164_800));
        assert_eq!(parse_date("2025-02-29"), None);
        assert_eq!(parse_date("2026-13-01"), None);
        assert_eq!(parse_date("2026-1-01"), None);
        assert_eq!(parse_rfc3339("2026-11-01T12:00:00Z"), Some(1_793_534_400));
        assert_eq!(parse_rfc3339("2026-11-01 12:00:00z"), Some(1_793_534_400));
        assert_eq!(
            parse_rfc3339("2026-11-01T14:00:00.999+02:00"),
            Some(1_793_534_400)
        );
        assert_eq!(
            parse_rfc3339("2026-11-01T07:30:00-04:30"),
            Some(1_793_534_400)
        );
        assert_eq!(parse_rfc3339("2026-11-01T12:00:00"), None);
        assert_eq!(parse_rfc3339("2026-11-01T24:00:00Z"), None);
        assert_eq!(parse_rfc3339("2026-11-01T12:00:00.Z"), None);
        assert_eq!(parse_rfc3339("2026-11-01T12:00:00+0200"), None);
    }
}
