//! Decoder for the `dahua` format (docs/formats.md, "dahua"): event-stream
//! text parts and RPC JSON notifications.
//!
//! Two shapes share one per-event core ([`decode_event`]):
//!
//! - Event-stream text: `Code=<code>;action=<Start|Stop|Pulse>;index=<channel>`
//!   optionally followed by `;data={json}`, where the JSON may span many lines
//!   and hold `;` and `=`. One message may hold several parts, optionally
//!   wrapped in multipart lines (`--myboundary`, `Content-Type:`,
//!   `Content-Length:`), which are skipped.
//! - RPC JSON: `{"method":"client.notifyEventStream","params":{"eventList":[..]}}`
//!   with one or more events.
//!
//! The shapes are told apart by the first non-whitespace byte (`{` is RPC).
//!
//! Counting rules: `Stop` never counts (the incident counted on `Start` or
//! `Pulse`); the N pictures of one violation share `GroupID`, so the identity
//! key is device + channel + `GroupID` + code and every picture yields the same
//! event id. `EventID` is a small restarting counter and is never used.

use std::borrow::Cow;

use crate::json::{Map, Value};
use cctv_event::NameMatch;
use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};

use crate::decode::{DecodeContext, Decoded};
use crate::detection::{identity_key, Confidence, Detection};
use crate::json;
use crate::outcome::{clip, IgnoreReason, RejectReason, Rejection};
use crate::time::epoch_to_utc;

/// The RPC method that carries events; any other non-heartbeat method is not
/// an offence.
const EVENT_STREAM_METHOD: &str = "client.notifyEventStream";

/// The code Dahua uses for captures that are offences only when their
/// `TrafficCar.ViolationName`/`ViolationCode` names one.
const GENERIC_CAPTURE_CODE: &str = "TrafficJunction";

/// The `ViolationName` of a plain plate read.
const PLATE_READ_VIOLATION_NAME: &str = "ANPR";

/// Prefix of Dahua's traffic enforcement codes: an unmapped code with this
/// prefix is presented by the vendor as a violation, so it is passed through
/// (and dead-lettered as `unknown_offence` until an alias is added).
const TRAFFIC_CODE_PREFIX: &str = "Traffic";

/// `LocaleTime` carries no offset; Kazakhstan has used one time zone,
/// UTC+05:00, since 2024-03-01.
const LOCALE_TIME_OFFSET_SECONDS: i64 = 5 * 3600;

/// `LocaleTime` layout (`2026-11-27 08:15:05`, fractional seconds accepted).
const LOCALE_TIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S%.f";

/// Top of the scale of `Data.Object.Confidence` in captures.
const CONFIDENCE_SCALE: f64 = 255.0;

/// Epoch values below this are seconds (see [`epoch_to_utc`]); only then is
/// `UTCMS` a separate millisecond part to add.
const EPOCH_SECONDS_BELOW: f64 = 1e11;

/// The text that separates a text part's `key=value` header from its JSON.
const DATA_MARKER: &str = ";data=";

/// Decodes one `dahua` message.
pub(crate) fn decode(context: &DecodeContext<'_>) -> Result<Decoded, Rejection> {
    let body = context.text.trim_start_matches('\u{feff}').trim();
    if body.is_empty() {
        return Err(Rejection::new(RejectReason::Malformed, "payload is empty"));
    }
    if body.eq_ignore_ascii_case("heartbeat") {
        return Ok(Decoded::Ignored(IgnoreReason::Heartbeat));
    }
    if body.starts_with('{') {
        return decode_rpc(context, body);
    }
    decode_stream(context, body)
}

// ---------------------------------------------------------------------------
// The per-event core shared by both shapes.
// ---------------------------------------------------------------------------

/// The fields of one event, borrowed from the payload or its parsed JSON.
struct EventFields<'a> {
    /// `Code` (empty treated as missing).
    code: Option<&'a str>,
    /// `action`/`Action`.
    action: Option<&'a str>,
    /// `index`/`Index`, the channel.
    index: Option<ChannelValue<'a>>,
    /// `data`/`Data`, always an object when present.
    data: Option<&'a Value<'a>>,
}

/// A channel index as sent: text in stream parts, JSON in RPC events.
#[derive(Clone, Copy)]
enum ChannelValue<'a> {
    Text(&'a str),
    Json(&'a Value<'a>),
}

/// The lifecycle step of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Start,
    Stop,
    Pulse,
}

impl Action {
    fn parse(text: &str) -> Option<Action> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("Start") {
            return Some(Action::Start);
        }
        if text.eq_ignore_ascii_case("Stop") {
            return Some(Action::Stop);
        }
        if text.eq_ignore_ascii_case("Pulse") {
            return Some(Action::Pulse);
        }
        None
    }
}

/// What an event's code (and, for generic captures, its violation) names.
enum OffenceVerdict<'a> {
    /// An offence candidate under this name (possibly unknown to the taxonomy).
    Named(Cow<'a, str>),
    /// Not counted, for this reason.
    Ignored(IgnoreReason),
}

/// When the capture happened, and the device's own text for it.
struct CaptureTime {
    detected_at: DateTime<Utc>,
    device_time: String,
}

