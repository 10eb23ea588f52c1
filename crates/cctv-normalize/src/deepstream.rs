//! Decoder for NVIDIA DeepStream `nvmsgconv` full-schema messages (docs/formats.md,
//! "deepstream").
//!
//! One message describes one object seen in one frame: `sensor`, `object`,
//! `event` and an `@timestamp`. A tracked object produces a message every few
//! frames, each with fresh random `messageid` and `event.id`, so those ids are
//! worthless for counting. The real-world offence is named by the tracker id
//! instead: `deepstream|<sensor.id>|<object.id>|<event.type>`, the same for
//! every frame of one tracked object. An object without a tracker id (absent,
//! or DeepStream's `UNTRACKED_OBJECT_ID`) can only be named by what it is:
//! sensor, type, instant and plate.
//!
//! DeepStream's own event types (`entry`, `exit`, `moving`, ...) describe
//! motion, not offences, and are ignored; any other type is an application
//! type and becomes a detection named by the type, so a type the taxonomy does
//! not know is dead-lettered as an unknown offence and can be mapped later.

use std::borrow::Cow;

use crate::json::Value;

use crate::decode::{DecodeContext, Decoded};
use crate::detection::{identity_key, Confidence, Detection};
use crate::json::{optional_number, optional_text, parse_value, path, required_text};
use crate::outcome::{clip, IgnoreReason, RejectReason, Rejection};
use crate::time::parse_rfc3339;

/// The event types DeepStream's analytics emit by themselves. They say what an
/// object did (entered, stopped, parked), never that it broke a rule, so they
/// are not offences even if the taxonomy had an alias of the same spelling.
const BUILT_IN_EVENT_TYPES: [&str; 7] = [
    "entry", "exit", "moving", "stopped", "parked", "empty", "reset",
];

/// DeepStream's `UNTRACKED_OBJECT_ID` (`0xFFFFFFFFFFFFFFFF`): the object was
/// detected but not tracked, so its id names nothing across frames.
const UNTRACKED_OBJECT_ID: &str = "18446744073709551615";

/// The same value as printed by serialisers that treat the id as signed.
const UNTRACKED_OBJECT_ID_SIGNED: &str = "-1";

/// Decodes one `deepstream` message.
pub(crate) fn decode(context: &DecodeContext<'_>) -> Result<Decoded, Rejection> {
    let message = parse_value(context.text, context.limits)?;
    if !message.is_object() {
        return Err(Rejection::new(
            RejectReason::Malformed,
            "deepstream payload is not a JSON object",
        ));
    }

    let event_type = required_text(path(&message, &["event", "type"]), "event.type")?;
    let sensor_id = required_text(path(&message, &["sensor", "id"]), "sensor.id")?;
    let timestamp_text = required_text(message.get("@timestamp"), "@timestamp")?;
    let Some(detected_at) = parse_rfc3339(&timestamp_text) else {
        return Err(Rejection::new(
            RejectReason::InvalidTime,
            format!(
                "@timestamp {:?} is not RFC 3339 with an offset",
                clip(&timestamp_text)
            ),
        ));
    };

    let trimmed_type = event_type.trim();
    if BUILT_IN_EVENT_TYPES
        .iter()
        .any(|built_in| built_in.eq_ignore_ascii_case(trimmed_type))
    {
        return Ok(Decoded::Ignored(IgnoreReason::NotOffence));
    }

    let object = message.get("object");
    let object_field = |keys: &[&str]| object.and_then(|object| path(object, keys));
    let plate = optional_text(
        object_field(&["vehicle", "license"]),
        "object.vehicle.license",
    )?;
    let speed_kmh = optional_number(object_field(&["speed"]), "object.speed")?;
    let confidence = confidence(
        object_field(&["vehicle", "confidence"]),
        object_field(&["confidence"]),
    )?;
    let tracker_id = optional_text(object_field(&["id"]), "object.id")?.filter(|id| {
        let id = id.trim();
        id != UNTRACKED_OBJECT_ID && id != UNTRACKED_OBJECT_ID_SIGNED
    });

    let sensor_location = location(path(&message, &["sensor", "location"]), "sensor.location")?;
    let coordinates = match sensor_location {
        Some(coordinates) => Some(coordinates),
        None => location(path(&message, &["place", "location"]), "place.location")?,
    };

    // Every frame of one tracked object carries the same tracker id, so the
    // key stays the same while messageid, event.id and @timestamp change.
    // Without a tracker the instant and the plate are all that tell two
    // objects apart.
    let identity_key = match &tracker_id {
        Some(tracker_id) => identity_key!(
            "deepstream|{sensor_id}|{}|{trimmed_type}",
            tracker_id.trim()
        ),
        None => identity_key!(
            "deepstream|{sensor_id}|untracked|{trimmed_type}|{}|{}",
            detected_at.timestamp_millis(),
            plate.as_deref().unwrap_or("")
        ),
    };

    Ok(Decoded::Detections(vec![Detection {
        offence_name: trimmed_type.to_string(),
        identity_key,
        explicit_event_id: None,
        camera_id: None,
        device_identity: Some(format!("deepstream:{sensor_id}")),
        payload_region: None,
        detected_at,
        device_time: Some(timestamp_text.into_owned()),
        confidence,
        plate: plate.map(Cow::into_owned),
        speed_kmh,
        speed_limit_kmh: None,
        lat: coordinates.map(|(lat, _)| lat),
        lon: coordinates.map(|(_, lon)| lon),
        evidence_url: None,
        // messageid and event.id are random per message: no use to anyone
        // looking for the offence at the source.
        source_event_id: None,
    }]))
}

