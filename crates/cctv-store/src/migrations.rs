//! Versioned schema migrations, recorded in `<db>.schema_migrations`.
//!
//! Each migration is a list of idempotent statements (`IF NOT EXISTS`), so a
//! migration interrupted half-way is simply run again. `{db}` in a statement
//! is the database identifier and `{tz}` the time zone of `offence_totals`;
//! both are bound (and quoted) by the client after validation. Nothing else is
//! spliced into SQL.

/// One schema version.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Version number, from 1, without gaps.
    pub version: u32,
    /// Short name.
    pub name: &'static str,
    /// Statements run in order.
    pub statements: &'static [&'static str],
}

/// A statement of this form adds a column unless it exists (18.16 has no
/// `ADD COLUMN IF NOT EXISTS`): `ADD COLUMN IF NOT EXISTS <table> <column> <type>`.
pub(crate) const ADD_COLUMN: &str = "ADD COLUMN IF NOT EXISTS ";

/// The columns of `offence_events` as migration 1 created them (migration 2
/// adds `lease_epoch`), shared by the single-server and the cluster layout.
macro_rules! offence_events_columns {
    () => {
        "event_id UUID,
            detected_at DateTime,
            detected_ms UInt16,
            offence_type String,
            offence_family String,
            legal_category String,
            article String,
            region String,
            region_source String,
            district String,
            camera_id String,
            source_format String,
            gateway_id String,
            source_event_id String,
            confidence Float32,
            confidence_raw Float64,
            plate String,
            speed_kmh Nullable(Float32),
            speed_limit_kmh Nullable(Float32),
            lat Nullable(Float64),
            lon Nullable(Float64),
            evidence_url String,
            clock_skew UInt8,
            received_at DateTime,
            ingested_at DateTime,
            inserted_at DateTime,
            source_stream String,
            writer String,
            stream_seq UInt64,
            batch_first_seq UInt64,
            batch_rows UInt32"
    };
}

/// `offence_rollup` (v3, slots in UTC) and `offence_day_rollup` (v4, slots
/// in the time zone of `offence_totals`): counted offences per insert day
/// (`slot`, the day of `inserted_at`) and detection day, region and type. Computed from the rows
/// (never fed by a materialized view), any number of times: a row of the same
/// key is the same count taken again, and the largest one stands (rows are
/// never taken away), so rollers may run at once, again, or on a lagging
/// replica without skewing it (`rollup.rs`).
macro_rules! offence_rollup_table {
    ($table:literal, $engine:literal) => {
        concat!(
            "CREATE TABLE IF NOT EXISTS {db}.",
            $table,
            " (
            slot Date,
            day Date,
            region String,
            offence_type String,
            events UInt64
        ) ",
            $engine,
            "
        PARTITION BY toYYYYMM(slot)
        ORDER BY (slot, day, region, offence_type)"
        )
    };
}

/// `camera_rollup` / `camera_day_rollup`: the same per camera (for top
/// cameras over long ranges).
macro_rules! camera_rollup_table {
    ($table:literal, $engine:literal) => {
        concat!(
            "CREATE TABLE IF NOT EXISTS {db}.",
            $table,
            " (
            slot Date,
            day Date,
            camera_id String,
            region String,
            events UInt64
        ) ",
            $engine,
            "
        PARTITION BY toYYYYMM(slot)
        ORDER BY (slot, day, camera_id, region)"
        )
    };
}

/// `rollup_slots` / `rolled_days`: one row each time a slot was rolled up.
/// A slot is marked only after both rollups hold it, and slots are rolled in
/// order, so every slot up to the newest mark is rolled up.
macro_rules! rollup_slots_table {
    ($table:literal, $engine:literal) => {
        concat!(
            "CREATE TABLE IF NOT EXISTS {db}.",
            $table,
            " (
            slot Date,
            events UInt64,
            rolled_at DateTime
        ) ",
            $engine,
            "
        ORDER BY slot"
        )
    };
}

