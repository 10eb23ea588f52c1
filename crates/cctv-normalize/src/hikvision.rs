//! Decoder for the `hikvision` format: ISAPI `EventNotificationAlert`, as XML
//! (either namespace, any prefix) or as JSON with the same field names, bare
//! or wrapped as `{"EventNotificationAlert": {...}}`.
//!
//! Counting rules (docs/formats.md, "hikvision"):
//! - heartbeats (`heartBeat`, or `videoloss` + `inactive`) are ignored;
//! - `inactive` ends an alarm that was counted when it became active;
//! - a `UUID` names the event, so every post of it yields the same identity;
//!   without one, only the first post (`activePostCount` 1 or absent) counts;
//! - `ANPR` counts only with a non-zero `illegalCode`, named by `illegalName`;
//! - `TFS` counts once per offence name in `illegalTrafficEvent` (a name or a
//!   comma-joined list); traffic states do not count;
//! - any other event type counts only when the taxonomy maps it.

use std::borrow::Cow;

use crate::json::Value;
use cctv_event::{alias_key, NameMatch};
use chrono::{DateTime, Utc};

use crate::decode::{DecodeContext, Decoded};
use crate::detection::{identity_key, Confidence, Detection};
use crate::outcome::{clip, missing_field, IgnoreReason, RejectReason, Rejection};
use crate::time::parse_rfc3339;
use crate::{json, xml};

/// The root element (or JSON wrapper key) of every alert.
const ROOT_NAME: &str = "EventNotificationAlert";

/// The channel of a single-channel device that names none.
const DEFAULT_CHANNEL: &str = "1";

/// Top of the `confidenceLevel` / `plateInfo.confidence` scale.
const PERCENT_SCALE: f64 = 100.0;

/// Decodes one `hikvision` message.
pub(crate) fn decode(context: &DecodeContext<'_>) -> Result<Decoded, Rejection> {
    // Some device firmwares start their bodies with a byte order mark.
    let text = context.text.trim_start_matches('\u{feff}');
    match text.bytes().find(|byte| !byte.is_ascii_whitespace()) {
        Some(b'<') => {
            let root = xml::parse(text, context.limits.max_xml_depth)?;
            if root.name != ROOT_NAME {
                return Err(Rejection::new(
                    RejectReason::InvalidField,
                    format!(
                        "root element is <{}>, expected <{ROOT_NAME}>",
                        clip(&root.name)
                    ),
                ));
            }
            decode_alert(context, Node::Xml(&root))
        }
        Some(b'{') => {
            let value = json::parse_value(text, context.limits)?;
            let alert = value.get(ROOT_NAME).unwrap_or(&value);
            if !alert.is_object() {
                return Err(Rejection::new(
                    RejectReason::InvalidField,
                    format!("{ROOT_NAME} is not a JSON object"),
                ));
            }
            decode_alert(context, Node::Json(alert))
        }
        _ => Err(Rejection::new(
            RejectReason::Malformed,
            "hikvision payload is neither XML nor a JSON object",
        )),
    }
}

/// One element of the alert, read the same way from XML and JSON.
#[derive(Clone, Copy)]
enum Node<'a> {
    /// An element of the XML tree.
    Xml(&'a xml::XmlElement),
    /// A value of the JSON document.
    Json(&'a Value<'a>),
}

impl<'a> Node<'a> {
    /// The child field (XML element or JSON member) with this name.
    fn child(self, name: &str) -> Option<Node<'a>> {
        match self {
            Node::Xml(element) => element.child(name).map(Node::Xml),
            Node::Json(value) => value.get(name).map(Node::Json),
        }
    }

    /// Follows a path of child names.
    fn path(self, names: &[&str]) -> Option<Node<'a>> {
        names.iter().try_fold(self, |node, name| node.child(name))
    }

    /// The trimmed, non-empty text of this node (a JSON number as text);
    /// `None` for empty text, null, objects and arrays.
    fn text(self) -> Option<Cow<'a, str>> {
        match self {
            Node::Xml(element) => {
                Some(Cow::Borrowed(element.text.as_str())).filter(|text| !text.is_empty())
            }
            Node::Json(Value::String(text)) => {
                Some(Cow::Borrowed(text.trim())).filter(|text| !text.is_empty())
            }
            Node::Json(Value::Number(number)) => Some(Cow::Owned(number.to_string())),
            Node::Json(_) => None,
        }
    }

    /// The text of the field at `names`.
    fn text_at(self, names: &[&str]) -> Option<Cow<'a, str>> {
        self.path(names).and_then(Node::text)
    }

    /// The number at `names`: absent is `None`, text that is no finite
    /// number is an invalid field.
    fn number_at(self, names: &[&str]) -> Result<Option<f64>, Rejection> {
        let Some(text) = self.text_at(names) else {
            return Ok(None);
        };
        match text.parse::<f64>() {
            Ok(number) if number.is_finite() => Ok(Some(number)),
            _ => Err(Rejection::new(
                RejectReason::InvalidField,
                format!("{} {:?} is not a number", names.join("."), clip(&text)),
            )),
        }
    }
}

