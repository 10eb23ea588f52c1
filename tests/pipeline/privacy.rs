//! Plate privacy end to end: a real `cctv-ingest` process with
//! `privacy.plates = "keyed_hash"` and the key in `CCTV_PLATE_HASH_KEY`.
//! No clear plate reaches `CCTV_EVENTS` or ClickHouse, counts per (hashed)
//! plate still find the repeat offenders, and event ids are those of clear
//! mode. Without the key, or with a short one, the service refuses to start
//! and names the variable.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use cctv_event::{CameraRegistry, Regions, Taxonomy};
use cctv_normalize::{Limits, Normalizer, Outcome, PlateKey, RawMessage};
use futures::StreamExt;

use crate::harness::{canonical, recent_time, Stack};
use crate::processes::{Kind, ServiceProcess};

/// The key of these tests: 64 bytes, as `openssl rand -hex 32` prints.
const KEY: &str = "9f2c4e1a7b3d5f60819a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f70";
/// Plates and how many offences each commits; spellings vary per event.
const OFFENDERS: [(&str, usize); 4] = [
    ("404ZXC16", 5),
    ("777AAA02", 3),
    ("123KZT01", 1),
    ("555BBB75", 2),
];

fn ingest_toml(stack: &Stack, plates: &str) -> String {
    format!(
        "[nats]\nurl = \"{}\"\n\n[data]\nregistry_path = \"{}\"\n\n[privacy]\nplates = \"{plates}\"\n\n\
         [telemetry]\nlisten = \"127.0.0.1:0\"\n",
        stack.nats.url(),
        stack.registry_file.path().display()
    )
}

/// A plate as one camera or another might spell it.
fn spelling(plate: &str, n: usize) -> String {
    match n % 3 {
        0 => plate.to_string(),
        1 => format!("{} {}-{}", &plate[..3], &plate[3..6], &plate[6..]).to_lowercase(),
        _ => format!("{}-{}", &plate[..3], &plate[3..]),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_hash_keeps_clear_plates_out_of_the_events_and_clickhouse_yet_counts_per_plate() {
    let stack = Stack::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut ingest = ServiceProcess::start(
        Kind::Ingest,
        dir.path(),
        &ingest_toml(&stack, "keyed_hash"),
        &[("CCTV_PLATE_HASH_KEY", KEY)],
    );
    let aggregator = stack.start_aggregator();

    // What clear mode would produce for the same messages: the event ids.
    let regions = Regions::builtin().unwrap();
    let registry = CameraRegistry::load(stack.registry_file.path(), &regions).unwrap();
    let clear = Normalizer::new(
        Arc::new(Taxonomy::builtin().unwrap()),
        Arc::new(regions),
        Arc::new(registry),
        Limits::default(),
    );
    let mut messages = Vec::new();
    let mut clear_ids = BTreeSet::new();
    let mut n = 0usize;
    for (plate, offences) in OFFENDERS {
        for _ in 0..offences {
            // Alternate between a source event id and content-only identity,
            // whose key includes the plate as received.
            let source = if n.is_multiple_of(2) {
                format!(r#","source_event_id":"privacy-{n}""#)
            } else {
                String::new()
            };
            let payload = canonical(
                &format!("CAM-75-{}", 1 + n % 2),
                "traffic.speeding",
                &recent_time(n as i64 * 60),
                &format!(r#","plate":"{}"{source}"#, spelling(plate, n)),
            );
            let raw = RawMessage {
                format: "canonical",
                gateway_id: "gw-privacy",
                payload: &payload,
                msg_id: None,
                camera_id: None,
                received_at: None,
                stored_at: None,
            };
            match clear.normalize(&raw, chrono::Utc::now()) {
                Outcome::Offences(events) => {
                    clear_ids.extend(events.iter().map(|event| event.event_id.to_string()));
                }
                other => panic!("test event not accepted: {other:?}"),
            }
            messages.push(payload);
            n += 1;
        }
    }
    for payload in messages {
        stack
            .publish_raw("canonical", "gw-privacy", &[], payload)
            .await;
    }
    let expected_rows = n as u64;
    let store = stack.store();
    crate::harness::wait_for_store_rows(&store, expected_rows, || ingest.log_tail()).await;

    // Repeat offenders per hashed plate, as an analyst would query them.
    let key = PlateKey::new(KEY).unwrap();
    let per_plate: BTreeMap<String, u64> = store
        .client()
        .query("SELECT plate, count() FROM offence_events GROUP BY plate")
        .fetch_all::<(String, u64)>()
        .await
        .unwrap()
        .into_iter()
        .collect();
    let expected: BTreeMap<String, u64> = OFFENDERS
        .iter()
        .map(|(plate, offences)| (key.hash(plate).unwrap(), *offences as u64))
        .collect();
    assert_eq!(per_plate, expected);
    let clear_rows: u64 = store
        .client()
        .query("SELECT count() FROM offence_events WHERE plate NOT LIKE 'hmac:%'")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(clear_rows, 0);

    // Event ids are those of clear mode.
    let ids: BTreeSet<String> = store
        .client()
        .query("SELECT toString(event_id) FROM offence_events")
        .fetch_all::<String>()
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(ids, clear_ids);

    // No clear plate in any event message either.
    let stream = stack.js.get_stream("CCTV_EVENTS").await.unwrap();
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    let mut events = consumer.messages().await.unwrap();
    let mut read = 0;
    while read < expected_rows {
        let message = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("an event")
            .expect("stream open")
            .expect("a message");
        for item in cctv_bus::decode_event_batch(&message.payload).expect("an event batch") {
            let event = item.expect("framed").to_event().expect("an event");
            let plate = event.plate.expect("a plate");
            assert!(plate.starts_with("hmac:"), "{plate}");
            read += 1;
        }
        let text = String::from_utf8_lossy(&message.payload).to_uppercase();
        for (plate, _) in OFFENDERS {
            for n in 0..3 {
                let spelled = spelling(plate, n).to_uppercase();
                assert!(!text.contains(&spelled), "clear plate in an event: {text}");
            }
        }
    }

    ingest.terminate();
    assert!(ingest.wait_exit(Duration::from_secs(40)).await.success());
    aggregator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_hash_without_a_long_enough_key_refuses_to_start_naming_the_variable() {
    let stack = Stack::start().await;
    let dir = tempfile::tempdir().unwrap();
    let short = "too-short-key";
    for env in [vec![], vec![("CCTV_PLATE_HASH_KEY", short)]] {
        let mut ingest = ServiceProcess::start(
            Kind::Ingest,
            dir.path(),
            &ingest_toml(&stack, "keyed_hash"),
            &env,
        );
        let status = ingest.wait_exit(Duration::from_secs(30)).await;
        assert!(!status.success(), "started without a usable key");
        assert!(
            ingest.log_contains("CCTV_PLATE_HASH_KEY"),
            "{}",
            ingest.log_tail()
        );
        assert!(!ingest.log_contains(short), "the key leaked into the log");
    }
}
