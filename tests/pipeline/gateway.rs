//! The edge gateway with real processes: the `cctv-gateway` binary, a
//! nats-server, a mosquitto broker, `cctv-ingest`, `cctv-aggregator` and
//! ClickHouse. Cameras are played by HTTP pushes of the sample payloads
//! (plain and multipart with pictures) and by Frigate messages published
//! to the broker. Faults: NATS stopped for 20 s while pushes go on, the
//! gateway killed with SIGKILL while its spool holds messages, a full spool.
//! Every test ends with the exact totals of what the gateway acknowledged
//! and a clean audit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use cctv_store::TotalsFilter;
use cctv_testkit::{free_port, poll_until, MosquittoServer};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::faults::{FaultStack, Nats};
use crate::harness::{canonical, recent_time};
use crate::processes::{killed_by, ServiceProcess, SIGKILL};

/// Longest wait for the pipeline to count what the gateway acknowledged.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(180);
/// How long NATS stays down in the outage test.
const NATS_OUTAGE: Duration = Duration::from_secs(20);
/// The day the samples were captured; shifted to yesterday before pushing,
/// so that they stay within the ingest's time limits whenever the test runs.
const SAMPLE_DAY: &str = "2026-11-27";
/// Epoch seconds in the samples (Dahua `RealUTC`, Frigate `start_time`)
/// start with this; each is shifted by the same number of days.
const SAMPLE_EPOCH_PREFIX: &str = "17957";
/// The device secrets of every test gateway.
const SECRETS: [(&str, &str); 3] = [
    ("CCTV_GW_TEST_HIK_PASSWORD", "hikpass1"),
    ("CCTV_GW_TEST_DAHUA_PASSWORD", "dahuapass1"),
    ("CCTV_GW_TEST_HOOK_TOKEN", "hooktoken1"),
];

/// A sample payload of `cctv-normalize`'s fixtures, moved to yesterday.
fn sample(path: &str) -> Vec<u8> {
    let full = format!(
        "{}/../crates/cctv-normalize/fixtures/{path}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"));
    let yesterday = chrono::Utc::now().date_naive() - chrono::TimeDelta::days(1);
    let sample_day = chrono::NaiveDate::parse_from_str(SAMPLE_DAY, "%Y-%m-%d").unwrap();
    let shift_days = (yesterday - sample_day).num_days();
    let text = text.replace(SAMPLE_DAY, &yesterday.format("%Y-%m-%d").to_string());
    // Every ten-digit number starting like the samples' epochs, shifted.
    let mut shifted = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(at) = rest.find(SAMPLE_EPOCH_PREFIX) {
        let digits = rest
            .get(at..at + 10)
            .filter(|d| d.bytes().all(|b| b.is_ascii_digit()));
        shifted.push_str(&rest[..at]);
        match digits {
            Some(digits) => {
                let epoch = digits.parse::<i64>().unwrap() + shift_days * 86_400;
                shifted.push_str(&epoch.to_string());
                rest = &rest[at + 10..];
            }
            None => {
                shifted.push_str(SAMPLE_EPOCH_PREFIX);
                rest = &rest[at + SAMPLE_EPOCH_PREFIX.len()..];
            }
        }
    }
    shifted.push_str(rest);
    let text = shifted;
    text.into_bytes()
}

/// A `cctv-gateway` process with its config, spool and log in a temp dir.
struct Gateway {
    binary: PathBuf,
    config_path: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    http_port: u16,
    metrics_port: u16,
    spool_dir: PathBuf,
    log_offset: usize,
}

/// What differs between the test gateways.
struct GatewaySpec<'a> {
    nats_url: &'a str,
    mode: &'a str,
    spool_max_bytes: u64,
    mqtt: Option<&'a MosquittoServer>,
}

impl Gateway {
    /// A gateway with HTTP intake only (`mode`: `batch` or `single`),
    /// started and ready.
    async fn start_http(dir: &Path, nats_url: &str, mode: &str, spool_max_bytes: u64) -> Gateway {
        let gateway = Gateway::start(
            dir,
            &GatewaySpec {
                nats_url,
                mode,
                spool_max_bytes,
                mqtt: None,
            },
        );
        gateway.wait_log("gateway started").await;
        gateway
    }

