//! The NATS floor: what `nats-server` alone costs for each operation the
//! pipeline needs per offence, measured on a fresh server with the streams
//! exactly as deployed and no service, no ClickHouse, no normalisation.
//!
//! Per offence the pipeline stores two messages durably (the raw message in
//! `CCTV_RAW`, the event in `CCTV_EVENTS`), each through an acknowledged
//! publish, and consumes each once from a pull consumer (raw: explicit ack
//! per message; events: one `AckPolicy::All` ack per batch). Measuring those
//! four operations in isolation gives the least CPU per offence any pipeline
//! with these two durable hops spends in `nats-server` on this machine, and
//! with it an upper bound on offences per second that no client-side work can
//! lift.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy};
use async_nats::HeaderMap;
use bytes::Bytes;
use cctv_bus::StreamsConfig;
use futures::StreamExt;

/// Publishes whose acks may be outstanding at once (as the simulator does).
const PUBLISH_WINDOW: usize = 4096;
/// Messages per pull (as the ingest's default batch).
const PULL_BATCH: usize = 1000;
/// Longest one operation may take.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(600);
/// A stream whose message count has not grown for this long has stored all
/// it will.
const SETTLED_AFTER: Duration = Duration::from_secs(3);

/// One measured operation.
#[derive(Debug, Clone)]
pub struct Hop {
    /// What was measured.
    pub operation: &'static str,
    /// Messages handled.
    pub messages: u64,
    /// Messages sent but never stored: nats-server (2.11 and later) drops core
    /// publishes beyond a stream's ingest queue ("excessive stream ingest
    /// rate"), and nothing tells the publisher.
    pub dropped: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// nats-server CPU seconds.
    pub server_cpu: f64,
    /// CPU seconds of the client (this process).
    pub client_cpu: f64,
}

impl Hop {
    /// nats-server CPU microseconds per message.
    #[must_use]
    pub fn server_us(&self) -> f64 {
        self.server_cpu * 1e6 / self.messages.max(1) as f64
    }

    /// Client CPU microseconds per message.
    #[must_use]
    pub fn client_us(&self) -> f64 {
        self.client_cpu * 1e6 / self.messages.max(1) as f64
    }

    /// Messages per second.
    #[must_use]
    pub fn rate(&self) -> f64 {
        self.messages as f64 / self.seconds
    }
}

/// The fields of `/proc/<pid>/stat` after the process name (empty when
/// the process is gone): index 0 is the 3rd field of the whole line.
fn stat_fields(pid: u32) -> Vec<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    after_name
        .split_whitespace()
        .map(|value| value.parse::<f64>().unwrap_or(0.0))
        .collect()
}

/// CPU seconds (user + system) of a process from `/proc/<pid>/stat`.
#[must_use]
pub fn cpu_seconds(pid: u32) -> f64 {
    let fields = stat_fields(pid);
    let ticks = |index: usize| fields.get(index).copied().unwrap_or(0.0);
    // utime and stime: the 14th and 15th fields of the whole line, in clock
    // ticks of 1/100 s (`getconf CLK_TCK` on Linux).
    (ticks(11) + ticks(12)) / 100.0
}

/// Minor page faults of process `pid` so far (0 when it is gone): pages
/// it touched for the first time, which this VM's balloon makes dear.
#[must_use]
pub fn minor_faults(pid: u32) -> u64 {
    // minflt: the 10th field of the whole line, the 8th after the name.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    stat_fields(pid).get(7).map_or(0, |faults| *faults as u64)
}

