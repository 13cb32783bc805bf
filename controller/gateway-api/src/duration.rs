//! The Gateway API `Duration` format (GEP-2257): one to four `<number><unit>` pairs,
//! numbers of one to five digits, units `h`, `m`, `s` and `ms`, each unit at most once
//! and from the largest to the smallest (`1h30m`, `1s500ms`, `0s`). Hand-written: the
//! CRDs carry it as a string with a pattern.

use std::time::Duration;

/// Why a duration string is not a Gateway API duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("is empty")]
    Empty,
    #[error("has more than 4 parts")]
    TooManyParts,
    #[error("needs a number of 1 to 5 digits before each unit")]
    BadNumber,
    #[error("has an unknown unit (use h, m, s or ms)")]
    BadUnit,
    #[error("must give each unit at most once, from h down to ms")]
    UnitOrder,
}

/// Parses a Gateway API duration such as `1h2m3s450ms`.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    let bytes = text.as_bytes();
    let mut total = Duration::ZERO;
    let mut parts = 0;
    // Rank of the last unit seen: h=4, m=3, s=2, ms=1; each later unit must be smaller.
    let mut last_rank = u8::MAX;
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        let digits = &text[start..i];
        if digits.is_empty() || digits.len() > 5 {
            return Err(DurationError::BadNumber);
        }
        let number: u64 = digits.parse().map_err(|_| DurationError::BadNumber)?;
        let (rank, unit, len) = match &bytes[i..] {
            [b'm', b's', ..] => (1, Duration::from_millis(1), 2),
            [b'h', ..] => (4, Duration::from_secs(3600), 1),
            [b'm', ..] => (3, Duration::from_secs(60), 1),
            [b's', ..] => (2, Duration::from_secs(1), 1),
            _ => return Err(DurationError::BadUnit),
        };
        if rank >= last_rank {
            return Err(DurationError::UnitOrder);
        }
        last_rank = rank;
        i += len;
        parts += 1;
        if parts > 4 {
            return Err(DurationError::TooManyParts);
        }
        total += unit * u32::try_from(number).map_err(|_| DurationError::BadNumber)?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid() {
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1s500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("99999ms"), Ok(Duration::from_millis(99999)));
        assert_eq!(parse_duration("1h2m3s4ms"), Ok(Duration::from_millis(3_723_004)));
    }

    #[test]
    fn invalid() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert_eq!(parse_duration("1"), Err(DurationError::BadUnit));
        assert_eq!(parse_duration("s"), Err(DurationError::BadNumber));
        assert_eq!(parse_duration("100000s"), Err(DurationError::BadNumber));
        assert_eq!(parse_duration("1d"), Err(DurationError::BadUnit));
        assert_eq!(parse_duration("1.5s"), Err(DurationError::BadUnit));
        assert_eq!(parse_duration("1s1h"), Err(DurationError::UnitOrder));
        assert_eq!(parse_duration("1s1s"), Err(DurationError::UnitOrder));
        assert_eq!(parse_duration("-1s"), Err(DurationError::BadNumber));
        assert_eq!(parse_duration(" 1s"), Err(DurationError::BadNumber));
    }
}