/// Applies the lifecycle and offence rules to one event.
fn decode_event(
    context: &DecodeContext<'_>,
    event: &EventFields<'_>,
) -> Result<Decoded, Rejection> {
    let Some(code) = event.code else {
        return Err(Rejection::new(
            RejectReason::MissingField,
            "Code is missing",
        ));
    };
    if code.eq_ignore_ascii_case("heartbeat") {
        return Ok(Decoded::Ignored(IgnoreReason::Heartbeat));
    }
    let Some(action_text) = event.action else {
        return Err(Rejection::new(
            RejectReason::MissingField,
            "action is missing",
        ));
    };
    let Some(action) = Action::parse(action_text) else {
        return Err(Rejection::new(
            RejectReason::InvalidField,
            format!("action {:?} is not Start, Stop or Pulse", clip(action_text)),
        ));
    };
    // The incident counted on Start (or was a Pulse); its Stop never counts.
    if action == Action::Stop {
        return Ok(Decoded::Ignored(IgnoreReason::LifecycleRepeat));
    }
    let offence_name = match offence_verdict(context, code, event.data) {
        OffenceVerdict::Named(name) => name,
        OffenceVerdict::Ignored(reason) => return Ok(Decoded::Ignored(reason)),
    };
    let channel = parse_channel(event.index)?;
    let data = event.data;
    let traffic_car = data.and_then(|data| field(data, "TrafficCar"));
    let object = data.and_then(|data| field(data, "Object"));

    let machine_name = traffic_car.and_then(|car| json::text(field(car, "MachineName")));
    let device = match machine_name.as_deref() {
        Some(name) => name.trim(),
        None => context.raw.gateway_id,
    };
    let capture_time = capture_time(data)?;
    let plate = plate(traffic_car, object);
    let group_id = group_id(data)?;
    let speed_kmh = optional_number(traffic_car, "Speed", "TrafficCar.Speed")?;
    let speed_limit_kmh =
        optional_number(traffic_car, "UpperSpeedLimit", "TrafficCar.UpperSpeedLimit")?;
    let confidence =
        optional_number(object, "Confidence", "Object.Confidence")?.map(|raw| Confidence {
            raw,
            scale: CONFIDENCE_SCALE,
        });

    // Every picture of one violation shares GroupID: the key must not hold
    // anything that differs between them (IndexInGroup, EventID, UTCMS of a
    // later picture). Without a GroupID, the capture time and plate stand in.
    let identity_key = match group_id.as_deref() {
        Some(group) => identity_key!("dahua|{device}|{channel}|{group}|{code}"),
        None => identity_key!(
            "dahua|{device}|{channel}|t{}:{}|{code}",
            capture_time.detected_at.timestamp_millis(),
            plate.as_deref().unwrap_or("")
        ),
    };
    let detection = Detection {
        offence_name: offence_name.into_owned(),
        identity_key,
        device_identity: Some(format!("dahua:{device}/{channel}")),
        detected_at: capture_time.detected_at,
        device_time: Some(capture_time.device_time),
        confidence,
        plate: plate.map(Cow::into_owned),
        speed_kmh,
        speed_limit_kmh,
        source_event_id: group_id.map(Cow::into_owned),
        ..Detection::default()
    };
    Ok(Decoded::Detections(vec![detection]))
}

/// Decides which offence name (if any) an event stands for.
fn offence_verdict<'a>(
    context: &DecodeContext<'_>,
    code: &'a str,
    data: Option<&'a Value<'a>>,
) -> OffenceVerdict<'a> {
    if code.eq_ignore_ascii_case(GENERIC_CAPTURE_CODE) {
        return generic_capture_verdict(context, data);
    }
    match context.classify(code) {
        NameMatch::Offence(_) => OffenceVerdict::Named(Cow::Borrowed(code)),
        NameMatch::State => OffenceVerdict::Ignored(IgnoreReason::State),
        NameMatch::Unknown if starts_with_ignore_case(code, TRAFFIC_CODE_PREFIX) => {
            OffenceVerdict::Named(Cow::Borrowed(code))
        }
        NameMatch::Unknown => OffenceVerdict::Ignored(IgnoreReason::NotOffence),
    }
}

/// A `TrafficJunction` capture is an offence only when its violation says so:
/// `ViolationName` if mapped, else `ViolationCode` if mapped; "ANPR" or no
/// name is a plate read; any other name passes through as unknown.
fn generic_capture_verdict<'a>(
    context: &DecodeContext<'_>,
    data: Option<&'a Value<'a>>,
) -> OffenceVerdict<'a> {
    let traffic_car = data.and_then(|data| field(data, "TrafficCar"));
    let violation_name = traffic_car
        .and_then(|car| json::text(field(car, "ViolationName")))
        .map(trim_cow);
    let violation_code = traffic_car
        .and_then(|car| json::text(field(car, "ViolationCode")))
        .map(trim_cow);
    if let Some(name) = violation_name.as_deref() {
        if context.is_offence(name) {
            return OffenceVerdict::Named(Cow::Owned(name.to_string()));
        }
    }
    if let Some(code) = violation_code {
        if context.is_offence(&code) {
            return OffenceVerdict::Named(code);
        }
    }
    match violation_name {
        None => OffenceVerdict::Ignored(IgnoreReason::PlateRead),
        Some(name) if name.eq_ignore_ascii_case(PLATE_READ_VIOLATION_NAME) => {
            OffenceVerdict::Ignored(IgnoreReason::PlateRead)
        }
        Some(name) => OffenceVerdict::Named(name),
    }
}

/// The channel: a non-negative integer as number or text; 0 when absent.
fn parse_channel(index: Option<ChannelValue<'_>>) -> Result<u64, Rejection> {
    let parsed = match index {
        None => return Ok(0),
        Some(ChannelValue::Text(text)) if text.trim().is_empty() => return Ok(0),
        Some(ChannelValue::Json(Value::Null)) => return Ok(0),
        Some(ChannelValue::Text(text)) => text.trim().parse::<u64>().ok(),
        Some(ChannelValue::Json(Value::Number(number))) => number.as_u64(),
        Some(ChannelValue::Json(Value::String(text))) if text.trim().is_empty() => return Ok(0),
        Some(ChannelValue::Json(Value::String(text))) => text.trim().parse::<u64>().ok(),
        Some(ChannelValue::Json(_)) => None,
    };
    parsed.ok_or_else(|| {
        Rejection::new(
            RejectReason::InvalidField,
            "index is not a non-negative integer channel",
        )
    })
}

