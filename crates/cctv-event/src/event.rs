//! The canonical offence event: one per distinct offence, carried in event batches on `CCTV_EVENTS`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Schema version written into every event. Bumped only for changes that are
/// not additive; consumers ignore unknown fields.
pub const EVENT_SCHEMA_VERSION: u16 = 1;

/// Bytes reserved for one event's JSON: a typical event is 500-700 bytes, so
/// serialising it takes one allocation instead of a series of regrowths.
const JSON_CAPACITY: usize = 1024;

/// Where the region of an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegionSource {
    /// The camera registry knows the camera.
    Registry,
    /// The camera is unknown; the payload carried a valid region code.
    Payload,
    /// Neither: the region is `unknown`.
    Unknown,
}

impl RegionSource {
    /// Stable lowercase name, as stored in ClickHouse.
    pub fn as_str(self) -> &'static str {
        match self {
            RegionSource::Registry => "registry",
            RegionSource::Payload => "payload",
            RegionSource::Unknown => "unknown",
        }
    }
}

/// A normalised, enriched offence, as published on `CCTV_EVENTS`.
///
/// Optional fields are omitted from the JSON when absent, so the message stays
/// small; readers must treat a missing field as "not reported".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OffenceEvent {
    /// Wire schema version ([`EVENT_SCHEMA_VERSION`]).
    #[serde(rename = "v")]
    pub schema_version: u16,
    /// Deterministic id of the real-world offence (the dedup key of its partition owner).
    pub event_id: Uuid,
    /// Canonical offence code, e.g. `traffic.speeding`.
    pub offence_type: String,
    /// Family of the code (`traffic`, `public_order`).
    pub offence_family: String,
    /// Default legal category (`administrative`, `criminal`).
    pub legal_category: String,
    /// Article of the code, empty when none is known.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub article: String,
    /// When the offence happened (UTC, millisecond precision).
    #[serde(serialize_with = "crate::wire_time::serialize")]
    pub detected_at: DateTime<Utc>,
    /// The device's own time text, kept as received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_time: Option<String>,
    /// When the gateway received the message, if it said so.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::wire_time::serialize_option"
    )]
    pub received_at: Option<DateTime<Utc>>,
    /// When the ingest service normalised the message.
    #[serde(serialize_with = "crate::wire_time::serialize")]
    pub ingested_at: DateTime<Utc>,
    /// The device clock differs from receipt time by more than the allowed skew.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub clock_skew: bool,
    /// Camera identifier (registry id, or the payload's own id when unknown).
    pub camera_id: String,
    /// ISO 3166-2:KZ numeric region code, or `unknown`.
    pub region: String,
    /// Where `region` came from.
    pub region_source: RegionSource,
    /// District from the registry, empty when unknown.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub district: String,
    /// Payload format (`canonical`, `hikvision`, ...).
    pub source_format: String,
    /// Gateway that published the raw message.
    pub gateway_id: String,
    /// The source's own event id, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_event_id: Option<String>,
    /// Confidence normalised to 0..1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f32>,
    /// Confidence as the source reported it (its own scale).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence_raw: Option<f64>,
    /// Licence plate as read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plate: Option<String>,
    /// Measured speed, km/h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed_kmh: Option<f32>,
    /// Speed limit at the place, km/h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed_limit_kmh: Option<f32>,
    /// Latitude (registry first, then payload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lat: Option<f64>,
    /// Longitude (registry first, then payload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lon: Option<f64>,
    /// Link to the evidence (picture, clip).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence_url: Option<String>,
}

impl OffenceEvent {
    /// Serialises the event to its wire JSON.
    pub fn to_json(&self) -> Vec<u8> {
        let mut json = Vec::with_capacity(JSON_CAPACITY);
        self.write_json(&mut json);
        json
    }

    /// Appends the event's wire JSON (the same bytes as [`Self::to_json`]) to
    /// `json`, so a caller can reuse one buffer for many events.
    pub fn write_json(&self, json: &mut Vec<u8>) {
        // Serialising a struct of plain fields into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *json, self);
    }

    /// An example event with every field set, for documentation, tests and
    /// benchmarks.
    pub fn example() -> Self {
        let time = |millis| DateTime::from_timestamp_millis(millis).unwrap_or_default();
        OffenceEvent {
            schema_version: EVENT_SCHEMA_VERSION,
            event_id: Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
            offence_type: "traffic.speeding".into(),
            offence_family: "traffic".into(),
            legal_category: "administrative".into(),
            article: "CoAO 592".into(),
            detected_at: time(1_795_749_305_250),
            device_time: Some("2026-11-27 13:15:05".into()),
            received_at: Some(time(1_795_749_306_000)),
            ingested_at: time(1_795_749_306_123),
            clock_skew: true,
            camera_id: "AST-0412".into(),
            region: "KZ-71".into(),
            region_source: RegionSource::Payload,
            district: "Есиль".into(),
            source_format: "hikvision".into(),
            gateway_id: "gw7".into(),
            source_event_id: Some("gw7-1".into()),
            confidence: Some(0.97),
            confidence_raw: Some(97.0),
            plate: Some("404ZXC16".into()),
            speed_kmh: Some(97.0),
            speed_limit_kmh: Some(70.0),
            lat: Some(51.128_207),
            lon: Some(71.430_411),
            evidence_url: Some("https://evidence.example/a.jpg".into()),
        }
    }

    /// Parses an event from its wire JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> OffenceEvent {
        OffenceEvent {
            device_time: None,
            received_at: None,
            clock_skew: false,
            region_source: RegionSource::Registry,
            district: String::new(),
            source_format: "canonical".into(),
            confidence_raw: Some(0.97),
            lat: None,
            lon: None,
            evidence_url: None,
            ..OffenceEvent::example()
        }
    }

    #[test]
    fn json_round_trip_keeps_every_field_and_omits_absent_ones() {
        let event = sample();
        let json = event.to_json();
        let text = String::from_utf8(json.clone()).unwrap_or_default();
        assert!(
            !text.contains("evidence_url"),
            "absent fields are omitted: {text}"
        );
        assert!(
            !text.contains("clock_skew"),
            "false flags are omitted: {text}"
        );
        assert_eq!(OffenceEvent::from_json(&json).ok(), Some(event));
    }

    #[test]
    fn unknown_fields_are_ignored_by_readers() {
        let mut value = serde_json::to_value(sample()).unwrap_or_default();
        value["added_in_v2"] = serde_json::json!("x");
        let bytes = serde_json::to_vec(&value).unwrap_or_default();
        assert_eq!(OffenceEvent::from_json(&bytes).ok(), Some(sample()));
    }
}
