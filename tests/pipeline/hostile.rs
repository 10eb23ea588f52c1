//! Hostile input end to end: at least 10,000 adversarial messages per format
//! (mutated fixtures, truncations, random bytes, XML entity bombs, JSON and
//! XML nesting bombs, huge fields and payloads, invalid UTF-8, too many
//! events in one message, times far in the future or past, wrong types) go
//! through a real `cctv-ingest` process, interleaved with valid canonical
//! traffic, while the test samples the process's RSS.
//!
//! Every adversarial message is one the pipeline must reject: candidates are
//! generated from `crates/cctv-normalize/fixtures/` with the decoders' own
//! mutation engine (`crates/cctv-normalize/tests/data/mutate.rs`) and kept
//! only when an in-process [`Normalizer`] over the service's reference data
//! rejects them, with the same reason now and ten minutes later (the service's
//! clock runs on while the test publishes). The expected reason of each is
//! counted; the dead letters' `Cctv-Error-Reason` headers must tally exactly.
//!
//! The ingest runs as a process so that its RSS can be attributed; the
//! aggregator runs in-process (its memory is not what is measured here).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::HeaderMap;
use cctv_event::{CameraRegistry, Regions, Taxonomy};
use cctv_normalize::{Format, Limits, Normalizer, Outcome, RawMessage, RejectReason};
use futures::StreamExt;

use crate::harness::{canonical, recent_time, Stack};
use crate::processes::{Kind, ServiceProcess};

#[path = "../../crates/cctv-normalize/tests/data/mutate.rs"]
#[allow(dead_code)]
mod mutate;

use mutate::Rng;

/// Adversarial messages per format (the issue asks for at least 10,000).
const ADVERSARIAL_PER_FORMAT: usize = 10_000;
/// Candidates tried per format before the generator is declared too weak.
const MAX_CANDIDATES_PER_FORMAT: usize = 100_000;
/// Payloads over `max_payload_bytes` per format: each is 256 KiB or more, and
/// the raw stream and the DLQ both store it, so a few are enough.
const HUGE_PAYLOADS_PER_FORMAT: usize = 20;
/// Valid canonical events published among the adversarial messages.
const VALID_EVENTS: usize = 3_000;
/// The gateway of every message of this test.
const GATEWAY: &str = "gw-hostile";
/// Bound on the ingest process's RSS during the run (debug build). The
/// service holds at most `max_in_flight_batches x batch_size` (4 x 1,000) raw
/// messages, each with its dead letter in the publish buffer: with this
/// corpus (nesting bombs up to ~140 KB, 120 payloads over 256 KiB) the
/// heaviest 4,000 consecutive messages weigh about 70 MB, against 580 MB
/// published in all. Measured: 81-85 MiB (printed as `max RSS`; 109-136
/// MiB on a kernel with THP `always` before the ingest turned THP off for
/// itself). Memory follows what is in flight, not what was sent.
const INGEST_RSS_BOUND_KIB: u64 = 128 * 1024;
/// Longest wait for the pipeline to drain.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
/// Publishes in flight before the publisher waits for their acks.
const PUBLISH_WINDOW: usize = 2_048;

/// How an adversarial candidate was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Attack {
    Mutation,
    Truncation,
    RandomBytes,
    EntityBomb,
    NestingBomb,
    HugeField,
    HugePayload,
    InvalidUtf8,
    TooManyEvents,
    FarTime,
    WrongType,
}

impl Attack {
    const ALL: [Attack; 11] = [
        Attack::Mutation,
        Attack::Truncation,
        Attack::RandomBytes,
        Attack::EntityBomb,
        Attack::NestingBomb,
        Attack::HugeField,
        Attack::HugePayload,
        Attack::InvalidUtf8,
        Attack::TooManyEvents,
        Attack::FarTime,
        Attack::WrongType,
    ];
}

/// The adversarial messages of one format and what the normaliser said.
struct Adversarial {
    payloads: Vec<Vec<u8>>,
    /// Expected `Cctv-Error-Reason` -> messages.
    reasons: BTreeMap<&'static str, u64>,
    /// Attack -> (tried, kept).
    attacks: BTreeMap<Attack, (u64, u64)>,
}

fn fixture_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crates/cctv-normalize/fixtures")
}

