//! Pure batching decisions: when the publisher sends what the spool holds,
//! and how spooled messages become NATS messages.
//!
//! In batch mode messages become CloudEvents batches on
//! `cctv.raw.batch.<gateway_id>` (contract 2.1) written by
//! [`cctv_normalize::BatchBuilder`], closed at `batch_max_items` items or
//! `batch_max_bytes` bytes; a message too large for a batch of its own
//! goes alone as a single message. In single mode each message is one NATS
//! message on `cctv.raw.<format>.<gateway_id>` with its headers. Either way
//! the order of the spool is kept.

use std::time::Duration;

use cctv_bus::{headers, subjects};
use cctv_normalize::BatchBuilder;
use chrono::{DateTime, SecondsFormat, Utc};

use crate::config::PublishMode;
use crate::ids;
use crate::record::Message;

/// Header naming the images left out of a message (`name=bytes;...`).
pub const ATTACHMENTS_HEADER: &str = "Cctv-Gateway-Attachments";

/// What the publisher should do with what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Nothing to send.
    Idle,
    /// Send now: a full round is there, or the oldest waited long enough.
    Publish,
    /// Wait at most this long for more (then publish what there is).
    Linger(Duration),
}

/// The limits of one publishing round.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    /// Items that fill one batch.
    pub(crate) max_items: usize,
    /// Bytes that fill one batch.
    pub(crate) max_bytes: usize,
    /// NATS messages per round.
    pub(crate) max_messages: usize,
    /// How long the oldest message may wait for company.
    pub(crate) linger: Duration,
}

/// Whether to publish `items` messages of `bytes` spooled bytes whose oldest
/// was read `oldest_age` ago. A round is full when it fills every message it
/// may send; single mode has nothing to wait for.
pub(crate) fn decide(
    policy: &Policy,
    mode: PublishMode,
    items: usize,
    bytes: usize,
    oldest_age: Duration,
) -> Decision {
    if items == 0 {
        return Decision::Idle;
    }
    if mode == PublishMode::Single {
        return Decision::Publish;
    }
    let full_round = items >= policy.max_items.saturating_mul(policy.max_messages)
        || bytes >= policy.max_bytes.saturating_mul(policy.max_messages);
    if full_round || oldest_age >= policy.linger {
        return Decision::Publish;
    }
    Decision::Linger(policy.linger - oldest_age)
}

/// One NATS message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outgoing {
    /// Its subject.
    pub(crate) subject: String,
    /// Its headers, `(name, value)`.
    pub(crate) headers: Vec<(&'static str, String)>,
    /// Its payload.
    pub(crate) payload: Vec<u8>,
    /// How many spooled messages, from the front, it carries.
    pub(crate) messages: usize,
}

/// Turns the front of `messages` into at most `policy.max_messages` NATS
/// messages, in order; each carries a prefix of what is left.
pub(crate) fn plan<'a>(
    gateway_id: &str,
    mode: PublishMode,
    policy: &Policy,
    messages: impl IntoIterator<Item = &'a Message>,
) -> Vec<Outgoing> {
    let mut out = Vec::new();
    let mut messages = messages.into_iter().peekable();
    let mut builder = BatchBuilder::new(gateway_id);
    let mut item_ids: Vec<&str> = Vec::new();
    while out.len() < policy.max_messages {
        let Some(message) = messages.peek().copied() else {
            break;
        };
        if mode == PublishMode::Single {
            out.push(single(gateway_id, message));
            messages.next();
            continue;
        }
        let time = received_at(message.received_at_ms);
        let pushed = builder.len() < policy.max_items
            && builder.try_push(
                policy.max_bytes,
                message.format.as_str(),
                &message.id,
                Some(&time),
                message.camera_id.as_deref(),
                &message.body,
            );
        if pushed {
            item_ids.push(&message.id);
            messages.next();
            continue;
        }
        if builder.is_empty() {
            // Too large for any batch: it goes alone.
            out.push(single(gateway_id, message));
            messages.next();
            continue;
        }
        out.push(close_batch(gateway_id, &mut builder, &mut item_ids));
    }
    if !builder.is_empty() && out.len() < policy.max_messages {
        out.push(close_batch(gateway_id, &mut builder, &mut item_ids));
    }
    out
}

fn close_batch(gateway_id: &str, builder: &mut BatchBuilder, item_ids: &mut Vec<&str>) -> Outgoing {
    let messages = builder.len();
    let finished = std::mem::replace(builder, BatchBuilder::new(gateway_id));
    let msg_id = ids::batch_id(gateway_id, item_ids.iter().copied());
    item_ids.clear();
    Outgoing {
        subject: subjects::raw(subjects::BATCH_FORMAT, gateway_id),
        headers: vec![
            (headers::NATS_MSG_ID, msg_id),
            (
                headers::CONTENT_TYPE,
                cctv_normalize::BATCH_CONTENT_TYPE.to_string(),
            ),
        ],
        payload: finished.finish(),
        messages,
    }
}

fn single(gateway_id: &str, message: &Message) -> Outgoing {
    let mut message_headers = vec![
        (headers::NATS_MSG_ID, message.id.clone()),
        (headers::RECEIVED_AT, received_at(message.received_at_ms)),
    ];
    if let Some(camera) = &message.camera_id {
        message_headers.push((headers::CAMERA_ID, camera.clone()));
    }
    if let Some(attachments) = &message.attachments {
        message_headers.push((ATTACHMENTS_HEADER, attachments.clone()));
    }
    Outgoing {
        subject: subjects::raw(message.format.as_str(), gateway_id),
        headers: message_headers,
        payload: message.body.clone(),
        messages: 1,
    }
}

