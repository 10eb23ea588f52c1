//! The ingest loop: pull raw messages, normalise, publish events and dead
//! letters, ack the raw message after every publish it caused was
//! acknowledged.
//!
//! Delivery invariants:
//! - a raw message is acked only after JetStream acknowledged each event and
//!   dead letter it produced, so a crash at any instant leads to a
//!   redelivery, never a loss;
//! - a redelivered raw message yields the same event ids, and the events
//!   stream drops repeated `Nats-Msg-Id`s within its duplicate window (the
//!   dedup horizon), so a redelivery never adds a second event.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, AckKind};
use async_nats::HeaderMap;
use cctv_bus::{headers, subjects, PublishOutcome};
use cctv_event::{CameraRegistry, Regions, Taxonomy};
use cctv_normalize::{Normalizer, Outcome, RawMessage};
use cctv_telemetry::Health;
use futures::StreamExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::metrics::{self as names, FormatLabel, HotCounters, RawOutcome};
use crate::{IngestConfig, IngestError, IngestStats};

/// How long a batch waits for the acks of its event and dead-letter
/// publishes; raw messages whose publishes went unanswered are redelivered.
const PUBLISH_ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed fetch or lost consumer before trying again.
const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// Batches in a row whose every publish went unacknowledged after which the
/// connection is replaced: a client whose requests stopped getting answers
/// after a server restart (seen under load: every JetStream publish timed out
/// while deliveries still arrived) is not trusted to heal itself.
const RECONNECT_AFTER_FAILED_BATCHES: u32 = 3;