/// What the event-type block says about the offence(s) of one alert.
#[derive(Default)]
struct Findings {
    /// Offence names as the device spells them, one detection each.
    offence_names: Vec<String>,
    /// Licence plate, if read.
    plate: Option<String>,
    /// Plate confidence on the 0-100 scale.
    confidence: Option<Confidence>,
    /// Measured speed, km/h.
    speed_kmh: Option<f64>,
    /// Speed limit at the site, km/h.
    speed_limit_kmh: Option<f64>,
}

/// Either the findings of an alert that may count, or why it does not.
enum Verdict {
    /// The alert names offences (still to be resolved by the taxonomy).
    Count(Findings),
    /// A valid alert that counts as nothing.
    Ignore(IgnoreReason),
}

/// Applies the counting rules to one alert (the root element or the JSON
/// object) and builds its detections.
fn decode_alert(context: &DecodeContext<'_>, alert: Node<'_>) -> Result<Decoded, Rejection> {
    let event_type = alert
        .text_at(&["eventType"])
        .ok_or_else(|| missing_field("eventType"))?;
    if event_type.eq_ignore_ascii_case("heartBeat") {
        return Ok(Decoded::Ignored(IgnoreReason::Heartbeat));
    }
    let inactive = is_inactive(alert)?;
    // Older firmware reports "still alive" as a video loss that is not active.
    if inactive && event_type.eq_ignore_ascii_case("videoloss") {
        return Ok(Decoded::Ignored(IgnoreReason::Heartbeat));
    }
    // `inactive` closes an alarm whose first `active` post was counted.
    if inactive {
        return Ok(Decoded::Ignored(IgnoreReason::LifecycleRepeat));
    }
    let uuid = alert
        .text_at(&["UUID"])
        .or_else(|| alert.text_at(&["uuid"]));
    // Without a UUID only the first post of a continuous alarm can be told
    // apart from its repeats; with one, every post yields the same identity.
    if uuid.is_none() {
        let post_count = alert.number_at(&["activePostCount"])?;
        if post_count.is_some_and(|count| count > 1.0) {
            return Ok(Decoded::Ignored(IgnoreReason::LifecycleRepeat));
        }
    }

    let verdict = if event_type.eq_ignore_ascii_case("ANPR") {
        read_anpr(alert)?
    } else if event_type.eq_ignore_ascii_case("TFS") {
        read_tfs(context, alert)?
    } else {
        read_other(context, alert, &event_type)?
    };
    let findings = match verdict {
        Verdict::Count(findings) => findings,
        Verdict::Ignore(reason) => return Ok(Decoded::Ignored(reason)),
    };

    let device_time = alert
        .text_at(&["dateTime"])
        .ok_or_else(|| missing_field("dateTime"))?;
    let detected_at = parse_rfc3339(&device_time).ok_or_else(|| {
        Rejection::new(
            RejectReason::InvalidTime,
            format!(
                "dateTime {:?} is not RFC 3339 with an offset",
                clip(&device_time)
            ),
        )
    })?;
    let device_time = device_time.into_owned();
    let device_identity = device_identity(alert);
    let uuid = uuid.map(Cow::into_owned);
    let identity_prefix = identity_prefix(
        context,
        uuid.as_deref(),
        device_identity.as_deref(),
        &event_type,
        detected_at,
        findings.plate.as_deref(),
    );

    let detections = findings
        .offence_names
        .into_iter()
        .map(|offence_name| Detection {
            identity_key: identity_key!("{identity_prefix}|{}", alias_key(&offence_name)),
            offence_name,
            explicit_event_id: None,
            camera_id: None,
            device_identity: device_identity.clone(),
            payload_region: None,
            detected_at,
            device_time: Some(device_time.clone()),
            confidence: findings.confidence,
            plate: findings.plate.clone(),
            speed_kmh: findings.speed_kmh,
            speed_limit_kmh: findings.speed_limit_kmh,
            lat: None,
            lon: None,
            evidence_url: None,
            source_event_id: uuid.clone(),
        })
        .collect();
    Ok(Decoded::Detections(detections))
}

