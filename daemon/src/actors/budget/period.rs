//! Budget periods on the UTC calendar: day, ISO week (Monday 00:00 UTC), month,
//! and `total` (one period that never ends).
//!
//! Pure integer arithmetic on Unix seconds, no time zone database and no clock:
//! callers pass "now" from the injected [`super::Clock`], so tests cross
//! boundaries deterministically.

use ironcage_shared::protocol::BudgetPeriod;

const DAY: u64 = 86_400;

/// All periods, in the order the ledger stores its windows.
pub const ALL: [BudgetPeriod; 4] = [
    BudgetPeriod::Day,
    BudgetPeriod::Week,
    BudgetPeriod::Month,
    BudgetPeriod::Total,
];

/// Index of `p` in [`ALL`].
pub fn index(p: BudgetPeriod) -> usize {
    match p {
        BudgetPeriod::Day => 0,
        BudgetPeriod::Week => 1,
        BudgetPeriod::Month => 2,
        BudgetPeriod::Total => 3,
    }
}

/// Unix seconds at which the period containing `now_s` started (0 for `total`).
pub fn start(p: BudgetPeriod, now_s: u64) -> u64 {
    let days = now_s / DAY;
    match p {
        BudgetPeriod::Day => days * DAY,
        // 1970-01-01 was a Thursday: (days + 3) % 7 is 0 on Mondays.
        BudgetPeriod::Week => days.saturating_sub((days + 3) % 7) * DAY,
        BudgetPeriod::Month => {
            let (y, m, _) = civil_from_days(days as i64);
            days_from_civil(y, m, 1) as u64 * DAY
        }
        BudgetPeriod::Total => 0,
    }
}

/// Unix seconds at which the period that started at `start_s` ends (`None` for `total`).
pub fn end(p: BudgetPeriod, start_s: u64) -> Option<u64> {
    match p {
        BudgetPeriod::Day => Some(start_s + DAY),
        BudgetPeriod::Week => Some(start_s + 7 * DAY),
        BudgetPeriod::Month => {
            let (y, m, _) = civil_from_days((start_s / DAY) as i64);
            let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            Some(days_from_civil(y, m, 1) as u64 * DAY)
        }
        BudgetPeriod::Total => None,
    }
}

/// The earliest instant after `now_s` at which any period rolls over.
pub fn next_boundary(now_s: u64) -> u64 {
    [BudgetPeriod::Day, BudgetPeriod::Week, BudgetPeriod::Month]
        .into_iter()
        .filter_map(|p| end(p, start(p, now_s)))
        .min()
        .unwrap_or(u64::MAX)
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a Unix time, for alert messages.
pub fn rfc3339(s: u64) -> String {
    let (y, m, d) = civil_from_days((s / DAY) as i64);
    let r = s % DAY;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        r / 3600,
        r / 60 % 60,
        r % 60
    )
}

/// Days since 1970-01-01 -> (year, month 1-12, day 1-31), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month 1-12, day) -> days since 1970-01-01 (Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use BudgetPeriod::*;

    // Reference values from `date -u -d YYYY-MM-DD +%s`.
    const JAN_1_2024_MON: u64 = 1_704_067_200;
    const FEB_29_2024_THU: u64 = 1_709_164_800;
    const MAR_1_2024_FRI: u64 = 1_709_251_200;
    const DEC_29_2025_MON: u64 = 1_766_966_400;
    const JAN_1_2026_THU: u64 = 1_767_225_600;

    #[test]
    fn civil_roundtrip() {
        for days in [-1_000_000i64, -1, 0, 1, 11_016, 19_783, 20_454, 2_000_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(
            civil_from_days((FEB_29_2024_THU / DAY) as i64),
            (2024, 2, 29)
        );
    }

    #[test]
    fn days() {
        assert_eq!(start(Day, FEB_29_2024_THU + 86_399), FEB_29_2024_THU);
        assert_eq!(start(Day, MAR_1_2024_FRI), MAR_1_2024_FRI);
        assert_eq!(end(Day, FEB_29_2024_THU), Some(MAR_1_2024_FRI));
    }

    #[test]
    fn iso_weeks_start_monday_utc() {
        assert_eq!(start(Week, JAN_1_2024_MON), JAN_1_2024_MON);
        assert_eq!(start(Week, JAN_1_2024_MON - 1), JAN_1_2024_MON - 7 * DAY);
        assert_eq!(start(Week, JAN_1_2024_MON + 7 * DAY - 1), JAN_1_2024_MON);
        // A week spanning a year boundary starts in the old year.
        assert_eq!(start(Week, JAN_1_2026_THU + 3600), DEC_29_2025_MON);
        assert_eq!(end(Week, DEC_29_2025_MON), Some(DEC_29_2025_MON + 7 * DAY));
        // 1970-01-01 (Thursday) belongs to a week that began before the epoch:
        // clamped to 0 rather than underflowing.
        assert_eq!(start(Week, DAY), 0);
        assert_eq!(start(Week, 4 * DAY), 4 * DAY, "1970-01-05 was a Monday");
    }

    #[test]
    fn months_including_leap_february_and_december() {
        assert_eq!(
            start(Month, FEB_29_2024_THU + 86_399),
            1_706_745_600,
            "2024-02-01"
        );
        assert_eq!(end(Month, 1_706_745_600), Some(MAR_1_2024_FRI));
        assert_eq!(start(Month, MAR_1_2024_FRI), MAR_1_2024_FRI);
        assert_eq!(
            start(Month, JAN_1_2026_THU - 1),
            1_764_547_200,
            "2025-12-01"
        );
        assert_eq!(end(Month, 1_764_547_200), Some(JAN_1_2026_THU));
    }

    #[test]
    fn total_never_ends_and_boundaries() {
        assert_eq!(start(Total, FEB_29_2024_THU), 0);
        assert_eq!(end(Total, 0), None);
        assert_eq!(next_boundary(FEB_29_2024_THU + 5), MAR_1_2024_FRI);
        assert_eq!(next_boundary(DEC_29_2025_MON + 3 * DAY - 1), JAN_1_2026_THU);
        assert_eq!(rfc3339(FEB_29_2024_THU + 3661), "2024-02-29T01:01:01Z");
    }
}
