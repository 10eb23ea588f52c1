//! Decoder for Frigate MQTT `frigate/events` messages (docs/formats.md,
//! "frigate").
//!
//! A message is `{"type": "new"|"update"|"end", "before": {..}, "after": {..}}`
//! about one tracked object; the decoder reads `after` (the object's current
//! state) and falls back to `before` only when `after` is absent. Frigate has no
//! offence vocabulary: a zone (or a label) is an offence when the taxonomy's
//! `[vendor.frigate]` table or a shared alias says so.
//!
//! Counting: one track (`id`) counts once. Every qualifying message of a track
//! yields a detection with the same identity
//! (`frigate|<gateway>|<camera>|<id>`) and the same detection time (the track's
//! `start_time`), so the first one is counted and the later `update`/`end`
//! messages are dropped as duplicate publishes. The offence is chosen so that
//! every message of a track picks the same one: zones in the order the object
//! entered them come first.

use std::borrow::Cow;

use crate::json::Value;

use crate::decode::{DecodeContext, Decoded};
use crate::detection::{identity_key, Confidence, Detection};
use crate::json::{boolean, number, optional_number, optional_text, parse_value, required_text};
use crate::outcome::{clip, missing_field, IgnoreReason, RejectReason, Rejection};
use crate::time::epoch_to_utc;

/// The message types Frigate publishes on `frigate/events`.
const MESSAGE_TYPES: [&str; 3] = ["new", "update", "end"];

/// Decodes one `frigate` message.
pub(crate) fn decode(context: &DecodeContext<'_>) -> Result<Decoded, Rejection> {
    let message = parse_value(context.text, context.limits)?;
    if !message.is_object() {
        return Err(Rejection::new(
            RejectReason::Malformed,
            "frigate payload is not a JSON object",
        ));
    }
    let message_type = match message.get("type") {
        None | Some(Value::Null) => return Err(missing_field("type")),
        Some(Value::String(message_type)) => message_type.as_ref(),
        Some(_) => {
            return Err(Rejection::new(
                RejectReason::InvalidField,
                "field type is not text",
            ))
        }
    };
    if !MESSAGE_TYPES.contains(&message_type) {
        return Err(Rejection::new(
            RejectReason::InvalidField,
            format!(
                "type {:?} is not one of new, update, end",
                clip(message_type)
            ),
        ));
    }

    let tracked = tracked_object(&message)?;
    let track_id = required_text(tracked.get("id"), "id")?;
    let camera = required_text(tracked.get("camera"), "camera")?;
    let start_value = tracked.get("start_time");
    let start_text = required_text(start_value, "start_time")?;
    let Some(detected_at) = number(start_value).and_then(epoch_to_utc) else {
        return Err(Rejection::new(
            RejectReason::InvalidTime,
            format!("start_time {:?} is not an epoch time", clip(&start_text)),
        ));
    };

    match tracked.get("false_positive") {
        None | Some(Value::Null) => {}
        Some(flag) => match boolean(Some(flag)) {
            Some(true) => return Ok(Decoded::Ignored(IgnoreReason::FalsePositive)),
            Some(false) => {}
            None => {
                return Err(Rejection::new(
                    RejectReason::InvalidField,
                    "field false_positive is not a boolean",
                ))
            }
        },
    }

    let Some(offence_name) = offence_name(context, tracked)? else {
        return Ok(Decoded::Ignored(IgnoreReason::NotOffence));
    };

    let score = match optional_number(tracked.get("top_score"), "top_score")? {
        Some(score) => Some(score),
        None => optional_number(tracked.get("score"), "score")?,
    };
    let plate = plate(tracked.get("recognized_license_plate"))?;
    let gateway_id = context.raw.gateway_id;

    Ok(Decoded::Detections(vec![Detection {
        offence_name: offence_name.to_string(),
        // The same for every message of the track, whatever its type or the
        // object's current state: the later messages are duplicates.
        identity_key: identity_key!("frigate|{gateway_id}|{camera}|{track_id}"),
        explicit_event_id: None,
        camera_id: None,
        device_identity: Some(format!("frigate:{gateway_id}/{camera}")),
        payload_region: None,
        detected_at,
        device_time: Some(start_text.into_owned()),
        confidence: score.map(|raw| Confidence { raw, scale: 1.0 }),
        plate: plate.map(Cow::into_owned),
        speed_kmh: None,
        speed_limit_kmh: None,
        lat: None,
        lon: None,
        evidence_url: None,
        source_event_id: Some(track_id.into_owned()),
    }]))
}

