//! End-to-end benchmark of the whole pipeline on this machine: real
//! `nats-server` and `clickhouse-server` (started on free ports in temp dirs,
//! fresh for every scenario), the release `cctv-ingest` and `cctv-aggregator`
//! binaries as processes, and a publisher in this process.
//!
//! Scenarios:
//! - `canonical`: a burst of N canonical events published as fast as the
//!   publisher can; sustained events/s from the first publish to the last row
//!   counted in ClickHouse, loss (expected minus counted, must be 0), CPU
//!   seconds per million events of each service and server, peak RSS;
//! - `mixed`: the same with every vendor format (`simulate --format mixed`);
//! - `canonical-batch-x2`: `canonical-batch` with two instances of each
//!   service; with `--pairs N` (default 5) it and `canonical-batch` then run
//!   N more times back to back (odd pairs one instance first, even pairs
//!   two), and the scaling target compares the median of the pairs'
//!   differences with 0 (the machine's speed moves more between two minutes
//!   than the difference measured);
//! - `canonical-batch-tls`: `canonical-batch` with TLS on every hop:
//!   nats-server with a certificate and client certificates required (the
//!   publisher and both services present theirs), ClickHouse over HTTPS, all
//!   checked against a CA made for the run; the report sets its rate beside
//!   the plain-text one;
//! - `canonical-batch-sync`: `canonical-batch` with nats-server fsyncing
//!   every write (`sync_interval: always`, what survives a power cut); the
//!   report sets its rate beside the default's;
//! - `latency`: canonical events at a fixed rate; publish -> queryable
//!   latency of every event, p50/p99/max;
//! - `gateway`: the release `cctv-gateway` between load generators here
//!   and a fresh nats-server and mosquitto: HTTP pushes/s and MQTT
//!   messages/s into NATS (JetStream-acked) and the gateway's CPU per
//!   message (`cctv_benches::gateway`; `--events` messages per intake);
//! - `analyst`: analysts' queries (the contract's totals, one region's
//!   daily trend, top 10 cameras) over `--analyst-rows` offences (100 M)
//!   generated in ClickHouse, counting the rows and then with the year
//!   rolled up (`cctv_benches::analyst`);
//! - `floor`: nats-server alone (no service, no ClickHouse), the CPU it
//!   spends on each NATS operation the pipeline needs per offence, hence the
//!   most offences per second two durable hops allow on this machine
//!   (`cctv_benches::hops`).
//!
//! Results are printed and written into `BENCHMARKS.md` with the machine's
//! description. Run by `make bench` (which builds the release binaries first).
#![allow(clippy::print_stdout)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use cctv_bus::{NatsConfig, StreamsConfig};
use cctv_simulate::{compare_totals, FormatChoice, SimulateArgs};
use cctv_store::{ClickHouseConfig, Store, TotalsFilter};
use cctv_testkit::{
    CertificateFiles, ClickHouseServer, ClientCertificates, NatsServer, NatsTls, TestCa,
};

/// How often ClickHouse is asked for progress.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Every scenario `--scenarios` takes.
const SCENARIOS: [&str; 13] = [
    "floor",
    "store-floor",
    "seen",
    "canonical",
    "mixed",
    "canonical-batch",
    "mixed-batch",
    "canonical-batch-x2",
    "canonical-batch-tls",
    "canonical-batch-sync",
    "latency",
    "gateway",
    "analyst",
];
/// The throughput scenarios: one vendor message per NATS message, or
/// (`-batch`) gateway batches of 100.
/// `-x2`: two instances of each service. `-tls`: TLS on every hop.
/// `-sync`: nats-server fsyncs every write.
const THROUGHPUT_SCENARIOS: [&str; 7] = [
    "canonical",
    "mixed",
    "canonical-batch",
    "mixed-batch",
    "canonical-batch-x2",
    "canonical-batch-tls",
    "canonical-batch-sync",
];
/// The JetStream line of the `-sync` scenarios.
const SYNC_ALWAYS: &str = "sync_interval: always";
/// Longest a scenario may take to drain.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(900);

const USAGE: &str = "usage: cctv-bench-e2e [--events N] [--latency-rate N] [--latency-seconds N] \
[--scenarios floor,store-floor,canonical,mixed,canonical-batch,mixed-batch,canonical-batch-x2,canonical-batch-tls,canonical-batch-sync,seen,latency,gateway,analyst] [--output FILE | --no-output] \
[--events-duplicate-window DURATION] [--seen-ids N] [--analyst-rows N] [--ingest-settings TOML] [--aggregator-settings TOML] [--pairs N]

--pairs N (default 5): when canonical-batch and canonical-batch-x2 are both among the scenarios,
N more back-to-back pairs of them (odd pairs one instance first, even pairs two); the x2
target compares the median difference with 0.

--ingest-settings and --aggregator-settings add lines to the services' [ingest] and
[aggregator] tables, e.g. --ingest-settings 'batch_linger = \"0ms\"' (A/B runs of a setting).
CCTV_TESTKIT_NATS_JETSTREAM adds lines to every nats-server's jetstream block, e.g.
'sync_interval: always' (every write fsynced); the machine description names them.
With CCTV_BENCH_KEEP=1 each run keeps its services' configs and logs (the path is printed);
CCTV_LOG=info,cctv_aggregator::inserter=debug,cctv_ingest::service=debug logs every insert
and every ingest batch with its duration (a timeline of the run). A run that fails stops its
services, says which had exited, and keeps their configs and logs whatever CCTV_BENCH_KEEP says.";

/// Extra lines of the services' `[ingest]` and `[aggregator]` tables.
static SERVICE_SETTINGS: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();

struct Options {
    events: u64,
    latency_rate: u64,
    latency_seconds: u64,
    scenarios: Vec<String>,
    output: Option<PathBuf>,
    /// Duplicate window of CCTV_EVENTS (the dedup horizon) instead of 24 h,
    /// to measure what the window costs the server.
    events_duplicate_window: Option<String>,
    /// Ids in the horizon for the `seen` scenario.
    seen_ids: u64,
    /// Offences generated for the `analyst` scenario.
    analyst_rows: u64,
    /// Extra `[ingest]` lines.
    ingest_settings: String,
    /// Extra `[aggregator]` lines.
    aggregator_settings: String,
    /// Back-to-back pairs of `canonical-batch` and `canonical-batch-x2`
    /// run after the scenarios when both are among them (0: none).
    pairs: usize,
}

fn parse_options() -> anyhow::Result<Options> {
    let mut options = Options {
        events: 1_000_000,
        latency_rate: 10_000,
        latency_seconds: 30,
        scenarios: vec![
            "floor".into(),
            "store-floor".into(),
            "canonical".into(),
            "mixed".into(),
            "canonical-batch".into(),
            "mixed-batch".into(),
            "canonical-batch-x2".into(),
            "canonical-batch-tls".into(),
            "canonical-batch-sync".into(),
            "seen".into(),
            "latency".into(),
            "gateway".into(),
            "analyst".into(),
        ],
        output: Some(PathBuf::from("BENCHMARKS.md")),
        events_duplicate_window: None,
        seen_ids: 10_000_000,
        analyst_rows: 100_000_000,
        ingest_settings: String::new(),
        aggregator_settings: String::new(),
        pairs: 5,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--events" => options.events = value()?.parse()?,
            "--seen-ids" => options.seen_ids = value()?.parse()?,
            "--analyst-rows" => options.analyst_rows = value()?.parse()?,
            "--latency-rate" => options.latency_rate = value()?.parse()?,
            "--latency-seconds" => options.latency_seconds = value()?.parse()?,
            "--scenarios" => {
                options.scenarios = value()?.split(',').map(str::to_string).collect();
            }
            "--output" => options.output = Some(PathBuf::from(value()?)),
            "--no-output" => options.output = None,
            "--events-duplicate-window" => options.events_duplicate_window = Some(value()?),
            "--ingest-settings" => options.ingest_settings = value()?,
            "--aggregator-settings" => options.aggregator_settings = value()?,
            "--pairs" => options.pairs = value()?.parse()?,
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown flag {other}\n{USAGE}"),
        }
    }
    Ok(options)
}

/// CPU seconds and peak RSS of one process.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    cpu_seconds: f64,
    peak_rss_mib: f64,
}

fn usage(pid: u32) -> Usage {
    let cpu_seconds = cctv_benches::hops::cpu_seconds(pid);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let peak_kib = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    Usage {
        cpu_seconds,
        peak_rss_mib: peak_kib / 1024.0,
    }
}

