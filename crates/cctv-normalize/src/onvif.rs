//! Decoder for the `onvif` format: WS-Notification XML or onvif-ej JSON
//! (docs/formats.md, "onvif").
//!
//! The first non-whitespace byte tells the two shapes apart. XML (`<`) may be
//! a bare `NotificationMessage`, a `Notify` or `PullMessagesResponse` holding
//! several, or either inside a SOAP `Envelope/Body`; every `NotificationMessage`
//! is collected in document order whatever the namespace prefixes. JSON (`{`
//! or `[`) is one onvif-ej object or an array of them.
//!
//! Counting rules, per notification:
//! - `PropertyOperation` `Initialized` (a state replay on every
//!   (re)subscription) and `Deleted` never count: `lifecycle_repeat`.
//! - ONVIF has no offence semantics; the `Rule` source item names the offence
//!   through the taxonomy. An unmapped rule or no rule at all (plain motion,
//!   device topics) is `not_offence`.
//! - A `Changed` (or operation-less) notification counts when its state is
//!   true: a topic ending in `Crossed` is an event by itself; otherwise the
//!   first of the state items (`IsInside`, `State`, ...) decides, false meaning
//!   the incident ended (`lifecycle_repeat`). Without a state item the
//!   notification is a pulse and counts.
//!
//! The event key is camera + rule + `ObjectId` + `UtcTime` (in UTC
//! milliseconds), the camera being the `Cctv-Camera-Id` header or else
//! `onvif:<gateway>/<video source token>`.

use std::borrow::Cow;

use crate::json::{Map, Value};
use cctv_event::NameMatch;
use chrono::{DateTime, Utc};

use crate::decode::{DecodeContext, Decoded};
use crate::detection::{identity_key, Confidence, Detection};
use crate::json::{self, parse_value};
use crate::outcome::{clip, IgnoreReason, RejectReason, Rejection};
use crate::time::parse_rfc3339;
use crate::xml::{self, XmlElement};

/// Root elements that legitimately carry no notification (an empty pull, an
/// empty notify, a SOAP envelope with some other body).
const EMPTY_CONTAINERS: [&str; 3] = ["PullMessagesResponse", "Notify", "Envelope"];

/// Source items naming the video source, in order of preference.
const CAMERA_TOKEN_ITEMS: [&str; 4] = [
    "VideoSourceConfigurationToken",
    "VideoSource",
    "VideoSourceToken",
    "Source",
];

/// Data items holding the boolean state of a property event, in order of
/// preference.
const STATE_ITEMS: [&str; 6] = [
    "IsInside", "State", "IsMotion", "Active", "Value", "Detected",
];

/// Data items holding a licence plate, in order of preference.
const PLATE_ITEMS: [&str; 3] = ["PlateNumber", "Plate", "LicensePlate"];

/// Decodes one `onvif` message: one or more notifications.
pub(crate) fn decode(context: &DecodeContext<'_>) -> Result<Decoded, Rejection> {
    // A byte-order mark is not whitespace but says nothing about the shape.
    let text = context.text.trim_start_matches('\u{feff}').trim_start();
    match text.as_bytes().first() {
        Some(b'<') => decode_xml(context, text),
        Some(b'{' | b'[') => decode_json(context, text),
        Some(_) => Err(Rejection::new(
            RejectReason::Malformed,
            "ONVIF payload is neither XML (`<`) nor JSON (`{` or `[`)",
        )),
        None => Err(Rejection::new(
            RejectReason::Malformed,
            "ONVIF payload is empty",
        )),
    }
}

/// One notification, from either shape, borrowing from the parsed payload.
struct Notification<'a> {
    /// The topic, e.g. `tns1:RuleEngine/FieldDetector/ObjectsInside`.
    topic: Option<&'a str>,
    /// The `UtcTime` text as received.
    utc_time: Option<&'a str>,
    /// `Initialized`, `Changed`, `Deleted` or absent.
    property_operation: Option<&'a str>,
    /// The `Source` items (video source token, rule).
    source: Items<'a>,
    /// The `Data` items (object id, state, likelihood, ...).
    data: Items<'a>,
}

