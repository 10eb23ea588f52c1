//! The encoding of canonical events on `CCTV_EVENTS`: many events per NATS
//! message, so the broker's per-message cost is paid once per batch.
//!
//! All integers little-endian:
//!
//! ```text
//! "CEVB"  magic (4 bytes)
//! u8      version: 2 (written), 1 (still read)
//! u8      flags   = 0 (a decoder refuses flags it does not know)
//! u16     reserved = 0
//! u32     number of events
//! then per event: u32 length, then that many bytes of one event
//! ```
//!
//! - Version 2: each event is a Protocol Buffers message
//!   `cctv.event.OffenceEvent`, declared in
//!   `crates/cctv-event/proto/offence_event.proto` (about 40 % of the JSON's
//!   size, and read without allocating: [`cctv_event::EventView`]).
//! - Version 1: each event is `cctv_event::OffenceEvent`'s JSON. Written by
//!   builds before 2026-12-06; still read, so an upgrade can happen while
//!   the stream holds such batches.
//! - A message that starts with `{` is one event in JSON, the encoding
//!   before batches existed.
//!
//! Both event encodings carry the event schema version (`v`), so new event
//! fields need no new batch version; readers skip fields they do not know.

use cctv_event::{EventDecodeError, EventView, OffenceEvent};

use bytes::Bytes;

/// Content type of an event batch message (header `Content-Type`) as written.
pub const EVENT_BATCH_CONTENT_TYPE: &str = "application/vnd.cctv.event-batch.v2";
/// The magic bytes that open an event batch.
pub const EVENT_BATCH_MAGIC: &[u8; 4] = b"CEVB";
/// The version this build writes: protobuf events.
pub const EVENT_BATCH_VERSION: u8 = 2;
/// The older version, JSON events, which this build still reads.
pub const EVENT_BATCH_VERSION_JSON: u8 = 1;
/// Bytes before the first event.
const HEADER_LEN: usize = 12;
/// Most events one batch may carry.
pub const MAX_EVENTS_PER_BATCH: usize = 100_000;

/// Why a message is not a readable event batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventBatchError {
    /// Neither the batch magic nor a JSON object.
    #[error("not an event batch (unknown magic)")]
    NotABatch,
    /// A version or flags this build does not know.
    #[error("event batch version {version} flags {flags:#x} not supported")]
    Unsupported {
        /// Version byte found.
        version: u8,
        /// Flags byte found.
        flags: u8,
    },
    /// The bytes end before what the header or a length promised.
    #[error("event batch truncated at byte {at}")]
    Truncated {
        /// Offset where the data ran out.
        at: usize,
    },
    /// Bytes left after the last event, or a count beyond the limit.
    #[error("event batch malformed: {0}")]
    Malformed(&'static str),
}

/// Why one event of a batch cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// A JSON event (version 1) that does not parse.
    #[error("event JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A binary event (version 2) that does not decode.
    #[error("{0}")]
    Binary(#[from] EventDecodeError),
}

/// How the events of a batch are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventEncoding {
    /// Version 2: protobuf.
    Binary,
    /// Version 1: JSON.
    Json,
}

impl EventEncoding {
    fn version(self) -> u8 {
        match self {
            EventEncoding::Binary => EVENT_BATCH_VERSION,
            EventEncoding::Json => EVENT_BATCH_VERSION_JSON,
        }
    }
}

/// One event of a batch, still encoded, borrowed from the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodedEvent<'a> {
    encoding: EventEncoding,
    bytes: &'a [u8],
}

impl<'a> EncodedEvent<'a> {
    /// The event's bytes as carried in the batch.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// How the bytes are encoded.
    pub fn encoding(&self) -> EventEncoding {
        self.encoding
    }

    /// Decodes the event into an owned [`OffenceEvent`].
    pub fn to_event(&self) -> Result<OffenceEvent, EventError> {
        match self.encoding {
            EventEncoding::Binary => Ok(OffenceEvent::from_binary(self.bytes)?),
            EventEncoding::Json => Ok(OffenceEvent::from_json(self.bytes)?),
        }
    }