/// Runs the ingest service until `shutdown` is cancelled, then finishes the
/// batches in flight (bounded by `shutdown_grace`) and returns.
pub async fn run(
    config: IngestConfig,
    shutdown: CancellationToken,
    stats: IngestStats,
) -> Result<(), IngestError> {
    config.validate()?;
    cctv_telemetry::fault_point("on_start");
    let health = Health::starting();
    if let Some(listen) = config.telemetry.listen {
        let address = cctv_telemetry::serve(listen, health.clone(), shutdown.clone())
            .await
            .map_err(|e| IngestError::Config(format!("cannot listen on {listen}: {e}")))?;
        tracing::info!(%address, "metrics and health endpoint listening");
    } else {
        cctv_telemetry::install_metrics();
    }
    let normalizer = Arc::new(load_normalizer(&config)?);

    let client = cctv_bus::connect_with_retry(&config.nats, "cctv-ingest", &shutdown).await?;
    let Some(mut client) = client else {
        return Ok(());
    };
    let mut js = jetstream::new(client.clone());
    cctv_bus::ensure_streams(&js, &config.streams).await?;
    let mut consumer = create_consumer(&js, &config).await?;
    health.set_ok();
    tracing::info!(consumer = %config.ingest.consumer, "ingest started");

    let mut in_flight = JoinSet::new();
    let publisher = cctv_bus::AckedPublisher::new(client.clone()).await?;
    let mut context = Arc::new(BatchContext::new(publisher, &normalizer, &stats, &config));
    'outer: while !shutdown.is_cancelled() {
        if context.failed_batches.load(Ordering::Relaxed) >= RECONNECT_AFTER_FAILED_BATCHES {
            tracing::warn!(
                batches = RECONNECT_AFTER_FAILED_BATCHES,
                "no publish acknowledged for several batches; replacing the NATS connection"
            );
            health.set_problem("publishes not acknowledged; reconnecting");
            // Their raw messages stay unacked and are redelivered.
            while in_flight.join_next().await.is_some() {}
            let Some(new_client) =
                cctv_bus::connect_with_retry(&config.nats, "cctv-ingest", &shutdown).await?
            else {
                break;
            };
            client = new_client;
            js = jetstream::new(client.clone());
            match create_consumer(&js, &config).await {
                Ok(found) => consumer = found,
                Err(error) => tracing::warn!(%error, "raw consumer not available yet"),
            }
            let publisher = match cctv_bus::AckedPublisher::new(client.clone()).await {
                Ok(publisher) => publisher,
                Err(error) => {
                    tracing::warn!(%error, "cannot subscribe to publish acks; retrying");
                    tokio::time::sleep(RETRY_PAUSE).await;
                    continue;
                }
            };
            context = Arc::new(BatchContext::new(publisher, &normalizer, &stats, &config));
            continue;
        }
        // A pull may not deliver a message larger than its byte limit, so the
        // limit is at least twice the largest message the server accepts.
        let max_batch_bytes = config
            .ingest
            .max_batch_bytes
            .max(client.server_info().max_payload.saturating_mul(2));
        let messages = consumer
            .stream()
            .max_messages_per_batch(config.ingest.batch_size)
            .max_bytes_per_batch(max_batch_bytes)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await;
        let messages = match messages {
            Ok(messages) => messages,
            Err(error) => {
                health.set_problem("cannot pull from CCTV_RAW");
                tracing::warn!(%error, "pull failed; retrying");
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(RETRY_PAUSE) => {}
                }
                // The consumer may be gone (or JetStream not back yet after a
                // server restart): look it up again before the next pull.
                match create_consumer(&js, &config).await {
                    Ok(found) => consumer = found,
                    Err(error) => tracing::warn!(%error, "raw consumer not available yet"),
                }
                continue;
            }
        };
        let mut chunks = messages.ready_chunks(config.ingest.batch_size);
        loop {
            // Bound the batches in flight before taking more messages.
            while in_flight.len() >= config.ingest.max_in_flight_batches {
                let _ = in_flight.join_next().await;
            }
            let chunk = tokio::select! {
                biased;
                () = shutdown.cancelled() => break 'outer,
                chunk = chunks.next() => chunk,
            };
            let Some(chunk) = chunk else { break };
            let mut batch = Vec::with_capacity(chunk.len());
            let mut stream_failed = false;
            for item in chunk {
                match item {
                    Ok(message) => batch.push(message),
                    Err(error) => {
                        tracing::warn!(%error, "consumer stream error; pulling anew");
                        health.set_problem("consumer stream error");
                        stream_failed = true;
                    }
                }
            }
            if !batch.is_empty() {
                health.set_ok();
                let context = context.clone();
                in_flight.spawn(async move { context.process(batch).await });
            }
            if context.failed_batches.load(Ordering::Relaxed) >= RECONNECT_AFTER_FAILED_BATCHES {
                break;
            }
            if stream_failed {
                // A pull stream can stall after a reconnect (missed heartbeats,
                // pull requests lost with the old connection): start a new one.
                // Deliveries of the old one are acked by their batches or
                // redelivered after ack_wait.
                break;
            }
        }
    }

    tracing::info!(
        in_flight = in_flight.len(),
        "shutting down: finishing batches in flight"
    );
    let drained = tokio::time::timeout(config.ingest.shutdown_grace, async {
        while in_flight.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("grace period over; unfinished raw messages will be redelivered");
        in_flight.abort_all();
    }
    // Acks are fire-and-forget publishes: push the last ones out before the
    // connection is dropped, so a clean stop leaves no handled message unacked.
    match tokio::time::timeout(config.ingest.shutdown_grace, client.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "final flush of acks failed"),
        Err(_) => tracing::warn!("final flush of acks timed out"),
    }
    let snapshot = stats.snapshot();
    tracing::info!(
        counted = snapshot.counted,
        duplicate = snapshot.duplicate,
        ignored = snapshot.ignored,
        dead_lettered = snapshot.dead_lettered,
        "ingest stopped"
    );
    Ok(())
}

