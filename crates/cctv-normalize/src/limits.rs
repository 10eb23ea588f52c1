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
/// scan that skips string contents (with `memchr`, since strings are most of
/// a payload's bytes); it runs before any parser so that a nesting bomb costs
/// one pass and no recursion. An unterminated string ends the scan: the
/// parser rejects it.
pub(crate) fn json_too_deep(bytes: &[u8], limit: usize) -> bool {
    // Nesting deeper than `limit` needs more than `limit` openers, counted
    // inside strings too: most payloads have fewer, and counting two byte
    // values is much cheaper than following the strings.
    if memchr::memchr2_iter(b'{', b'[', bytes).nth(limit).is_none() {
        return false;
    }
    let mut depth = 0usize;
    let mut at = 0usize;
    while let Some(&byte) = bytes.get(at) {
        match byte {
            b'"' => {
                // Past the closing quote, or the end: an escape skips the
                // byte after the backslash.
                at += 1;
                loop {
                    let Some(found) = bytes
                        .get(at..)
                        .and_then(|rest| memchr::memchr2(b'"', b'\\', rest))
                    else {
                        return false;
                    };
                    if bytes[at + found] == b'"' {
                        at += found + 1;
                        break;
                    }
                    at += found + 2;
                }
                continue;
            }
            b'{' | b'[' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        at += 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shortcut (at most `limit` openers) and the scan agree: payloads
    /// just under, at and over the limit, with openers in strings or not.
    #[test]
    fn the_opener_count_shortcut_never_changes_the_answer() {
        for limit in [1, 2, 3, 5] {
            for depth in 0..=limit + 2 {
                let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
                assert_eq!(json_too_deep(nested.as_bytes(), limit), depth > limit);
                // Openers in a string count for the shortcut, not the depth.
                let with_text = format!(r#"[{{"a":"{}"}}]"#, "[{".repeat(depth));
                assert_eq!(json_too_deep(with_text.as_bytes(), limit), 2 > limit);
                // Many openers side by side, never deeper than 1.
                let flat = format!("[{}1]", "[],".repeat(depth + limit));
                assert_eq!(json_too_deep(flat.as_bytes(), limit), 2 > limit);
            }
        }
    }

    #[test]
    fn nesting_is_measured_outside_strings() {
        assert!(!json_too_deep(br#"{"a":[{"b":1}]}"#, 3));
        assert!(json_too_deep(br#"{"a":[{"b":[1]}]}"#, 3));
        assert!(!json_too_deep(br#"{"a":"[[[[[[[[\"[[["}"#, 2));
        assert!(json_too_deep(&[b'['; 100], 32));
        // Escaped quotes and backslashes stay inside the string.
        assert!(!json_too_deep(br#"{"a":"\\\"[[[[\\","b":[1]}"#, 2));
        assert!(json_too_deep(br#"{"a":"\\","b":[[1]]}"#, 2));
        // An unterminated string or a trailing backslash ends the scan.
        assert!(!json_too_deep(br#"{"a":"[[[["#, 1));
        assert!(!json_too_deep(b"[\"\\", 1));
    }

    /// The byte-by-byte scan the memchr one replaced, as the reference.
    fn reference(bytes: &[u8], limit: usize) -> bool {
        let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
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

    #[test]
    fn the_scan_agrees_with_the_byte_by_byte_reference() {
        // Random texts over the bytes that matter, from a fixed LCG.
        const ALPHABET: &[u8] = b"[]{}\"\\a:,";
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut checked = 0;
        for _ in 0..20_000 {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            let len = (state >> 58) as usize;
            let text: Vec<u8> = (0..len)
                .map(|_| {
                    state = state
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1);
                    ALPHABET[(state >> 33) as usize % ALPHABET.len()]
                })
                .collect();
            for limit in [0, 1, 3] {
                assert_eq!(
                    json_too_deep(&text, limit),
                    reference(&text, limit),
                    "{:?} at limit {limit}",
                    String::from_utf8_lossy(&text)
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 60_000);
    }
}