/// A set of named items: XML `SimpleItem Name=.. Value=..` children or the
/// members of a JSON object.
#[derive(Clone, Copy)]
enum Items<'a> {
    /// No `Source` or `Data` element at all.
    Absent,
    /// An XML element whose `SimpleItem` children are the items.
    Xml(&'a XmlElement),
    /// A JSON object whose members are the items.
    Json(&'a Map<'a>),
}

/// One item's value.
#[derive(Clone, Copy)]
enum ItemValue<'a> {
    /// An XML `Value` attribute.
    Text(&'a str),
    /// A JSON member (never null).
    Json(&'a Value<'a>),
}

impl<'a> Items<'a> {
    /// The first item called `name`; null JSON members count as absent.
    fn get(self, name: &str) -> Option<ItemValue<'a>> {
        match self {
            Items::Absent => None,
            Items::Xml(element) => element
                .children_named("SimpleItem")
                .find(|item| item.attribute("Name") == Some(name))
                .and_then(|item| item.attribute("Value"))
                .map(ItemValue::Text),
            Items::Json(object) => object
                .get(name)
                .filter(|value| !value.is_null())
                .map(ItemValue::Json),
        }
    }

    /// The trimmed, non-empty text of the item called `name`.
    fn text(self, name: &str) -> Option<Cow<'a, str>> {
        self.get(name).and_then(ItemValue::text)
    }

    /// The first of `names` that has text.
    fn first_text(self, names: &[&str]) -> Option<Cow<'a, str>> {
        names.iter().find_map(|name| self.text(name))
    }
}

impl<'a> ItemValue<'a> {
    /// Trimmed non-empty text; JSON numbers are rendered as text.
    fn text(self) -> Option<Cow<'a, str>> {
        let text = match self {
            ItemValue::Text(text) => Cow::Borrowed(text),
            ItemValue::Json(value) => json::text(Some(value))?,
        };
        match text {
            Cow::Borrowed(borrowed) => Some(borrowed.trim())
                .filter(|t| !t.is_empty())
                .map(Cow::Borrowed),
            Cow::Owned(rendered) => Some(Cow::Owned(rendered)),
        }
    }

    /// A finite number, from a number or numeric text.
    fn number(self) -> Option<f64> {
        match self {
            ItemValue::Text(text) => text.trim().parse::<f64>().ok().filter(|n| n.is_finite()),
            ItemValue::Json(value) => json::number(Some(value)),
        }
    }

    /// `true`/`1` or `false`/`0`, as text, a JSON boolean or a JSON number.
    /// Anything else (`2`, `yes`) is not a state this decoder guesses at.
    fn boolean(self) -> Option<bool> {
        match self {
            ItemValue::Text(text) => text_boolean(text),
            ItemValue::Json(Value::String(text)) => text_boolean(text),
            ItemValue::Json(Value::Bool(flag)) => Some(*flag),
            ItemValue::Json(Value::Number(number)) => match number.as_f64() {
                Some(1.0) => Some(true),
                Some(0.0) => Some(false),
                _ => None,
            },
            ItemValue::Json(_) => None,
        }
    }

    /// A short rendering for rejection details.
    fn describe(self) -> String {
        match self {
            ItemValue::Text(text) => format!("{:?}", clip(text)),
            ItemValue::Json(value) => clip(&value.to_string()).to_string(),
        }
    }
}

fn text_boolean(text: &str) -> Option<bool> {
    let trimmed = text.trim();
    if trimmed.eq_ignore_ascii_case("true") || trimmed == "1" {
        return Some(true);
    }
    if trimmed.eq_ignore_ascii_case("false") || trimmed == "0" {
        return Some(false);
    }
    None
}