    /// Calls `visit` with the event borrowed: a binary event is read in
    /// place, without allocating; a JSON event is parsed first.
    pub fn with_view<R>(&self, visit: impl FnOnce(&EventView<'_>) -> R) -> Result<R, EventError> {
        match self.encoding {
            EventEncoding::Binary => Ok(visit(&EventView::decode(self.bytes)?)),
            EventEncoding::Json => Ok(visit(&OffenceEvent::from_json(self.bytes)?.view())),
        }
    }
}

/// Builds one event batch. Reuse it with [`EventBatchWriter::finish`].
#[derive(Debug)]
pub struct EventBatchWriter {
    encoding: EventEncoding,
    buffer: Vec<u8>,
    count: u32,
}

impl Default for EventBatchWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBatchWriter {
    /// An empty batch of binary events (version 2).
    pub fn new() -> Self {
        Self::with_encoding(EventEncoding::Binary)
    }

    /// An empty batch of events in `encoding` (version 1 only to produce
    /// what older builds wrote, e.g. in tests).
    pub fn with_encoding(encoding: EventEncoding) -> Self {
        let mut writer = Self {
            encoding,
            buffer: Vec::new(),
            count: 0,
        };
        writer.clear();
        writer
    }

    /// Starts over with no events.
    pub fn clear(&mut self) {
        self.buffer.clear();
        self.buffer.extend_from_slice(EVENT_BATCH_MAGIC);
        self.buffer.push(self.encoding.version());
        self.buffer.push(0);
        self.buffer.extend_from_slice(&0u16.to_le_bytes());
        self.buffer.extend_from_slice(&0u32.to_le_bytes());
        self.count = 0;
    }

    /// Appends `event`, encoded as this batch's version says.
    pub fn push_event(&mut self, event: &OffenceEvent) {
        let length_at = self.buffer.len();
        self.buffer.extend_from_slice(&[0; 4]);
        match self.encoding {
            EventEncoding::Binary => event.write_binary(&mut self.buffer),
            EventEncoding::Json => event.write_json(&mut self.buffer),
        }
        let length = self.buffer.len() - length_at - 4;
        let length = u32::try_from(length).unwrap_or(u32::MAX);
        self.buffer[length_at..length_at + 4].copy_from_slice(&length.to_le_bytes());
        self.count += 1;
    }

    /// Appends one event already encoded as this batch's version says.
    pub fn push_encoded(&mut self, event: &[u8]) {
        let length = u32::try_from(event.len()).unwrap_or(u32::MAX);
        self.buffer.extend_from_slice(&length.to_le_bytes());
        self.buffer.extend_from_slice(event);
        self.count += 1;
    }

    /// Makes room for at least `additional` more bytes, so that a batch
    /// expected to grow large is not copied at every doubling.
    pub fn reserve(&mut self, additional: usize) {
        self.buffer.reserve(additional);
    }

    /// Events so far.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether no event was pushed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Encoded size so far.
    pub fn bytes_len(&self) -> usize {
        self.buffer.len()
    }

    /// The encoded batch; the writer is empty again afterwards.
    pub fn finish(&mut self) -> Bytes {
        let count = self.count.to_le_bytes();
        self.buffer[8..12].copy_from_slice(&count);
        let capacity = self.buffer.capacity();
        let bytes = Bytes::from(std::mem::replace(
            &mut self.buffer,
            Vec::with_capacity(capacity),
        ));
        self.clear();
        bytes
    }
}

/// Encodes `events` as one batch (version 2).
pub fn encode_event_batch<'a>(events: impl IntoIterator<Item = &'a OffenceEvent>) -> Bytes {
    let mut writer = EventBatchWriter::new();
    for event in events {
        writer.push_event(event);
    }
    writer.finish()
}

/// The events of one message, borrowed from its payload.
#[derive(Debug, Clone)]
pub struct EventBatchReader<'a> {
    encoding: EventEncoding,
    rest: &'a [u8],
    offset: usize,
    remaining: u32,
    single: Option<&'a [u8]>,
}

impl<'a> EventBatchReader<'a> {
    /// Events not yet read.
    pub fn remaining(&self) -> usize {
        self.remaining as usize + usize::from(self.single.is_some())
    }

