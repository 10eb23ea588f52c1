//! The rollups behind `offence_totals` and `camera_totals` against a real
//! ClickHouse: rows inserted over past days, rolled up, read through the
//! views; a row landing in a rolled slot after its roll (found by the audit's
//! comparison, counted again by `--repair`); rollers running at
//! once and again; the newest slots taken again by every run.

use cctv_event::OffenceEvent;
use cctv_store::{ClickHouseConfig, EventRow, RollupPolicy, Store, StreamPosition};
use cctv_testkit::{shared_clickhouse, unique_name};
use chrono::{DateTime, NaiveDate, Utc};
use serde::Deserialize;

const DAY: u32 = 86_400;
const REGIONS: [&str; 4] = ["KZ-75", "KZ-71", "KZ-79", "KZ-10"];
const TYPES: [&str; 3] = ["traffic.speeding", "traffic.red_light", "public.littering"];

/// A store of a new database `<prefix>_...` on the shared server, no schema.
fn new_store(prefix: &str) -> Store {
    let clickhouse = shared_clickhouse().expect("clickhouse-server must start");
    Store::new(&ClickHouseConfig {
        url: clickhouse.http_url(),
        database: unique_name(prefix),
        ..ClickHouseConfig::default()
    })
    .expect("settings")
}

async fn fresh_store() -> Store {
    let store = new_store("rollup");
    store.migrate().await.expect("migrate");
    store
}

fn now_secs() -> u32 {
    u32::try_from(Utc::now().timestamp()).expect("a time after 1970")
}

/// Offences `first..first + count`, inserted at `inserted_at`, detected a
/// few hours before it, spread over regions, types and five cameras.
fn rows(first: u32, count: u32, inserted_at: u32) -> Vec<EventRow> {
    (first..first + count)
        .map(|n| {
            let event = OffenceEvent {
                event_id: uuid::Uuid::from_u128(
                    0xabcd_0000_0000_0000_0000_0000_0000_0000 | u128::from(n),
                ),
                offence_type: TYPES[n as usize % TYPES.len()].into(),
                region: REGIONS[n as usize % REGIONS.len()].into(),
                camera_id: format!("CAM-{}", n % 5),
                detected_at: DateTime::from_timestamp(i64::from(inserted_at - 3600 * (n % 7)), 0)
                    .expect("a time"),
                ..OffenceEvent::example()
            };
            let position = StreamPosition {
                stream_seq: u64::from(n) + 1,
                batch_first_seq: u64::from(first) + 1,
                batch_rows: count,
            };
            EventRow::from_event(event, "CCTV_EVENTS@1", "p0", position, inserted_at)
        })
        .collect()
}

#[derive(Debug, clickhouse::Row, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
struct Count {
    key: String,
    events: u64,
}

/// `(day, region, type)` and `(day, camera)` counts as the views give them,
/// and as the rows give them.
async fn counts(store: &Store) -> [Vec<Count>; 4] {
    let database = clickhouse::sql::Identifier(&store.config().database);
    let mut answers = Vec::new();
    for sql in [
        "SELECT concat(toString(day), ' ', region, ' ', offence_type) AS key, toUInt64(sum(events)) AS events \
         FROM ?.offence_totals GROUP BY key ORDER BY key",
        "SELECT concat(toString(toDate(detected_at, 'Asia/Almaty')), ' ', region, ' ', offence_type) AS key, \
         count() AS events FROM ?.offence_events GROUP BY key ORDER BY key",
        "SELECT concat(toString(day), ' ', camera_id, ' ', region) AS key, toUInt64(sum(events)) AS events \
         FROM ?.camera_totals GROUP BY key ORDER BY key",
        "SELECT concat(toString(toDate(detected_at, 'Asia/Almaty')), ' ', camera_id, ' ', region) AS key, \
         count() AS events FROM ?.offence_events GROUP BY key ORDER BY key",
    ] {
        answers.push(
            store
                .client()
                .query(sql)
                .bind(database)
                .fetch_all::<Count>()
                .await
                .expect("counts"),
        );
    }
    answers.try_into().expect("four answers")
}