/// Decodes a WS-Notification document.
fn decode_xml(context: &DecodeContext<'_>, text: &str) -> Result<Decoded, Rejection> {
    let root = xml::parse(text, context.limits.max_xml_depth)?;
    let mut messages = Vec::new();
    root.descendants_named("NotificationMessage", &mut messages);
    if messages.is_empty() {
        if EMPTY_CONTAINERS.contains(&root.name.as_str()) {
            return Ok(Decoded::Ignored(IgnoreReason::NotOffence));
        }
        return Err(Rejection::new(
            RejectReason::Malformed,
            format!(
                "ONVIF XML root <{}> holds no NotificationMessage",
                clip(&root.name)
            ),
        ));
    }
    check_count(context, messages.len())?;
    let mut parts = Vec::with_capacity(messages.len());
    for (index, message) in messages.into_iter().enumerate() {
        let notification = xml_notification(message, index)?;
        parts.push(decode_notification(context, &notification, index)?);
    }
    Ok(Decoded::combine(parts))
}

/// Reads one `NotificationMessage`: `Topic`, and `Message/Message` with its
/// attributes and `Source`/`Data` items.
fn xml_notification(message: &XmlElement, index: usize) -> Result<Notification<'_>, Rejection> {
    let Some(inner) = message.path(&["Message", "Message"]) else {
        return Err(Rejection::new(
            RejectReason::MissingField,
            format!(
                "notification {}: NotificationMessage has no Message/Message element",
                index + 1
            ),
        ));
    };
    let items = |name: &str| inner.child(name).map_or(Items::Absent, Items::Xml);
    Ok(Notification {
        topic: message.child_text("Topic"),
        utc_time: inner.attribute("UtcTime"),
        property_operation: inner.attribute("PropertyOperation"),
        source: items("Source"),
        data: items("Data"),
    })
}

/// Decodes an onvif-ej object or an array of them.
fn decode_json(context: &DecodeContext<'_>, text: &str) -> Result<Decoded, Rejection> {
    let value = parse_value(text, context.limits)?;
    match &value {
        Value::Object(object) => {
            let notification = json_notification(object, 0)?;
            decode_notification(context, &notification, 0)
        }
        Value::Array(elements) => {
            if elements.is_empty() {
                return Ok(Decoded::Ignored(IgnoreReason::NotOffence));
            }
            check_count(context, elements.len())?;
            let mut parts = Vec::with_capacity(elements.len());
            for (index, element) in elements.iter().enumerate() {
                let Value::Object(object) = element else {
                    return Err(Rejection::new(
                        RejectReason::InvalidField,
                        format!(
                            "notification {}: array element is not a JSON object",
                            index + 1
                        ),
                    ));
                };
                let notification = json_notification(object, index)?;
                parts.push(decode_notification(context, &notification, index)?);
            }
            Ok(Decoded::combine(parts))
        }
        _ => Err(Rejection::new(
            RejectReason::Malformed,
            "onvif-ej payload is not a JSON object or array",
        )),
    }
}

/// Reads one onvif-ej object, refusing members of the wrong type.
fn json_notification<'a>(object: &'a Map<'a>, index: usize) -> Result<Notification<'a>, Rejection> {
    let text_member = |name: &str| -> Result<Option<&str>, Rejection> {
        match object.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.as_ref())),
            Some(_) => Err(Rejection::new(
                RejectReason::InvalidField,
                format!("notification {}: {name} is not a string", index + 1),
            )),
        }
    };
    let items_member = |name: &str| -> Result<Items<'_>, Rejection> {
        match object.get(name) {
            None | Some(Value::Null) => Ok(Items::Absent),
            Some(Value::Object(items)) => Ok(Items::Json(items)),
            Some(_) => Err(Rejection::new(
                RejectReason::InvalidField,
                format!("notification {}: {name} is not a JSON object", index + 1),
            )),
        }
    };
    Ok(Notification {
        topic: text_member("Topic")?.filter(|topic| !topic.trim().is_empty()),
        utc_time: text_member("UtcTime")?,
        property_operation: text_member("PropertyOperation")?,
        source: items_member("Source")?,
        data: items_member("Data")?,
    })
}

fn check_count(context: &DecodeContext<'_>, count: usize) -> Result<(), Rejection> {
    let limit = context.limits.max_events_per_message;
    if count > limit {
        return Err(Rejection::new(
            RejectReason::TooManyEvents,
            format!("{count} notifications in one message exceed the limit of {limit}"),
        ));
    }
    Ok(())
}

