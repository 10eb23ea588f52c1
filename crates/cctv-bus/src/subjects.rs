//! Subject layout. The raw and dead-letter prefixes are the contract's; the
//! layout of `cctv.events.>` past its prefix is ours: `cctv.events.p<k>`, one
//! subject per partition `k = event id mod partitions`, each message an event
//! batch ([`crate::event_batch`]). Every repeat of one offence has the same
//! event id, so it lands in the same partition and meets the same owner.

use std::fmt::Write as _;

/// Prefix of every raw subject.
pub const RAW_PREFIX: &str = "cctv.raw";
/// Prefix of every canonical event subject.
pub const EVENTS_PREFIX: &str = "cctv.events";
/// Prefix of every dead-letter subject.
pub const DLQ_PREFIX: &str = "cctv.dlq";

/// The parts of a raw subject `cctv.raw.<format>.<gateway_id>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawSubject<'a> {
    /// The format token.
    pub format: &'a str,
    /// The gateway token.
    pub gateway_id: &'a str,
}

/// Splits a raw subject; `None` when it does not have exactly four tokens.
pub fn parse_raw(subject: &str) -> Option<RawSubject<'_>> {
    let rest = subject.strip_prefix(RAW_PREFIX)?.strip_prefix('.')?;
    let (format, gateway_id) = rest.split_once('.')?;
    if format.is_empty() || gateway_id.is_empty() || gateway_id.contains('.') {
        return None;
    }
    Some(RawSubject { format, gateway_id })
}

/// Whether a gateway id is one valid subject token (letters, digits, `-`, `_`).
pub fn is_valid_gateway_id(gateway_id: &str) -> bool {
    !gateway_id.is_empty()
        && gateway_id.len() <= 128
        && gateway_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The raw subject a gateway publishes to.
pub fn raw(format: &str, gateway_id: &str) -> String {
    format!("{RAW_PREFIX}.{format}.{gateway_id}")
}

/// Most partitions a deployment may have.
pub const MAX_PARTITIONS: u16 = 1024;
/// Partitions `cctvctl setup` creates when not told otherwise.
pub const DEFAULT_PARTITIONS: u16 = 16;
/// The `<format>` token of gateway batches (`cctv.raw.batch.<gateway_id>`).
pub const BATCH_FORMAT: &str = "batch";

/// The partition an event id belongs to, out of `partitions`.
pub fn partition_of(event_id: &[u8; 16], partitions: u16) -> u16 {
    let value = u128::from_be_bytes(*event_id);
    // The remainder is below `partitions`, so it fits.
    #[allow(clippy::cast_possible_truncation)]
    let partition = (value % u128::from(partitions.max(1))) as u16;
    partition
}

/// The subject of partition `partition`'s event batches.
pub fn event_partition(partition: u16) -> String {
    let mut subject = String::with_capacity(EVENTS_PREFIX.len() + 8);
    subject.push_str(EVENTS_PREFIX);
    subject.push_str(".p");
    // Writing into a String cannot fail.
    let _ = write!(subject, "{partition}");
    subject
}

/// The partition of an event subject `cctv.events.p<k>`.
pub fn parse_event_partition(subject: &str) -> Option<u16> {
    let digits = subject.strip_prefix(EVENTS_PREFIX)?.strip_prefix(".p")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The dead-letter subject for a rejected message.
pub fn dlq(format: &str, reason: &str) -> String {
    let mut subject = String::from(DLQ_PREFIX);
    subject.push('.');
    push_token(&mut subject, format);
    subject.push('.');
    push_token(&mut subject, reason);
    subject
}

/// Appends `text` as one subject token: characters outside `[A-Za-z0-9_-]`
/// become `_`, an empty token becomes `_`.
fn push_token(subject: &mut String, text: &str) {
    if text.is_empty() {
        subject.push('_');
        return;
    }
    for c in text.chars().take(64) {
        if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
            subject.push(c);
        } else {
            subject.push('_');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_subjects_split_into_format_and_gateway() {
        assert_eq!(
            parse_raw("cctv.raw.hikvision.gw-01"),
            Some(RawSubject {
                format: "hikvision",
                gateway_id: "gw-01"
            })
        );
        assert_eq!(parse_raw("cctv.raw.hikvision"), None);
        assert_eq!(parse_raw("cctv.raw.hikvision.gw.extra"), None);
        assert_eq!(parse_raw("cctv.events.x.y"), None);
        assert_eq!(raw("canonical", "gw7"), "cctv.raw.canonical.gw7");
    }

    #[test]
    fn gateway_ids_are_single_tokens() {
        assert!(is_valid_gateway_id("gw-01_a"));
        assert!(!is_valid_gateway_id("gw.01"));
        assert!(!is_valid_gateway_id("gw*"));
        assert!(!is_valid_gateway_id(""));
    }

    #[test]
    fn event_subjects_name_their_partition() {
        assert_eq!(event_partition(3), "cctv.events.p3");
        assert_eq!(parse_event_partition("cctv.events.p3"), Some(3));
        assert_eq!(parse_event_partition("cctv.events.p"), None);
        assert_eq!(parse_event_partition("cctv.events.p3.x"), None);
        assert_eq!(parse_event_partition("cctv.raw.p3"), None);
        assert_eq!(
            dlq("canonical", "missing_field"),
            "cctv.dlq.canonical.missing_field"
        );
        assert_eq!(dlq("we.ird", ""), "cctv.dlq.we_ird._");
    }

    #[test]
    fn partitions_spread_and_stay_in_range() {
        let mut seen = [0u32; 4];
        for i in 0u128..400 {
            let partition = partition_of(&(i * 7_919).to_be_bytes(), 4);
            seen[usize::from(partition)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
        assert_eq!(partition_of(&[0xff; 16], 1), 0);
        assert_eq!(partition_of(&[0xff; 16], 0), 0);
    }
}
