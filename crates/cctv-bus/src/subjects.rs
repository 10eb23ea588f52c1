//! Subject layout. The raw and dead-letter prefixes are the contract's; the
//! layout of `cctv.events.>` past its prefix is ours:
//! `cctv.events.<shard>.<region>.<family>.<name>`, where `<shard>` is
//! `s<N>` with `N = event id mod shards`, so several aggregators can each own a
//! disjoint set of shards.

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

/// The shard an event id belongs to, out of `shards`.
pub fn shard_of(event_id: &[u8; 16], shards: u16) -> u16 {
    let value = u128::from_be_bytes(*event_id);
    // The remainder is below `shards`, so it fits.
    #[allow(clippy::cast_possible_truncation)]
    let shard = (value % u128::from(shards.max(1))) as u16;
    shard
}

/// The subject of a canonical event. Region and offence code are sanitised
/// so each stays within its own tokens.
pub fn event(shard: u16, region: &str, offence_type: &str) -> String {
    let mut subject =
        String::with_capacity(EVENTS_PREFIX.len() + region.len() + offence_type.len() + 12);
    subject.push_str(EVENTS_PREFIX);
    subject.push_str(".s");
    // Writing into a String cannot fail.
    let _ = write!(subject, "{shard}");
    subject.push('.');
    push_token(&mut subject, region);
    for part in offence_type.splitn(2, '.') {
        subject.push('.');
        push_token(&mut subject, part);
    }
    subject
}

/// The filter subject selecting one shard of the events stream.
pub fn event_shard_filter(shard: u16) -> String {
    format!("{EVENTS_PREFIX}.s{shard}.>")
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
    fn event_subjects_keep_region_and_code_in_their_tokens() {
        assert_eq!(
            event(3, "KZ-75", "traffic.speeding"),
            "cctv.events.s3.KZ-75.traffic.speeding"
        );
        assert_eq!(event(0, "unknown", "a.b.c"), "cctv.events.s0.unknown.a.b_c");
        assert_eq!(event(0, "x y>", "nodot"), "cctv.events.s0.x_y_.nodot");
        assert_eq!(
            dlq("canonical", "missing_field"),
            "cctv.dlq.canonical.missing_field"
        );
        assert_eq!(dlq("we.ird", ""), "cctv.dlq.we_ird._");
    }

    #[test]
    fn shards_spread_and_stay_in_range() {
        let mut seen = [0u32; 4];
        for i in 0u128..400 {
            let shard = shard_of(&(i * 7_919).to_be_bytes(), 4);
            seen[usize::from(shard)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
        assert_eq!(shard_of(&[0xff; 16], 1), 0);
        assert_eq!(shard_of(&[0xff; 16], 0), 0);
    }
}