    /// How the batch's events are encoded.
    pub fn encoding(&self) -> EventEncoding {
        self.encoding
    }
}

impl<'a> Iterator for EventBatchReader<'a> {
    type Item = Result<EncodedEvent<'a>, EventBatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        let encoding = self.encoding;
        let event = |bytes| EncodedEvent { encoding, bytes };
        if let Some(single) = self.single.take() {
            return Some(Ok(event(single)));
        }
        if self.remaining == 0 {
            if self.rest.is_empty() {
                return None;
            }
            self.rest = &[];
            return Some(Err(EventBatchError::Malformed(
                "bytes after the last event",
            )));
        }
        let Some((length, rest)) = self.rest.split_first_chunk::<4>() else {
            self.remaining = 0;
            self.rest = &[];
            return Some(Err(EventBatchError::Truncated { at: self.offset }));
        };
        let length = u32::from_le_bytes(*length) as usize;
        if rest.len() < length {
            self.remaining = 0;
            self.rest = &[];
            return Some(Err(EventBatchError::Truncated {
                at: self.offset + 4 + rest.len(),
            }));
        }
        let (bytes, rest) = rest.split_at(length);
        self.rest = rest;
        self.offset += 4 + length;
        self.remaining -= 1;
        Some(Ok(event(bytes)))
    }
}

