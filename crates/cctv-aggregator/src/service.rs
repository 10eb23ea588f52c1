//! The aggregator loop: sessions of (resume point from ClickHouse, consumer
//! recreated from the next sequence, read and batch, insert in order, ack).
//!
//! A session ends on shutdown or on any delivery anomaly (a gap in consumer
//! sequences, a stream error after a reconnect). The next session starts again
//! from what ClickHouse holds, so an anomaly costs a re-read, never a row.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy, consumer::DeliverPolicy};
use cctv_bus::StreamKind;
use cctv_event::OffenceEvent;
use cctv_store::{EventRow, Store, StoreError, StreamPosition};
use cctv_telemetry::Health;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics as names;
use crate::{AggregatorConfig, AggregatorError, AggregatorStats, BatchDecision, Batcher};

/// Batches queued between the reader and the writer. With one batch being
/// inserted and one being filled, at most `2 + WRITE_QUEUE` batches of
/// `batch_max_rows` rows are in memory.
const WRITE_QUEUE: usize = 1;

/// Pause after a failed session before the next.
const SESSION_RETRY: Duration = Duration::from_millis(500);

/// How often the lag gauge is refreshed from the consumer's state. Deliveries
/// refresh it too, but while ClickHouse is down nothing is delivered and the
/// backlog must still show.
const LAG_REFRESH: Duration = Duration::from_secs(2);

/// Pause between looks at the inserts still running in ClickHouse.
const SETTLE_POLL: Duration = Duration::from_millis(100);

/// One batch handed from the reader to the writer.
struct Batch {
    /// Rows to insert, in stream order; their batch fields are set at insert.
    rows: Vec<EventRow>,
    /// The last message received for this batch (acked with `AckPolicy::All`).
    last_message: Option<jetstream::Message>,
}

/// Runs the aggregator until `shutdown`, then flushes, acks and returns.
pub async fn run(
    config: AggregatorConfig,
    shutdown: CancellationToken,
    stats: AggregatorStats,
) -> Result<(), AggregatorError> {
    config.validate()?;
    cctv_telemetry::fault_point("on_start");
    let health = Health::starting();
    if let Some(listen) = config.telemetry.listen {
        let address = cctv_telemetry::serve(listen, health.clone(), shutdown.clone())
            .await
            .map_err(|e| AggregatorError::Config(format!("cannot listen on {listen}: {e}")))?;
        tracing::info!(%address, "metrics and health endpoint listening");
    } else {
        cctv_telemetry::install_metrics();
    }
    let store = Store::new(&config.clickhouse)?;
    if !prepare_store(&store, &config, &shutdown, &health).await? {
        return Ok(());
    }
    let Some(client) =
        cctv_bus::connect_with_retry(&config.nats, "cctv-aggregator", &shutdown).await?
    else {
        return Ok(());
    };
    let js = jetstream::new(client.clone());

    let writer = Writer {
        store: store.clone(),
        stats: stats.clone(),
        health: health.clone(),
        retry_max_backoff: config.aggregator.retry_max_backoff,
        written_through: Arc::new(AtomicU64::new(0)),
        writer_name: config.aggregator.consumer.clone(),
        insert_tag: store.insert_tag(&config.aggregator.consumer),
    };
    while !shutdown.is_cancelled() {
        match run_session(&js, &config, &writer, &shutdown, &health, &stats).await {
            Ok(SessionEnd::Shutdown) => break,
            Ok(SessionEnd::Reset(reason)) => {
                stats.add_reset();
                metrics::counter!(names::RESETS).increment(1);
                tracing::info!(reason, "consumer reset; resuming from ClickHouse");
            }
            Err(error) if is_transient(&error) => {
                health.set_problem("session failed; retrying");
                tracing::warn!(%error, "session failed; retrying");
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(SESSION_RETRY) => {}
                }
            }
            Err(error) => return Err(error),
        }
    }
    // Acks are fire-and-forget publishes: push the last ones out before the
    // connection is dropped, so a clean stop leaves nothing written unacked.
    if let Err(error) = tokio::time::timeout(config.aggregator.shutdown_grace, client.flush())
        .await
        .map_err(|_| "timed out".to_string())
        .and_then(|flushed| flushed.map_err(|e| e.to_string()))
    {
        tracing::warn!(%error, "final flush of acks failed; they will be redelivered and skipped");
    }
    let snapshot = stats.snapshot();
    tracing::info!(
        rows_written = snapshot.rows_written,
        batches = snapshot.batches,
        skipped = snapshot.skipped,
        resets = snapshot.resets,
        "aggregator stopped"
    );
    Ok(())
}