/// The object's confidence: the vehicle classifier's, else the detector's.
/// DeepStream writes a negative value when the confidence is not set.
fn confidence(
    vehicle_value: Option<&Value>,
    object_value: Option<&Value>,
) -> Result<Option<Confidence>, Rejection> {
    let is_set = |raw: &f64| *raw >= 0.0;
    let raw = match optional_number(vehicle_value, "object.vehicle.confidence")?.filter(is_set) {
        Some(raw) => Some(raw),
        None => optional_number(object_value, "object.confidence")?.filter(is_set),
    };
    Ok(raw.map(|raw| Confidence { raw, scale: 1.0 }))
}

/// A `{lat, lon}` object as a pair; `None` when either is absent or both are
/// zero (the schema's default for a sensor nobody placed).
fn location(value: Option<&Value>, field: &str) -> Result<Option<(f64, f64)>, Rejection> {
    let Some(value) = value.filter(|value| !value.is_null()) else {
        return Ok(None);
    };
    let lat = optional_number(value.get("lat"), field)?;
    let lon = optional_number(value.get("lon"), field)?;
    match (lat, lon) {
        (Some(lat), Some(lon)) if lat != 0.0 || lon != 0.0 => Ok(Some((lat, lon))),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::decode::testing;
    use crate::format::Format;
    use crate::limits::Limits;

    fn decode_text(text: &str) -> Result<Decoded, Rejection> {
        testing::decode_with(decode, Format::Deepstream, text, None, &Limits::default())
    }

    fn one_detection(text: &str) -> Detection {
        testing::one_detection(decode_text(text))
    }

    fn reason(text: &str) -> RejectReason {
        testing::rejected(decode_text(text))
    }

    const TRACKED: &str = r#"{"messageid":"m-1","@timestamp":"2026-11-27T03:21:09.118Z",
        "sensor":{"id":"ALA-AF-0007","location":{"lat":43.2181,"lon":76.9273}},
        "object":{"id":"1042","speed":97.5,"vehicle":{"license":"901AAA02","confidence":0.88}},
        "event":{"id":"e-1","type":"speeding"}}"#;

    #[test]
    fn every_frame_of_a_tracked_object_has_one_identity() {
        let first = one_detection(TRACKED);
        let later = TRACKED
            .replace("m-1", "m-2")
            .replace("e-1", "e-2")
            .replace("03:21:09.118", "03:21:09.318")
            .replace("97.5", "98.1");
        let second = one_detection(&later);
        assert_eq!(first.identity_key, "deepstream|ALA-AF-0007|1042|speeding");
        assert_eq!(first.identity_key, second.identity_key);
        assert_ne!(first.detected_at, second.detected_at);
        let other_object = one_detection(&TRACKED.replace("1042", "1043"));
        assert_ne!(first.identity_key, other_object.identity_key);
        assert_eq!(first.source_event_id, None);
        assert_eq!(
            first.device_identity.as_deref(),
            Some("deepstream:ALA-AF-0007")
        );
    }

    #[test]
    fn untracked_objects_are_named_by_instant_and_plate() {
        for untracked in [r#""18446744073709551615""#, "18446744073709551615", "-1"] {
            let payload = TRACKED.replace(r#""1042""#, untracked);
            let detection = one_detection(&payload);
            assert_eq!(
                detection.identity_key,
                "deepstream|ALA-AF-0007|untracked|speeding|1795749669118|901AAA02"
            );
        }
        let without_id = one_detection(&TRACKED.replace(r#""id":"1042","#, ""));
        assert_eq!(
            without_id.identity_key,
            "deepstream|ALA-AF-0007|untracked|speeding|1795749669118|901AAA02"
        );
        let later = one_detection(
            &TRACKED
                .replace(r#""id":"1042","#, "")
                .replace("09.118", "09.318"),
        );
        assert_ne!(without_id.identity_key, later.identity_key);
    }

    #[test]
    fn built_in_types_are_not_offences_and_application_types_pass_through() {
        for built_in in [
            "entry", "exit", "moving", "stopped", "parked", "empty", "reset", "Parked",
        ] {
            let payload = TRACKED.replace(r#""speeding""#, &format!("{built_in:?}"));
            assert_eq!(
                decode_text(&payload),
                Ok(Decoded::Ignored(IgnoreReason::NotOffence)),
                "{built_in}"
            );
        }
        let unknown = one_detection(&TRACKED.replace(r#""speeding""#, r#""tailgating""#));
        assert_eq!(unknown.offence_name, "tailgating");
    }

    #[test]
    fn negative_confidence_means_not_set() {
        let unset = one_detection(&TRACKED.replace("0.88", "-1"));
        assert_eq!(unset.confidence, None);
        let detector = one_detection(&TRACKED.replace(
            r#""confidence":0.88"#,
            r#""confidence":-0.1},"confidence":0.6,"x":{"#,
        ));
        assert_eq!(
            detector.confidence,
            Some(Confidence {
                raw: 0.6,
                scale: 1.0
            })
        );
        let as_text = one_detection(&TRACKED.replace("0.88", r#""0.88""#));
        assert_eq!(
            as_text.confidence,
            Some(Confidence {
                raw: 0.88,
                scale: 1.0
            })
        );
    }

    #[test]
    fn the_sensor_location_wins_and_zero_counts_as_absent() {
        let detection = one_detection(TRACKED);
        assert_eq!(
            (detection.lat, detection.lon),
            (Some(43.2181), Some(76.9273))
        );
        let placed = TRACKED.replace(
            r#""location":{"lat":43.2181,"lon":76.9273}"#,
            r#""location":{"lat":0,"lon":0}},"place":{"location":{"lat":43.3,"lon":76.8}"#,
        );
        let detection = one_detection(&placed);
        assert_eq!((detection.lat, detection.lon), (Some(43.3), Some(76.8)));
        let nowhere = TRACKED.replace(r#""lat":43.2181,"lon":76.9273"#, r#""lat":0.0,"lon":0.0"#);
        assert_eq!(one_detection(&nowhere).lat, None);
    }

    #[test]
    fn the_timestamp_is_kept_as_text_and_parsed_to_utc() {
        let detection = one_detection(TRACKED);
        assert_eq!(
            detection.device_time.as_deref(),
            Some("2026-11-27T03:21:09.118Z")
        );
        assert_eq!(detection.detected_at.timestamp_millis(), 1_795_749_669_118);
        assert_eq!(
            reason(&TRACKED.replace("2026-11-27T03:21:09.118Z", "27/11/2026 03:21")),
            RejectReason::InvalidTime
        );
        assert_eq!(
            reason(&TRACKED.replace(r#""@timestamp""#, r#""timestamp""#)),
            RejectReason::MissingField
        );
    }

    #[test]
    fn broken_messages_are_rejected_with_a_reason() {
        assert_eq!(reason("[1,2]"), RejectReason::Malformed);
        assert_eq!(
            reason(r#"{"event":{"type":"speed"#),
            RejectReason::Malformed
        );
        assert_eq!(
            reason(&TRACKED.replace(r#""type":"speeding""#, r#""kind":"speeding""#)),
            RejectReason::MissingField
        );
        assert_eq!(
            reason(&TRACKED.replace(r#""id":"ALA-AF-0007","#, "")),
            RejectReason::MissingField
        );
        assert_eq!(
            reason(&TRACKED.replace(r#""type":"speeding""#, r#""type":["speeding"]"#)),
            RejectReason::InvalidField
        );
        assert_eq!(
            reason(&TRACKED.replace("97.5", r#""fast""#)),
            RejectReason::InvalidField
        );
    }
}
