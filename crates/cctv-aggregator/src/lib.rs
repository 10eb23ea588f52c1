//! The aggregator service: reads canonical events from `CCTV_EVENTS` and
//! writes them to ClickHouse exactly once.
//!
//! The events stream is split into partitions by event id. Any number of
//! instances run with one config; each partition is owned by exactly one
//! live instance at a time through a lease in the NATS KV bucket
//! `CCTV_LEASES` ([`ownership`]), and a stale owner is fenced in ClickHouse
//! (rows carry their lease epoch; only the newest epoch passes).
//!
//! Exactly once rests on four facts: every row carries the stream sequence
//! of its message and the partition (writer) that wrote it; one owner per
//! partition inserts its batches one at a time in sequence order, each batch
//! as one ClickHouse part (all or nothing); on every (re)start the owner
//! reads from ClickHouse how far the partition got and recreates its
//! consumer from the next sequence; and it keeps the ids written within the
//! dedup horizon ([`seen`]), so a repeated offence is dropped however it
//! arrives. ClickHouse, not consumer state, is the source of truth.

mod batch;
mod budget;
mod config;
mod delivery;
mod error;
mod inserter;
mod metrics;
mod ownership;
mod refusals;
mod replay;
mod replicas;
mod roller;
mod seen;
mod service;
mod stats;

pub use batch::{BatchDecision, Batcher};
pub use config::{AggregatorConfig, AggregatorSettings};
pub use error::AggregatorError;
pub use seen::SeenSet;
pub use service::run;
pub use stats::{AggregatorSnapshot, AggregatorStats};