async fn assert_views_equal_rows(store: &Store, context: &str) {
    let [totals, from_rows, cameras, cameras_from_rows] = counts(store).await;
    assert!(!from_rows.is_empty());
    assert_eq!(totals, from_rows, "offence_totals {context}");
    assert_eq!(cameras, cameras_from_rows, "camera_totals {context}");
}

async fn count_of(store: &Store, sql: &str) -> u64 {
    store
        .client()
        .query(sql)
        .bind(clickhouse::sql::Identifier(&store.config().database))
        .fetch_one::<u64>()
        .await
        .expect("count")
}

/// The slot (insert day in Asia/Almaty, the store's zone) of UTC seconds.
fn slot(seconds: u32) -> NaiveDate {
    crate::analyst_data::almaty_date(i64::from(seconds))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolled_up_views_count_what_the_rows_hold_through_late_rows_and_repeated_rollers() {
    let store = fresh_store().await;
    let now = now_secs();
    // Ten past days of rows, 100 a day, and some of today.
    for day in 1..=10u32 {
        store
            .insert_batch(&rows(day * 1000, 100, now - day * DAY))
            .await
            .expect("insert");
    }
    store
        .insert_batch(&rows(50_000, 40, now))
        .await
        .expect("insert today");
    assert_views_equal_rows(&store, "before any rollup").await;
    assert_eq!(store.rolled_through().await.expect("marks"), None);

    // The first run rolls every closed slot; today (and yesterday, until an
    // hour past midnight in the store's zone) stays with the rows.
    let policy = RollupPolicy::default();
    let mut progress = Vec::new();
    let report = store
        .roll_up(&policy, |done, total| progress.push((done, total)))
        .await
        .expect("roll up");
    let through = report.rolled_through.expect("slots rolled");
    let yesterday = slot(now - DAY);
    assert!(
        through == yesterday || through == yesterday.pred_opt().expect("a day"),
        "{through}"
    );
    assert_eq!(
        report.rolled,
        u64::try_from((through - slot(now - 10 * DAY)).num_days() + 1).expect("days")
    );
    assert_eq!(
        progress.last().map(|(done, total)| (*done, *total)),
        Some((report.rolled, report.rolled))
    );
    assert!(count_of(&store, "SELECT count() FROM ?.offence_day_rollup").await > 0);
    // Every month whose last day the run rolled is merged to one part.
    for month in &report.compacted {
        assert!(*month / 100 >= 2026 && (1..=12).contains(&(*month % 100)));
        for table in ["offence_day_rollup", "camera_day_rollup"] {
            let parts = crate::analyst_data::active_parts(&store, table, *month).await;
            assert_eq!(parts, 1, "{month} of {table} in one part");
        }
    }
    assert_views_equal_rows(&store, "after the first rollup").await;

    // The views read rolled slots from the rollups: a row landing in one
    // after its roll (a writer stopped mid-insert for days) is not seen
    // until the slot is taken again, and the comparison names the slot.
    let late_slot_time = now - 6 * DAY;
    store
        .insert_batch(&rows(90_000, 3, late_slot_time))
        .await
        .expect("late rows");
    let [totals, from_rows, _, _] = counts(&store).await;
    let sum = |counts: &[Count]| counts.iter().map(|count| count.events).sum::<u64>();
    assert_eq!(
        sum(&totals) + 3,
        sum(&from_rows),
        "a late row is not read from the rows"
    );
    let audit = cctv_cli::audit_rollups(&store, false).await.expect("audit");
    assert_eq!(audit.differences.len(), 2, "{audit:?}");
    for difference in &audit.differences {
        assert_eq!(difference.slot, slot(late_slot_time).to_string());
        assert_eq!(difference.rows, difference.rolled + 3, "{difference:?}");
    }
    assert!(audit.repaired.is_empty());
    // `cctvctl audit --repair`: the slot counted again from the rows.
    let repaired = cctv_cli::audit_rollups(&store, true).await.expect("repair");
    assert_eq!(repaired.repaired, vec![slot(late_slot_time).to_string()]);
    assert!(repaired.differences.is_empty(), "{repaired:?}");
    assert_eq!(repaired.rolled_through, Some(through.to_string()));
    assert_views_equal_rows(&store, "after taking the late slot again").await;

    // Late rows in the newest rolled slots are taken by the next run, and
    // rollers running at once (several aggregators) or again change nothing.
    store
        .insert_batch(&rows(91_000, 5, now - DAY - 7200))
        .await
        .expect("rows of a recent slot");
    let (first, second) = tokio::join!(
        store.roll_up(&policy, |_, _| {}),
        store.roll_up(&policy, |_, _| {})
    );
    let (first, second) = (first.expect("roll up"), second.expect("roll up"));
    assert!(first.retaken >= 1 && second.retaken >= 1);
    assert!(store
        .rollup_differences()
        .await
        .expect("compare")
        .is_empty());
    assert_views_equal_rows(&store, "after rollers at once").await;
    // Keys, not rows: a background merge may fold a key's repeated rows
    // (`ReplacingMergeTree`) between two plain counts.
    let rollup_keys = "SELECT count() FROM ?.offence_day_rollup FINAL";
    let rollup_rows = count_of(&store, rollup_keys).await;
    store
        .roll_up(&policy, |_, _| {})
        .await
        .expect("roll up again");
    assert_views_equal_rows(&store, "after another run").await;
    assert!(count_of(&store, rollup_keys).await >= rollup_rows);
    assert_eq!(
        store.rolled_through().await.expect("marks"),
        Some(through),
        "nothing closed since"
    );
    // Every count is the rows' count: 1,000 + 40 + 3 + 5 rows.
    let total = count_of(&store, "SELECT toUInt64(sum(events)) FROM ?.offence_totals").await;
    assert_eq!(total, 1_048);
}

/// Runs `sql` with the test database bound once per `?`.
async fn execute(store: &Store, sql: &str) {
    let database = clickhouse::sql::Identifier(&store.config().database);
    let mut query = store.client().query(sql);
    for _ in 0..sql.matches('?').count() {
        query = query.bind(database);
    }
    query.execute().await.expect(sql);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrading_from_utc_slots_keeps_the_views_exact_and_the_roller_takes_the_zoned_days() {
    let store = new_store("upgrade");
    assert_eq!(store.migrate_through(3).await.expect("migrate to 3"), 3);
    let now = now_secs();
    for day in 1..=6u32 {
        store
            .insert_batch(&rows(day * 1000, 100, now - day * DAY))
            .await
            .expect("insert");
    }
    // What the roller of a build at migration 3 wrote: UTC insert days up to
    // three days ago, rolled and marked.
    let through_utc = "toDate(now() - 3 * 86400, 'UTC')";
    for (table, keys) in [
        ("offence_rollup", "region, offence_type"),
        ("camera_rollup", "camera_id, region"),
    ] {
        execute(
            &store,
            &format!(
                "INSERT INTO ?.{table} SELECT toDate(inserted_at, 'UTC') AS slot, \
                 toDate(detected_at, 'Asia/Almaty') AS day, {keys}, count() \
                 FROM ?.offence_events WHERE slot <= {through_utc} GROUP BY slot, day, {keys}"
            ),
        )
        .await;
    }
    execute(
        &store,
        &format!("INSERT INTO ?.rollup_slots SELECT {through_utc}, 0, now()"),
    )
    .await;
    assert!(count_of(&store, "SELECT count() FROM ?.camera_rollup").await > 0);
    assert_views_equal_rows(&store, "at migration 3, rolled in UTC days").await;

    // The upgrade: the UTC rollups are gone, the views count the rows until
    // the roller has taken the zoned days.
    assert_eq!(store.migrate().await.expect("upgrade"), 4);
    let database = store.config().database.clone();
    let left: u64 = store
        .client()
        .query(
            "SELECT count() FROM system.tables WHERE database = ? \
             AND name IN ('offence_rollup', 'camera_rollup', 'rollup_slots')",
        )
        .bind(database.as_str())
        .fetch_one()
        .await
        .expect("tables");
    assert_eq!(left, 0, "migration 4 drops the UTC rollups");
    assert_eq!(store.rolled_through().await.expect("marks"), None);
    assert_views_equal_rows(&store, "right after the upgrade").await;

    let report = store
        .roll_up(&RollupPolicy::default(), |_, _| {})
        .await
        .expect("roll up");
    let through = report.rolled_through.expect("zoned days rolled");
    assert!(through >= slot(now - 2 * DAY), "{through}");
    assert!(store
        .rollup_differences()
        .await
        .expect("compare")
        .is_empty());
    assert_views_equal_rows(&store, "after the roller took the zoned days").await;
}

/// Sends `signal` to a process.
fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{signal} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aggregator_keeps_the_rollups_and_counts_a_late_batch_into_them() {
    // A ClickHouse of its own: the test stops it.
    let clickhouse = cctv_testkit::ClickHouseServer::start().expect("clickhouse-server must start");
    let mut stack = crate::harness::Stack::start().await;
    stack.clickhouse_url = clickhouse.http_url();
    let store = stack.store();
    store.migrate().await.expect("migrate");
    let now = now_secs();
    for day in 1..=5u32 {
        store
            .insert_batch(&rows(day * 1000, 50, now - day * DAY))
            .await
            .expect("insert past rows");
    }
    let mut config = stack.aggregator_config();
    config.rollup.interval = std::time::Duration::from_secs(1);
    config.rollup.margin = std::time::Duration::from_secs(10);
    let ingest = stack.start_ingest();
    let aggregator = stack.start_aggregator_with(config);

    // The owner of partition 0 rolls the past days up.
    cctv_testkit::poll(
        "the aggregator's first rollup",
        std::time::Duration::from_secs(60),
        std::time::Duration::from_millis(250),
        || async {
            match store.rolled_through().await {
                Ok(Some(_)) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let time = crate::harness::recent_time(0);
    let offences = |from: u32, count: u32| {
        (from..from + count)
            .map(|n| {
                let camera = format!("CAM-75-{}", 1 + n % 2);
                let payload = crate::harness::canonical(&camera, "traffic.speeding", &time, "");
                (format!("late-{n}"), payload)
            })
            .collect::<Vec<_>>()
    };
    stack.publish_many("gw-rollup", offences(0, 30)).await;
    crate::harness::wait_for_store_rows(&store, 250 + 30, String::new).await;

    // ClickHouse stops while a batch is on its way: the insert lands well
    // after the batch was sealed (half the margin), so its writer takes the
    // slot into the rollups again before acking. No roller counts that slot
    // (it is not closed), so its rows in the rollup come from that retake.
    let pid = clickhouse.pid().expect("clickhouse pid");
    signal(pid, "STOP");
    stack.publish_many("gw-rollup", offences(100, 20)).await;
    tokio::time::sleep(std::time::Duration::from_secs(8)).await;
    signal(pid, "CONT");
    crate::harness::wait_for_store_rows(&store, 250 + 50, String::new).await;
    cctv_testkit::poll(
        "the late batch's slot taken into the rollup",
        std::time::Duration::from_secs(30),
        std::time::Duration::from_millis(250),
        || async {
            let database = clickhouse::sql::Identifier(&store.config().database);
            let retaken = store
                .client()
                .query(
                    "SELECT toUInt64(count()) FROM ?.offence_day_rollup \
                     WHERE slot > (SELECT max(slot) FROM ?.rolled_days)",
                )
                .bind(database)
                .bind(database)
                .fetch_one::<u64>()
                .await
                .map_err(|error| error.to_string())?;
            if retaken > 0 {
                Ok(())
            } else {
                Err("no rollup row of an unrolled slot".to_string())
            }
        },
    )
    .await;
    ingest.stop().await;
    aggregator.stop().await;
    assert_views_equal_rows(&store, "after a late batch").await;
    let total = count_of(&store, "SELECT toUInt64(sum(events)) FROM ?.offence_totals").await;
    assert_eq!(total, 300);
}