fn is_transient(error: &AggregatorError) -> bool {
    match error {
        AggregatorError::Bus(error) => error.is_transient(),
        AggregatorError::Store(error) => error.is_transient(),
        AggregatorError::Config(_) => false,
    }
}

/// Waits for ClickHouse and migrates or checks the schema. `Ok(false)` when
/// shutdown came first.
async fn prepare_store(
    store: &Store,
    config: &AggregatorConfig,
    shutdown: &CancellationToken,
    health: &Health,
) -> Result<bool, AggregatorError> {
    let mut pause = Duration::from_millis(200);
    loop {
        let attempt = if config.aggregator.migrate_on_start {
            store.migrate().await.map(|_| ())
        } else {
            store.check_schema().await
        };
        match attempt {
            Ok(()) => return Ok(true),
            Err(error) if error.is_transient() => {
                health.set_problem("clickhouse unreachable");
                tracing::warn!(%error, "ClickHouse not ready; retrying");
            }
            Err(error) => return Err(error.into()),
        }
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(false),
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(config.aggregator.retry_max_backoff);
    }
}

enum SessionEnd {
    Shutdown,
    Reset(&'static str),
}

/// One session: resume point, fresh consumer, read until shutdown or anomaly.
async fn run_session(
    js: &jetstream::Context,
    config: &AggregatorConfig,
    writer: &Writer,
    shutdown: &CancellationToken,
    health: &Health,
    stats: &AggregatorStats,
) -> Result<SessionEnd, AggregatorError> {
    let settings = &config.aggregator;
    let info = cctv_bus::ensure_stream(js, StreamKind::Events, &config.streams.events).await?;
    let source_stream = cctv_bus::stream_identity(&info);
    // A predecessor killed mid-insert may have left its insert running in
    // ClickHouse: its rows appear only when it ends, so wait for that before
    // reading how far the writer got (else that batch would be written twice).
    writer.settle().await?;
    let resume = writer
        .store
        .resume_point(&source_stream, &settings.consumer)
        .await?;
    writer
        .written_through
        .store(resume.written_through, Ordering::SeqCst);
    let start_sequence = resume.written_through + 1;
    if resume.written_through > 0 && info.state.first_sequence > start_sequence {
        tracing::error!(
            first_in_stream = info.state.first_sequence,
            next_needed = start_sequence,
            "events expired from the stream before they were written; run `cctvctl audit`"
        );
    }

    let stream = js
        .get_stream(&config.streams.events.name)
        .await
        .map_err(|e| cctv_bus::BusError::jetstream("get events stream", e))?;
    // The consumer is recreated at every session start: where to read from is
    // decided by ClickHouse, never by leftover consumer state.
    let _ = stream.delete_consumer(&settings.consumer).await;
    let max_pending =
        settings.batch_max_rows.saturating_mul(2 + WRITE_QUEUE) + settings.fetch_batch;
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(settings.consumer.clone()),
            description: Some("cctv-aggregator: canonical events into ClickHouse".into()),
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence },
            ack_policy: AckPolicy::All,
            ack_wait: settings.ack_wait,
            max_deliver: -1,
            max_ack_pending: i64::try_from(max_pending).unwrap_or(i64::MAX),
            filter_subject: settings.filter_subject.clone(),
            ..Default::default()
        })
        .await
        .map_err(|e| cctv_bus::BusError::jetstream("create events consumer", e))?;
    let messages = consumer
        .stream()
        .max_messages_per_batch(settings.fetch_batch)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .map_err(|e| cctv_bus::BusError::jetstream("pull events", e))?;
    health.set_ok();
    tracing::info!(%source_stream, start_sequence, writer = %settings.consumer, "session started");
    let lag_refresh = tokio::spawn(refresh_lag(stream.clone(), settings.consumer.clone()));

    let (batch_sender, batch_receiver) = mpsc::channel::<Batch>(WRITE_QUEUE);
    let writer_task = {
        let writer = writer.clone();
        let source_stream = source_stream.clone();
        tokio::spawn(async move { writer.write_all(batch_receiver, &source_stream).await })
    };

    let mut reader = Reader {
        source_stream: &source_stream,
        writer_name: &settings.consumer,
        already_written: resume.already_written,
        next_consumer_sequence: 1,
        highest_seen: resume.written_through,
        rows: Vec::with_capacity(settings.batch_max_rows),
        last_message: None,
        batcher: Batcher::new(settings.batch_max_rows, settings.batch_max_age),
        stats,
        lag: metrics::gauge!(names::LAG),
    };
    let mut chunks = messages.ready_chunks(settings.fetch_batch);
    let end = loop {
        let deadline = reader
            .batcher
            .deadline()
            .map(tokio::time::Instant::from_std);
        let chunk = tokio::select! {
            biased;
            () = shutdown.cancelled() => break SessionEnd::Shutdown,
            () = sleep_until_or_forever(deadline) => None,
            chunk = chunks.next() => match chunk {
                Some(chunk) => Some(chunk),
                None => break SessionEnd::Reset("message stream ended"),
            },
        };
        if let Some(chunk) = chunk {
            let mut anomaly = None;
            for item in chunk {
                match item {
                    Ok(message) => {
                        if let Err(reason) = reader.accept(message) {
                            anomaly = Some(reason);
                            break;
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "events consumer error");
                        anomaly = Some("consumer stream error");
                        break;
                    }
                }
            }
            if let Some(reason) = anomaly {
                break SessionEnd::Reset(reason);
            }
        }
        if reader.batcher.decide(Instant::now()) != BatchDecision::Wait {
            // Waiting for room in the queue is the backpressure: while the
            // writer retries (ClickHouse down) nothing more is read. Shutdown
            // still wins; the batch then stays with the reader for the final
            // flush below.
            let permit = tokio::select! {
                biased;
                () = shutdown.cancelled() => break SessionEnd::Shutdown,
                permit = batch_sender.reserve() => permit,
            };
            // A closed queue means the writer stopped: its error is reported below.
            let Ok(permit) = permit else {
                break SessionEnd::Reset("writer stopped");
            };
            permit.send(reader.take_batch());
        }
    };
    // Everything accepted so far was delivered in order without gaps: flush
    // it, then let the writer finish before the next session reads the resume
    // point. On shutdown this is bounded by the grace period; what is not
    // written by then is not acked and is read again at the next start.
    drop(chunks);
    lag_refresh.abort();
    let finish = async {
        if reader.batcher.deadline().is_some() {
            let _ = batch_sender.send(reader.take_batch()).await;
        }
        drop(batch_sender);
        writer_task.await
    };
    tokio::pin!(finish);
    let grace = settings.shutdown_grace;
    let written = match end {
        SessionEnd::Shutdown => tokio::time::timeout(grace, &mut finish).await.ok(),
        SessionEnd::Reset(_) => tokio::select! {
            joined = &mut finish => Some(joined),
            () = shutdown.cancelled() => tokio::time::timeout(grace, &mut finish).await.ok(),
        },
    };
    let Some(written) = written else {
        tracing::warn!(
            "grace period over with a batch unwritten; it will be read again at the next start"
        );
        return Ok(SessionEnd::Shutdown);
    };
    match written {
        Ok(Ok(())) => Ok(end),
        Ok(Err(error)) => Err(error.into()),
        Err(join_error) => Err(AggregatorError::Config(format!(
            "writer task failed: {join_error}"
        ))),
    }
}

