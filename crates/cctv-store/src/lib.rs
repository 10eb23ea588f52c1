//! ClickHouse side of the pipeline: settings, versioned migrations, the row
//! type of `offence_events`, batch inserts that are atomic per batch, the
//! writer's resume point, and the analyst queries (totals, grouped counts, top
//! lists, freshness, audit).
//!
//! HTTPS (`https://` URLs, the server's certificate checked against
//! `tls_ca_file`) or plain HTTP, chosen by the URL's scheme (`transport`).
//!
//! Works on ClickHouse 18.16 and current releases: plain `MergeTree`, no
//! `DateTime64`, no `LowCardinality`, no TTL, RowBinary without the
//! names-and-types header. This crate knows nothing of NATS.

mod analytics;
mod audit;
mod config;
mod encoded;
mod error;
mod migration_lock;
mod migrations;
mod partitions;
mod queries;
mod rollup;
mod row;
mod store;
mod transport;

pub use analytics::{
    freshness_sql, grouped_sql, top_sql, BoundSql, Dimension, Freshness, GroupedRow, QueryScope,
    Source, SqlParam, TopRow, TopSubject,
};
pub use audit::{DoubledEventId, IdRound, StoredSequence, StoredSpan, AUDIT_CHUNK_SEQUENCES};
pub use config::{ClickHouseConfig, ClusterConfig, ShardConfig, DEFAULT_CLICKHOUSE_URL};
pub use encoded::{ChunkPool, EncodedRows, CHUNK_BYTES, ENCODED_COLUMNS};
pub use error::StoreError;
pub use migrations::{Migration, CLUSTER_MIGRATIONS, MIGRATIONS};
pub use queries::{TotalsFilter, TotalsRow};
pub use rollup::{RollPlan, RollReport, RollupPolicy, SlotDifference};
pub use row::{EventRow, StreamPosition};
/// The rollups' SQL, for tests that run every query on several servers.
pub mod rollup_sql {
    pub use crate::rollup::{
        CAMERA_ROLLUP_DIFFERENCES, COMPACT_CAMERAS, COMPACT_OFFENCES, FIRST_SLOT, LAST_CLOSED_SLOT,
        MARK_SLOTS, OFFENCE_ROLLUP_DIFFERENCES, ROLLED_THROUGH, ROLL_CAMERAS, ROLL_OFFENCES,
        SLOT_AT,
    };
}
pub use store::{ResumePoint, Store};
