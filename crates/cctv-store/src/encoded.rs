//! Rows of `offence_events` kept as the RowBinary bytes they are sent as.
//!
//! The aggregator holds many rows between reading them and ClickHouse
//! acknowledging their insert. As [`EventRow`](crate::EventRow) structs a
//! row takes about 470 bytes; encoded it takes what it sends, about 270,
//! and it is encoded once, straight from the borrowed event
//! ([`cctv_event::EventView`]), with no allocation per field. The insert
//! then sends the bytes as they are ([`Store::insert_fenced`](crate::Store::insert_fenced)).
//!
//! The bytes live in fixed chunks of [`CHUNK_BYTES`], never in one growing
//! buffer: a buffer that doubles as it grows wastes up to half its size and,
//! allocated afresh per batch, fragments the heap (measured with heaptrack
//! on canonical-batch: 119 MiB of the aggregator's 192 MiB peak heap were
//! such growth). Chunks come from and go back to a [`ChunkPool`], also when
//! a batch is dropped on an error path, so the same few hundred chunks
//! circulate; a row never spans two chunks.
//!
//! Each row starts with the four values that are fixed only when its batch
//! is written (insert time, the batch's first sequence and size, the lease
//! epoch), so [`EncodedRows::seal`] patches them in place; [`ENCODED_COLUMNS`]
//! names the columns in the order written.

use std::sync::{Arc, Mutex};

use cctv_event::EventView;
use chrono::{DateTime, Utc};

/// The insert's column list, in the order each row is encoded.
pub const ENCODED_COLUMNS: &str = "inserted_at, batch_first_seq, batch_rows, lease_epoch, \
stream_seq, event_id, detected_at, detected_ms, clock_skew, received_at, ingested_at, \
confidence, confidence_raw, speed_kmh, speed_limit_kmh, lat, lon, \
offence_type, offence_family, legal_category, article, region, region_source, district, \
camera_id, source_format, gateway_id, source_event_id, plate, evidence_url, \
source_stream, writer";

/// Bytes of one chunk of encoded rows (about 950 rows).
pub const CHUNK_BYTES: usize = 256 * 1024;

/// Bytes at the start of each row that [`EncodedRows::seal`] writes.
const SEALED_PREFIX: usize = 4 + 8 + 4 + 8;
/// Bytes of a row's fixed-width values after the prefix: stream sequence,
/// event id, detected_at, detected_ms, clock_skew, received_at, ingested_at,
/// confidence, confidence_raw, and the four nullable flags.
const FIXED_AFTER_PREFIX: usize = 8 + 16 + 4 + 2 + 1 + 4 + 4 + 4 + 8 + 4;

/// Free chunks, shared by every batch of an instance.
#[derive(Debug)]
pub struct ChunkPool {
    free: Mutex<Vec<Vec<u8>>>,
    /// Chunks kept at most; more are freed.
    max_free: usize,
}

impl ChunkPool {
    /// A pool keeping at most `max_free_bytes` of free chunks.
    pub fn new(max_free_bytes: usize) -> Arc<Self> {
        let max_free = max_free_bytes / CHUNK_BYTES;
        Arc::new(Self {
            free: Mutex::new(Vec::with_capacity(max_free)),
            max_free,
        })
    }

    /// Free chunks held.
    pub fn free_chunks(&self) -> usize {
        self.free.lock().map_or(0, |free| free.len())
    }

    /// An empty chunk with room for `at_least` bytes.
    fn take(&self, at_least: usize) -> Vec<u8> {
        if at_least <= CHUNK_BYTES {
            if let Some(chunk) = self.free.lock().ok().and_then(|mut free| free.pop()) {
                return chunk;
            }
        }
        Vec::with_capacity(at_least.max(CHUNK_BYTES))
    }

    /// Keeps `chunk` for reuse if it is a standard one and there is room.
    fn give_back(&self, mut chunk: Vec<u8>) {
        if chunk.capacity() != CHUNK_BYTES {
            return;
        }
        chunk.clear();
        if let Ok(mut free) = self.free.lock() {
            if free.len() < self.max_free {
                free.push(chunk);
            }
        }
    }
}

/// Where one row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RowAt {
    chunk: usize,
    start: usize,
    sequence: u64,
}

/// A batch of encoded rows, in the order pushed.
#[derive(Debug, Default)]
pub struct EncodedRows {
    /// Where chunks come from and go back to; `None`: plain allocations.
    pool: Option<Arc<ChunkPool>>,
    chunks: Vec<Vec<u8>>,
    rows: Vec<RowAt>,
}

/// Seconds since the epoch as stored in a `DateTime` column (clamped to its range).
fn seconds(time: &DateTime<Utc>) -> u32 {
    u32::try_from(time.timestamp().max(0)).unwrap_or(u32::MAX)
}

