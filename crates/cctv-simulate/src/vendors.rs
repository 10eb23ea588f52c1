//! Format payloads for `cctvctl simulate --format`: what Hikvision, Dahua,
//! ONVIF, DeepStream and Frigate devices send for one offence (with the
//! lifecycle repeats each vendor is known for), for things that are not
//! offences (heartbeats, plain plate reads, unmapped rules, false positives),
//! and broken messages. Each message carries the outcome the pipeline must
//! give it, so a run can state exactly what the ingest metrics must show.
//!
//! The shapes follow docs/formats.md and the fixtures in
//! crates/cctv-normalize/fixtures/; names are the vendors' own vocabulary,
//! resolved by the taxonomy's aliases.

use chrono::{DateTime, FixedOffset, Offset as _, SecondsFormat, Utc};
use rand::rngs::StdRng;
use rand::Rng as _;
use serde_json::json;

pub(crate) use cctv_normalize::Format;

/// The offence codes this vendor's devices report, with the name each
/// device uses. Canonical and DeepStream report every code (`None`: the
/// caller uses the code or its short name).
pub(crate) fn vocabulary(vendor: Format) -> Option<&'static [(&'static str, &'static str)]> {
    match vendor {
        Format::Canonical | Format::Deepstream => None,
        Format::Hikvision => Some(HIKVISION_NAMES),
        Format::Dahua => Some(DAHUA_CODES),
        Format::Onvif => Some(ONVIF_RULES),
        Format::Frigate => Some(FRIGATE_ZONES),
    }
}

/// Hikvision names: ANPR `illegalName`s first, then TFS `illegalTrafficEvent`s.
const HIKVISION_NAMES: &[(&str, &str)] = &[
    ("traffic.speeding", "overSpeed"),
    ("traffic.red_light", "redLight"),
    ("traffic.no_seat_belt", "No_Seatbelt_Fastened"),
    ("traffic.phone_use", "useMobilePhone"),
    ("traffic.no_helmet", "noHelmet"),
    ("traffic.illegal_parking", "illegalParking"),
    ("traffic.wrong_way", "wrongDirection"),
    ("traffic.illegal_turn", "turnRound"),
    ("traffic.signs_markings", "crossLane"),
    ("traffic.pedestrian_priority", "pedestrianFirst"),
    ("traffic.stop_line", "crossStopLine"),
    ("traffic.bus_lane", "occupyBusLane"),
];
/// The Hikvision names reported through an ANPR block (the rest come as TFS).
const HIKVISION_ANPR_NAMES: usize = 5;

/// Dahua event codes; `TrafficJunction:<ViolationName>` is a generic capture
/// whose violation name is the offence.
const DAHUA_CODES: &[(&str, &str)] = &[
    ("traffic.speeding", "TrafficOverSpeed"),
    ("traffic.red_light", "TrafficRunRedLight"),
    ("traffic.wrong_way", "TrafficRetrograde"),
    ("traffic.signs_markings", "TrafficOverLine"),
    ("traffic.illegal_turn", "TrafficUTurn"),
    ("traffic.illegal_parking", "TrafficParking"),
    ("traffic.pedestrian_priority", "TrafficPedestrainPriority"),
    ("traffic.bus_lane", "TrafficVehicleInRoute"),
    ("traffic.no_helmet", "TrafficNonMotorWithoutSafehat"),
    ("traffic.stop_line", "TrafficOverStopLine"),
    ("traffic.no_seat_belt", "TrafficJunction:WithoutSafeBelt"),
    ("traffic.phone_use", "TrafficJunction:Calling"),
];

/// ONVIF analytics rule names configured on the cameras.
const ONVIF_RULES: &[(&str, &str)] = &[
    ("traffic.illegal_parking", "NoParking"),
    ("public_order.littering", "Littering"),
    ("public_order.illegal_dumping", "Dumping"),
    ("public_order.smoking", "NoSmoking"),
    ("public_order.vandalism", "Vandalism"),
    ("public_order.fighting", "Fight"),
    ("public_order.graffiti", "Graffiti"),
    ("public_order.hooliganism", "Hooliganism"),
    ("public_order.public_drinking", "PublicDrinking"),
];