/// Whether `eventState` is `inactive`; absent means active.
fn is_inactive(alert: Node<'_>) -> Result<bool, Rejection> {
    let Some(state) = alert.text_at(&["eventState"]) else {
        return Ok(false);
    };
    if state.eq_ignore_ascii_case("inactive") {
        return Ok(true);
    }
    if state.eq_ignore_ascii_case("active") {
        return Ok(false);
    }
    Err(Rejection::new(
        RejectReason::InvalidField,
        format!(
            "eventState {:?} is neither active nor inactive",
            clip(&state)
        ),
    ))
}

/// `eventType=ANPR`: a plate read, an offence only with a non-zero
/// `illegalCode` whose `illegalName` is not `normal`.
fn read_anpr(alert: Node<'_>) -> Result<Verdict, Rejection> {
    let Some(block) = alert.child("ANPR") else {
        return Err(missing_field("ANPR"));
    };
    let Some(code_text) = block.text_at(&["illegalInfo", "illegalCode"]) else {
        return Ok(Verdict::Ignore(IgnoreReason::PlateRead));
    };
    let code = code_text.parse::<f64>().map_err(|_| {
        Rejection::new(
            RejectReason::InvalidField,
            format!(
                "ANPR.illegalInfo.illegalCode {:?} is not a number",
                clip(&code_text)
            ),
        )
    })?;
    if code == 0.0 {
        return Ok(Verdict::Ignore(IgnoreReason::PlateRead));
    }
    let illegal_name = block.text_at(&["illegalInfo", "illegalName"]);
    if illegal_name
        .as_deref()
        .is_some_and(|name| name.eq_ignore_ascii_case("normal"))
    {
        return Ok(Verdict::Ignore(IgnoreReason::PlateRead));
    }
    // A violation without a name is still a violation: its code goes to the
    // taxonomy (and to the dead-letter stream until an alias names it).
    let offence_name = illegal_name.unwrap_or(code_text).into_owned();
    Ok(Verdict::Count(Findings {
        offence_names: vec![offence_name],
        plate: block
            .text_at(&["licensePlate"])
            .or_else(|| alert.text_at(&["licensePlate"]))
            .map(Cow::into_owned),
        confidence: percent(block.number_at(&["confidenceLevel"])?),
        speed_kmh: block.number_at(&["vehicleInfo", "speed"])?,
        speed_limit_kmh: block.number_at(&["speedLimit"])?,
    }))
}

/// `eventType=TFS`: one offence per name in `illegalTrafficEvent` that is
/// not a traffic state.
fn read_tfs(context: &DecodeContext<'_>, alert: Node<'_>) -> Result<Verdict, Rejection> {
    let Some(block) = alert.child("TFS") else {
        return Err(missing_field("TFS"));
    };
    let event_list = block
        .text_at(&["illegalTrafficEvent"])
        .ok_or_else(|| missing_field("TFS.illegalTrafficEvent"))?;
    let mut offence_names = Vec::new();
    for name in event_list.split(',').map(str::trim) {
        if name.is_empty() || matches!(context.classify(name), NameMatch::State) {
            continue;
        }
        if offence_names.len() >= context.limits.max_events_per_message {
            return Err(Rejection::new(
                RejectReason::TooManyEvents,
                format!(
                    "TFS.illegalTrafficEvent names more than {} offences",
                    context.limits.max_events_per_message
                ),
            ));
        }
        offence_names.push(name.to_string());
    }
    if offence_names.is_empty() {
        return Ok(Verdict::Ignore(IgnoreReason::State));
    }
    Ok(Verdict::Count(Findings {
        offence_names,
        plate: block
            .text_at(&["plateInfo", "plate"])
            .or_else(|| block.text_at(&["licensePlate"]))
            .or_else(|| alert.text_at(&["licensePlate"]))
            .map(Cow::into_owned),
        confidence: percent(block.number_at(&["plateInfo", "confidence"])?),
        speed_kmh: block.number_at(&["vehicleInfo", "speed"])?,
        speed_limit_kmh: block.number_at(&["speedLimit"])?,
    }))
}

