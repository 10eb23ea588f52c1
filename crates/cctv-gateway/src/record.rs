//! The spool's record format, pure: one accepted vendor message as bytes,
//! and the frame that makes a torn or damaged record detectable.
//!
//! A frame is `u32 length | u32 CRC-32 of the payload | payload`
//! (little-endian). A frame cut short by a crash reads as
//! [`Frame::Incomplete`], one whose bytes changed as [`Frame::Corrupt`]; the
//! spool keeps what comes before either.
//!
//! A payload (version 1) is:
//!
//! ```text
//! u8  version = 1
//! u8  format (index in cctv_normalize::Format::ALL)
//! i64 received_at, milliseconds since the epoch
//! u16 length + id           (the message id, ids.rs)
//! u16 length + camera id    (0: none)
//! u16 length + attachments  (0: none; "name=bytes;..." of images left out)
//! u32 length + body         (the bytes passed on, exactly as received)
//! ```

use cctv_normalize::Format;

/// Bytes of a frame before its payload.
pub(crate) const FRAME_HEADER_BYTES: usize = 8;
/// Largest payload a frame may declare: a message of at most 1 MiB plus its
/// texts. A larger length means a damaged header.
pub(crate) const MAX_PAYLOAD_BYTES: usize = 2 << 20;
/// The payload version written.
const VERSION: u8 = 1;
/// Longest text field (id, camera, attachments).
const MAX_TEXT_BYTES: usize = u16::MAX as usize;

/// One accepted vendor message, as the spool keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Message {
    /// Its format.
    pub(crate) format: Format,
    /// Its id (`Nats-Msg-Id` or CloudEvents `id`).
    pub(crate) id: String,
    /// When the gateway received it, ms since the epoch.
    pub(crate) received_at_ms: i64,
    /// The camera, when the config names it.
    pub(crate) camera_id: Option<String>,
    /// Images left out of it, `name=bytes;...`, when there were any.
    pub(crate) attachments: Option<String>,
    /// The body exactly as received.
    pub(crate) body: Vec<u8>,
}

/// What the bytes at the start of a buffer hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame {
    /// A whole frame: its payload is `payload_len` bytes after the header,
    /// and the next frame starts `FRAME_HEADER_BYTES + payload_len` in.
    Complete {
        /// Bytes of the payload.
        payload_len: usize,
    },
    /// Fewer bytes than the frame needs: the end of what was written.
    Incomplete,
    /// A length out of bounds or a checksum that does not match.
    Corrupt,
}

/// Appends `message` as one frame to `out`.
pub(crate) fn encode_frame(message: &Message, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_BYTES]);
    out.push(VERSION);
    out.push(format_index(message.format));
    out.extend_from_slice(&message.received_at_ms.to_le_bytes());
    put_text(out, &message.id);
    put_text(out, message.camera_id.as_deref().unwrap_or(""));
    put_text(out, message.attachments.as_deref().unwrap_or(""));
    out.extend_from_slice(&(message.body.len() as u32).to_le_bytes());
    out.extend_from_slice(&message.body);
    let payload = &out[start + FRAME_HEADER_BYTES..];
    let length = payload.len() as u32;
    let checksum = crc32fast::hash(payload);
    out[start..start + 4].copy_from_slice(&length.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&checksum.to_le_bytes());
}

/// Reads the frame at the start of `bytes`.
pub(crate) fn read_frame(bytes: &[u8]) -> Frame {
    let (Some(length), Some(checksum)) = (read_u32(bytes, 0), read_u32(bytes, 4)) else {
        return Frame::Incomplete;
    };
    let payload_len = length as usize;
    if payload_len > MAX_PAYLOAD_BYTES {
        return Frame::Corrupt;
    }
    let Some(payload) = bytes.get(FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + payload_len) else {
        return Frame::Incomplete;
    };
    if crc32fast::hash(payload) != checksum {
        return Frame::Corrupt;
    }
    Frame::Complete { payload_len }
}

/// Decodes a payload (after its frame was checked); `None` when it is not
/// a payload this version can read.
pub(crate) fn decode_payload(payload: &[u8]) -> Option<Message> {
    let mut reader = Reader { bytes: payload };
    if reader.take(1)? != [VERSION] {
        return None;
    }
    let format = *Format::ALL.get(usize::from(*reader.take(1)?.first()?))?;
    let received_at_ms = i64::from_le_bytes(reader.take(8)?.try_into().ok()?);
    let id = reader.text()?;
    let camera_id = Some(reader.text()?).filter(|text| !text.is_empty());
    let attachments = Some(reader.text()?).filter(|text| !text.is_empty());
    let body_len = u32::from_le_bytes(reader.take(4)?.try_into().ok()?) as usize;
    let body = reader.take(body_len)?.to_vec();
    if !reader.bytes.is_empty() {
        return None;
    }
    Some(Message {
        format,
        id,
        received_at_ms,
        camera_id,
        attachments,
        body,
    })
}