/// `offence_totals`: the rolled-up slots (the largest count of each key:
/// `FINAL` of `ReplacingMergeTree(events)`, which merges streaming in key
/// order instead of hashing every key) plus the rows inserted after the
/// newest rolled slot, counted from the rows themselves; one row per key.
macro_rules! offence_totals_view {
    ($rollup:literal, $marks:literal, $slot_zone:literal) => {
        concat!(
            "CREATE VIEW IF NOT EXISTS {db}.offence_totals AS
        SELECT day, region, offence_type, toUInt64(sum(events)) AS events FROM (
            SELECT day, region, offence_type, events
            FROM {db}.",
            $rollup,
            " FINAL
            WHERE slot <= (SELECT max(slot) FROM {db}.",
            $marks,
            ")
            UNION ALL
            SELECT toDate(detected_at, {tz}) AS day, region, offence_type, count() AS events
            FROM {db}.offence_events
            WHERE inserted_at >= (SELECT toDateTime(max(slot) + 1, ",
            $slot_zone,
            ") FROM {db}.",
            $marks,
            ")
            GROUP BY day, region, offence_type
        )
        GROUP BY day, region, offence_type"
        )
    };
}

/// `camera_totals`: counted offences per detection day and camera, read
/// like `offence_totals` but not grouped again (a year of a national fleet
/// is hundreds of millions of camera days): a key may be in several rows,
/// one per insert day holding it; sum `events`.
macro_rules! camera_totals_view {
    ($rollup:literal, $marks:literal, $slot_zone:literal) => {
        concat!(
            "CREATE VIEW IF NOT EXISTS {db}.camera_totals AS
        SELECT day, camera_id, region, events
        FROM {db}.",
            $rollup,
            " FINAL
        WHERE slot <= (SELECT max(slot) FROM {db}.",
            $marks,
            ")
        UNION ALL
        SELECT toDate(detected_at, {tz}) AS day, camera_id, region, count() AS events
        FROM {db}.offence_events
        WHERE inserted_at >= (SELECT toDateTime(max(slot) + 1, ",
            $slot_zone,
            ") FROM {db}.",
            $marks,
            ")
        GROUP BY day, camera_id, region"
        )
    };
}

/// Every migration, oldest first.
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "offence_events and offence_totals",
    statements: &[
        // Partitioned by the batch's insert month so that one batch is one
        // part (atomic); sorted for the analysts' usual filters.
        concat!(
            "CREATE TABLE IF NOT EXISTS {db}.offence_events (",
            offence_events_columns!(),
            ") ENGINE = MergeTree()
        PARTITION BY toYYYYMM(inserted_at)
        ORDER BY (region, offence_type, detected_at)"
        ),
        // Exact totals straight from the raw rows: no materialized view that
        // could drift from its source after a crash.
        "CREATE VIEW IF NOT EXISTS {db}.offence_totals AS
        SELECT toDate(detected_at, {tz}) AS day, region, offence_type, count() AS events
        FROM {db}.offence_events
        GROUP BY day, region, offence_type",
    ],
}, Migration {
    version: 2,
    name: "partition leases: lease_epoch, partition_fences, fenced inserts",
    statements: &[
        "ADD COLUMN IF NOT EXISTS offence_events lease_epoch UInt64",
        // One row per lease taken: a new owner writes its epoch here before
        // it reads anything, and from then on only rows of the newest epoch
        // of their writer (partition) pass into offence_events.
        "CREATE TABLE IF NOT EXISTS {db}.partition_fences (
            writer String,
            lease_epoch UInt64,
            owner String,
            fenced_at DateTime
        ) ENGINE = MergeTree()
        ORDER BY (writer, lease_epoch)",
        // The aggregators insert here; the table keeps nothing.
        "CREATE TABLE IF NOT EXISTS {db}.offence_events_incoming AS {db}.offence_events ENGINE = Null",
        // The fence: evaluated for every inserted block when the server
        // writes it, so a stale owner's insert (an older epoch) writes nothing.
        "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.offence_events_fenced TO {db}.offence_events
        AS SELECT * FROM {db}.offence_events_incoming
        WHERE (writer, lease_epoch) IN
            (SELECT writer, max(lease_epoch) FROM {db}.partition_fences GROUP BY writer)",
    ],
}, Migration {
    version: 3,
    name: "rollups: offence_rollup, camera_rollup, rollup_slots; offence_totals and camera_totals read them",
    statements: &[
        offence_rollup_table!("offence_rollup", "ENGINE = ReplacingMergeTree(events)"),
        camera_rollup_table!("camera_rollup", "ENGINE = ReplacingMergeTree(events)"),
        rollup_slots_table!("rollup_slots", "ENGINE = MergeTree()"),
        "DROP TABLE IF EXISTS {db}.offence_totals",
        offence_totals_view!("offence_rollup", "rollup_slots", "'UTC'"),
        camera_totals_view!("camera_rollup", "rollup_slots", "'UTC'"),
    ],
}, Migration {
    version: 4,
    name: "rollups by insert day in the time zone: offence_day_rollup, camera_day_rollup, rolled_days",
    statements: V4_STATEMENTS_SINGLE,
}];

/// Migration 4: the rollups' slots become insert days in the time zone of
/// `offence_totals` instead of UTC days. Detection days are days of that
/// zone too, so a camera's day was split over two UTC slots (two rows where
/// one holds the same count: top cameras of a year read 7.3 M camera rows
/// instead of 3.7 M). New tables under new names: an aggregator of an older
/// build still running during the upgrade fails on the dropped tables
/// instead of writing UTC slots that the new views would read as zoned
/// ones. The new rollups start empty (the views count the rows until the
/// roller has taken the days again: exact, only slower for a while).
macro_rules! v4_statements {
    ($offences:literal, $cameras:literal, $marks:literal) => {
        &[
            "DROP TABLE IF EXISTS {db}.offence_totals",
            "DROP TABLE IF EXISTS {db}.camera_totals",
            "DROP TABLE IF EXISTS {db}.offence_rollup",
            "DROP TABLE IF EXISTS {db}.camera_rollup",
            "DROP TABLE IF EXISTS {db}.rollup_slots",
            offence_rollup_table!("offence_day_rollup", $offences),
            camera_rollup_table!("camera_day_rollup", $cameras),
            rollup_slots_table!("rolled_days", $marks),
            offence_totals_view!("offence_day_rollup", "rolled_days", "{tz}"),
            camera_totals_view!("camera_day_rollup", "rolled_days", "{tz}"),
        ]
    };
}

const V4_STATEMENTS_SINGLE: &[&str] = v4_statements!(
    "ENGINE = ReplacingMergeTree(events)",
    "ENGINE = ReplacingMergeTree(events)",
    "ENGINE = MergeTree()"
);

const V4_STATEMENTS_CLUSTER: &[&str] = v4_statements!(
    "ENGINE = ReplicatedReplacingMergeTree({zk_all:offence_day_rollup}, '{shard}-{replica}', events)",
    "ENGINE = ReplicatedReplacingMergeTree({zk_all:camera_day_rollup}, '{shard}-{replica}', events)",
    "ENGINE = ReplicatedMergeTree({zk_all:rolled_days}, '{shard}-{replica}')"
);

/// The cluster layout of the same versions (`[clickhouse.cluster]`), run on
/// every node: `offence_events_local` and `partition_fences` are
/// `ReplicatedMergeTree`s of each shard (ZooKeeper path per shard, replica
/// name from the server's `{replica}` macro), `offence_events` is the
/// `Distributed` table over every shard's `offence_events_local`, so the
/// contract's queries (and `offence_totals`) answer for the whole cluster.
/// The aggregators insert into each shard's `offence_events_incoming`
/// directly (one part per insert, never through `Distributed`), and the
/// fence works per shard as on a single server. A repeated insert of the same
/// bytes is dropped as long as the shard remembers its block:
/// `replicated_deduplication_window` keeps the last 10,000 blocks (100 by
/// default, a few seconds of inserts with several aggregators), which covers
/// an insert's retries (at most 30 s after an insert timeout of 60 s).
pub const CLUSTER_MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "offence_events and offence_totals (cluster)",
        statements: &[
            concat!(
                "CREATE TABLE IF NOT EXISTS {db}.offence_events_local (",
                offence_events_columns!(),
                ",
            lease_epoch UInt64
        ) ENGINE = ReplicatedMergeTree({zk:offence_events}, '{replica}')
        PARTITION BY toYYYYMM(inserted_at)
        ORDER BY (region, offence_type, detected_at)
        SETTINGS replicated_deduplication_window = 10000"
            ),
            "CREATE TABLE IF NOT EXISTS {db}.offence_events AS {db}.offence_events_local
        ENGINE = Distributed({cluster}, {db_name}, 'offence_events_local', rand())",
            "CREATE VIEW IF NOT EXISTS {db}.offence_totals AS
        SELECT toDate(detected_at, {tz}) AS day, region, offence_type, count() AS events
        FROM {db}.offence_events
        GROUP BY day, region, offence_type",
        ],
    },
    Migration {
        version: 2,
        name: "partition leases: partition_fences, fenced inserts (cluster)",
        statements: &[
            "CREATE TABLE IF NOT EXISTS {db}.partition_fences (
            writer String,
            lease_epoch UInt64,
            owner String,
            fenced_at DateTime
        ) ENGINE = ReplicatedMergeTree({zk:partition_fences}, '{replica}')
        ORDER BY (writer, lease_epoch)",
            "CREATE TABLE IF NOT EXISTS {db}.offence_events_incoming AS {db}.offence_events_local ENGINE = Null",
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.offence_events_fenced TO {db}.offence_events_local
        AS SELECT * FROM {db}.offence_events_incoming
        WHERE (writer, lease_epoch) IN
            (SELECT writer, max(lease_epoch) FROM {db}.partition_fences GROUP BY writer)",
        ],
    },
    Migration {
        version: 3,
        name: "rollups (cluster): one replicated rollup table on every node",
        statements: &[
            offence_rollup_table!(
                "offence_rollup",
                "ENGINE = ReplicatedReplacingMergeTree({zk_all:offence_rollup}, '{shard}-{replica}', events)"
            ),
            camera_rollup_table!(
                "camera_rollup",
                "ENGINE = ReplicatedReplacingMergeTree({zk_all:camera_rollup}, '{shard}-{replica}', events)"
            ),
            rollup_slots_table!(
                "rollup_slots",
                "ENGINE = ReplicatedMergeTree({zk_all:rollup_slots}, '{shard}-{replica}')"
            ),
            "DROP TABLE IF EXISTS {db}.offence_totals",
            offence_totals_view!("offence_rollup", "rollup_slots", "'UTC'"),
            camera_totals_view!("camera_rollup", "rollup_slots", "'UTC'"),
        ],
    },
    Migration {
        version: 4,
        name: "rollups by insert day in the time zone (cluster)",
        statements: V4_STATEMENTS_CLUSTER,
    },
];