/// The payload files of `format`'s fixtures (no snapshots, metadata or registry).
fn fixture_payloads(format: Format) -> Vec<Vec<u8>> {
    let dir = fixture_root().join(format.as_str());
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            let name = path.file_name().unwrap().to_string_lossy();
            !name.ends_with(".snap.json") && !name.ends_with(".meta.json") && name != "registry.csv"
        })
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|path| std::fs::read(path).unwrap())
        .collect()
}

/// The normaliser the service builds from the same files and defaults.
fn reference_normalizer(registry_path: &Path) -> Normalizer {
    let regions = Regions::builtin().unwrap();
    let registry = CameraRegistry::load(registry_path, &regions).unwrap();
    Normalizer::new(
        Arc::new(Taxonomy::builtin().unwrap()),
        Arc::new(regions),
        Arc::new(registry),
        Limits::default(),
    )
}

/// The reason the pipeline must give `payload`, if it must reject it: the
/// same rejection now and ten minutes from now (times near a window's edge
/// are not stable and are left out).
fn must_reject(normalizer: &Normalizer, format: Format, payload: &[u8]) -> Option<RejectReason> {
    let raw = RawMessage {
        format: format.as_str(),
        gateway_id: GATEWAY,
        payload,
        msg_id: None,
        camera_id: None,
        received_at: None,
        stored_at: None,
    };
    let now = chrono::Utc::now();
    let reason_at = |at| match normalizer.normalize(&raw, at) {
        Outcome::Rejected(rejection) => Some(rejection.reason),
        _ => None,
    };
    let reason = reason_at(now)?;
    (reason_at(now + chrono::TimeDelta::minutes(10)) == Some(reason)).then_some(reason)
}

fn is_xml(payload: &[u8]) -> bool {
    payload.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'<')
}

/// Byte offset just inside the root element (after its start tag), or after
/// the first `{` of JSON, or 0.
fn inside_root(text: &str) -> usize {
    if text.trim_start().starts_with('<') {
        let mut from = 0;
        while let Some(start) = text[from..].find('<').map(|i| i + from) {
            let rest = &text[start + 1..];
            if !rest.starts_with('?') && !rest.starts_with('!') {
                return text[start..].find('>').map_or(0, |end| start + end + 1);
            }
            from = start + 1;
        }
        return 0;
    }
    text.find('{').map_or(0, |i| i + 1)
}

/// Where an XML document may carry a DOCTYPE: after the XML declaration.
fn after_declaration(text: &str) -> usize {
    if text.trim_start().starts_with("<?") {
        return text.find("?>").map_or(0, |i| i + 2);
    }
    0
}

/// Spans of values a field can be swapped at: JSON string and scalar values
/// after `":`, XML attribute values and element text.
fn value_spans(text: &str) -> Vec<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut spans = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !matches!(bytes[i], b':' | b'=' | b'>') {
            i += 1;
            continue;
        }
        let mut start = i + 1;
        while start < bytes.len() && bytes[start] == b' ' {
            start += 1;
        }
        let end = if bytes.get(start) == Some(&b'"') {
            text[start + 1..]
                .find('"')
                .map(|offset| start + 1 + offset + 1)
        } else if bytes[i] == b'>' {
            text[start..].find('<').map(|offset| start + offset)
        } else {
            text[start..]
                .find([',', '}', ']', ';', '\n'])
                .map(|offset| start + offset)
        };
        if let Some(end) = end {
            if end > start && end - start < 200 {
                spans.push((start, end));
            }
        }
        i += 1;
    }
    spans
}

fn replace_span(text: &str, span: (usize, usize), with: &str) -> Vec<u8> {
    let mut out = String::with_capacity(text.len() + with.len());
    out.push_str(&text[..span.0]);
    out.push_str(with);
    out.push_str(&text[span.1..]);
    out.into_bytes()
}

fn insert_at(text: &str, at: usize, what: &str) -> Vec<u8> {
    replace_span(text, (at, at), what)
}