/// One scenario's servers and service processes.
struct Rig {
    nats: NatsServer,
    clickhouse: ClickHouseServer,
    /// The services' configs and logs, removed with the rig.
    dir: tempfile::TempDir,
    /// Instances of `cctv-ingest`, all with one config.
    ingests: Vec<Child>,
    /// Instances of `cctv-aggregator`, all with one config.
    aggregators: Vec<Child>,
    /// Their metrics ports (`CCTV_AGGREGATOR_METRICS_LISTEN`).
    aggregator_ports: Vec<u16>,
    database: String,
    /// With TLS: the run's CA and the publisher's client certificate.
    tls: Option<RigTls>,
    /// Set by [`Rig::stop`]; a rig dropped without it belongs to a run that
    /// failed ([`Rig::drop`]).
    stopped: bool,
}

/// The certificates of a scenario with TLS on every hop.
struct RigTls {
    ca: TestCa,
    publisher: CertificateFiles,
}

impl RigTls {
    fn new() -> anyhow::Result<RigTls> {
        let ca = TestCa::new("cctv bench CA")?;
        let publisher = ca.client_certificate("bench_publisher")?;
        Ok(RigTls { ca, publisher })
    }

    /// The `[nats]` lines of a service with its own client certificate.
    fn nats_toml(&self, user: &str) -> anyhow::Result<String> {
        let files = self.ca.client_certificate(user)?;
        Ok(format!(
            "tls_ca_file = \"{}\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
            self.ca.ca_file().display(),
            files.cert.display(),
            files.key.display()
        ))
    }
}

impl Rig {
    async fn start(
        registry: &Path,
        events_window: Option<&str>,
        instances: usize,
        tls: bool,
        sync: bool,
    ) -> anyhow::Result<Rig> {
        let tls = if tls { Some(RigTls::new()?) } else { None };
        let (nats, clickhouse) = match &tls {
            None => (
                if sync {
                    NatsServer::start_with_jetstream(SYNC_ALWAYS)
                } else {
                    NatsServer::start()
                }
                .context("failed to start nats-server")?,
                ClickHouseServer::start().context("failed to start clickhouse-server")?,
            ),
            Some(tls) => {
                let server = tls.ca.server_certificate("server")?;
                let ca_file = tls.ca.ca_file();
                let nats = NatsServer::start_with_tls(
                    &NatsTls {
                        certificate: &server,
                        ca_file: Some(&ca_file),
                        client_certificates: ClientCertificates::Required,
                    },
                    "",
                    &[],
                )
                .context("failed to start nats-server with TLS")?;
                let clickhouse = ClickHouseServer::start_with_tls(None, &server)
                    .context("failed to start clickhouse-server with HTTPS")?;
                (nats, clickhouse)
            }
        };
        let dir = tempfile::tempdir()?;
        let database = "cctv_bench".to_string();
        let mut rig = Rig {
            nats,
            clickhouse,
            dir,
            ingests: Vec::with_capacity(instances),
            aggregators: Vec::with_capacity(instances),
            aggregator_ports: Vec::with_capacity(instances),
            database,
            tls,
            stopped: false,
        };
        rig.start_services(registry, events_window, instances)
            .await?;
        rig.wait_balanced().await?;
        Ok(rig)
    }

    /// Waits until the aggregators own every partition, evenly: several
    /// instances started together first race for the partitions and then
    /// hand the surplus over, and a run measured during that handover
    /// measures the start, not the instances at work.
    async fn wait_balanced(&self) -> anyhow::Result<()> {
        let partitions = f64::from(cctv_bus::subjects::DEFAULT_PARTITIONS);
        #[allow(clippy::cast_precision_loss)]
        let fair = (partitions / self.aggregator_ports.len() as f64).floor();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let owned: Vec<f64> = self
                .aggregator_ports
                .iter()
                .map(|port| scrape_sum(*port, "cctv_aggregator_partitions_owned").unwrap_or(0.0))
                .collect();
            if owned.iter().sum::<f64>() >= partitions && owned.iter().all(|own| *own >= fair) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let logs: String = (0..self.aggregator_ports.len())
                    .map(|instance| {
                        let path = self
                            .dir
                            .path()
                            .join(format!("cctv-aggregator-{instance}.log"));
                        let text = std::fs::read(&path).unwrap_or_default();
                        let text = String::from_utf8_lossy(&text);
                        let lines: Vec<&str> = text.lines().collect();
                        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
                        format!("--- {}:\n{tail}\n", path.display())
                    })
                    .collect();
                bail!("partitions not spread over the aggregators after 120 s: {owned:?}\n{logs}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn start_services(
        &mut self,
        registry: &Path,
        events_window: Option<&str>,
        instances: usize,
    ) -> anyhow::Result<()> {
        let client = cctv_bus::connect(&self.nats_config(), "bench-setup").await?;
        let js = async_nats::jetstream::new(client);
        let mut streams = StreamsConfig::default();
        let mut streams_toml = String::new();
        if let Some(window) = events_window {
            streams.events.duplicate_window = humantime::parse_duration(window)?;
            let events = &streams.events;
            streams_toml = format!(
                "\n[streams.events]\nname = \"{}\"\nmax_age = \"{}\"\nduplicate_window = \"{window}\"\nmax_bytes = {}\nreplicas = {}\n",
                events.name,
                humantime::format_duration(events.max_age),
                events.max_bytes,
                events.replicas
            );
        }
        cctv_bus::ensure_streams(&js, &streams).await?;
        self.store()?.migrate().await?;
        let (ingest_tls, aggregator_tls) = match &self.tls {
            Some(tls) => (
                tls.nats_toml("cctv_ingest")?,
                tls.nats_toml("cctv_aggregator")?,
            ),
            None => (String::new(), String::new()),
        };
        let clickhouse_ca = self.tls.as_ref().map_or(String::new(), |tls| {
            format!("tls_ca_file = \"{}\"\n", tls.ca.ca_file().display())
        });
        let nats_url = self.nats.url();
        let clickhouse_url = self.clickhouse_url();
        let database = &self.database;
        let (ingest_settings, aggregator_settings) =
            SERVICE_SETTINGS.get().cloned().unwrap_or_default();
        let ingest_toml = format!(
            "[nats]\nurl = \"{nats_url}\"\n{ingest_tls}\n[data]\nregistry_path = \"{}\"\n\n[telemetry]\nlisten = \"127.0.0.1:0\"\n\n[ingest]\n{ingest_settings}\n{streams_toml}",
            registry.display()
        );
        let aggregator_toml = format!(
            "[nats]\nurl = \"{nats_url}\"\n{aggregator_tls}\n[clickhouse]\nurl = \"{clickhouse_url}\"\ndatabase = \"{database}\"\n{clickhouse_ca}\n[telemetry]\nlisten = \"127.0.0.1:0\"\n\n[aggregator]\n{aggregator_settings}\n{streams_toml}",
        );
        for instance in 0..instances {
            self.ingests.push(spawn_service(
                "cctv-ingest",
                instance,
                self.dir.path(),
                &ingest_toml,
                &[],
            )?);
            let port = free_port()?;
            self.aggregators.push(spawn_service(
                "cctv-aggregator",
                instance,
                self.dir.path(),
                &aggregator_toml,
                &[(
                    "CCTV_AGGREGATOR_METRICS_LISTEN",
                    format!("127.0.0.1:{port}"),
                )],
            )?);
            self.aggregator_ports.push(port);
        }
        Ok(())
    }

    /// The URL the aggregator and the bench write and read through.
    fn clickhouse_url(&self) -> String {
        match &self.tls {
            Some(_) => self
                .clickhouse
                .https_url()
                .unwrap_or_else(|| self.clickhouse.http_url()),
            None => self.clickhouse.http_url(),
        }
    }

    fn store(&self) -> anyhow::Result<Store> {
        Ok(Store::new(&ClickHouseConfig {
            url: self.clickhouse_url(),
            database: self.database.clone(),
            tls_ca_file: self.tls.as_ref().map(|tls| tls.ca.ca_file()),
            ..ClickHouseConfig::default()
        })?)
    }

    /// The publisher's settings (with TLS: the CA and its own certificate).
    fn nats_config(&self) -> NatsConfig {
        NatsConfig {
            url: self.nats.url(),
            tls_ca_file: self.tls.as_ref().map(|tls| tls.ca.ca_file()),
            tls_cert_file: self.tls.as_ref().map(|tls| tls.publisher.cert.clone()),
            tls_key_file: self.tls.as_ref().map(|tls| tls.publisher.key.clone()),
            ..NatsConfig::default()
        }
    }

    /// Each aggregator's seen-set, in bytes (its `cctv_aggregator_seen_bytes`).
    fn seen_bytes(&self) -> anyhow::Result<Vec<f64>> {
        self.aggregator_ports
            .iter()
            .map(|port| {
                scrape_sum(*port, "cctv_aggregator_seen_bytes")
                    .with_context(|| format!("no metrics from the aggregator on port {port}"))
            })
            .collect()
    }

    /// ClickHouse's counters now (see [`ClickHouseCounters`]).
    fn clickhouse_counters(&self) -> ClickHouseCounters {
        let mut counters = ClickHouseCounters::default();
        let names = CLICKHOUSE_EVENTS
            .iter()
            .map(|name| format!("'{name}'"))
            .collect::<Vec<_>>()
            .join(",");
        let events = self.clickhouse.query(&format!(
            "SELECT event, value FROM system.events WHERE event IN ({names}) FORMAT TabSeparated"
        ));
        for line in events.unwrap_or_default().lines() {
            if let Some((name, value)) = line.split_once('\t') {
                if let Some(slot) = CLICKHOUSE_EVENTS.iter().position(|event| *event == name) {
                    counters.events[slot] = value.trim().parse().unwrap_or(0);
                }
            }
        }
        counters.minor_faults = self
            .clickhouse
            .pid()
            .map_or(0, cctv_benches::hops::minor_faults);
        // `cctv_bench`, the rig's own constant: no data in this SQL.
        counters.active_parts = self
            .clickhouse
            .query(&format!(
                "SELECT count() FROM system.parts WHERE database = '{}' AND active",
                self.database
            ))
            .ok()
            .and_then(|body| body.trim().parse().ok())
            .unwrap_or(0);
        counters
    }

    /// Each aggregator's peak RSS in MiB.
    fn aggregator_peaks(&self) -> Vec<f64> {
        self.aggregators
            .iter()
            .map(|child| usage(child.id()).peak_rss_mib)
            .collect()
    }

    /// Bytes the raw and the events streams hold.
    async fn stream_bytes(&self) -> anyhow::Result<[u64; 2]> {
        let client = cctv_bus::connect(&self.nats_config(), "bench-streams").await?;
        let js = async_nats::jetstream::new(client);
        let streams = StreamsConfig::default();
        let mut bytes = [0; 2];
        for (slot, name) in bytes
            .iter_mut()
            .zip([&streams.raw.name, &streams.events.name])
        {
            let mut stream = js.get_stream(name).await?;
            let state = &stream.info().await?.state;
            *slot = state.bytes;
            println!(
                "  {name}: {} messages, {} bytes",
                state.messages, state.bytes
            );
        }
        Ok(bytes)
    }

    /// Usage of the ingests, the aggregators (CPU summed over instances,
    /// the largest instance's peak RSS), nats-server, clickhouse-server.
    fn usages(&self) -> [Usage; 4] {
        let of = |children: &[Child]| {
            children
                .iter()
                .map(|child| usage(child.id()))
                .fold(Usage::default(), |total, one| Usage {
                    cpu_seconds: total.cpu_seconds + one.cpu_seconds,
                    peak_rss_mib: total.peak_rss_mib.max(one.peak_rss_mib),
                })
        };
        [
            of(&self.ingests),
            of(&self.aggregators),
            self.nats.pid().map(usage).unwrap_or_default(),
            self.clickhouse.pid().map(usage).unwrap_or_default(),
        ]
    }

    fn stop(mut self) {
        self.stopped = true;
        for child in self.ingests.iter_mut().chain(self.aggregators.iter_mut()) {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
        if std::env::var_os("CCTV_BENCH_KEEP").is_some() {
            self.dir.disable_cleanup(true);
            println!("  logs kept in {}", self.dir.path().display());
        }
    }
}

impl Drop for Rig {
    /// A run that failed: its services must not outlive it (they would
    /// load the next runs), and their logs say why it failed, so they stay.
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        let services = [
            ("cctv-ingest", &mut self.ingests),
            ("cctv-aggregator", &mut self.aggregators),
        ];
        for (name, children) in services {
            for (instance, child) in children.iter_mut().enumerate() {
                match child.try_wait() {
                    Ok(Some(status)) => {
                        eprintln!("  {name} {instance} had exited during the run: {status}");
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                    }
                }
            }
        }
        self.dir.disable_cleanup(true);
        eprintln!(
            "  the failed run's configs and logs are kept in {}",
            self.dir.path().display()
        );
    }
}

/// The release binary next to this one (`target/release/<name>`).
fn release_binary(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let binary = me
        .parent()
        .map(|dir| dir.join(name))
        .context("no directory of the bench binary")?;
    if !binary.is_file() {
        bail!(
            "{} is missing: build it with `cargo build --release --bins` (make bench does)",
            binary.display()
        );
    }
    Ok(binary)
}

/// A TCP port free on the loopback interface right now.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The sum of every sample of `name` at a Prometheus endpoint on 127.0.0.1:`port`.
fn scrape_sum(port: u16, name: &str) -> anyhow::Result<f64> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut body = String::new();
    stream.read_to_string(&mut body)?;
    Ok(body
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            (key.split('{').next()? == name).then(|| value.parse::<f64>().ok())?
        })
        .sum())
}

