//! Metric names of the aggregator.

/// Rows inserted into ClickHouse.
pub(crate) const ROWS_WRITTEN: &str = "cctv_aggregator_rows_written_total";
/// Batches inserted.
pub(crate) const BATCHES: &str = "cctv_aggregator_batches_total";
/// Messages skipped because ClickHouse already holds them (redeliveries).
pub(crate) const SKIPPED: &str = "cctv_aggregator_skipped_total";
/// Event messages that could not be decoded (never written; see the logs).
pub(crate) const UNDECODABLE: &str = "cctv_aggregator_undecodable_total";
/// Insert attempts that failed, by `kind` (`transient`, `permanent`).
pub(crate) const INSERT_ERRORS: &str = "cctv_aggregator_insert_errors_total";
/// Consumer resets (gap in deliveries, reconnect, stream error).
pub(crate) const RESETS: &str = "cctv_aggregator_resets_total";
/// Seconds one insert took.
pub(crate) const INSERT_SECONDS: &str = "cctv_aggregator_insert_seconds";
/// Rows per inserted batch.
pub(crate) const BATCH_ROWS: &str = "cctv_aggregator_batch_rows";
/// Events in the stream not yet delivered to the writer (lag).
pub(crate) const LAG: &str = "cctv_aggregator_consumer_pending";
/// 1 while ClickHouse refuses or cannot be reached, else 0.
pub(crate) const STORE_DOWN: &str = "cctv_aggregator_clickhouse_down";