/// Reads a message of `CCTV_EVENTS`: an event batch (version 2 or 1), or
/// one event in JSON.
pub fn decode_event_batch(payload: &[u8]) -> Result<EventBatchReader<'_>, EventBatchError> {
    if payload.first() == Some(&b'{') {
        return Ok(EventBatchReader {
            encoding: EventEncoding::Json,
            rest: &[],
            offset: 0,
            remaining: 0,
            single: Some(payload),
        });
    }
    if payload.len() < HEADER_LEN {
        return if payload.starts_with(&EVENT_BATCH_MAGIC[..payload.len().min(4)]) {
            Err(EventBatchError::Truncated { at: payload.len() })
        } else {
            Err(EventBatchError::NotABatch)
        };
    }
    if &payload[..4] != EVENT_BATCH_MAGIC {
        return Err(EventBatchError::NotABatch);
    }
    let (version, flags) = (payload[4], payload[5]);
    let encoding = match (version, flags) {
        (EVENT_BATCH_VERSION, 0) => EventEncoding::Binary,
        (EVENT_BATCH_VERSION_JSON, 0) => EventEncoding::Json,
        _ => return Err(EventBatchError::Unsupported { version, flags }),
    };
    let count = u32::from_le_bytes([payload[8], payload[9], payload[10], payload[11]]);
    if count as usize > MAX_EVENTS_PER_BATCH {
        return Err(EventBatchError::Malformed(
            "more events than a batch may hold",
        ));
    }
    Ok(EventBatchReader {
        encoding,
        rest: &payload[HEADER_LEN..],
        offset: HEADER_LEN,
        remaining: count,
        single: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: u128) -> OffenceEvent {
        OffenceEvent {
            event_id: uuid::Uuid::from_u128(n),
            camera_id: format!("cam-{n}"),
            plate: Some("\u{e9}".into()),
            ..OffenceEvent::example()
        }
    }

    fn all(payload: &[u8]) -> Result<Vec<OffenceEvent>, String> {
        decode_event_batch(payload)
            .map_err(|e| e.to_string())?
            .map(|item| {
                item.map_err(|e| e.to_string())
                    .and_then(|event| event.to_event().map_err(|e| e.to_string()))
            })
            .collect()
    }

    fn raw(payload: &[u8]) -> Result<Vec<Vec<u8>>, EventBatchError> {
        decode_event_batch(payload)?
            .map(|item| item.map(|event| event.bytes().to_vec()))
            .collect()
    }

    #[test]
    fn round_trip_keeps_order_and_every_field() {
        let events = [event(1), event(2), event(3)];
        let bytes = encode_event_batch(&events);
        assert_eq!(&bytes[..4], b"CEVB");
        assert_eq!(bytes[4], EVENT_BATCH_VERSION);
        let reader = decode_event_batch(&bytes).expect("a batch");
        assert_eq!(reader.remaining(), 3);
        assert_eq!(reader.encoding(), EventEncoding::Binary);
        assert_eq!(all(&bytes), Ok(events.to_vec()));
    }

    #[test]
    fn version_1_batches_and_single_json_events_are_still_read() {
        let events = [event(1), event(2)];
        let mut writer = EventBatchWriter::with_encoding(EventEncoding::Json);
        for event in &events {
            writer.push_event(event);
        }
        let bytes = writer.finish();
        assert_eq!(bytes[4], EVENT_BATCH_VERSION_JSON);
        assert_eq!(all(&bytes), Ok(events.to_vec()));
        let single = events[0].to_json();
        assert_eq!(all(&single), Ok(vec![events[0].clone()]));
        // The view of a JSON event is the event's own view.
        let reader = decode_event_batch(&bytes).expect("a batch");
        for (item, event) in reader.zip(&events) {
            let id = item
                .expect("an item")
                .with_view(|view| view.event_id)
                .expect("decodes");
            assert_eq!(id, event.event_id);
        }
    }

    #[test]
    fn binary_events_are_viewed_in_place() {
        let bytes = encode_event_batch(&[event(9)]);
        let item = decode_event_batch(&bytes)
            .expect("a batch")
            .next()
            .expect("one event")
            .expect("readable");
        let camera = item
            .with_view(|view| view.camera_id.as_ptr())
            .expect("decodes");
        let start = bytes.as_ptr() as usize;
        let camera = camera as usize;
        assert!(
            camera >= start && camera < start + bytes.len(),
            "the view borrows the payload"
        );
    }

    #[test]
    fn the_writer_is_reusable_after_finish() {
        let mut writer = EventBatchWriter::new();
        assert!(writer.is_empty());
        writer.push_event(&event(1));
        assert_eq!(writer.len(), 1);
        let first = writer.finish();
        assert!(writer.is_empty());
        assert_eq!(writer.bytes_len(), HEADER_LEN);
        let mut encoded = Vec::new();
        event(2).write_binary(&mut encoded);
        writer.push_encoded(&encoded);
        writer.push_event(&event(3));
        let second = writer.finish();
        assert_eq!(all(&first), Ok(vec![event(1)]));
        assert_eq!(all(&second), Ok(vec![event(2), event(3)]));
    }

    #[test]
    fn broken_batches_are_refused_with_their_reason() {
        assert_eq!(raw(b"hello world!"), Err(EventBatchError::NotABatch));
        assert_eq!(raw(b""), Err(EventBatchError::Truncated { at: 0 }));
        assert_eq!(raw(b"CEV"), Err(EventBatchError::Truncated { at: 3 }));
        let mut bytes = encode_event_batch(&[event(1)]).to_vec();
        bytes[4] = 3;
        assert_eq!(
            raw(&bytes),
            Err(EventBatchError::Unsupported {
                version: 3,
                flags: 0
            })
        );
        bytes[4] = EVENT_BATCH_VERSION;
        bytes[5] = 1;
        assert_eq!(
            raw(&bytes),
            Err(EventBatchError::Unsupported {
                version: 2,
                flags: 1
            })
        );
        let good = encode_event_batch(&[event(1), event(2)]).to_vec();
        assert!(matches!(
            raw(&good[..good.len() - 1]),
            Err(EventBatchError::Truncated { .. })
        ));
        let mut extra = good.clone();
        extra.push(0);
        assert_eq!(
            raw(&extra),
            Err(EventBatchError::Malformed("bytes after the last event"))
        );
        let mut huge = good;
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(raw(&huge), Err(EventBatchError::Malformed(_))));
    }

    #[test]
    fn a_broken_event_is_an_error_of_its_own() {
        let mut writer = EventBatchWriter::new();
        writer.push_event(&event(1));
        writer.push_encoded(b"\x12\x03abc");
        let bytes = writer.finish();
        let items: Vec<_> = decode_event_batch(&bytes)
            .expect("a batch")
            .map(|item| item.expect("framed").to_event())
            .collect();
        assert!(items[0].is_ok());
        assert!(matches!(items[1], Err(EventError::Binary(_))));
    }
}