/// Newest version this build knows.
pub(crate) fn latest_version() -> u32 {
    MIGRATIONS.last().map_or(0, |migration| migration.version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_start_at_one_without_gaps() {
        for (index, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(migration.version as usize, index + 1);
            assert!(!migration.statements.is_empty());
        }
        assert_eq!(latest_version() as usize, MIGRATIONS.len());
    }

    #[test]
    fn the_cluster_layout_has_the_same_versions() {
        let versions = |list: &[Migration]| list.iter().map(|m| m.version).collect::<Vec<_>>();
        assert_eq!(versions(CLUSTER_MIGRATIONS), versions(MIGRATIONS));
        let all: String = CLUSTER_MIGRATIONS
            .iter()
            .flat_map(|m| m.statements.iter().copied())
            .collect();
        assert!(all.contains("ReplicatedMergeTree({zk:offence_events}, '{replica}')"));
        assert!(all.contains("Distributed({cluster}, {db_name}, 'offence_events_local'"));
        assert!(all.contains("TO {db}.offence_events_local"));
    }

    #[test]
    fn statements_are_idempotent() {
        for migration in MIGRATIONS.iter().chain(CLUSTER_MIGRATIONS) {
            for statement in migration.statements {
                // A DROP before a CREATE replaces a view; both run again harmlessly.
                assert!(
                    statement.contains("IF NOT EXISTS")
                        || statement.starts_with("DROP TABLE IF EXISTS {db}."),
                    "{statement}"
                );
                if let Some(spec) = statement.strip_prefix(ADD_COLUMN) {
                    assert_eq!(spec.split_whitespace().count(), 3, "{statement}");
                }
            }
        }
    }
}
