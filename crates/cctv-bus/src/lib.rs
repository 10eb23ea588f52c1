//! NATS and JetStream plumbing shared by the services and `cctvctl`.
//!
//! Connection settings with secrets from the environment ([`NatsConfig`]), the
//! three streams of the contract ([`StreamsConfig`], [`ensure_streams`]),
//! subject builders and header names ([`subjects`], [`headers`]), and batched
//! acknowledged publishes for the hot paths ([`AckedPublisher`]). This crate
//! knows nothing of ClickHouse.

mod config;
mod connect;
mod error;
pub mod headers;
mod publish;
mod streams;
pub mod subjects;

pub use config::{NatsConfig, StreamSettings, StreamsConfig, DEFAULT_NATS_URL};
pub use connect::{connect, connect_with_retry};
pub use error::BusError;
pub use publish::{AckBatch, AckedPublisher, PublishOutcome};
pub use streams::{ensure_stream, ensure_streams, stream_identity, StreamKind};
