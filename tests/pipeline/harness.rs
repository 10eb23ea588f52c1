//! The test harness: a NATS server per test, a ClickHouse database per test
//! on the process-wide ClickHouse server, and the two services run in-process
//! through their `run` functions with cancellation tokens.

use std::io::Write;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::HeaderMap;
use cctv_aggregator::{AggregatorConfig, AggregatorStats};
use cctv_bus::{NatsConfig, StreamsConfig};
use cctv_event::Regions;
use cctv_ingest::{IngestConfig, IngestStats};
use cctv_store::{ClickHouseConfig, Store, TotalsFilter};
use cctv_testkit::{poll, shared_clickhouse, unique_name, NatsServer};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a test waits for the pipeline to drain before failing.
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

/// One running service: its task, its shutdown token and its counters.
pub(crate) struct Service<S> {
    pub(crate) shutdown: CancellationToken,
    pub(crate) task: JoinHandle<anyhow::Result<()>>,
    pub(crate) stats: S,
}

impl<S> Service<S> {
    /// Requests shutdown and waits for a clean return.
    pub(crate) async fn stop(self) {
        self.shutdown.cancel();
        let result = tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("service did not stop within 60 s")
            .expect("service task panicked");
        result.expect("service returned an error");
    }

    /// Drops the service without letting it flush: the closest an in-process
    /// task gets to a crash (no acks, no flush).
    pub(crate) fn abort(self) {
        self.task.abort();
    }
}

/// A test's servers and settings.
pub(crate) struct Stack {
    pub(crate) nats: NatsServer,
    pub(crate) database: String,
    pub(crate) clickhouse_url: String,
    pub(crate) registry_file: tempfile::NamedTempFile,
    pub(crate) js: jetstream::Context,
    pub(crate) regions: Regions,
}

/// The registry of the test fleet: two cameras in every region,
/// `CAM-<digits>-<n>` (for example `CAM-75-1`).
pub(crate) fn registry_csv(regions: &Regions) -> String {
    let mut csv = String::from("camera_id,region,district,lat,lon,identities\n");
    for region in regions.all() {
        let digits = region.code.trim_start_matches("KZ-");
        for n in 1..=2 {
            csv.push_str(&format!(
                "CAM-{digits}-{n},{},{} district,43.2,76.9,\n",
                region.code, region.centre
            ));
        }
    }
    csv
}

impl Stack {
    /// Starts a NATS server, picks a fresh database, writes the registry and
    /// creates the streams.
    pub(crate) async fn start() -> Stack {
        let nats = NatsServer::start()
            .expect("nats-server must start (install it: scripts/install-servers.sh)");
        let clickhouse = shared_clickhouse().expect("clickhouse-server must start");
        let regions = Regions::builtin().expect("builtin regions");
        let mut registry_file = tempfile::NamedTempFile::new().expect("temp file");
        registry_file
            .write_all(registry_csv(&regions).as_bytes())
            .expect("write registry");
        let client = async_nats::connect(nats.url())
            .await
            .expect("connect to test NATS");
        let js = jetstream::new(client);
        cctv_bus::ensure_streams(&js, &StreamsConfig::default())
            .await
            .expect("create streams");
        Stack {
            nats,
            database: unique_name("db"),
            clickhouse_url: clickhouse.http_url(),
            registry_file,
            js,
            regions,
        }
    }

    pub(crate) fn nats_config(&self) -> NatsConfig {
        NatsConfig {
            url: self.nats.url(),
            ..NatsConfig::default()
        }
    }

    pub(crate) fn clickhouse_config(&self) -> ClickHouseConfig {
        ClickHouseConfig {
            url: self.clickhouse_url.clone(),
            database: self.database.clone(),
            ..ClickHouseConfig::default()
        }
    }

    pub(crate) fn store(&self) -> Store {
        Store::new(&self.clickhouse_config()).expect("store")
    }

    pub(crate) fn ingest_config(&self) -> IngestConfig {
        let mut config = IngestConfig {
            nats: self.nats_config(),
            ..IngestConfig::default()
        };
        config.data.registry_path = Some(self.registry_file.path().to_path_buf());
        config.telemetry.listen = None;
        config
    }

    pub(crate) fn aggregator_config(&self) -> AggregatorConfig {
        let mut config = AggregatorConfig {
            nats: self.nats_config(),
            clickhouse: self.clickhouse_config(),
            ..AggregatorConfig::default()
        };
        config.aggregator.batch_max_age = Duration::from_millis(200);
        config.telemetry.listen = None;
        config
    }

    pub(crate) fn start_ingest(&self) -> Service<IngestStats> {
        self.start_ingest_with(self.ingest_config())
    }

    pub(crate) fn start_ingest_with(&self, config: IngestConfig) -> Service<IngestStats> {
        let shutdown = CancellationToken::new();
        let stats = IngestStats::default();
        let task = tokio::spawn(cctv_ingest_run(config, shutdown.clone(), stats.clone()));
        Service {
            shutdown,
            task,
            stats,
        }
    }

    pub(crate) fn start_aggregator(&self) -> Service<AggregatorStats> {
        self.start_aggregator_with(self.aggregator_config())
    }

