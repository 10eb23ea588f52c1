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
            snapshot.counted,
            snapshot.duplicate,
            snapshot.ignored,
            snapshot.dead_lettered
        ),
        (raw.counted, raw.duplicate, raw.ignored, raw.dead_lettered),
        "ingest outcomes {snapshot:?} differ from the simulator's {raw:?}"
    );
    assert_eq!(snapshot.events_new, expectation.count);
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