    fn start(dir: &Path, spec: &GatewaySpec<'_>) -> Gateway {
        let test_executable = std::env::current_exe().expect("test executable");
        let binary = test_executable
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>/deps")
            .join("cctv-gateway");
        assert!(
            binary.is_file(),
            "{} is missing: build it with `cargo build -p cctv-gateway` (cargo test --workspace does)",
            binary.display()
        );
        let (http_port, metrics_port) = (free_port().unwrap(), free_port().unwrap());
        let spool_dir = dir.join("spool");
        let mut config = format!(
            "[gateway]\nid = \"gw1\"\nshutdown_grace = \"5s\"\n\n\
             [nats]\nurl = \"{}\"\nconnect_timeout = \"2s\"\n\n\
             [publish]\nmode = \"{}\"\nlinger = \"100ms\"\nbatch_max_items = 200\nack_timeout = \"3s\"\n\n\
             [spool]\ndir = \"{}\"\nmax_bytes = {}\nsegment_bytes = 8192\n\n\
             [http]\nlisten = \"127.0.0.1:{http_port}\"\nmax_message_bytes = 65536\nmax_request_bytes = 1048576\n\n\
             [[devices]]\nid = \"hik-cam\"\nformat = \"hikvision\"\nauth = \"basic\"\n\
             secret_env = \"CCTV_GW_TEST_HIK_PASSWORD\"\ncamera_id = \"CAM-75-1\"\n\n\
             [[devices]]\nid = \"hik-nvr\"\nformat = \"hikvision\"\nauth = \"basic\"\nuser = \"hik-cam\"\n\
             secret_env = \"CCTV_GW_TEST_HIK_PASSWORD\"\n\n\
             [[devices]]\nid = \"dahua-itc\"\nformat = \"dahua\"\nauth = \"basic\"\n\
             secret_env = \"CCTV_GW_TEST_DAHUA_PASSWORD\"\n\n\
             [[devices]]\nid = \"hook\"\nformat = \"canonical\"\nauth = \"token\"\n\
             secret_env = \"CCTV_GW_TEST_HOOK_TOKEN\"\n\n\
             [telemetry]\nlisten = \"127.0.0.1:{metrics_port}\"\n",
            spec.nats_url,
            spec.mode,
            spool_dir.display(),
            spec.spool_max_bytes,
        );
        if let Some(broker) = spec.mqtt {
            config.push_str(&format!(
                "\n[mqtt]\nhost = \"{}\"\nport = {}\nclient_id = \"gw1-test\"\nkeep_alive = \"5s\"\n\n\
                 [[mqtt.topics]]\nfilter = \"frigate/events\"\nformat = \"frigate\"\n\
                 cameras = {{ yard_east = \"CAM-71-1\" }}\n",
                broker.host(),
                broker.port()
            ));
        }
        let config_path = dir.join("gateway.toml");
        std::fs::write(&config_path, config).unwrap();
        let mut gateway = Gateway {
            binary,
            config_path,
            log_path: dir.join("gateway.log"),
            child: None,
            http_port,
            metrics_port,
            spool_dir,
            log_offset: 0,
        };
        gateway.restart();
        gateway
    }

    fn restart(&mut self) {
        assert!(self.child.is_none(), "the gateway still runs");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        self.log_offset = std::fs::metadata(&self.log_path)
            .map(|meta| meta.len() as usize)
            .unwrap_or(0);
        let mut command = Command::new(&self.binary);
        command
            .arg("--config")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .env("CCTV_LOG", "info")
            .env_remove("CCTV_NATS_URL")
            .env_remove("CCTV_CONFIG");
        for (name, value) in SECRETS {
            command.env(name, value);
        }
        self.child = Some(command.spawn().expect("spawn cctv-gateway"));
    }

    fn kill9(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("a running gateway");
        let _ = child.kill();
        child.wait().unwrap()
    }