/// Bytes of a `String` value: its LEB128 length, then the text.
fn string_len(text: &str) -> usize {
    let bits = usize::BITS - (text.len() | 1).leading_zeros();
    bits.div_ceil(7) as usize + text.len()
}

impl EncodedRows {
    /// An empty batch whose chunks come from `pool`.
    pub fn new_in(pool: Arc<ChunkPool>) -> Self {
        Self {
            pool: Some(pool),
            chunks: Vec::new(),
            rows: Vec::new(),
        }
    }

    /// An empty batch whose chunks are plain allocations.
    pub fn new() -> Self {
        Self::default()
    }

    /// The texts of a row, in column order.
    fn texts<'a>(event: &EventView<'a>, source_stream: &'a str, writer: &'a str) -> [&'a str; 15] {
        [
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
        ]
    }

    /// A chunk with room for `len` more bytes: the last one, or a new one.
    fn room_for(&mut self, len: usize) -> usize {
        let fits = self
            .chunks
            .last()
            .is_some_and(|chunk| chunk.capacity() - chunk.len() >= len);
        if !fits {
            let chunk = match &self.pool {
                Some(pool) => pool.take(len),
                None => Vec::with_capacity(len.max(CHUNK_BYTES)),
            };
            self.chunks.push(chunk);
        }
        self.chunks.len() - 1
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
        let texts = Self::texts(event, source_stream, writer);
        let optional = |present: bool, len: usize| if present { len } else { 0 };
        let len = SEALED_PREFIX
            + FIXED_AFTER_PREFIX
            + optional(event.speed_kmh.is_some(), 4)
            + optional(event.speed_limit_kmh.is_some(), 4)
            + optional(event.lat.is_some(), 8)
            + optional(event.lon.is_some(), 8)
            + texts.iter().map(|text| string_len(text)).sum::<usize>();
        let chunk = self.room_for(len);
        let out = &mut self.chunks[chunk];
        self.rows.push(RowAt {
            chunk,
            start: out.len(),
            sequence: stream_seq,
        });
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
        for text in texts {
            string(out, text);
        }
        debug_assert_eq!(out.len() - self.rows[self.rows.len() - 1].start, len);
    }

    /// Removes every row; the chunks go back to the pool.
    pub fn clear(&mut self) {
        self.rows.clear();
        for chunk in self.chunks.drain(..) {
            if let Some(pool) = &self.pool {
                pool.give_back(chunk);
            }
        }
    }

    /// Rows held.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether no row is held.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The encoded rows, chunk by chunk, in order (what an insert sends).
    pub fn chunks(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.chunks.iter().map(Vec::as_slice)
    }

    /// Every encoded row in one buffer (tests, tools).
    pub fn to_vec(&self) -> Vec<u8> {
        self.chunks.concat()
    }

    /// Heap bytes held (the chunks and the row index).
    pub fn heap_bytes(&self) -> usize {
        self.chunks.iter().map(Vec::capacity).sum::<usize>()
            + self.rows.capacity() * std::mem::size_of::<RowAt>()
    }

    /// Stream sequence of each row, in order.
    pub fn stream_sequences(&self) -> impl Iterator<Item = u64> + '_ {
        self.rows.iter().map(|row| row.sequence)
    }

    /// Sets each row's batch values: `inserted_at`, the batch's first
    /// sequence and size (the first row's sequence, the number of rows: what
    /// [`Store::resume_point`](crate::Store::resume_point) reads) and the
    /// lease epoch. Called before every insert attempt.
    pub fn seal(&mut self, inserted_at: u32, lease_epoch: u64) {
        let first = self.rows.first().map_or(0, |row| row.sequence);
        let count = u32::try_from(self.rows.len()).unwrap_or(u32::MAX);
        let mut prefix = [0u8; SEALED_PREFIX];
        prefix[..4].copy_from_slice(&inserted_at.to_le_bytes());
        prefix[4..12].copy_from_slice(&first.to_le_bytes());
        prefix[12..16].copy_from_slice(&count.to_le_bytes());
        prefix[16..24].copy_from_slice(&lease_epoch.to_le_bytes());
        for row in &self.rows {
            self.chunks[row.chunk][row.start..row.start + SEALED_PREFIX].copy_from_slice(&prefix);
        }
    }

    /// The bytes of row `index`.
    fn row_bytes(&self, index: usize) -> &[u8] {
        let row = self.rows[index];
        let end = match self.rows.get(index + 1) {
            Some(next) if next.chunk == row.chunk => next.start,
            _ => self.chunks[row.chunk].len(),
        };
        &self.chunks[row.chunk][row.start..end]
    }

    /// Keeps only the rows whose stream sequence `keep` accepts (after a
    /// failed insert, the rows ClickHouse does not hold yet).
    pub fn retain(&mut self, mut keep: impl FnMut(u64) -> bool) {
        self.retain_rows(|sequence, _| keep(sequence));
    }

    /// The event id of row `index`, as [`uuid::Uuid::as_bytes`] gives it
    /// (the row holds the UUID's two halves little-endian, as RowBinary does).
    fn event_id(&self, index: usize) -> [u8; 16] {
        let row = self.rows[index];
        let at = row.start + SEALED_PREFIX + 8;
        let bytes = &self.chunks[row.chunk][at..at + 16];
        let half = |range: std::ops::Range<usize>| {
            u64::from_le_bytes(bytes[range].try_into().unwrap_or([0; 8])).to_be_bytes()
        };
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&half(0..8));
        id[8..].copy_from_slice(&half(8..16));
        id
    }

    /// Keeps only the rows `keep` accepts, given each row's stream sequence
    /// and event id.
    pub fn retain_rows(&mut self, mut keep: impl FnMut(u64, [u8; 16]) -> bool) {
        let verdicts: Vec<bool> = (0..self.rows.len())
            .map(|index| keep(self.rows[index].sequence, self.event_id(index)))
            .collect();
        if verdicts.iter().all(|kept| *kept) {
            return;
        }
        let mut kept = EncodedRows {
            pool: self.pool.clone(),
            chunks: Vec::new(),
            rows: Vec::with_capacity(self.rows.len()),
        };
        for (index, kept_row) in verdicts.into_iter().enumerate() {
            if !kept_row {
                continue;
            }
            let sequence = self.rows[index].sequence;
            let bytes = self.row_bytes(index);
            let chunk = kept.room_for(bytes.len());
            let out = &mut kept.chunks[chunk];
            kept.rows.push(RowAt {
                chunk,
                start: out.len(),
                sequence,
            });
            out.extend_from_slice(bytes);
        }
        *self = kept;
    }
}