/// What a `PropertyOperation` says about counting.
enum Operation {
    /// `Changed`, or no operation: the state decides.
    Changed,
    /// `Initialized` or `Deleted`: never counted.
    Lifecycle,
}

fn operation(notification: &Notification<'_>, index: usize) -> Result<Operation, Rejection> {
    let Some(operation) = notification.property_operation.map(str::trim) else {
        return Ok(Operation::Changed);
    };
    if operation.eq_ignore_ascii_case("Changed") {
        return Ok(Operation::Changed);
    }
    if operation.eq_ignore_ascii_case("Initialized") || operation.eq_ignore_ascii_case("Deleted") {
        return Ok(Operation::Lifecycle);
    }
    Err(Rejection::new(
        RejectReason::InvalidField,
        format!(
            "notification {}: PropertyOperation {:?} is not Initialized, Changed or Deleted",
            index + 1,
            clip(operation)
        ),
    ))
}

/// Applies the counting rules to one notification.
///
/// Checks run from the structural to the semantic: a time and an operation
/// that every valid notification has, then whether the rule is an offence,
/// then whether the state says the incident is happening.
fn decode_notification(
    context: &DecodeContext<'_>,
    notification: &Notification<'_>,
    index: usize,
) -> Result<Decoded, Rejection> {
    let position = index + 1;
    let Some(utc_time) = notification.utc_time.filter(|time| !time.trim().is_empty()) else {
        return Err(Rejection::new(
            RejectReason::MissingField,
            format!("notification {position}: UtcTime is missing"),
        ));
    };
    let Some(detected_at) = parse_rfc3339(utc_time) else {
        return Err(Rejection::new(
            RejectReason::InvalidTime,
            format!(
                "notification {position}: UtcTime {:?} is not RFC 3339 with an offset",
                clip(utc_time)
            ),
        ));
    };
    if let Operation::Lifecycle = operation(notification, index)? {
        return Ok(Decoded::Ignored(IgnoreReason::LifecycleRepeat));
    }
    let Some(rule) = notification.source.text("Rule") else {
        return Ok(Decoded::Ignored(IgnoreReason::NotOffence));
    };
    match context.classify(&rule) {
        NameMatch::Offence(_) => {}
        NameMatch::State => return Ok(Decoded::Ignored(IgnoreReason::State)),
        NameMatch::Unknown => return Ok(Decoded::Ignored(IgnoreReason::NotOffence)),
    }
    if !state_is_active(notification, position)? {
        return Ok(Decoded::Ignored(IgnoreReason::LifecycleRepeat));
    }
    let detection = detection(
        context,
        notification,
        &rule,
        utc_time,
        detected_at,
        position,
    )?;
    Ok(Decoded::Detections(vec![detection]))
}

/// Whether the notification reports the incident as happening.
fn state_is_active(notification: &Notification<'_>, position: usize) -> Result<bool, Rejection> {
    // A line crossing is an event by itself, whatever the data says.
    if notification
        .topic
        .is_some_and(|topic| topic.trim_end().ends_with("Crossed"))
    {
        return Ok(true);
    }
    let Some((name, value)) = STATE_ITEMS
        .iter()
        .find_map(|name| notification.data.get(name).map(|value| (name, value)))
    else {
        // No state item: a pulse event, which counts.
        return Ok(true);
    };
    value.boolean().ok_or_else(|| {
        Rejection::new(
            RejectReason::InvalidField,
            format!(
                "notification {position}: Data item {name} {} is not a boolean",
                value.describe()
            ),
        )
    })
}