fn load_normalizer(config: &IngestConfig) -> Result<Normalizer, IngestError> {
    let taxonomy = match &config.data.taxonomy_path {
        Some(path) => Taxonomy::load(path)?,
        None => Taxonomy::builtin()?,
    };
    let regions = match &config.data.regions_path {
        Some(path) => Regions::load(path)?,
        None => Regions::builtin()?,
    };
    let registry = match &config.data.registry_path {
        Some(path) => CameraRegistry::load(path, &regions)?,
        None => CameraRegistry::default(),
    };
    tracing::info!(
        offences = taxonomy.offences().len(),
        regions = regions.all().len(),
        cameras = registry.len(),
        "reference data loaded"
    );
    let normalizer = Normalizer::new(
        Arc::new(taxonomy),
        Arc::new(regions),
        Arc::new(registry),
        config.limits.to_limits(),
    );
    // Plates leave the service only as a keyed hash when so configured;
    // `validate` has already refused a missing or short key.
    match config.privacy.plate_key()? {
        Some(key) => {
            tracing::info!("plates are stored as a keyed hash");
            Ok(normalizer.with_plate_key(key))
        }
        None => Ok(normalizer),
    }
}

async fn create_consumer(
    js: &jetstream::Context,
    config: &IngestConfig,
) -> Result<jetstream::consumer::PullConsumer, IngestError> {
    let stream = js.get_stream(&config.streams.raw.name).await.map_err(|e| {
        cctv_bus::BusError::JetStream {
            operation: "get raw stream",
            message: e.to_string(),
        }
    })?;
    let settings = &config.ingest;
    let consumer_config = pull::Config {
        durable_name: Some(settings.consumer.clone()),
        description: Some("cctv-ingest: raw vendor messages to canonical events".into()),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: settings.ack_wait,
        max_ack_pending: settings.max_ack_pending,
        max_deliver: -1,
        filter_subject: String::new(),
        ..Default::default()
    };
    stream
        .get_or_create_consumer(&settings.consumer, consumer_config)
        .await
        .map_err(|e| cctv_bus::BusError::jetstream("create raw consumer", e).into())
}

/// What every batch task needs.
struct BatchContext {
    /// Event and dead-letter publishes, their acks awaited per batch.
    publisher: cctv_bus::AckedPublisher,
    normalizer: Arc<Normalizer>,
    stats: IngestStats,
    raw_stream: String,
    event_shards: u16,
    /// Batches in a row in which publishes failed and none succeeded.
    failed_batches: AtomicU32,
    /// Counter handles of the per-message metrics.
    counters: HotCounters,
}

/// What one raw message turned into, waiting for its publish acks.
enum Pending {
    /// Events published: their indexes in the batch's acks.
    Events(Vec<usize>),
    /// Not an offence: nothing to publish.
    Ignored,
    /// A dead letter published: its index in the batch's acks.
    DeadLetter(usize, &'static str),
    /// A publish could not even be sent: leave the message for redelivery.
    Failed,
}

impl BatchContext {
    /// A fresh context for a (new) connection's publisher.
    fn new(
        publisher: cctv_bus::AckedPublisher,
        normalizer: &Arc<Normalizer>,
        stats: &IngestStats,
        config: &IngestConfig,
    ) -> BatchContext {
        BatchContext {
            publisher,
            normalizer: normalizer.clone(),
            stats: stats.clone(),
            raw_stream: config.streams.raw.name.clone(),
            event_shards: config.ingest.event_shards,
            failed_batches: AtomicU32::new(0),
            counters: HotCounters::new(),
        }
    }