/// The capture time: `RealUTC` (+ `UTCMS`), else `UTC` (+ `UTCMS`), else
/// `LocaleTime` at UTC+05:00. A zero epoch means "not set" on these devices.
fn capture_time(data: Option<&Value>) -> Result<CaptureTime, Rejection> {
    for key in ["RealUTC", "UTC"] {
        let Some(value) = present(data.and_then(|data| field(data, key))) else {
            continue;
        };
        let Some(seconds) = json::number(Some(value)) else {
            return Err(Rejection::new(
                RejectReason::InvalidTime,
                format!("{key} is not an epoch number"),
            ));
        };
        if seconds == 0.0 {
            continue;
        }
        let Some(base) = epoch_to_utc(seconds) else {
            return Err(Rejection::new(
                RejectReason::InvalidTime,
                format!("{key} {seconds} is not a valid epoch time"),
            ));
        };
        let raw_text = json::text(Some(value)).unwrap_or_default();
        let raw_text = raw_text.trim();
        // UTCMS is the millisecond part of a whole-second epoch; an epoch that
        // already carries milliseconds (or a fraction) needs no addition.
        let whole_seconds = seconds < EPOCH_SECONDS_BELOW && seconds.fract() == 0.0;
        let milliseconds = match present(data.and_then(|data| field(data, "UTCMS"))) {
            Some(value) if whole_seconds => Some(utc_milliseconds(value)?),
            _ => None,
        };
        let Some((milliseconds, milliseconds_text)) = milliseconds else {
            return Ok(CaptureTime {
                detected_at: base,
                device_time: format!("{key}={raw_text}"),
            });
        };
        return Ok(CaptureTime {
            detected_at: base + TimeDelta::milliseconds(milliseconds),
            device_time: format!("{key}={raw_text} UTCMS={milliseconds_text}"),
        });
    }
    let Some(value) = present(data.and_then(|data| field(data, "LocaleTime"))) else {
        return Err(Rejection::new(
            RejectReason::MissingField,
            "Data has no RealUTC, UTC or LocaleTime",
        ));
    };
    let Some(text) = value.as_str().map(str::trim) else {
        return Err(Rejection::new(
            RejectReason::InvalidTime,
            "LocaleTime is not text",
        ));
    };
    let Some(detected_at) = parse_locale_time(text) else {
        return Err(Rejection::new(
            RejectReason::InvalidTime,
            format!("LocaleTime {:?} is not YYYY-MM-DD HH:MM:SS", clip(text)),
        ));
    };
    Ok(CaptureTime {
        detected_at,
        device_time: text.to_string(),
    })
}

/// `UTCMS`: an integer 0..=999, returned with its text.
fn utc_milliseconds<'a>(value: &'a Value<'a>) -> Result<(i64, Cow<'a, str>), Rejection> {
    let milliseconds = json::number(Some(value))
        .filter(|ms| (0.0..1000.0).contains(ms) && ms.fract() == 0.0)
        .ok_or_else(|| {
            Rejection::new(
                RejectReason::InvalidTime,
                "UTCMS is not a millisecond count 0..999",
            )
        })?;
    let text = json::text(Some(value)).map(trim_cow).unwrap_or_default();
    // Range-checked above: an exact small integer.
    #[allow(clippy::cast_possible_truncation)]
    Ok((milliseconds as i64, text))
}

/// `LocaleTime` read as Kazakhstan wall-clock time (UTC+05:00).
fn parse_locale_time(text: &str) -> Option<DateTime<Utc>> {
    let local = NaiveDateTime::parse_from_str(text, LOCALE_TIME_FORMAT).ok()?;
    let utc = local.checked_sub_signed(TimeDelta::seconds(LOCALE_TIME_OFFSET_SECONDS))?;
    Some(utc.and_utc())
}

/// The plate: `TrafficCar.PlateNumber`, else `Object.Text` of a plate object.
fn plate<'a>(
    traffic_car: Option<&'a Value<'a>>,
    object: Option<&'a Value<'a>>,
) -> Option<Cow<'a, str>> {
    if let Some(plate) = traffic_car.and_then(|car| json::text(field(car, "PlateNumber"))) {
        return Some(trim_cow(plate));
    }
    let object = object?;
    let is_plate = field(object, "ObjectType")
        .and_then(Value::as_str)
        .is_some_and(|kind| kind.trim().eq_ignore_ascii_case("Plate"));
    if !is_plate {
        return None;
    }
    json::text(field(object, "Text")).map(trim_cow)
}

/// `GroupID` as text (number or string); absent when null or empty.
fn group_id<'a>(data: Option<&'a Value<'a>>) -> Result<Option<Cow<'a, str>>, Rejection> {
    let Some(value) = present(data.and_then(|data| field(data, "GroupID"))) else {
        return Ok(None);
    };
    match json::text(Some(value)) {
        Some(text) => Ok(Some(trim_cow(text))),
        None => Err(Rejection::new(
            RejectReason::InvalidField,
            "GroupID is not a number or text",
        )),
    }
}

/// An optional numeric field of `parent`: absent, null or empty text is
/// `None`; anything else that is not a number is an invalid field.
fn optional_number(
    parent: Option<&Value>,
    key: &str,
    name: &str,
) -> Result<Option<f64>, Rejection> {
    let Some(value) = present(parent.and_then(|parent| field(parent, key))) else {
        return Ok(None);
    };
    match json::number(Some(value)) {
        Some(number) => Ok(Some(number)),
        None => Err(Rejection::new(
            RejectReason::InvalidField,
            format!("{name} is not a number"),
        )),
    }
}