/// Builds the detection of a counted notification.
fn detection(
    context: &DecodeContext<'_>,
    notification: &Notification<'_>,
    rule: &str,
    utc_time: &str,
    detected_at: DateTime<Utc>,
    position: usize,
) -> Result<Detection, Rejection> {
    let gateway_id = context.raw.gateway_id;
    let device_identity = match notification.source.first_text(&CAMERA_TOKEN_ITEMS) {
        Some(token) => format!("onvif:{gateway_id}/{token}"),
        None => format!("onvif:{gateway_id}"),
    };
    let camera = context
        .raw
        .camera_id
        .filter(|id| !id.is_empty())
        .unwrap_or(&device_identity);
    let object_id = notification.data.text("ObjectId");
    let identity_key = identity_key!(
        "onvif|{camera}|{rule}|{}|{}",
        object_id.as_deref().unwrap_or(""),
        detected_at.timestamp_millis()
    );
    let confidence = match notification.data.get("Likelihood") {
        None => None,
        Some(value) => Some(likelihood(value, position)?),
    };
    let speed_kmh = match notification.data.get("Speed") {
        None => None,
        Some(value) => Some(value.number().ok_or_else(|| {
            Rejection::new(
                RejectReason::InvalidField,
                format!(
                    "notification {position}: Data item Speed {} is not a number",
                    value.describe()
                ),
            )
        })?),
    };
    Ok(Detection {
        offence_name: rule.to_string(),
        identity_key,
        device_identity: Some(device_identity),
        detected_at,
        device_time: Some(utc_time.to_string()),
        confidence,
        plate: notification
            .data
            .first_text(&PLATE_ITEMS)
            .map(Cow::into_owned),
        speed_kmh,
        source_event_id: object_id.map(Cow::into_owned),
        ..Detection::default()
    })
}

