//! The `gateway` scenario of `cctv-bench-e2e`: the release `cctv-gateway`
//! between load generators in this process and a fresh nats-server (and a
//! mosquitto broker): HTTP pushes per second and MQTT messages per second
//! into NATS (counted when JetStream acknowledged them, the gateway's
//! `cctv_gateway_published_total`), and the gateway's CPU per message.
//!
//! HTTP: canonical offences pushed over keep-alive connections, each push
//! waiting for its answer (200 once fsynced in the spool), like cameras.
//! MQTT: Frigate events published with QoS 1 to mosquitto.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};

use crate::hops::cpu_seconds;

/// Keep-alive connections pushing at once (cameras of a site).
const HTTP_CONNECTIONS: usize = 32;
/// Longest a phase may take.
const PHASE_TIMEOUT: Duration = Duration::from_secs(600);
/// How long the MQTT phase waits with no message published before it
/// reports a stall instead of a rate.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// The bench device's token.
const TOKEN: &str = "benchtoken1";

/// What one phase measured.
#[derive(Debug, Clone, Copy)]
pub struct GatewayPhase {
    /// Messages sent.
    pub messages: u64,
    /// Seconds from the first send to the last JetStream ack.
    pub seconds: f64,
    /// Gateway CPU seconds over the phase.
    pub gateway_cpu_seconds: f64,
}

impl GatewayPhase {
    /// Messages per second into NATS.
    pub fn rate(&self) -> f64 {
        self.messages as f64 / self.seconds
    }

    /// Gateway CPU microseconds per message.
    pub fn cpu_us_per_message(&self) -> f64 {
        self.gateway_cpu_seconds * 1e6 / self.messages as f64
    }
}

/// Both phases.
#[derive(Debug, Clone)]
pub struct GatewayResult {
    /// HTTP pushes.
    pub http: GatewayPhase,
    /// MQTT messages, or what stopped them: the messages the gateway had
    /// published when nothing more arrived for [`STALL_TIMEOUT`].
    pub mqtt: Result<GatewayPhase, String>,
}