/// A billion-laughs DOCTYPE (or a quadratic blow-up, or an external entity).
fn entity_bomb(rng: &mut Rng) -> (String, String) {
    match rng.below(3) {
        0 => {
            let levels = 3 + rng.below(8);
            let mut doctype = String::from("<!DOCTYPE lolz [<!ENTITY lol0 \"lol\">");
            for level in 1..=levels {
                doctype.push_str(&format!("<!ENTITY lol{level} \""));
                for _ in 0..10 {
                    doctype.push_str(&format!("&lol{};", level - 1));
                }
                doctype.push_str("\">");
            }
            doctype.push_str("]>");
            (doctype, format!("&lol{levels};"))
        }
        1 => {
            let doctype = format!(
                "<!DOCTYPE q [<!ENTITY a \"{}\">]>",
                "a".repeat(1_000 + rng.below(4_000))
            );
            (doctype, "&a;".repeat(100 + rng.below(2_000)))
        }
        _ => (
            "<!DOCTYPE x [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]>".to_string(),
            "&xxe;".to_string(),
        ),
    }
}

/// A message carrying more offences than `max_events_per_message`, yet under
/// `max_payload_bytes` (so that the count, not the size, is what is refused).
/// Canonical, DeepStream and Frigate messages carry one event each (a JSON
/// array of them is malformed, which the other attacks cover).
fn too_many_events(format: Format, fixtures: &[Vec<u8>], rng: &mut Rng) -> Option<Vec<u8>> {
    let limits = Limits::default();
    let wanted = limits.max_events_per_message + 1 + rng.below(400);
    // Repeat a piece of `size` bytes at most this often to stay under the size limit.
    let fitting = |size: usize| wanted.min(limits.max_payload_bytes * 3 / 4 / size.max(1));
    let find = |needle: &str| {
        fixtures
            .iter()
            .filter_map(|payload| std::str::from_utf8(payload).ok())
            .find(|text| text.contains(needle))
            .map(str::to_string)
    };
    match format {
        Format::Dahua => {
            let entry = r#"{"Action":"Pulse","Code":"TrafficOverSpeed","Index":0,"Data":{"GroupID":GROUP,"IndexInGroup":1,"RealUTC":NOW,"UTCMS":120,"TrafficCar":{"MachineName":"DH-ITC-7Q0A21","PlateNumber":"123AAA01","Speed":88,"UpperSpeedLimit":60}}}"#;
            let now = chrono::Utc::now().timestamp() - 3_600;
            let list: Vec<String> = (0..fitting(entry.len()))
                .map(|n| {
                    entry
                        .replace("GROUP", &(70_000 + n).to_string())
                        .replace("NOW", &now.to_string())
                })
                .collect();
            Some(
                format!(
                    r#"{{"method":"client.notifyEventStream","params":{{"SID":1,"eventList":[{}]}}}}"#,
                    list.join(",")
                )
                .into_bytes(),
            )
        }
        Format::Onvif if rng.below(2) == 0 => {
            let document = find("<wsnt:Notify")?;
            let start = document.find("<wsnt:NotificationMessage>")?;
            let end = document.rfind("</wsnt:Notify>")?;
            // The fixture's body holds two notifications.
            let two = &document[start..end];
            let repeats = fitting(two.len() / 2) / 2 + 1;
            Some(
                format!(
                    "{}{}{}",
                    &document[..start],
                    two.repeat(repeats),
                    &document[end..]
                )
                .into_bytes(),
            )
        }
        Format::Onvif => {
            let element = find("\"Littering\"")?;
            let element = element.trim();
            Some(format!("[{}]", vec![element; fitting(element.len())].join(",")).into_bytes())
        }
        Format::Hikvision => {
            const LISTED: &str = "wrongDirection,congestion,crossLane";
            let document = find(LISTED)?;
            let names = vec!["illegalParking,wrongDirection,crossLane"; wanted / 3 + 1].join(",");
            Some(document.replace(LISTED, &names).into_bytes())
        }
        Format::Canonical | Format::Deepstream | Format::Frigate => None,
    }
}