/// Sets the lag gauge from the consumer's undelivered count every
/// [`LAG_REFRESH`], until aborted at the end of the session.
async fn refresh_lag(stream: jetstream::stream::Stream, consumer: String) {
    let mut ticks = tokio::time::interval(LAG_REFRESH);
    loop {
        ticks.tick().await;
        if let Ok(info) = stream.consumer_info(&consumer).await {
            #[allow(clippy::cast_precision_loss)]
            metrics::gauge!(names::LAG).set(info.num_pending as f64);
        }
    }
}

async fn sleep_until_or_forever(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The reading half of a session: checks delivery order and builds batches.
struct Reader<'a> {
    source_stream: &'a str,
    writer_name: &'a str,
    /// Sequences above the resume point already in ClickHouse (cut-short batch).
    already_written: HashSet<u64>,
    /// Consumer sequence the next delivery must have (fresh consumer: 1).
    next_consumer_sequence: u64,
    /// Highest stream sequence accepted or written.
    highest_seen: u64,
    rows: Vec<EventRow>,
    last_message: Option<jetstream::Message>,
    batcher: Batcher,
    stats: &'a AggregatorStats,
    /// The lag gauge, set from every delivery (a handle, not a lookup per message).
    lag: metrics::Gauge,
}

impl Reader<'_> {
    /// Takes one delivery. `Err` names an anomaly that ends the session.
    fn accept(&mut self, message: jetstream::Message) -> Result<(), &'static str> {
        let (stream_sequence, consumer_sequence, pending) = match message.info() {
            Ok(info) => (info.stream_sequence, info.consumer_sequence, info.pending),
            Err(_) => return Err("message without JetStream metadata"),
        };
        if consumer_sequence != self.next_consumer_sequence {
            // A delivery went missing (lost in a reconnect): nothing after it
            // may be written before it, so start over from ClickHouse.
            return Err("gap in consumer sequence");
        }
        self.next_consumer_sequence += 1;
        #[allow(clippy::cast_precision_loss)]
        self.lag.set(pending as f64);
        let now = Instant::now();
        if stream_sequence <= self.highest_seen || self.already_written.contains(&stream_sequence) {
            // A redelivery of something held or written: only its ack matters.
            self.stats.add_skipped(1);
            metrics::counter!(names::SKIPPED).increment(1);
            self.highest_seen = self.highest_seen.max(stream_sequence);
            self.last_message = Some(message);
            self.batcher.add(0, now);
            return Ok(());
        }
        self.highest_seen = stream_sequence;
        match OffenceEvent::from_json(&message.payload) {
            Ok(event) => {
                let position = StreamPosition {
                    stream_seq: stream_sequence,
                    batch_first_seq: 0,
                    batch_rows: 0,
                };
                self.rows.push(EventRow::from_event(
                    event,
                    self.source_stream,
                    self.writer_name,
                    position,
                    0,
                ));
                self.batcher.add(1, now);
            }
            Err(error) => {
                self.stats.add_undecodable();
                metrics::counter!(names::UNDECODABLE).increment(1);
                tracing::error!(stream_sequence, %error, "undecodable event message; not written");
                self.batcher.add(0, now);
            }
        }
        self.last_message = Some(message);
        Ok(())
    }

    fn take_batch(&mut self) -> Batch {
        self.batcher.reset();
        Batch {
            rows: std::mem::take(&mut self.rows),
            last_message: self.last_message.take(),
        }
    }
}

