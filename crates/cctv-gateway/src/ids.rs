//! Message ids, derived from the message itself so that a device's retry of
//! the same push is a repeat: the same id, dropped by `CCTV_RAW`'s duplicate
//! window and, past it, counted once by its event id downstream.
//!
//! An item id (`Nats-Msg-Id` of a single message, CloudEvents `id` in a
//! batch) is `<gateway_id>-<32 hex digits>`, the first 16 bytes of
//! SHA-256 over the device identity, the format and the body. The gateway
//! prefix keeps ids unique across gateways (JetStream's duplicate window is
//! stream-wide, contract section 2). A batch's `Nats-Msg-Id` is
//! `<gateway_id>-b<32 hex digits>` over its item ids in order: a batch sent
//! again after a lost ack is the same batch.

use std::fmt::Write as _;

use sha2::{Digest, Sha256};

/// Bytes of the hash kept in an id.
const ID_HASH_BYTES: usize = 16;

/// The id of one message: `device` is who sent it (`http:<device id>` or
/// `mqtt:<topic>`), `format` its format token, `body` the bytes passed on.
pub(crate) fn message_id(gateway_id: &str, device: &str, format: &str, body: &[u8]) -> String {
    let mut hasher = Sha256::new();
    // Length prefixes keep ("ab", "c") and ("a", "bc") apart.
    for part in [device.as_bytes(), format.as_bytes()] {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher.update(body);
    with_hash(gateway_id, "", &hasher.finalize())
}

/// The `Nats-Msg-Id` of a batch of the items `ids`, in order.
pub(crate) fn batch_id<'a>(gateway_id: &str, ids: impl IntoIterator<Item = &'a str>) -> String {
    let mut hasher = Sha256::new();
    for id in ids {
        hasher.update((id.len() as u64).to_le_bytes());
        hasher.update(id.as_bytes());
    }
    with_hash(gateway_id, "b", &hasher.finalize())
}

fn with_hash(gateway_id: &str, marker: &str, digest: &[u8]) -> String {
    let mut id = String::with_capacity(gateway_id.len() + 2 + 2 * ID_HASH_BYTES);
    id.push_str(gateway_id);
    id.push('-');
    id.push_str(marker);
    for byte in digest.iter().take(ID_HASH_BYTES) {
        // Writing into a String cannot fail.
        let _ = write!(id, "{byte:02x}");
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_push_gets_the_same_id_and_anything_else_another() {
        let id = message_id("gw1", "http:cam1", "hikvision", b"<xml/>");
        assert_eq!(id, message_id("gw1", "http:cam1", "hikvision", b"<xml/>"));
        assert!(id.starts_with("gw1-"), "{id}");
        assert_eq!(id.len(), "gw1-".len() + 32);
        for other in [
            message_id("gw2", "http:cam1", "hikvision", b"<xml/>"),
            message_id("gw1", "http:cam2", "hikvision", b"<xml/>"),
            message_id("gw1", "http:cam1", "dahua", b"<xml/>"),
            message_id("gw1", "http:cam1", "hikvision", b"<xml />"),
            // The boundary between the parts matters.
            message_id("gw1", "http:cam1h", "ikvision", b"<xml/>"),
        ] {
            assert_ne!(id, other);
        }
    }

    #[test]
    fn a_batch_id_depends_on_its_items_and_their_order() {
        let batch = batch_id("gw1", ["a", "b"]);
        assert!(batch.starts_with("gw1-b"), "{batch}");
        assert_eq!(batch, batch_id("gw1", ["a", "b"]));
        assert_ne!(batch, batch_id("gw1", ["b", "a"]));
        assert_ne!(batch, batch_id("gw1", ["ab"]));
    }
}
