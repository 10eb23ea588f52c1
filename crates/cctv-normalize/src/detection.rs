//! The vendor-neutral result of decoding: what a payload says about one offence
//! before the taxonomy, the registry and the checks are applied.

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Room an identity key is written into: the key and the `|<code>` the
/// normaliser appends to it fit without a reallocation (`format!` starts
/// from the length of its literal pieces and doubles from there).
pub(crate) const IDENTITY_KEY_CAPACITY: usize = 128;

/// `format!` into a string with [`IDENTITY_KEY_CAPACITY`] bytes of room.
macro_rules! identity_key {
    ($($arg:tt)*) => {{
        let mut key = String::with_capacity($crate::detection::IDENTITY_KEY_CAPACITY);
        // Writing into a String cannot fail.
        let _ = std::fmt::Write::write_fmt(&mut key, format_args!($($arg)*));
        key
    }};
}
pub(crate) use identity_key;

/// A confidence as reported, with the scale it was reported on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Confidence {
    /// The value as reported.
    pub raw: f64,
    /// The top of its scale (1, 100 or 255).
    pub scale: f64,
}

/// One offence candidate decoded from a payload.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Detection {
    /// The offence name as the source spells it (code, alias or vendor name).
    pub offence_name: String,
    /// Key naming the real-world offence, from which the event id is derived
    /// when `explicit_event_id` is absent. Must be stable across repeats.
    pub identity_key: String,
    /// An event id the source gave explicitly.
    pub explicit_event_id: Option<Uuid>,
    /// Camera id given by the payload.
    pub camera_id: Option<String>,
    /// Vendor device key for the registry's `identities` column:
    /// `hikvision:<mac>/<channel>` (lowercase MAC; else `deviceID`, else IP),
    /// `dahua:<MachineName or gateway>/<channel>`,
    /// `onvif:<gateway>/<video source token>`, `deepstream:<sensor id>`,
    /// `frigate:<gateway>/<camera name>`. Also the camera id of a camera the
    /// registry does not know.
    pub device_identity: Option<String>,
    /// Region code given by the payload, used only for unknown cameras.
    pub payload_region: Option<String>,
    /// When the offence happened.
    pub detected_at: DateTime<Utc>,
    /// The device time text as received.
    pub device_time: Option<String>,
    /// Confidence on the source's scale.
    pub confidence: Option<Confidence>,
    /// Licence plate.
    pub plate: Option<String>,
    /// Measured speed, km/h.
    pub speed_kmh: Option<f64>,
    /// Speed limit, km/h.
    pub speed_limit_kmh: Option<f64>,
    /// Latitude from the payload.
    pub lat: Option<f64>,
    /// Longitude from the payload.
    pub lon: Option<f64>,
    /// Evidence link.
    pub evidence_url: Option<String>,
    /// The source's own event id.
    pub source_event_id: Option<String>,
}
