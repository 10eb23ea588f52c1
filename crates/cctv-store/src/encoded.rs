//! Rows of `offence_events` kept as the RowBinary bytes they are sent as.
//!
//! The aggregator holds many rows between reading them and ClickHouse
//! acknowledging their insert. As [`EventRow`](crate::EventRow) structs a
//! row takes about 470 bytes; encoded it takes what it sends, about 200,
//! and it is encoded once, straight from the borrowed event
//! ([`cctv_event::EventView`]), with no allocation per field. The insert
//! then sends the bytes as they are ([`Store::insert_fenced`](crate::Store::insert_fenced)).
//!
//! Each row starts with the four values that are fixed only when its batch
//! is written (insert time, the batch's first sequence and size, the lease
//! epoch), so [`EncodedRows::seal`] patches them in place; [`ENCODED_COLUMNS`]
//! names the columns in the order written.

use cctv_event::EventView;
use chrono::{DateTime, Utc};

/// The insert's column list, in the order each row is encoded.
pub const ENCODED_COLUMNS: &str = "inserted_at, batch_first_seq, batch_rows, lease_epoch, \
stream_seq, event_id, detected_at, detected_ms, clock_skew, received_at, ingested_at, \
confidence, confidence_raw, speed_kmh, speed_limit_kmh, lat, lon, \
offence_type, offence_family, legal_category, article, region, region_source, district, \
camera_id, source_format, gateway_id, source_event_id, plate, evidence_url, \
source_stream, writer";

/// Bytes at the start of each row that [`EncodedRows::seal`] writes.
const SEALED_PREFIX: usize = 4 + 8 + 4 + 8;

/// A batch of encoded rows, in the order pushed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EncodedRows {
    bytes: Vec<u8>,
    /// Per row: where it starts in `bytes`, and its stream sequence.
    rows: Vec<(usize, u64)>,
}

/// Seconds since the epoch as stored in a `DateTime` column (clamped to its range).
fn seconds(time: &DateTime<Utc>) -> u32 {
    u32::try_from(time.timestamp().max(0)).unwrap_or(u32::MAX)
}

impl EncodedRows {
    /// An empty batch with room for about `rows` rows.
    pub fn with_capacity(rows: usize) -> Self {
        Self {
            bytes: Vec::with_capacity(rows.saturating_mul(224)),
            rows: Vec::with_capacity(rows),
        }
    }

    /// Appends the row of `event`, read at `stream_seq` from `source_stream`
    /// by `writer`. The same values as [`EventRow::from_event`](crate::EventRow::from_event).
    pub fn push(
        &mut self,
        event: &EventView<'_>,
        source_stream: &str,
        writer: &str,
        stream_seq: u64,
    ) {
        let out = &mut self.bytes;
        self.rows.push((out.len(), stream_seq));
        // Written by `seal`.
        out.extend_from_slice(&[0; SEALED_PREFIX]);
        out.extend_from_slice(&stream_seq.to_le_bytes());
        let (high, low) = event.event_id.as_u64_pair();
        out.extend_from_slice(&high.to_le_bytes());
        out.extend_from_slice(&low.to_le_bytes());
        out.extend_from_slice(&seconds(&event.detected_at).to_le_bytes());
        let millis = u16::try_from(event.detected_at.timestamp_subsec_millis()).unwrap_or(0);
        out.extend_from_slice(&millis.to_le_bytes());
        out.push(u8::from(event.clock_skew));
        let received = event.received_at.as_ref().map_or(0, seconds);
        out.extend_from_slice(&received.to_le_bytes());
        out.extend_from_slice(&seconds(&event.ingested_at).to_le_bytes());
        out.extend_from_slice(&event.confidence.unwrap_or(-1.0).to_le_bytes());
        out.extend_from_slice(&event.confidence_raw.unwrap_or(-1.0).to_le_bytes());
        nullable(out, event.speed_kmh.map(f32::to_le_bytes));
        nullable(out, event.speed_limit_kmh.map(f32::to_le_bytes));
        nullable(out, event.lat.map(f64::to_le_bytes));
        nullable(out, event.lon.map(f64::to_le_bytes));
        for text in [
            event.offence_type,
            event.offence_family,
            event.legal_category,
            event.article,
            event.region,
            event.region_source.as_str(),
            event.district,
            event.camera_id,
            event.source_format,
            event.gateway_id,
            event.source_event_id.unwrap_or(""),
            event.plate.unwrap_or(""),
            event.evidence_url.unwrap_or(""),
            source_stream,
            writer,
        ] {
            string(out, text);
        }
    }

    /// An empty batch with room for as many rows, of the same sizes, as
    /// `previous` holds: the next batch of a partition is usually like the
    /// last, and a buffer that fits from the start is never copied to grow.
    pub fn with_capacity_like(previous: &EncodedRows) -> Self {
        let bytes = previous.bytes.len();
        Self {
            bytes: Vec::with_capacity(bytes + bytes / 16),
            rows: Vec::with_capacity(previous.rows.len() + previous.rows.len() / 16),
        }
    }

