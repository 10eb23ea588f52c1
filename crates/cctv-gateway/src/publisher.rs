//! The publisher: reads the spool in order, sends it to NATS in rounds of
//! batches (or single messages), and removes from the spool what JetStream
//! acknowledged.
//!
//! Invariants:
//! - a spooled message is acknowledged in the spool only after JetStream
//!   stored it (or reported a duplicate of it), so a crash or a lost ack
//!   means a resend, never a loss;
//! - rounds go one after another and only a prefix of a round is
//!   acknowledged, so the spool drains in order;
//! - a resend carries the same ids (item `id`, `Nats-Msg-Id`), so it adds
//!   no count downstream.
//!
//! NATS may be down at start or go away at any time: intake does not
//! depend on it. After [`RECONNECT_AFTER_FAILED_ROUNDS`] rounds in a row
//! without an ack the connection is replaced. On shutdown the publisher
//! keeps sending for `gateway.shutdown_grace`, then leaves the rest in the
//! spool for the next start.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use cctv_bus::{AckedPublisher, PublishOutcome};
use cctv_runtime::Health;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::batching::{self, Decision, Policy};
use crate::metrics as names;
use crate::spool::{Spool, SpoolReader, Spooled};
use crate::{GatewayConfig, GatewayError};

/// Rounds in a row whose every publish went unacknowledged after which the
/// connection is replaced.
const RECONNECT_AFTER_FAILED_ROUNDS: u32 = 3;
/// Longest pause between attempts while NATS does not answer.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// First pause after a failure.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Room left in a NATS message for headers and protocol.
const HEADER_ROOM_BYTES: usize = 4096;
/// Longest wait for new records before looking again (a missed wake-up
/// costs at most this).
const IDLE_RECHECK: Duration = Duration::from_secs(1);

/// A NATS connection and its ack subscription.
struct Connection {
    client: async_nats::Client,
    publisher: AckedPublisher,
}

/// Runs until `shutdown` and then drains for the grace period. Returns an
/// error only for settings NATS refuses (credentials).
pub(crate) async fn run(
    config: Arc<GatewayConfig>,
    spool: Spool,
    reader: SpoolReader,
    health: Health,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    let mut state = Publisher {
        config,
        spool,
        reader: Some(reader),
        health,
        held: VecDeque::new(),
        held_bytes: 0,
        oldest_held: None,
        connection: None,
        failed_rounds: 0,
        backoff: FIRST_BACKOFF,
    };
    state.run(shutdown).await
}

struct Publisher {
    config: Arc<GatewayConfig>,
    spool: Spool,
    /// `None` only while a blocking read holds it.
    reader: Option<SpoolReader>,
    health: Health,
    /// Read from the spool, not yet acknowledged by NATS, in order.
    held: VecDeque<Spooled>,
    held_bytes: u64,
    /// When the oldest held record was read (its linger starts then).
    oldest_held: Option<Instant>,
    connection: Option<Connection>,
    failed_rounds: u32,
    backoff: Duration,
}

