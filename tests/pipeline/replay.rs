//! Dead-letter replay (`cctvctl dlq replay`): offences dead-lettered as
//! `unknown_offence` (single messages and a gateway batch's item), replayed
//! once too early (dead-lettered again: two dead letters each), the missing
//! alias added to the taxonomy, the ingest restarted with it, and the replay
//! run again, twice: each offence is counted once.
//!
//! The offences carry no id of their own, so their identity is their message
//! id: only if a replay keeps the original's id (`Cctv-Original-Msg-Id`) do the
//! two dead letters of one offence make one event.

use std::collections::BTreeMap;
use std::time::Duration;

use cctv_bus::headers;
use cctv_cli::{CliConfig, DlqCommand, DlqReplayArgs};
use cctv_normalize::BatchBuilder;

use crate::harness::{canonical, recent_time, Stack};

/// The offence name no taxonomy knows until the test adds it.
const UNKNOWN: &str = "teleporting_through_junction";

/// Counted rows per offence type.
async fn counted_by_type(stack: &Stack) -> BTreeMap<String, u64> {
    let mut by_type = BTreeMap::new();
    for row in stack
        .store()
        .totals(&cctv_store::TotalsFilter::default())
        .await
        .expect("totals")
    {
        *by_type.entry(row.offence_type).or_insert(0) += row.events;
    }
    by_type
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_replayed_after_an_alias_is_added_count_once_however_often() {
    let stack = Stack::start().await;
    let ingest = stack.start_ingest();
    let aggregator = stack.start_aggregator();

    // Three single messages and one batch item with an unknown offence name,
    // and one known offence of each kind beside them. No `source_event_id`:
    // each offence is known by its message id.
    let time = recent_time(0);
    let offence = |n: u32, code: &str| canonical(&format!("CAM-75-{}", 1 + n % 2), code, &time, "");
    let mut singles = Vec::new();
    for n in 0..3 {
        singles.push((format!("single-{n}"), offence(n, UNKNOWN)));
    }
    singles.push(("single-known".to_string(), offence(10, "traffic.speeding")));
    stack.publish_many("gw-replay", singles).await;
    let mut builder = BatchBuilder::new("gw-replay");
    builder.push(
        "canonical",
        "item-unknown",
        Some(&time),
        Some("CAM-71-1"),
        &offence(20, UNKNOWN),
    );
    builder.push(
        "canonical",
        "item-known",
        Some(&time),
        None,
        &offence(21, "traffic.red_light"),
    );
    let mut map = async_nats::HeaderMap::new();
    map.insert(headers::NATS_MSG_ID, "batch-replay-1");
    stack
        .js
        .publish_with_headers(
            cctv_bus::subjects::raw(cctv_bus::subjects::BATCH_FORMAT, "gw-replay"),
            map,
            builder.finish().into(),
        )
        .await
        .expect("publish batch")
        .await
        .expect("batch stored");
    stack.wait_for_ingest(&ingest.stats, 6).await;
    stack.wait_for_rows(2).await;
    assert_eq!(ingest.stats.snapshot().dead_lettered, 4);
    assert_eq!(stack.stream_messages("CCTV_DLQ").await, 4);

    let cli = CliConfig {
        nats: stack.nats_config(),
        clickhouse: stack.clickhouse_config(),
        ..CliConfig::default()
    };
    let replay = DlqCommand::Replay(DlqReplayArgs {
        reason: "unknown_offence".into(),
        since: Some("1h".into()),
        dry_run: false,
    });
    // A dry run publishes nothing.
    let dry = DlqCommand::Replay(DlqReplayArgs {
        reason: "unknown_offence".into(),
        since: None,
        dry_run: true,
    });
    cctv_cli::run_dlq(&cli, &dry).await.expect("dry run");
    assert_eq!(stack.stream_messages("CCTV_RAW").await, 5);

    // Too early: the alias is not there yet, so each is dead-lettered again.
    cctv_cli::run_dlq(&cli, &replay)
        .await
        .expect("early replay");
    assert_eq!(stack.stream_messages("CCTV_RAW").await, 9, "four replayed");
    stack.wait_for_ingest(&ingest.stats, 10).await;
    assert_eq!(stack.stream_messages("CCTV_DLQ").await, 8);
    ingest.stop().await;

    // The alias, added to a copy of the taxonomy; the ingest restarted with it.
    let taxonomy = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/taxonomy.toml"),
    )
    .expect("taxonomy");
    let with_alias = taxonomy.replacen(
        r#"aliases = ["speeding", "#,
        &format!(r#"aliases = ["{UNKNOWN}", "speeding", "#),
        1,
    );
    assert_ne!(with_alias, taxonomy, "the alias went in");
    let taxonomy_file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(taxonomy_file.path(), with_alias).expect("write taxonomy");
    let mut config = stack.ingest_config();
    config.data.taxonomy_path = Some(taxonomy_file.path().to_path_buf());
    let ingest = stack.start_ingest_with(config);

    // Each offence has two dead letters now; both are replayed. The first
    // four carry the replay ids of the early replay and the raw stream drops
    // them as repeats; the other four pass, and each offence is counted once.
    cctv_cli::run_dlq(&cli, &replay).await.expect("replay");
    assert_eq!(
        stack.stream_messages("CCTV_RAW").await,
        13,
        "four more replayed"
    );
    stack.wait_for_ingest(&ingest.stats, 4).await;
    stack.wait_for_rows(6).await;

    // Again: within the raw stream's duplicate window the repeats are
    // dropped by the stream itself (same replay ids); past it, here made one
    // second, their events are the same events and the partition owners
    // drop them. Nothing more is counted, nothing dead-lettered again.
    cctv_cli::run_dlq(&cli, &replay)
        .await
        .expect("replay again");
    assert_eq!(
        stack.stream_messages("CCTV_RAW").await,
        13,
        "dropped as repeats"
    );
    // The ingest set the stream up at its start; from now on, one second.
    let mut raw_config = stack
        .js
        .get_stream("CCTV_RAW")
        .await
        .expect("raw stream")
        .info()
        .await
        .expect("raw stream info")
        .config
        .clone();
    raw_config.duplicate_window = Duration::from_secs(1);
    stack
        .js
        .update_stream(raw_config)
        .await
        .expect("shorter window");
    cctv_testkit::poll(
        "a replay past the duplicate window",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || async {
            let raw = stack.stream_messages("CCTV_RAW").await;
            if raw >= 21 {
                return Ok(());
            }
            cctv_cli::run_dlq(&cli, &replay)
                .await
                .map_err(|error| error.to_string())?;
            Err(format!("{raw} raw messages"))
        },
    )
    .await;
    assert_eq!(
        stack.stream_messages("CCTV_RAW").await,
        21,
        "one more replay passed"
    );
    stack.wait_for_ingest(&ingest.stats, 12).await;
    // Written 2 + 4; the other 8 replayed events dropped as repeats (at
    // least: the ingest publishes at least once).
    stack.wait_for_aggregated(&[&aggregator.stats], 14).await;
    assert_eq!(stack.stream_messages("CCTV_DLQ").await, 8);
    let store = stack.store();
    crate::harness::wait_for_store_rows(&store, 6, String::new).await;
    // Stop both so that anything still in flight is written before counting.
    ingest.stop().await;
    aggregator.stop().await;
    let by_type = counted_by_type(&stack).await;
    assert_eq!(by_type.get("traffic.speeding"), Some(&5), "{by_type:?}");
    assert_eq!(by_type.get("traffic.red_light"), Some(&1), "{by_type:?}");
    assert_eq!(store.count_events().await.expect("count"), 6);
    // The batch item went back to its camera (its CloudEvents subject).
    let cameras: u64 = store
        .client()
        .query("SELECT count() FROM offence_events WHERE camera_id = 'CAM-71-1'")
        .fetch_one()
        .await
        .expect("camera count");
    assert_eq!(cameras, 1);
}