/// The writing half: inserts batches one at a time, in order, then acks.
#[derive(Clone)]
struct Writer {
    store: Store,
    stats: AggregatorStats,
    health: Health,
    retry_max_backoff: Duration,
    written_through: Arc<AtomicU64>,
    writer_name: String,
    /// `query_id` prefix of this writer's inserts.
    insert_tag: String,
}

impl Writer {
    /// Waits until no insert of this writer is still running in ClickHouse
    /// (one of a crashed predecessor, or one this writer gave up on after a
    /// timeout), so that the resume point read next is final.
    async fn settle(&self) -> Result<(), StoreError> {
        let mut logged = false;
        loop {
            match self.store.inserts_in_flight(&self.insert_tag).await {
                Ok(0) => return Ok(()),
                Ok(running) => {
                    if !logged {
                        tracing::info!(
                            running,
                            "waiting for earlier inserts of this writer to end"
                        );
                        logged = true;
                    }
                    tokio::time::sleep(SETTLE_POLL).await;
                }
                Err(error) if error.is_transient() => return Err(error),
                Err(error) => {
                    // A user without access to system.processes: carry on,
                    // but say what is at stake.
                    tracing::warn!(%error, "cannot list running inserts; a crash mid-insert may double that batch");
                    return Ok(());
                }
            }
        }
    }

