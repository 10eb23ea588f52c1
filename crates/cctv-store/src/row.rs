//! The row type of `offence_events` and its mapping from a canonical event.

use cctv_event::OffenceEvent;
use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Where a row came from in the events stream, and the batch it was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamPosition {
    /// Stream sequence of the event's message.
    pub stream_seq: u64,
    /// Stream sequence of the first message of the insert batch.
    pub batch_first_seq: u64,
    /// Number of rows in the insert batch.
    pub batch_rows: u32,
}

/// One row of `offence_events`, in the table's RowBinary layout. Field order
/// and types must match migration 1 exactly (RowBinary carries no names); the
/// integration tests insert and read back every column. Texts are
/// `CompactString`s: up to 24 bytes (codes, ids, names) they live in the row
/// itself, which halves what the aggregator holds per row in flight.
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub struct EventRow {
    /// Event id.
    #[serde(with = "clickhouse::serde::uuid")]
    pub event_id: Uuid,
    /// Detection time, UTC seconds.
    pub detected_at: u32,
    /// Millisecond part of the detection time.
    pub detected_ms: u16,
    /// Canonical offence code.
    pub offence_type: CompactString,
    /// Offence family.
    pub offence_family: CompactString,
    /// Legal category.
    pub legal_category: CompactString,
    /// Article.
    pub article: CompactString,
    /// Region code or `unknown`.
    pub region: CompactString,
    /// `registry`, `payload` or `unknown`.
    pub region_source: CompactString,
    /// District.
    pub district: CompactString,
    /// Camera id.
    pub camera_id: CompactString,
    /// Payload format.
    pub source_format: CompactString,
    /// Gateway.
    pub gateway_id: CompactString,
    /// Source's own event id, empty when none.
    pub source_event_id: CompactString,
    /// Confidence 0..1; -1 when the source reported none.
    pub confidence: f32,
    /// Confidence on the source's scale; -1 when none.
    pub confidence_raw: f64,
    /// Plate, empty when none.
    pub plate: CompactString,
    /// Speed km/h.
    pub speed_kmh: Option<f32>,
    /// Speed limit km/h.
    pub speed_limit_kmh: Option<f32>,
    /// Latitude.
    pub lat: Option<f64>,
    /// Longitude.
    pub lon: Option<f64>,
    /// Evidence link, empty when none.
    pub evidence_url: CompactString,
    /// 1 when the device clock was ahead of receipt.
    pub clock_skew: u8,
    /// Gateway receipt time, UTC seconds; 0 when unknown.
    pub received_at: u32,
    /// Ingest time, UTC seconds.
    pub ingested_at: u32,
    /// Insert time of the batch, UTC seconds; one value per batch, so a batch
    /// falls in one partition and is written as one part.
    pub inserted_at: u32,
    /// Identity of the events stream (`name@created`).
    pub source_stream: CompactString,
    /// Writer (consumer) that inserted the row.
    pub writer: CompactString,
    /// Stream sequence of the event's message.
    pub stream_seq: u64,
    /// First stream sequence of the batch.
    pub batch_first_seq: u64,
    /// Rows in the batch.
    pub batch_rows: u32,
    /// Epoch of the writer's partition lease (migration 2): rows of an epoch
    /// older than the partition's newest fence are dropped by ClickHouse.
    pub lease_epoch: u64,
}

/// Seconds since the epoch as stored in a `DateTime` column (clamped to its range).
fn seconds(time: chrono::DateTime<chrono::Utc>) -> u32 {
    u32::try_from(time.timestamp().max(0)).unwrap_or(u32::MAX)
}

impl EventRow {
    /// Builds the row for `event` read at `position` from `source_stream`.
    /// `inserted_at` is the batch's insert time (UTC seconds).
    pub fn from_event(
        event: OffenceEvent,
        source_stream: &str,
        writer: &str,
        position: StreamPosition,
        inserted_at: u32,
    ) -> Self {
        let millis = event.detected_at.timestamp_subsec_millis();
        Self {
            event_id: event.event_id,
            detected_at: seconds(event.detected_at),
            detected_ms: u16::try_from(millis).unwrap_or(0),
            offence_type: event.offence_type.into(),
            offence_family: event.offence_family.into(),
            legal_category: event.legal_category.into(),
            article: event.article.into(),
            region: event.region.into(),
            region_source: CompactString::const_new(event.region_source.as_str()),
            district: event.district.into(),
            camera_id: event.camera_id.into(),
            source_format: event.source_format.into(),
            gateway_id: event.gateway_id.into(),
            source_event_id: event
                .source_event_id
                .map(CompactString::from)
                .unwrap_or_default(),
            confidence: event.confidence.unwrap_or(-1.0),
            confidence_raw: event.confidence_raw.unwrap_or(-1.0),
            plate: event.plate.map(CompactString::from).unwrap_or_default(),
            speed_kmh: event.speed_kmh,
            speed_limit_kmh: event.speed_limit_kmh,
            lat: event.lat,
            lon: event.lon,
            evidence_url: event
                .evidence_url
                .map(CompactString::from)
                .unwrap_or_default(),
            clock_skew: u8::from(event.clock_skew),
            received_at: event.received_at.map_or(0, seconds),
            ingested_at: seconds(event.ingested_at),
            inserted_at,
            source_stream: source_stream.into(),
            writer: writer.into(),
            stream_seq: position.stream_seq,
            batch_first_seq: position.batch_first_seq,
            batch_rows: position.batch_rows,
            lease_epoch: 0,
        }
    }
}
