//! The event's timestamps on the wire: RFC 3339 in UTC with `Z`, fractional
//! seconds only as needed (3, 6 or 9 digits), exactly as chrono's `Serialize`
//! writes them, but written digit by digit instead of through `core::fmt`
//! (a quarter of an event's serialisation time). Years outside 0..=9999 and
//! leap seconds, which no valid event carries, are left to chrono.

use chrono::{DateTime, Datelike as _, Timelike as _, Utc};
use serde::{Serialize as _, Serializer};

/// Longest text written here: `9999-12-31T23:59:59.999999999Z`.
const MAX_LEN: usize = 30;

/// Serialises a timestamp (`#[serde(serialize_with)]`).
pub(crate) fn serialize<S: Serializer>(
    time: &DateTime<Utc>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let mut buffer = [0u8; MAX_LEN];
    match write(time, &mut buffer) {
        // Only ASCII digits and separators are written.
        Some(len) => match std::str::from_utf8(&buffer[..len]) {
            Ok(text) => serializer.serialize_str(text),
            Err(_) => time.serialize(serializer),
        },
        None => time.serialize(serializer),
    }
}

/// Serialises an optional timestamp (`None` is skipped by the field).
pub(crate) fn serialize_option<S: Serializer>(
    time: &Option<DateTime<Utc>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match time {
        Some(time) => serialize(time, serializer),
        None => serializer.serialize_none(),
    }
}

/// Writes `time` into `buffer`; its length, or `None` for what chrono
/// writes differently (a year outside 0..=9999, a leap second).
fn write(time: &DateTime<Utc>, buffer: &mut [u8; MAX_LEN]) -> Option<usize> {
    let year = u32::try_from(time.year())
        .ok()
        .filter(|year| *year <= 9999)?;
    let nanos = time.nanosecond();
    if nanos >= 1_000_000_000 {
        return None;
    }
    let mut out = Writer { buffer, at: 0 };
    out.digits(year, 4);
    out.byte(b'-');
    out.digits(time.month(), 2);
    out.byte(b'-');
    out.digits(time.day(), 2);
    out.byte(b'T');
    out.digits(time.hour(), 2);
    out.byte(b':');
    out.digits(time.minute(), 2);
    out.byte(b':');
    out.digits(time.second(), 2);
    if nanos != 0 {
        out.byte(b'.');
        if nanos.is_multiple_of(1_000_000) {
            out.digits(nanos / 1_000_000, 3);
        } else if nanos.is_multiple_of(1_000) {
            out.digits(nanos / 1_000, 6);
        } else {
            out.digits(nanos, 9);
        }
    }
    out.byte(b'Z');
    Some(out.at)
}

/// Appends to a fixed buffer that is long enough for every text written.
struct Writer<'a> {
    buffer: &'a mut [u8; MAX_LEN],
    at: usize,
}

impl Writer<'_> {
    fn byte(&mut self, byte: u8) {
        self.buffer[self.at] = byte;
        self.at += 1;
    }

    /// The lowest `count` decimal digits of `value`, zero-padded.
    fn digits(&mut self, mut value: u32, count: usize) {
        for place in (self.at..self.at + count).rev() {
            // A remainder of 10: one digit.
            #[allow(clippy::cast_possible_truncation)]
            let digit = (value % 10) as u8;
            self.buffer[place] = b'0' + digit;
            value /= 10;
        }
        self.at += count;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// chrono's own text of a timestamp, through serde_json.
    fn chrono_text(time: &DateTime<Utc>) -> String {
        serde_json::to_string(time).unwrap()
    }

    fn our_text(time: &DateTime<Utc>) -> String {
        let mut json = Vec::new();
        serialize(time, &mut serde_json::Serializer::new(&mut json)).unwrap();
        String::from_utf8(json).unwrap()
    }

    #[test]
    fn timestamps_are_written_as_chrono_writes_them() {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut checked = 0;
        for _ in 0..20_000 {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            // Seconds from 1970 to about 2600, and every kind of fraction.
            let seconds = i64::try_from((state >> 24) % 20_000_000_000).unwrap();
            let nanos = match state % 4 {
                0 => 0,
                1 => u32::try_from((state >> 8) % 1000).unwrap() * 1_000_000,
                2 => u32::try_from((state >> 8) % 1_000_000).unwrap() * 1_000,
                _ => u32::try_from((state >> 8) % 1_000_000_000).unwrap(),
            };
            let time = DateTime::from_timestamp(seconds, nanos).unwrap();
            assert_eq!(our_text(&time), chrono_text(&time));
            checked += 1;
        }
        assert_eq!(checked, 20_000);
        for (seconds, nanos) in [
            (0, 0),
            (0, 1),
            (1_795_749_305, 250_000_000),
            (1_795_749_305, 250_001_000),
            // 0000-01-01, 9999-12-31T23:59:59.999999999 and beyond.
            (-62_167_219_200, 0),
            (253_402_300_799, 999_999_999),
            (253_402_300_800, 0),
            (-62_167_219_201, 0),
            // A leap second.
            (1_483_228_799, 1_500_000_000),
        ] {
            let time = DateTime::from_timestamp(seconds, nanos).unwrap();
            assert_eq!(our_text(&time), chrono_text(&time), "{seconds}.{nanos}");
        }
    }

    #[test]
    fn the_common_range_is_written_here_and_the_rest_is_left_to_chrono() {
        let mut buffer = [0u8; MAX_LEN];
        let time = DateTime::from_timestamp(253_402_300_799, 999_999_999).unwrap();
        assert_eq!(write(&time, &mut buffer), Some(MAX_LEN));
        let beyond = DateTime::from_timestamp(253_402_300_800, 0).unwrap();
        assert_eq!(write(&beyond, &mut buffer), None);
        let leap = DateTime::from_timestamp(1_483_228_799, 1_500_000_000).unwrap();
        assert_eq!(write(&leap, &mut buffer), None);
    }
}
