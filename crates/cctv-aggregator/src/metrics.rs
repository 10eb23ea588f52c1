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
/// Event batches of a partition not yet delivered to its owner (lag), by `partition`.
pub(crate) const LAG: &str = "cctv_aggregator_consumer_pending";
/// Events by `outcome`: `new` (written) or `duplicate` (id already written).
pub(crate) const EVENTS: &str = "cctv_aggregator_events_total";
/// Partitions this instance owns.
pub(crate) const PARTITIONS_OWNED: &str = "cctv_aggregator_partitions_owned";
/// 1 for each partition this instance owns, by `partition`.
pub(crate) const PARTITION_OWNED: &str = "cctv_aggregator_partition_owned";
/// Leases lost (taken over, or not renewed in time).
pub(crate) const LEASES_LOST: &str = "cctv_aggregator_leases_lost_total";
/// Seconds to rebuild a partition's seen-set from ClickHouse.
pub(crate) const REBUILD_SECONDS: &str = "cctv_aggregator_seen_rebuild_seconds";
/// Event ids held in a partition's seen-set, by `partition`.
pub(crate) const SEEN_IDS: &str = "cctv_aggregator_seen_ids";
/// Heap bytes of a partition's seen-set, by `partition`.
pub(crate) const SEEN_BYTES: &str = "cctv_aggregator_seen_bytes";
/// 1 while ClickHouse refuses or cannot be reached, else 0.
pub(crate) const STORE_DOWN: &str = "cctv_aggregator_clickhouse_down";
/// ClickHouse inserts, each carrying the batches of one or more partitions.
pub(crate) const INSERTS: &str = "cctv_aggregator_inserts_total";
/// Rows decoded and not yet written, over every owned partition (bounded by
/// `aggregator.max_rows_in_memory`).
pub(crate) const ROWS_IN_MEMORY: &str = "cctv_aggregator_rows_in_memory";
/// Times a partition's reader stopped reading because the instance held
/// more than `aggregator.max_rows_in_memory` rows.
pub(crate) const BUDGET_WAITS: &str = "cctv_aggregator_budget_waits_total";
/// 1 while a ClickHouse shard (`shard`, from 0) is busy for this instance:
/// its last insert cycle carried `aggregator.busy_rows_per_second` or more
/// (times the instances sharing it), so its partitions' batches may wait
/// `aggregator.batch_max_age_busy`; else 0.
pub(crate) const SHARD_BUSY: &str = "cctv_aggregator_shard_busy";
/// Partition batches per ClickHouse insert (group commit).
pub(crate) const INSERT_GROUP: &str = "cctv_aggregator_insert_group_batches";
/// Roller runs by `outcome` (`ok`, `error`).
pub(crate) const ROLLUP_RUNS: &str = "cctv_aggregator_rollup_runs_total";
/// Slots (insert days in the views' zone) rolled up and marked.
pub(crate) const ROLLUP_SLOTS: &str = "cctv_aggregator_rollup_slots_total";
/// Slots taken again by a writer after a batch landed late in them.
pub(crate) const ROLLUP_LATE_SLOTS: &str = "cctv_aggregator_rollup_late_slots_total";
/// Rows written again by a rewind (`cctvctl audit --repair`): events whose
/// rows ClickHouse had lost.
pub(crate) const REPLAYED_ROWS: &str = "cctv_aggregator_replayed_rows_total";
/// Messages a rewind did not read again: stored too close to the dedup
/// horizon's start for their ids to be surely in the seen-set.
pub(crate) const REPLAY_TOO_OLD: &str = "cctv_aggregator_replay_too_old_total";
/// Errors not known to pass that ended a step of a partition's term (its
/// fence or a session); the term tries again until `aggregator.refusal_grace`.
pub(crate) const REFUSALS: &str = "cctv_aggregator_refusals_total";