fn spawn_service(
    name: &str,
    instance: usize,
    dir: &Path,
    config: &str,
    env: &[(&str, String)],
) -> anyhow::Result<Child> {
    // One file per instance, though the text is the same: rewriting one
    // shared file for the next instance truncated it while the one before
    // was reading it, which then ran on the built-in defaults (seen: an
    // aggregator retrying ClickHouse at the default URL for two minutes).
    let config_path = dir.join(format!("{name}-{instance}.toml"));
    std::fs::write(&config_path, config)?;
    let log = std::fs::File::create(dir.join(format!("{name}-{instance}.log")))?;
    Command::new(release_binary(name)?)
        .arg("--config")
        .arg(&config_path)
        .env_remove("CCTV_CONFIG")
        .env_remove("CCTV_NATS_URL")
        .env_remove("CCTV_CLICKHOUSE_URL")
        .env_remove("CCTV_FAULT")
        .env_remove("CCTV_AGGREGATOR_METRICS_LISTEN")
        .envs(env.iter().map(|(key, value)| (key, value)))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("failed to start {name}"))
}

/// The counters of `system.events` a run reports for clickhouse-server.
const CLICKHOUSE_EVENTS: [&str; 7] = [
    "Query",
    "SelectQuery",
    "InsertQuery",
    "InsertedRows",
    "Merge",
    "MergedRows",
    "SelectedRows",
];

/// What clickhouse-server had done at one moment: its `system.events`
/// counters ([`CLICKHOUSE_EVENTS`]), its minor page faults and the active
/// parts of the run's database. Printed per run, so that a slow run shows
/// whether ClickHouse merged, read or faulted in more than a fast one.
#[derive(Default)]
struct ClickHouseCounters {
    events: [u64; CLICKHOUSE_EVENTS.len()],
    minor_faults: u64,
    active_parts: u64,
}

impl ClickHouseCounters {
    /// The counters' growth since `before`, and the parts now, as one line.
    fn since(&self, before: &ClickHouseCounters) -> String {
        let mut line: Vec<String> = CLICKHOUSE_EVENTS
            .iter()
            .zip(self.events.iter().zip(&before.events))
            .map(|(name, (now, then))| format!("{name} {}", now.saturating_sub(*then)))
            .collect();
        line.push(format!(
            "minor faults {}",
            self.minor_faults.saturating_sub(before.minor_faults)
        ));
        line.push(format!("active parts {}", self.active_parts));
        line.join(", ")
    }
}

/// What one throughput scenario measured.
struct Throughput {
    scenario: String,
    offences: u64,
    raw_messages: u64,
    seconds: f64,
    publish_seconds: f64,
    lost: i64,
    usage: [Usage; 4],
    /// Bytes stored in `CCTV_RAW` and `CCTV_EVENTS` at the end.
    stream_bytes: [u64; 2],
    /// Seen-set MiB of the aggregator with the largest peak RSS, and that
    /// peak without it.
    seen_mib: f64,
    aggregator_rss_without_seen_mib: f64,
    /// Instances of each service.
    instances: usize,
}

/// One back-to-back pair: offences/s with one instance of each service,
/// then with two.
struct Pair {
    one: f64,
    two: f64,
    lost: i64,
}

impl Pair {
    /// Two instances against one, in per cent.
    fn difference(&self) -> f64 {
        (self.two / self.one - 1.0) * 100.0
    }
}

/// The median of the pairs' differences (the mean of the middle two for an
/// even count).
fn median_difference(pairs: &[Pair]) -> f64 {
    let mut differences: Vec<f64> = pairs.iter().map(Pair::difference).collect();
    differences.sort_by(f64::total_cmp);
    let middle = differences.len() / 2;
    match differences.len() {
        0 => 0.0,
        count if count % 2 == 1 => differences[middle],
        _ => (differences[middle - 1] + differences[middle]) / 2.0,
    }
}

