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
            max_future: TimeDelta::hours(24),
            max_past: TimeDelta::days(400),
            max_clock_skew: TimeDelta::minutes(5),
        }
    }
}
