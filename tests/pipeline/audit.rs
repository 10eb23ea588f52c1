//! `cctvctl audit` against a real pipeline: clean after a normal run, then
//! rows duplicated and deleted by hand in ClickHouse are reported with their
//! exact sequence ranges.

use std::time::Duration;

use cctv_bus::StreamsConfig;
use cctv_cli::{audit_pipeline, render_audit, CliConfig, SequenceRanges};

use crate::harness::{canonical, recent_time, Stack};

const EVENTS: i64 = 3000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_is_clean_after_a_run_and_names_doubled_and_missing_ranges() {
    let stack = Stack::start().await;
    let ingest = stack.start_ingest();
    let aggregator = stack.start_aggregator();
    let messages = (0..EVENTS)
        .map(|n| {
            let camera = format!("CAM-{}-1", ["75", "71", "79"][(n % 3) as usize]);
            let payload = canonical(
                &camera,
                "traffic.speeding",
                &recent_time(n),
                &format!(r#","source_event_id":"a{n}""#),
            );
            (format!("audit-{n}"), payload)
        })
        .collect();
    stack.publish_many("gw-audit", messages).await;
    stack.wait_for_rows(EVENTS as u64).await;
    ingest.stop().await;
    aggregator.stop().await;

    let config = CliConfig {
        nats: stack.nats_config(),
        streams: StreamsConfig::default(),
        clickhouse: stack.clickhouse_config(),
    };
    let report = audit_pipeline(&config).await.unwrap();
    assert!(report.is_clean(), "{}", render_audit(&report));
    assert_eq!(report.streams.len(), 1);
    let extent = report.streams[0].stream.expect("stream extent");
    assert_eq!((extent.first_seq, extent.last_seq), (1, EVENTS as u64));
    assert_eq!(report.streams[0].rows, EVENTS as u64);

    // Sequences 100..=104 stored twice (a replayed insert).
    let client = stack.store().client().clone();
    client
        .query("INSERT INTO offence_events SELECT * FROM offence_events WHERE stream_seq >= 100 AND stream_seq <= 104")
        .execute()
        .await
        .unwrap();
    let report = audit_pipeline(&config).await.unwrap();
    let audit = &report.streams[0];
    assert!(!report.is_clean());
    assert_eq!(audit.doubled, SequenceRanges::from_range(100, 104));
    assert_eq!(audit.extra_rows, 5);
    assert_eq!(audit.doubled_event_ids, 5);
    assert!(audit.missing.is_empty(), "{}", render_audit(&report));

    // Sequences 200..=209 and 2999 deleted (a lost insert). Mutations apply
    // asynchronously: poll until the audit sees them.
    client
        .query("ALTER TABLE offence_events DELETE WHERE (stream_seq >= 200 AND stream_seq <= 209) OR stream_seq = 2999")
        .execute()
        .await
        .unwrap();
    let mut expected = SequenceRanges::from_range(200, 209);
    expected.push(2999);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let report = audit_pipeline(&config).await.unwrap();
        if report.streams[0].missing == expected {
            assert_eq!(
                report.streams[0].doubled,
                SequenceRanges::from_range(100, 104)
            );
            let text = render_audit(&report);
            assert!(
                text.contains("missing in ClickHouse: 11 sequences: 200-209, 2999"),
                "{text}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the audit never reported the deleted rows:\n{}",
            render_audit(&report)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
