//! The JetStream consumers of the two services and how they pull.
//!
//! - The ingests share one durable consumer on `CCTV_RAW` ([`raw_consumer`]):
//!   explicit acks, one per raw message once its events are stored, so any
//!   number of ingests split the raw messages between them.
//! - A partition owner creates a fresh consumer per session on its
//!   partition's subject ([`partition_consumer`]), starting at the sequence
//!   ClickHouse says comes next, acked with `AckPolicy::All` after each
//!   insert. Its name carries the lease epoch, so two owners' terms never
//!   share one. Its state is kept in the server's memory (`mem_storage`):
//!   a restarted server forgets it, and the owner's next session makes a
//!   new one from ClickHouse's resume point, as it does anyway.
//!
//! Both pull with heartbeats, so a pull lost with a connection (a server
//! restart) shows as a missed heartbeat instead of a silent stall.

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::{self, stream::Stream};

use crate::{subjects, BusError};

/// Idle heartbeat of every pull: the server says it is alive this often
/// while it has nothing to deliver.
pub const PULL_HEARTBEAT: Duration = Duration::from_secs(5);
/// A pull request expires after this long and the next one is sent.
pub const PULL_EXPIRES: Duration = Duration::from_secs(30);

/// The ingests' shared consumer on the raw stream.
#[derive(Debug, Clone)]
pub struct RawConsumerSettings {
    /// Durable name, shared by every ingest.
    pub name: String,
    /// Redelivery after this long without an ack.
    pub ack_wait: Duration,
    /// Raw messages delivered and not yet acked, over all ingests.
    pub max_ack_pending: i64,
}

/// Finds or creates the ingests' shared durable consumer on `stream`.
pub async fn raw_consumer(
    js: &jetstream::Context,
    stream: &str,
    settings: &RawConsumerSettings,
) -> Result<PullConsumer, BusError> {
    let stream = js
        .get_stream(stream)
        .await
        .map_err(|e| BusError::jetstream("get raw stream", e))?;
    let config = pull::Config {
        durable_name: Some(settings.name.clone()),
        description: Some("cctv-ingest: raw vendor messages to canonical events".into()),
        ack_policy: AckPolicy::Explicit,
        ack_wait: settings.ack_wait,
        max_ack_pending: settings.max_ack_pending,
        max_deliver: -1,
        ..Default::default()
    };
    stream
        .get_or_create_consumer(&settings.name, config)
        .await
        .map_err(|e| BusError::jetstream("create raw consumer", e))
}

/// Pulls raw messages: at most `max_messages` and `max_bytes` per request.
pub async fn pull_raw(
    consumer: &PullConsumer,
    max_messages: usize,
    max_bytes: usize,
) -> Result<pull::Stream, BusError> {
    pull(consumer, max_messages, max_bytes, "pull raw messages").await
}

/// A pull with heartbeats: at most `max_messages` and `max_bytes` per request.
async fn pull(
    consumer: &PullConsumer,
    max_messages: usize,
    max_bytes: usize,
    operation: &'static str,
) -> Result<pull::Stream, BusError> {
    consumer
        .stream()
        .max_messages_per_batch(max_messages)
        .max_bytes_per_batch(max_bytes)
        .heartbeat(PULL_HEARTBEAT)
        .expires(PULL_EXPIRES)
        .messages()
        .await
        .map_err(|e| BusError::jetstream(operation, e))
}

/// A partition owner's consumer for one session.
#[derive(Debug, Clone)]
pub struct PartitionConsumerSettings {
    /// Prefix of the consumer's name (`aggregator.consumer`).
    pub prefix: String,
    /// The partition.
    pub partition: u16,
    /// The owner's lease epoch.
    pub epoch: u64,
    /// Who owns it (the description names it, for operators).
    pub owner: String,
    /// The first stream sequence to deliver.
    pub start_sequence: u64,
    /// Redelivery after this long without an ack.
    pub ack_wait: Duration,
    /// Event batches delivered and not yet acked.
    pub max_ack_pending: i64,
    /// The server deletes the consumer after this long without a pull.
    pub inactive_threshold: Duration,
}

impl PartitionConsumerSettings {
    /// The consumer's name: `<prefix>-p<partition>-<epoch in hex>`.
    pub fn name(&self) -> String {
        format!("{}-p{}-{:x}", self.prefix, self.partition, self.epoch)
    }
}

/// Creates the session's consumer on `stream`, replacing one of the same
/// name left by an earlier session of the same term: where to read from is
/// decided by ClickHouse, never by leftover consumer state.
pub async fn partition_consumer(
    stream: &Stream,
    settings: &PartitionConsumerSettings,
) -> Result<PullConsumer, BusError> {
    let name = settings.name();
    let _ = stream.delete_consumer(&name).await;
    stream
        .create_consumer(pull::Config {
            durable_name: Some(name),
            description: Some(format!(
                "cctv-aggregator {}: partition {} into ClickHouse",
                settings.owner, settings.partition
            )),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: settings.start_sequence,
            },
            ack_policy: AckPolicy::All,
            ack_wait: settings.ack_wait,
            max_deliver: -1,
            max_ack_pending: settings.max_ack_pending,
            filter_subject: subjects::event_partition(settings.partition),
            inactive_threshold: settings.inactive_threshold,
            // Its state (delivered, acked) lives in the server's memory only:
            // where a session reads from is ClickHouse's to say, so nothing
            // needs it after a restart. A file-backed consumer rewrites a
            // state file up to ten times a second.
            memory_storage: true,
            ..Default::default()
        })
        .await
        .map_err(|e| BusError::jetstream("create events consumer", e))
}

/// Pulls event batches: at most `max_messages` and `max_bytes` per request.
pub async fn pull_events(
    consumer: &PullConsumer,
    max_messages: usize,
    max_bytes: usize,
) -> Result<pull::Stream, BusError> {
    pull(consumer, max_messages, max_bytes, "pull events").await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_consumer_is_named_by_partition_and_epoch() {
        let settings = PartitionConsumerSettings {
            prefix: "cctv-aggregator".into(),
            partition: 7,
            epoch: 0x1a2b,
            owner: "host-1".into(),
            start_sequence: 1,
            ack_wait: Duration::from_secs(300),
            max_ack_pending: 64,
            inactive_threshold: Duration::from_secs(120),
        };
        assert_eq!(settings.name(), "cctv-aggregator-p7-1a2b");
    }
}
