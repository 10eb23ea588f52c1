//! The foundation: exact totals, deduplication, dead letters, region
//! fallback and catching up after downtime, each end to end.

use std::collections::BTreeMap;

use cctv_bus::headers;
use cctv_store::TotalsRow;
use futures::StreamExt;

use crate::harness::{canonical, recent_time, Stack};

/// Every canonical code of the taxonomy.
fn offence_codes() -> Vec<String> {
    cctv_event::Taxonomy::builtin()
        .unwrap()
        .offences()
        .iter()
        .map(|offence| offence.code.clone())
        .collect()
}

fn as_map(rows: &[TotalsRow]) -> BTreeMap<(String, String), u64> {
    rows.iter()
        .map(|row| ((row.region.clone(), row.offence_type.clone()), row.events))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_totals_for_20000_events_over_all_regions_and_types() {
    let stack = Stack::start().await;
    let ingest = stack.start_ingest();
    let aggregator = stack.start_aggregator();
    let codes = offence_codes();
    let regions: Vec<String> = stack.regions.all().iter().map(|r| r.code.clone()).collect();
    let mut expected: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut messages = Vec::with_capacity(20_000);
    for n in 0..20_000usize {
        // Uneven spread: region by a stride, type by another, camera 1 or 2.
        let region = &regions[(n * 7) % regions.len()];
        let code = &codes[(n * 13 + n / 97) % codes.len()];
        let camera = format!("CAM-{}-{}", region.trim_start_matches("KZ-"), 1 + n % 2);
        let payload = canonical(
            &camera,
            code,
            &recent_time((n % 3000) as i64),
            &format!(r#","source_event_id":"e{n}""#),
        );
        messages.push((format!("m{n}"), payload));
        *expected.entry((region.clone(), code.clone())).or_default() += 1;
    }
    stack.publish_many("gw-load", messages).await;
    let totals = stack.wait_for_rows(20_000).await;
    assert_eq!(as_map(&totals), expected);
    assert_eq!(
        expected
            .keys()
            .map(|(r, _)| r)
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        20
    );
    assert_eq!(
        expected
            .keys()
            .map(|(_, t)| t)
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        20
    );

    // The contract's own query over offence_totals gives the same numbers.
    let store = stack.store();
    let contract_rows: Vec<TotalsRow> = store
        .client()
        .query("SELECT region, offence_type, toUInt64(sum(events)) AS events FROM offence_totals GROUP BY region, offence_type")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(as_map(&contract_rows), expected);

    let snapshot = ingest.stats.snapshot();
    assert_eq!(snapshot.published, 20_000);
    assert_eq!(snapshot.handled(), 20_000);
    ingest.stop().await;
    aggregator.stop().await;
    assert_eq!(
        store.count_events().await.unwrap(),
        20_000,
        "no row was added at shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_published_twice_is_counted_once() {
    let stack = Stack::start().await;
    let ingest = stack.start_ingest();
    let aggregator = stack.start_aggregator();
    let time = recent_time(0);

    // 1. The same message twice with the same Nats-Msg-Id: dropped by CCTV_RAW.
    let payload = canonical(
        "CAM-75-1",
        "traffic.speeding",
        &time,
        r#","source_event_id":"a1""#,
    );
    for _ in 0..2 {
        stack
            .publish_raw(
                "canonical",
                "gw-a",
                &[(headers::NATS_MSG_ID, "gw-a-1")],
                payload.clone(),
            )
            .await;
    }
    // 2. The same event_id from two different gateways, different message ids.
    let with_id = canonical(
        "CAM-71-1",
        "traffic.red_light",
        &time,
        r#","event_id":"7c1e2f40-5a9b-4f7e-9d61-0b3c2a4e8f11""#,
    );
    stack
        .publish_raw(
            "canonical",
            "gw-a",
            &[(headers::NATS_MSG_ID, "gw-a-2")],
            with_id.clone(),
        )
        .await;
    stack
        .publish_raw(
            "canonical",
            "gw-b",
            &[(headers::NATS_MSG_ID, "gw-b-9")],
            with_id,
        )
        .await;
    // 3. A republish without any message id: the derived event id repeats.
    let bare = canonical("CAM-79-2", "public_order.littering", &time, "");
    stack
        .publish_raw("canonical", "gw-c", &[], bare.clone())
        .await;
    stack.publish_raw("canonical", "gw-c", &[], bare).await;

    // Raw stream: 1 (deduplicated) + 2 + 2 messages reach the ingest service.
    stack.wait_for_ingest(&ingest.stats, 5).await;
    let totals = stack.wait_for_rows(3).await;
    let expected: BTreeMap<(String, String), u64> = [
        (("KZ-75".to_string(), "traffic.speeding".to_string()), 1),
        (("KZ-71".to_string(), "traffic.red_light".to_string()), 1),
        (
            ("KZ-79".to_string(), "public_order.littering".to_string()),
            1,
        ),
    ]
    .into_iter()
    .collect();
    assert_eq!(as_map(&totals), expected);
    let snapshot = ingest.stats.snapshot();
    assert_eq!(
        (snapshot.published, snapshot.events),
        (5, 5),
        "{snapshot:?}"
    );
    // The two repeats reach the partition owners and are dropped there.
    stack.wait_for_aggregated(&[&aggregator.stats], 5).await;
    let aggregated = aggregator.stats.snapshot();
    assert_eq!(
        (aggregated.rows_written, aggregated.duplicates),
        (3, 2),
        "{aggregated:?}"
    );
    ingest.stop().await;
    aggregator.stop().await;
    assert_eq!(stack.store().count_events().await.unwrap(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_are_dead_lettered_with_their_reason_and_never_counted() {
    let stack = Stack::start().await;
    let ingest = stack.start_ingest();
    let aggregator = stack.start_aggregator();
    let time = recent_time(0);
    let oversized = canonical(
        "CAM-75-1",
        "traffic.speeding",
        &time,
        &format!(r#","pad":"{}""#, "x".repeat(300 * 1024)),
    );
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("malformed", b"{\"camera_id\": \"CAM-75-1\", ".to_vec()),
        (
            "missing_field",
            canonical("CAM-75-1", "traffic.speeding", "", "").replace_detected_at(),
        ),
        (
            "unknown_offence",
            canonical("CAM-75-1", "jaywalking.on_mars", &time, ""),
        ),
        ("payload_too_large", oversized),
    ];
    for (index, (_, payload)) in cases.iter().enumerate() {
        let id = format!("bad-{index}");
        stack
            .publish_raw(
                "canonical",
                "gw-bad",
                &[(headers::NATS_MSG_ID, id.as_str())],
                payload.clone(),
            )
            .await;
    }
    // One good message alongside, which must be the only one counted.
    stack
        .publish_raw(
            "canonical",
            "gw-bad",
            &[],
            canonical("CAM-75-2", "traffic.speeding", &time, ""),
        )
        .await;
    stack.wait_for_ingest(&ingest.stats, 5).await;
    let totals = stack.wait_for_rows(1).await;
    assert_eq!(totals.iter().map(|r| r.events).sum::<u64>(), 1);
    assert_eq!(ingest.stats.snapshot().dead_lettered, 4);

    // Read the dead letters back: each carries its reason, the error text,
    // the source subject and the original payload.
    let mut dlq = stack.js.get_stream("CCTV_DLQ").await.unwrap();
    assert_eq!(dlq.info().await.unwrap().state.messages, 4);
    let consumer = dlq
        .create_consumer(async_nats::jetstream::consumer::pull::Config::default())
        .await
        .unwrap();
    let mut messages = consumer.fetch().max_messages(10).messages().await.unwrap();
    let mut seen = BTreeMap::new();
    while let Some(message) = messages.next().await {
        let message = message.unwrap();
        let headers = message.headers.clone().unwrap();
        let reason = headers.get(headers::ERROR_REASON).unwrap().to_string();
        assert!(!headers.get(headers::ERROR).unwrap().as_str().is_empty());
        assert_eq!(
            headers.get(headers::SOURCE_SUBJECT).unwrap().as_str(),
            "cctv.raw.canonical.gw-bad"
        );
        assert!(message.subject.as_str().starts_with("cctv.dlq.canonical."));
        seen.insert(reason, message.payload.to_vec());
    }
    for (reason, payload) in &cases {
        assert_eq!(seen.get(*reason), Some(payload), "dead letter for {reason}");
    }
    ingest.stop().await;
    aggregator.stop().await;
    assert_eq!(stack.store().count_events().await.unwrap(), 1);
}

/// Removes `detected_at` from a canonical payload built by the harness.
trait WithoutTime {
    fn replace_detected_at(self) -> Vec<u8>;
}

impl WithoutTime for Vec<u8> {
    fn replace_detected_at(self) -> Vec<u8> {
        String::from_utf8(self)
            .unwrap()
            .replace(r#","detected_at":"""#, "")
            .into_bytes()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_cameras_fall_back_to_the_payload_region_or_unknown() {
    let stack = Stack::start().await;
    let ingest = stack.start_ingest();
    let aggregator = stack.start_aggregator();
    let time = recent_time(0);
    // Registered camera: the registry wins over a contradicting payload region.
    stack
        .publish_raw(
            "canonical",
            "gw",
            &[],
            canonical(
                "CAM-75-1",
                "traffic.speeding",
                &time,
                r#","region":"KZ-71""#,
            ),
        )
        .await;
    // Unknown camera with an old letter code: stored as the numeric code.
    stack
        .publish_raw(
            "canonical",
            "gw",
            &[],
            canonical("NEW-1", "traffic.speeding", &time, r#","region":"KZ-SHY""#),
        )
        .await;
    // Unknown camera with an invalid region, and with none.
    stack
        .publish_raw(
            "canonical",
            "gw",
            &[],
            canonical("NEW-2", "traffic.speeding", &time, r#","region":"KZ-00""#),
        )
        .await;
    stack
        .publish_raw(
            "canonical",
            "gw",
            &[],
            canonical("NEW-3", "traffic.speeding", &time, ""),
        )
        .await;
    // The Cctv-Camera-Id header names a registered camera: it wins.
    stack
        .publish_raw(
            "canonical",
            "gw",
            &[(headers::CAMERA_ID, "CAM-10-2")],
            canonical("WHATEVER", "traffic.speeding", &time, ""),
        )
        .await;
    let totals = stack.wait_for_rows(5).await;
    let expected: BTreeMap<(String, String), u64> = [
        (("KZ-75".to_string(), "traffic.speeding".to_string()), 1),
        (("KZ-79".to_string(), "traffic.speeding".to_string()), 1),
        (("unknown".to_string(), "traffic.speeding".to_string()), 2),
        (("KZ-10".to_string(), "traffic.speeding".to_string()), 1),
    ]
    .into_iter()
    .collect();
    assert_eq!(as_map(&totals), expected);
    let sources: Vec<(String, String)> = stack
        .store()
        .client()
        .query("SELECT camera_id, region_source FROM offence_events ORDER BY camera_id")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(
        sources,
        vec![
            ("CAM-10-2".to_string(), "registry".to_string()),
            ("CAM-75-1".to_string(), "registry".to_string()),
            ("NEW-1".to_string(), "payload".to_string()),
            ("NEW-2".to_string(), "unknown".to_string()),
            ("NEW-3".to_string(), "unknown".to_string()),
        ]
    );
    ingest.stop().await;
    aggregator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_published_while_ingest_was_down_are_counted_after_it_starts() {
    let stack = Stack::start().await;
    let aggregator = stack.start_aggregator();
    // A first ingest instance runs and stops: its durable consumer remains.
    let ingest = stack.start_ingest();
    stack
        .publish_raw(
            "canonical",
            "gw",
            &[],
            canonical("CAM-75-1", "traffic.speeding", &recent_time(0), ""),
        )
        .await;
    stack.wait_for_ingest(&ingest.stats, 1).await;
    ingest.stop().await;
    stack.wait_for_rows(1).await;

    let messages: Vec<(String, Vec<u8>)> = (0..500)
        .map(|n| {
            let payload = canonical(
                "CAM-71-1",
                "traffic.red_light",
                &recent_time(n),
                &format!(r#","source_event_id":"d{n}""#),
            );
            (format!("down-{n}"), payload)
        })
        .collect();
    stack.publish_many("gw", messages).await;
    // With the ingest stopped nothing can reach the events stream: the 500
    // wait in the raw stream.
    assert_eq!(
        stack.stream_messages("CCTV_EVENTS").await,
        1,
        "nothing is turned into events while ingest is down"
    );
    assert_eq!(stack.stream_messages("CCTV_RAW").await, 501);
    assert_eq!(stack.store().count_events().await.unwrap(), 1);

    let ingest = stack.start_ingest();
    let totals = stack.wait_for_rows(501).await;
    let map = as_map(&totals);
    assert_eq!(
        map.get(&("KZ-71".to_string(), "traffic.red_light".to_string())),
        Some(&500)
    );
    assert_eq!(map.values().sum::<u64>(), 501);
    ingest.stop().await;
    aggregator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregator_restart_neither_loses_nor_doubles_rows() {
    let stack = Stack::start().await;
    let ingest = stack.start_ingest();
    let first = stack.start_aggregator();
    let batch = |from: i64, to: i64| -> Vec<(String, Vec<u8>)> {
        (from..to)
            .map(|n| {
                let payload = canonical(
                    "CAM-47-2",
                    "traffic.wrong_way",
                    &recent_time(n),
                    &format!(r#","source_event_id":"r{n}""#),
                );
                (format!("restart-{n}"), payload)
            })
            .collect()
    };
    stack.publish_many("gw", batch(0, 3000)).await;
    stack.wait_for_rows(3000).await;
    // An abrupt stop: no flush, no final ack.
    first.abort();
    stack.publish_many("gw", batch(3000, 6000)).await;
    stack.wait_for_ingest(&ingest.stats, 6000).await;
    let second = stack.start_aggregator();
    let totals = stack.wait_for_rows(6000).await;
    assert_eq!(totals.iter().map(|r| r.events).sum::<u64>(), 6000);
    second.stop().await;
    ingest.stop().await;
    let duplicates: u64 = stack
        .store()
        .client()
        .query("SELECT count() - uniqExact(event_id) FROM offence_events")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(duplicates, 0);
    assert_eq!(stack.store().count_events().await.unwrap(), 6000);
}