/// Any other event type (`VMD`, `linedetection`, ...): an offence only when
/// the taxonomy maps the event type itself.
fn read_other(
    context: &DecodeContext<'_>,
    alert: Node<'_>,
    event_type: &str,
) -> Result<Verdict, Rejection> {
    if !context.is_offence(event_type) {
        return Ok(Verdict::Ignore(IgnoreReason::NotOffence));
    }
    Ok(Verdict::Count(Findings {
        offence_names: vec![event_type.to_string()],
        plate: alert.text_at(&["licensePlate"]).map(Cow::into_owned),
        ..Findings::default()
    }))
}

/// The registry key `hikvision:<device>/<channel>`: the device is the
/// lowercased MAC, else `deviceID`, else the (lowercased) IP address.
fn device_identity(alert: Node<'_>) -> Option<String> {
    let device = if let Some(mac) = alert.text_at(&["macAddress"]) {
        mac.to_ascii_lowercase()
    } else if let Some(device_id) = alert.text_at(&["deviceID"]) {
        device_id.into_owned()
    } else {
        alert.text_at(&["ipAddress"])?.to_ascii_lowercase()
    };
    let channel = alert
        .text_at(&["channelID"])
        .or_else(|| alert.text_at(&["dynChannelID"]));
    let channel = channel.as_deref().unwrap_or(DEFAULT_CHANNEL);
    Some(format!("hikvision:{device}/{channel}"))
}

/// The identity of the alert, before the offence name is appended.
///
/// With a UUID, the UUID alone (every post of the event repeats it, whatever
/// its count or time). Without one: device and channel, event type, instant
/// and plate; the device falls back to the camera header, then the gateway.
fn identity_prefix(
    context: &DecodeContext<'_>,
    uuid: Option<&str>,
    device_identity: Option<&str>,
    event_type: &str,
    detected_at: DateTime<Utc>,
    plate: Option<&str>,
) -> String {
    if let Some(uuid) = uuid {
        return format!("hikvision|uuid|{}", uuid.to_ascii_lowercase());
    }
    let device = match (device_identity, context.raw.camera_id) {
        (Some(device), _) => Cow::Borrowed(device),
        (None, Some(camera_id)) => Cow::Owned(format!("camera:{camera_id}")),
        (None, None) => Cow::Owned(format!("gateway:{}", context.raw.gateway_id)),
    };
    format!(
        "hikvision|device|{device}|{}|{}|{}",
        alias_key(event_type),
        detected_at.timestamp_millis(),
        plate.unwrap_or("")
    )
}

