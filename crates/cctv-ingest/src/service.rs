//! The ingest loop: pull raw messages, normalise, publish events and dead
//! letters, ack the raw message after every publish it caused was
//! acknowledged.
//!
//! Delivery invariants:
//! - a raw message is acked only after JetStream acknowledged each event and
//!   dead letter it produced, so a crash at any instant leads to a
//!   redelivery, never a loss;
//! - a redelivered raw message yields the same event ids, and each event
//!   goes to the partition of its id (`cctv.events.p<k>`), whose owner in the
//!   aggregator drops ids it has written: a redelivery never adds a count.
//!
//! The events of one pull are packed per partition into event batches
//! ([`cctv_bus::event_batch`]): one NATS message carries up to
//! `event_batch_max_events` events, so the broker's per-message cost is paid
//! per batch, not per offence. Gateway batches (`cctv.raw.batch.<gateway>`)
//! are split into their items, each normalised, published, ignored or
//! dead-lettered as if it had come alone.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, AckKind};
use async_nats::HeaderMap;
use cctv_bus::{headers, subjects, PublishOutcome};
use cctv_event::{CameraRegistry, Regions, Taxonomy};
use cctv_normalize::{BatchEntry, Normalizer, Outcome, RawMessage};
use cctv_runtime::Health;
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
    cctv_runtime::fault_point("on_start");
    let health = Health::starting();
    if let Some(listen) = config.telemetry.listen {
        let address = cctv_runtime::serve(listen, health.clone(), shutdown.clone())
            .await
            .map_err(|e| IngestError::Config(format!("cannot listen on {listen}: {e}")))?;
        tracing::info!(%address, "metrics and health endpoint listening");
    } else {
        cctv_runtime::install_metrics();
    }
    let normalizer = Arc::new(load_normalizer(&config)?);

    let client = cctv_bus::connect_with_retry(&config.nats, "cctv-ingest", &shutdown).await?;
    let Some(mut client) = client else {
        return Ok(());
    };
    let mut js = jetstream::new(client.clone());
    cctv_bus::ensure_streams(&js, &config.streams).await?;
    let partitions = cctv_bus::LeaseBucket::open(&js, &config.streams.leases)
        .await?
        .partitions_or_init()
        .await?;
    let mut consumer = create_consumer(&js, &config).await?;
    health.set_ok();
    tracing::info!(consumer = %config.ingest.consumer, partitions, "ingest started");

    let mut in_flight = JoinSet::new();
    let publisher = cctv_bus::AckedPublisher::new(client.clone()).await?;
    let mut context = Arc::new(BatchContext::new(
        publisher,
        &normalizer,
        &stats,
        &config,
        partitions,
    ));
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
            context = Arc::new(BatchContext::new(
                publisher,
                &normalizer,
                &stats,
                &config,
                partitions,
            ));
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
        let mut messages = messages;
        loop {
            // Bound the batches in flight before taking more messages.
            while in_flight.len() >= config.ingest.max_in_flight_batches {
                let _ = in_flight.join_next().await;
            }
            let first = tokio::select! {
                biased;
                () = shutdown.cancelled() => break 'outer,
                first = messages.next() => first,
            };
            let Some(first) = first else { break };
            let mut batch = Vec::with_capacity(config.ingest.batch_size);
            let mut bytes = 0;
            let mut stream_failed = take_message(first, &mut batch, &mut bytes);
            let mut stream_ended = false;
            // Linger: fill the batch up to its size for a short while (what
            // the pull has already delivered is taken without waiting).
            let linger = tokio::time::sleep(config.ingest.batch_linger);
            tokio::pin!(linger);
            while !stream_failed
                && batch.len() < config.ingest.batch_size
                && bytes < config.ingest.max_batch_bytes
            {
                tokio::select! {
                    biased;
                    more = messages.next() => match more {
                        Some(more) => stream_failed = take_message(more, &mut batch, &mut bytes),
                        None => {
                            stream_ended = true;
                            break;
                        }
                    },
                    () = &mut linger => break,
                    () = shutdown.cancelled() => break,
                }
            }
            if stream_failed {
                health.set_problem("consumer stream error");
            } else {
                health.set_ok();
            }
            if !batch.is_empty() {
                let context = context.clone();
                in_flight.spawn(async move { context.process(batch).await });
            }
            if context.failed_batches.load(Ordering::Relaxed) >= RECONNECT_AFTER_FAILED_BATCHES {
                break;
            }
            if stream_failed || stream_ended {
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
        published = snapshot.published,
        events = snapshot.events,
        ignored = snapshot.ignored,
        dead_lettered = snapshot.dead_lettered,
        "ingest stopped"
    );
    Ok(())
}