    async fn process(&self, batch: Vec<jetstream::Message>) {
        let started = Instant::now();
        let now = chrono::Utc::now();
        // One entry per message: its format label (the subject is parsed
        // once) and what it turned into.
        let mut pending = Vec::with_capacity(batch.len());
        // One buffer for every event's JSON: each publish takes a copy of
        // exactly its length, so the buffer grows once and is reused.
        let mut json = Vec::new();
        let mut publishes = self.publisher.batch();
        for message in &batch {
            let parsed = subjects::parse_raw(&message.subject);
            let format = FormatLabel::new(
                parsed.and_then(|parsed| cctv_normalize::Format::parse(parsed.format)),
            );
            let outcome = self.normalize(message, parsed, now);
            let entry = match outcome {
                Outcome::Offences(events) => {
                    let mut indexes = Vec::with_capacity(events.len());
                    let mut failed = false;
                    for event in &events {
                        let shard =
                            subjects::shard_of(event.event_id.as_bytes(), self.event_shards);
                        let subject = subjects::event(shard, &event.region, &event.offence_type);
                        let mut event_headers = HeaderMap::new();
                        let mut id_text = [0u8; uuid::fmt::Hyphenated::LENGTH];
                        event_headers.insert(
                            headers::NATS_MSG_ID,
                            &*event.event_id.hyphenated().encode_lower(&mut id_text),
                        );
                        json.clear();
                        event.write_json(&mut json);
                        let payload = bytes::Bytes::copy_from_slice(&json);
                        match publishes.publish(subject, event_headers, payload).await {
                            Ok(index) => indexes.push(index),
                            Err(error) => {
                                tracing::warn!(%error, "event publish failed");
                                failed = true;
                                break;
                            }
                        }
                    }
                    if failed {
                        Pending::Failed
                    } else {
                        Pending::Events(indexes)
                    }
                }
                Outcome::Ignored(reason) => {
                    metrics::counter!(names::IGNORED, "format" => format.as_str(), "reason" => reason.as_str()).increment(1);
                    Pending::Ignored
                }
                Outcome::Rejected(rejection) => {
                    match self
                        .publish_dead_letter(&mut publishes, message, &rejection, format.as_str())
                        .await
                    {
                        Ok(ack) => Pending::DeadLetter(ack, rejection.reason.as_str()),
                        Err(error) => {
                            tracing::warn!(%error, "dead letter publish failed");
                            Pending::Failed
                        }
                    }
                }
            };
            pending.push((format, entry));
        }

        // Every publish of the batch is in flight; now wait for the acks, then
        // ack each raw message whose publishes all succeeded.
        let acks = publishes.acks(PUBLISH_ACK_TIMEOUT).await;
        let mut settled_all = Vec::with_capacity(batch.len());
        let (mut publishes_acked, mut publishes_failed) = (0u64, 0u64);
        for (format, entry) in pending {
            let settled = match entry {
                Pending::Events(indexes) => {
                    let mut new = 0u64;
                    let mut duplicate = 0u64;
                    let mut ok = true;
                    for index in indexes {
                        match acks.get(index) {
                            Some(Some(PublishOutcome::Stored(_))) => new += 1,
                            Some(Some(PublishOutcome::Duplicate(_))) => duplicate += 1,
                            Some(Some(PublishOutcome::Refused(reason))) => {
                                tracing::warn!(%reason, "event publish refused");
                                ok = false;
                            }
                            Some(None) | None => {
                                tracing::warn!("event publish not acknowledged in time");
                                ok = false;
                            }
                        }
                    }
                    if ok {
                        publishes_acked += 1;
                        self.stats.add_events(new, duplicate);
                        self.counters.events_new(format).increment(new);
                        self.counters.events_duplicate(format).increment(duplicate);
                        if new > 0 {
                            Some(RawOutcome::Counted)
                        } else {
                            Some(RawOutcome::Duplicate)
                        }
                    } else {
                        publishes_failed += 1;
                        None
                    }
                }
                Pending::Ignored => Some(RawOutcome::Ignored),
                Pending::DeadLetter(index, reason) => match acks.get(index).cloned().flatten() {
                    Some(PublishOutcome::Stored(_) | PublishOutcome::Duplicate(_)) => {
                        publishes_acked += 1;
                        metrics::counter!(names::DEAD_LETTERS, "format" => format.as_str(), "reason" => reason).increment(1);
                        Some(RawOutcome::DeadLettered)
                    }
                    Some(PublishOutcome::Refused(reason)) => {
                        publishes_failed += 1;
                        tracing::warn!(%reason, "dead letter refused");
                        None
                    }
                    None => {
                        publishes_failed += 1;
                        tracing::warn!("dead letter not acknowledged in time");
                        None
                    }
                },
                Pending::Failed => {
                    publishes_failed += 1;
                    None
                }
            };
            settled_all.push((format, settled));
        }
        if publishes_acked > 0 {
            self.failed_batches.store(0, Ordering::Relaxed);
        } else if publishes_failed > 0 {
            self.failed_batches.fetch_add(1, Ordering::Relaxed);
        }
        // Crash tests: the events are in JetStream, the raw messages unacked.
        cctv_telemetry::fault_point("after_publish");
        for (message, (format, settled)) in batch.iter().zip(settled_all) {
            match settled {
                Some(outcome) => {
                    if let Err(error) = message.ack().await {
                        // The events are stored; a redelivery is a harmless duplicate.
                        tracing::warn!(%error, "raw ack failed; message will be redelivered");
                    }
                    match outcome {
                        RawOutcome::Counted => self.stats.add_counted(),
                        RawOutcome::Duplicate => self.stats.add_duplicate(),
                        RawOutcome::Ignored => self.stats.add_ignored(),
                        RawOutcome::DeadLettered => self.stats.add_dead_lettered(),
                    }
                    self.counters.raw_messages(format, outcome).increment(1);
                }
                None => {
                    self.stats.add_retried();
                    metrics::counter!(names::RETRIES).increment(1);
                    let _ = message
                        .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                        .await;
                }
            }
        }
        if let Some(last) = batch.last() {
            if let Ok(info) = last.info() {
                #[allow(clippy::cast_precision_loss)]
                metrics::gauge!(names::LAG).set(info.pending as f64);
            }
        }
        #[allow(clippy::cast_precision_loss)]
        metrics::histogram!(names::BATCH_SIZE).record(batch.len() as f64);
        metrics::histogram!(names::BATCH_SECONDS).record(started.elapsed().as_secs_f64());
    }