/// One candidate of `attack` for `format`, or `None` when the attack does not
/// apply to it.
fn candidate(
    attack: Attack,
    format: Format,
    fixtures: &[Vec<u8>],
    rng: &mut Rng,
) -> Option<Vec<u8>> {
    let fixture = &fixtures[rng.below(fixtures.len())];
    let text = std::str::from_utf8(fixture).ok()?;
    let limits = Limits::default();
    match attack {
        Attack::Mutation => Some(mutate::mutate(fixture, rng)),
        Attack::Truncation => Some(fixture[..rng.below(fixture.len())].to_vec()),
        Attack::RandomBytes => Some(mutate::random_bytes(rng)),
        Attack::EntityBomb => {
            let (doctype, reference) = entity_bomb(rng);
            if !is_xml(fixture) {
                return Some(
                    format!("<?xml version=\"1.0\"?>{doctype}<a>{reference}</a>").into_bytes(),
                );
            }
            let with_reference = insert_at(text, inside_root(text), &reference);
            let with_reference = String::from_utf8(with_reference).ok()?;
            Some(insert_at(
                &with_reference,
                after_declaration(&with_reference),
                &doctype,
            ))
        }
        Attack::NestingBomb => {
            let depth = limits.max_json_depth.max(limits.max_xml_depth) + 1 + rng.below(20_000);
            let bomb = if is_xml(fixture) {
                format!("{}{}", "<a>".repeat(depth), "</a>".repeat(depth))
            } else {
                format!("\"nest\":{}1{},", "[".repeat(depth), "]".repeat(depth))
            };
            Some(insert_at(text, inside_root(text), &bomb))
        }
        Attack::HugeField => {
            let spans = value_spans(text);
            let span = spans.get(rng.below(spans.len().max(1)))?;
            let length = limits.max_string_bytes + 1 + rng.below(20_000);
            let filler = "Z".repeat(length);
            let value = if text[span.0..].starts_with('"') {
                format!("\"{filler}\"")
            } else {
                filler
            };
            Some(replace_span(text, *span, &value))
        }
        Attack::HugePayload => {
            let padding = limits.max_payload_bytes + 1 + rng.below(64 * 1024);
            let pad = if is_xml(fixture) {
                format!("<!--{}-->", "x".repeat(padding))
            } else {
                format!("\"pad\":\"{}\",", "x".repeat(padding))
            };
            Some(insert_at(text, inside_root(text), &pad))
        }
        Attack::InvalidUtf8 => {
            const SEQUENCES: [&[u8]; 5] = [
                b"\xff",
                b"\xc3\x28",
                b"\xed\xa0\x80",
                b"\xc0\xaf",
                b"\xf4\x90\x80\x80",
            ];
            let mut bytes = fixture.clone();
            let at = rng.below(bytes.len() + 1);
            let sequence = SEQUENCES[rng.below(SEQUENCES.len())];
            bytes.splice(at..at, sequence.iter().copied());
            Some(bytes)
        }
        Attack::TooManyEvents => too_many_events(format, fixtures, rng),
        Attack::FarTime => {
            const YEARS: [&str; 6] = ["2099", "2031", "1970", "1999", "2016", "9999"];
            const EPOCH_PREFIXES: [&str; 4] = ["999", "100", "400", "000"];
            let year = YEARS[rng.below(YEARS.len())];
            let prefix = EPOCH_PREFIXES[rng.below(EPOCH_PREFIXES.len())];
            let moved = text
                .replace("2026-", &format!("{year}-"))
                .replace("179", prefix);
            (moved != text).then(|| moved.into_bytes())
        }
        Attack::WrongType => {
            const VALUES: [&str; 10] = [
                "{}",
                "[]",
                "true",
                "null",
                "-1",
                "1e400",
                "\"\"",
                "{\"a\":[1,2]}",
                "\"not a value\"",
                "<x/>",
            ];
            let spans = value_spans(text);
            let span = spans.get(rng.below(spans.len().max(1)))?;
            Some(replace_span(text, *span, VALUES[rng.below(VALUES.len())]))
        }
    }
}

/// Generates candidates round-robin over the attacks until
/// [`ADVERSARIAL_PER_FORMAT`] are rejected by the normaliser.
fn adversarial(format: Format, normalizer: &Normalizer, seed: u64) -> Adversarial {
    let fixtures = fixture_payloads(format);
    assert!(!fixtures.is_empty(), "no fixtures for {}", format.as_str());
    let mut rng = Rng::new(seed);
    let mut result = Adversarial {
        payloads: Vec::with_capacity(ADVERSARIAL_PER_FORMAT),
        reasons: BTreeMap::new(),
        attacks: BTreeMap::new(),
    };
    let mut huge = 0usize;
    for tried in 0.. {
        if result.payloads.len() == ADVERSARIAL_PER_FORMAT {
            break;
        }
        assert!(
            tried < MAX_CANDIDATES_PER_FORMAT,
            "{}: only {} of {tried} candidates rejected",
            format.as_str(),
            result.payloads.len()
        );
        let attack = Attack::ALL[tried % Attack::ALL.len()];
        if attack == Attack::HugePayload && huge == HUGE_PAYLOADS_PER_FORMAT {
            continue;
        }
        let Some(payload) = candidate(attack, format, &fixtures, &mut rng) else {
            continue;
        };
        let tally = result.attacks.entry(attack).or_insert((0, 0));
        tally.0 += 1;
        let Some(reason) = must_reject(normalizer, format, &payload) else {
            continue;
        };
        tally.1 += 1;
        if attack == Attack::HugePayload {
            huge += 1;
        }
        *result.reasons.entry(reason.as_str()).or_insert(0) += 1;
        result.payloads.push(payload);
    }
    result
}