/// Measures the four operations with `messages` messages each against the
/// server at `url` (pid `server_pid`), whose streams are created here.
///
/// `raw_payload` and `event_payload` are message bodies of the real sizes.
///
/// # Errors
/// When the server cannot be reached, a publish is refused or a count does
/// not add up.
pub async fn measure(
    url: &str,
    server_pid: u32,
    messages: u64,
    raw_payload: Bytes,
    event_payload: Bytes,
) -> anyhow::Result<Vec<Hop>> {
    let client = async_nats::connect(url).await?;
    let js = jetstream::new(client.clone());
    let streams = StreamsConfig::default();
    cctv_bus::ensure_streams(&js, &streams).await?;
    let me = std::process::id();
    let mut hops = Vec::new();

    let timed = |operation: &'static str| {
        eprintln!("  floor: {operation} ...");
        Meter::start(operation, server_pid, me)
    };

    let meter = timed("JetStream publish to CCTV_RAW, acked (`cctv_bus::AckedPublisher`)");
    publish_batched(
        &client,
        "cctv.raw.canonical.floor-batched",
        messages,
        &raw_payload,
    )
    .await?;
    hops.push(meter.stop(messages));

    // Both acked publishers start on an empty stream: a fuller stream costs
    // the server more per message, which would favour whichever ran first.
    js.get_stream(&streams.raw.name)
        .await?
        .purge()
        .filter("cctv.raw.canonical.floor-batched")
        .await?;

    let meter = timed("JetStream publish to CCTV_RAW, acked (async-nats `Context::publish`)");
    publish_acked(
        &js,
        "cctv.raw.canonical.floor",
        "raw",
        messages,
        &raw_payload,
    )
    .await?;
    hops.push(meter.stop(messages));

    let meter = timed("core publish to CCTV_RAW, no ack (a core-NATS gateway)");
    for index in 0..messages {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("core-{index}").as_str());
        client
            .publish_with_headers(
                "cctv.raw.canonical.floor-core",
                headers,
                raw_payload.clone(),
            )
            .await?;
    }
    client.flush().await?;
    let (stored, settled) = wait_for_count(&js, &streams.raw.name, messages * 2).await?;
    let core_stored = stored - messages;
    let mut hop = meter.stop(messages);
    // The wait for a count that stopped growing is not the server's work.
    hop.seconds -= settled.elapsed().as_secs_f64();
    hop.dropped = messages - core_stored.min(messages);
    hops.push(hop);

    let meter = timed("JetStream publish to CCTV_EVENTS, acked (`AckedPublisher`)");
    publish_batched(
        &client,
        &cctv_bus::subjects::event_partition(0),
        messages,
        &event_payload,
    )
    .await?;
    hops.push(meter.stop(messages));

    let meter = timed("pull + explicit ack per message from CCTV_RAW (raw hop out)");
    consume(
        &js,
        &streams.raw.name,
        "cctv.raw.canonical.floor",
        AckPolicy::Explicit,
        messages,
    )
    .await?;
    hops.push(meter.stop(messages));

    let meter = timed("pull + one AckAll per batch from CCTV_EVENTS (events hop out)");
    consume(
        &js,
        &streams.events.name,
        "cctv.events.>",
        AckPolicy::All,
        messages,
    )
    .await?;
    hops.push(meter.stop(messages));

    let meter = timed("pull + one AckAll per batch from CCTV_RAW (raw hop out, batched acks)");
    consume(
        &js,
        &streams.raw.name,
        "cctv.raw.canonical.floor-core",
        AckPolicy::All,
        core_stored,
    )
    .await?;
    hops.push(meter.stop(core_stored));
    Ok(hops)
}

/// CPU and wall clock at the start of one operation.
struct Meter {
    operation: &'static str,
    server_pid: u32,
    client_pid: u32,
    started: Instant,
    server_cpu: f64,
    client_cpu: f64,
}

impl Meter {
    fn start(operation: &'static str, server_pid: u32, client_pid: u32) -> Meter {
        Meter {
            operation,
            server_pid,
            client_pid,
            started: Instant::now(),
            server_cpu: cpu_seconds(server_pid),
            client_cpu: cpu_seconds(client_pid),
        }
    }

    fn stop(self, messages: u64) -> Hop {
        let hop = Hop {
            operation: self.operation,
            messages,
            dropped: 0,
            seconds: self.started.elapsed().as_secs_f64(),
            server_cpu: cpu_seconds(self.server_pid) - self.server_cpu,
            client_cpu: cpu_seconds(self.client_pid) - self.client_cpu,
        };
        eprintln!(
            "  floor: done in {:.1} s, {:.0} msg/s",
            hop.seconds,
            hop.rate()
        );
        hop
    }
}

async fn publish_acked(
    js: &jetstream::Context,
    subject: &'static str,
    id_prefix: &str,
    messages: u64,
    payload: &Bytes,
) -> anyhow::Result<()> {
    let mut in_flight = VecDeque::with_capacity(PUBLISH_WINDOW);
    let mut stored = 0u64;
    for index in 0..messages {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("{id_prefix}-{index}").as_str());
        in_flight.push_back(
            js.publish_with_headers(subject, headers, payload.clone())
                .await?,
        );
        while in_flight.len() >= PUBLISH_WINDOW {
            if let Some(ack) = in_flight.pop_front() {
                stored += u64::from(!ack.await?.duplicate);
            }
        }
    }
    for ack in in_flight {
        stored += u64::from(!ack.await?.duplicate);
    }
    if stored != messages {
        bail!("{subject}: {stored} of {messages} publishes stored");
    }
    Ok(())
}