    fn normalize(
        &self,
        message: &jetstream::Message,
        parsed: Option<subjects::RawSubject<'_>>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Outcome {
        let header = |name: &str| {
            message
                .headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str())
        };
        let raw = RawMessage {
            format: parsed.map_or("", |p| p.format),
            gateway_id: parsed.map_or("", |p| p.gateway_id),
            payload: &message.payload,
            msg_id: header(headers::NATS_MSG_ID),
            camera_id: header(headers::CAMERA_ID),
            received_at: header(headers::RECEIVED_AT),
            stored_at: message.info().ok().map(|info| info.published),
        };
        self.normalizer.normalize(&raw, now)
    }

    async fn publish_dead_letter(
        &self,
        publishes: &mut cctv_bus::AckBatch,
        message: &jetstream::Message,
        rejection: &cctv_normalize::Rejection,
        format: &str,
    ) -> Result<usize, cctv_bus::BusError> {
        let sequence = message
            .info()
            .map(|info| info.stream_sequence)
            .unwrap_or_default();
        let mut dlq_headers = HeaderMap::new();
        // One dead letter per raw stream position: a redelivery after a crash
        // is dropped as a duplicate by the dead-letter stream.
        dlq_headers.insert(
            headers::NATS_MSG_ID,
            format!("dlq:{}:{sequence}", self.raw_stream).as_str(),
        );
        dlq_headers.insert(headers::ERROR_REASON, rejection.reason.as_str());
        dlq_headers.insert(headers::ERROR, clean_header(&rejection.detail).as_str());
        dlq_headers.insert(
            headers::SOURCE_SUBJECT,
            clean_header(&message.subject).as_str(),
        );
        dlq_headers.insert(
            headers::SOURCE_SEQUENCE,
            format!("{}:{sequence}", self.raw_stream).as_str(),
        );
        dlq_headers.insert(
            headers::REJECTED_AT,
            chrono::Utc::now().to_rfc3339().as_str(),
        );
        if let Some(original) = message.headers.as_ref() {
            for name in [
                headers::NATS_MSG_ID,
                headers::CAMERA_ID,
                headers::RECEIVED_AT,
            ] {
                if let Some(value) = original.get(name) {
                    let target = if name == headers::NATS_MSG_ID {
                        headers::SOURCE_MSG_ID
                    } else {
                        name
                    };
                    dlq_headers.insert(target, clean_header(value.as_str()).as_str());
                }
            }
        }
        let subject = subjects::dlq(format, rejection.reason.as_str());
        publishes
            .publish(subject, dlq_headers, message.payload.clone())
            .await
    }
}

/// Header values must be one line and reasonably short.
fn clean_header(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(512)
        .collect()
}
