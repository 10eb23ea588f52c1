//! MQTT routing, pure: which subscription a topic belongs to, the format
//! and camera of its message, and the body to pass on.
//!
//! The camera comes from the subscription's `camera_id`, else its `cameras`
//! table looked up by the Frigate payload's `camera` (`after`, else
//! `before`) or by the topic level `camera_level`; else none (the ingest's
//! registry maps the vendor identity). An ONVIF JSON message without a
//! `Topic` member gets the MQTT topic's levels from `onvif_topic_levels` on
//! as its `Topic` (docs/formats.md); every other body passes unchanged.

use cctv_normalize::Format;
use serde::Deserialize;

use crate::config::TopicSettings;

/// Where an MQTT message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Routed {
    /// Its format.
    pub(crate) format: Format,
    /// Its camera, when the config names one.
    pub(crate) camera_id: Option<String>,
    /// The body to pass on (the payload, or an ONVIF JSON object with its topic added).
    pub(crate) body: Vec<u8>,
}

/// Whether `filter` is a valid MQTT topic filter: `#` only as the last
/// level, `+` and `#` only as whole levels, not empty.
pub(crate) fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.len() > 1024 {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    levels
        .iter()
        .enumerate()
        .all(|(index, level)| match *level {
            "#" => index + 1 == levels.len(),
            "+" => true,
            other => !other.contains(['#', '+']),
        })
}

/// Whether `topic` matches `filter` (MQTT 3.1.1, 4.7).
pub(crate) fn matches(filter: &str, topic: &str) -> bool {
    let mut topic_levels = topic.split('/');
    for level in filter.split('/') {
        match level {
            "#" => return true,
            "+" => {
                if topic_levels.next().is_none() {
                    return false;
                }
            }
            literal => {
                if topic_levels.next() != Some(literal) {
                    return false;
                }
            }
        }
    }
    topic_levels.next().is_none()
}

/// Routes a message of `topic`: the first subscription whose filter matches.
pub(crate) fn route(topics: &[TopicSettings], topic: &str, payload: &[u8]) -> Option<Routed> {
    let settings = topics
        .iter()
        .find(|settings| matches(&settings.filter, topic))?;
    let format = Format::parse(&settings.format)?;
    let camera_id = settings.camera_id.clone().or_else(|| {
        let name = match (format, settings.camera_level) {
            (Format::Frigate, _) => frigate_camera(payload),
            (_, Some(level)) => topic.split('/').nth(level).map(str::to_string),
            (_, None) => None,
        }?;
        settings.cameras.get(&name).cloned()
    });
    let body = match (format, settings.onvif_topic_levels) {
        (Format::Onvif, Some(levels)) => with_onvif_topic(payload, topic, levels),
        _ => payload.to_vec(),
    };
    Some(Routed {
        format,
        camera_id,
        body,
    })
}

/// The `camera` of a Frigate event (`after`, else `before`).
fn frigate_camera(payload: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Tracked {
        camera: Option<String>,
    }
    #[derive(Deserialize)]
    struct Event {
        after: Option<Tracked>,
        before: Option<Tracked>,
    }
    let event: Event = serde_json::from_slice(payload).ok()?;
    event
        .after
        .and_then(|tracked| tracked.camera)
        .or_else(|| event.before.and_then(|tracked| tracked.camera))
}

