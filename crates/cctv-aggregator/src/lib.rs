//! The aggregator service: reads canonical events from `CCTV_EVENTS` and
//! writes them to ClickHouse exactly once.
//!
//! Exactly once rests on three facts: every row carries the stream sequence
//! of its message; one writer owns a consumer and inserts its batches one at a
//! time in sequence order, each batch as one ClickHouse part (all or nothing);
//! and on every (re)start the writer reads from ClickHouse how far it got and
//! recreates its consumer from the next sequence. ClickHouse, not the consumer's
//! ack state, is the source of truth, so a crash between insert and ack, a lost
//! ack, or a redelivery can neither lose nor double a row.

mod batch;
mod config;
mod error;
mod metrics;
mod service;
mod stats;

pub use batch::{BatchDecision, Batcher};
pub use config::{AggregatorConfig, AggregatorSettings};
pub use error::AggregatorError;
pub use service::run;
pub use stats::{AggregatorSnapshot, AggregatorStats};
