//! A mixed fleet end to end: every vendor format at once, with lifecycle
//! repeats, heartbeats, plate reads, unmapped rules, false positives and
//! broken messages, as `cctvctl simulate --format mixed` publishes them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use cctv_cli::CliConfig;
use cctv_simulate::{Expectation, FormatChoice, SimulateArgs};
use cctv_store::TotalsFilter;

use crate::harness::Stack;

fn demo_registry() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/cameras.csv")
}

/// At least 50,000 mixed-format raw messages: the totals in ClickHouse equal
/// what the simulator expected, and the ingest service accounts for every
/// raw message as counted, duplicate, ignored or dead-lettered, each exactly
/// as many as the simulator generated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_vendor_fleet_is_counted_exactly_and_every_message_accounted_for() {
    let stack = Stack::start().await;
    let mut ingest_config = stack.ingest_config();
    ingest_config.data.registry_path = Some(demo_registry());
    let ingest = stack.start_ingest_with(ingest_config);
    let aggregator = stack.start_aggregator();

    let expect_file = tempfile::NamedTempFile::new().unwrap();
    let cli_config = CliConfig {
        nats: stack.nats_config(),
        clickhouse: stack.clickhouse_config(),
        ..CliConfig::default()
    };
    let args = SimulateArgs {
        count: 30_000,
        rate: 0.0,
        registry: Some(demo_registry()),
        cameras: None,
        unknown_share: 0.02,
        gateways: 8,
        run_id: Some("mixed1".into()),
        day: None,
        seed: Some(20_261_128),
        expect_out: Some(expect_file.path().to_path_buf()),
        duplicates: 0.01,
        format: FormatChoice::Mixed,
        noise: 0.1,
        malformed: 0.01,
        quiet: true,
        batch: 0,
        pregenerate: false,
    };
    cctv_cli::run_simulate(&cli_config, &args).await.unwrap();
    let expectation = Expectation::load(expect_file.path()).unwrap();
    let raw = expectation
        .raw
        .expect("the simulator states the raw outcomes");
    assert!(
        raw.published >= 50_000,
        "only {} raw messages",
        raw.published
    );
    assert_eq!(raw.counted, 30_000);
    assert_eq!(
        raw.counted + raw.duplicate + raw.ignored + raw.dead_lettered,
        raw.published
    );
    assert!(raw.duplicate > 0 && raw.ignored > 0 && raw.dead_lettered > 0);

    // Every distinct raw message reached the stream (exact republished copies
    // were dropped there) and the ingest service gave each its outcome.
    assert_eq!(stack.stream_messages("CCTV_RAW").await, raw.published);
    stack.wait_for_ingest(&ingest.stats, raw.published).await;
    let totals = stack.wait_for_rows(expectation.count).await;
    let snapshot = ingest.stats.snapshot();
    assert_eq!(
        (snapshot.published, snapshot.ignored, snapshot.dead_lettered),
        (raw.counted + raw.duplicate, raw.ignored, raw.dead_lettered),
        "ingest outcomes {snapshot:?} differ from the simulator's {raw:?}"
    );
    // Every published event reaches its partition's owner, which writes the
    // new ones and drops the repeats.
    stack
        .wait_for_aggregated(&[&aggregator.stats], snapshot.events)
        .await;
    let aggregated = aggregator.stats.snapshot();
    assert_eq!(aggregated.rows_written, expectation.count, "{aggregated:?}");
    assert_eq!(
        aggregated.rows_written + aggregated.duplicates,
        snapshot.events,
        "{aggregated:?}"
    );
    assert_eq!(stack.stream_messages("CCTV_DLQ").await, raw.dead_lettered);

    let as_map = |rows: &[cctv_store::TotalsRow]| -> BTreeMap<(String, String), u64> {
        rows.iter()
            .map(|row| ((row.region.clone(), row.offence_type.clone()), row.events))
            .collect()
    };
    assert_eq!(as_map(&totals), as_map(&expectation.totals));
    // Every format reached ClickHouse.
    let store = stack.store();
    let formats: Vec<(String, u64)> = store
        .client()
        .query("SELECT source_format, count() FROM offence_events GROUP BY source_format ORDER BY source_format")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(
        formats.iter().map(|(f, _)| f.as_str()).collect::<Vec<_>>(),
        [
            "canonical",
            "dahua",
            "deepstream",
            "frigate",
            "hikvision",
            "onvif"
        ]
    );
    let filtered = store
        .totals(&TotalsFilter {
            gateway_prefix: Some(expectation.gateway_prefix.clone()),
            ..TotalsFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(as_map(&filtered), as_map(&expectation.totals));

    ingest.stop().await;
    aggregator.stop().await;
}

/// A Frigate track: `new`, `update` and `end` of one object id.
fn frigate_message(kind: &str, track_id: &str, start_time: f64) -> Vec<u8> {
    let object = serde_json::json!({
        "id": track_id, "camera": "yard_east", "label": "person", "score": 0.8,
        "top_score": 0.8, "false_positive": false, "start_time": start_time,
        "end_time": null, "current_zones": ["dumping_site"], "entered_zones": ["dumping_site"]
    });
    serde_json::to_vec(&serde_json::json!({"type": kind, "before": object, "after": object}))
        .unwrap()
}

/// The same vendor identity counts once across an ingest restart, a NATS
/// restart and two ingest instances sharing the work: the
/// seen-set of the partition's owner is rebuilt from ClickHouse after a
/// restart, whatever instance of the ingest published the repeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vendor_identity_counts_once_across_restarts_and_instances() {
    let mut stack = Stack::start().await;
    let start_time =
        (chrono::Utc::now() - chrono::TimeDelta::minutes(30)).timestamp_millis() as f64 / 1000.0;
    let first = stack.start_ingest();
    let aggregator = stack.start_aggregator();
    stack
        .publish_raw(
            "frigate",
            "gw-yard",
            &[],
            frigate_message("new", "track-a", start_time),
        )
        .await;
    stack.wait_for_rows(1).await;
    first.stop().await;
    aggregator.stop().await;

    stack
        .nats
        .restart()
        .expect("nats-server restarts on its file storage");
    // Two instances share the raw consumer from now on.
    let second = stack.start_ingest();
    let third = stack.start_ingest();
    let aggregator = stack.start_aggregator();
    stack
        .publish_raw(
            "frigate",
            "gw-yard",
            &[],
            frigate_message("update", "track-a", start_time),
        )
        .await;
    stack
        .publish_raw(
            "frigate",
            "gw-yard",
            &[],
            frigate_message("end", "track-a", start_time),
        )
        .await;
    // A new track afterwards: once it is counted, everything before it was handled.
    stack
        .publish_raw(
            "frigate",
            "gw-yard",
            &[],
            frigate_message("new", "track-b", start_time + 5.0),
        )
        .await;
    stack.wait_for_rows(2).await;
    let (second_ref, third_ref) = (&second, &third);
    cctv_testkit::poll(
        "raw messages handled by the ingests",
        crate::harness::DRAIN_TIMEOUT,
        std::time::Duration::from_millis(100),
        || async move {
            let handled =
                second_ref.stats.snapshot().handled() + third_ref.stats.snapshot().handled();
            if handled >= 3 {
                Ok(())
            } else {
                Err(format!("{handled} of 3"))
            }
        },
    )
    .await;
    let (second_stats, third_stats) = (second.stats.snapshot(), third.stats.snapshot());
    assert_eq!(
        second_stats.published + third_stats.published,
        3,
        "{second_stats:?} {third_stats:?}"
    );
    // The restarted aggregator rebuilt the seen-set from ClickHouse.
    stack.wait_for_aggregated(&[&aggregator.stats], 3).await;
    let aggregated = aggregator.stats.snapshot();
    assert_eq!(
        (aggregated.rows_written, aggregated.duplicates),
        (1, 2),
        "track-a counted once before, its update and end dropped now: {aggregated:?}"
    );
    let store = stack.store();
    let ids: Vec<(String, u64)> = store
        .client()
        .query("SELECT source_event_id, count() FROM offence_events GROUP BY source_event_id ORDER BY source_event_id")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(
        ids,
        [("track-a".to_string(), 1), ("track-b".to_string(), 1)]
    );
    second.stop().await;
    third.stop().await;
    aggregator.stop().await;
}

