//! The normaliser: runs the decoder for the message's format, then resolves,
//! checks and enriches each detection into a canonical [`OffenceEvent`].

use std::sync::Arc;

use cctv_event::{
    event_id, CameraRegistry, NameMatch, OffenceEvent, RegionSource, Regions, Taxonomy,
    EVENT_SCHEMA_VERSION, UNKNOWN_REGION,
};
use chrono::{DateTime, Utc};

use crate::decode::{DecodeContext, Decoded};
use crate::detection::Detection;
use crate::format::Format;
use crate::limits::{json_too_deep, Limits};
use crate::outcome::{clip, Outcome, RejectReason, Rejection};
use crate::plate::PlateKey;
use crate::raw::RawMessage;
use crate::time::parse_rfc3339;
use crate::{canonical, dahua, deepstream, frigate, hikvision, onvif, IgnoreReason};

/// Turns raw messages into outcomes. Cheap to share: the reference data is
/// behind `Arc`s and nothing is mutated.
#[derive(Debug, Clone)]
pub struct Normalizer {
    taxonomy: Arc<Taxonomy>,
    regions: Arc<Regions>,
    registry: Arc<CameraRegistry>,
    limits: Limits,
    /// When set, plates are stored as their keyed hash instead of in clear.
    plate_key: Option<PlateKey>,
}

impl Normalizer {
    /// Builds a normaliser over loaded reference data.
    pub fn new(
        taxonomy: Arc<Taxonomy>,
        regions: Arc<Regions>,
        registry: Arc<CameraRegistry>,
        limits: Limits,
    ) -> Self {
        Self {
            taxonomy,
            regions,
            registry,
            limits,
            plate_key: None,
        }
    }