/// `payload` with `"Topic":"<topic levels from levels on>"` added at the
/// front when it is a JSON object without a `Topic`; else unchanged.
fn with_onvif_topic(payload: &[u8], topic: &str, levels: usize) -> Vec<u8> {
    #[derive(Deserialize)]
    struct Probe<'a> {
        #[serde(rename = "Topic", borrow)]
        topic: Option<&'a serde_json::value::RawValue>,
    }
    let trimmed = payload.trim_ascii_start();
    let Some(inner) = trimmed.strip_prefix(b"{") else {
        return payload.to_vec();
    };
    let has_topic = match serde_json::from_slice::<Probe<'_>>(payload) {
        Ok(probe) => probe.topic.is_some(),
        // Not a JSON object: the ingest judges it as it is.
        Err(_) => return payload.to_vec(),
    };
    let onvif_topic: Vec<&str> = topic.split('/').skip(levels).collect();
    if has_topic || onvif_topic.is_empty() {
        return payload.to_vec();
    }
    let Ok(quoted) = serde_json::to_string(&onvif_topic.join("/")) else {
        return payload.to_vec();
    };
    let empty_object = inner.trim_ascii_start().starts_with(b"}");
    let mut body = Vec::with_capacity(payload.len() + quoted.len() + 10);
    body.extend_from_slice(b"{\"Topic\":");
    body.extend_from_slice(quoted.as_bytes());
    if !empty_object {
        body.push(b',');
    }
    body.extend_from_slice(inner);
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn topic(filter: &str, format: &str) -> TopicSettings {
        TopicSettings {
            filter: filter.into(),
            format: format.into(),
            camera_id: None,
            cameras: BTreeMap::new(),
            camera_level: None,
            onvif_topic_levels: None,
        }
    }

    #[test]
    fn filters_match_like_a_broker() {
        for (filter, topic, expected) in [
            ("frigate/events", "frigate/events", true),
            ("frigate/events", "frigate/events/x", false),
            ("frigate/+", "frigate/events", true),
            ("frigate/+", "frigate", false),
            ("frigate/#", "frigate", true),
            ("frigate/#", "frigate/a/b", true),
            ("+/+/x", "a/b/x", true),
            ("#", "anything/at/all", true),
        ] {
            assert_eq!(matches(filter, topic), expected, "{filter} vs {topic}");
        }
        for (filter, valid) in [
            ("a/#", true),
            ("a/+/b", true),
            ("#", true),
            ("a/#/b", false),
            ("a+", false),
            ("", false),
        ] {
            assert_eq!(valid_filter(filter), valid, "{filter}");
        }
    }

    #[test]
    fn frigate_cameras_are_mapped_from_the_payload() {
        let mut frigate = topic("frigate/events", "frigate");
        frigate
            .cameras
            .insert("yard_east".into(), "ALA-YARD-01".into());
        let payload = include_bytes!("../../cctv-normalize/fixtures/frigate/dumping_new.json");
        let routed = route(&[frigate.clone()], "frigate/events", payload).unwrap();
        assert_eq!(routed.format, Format::Frigate);
        assert_eq!(routed.camera_id.as_deref(), Some("ALA-YARD-01"));
        assert_eq!(routed.body, payload.to_vec(), "passed on unchanged");
        let unknown = br#"{"type":"new","after":{"camera":"gate"}}"#;
        assert_eq!(
            route(&[frigate.clone()], "frigate/events", unknown)
                .unwrap()
                .camera_id,
            None
        );
        assert_eq!(route(&[frigate], "other/topic", payload), None);
    }

    #[test]
    fn a_topic_level_names_the_camera_and_a_fixed_camera_wins() {
        let mut onvif = topic("onvif/+/events", "onvif");
        onvif.camera_level = Some(1);
        onvif.cameras.insert("cam7".into(), "AST-0007".into());
        let routed = route(&[onvif.clone()], "onvif/cam7/events", b"{}").unwrap();
        assert_eq!(routed.camera_id.as_deref(), Some("AST-0007"));
        onvif.camera_id = Some("FIXED".into());
        let routed = route(&[onvif], "onvif/cam7/events", b"{}").unwrap();
        assert_eq!(routed.camera_id.as_deref(), Some("FIXED"));
    }

    #[test]
    fn onvif_json_gets_its_topic_from_the_mqtt_topic_when_it_has_none() {
        let mut onvif = topic("onvif/#", "onvif");
        onvif.onvif_topic_levels = Some(2);
        let mqtt_topic = "onvif/cam1/tns1:RuleEngine/LineDetector/Crossed";
        let payload = br#"{"UtcTime":"2026-11-27T11:05:44.010Z","Source":{"VideoSource":"2","Rule":"Littering"}}"#;
        let routed = route(&[onvif.clone()], mqtt_topic, payload).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&routed.body).unwrap();
        assert_eq!(value["Topic"], "tns1:RuleEngine/LineDetector/Crossed");
        assert_eq!(value["Source"]["Rule"], "Littering");
        let with_topic = include_bytes!("../../cctv-normalize/fixtures/onvif/littering_ej.json");
        let routed = route(&[onvif.clone()], mqtt_topic, with_topic).unwrap();
        assert_eq!(
            routed.body,
            with_topic.to_vec(),
            "a topic of its own is kept"
        );
        let routed = route(&[onvif.clone()], mqtt_topic, b"{}").unwrap();
        assert_eq!(
            routed.body,
            br#"{"Topic":"tns1:RuleEngine/LineDetector/Crossed"}"#.to_vec()
        );
        let routed = route(&[onvif], mqtt_topic, b"<xml/>").unwrap();
        assert_eq!(routed.body, b"<xml/>".to_vec(), "XML is not touched");
    }
}
