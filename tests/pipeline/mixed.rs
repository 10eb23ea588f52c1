//! A mixed fleet end to end: every vendor format at once, with lifecycle
//! repeats, heartbeats, plate reads, unmapped rules, false positives and
//! broken messages, as `cctvctl simulate --format mixed` publishes them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use cctv_cli::{CliConfig, Expectation, FormatChoice, SimulateArgs};
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
        (
            snapshot.published,
            snapshot.ignored,
            snapshot.dead_lettered
        ),
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
    let deadline = tokio::time::Instant::now() + crate::harness::DRAIN_TIMEOUT;
    loop {
        let handled = second.stats.snapshot().handled() + third.stats.snapshot().handled();
        if handled >= 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ingest handled {handled} of 3"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
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