impl Publisher {
    async fn run(&mut self, shutdown: CancellationToken) -> Result<(), GatewayError> {
        let grace = self.config.gateway.shutdown_grace;
        let mut drain_deadline: Option<Instant> = None;
        metrics::gauge!(names::NATS_UP).set(0.0);
        loop {
            if shutdown.is_cancelled() {
                let deadline = *drain_deadline.get_or_insert_with(|| Instant::now() + grace);
                if self.held.is_empty() && !self.reader_available() {
                    tracing::info!("spool drained to NATS");
                    break;
                }
                if Instant::now() >= deadline {
                    let (records, bytes) = self.spool.pending();
                    tracing::warn!(
                        records,
                        bytes,
                        "shutdown grace over; the rest stays in the spool"
                    );
                    break;
                }
            }
            self.update_health();
            let stop_waiting = if shutdown.is_cancelled() {
                // Draining: only the deadline ends waits.
                let deadline = drain_deadline.unwrap_or_else(Instant::now);
                tokio::time::sleep_until(deadline)
            } else {
                tokio::time::sleep(Duration::from_secs(3600))
            };
            tokio::pin!(stop_waiting);
            if self.connection.is_none() {
                match self.connect().await {
                    Ok(()) => {}
                    Err(error) if error.is_transient() => {
                        tracing::warn!(%error, "NATS not reachable; messages stay in the spool");
                        self.pause(&shutdown, stop_waiting.as_mut()).await;
                        continue;
                    }
                    Err(error) => return Err(error),
                }
            }
            self.top_up().await;
            if self.held.is_empty() {
                let reader = self.reader.as_ref();
                tokio::select! {
                    biased;
                    () = shutdown.cancelled(), if !shutdown.is_cancelled() => {}
                    () = &mut stop_waiting => {}
                    () = async {
                        match reader {
                            Some(reader) => reader.wait_appended().await,
                            None => std::future::pending().await,
                        }
                    } => {}
                    () = tokio::time::sleep(IDLE_RECHECK) => {}
                }
                continue;
            }
            let oldest = *self.oldest_held.get_or_insert_with(Instant::now);
            let policy = self.policy();
            let decision = batching::decide(
                &policy,
                self.config.publish.mode,
                self.held.len(),
                usize::try_from(self.held_bytes).unwrap_or(usize::MAX),
                oldest.elapsed(),
            );
            match decision {
                Decision::Idle => {}
                Decision::Linger(wait) => {
                    let room = self.held_bytes < self.read_budget();
                    let reader = self.reader.as_ref();
                    tokio::select! {
                        biased;
                        () = shutdown.cancelled(), if !shutdown.is_cancelled() => {}
                        () = tokio::time::sleep(wait) => {}
                        () = async {
                            match reader {
                                Some(reader) if room => reader.wait_appended().await,
                                _ => std::future::pending().await,
                            }
                        } => {}
                    }
                }
                Decision::Publish => {
                    if !self.publish_round(&policy).await {
                        self.pause(&shutdown, stop_waiting.as_mut()).await;
                    }
                }
            }
        }
        metrics::gauge!(names::NATS_UP).set(0.0);
        Ok(())
    }

    fn update_health(&self) {
        if self.spool.is_full() {
            self.health.set_problem("spool full; refusing pushes");
        } else {
            self.health.set_ok();
        }
    }

    fn reader_available(&self) -> bool {
        self.reader.as_ref().is_some_and(SpoolReader::available)
    }

    /// Bytes of records held in memory at most: one round's worth.
    fn read_budget(&self) -> u64 {
        let publish = &self.config.publish;
        (publish.batch_max_bytes as u64).saturating_mul(publish.max_in_flight as u64)
    }

    /// The round's limits, the batch size bounded by the server's
    /// `max_payload`.
    fn policy(&self) -> Policy {
        let publish = &self.config.publish;
        let server_max = self.connection.as_ref().map_or(usize::MAX, |connection| {
            connection
                .client
                .server_info()
                .max_payload
                .saturating_sub(HEADER_ROOM_BYTES)
        });
        Policy {
            max_items: publish.batch_max_items,
            max_bytes: publish.batch_max_bytes.min(server_max).max(1024),
            max_messages: publish.max_in_flight,
            linger: publish.linger,
        }
    }

    async fn connect(&mut self) -> Result<(), GatewayError> {
        let client = cctv_bus::connect(&self.config.nats, "cctv-gateway").await?;
        let publisher = AckedPublisher::new(client.clone()).await?;
        tracing::info!(gateway = %self.config.gateway.id, "connected to NATS");
        self.connection = Some(Connection { client, publisher });
        Ok(())
    }

    /// Reads more records from the spool while the round's budget allows.
    async fn top_up(&mut self) {
        let budget = self.read_budget();
        if self.held_bytes >= budget || !self.reader_available() {
            return;
        }
        let Some(mut reader) = self.reader.take() else {
            return;
        };
        let max_records = self
            .config
            .publish
            .batch_max_items
            .saturating_mul(self.config.publish.max_in_flight);
        let want_records = max_records.saturating_sub(self.held.len()).max(1);
        let want_bytes = budget - self.held_bytes;
        let read = tokio::task::spawn_blocking(move || {
            let records = reader.read(want_records, want_bytes);
            (reader, records)
        })
        .await;
        match read {
            Ok((reader, records)) => {
                self.reader = Some(reader);
                if !records.is_empty() && self.held.is_empty() {
                    self.oldest_held = Some(Instant::now());
                }
                for record in records {
                    self.held_bytes += record.frame_bytes;
                    self.held.push_back(record);
                }
            }
            Err(error) => {
                // The read task panicked: nothing can be read any more.
                tracing::error!(%error, "spool reader lost");
            }
        }
    }