/// `--pairs` back-to-back runs of `canonical-batch` and `canonical-batch-x2`,
/// when both are among the scenarios.
async fn scaling_pairs(options: &Options, registry: &Path) -> anyhow::Result<Vec<Pair>> {
    let wants = |name: &str| options.scenarios.iter().any(|s| s == name);
    let mut pairs = Vec::new();
    if !wants("canonical-batch") || !wants("canonical-batch-x2") {
        return Ok(pairs);
    }
    for pair in 1..=options.pairs {
        // Odd pairs run one instance first, even pairs two: whatever a run
        // leaves behind for the next (the page cache, the disk discarding
        // the previous run's deleted files) falls on both sides alike.
        let order: [(usize, &str); 2] = if pair % 2 == 1 {
            [(0, "canonical-batch"), (1, "canonical-batch-x2")]
        } else {
            [(1, "canonical-batch-x2"), (0, "canonical-batch")]
        };
        println!(
            "pair {pair} of {}: {}, then {}",
            options.pairs, order[0].1, order[1].1
        );
        let mut rates = [0.0; 2];
        let mut lost = 0;
        for (slot, scenario) in order {
            let result = throughput(
                scenario,
                options.events,
                registry,
                options.events_duplicate_window.as_deref(),
            )
            .await?;
            rates[slot] = result.offences as f64 / result.seconds;
            lost += result.lost;
            println!(
                "  {scenario}: {:.0} offences/s, lost {}",
                rates[slot], result.lost
            );
        }
        pairs.push(Pair {
            one: rates[0],
            two: rates[1],
            lost,
        });
    }
    Ok(pairs)
}

