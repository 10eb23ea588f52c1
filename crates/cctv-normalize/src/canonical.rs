//! Decoder for the canonical JSON format (contract section 3).

use std::borrow::Cow;

use serde::Deserialize;
use uuid::Uuid;

use crate::detection::{identity_key, Confidence, Detection};
use crate::json::json_rejection;
use crate::outcome::{clip, missing_field, RejectReason, Rejection};
use crate::raw::RawMessage;
use crate::time::{epoch_to_utc, parse_rfc3339};

/// The canonical payload as sent by gateways. Unknown fields are ignored, as
/// the contract says; strings borrow from the payload where JSON allows.
#[derive(Deserialize)]
struct CanonicalPayload<'a> {
    #[serde(borrow, default)]
    camera_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    offence_type: Option<Cow<'a, str>>,
    #[serde(default)]
    detected_at: Option<TimeValue>,
    #[serde(borrow, default)]
    event_id: Option<Cow<'a, str>>,
    #[serde(default)]
    source_event_id: Option<IdValue>,
    #[serde(borrow, default)]
    region: Option<Cow<'a, str>>,
    #[serde(default)]
    confidence: Option<f64>,
    #[serde(borrow, default)]
    plate: Option<Cow<'a, str>>,
    #[serde(default)]
    speed_kmh: Option<f64>,
    #[serde(default)]
    speed_limit_kmh: Option<f64>,
    #[serde(default)]
    lat: Option<f64>,
    #[serde(default)]
    lon: Option<f64>,
    #[serde(borrow, default)]
    evidence_url: Option<Cow<'a, str>>,
}

/// `detected_at`: RFC 3339 text or an epoch number.
#[derive(Deserialize)]
#[serde(untagged)]
enum TimeValue {
    Text(String),
    Number(f64),
}

/// `source_event_id`: gateways send text or numbers.
#[derive(Deserialize)]
#[serde(untagged)]
enum IdValue {
    Text(String),
    Number(serde_json::Number),
}

impl IdValue {
    fn into_string(self) -> String {
        match self {
            IdValue::Text(text) => text,
            IdValue::Number(number) => number.to_string(),
        }
    }
}

/// Decodes one canonical message into exactly one detection.
pub(crate) fn decode(raw: &RawMessage<'_>, text: &str) -> Result<Detection, Rejection> {
    let first = raw.payload.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(Rejection::new(
            RejectReason::Malformed,
            "canonical payload is not a JSON object",
        ));
    }
    let payload: CanonicalPayload<'_> = serde_json::from_str(text).map_err(json_rejection)?;

    let camera_id = non_empty(payload.camera_id).ok_or_else(|| missing_field("camera_id"))?;
    let offence_name =
        non_empty(payload.offence_type).ok_or_else(|| missing_field("offence_type"))?;
    let time_value = payload
        .detected_at
        .ok_or_else(|| missing_field("detected_at"))?;
    let detected_at = match &time_value {
        TimeValue::Text(text) => parse_rfc3339(text).ok_or_else(|| {
            Rejection::new(
                RejectReason::InvalidTime,
                format!(
                    "detected_at {:?} is not RFC 3339 with an offset",
                    clip(text)
                ),
            )
        })?,
        TimeValue::Number(number) => epoch_to_utc(*number).ok_or_else(|| {
            Rejection::new(
                RejectReason::InvalidTime,
                format!("detected_at {number} is not an epoch time"),
            )
        })?,
    };
    let device_time = match time_value {
        TimeValue::Text(text) => text,
        TimeValue::Number(number) => number.to_string(),
    };
    let explicit_event_id = match non_empty(payload.event_id) {
        None => None,
        Some(text) => Some(Uuid::parse_str(&text).map_err(|_| {
            Rejection::new(
                RejectReason::InvalidField,
                format!("event_id {:?} is not a UUID", clip(&text)),
            )
        })?),
    };
    let source_event_id = payload
        .source_event_id
        .map(IdValue::into_string)
        .filter(|id| !id.is_empty());
    if let Some(confidence) = payload.confidence {
        if !(0.0..=1.0).contains(&confidence) {
            return Err(Rejection::new(
                RejectReason::ConfidenceOutOfRange,
                format!("confidence {confidence} is outside 0..1"),
            ));
        }
    }

    // The identity of a canonical message, when it has no event id of its own:
    // the gateway's event id, else the gateway's message id, else what the
    // offence is (camera, type, instant, plate). A republished message yields
    // the same key in each case.
    let identity_key = if let Some(source_id) = &source_event_id {
        identity_key!("canonical|src|{camera_id}|{source_id}")
    } else if let Some(msg_id) = raw.msg_id {
        identity_key!("canonical|msg|{msg_id}")
    } else {
        identity_key!(
            "canonical|fp|{camera_id}|{}|{}|{}",
            cctv_event::alias_key(&offence_name),
            detected_at.timestamp_millis(),
            payload.plate.as_deref().unwrap_or("")
        )
    };

    Ok(Detection {
        offence_name: offence_name.into_owned(),
        identity_key,
        explicit_event_id,
        camera_id: Some(camera_id.into_owned()),
        device_identity: None,
        payload_region: non_empty(payload.region).map(Cow::into_owned),
        detected_at,
        device_time: Some(device_time),
        confidence: payload.confidence.map(|raw| Confidence { raw, scale: 1.0 }),
        plate: non_empty(payload.plate).map(Cow::into_owned),
        speed_kmh: payload.speed_kmh,
        speed_limit_kmh: payload.speed_limit_kmh,
        lat: payload.lat,
        lon: payload.lon,
        evidence_url: non_empty(payload.evidence_url).map(Cow::into_owned),
        source_event_id,
    })
}

fn non_empty(value: Option<Cow<'_, str>>) -> Option<Cow<'_, str>> {
    value.filter(|text| !text.trim().is_empty())
}
