//! Calendar days of flags (`--day`, `--from`, `--to`): local days in
//! Kazakhstan's time zone, where the detections of a simulated day fall and
//! where analysts count days.

use chrono::{NaiveDate, Utc};
use chrono_tz::Tz;

/// The time zone of day flags and of a simulated day's detections (the whole
/// country has used UTC+05:00 since 2024-03-01).
pub const DAY_TIMEZONE: Tz = chrono_tz::Asia::Almaty;

/// Today in [`DAY_TIMEZONE`].
pub fn today() -> NaiveDate {
    Utc::now().with_timezone(&DAY_TIMEZONE).date_naive()
}

/// Yesterday in [`DAY_TIMEZONE`].
pub fn yesterday() -> NaiveDate {
    let today = today();
    today.pred_opt().unwrap_or(today)
}

/// Parses a date flag: `YYYY-MM-DD`, `today` or `yesterday` (Asia/Almaty).
///
/// # Errors
/// Any other text, with what was expected.
pub fn parse_day(text: &str) -> Result<NaiveDate, String> {
    match text.trim() {
        "today" => Ok(today()),
        "yesterday" => today()
            .pred_opt()
            .ok_or_else(|| "date out of range".to_string()),
        other => NaiveDate::parse_from_str(other, "%Y-%m-%d").map_err(|error| {
            format!("expected YYYY-MM-DD, today or yesterday, got {other:?}: {error}")
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_parse_from_iso_and_relative_words() {
        assert_eq!(
            parse_day("2025-03-14"),
            Ok(NaiveDate::from_ymd_opt(2025, 3, 14).unwrap())
        );
        assert!(parse_day("14.03.2025").is_err());
        assert!(parse_day("2025-02-30").is_err());
        let today = parse_day("today").unwrap();
        assert_eq!(parse_day("yesterday").unwrap().succ_opt(), Some(today));
        assert_eq!(yesterday().succ_opt(), Some(today));
    }
}