/// Frigate zones (with the label of the object that enters them).
const FRIGATE_ZONES: &[(&str, &str)] = &[
    ("traffic.illegal_parking", "no_parking"),
    ("public_order.illegal_dumping", "dumping_site"),
    ("public_order.smoking", "no_smoking_zone"),
    ("public_order.littering", "littering"),
];

/// What the pipeline must do with one raw message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expected {
    /// It carries an offence not seen before: counted.
    Counted,
    /// It repeats an offence already counted (a later picture, frame, post
    /// or lifecycle message that maps to the same event id).
    Duplicate,
    /// A valid message that is not an offence (heartbeat, plate read, end of
    /// an incident, replay, false positive, unmapped rule).
    Ignored,
    /// Broken: dead-lettered.
    DeadLettered,
}

/// One raw message of a simulated device.
#[derive(Debug, Clone)]
pub(crate) struct VendorMessage {
    /// Payload exactly as the device sends it.
    pub(crate) payload: Vec<u8>,
    /// What the pipeline must make of it.
    pub(crate) expected: Expected,
}

/// How a simulated camera names itself to the pipeline.
#[derive(Debug, Clone)]
pub(crate) struct Device {
    /// MAC (Hikvision), MachineName (Dahua), video source token (ONVIF),
    /// sensor id (DeepStream) or camera name (Frigate).
    pub(crate) name: String,
    /// Channel index (Hikvision, Dahua).
    pub(crate) channel: String,
}

impl Device {
    /// Reads a registry identity (`<vendor>:<device>[/<channel>]`); the
    /// gateway part of ONVIF and Frigate identities is dropped (those
    /// cameras are named by the `Cctv-Camera-Id` header in a simulation).
    pub(crate) fn from_identity(identity: &str) -> Option<(Format, Device)> {
        let (vendor, rest) = identity.split_once(':')?;
        let vendor = Format::parse(vendor)?;
        let (device, channel) = match rest.rsplit_once('/') {
            Some((device, channel)) => (device, channel),
            None => (rest, ""),
        };
        let name = match vendor {
            Format::Onvif | Format::Frigate => channel.to_string(),
            _ => device.to_string(),
        };
        let channel = match vendor {
            Format::Onvif | Format::Frigate => String::new(),
            _ => channel.to_string(),
        };
        Some((vendor, Device { name, channel }))
    }

    /// A device for a camera with no identity of `vendor` (it is then named
    /// by the `Cctv-Camera-Id` header).
    pub(crate) fn synthetic(vendor: Format, camera_id: &str, index: usize) -> Device {
        let name = match vendor {
            Format::Hikvision => format!(
                "02:5a:{:02x}:{:02x}:{:02x}:01",
                (index >> 16) & 0xff,
                (index >> 8) & 0xff,
                index & 0xff
            ),
            Format::Dahua => format!("DH-SIM-{index:05}"),
            Format::Onvif => format!("VideoSource_{index}"),
            _ => camera_id.to_string(),
        };
        let channel = match vendor {
            Format::Dahua => "0".to_string(),
            _ => "1".to_string(),
        };
        Device { name, channel }
    }
}

/// One offence to render.
#[derive(Debug, Clone)]
pub(crate) struct OffenceSpec<'a> {
    /// Canonical code; must be in the vendor's vocabulary.
    pub(crate) code: &'a str,
    /// When it happened.
    pub(crate) detected: DateTime<Utc>,
    /// Licence plate.
    pub(crate) plate: &'a str,
    /// Speed and limit, km/h, for speeding.
    pub(crate) speed: Option<(u32, u32)>,
    /// Confidence 0..1.
    pub(crate) confidence: f64,
}

/// Kazakhstan's offset since 2024-03-01, for devices that stamp local time.
fn local_offset() -> FixedOffset {
    FixedOffset::east_opt(5 * 3600).unwrap_or(Utc.fix())
}

fn name_of(vendor: Format, code: &str) -> Option<&'static str> {
    vocabulary(vendor)?
        .iter()
        .find(|(known, _)| *known == code)
        .map(|(_, name)| *name)
}