/// Runs both phases with `messages` messages each against `binary`.
pub async fn run(binary: &Path, messages: u64) -> anyhow::Result<GatewayResult> {
    let nats = cctv_testkit::NatsServer::start()?;
    let broker = cctv_testkit::MosquittoServer::start()?;
    let client = async_nats::connect(nats.url()).await?;
    let js = async_nats::jetstream::new(client);
    cctv_bus::ensure_streams(&js, &cctv_bus::StreamsConfig::default()).await?;
    let dir = tempfile::tempdir()?;
    let (http_port, metrics_port) = (cctv_testkit::free_port()?, cctv_testkit::free_port()?);
    let config = format!(
        "[gateway]\nid = \"gw1\"\n\n[nats]\nurl = \"{}\"\n\n[spool]\ndir = \"{}\"\n\n\
         [http]\nlisten = \"127.0.0.1:{http_port}\"\n\n\
         [[devices]]\nid = \"bench\"\nformat = \"canonical\"\nauth = \"token\"\nsecret_env = \"CCTV_BENCH_TOKEN\"\n\n\
         [mqtt]\nhost = \"{}\"\nport = {}\nclient_id = \"gw1-bench\"\n\n\
         [[mqtt.topics]]\nfilter = \"frigate/events\"\nformat = \"frigate\"\n\n\
         [telemetry]\nlisten = \"127.0.0.1:{metrics_port}\"\n",
        nats.url(),
        dir.path().join("spool").display(),
        broker.host(),
        broker.port()
    );
    let config_path = dir.path().join("gateway.toml");
    std::fs::write(&config_path, config)?;
    let mut gateway = GatewayChild(
        Command::new(binary)
            .arg("--config")
            .arg(&config_path)
            .env("CCTV_BENCH_TOKEN", TOKEN)
            .env("CCTV_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("spawn {}", binary.display()))?,
    );
    let pid = gateway.0.id();
    wait_for(PHASE_TIMEOUT, || {
        metric(metrics_port, "cctv_gateway_spool_max_bytes").is_some()
    })
    .await
    .context("the gateway did not start")?;

    // HTTP phase.
    let cpu_before = cpu_seconds(pid);
    let started = Instant::now();
    let mut lanes = tokio::task::JoinSet::new();
    for lane in 0..HTTP_CONNECTIONS as u64 {
        lanes.spawn(push_lane(http_port, lane, messages));
    }
    while let Some(lane) = lanes.join_next().await {
        lane??;
    }
    wait_for(PHASE_TIMEOUT, || {
        metric(metrics_port, "cctv_gateway_published_total").unwrap_or(0.0) >= messages as f64
    })
    .await
    .context("HTTP pushes not all acknowledged by NATS")?;
    let http = GatewayPhase {
        messages,
        seconds: started.elapsed().as_secs_f64(),
        gateway_cpu_seconds: cpu_seconds(pid) - cpu_before,
    };

    // MQTT phase.
    let cpu_before = cpu_seconds(pid);
    let started = Instant::now();
    publish_frigate(&broker, messages).await?;
    let target = 2.0 * messages as f64;
    let mut last = (0.0, Instant::now());
    let mqtt = loop {
        let published = metric(metrics_port, "cctv_gateway_published_total").unwrap_or(0.0);
        if published >= target {
            break Ok(GatewayPhase {
                messages,
                seconds: started.elapsed().as_secs_f64(),
                gateway_cpu_seconds: cpu_seconds(pid) - cpu_before,
            });
        }
        if published > last.0 {
            last = (published, Instant::now());
        } else if last.1.elapsed() > STALL_TIMEOUT || started.elapsed() > PHASE_TIMEOUT {
            break Err(format!(
                "stalled: {:.0} of {messages} MQTT messages published into NATS, none for {} s",
                published - messages as f64,
                last.1.elapsed().as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    gateway.0.kill().ok();
    Ok(GatewayResult { http, mqtt })
}

/// Kills the gateway when dropped (also on an early error).
struct GatewayChild(Child);

impl Drop for GatewayChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One keep-alive connection pushing every `HTTP_CONNECTIONS`-th message.
async fn push_lane(port: u16, lane: u64, messages: u64) -> anyhow::Result<()> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let detected_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut line = String::new();
    for n in (lane..messages).step_by(HTTP_CONNECTIONS) {
        let body = format!(
            r#"{{"camera_id":"BENCH-{}","offence_type":"traffic.speeding","detected_at":"{detected_at}","source_event_id":"bench-{n}","region":"KZ-75"}}"#,
            n % 500
        );
        let request = format!(
            "POST /canonical/bench HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        write.write_all(request.as_bytes()).await?;
        // Status line, headers, then the body of Content-Length bytes.
        line.clear();
        read.read_line(&mut line).await?;
        if !line.starts_with("HTTP/1.1 200") {
            bail!("push {n} answered {line:?}");
        }
        let mut content_length = 0usize;
        loop {
            line.clear();
            read.read_line(&mut line).await?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    content_length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; content_length];
        read.read_exact(&mut body).await?;
    }
    Ok(())
}

/// Publishes `messages` Frigate events (one track each) with QoS 1 and
/// waits for the broker's acks.
async fn publish_frigate(
    broker: &cctv_testkit::MosquittoServer,
    messages: u64,
) -> anyhow::Result<()> {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let mut options = MqttOptions::new("bench-frigate", broker.host(), broker.port());
    options.set_inflight(200);
    let (client, mut event_loop) = AsyncClient::new(options, 1024);
    let start = chrono::Utc::now().timestamp();
    let publisher = tokio::spawn(async move {
        for n in 0..messages {
            let payload = format!(
                r#"{{"type":"new","before":null,"after":{{"id":"{start}.{n:06}-bench","camera":"yard_{}","label":"person","score":0.8,"top_score":0.8,"false_positive":false,"start_time":{start}.5,"end_time":null,"current_zones":["dumping_site"],"entered_zones":["dumping_site"]}}}}"#,
                n % 50
            );
            client
                .publish("frigate/events", QoS::AtLeastOnce, false, payload)
                .await?;
        }
        anyhow::Ok(())
    });
    let mut acked = 0;
    let deadline = tokio::time::Instant::now() + PHASE_TIMEOUT;
    while acked < messages {
        let event = tokio::time::timeout_at(deadline, event_loop.poll())
            .await
            .context("the broker stopped acknowledging")??;
        if let Event::Incoming(Packet::PubAck(_)) = event {
            acked += 1;
        }
    }
    publisher.await??;
    Ok(())
}

/// The sum of a metric's samples on the gateway's `/metrics`.
fn metric(port: u16, name: &str) -> Option<f64> {
    let page = cctv_testkit::metrics_page(port)?;
    let values: Vec<f64> = cctv_testkit::metric_samples(&page, name)
        .map(|(_, value)| value)
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

async fn wait_for(timeout: Duration, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// The release binary next to the bench's own.
pub fn gateway_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("bench binary has a directory")?;
    let binary = dir.join("cctv-gateway");
    if !binary.is_file() {
        bail!(
            "{} missing: cargo build --release -p cctv-gateway",
            binary.display()
        );
    }
    Ok(binary)
}