    /// Removes every row, keeping the room.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.rows.clear();
    }

    /// Rows held.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether no row is held.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The encoded bytes of every row.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Heap bytes held (the encoded rows and their index).
    pub fn heap_bytes(&self) -> usize {
        self.bytes.capacity() + self.rows.capacity() * std::mem::size_of::<(usize, u64)>()
    }

    /// Stream sequence of each row, in order.
    pub fn stream_sequences(&self) -> impl Iterator<Item = u64> + '_ {
        self.rows.iter().map(|(_, sequence)| *sequence)
    }

    /// Sets each row's batch values: `inserted_at`, the batch's first
    /// sequence and size (the first row's sequence, the number of rows: what
    /// [`Store::resume_point`](crate::Store::resume_point) reads) and the
    /// lease epoch. Called before every insert attempt.
    pub fn seal(&mut self, inserted_at: u32, lease_epoch: u64) {
        let first = self.rows.first().map_or(0, |(_, sequence)| *sequence);
        let count = u32::try_from(self.rows.len()).unwrap_or(u32::MAX);
        let mut prefix = [0u8; SEALED_PREFIX];
        prefix[..4].copy_from_slice(&inserted_at.to_le_bytes());
        prefix[4..12].copy_from_slice(&first.to_le_bytes());
        prefix[12..16].copy_from_slice(&count.to_le_bytes());
        prefix[16..24].copy_from_slice(&lease_epoch.to_le_bytes());
        for (start, _) in &self.rows {
            self.bytes[*start..*start + SEALED_PREFIX].copy_from_slice(&prefix);
        }
    }

    /// Keeps only the rows whose stream sequence `keep` accepts (after a
    /// failed insert, the rows ClickHouse does not hold yet).
    pub fn retain(&mut self, mut keep: impl FnMut(u64) -> bool) {
        if self.rows.iter().all(|(_, sequence)| keep(*sequence)) {
            return;
        }
        let mut bytes = Vec::with_capacity(self.bytes.len());
        let mut rows = Vec::with_capacity(self.rows.len());
        for (index, (start, sequence)) in self.rows.iter().enumerate() {
            if !keep(*sequence) {
                continue;
            }
            let end = self
                .rows
                .get(index + 1)
                .map_or(self.bytes.len(), |(next, _)| *next);
            rows.push((bytes.len(), *sequence));
            bytes.extend_from_slice(&self.bytes[*start..end]);
        }
        self.bytes = bytes;
        self.rows = rows;
    }
}

/// A `Nullable` value: 0 then the value, or 1 for NULL.
fn nullable<const N: usize>(out: &mut Vec<u8>, value: Option<[u8; N]>) {
    match value {
        Some(bytes) => {
            out.push(0);
            out.extend_from_slice(&bytes);
        }
        None => out.push(1),
    }
}

/// A `String`: its length as LEB128, then its bytes.
fn string(out: &mut Vec<u8>, text: &str) {
    cctv_event::put_varint(out, text.len() as u64);
    out.extend_from_slice(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use cctv_event::OffenceEvent;

    fn event(n: u128) -> OffenceEvent {
        OffenceEvent {
            event_id: uuid::Uuid::from_u128(n),
            detected_at: DateTime::from_timestamp(1_795_749_305, 250_000_000).unwrap_or_default(),
            camera_id: "x".repeat(200),
            ..OffenceEvent::example()
        }
    }

    fn batch(sequences: &[u64]) -> EncodedRows {
        let mut rows = EncodedRows::with_capacity(4);
        for sequence in sequences {
            rows.push(
                &event(u128::from(*sequence)).view(),
                "CCTV_EVENTS@1",
                "p3",
                *sequence,
            );
        }
        rows
    }

    #[test]
    fn a_row_has_the_layout_of_its_column_list() {
        let rows = batch(&[7]);
        let bytes = rows.as_bytes();
        // Sealed prefix, stream_seq, event id, detected_at.
        assert_eq!(&bytes[..SEALED_PREFIX], &[0; SEALED_PREFIX]);
        assert_eq!(&bytes[24..32], &7u64.to_le_bytes());
        assert_eq!(&bytes[32..40], &0u64.to_le_bytes());
        assert_eq!(&bytes[40..48], &7u64.to_le_bytes());
        assert_eq!(&bytes[48..52], &1_795_749_305u32.to_le_bytes());
        assert_eq!(&bytes[52..54], &250u16.to_le_bytes());
        // A 200-byte camera id has a two-byte length.
        let camera = bytes
            .windows(3)
            .position(|w| w == [0xc8, 0x01, b'x'])
            .expect("LEB128 length 200");
        assert_eq!(&bytes[camera + 2..camera + 202], "x".repeat(200).as_bytes());
        assert!(bytes.ends_with(b"\x0dCCTV_EVENTS@1\x02p3"));
        assert_eq!(ENCODED_COLUMNS.split(", ").count(), 32);
    }

    #[test]
    fn sealing_writes_the_batch_values_into_every_row() {
        let mut rows = batch(&[10, 11, 13]);
        rows.seal(1_800_000_000, 42);
        let bytes = rows.as_bytes().to_vec();
        for (start, _) in &rows.rows {
            let row = &bytes[*start..];
            assert_eq!(&row[..4], &1_800_000_000u32.to_le_bytes());
            assert_eq!(&row[4..12], &10u64.to_le_bytes());
            assert_eq!(&row[12..16], &3u32.to_le_bytes());
            assert_eq!(&row[16..24], &42u64.to_le_bytes());
        }
        // Sealing again (a retry) overwrites, nothing else moves.
        rows.seal(1_800_000_001, 43);
        assert_eq!(rows.as_bytes().len(), bytes.len());
        assert_eq!(&rows.as_bytes()[..4], &1_800_000_001u32.to_le_bytes());
    }

    #[test]
    fn retain_keeps_whole_rows_in_order() {
        let mut rows = batch(&[1, 2, 3, 4]);
        let expected = batch(&[2, 4]);
        rows.retain(|sequence| sequence % 2 == 0);
        assert_eq!(rows, expected);
        assert_eq!(rows.stream_sequences().collect::<Vec<_>>(), vec![2, 4]);
        rows.seal(5, 6);
        assert_eq!(&rows.as_bytes()[4..12], &2u64.to_le_bytes());
        rows.retain(|_| false);
        assert!(rows.is_empty());
        assert!(rows.as_bytes().is_empty());
    }
}