/// `Likelihood` on its own scale: 0..1, or a percentage above 1. Values
/// outside both are passed on for the normaliser to refuse.
fn likelihood(value: ItemValue<'_>, position: usize) -> Result<Confidence, Rejection> {
    let Some(raw) = value.number() else {
        return Err(Rejection::new(
            RejectReason::InvalidField,
            format!(
                "notification {position}: Data item Likelihood {} is not a number",
                value.describe()
            ),
        ));
    };
    let scale = if raw > 1.0 { 100.0 } else { 1.0 };
    Ok(Confidence { raw, scale })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::decode::testing;
    use crate::format::Format;
    use crate::limits::Limits;

    fn run(payload: &str, camera_id: Option<&str>) -> Result<Decoded, Rejection> {
        testing::decode_with(
            decode,
            Format::Onvif,
            payload,
            camera_id,
            &Limits::default(),
        )
    }

    fn detections(decoded: Result<Decoded, Rejection>) -> Vec<Detection> {
        testing::detections(decoded)
    }

    fn ignored(decoded: Result<Decoded, Rejection>) -> IgnoreReason {
        testing::ignored(decoded)
    }

    fn xml_message(operation: &str, time: &str, rule: &str, state: &str) -> String {
        format!(
            r#"<n:NotificationMessage xmlns:n="urn:n"><n:Topic>tns1:RuleEngine/FieldDetector/ObjectsInside</n:Topic><n:Message><tt:Message xmlns:tt="urn:tt" UtcTime="{time}" {operation}><tt:Source><tt:SimpleItem Name="VideoSourceConfigurationToken" Value="VS_1"/><tt:SimpleItem Name="Rule" Value="{rule}"/></tt:Source><tt:Data><tt:SimpleItem Name="ObjectId" Value="9"/>{state}</tt:Data></tt:Message></n:Message></n:NotificationMessage>"#
        )
    }

    const INSIDE: &str = r#"<tt:SimpleItem Name="IsInside" Value="true"/>"#;
    const OUTSIDE: &str = r#"<tt:SimpleItem Name="IsInside" Value="false"/>"#;

    #[test]
    fn a_changed_true_state_counts_with_a_stable_identity() {
        let payload = xml_message(
            r#"PropertyOperation="Changed""#,
            "2026-11-27T06:40:12.300Z",
            "NoParking",
            INSIDE,
        );
        let first = detections(run(&payload, None));
        let again = detections(run(&payload, None));
        assert_eq!(first.len(), 1);
        assert_eq!(first, again);
        let detection = &first[0];
        assert_eq!(detection.offence_name, "NoParking");
        assert_eq!(
            detection.identity_key,
            "onvif|onvif:gw-unit/VS_1|NoParking|9|1795761612300"
        );
        assert_eq!(
            detection.device_identity.as_deref(),
            Some("onvif:gw-unit/VS_1")
        );
        assert_eq!(detection.source_event_id.as_deref(), Some("9"));
        assert_eq!(
            detection.device_time.as_deref(),
            Some("2026-11-27T06:40:12.300Z")
        );
    }

    #[test]
    fn the_same_instant_in_another_offset_gives_the_same_identity() {
        let utc = xml_message("", "2026-11-27T06:40:12.300Z", "NoParking", INSIDE);
        let local = xml_message("", "2026-11-27T11:40:12.300+05:00", "NoParking", INSIDE);
        assert_eq!(
            detections(run(&utc, None))[0].identity_key,
            detections(run(&local, None))[0].identity_key
        );
    }

    #[test]
    fn the_camera_header_names_the_camera_in_the_identity() {
        let payload = xml_message("", "2026-11-27T06:40:12.300Z", "NoParking", INSIDE);
        let found = detections(run(&payload, Some("KZ19-0001")));
        assert_eq!(
            found[0].identity_key,
            "onvif|KZ19-0001|NoParking|9|1795761612300"
        );
        assert_eq!(
            found[0].device_identity.as_deref(),
            Some("onvif:gw-unit/VS_1")
        );
    }

    #[test]
    fn replays_deletions_and_ended_states_never_count() {
        let time = "2026-11-27T06:40:12.300Z";
        for operation in [
            r#"PropertyOperation="Initialized""#,
            r#"PropertyOperation="Deleted""#,
        ] {
            let payload = xml_message(operation, time, "NoParking", INSIDE);
            assert_eq!(ignored(run(&payload, None)), IgnoreReason::LifecycleRepeat);
        }
        let ended = xml_message(r#"PropertyOperation="Changed""#, time, "NoParking", OUTSIDE);
        assert_eq!(ignored(run(&ended, None)), IgnoreReason::LifecycleRepeat);
        let zero = xml_message(
            "",
            time,
            "NoParking",
            r#"<tt:SimpleItem Name="State" Value="0"/>"#,
        );
        assert_eq!(ignored(run(&zero, None)), IgnoreReason::LifecycleRepeat);
    }

    #[test]
    fn unmapped_rules_and_rule_less_topics_are_not_offences() {
        let time = "2026-11-27T06:40:12.300Z";
        let unmapped = xml_message("", time, "CorridorWatch", INSIDE);
        assert_eq!(ignored(run(&unmapped, None)), IgnoreReason::NotOffence);
        let motion = r#"{"Topic":"tns1:VideoSource/MotionAlarm","UtcTime":"2026-11-27T06:40:12Z","Source":{"Source":"VS_1"},"Data":{"State":true}}"#;
        assert_eq!(ignored(run(motion, None)), IgnoreReason::NotOffence);
    }

    #[test]
    fn crossings_and_pulses_count_without_a_state() {
        let crossed = r#"{"Topic":"tns1:RuleEngine/LineDetector/Crossed","UtcTime":"2026-11-27T06:40:12Z","Source":{"VideoSource":1,"Rule":"Littering"},"Data":{"ObjectId":5,"State":false}}"#;
        let found = detections(run(crossed, None));
        assert_eq!(found[0].device_identity.as_deref(), Some("onvif:gw-unit/1"));
        assert_eq!(
            found[0].identity_key,
            "onvif|onvif:gw-unit/1|Littering|5|1795761612000"
        );
        let pulse = r#"{"UtcTime":"2026-11-27T06:40:12Z","Source":{"Rule":"Dumping"}}"#;
        let found = detections(run(pulse, None));
        assert_eq!(found[0].device_identity.as_deref(), Some("onvif:gw-unit"));
        assert_eq!(
            found[0].identity_key,
            "onvif|onvif:gw-unit|Dumping||1795761612000"
        );
    }

    #[test]
    fn times_need_an_offset_and_operations_a_known_value() {
        let no_offset = xml_message("", "2026-11-27T06:40:12", "NoParking", INSIDE);
        assert_eq!(
            run(&no_offset, None).unwrap_err().reason,
            RejectReason::InvalidTime
        );
        let missing = r#"{"Source":{"Rule":"NoParking"}}"#;
        assert_eq!(
            run(missing, None).unwrap_err().reason,
            RejectReason::MissingField
        );
        let numeric_time = r#"{"UtcTime":1795761612,"Source":{"Rule":"NoParking"}}"#;
        assert_eq!(
            run(numeric_time, None).unwrap_err().reason,
            RejectReason::InvalidField
        );
        let odd = xml_message(
            r#"PropertyOperation="Updated""#,
            "2026-11-27T06:40:12Z",
            "NoParking",
            INSIDE,
        );
        assert_eq!(
            run(&odd, None).unwrap_err().reason,
            RejectReason::InvalidField
        );
        let bad_state = xml_message(
            "",
            "2026-11-27T06:40:12Z",
            "NoParking",
            r#"<tt:SimpleItem Name="IsInside" Value="maybe"/>"#,
        );
        assert_eq!(
            run(&bad_state, None).unwrap_err().reason,
            RejectReason::InvalidField
        );
    }

    #[test]
    fn likelihood_scales_and_data_values() {
        let percent = r#"{"UtcTime":"2026-11-27T06:40:12Z","Source":{"Rule":"NoParking"},"Data":{"Likelihood":82,"Speed":"12.5","PlateNumber":" 123ABC02 "}}"#;
        let found = detections(run(percent, None));
        assert_eq!(
            found[0].confidence,
            Some(Confidence {
                raw: 82.0,
                scale: 100.0
            })
        );
        assert_eq!(found[0].speed_kmh, Some(12.5));
        assert_eq!(found[0].plate.as_deref(), Some("123ABC02"));
        let unit = r#"{"UtcTime":"2026-11-27T06:40:12Z","Source":{"Rule":"NoParking"},"Data":{"Likelihood":"1"}}"#;
        let found = detections(run(unit, None));
        assert_eq!(
            found[0].confidence,
            Some(Confidence {
                raw: 1.0,
                scale: 1.0
            })
        );
        let words = r#"{"UtcTime":"2026-11-27T06:40:12Z","Source":{"Rule":"NoParking"},"Data":{"Likelihood":"high"}}"#;
        assert_eq!(
            run(words, None).unwrap_err().reason,
            RejectReason::InvalidField
        );
    }

    #[test]
    fn containers_collect_every_notification_and_empty_ones_are_ignored() {
        let one = xml_message("", "2026-11-27T06:40:12Z", "NoParking", INSIDE);
        let two = xml_message("", "2026-11-27T06:41:12Z", "Littering", "");
        let pull = format!(
            r#"<s:Envelope xmlns:s="urn:s"><s:Body><PullMessagesResponse>{one}{two}</PullMessagesResponse></s:Body></s:Envelope>"#
        );
        let found = detections(run(&pull, None));
        assert_eq!(found.len(), 2);
        assert_eq!(found[1].offence_name, "Littering");
        assert_eq!(
            ignored(run("<tev:PullMessagesResponse xmlns:tev=\"urn:t\"/>", None)),
            IgnoreReason::NotOffence
        );
        assert_eq!(
            run("<Something/>", None).unwrap_err().reason,
            RejectReason::Malformed
        );
        assert_eq!(ignored(run("[]", None)), IgnoreReason::NotOffence);
        assert_eq!(run("  ", None).unwrap_err().reason, RejectReason::Malformed);
    }

    #[test]
    fn more_notifications_than_the_limit_are_refused() {
        let one = r#"{"UtcTime":"2026-11-27T06:40:12Z","Source":{"Rule":"NoParking"}}"#;
        let many = format!("[{}]", vec![one; 65].join(","));
        assert_eq!(
            run(&many, None).unwrap_err().reason,
            RejectReason::TooManyEvents
        );
    }
}