/// Expected events per (region, offence type).
type Totals = BTreeMap<(String, String), u64>;

/// Valid canonical events (`Nats-Msg-Id`, payload) over the registry's
/// cameras and every offence type, with their expected totals.
fn valid_traffic() -> (Vec<(String, Vec<u8>)>, Totals) {
    let regions: Vec<String> = Regions::builtin()
        .unwrap()
        .all()
        .iter()
        .map(|region| region.code.clone())
        .collect();
    let codes: Vec<String> = Taxonomy::builtin()
        .unwrap()
        .offences()
        .iter()
        .map(|offence| offence.code.clone())
        .collect();
    let mut expected = BTreeMap::new();
    let mut messages = Vec::with_capacity(VALID_EVENTS);
    for n in 0..VALID_EVENTS {
        let region = &regions[(n * 7) % regions.len()];
        let code = &codes[(n * 13 + n / 97) % codes.len()];
        let camera = format!("CAM-{}-{}", region.trim_start_matches("KZ-"), 1 + n % 2);
        let payload = canonical(
            &camera,
            code,
            &recent_time((n % 3_000) as i64),
            &format!(
                r#","source_event_id":"hostile-valid-{n}","plate":"{:03}ABC02""#,
                n % 500
            ),
        );
        messages.push((format!("hostile-valid-{n}"), payload));
        *expected.entry((region.clone(), code.clone())).or_insert(0) += 1;
    }
    (messages, expected)
}

/// One raw message to publish.
struct Outgoing {
    format: Format,
    msg_id: Option<String>,
    payload: Vec<u8>,
}

/// Publishes with pipelined JetStream acks.
async fn publish_all(js: jetstream::Context, messages: Vec<Outgoing>) {
    let mut acks = Vec::with_capacity(PUBLISH_WINDOW);
    for message in messages {
        let mut headers = HeaderMap::new();
        if let Some(msg_id) = &message.msg_id {
            headers.insert(cctv_bus::headers::NATS_MSG_ID, msg_id.as_str());
        }
        let subject = cctv_bus::subjects::raw(message.format.as_str(), GATEWAY);
        acks.push(
            js.publish_with_headers(subject, headers, message.payload.into())
                .await
                .expect("publish raw"),
        );
        if acks.len() >= PUBLISH_WINDOW {
            for ack in acks.drain(..) {
                ack.await.expect("raw publish acknowledged");
            }
        }
    }
    for ack in acks {
        ack.await.expect("raw publish acknowledged");
    }
}

/// `Cctv-Error-Reason` per (format, reason) over the whole DLQ, read headers
/// only; every dead letter must carry a non-empty reason, text and source.
async fn dlq_reasons(js: &jetstream::Context, expected: u64) -> BTreeMap<(String, String), u64> {
    let stream = js.get_stream("CCTV_DLQ").await.expect("dlq stream");
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            headers_only: true,
            ..Default::default()
        })
        .await
        .expect("ordered consumer on the DLQ");
    let mut messages = consumer.messages().await.expect("dlq messages");
    let mut tally = BTreeMap::new();
    let header = |headers: Option<&HeaderMap>, name: &str| {
        headers
            .and_then(|h| h.get(name))
            .map(|value| value.as_str().to_string())
            .unwrap_or_default()
    };
    for _ in 0..expected {
        let message = tokio::time::timeout(Duration::from_secs(30), messages.next())
            .await
            .expect("the DLQ holds fewer dead letters than expected")
            .expect("the DLQ consumer ended")
            .expect("a dead letter");
        let headers = message.headers.as_ref();
        let reason = header(headers, cctv_bus::headers::ERROR_REASON);
        let detail = header(headers, cctv_bus::headers::ERROR);
        let source = header(headers, cctv_bus::headers::SOURCE_SUBJECT);
        assert!(
            !reason.is_empty() && !detail.is_empty(),
            "a dead letter without a reason: {headers:?}"
        );
        let format = cctv_bus::subjects::parse_raw(&source)
            .map(|parsed| parsed.format.to_string())
            .unwrap_or_else(|| panic!("dead letter from {source:?}"));
        *tally.entry((format, reason)).or_insert(0) += 1;
    }
    tally
}