    /// This run's log.
    fn run_log(&self) -> String {
        let text = std::fs::read(&self.log_path).unwrap_or_default();
        String::from_utf8_lossy(text.get(self.log_offset..).unwrap_or_default()).into_owned()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "--- last lines of {} ---\n{}",
            self.log_path.display(),
            lines[lines.len().saturating_sub(30)..].join("\n")
        )
    }

    /// Waits until this run logged `needle`.
    async fn wait_log(&self, needle: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !self.run_log().contains(needle) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the gateway never logged {needle:?}\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The sum of every sample of metric `name` whose labels contain `labels`.
    fn metric(&self, name: &str, labels: &str) -> f64 {
        metric_sum(self.metrics_port, name, labels).unwrap_or(0.0)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn metric_sum(port: u16, name: &str, labels: &str) -> Option<f64> {
    let page = cctv_testkit::metrics_page(port)?;
    Some(
        cctv_testkit::metric_samples(&page, name)
            .filter(|(sample_labels, _)| sample_labels.contains(labels))
            .map(|(_, value)| value)
            .sum(),
    )
}

/// One HTTP request to the gateway; the status, or 0 when the connection failed.
async fn post(
    port: u16,
    path: &str,
    authorization: Option<String>,
    content_type: &str,
    body: &[u8],
) -> u16 {
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return 0;
    };
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: gateway\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if let Some(authorization) = authorization {
        head.push_str(&format!("Authorization: {authorization}\r\n"));
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    if stream.write_all(&request).await.is_err() {
        return 0;
    }
    let mut response = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut response));
    if !matches!(read.await, Ok(Ok(_))) {
        return 0;
    }
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace()
        .nth(1)
        .and_then(|status| status.parse().ok())
        .unwrap_or(0)
}

fn basic(user: &str, password: &str) -> Option<String> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    Some(format!("Basic {encoded}"))
}

fn hook_token() -> Option<String> {
    Some("Bearer hooktoken1".to_string())
}

/// A multipart body: `alert` as the first part, then a JPEG per `(name, size)`.
fn multipart(
    boundary: &str,
    alert_type: &str,
    alert: &[u8],
    pictures: &[(&str, usize)],
) -> Vec<u8> {
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"alert\"\r\n\
         Content-Type: {alert_type}\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(alert);
    for (name, size) in pictures {
        body.extend_from_slice(
            format!(
                "\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}\"\r\n\
                 Content-Type: image/jpeg\r\n\r\n"
            )
            .as_bytes(),
        );
        let mut jpeg = vec![0xff, 0xd8, 0xff, 0xe0];
        jpeg.resize(*size, 0x42);
        body.extend_from_slice(&jpeg);
    }
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    body
}

/// The test's servers and services: NATS, ClickHouse, one ingest, one aggregator.
struct Pipeline {
    stack: FaultStack,
    ingest: ServiceProcess,
    aggregator: ServiceProcess,
    dir: tempfile::TempDir,
}

