//! Exactly once under failure, with real processes: the `cctv-ingest` and
//! `cctv-aggregator` binaries run against a test's own servers while tens of
//! thousands of events from a few hundred cameras are published, and a fault
//! strikes mid-load: SIGKILL of either service (repeatedly), an abort between
//! the write and the ack in both services, ClickHouse down for 30 s, a NATS
//! restart, SIGTERM. Every test ends with exact totals per region x offence
//! type and a clean `cctvctl audit` (called as a library function).
//!
//! Progress drives the faults (a kill when ClickHouse holds another share of
//! the rows), never a sleep; every wait polls with a deadline.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::HeaderMap;
use cctv_bus::{NatsConfig, StreamsConfig};
use cctv_cli::CliConfig;
use cctv_store::{ClickHouseConfig, Store, TotalsFilter, TotalsRow};
use cctv_testkit::{free_port, shared_clickhouse, unique_name, ClickHouseServer, NatsServer};

use crate::harness::{canonical, recent_time, registry_csv};
use crate::processes::{killed_by, scrape_metric, Kind, ServiceProcess, SIGABRT, SIGKILL};

/// Events per test: tens of thousands, yet the suite stays within minutes.
const LOAD_EVENTS: usize = 20_000;
/// Longest wait for the pipeline to drain after the last fault.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(240);
/// Longest wait for a service to exit after SIGTERM: its grace period
/// (`shutdown_grace` below) plus start-up slack on a loaded machine.
const EXIT_TIMEOUT: Duration = Duration::from_secs(40);
/// Rows per aggregator batch in these tests: small, so that there are many
/// batches (many crash points) and the memory bound is tight.
const BATCH_MAX_ROWS: usize = 1_000;
/// Messages per pull of the aggregator in these tests.
const FETCH_BATCH: usize = 500;
/// Name of the aggregator's durable consumer (the default).
const AGGREGATOR_CONSUMER: &str = "cctv-aggregator";

/// A test's servers: its own NATS, a database on the shared ClickHouse (or
/// a private ClickHouse for the outage test), configs in a temp dir.
struct FaultStack {
    nats: NatsServer,
    /// Only for the test that stops ClickHouse (the shared one must stay up).
    private_clickhouse: Option<ClickHouseServer>,
    clickhouse_url: String,
    database: String,
    dir: tempfile::TempDir,
    registry_path: PathBuf,
    js: jetstream::Context,
    aggregator_metrics_port: u16,
}