impl Clone for EncodedRows {
    fn clone(&self) -> Self {
        let mut copy = EncodedRows {
            pool: self.pool.clone(),
            chunks: Vec::with_capacity(self.chunks.len()),
            rows: self.rows.clone(),
        };
        for chunk in &self.chunks {
            let mut new = match &self.pool {
                Some(pool) => pool.take(chunk.len()),
                None => Vec::with_capacity(chunk.capacity()),
            };
            new.extend_from_slice(chunk);
            copy.chunks.push(new);
        }
        copy
    }
}

impl PartialEq for EncodedRows {
    /// The same rows: the same bytes and stream sequences, however chunked.
    fn eq(&self, other: &Self) -> bool {
        self.stream_sequences().eq(other.stream_sequences()) && self.to_vec() == other.to_vec()
    }
}

impl Drop for EncodedRows {
    fn drop(&mut self) {
        self.clear();
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

    fn fill(rows: &mut EncodedRows, sequences: impl IntoIterator<Item = u64>) {
        for sequence in sequences {
            rows.push(
                &event(u128::from(sequence)).view(),
                "CCTV_EVENTS@1",
                "p3",
                sequence,
            );
        }
    }

    fn batch(sequences: &[u64]) -> EncodedRows {
        let mut rows = EncodedRows::new();
        fill(&mut rows, sequences.iter().copied());
        rows
    }

    #[test]
    fn a_row_has_the_layout_of_its_column_list() {
        let rows = batch(&[7]);
        let bytes = rows.to_vec();
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
        assert_eq!(string_len(""), 1);
        assert_eq!(string_len(&"y".repeat(127)), 128);
        assert_eq!(string_len(&"y".repeat(128)), 130);
    }

    #[test]
    fn sealing_writes_the_batch_values_into_every_row() {
        let mut rows = batch(&[10, 11, 13]);
        rows.seal(1_800_000_000, 42);
        for index in 0..rows.len() {
            let row = rows.row_bytes(index);
            assert_eq!(&row[..4], &1_800_000_000u32.to_le_bytes());
            assert_eq!(&row[4..12], &10u64.to_le_bytes());
            assert_eq!(&row[12..16], &3u32.to_le_bytes());
            assert_eq!(&row[16..24], &42u64.to_le_bytes());
        }
        // Sealing again (a retry) overwrites, nothing else moves.
        let before = rows.to_vec().len();
        rows.seal(1_800_000_001, 43);
        assert_eq!(rows.to_vec().len(), before);
        assert_eq!(&rows.to_vec()[..4], &1_800_000_001u32.to_le_bytes());
    }

    #[test]
    fn retain_rows_sees_each_rows_event_id_as_the_uuid_gives_it() {
        let mut rows = EncodedRows::new();
        let ids = [0x0123_4567_89ab_cdef_fedc_ba98_7654_3210_u128, 2, 3];
        for (sequence, id) in (1u64..).zip(ids) {
            rows.push(&event(id).view(), "CCTV_EVENTS@1", "p3", sequence);
        }
        let mut seen = Vec::new();
        let drop = *uuid::Uuid::from_u128(2).as_bytes();
        rows.retain_rows(|sequence, id| {
            seen.push((sequence, id));
            id != drop
        });
        let expected: Vec<(u64, [u8; 16])> = (1u64..)
            .zip(ids)
            .map(|(sequence, id)| (sequence, *uuid::Uuid::from_u128(id).as_bytes()))
            .collect();
        assert_eq!(seen, expected);
        assert_eq!(rows.stream_sequences().collect::<Vec<_>>(), vec![1, 3]);
    }

    #[test]
    fn retain_keeps_whole_rows_in_order() {
        let mut rows = batch(&[1, 2, 3, 4]);
        let expected = batch(&[2, 4]);
        rows.retain(|sequence| sequence % 2 == 0);
        assert_eq!(rows, expected);
        assert_eq!(rows.stream_sequences().collect::<Vec<_>>(), vec![2, 4]);
        rows.seal(5, 6);
        assert_eq!(&rows.to_vec()[4..12], &2u64.to_le_bytes());
        rows.retain(|_| false);
        assert!(rows.is_empty());
        assert!(rows.to_vec().is_empty());
    }

    #[test]
    fn rows_fill_whole_chunks_and_never_span_two() {
        let pool = ChunkPool::new(64 * CHUNK_BYTES);
        let mut rows = EncodedRows::new_in(pool.clone());
        fill(&mut rows, 0..5_000);
        let row_len = rows.row_bytes(0).len();
        let per_chunk = CHUNK_BYTES / row_len;
        assert_eq!(rows.chunks.len(), 5_000usize.div_ceil(per_chunk));
        assert!(rows
            .chunks
            .iter()
            .all(|chunk| chunk.capacity() == CHUNK_BYTES));
        for chunk in rows.chunks() {
            assert_eq!(chunk.len() % row_len, 0, "whole rows only");
        }
        // The rows read back in order, each at its place.
        let all = rows.to_vec();
        assert_eq!(all.len(), 5_000 * row_len);
        for index in [0, per_chunk - 1, per_chunk, 4_999] {
            let start = index * row_len;
            assert_eq!(rows.row_bytes(index), &all[start..start + row_len]);
        }
        // Retaining across chunk boundaries keeps every kept row whole.
        let mut odd = rows.clone();
        odd.retain(|sequence| sequence % 2 == 1);
        assert_eq!(
            odd,
            batch(&(0..5_000).filter(|n| n % 2 == 1).collect::<Vec<_>>())
        );
    }

    #[test]
    fn chunks_go_back_to_the_pool_when_rows_are_cleared_or_dropped() {
        let pool = ChunkPool::new(4 * CHUNK_BYTES);
        let mut rows = EncodedRows::new_in(pool.clone());
        fill(&mut rows, 0..2_000);
        let used = rows.chunks.len();
        assert!(used >= 2);
        rows.clear();
        assert!(rows.is_empty());
        assert_eq!(pool.free_chunks(), used.min(4));
        // Taken again: no new allocation while the pool has chunks.
        fill(&mut rows, 0..10);
        assert_eq!(pool.free_chunks(), used.min(4) - 1);
        drop(rows);
        assert_eq!(pool.free_chunks(), used.min(4));
        // The pool keeps at most its limit.
        let mut many = EncodedRows::new_in(pool.clone());
        fill(&mut many, 0..10_000);
        drop(many);
        assert_eq!(pool.free_chunks(), 4);
    }

    #[test]
    fn a_row_larger_than_a_chunk_gets_a_chunk_of_its_own() {
        let pool = ChunkPool::new(4 * CHUNK_BYTES);
        let mut rows = EncodedRows::new_in(pool.clone());
        let huge = OffenceEvent {
            evidence_url: Some("u".repeat(CHUNK_BYTES)),
            ..event(1)
        };
        fill(&mut rows, [1]);
        rows.push(&huge.view(), "CCTV_EVENTS@1", "p3", 2);
        fill(&mut rows, [3]);
        assert_eq!(rows.chunks.len(), 3);
        assert!(rows.row_bytes(1).len() > CHUNK_BYTES);
        drop(rows);
        // The oversized chunk is not kept.
        assert_eq!(pool.free_chunks(), 2);
    }
}