/// The messages a device of `vendor` sends for one offence: the first is
/// counted, the rest are its lifecycle repeats.
pub(crate) fn offence_messages(
    vendor: Format,
    device: &Device,
    offence: &OffenceSpec<'_>,
    rng: &mut StdRng,
) -> Vec<VendorMessage> {
    match vendor {
        Format::Canonical => Vec::new(),
        Format::Hikvision => hikvision_offence(device, offence, rng),
        Format::Dahua => dahua_offence(device, offence, rng),
        Format::Onvif => onvif_offence(device, offence, rng),
        Format::Deepstream => deepstream_offence(device, offence, rng),
        Format::Frigate => frigate_offence(device, offence, rng),
    }
}

/// One valid message that is not an offence.
pub(crate) fn noise_message(
    vendor: Format,
    device: &Device,
    detected: DateTime<Utc>,
    plate: &str,
    rng: &mut StdRng,
) -> Option<VendorMessage> {
    let payload = match vendor {
        Format::Canonical => return None,
        Format::Hikvision => {
            if rng.random_bool(0.5) {
                hikvision_xml(
                    device,
                    detected,
                    "ANPR",
                    "active",
                    1,
                    &uuid(rng),
                    &anpr_block(plate, 0, "normal", 90, None),
                )
            } else {
                hikvision_xml(device, detected, "videoloss", "inactive", 0, "", "")
            }
        }
        Format::Dahua => {
            if rng.random_bool(0.5) {
                b"Heartbeat".to_vec()
            } else {
                let data = dahua_data(
                    device,
                    detected,
                    rng.random(),
                    1,
                    1,
                    plate,
                    None,
                    Some("ANPR"),
                    200,
                );
                dahua_text("TrafficJunction", "Pulse", &device.channel, &data)
            }
        }
        Format::Onvif => onvif_xml(
            device,
            detected,
            "MotionZone1",
            "Changed",
            "IsInside",
            true,
            rng.random_range(1..100_000),
        ),
        Format::Deepstream => deepstream_json(
            device,
            detected,
            "moving",
            rng.random(),
            plate,
            None,
            0.8,
            rng,
        ),
        Format::Frigate => {
            let id = frigate_id(detected, rng);
            if rng.random_bool(0.5) {
                frigate_json("new", &id, device, "car", "no_parking", detected, true, 0.6)
            } else {
                frigate_json("new", &id, device, "car", "driveway", detected, false, 0.7)
            }
        }
    };
    Some(VendorMessage {
        payload,
        expected: Expected::Ignored,
    })
}

/// A broken copy of a message: cut at 60 % of its length (every vendor
/// format then fails to parse).
pub(crate) fn broken(message: &VendorMessage) -> VendorMessage {
    let mut cut = message.payload.len() * 3 / 5;
    while cut > 0 && std::str::from_utf8(&message.payload[..cut]).is_err() {
        cut -= 1;
    }
    VendorMessage {
        payload: message.payload[..cut].to_vec(),
        expected: Expected::DeadLettered,
    }
}

fn uuid(rng: &mut StdRng) -> String {
    uuid::Builder::from_random_bytes(rng.random())
        .into_uuid()
        .to_string()
}

fn counted(payload: Vec<u8>) -> VendorMessage {
    VendorMessage {
        payload,
        expected: Expected::Counted,
    }
}

fn repeat(payload: Vec<u8>, expected: Expected) -> VendorMessage {
    VendorMessage { payload, expected }
}

// ---- Hikvision ISAPI -------------------------------------------------------

fn anpr_block(
    plate: &str,
    code: u32,
    name: &str,
    confidence: u32,
    speed: Option<(u32, u32)>,
) -> String {
    let (speed, limit) = speed.unwrap_or((0, 60));
    format!(
        "<ANPR><country>20</country><licensePlate>{plate}</licensePlate><confidenceLevel>{confidence}</confidenceLevel>\
         <speedLimit>{limit}</speedLimit><illegalInfo><illegalCode>{code}</illegalCode><illegalName>{name}</illegalName>\
         </illegalInfo><vehicleInfo><speed>{speed}</speed></vehicleInfo></ANPR>"
    )
}

