//! The encoding of canonical events on `CCTV_EVENTS`: many events per NATS
//! message, so the broker's per-message cost is paid once per batch.
//!
//! Version 1, all integers little-endian:
//!
//! ```text
//! "CEVB"  magic (4 bytes)
//! u8      version = 1
//! u8      flags   = 0 (a decoder refuses flags it does not know)
//! u16     reserved = 0
//! u32     number of events
//! then per event: u32 length, then that many bytes of canonical event JSON
//! ```
//!
//! The event JSON is `cctv_event::OffenceEvent`'s own (schema-versioned), so
//! new event fields need no new batch version. A message that starts with `{`
//! is read as one event in JSON, the encoding before batches existed.

use bytes::{BufMut, Bytes, BytesMut};

/// Content type of an event batch message (header `Content-Type`).
pub const EVENT_BATCH_CONTENT_TYPE: &str = "application/vnd.cctv.event-batch.v1";
/// The magic bytes that open an event batch.
pub const EVENT_BATCH_MAGIC: &[u8; 4] = b"CEVB";
/// The version this build writes and reads.
pub const EVENT_BATCH_VERSION: u8 = 1;
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

/// Builds one event batch. Reuse it with [`EventBatchWriter::clear`].
#[derive(Debug, Default)]
pub struct EventBatchWriter {
    buffer: BytesMut,
    count: u32,
}

impl EventBatchWriter {
    /// An empty batch.
    pub fn new() -> Self {
        let mut writer = Self::default();
        writer.clear();
        writer
    }

    /// Starts over with no events.
    pub fn clear(&mut self) {
        self.buffer.clear();
        self.buffer.put_slice(EVENT_BATCH_MAGIC);
        self.buffer.put_u8(EVENT_BATCH_VERSION);
        self.buffer.put_u8(0);
        self.buffer.put_u16_le(0);
        self.buffer.put_u32_le(0);
        self.count = 0;
    }

    /// Appends one event's JSON.
    pub fn push(&mut self, event_json: &[u8]) {
        let length = u32::try_from(event_json.len()).unwrap_or(u32::MAX);
        self.buffer.put_u32_le(length);
        self.buffer.put_slice(event_json);
        self.count += 1;
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
        let bytes = self.buffer.split().freeze();
        self.clear();
        bytes
    }
}

/// Encodes `events` (each one event's JSON) as one batch.
pub fn encode_event_batch<'a>(events: impl IntoIterator<Item = &'a [u8]>) -> Bytes {
    let mut writer = EventBatchWriter::new();
    for event in events {
        writer.push(event);
    }
    writer.finish()
}

/// The events of one message, borrowed from its payload.
#[derive(Debug, Clone)]
pub struct EventBatchReader<'a> {
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
}

impl<'a> Iterator for EventBatchReader<'a> {
    type Item = Result<&'a [u8], EventBatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(single) = self.single.take() {
            return Some(Ok(single));
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
        let (event, rest) = rest.split_at(length);
        self.rest = rest;
        self.offset += 4 + length;
        self.remaining -= 1;
        Some(Ok(event))
    }
}

/// Reads a message of `CCTV_EVENTS`: an event batch, or one event in JSON.
pub fn decode_event_batch(payload: &[u8]) -> Result<EventBatchReader<'_>, EventBatchError> {
    if payload.first() == Some(&b'{') {
        return Ok(EventBatchReader {
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
    if version != EVENT_BATCH_VERSION || flags != 0 {
        return Err(EventBatchError::Unsupported { version, flags });
    }
    let count = u32::from_le_bytes([payload[8], payload[9], payload[10], payload[11]]);
    if count as usize > MAX_EVENTS_PER_BATCH {
        return Err(EventBatchError::Malformed(
            "more events than a batch may hold",
        ));
    }
    Ok(EventBatchReader {
        rest: &payload[HEADER_LEN..],
        offset: HEADER_LEN,
        remaining: count,
        single: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(payload: &[u8]) -> Result<Vec<Vec<u8>>, EventBatchError> {
        decode_event_batch(payload)?
            .map(|item| item.map(<[u8]>::to_vec))
            .collect()
    }

    #[test]
    fn round_trip_keeps_order_and_bytes() {
        let events: [&[u8]; 3] = [br#"{"a":1}"#, b"", br#"{"b":"\u00e9"}"#];
        let bytes = encode_event_batch(events);
        assert_eq!(&bytes[..4], b"CEVB");
        assert_eq!(decode_event_batch(&bytes).map(|r| r.remaining()), Ok(3));
        let decoded = all(&bytes).expect("decodes");
        assert_eq!(decoded, events.map(<[u8]>::to_vec).to_vec());
    }

    #[test]
    fn the_writer_is_reusable_after_finish() {
        let mut writer = EventBatchWriter::new();
        assert!(writer.is_empty());
        writer.push(b"{}");
        assert_eq!(writer.len(), 1);
        let first = writer.finish();
        assert!(writer.is_empty());
        assert_eq!(writer.bytes_len(), HEADER_LEN);
        writer.push(b"{\"x\":2}");
        writer.push(b"{}");
        let second = writer.finish();
        assert_eq!(all(&first).expect("first").len(), 1);
        assert_eq!(all(&second).expect("second").len(), 2);
    }

    #[test]
    fn a_json_object_is_one_event() {
        assert_eq!(
            all(br#"{"event_id":"x"}"#),
            Ok(vec![br#"{"event_id":"x"}"#.to_vec()])
        );
    }

    #[test]
    fn broken_batches_are_refused_with_their_reason() {
        assert_eq!(all(b"hello world!"), Err(EventBatchError::NotABatch));
        assert_eq!(all(b""), Err(EventBatchError::Truncated { at: 0 }));
        assert_eq!(all(b"CEV"), Err(EventBatchError::Truncated { at: 3 }));
        let mut bytes = encode_event_batch([&b"{}"[..]]).to_vec();
        bytes[4] = 2;
        assert_eq!(
            all(&bytes),
            Err(EventBatchError::Unsupported {
                version: 2,
                flags: 0
            })
        );
        let good = encode_event_batch([&b"{}"[..], &b"{}"[..]]).to_vec();
        assert!(matches!(
            all(&good[..good.len() - 1]),
            Err(EventBatchError::Truncated { .. })
        ));
        let mut extra = good.clone();
        extra.push(0);
        assert_eq!(
            all(&extra),
            Err(EventBatchError::Malformed("bytes after the last event"))
        );
        let mut huge = good;
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(all(&huge), Err(EventBatchError::Malformed(_))));
    }
}