/// Publishes in batches of [`PULL_BATCH`] through `cctv_bus::AckedPublisher`,
/// as the ingest does, with up to four batches' acks outstanding.
async fn publish_batched(
    client: &async_nats::Client,
    subject: &str,
    messages: u64,
    payload: &Bytes,
) -> anyhow::Result<()> {
    let publisher = cctv_bus::AckedPublisher::new(client.clone()).await?;
    let mut waiting = VecDeque::new();
    let mut stored = 0u64;
    let mut index = 0u64;
    while index < messages {
        let mut batch = publisher.batch();
        while index < messages && batch.len() < PULL_BATCH {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("batched-{subject}-{index}").as_str());
            batch.publish(subject, headers, payload.clone()).await?;
            index += 1;
        }
        waiting.push_back(tokio::spawn(batch.acks(OPERATION_TIMEOUT)));
        while waiting.len() >= 4 || (index == messages && !waiting.is_empty()) {
            if let Some(acks) = waiting.pop_front() {
                stored += acks
                    .await?
                    .iter()
                    .filter(|ack| matches!(ack, Some(cctv_bus::PublishOutcome::Stored(_))))
                    .count() as u64;
            }
        }
    }
    if stored != messages {
        bail!("{subject}: {stored} of {messages} publishes stored");
    }
    Ok(())
}

/// Waits until `stream` holds `count` messages, or until its count has not
/// grown for [`SETTLED_AFTER`] (the rest was dropped); returns the count and
/// when it was last reached.
async fn wait_for_count(
    js: &jetstream::Context,
    stream: &str,
    count: u64,
) -> anyhow::Result<(u64, Instant)> {
    let started = Instant::now();
    let mut last = (0u64, Instant::now());
    loop {
        let mut handle = js.get_stream(stream).await?;
        let stored = handle.info().await?.state.messages;
        if stored >= count {
            return Ok((stored, Instant::now()));
        }
        if stored != last.0 {
            last = (stored, Instant::now());
        } else if last.1.elapsed() > SETTLED_AFTER {
            return Ok(last);
        }
        if started.elapsed() > OPERATION_TIMEOUT {
            bail!("{stream}: {stored} of {count} messages stored");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn consume(
    js: &jetstream::Context,
    stream: &str,
    filter: &str,
    ack_policy: AckPolicy,
    messages: u64,
) -> anyhow::Result<()> {
    let name = format!("floor-{}", filter.replace(['.', '>', '*'], "_"));
    let consumer = js
        .get_stream(stream)
        .await?
        .create_consumer(pull::Config {
            durable_name: Some(name),
            ack_policy,
            filter_subject: filter.to_string(),
            max_ack_pending: 20_000,
            ..Default::default()
        })
        .await?;
    let mut deliveries = consumer
        .stream()
        .max_messages_per_batch(PULL_BATCH)
        .messages()
        .await?;
    let started = Instant::now();
    let mut received = 0u64;
    while received < messages {
        let message = tokio::time::timeout(OPERATION_TIMEOUT, deliveries.next())
            .await
            .context("no delivery in time")?
            .context("delivery stream ended")?
            .map_err(|e| anyhow::anyhow!("delivery failed: {e}"))?;
        received += 1;
        let batch_end = received.is_multiple_of(PULL_BATCH as u64) || received == messages;
        if ack_policy == AckPolicy::Explicit || batch_end {
            message
                .ack()
                .await
                .map_err(|e| anyhow::anyhow!("ack failed: {e}"))?;
        }
        if started.elapsed() > OPERATION_TIMEOUT {
            bail!("{stream}: {received} of {messages} delivered in time");
        }
    }
    // Count the server's work on the acks too: wait until it has applied them.
    js.client().flush().await?;
    let mut consumer = consumer;
    loop {
        let info = consumer.info().await?;
        if info.num_ack_pending == 0
            && info.ack_floor.stream_sequence >= info.delivered.stream_sequence
        {
            return Ok(());
        }
        if started.elapsed() > OPERATION_TIMEOUT {
            bail!(
                "{stream}: {} deliveries still unacknowledged",
                info.num_ack_pending
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