/// Moves one delivery into `batch`, adding its payload's size to `bytes`;
/// true when the consumer stream reported an error (the stream is then
/// pulled anew).
fn take_message(
    item: Result<jetstream::Message, jetstream::consumer::pull::MessagesError>,
    batch: &mut Vec<jetstream::Message>,
    bytes: &mut usize,
) -> bool {
    match item {
        Ok(message) => {
            *bytes += message.payload.len();
            batch.push(message);
            false
        }
        Err(error) => {
            tracing::warn!(%error, "consumer stream error; pulling anew");
            true
        }
    }
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
    /// Partitions of `CCTV_EVENTS` (fixed at setup).
    partitions: u16,
    max_events: usize,
    max_bytes: usize,
    /// Batches in a row in which publishes failed and none succeeded.
    failed_batches: AtomicU32,
    /// Counter handles of the per-message metrics.
    counters: HotCounters,
}

/// What one vendor message (a raw message, or one item of a gateway batch)
/// turned into.
enum Unit {
    /// Offences routed into event batches.
    Published(u64),
    /// Not an offence: nothing to publish.
    Ignored(&'static str),
    /// A dead letter published: its index in the acks, and its reason.
    DeadLetter(usize, &'static str),
}

/// One raw message waiting for its publish acks.
struct Pending {
    /// Its vendor messages (one, or a gateway batch's items).
    units: Vec<(FormatLabel, Unit)>,
    /// Event batches holding its events (indexes into the sealed list).
    batches: Vec<usize>,
    /// A publish could not even be sent: leave the message for redelivery.
    failed: bool,
}

/// An event batch ready to publish.
struct Sealed {
    partition: u16,
    payload: bytes::Bytes,
    /// Raw messages (indexes in the pull) with events in it.
    members: Vec<usize>,
}

/// The open event batch of each partition.
struct Router {
    writers: Vec<cctv_bus::EventBatchWriter>,
    members: Vec<Vec<usize>>,
    sealed: Vec<Sealed>,
    max_events: usize,
    max_bytes: usize,
}

impl Router {
    fn new(partitions: u16, max_events: usize, max_bytes: usize) -> Self {
        let count = usize::from(partitions.max(1));
        Self {
            writers: (0..count)
                .map(|_| cctv_bus::EventBatchWriter::new())
                .collect(),
            members: vec![Vec::new(); count],
            sealed: Vec::new(),
            max_events,
            max_bytes,
        }
    }

    /// Adds one event of raw message `member` to its partition's batch.
    fn push(&mut self, partition: u16, encoded: &[u8], member: usize) {
        let index = usize::from(partition);
        if !self.writers[index].is_empty()
            && self.writers[index].bytes_len() + encoded.len() + 4 > self.max_bytes
        {
            self.seal(index);
        }
        self.writers[index].push_encoded(encoded);
        if self.members[index].last() != Some(&member) {
            self.members[index].push(member);
        }
        if self.writers[index].len() >= self.max_events {
            self.seal(index);
        }
    }

    fn seal(&mut self, index: usize) {
        if self.writers[index].is_empty() {
            return;
        }
        let payload = self.writers[index].finish();
        // The index is below the partition count, a u16.
        #[allow(clippy::cast_possible_truncation)]
        let partition = index as u16;
        self.sealed.push(Sealed {
            partition,
            payload,
            members: std::mem::take(&mut self.members[index]),
        });
    }

    /// Every batch, the open ones sealed.
    fn finish(mut self) -> Vec<Sealed> {
        for index in 0..self.writers.len() {
            self.seal(index);
        }
        self.sealed
    }
}

impl BatchContext {
    /// A fresh context for a (new) connection's publisher.
    fn new(
        publisher: cctv_bus::AckedPublisher,
        normalizer: &Arc<Normalizer>,
        stats: &IngestStats,
        config: &IngestConfig,
        partitions: u16,
    ) -> BatchContext {
        BatchContext {
            publisher,
            normalizer: normalizer.clone(),
            stats: stats.clone(),
            raw_stream: config.streams.raw.name.clone(),
            partitions,
            max_events: config.ingest.event_batch_max_events,
            max_bytes: config.ingest.event_batch_max_bytes,
            failed_batches: AtomicU32::new(0),
            counters: HotCounters::new(),
        }
    }

    async fn process(&self, batch: Vec<jetstream::Message>) {
        let started = Instant::now();
        let now = chrono::Utc::now();
        let mut publishes = self.publisher.batch();
        let mut router = Router::new(self.partitions, self.max_events, self.max_bytes);
        // One buffer for every event's JSON, reused.
        let mut encoded = Vec::new();
        let mut pending = Vec::with_capacity(batch.len());
        for (index, message) in batch.iter().enumerate() {
            let parsed = subjects::parse_raw(&message.subject);
            let mut entry = Pending {
                units: Vec::with_capacity(1),
                batches: Vec::new(),
                failed: false,
            };
            let stored_at = message.info().ok().map(|info| info.published);
            if parsed.is_some_and(|p| p.format == subjects::BATCH_FORMAT) {
                let gateway = parsed.map_or("", |p| p.gateway_id);
                match cctv_normalize::parse_batch(&message.payload, gateway) {
                    Ok(items) => {
                        for item in items {
                            match item {
                                BatchEntry::Item(item) => {
                                    let format = FormatLabel::parse(&item.format);
                                    let raw = item.raw(gateway, stored_at);
                                    let outcome = self.normalizer.normalize(&raw, now);
                                    let unit = self
                                        .settle_outcome(
                                            outcome,
                                            &mut router,
                                            &mut encoded,
                                            index,
                                            &mut publishes,
                                            DeadLetterSource {
                                                message,
                                                payload: DeadLetterBody::Borrowed(&item.body),
                                                format: &item.format,
                                                item: Some(item.index),
                                                item_id: Some(&item.id),
                                            },
                                        )
                                        .await;
                                    match unit {
                                        Some(unit) => entry.units.push((format, unit)),
                                        None => entry.failed = true,
                                    }
                                }
                                BatchEntry::Broken {
                                    index: item,
                                    rejection,
                                    body,
                                } => {
                                    let unit = self
                                        .dead_letter(
                                            &mut publishes,
                                            &rejection,
                                            DeadLetterSource {
                                                message,
                                                payload: DeadLetterBody::Borrowed(&body),
                                                format: subjects::BATCH_FORMAT,
                                                item: Some(item),
                                                item_id: None,
                                            },
                                        )
                                        .await;
                                    match unit {
                                        Some(unit) => entry.units.push((FormatLabel::Batch, unit)),
                                        None => entry.failed = true,
                                    }
                                }
                            }
                        }
                    }
                    Err(rejection) => {
                        let unit = self
                            .dead_letter(
                                &mut publishes,
                                &rejection,
                                DeadLetterSource {
                                    message,
                                    payload: DeadLetterBody::Owned(message.payload.clone()),
                                    format: subjects::BATCH_FORMAT,
                                    item: None,
                                    item_id: None,
                                },
                            )
                            .await;
                        match unit {
                            Some(unit) => entry.units.push((FormatLabel::Batch, unit)),
                            None => entry.failed = true,
                        }
                    }
                }
            } else {
                let format = FormatLabel::new(
                    parsed.and_then(|parsed| cctv_normalize::Format::parse(parsed.format)),
                );
                let outcome = self.normalize(message, parsed, now);
                let unit = self
                    .settle_outcome(
                        outcome,
                        &mut router,
                        &mut encoded,
                        index,
                        &mut publishes,
                        DeadLetterSource {
                            message,
                            payload: DeadLetterBody::Owned(message.payload.clone()),
                            format: format.as_str(),
                            item: None,
                            item_id: None,
                        },
                    )
                    .await;
                match unit {
                    Some(unit) => entry.units.push((format, unit)),
                    None => entry.failed = true,
                }
            }
            pending.push(entry);
        }

        // The event batches: one publish per partition batch.
        let sealed = router.finish();
        let mut batch_acks = Vec::with_capacity(sealed.len());
        for (sealed_index, batch_out) in sealed.iter().enumerate() {
            for member in &batch_out.members {
                pending[*member].batches.push(sealed_index);
            }
            // No `Nats-Msg-Id`: a batch's make-up depends on the pull it came
            // from, so an id could drop a batch with other events in it. A
            // republished event is dropped by its partition's owner instead.
            let mut event_headers = HeaderMap::new();
            event_headers.insert(headers::CONTENT_TYPE, cctv_bus::EVENT_BATCH_CONTENT_TYPE);
            match publishes
                .publish(
                    subjects::event_partition(batch_out.partition),
                    event_headers,
                    batch_out.payload.clone(),
                )
                .await
            {
                Ok(ack) => batch_acks.push(Some(ack)),
                Err(error) => {
                    tracing::warn!(%error, "event batch publish failed");
                    batch_acks.push(None);
                }
            }
        }

        // Every publish of the pull is in flight; now wait for the acks, then
        // ack each raw message whose publishes all succeeded.
        let acks = publishes.acks(PUBLISH_ACK_TIMEOUT).await;
        let stored = |index: usize| {
            matches!(
                acks.get(index),
                Some(Some(
                    PublishOutcome::Stored(_) | PublishOutcome::Duplicate(_)
                ))
            )
        };
        let batch_ok: Vec<bool> = batch_acks
            .iter()
            .map(|ack| ack.is_some_and(stored))
            .collect();
        let (mut settled_any, mut failed_any) = (false, false);
        let published_batches = batch_ok.iter().filter(|ok| **ok).count() as u64;
        // Crash tests: the events are in JetStream, the raw messages unacked.
        cctv_runtime::fault_point("after_publish");
        for (message, entry) in batch.iter().zip(pending) {
            let ok = !entry.failed
                && entry.batches.iter().all(|index| batch_ok[*index])
                && entry.units.iter().all(|(_, unit)| match unit {
                    Unit::DeadLetter(index, _) => stored(*index),
                    _ => true,
                });
            if !ok {
                failed_any = true;
                self.stats.add_retried();
                metrics::counter!(names::RETRIES).increment(1);
                let _ = message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await;
                continue;
            }
            settled_any = true;
            if let Err(error) = message.ack().await {
                // The events are stored; a redelivery is a harmless duplicate.
                tracing::warn!(%error, "raw ack failed; message will be redelivered");
            }
            for (format, unit) in entry.units {
                match unit {
                    Unit::Published(events) => {
                        self.stats.add_published(events);
                        self.counters.events(format).increment(events);
                        self.counters
                            .raw_messages(format, RawOutcome::Published)
                            .increment(1);
                    }
                    Unit::Ignored(reason) => {
                        self.stats.add_ignored();
                        metrics::counter!(names::IGNORED, "format" => format.as_str(), "reason" => reason).increment(1);
                        self.counters
                            .raw_messages(format, RawOutcome::Ignored)
                            .increment(1);
                    }
                    Unit::DeadLetter(_, reason) => {
                        self.stats.add_dead_lettered();
                        metrics::counter!(names::DEAD_LETTERS, "format" => format.as_str(), "reason" => reason).increment(1);
                        self.counters
                            .raw_messages(format, RawOutcome::DeadLettered)
                            .increment(1);
                    }
                }
            }
        }
        self.stats.add_batches(published_batches);
        metrics::counter!(names::EVENT_BATCHES).increment(published_batches);
        if settled_any {
            self.failed_batches.store(0, Ordering::Relaxed);
        } else if failed_any {
            self.failed_batches.fetch_add(1, Ordering::Relaxed);
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

    /// Routes offences into event batches, or publishes the dead letter.
    /// `None` when a publish could not be sent.
    async fn settle_outcome(
        &self,
        outcome: Outcome,
        router: &mut Router,
        encoded: &mut Vec<u8>,
        member: usize,
        publishes: &mut cctv_bus::AckBatch,
        source: DeadLetterSource<'_>,
    ) -> Option<Unit> {
        match outcome {
            Outcome::Offences(events) => {
                for event in &events {
                    let id = event.event_id.as_bytes();
                    encoded.clear();
                    event.write_binary(encoded);
                    router.push(subjects::partition_of(id, self.partitions), encoded, member);
                }
                Some(Unit::Published(events.len() as u64))
            }
            Outcome::Ignored(reason) => Some(Unit::Ignored(reason.as_str())),
            Outcome::Rejected(rejection) => self.dead_letter(publishes, &rejection, source).await,
        }
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

    /// Publishes one dead letter; `None` when it could not be sent.
    async fn dead_letter(
        &self,
        publishes: &mut cctv_bus::AckBatch,
        rejection: &cctv_normalize::Rejection,
        source: DeadLetterSource<'_>,
    ) -> Option<Unit> {
        let message = source.message;
        let sequence = message
            .info()
            .map(|info| info.stream_sequence)
            .unwrap_or_default();
        let mut dlq_headers = HeaderMap::new();
        // One dead letter per raw stream position (and batch item): a
        // redelivery after a crash is dropped as a duplicate by the stream.
        let msg_id = match source.item {
            Some(item) => format!("dlq:{}:{sequence}:{item}", self.raw_stream),
            None => format!("dlq:{}:{sequence}", self.raw_stream),
        };
        dlq_headers.insert(headers::NATS_MSG_ID, msg_id.as_str());
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
        dlq_headers.insert(headers::SOURCE_FORMAT, clean_header(source.format).as_str());
        dlq_headers.insert(
            headers::REJECTED_AT,
            chrono::Utc::now().to_rfc3339().as_str(),
        );
        if let Some(item) = source.item {
            dlq_headers.insert(headers::BATCH_ITEM, item.to_string().as_str());
        }
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
                    if source.item.is_none() || target != headers::SOURCE_MSG_ID {
                        dlq_headers.insert(target, clean_header(value.as_str()).as_str());
                    }
                }
            }
        }
        if let Some(item_id) = source.item_id {
            dlq_headers.insert(headers::SOURCE_MSG_ID, clean_header(item_id).as_str());
        }
        let subject = subjects::dlq(source.format, rejection.reason.as_str());
        match publishes
            .publish(subject, dlq_headers, source.payload.into_bytes())
            .await
        {
            Ok(index) => Some(Unit::DeadLetter(index, rejection.reason.as_str())),
            Err(error) => {
                tracing::warn!(%error, "dead letter publish failed");
                None
            }
        }
    }
}

/// Where a dead letter comes from.
/// The body of a dead letter: copied only when a dead letter is published
/// (most batch items never are).
enum DeadLetterBody<'a> {
    Owned(bytes::Bytes),
    Borrowed(&'a [u8]),
}

impl DeadLetterBody<'_> {
    fn into_bytes(self) -> bytes::Bytes {
        match self {
            DeadLetterBody::Owned(bytes) => bytes,
            DeadLetterBody::Borrowed(slice) => bytes::Bytes::copy_from_slice(slice),
        }
    }
}

struct DeadLetterSource<'a> {
    message: &'a jetstream::Message,
    /// The rejected vendor message (a batch item's own body).
    payload: DeadLetterBody<'a>,
    format: &'a str,
    /// Position in the gateway batch, for an item.
    item: Option<usize>,
    /// The item's CloudEvents id.
    item_id: Option<&'a str>,
}

/// Header values must be one line and reasonably short.
fn clean_header(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(512)
        .collect()
}