async fn throughput(
    scenario: &str,
    events: u64,
    registry: &Path,
    events_window: Option<&str>,
) -> anyhow::Result<Throughput> {
    // `-x2` scenarios: two instances of each service with one config.
    let instances = if scenario.ends_with("-x2") { 2 } else { 1 };
    let tls = scenario.ends_with("-tls");
    let sync = scenario.ends_with("-sync");
    let rig = Rig::start(registry, events_window, instances, tls, sync).await?;
    let before = rig.usages();
    let clickhouse_before = rig.clickhouse_counters();
    let format = if scenario.starts_with("mixed") {
        FormatChoice::Mixed
    } else {
        FormatChoice::One("canonical")
    };
    let args = SimulateArgs {
        count: events,
        rate: 0.0,
        registry: Some(registry.to_path_buf()),
        cameras: None,
        unknown_share: 0.02,
        gateways: 8,
        run_id: Some(format!("bench-{scenario}")),
        day: None,
        seed: Some(7),
        expect_out: None,
        duplicates: 0.0,
        format,
        noise: 0.1,
        malformed: 0.005,
        quiet: true,
        // `-batch` scenarios: gateway batches of 100 (`cctv.raw.batch.<gw>`).
        batch: if scenario.contains("-batch") { 100 } else { 0 },
        // The generator (XML, JSON, batches) shares the cores with the
        // pipeline: generated first, it does not slow the measured run.
        pregenerate: true,
    };
    let raw_stream = StreamsConfig::default().raw.name;
    let run = cctv_simulate::run_simulate(&rig.nats_config(), &raw_stream, &args).await?;
    let started = run.publish_started;
    let publish_seconds = run.publish_seconds;
    let expectation = run.expectation;
    let store = rig.store()?;
    loop {
        let counted = store.count_events().await.unwrap_or(0);
        if counted >= expectation.count {
            break;
        }
        if started.elapsed() > DRAIN_TIMEOUT {
            bail!(
                "{scenario}: only {counted} of {} rows after {DRAIN_TIMEOUT:?}",
                expectation.count
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    // Let the services go idle so that their CPU is all counted, then compare.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rig.usages();
    let totals = store.totals(&TotalsFilter::default()).await?;
    let counted: u64 = totals.iter().map(|row| row.events).sum();
    let differences = compare_totals(&expectation.totals, &totals);
    if !differences.is_empty() {
        println!(
            "{scenario}: {} cells differ from the expectation",
            differences.len()
        );
    }
    let usage = std::array::from_fn(|index| Usage {
        cpu_seconds: after[index].cpu_seconds - before[index].cpu_seconds,
        peak_rss_mib: after[index].peak_rss_mib,
    });
    let raw_messages = expectation.raw.map_or(events, |raw| raw.published);
    let stream_bytes = rig.stream_bytes().await?;
    let seen = rig.seen_bytes()?;
    let inserts: f64 = rig
        .aggregator_ports
        .iter()
        .filter_map(|port| scrape_sum(*port, "cctv_aggregator_inserts_total").ok())
        .sum();
    println!("  {inserts:.0} inserts into ClickHouse over {instances} aggregator(s)");
    println!(
        "  clickhouse-server: {}",
        rig.clickhouse_counters().since(&clickhouse_before)
    );
    let per_million = |usage: &Usage| usage.cpu_seconds * 1e6 / expectation.count.max(1) as f64;
    println!(
        "  CPU-s per million offences: ingest {:.2}, aggregator {:.2}, nats-server {:.2}, clickhouse-server {:.2}",
        per_million(&usage[0]),
        per_million(&usage[1]),
        per_million(&usage[2]),
        per_million(&usage[3]),
    );
    let peaks = rig.aggregator_peaks();
    let (seen_mib, aggregator_rss_without_seen_mib) = seen
        .iter()
        .zip(&peaks)
        .map(|(seen, peak)| (seen / (1024.0 * 1024.0), *peak))
        .map(|(seen, peak)| (seen, peak - seen))
        .fold(
            (0.0, 0.0),
            |largest, one| if one.1 > largest.1 { one } else { largest },
        );
    rig.stop();
    Ok(Throughput {
        scenario: scenario.to_string(),
        offences: expectation.count,
        raw_messages,
        seconds,
        publish_seconds,
        lost: i64::try_from(expectation.count).unwrap_or(i64::MAX)
            - i64::try_from(counted).unwrap_or(i64::MAX),
        usage,
        stream_bytes,
        seen_mib,
        aggregator_rss_without_seen_mib,
        instances,
    })
}

/// What the `store-floor` scenario measured for one way of inserting.
struct StoreFloor {
    how: String,
    rows: u64,
    seconds: f64,
    cpu_seconds: f64,
}

/// The `store-floor` scenario: what clickhouse-server alone spends per
/// million rows of `offence_events`, inserted by the store's own RowBinary
/// inserts from one client: straight into the table in batches of 100,000,
/// through the fence (the `Null` table and its materialized view) in batches
/// of 100,000, and through the fence in batches of 4,000 (what one partition
/// owner writes per insert at ~64,000 offences/s over 16 partitions).
async fn store_floor(rows: u64) -> anyhow::Result<Vec<StoreFloor>> {
    let clickhouse = ClickHouseServer::start().context("failed to start clickhouse-server")?;
    let pid = clickhouse.pid().context("clickhouse-server has no pid")?;
    let event = sample_event()?;
    let now = u32::try_from(chrono::Utc::now().timestamp())?;
    let mut results = Vec::new();
    for (how, database, batch, fenced) in [
        (
            "direct, batches of 100,000",
            "floor_direct",
            100_000usize,
            false,
        ),
        (
            "through the fence, batches of 100,000",
            "floor_fenced",
            100_000,
            true,
        ),
        (
            "through the fence, batches of 4,000",
            "floor_small",
            4_000,
            true,
        ),
    ] {
        let store = Store::new(&ClickHouseConfig {
            url: clickhouse.http_url(),
            database: database.to_string(),
            ..ClickHouseConfig::default()
        })?;
        store.migrate().await?;
        store.fence("p0", 1, "bench").await?;
        let mut rows_batch = Vec::with_capacity(batch);
        let started = Instant::now();
        let cpu_before = cctv_benches::hops::cpu_seconds(pid);
        let mut written = 0u64;
        let mut sequence = 0u64;
        let mut event = event.clone();
        while written < rows {
            rows_batch.clear();
            let mut encoded = cctv_store::EncodedRows::new();
            let take = batch.min(usize::try_from(rows - written)?);
            for _ in 0..take {
                sequence += 1;
                event.event_id = uuid::Uuid::from_u128(u128::from(sequence));
                if fenced {
                    encoded.push(&event.view(), "CCTV_EVENTS@1", "p0", sequence);
                    continue;
                }
                let mut row = cctv_store::EventRow::from_event(
                    event.clone(),
                    "CCTV_EVENTS@1",
                    "p0",
                    cctv_store::StreamPosition {
                        stream_seq: sequence,
                        batch_first_seq: sequence,
                        batch_rows: 1,
                    },
                    now,
                );
                row.lease_epoch = 1;
                rows_batch.push(row);
            }
            if fenced {
                encoded.seal(now, 1);
                store.insert_fenced(&[("p0", &encoded)]).await?;
            } else {
                store.insert_batch(&rows_batch).await?;
            }
            written += take as u64;
        }
        let seconds = started.elapsed().as_secs_f64();
        // Merges run after the inserts: count what the server spends on them too.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let cpu_seconds = cctv_benches::hops::cpu_seconds(pid) - cpu_before;
        let stored = store.count_events().await?;
        if stored != rows {
            bail!("{how}: {stored} rows stored of {rows}");
        }
        println!(
            "  {how}: {rows} rows in {seconds:.1} s, clickhouse-server {:.1} CPU-s per million",
            cpu_seconds * 1e6 / rows as f64
        );
        results.push(StoreFloor {
            how: how.to_string(),
            rows,
            seconds,
            cpu_seconds,
        });
    }
    Ok(results)
}

/// What the `seen` scenario measured for one layout of the ids.
struct SeenRebuild {
    layout: &'static str,
    ids: u64,
    partitions: u32,
    seconds: f64,
    heap_bytes: usize,
}

/// Generates `ids` rows in ClickHouse itself (INSERT ... SELECT from
/// `numbers`) in database `database`, written by `writers` partitions.
async fn generate_written_ids(
    clickhouse: &ClickHouseServer,
    database: &str,
    ids: u64,
    writers: u32,
) -> anyhow::Result<Store> {
    let store = Store::new(&ClickHouseConfig {
        url: clickhouse.http_url(),
        database: database.to_string(),
        ..ClickHouseConfig::default()
    })?;
    store.migrate().await?;
    // Distinct UUIDs from the row number: its hex in the last 12 digits.
    store
        .client()
        .query(
            "INSERT INTO offence_events (event_id, detected_at, received_at, ingested_at, \
             inserted_at, region, offence_type, source_stream, writer, stream_seq) \
             SELECT toUUID(concat('00000000-0000-4000-8000-', \
                    substring(hex(toUInt64(number) + 0x100000000000), 1, 12))), \
                    now(), now(), now(), now(), 'KZ-75', 'traffic.speeding', 'CCTV_EVENTS@1', \
                    concat('p', toString(number % ?)), number \
             FROM system.numbers LIMIT ?",
        )
        .bind(writers)
        .bind(ids)
        .execute()
        .await
        .context("generate rows")?;
    Ok(store)
}

/// The `seen` scenario: the seen-set's bytes per id and the time to rebuild
/// it from ClickHouse (what every session start and takeover does), for
/// `ids` ids written within the horizon: all in one partition (one owner
/// rebuilding everything), and spread over 16 partitions (one instance
/// taking all 16 over, one partition after another).
async fn seen(ids: u64) -> anyhow::Result<Vec<SeenRebuild>> {
    let clickhouse = ClickHouseServer::start().context("failed to start clickhouse-server")?;
    let mut results = Vec::new();
    for (layout, database, writers) in [
        ("one partition", "seen_one", 1u32),
        ("16 partitions", "seen_sixteen", 16u32),
    ] {
        let started = Instant::now();
        let store = generate_written_ids(&clickhouse, database, ids, writers).await?;
        println!(
            "  {layout}: {ids} rows generated in ClickHouse in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let started = Instant::now();
        let mut heap_bytes = 0;
        let mut held = 0u64;
        for partition in 0..writers {
            let mut seen = cctv_aggregator::SeenSet::new(24 * 3600);
            let cutoff = seen.cutoff(u32::try_from(chrono::Utc::now().timestamp())?);
            store
                .for_each_written_id(&format!("p{partition}"), cutoff, |id, at| {
                    seen.insert(id, at);
                })
                .await?;
            heap_bytes += seen.heap_bytes();
            held += seen.len() as u64;
        }
        let seconds = started.elapsed().as_secs_f64();
        if held != ids {
            bail!("{layout}: rebuilt {held} ids of {ids}");
        }
        println!(
            "  {layout}: rebuilt {held} ids in {seconds:.1} s, {:.1} bytes per id",
            heap_bytes as f64 / held as f64
        );
        results.push(SeenRebuild {
            layout,
            ids,
            partitions: writers,
            seconds,
            heap_bytes,
        });
    }
    Ok(results)
}

/// Publish -> queryable latencies in milliseconds, sorted.
async fn latency(rate: u64, seconds: u64, registry: &Path) -> anyhow::Result<Vec<f64>> {
    let rig = Rig::start(registry, None, 1, false, false).await?;
    let client = async_nats::connect(rig.nats.url()).await?;
    let js = async_nats::jetstream::new(client);
    let total = rate * seconds;
    let detected = (chrono::Utc::now() - chrono::TimeDelta::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let started = Instant::now();
    let mut published_at: Vec<f64> = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    let store = rig.store()?;
    let poller = tokio::spawn(poll_latencies(store, total, started));
    let mut acks = std::collections::VecDeque::new();
    let per_tick = rate / 1000;
    let mut interval = tokio::time::interval(Duration::from_millis(1));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut index = 0u64;
    while index < total {
        interval.tick().await;
        // Publish the events due by now (keeps the rate exact after a stall).
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let due = ((started.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        let due = due.max(index + per_tick.min(total - index));
        while index < due {
            let payload = format!(
                r#"{{"camera_id":"KZ75-0001","offence_type":"traffic.speeding","detected_at":"{detected}","source_event_id":"lat-{index}"}}"#
            );
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("lat-{index}").as_str());
            published_at.push(started.elapsed().as_secs_f64() * 1000.0);
            acks.push_back(
                js.publish_with_headers(
                    "cctv.raw.canonical.bench-latency",
                    headers,
                    payload.into(),
                )
                .await?,
            );
            while acks.len() > 4096 {
                if let Some(ack) = acks.pop_front() {
                    ack.await?;
                }
            }
            index += 1;
        }
    }
    for ack in acks {
        ack.await?;
    }
    let queryable = poller.await??;
    rig.stop();
    let mut latencies: Vec<f64> = queryable
        .iter()
        .filter_map(|(index, at)| {
            published_at
                .get(usize::try_from(*index).ok()?)
                .map(|published| at - published)
        })
        .collect();
    if latencies.len() as u64 != total {
        bail!(
            "latency: {} of {total} events became queryable",
            latencies.len()
        );
    }
    latencies.sort_by(f64::total_cmp);
    Ok(latencies)
}

/// Polls ClickHouse for new rows; returns (event index, ms since start when
/// first seen).
///
/// Partitions are written independently, so stream sequences reach
/// ClickHouse in order only within one writer: each poll reads from the
/// lowest of the writers' newest sequences and skips rows already seen.
async fn poll_latencies(
    store: Store,
    total: u64,
    started: Instant,
) -> anyhow::Result<Vec<(u64, f64)>> {
    let mut seen = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    let mut met = vec![false; usize::try_from(total)?];
    let mut newest: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    let writers = usize::from(cctv_bus::subjects::DEFAULT_PARTITIONS);
    while (seen.len() as u64) < total {
        if started.elapsed() > DRAIN_TIMEOUT {
            bail!("latency: only {} of {total} rows seen", seen.len());
        }
        let from = if newest.len() < writers {
            0
        } else {
            newest.values().copied().min().unwrap_or(0)
        };
        let rows: Vec<(String, u64, String)> = store
            .client()
            .query(
                "SELECT writer, stream_seq, source_event_id FROM offence_events \
                 WHERE stream_seq > ?",
            )
            .bind(from)
            .fetch_all()
            .await
            .unwrap_or_default();
        let now = started.elapsed().as_secs_f64() * 1000.0;
        for (writer, sequence, source_id) in rows {
            let last = newest.entry(writer).or_insert(0);
            *last = (*last).max(sequence);
            let Some(index) = source_id
                .strip_prefix("lat-")
                .and_then(|i| i.parse::<usize>().ok())
            else {
                continue;
            };
            if let Some(flag) = met.get_mut(index) {
                if !*flag {
                    *flag = true;
                    seen.push((index as u64, now));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(seen)
}

/// A canonical raw message as gateways send it, and the event it becomes.
const RAW_SAMPLE: &str = r#"{"camera_id":"AST-0412","offence_type":"traffic.speeding","detected_at":"2026-11-27T08:15:05.250+05:00","confidence":0.97,"plate":"404ZXC16","speed_kmh":97,"speed_limit_kmh":70,"source_event_id":"gw7-000184223"}"#;

/// The event [`RAW_SAMPLE`] becomes, through the real normaliser.
fn sample_event() -> anyhow::Result<cctv_event::OffenceEvent> {
    let normalizer = cctv_normalize::Normalizer::new(
        std::sync::Arc::new(cctv_event::Taxonomy::builtin()?),
        std::sync::Arc::new(cctv_event::Regions::builtin()?),
        std::sync::Arc::new(cctv_event::CameraRegistry::default()),
        cctv_normalize::Limits::default(),
    );
    let raw = cctv_normalize::RawMessage {
        format: "canonical",
        gateway_id: "gw7",
        payload: RAW_SAMPLE.as_bytes(),
        msg_id: Some("gw7-000184223"),
        camera_id: None,
        received_at: None,
        stored_at: None,
    };
    let cctv_normalize::Outcome::Offences(events) = normalizer.normalize(&raw, chrono::Utc::now())
    else {
        bail!("the raw sample does not normalise to an offence");
    };
    events.into_iter().next().context("no event")
}

/// The `floor` scenario: runs `cctv_benches::hops` on a fresh nats-server and
/// returns its report section.
async fn floor(messages: u64) -> anyhow::Result<String> {
    let nats = NatsServer::start().context("failed to start nats-server")?;
    let pid = nats.pid().context("nats-server has no pid")?;
    let mut event = Vec::new();
    sample_event()?.write_binary(&mut event);
    let hops = cctv_benches::hops::measure(
        &nats.url(),
        pid,
        messages,
        bytes::Bytes::from_static(RAW_SAMPLE.as_bytes()),
        bytes::Bytes::from(event.clone()),
    )
    .await?;
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let mut section = String::new();
    writeln!(
        section,
        "## NATS floor (nats-server alone: no service, no ClickHouse)\n\n\
         {messages} messages per operation on a fresh nats-server with the streams as deployed \
         (file storage; `CCTV_RAW` and `CCTV_EVENTS` with their default {} duplicate windows), \
         raw messages of {} bytes, events of {} bytes, one publisher or consumer in the \
         benchmark process (4,096 publishes in flight, pulls of 1,000).\n\n\
         | operation | msg/s | nats-server CPU µs per msg | client CPU µs per msg |\n\
         | --- | ---: | ---: | ---: |",
        humantime::format_duration(StreamsConfig::default().raw.duplicate_window),
        RAW_SAMPLE.len(),
        event.len()
    )?;
    for hop in &hops {
        println!(
            "  {}: {:.0} msg/s, server {:.1} µs, client {:.1} µs per message",
            hop.operation,
            hop.rate(),
            hop.server_us(),
            hop.client_us()
        );
        writeln!(
            section,
            "| {} | {:.0} | {:.1} | {:.1} |",
            hop.operation,
            hop.rate(),
            hop.server_us(),
            hop.client_us()
        )?;
    }
    for hop in hops.iter().filter(|hop| hop.dropped > 0) {
        writeln!(
            section,
            "\n{}: nats-server stored {} of {} messages and dropped {} without telling the \
             publisher (\"excessive stream ingest rate\"; nats-server 2.11 and later bound a \
             stream's ingest queue). Gateways must publish with acks (JetStream publish), as \
             `cctvctl simulate` and the ingest do.",
            hop.operation,
            hop.messages - hop.dropped,
            hop.messages,
            hop.dropped
        )?;
        println!(
            "  {}: {} of {} dropped by nats-server",
            hop.operation, hop.dropped, hop.messages
        );
    }
    // A single-message gateway's offence crosses the raw hop alone: acked
    // publish in (row 1), pull with an explicit ack out (row 5). Events
    // travel in batches of up to thousands (rows 4 and 6 are paid per batch
    // message, not per offence).
    let raw_hop = [0, 4];
    let server: f64 = raw_hop
        .iter()
        .filter_map(|&i| hops.get(i))
        .map(cctv_benches::hops::Hop::server_us)
        .sum();
    let client: f64 = raw_hop
        .iter()
        .filter_map(|&i| hops.get(i))
        .map(cctv_benches::hops::Hop::client_us)
        .sum();
    #[allow(clippy::cast_precision_loss)]
    let cores = cores as f64;
    writeln!(
        section,
        "\nAn offence from a single-message gateway costs the raw hop rows 1 and 5: **{server:.1} µs \
         of nats-server CPU** and {client:.1} µs of NATS client CPU; its event shares a batch \
         message (rows 4 and 6 per batch, not per offence). On {cores:.0} cores that bounds the \
         single-message path at **{:.0} offences/s** if nothing but nats-server ran, and {:.0}/s \
         with the least client work added. A gateway batch of 100 pays rows 1 and 5 once per \
         100 offences (its message is larger; the batch scenarios below measure the server's \
         CPU per offence on that path).\n",
        cores * 1e6 / server,
        cores * 1e6 / (server + client)
    )?;
    Ok(section)
}

fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let index = ((sorted.len() - 1) as f64 * fraction).round() as usize;
    sorted.get(index).copied().unwrap_or(f64::NAN)
}

fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|out| {
            let text = if out.stdout.is_empty() {
                out.stderr
            } else {
                out.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|_| "not found".into())
}

fn machine_description() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|line| line.starts_with("model name"))
        .and_then(|line| line.split_once(':'))
        .map_or("unknown", |(_, model)| model.trim())
        .to_string();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = meminfo
        .lines()
        .next()
        .unwrap_or("")
        .replace("MemTotal:", "")
        .trim()
        .to_string();
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    format!(
        "- CPU: {model}, {cores} cores available\n- memory: {memory}\n- kernel: {}\n\
         - nats-server: {}{}\n- clickhouse-server: {}\n- rustc: {}\n- commit: {}\n- date: {}\n",
        command_output("uname", &["-r"]),
        // The nats-server the testkit runs (the pinned release), not the one on PATH.
        cctv_testkit::nats_server_binary().map_or_else(
            |error| format!("unavailable ({error})"),
            |binary| command_output(&binary.to_string_lossy(), &["--version"]),
        ),
        // Extra JetStream settings (e.g. `sync_interval: always`) change what
        // the figures mean: say so.
        std::env::var(cctv_testkit::NATS_JETSTREAM_ENV)
            .ok()
            .filter(|lines| !lines.trim().is_empty())
            .map_or_else(String::new, |lines| format!(", with JetStream `{lines}`")),
        command_output("dpkg-query", &["-W", "-f=${Version}", "clickhouse-server"]),
        command_output("rustc", &["--version"]),
        command_output("git", &["rev-parse", "--short", "HEAD"]),
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
    )
}

/// Criterion's estimates under `target/criterion`: (name, ns per element, elements/s).
fn criterion_results(target: &Path) -> Vec<(String, f64, f64)> {
    let mut results = Vec::new();
    let root = target.join("criterion");
    let Ok(groups) = std::fs::read_dir(&root) else {
        return results;
    };
    for group in groups.filter_map(Result::ok) {
        let Ok(benches) = std::fs::read_dir(group.path()) else {
            continue;
        };
        for bench in benches.filter_map(Result::ok) {
            let new = bench.path().join("new");
            let estimates: serde_json::Value = match std::fs::read(new.join("estimates.json")) {
                Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
                Err(_) => continue,
            };
            let benchmark: serde_json::Value = std::fs::read(new.join("benchmark.json"))
                .ok()
                .and_then(|bytes| serde_json::from_slice(&bytes).ok())
                .unwrap_or_default();
            let mean_ns = estimates["mean"]["point_estimate"]
                .as_f64()
                .unwrap_or(f64::NAN);
            let elements = benchmark["throughput"]["Elements"].as_f64().unwrap_or(1.0);
            let name = benchmark["full_id"].as_str().map_or_else(
                || bench.file_name().to_string_lossy().to_string(),
                str::to_string,
            );
            results.push((name, mean_ns / elements, elements * 1e9 / mean_ns));
        }
    }
    results.sort_by(|a, b| a.0.cmp(&b.0));
    results
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let options = parse_options()?;
    let _ = SERVICE_SETTINGS.set((
        options.ingest_settings.clone(),
        options.aggregator_settings.clone(),
    ));
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let registry = repo.join("deploy/cameras.csv").canonicalize()?;
    let mut report = String::new();
    writeln!(report, "# Benchmarks\n")?;
    writeln!(
        report,
        "Written by `make bench` (criterion micro-benchmarks, then `cctv-bench-e2e`). \
         Every process runs on this one machine: the publisher, nats-server, \
         clickhouse-server and both services share its cores. Servers are fresh for \
         each scenario (temp dirs, file storage), services are the release binaries.\n"
    )?;
    writeln!(report, "## Machine\n\n{}", machine_description())?;

    if let Some(unknown) = options
        .scenarios
        .iter()
        .find(|s| !SCENARIOS.contains(&s.as_str()))
    {
        bail!(
            "unknown scenario {unknown}; scenarios: {}",
            SCENARIOS.join(", ")
        );
    }
    if options.scenarios.iter().any(|s| s == "floor") {
        println!("scenario floor: {} messages per operation", options.events);
        report.push_str(&floor(options.events).await?);
    }
    let mut throughputs = Vec::new();
    for scenario in options
        .scenarios
        .iter()
        .filter(|s| THROUGHPUT_SCENARIOS.contains(&s.as_str()))
    {
        println!("scenario {scenario}: {} offences", options.events);
        let result = throughput(
            scenario,
            options.events,
            &registry,
            options.events_duplicate_window.as_deref(),
        )
        .await?;
        println!(
            "  {:.0} offences/s end to end ({} raw messages, published in {:.1} s, drained in {:.1} s), lost {}",
            result.offences as f64 / result.seconds,
            result.raw_messages,
            result.publish_seconds,
            result.seconds,
            result.lost
        );
        throughputs.push(result);
    }
    let pairs = scaling_pairs(&options, &registry).await?;
    if !throughputs.is_empty() {
        writeln!(
            report,
            "## Throughput (burst, published as fast as possible)\n\n\
             Every message is generated in memory first, and packed into its gateway batch \
             in the batch scenarios (`cctvctl simulate --pregenerate`), so the generator's \
             work is not counted; the clock runs from the first publish \
             to the last row in ClickHouse, the publisher sharing the cores with the pipeline.\n"
        )?;
        writeln!(
            report,
            "| load | offences | raw messages | seconds (first publish to last row) | offences/s | raw msg/s | lost | bytes per offence in CCTV_RAW / CCTV_EVENTS |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        )?;
        for result in &throughputs {
            writeln!(
                report,
                "| {} | {} | {} | {:.1} | {:.0} | {:.0} | {} | {:.0} / {:.0} |",
                result.scenario,
                result.offences,
                result.raw_messages,
                result.seconds,
                result.offences as f64 / result.seconds,
                result.raw_messages as f64 / result.seconds,
                result.lost,
                result.stream_bytes[0] as f64 / result.offences as f64,
                result.stream_bytes[1] as f64 / result.offences as f64,
            )?;
        }
        writeln!(
            report,
            "\nCPU seconds per million offences, and peak RSS:\n\n| load | cctv-ingest | cctv-aggregator | nats-server | clickhouse-server | ours / servers |\n| --- | ---: | ---: | ---: | ---: | ---: |"
        )?;
        for result in &throughputs {
            let per_million = |usage: &Usage| usage.cpu_seconds * 1e6 / result.offences as f64;
            let ours = per_million(&result.usage[0]) + per_million(&result.usage[1]);
            let servers = per_million(&result.usage[2]) + per_million(&result.usage[3]);
            writeln!(
                report,
                "| {} | {:.1} s, {:.0} MiB | {:.1} s, {:.0} MiB | {:.1} s, {:.0} MiB | {:.1} s, {:.0} MiB | {:.2} |",
                result.scenario,
                per_million(&result.usage[0]),
                result.usage[0].peak_rss_mib,
                per_million(&result.usage[1]),
                result.usage[1].peak_rss_mib,
                per_million(&result.usage[2]),
                result.usage[2].peak_rss_mib,
                per_million(&result.usage[3]),
                result.usage[3].peak_rss_mib,
                ours / servers
            )?;
        }
        writeln!(report)?;
    }
    if !pairs.is_empty() {
        writeln!(
            report,
            "## Scaling out: two instances of each service against one, in pairs\n\n\
             The machine's speed moves by ±15 % from one minute to the next, more than the \
             difference measured, so after the scenarios above `canonical-batch` and \
             `canonical-batch-x2` ran {} more times back to back (each pair within about a \
             minute, fresh servers for each run; odd pairs run one instance first, even pairs \
             two). The target compares the median of the \
             pairs' differences with 0.\n\n\
             | pair | 1 instance of each, offences/s | 2 instances of each, offences/s | difference | lost |\n\
             | ---: | ---: | ---: | ---: | ---: |",
            pairs.len()
        )?;
        for (index, pair) in pairs.iter().enumerate() {
            writeln!(
                report,
                "| {} | {:.0} | {:.0} | {:+.1} % | {} |",
                index + 1,
                pair.one,
                pair.two,
                pair.difference(),
                pair.lost
            )?;
        }
        writeln!(
            report,
            "\nMedian difference: {:+.1} %.\n",
            median_difference(&pairs)
        )?;
    }
    if options.scenarios.iter().any(|s| s == "store-floor") {
        println!("scenario store-floor: {} rows per way", options.events);
        let floors = store_floor(options.events).await?;
        writeln!(
            report,
            "## ClickHouse floor (clickhouse-server alone, no NATS, no services)\n\n\
             Rows of `offence_events` built from one canonical event, inserted with the \
             store's RowBinary inserts from one client on a fresh server; CPU of \
             clickhouse-server including 3 s of merges after the last insert:\n\n\
             | inserted | rows | seconds | clickhouse-server CPU-s per million rows | rows/s if it had both cores |\n\
             | --- | ---: | ---: | ---: | ---: |"
        )?;
        for floor in &floors {
            let per_million = floor.cpu_seconds * 1e6 / floor.rows as f64;
            writeln!(
                report,
                "| {} | {} | {:.1} | {per_million:.1} | {:.0} |",
                floor.how,
                floor.rows,
                floor.seconds,
                2e6 / per_million
            )?;
        }
        writeln!(report)?;
    }
    if options.scenarios.iter().any(|s| s == "seen") {
        println!("scenario seen: {} ids in the horizon", options.seen_ids);
        let rebuilds = seen(options.seen_ids).await?;
        writeln!(
            report,
            "## Seen-set (dedup horizon held by the partition owners)\n\n\
             Ids generated in ClickHouse (18.16, fresh server), then read back the way a \
             session start or takeover rebuilds its seen-set (`for_each_written_id` into \
             `cctv_aggregator::SeenSet`):\n\n\
             | ids in the horizon | layout | rebuild seconds | ids/s | heap bytes | bytes per id |\n\
             | ---: | --- | ---: | ---: | ---: | ---: |"
        )?;
        for rebuild in &rebuilds {
            writeln!(
                report,
                "| {} | {} ({} rebuilt one after another) | {:.1} | {:.0} | {} | {:.1} |",
                rebuild.ids,
                rebuild.layout,
                rebuild.partitions,
                rebuild.seconds,
                rebuild.ids as f64 / rebuild.seconds,
                rebuild.heap_bytes,
                rebuild.heap_bytes as f64 / rebuild.ids as f64
            )?;
        }
        writeln!(report)?;
    }
    if options.scenarios.iter().any(|s| s == "analyst") {
        println!(
            "scenario analyst: {} offences over a year",
            options.analyst_rows
        );
        let result = cctv_benches::analyst::run(options.analyst_rows, |step| {
            println!("  {step}");
        })
        .await?;
        writeln!(
            report,
            "## Analyst queries over {} offences\n\n\
             A year of offences (insert times spread evenly over the 365 days before the run, \
             10,000 cameras each in one of 20 regions, 13 types) generated in ClickHouse {} itself ({:.0} s), \
             then each query run {} times (median): counting the rows of `offence_events` (what \
             the plain view did before the rollups), then through the views `offence_totals` and \
             `camera_totals` after one roller run rolled the year up ({} insert days in {:.0} s; \
             {} rows in `offence_day_rollup`, {} in `camera_day_rollup`). Both ways gave the same \
             answers. `cctvctl audit`'s comparison of every rolled day with its rows took \
             {:.1} s.\n\n\
             | query | counting the rows, s | with the rollups, s | answer lines |\n\
             | --- | ---: | ---: | ---: |",
            result.rows,
            result.server_version,
            result.generate_seconds,
            cctv_benches::analyst::RUNS,
            result.slots_rolled,
            result.roll_seconds,
            result.rollup_rows.0,
            result.rollup_rows.1,
            result.audit_seconds,
        )?;
        for query in &result.queries {
            writeln!(
                report,
                "| {} | {:.2} | {:.2} | {} |",
                query.name, query.raw_seconds, query.rolled_seconds, query.answer_lines
            )?;
        }
        writeln!(report)?;
    }
    let mut latency_p99 = None;
    let mut gateway_result = None;
    if options.scenarios.iter().any(|s| s == "gateway") {
        println!("scenario gateway: {} messages per intake", options.events);
        let binary = cctv_benches::gateway::gateway_binary()?;
        let result = cctv_benches::gateway::run(&binary, options.events).await?;
        for (intake, phase) in [
            ("HTTP pushes", Ok(result.http)),
            ("MQTT messages", result.mqtt.clone()),
        ] {
            match phase {
                Ok(phase) => println!(
                    "  {intake}: {:.0}/s into NATS, gateway {:.1} CPU-us per message ({} in {:.1} s)",
                    phase.rate(),
                    phase.cpu_us_per_message(),
                    phase.messages,
                    phase.seconds
                ),
                Err(stalled) => println!("  {intake}: {stalled}"),
            }
        }
        gateway_result = Some(result);
    }
    if options.scenarios.iter().any(|s| s == "latency") {
        println!(
            "scenario latency: {} events/s for {} s",
            options.latency_rate, options.latency_seconds
        );
        let latencies = latency(options.latency_rate, options.latency_seconds, &registry).await?;
        let (p50, p99, max) = (
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            latencies.last().copied().unwrap_or(f64::NAN),
        );
        println!("  publish -> queryable: p50 {p50:.0} ms, p99 {p99:.0} ms, max {max:.0} ms");
        latency_p99 = Some(p99);
        writeln!(
            report,
            "## Latency (publish -> queryable in ClickHouse)\n\n{} canonical events/s for {} s ({} events), ClickHouse polled every 20 ms:\n\n| p50 | p99 | max |\n| ---: | ---: | ---: |\n| {p50:.0} ms | {p99:.0} ms | {max:.0} ms |\n",
            options.latency_rate,
            options.latency_seconds,
            latencies.len()
        )?;
    }
    writeln!(
        report,
        "## Targets (issue 11)\n\n| target | measured | met |\n| --- | --- | --- |"
    )?;
    let rate_of = |name: &str| {
        throughputs
            .iter()
            .find(|result| result.scenario == name)
            .map(|result| result.offences as f64 / result.seconds)
    };
    for result in &throughputs {
        let rate = result.offences as f64 / result.seconds;
        let goal = match result.scenario.as_str() {
            "canonical-batch" => Some(100_000.0),
            "mixed-batch" => Some(60_000.0),
            "canonical" => Some(30_000.0),
            _ => None,
        };
        if let Some(goal) = goal {
            writeln!(
                report,
                "| {} >= {goal:.0} offences/s, 0 lost | {rate:.0}/s, {} lost | {} |",
                result.scenario,
                result.lost,
                if rate >= goal && result.lost == 0 {
                    "yes"
                } else {
                    "no"
                }
            )?;
        }
        // Variants of canonical-batch, each beside the plain run's rate.
        let variant = match result.scenario.as_str() {
            "canonical-batch-tls" => Some((
                "TLS on every hop (NATS with client certificates, ClickHouse over HTTPS)"
                    .to_string(),
                "in plain text",
            )),
            "canonical-batch-sync" => Some((
                format!("every NATS write fsynced (`{SYNC_ALWAYS}`)"),
                "with the default `sync_interval`",
            )),
            _ => None,
        };
        if let Some((what, plain_is)) = variant {
            let plain = rate_of("canonical-batch").map_or("not run".to_string(), |one| {
                format!(
                    "{one:.0}/s {plain_is} ({:+.0} %)",
                    (rate / one - 1.0) * 100.0
                )
            });
            writeln!(
                report,
                "| {what}, 0 lost | {rate:.0}/s vs {plain}, {} lost | {} |",
                result.lost,
                if result.lost == 0 { "yes" } else { "no" }
            )?;
        }
        if result.scenario == "canonical-batch-x2" && !pairs.is_empty() {
            let median = median_difference(&pairs);
            let lost: i64 = pairs.iter().map(|pair| pair.lost).sum::<i64>() + result.lost;
            let differences: Vec<String> = pairs
                .iter()
                .map(|pair| format!("{:+.1}", pair.difference()))
                .collect();
            let single = rate_of("canonical-batch").map_or(String::new(), |one| {
                format!("; the scenarios above: {one:.0}/s with 1, {rate:.0}/s with 2")
            });
            writeln!(
                report,
                "| 2 instances of each service not slower than 1 (median of {} back-to-back pairs) | {median:+.1} % (pairs: {} %){single}, {lost} lost | {} |",
                pairs.len(),
                differences.join(", "),
                if median >= 0.0 && lost == 0 { "yes" } else { "no" }
            )?;
        } else if result.scenario == "canonical-batch-x2" {
            if let Some(one) = rate_of("canonical-batch") {
                writeln!(
                    report,
                    "| 2 instances of each service not slower than 1 | {rate:.0}/s vs {one:.0}/s, {} lost | {} |",
                    result.lost,
                    if rate >= one && result.lost == 0 { "yes" } else { "no" }
                )?;
            }
        }
        // The aggregators hold the seen-set on top (every offence of the run
        // is within the horizon): its bytes, as the aggregator reports them.
        writeln!(
            report,
            "| {} peak RSS <= 150 MB per service (+ the seen-set for the aggregator: {:.0} MiB, {:.0} B per offence) | ingest {:.0} MiB, aggregator {:.0} MiB ({:.0} without the seen-set), nats-server {:.0} MiB | {} |",
            result.scenario,
            result.seen_mib,
            result.seen_mib * 1024.0 * 1024.0 * result.instances as f64 / result.offences as f64,
            result.usage[0].peak_rss_mib,
            result.usage[1].peak_rss_mib,
            result.aggregator_rss_without_seen_mib,
            result.usage[2].peak_rss_mib,
            if result.usage[0].peak_rss_mib * 1.048_576 <= 150.0
                && result.aggregator_rss_without_seen_mib * 1.048_576 <= 150.0
            {
                "yes"
            } else {
                "no"
            }
        )?;
    }
    if let Some(p99) = latency_p99 {
        writeln!(
            report,
            "| p99 publish -> queryable <= 1 s at {} events/s | {p99:.0} ms | {} |",
            options.latency_rate,
            if p99 <= 1000.0 { "yes" } else { "no" }
        )?;
    }
    writeln!(report)?;
    if let Some(result) = gateway_result {
        writeln!(
            report,
            "## Gateway (`cctv-gateway`)\n\nMessages into NATS (acknowledged by JetStream, batches of up to \
             1,000 on `cctv.raw.batch.gw1`) through the gateway's fsynced spool; HTTP: canonical pushes \
             over {} keep-alive connections, each waiting for its 200; MQTT: Frigate events with QoS 1 \
             through mosquitto.\n\n| intake | messages | seconds | messages/s | gateway CPU-µs per message |\n\
             | --- | ---: | ---: | ---: | ---: |",
            32
        )?;
        for (intake, phase) in [
            ("HTTP pushes", Ok(result.http)),
            ("MQTT messages", result.mqtt),
        ] {
            match phase {
                Ok(phase) => writeln!(
                    report,
                    "| {intake} | {} | {:.1} | {:.0} | {:.1} |",
                    phase.messages,
                    phase.seconds,
                    phase.rate(),
                    phase.cpu_us_per_message()
                )?,
                Err(stalled) => writeln!(report, "| {intake} | {stalled} | | | |")?,
            }
        }
        writeln!(report)?;
    }
    let micro = criterion_results(&repo.join("target"));
    if !micro.is_empty() {
        writeln!(
            report,
            "## Micro-benchmarks (criterion, `cargo bench -p cctv-benches`)\n\n\
             `fixtures/<format>` normalises every fixture file of the format (offences, \
             repeats, ignored and rejected inputs alike).\n\n| benchmark | per element | elements/s |\n| --- | ---: | ---: |"
        )?;
        for (name, ns, per_second) in micro {
            writeln!(
                report,
                "| {name} | {:.2} µs | {per_second:.0} |",
                ns / 1000.0
            )?;
        }
        writeln!(report)?;
    }
    let analysis = repo.join("benches/analysis.md");
    if let Ok(text) = std::fs::read_to_string(&analysis) {
        writeln!(report, "{}", text.trim_end())?;
    }
    if let Some(path) = &options.output {
        std::fs::write(path, &report)
            .with_context(|| format!("failed to write {}", path.display()))?;
        println!("results written to {}", path.display());
    } else {
        print!("{report}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(one: f64, two: f64) -> Pair {
        Pair { one, two, lost: 0 }
    }

    #[test]
    fn the_median_difference_is_the_middle_pair_or_the_mean_of_the_middle_two() {
        assert!((pair(100.0, 110.0).difference() - 10.0).abs() < 1e-9);
        let odd = [pair(100.0, 90.0), pair(100.0, 130.0), pair(100.0, 102.0)];
        assert!((median_difference(&odd) - 2.0).abs() < 1e-9);
        let even = [
            pair(100.0, 90.0),
            pair(100.0, 130.0),
            pair(100.0, 102.0),
            pair(100.0, 96.0),
        ];
        assert!((median_difference(&even) - (-1.0)).abs() < 1e-9);
        assert!(median_difference(&[]).abs() < 1e-9);
    }
}
