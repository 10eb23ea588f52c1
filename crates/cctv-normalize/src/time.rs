//! Time parsing shared by the decoders: RFC 3339 with an offset, and epoch
//! numbers whose unit is told apart by magnitude.

use chrono::{DateTime, Utc};

/// Parses RFC 3339 text with an explicit offset (`Z` or `+05:00`) to UTC.
pub fn parse_rfc3339(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text.trim())
        .ok()
        .map(|time| time.with_timezone(&Utc))
}

/// Converts an epoch number to UTC, telling seconds, milliseconds,
/// microseconds and nanoseconds apart by magnitude.
///
/// Thresholds: below 1e11 is seconds (up to year 5138), below 1e14
/// milliseconds, below 1e17 microseconds, else nanoseconds. Negative, NaN and
/// infinite values are refused.
pub fn epoch_to_utc(value: f64) -> Option<DateTime<Utc>> {
    if !value.is_finite() || value < 0.0 {
        return None;
    }
    let millis = if value < 1e11 {
        value * 1e3
    } else if value < 1e14 {
        value
    } else if value < 1e17 {
        value / 1e3
    } else {
        value / 1e6
    };
    if millis > 1e15 {
        return None;
    }
    // The range check above keeps the cast exact enough and in range.
    #[allow(clippy::cast_possible_truncation)]
    DateTime::from_timestamp_millis(millis.round() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_needs_an_offset_and_converts_to_utc() {
        let time = parse_rfc3339("2026-11-27T08:15:05.250+05:00").unwrap();
        assert_eq!(time.to_rfc3339(), "2026-11-27T03:15:05.250+00:00");
        assert!(parse_rfc3339("2026-11-27T08:15:05").is_none());
        assert!(parse_rfc3339("yesterday").is_none());
    }

    #[test]
    fn epoch_units_are_told_apart_by_magnitude() {
        let expected = DateTime::from_timestamp_millis(1_795_749_305_250).unwrap();
        assert_eq!(epoch_to_utc(1_795_749_305.25), Some(expected));
        assert_eq!(epoch_to_utc(1_795_749_305_250.0), Some(expected));
        assert_eq!(epoch_to_utc(1_795_749_305_250_000.0), Some(expected));
        assert_eq!(epoch_to_utc(1_795_749_305_250_000_000.0), Some(expected));
        assert_eq!(epoch_to_utc(-1.0), None);
        assert_eq!(epoch_to_utc(f64::NAN), None);
        assert_eq!(epoch_to_utc(1e300), None);
    }
}