    /// Sends one round; acknowledges in the spool the prefix JetStream
    /// stored. Returns whether every message of the round was stored.
    async fn publish_round(&mut self, policy: &Policy) -> bool {
        let Some(connection) = &self.connection else {
            return false;
        };
        let gateway_id = self.config.gateway.id.clone();
        let outgoing = batching::plan(
            &gateway_id,
            self.config.publish.mode,
            policy,
            self.held.iter().map(|spooled| &spooled.message),
        );
        let max_payload = connection.client.server_info().max_payload;
        let mut batch = connection.publisher.batch();
        // Per NATS message: how many spooled messages it carries, its ack slot.
        let mut slots: Vec<(usize, Option<usize>)> = Vec::with_capacity(outgoing.len());
        let mut send_failed = false;
        for message in outgoing {
            if message.messages == 1 && message.payload.len() + HEADER_ROOM_BYTES > max_payload {
                // It can never be published: the server refuses it whatever happens.
                slots.push((1, None));
                tracing::error!(
                    bytes = message.payload.len(),
                    max_payload,
                    "message larger than the NATS server accepts; dropped"
                );
                metrics::counter!(names::REFUSED, "source" => "nats", "reason" => "too_large")
                    .increment(1);
                continue;
            }
            let mut headers = HeaderMap::new();
            for (name, value) in &message.headers {
                headers.insert(*name, value.as_str());
            }
            match batch
                .publish(message.subject, headers, message.payload.into())
                .await
            {
                Ok(index) => slots.push((message.messages, Some(index))),
                Err(error) => {
                    tracing::warn!(%error, "publish failed");
                    send_failed = true;
                    break;
                }
            }
        }
        let acks = batch.acks(self.config.publish.ack_timeout).await;
        let mut done_messages = 0usize;
        let mut complete = true;
        for (messages, slot) in &slots {
            let outcome = match slot {
                None => Some(PublishOutcome::Stored(0)),
                Some(index) => acks.get(*index).cloned().flatten(),
            };
            let label = match &outcome {
                Some(PublishOutcome::Stored(_)) => "stored",
                Some(PublishOutcome::Duplicate(_)) => "duplicate",
                _ => "failed",
            };
            if slot.is_some() {
                metrics::counter!(names::NATS_MESSAGES, "outcome" => label).increment(1);
            }
            if !outcome.as_ref().is_some_and(PublishOutcome::is_stored) {
                if let Some(PublishOutcome::Refused(reason)) = &outcome {
                    tracing::warn!(%reason, "JetStream refused a publish; it is sent again");
                }
                complete = false;
                break;
            }
            done_messages += messages;
        }
        if slots.is_empty() || send_failed {
            complete = false;
        }
        if done_messages > 0 {
            self.acknowledge(done_messages).await;
        }
        if complete {
            self.failed_rounds = 0;
            self.backoff = FIRST_BACKOFF;
            metrics::gauge!(names::NATS_UP).set(1.0);
        } else {
            self.failed_rounds += 1;
            metrics::gauge!(names::NATS_UP).set(0.0);
            if self.failed_rounds >= RECONNECT_AFTER_FAILED_ROUNDS {
                tracing::warn!(
                    rounds = self.failed_rounds,
                    "no publish acknowledged for several rounds; replacing the NATS connection"
                );
                self.connection = None;
                self.failed_rounds = 0;
            }
        }
        complete
    }

    /// Removes the first `count` held records and records them as
    /// acknowledged in the spool.
    async fn acknowledge(&mut self, count: usize) {
        let mut bytes = 0u64;
        let mut last_seq = None;
        for _ in 0..count {
            let Some(record) = self.held.pop_front() else {
                break;
            };
            bytes += record.frame_bytes;
            last_seq = Some(record.seq);
        }
        self.held_bytes = self.held_bytes.saturating_sub(bytes);
        self.oldest_held = if self.held.is_empty() {
            None
        } else {
            Some(Instant::now())
        };
        let Some(last_seq) = last_seq else {
            return;
        };
        metrics::counter!(names::PUBLISHED).increment(count as u64);
        let spool = self.spool.clone();
        let records = count as u64;
        let acknowledged = tokio::task::spawn_blocking(move || {
            spool.acknowledge(last_seq + 1, records, bytes);
        })
        .await;
        if let Err(error) = acknowledged {
            tracing::error!(%error, "cannot record acknowledged messages in the spool");
        }
    }

    /// Waits before the next attempt, growing the pause up to [`MAX_BACKOFF`].
    async fn pause(
        &mut self,
        shutdown: &CancellationToken,
        stop_waiting: std::pin::Pin<&mut tokio::time::Sleep>,
    ) {
        let pause = self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        tokio::select! {
            biased;
            () = shutdown.cancelled(), if !shutdown.is_cancelled() => {}
            () = stop_waiting => {}
            () = tokio::time::sleep(pause) => {}
        }
    }
}
