//! Plate privacy: a keyed hash (HMAC-SHA256) of the licence plate, stored
//! instead of the plate itself when the ingest service is configured so.
//!
//! The hash is taken over the plate normalised (uppercase, without spaces and
//! dashes), so `404 ZXC-16` and `404zxc16` give one value, and is written as
//! `hmac:<hex of the first 16 bytes of the MAC>`. With the same key the same
//! plate always gives the same value, so counts per plate (repeat offenders)
//! and joins across days still work; without the key the value cannot be
//! turned back into a plate, nor checked against a guessed one. The key is
//! passed in by the caller: this crate reads no environment.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Prefix of a hashed plate, telling it apart from a clear one.
pub const PLATE_HASH_PREFIX: &str = "hmac:";

/// Bytes of the MAC kept in the stored value (128 bits: no collision among
/// the plates of a country, half the text of the full MAC).
const KEPT_MAC_BYTES: usize = 16;

/// The secret key of the plate hash. Its `Debug` form never shows the key.
#[derive(Clone)]
pub struct PlateKey(Vec<u8>);

impl PlateKey {
    /// Shortest key accepted: 32 bytes, the output size of SHA-256.
    pub const MIN_BYTES: usize = 32;

    /// A key from its bytes; `None` when shorter than [`PlateKey::MIN_BYTES`].
    pub fn new(bytes: impl Into<Vec<u8>>) -> Option<PlateKey> {
        let bytes = bytes.into();
        (bytes.len() >= Self::MIN_BYTES).then_some(PlateKey(bytes))
    }

    /// The keyed hash of `plate`: `hmac:<32 hex digits>`, or `None` when the
    /// plate is empty once normalised (nothing to hash).
    pub fn hash(&self, plate: &str) -> Option<String> {
        let normalised = normalise_plate(plate);
        if normalised.is_empty() {
            return None;
        }
        // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).ok()?;
        mac.update(normalised.as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut text = String::with_capacity(PLATE_HASH_PREFIX.len() + 2 * KEPT_MAC_BYTES);
        text.push_str(PLATE_HASH_PREFIX);
        for byte in digest.iter().take(KEPT_MAC_BYTES) {
            text.push(hex_digit(byte >> 4));
            text.push(hex_digit(byte & 0x0f));
        }
        Some(text)
    }
}

impl std::fmt::Debug for PlateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PlateKey(<{} bytes, redacted>)", self.0.len())
    }
}

/// The form of a plate that is hashed: uppercase, without whitespace and
/// dashes, so that spellings of one plate by different cameras agree.
pub fn normalise_plate(plate: &str) -> String {
    plate
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .flat_map(char::to_uppercase)
        .collect()
}

fn hex_digit(nibble: u8) -> char {
    char::from(b"0123456789abcdef"[usize::from(nibble & 0x0f)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(fill: u8) -> PlateKey {
        PlateKey::new(vec![fill; 32]).unwrap()
    }

    #[test]
    fn the_same_plate_gives_the_same_hash_and_spellings_agree() {
        let hashed = key(7).hash("404ZXC16").unwrap();
        assert!(hashed.starts_with(PLATE_HASH_PREFIX));
        assert_eq!(hashed.len(), PLATE_HASH_PREFIX.len() + 32);
        assert!(hashed[PLATE_HASH_PREFIX.len()..]
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        for spelling in ["404ZXC16", "404 zxc 16", "404-ZXC-16", " 404zxc16\t"] {
            assert_eq!(key(7).hash(spelling).as_deref(), Some(hashed.as_str()));
        }
        assert_ne!(key(7).hash("404ZXC17"), Some(hashed.clone()));
        assert!(!hashed.contains("404"));
    }

    #[test]
    fn another_key_gives_another_hash() {
        assert_ne!(key(7).hash("404ZXC16"), key(8).hash("404ZXC16"));
    }

    #[test]
    fn the_hash_is_hmac_sha256_of_the_normalised_plate() {
        // Computed independently:
        // printf 404ZXC16 | openssl dgst -sha256 -hmac 0123456789abcdef0123456789abcdef
        let key = PlateKey::new(*b"0123456789abcdef0123456789abcdef").unwrap();
        assert_eq!(
            key.hash("404-zxc 16").as_deref(),
            Some("hmac:3f01b1308c605bb96fab7562a0ce257a")
        );
    }

    #[test]
    fn short_keys_and_empty_plates_are_refused() {
        assert!(PlateKey::new(vec![1u8; 31]).is_none());
        assert!(PlateKey::new(Vec::new()).is_none());
        assert_eq!(key(7).hash(" - "), None);
        assert_eq!(key(7).hash(""), None);
    }

    #[test]
    fn debug_never_shows_the_key() {
        let key = PlateKey::new(*b"secret-secret-secret-secret-secret").unwrap();
        let shown = format!("{key:?}");
        assert!(!shown.contains("secret"), "{shown}");
    }
}
