//! The ingest service: reads raw vendor messages from `CCTV_RAW` through a
//! durable pull consumer, normalises each with [`cctv_normalize`], publishes
//! one canonical event per offence to `CCTV_EVENTS` (`Nats-Msg-Id` = event
//! id) and each rejected message to `CCTV_DLQ`, and acks the raw message only
//! after every one of those publishes was acknowledged by JetStream.
//!
//! `main.rs` is thin: it loads [`IngestConfig`], installs signal handling and
//! calls [`run`]. Tests call [`run`] directly.

mod config;
mod error;
mod metrics;
mod router;
mod service;
mod settle;
mod stats;

pub use config::{
    DataSettings, IngestConfig, IngestSettings, LimitsSettings, PlateHashKey, PlateStorage,
    PrivacySettings, PLATE_HASH_KEY_ENV,
};
pub use error::IngestError;
pub use service::run;
pub use stats::{IngestStats, StatsSnapshot};