    /// Stores plates as their keyed hash (`hmac:<hex>`, see [`PlateKey`])
    /// instead of in clear. Event ids do not change: identity keys keep
    /// using the plate as received.
    #[must_use]
    pub fn with_plate_key(mut self, key: PlateKey) -> Self {
        self.plate_key = Some(key);
        self
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Normalises one raw message. `now` is the ingest time.
    pub fn normalize(&self, raw: &RawMessage<'_>, now: DateTime<Utc>) -> Outcome {
        match self.try_normalize(raw, now) {
            Ok(outcome) => outcome,
            Err(rejection) => Outcome::Rejected(rejection),
        }
    }

    fn try_normalize(
        &self,
        raw: &RawMessage<'_>,
        now: DateTime<Utc>,
    ) -> Result<Outcome, Rejection> {
        if raw.payload.len() > self.limits.max_payload_bytes {
            return Err(Rejection::new(
                RejectReason::PayloadTooLarge,
                format!(
                    "payload of {} bytes exceeds the limit of {} bytes",
                    raw.payload.len(),
                    self.limits.max_payload_bytes
                ),
            ));
        }
        let Some(format) = Format::parse(raw.format) else {
            return Err(Rejection::new(
                RejectReason::UnsupportedFormat,
                format!("format {:?} is not supported", raw.format),
            ));
        };
        // Every supported format is text; refusing bad UTF-8 up front gives it
        // its own reason instead of a parser's syntax error.
        let text = match std::str::from_utf8(raw.payload) {
            Ok(text) => text,
            Err(error) => {
                return Err(Rejection::new(
                    RejectReason::InvalidUtf8,
                    format!("payload is not UTF-8: {error}"),
                ))
            }
        };
        let context = DecodeContext {
            raw,
            text,
            format,
            taxonomy: &self.taxonomy,
            limits: &self.limits,
        };
        let decoded = match format {
            Format::Canonical => {
                if json_too_deep(raw.payload, self.limits.max_json_depth) {
                    return Err(Rejection::new(
                        RejectReason::TooDeep,
                        format!(
                            "JSON nests deeper than {} levels",
                            self.limits.max_json_depth
                        ),
                    ));
                }
                Decoded::Detections(vec![canonical::decode(raw, text)?])
            }
            Format::Hikvision => hikvision::decode(&context)?,
            Format::Dahua => dahua::decode(&context)?,
            Format::Onvif => onvif::decode(&context)?,
            Format::Deepstream => deepstream::decode(&context)?,
            Format::Frigate => frigate::decode(&context)?,
        };
        let detections = match decoded {
            Decoded::Detections(detections) => detections,
            Decoded::Ignored(reason) => return Ok(Outcome::Ignored(reason)),
        };
        if detections.is_empty() {
            return Ok(Outcome::Ignored(IgnoreReason::NotOffence));
        }
        if detections.len() > self.limits.max_events_per_message {
            return Err(Rejection::new(
                RejectReason::TooManyEvents,
                format!(
                    "{} offences in one message exceed the limit of {}",
                    detections.len(),
                    self.limits.max_events_per_message
                ),
            ));
        }
        let received_at = raw.received_at.and_then(parse_rfc3339).or(raw.stored_at);
        let mut events: Vec<OffenceEvent> = Vec::with_capacity(detections.len());
        let mut states = 0usize;
        for detection in detections {
            match self.enrich(format, raw, detection, received_at, now)? {
                // Several detections of one message can name one offence (the
                // pictures of a Dahua group): keep the first of each event id.
                Some(event) if events.iter().any(|seen| seen.event_id == event.event_id) => {}
                Some(event) => events.push(event),
                None => states += 1,
            }
        }
        if events.is_empty() && states > 0 {
            return Ok(Outcome::Ignored(IgnoreReason::State));
        }
        Ok(Outcome::Offences(events))
    }

    /// Resolves and checks one detection. `Ok(None)` means the name is a known
    /// non-offence state.
    fn enrich(
        &self,
        format: Format,
        raw: &RawMessage<'_>,
        mut detection: Detection,
        received_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<Option<OffenceEvent>, Rejection> {
        let offence = match self
            .taxonomy
            .resolve(format.as_str(), &detection.offence_name)
        {
            NameMatch::Offence(offence) => offence,
            NameMatch::State => return Ok(None),
            NameMatch::Unknown => {
                return Err(Rejection::new(
                    RejectReason::UnknownOffence,
                    format!(
                        "offence {:?} is not a known code or alias",
                        clip(&detection.offence_name)
                    ),
                ))
            }
        };
        self.check_strings(raw, &detection)?;
        self.check_time(detection.detected_at, now)?;
        check_range("speed_kmh", detection.speed_kmh, 0.0, 1000.0)?;
        check_range("speed_limit_kmh", detection.speed_limit_kmh, 0.0, 1000.0)?;
        check_range("lat", detection.lat, -90.0, 90.0)?;
        check_range("lon", detection.lon, -180.0, 180.0)?;
        let confidence = match detection.confidence {
            None => None,
            Some(confidence) => {
                let normalised = confidence.raw / confidence.scale;
                if !(0.0..=1.0).contains(&normalised) {
                    return Err(Rejection::new(
                        RejectReason::ConfidenceOutOfRange,
                        format!(
                            "confidence {} is outside 0..{}",
                            confidence.raw, confidence.scale
                        ),
                    ));
                }
                Some(confidence)
            }
        };

        // The header's camera wins over anything derived from the payload.
        let named_camera = raw
            .camera_id
            .filter(|id| !id.is_empty())
            .or(detection.camera_id.as_deref());
        let registered = named_camera
            .and_then(|id| self.registry.get(id))
            .or_else(|| {
                detection
                    .device_identity
                    .as_deref()
                    .and_then(|key| self.registry.by_identity(key))
            });
        let (camera_id, region, region_source, district, lat, lon) = match registered {
            Some(camera) => (
                camera.camera_id.clone(),
                camera.region.clone(),
                RegionSource::Registry,
                camera.district.clone(),
                camera.lat.or(detection.lat),
                camera.lon.or(detection.lon),
            ),
            None => {
                let camera_id = named_camera
                    .map(str::to_string)
                    .or_else(|| detection.device_identity.clone())
                    .unwrap_or_else(|| format!("{}:{}", format.as_str(), raw.gateway_id));
                let payload_region = detection
                    .payload_region
                    .as_deref()
                    .and_then(|code| self.regions.resolve(code));
                let (region, source) = match payload_region {
                    Some(region) => (region.code.clone(), RegionSource::Payload),
                    None => (UNKNOWN_REGION.to_string(), RegionSource::Unknown),
                };
                (
                    camera_id,
                    region,
                    source,
                    String::new(),
                    detection.lat,
                    detection.lon,
                )
            }
        };

        let event_id = match detection.explicit_event_id {
            Some(explicit) => explicit,
            None => {
                // The identity key is not needed past this point: extend it
                // in place to `<identity key>|<code>` rather than copy it.
                let key = &mut detection.identity_key;
                key.push('|');
                key.push_str(&offence.code);
                event_id(key)
            }
        };
        let clock_skew = received_at.is_some_and(|received| {
            (detection.detected_at - received).abs() > self.limits.max_clock_skew
                && detection.detected_at > received
        });
        // Narrowing to f32 is the stored precision of these measurements.
        #[allow(clippy::cast_possible_truncation)]
        let event = OffenceEvent {
            schema_version: EVENT_SCHEMA_VERSION,
            event_id,
            offence_type: offence.code.clone(),
            offence_family: offence.family.clone(),
            legal_category: offence.category.clone(),
            article: offence.article.clone(),
            detected_at: detection.detected_at,
            device_time: detection.device_time,
            received_at,
            ingested_at: now,
            clock_skew,
            camera_id,
            region,
            region_source,
            district,
            source_format: format.as_str().to_string(),
            gateway_id: raw.gateway_id.to_string(),
            source_event_id: detection.source_event_id,
            confidence: confidence.map(|c| (c.raw / c.scale) as f32),
            confidence_raw: confidence.map(|c| c.raw),
            plate: self.stored_plate(detection.plate),
            speed_kmh: detection.speed_kmh.map(|v| v as f32),
            speed_limit_kmh: detection.speed_limit_kmh.map(|v| v as f32),
            lat,
            lon,
            evidence_url: detection.evidence_url,
        };
        Ok(Some(event))
    }

    /// The plate as it leaves the service: in clear, or its keyed hash.
    fn stored_plate(&self, plate: Option<String>) -> Option<String> {
        let plate = plate?;
        match &self.plate_key {
            None => Some(plate),
            Some(key) => key.hash(&plate),
        }
    }

    fn check_strings(&self, raw: &RawMessage<'_>, detection: &Detection) -> Result<(), Rejection> {
        let limit = self.limits.max_string_bytes;
        let fields = [
            ("camera_id", detection.camera_id.as_deref()),
            ("Cctv-Camera-Id", raw.camera_id),
            ("plate", detection.plate.as_deref()),
            ("source_event_id", detection.source_event_id.as_deref()),
            ("region", detection.payload_region.as_deref()),
            ("evidence_url", detection.evidence_url.as_deref()),
            ("device_time", detection.device_time.as_deref()),
            ("device_identity", detection.device_identity.as_deref()),
            ("gateway_id", Some(raw.gateway_id)),
        ];
        for (name, value) in fields {
            if let Some(value) = value {
                if value.len() > limit {
                    return Err(Rejection::new(
                        RejectReason::FieldTooLong,
                        format!("{name} is {} bytes, the limit is {limit}", value.len()),
                    ));
                }
            }
        }
        Ok(())
    }

    fn check_time(&self, detected_at: DateTime<Utc>, now: DateTime<Utc>) -> Result<(), Rejection> {
        if detected_at > now + self.limits.max_future {
            return Err(Rejection::new(
                RejectReason::TimeOutOfRange,
                format!(
                    "detected_at {} is more than {} in the future",
                    detected_at.to_rfc3339(),
                    self.limits.max_future
                ),
            ));
        }
        if detected_at < now - self.limits.max_past {
            return Err(Rejection::new(
                RejectReason::TimeOutOfRange,
                format!(
                    "detected_at {} is more than {} in the past",
                    detected_at.to_rfc3339(),
                    self.limits.max_past
                ),
            ));
        }
        Ok(())
    }
}

fn check_range(name: &str, value: Option<f64>, low: f64, high: f64) -> Result<(), Rejection> {
    match value {
        Some(value) if !(low..=high).contains(&value) => Err(Rejection::new(
            RejectReason::InvalidField,
            format!("{name} {value} is outside {low}..{high}"),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cctv_event::Camera;

    const SAMPLE: &str = r#"{"camera_id":"AST-0412","offence_type":"traffic.speeding","detected_at":"2026-11-27T08:15:05.250+05:00","confidence":0.97,"plate":"404ZXC16","speed_kmh":97,"speed_limit_kmh":70,"source_event_id":"gw7-000184223"}"#;

    fn now() -> DateTime<Utc> {
        parse_rfc3339("2026-11-27T10:00:00Z").unwrap()
    }

    fn normalizer() -> Normalizer {
        let regions = Regions::builtin().unwrap();
        let registry = CameraRegistry::new(vec![Camera {
            camera_id: "AST-0412".into(),
            region: "KZ-71".into(),
            district: "Esil".into(),
            lat: Some(51.1),
            lon: Some(71.4),
            identities: vec![],
        }])
        .unwrap();
        Normalizer::new(
            Arc::new(Taxonomy::builtin().unwrap()),
            Arc::new(regions),
            Arc::new(registry),
            Limits::default(),
        )
    }

    fn raw(payload: &str) -> RawMessage<'_> {
        RawMessage {
            format: "canonical",
            gateway_id: "gw7",
            payload: payload.as_bytes(),
            msg_id: None,
            camera_id: None,
            received_at: None,
            stored_at: None,
        }
    }

    fn one_event(outcome: Outcome) -> OffenceEvent {
        match outcome {
            Outcome::Offences(mut events) if events.len() == 1 => events.remove(0),
            other => panic!("expected one offence, got {other:?}"),
        }
    }

    fn rejection(outcome: Outcome) -> Rejection {
        match outcome {
            Outcome::Rejected(rejection) => rejection,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn the_contract_sample_becomes_an_enriched_event() {
        let event = one_event(normalizer().normalize(&raw(SAMPLE), now()));
        assert_eq!(event.offence_type, "traffic.speeding");
        assert_eq!(event.offence_family, "traffic");
        assert_eq!(event.legal_category, "administrative");
        assert_eq!(event.article, "CoAO 592");
        assert_eq!(event.region, "KZ-71");
        assert_eq!(event.region_source, RegionSource::Registry);
        assert_eq!(event.district, "Esil");
        assert_eq!(
            event.detected_at.to_rfc3339(),
            "2026-11-27T03:15:05.250+00:00"
        );
        assert_eq!(event.confidence, Some(0.97));
        assert_eq!(event.speed_kmh, Some(97.0));
        assert_eq!(event.lat, Some(51.1));
        assert_eq!(event.source_format, "canonical");
        assert_eq!(event.gateway_id, "gw7");
        assert_eq!(event.ingested_at, now());
    }

    #[test]
    fn a_plate_key_hashes_the_plate_and_changes_nothing_else() {
        let key = PlateKey::new([42u8; 32]).unwrap();
        let hashing = normalizer().with_plate_key(key.clone());
        // With a source event id, with a message id, and from content alone
        // (where the plate is part of the identity key).
        let fingerprint_only = SAMPLE.replace(r#","source_event_id":"gw7-000184223""#, "");
        for payload in [SAMPLE.to_string(), fingerprint_only] {
            for msg_id in [None, Some("gw7-msg-1")] {
                let mut message = raw(&payload);
                message.msg_id = msg_id;
                let clear = one_event(normalizer().normalize(&message, now()));
                let hashed = one_event(hashing.normalize(&message, now()));
                assert_eq!(clear.plate.as_deref(), Some("404ZXC16"));
                assert_eq!(hashed.plate, key.hash("404ZXC16"));
                assert_eq!(hashed.event_id, clear.event_id);
                let without_plates = |mut event: OffenceEvent| {
                    event.plate = None;
                    event
                };
                assert_eq!(without_plates(hashed), without_plates(clear));
            }
        }
        let spaced = SAMPLE.replace("404ZXC16", "404 zxc-16");
        assert_eq!(
            one_event(hashing.normalize(&raw(&spaced), now())).plate,
            key.hash("404ZXC16")
        );
        let json =
            String::from_utf8(one_event(hashing.normalize(&raw(SAMPLE), now())).to_json()).unwrap();
        assert!(!json.contains("404ZXC16"), "{json}");
    }

    #[test]
    fn the_event_id_is_deterministic_and_an_explicit_one_wins() {
        let first = one_event(normalizer().normalize(&raw(SAMPLE), now()));
        let again =
            one_event(normalizer().normalize(&raw(SAMPLE), now() + chrono::TimeDelta::hours(1)));
        assert_eq!(first.event_id, again.event_id);
        let other_source = SAMPLE.replace("gw7-000184223", "gw7-000184224");
        assert_ne!(
            first.event_id,
            one_event(normalizer().normalize(&raw(&other_source), now())).event_id
        );
        let explicit = SAMPLE.replace(
            "\"plate\"",
            "\"event_id\":\"7c1e2f40-5a9b-4f7e-9d61-0b3c2a4e8f11\",\"plate\"",
        );
        let event = one_event(normalizer().normalize(&raw(&explicit), now()));
        assert_eq!(
            event.event_id.to_string(),
            "7c1e2f40-5a9b-4f7e-9d61-0b3c2a4e8f11"
        );
    }

    #[test]
    fn without_ids_the_message_id_then_the_content_names_the_event() {
        let bare = r#"{"camera_id":"C1","offence_type":"red_light","detected_at":1795749305250}"#;
        let mut message = raw(bare);
        let from_content = one_event(normalizer().normalize(&message, now())).event_id;
        assert_eq!(
            from_content,
            one_event(normalizer().normalize(&message, now())).event_id
        );
        message.msg_id = Some("gw-msg-1");
        let from_msg_id = one_event(normalizer().normalize(&message, now())).event_id;
        assert_ne!(from_content, from_msg_id);
        message.msg_id = Some("gw-msg-2");
        assert_ne!(
            from_msg_id,
            one_event(normalizer().normalize(&message, now())).event_id
        );
    }

    #[test]
    fn aliases_resolve_to_canonical_codes() {
        let payload = SAMPLE.replace("traffic.speeding", "overSpeed");
        assert_eq!(
            one_event(normalizer().normalize(&raw(&payload), now())).offence_type,
            "traffic.speeding"
        );
    }

    #[test]
    fn unknown_cameras_fall_back_to_payload_region_then_unknown() {
        let with_region = r#"{"camera_id":"NEW-1","offence_type":"littering","detected_at":"2026-11-27T08:00:00Z","region":"KZ-ALA"}"#;
        let event = one_event(normalizer().normalize(&raw(with_region), now()));
        assert_eq!(
            (event.region.as_str(), event.region_source),
            ("KZ-75", RegionSource::Payload)
        );
        assert_eq!(event.camera_id, "NEW-1");
        let bad_region = with_region.replace("KZ-ALA", "KZ-00");
        let event = one_event(normalizer().normalize(&raw(&bad_region), now()));
        assert_eq!(
            (event.region.as_str(), event.region_source),
            (UNKNOWN_REGION, RegionSource::Unknown)
        );
        let no_region = r#"{"camera_id":"NEW-1","offence_type":"littering","detected_at":"2026-11-27T08:00:00Z"}"#;
        assert_eq!(
            one_event(normalizer().normalize(&raw(no_region), now())).region,
            UNKNOWN_REGION
        );
    }

    #[test]
    fn the_camera_header_wins_over_the_payload() {
        let payload = SAMPLE.replace("AST-0412", "SOMETHING-ELSE");
        let mut message = raw(&payload);
        message.camera_id = Some("AST-0412");
        let event = one_event(normalizer().normalize(&message, now()));
        assert_eq!(
            (event.camera_id.as_str(), event.region.as_str()),
            ("AST-0412", "KZ-71")
        );
    }

    #[test]
    fn bad_input_is_rejected_with_a_stable_reason() {
        let normalizer = normalizer();
        let cases: Vec<(String, RejectReason)> = vec![
            ("{not json".into(), RejectReason::Malformed),
            ("[1,2]".into(), RejectReason::Malformed),
            (String::new(), RejectReason::Malformed),
            (r#"{"offence_type":"traffic.speeding","detected_at":"2026-11-27T08:00:00Z"}"#.into(), RejectReason::MissingField),
            (r#"{"camera_id":"","offence_type":"traffic.speeding","detected_at":"2026-11-27T08:00:00Z"}"#.into(), RejectReason::MissingField),
            (r#"{"camera_id":"C","detected_at":"2026-11-27T08:00:00Z"}"#.into(), RejectReason::MissingField),
            (r#"{"camera_id":"C","offence_type":"traffic.speeding"}"#.into(), RejectReason::MissingField),
            (r#"{"camera_id":"C","offence_type":"jaywalking_on_mars","detected_at":"2026-11-27T08:00:00Z"}"#.into(), RejectReason::UnknownOffence),
            (r#"{"camera_id":"C","offence_type":"traffic.speeding","detected_at":"2026-11-27 08:00:00"}"#.into(), RejectReason::InvalidTime),
            (r#"{"camera_id":"C","offence_type":"traffic.speeding","detected_at":"2036-11-27T08:00:00Z"}"#.into(), RejectReason::TimeOutOfRange),
            (r#"{"camera_id":"C","offence_type":"traffic.speeding","detected_at":"2016-11-27T08:00:00Z"}"#.into(), RejectReason::TimeOutOfRange),
            (r#"{"camera_id":"C","offence_type":"traffic.speeding","detected_at":"2026-11-27T08:00:00Z","confidence":1.5}"#.into(), RejectReason::ConfidenceOutOfRange),
            (r#"{"camera_id":"C","offence_type":"traffic.speeding","detected_at":"2026-11-27T08:00:00Z","confidence":"high"}"#.into(), RejectReason::InvalidField),
            (r#"{"camera_id":"C","offence_type":"traffic.speeding","detected_at":"2026-11-27T08:00:00Z","event_id":"nope"}"#.into(), RejectReason::InvalidField),
            (r#"{"camera_id":"C","offence_type":"traffic.speeding","detected_at":"2026-11-27T08:00:00Z","speed_kmh":-5}"#.into(), RejectReason::InvalidField),
            (format!(r#"{{"camera_id":"{}","offence_type":"traffic.speeding","detected_at":"2026-11-27T08:00:00Z"}}"#, "C".repeat(600)), RejectReason::FieldTooLong),
            (format!(r#"{{"camera_id":"C","offence_type":"traffic.speeding","detected_at":"2026-11-27T08:00:00Z","pad":"{}"}}"#, "x".repeat(300_000)), RejectReason::PayloadTooLarge),
        ];
        for (payload, reason) in cases {
            let rejection = rejection(normalizer.normalize(&raw(&payload), now()));
            assert_eq!(
                rejection.reason,
                reason,
                "{}: {}",
                &payload[..payload.len().min(80)],
                rejection.detail
            );
            assert!(!rejection.detail.is_empty());
        }
    }

    #[test]
    fn deep_nesting_and_bad_utf8_have_their_own_reasons() {
        let normalizer = normalizer();
        let deep = format!(
            r#"{{"camera_id":"C","x":{}1{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        assert_eq!(
            rejection(normalizer.normalize(&raw(&deep), now())).reason,
            RejectReason::TooDeep
        );
        let mut message = raw("");
        let bytes = b"{\"camera_id\":\"\xff\xfe\"}";
        message.payload = bytes;
        assert_eq!(
            rejection(normalizer.normalize(&message, now())).reason,
            RejectReason::InvalidUtf8
        );
    }

    #[test]
    fn unsupported_formats_are_rejected() {
        let mut message = raw(SAMPLE);
        message.format = "axis";
        assert_eq!(
            rejection(normalizer().normalize(&message, now())).reason,
            RejectReason::UnsupportedFormat
        );
    }

    #[test]
    fn a_device_clock_ahead_of_receipt_is_flagged() {
        let mut message = raw(SAMPLE);
        message.received_at = Some("2026-11-27T03:00:00Z");
        assert!(one_event(normalizer().normalize(&message, now())).clock_skew);
        message.received_at = Some("2026-11-27T03:15:06Z");
        let event = one_event(normalizer().normalize(&message, now()));
        assert!(!event.clock_skew);
        assert_eq!(
            event.received_at.map(|t| t.to_rfc3339()),
            Some("2026-11-27T03:15:06+00:00".into())
        );
    }
}