/// Canonical body of test event `n` on a registered camera.
fn batch_event(n: u32, time: &str) -> Vec<u8> {
    crate::harness::canonical(
        "CAM-75-1",
        "traffic.speeding",
        time,
        &format!(r#","source_event_id":"batch-{n}""#),
    )
}

/// A gateway batch mixing three offences, a repeat of one of them under
/// another message id, a heartbeat and a broken item: each item has the
/// outcome it would have alone (counted, duplicate, ignored, dead-lettered);
/// a batch that is not a batch is dead-lettered whole; the same batch
/// published again (another `Nats-Msg-Id`) counts nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_batch_gives_each_item_its_own_outcome_and_a_repeat_counts_nothing() {
    use cctv_bus::headers;
    use cctv_normalize::BatchBuilder;

    let stack = Stack::start().await;
    let ingest = stack.start_ingest();
    let aggregator = stack.start_aggregator();
    let time = crate::harness::recent_time(0);
    let heartbeat = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../crates/cctv-normalize/fixtures/hikvision/heartbeat_videoloss.xml"),
    )
    .unwrap();

    let mut builder = BatchBuilder::new("gw-mixed");
    for n in 0..3 {
        builder.push(
            "canonical",
            &format!("item-{n}"),
            Some(&time),
            None,
            &batch_event(n, &time),
        );
    }
    // The same offence as item 0, sent again by the gateway under a new id.
    builder.push(
        "canonical",
        "item-3",
        Some(&time),
        None,
        &batch_event(0, &time),
    );
    builder.push(
        "hikvision",
        "item-4",
        Some(&time),
        Some("CAM-75-1"),
        &heartbeat,
    );
    let mut batch = builder.finish();
    // A broken item: a CloudEvent without type, source or id.
    batch.pop();
    batch.extend_from_slice(br#",{"specversion":"1.0"}]"#);

    let subject = cctv_bus::subjects::raw(cctv_bus::subjects::BATCH_FORMAT, "gw-mixed");
    let publish = |msg_id: &'static str, payload: Vec<u8>| {
        let (js, subject) = (stack.js.clone(), subject.clone());
        async move {
            let mut map = async_nats::HeaderMap::new();
            map.insert(headers::NATS_MSG_ID, msg_id);
            js.publish_with_headers(subject, map, payload.into())
                .await
                .expect("publish batch")
                .await
                .expect("batch acknowledged");
        }
    };
    publish("batch-1", batch.clone()).await;
    stack.wait_for_ingest(&ingest.stats, 6).await;
    let totals = stack.wait_for_rows(3).await;
    let snapshot = ingest.stats.snapshot();
    assert_eq!(
        (
            snapshot.published,
            snapshot.ignored,
            snapshot.dead_lettered,
            snapshot.events
        ),
        (4, 1, 1, 4),
        "{snapshot:?}"
    );
    stack.wait_for_aggregated(&[&aggregator.stats], 4).await;
    let aggregated = aggregator.stats.snapshot();
    assert_eq!(
        (aggregated.rows_written, aggregated.duplicates),
        (3, 1),
        "{aggregated:?}"
    );
    assert_eq!(totals.iter().map(|row| row.events).sum::<u64>(), 3);

    // Not an array: the whole batch is one dead letter.
    publish("batch-2", br#"{"specversion":"1.0"}"#.to_vec()).await;
    // The first batch again under another message id.
    publish("batch-3", batch).await;
    stack.wait_for_ingest(&ingest.stats, 13).await;
    let snapshot = ingest.stats.snapshot();
    assert_eq!(
        (snapshot.published, snapshot.ignored, snapshot.dead_lettered),
        (8, 2, 3),
        "{snapshot:?}"
    );
    stack.wait_for_aggregated(&[&aggregator.stats], 8).await;
    let aggregated = aggregator.stats.snapshot();
    assert_eq!(
        (aggregated.rows_written, aggregated.duplicates),
        (3, 5),
        "the repeated batch counted again: {aggregated:?}"
    );
    assert_eq!(stack.store().count_events().await.unwrap(), 3);
    assert_eq!(stack.stream_messages("CCTV_DLQ").await, 3);

    ingest.stop().await;
    aggregator.stop().await;
}