impl FaultStack {
    async fn start(private_clickhouse: bool) -> FaultStack {
        let nats = NatsServer::start().expect("nats-server must start");
        let (private_clickhouse, clickhouse_url) = if private_clickhouse {
            let server = ClickHouseServer::start().expect("clickhouse-server must start");
            let url = server.http_url();
            (Some(server), url)
        } else {
            let server = shared_clickhouse().expect("clickhouse-server must start");
            (None, server.http_url())
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let registry_path = dir.path().join("cameras.csv");
        let regions = cctv_event::Regions::builtin().expect("builtin regions");
        std::fs::write(&registry_path, registry_csv(&regions)).expect("write registry");
        let client = async_nats::connect(nats.url()).await.expect("connect");
        let js = jetstream::new(client);
        cctv_bus::ensure_streams(&js, &StreamsConfig::default())
            .await
            .expect("create streams");
        FaultStack {
            nats,
            private_clickhouse,
            clickhouse_url,
            database: unique_name("faults"),
            dir,
            registry_path,
            js,
            aggregator_metrics_port: free_port().expect("free port"),
        }
    }

    fn aggregator_toml(&self) -> String {
        format!(
            "[nats]\nurl = \"{}\"\n\n[clickhouse]\nurl = \"{}\"\ndatabase = \"{}\"\n\n\
             [aggregator]\nbatch_max_rows = {BATCH_MAX_ROWS}\nbatch_max_age = \"200ms\"\n\
             fetch_batch = {FETCH_BATCH}\nretry_max_backoff = \"1s\"\nshutdown_grace = \"20s\"\n\n\
             [telemetry]\nlisten = \"127.0.0.1:{}\"\n",
            self.nats.url(),
            self.clickhouse_url,
            self.database,
            self.aggregator_metrics_port
        )
    }

    fn ingest_toml(&self) -> String {
        // A short ack_wait so that what a killed instance held is redelivered
        // within seconds (the raw stream's duplicate window, 2 min, exceeds it).
        format!(
            "[nats]\nurl = \"{}\"\n\n[ingest]\nbatch_size = 500\nack_wait = \"5s\"\n\
             shutdown_grace = \"20s\"\n\n[data]\nregistry_path = \"{}\"\n\n\
             [telemetry]\nlisten = \"127.0.0.1:0\"\n",
            self.nats.url(),
            self.registry_path.display()
        )
    }

    fn start_aggregator(&self, env: &[(&str, &str)]) -> ServiceProcess {
        ServiceProcess::start(
            Kind::Aggregator,
            self.dir.path(),
            &self.aggregator_toml(),
            env,
        )
    }

    fn start_ingest(&self, env: &[(&str, &str)]) -> ServiceProcess {
        ServiceProcess::start(Kind::Ingest, self.dir.path(), &self.ingest_toml(), env)
    }

    fn cli_config(&self) -> CliConfig {
        CliConfig {
            nats: NatsConfig {
                url: self.nats.url(),
                ..NatsConfig::default()
            },
            streams: StreamsConfig::default(),
            clickhouse: ClickHouseConfig {
                url: self.clickhouse_url.clone(),
                database: self.database.clone(),
                ..ClickHouseConfig::default()
            },
        }
    }

    fn store(&self) -> Store {
        Store::new(&self.cli_config().clickhouse).expect("store")
    }

    /// Rows in ClickHouse; 0 while the database or the server is not there.
    async fn rows(&self) -> u64 {
        self.store().count_events().await.unwrap_or(0)
    }

    /// Messages in `CCTV_EVENTS`; 0 while NATS does not answer.
    async fn events_in_stream(&self) -> u64 {
        match self.js.get_stream("CCTV_EVENTS").await {
            Ok(mut stream) => stream.info().await.map_or(0, |info| info.state.messages),
            Err(_) => 0,
        }
    }

    /// The aggregator consumer's state, when NATS answers.
    async fn aggregator_consumer(&self) -> Option<jetstream::consumer::Info> {
        let stream = self.js.get_stream("CCTV_EVENTS").await.ok()?;
        stream.consumer_info(AGGREGATOR_CONSUMER).await.ok()
    }
}

/// The events of one test and the totals they must produce.
struct Load {
    messages: Vec<(String, Vec<u8>)>,
    expected: BTreeMap<(String, String), u64>,
    count: u64,
}

/// `count` canonical events over every region and offence type, from the
/// registry's 40 cameras and 200 unregistered ones that name their region.
fn load(count: usize) -> Load {
    let regions: Vec<String> = cctv_event::Regions::builtin()
        .expect("regions")
        .all()
        .iter()
        .map(|region| region.code.clone())
        .collect();
    let codes: Vec<String> = cctv_event::Taxonomy::builtin()
        .expect("taxonomy")
        .offences()
        .iter()
        .map(|offence| offence.code.clone())
        .collect();
    let mut expected = BTreeMap::new();
    let mut messages = Vec::with_capacity(count);
    for n in 0..count {
        let region = &regions[(n * 7) % regions.len()];
        let code = &codes[(n * 13 + n / 89) % codes.len()];
        let digits = region.trim_start_matches("KZ-");
        let (camera, region_field) = if n % 3 == 0 {
            (format!("CAM-{digits}-{}", 1 + n % 2), String::new())
        } else {
            (
                format!("FLEET-{digits}-{}", n % 10),
                format!(r#","region":"{region}""#),
            )
        };
        let payload = canonical(
            &camera,
            code,
            &recent_time((n % 3000) as i64),
            &format!(r#","source_event_id":"f{n}"{region_field}"#),
        );
        messages.push((format!("fault-{n}"), payload));
        *expected
            .entry((region.clone(), code.clone()))
            .or_insert(0u64) += 1;
    }
    Load {
        messages,
        expected,
        count: count as u64,
    }
}

/// Publishes `messages` through JetStream, retrying what fails (NATS down or
/// restarting) with the same `Nats-Msg-Id`, so a retry is never a second event.
async fn publish_all(js: jetstream::Context, messages: Vec<(String, Vec<u8>)>) {
    let subject = cctv_bus::subjects::raw("canonical", "gw-faults");
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    for chunk in messages.chunks(500) {
        let mut remaining: Vec<&(String, Vec<u8>)> = chunk.iter().collect();
        while !remaining.is_empty() {
            let mut acks = Vec::with_capacity(remaining.len());
            for item in &remaining {
                let mut headers = HeaderMap::new();
                headers.insert(cctv_bus::headers::NATS_MSG_ID, item.0.as_str());
                let sent = js
                    .publish_with_headers(subject.clone(), headers, item.1.clone().into())
                    .await;
                acks.push((*item, sent.ok()));
            }
            let mut failed = Vec::new();
            for (item, ack) in acks {
                let acknowledged = match ack {
                    Some(ack) => ack.await.is_ok(),
                    None => false,
                };
                if !acknowledged {
                    failed.push(item);
                }
            }
            remaining = failed;
            if !remaining.is_empty() {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{} raw messages still not acknowledged by JetStream",
                    remaining.len()
                );
                // Back off before retrying; not a synchronisation.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Polls `condition` every 100 ms until it holds; fails after `timeout`.
async fn poll_until<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn as_map(rows: &[TotalsRow]) -> BTreeMap<(String, String), u64> {
    rows.iter()
        .map(|row| ((row.region.clone(), row.offence_type.clone()), row.events))
        .collect()
}

/// Waits until every event is in the stream and in ClickHouse, stops both
/// services with SIGTERM (they must exit 0), then checks the exact totals
/// and a clean audit.
async fn drain_stop_and_check(
    stack: &FaultStack,
    load: &Load,
    ingest: &mut ServiceProcess,
    aggregator: &mut ServiceProcess,
) {
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    loop {
        let (events, rows) = (stack.events_in_stream().await, stack.rows().await);
        if events >= load.count && rows >= load.count {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not drained after {DRAIN_TIMEOUT:?}: {events} events in the stream, {rows} rows \
             of {}\n{}\n{}\n--- nats-server log ---\n{}",
            load.count,
            ingest.log_tail(),
            aggregator.log_tail(),
            stack.nats.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for service in [ingest, aggregator] {
        service.terminate();
        let status = service.wait_exit(EXIT_TIMEOUT).await;
        assert!(
            status.success(),
            "SIGTERM exit {status:?}\n{}",
            service.log_tail()
        );
    }
    check_exact(stack, load).await;
}

/// A clean audit, then exact totals per region x type, the contract's query
/// agreeing.
async fn check_exact(stack: &FaultStack, load: &Load) {
    let report = cctv_cli::audit_pipeline(&stack.cli_config())
        .await
        .expect("audit runs");
    assert!(report.is_clean(), "{}", cctv_cli::render_audit(&report));
    assert_eq!(report.streams.len(), 1);
    assert_eq!(report.streams[0].rows, load.count);
    let store = stack.store();
    assert_eq!(store.count_events().await.unwrap(), load.count);
    let totals = store.totals(&TotalsFilter::default()).await.unwrap();
    assert_eq!(as_map(&totals), load.expected);
    let contract: Vec<TotalsRow> = store
        .client()
        .query(
            "SELECT region, offence_type, toUInt64(sum(events)) AS events \
             FROM offence_totals GROUP BY region, offence_type",
        )
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(as_map(&contract), load.expected);
    assert_eq!(stack.events_in_stream().await, load.count);
}

/// Which service the SIGKILL test kills, and how its progress shows.
#[derive(Clone, Copy)]
enum Victim {
    /// Killed as ClickHouse rows grow.
    Aggregator,
    /// Killed as events reach `CCTV_EVENTS`.
    Ingest,
}

/// Runs the load with both services, kills `victim` with SIGKILL five times
/// at 1/7 .. 5/7 of its progress, restarting it each time, then drains and
/// checks exact totals.
async fn killed_with_sigkill_five_times(victim: Victim) {
    let stack = FaultStack::start(false).await;
    let load = load(LOAD_EVENTS);
    let mut ingest = stack.start_ingest(&[]);
    let mut aggregator = stack.start_aggregator(&[]);
    let publisher = tokio::spawn(publish_all(stack.js.clone(), load.messages.clone()));
    for kill in 1..=5u64 {
        let threshold = load.count * kill / 7;
        let (what, process) = match victim {
            Victim::Aggregator => ("rows", &mut aggregator),
            Victim::Ingest => ("events", &mut ingest),
        };
        poll_until(
            &format!("{threshold} {what} before kill {kill}"),
            DRAIN_TIMEOUT,
            || async {
                let progress = match victim {
                    Victim::Aggregator => stack.rows().await,
                    Victim::Ingest => stack.events_in_stream().await,
                };
                progress >= threshold
            },
        )
        .await;
        let status = process.kill9();
        assert!(killed_by(status, SIGKILL), "{status:?}");
        process.restart();
    }
    publisher.await.expect("publisher");
    let starts = match victim {
        Victim::Aggregator => aggregator.starts,
        Victim::Ingest => ingest.starts,
    };
    assert_eq!(starts, 6);
    drain_stop_and_check(&stack, &load, &mut ingest, &mut aggregator).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregator_killed_with_sigkill_five_times_during_load() {
    killed_with_sigkill_five_times(Victim::Aggregator).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_killed_with_sigkill_five_times_during_load() {
    killed_with_sigkill_five_times(Victim::Ingest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_between_write_and_ack_in_both_services_lose_and_double_nothing() {
    let stack = FaultStack::start(false).await;
    let load = load(LOAD_EVENTS);
    // The aggregator aborts after its 3rd insert (rows in ClickHouse, no ack),
    // the ingest after its 8th batch of publishes (events in JetStream, raw
    // messages unacked); each is restarted, armed again, until the load is in.
    let aggregator_fault = [
        ("CCTV_FAULT", "after_insert"),
        ("CCTV_FAULT_AFTER_BATCHES", "3"),
    ];
    let ingest_fault = [
        ("CCTV_FAULT", "after_publish"),
        ("CCTV_FAULT_AFTER_BATCHES", "8"),
    ];
    let mut ingest = stack.start_ingest(&ingest_fault);
    let mut aggregator = stack.start_aggregator(&aggregator_fault);
    let publisher = tokio::spawn(publish_all(stack.js.clone(), load.messages.clone()));
    let (mut aggregator_aborts, mut ingest_aborts) = (0u32, 0u32);
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    loop {
        for (service, aborts) in [
            (&mut aggregator, &mut aggregator_aborts),
            (&mut ingest, &mut ingest_aborts),
        ] {
            if let Some(status) = service.exited() {
                assert!(
                    killed_by(status, SIGABRT),
                    "expected an abort at the fault point, got {status:?}\n{}",
                    service.log_tail()
                );
                *aborts += 1;
                service.restart();
            }
        }
        if publisher.is_finished()
            && stack.events_in_stream().await >= load.count
            && stack.rows().await >= load.count
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not drained: {} rows, {aggregator_aborts} aggregator and {ingest_aborts} ingest aborts",
            stack.rows().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    publisher.await.expect("publisher");
    assert!(aggregator.log_contains("fault injected at after_insert"));
    assert!(ingest.log_contains("fault injected at after_publish"));
    assert!(
        aggregator_aborts >= 2,
        "aggregator aborted {aggregator_aborts} times"
    );
    assert!(ingest_aborts >= 2, "ingest aborted {ingest_aborts} times");
    // Redeliveries may still be due; finish with the fault points disarmed so
    // the final SIGTERM meets running services.
    for service in [&mut ingest, &mut aggregator] {
        if service.pid().is_some() {
            service.kill9();
        }
        service.disarm();
        service.restart();
    }
    drain_stop_and_check(&stack, &load, &mut ingest, &mut aggregator).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_down_for_30_seconds_mid_load_holds_bounded_memory_and_catches_up() {
    /// The aggregator's bound: at most 3 batches of `BATCH_MAX_ROWS` plus one
    /// fetch are delivered and unacked (its consumer's `max_ack_pending`).
    const MAX_ACK_PENDING: usize = 3 * BATCH_MAX_ROWS + FETCH_BATCH;
    /// Resident memory allowed while ClickHouse is down: a debug build runs
    /// in some 20 MiB, the 3,500 held events take a few MiB.
    const RSS_BOUND_KIB: u64 = 64 * 1024;
    const OUTAGE: Duration = Duration::from_secs(30);

    let mut stack = FaultStack::start(true).await;
    let load = load(LOAD_EVENTS);
    let (first_half, second_half) = load.messages.split_at(load.messages.len() / 2);
    let mut ingest = stack.start_ingest(&[]);
    let mut aggregator = stack.start_aggregator(&[]);
    publish_all(stack.js.clone(), first_half.to_vec()).await;
    let quarter = load.count / 4;
    poll_until("a quarter of the rows", DRAIN_TIMEOUT, || async {
        stack.rows().await >= quarter
    })
    .await;

    let clickhouse = stack
        .private_clickhouse
        .as_mut()
        .expect("private ClickHouse");
    tokio::task::block_in_place(|| clickhouse.stop());
    let publisher = tokio::spawn(publish_all(stack.js.clone(), second_half.to_vec()));
    // The outage lasts OUTAGE; meanwhile sample memory, backlog and metrics.
    let outage_end = tokio::time::Instant::now() + OUTAGE;
    let (mut max_rss, mut max_pending, mut max_ack_pending, mut max_lag_metric) =
        (0u64, 0u64, 0usize, 0f64);
    let mut store_down_reported = false;
    while tokio::time::Instant::now() < outage_end {
        max_rss = max_rss.max(aggregator.rss_kib().unwrap_or(0));
        if let Some(info) = stack.aggregator_consumer().await {
            max_pending = max_pending.max(info.num_pending);
            max_ack_pending = max_ack_pending.max(info.num_ack_pending);
        }
        let port = stack.aggregator_metrics_port;
        if let Some(lag) = scrape_metric(port, "cctv_aggregator_consumer_pending") {
            max_lag_metric = max_lag_metric.max(lag);
        }
        store_down_reported |= scrape_metric(port, "cctv_aggregator_clickhouse_down") == Some(1.0);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(aggregator.exited().is_none(), "{}", aggregator.log_tail());
    let clickhouse = stack
        .private_clickhouse
        .as_mut()
        .expect("private ClickHouse");
    tokio::task::block_in_place(|| clickhouse.restart()).expect("ClickHouse restarts");

    println!(
        "ClickHouse outage: aggregator max RSS {max_rss} KiB, consumer pending up to \
         {max_pending}, unacked deliveries up to {max_ack_pending}, lag metric up to {max_lag_metric}"
    );
    assert!(
        max_rss < RSS_BOUND_KIB,
        "aggregator RSS {max_rss} KiB while ClickHouse was down (bound {RSS_BOUND_KIB} KiB)"
    );
    assert!(
        max_ack_pending <= MAX_ACK_PENDING,
        "{max_ack_pending} deliveries unacked (bound {MAX_ACK_PENDING}): the aggregator kept fetching"
    );
    assert!(
        max_pending > 0 && max_lag_metric > 0.0,
        "the backlog did not show: consumer pending {max_pending}, lag metric {max_lag_metric}"
    );
    assert!(
        store_down_reported,
        "cctv_aggregator_clickhouse_down never was 1"
    );
    publisher.await.expect("publisher");
    drain_stop_and_check(&stack, &load, &mut ingest, &mut aggregator).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_restarted_mid_load_both_services_recover() {
    let mut stack = FaultStack::start(false).await;
    let load = load(LOAD_EVENTS);
    let (first_half, second_half) = load.messages.split_at(load.messages.len() / 2);
    let mut ingest = stack.start_ingest(&[]);
    let mut aggregator = stack.start_aggregator(&[]);
    publish_all(stack.js.clone(), first_half.to_vec()).await;
    let quarter = load.count / 4;
    poll_until("a quarter of the rows", DRAIN_TIMEOUT, || async {
        stack.rows().await >= quarter
    })
    .await;
    // Same port, same store directory: the file-backed streams survive.
    tokio::task::block_in_place(|| stack.nats.restart()).expect("nats-server restarts");
    publish_all(stack.js.clone(), second_half.to_vec()).await;
    assert!(ingest.exited().is_none(), "{}", ingest.log_tail());
    assert!(aggregator.exited().is_none(), "{}", aggregator.log_tail());
    drain_stop_and_check(&stack, &load, &mut ingest, &mut aggregator).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_load_exits_cleanly_and_leaves_nothing_written_unacked() {
    let stack = FaultStack::start(false).await;
    let load = load(LOAD_EVENTS);
    let mut ingest = stack.start_ingest(&[]);
    let mut aggregator = stack.start_aggregator(&[]);
    let publisher = tokio::spawn(publish_all(stack.js.clone(), load.messages.clone()));
    let third = load.count / 3;
    poll_until("a third of the rows", DRAIN_TIMEOUT, || async {
        stack.rows().await >= third
    })
    .await;
    ingest.terminate();
    aggregator.terminate();
    for service in [&mut ingest, &mut aggregator] {
        let status = service.wait_exit(EXIT_TIMEOUT).await;
        assert!(status.success(), "exit {status:?}\n{}", service.log_tail());
    }
    // Every row ClickHouse holds was acked: the ack floor reaches the highest
    // stored sequence (AckPolicy::All), so nothing written is redelivered.
    let max_written: u64 = stack
        .store()
        .client()
        .query("SELECT max(stream_seq) FROM offence_events")
        .fetch_one()
        .await
        .unwrap();
    let consumer = stack
        .aggregator_consumer()
        .await
        .expect("aggregator consumer");
    assert!(max_written > 0);
    assert!(
        consumer.ack_floor.stream_sequence >= max_written,
        "ack floor {} below the highest written sequence {max_written}\n{}",
        consumer.ack_floor.stream_sequence,
        aggregator.log_tail()
    );

    ingest.restart();
    aggregator.restart();
    publisher.await.expect("publisher");
    drain_stop_and_check(&stack, &load, &mut ingest, &mut aggregator).await;
}
