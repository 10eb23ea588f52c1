//! `cctvctl audit` against a real pipeline: clean after a normal run, then
//! rows duplicated and deleted by hand in ClickHouse are reported, named by
//! the sequences of the event batches that carried them.

use std::process::Command;
use std::time::Duration;

use cctv_bus::StreamsConfig;
use cctv_cli::{
    audit_pipeline, audit_pipeline_in_rounds, render_audit, AuditReport, CliConfig, SequenceRanges,
};

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
    assert_eq!(report.id_rounds, 1);
    in_rounds_alike(&config, &report).await;
    progress_only_on_a_terminal(&config);
    let messages = stack.stream_messages("CCTV_EVENTS").await;
    let extent = report.streams[0].stream.expect("stream extent");
    assert_eq!((extent.first_seq, extent.last_seq), (1, messages));
    assert_eq!(report.streams[0].rows, EVENTS as u64);
    assert_eq!(report.streams[0].events_in_stream, EVENTS as u64);

    // The sequences of the event batches that carried some events.
    let client = stack.store().client().clone();
    let sequences_of = |ids: Vec<String>| {
        let client = client.clone();
        async move {
            let mut sequences: Vec<u64> = client
                .query(
                    "SELECT DISTINCT stream_seq FROM offence_events WHERE has(?, source_event_id)",
                )
                .bind(ids)
                .fetch_all()
                .await
                .unwrap();
            sequences.sort_unstable();
            let mut ranges = SequenceRanges::new();
            for sequence in sequences {
                ranges.push(sequence);
            }
            ranges
        }
    };
    let names = |range: std::ops::RangeInclusive<i64>| -> Vec<String> {
        range.map(|n| format!("a{n}")).collect()
    };

    // Events a100..=a104 stored twice (a replayed insert).
    let doubled = names(100..=104);
    let doubled_sequences = sequences_of(doubled.clone()).await;
    client
        .query(
            "INSERT INTO offence_events SELECT * FROM offence_events WHERE has(?, source_event_id)",
        )
        .bind(doubled)
        .execute()
        .await
        .unwrap();
    let report = audit_pipeline(&config).await.unwrap();
    let audit = &report.streams[0];
    assert!(!report.is_clean());
    assert_eq!(
        audit.doubled,
        doubled_sequences,
        "{}",
        render_audit(&report)
    );
    assert_eq!(audit.extra_rows, 5);
    assert_eq!(audit.doubled_event_ids, 5);
    assert!(audit.missing.is_empty(), "{}", render_audit(&report));
    in_rounds_alike(&config, &report).await;

    // Events a200..=a209 and a2999 deleted (a lost insert). Mutations apply
    // asynchronously: poll until the audit sees them.
    let mut deleted = names(200..=209);
    deleted.push("a2999".to_string());
    let expected = sequences_of(deleted.clone()).await;
    assert!(!expected.is_empty());
    client
        .query("ALTER TABLE offence_events DELETE WHERE has(?, source_event_id)")
        .bind(deleted)
        .execute()
        .await
        .unwrap();
    let (config_ref, expected_ref) = (&config, &expected);
    let report = cctv_testkit::poll(
        "the audit to report the deleted rows",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async move {
            let report = audit_pipeline(config_ref).await.unwrap();
            if report.streams[0].missing == *expected_ref {
                Ok(report)
            } else {
                Err(format!(
                    "expected {expected_ref:?}:\n{}",
                    render_audit(&report)
                ))
            }
        },
    )
    .await;
    assert_eq!(report.streams[0].doubled, doubled_sequences);
    assert_eq!(report.streams[0].rows, EVENTS as u64 + 5 - 11);
    in_rounds_alike(&config, &report).await;
    let text = render_audit(&report);
    assert!(text.contains("missing in ClickHouse: "), "{text}");
    assert!(text.ends_with("audit: differences found\n"), "{text}");

    // One event published on another partition's subject than its id's (as
    // with the partition count changed under it): a finding, in one round
    // and in rounds alike.
    let event = cctv_event::OffenceEvent {
        event_id: uuid::Uuid::from_u128(0xfeed_0000_0000_0000_0000_0000_0000_0003),
        ..cctv_event::OffenceEvent::example()
    };
    let partitions = cctv_bus::subjects::DEFAULT_PARTITIONS;
    let own = cctv_bus::subjects::partition_of(event.event_id.as_bytes(), partitions);
    stack
        .js
        .publish(
            cctv_bus::subjects::event_partition((own + 1) % partitions),
            cctv_bus::encode_event_batch([&event]),
        )
        .await
        .expect("publish")
        .await
        .expect("stored");
    for rounds in [1, 4] {
        let report = audit_pipeline_in_rounds(&config, rounds).await.unwrap();
        assert_eq!(report.streams[0].misrouted, 1, "{}", render_audit(&report));
        assert!(!report.is_clean());
    }
}