    async fn write_all(
        &self,
        mut batches: mpsc::Receiver<Batch>,
        source_stream: &str,
    ) -> Result<(), StoreError> {
        while let Some(batch) = batches.recv().await {
            self.write_one(batch, source_stream).await?;
        }
        Ok(())
    }

    async fn write_one(&self, batch: Batch, source_stream: &str) -> Result<(), StoreError> {
        let Batch {
            mut rows,
            last_message,
        } = batch;
        let mut pause = Duration::from_millis(100);
        let mut attempt = 0u32;
        while !rows.is_empty() {
            attempt += 1;
            if attempt > 1 {
                // The previous attempt may have been written after all (a
                // timeout after the server committed, or still running):
                // let it end, then ask ClickHouse.
                if let Err(error) = self.settle().await {
                    self.pause_after(error, &mut pause).await?;
                    continue;
                }
                match self
                    .store
                    .resume_point(source_stream, &self.writer_name)
                    .await
                {
                    Ok(resume) => {
                        let before = rows.len();
                        rows.retain(|row| {
                            row.stream_seq > resume.written_through
                                && !resume.already_written.contains(&row.stream_seq)
                        });
                        if rows.len() < before {
                            tracing::info!(
                                already = before - rows.len(),
                                "part of the batch was already written"
                            );
                        }
                        if rows.is_empty() {
                            break;
                        }
                    }
                    Err(error) => {
                        self.pause_after(error, &mut pause).await?;
                        continue;
                    }
                }
            }
            let first_seq = rows.first().map_or(0, |row| row.stream_seq);
            let count = u32::try_from(rows.len()).unwrap_or(u32::MAX);
            let inserted_at =
                u32::try_from(chrono::Utc::now().timestamp().max(0)).unwrap_or(u32::MAX);
            for row in &mut rows {
                row.batch_first_seq = first_seq;
                row.batch_rows = count;
                row.inserted_at = inserted_at;
            }
            let started = Instant::now();
            match self
                .store
                .insert_batch_tagged(&rows, &self.insert_tag)
                .await
            {
                Ok(()) => {
                    // Crash tests: the rows are in ClickHouse, the ack is not sent.
                    cctv_telemetry::fault_point("after_insert");
                    metrics::histogram!(names::INSERT_SECONDS)
                        .record(started.elapsed().as_secs_f64());
                    #[allow(clippy::cast_precision_loss)]
                    metrics::histogram!(names::BATCH_ROWS).record(rows.len() as f64);
                    metrics::counter!(names::ROWS_WRITTEN).increment(rows.len() as u64);
                    metrics::counter!(names::BATCHES).increment(1);
                    metrics::gauge!(names::STORE_DOWN).set(0.0);
                    self.stats.add_written(rows.len() as u64);
                    self.health.set_ok();
                    break;
                }
                Err(error) => self.pause_after(error, &mut pause).await?,
            }
        }
        if let Some(last) = rows.last() {
            self.written_through
                .fetch_max(last.stream_seq, Ordering::SeqCst);
        }
        if let Some(message) = last_message {
            // `AckPolicy::All`: this acks every earlier delivery too. A lost
            // ack only causes a redelivery that the resume point skips.
            if let Err(error) = message.ack().await {
                tracing::debug!(%error, "ack failed; the redelivery will be skipped");
            }
        }
        Ok(())
    }

    /// Waits before the next attempt; permanent errors end the writer.
    async fn pause_after(&self, error: StoreError, pause: &mut Duration) -> Result<(), StoreError> {
        if !error.is_transient() {
            metrics::counter!(names::INSERT_ERRORS, "kind" => "permanent").increment(1);
            self.health.set_problem("clickhouse refused the insert");
            tracing::error!(%error, "insert failed permanently; nothing acked");
            return Err(error);
        }
        metrics::counter!(names::INSERT_ERRORS, "kind" => "transient").increment(1);
        metrics::gauge!(names::STORE_DOWN).set(1.0);
        self.health
            .set_problem("clickhouse unavailable; holding events");
        tracing::warn!(%error, pause_ms = pause.as_millis() as u64, "insert failed; retrying");
        tokio::time::sleep(*pause).await;
        *pause = (*pause * 2).min(self.retry_max_backoff);
        Ok(())
    }
}