fn hikvision_xml(
    device: &Device,
    detected: DateTime<Utc>,
    event_type: &str,
    state: &str,
    post_count: u32,
    uuid: &str,
    block: &str,
) -> Vec<u8> {
    let time = detected
        .with_timezone(&local_offset())
        .to_rfc3339_opts(SecondsFormat::Millis, false);
    let uuid = if uuid.is_empty() {
        String::new()
    } else {
        format!("<UUID>{uuid}</UUID>")
    };
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<EventNotificationAlert version=\"2.0\" \
         xmlns=\"http://www.isapi.org/ver20/XMLSchema\">\n<ipAddress>10.20.4.17</ipAddress>\n\
         <macAddress>{}</macAddress>\n<channelID>{}</channelID>\n<dateTime>{time}</dateTime>\n\
         <activePostCount>{post_count}</activePostCount>\n<eventType>{event_type}</eventType>\n\
         <eventState>{state}</eventState>\n{uuid}\n{block}\n</EventNotificationAlert>\n",
        device.name, device.channel
    )
    .into_bytes()
}

#[allow(clippy::too_many_arguments)]
fn hikvision_tfs_json(
    device: &Device,
    detected: DateTime<Utc>,
    state: &str,
    post_count: u32,
    uuid: &str,
    names: &str,
    plate: &str,
    confidence: u32,
) -> Vec<u8> {
    let body = json!({
        "ipAddress": "10.31.0.44",
        "macAddress": device.name,
        "channelID": device.channel.parse::<u32>().unwrap_or(1),
        "dateTime": detected.with_timezone(&local_offset()).to_rfc3339_opts(SecondsFormat::Secs, false),
        "activePostCount": post_count,
        "eventType": "TFS",
        "eventState": state,
        "eventDescription": "traffic enforcement",
        "UUID": uuid,
        "TFS": {
            "illegalTrafficEvent": names,
            "laneNo": 1,
            "plateInfo": { "plate": plate, "confidence": confidence },
            "vehicleInfo": { "vehicleType": "vehicle", "speed": 0 }
        }
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

fn hikvision_offence(
    device: &Device,
    offence: &OffenceSpec<'_>,
    rng: &mut StdRng,
) -> Vec<VendorMessage> {
    let Some(position) = HIKVISION_NAMES
        .iter()
        .position(|(code, _)| *code == offence.code)
    else {
        return Vec::new();
    };
    let name = HIKVISION_NAMES[position].1;
    let event_uuid = uuid(rng);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let confidence = (offence.confidence * 100.0).round() as u32;
    let mut messages = Vec::new();
    if position < HIKVISION_ANPR_NAMES {
        let code = 1000 + u32::try_from(position).unwrap_or(0);
        let block = anpr_block(offence.plate, code, name, confidence, offence.speed);
        messages.push(counted(hikvision_xml(
            device,
            offence.detected,
            "ANPR",
            "active",
            1,
            &event_uuid,
            &block,
        )));
        return messages;
    }
    // TFS alarms stay active: repeated posts with the same UUID, then one
    // inactive. A traffic state joined to the name does not count.
    let names = if rng.random_bool(0.2) {
        format!("{name},congestion")
    } else {
        name.to_string()
    };
    let post = |count: u32, state: &str| {
        hikvision_tfs_json(
            device,
            offence.detected,
            state,
            count,
            &event_uuid,
            &names,
            offence.plate,
            confidence,
        )
    };
    messages.push(counted(post(1, "active")));
    if rng.random_bool(0.3) {
        messages.push(repeat(post(2, "active"), Expected::Duplicate));
    }
    if rng.random_bool(0.3) {
        messages.push(repeat(post(0, "inactive"), Expected::Ignored));
    }
    messages
}

// ---- Dahua ------------------------------------------------------------------

#[allow(clippy::too_many_arguments)]
fn dahua_data(
    device: &Device,
    detected: DateTime<Utc>,
    group_id: u32,
    count_in_group: u32,
    index_in_group: u32,
    plate: &str,
    speed: Option<(u32, u32)>,
    violation_name: Option<&str>,
    confidence: u32,
) -> serde_json::Value {
    let mut car = json!({
        "MachineName": device.name,
        "PlateNumber": plate,
    });
    if let Some((speed, limit)) = speed {
        car["Speed"] = json!(speed);
        car["UpperSpeedLimit"] = json!(limit);
    }
    if let Some(name) = violation_name {
        car["ViolationName"] = json!(name);
    }
    json!({
        "Class": "Traffic",
        "GroupID": group_id,
        "CountInGroup": count_in_group,
        "IndexInGroup": index_in_group,
        "Lane": 1,
        "RealUTC": detected.timestamp(),
        "UTCMS": detected.timestamp_subsec_millis(),
        "TrafficCar": car,
        "Object": { "ObjectType": "Plate", "Text": plate, "Confidence": confidence }
    })
}

fn dahua_text(code: &str, action: &str, channel: &str, data: &serde_json::Value) -> Vec<u8> {
    let data = serde_json::to_string_pretty(data).unwrap_or_default();
    format!("Code={code};action={action};index={channel};data={data}\n").into_bytes()
}

fn dahua_offence(
    device: &Device,
    offence: &OffenceSpec<'_>,
    rng: &mut StdRng,
) -> Vec<VendorMessage> {
    let Some(name) = name_of(Format::Dahua, offence.code) else {
        return Vec::new();
    };
    let (code, violation) = match name.split_once(':') {
        Some((code, violation)) => (code, Some(violation)),
        None => (name, None),
    };
    let group_id: u32 = rng.random();
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let confidence = (offence.confidence * 255.0).round() as u32;
    let data = |count: u32, index: u32| {
        dahua_data(
            device,
            offence.detected,
            group_id,
            count,
            index,
            offence.plate,
            offence.speed,
            violation,
            confidence,
        )
    };
    match rng.random_range(0..3) {
        // An RPC notification carrying both pictures of the group: one event.
        0 => {
            let event = |index: u32| json!({"Action": "Pulse", "Code": code, "Index": device.channel.parse::<u32>().unwrap_or(0), "Data": data(2, index)});
            let body = json!({
                "method": "client.notifyEventStream",
                "params": { "SID": 513, "eventList": [event(1), event(2)] }
            });
            vec![counted(serde_json::to_vec(&body).unwrap_or_default())]
        }
        // A stream part per picture: the first counts, the rest repeat it.
        1 => {
            let pictures = rng.random_range(1..=3u32);
            (1..=pictures)
                .map(|index| {
                    let payload =
                        dahua_text(code, "Pulse", &device.channel, &data(pictures, index));
                    if index == 1 {
                        counted(payload)
                    } else {
                        repeat(payload, Expected::Duplicate)
                    }
                })
                .collect()
        }
        // Start and Stop of one incident: counted on Start only.
        _ => vec![
            counted(dahua_text(code, "Start", &device.channel, &data(1, 1))),
            repeat(
                dahua_text(code, "Stop", &device.channel, &data(1, 1)),
                Expected::Ignored,
            ),
        ],
    }
}

// ---- ONVIF ------------------------------------------------------------------

fn onvif_xml(
    device: &Device,
    detected: DateTime<Utc>,
    rule: &str,
    operation: &str,
    state_item: &str,
    state: bool,
    object_id: u32,
) -> Vec<u8> {
    let time = detected.to_rfc3339_opts(SecondsFormat::Millis, true);
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<wsnt:NotificationMessage xmlns:wsnt=\"http://docs.oasis-open.org/wsn/b-2\" \
         xmlns:tt=\"http://www.onvif.org/ver10/schema\" xmlns:tns1=\"http://www.onvif.org/ver10/topics\">\n\
         <wsnt:Topic Dialect=\"http://www.onvif.org/ver10/tev/topicExpression/ConcreteSet\">tns1:RuleEngine/FieldDetector/ObjectsInside</wsnt:Topic>\n\
         <wsnt:Message><tt:Message UtcTime=\"{time}\" PropertyOperation=\"{operation}\">\
         <tt:Source><tt:SimpleItem Name=\"VideoSourceConfigurationToken\" Value=\"{}\"/>\
         <tt:SimpleItem Name=\"Rule\" Value=\"{rule}\"/></tt:Source>\
         <tt:Data><tt:SimpleItem Name=\"ObjectId\" Value=\"{object_id}\"/>\
         <tt:SimpleItem Name=\"{state_item}\" Value=\"{state}\"/>\
         <tt:SimpleItem Name=\"Likelihood\" Value=\"0.82\"/></tt:Data>\
         </tt:Message></wsnt:Message>\n</wsnt:NotificationMessage>\n",
        device.name
    )
    .into_bytes()
}

fn onvif_offence(
    device: &Device,
    offence: &OffenceSpec<'_>,
    rng: &mut StdRng,
) -> Vec<VendorMessage> {
    let Some(rule) = name_of(Format::Onvif, offence.code) else {
        return Vec::new();
    };
    let object_id = rng.random_range(1..1_000_000u32);
    if rng.random_bool(0.3) {
        // onvif-ej JSON of a line crossing: the crossing is the event.
        let body = json!({
            "Topic": "tns1:RuleEngine/LineDetector/Crossed",
            "UtcTime": offence.detected.to_rfc3339_opts(SecondsFormat::Millis, true),
            "Source": { "VideoSource": device.name, "AnalyticsConfiguration": "1", "Rule": rule },
            "Data": { "ObjectId": object_id.to_string(), "Likelihood": format!("{:.2}", offence.confidence) }
        });
        return vec![counted(serde_json::to_vec(&body).unwrap_or_default())];
    }
    let mut messages = vec![counted(onvif_xml(
        device,
        offence.detected,
        rule,
        "Changed",
        "IsInside",
        true,
        object_id,
    ))];
    if rng.random_bool(0.3) {
        // A re-subscription replays the current state: never counted.
        let later = offence.detected + chrono::TimeDelta::seconds(20);
        messages.push(repeat(
            onvif_xml(
                device,
                later,
                rule,
                "Initialized",
                "IsInside",
                true,
                object_id,
            ),
            Expected::Ignored,
        ));
    }
    if rng.random_bool(0.5) {
        let later = offence.detected + chrono::TimeDelta::seconds(45);
        messages.push(repeat(
            onvif_xml(device, later, rule, "Changed", "IsInside", false, object_id),
            Expected::Ignored,
        ));
    }
    messages
}

// ---- DeepStream -------------------------------------------------------------

#[allow(clippy::too_many_arguments)]
fn deepstream_json(
    device: &Device,
    at: DateTime<Utc>,
    event_type: &str,
    object_id: u64,
    plate: &str,
    speed: Option<(u32, u32)>,
    confidence: f64,
    rng: &mut StdRng,
) -> Vec<u8> {
    let body = json!({
        "messageid": uuid(rng),
        "mdsversion": "1.0",
        "@timestamp": at.to_rfc3339_opts(SecondsFormat::Millis, true),
        "place": { "id": "1", "name": "simulated road", "type": "road" },
        "sensor": { "id": device.name, "type": "Camera" },
        "analyticsModule": { "id": "enforcement-v1", "description": "simulated analytics" },
        "object": {
            "id": object_id.to_string(),
            "speed": speed.map_or(0.0, |(speed, _)| f64::from(speed)),
            "vehicle": { "type": "sedan", "license": plate, "confidence": confidence }
        },
        "event": { "id": uuid(rng), "type": event_type },
        "videoPath": ""
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

fn deepstream_offence(
    device: &Device,
    offence: &OffenceSpec<'_>,
    rng: &mut StdRng,
) -> Vec<VendorMessage> {
    // Application event types are the codes' short names (`speeding`, ...),
    // each a shared alias in the taxonomy.
    let event_type = offence
        .code
        .split_once('.')
        .map_or(offence.code, |(_, name)| name);
    // Tracker ids stay below DeepStream's "untracked" marker (u64::MAX).
    let object_id = rng.random_range(1..u64::MAX / 2);
    let frames = rng.random_range(1..=3u32);
    (0..frames)
        .map(|frame| {
            let at = offence.detected + chrono::TimeDelta::milliseconds(i64::from(frame) * 200);
            let payload = deepstream_json(
                device,
                at,
                event_type,
                object_id,
                offence.plate,
                offence.speed,
                offence.confidence,
                rng,
            );
            if frame == 0 {
                counted(payload)
            } else {
                repeat(payload, Expected::Duplicate)
            }
        })
        .collect()
}

// ---- Frigate ----------------------------------------------------------------

fn frigate_id(start: DateTime<Utc>, rng: &mut StdRng) -> String {
    let suffix: String = (0..6)
        .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rng.random_range(0..36)]))
        .collect();
    format!(
        "{}.{:06}-{suffix}",
        start.timestamp(),
        start.timestamp_subsec_micros()
    )
}

#[allow(clippy::too_many_arguments)]
fn frigate_json(
    kind: &str,
    id: &str,
    device: &Device,
    label: &str,
    zone: &str,
    start: DateTime<Utc>,
    false_positive: bool,
    score: f64,
) -> Vec<u8> {
    #[allow(clippy::cast_precision_loss)]
    let start_time = start.timestamp_millis() as f64 / 1000.0;
    let object = json!({
        "id": id,
        "camera": device.name,
        "label": label,
        "sub_label": null,
        "score": score,
        "top_score": score,
        "false_positive": false_positive,
        "start_time": start_time,
        "end_time": if kind == "end" { json!(start_time + 40.0) } else { json!(null) },
        "current_zones": [zone],
        "entered_zones": [zone],
        "stationary": kind != "new"
    });
    serde_json::to_vec(&json!({"type": kind, "before": object, "after": object}))
        .unwrap_or_default()
}

fn frigate_offence(
    device: &Device,
    offence: &OffenceSpec<'_>,
    rng: &mut StdRng,
) -> Vec<VendorMessage> {
    let Some(zone) = name_of(Format::Frigate, offence.code) else {
        return Vec::new();
    };
    let label = if offence.code == "traffic.illegal_parking" {
        "car"
    } else {
        "person"
    };
    let id = frigate_id(offence.detected, rng);
    let message = |kind: &str| {
        frigate_json(
            kind,
            &id,
            device,
            label,
            zone,
            offence.detected,
            false,
            offence.confidence,
        )
    };
    let mut messages = vec![counted(message("new"))];
    if rng.random_bool(0.6) {
        messages.push(repeat(message("update"), Expected::Duplicate));
    }
    messages.push(repeat(message("end"), Expected::Duplicate));
    messages
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng as _;

    #[test]
    fn registry_identities_name_devices() {
        let (vendor, device) = Device::from_identity("hikvision:44:19:b6:10:02:01/1").unwrap();
        assert_eq!(
            (vendor, device.name.as_str(), device.channel.as_str()),
            (Format::Hikvision, "44:19:b6:10:02:01", "1")
        );
        let (vendor, device) = Device::from_identity("onvif:gw-onvif-10/VideoSource_4").unwrap();
        assert_eq!(
            (vendor, device.name.as_str()),
            (Format::Onvif, "VideoSource_4")
        );
        let (vendor, device) = Device::from_identity("deepstream:KZ10-DS-0005").unwrap();
        assert_eq!(
            (vendor, device.name.as_str()),
            (Format::Deepstream, "KZ10-DS-0005")
        );
        assert!(Device::from_identity("axis:x/1").is_none());
    }

    #[test]
    fn every_vendor_renders_each_code_it_knows_with_one_counted_message_first() {
        let mut rng = StdRng::seed_from_u64(3);
        let detected = DateTime::parse_from_rfc3339("2026-11-27T08:15:05.250+05:00")
            .unwrap()
            .with_timezone(&Utc);
        for vendor in Format::ALL.into_iter().skip(1) {
            let device = Device::synthetic(vendor, "KZ75-0001", 7);
            let codes: Vec<&str> = match vocabulary(vendor) {
                Some(names) => names.iter().map(|(code, _)| *code).collect(),
                None => vec!["traffic.speeding", "public_order.graffiti"],
            };
            for code in codes {
                for _ in 0..10 {
                    let offence = OffenceSpec {
                        code,
                        detected,
                        plate: "123ABC02",
                        speed: Some((97, 70)),
                        confidence: 0.9,
                    };
                    let messages = offence_messages(vendor, &device, &offence, &mut rng);
                    assert!(!messages.is_empty(), "{vendor:?} {code}");
                    assert_eq!(messages[0].expected, Expected::Counted);
                    assert!(messages[1..]
                        .iter()
                        .all(|m| m.expected != Expected::Counted));
                    let broken = broken(&messages[0]);
                    assert!(broken.payload.len() < messages[0].payload.len());
                }
            }
            let noise = noise_message(vendor, &device, detected, "123ABC02", &mut rng).unwrap();
            assert_eq!(noise.expected, Expected::Ignored);
        }
    }
}