// ---------------------------------------------------------------------------
// RPC JSON.
// ---------------------------------------------------------------------------

/// Decodes `{"method":..,"params":{"eventList":[..]}}`.
fn decode_rpc(context: &DecodeContext<'_>, body: &str) -> Result<Decoded, Rejection> {
    let message = json::parse_value(body, context.limits)?;
    let Some(message) = message.as_object() else {
        return Err(Rejection::new(
            RejectReason::Malformed,
            "RPC payload is not a JSON object",
        ));
    };
    let method = match present_in(message, "method") {
        None => {
            return Err(Rejection::new(
                RejectReason::MissingField,
                "method is missing",
            ))
        }
        Some(Value::String(method)) => method.trim(),
        Some(_) => {
            return Err(Rejection::new(
                RejectReason::InvalidField,
                "method is not text",
            ))
        }
    };
    if contains_ignore_case(method, "heartbeat") || contains_ignore_case(method, "keepalive") {
        return Ok(Decoded::Ignored(IgnoreReason::Heartbeat));
    }
    if !method.eq_ignore_ascii_case(EVENT_STREAM_METHOD) {
        return Ok(Decoded::Ignored(IgnoreReason::NotOffence));
    }
    let params = match present_in(message, "params") {
        None => {
            return Err(Rejection::new(
                RejectReason::MissingField,
                "params.eventList is missing",
            ))
        }
        Some(Value::Object(params)) => params,
        Some(_) => {
            return Err(Rejection::new(
                RejectReason::InvalidField,
                "params is not an object",
            ))
        }
    };
    let events = match present_in(params, "eventList") {
        None => {
            return Err(Rejection::new(
                RejectReason::MissingField,
                "params.eventList is missing",
            ))
        }
        Some(Value::Array(events)) => events,
        Some(_) => {
            return Err(Rejection::new(
                RejectReason::InvalidField,
                "params.eventList is not an array",
            ))
        }
    };
    check_event_count(context, events.len())?;
    let mut results = Vec::with_capacity(events.len());
    for (position, event) in events.iter().enumerate() {
        let decoded = rpc_event_fields(event)
            .and_then(|fields| decode_event(context, &fields))
            .map_err(|rejection| {
                Rejection::new(
                    rejection.reason,
                    format!("eventList[{position}]: {}", rejection.detail),
                )
            })?;
        results.push(decoded);
    }
    Ok(Decoded::combine(results))
}

/// Reads `Code`, `Action`, `Index` and `Data` of one RPC event.
fn rpc_event_fields<'a>(event: &'a Value<'a>) -> Result<EventFields<'a>, Rejection> {
    let Some(event) = event.as_object() else {
        return Err(Rejection::new(
            RejectReason::InvalidField,
            "event is not an object",
        ));
    };
    let data = match present_in(event, "Data") {
        None => None,
        Some(data) if data.is_object() => Some(data),
        Some(_) => {
            return Err(Rejection::new(
                RejectReason::InvalidField,
                "Data is not an object",
            ))
        }
    };
    Ok(EventFields {
        code: text_field(event, "Code")?,
        action: text_field(event, "Action")?,
        index: present_in(event, "Index").map(ChannelValue::Json),
        data,
    })
}

/// A text field: `None` when absent, null or blank; an error for other types.
fn text_field<'a>(object: &'a Map<'a>, key: &str) -> Result<Option<&'a str>, Rejection> {
    match present_in(object, key) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.trim())),
        Some(_) => Err(Rejection::new(
            RejectReason::InvalidField,
            format!("{key} is not text"),
        )),
    }
}

// ---------------------------------------------------------------------------
// Event-stream text.
// ---------------------------------------------------------------------------

/// One piece of an event-stream message.
enum StreamPiece<'a> {
    /// A `Code=...` part, with its `data=` JSON if any.
    Part(&'a str),
    /// A bare `Heartbeat` line.
    Heartbeat,
}

/// Decodes an event-stream message of one or more text parts.
fn decode_stream(context: &DecodeContext<'_>, body: &str) -> Result<Decoded, Rejection> {
    let pieces = split_stream(body)?;
    if pieces.is_empty() {
        return Err(Rejection::new(
            RejectReason::Malformed,
            "event stream holds no Code= part",
        ));
    }
    check_event_count(context, pieces.len())?;
    let numbered = pieces.len() > 1;
    let mut results = Vec::with_capacity(pieces.len());
    for (position, piece) in pieces.into_iter().enumerate() {
        let decoded = match piece {
            StreamPiece::Heartbeat => Ok(Decoded::Ignored(IgnoreReason::Heartbeat)),
            StreamPiece::Part(part) => decode_part(context, part),
        };
        let decoded = decoded.map_err(|rejection| {
            if !numbered {
                return rejection;
            }
            Rejection::new(
                rejection.reason,
                format!("part {}: {}", position + 1, rejection.detail),
            )
        })?;
        results.push(decoded);
    }
    Ok(Decoded::combine(results))
}

