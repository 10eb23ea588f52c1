//! Limits on every input: sizes, lengths, ranges and times.

use chrono::TimeDelta;

/// Input limits applied by the normaliser. Each breach is a typed rejection.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest payload accepted, in bytes.
    pub max_payload_bytes: usize,
    /// Longest string field accepted (camera id, plate, ids, urls), in bytes.
    pub max_string_bytes: usize,
    /// Most offences one message may carry.
    pub max_events_per_message: usize,
    /// Deepest nesting of JSON objects and arrays accepted.
    pub max_json_depth: usize,
    /// Deepest nesting of XML elements accepted.
    pub max_xml_depth: usize,
    /// How far in the future (against `now`) a detection time may be.
    pub max_future: TimeDelta,
    /// How far in the past (against `now`) a detection time may be.
    pub max_past: TimeDelta,
    /// Device-versus-receipt difference above which an event is flagged `clock_skew`.
    pub max_clock_skew: TimeDelta,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_payload_bytes: 256 * 1024,
            max_string_bytes: 512,
            max_events_per_message: 64,
            max_json_depth: 32,
            max_xml_depth: 32,
            max_future: TimeDelta::hours(24),
            max_past: TimeDelta::days(400),
            max_clock_skew: TimeDelta::minutes(5),
        }
    }
}

/// Whether JSON text nests objects and arrays deeper than `limit`. A linear
/// scan that skips string contents; it runs before any parser so that a
/// nesting bomb costs one pass and no recursion.
pub(crate) fn json_too_deep(bytes: &[u8], limit: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &byte in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_is_measured_outside_strings() {
        assert!(!json_too_deep(br#"{"a":[{"b":1}]}"#, 3));
        assert!(json_too_deep(br#"{"a":[{"b":[1]}]}"#, 3));
        assert!(!json_too_deep(br#"{"a":"[[[[[[[[\"[[["}"#, 2));
        assert!(json_too_deep(&[b'['; 100], 32));
    }
}