/// The object state to read: `after`, else `before` when `after` is absent
/// or null.
fn tracked_object<'a>(message: &'a Value<'a>) -> Result<&'a Value<'a>, Rejection> {
    let present = |key: &str| message.get(key).filter(|value| !value.is_null());
    let (field, tracked) = match (present("after"), present("before")) {
        (Some(after), _) => ("after", after),
        (None, Some(before)) => ("before", before),
        (None, None) => return Err(missing_field("after")),
    };
    if !tracked.is_object() {
        return Err(Rejection::new(
            RejectReason::InvalidField,
            format!("field {field} is not an object"),
        ));
    }
    Ok(tracked)
}

/// The name of the offence the object commits, chosen the same way for every
/// message of its track: the first offence zone in `entered_zones` (in entry
/// order, so a later zone never displaces it), else in `current_zones`, else
/// the `sub_label`, else the `label`. `None` when nothing maps to an offence.
fn offence_name<'v>(
    context: &DecodeContext<'_>,
    tracked: &'v Value<'v>,
) -> Result<Option<&'v str>, Rejection> {
    for field in ["entered_zones", "current_zones"] {
        for zone in zone_names(tracked.get(field), field)? {
            if context.is_offence(zone) {
                return Ok(Some(zone));
            }
        }
    }
    let sub_label = match tracked.get("sub_label") {
        Some(Value::String(name)) => Some(name.as_ref()),
        // Newer versions send `[name, score]`.
        Some(Value::Array(parts)) => parts.first().and_then(Value::as_str),
        _ => None,
    };
    let label = tracked.get("label").and_then(Value::as_str);
    Ok([sub_label, label]
        .into_iter()
        .flatten()
        .find(|name| context.is_offence(name)))
}

/// The zone names of a zone list; non-text entries are skipped.
fn zone_names<'v>(
    value: Option<&'v Value<'v>>,
    field: &str,
) -> Result<impl Iterator<Item = &'v str>, Rejection> {
    let zones: &[Value] = match value {
        None | Some(Value::Null) => &[],
        Some(Value::Array(zones)) => zones,
        Some(_) => {
            return Err(Rejection::new(
                RejectReason::InvalidField,
                format!("field {field} is not a list"),
            ))
        }
    };
    Ok(zones.iter().filter_map(Value::as_str))
}