/// Splits a stream message into parts. A part starts at a line beginning
/// with `Code=` (or, between parts, at any `key=value` line); a part whose
/// first line holds `;data=` continues over the following lines (its JSON)
/// until a multipart wrapper line or the next `Code=` line. Wrapper and blank
/// lines between parts are skipped; a bare `Heartbeat` line is a heartbeat.
fn split_stream(body: &str) -> Result<Vec<StreamPiece<'_>>, Rejection> {
    let mut pieces = Vec::new();
    // The byte range of a multi-line part still being read.
    let mut open_part: Option<(usize, usize)> = None;
    let mut line_start = 0usize;
    for (line_number, line) in body.split_inclusive('\n').enumerate() {
        let offset = line_start;
        line_start += line.len();
        let trimmed = line.trim();
        let content_start = offset + (line.len() - line.trim_start().len());
        let content_end = offset + line.trim_end().len();
        let starts_part = starts_with_ignore_case(trimmed, "code=");
        if !starts_part && is_wrapper_line(trimmed) {
            if let Some((start, end)) = open_part.take() {
                pieces.push(StreamPiece::Part(slice(body, start, end)?));
            }
            continue;
        }
        if !starts_part && trimmed.is_empty() {
            continue;
        }
        if !starts_part {
            if let Some((_, end)) = open_part.as_mut() {
                *end = content_end;
                continue;
            }
        }
        if !starts_part && trimmed.eq_ignore_ascii_case("heartbeat") {
            pieces.push(StreamPiece::Heartbeat);
            continue;
        }
        // Between parts, a key=value line that does not begin with Code= is
        // still a part (one missing its Code); anything else is not Dahua.
        if !starts_part && !trimmed.contains('=') {
            return Err(Rejection::new(
                RejectReason::Malformed,
                format!(
                    "line {} is neither a Code= part nor a multipart line",
                    line_number + 1
                ),
            ));
        }
        if let Some((start, end)) = open_part.take() {
            pieces.push(StreamPiece::Part(slice(body, start, end)?));
        }
        if find_ignore_case(trimmed, DATA_MARKER).is_some() {
            open_part = Some((content_start, content_end));
            continue;
        }
        pieces.push(StreamPiece::Part(trimmed));
    }
    if let Some((start, end)) = open_part {
        pieces.push(StreamPiece::Part(slice(body, start, end)?));
    }
    Ok(pieces)
}

/// Decodes one `Code=..;action=..;index=..[;data={json}]` part.
fn decode_part(context: &DecodeContext<'_>, part: &str) -> Result<Decoded, Rejection> {
    // The JSON may hold ';' and '=': split it off before reading the pairs.
    let (header, data_text) = match find_ignore_case(part, DATA_MARKER) {
        Some(position) => (
            slice(part, 0, position)?,
            Some(slice(part, position + DATA_MARKER.len(), part.len())?.trim()),
        ),
        None => (part, None),
    };
    let mut code = None;
    let mut action = None;
    let mut index = None;
    for pair in header.split(';') {
        let pair = pair.trim();
        if pair.is_empty() {
            continue;
        }
        let Some((key, value)) = pair.split_once('=') else {
            return Err(Rejection::new(
                RejectReason::Malformed,
                format!("text part field {:?} is not key=value", clip(pair)),
            ));
        };
        let key = key.trim();
        let value = value.trim();
        let slot = if key.eq_ignore_ascii_case("code") {
            &mut code
        } else if key.eq_ignore_ascii_case("action") {
            &mut action
        } else if key.eq_ignore_ascii_case("index") {
            &mut index
        } else {
            continue;
        };
        slot.get_or_insert(value);
    }
    let data = match data_text {
        None => None,
        Some(text) => Some(
            json::parse_value(text, context.limits).map_err(|rejection| {
                Rejection::new(rejection.reason, format!("data: {}", rejection.detail))
            })?,
        ),
    };
    if data.as_ref().is_some_and(|data| !data.is_object()) {
        return Err(Rejection::new(
            RejectReason::InvalidField,
            "data is not a JSON object",
        ));
    }
    let fields = EventFields {
        code: code.filter(|code| !code.is_empty()),
        action: action.filter(|action| !action.is_empty()),
        index: index.map(ChannelValue::Text),
        data: data.as_ref(),
    };
    decode_event(context, &fields)
}

/// Whether a line belongs to a multipart wrapper.
fn is_wrapper_line(line: &str) -> bool {
    line.starts_with("--")
        || starts_with_ignore_case(line, "content-type:")
        || starts_with_ignore_case(line, "content-length:")
}

// ---------------------------------------------------------------------------
// Small helpers.
// ---------------------------------------------------------------------------

/// Rejects a message with more events than the limit.
fn check_event_count(context: &DecodeContext<'_>, count: usize) -> Result<(), Rejection> {
    let limit = context.limits.max_events_per_message;
    if count > limit {
        return Err(Rejection::new(
            RejectReason::TooManyEvents,
            format!("{count} events in one message exceed the limit of {limit}"),
        ));
    }
    Ok(())
}

/// A field of a JSON object: exact key first, then any ASCII case (firmware
/// differs in the case of `Code`/`code`, `Action`/`action`, ...).
fn field<'a>(value: &'a Value<'a>, key: &str) -> Option<&'a Value<'a>> {
    value.as_object().and_then(|object| field_in(object, key))
}

fn field_in<'a>(object: &'a Map<'a>, key: &str) -> Option<&'a Value<'a>> {
    if let Some(value) = object.get(key) {
        return Some(value);
    }
    object
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(key))
        .map(|(_, value)| value)
}

/// A field of an object unless it is null or blank text.
fn present_in<'a>(object: &'a Map<'a>, key: &str) -> Option<&'a Value<'a>> {
    present(field_in(object, key))
}

/// `value` unless it is null or blank text.
fn present<'a>(value: Option<&'a Value<'a>>) -> Option<&'a Value<'a>> {
    match value? {
        Value::Null => None,
        Value::String(text) if text.trim().is_empty() => None,
        value => Some(value),
    }
}