impl Pipeline {
    async fn start() -> Pipeline {
        let stack = FaultStack::start(false).await;
        let ingest = stack.start_ingest("", &[]);
        let aggregator = stack.start_aggregator("", free_port().unwrap(), &[]);
        Pipeline {
            stack,
            ingest,
            aggregator,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn nats_url(&self) -> String {
        self.stack.nats.url()
    }

    fn stop_nats(&mut self) {
        match &mut self.stack.nats {
            Nats::One(server) => server.stop(),
            Nats::Cluster(_) => panic!("one server expected"),
        }
    }

    fn start_nats(&mut self) {
        self.stack.nats.restart().expect("nats-server restarts");
    }

    fn logs(&self, gateway: &Gateway) -> String {
        format!(
            "{}\n{}\n{}\n--- nats-server ---\n{}",
            gateway.log_tail(),
            self.ingest.log_tail(),
            self.aggregator.log_tail(),
            self.stack.nats.log_tail()
        )
    }

    /// Waits until the gateway's spool is empty and ClickHouse holds
    /// `expected`'s rows, then checks the totals exactly and the audit.
    async fn check_exact(&mut self, gateway: &Gateway, expected: &BTreeMap<(String, String), u64>) {
        let count: u64 = expected.values().sum();
        let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        loop {
            let spooled = metric_sum(gateway.metrics_port, "cctv_gateway_spool_records", "");
            let rows = self.stack.rows().await;
            if spooled == Some(0.0) && rows >= count {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not drained after {DRAIN_TIMEOUT:?}: spool {spooled:?}, {rows} rows of {count}\n{}",
                self.logs(gateway)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Everything the ingest took is settled, so no late row can come.
        let stack = &self.stack;
        poll_until("the raw stream settled", DRAIN_TIMEOUT, || async move {
            let Ok(mut stream) = stack.js.get_stream("CCTV_RAW").await else {
                return false;
            };
            let Ok(info) = stream.info().await else {
                return false;
            };
            let last = info.state.last_sequence;
            let Ok(consumer) = stream.consumer_info("cctv-ingest").await else {
                return false;
            };
            consumer.ack_floor.stream_sequence >= last && consumer.num_ack_pending == 0
        })
        .await;
        // Both services stop cleanly (flush, ack), so no late row can come.
        for service in [&self.ingest, &self.aggregator] {
            poll_until("the service started", DRAIN_TIMEOUT, || async move {
                service.started()
            })
            .await;
        }
        for service in [&mut self.ingest, &mut self.aggregator] {
            service.terminate();
            let status = service.wait_exit(Duration::from_secs(40)).await;
            assert!(
                status.success(),
                "SIGTERM exit {status:?}\n{}",
                service.log_tail()
            );
        }
        let store = self.stack.store();
        assert_eq!(
            store.count_events().await.unwrap(),
            count,
            "{}",
            self.logs(gateway)
        );
        let totals: BTreeMap<(String, String), u64> = store
            .totals(&TotalsFilter::default())
            .await
            .unwrap()
            .into_iter()
            .map(|row| ((row.region, row.offence_type), row.events))
            .collect();
        assert_eq!(&totals, expected, "{}", self.logs(gateway));
        let report = cctv_cli::audit_pipeline(&self.stack.cli_config())
            .await
            .expect("audit runs");
        assert!(report.is_clean(), "{}", cctv_cli::render_audit(&report));
    }
}

fn add(expected: &mut BTreeMap<(String, String), u64>, region: &str, offence: &str) {
    *expected
        .entry((region.to_string(), offence.to_string()))
        .or_insert(0) += 1;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_pushes_of_the_sample_payloads_plain_and_multipart_are_counted_once() {
    let mut pipeline = Pipeline::start().await;
    let gateway =
        Gateway::start_http(pipeline.dir.path(), &pipeline.nats_url(), "batch", 64 << 20).await;
    let port = gateway.http_port;
    let hik = || basic("hik-cam", "hikpass1");
    let dahua = || basic("dahua-itc", "dahuapass1");
    let seatbelt = sample("hikvision/anpr_seatbelt.xml");
    let seatbelt_push = multipart(
        "MIME_boundary",
        "application/xml",
        &seatbelt,
        &[
            ("licensePlatePicture.jpg", 2_000),
            ("detectionPicture.jpg", 30_000),
        ],
    );
    let overspeed = sample("dahua/overspeed_stream.txt");
    let pushes: Vec<(&str, Option<String>, &str, Vec<u8>)> = vec![
        // The alert with two pictures, and the camera's retry of the same push.
        (
            "/hikvision/hik-cam",
            hik(),
            "multipart/form-data; boundary=MIME_boundary",
            seatbelt_push.clone(),
        ),
        (
            "/hikvision/hik-cam",
            hik(),
            "multipart/form-data; boundary=MIME_boundary",
            seatbelt_push,
        ),
        (
            "/hikvision/hik-nvr",
            hik(),
            "application/json",
            sample("hikvision/tfs_illegal_parking.json"),
        ),
        (
            "/hikvision/hik-nvr",
            hik(),
            "application/xml",
            sample("hikvision/anpr_plain_read.xml"),
        ),
        (
            "/hikvision/hik-nvr",
            hik(),
            "application/xml",
            sample("hikvision/heartbeat_videoloss.xml"),
        ),
        ("/dahua/dahua-itc", dahua(), "text/plain", overspeed.clone()),
        // The same event pushed again as a part with its picture.
        (
            "/dahua/dahua-itc",
            dahua(),
            "multipart/x-mixed-replace; boundary=myboundary",
            multipart(
                "myboundary",
                "text/plain",
                &overspeed,
                &[("capture.jpg", 10_000)],
            ),
        ),
        (
            "/dahua/dahua-itc",
            dahua(),
            "application/json",
            sample("dahua/red_light_rpc_two_pictures.json"),
        ),
        (
            "/dahua/dahua-itc",
            dahua(),
            "text/plain",
            sample("dahua/heartbeat.txt"),
        ),
        (
            "/canonical/hook",
            hook_token(),
            "application/json",
            sample("canonical/speeding.json"),
        ),
    ];
    for (path, authorization, content_type, body) in pushes {
        let status = post(port, path, authorization, content_type, &body).await;
        assert_eq!(status, 200, "{path}\n{}", gateway.log_tail());
    }
    assert_eq!(gateway.metric("cctv_gateway_received_total", ""), 10.0);
    assert_eq!(gateway.metric("cctv_gateway_attachments_total", ""), 5.0);
    assert_eq!(
        gateway.metric("cctv_gateway_attachment_bytes_total", ""),
        2.0 * 32_000.0 + 10_000.0
    );
    assert!(gateway
        .run_log()
        .contains("licensePlatePicture.jpg=2000;detectionPicture.jpg=30000"));

    let mut expected = BTreeMap::new();
    // Named by the device's camera id (the CloudEvents subject) in the registry.
    add(&mut expected, "KZ-75", "traffic.no_seat_belt");
    add(&mut expected, "unknown", "traffic.illegal_parking");
    add(&mut expected, "unknown", "traffic.speeding");
    add(&mut expected, "unknown", "traffic.red_light");
    add(&mut expected, "unknown", "traffic.speeding");
    pipeline.check_exact(&gateway, &expected).await;
    assert_eq!(gateway.metric("cctv_gateway_published_total", ""), 10.0);
}

/// A mosquitto broker and a batching gateway subscribed to its Frigate topic.
async fn subscribed_gateway(
    dir: &Path,
    nats_url: &str,
    spool_max_bytes: u64,
) -> (MosquittoServer, Gateway) {
    let broker =
        MosquittoServer::start().expect("mosquitto must start (scripts/install-servers.sh)");
    let gateway = Gateway::start(
        dir,
        &GatewaySpec {
            nats_url,
            mode: "batch",
            spool_max_bytes,
            mqtt: Some(&broker),
        },
    );
    gateway.wait_log("MQTT subscription confirmed").await;
    (broker, gateway)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frigate_messages_published_to_mosquitto_are_counted_once() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let mut pipeline = Pipeline::start().await;
    let (broker, gateway) =
        subscribed_gateway(pipeline.dir.path(), &pipeline.nats_url(), 64 << 20).await;
    let messages = [
        "frigate/dumping_new.json",
        "frigate/dumping_update.json",
        "frigate/dumping_end.json",
        "frigate/car_update_enters_no_parking.json",
        "frigate/false_positive.json",
        "frigate/unmapped_zone.json",
    ];
    let (client, mut event_loop) = AsyncClient::new(
        MqttOptions::new("frigate-test", broker.host(), broker.port()),
        64,
    );
    for message in messages {
        client
            .publish("frigate/events", QoS::AtLeastOnce, false, sample(message))
            .await
            .unwrap();
    }
    // Until the broker acknowledged every publish.
    let mut acked = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while acked < messages.len() {
        let event = tokio::time::timeout_at(deadline, event_loop.poll())
            .await
            .expect("the broker acknowledges the publishes")
            .expect("connected to the broker");
        if let Event::Incoming(Packet::PubAck(_)) = event {
            acked += 1;
        }
    }
    let gateway_ref = &gateway;
    poll_until(
        "every MQTT message received",
        DRAIN_TIMEOUT,
        || async move {
            gateway_ref.metric("cctv_gateway_received_total", "source=\"mqtt\"")
                >= messages.len() as f64
        },
    )
    .await;
    let mut expected = BTreeMap::new();
    // yard_east is mapped to a registry camera; street_north is not.
    add(&mut expected, "KZ-71", "public_order.illegal_dumping");
    add(&mut expected, "unknown", "traffic.illegal_parking");
    pipeline.check_exact(&gateway, &expected).await;
    assert_eq!(
        gateway.metric("cctv_gateway_received_total", "source=\"mqtt\""),
        messages.len() as f64,
        "each message once"
    );
}

/// Frigate messages in the load test: enough that the broker's queue for
/// the gateway runs far ahead of the gateway (the benchmark stalled at 6,109).
const MQTT_BURST: u64 = 20_000;
/// How long the gateway may publish nothing more before the test calls it a stall.
const MQTT_STALL: Duration = Duration::from_secs(30);

/// Publishes `count` Frigate events (one track each, QoS 1) as fast as the
/// broker takes them and waits for the broker's PUBACKs.
async fn publish_frigate_burst(broker: &MosquittoServer, count: u64) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let mut options = MqttOptions::new("frigate-burst", broker.host(), broker.port());
    options.set_inflight(200);
    let (client, mut event_loop) = AsyncClient::new(options, 1024);
    let start = chrono::Utc::now().timestamp();
    let publisher = tokio::spawn(async move {
        for n in 0..count {
            let payload = format!(
                r#"{{"type":"new","before":null,"after":{{"id":"{start}.{n:06}-burst","camera":"yard_east","label":"person","score":0.8,"top_score":0.8,"false_positive":false,"start_time":{start}.5,"end_time":null,"current_zones":["dumping_site"],"entered_zones":["dumping_site"]}}}}"#
            );
            client
                .publish("frigate/events", QoS::AtLeastOnce, false, payload)
                .await
                .unwrap();
        }
    });
    let mut acked = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while acked < count {
        let event = tokio::time::timeout_at(deadline, event_loop.poll())
            .await
            .expect("the broker acknowledges the publishes")
            .expect("connected to the broker");
        if let Event::Incoming(Packet::PubAck(_)) = event {
            acked += 1;
        }
    }
    publisher.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_frigate_messages_queued_at_the_broker_all_reach_nats() {
    let nats = cctv_testkit::NatsServer::start().expect("nats-server must start");
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    cctv_bus::ensure_streams(&js, &cctv_bus::StreamsConfig::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (broker, gateway) = subscribed_gateway(dir.path(), &nats.url(), 256 << 20).await;
    publish_frigate_burst(&broker, MQTT_BURST).await;
    // Until every message is in JetStream, failing when the count stops moving.
    let mut last = (0.0, tokio::time::Instant::now());
    loop {
        let published = gateway.metric("cctv_gateway_published_total", "");
        if published >= MQTT_BURST as f64 {
            break;
        }
        if published > last.0 {
            last = (published, tokio::time::Instant::now());
        }
        assert!(
            last.1.elapsed() < MQTT_STALL,
            "stalled: {published} of {MQTT_BURST} MQTT messages published into NATS \
             ({} received), none for {MQTT_STALL:?}\n{}\n--- mosquitto ---\n{}",
            gateway.metric("cctv_gateway_received_total", "source=\"mqtt\""),
            gateway.log_tail(),
            broker.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut raw = js.get_stream("CCTV_RAW").await.unwrap();
    let info = raw.info().await.unwrap();
    assert_eq!(
        gateway.metric("cctv_gateway_received_total", "source=\"mqtt\""),
        MQTT_BURST as f64,
        "each message received once"
    );
    assert!(info.state.messages > 0, "the raw stream holds the batches");
}

/// Canonical offences from registry cameras, each its own event; the
/// totals they make.
struct Offences {
    bodies: Vec<Vec<u8>>,
    regions: Vec<(String, String)>,
}

fn offences(count: usize, run: &str) -> Offences {
    let regions: Vec<String> = cctv_event::Regions::builtin()
        .unwrap()
        .all()
        .iter()
        .map(|region| region.code.clone())
        .collect();
    let codes = [
        "traffic.speeding",
        "traffic.red_light",
        "public_order.littering",
    ];
    let mut offences = Offences {
        bodies: Vec::new(),
        regions: Vec::new(),
    };
    for n in 0..count {
        let region = &regions[n % regions.len()];
        let code = codes[n % codes.len()];
        let camera = format!("CAM-{}-1", region.trim_start_matches("KZ-"));
        offences.bodies.push(canonical(
            &camera,
            code,
            &recent_time((n % 3000) as i64),
            &format!(r#","source_event_id":"{run}-{n}""#),
        ));
        offences.regions.push((region.clone(), code.to_string()));
    }
    offences
}

/// Pushes every body like a camera: one after another over `lanes`
/// connections, each retried until answered 200 (connection refused while
/// the gateway restarts, 503 while its spool is full). Returns how many
/// pushes were refused or failed on the way.
fn push_all(
    port: u16,
    bodies: Vec<Vec<u8>>,
    lanes: usize,
    pushed: Arc<Mutex<usize>>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let bodies = Arc::new(bodies);
        let mut tasks = tokio::task::JoinSet::new();
        for lane in 0..lanes {
            let bodies = bodies.clone();
            let pushed = pushed.clone();
            tasks.spawn(async move {
                let mut retries = 0;
                let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
                for body in bodies.iter().skip(lane).step_by(lanes) {
                    loop {
                        let status = post(
                            port,
                            "/canonical/hook",
                            hook_token(),
                            "application/json",
                            body,
                        )
                        .await;
                        if status == 200 {
                            *pushed.lock().unwrap() += 1;
                            break;
                        }
                        retries += 1;
                        assert!(
                            tokio::time::Instant::now() < deadline,
                            "a push never got 200 (last {status})"
                        );
                        // A camera's retry interval; not a synchronisation.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    // About 20 pushes per second per lane.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                retries
            });
        }
        let mut retries = 0;
        while let Some(lane) = tasks.join_next().await {
            retries += lane.unwrap();
        }
        retries
    })
}

fn expected_of(offences: &Offences) -> BTreeMap<(String, String), u64> {
    let mut expected = BTreeMap::new();
    for (region, code) in &offences.regions {
        add(&mut expected, region, code);
    }
    expected
}

async fn wait_pushed(pushed: &Arc<Mutex<usize>>, at_least: usize) {
    poll_until("pushes acknowledged", DRAIN_TIMEOUT, || async move {
        *pushed.lock().unwrap() >= at_least
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_stopped_for_20_s_while_pushes_go_on_loses_nothing_and_counts_once() {
    let mut pipeline = Pipeline::start().await;
    let gateway =
        Gateway::start_http(pipeline.dir.path(), &pipeline.nats_url(), "batch", 64 << 20).await;
    let offences = offences(1_500, "outage");
    let pushed = Arc::new(Mutex::new(0));
    let pusher = push_all(
        gateway.http_port,
        offences.bodies.clone(),
        4,
        pushed.clone(),
    );
    wait_pushed(&pushed, 300).await;
    pipeline.stop_nats();
    let during = *pushed.lock().unwrap();
    tokio::time::sleep(NATS_OUTAGE).await;
    let after_outage = *pushed.lock().unwrap();
    assert!(
        after_outage > during + 100,
        "pushes went on while NATS was down: {during} -> {after_outage}"
    );
    assert!(
        gateway.metric("cctv_gateway_spool_records", "") > 0.0,
        "the spool holds what NATS could not take\n{}",
        gateway.log_tail()
    );
    pipeline.start_nats();
    pusher.await.unwrap();
    pipeline
        .check_exact(&gateway, &expected_of(&offences))
        .await;
    assert_eq!(gateway.metric("cctv_gateway_received_total", ""), 1_500.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_killed_with_sigkill_mid_spool_and_restarted_loses_nothing() {
    let mut pipeline = Pipeline::start().await;
    let mut gateway = Gateway::start_http(
        pipeline.dir.path(),
        &pipeline.nats_url(),
        "single",
        64 << 20,
    )
    .await;
    // NATS away: everything acknowledged waits in the spool.
    pipeline.stop_nats();
    let offences = offences(1_000, "sigkill");
    let pushed = Arc::new(Mutex::new(0));
    let pusher = push_all(
        gateway.http_port,
        offences.bodies.clone(),
        4,
        pushed.clone(),
    );
    wait_pushed(&pushed, 400).await;
    let status = gateway.kill9();
    assert!(killed_by(status, SIGKILL), "{status:?}");
    let spooled_before_restart = std::fs::read_dir(&gateway.spool_dir).unwrap().count();
    assert!(spooled_before_restart > 0, "segments on disk");
    gateway.restart();
    gateway.wait_log("gateway started").await;
    let recovered = gateway
        .run_log()
        .lines()
        .find(|line| line.contains("spool opened"))
        .map(str::to_string)
        .unwrap_or_default();
    assert!(
        !recovered.contains("\"records\":0"),
        "the restarted gateway found the spooled pushes: {recovered}"
    );
    pipeline.start_nats();
    pusher.await.unwrap();
    pipeline
        .check_exact(&gateway, &expected_of(&offences))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_answers_503_and_oversized_or_unauthenticated_pushes_are_refused() {
    let mut pipeline = Pipeline::start().await;
    let gateway = Gateway::start_http(
        pipeline.dir.path(),
        &pipeline.nats_url(),
        "batch",
        32 * 1024,
    )
    .await;
    pipeline.stop_nats();
    let port = gateway.http_port;
    let load = offences(200, "full");
    let mut accepted = Vec::new();
    let mut refused = None;
    for (body, region) in load.bodies.iter().zip(&load.regions) {
        match post(
            port,
            "/canonical/hook",
            hook_token(),
            "application/json",
            body,
        )
        .await
        {
            200 => accepted.push(region.clone()),
            status => {
                refused = Some(status);
                break;
            }
        }
    }
    assert_eq!(refused, Some(503), "the spool filled up and refused");
    assert!(
        accepted.len() > 10,
        "{} accepted before the spool was full",
        accepted.len()
    );
    assert_eq!(
        gateway.metric("cctv_gateway_refused_total", "reason=\"spool_full\""),
        1.0
    );

    let oversized = vec![b'x'; 70_000];
    assert_eq!(
        post(
            port,
            "/canonical/hook",
            hook_token(),
            "application/json",
            &oversized
        )
        .await,
        413
    );
    let body = &load.bodies[0];
    assert_eq!(
        post(port, "/canonical/hook", None, "application/json", body).await,
        401
    );
    assert_eq!(
        post(
            port,
            "/canonical/hook",
            Some("Bearer wrong".into()),
            "application/json",
            body
        )
        .await,
        401
    );
    assert_eq!(
        post(
            port,
            "/hikvision/hik-cam",
            basic("hik-cam", "nope"),
            "application/xml",
            b"<x/>"
        )
        .await,
        401
    );
    assert_eq!(
        gateway.metric("cctv_gateway_refused_total", "reason=\"too_large\""),
        1.0
    );
    assert_eq!(
        gateway.metric("cctv_gateway_refused_total", "reason=\"unauthorized\""),
        3.0
    );

    // NATS back: the spool drains and takes pushes again; what was
    // acknowledged is counted once, what was refused never.
    pipeline.start_nats();
    let gateway_ref = &gateway;
    poll_until("the spool drained", DRAIN_TIMEOUT, || async move {
        metric_sum(gateway_ref.metrics_port, "cctv_gateway_spool_records", "") == Some(0.0)
    })
    .await;
    let extra = offences(1, "after-full");
    assert_eq!(
        post(
            port,
            "/canonical/hook",
            hook_token(),
            "application/json",
            &extra.bodies[0]
        )
        .await,
        200
    );
    let mut expected = BTreeMap::new();
    for (region, code) in accepted.iter().chain(&extra.regions) {
        add(&mut expected, region, code);
    }
    pipeline.check_exact(&gateway, &expected).await;
}