/// The audit taking the ids in rounds finds what it finds in one: 4 rounds
/// (each reads 4 of the 16 partitions' subjects: every message once), 48
/// (each reads one subject, keeping a third of its ids: every message three
/// times; 2^64 mod 48 is not 0, so the ids' high halves count in the
/// rounds' SQL), 7 (no divisor shared: the whole stream in every round).
async fn in_rounds_alike(config: &CliConfig, once: &AuditReport) {
    let messages = once.streams[0].stream.expect("stream extent").messages;
    assert_eq!(once.messages_read, messages);
    for (rounds, reads) in [(4, 1), (48, 3), (7, 7)] {
        let report = audit_pipeline_in_rounds(config, rounds).await.unwrap();
        assert_eq!(report.id_rounds, rounds);
        assert_eq!(
            report.streams,
            once.streams,
            "{rounds} rounds:\n{}\none round:\n{}",
            render_audit(&report),
            render_audit(once)
        );
        assert_eq!(report.messages_read, reads * messages, "{rounds} rounds");
        assert_eq!(
            report.whole_stream_reads.is_some(),
            rounds == 7,
            "{rounds} rounds"
        );
    }
}

/// The binary's progress shows on a terminal only: piped, stderr holds none
/// and stdout is the JSON report alone; under a pseudo-terminal (`script`,
/// util-linux) both phases show.
fn progress_only_on_a_terminal(config: &CliConfig) {
    let binary = crate::views::cctvctl_binary();
    // Nothing of the caller's environment but PATH (no CCTV_* setting of
    // CI's may change the outcome); `script` sets no TERM, and without one
    // nothing draws.
    let command = |program: &str| {
        let mut command = Command::new(program);
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("TERM", "xterm")
            .env("CCTV_NATS_URL", &config.nats.url)
            .env("CCTV_CLICKHOUSE_URL", &config.clickhouse.url)
            .env("CCTV_CLICKHOUSE_DATABASE", &config.clickhouse.database);
        command
    };
    let piped = command(binary.to_str().expect("UTF-8 path"))
        .args(["audit", "--format", "json"])
        .output()
        .expect("cctvctl runs");
    let stderr = String::from_utf8_lossy(&piped.stderr);
    assert!(piped.status.success(), "cctvctl audit: {stderr}");
    let report: serde_json::Value =
        serde_json::from_slice(&piped.stdout).expect("stdout is the JSON report alone");
    assert_eq!(report["clean"], serde_json::Value::Bool(true), "{report}");
    assert!(
        !stderr.contains("messages of the stream read") && !stderr.contains("read from ClickHouse"),
        "progress on a pipe: {stderr}"
    );

    // `cctvctl <args>` on a pseudo-terminal: what it showed there.
    let on_terminal = |args: &str| {
        let run = command("script")
            .args([
                "-q",
                "-e",
                "-c",
                &format!("{} {args}", binary.display()),
                "/dev/null",
            ])
            .output()
            .expect("`script` (util-linux) runs cctvctl on a pseudo-terminal");
        let shown = String::from_utf8_lossy(&run.stdout).into_owned();
        assert!(run.status.success(), "{shown}");
        shown
    };
    let shown = on_terminal("audit");
    assert!(shown.contains("messages of the stream read"), "{shown}");
    assert!(shown.contains("event ids read from ClickHouse"), "{shown}");
    assert!(shown.contains("exactly once"), "{shown}");

    // In rounds (the flag), each round's bars name it.
    let shown = on_terminal("audit --rounds 4");
    assert!(shown.contains("round 4/4"), "{shown}");
    assert!(shown.contains("event ids taken in 4 rounds"), "{shown}");
    assert!(shown.contains("exactly once"), "{shown}");
    let refused = command(binary.to_str().expect("UTF-8 path"))
        .args(["audit", "--rounds", "0"])
        .output()
        .expect("cctvctl runs");
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
}