/// RFC 3339 in UTC with milliseconds, as `Cctv-Received-At` and `time`.
pub(crate) fn received_at(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cctv_normalize::{parse_batch, BatchEntry, Format};

    const POLICY: Policy = Policy {
        max_items: 3,
        max_bytes: 4096,
        max_messages: 2,
        linger: Duration::from_millis(200),
    };

    fn message(n: usize, body: &[u8]) -> Message {
        Message {
            format: if n.is_multiple_of(2) {
                Format::Hikvision
            } else {
                Format::Dahua
            },
            id: format!("gw1-{n:032}"),
            received_at_ms: 1_795_749_305_250,
            camera_id: n.is_multiple_of(3).then(|| format!("CAM-{n}")),
            attachments: (n == 0).then(|| "plate.jpg=100".to_string()),
            body: body.to_vec(),
        }
    }

    #[test]
    fn a_round_waits_for_company_until_the_linger_or_a_full_round() {
        let decide = |items, bytes, age_ms| {
            decide(
                &POLICY,
                PublishMode::Batch,
                items,
                bytes,
                Duration::from_millis(age_ms),
            )
        };
        assert_eq!(decide(0, 0, 999), Decision::Idle);
        assert_eq!(
            decide(1, 10, 50),
            Decision::Linger(Duration::from_millis(150))
        );
        assert_eq!(decide(1, 10, 200), Decision::Publish);
        assert_eq!(decide(6, 10, 0), Decision::Publish, "items fill the round");
        assert_eq!(
            decide(5, 10, 0),
            Decision::Linger(Duration::from_millis(200))
        );
        assert_eq!(
            decide(2, 8192, 0),
            Decision::Publish,
            "bytes fill the round"
        );
        assert_eq!(
            super::decide(&POLICY, PublishMode::Single, 1, 1, Duration::ZERO),
            Decision::Publish
        );
    }

    #[test]
    fn batches_close_at_their_item_limit_and_keep_every_body_and_attribute() {
        let messages: Vec<Message> = (0..7)
            .map(|n| message(n, format!("<a n=\"{n}\"/>").as_bytes()))
            .collect();
        let out = plan("gw1", PublishMode::Batch, &POLICY, &messages);
        assert_eq!(out.len(), 2, "at most max_messages");
        assert_eq!(out.iter().map(|o| o.messages).collect::<Vec<_>>(), [3, 3]);
        let mut n = 0;
        for outgoing in &out {
            assert_eq!(outgoing.subject, "cctv.raw.batch.gw1");
            let msg_id = &outgoing.headers[0];
            assert_eq!(msg_id.0, headers::NATS_MSG_ID);
            assert!(msg_id.1.starts_with("gw1-b"));
            let entries = parse_batch(&outgoing.payload, "gw1").unwrap();
            for entry in entries {
                let BatchEntry::Item(item) = entry else {
                    panic!("broken item");
                };
                let expected = &messages[n];
                assert_eq!(item.body.as_ref(), expected.body.as_slice());
                assert_eq!(item.id, expected.id);
                assert_eq!(item.format, expected.format.as_str());
                assert_eq!(item.subject.as_deref(), expected.camera_id.as_deref());
                assert_eq!(item.time.as_deref(), Some("2026-11-27T03:15:05.250Z"));
                n += 1;
            }
        }
        assert_eq!(n, 6);
        // The same messages make the same batches (a resend is a repeat).
        assert_eq!(plan("gw1", PublishMode::Batch, &POLICY, &messages), out);
    }

    #[test]
    fn batches_close_at_their_byte_limit_and_an_oversized_message_goes_alone() {
        let big = message(1, &vec![b'x'; 5000]);
        let small = message(2, b"{\"a\":1}");
        let out = plan(
            "gw1",
            PublishMode::Batch,
            &Policy {
                max_messages: 10,
                ..POLICY
            },
            [&small, &big, &small, &small, &small],
        );
        assert_eq!(
            out.iter().map(|o| o.messages).collect::<Vec<_>>(),
            [1, 1, 3]
        );
        assert_eq!(out[1].subject, "cctv.raw.dahua.gw1");
        assert_eq!(out[1].payload.len(), 5000);
        for outgoing in [&out[0], &out[2]] {
            assert!(outgoing.payload.len() <= POLICY.max_bytes);
        }
    }

    #[test]
    fn single_messages_carry_their_metadata_in_headers() {
        let messages = [message(0, b"<x/>"), message(1, b"y")];
        let out = plan("gw1", PublishMode::Single, &POLICY, &messages);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].subject, "cctv.raw.hikvision.gw1");
        assert_eq!(out[0].payload, b"<x/>");
        let find = |name: &str| {
            out[0]
                .headers
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.clone())
        };
        assert_eq!(find(headers::NATS_MSG_ID), Some(messages[0].id.clone()));
        assert_eq!(find(headers::CAMERA_ID), Some("CAM-0".into()));
        assert_eq!(
            find(headers::RECEIVED_AT),
            Some("2026-11-27T03:15:05.250Z".into())
        );
        assert_eq!(find(ATTACHMENTS_HEADER), Some("plate.jpg=100".into()));
        assert!(!out[1]
            .headers
            .iter()
            .any(|(key, _)| *key == headers::CAMERA_ID));
    }
}
