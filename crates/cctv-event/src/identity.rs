//! Deterministic event ids: the same real-world offence always gets the same id.

use uuid::Uuid;

/// Namespace of the UUIDv5 event ids derived by this project. Never change it:
/// every stored id depends on it.
pub const EVENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x5f0c_c7a1_2b8e_4d4f_9a61_c3e0_7d21_b6a4);

/// Derives the event id of an offence from its identity key.
///
/// The key names the real-world offence (for example the camera, the vendor's own
/// event identity and the offence code). A republished or repeated message yields
/// the same key and so the same id, which is what deduplication keys on.
pub fn event_id(identity_key: &str) -> Uuid {
    Uuid::new_v5(&EVENT_ID_NAMESPACE, identity_key.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_key_same_id_and_different_keys_differ() {
        assert_eq!(event_id("a|b"), event_id("a|b"));
        assert_ne!(event_id("a|b"), event_id("a|c"));
        assert_eq!(event_id("x").get_version_num(), 5);
    }
}