fn as_map(rows: &[cctv_store::TotalsRow]) -> Totals {
    rows.iter()
        .map(|row| ((row.region.clone(), row.offence_type.clone()), row.events))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_ends_in_the_dlq_with_its_reason_and_valid_traffic_is_counted_exactly() {
    let started = Instant::now();
    let stack = Stack::start().await;
    let normalizer = reference_normalizer(stack.registry_file.path());

    // The adversarial corpus, per format, each with its expected reason.
    let mut expected_reasons: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut corpora = Vec::new();
    for (n, format) in Format::ALL.into_iter().enumerate() {
        let corpus = adversarial(format, &normalizer, 0x4057_11E0 + n as u64);
        println!(
            "{}: {} adversarial; reasons {:?}; attacks (tried, kept) {:?}",
            format.as_str(),
            corpus.payloads.len(),
            corpus.reasons,
            corpus.attacks
        );
        // The corpus covers each kind of attack the issue names.
        let mut required = vec![
            "malformed",
            "invalid_utf8",
            "too_deep",
            "field_too_long",
            "payload_too_large",
            "time_out_of_range",
            "invalid_field",
        ];
        if matches!(format, Format::Hikvision | Format::Onvif) {
            required.push("dtd_forbidden");
        }
        if matches!(format, Format::Hikvision | Format::Dahua | Format::Onvif) {
            required.push("too_many_events");
        }
        for reason in required {
            assert!(
                corpus.reasons.get(reason).is_some_and(|count| *count > 0),
                "{}: no adversarial message rejected as {reason}",
                format.as_str()
            );
        }
        for (reason, count) in &corpus.reasons {
            expected_reasons.insert((format.as_str().to_string(), (*reason).to_string()), *count);
        }
        corpora.push((format, corpus.payloads));
    }
    let adversarial_count: u64 = expected_reasons.values().sum();
    assert!(adversarial_count >= 6 * ADVERSARIAL_PER_FORMAT as u64);
    let generated = started.elapsed();

    // Interleave: formats in turn, one valid event after every 20 adversarial.
    let (valid, expected_totals) = valid_traffic();
    let mut outgoing = Vec::with_capacity(adversarial_count as usize + VALID_EVENTS);
    let mut valid = valid.into_iter();
    let mut iterators: Vec<_> = corpora
        .into_iter()
        .map(|(format, payloads)| (format, payloads.into_iter()))
        .collect();
    let mut emitted = 0usize;
    loop {
        let mut any = false;
        for (format, payloads) in &mut iterators {
            if let Some(payload) = payloads.next() {
                any = true;
                outgoing.push(Outgoing {
                    format: *format,
                    msg_id: None,
                    payload,
                });
                emitted += 1;
                if emitted.is_multiple_of(20) {
                    if let Some((msg_id, payload)) = valid.next() {
                        outgoing.push(Outgoing {
                            format: Format::Canonical,
                            msg_id: Some(msg_id),
                            payload,
                        });
                    }
                }
            }
        }
        if !any {
            break;
        }
    }
    for (msg_id, payload) in valid {
        outgoing.push(Outgoing {
            format: Format::Canonical,
            msg_id: Some(msg_id),
            payload,
        });
    }
    let raw_count = outgoing.len() as u64;
    let sizes: Vec<usize> = outgoing
        .iter()
        .map(|message| message.payload.len())
        .collect();
    let total_bytes: usize = sizes.iter().sum();
    let heaviest_in_flight = sizes
        .windows(4_000)
        .map(|window| window.iter().sum::<usize>())
        .max()
        .unwrap_or(total_bytes);

    // The real ingest process (default batching and limits), the aggregator in-process.
    let dir = tempfile::tempdir().unwrap();
    let ingest_toml = format!(
        "[nats]\nurl = \"{}\"\n\n[data]\nregistry_path = \"{}\"\n\n[telemetry]\nlisten = \"127.0.0.1:0\"\n",
        stack.nats.url(),
        stack.registry_file.path().display()
    );
    let mut ingest = ServiceProcess::start(Kind::Ingest, dir.path(), &ingest_toml, &[]);
    let aggregator = stack.start_aggregator();

    let publish_started = Instant::now();
    let publisher = tokio::spawn(publish_all(stack.js.clone(), outgoing));
    let store = stack.store();
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    let mut max_rss_kib = 0u64;
    loop {
        if let Some(status) = ingest.exited() {
            panic!(
                "the ingest process exited: {status:?}\n{}",
                ingest.log_tail()
            );
        }
        max_rss_kib = max_rss_kib.max(ingest.rss_kib().unwrap_or(0));
        let dead_letters = stack.stream_messages("CCTV_DLQ").await;
        let events = aggregator.stats.snapshot().rows_written;
        let rows = store.count_events().await.unwrap_or(0);
        if publisher.is_finished()
            && dead_letters >= adversarial_count
            && rows >= VALID_EVENTS as u64
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not drained after {DRAIN_TIMEOUT:?}: {dead_letters} of {adversarial_count} dead \
             letters, {events} events written and {rows} rows of {VALID_EVENTS}\n{}",
            ingest.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    publisher.await.expect("publisher");
    let drained = publish_started.elapsed();

    // Every raw message was handled and acked, none is waiting.
    let raw_stream = stack.js.get_stream("CCTV_RAW").await.unwrap();
    let raw_stream = &raw_stream;
    cctv_testkit::poll(
        "the raw consumer to settle",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async move {
            let info = raw_stream.consumer_info("cctv-ingest").await.unwrap();
            if info.num_pending == 0 && info.num_ack_pending == 0 {
                Ok(())
            } else {
                Err(format!(
                    "{} pending, {} unacked",
                    info.num_pending, info.num_ack_pending
                ))
            }
        },
    )
    .await;
    max_rss_kib = max_rss_kib.max(ingest.rss_kib().unwrap_or(0));
    assert_eq!(stack.stream_messages("CCTV_RAW").await, raw_count);

    // The service stayed up throughout and stops cleanly.
    assert!(ingest.exited().is_none(), "{}", ingest.log_tail());
    ingest.terminate();
    let status = ingest.wait_exit(Duration::from_secs(40)).await;
    assert!(status.success(), "{status:?}\n{}", ingest.log_tail());
    let aggregator_stats = aggregator.stats.clone();
    aggregator.stop().await;

    // Exactly the adversarial messages in the DLQ, with the expected reasons.
    assert_eq!(stack.stream_messages("CCTV_DLQ").await, adversarial_count);
    let tallied = dlq_reasons(&stack.js, adversarial_count).await;
    assert_eq!(tallied, expected_reasons);

    // Nothing adversarial counted: events and rows are the valid traffic only.
    let aggregated = aggregator_stats.snapshot();
    assert_eq!(
        aggregated.rows_written + aggregated.duplicates,
        VALID_EVENTS as u64,
        "events reaching the aggregator: {aggregated:?}"
    );
    assert_eq!(store.count_events().await.unwrap(), VALID_EVENTS as u64);
    let totals: Vec<cctv_store::TotalsRow> = store
        .client()
        .query(
            "SELECT region, offence_type, toUInt64(sum(events)) AS events \
             FROM offence_totals GROUP BY region, offence_type",
        )
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(as_map(&totals), expected_totals);
    let formats: Vec<(String, u64)> = store
        .client()
        .query("SELECT source_format, count() FROM offence_events GROUP BY source_format")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(formats, [("canonical".to_string(), VALID_EVENTS as u64)]);

    println!(
        "hostile: {adversarial_count} adversarial + {VALID_EVENTS} valid raw messages; \
         generated in {:.1} s, published and drained in {:.1} s, total {:.1} s; \
         {} MB published, heaviest 4,000 consecutive messages {} MB; ingest max RSS \
         {max_rss_kib} KiB (bound {INGEST_RSS_BOUND_KIB} KiB); \
         DLQ reasons {tallied:?}",
        generated.as_secs_f64(),
        drained.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        total_bytes / 1_000_000,
        heaviest_in_flight / 1_000_000,
    );
    assert!(
        max_rss_kib > 0 && max_rss_kib < INGEST_RSS_BOUND_KIB,
        "ingest RSS {max_rss_kib} KiB (bound {INGEST_RSS_BOUND_KIB} KiB)"
    );
}