/// Trims a borrowed or owned text without copying borrowed text.
fn trim_cow(text: Cow<'_, str>) -> Cow<'_, str> {
    match text {
        Cow::Borrowed(text) => Cow::Borrowed(text.trim()),
        Cow::Owned(text) if text.trim().len() == text.len() => Cow::Owned(text),
        Cow::Owned(text) => Cow::Owned(text.trim().to_string()),
    }
}

/// `text[start..end]`, as a rejection instead of a panic if the bounds are
/// not character boundaries (they always are: they come from ASCII finds).
fn slice(text: &str, start: usize, end: usize) -> Result<&str, Rejection> {
    text.get(start..end).ok_or_else(|| {
        Rejection::new(
            RejectReason::Malformed,
            "text part boundary is not a character boundary",
        )
    })
}

/// Byte position of the first ASCII-case-insensitive occurrence of `needle`.
fn find_ignore_case(haystack: &str, needle: &str) -> Option<usize> {
    let needle = needle.as_bytes();
    haystack
        .as_bytes()
        .windows(needle.len())
        .position(|window| window.eq_ignore_ascii_case(needle))
}

fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    find_ignore_case(haystack, needle).is_some()
}

fn starts_with_ignore_case(text: &str, prefix: &str) -> bool {
    text.as_bytes()
        .get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::testing;
    use crate::format::Format;
    use crate::limits::Limits;

    fn decode_with(payload: &str, limits: &Limits) -> Result<Decoded, Rejection> {
        testing::decode_with(decode, Format::Dahua, payload, None, limits)
    }

    fn decode_text(payload: &str) -> Result<Decoded, Rejection> {
        decode_with(payload, &Limits::default())
    }

    fn detections(payload: &str) -> Vec<Detection> {
        testing::detections(decode_text(payload))
    }

    fn one_detection(payload: &str) -> Detection {
        testing::one_detection(decode_text(payload))
    }

    fn ignored(payload: &str) -> IgnoreReason {
        testing::ignored(decode_text(payload))
    }

    fn rejected(payload: &str) -> RejectReason {
        testing::rejected(decode_text(payload))
    }

    const OVERSPEED: &str = r#"Code=TrafficOverSpeed;action=Pulse;index=0;data={
   "EventID" : 1, "GroupID" : 40211, "CountInGroup" : 2, "IndexInGroup" : 1,
   "Name" : "a;b=c", "RealUTC" : 1795749305, "UTC" : 1795767305, "UTCMS" : 250,
   "LocaleTime" : "2026-11-27 08:15:05",
   "TrafficCar" : { "MachineName" : "DH-ITC-7Q0A21", "PlateNumber" : "404ZXC16",
      "Speed" : 97, "UpperSpeedLimit" : 70 },
   "Object" : { "ObjectType" : "Plate", "Text" : "404ZXC16", "Confidence" : 201 }
}"#;

    fn rpc(events: &str) -> String {
        format!(r#"{{"method":"client.notifyEventStream","params":{{"eventList":[{events}]}}}}"#)
    }

    #[test]
    fn the_sample_decodes_with_every_field() {
        let detection = one_detection(OVERSPEED);
        assert_eq!(detection.offence_name, "TrafficOverSpeed");
        assert_eq!(
            detection.identity_key,
            "dahua|DH-ITC-7Q0A21|0|40211|TrafficOverSpeed"
        );
        assert_eq!(
            detection.device_identity.as_deref(),
            Some("dahua:DH-ITC-7Q0A21/0")
        );
        assert_eq!(
            detection.detected_at.to_rfc3339(),
            "2026-11-27T03:15:05.250+00:00"
        );
        assert_eq!(
            detection.device_time.as_deref(),
            Some("RealUTC=1795749305 UTCMS=250")
        );
        assert_eq!(detection.plate.as_deref(), Some("404ZXC16"));
        assert_eq!(detection.speed_kmh, Some(97.0));
        assert_eq!(detection.speed_limit_kmh, Some(70.0));
        assert_eq!(
            detection.confidence,
            Some(Confidence {
                raw: 201.0,
                scale: 255.0
            })
        );
        assert_eq!(detection.source_event_id.as_deref(), Some("40211"));
        assert_eq!(detection.explicit_event_id, None);
    }

    #[test]
    fn every_picture_of_a_group_has_the_same_identity() {
        let first = one_detection(OVERSPEED);
        let second = one_detection(
            &OVERSPEED
                .replace("\"IndexInGroup\" : 1", "\"IndexInGroup\" : 2")
                .replace("\"EventID\" : 1", "\"EventID\" : 2")
                .replace("\"UTCMS\" : 250", "\"UTCMS\" : 730")
                .replace("\"Confidence\" : 201", "\"Confidence\" : 150"),
        );
        assert_eq!(first.identity_key, second.identity_key);
        let as_start = one_detection(&OVERSPEED.replace("action=Pulse", "action=Start"));
        assert_eq!(first.identity_key, as_start.identity_key);
        let other_group =
            one_detection(&OVERSPEED.replace("\"GroupID\" : 40211", "\"GroupID\" : 40212"));
        assert_ne!(first.identity_key, other_group.identity_key);
        let other_channel = one_detection(&OVERSPEED.replace("index=0", "index=1"));
        assert_ne!(first.identity_key, other_channel.identity_key);
    }

    #[test]
    fn the_event_counter_is_not_part_of_the_identity() {
        let first = one_detection(OVERSPEED);
        let restarted = one_detection(&OVERSPEED.replace("\"EventID\" : 1", "\"EventID\" : 99"));
        assert_eq!(first.identity_key, restarted.identity_key);
    }

    #[test]
    fn without_a_group_the_time_and_plate_name_the_offence() {
        let payload = OVERSPEED.replace("\"GroupID\" : 40211,", "");
        let detection = one_detection(&payload);
        assert_eq!(
            detection.identity_key,
            "dahua|DH-ITC-7Q0A21|0|t1795749305250:404ZXC16|TrafficOverSpeed"
        );
        assert_eq!(detection.source_event_id, None);
        let other_plate = one_detection(&payload.replace("404ZXC16", "505ZXC16"));
        assert_ne!(detection.identity_key, other_plate.identity_key);
    }

    #[test]
    fn stop_never_counts_start_and_pulse_do() {
        assert_eq!(
            ignored(&OVERSPEED.replace("action=Pulse", "action=Stop")),
            IgnoreReason::LifecycleRepeat
        );
        assert_eq!(
            ignored(&rpc(
                r#"{"Code":"TrafficParking","Action":"Stop","Index":0,"Data":{"GroupID":1}}"#
            )),
            IgnoreReason::LifecycleRepeat
        );
        one_detection(&OVERSPEED.replace("action=Pulse", "action=Start"));
        one_detection(&OVERSPEED.replace("action=Pulse", "action=pulse"));
    }

    #[test]
    fn heartbeats_in_every_spelling_are_ignored() {
        for payload in [
            "Heartbeat",
            "  heartbeat\r\n",
            "Code=Heartbeat;action=Pulse;index=0",
            "Code=Heartbeat;action=Pulse",
            "--myboundary\r\nContent-Type: text/plain\r\nContent-Length: 9\r\n\r\nHeartbeat\r\n",
            r#"{"method":"global.keepAlive","params":{"timeout":300}}"#,
            r#"{"method":"client.notifyHeartbeat","params":{}}"#,
        ] {
            assert_eq!(ignored(payload), IgnoreReason::Heartbeat, "{payload:?}");
        }
        assert_eq!(
            ignored(r#"{"method":"client.notifyDeviceStatus","params":{}}"#),
            IgnoreReason::NotOffence
        );
    }

    #[test]
    fn codes_are_offences_states_or_not_offences() {
        assert_eq!(
            ignored("Code=TrafficJam;action=Start;index=0"),
            IgnoreReason::State
        );
        assert_eq!(
            ignored("Code=TrafficFlowState;action=Pulse;index=0"),
            IgnoreReason::State
        );
        assert_eq!(
            ignored("Code=VideoMotion;action=Start;index=0"),
            IgnoreReason::NotOffence
        );
        assert_eq!(
            ignored("Code=CrossLineDetection;action=Pulse;index=0;data={}"),
            IgnoreReason::NotOffence
        );
        let unknown = one_detection(
            r#"Code=TrafficUnderSpeed;action=Pulse;index=0;data={"GroupID":1,"RealUTC":1795749305}"#,
        );
        assert_eq!(unknown.offence_name, "TrafficUnderSpeed");
    }

    #[test]
    fn a_junction_capture_counts_only_with_a_violation() {
        let junction = |car: &str| {
            format!(
                r#"Code=TrafficJunction;action=Pulse;index=0;data={{"GroupID":5,"RealUTC":1795749305,"TrafficCar":{car}}}"#
            )
        };
        assert_eq!(
            ignored(&junction(r#"{"ViolationName":"ANPR","PlateNumber":"1"}"#)),
            IgnoreReason::PlateRead
        );
        assert_eq!(
            ignored(&junction(r#"{"ViolationName":"","ViolationCode":"0"}"#)),
            IgnoreReason::PlateRead
        );
        assert_eq!(ignored(&junction("{}")), IgnoreReason::PlateRead);
        assert_eq!(
            ignored("Code=TrafficJunction;action=Pulse;index=0"),
            IgnoreReason::PlateRead
        );
        assert_eq!(
            one_detection(&junction(r#"{"ViolationName":"RunRedLight"}"#)).offence_name,
            "RunRedLight"
        );
        assert_eq!(
            one_detection(&junction(
                r#"{"ViolationName":"ANPR","ViolationCode":1303}"#
            ))
            .offence_name,
            "1303"
        );
        assert_eq!(
            one_detection(&junction(
                r#"{"ViolationName":"Nonsense","ViolationCode":"1625"}"#
            ))
            .offence_name,
            "1625"
        );
        assert_eq!(
            one_detection(&junction(r#"{"ViolationName":"OverWeight"}"#)).offence_name,
            "OverWeight"
        );
    }

    #[test]
    fn times_prefer_real_utc_then_utc_then_locale_time() {
        let with_data = |data: &str| {
            one_detection(&format!(
                "Code=TrafficOverSpeed;action=Pulse;index=0;data={{\"GroupID\":1,{data}}}"
            ))
        };
        let real = with_data(r#""RealUTC":1795749305,"UTC":1795767305,"UTCMS":7"#);
        assert_eq!(
            real.detected_at.to_rfc3339(),
            "2026-11-27T03:15:05.007+00:00"
        );
        let zero_real = with_data(r#""RealUTC":0,"UTC":1795767305"#);
        assert_eq!(zero_real.device_time.as_deref(), Some("UTC=1795767305"));
        assert_eq!(
            zero_real.detected_at.to_rfc3339(),
            "2026-11-27T08:15:05+00:00"
        );
        let locale = with_data(r#""LocaleTime":"2026-11-27 08:15:05""#);
        assert_eq!(locale.detected_at.to_rfc3339(), "2026-11-27T03:15:05+00:00");
        assert_eq!(locale.device_time.as_deref(), Some("2026-11-27 08:15:05"));
        let millis = with_data(r#""RealUTC":1795749305250,"UTCMS":250"#);
        assert_eq!(
            millis.detected_at.to_rfc3339(),
            "2026-11-27T03:15:05.250+00:00"
        );
        let text_epoch = with_data(r#""RealUTC":"1795749305""#);
        assert_eq!(
            text_epoch.device_time.as_deref(),
            Some("RealUTC=1795749305")
        );
    }

    #[test]
    fn missing_or_bad_times_are_rejected() {
        let with_data = |data: &str| {
            rejected(&format!(
                "Code=TrafficOverSpeed;action=Pulse;index=0;data={{\"GroupID\":1{data}}}"
            ))
        };
        assert_eq!(with_data(""), RejectReason::MissingField);
        assert_eq!(
            rejected("Code=TrafficOverSpeed;action=Pulse;index=0"),
            RejectReason::MissingField
        );
        assert_eq!(with_data(r#","RealUTC":"soon""#), RejectReason::InvalidTime);
        assert_eq!(with_data(r#","RealUTC":-5"#), RejectReason::InvalidTime);
        assert_eq!(
            with_data(r#","RealUTC":1795749305,"UTCMS":1000"#),
            RejectReason::InvalidTime
        );
        assert_eq!(
            with_data(r#","LocaleTime":"2026-11-27T08:15:05+05:00""#),
            RejectReason::InvalidTime
        );
        assert_eq!(with_data(r#","LocaleTime":17"#), RejectReason::InvalidTime);
    }

    #[test]
    fn missing_and_invalid_fields_are_rejected() {
        assert_eq!(
            rejected("action=Pulse;index=0;data={}"),
            RejectReason::MissingField
        );
        assert_eq!(
            rejected("Code=;action=Pulse;index=0"),
            RejectReason::MissingField
        );
        assert_eq!(
            rejected("Code=TrafficOverSpeed;index=0"),
            RejectReason::MissingField
        );
        assert_eq!(
            rejected("Code=TrafficOverSpeed;action=Begin;index=0"),
            RejectReason::InvalidField
        );
        assert_eq!(
            rejected(&OVERSPEED.replace("index=0", "index=-1")),
            RejectReason::InvalidField
        );
        assert_eq!(
            rejected(&OVERSPEED.replace("\"Speed\" : 97", "\"Speed\" : \"fast\"")),
            RejectReason::InvalidField
        );
        assert_eq!(
            rejected(&rpc(r#"{"Action":"Pulse","Index":0,"Data":{}}"#)),
            RejectReason::MissingField
        );
        assert_eq!(
            rejected(&rpc(r#"{"Code":7,"Action":"Pulse"}"#)),
            RejectReason::InvalidField
        );
        assert_eq!(
            rejected(r#"{"params":{"eventList":[]}}"#),
            RejectReason::MissingField
        );
        assert_eq!(
            rejected(r#"{"method":"client.notifyEventStream","params":{"eventList":{}}}"#),
            RejectReason::InvalidField
        );
    }

    #[test]
    fn broken_syntax_is_malformed() {
        assert_eq!(
            rejected("Code=TrafficOverSpeed;action=Pulse;index=0;data={\"GroupID\":"),
            RejectReason::Malformed
        );
        assert_eq!(
            rejected("Code=TrafficOverSpeed;action=Pulse;index=0;data="),
            RejectReason::Malformed
        );
        assert_eq!(rejected("hello world"), RejectReason::Malformed);
        assert_eq!(rejected("   "), RejectReason::Malformed);
        assert_eq!(rejected("{\"method\":"), RejectReason::Malformed);
        assert_eq!(
            rejected("Code=TrafficOverSpeed;action=Pulse;index=0;data=[1]"),
            RejectReason::InvalidField
        );
    }

    #[test]
    fn rpc_events_and_stream_parts_each_count() {
        let two = rpc(concat!(
            r#"{"Code":"TrafficOverSpeed","Action":"Pulse","Index":"1","Data":{"GroupID":1,"RealUTC":1795749305}},"#,
            r#"{"code":"TrafficRetrograde","action":"Start","index":1,"data":{"GroupID":2,"RealUTC":1795749305}},"#,
            r#"{"Code":"TrafficRetrograde","Action":"Stop","Index":1,"Data":{"GroupID":2}}"#
        ));
        let found = detections(&two);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].device_identity.as_deref(), Some("dahua:gw-unit/1"));
        assert_eq!(found[1].offence_name, "TrafficRetrograde");

        let stream = format!(
            "--myboundary\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\n{OVERSPEED}\r\n\r\n--myboundary\r\nContent-Type: text/plain\r\n\r\nCode=VideoMotion;action=Start;index=0\r\n--myboundary\r\nContent-Type: text/plain\r\n\r\n{}\r\n--myboundary--\r\n",
            OVERSPEED.replace("40211", "40212")
        );
        let found = detections(&stream);
        assert_eq!(found.len(), 2);
        assert_ne!(found[0].identity_key, found[1].identity_key);
    }

    #[test]
    fn too_many_events_are_refused() {
        let limits = Limits {
            max_events_per_message: 1,
            ..Limits::default()
        };
        let two_parts =
            "Code=VideoMotion;action=Start;index=0\nCode=VideoMotion;action=Stop;index=0";
        assert_eq!(
            decode_with(two_parts, &limits).map_err(|r| r.reason),
            Err(RejectReason::TooManyEvents)
        );
        let two_events = rpc(
            r#"{"Code":"VideoMotion","Action":"Start"},{"Code":"VideoMotion","Action":"Stop"}"#,
        );
        assert_eq!(
            decode_with(&two_events, &limits).map_err(|r| r.reason),
            Err(RejectReason::TooManyEvents)
        );
        assert!(decode_with("Code=VideoMotion;action=Start;index=0", &limits).is_ok());
    }

    #[test]
    fn the_plate_falls_back_to_a_plate_object() {
        let payload = OVERSPEED.replace("\"PlateNumber\" : \"404ZXC16\",", "");
        assert_eq!(one_detection(&payload).plate.as_deref(), Some("404ZXC16"));
        let not_plate =
            payload.replace("\"ObjectType\" : \"Plate\"", "\"ObjectType\" : \"Vehicle\"");
        assert_eq!(one_detection(&not_plate).plate, None);
    }
}
