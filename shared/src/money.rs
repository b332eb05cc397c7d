//! Money as integer micro-dollars.
//!
//! Every amount the daemon stores, compares or sends is a [`Micros`]: an `i64`
//! count of millionths of a US dollar. Floats appear only at the edges (parsing a
//! price table or a `--usd 12.5` flag, printing), and are converted with explicit
//! rounding there, so a sum of many small calls never drifts.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::iter::Sum;
use std::ops::{Add, AddAssign, Sub, SubAssign};

/// Micro-dollars (1 USD = 1,000,000).
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Micros(pub i64);

/// Why an amount could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("{0:?} is not an amount in USD; write it like 12.50 (at most 6 decimals)")]
    Invalid(String),
    #[error("{0:?} is negative; amounts must be zero or more")]
    Negative(String),
    #[error("{0:?} is too large")]
    Overflow(String),
}

impl Micros {
    pub const ZERO: Micros = Micros(0);
    pub const PER_USD: i64 = 1_000_000;

    /// Parses a decimal USD string ("12", "0.5", "3.141592") exactly, without floats.
    pub fn parse_usd(s: &str) -> Result<Self, MoneyError> {
        let t = s.trim().trim_start_matches('$');
        if t.starts_with('-') {
            return Err(MoneyError::Negative(s.to_owned()));
        }
        let (int, frac) = match t.split_once('.') {
            Some((i, f)) => (i, f),
            None => (t, ""),
        };
        let digits = |x: &str| x.bytes().all(|b| b.is_ascii_digit());
        if (int.is_empty() && frac.is_empty()) || !digits(int) || !digits(frac) || frac.len() > 6 {
            return Err(MoneyError::Invalid(s.to_owned()));
        }
        let int: i64 = if int.is_empty() {
            0
        } else {
            int.parse()
                .map_err(|_| MoneyError::Overflow(s.to_owned()))?
        };
        let mut f: i64 = if frac.is_empty() {
            0
        } else {
            frac.parse().unwrap_or(0)
        };
        for _ in frac.len()..6 {
            f *= 10;
        }
        int.checked_mul(Self::PER_USD)
            .and_then(|v| v.checked_add(f))
            .map(Micros)
            .ok_or_else(|| MoneyError::Overflow(s.to_owned()))
    }

    /// Converts a configured float amount (TOML has no decimal type), rounding to
    /// the nearest micro-dollar.
    pub fn from_usd_f64(usd: f64) -> Result<Self, MoneyError> {
        if !usd.is_finite() {
            return Err(MoneyError::Invalid(usd.to_string()));
        }
        if usd < 0.0 {
            return Err(MoneyError::Negative(usd.to_string()));
        }
        let v = (usd * Self::PER_USD as f64).round();
        if v > i64::MAX as f64 {
            return Err(MoneyError::Overflow(usd.to_string()));
        }
        Ok(Micros(v as i64))
    }

    pub fn saturating_sub(self, o: Micros) -> Micros {
        Micros(self.0.saturating_sub(o.0))
    }

    /// Dollars as a float, for display and JSON only.
    pub fn as_usd_f64(self) -> f64 {
        self.0 as f64 / Self::PER_USD as f64
    }
}

impl fmt::Display for Micros {
    /// `$12.345678`, trailing zeros trimmed to at least cents.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let int = abs / 1_000_000;
        let mut frac = format!("{:06}", abs % 1_000_000);
        while frac.len() > 2 && frac.ends_with('0') {
            frac.pop();
        }
        write!(f, "{sign}${int}.{frac}")
    }
}

impl fmt::Debug for Micros {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Micros({})", self.0)
    }
}

impl Add for Micros {
    type Output = Micros;
    fn add(self, o: Micros) -> Micros {
        Micros(self.0.saturating_add(o.0))
    }
}
impl Sub for Micros {
    type Output = Micros;
    fn sub(self, o: Micros) -> Micros {
        Micros(self.0.saturating_sub(o.0))
    }
}
impl AddAssign for Micros {
    fn add_assign(&mut self, o: Micros) {
        *self = *self + o;
    }
}
impl SubAssign for Micros {
    fn sub_assign(&mut self, o: Micros) {
        *self = *self - o;
    }
}
impl Sum for Micros {
    fn sum<I: Iterator<Item = Micros>>(iter: I) -> Micros {
        iter.fold(Micros::ZERO, Add::add)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exactly() {
        assert_eq!(Micros::parse_usd("12").unwrap(), Micros(12_000_000));
        assert_eq!(Micros::parse_usd("0.5").unwrap(), Micros(500_000));
        assert_eq!(Micros::parse_usd("$3.141592").unwrap(), Micros(3_141_592));
        assert_eq!(Micros::parse_usd(".25").unwrap(), Micros(250_000));
        assert!(matches!(
            Micros::parse_usd("1.0000001"),
            Err(MoneyError::Invalid(_))
        ));
        assert!(matches!(
            Micros::parse_usd("-1"),
            Err(MoneyError::Negative(_))
        ));
        assert!(matches!(
            Micros::parse_usd("abc"),
            Err(MoneyError::Invalid(_))
        ));
        assert!(matches!(
            Micros::parse_usd("."),
            Err(MoneyError::Invalid(_))
        ));
        assert!(matches!(
            Micros::parse_usd("99999999999999999"),
            Err(MoneyError::Overflow(_))
        ));
    }

    #[test]
    fn displays_as_dollars() {
        assert_eq!(Micros(12_000_000).to_string(), "$12.00");
        assert_eq!(Micros(1_234_567).to_string(), "$1.234567");
        assert_eq!(Micros(500).to_string(), "$0.0005");
        assert_eq!(Micros(-1_500_000).to_string(), "-$1.50");
    }

    #[test]
    fn float_edges_round() {
        assert_eq!(Micros::from_usd_f64(0.1).unwrap(), Micros(100_000));
        assert_eq!(Micros::from_usd_f64(5.0).unwrap(), Micros(5_000_000));
        assert!(Micros::from_usd_f64(f64::NAN).is_err());
        assert!(Micros::from_usd_f64(-0.5).is_err());
    }
}
