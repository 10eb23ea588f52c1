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

use async_nats::jetstream::{self, AckKind};
use async_nats::HeaderMap;
use cctv_bus::{headers, subjects, PublishOutcome};
use cctv_event::{CameraRegistry, Regions, Taxonomy};
use cctv_normalize::{BatchEntry, Normalizer, Outcome, RawMessage};
use cctv_runtime::Health;
use futures::StreamExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::metrics::{self as names, FormatLabel, HotCounters, RawOutcome};
use crate::router::{Router, Sealed};
use crate::settle::{Pending, Unit};
use crate::{IngestConfig, IngestError, IngestStats};

/// How long a batch waits for the acks of its event and dead-letter
/// publishes; raw messages whose publishes went unanswered are redelivered.
const PUBLISH_ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// A pull that delivers nothing for this long is replaced by a new one.
const IDLE_REPULL: Duration = Duration::from_secs(15);
/// A batch task still running after this long is abandoned (its raw
/// messages are redelivered) and the connection replaced: every step of a
/// batch is bounded (normalising, publishing, at most
/// [`PUBLISH_ACK_TIMEOUT`] for the acks, the raw acks), so only a client
/// that stopped taking commands can hold one this long.
const BATCH_DEADLINE: Duration = Duration::from_secs(60);
/// Bound on each JetStream request of the loop itself (a pull, a consumer
/// look-up, the ack subscription): none may hold the loop forever.
const REQUEST_DEADLINE: Duration = Duration::from_secs(15);
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
    // JetStream may not answer yet (a cluster electing its leaders, a server
    // just restarted): transient errors are retried until shutdown.
    let prepared = loop {
        let attempt = async {
            cctv_bus::ensure_streams(&js, &config.streams).await?;
            let partitions = cctv_bus::LeaseBucket::open(&js, &config.streams.leases)
                .await?
                .partitions_or_init()
                .await?;
            let consumer = create_consumer(&js, &config).await?;
            Ok::<_, IngestError>((partitions, consumer))
        }
        .await;
        match attempt {
            Ok(prepared) => break prepared,
            Err(IngestError::Bus(error)) if error.is_transient() => {
                health.set_problem("JetStream not ready");
                tracing::warn!(%error, "streams, lease bucket or consumer not ready; retrying");
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(RETRY_PAUSE) => {}
                }
            }
            Err(error) => return Err(error),
        }
    };
    let (partitions, mut consumer) = prepared;
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
            drain(&mut in_flight, BATCH_DEADLINE).await;
            let Some(new_client) =
                cctv_bus::connect_with_retry(&config.nats, "cctv-ingest", &shutdown).await?
            else {
                break;
            };
            client = new_client;
            js = jetstream::new(client.clone());
            // The old consumer handle pulls through the closed connection
            // and never yields again (seen: the ingest silent for minutes
            // after a NATS node died): get one on the new connection first.
            loop {
                match create_consumer(&js, &config).await {
                    Ok(found) => {
                        consumer = found;
                        break;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "raw consumer not available yet");
                        tokio::select! {
                            biased;
                            () = shutdown.cancelled() => break 'outer,
                            () = tokio::time::sleep(RETRY_PAUSE) => {}
                        }
                    }
                }
            }
            let publisher = match bounded(cctv_bus::AckedPublisher::new(client.clone())).await {
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
        let messages = bounded(cctv_bus::pull_raw(
            &consumer,
            config.ingest.batch_size,
            max_batch_bytes,
        ))
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
        let mut idle = false;
        loop {
            // Bound the batches in flight before taking more messages.
            while in_flight.len() >= config.ingest.max_in_flight_batches {
                let _ = in_flight.join_next().await;
            }
            // (each task ends within BATCH_DEADLINE, see `spawn_batch`)
            let first = tokio::select! {
                biased;
                () = shutdown.cancelled() => break 'outer,
                first = tokio::time::timeout(IDLE_REPULL, messages.next()) => first,
            };
            let Ok(first) = first else {
                idle = true;
                break;
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
                spawn_batch(&mut in_flight, &context, batch);
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
        if idle {
            // Nothing delivered for a while: pull anew through a fresh look
            // at the consumer. A pull whose consumer lost its leader (its
            // NATS node died) can wait without delivering or reporting a
            // missed heartbeat (seen in the NATS-cluster test: the ingests
            // silent for minutes while raw messages waited).
            match create_consumer(&js, &config).await {
                Ok(found) => consumer = found,
                Err(error) => tracing::warn!(%error, "raw consumer not available yet"),
            }
        }
    }

    tracing::info!(
        in_flight = in_flight.len(),
        "shutting down: finishing batches in flight"
    );
    if !drain(&mut in_flight, config.ingest.shutdown_grace).await {
        tracing::warn!("grace period over; unfinished raw messages will be redelivered");
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

/// Runs one batch as a task that ends within [`BATCH_DEADLINE`]. A batch
/// that overran counts as failed publishes enough to replace the connection:
/// the raw messages it did not settle are redelivered after `ack_wait`.
fn spawn_batch(
    in_flight: &mut JoinSet<()>,
    context: &Arc<BatchContext>,
    batch: Vec<jetstream::Message>,
) {
    let context = context.clone();
    in_flight.spawn(async move {
        let messages = batch.len();
        if tokio::time::timeout(BATCH_DEADLINE, context.process(batch))
            .await
            .is_err()
        {
            tracing::warn!(
                messages,
                deadline = ?BATCH_DEADLINE,
                "batch not settled in time; abandoned, its raw messages will be redelivered"
            );
            context
                .failed_batches
                .fetch_max(RECONNECT_AFTER_FAILED_BATCHES, Ordering::Relaxed);
        }
    });
}

/// Waits up to `deadline` for the batches in flight; aborts what is left
/// (their raw messages are redelivered). True when all finished.
async fn drain(in_flight: &mut JoinSet<()>, deadline: Duration) -> bool {
    let finished = tokio::time::timeout(deadline, async {
        while in_flight.join_next().await.is_some() {}
    })
    .await
    .is_ok();
    if !finished {
        in_flight.abort_all();
        while in_flight.join_next().await.is_some() {}
    }
    finished
}

/// A JetStream request of the loop, bounded by [`REQUEST_DEADLINE`].
async fn bounded<T, E>(
    request: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, IngestError>
where
    IngestError: From<E>,
{
    bounded_by(REQUEST_DEADLINE, request).await
}

/// `request`'s result, or a transient JetStream error after `deadline`.
async fn bounded_by<T, E>(
    deadline: Duration,
    request: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, IngestError>
where
    IngestError: From<E>,
{
    match tokio::time::timeout(deadline, request).await {
        Ok(result) => result.map_err(IngestError::from),
        Err(_) => Err(IngestError::Bus(cctv_bus::BusError::jetstream(
            "request",
            format_args!("no answer within {deadline:?}"),
        ))),
    }
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
    let settings = cctv_bus::RawConsumerSettings {
        name: config.ingest.consumer.clone(),
        ack_wait: config.ingest.ack_wait,
        max_ack_pending: config.ingest.max_ack_pending,
    };
    bounded(cctv_bus::raw_consumer(
        js,
        &config.streams.raw.name,
        &settings,
    ))
    .await
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

    /// Handles one pull's raw messages: normalise each (a gateway batch
    /// item by item) and route its events, publish the event batches, then
    /// ack what was stored and nak the rest.
    async fn process(&self, batch: Vec<jetstream::Message>) {
        let started = Instant::now();
        let mut publishes = self.publisher.batch();
        let mut router = Router::new(self.partitions, self.max_events, self.max_bytes);
        let mut pending = self
            .normalise_pull(&batch, &mut router, &mut publishes)
            .await;
        let batch_acks = self
            .publish_event_batches(router.finish(), &mut pending, &mut publishes)
            .await;
        let acks = publishes.acks(PUBLISH_ACK_TIMEOUT).await;
        // Crash tests: the events are in JetStream, the raw messages unacked.
        cctv_runtime::fault_point("after_publish");
        self.settle(&batch, pending, &batch_acks, &acks).await;
        tracing::debug!(
            messages = batch.len(),
            millis = started.elapsed().as_millis(),
            "batch settled"
        );
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

    /// Step 1: every raw message of the pull (every item of a gateway
    /// batch) normalised; offences routed into `router`, dead letters
    /// published. One [`Pending`] per raw message.
    async fn normalise_pull(
        &self,
        batch: &[jetstream::Message],
        router: &mut Router,
        publishes: &mut cctv_bus::AckBatch,
    ) -> Vec<Pending> {
        let now = chrono::Utc::now();
        let mut pending = Vec::with_capacity(batch.len());
        for (index, message) in batch.iter().enumerate() {
            let parsed = subjects::parse_raw(&message.subject);
            let mut entry = Pending::default();
            if parsed.is_some_and(|p| p.format == subjects::BATCH_FORMAT) {
                let gateway = parsed.map_or("", |p| p.gateway_id);
                self.normalise_gateway_batch(
                    message, gateway, index, now, router, publishes, &mut entry,
                )
                .await;
            } else {
                let format = FormatLabel::new(
                    parsed.and_then(|parsed| cctv_normalize::Format::parse(parsed.format)),
                );
                let outcome = self.normalize(message, parsed, now);
                let source = DeadLetterSource {
                    message,
                    payload: DeadLetterBody::Owned(message.payload.clone()),
                    format: format.as_str(),
                    item: None,
                    item_id: None,
                    item_camera: None,
                    item_received_at: None,
                };
                let unit = self
                    .settle_outcome(outcome, router, index, publishes, source)
                    .await;
                entry.add(format, unit);
            }
            pending.push(entry);
        }
        pending
    }

    /// A gateway batch: each item normalised as if it had come alone, a
    /// broken item dead-lettered alone, an unreadable batch dead-lettered whole.
    #[allow(clippy::too_many_arguments)]
    async fn normalise_gateway_batch(
        &self,
        message: &jetstream::Message,
        gateway: &str,
        index: usize,
        now: chrono::DateTime<chrono::Utc>,
        router: &mut Router,
        publishes: &mut cctv_bus::AckBatch,
        entry: &mut Pending,
    ) {
        let stored_at = message.info().ok().map(|info| info.published);
        let items = match cctv_normalize::parse_batch(&message.payload, gateway) {
            Ok(items) => items,
            Err(rejection) => {
                let source = DeadLetterSource {
                    message,
                    payload: DeadLetterBody::Owned(message.payload.clone()),
                    format: subjects::BATCH_FORMAT,
                    item: None,
                    item_id: None,
                    item_camera: None,
                    item_received_at: None,
                };
                let unit = self.dead_letter(publishes, &rejection, source).await;
                entry.add(FormatLabel::Batch, unit);
                return;
            }
        };
        for item in items {
            match item {
                BatchEntry::Item(item) => {
                    let format = FormatLabel::parse(&item.format);
                    let outcome = self
                        .normalizer
                        .normalize(&item.raw(gateway, stored_at), now);
                    let source = DeadLetterSource {
                        message,
                        payload: DeadLetterBody::Borrowed(&item.body),
                        format: &item.format,
                        item: Some(item.index),
                        item_id: Some(&item.id),
                        item_camera: item.subject.as_deref(),
                        item_received_at: item.time.as_deref(),
                    };
                    let unit = self
                        .settle_outcome(outcome, router, index, publishes, source)
                        .await;
                    entry.add(format, unit);
                }
                BatchEntry::Broken {
                    index: item,
                    rejection,
                    body,
                } => {
                    let source = DeadLetterSource {
                        message,
                        payload: DeadLetterBody::Borrowed(&body),
                        format: subjects::BATCH_FORMAT,
                        item: Some(item),
                        item_id: None,
                        item_camera: None,
                        item_received_at: None,
                    };
                    let unit = self.dead_letter(publishes, &rejection, source).await;
                    entry.add(FormatLabel::Batch, unit);
                }
            }
        }
    }

    /// Step 2: one publish per sealed event batch; each raw message learns
    /// which batches carry its events. The publish index of each batch, or
    /// `None` when it could not be sent.
    async fn publish_event_batches(
        &self,
        sealed: Vec<Sealed>,
        pending: &mut [Pending],
        publishes: &mut cctv_bus::AckBatch,
    ) -> Vec<Option<usize>> {
        let mut batch_acks = Vec::with_capacity(sealed.len());
        for (sealed_index, batch_out) in sealed.into_iter().enumerate() {
            for member in &batch_out.members {
                if let Some(entry) = pending.get_mut(*member) {
                    entry.batches.push(sealed_index);
                }
            }
            // No `Nats-Msg-Id`: a batch's make-up depends on the pull it came
            // from, so an id could drop a batch with other events in it. A
            // republished event is dropped by its partition's owner instead.
            let mut event_headers = HeaderMap::new();
            event_headers.insert(headers::CONTENT_TYPE, cctv_bus::EVENT_BATCH_CONTENT_TYPE);
            let subject = subjects::event_partition(batch_out.partition);
            match publishes
                .publish(subject, event_headers, batch_out.payload)
                .await
            {
                Ok(ack) => batch_acks.push(Some(ack)),
                Err(error) => {
                    tracing::warn!(%error, "event batch publish failed");
                    batch_acks.push(None);
                }
            }
        }
        batch_acks
    }

    /// Step 3: ack each raw message whose publishes were all stored, nak
    /// the rest, and count what the acked ones became.
    async fn settle(
        &self,
        batch: &[jetstream::Message],
        pending: Vec<Pending>,
        batch_acks: &[Option<usize>],
        acks: &[Option<PublishOutcome>],
    ) {
        let stored = |index: usize| {
            matches!(
                acks.get(index),
                Some(Some(
                    PublishOutcome::Stored(_) | PublishOutcome::Duplicate(_)
                ))
            )
        };
        let batch_stored: Vec<bool> = batch_acks
            .iter()
            .map(|ack| ack.is_some_and(stored))
            .collect();
        let published_batches = batch_stored.iter().filter(|ok| **ok).count() as u64;
        let (mut settled_any, mut failed_any) = (false, false);
        for (message, entry) in batch.iter().zip(pending) {
            if !entry.may_ack(&batch_stored, stored) {
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
            self.count(&entry);
        }
        self.stats.add_batches(published_batches);
        metrics::counter!(names::EVENT_BATCHES).increment(published_batches);
        if settled_any {
            self.failed_batches.store(0, Ordering::Relaxed);
        } else if failed_any {
            self.failed_batches.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts what an acked raw message became.
    fn count(&self, entry: &Pending) {
        for (format, unit) in &entry.units {
            let format = *format;
            match *unit {
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

    /// Routes offences into event batches, or publishes the dead letter.
    /// `None` when a publish could not be sent.
    async fn settle_outcome(
        &self,
        outcome: Outcome,
        router: &mut Router,
        member: usize,
        publishes: &mut cctv_bus::AckBatch,
        source: DeadLetterSource<'_>,
    ) -> Option<Unit> {
        match outcome {
            Outcome::Offences(events) => {
                for event in &events {
                    router.push(event, member);
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
            // A replayed dead letter names its original's id apart.
            msg_id: header(headers::ORIGINAL_MSG_ID).or_else(|| header(headers::NATS_MSG_ID)),
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
            // A replay's identity is its original's id; it comes last, so
            // it wins over the replay's own `Nats-Msg-Id`.
            for name in [
                headers::NATS_MSG_ID,
                headers::ORIGINAL_MSG_ID,
                headers::CAMERA_ID,
                headers::RECEIVED_AT,
            ] {
                if let Some(value) = original.get(name) {
                    let target = if name == headers::NATS_MSG_ID || name == headers::ORIGINAL_MSG_ID
                    {
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
        if let Some(camera) = source.item_camera {
            dlq_headers.insert(headers::CAMERA_ID, clean_header(camera).as_str());
        }
        if let Some(received_at) = source.item_received_at {
            dlq_headers.insert(headers::RECEIVED_AT, clean_header(received_at).as_str());
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
    /// The item's CloudEvents `subject` (camera) and `time` (received at),
    /// kept as `Cctv-Camera-Id` / `Cctv-Received-At` so that a replay of the
    /// dead letter (`cctvctl dlq replay`) is the message the item was.
    item_camera: Option<&'a str>,
    item_received_at: Option<&'a str>,
}

/// Header values must be one line and reasonably short.
fn clean_header(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(512)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request that never answers ends as a transient error (retried by
    /// the loop), one that answers passes its result through.
    #[tokio::test]
    async fn a_request_without_answer_ends_at_its_deadline() {
        let deadline = Duration::from_millis(50);
        let started = Instant::now();
        let never = std::future::pending::<Result<(), cctv_bus::BusError>>();
        // Unbounded, the request would hang the test: fail it instead.
        let error = tokio::time::timeout(Duration::from_secs(5), bounded_by(deadline, never))
            .await
            .expect("bounded")
            .unwrap_err();
        assert!(started.elapsed() >= deadline);
        assert!(
            matches!(&error, IngestError::Bus(bus) if bus.is_transient()),
            "{error}"
        );
        let answered = bounded_by(deadline, async { Ok::<_, cctv_bus::BusError>(7) }).await;
        assert_eq!(answered.unwrap(), 7);
    }

    /// Batches that finish are waited for; one that never does is aborted
    /// at the deadline and the set is left empty.
    #[tokio::test]
    async fn a_stuck_batch_is_aborted_at_the_drain_deadline() {
        let mut in_flight = JoinSet::new();
        in_flight.spawn(async { tokio::time::sleep(Duration::from_millis(10)).await });
        assert!(drain(&mut in_flight, Duration::from_secs(5)).await);
        assert!(in_flight.is_empty());

        let (finished_sender, mut finished) = tokio::sync::mpsc::unbounded_channel();
        let quick = finished_sender.clone();
        in_flight.spawn(async move {
            let _ = quick.send("quick");
        });
        in_flight.spawn(async move {
            std::future::pending::<()>().await;
            let _ = finished_sender.send("stuck");
        });
        let started = Instant::now();
        let drained = tokio::time::timeout(
            Duration::from_secs(5),
            drain(&mut in_flight, Duration::from_millis(50)),
        )
        .await
        .expect("the drain ends at its deadline");
        assert!(!drained);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(in_flight.is_empty());
        assert_eq!(finished.recv().await, Some("quick"));
        // The stuck one was aborted: its sender is dropped unsent.
        assert_eq!(finished.recv().await, None);
    }
}