/// `recognized_license_plate`: a plate, or `[plate, score]`.
fn plate<'a>(value: Option<&'a Value<'a>>) -> Result<Option<Cow<'a, str>>, Rejection> {
    match value {
        Some(Value::Array(parts)) => optional_text(parts.first(), "recognized_license_plate"),
        other => optional_text(other, "recognized_license_plate"),
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
        testing::decode_with(decode, Format::Frigate, text, None, &Limits::default())
    }

    fn one_detection(text: &str) -> Detection {
        testing::one_detection(decode_text(text))
    }

    fn reason(text: &str) -> RejectReason {
        testing::rejected(decode_text(text))
    }

    const TRACK: &str = r#"{"type":"update","before":null,"after":{"id":"1795772100.412345-k2x9qa",
        "camera":"yard_east","label":"person","sub_label":null,"score":0.8,"top_score":0.83,
        "false_positive":false,"start_time":1795772100.412345,"end_time":null,
        "current_zones":["dumping_site"],"entered_zones":["dumping_site"]}}"#;

    #[test]
    fn every_message_of_a_track_names_the_same_offence_at_the_same_time() {
        let update = one_detection(TRACK);
        let new = one_detection(&TRACK.replace(r#""update""#, r#""new""#));
        let end = one_detection(
            &TRACK
                .replace(r#""update""#, r#""end""#)
                .replace(
                    r#""current_zones":["dumping_site"]"#,
                    r#""current_zones":[]"#,
                )
                .replace(r#""end_time":null"#, r#""end_time":1795772161.9"#),
        );
        for detection in [&new, &end] {
            assert_eq!(detection.identity_key, update.identity_key);
            assert_eq!(detection.detected_at, update.detected_at);
            assert_eq!(detection.offence_name, update.offence_name);
        }
        assert_eq!(
            update.identity_key,
            "frigate|gw-unit|yard_east|1795772100.412345-k2x9qa"
        );
        assert_eq!(update.offence_name, "dumping_site");
        assert_eq!(
            update.device_identity.as_deref(),
            Some("frigate:gw-unit/yard_east")
        );
        assert_eq!(
            update.source_event_id.as_deref(),
            Some("1795772100.412345-k2x9qa")
        );
        assert_eq!(update.device_time.as_deref(), Some("1795772100.412345"));
        assert_eq!(
            update.confidence,
            Some(Confidence {
                raw: 0.83,
                scale: 1.0
            })
        );
    }

    #[test]
    fn the_first_entered_offence_zone_wins_over_later_ones() {
        let payload = TRACK.replace(
            r#""entered_zones":["dumping_site"]"#,
            r#""entered_zones":["gate","no_parking","dumping_site"]"#,
        );
        assert_eq!(one_detection(&payload).offence_name, "no_parking");
        let only_current = TRACK.replace(
            r#""entered_zones":["dumping_site"]"#,
            r#""entered_zones":[]"#,
        );
        assert_eq!(one_detection(&only_current).offence_name, "dumping_site");
    }

    #[test]
    fn labels_count_only_without_an_offence_zone() {
        let no_zones = TRACK
            .replace(
                r#""entered_zones":["dumping_site"]"#,
                r#""entered_zones":[]"#,
            )
            .replace(
                r#""current_zones":["dumping_site"]"#,
                r#""current_zones":["gate"]"#,
            );
        assert_eq!(
            decode_text(&no_zones),
            Ok(Decoded::Ignored(IgnoreReason::NotOffence))
        );
        let sub_label = no_zones.replace(r#""sub_label":null"#, r#""sub_label":["smoking",0.9]"#);
        assert_eq!(one_detection(&sub_label).offence_name, "smoking");
        let label = no_zones.replace(r#""label":"person""#, r#""label":"graffiti""#);
        assert_eq!(one_detection(&label).offence_name, "graffiti");
    }

    #[test]
    fn false_positives_are_ignored() {
        let payload = TRACK.replace(r#""false_positive":false"#, r#""false_positive":true"#);
        assert_eq!(
            decode_text(&payload),
            Ok(Decoded::Ignored(IgnoreReason::FalsePositive))
        );
        let unreadable = TRACK.replace(r#""false_positive":false"#, r#""false_positive":"maybe""#);
        assert_eq!(reason(&unreadable), RejectReason::InvalidField);
    }

    #[test]
    fn before_is_read_only_when_after_is_missing_field() {
        let swapped = TRACK.replace(r#""before":null,"after""#, r#""after":null,"before""#);
        assert_eq!(
            one_detection(&swapped).identity_key,
            one_detection(TRACK).identity_key
        );
        assert_eq!(
            reason(r#"{"type":"new","before":null}"#),
            RejectReason::MissingField
        );
        assert_eq!(
            reason(r#"{"type":"new","after":[1]}"#),
            RejectReason::InvalidField
        );
    }

    #[test]
    fn start_time_units_are_told_apart_and_bad_times_rejected() {
        let millis = one_detection(&TRACK.replace("1795772100.412345,", "1795772100412,"));
        assert_eq!(millis.detected_at.timestamp_millis(), 1_795_772_100_412);
        assert_eq!(millis.device_time.as_deref(), Some("1795772100412"));
        assert_eq!(
            reason(&TRACK.replace("1795772100.412345,", r#""soon","#)),
            RejectReason::InvalidTime
        );
        assert_eq!(
            reason(&TRACK.replace(r#""start_time":1795772100.412345,"#, "")),
            RejectReason::MissingField
        );
    }

    #[test]
    fn broken_messages_are_rejected_with_a_reason() {
        assert_eq!(reason("[]"), RejectReason::Malformed);
        assert_eq!(
            reason(r#"{"type":"new","after":{"#),
            RejectReason::Malformed
        );
        assert_eq!(
            reason(&TRACK.replace(r#""update""#, r#""bogus""#)),
            RejectReason::InvalidField
        );
        assert_eq!(
            reason(&TRACK.replace(r#""type":"update","#, "")),
            RejectReason::MissingField
        );
        assert_eq!(
            reason(&TRACK.replace(r#""id":"1795772100.412345-k2x9qa","#, "")),
            RejectReason::MissingField
        );
        assert_eq!(
            reason(&TRACK.replace(r#""camera":"yard_east","#, "")),
            RejectReason::MissingField
        );
        assert_eq!(
            reason(&TRACK.replace(
                r#""entered_zones":["dumping_site"]"#,
                r#""entered_zones":"dumping_site""#
            )),
            RejectReason::InvalidField
        );
    }

    #[test]
    fn plates_come_as_text_or_as_a_pair_with_a_score() {
        let pair = TRACK.replace(
            r#""end_time":null"#,
            r#""end_time":null,"recognized_license_plate":["123ABC02",0.93]"#,
        );
        assert_eq!(one_detection(&pair).plate.as_deref(), Some("123ABC02"));
        let text = TRACK.replace(
            r#""end_time":null"#,
            r#""end_time":null,"recognized_license_plate":"123ABC02""#,
        );
        assert_eq!(one_detection(&text).plate.as_deref(), Some("123ABC02"));
        assert_eq!(one_detection(TRACK).plate, None);
    }
}