    pub(crate) fn start_aggregator_with(
        &self,
        config: AggregatorConfig,
    ) -> Service<AggregatorStats> {
        let shutdown = CancellationToken::new();
        let stats = AggregatorStats::default();
        let task = tokio::spawn(cctv_aggregator_run(config, shutdown.clone(), stats.clone()));
        Service {
            shutdown,
            task,
            stats,
        }
    }

    /// Publishes one raw message through JetStream and waits for its ack.
    pub(crate) async fn publish_raw(
        &self,
        format: &str,
        gateway: &str,
        headers: &[(&str, &str)],
        payload: Vec<u8>,
    ) {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, *value);
        }
        self.js
            .publish_with_headers(
                cctv_bus::subjects::raw(format, gateway),
                map,
                payload.into(),
            )
            .await
            .expect("publish raw")
            .await
            .expect("raw publish acknowledged");
    }

    /// Publishes many raw canonical messages with pipelined acks.
    pub(crate) async fn publish_many(&self, gateway: &str, messages: Vec<(String, Vec<u8>)>) {
        let subject = cctv_bus::subjects::raw("canonical", gateway);
        let mut acks = Vec::with_capacity(1024);
        for (msg_id, payload) in messages {
            let mut map = HeaderMap::new();
            map.insert(cctv_bus::headers::NATS_MSG_ID, msg_id.as_str());
            acks.push(
                self.js
                    .publish_with_headers(subject.clone(), map, payload.into())
                    .await
                    .expect("publish raw"),
            );
            if acks.len() >= 1024 {
                for ack in acks.drain(..) {
                    ack.await.expect("raw publish acknowledged");
                }
            }
        }
        for ack in acks {
            ack.await.expect("raw publish acknowledged");
        }
    }

    /// Messages stored in a stream.
    pub(crate) async fn stream_messages(&self, name: &str) -> u64 {
        let mut stream = self.js.get_stream(name).await.expect("stream");
        stream.info().await.expect("stream info").state.messages
    }

    /// Waits until ClickHouse holds `expected` rows and the events stream
    /// holds no more than that, then returns the totals.
    pub(crate) async fn wait_for_rows(&self, expected: u64) -> Vec<cctv_store::TotalsRow> {
        let store = self.store();
        wait_for_store_rows(&store, expected, String::new).await;
        store
            .totals(&TotalsFilter::default())
            .await
            .expect("totals")
    }

    /// Waits until the aggregators have seen `expected` events in all
    /// (written or dropped as repeats), e.g. every event the ingest published.
    pub(crate) async fn wait_for_aggregated(&self, stats: &[&AggregatorStats], expected: u64) {
        poll(
            "events seen by the aggregators",
            DRAIN_TIMEOUT,
            Duration::from_millis(100),
            || async move {
                let seen: u64 = stats
                    .iter()
                    .map(|stats| {
                        let snapshot = stats.snapshot();
                        snapshot.rows_written + snapshot.duplicates
                    })
                    .sum();
                if seen >= expected {
                    Ok(())
                } else {
                    Err(format!("{seen} of {expected}"))
                }
            },
        )
        .await;
    }

    /// Waits until the ingest service has handled `expected` raw messages.
    pub(crate) async fn wait_for_ingest(&self, stats: &IngestStats, expected: u64) {
        poll(
            "raw messages handled by the ingest",
            DRAIN_TIMEOUT,
            Duration::from_millis(100),
            || async move {
                let snapshot = stats.snapshot();
                if snapshot.handled() >= expected {
                    Ok(())
                } else {
                    Err(format!("{snapshot:?} of {expected}"))
                }
            },
        )
        .await;
    }
}

async fn cctv_ingest_run(
    config: IngestConfig,
    shutdown: CancellationToken,
    stats: IngestStats,
) -> anyhow::Result<()> {
    cctv_ingest::run(config, shutdown, stats)
        .await
        .map_err(anyhow::Error::from)
}

async fn cctv_aggregator_run(
    config: AggregatorConfig,
    shutdown: CancellationToken,
    stats: AggregatorStats,
) -> anyhow::Result<()> {
    cctv_aggregator::run(config, shutdown, stats)
        .await
        .map_err(anyhow::Error::from)
}

/// A canonical payload.
pub(crate) fn canonical(
    camera_id: &str,
    offence_type: &str,
    detected_at: &str,
    extra: &str,
) -> Vec<u8> {
    format!(r#"{{"camera_id":"{camera_id}","offence_type":"{offence_type}","detected_at":"{detected_at}"{extra}}}"#)
        .into_bytes()
}

/// A detection time an hour ago, RFC 3339.
pub(crate) fn recent_time(offset_seconds: i64) -> String {
    (chrono::Utc::now() - chrono::TimeDelta::hours(1) + chrono::TimeDelta::seconds(offset_seconds))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Polls until `store` holds at least `expected` rows; a failure shows the
/// count and what `context` says (a log tail, service stats).
pub(crate) async fn wait_for_store_rows(
    store: &Store,
    expected: u64,
    context: impl Fn() -> String,
) {
    let context = &context;
    poll(
        "rows in ClickHouse",
        DRAIN_TIMEOUT,
        Duration::from_millis(200),
        || async move {
            let rows = store.count_events().await.unwrap_or(0);
            if rows >= expected {
                Ok(())
            } else {
                Err(format!("{rows} of {expected}\n{}", context()))
            }
        },
    )
    .await;
}