/// Bytes `message` takes as a frame.
pub(crate) fn frame_len(message: &Message) -> usize {
    FRAME_HEADER_BYTES
        + 2
        + 8
        + 3 * 2
        + message.id.len().min(MAX_TEXT_BYTES)
        + message
            .camera_id
            .as_deref()
            .map_or(0, str::len)
            .min(MAX_TEXT_BYTES)
        + message
            .attachments
            .as_deref()
            .map_or(0, str::len)
            .min(MAX_TEXT_BYTES)
        + 4
        + message.body.len()
}

fn format_index(format: Format) -> u8 {
    Format::ALL
        .iter()
        .position(|known| *known == format)
        .unwrap_or(0) as u8
}

/// Writes a length-prefixed text, cut at [`MAX_TEXT_BYTES`] on a character
/// boundary (the callers bound their texts far below).
fn put_text(out: &mut Vec<u8>, text: &str) {
    let mut end = text.len().min(MAX_TEXT_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&(end as u16).to_le_bytes());
    out.extend_from_slice(&text.as_bytes()[..end]);
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < count {
            return None;
        }
        let (head, rest) = self.bytes.split_at(count);
        self.bytes = rest;
        Some(head)
    }

    fn text(&mut self) -> Option<String> {
        let length = u16::from_le_bytes(self.take(2)?.try_into().ok()?);
        let bytes = self.take(usize::from(length))?;
        String::from_utf8(bytes.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(body: &[u8]) -> Message {
        Message {
            format: Format::Dahua,
            id: "gw1-00112233445566778899aabbccddeeff".into(),
            received_at_ms: 1_795_749_305_250,
            camera_id: Some("AST-0412".into()),
            attachments: Some("plate.jpg=48213".into()),
            body: body.to_vec(),
        }
    }

    #[test]
    fn a_message_round_trips_through_its_frame() {
        for original in [
            message(b"Code=TrafficOverSpeed;action=Pulse;index=0"),
            Message {
                camera_id: None,
                attachments: None,
                format: Format::Frigate,
                ..message(&[0xff, 0, 1])
            },
            message(b""),
        ] {
            let mut bytes = Vec::new();
            encode_frame(&original, &mut bytes);
            assert_eq!(bytes.len(), frame_len(&original));
            let Frame::Complete { payload_len } = read_frame(&bytes) else {
                panic!("not a whole frame");
            };
            assert_eq!(FRAME_HEADER_BYTES + payload_len, bytes.len());
            let decoded = decode_payload(&bytes[FRAME_HEADER_BYTES..]).unwrap();
            assert_eq!(decoded, original);
        }
    }

    #[test]
    fn a_torn_frame_is_incomplete_and_a_changed_one_corrupt() {
        let mut bytes = Vec::new();
        encode_frame(&message(b"body"), &mut bytes);
        for cut in 0..bytes.len() {
            assert_eq!(read_frame(&bytes[..cut]), Frame::Incomplete, "cut at {cut}");
        }
        for position in 4..bytes.len() {
            let mut changed = bytes.clone();
            changed[position] ^= 0x40;
            assert_eq!(read_frame(&changed), Frame::Corrupt, "byte {position}");
        }
        // A length beyond any record is damage, not a record still being written.
        let mut huge = bytes.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(read_frame(&huge), Frame::Corrupt);
    }

    #[test]
    fn frames_follow_each_other_and_unknown_payloads_are_refused() {
        let mut bytes = Vec::new();
        encode_frame(&message(b"one"), &mut bytes);
        let first_len = bytes.len();
        encode_frame(&message(b"two"), &mut bytes);
        let Frame::Complete { payload_len } = read_frame(&bytes[first_len..]) else {
            panic!("second frame");
        };
        let second = decode_payload(&bytes[first_len + 8..first_len + 8 + payload_len]).unwrap();
        assert_eq!(second.body, b"two");
        assert_eq!(decode_payload(&[2, 0]), None, "a future version");
        assert_eq!(decode_payload(&[1, 99]), None, "an unknown format");
        let mut trailing = bytes[8..first_len].to_vec();
        trailing.push(0);
        assert_eq!(decode_payload(&trailing), None, "bytes after the body");
    }
}
