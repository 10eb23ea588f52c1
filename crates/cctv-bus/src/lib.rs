//! NATS and JetStream plumbing shared by the services and `cctvctl`.
//!
//! Connection settings with secrets from the environment ([`NatsConfig`]), the
//! three streams of the contract ([`StreamsConfig`], [`ensure_streams`]),
//! subject builders and header names ([`subjects`], [`headers`]), the
//! services' consumers and pull settings ([`consumers`]), and batched
//! acknowledged publishes for the hot paths ([`AckedPublisher`]), the event
//! batch encoding of `CCTV_EVENTS` ([`event_batch`]) and the partition lease
//! bucket ([`LeaseBucket`]). This crate
//! knows nothing of ClickHouse.

mod config;
mod connect;
pub mod consumers;
mod error;
pub mod event_batch;
pub mod headers;
mod leases;
mod publish;
mod streams;
pub mod subjects;

pub use config::{NatsConfig, StreamSettings, StreamsConfig, DEFAULT_NATS_URL};
pub use connect::{connect, connect_with_retry, connection_generation};
pub use consumers::{
    partition_consumer, pull_events, pull_raw, raw_consumer, PartitionConsumerSettings,
    RawConsumerSettings,
};
pub use error::BusError;
pub use event_batch::{
    decode_event_batch, encode_event_batch, EncodedEvent, EventBatchError, EventBatchReader,
    EventBatchWriter, EventEncoding, EventError, EVENT_BATCH_CONTENT_TYPE,
};
pub use leases::{
    lease_epoch, lease_key, member_key, parse_lease_key, parse_rewind_key, parse_rewind_value,
    rewind_key, LeaseBucket, LeaseBucketSettings, LeaseEntry, LeaseWriteError, LEASE_PREFIX,
    MEMBER_PREFIX, PARTITIONS_KEY, REWIND_PREFIX,
};
pub use publish::{AckBatch, AckedPublisher, PublishOutcome};
pub use streams::{ensure_stream, ensure_streams, stream_identity, StreamKind};