/// A 0-100 confidence.
fn percent(raw: Option<f64>) -> Option<Confidence> {
    raw.map(|raw| Confidence {
        raw,
        scale: PERCENT_SCALE,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::testing;
    use crate::format::Format;
    use crate::limits::Limits;

    fn decode_text(text: &str) -> Result<Decoded, Rejection> {
        testing::decode_with(decode, Format::Hikvision, text, None, &Limits::default())
    }

    fn detections(text: &str) -> Vec<Detection> {
        testing::detections(decode_text(text))
    }

    fn ignored(text: &str) -> IgnoreReason {
        testing::ignored(decode_text(text))
    }

    fn rejected(text: &str) -> RejectReason {
        testing::rejected(decode_text(text))
    }

    const SEATBELT: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<EventNotificationAlert version="2.0" xmlns="http://www.isapi.org/ver20/XMLSchema">
<ipAddress>10.20.4.17</ipAddress>
<macAddress>44:19:B6:0A:11:02</macAddress>
<channelID>1</channelID>
<dateTime>2026-11-27T09:14:05.412+05:00</dateTime>
<activePostCount>1</activePostCount>
<eventType>ANPR</eventType>
<eventState>active</eventState>
<UUID>7C1E2F40-5A9B-4F7E-9D61-0B3C2A4E8F11</UUID>
<ANPR>
<licensePlate>123ABC01</licensePlate>
<confidenceLevel>96</confidenceLevel>
<speedLimit>60</speedLimit>
<illegalInfo><illegalCode>1240</illegalCode><illegalName>No_Seatbelt_Fastened</illegalName></illegalInfo>
<vehicleInfo><speed>48</speed></vehicleInfo>
</ANPR>
</EventNotificationAlert>"#;

    #[test]
    fn an_anpr_violation_becomes_one_detection_with_its_measurements() {
        let found = detections(SEATBELT);
        assert_eq!(found.len(), 1);
        let detection = &found[0];
        assert_eq!(detection.offence_name, "No_Seatbelt_Fastened");
        assert_eq!(
            detection.device_identity.as_deref(),
            Some("hikvision:44:19:b6:0a:11:02/1")
        );
        assert_eq!(
            detection.identity_key,
            "hikvision|uuid|7c1e2f40-5a9b-4f7e-9d61-0b3c2a4e8f11|noseatbeltfastened"
        );
        assert_eq!(
            detection.source_event_id.as_deref(),
            Some("7C1E2F40-5A9B-4F7E-9D61-0B3C2A4E8F11")
        );
        assert_eq!(
            detection.device_time.as_deref(),
            Some("2026-11-27T09:14:05.412+05:00")
        );
        assert_eq!(
            detection.detected_at.to_rfc3339(),
            "2026-11-27T04:14:05.412+00:00"
        );
        assert_eq!(
            detection.confidence,
            Some(Confidence {
                raw: 96.0,
                scale: 100.0
            })
        );
        assert_eq!(detection.plate.as_deref(), Some("123ABC01"));
        assert_eq!(detection.speed_kmh, Some(48.0));
        assert_eq!(detection.speed_limit_kmh, Some(60.0));
        assert_eq!(detection.explicit_event_id, None);
    }

    #[test]
    fn every_post_of_one_uuid_has_the_same_identity() {
        let first = detections(SEATBELT);
        let repeat = SEATBELT
            .replace(
                "<activePostCount>1</activePostCount>",
                "<activePostCount>3</activePostCount>",
            )
            .replace("09:14:05.412", "09:14:08.000")
            .replace("7C1E2F40", "7c1e2f40");
        let again = detections(&repeat);
        assert_eq!(first[0].identity_key, again[0].identity_key);
    }

    #[test]
    fn without_a_uuid_only_the_first_post_counts_with_a_content_identity() {
        let without_uuid =
            SEATBELT.replace("<UUID>7C1E2F40-5A9B-4F7E-9D61-0B3C2A4E8F11</UUID>", "");
        let first = detections(&without_uuid);
        assert_eq!(
            first[0].identity_key,
            format!(
                "hikvision|device|hikvision:44:19:b6:0a:11:02/1|anpr|{}|123ABC01|noseatbeltfastened",
                first[0].detected_at.timestamp_millis()
            )
        );
        assert_eq!(first[0].source_event_id, None);
        let no_count = without_uuid.replace("<activePostCount>1</activePostCount>", "");
        assert_eq!(detections(&no_count)[0].identity_key, first[0].identity_key);
        let second = without_uuid.replace(
            "<activePostCount>1</activePostCount>",
            "<activePostCount>2</activePostCount>",
        );
        assert_eq!(ignored(&second), IgnoreReason::LifecycleRepeat);
        let bad_count = without_uuid.replace(
            "<activePostCount>1</activePostCount>",
            "<activePostCount>many</activePostCount>",
        );
        assert_eq!(rejected(&bad_count), RejectReason::InvalidField);
    }

    #[test]
    fn heartbeats_inactive_posts_and_plain_reads_are_ignored() {
        let inactive = SEATBELT.replace(">active<", ">inactive<");
        assert_eq!(ignored(&inactive), IgnoreReason::LifecycleRepeat);
        let videoloss = inactive.replace(">ANPR</eventType>", ">videoloss</eventType>");
        assert_eq!(ignored(&videoloss), IgnoreReason::Heartbeat);
        let heartbeat = r#"{"eventType":"HEARTBEAT","dateTime":"x"}"#;
        assert_eq!(ignored(heartbeat), IgnoreReason::Heartbeat);
        let read = SEATBELT.replace("1240", "0");
        assert_eq!(ignored(&read), IgnoreReason::PlateRead);
        let normal = SEATBELT.replace("No_Seatbelt_Fastened", "Normal");
        assert_eq!(ignored(&normal), IgnoreReason::PlateRead);
        let no_info = SEATBELT.replace("<illegalCode>1240</illegalCode>", "");
        assert_eq!(ignored(&no_info), IgnoreReason::PlateRead);
        let motion = SEATBELT.replace(">ANPR</eventType>", ">VMD</eventType>");
        assert_eq!(ignored(&motion), IgnoreReason::NotOffence);
    }

    #[test]
    fn an_unnamed_violation_is_named_by_its_code() {
        let unnamed = SEATBELT.replace("<illegalName>No_Seatbelt_Fastened</illegalName>", "");
        assert_eq!(detections(&unnamed)[0].offence_name, "1240");
    }

    #[test]
    fn tfs_lists_count_each_offence_and_skip_states() {
        let tfs = r#"{"EventNotificationAlert":{"deviceID":"TFS-9","dynChannelID":"2","dateTime":"2026-11-27T18:02:41+05:00","eventType":"TFS","eventState":"active","UUID":"AB-1","TFS":{"illegalTrafficEvent":"wrongDirection, congestion,crossLane","licensePlate":"777QWE05","plateInfo":{"confidence":"88"},"vehicleInfo":{"speed":"41"}}}}"#;
        let found = detections(tfs);
        let names: Vec<&str> = found.iter().map(|d| d.offence_name.as_str()).collect();
        assert_eq!(names, ["wrongDirection", "crossLane"]);
        assert_ne!(found[0].identity_key, found[1].identity_key);
        assert_eq!(
            found[0].device_identity.as_deref(),
            Some("hikvision:TFS-9/2")
        );
        assert_eq!(found[0].plate.as_deref(), Some("777QWE05"));
        assert_eq!(found[0].speed_kmh, Some(41.0));
        assert_eq!(found[0].confidence.map(|c| c.raw), Some(88.0));
        let states = tfs.replace(
            "wrongDirection, congestion,crossLane",
            "congestion,fogDetection",
        );
        assert_eq!(ignored(&states), IgnoreReason::State);
        let many = tfs.replace(
            "wrongDirection, congestion,crossLane",
            &vec!["x"; 100].join(","),
        );
        assert_eq!(rejected(&many), RejectReason::TooManyEvents);
    }

    #[test]
    fn time_must_be_present_and_carry_an_offset() {
        let no_time = SEATBELT.replace("<dateTime>2026-11-27T09:14:05.412+05:00</dateTime>", "");
        assert_eq!(rejected(&no_time), RejectReason::MissingField);
        let no_offset = SEATBELT.replace("+05:00</dateTime>", "</dateTime>");
        assert_eq!(rejected(&no_offset), RejectReason::InvalidTime);
        let zulu = SEATBELT.replace("+05:00</dateTime>", "Z</dateTime>");
        assert_eq!(
            detections(&zulu)[0].detected_at.to_rfc3339(),
            "2026-11-27T09:14:05.412+00:00"
        );
    }

    #[test]
    fn identity_falls_back_from_mac_to_device_id_to_ip_and_channel_to_one() {
        let ip_only = SEATBELT
            .replace("<macAddress>44:19:B6:0A:11:02</macAddress>", "")
            .replace("<channelID>1</channelID>", "");
        assert_eq!(
            detections(&ip_only)[0].device_identity.as_deref(),
            Some("hikvision:10.20.4.17/1")
        );
        let nothing = ip_only.replace("<ipAddress>10.20.4.17</ipAddress>", "");
        assert_eq!(detections(&nothing)[0].device_identity, None);
    }

    #[test]
    fn broken_and_foreign_documents_are_rejected() {
        assert_eq!(
            rejected("<EventNotificationAlert>"),
            RejectReason::Malformed
        );
        assert_eq!(rejected("eventType=ANPR"), RejectReason::Malformed);
        assert_eq!(rejected(""), RejectReason::Malformed);
        assert_eq!(
            rejected("<Other><eventType>ANPR</eventType></Other>"),
            RejectReason::InvalidField
        );
        assert_eq!(
            rejected(r#"{"EventNotificationAlert":[1]}"#),
            RejectReason::InvalidField
        );
        assert_eq!(
            rejected(r#"{"dateTime":"2026-11-27T09:14:05Z"}"#),
            RejectReason::MissingField
        );
        assert_eq!(
            rejected(r#"{"eventType":"ANPR","eventState":"maybe"}"#),
            RejectReason::InvalidField
        );
        assert_eq!(
            rejected(r#"{"eventType":"ANPR"}"#),
            RejectReason::MissingField
        );
        let bad_speed = SEATBELT.replace("<speed>48</speed>", "<speed>fast</speed>");
        assert_eq!(rejected(&bad_speed), RejectReason::InvalidField);
        let bomb = r#"<?xml version="1.0"?><!DOCTYPE a [<!ENTITY b "c">]><EventNotificationAlert>&b;</EventNotificationAlert>"#;
        assert_eq!(rejected(bomb), RejectReason::DtdForbidden);
    }
}
