//! Known rows for the tests of the analysts' SQL (the cookbook in
//! `docs/analysts.md`, the Grafana dashboard, the chdb comparison), loaded
//! the way the aggregator writes them, and the helpers those tests share:
//! running SQL on 18.16, reading TabSeparated results, comparing cells.
//!
//! Sixteen detection days (2026-10-26 to 2026-11-10, in Asia/Almaty), four
//! regions, four offence types, three cameras per region (the third without
//! coordinates), repeat plates (some stored hashed, as with plate privacy
//! on), groups of detections that start exactly on, just before and just
//! after the edges of the week the tests query (2026-11-02 to 2026-11-08),
//! and around local midnight, where the UTC day differs. Every row goes in
//! through the fence as `EncodedRows` (RowBinary), one batch per region and
//! day, each with its own insert time, so detection -> insert latencies
//! vary; a batch of a stale lease epoch is dropped by the fence, and one
//! event is stored twice (an audit's double), as real data can be. The
//! slots (insert days) through 2026-11-04 are then rolled up, so
//! `offence_totals` and `camera_totals` answer from the rollups and the
//! rows at once.
//!
//! The expected numbers are computed from [`StoredRow`]s, the model of what
//! ClickHouse holds, never by ClickHouse.

use std::collections::BTreeMap;

use cctv_event::{OffenceEvent, RegionSource, EVENT_SCHEMA_VERSION};
use cctv_store::{rollup_sql, ClickHouseConfig, EncodedRows, Store};
use chrono::{DateTime, NaiveDate, Utc};
use clickhouse::sql::Identifier;

/// Offset of Asia/Almaty from UTC in 2026 (UTC+05:00 since 2024-03-01).
pub(crate) const ALMATY_OFFSET_SECONDS: i64 = 5 * 3600;

/// The stream every row was read from.
pub(crate) const SOURCE_STREAM: &str = "CCTV_EVENTS";

/// Regions of the data: code and the digits of its cameras' ids.
pub(crate) const REGIONS: [(&str, &str); 4] = [
    ("KZ-75", "75"),
    ("KZ-71", "71"),
    ("KZ-79", "79"),
    ("KZ-11", "11"),
];

/// Offence types of the data, with their families.
pub(crate) const OFFENCE_TYPES: [(&str, &str); 4] = [
    ("traffic.speeding", "traffic"),
    ("traffic.red_light", "traffic"),
    ("traffic.illegal_parking", "traffic"),
    ("public_order.littering", "public_order"),
];

/// Plates read by the cameras: clear, and hashed the way plate privacy
/// stores them (`hmac:` and 32 hex digits).
const PLATES: [&str; 5] = [
    "404ZXC16",
    "777ABA02",
    "hmac:9f2c1e7a5b3d4c6e8f0a1b2c3d4e5f60",
    "123KZA01",
    "hmac:0a1b2c3d4e5f60718293a4b5c6d7e8f9",
];

/// Days of data: the first is 2026-10-26.
const DAYS: u32 = 16;

/// Index of the first day of the queried week (2026-11-02).
pub(crate) const WEEK_FIRST_DAY: u32 = 7;

/// Index of the last day of the queried week (2026-11-08).
pub(crate) const WEEK_LAST_DAY: u32 = 13;

/// Seconds between two detections of one group.
const DETECTION_GAP: i64 = 7;

/// Legal category stored with an offence of `offence_type` (littering is
/// stored as criminal, so the category is not the family again).
pub(crate) fn legal_category_of(offence_type: &str) -> &'static str {
    if offence_type == "public_order.littering" {
        return "criminal";
    }
    "administrative"
}

/// Payload format of the messages of camera `camera_id`, by the camera's
/// number (its id's last part).
pub(crate) fn source_format_of(camera_id: &str) -> &'static str {
    match camera_id.rsplit('-').next() {
        Some("1") => "hikvision",
        Some("2") => "dahua",
        _ => "canonical",
    }
}

/// One stored row, as far as the analysts' queries read it.
#[derive(Debug, Clone)]
pub(crate) struct StoredRow {
    /// Detection time, UTC seconds.
    pub(crate) detected_at: i64,
    /// Insert time, UTC seconds.
    pub(crate) inserted_at: i64,
    /// Detection day in Asia/Almaty.
    pub(crate) day: NaiveDate,
    pub(crate) region: &'static str,
    pub(crate) offence_type: &'static str,
    pub(crate) offence_family: &'static str,
    pub(crate) camera_id: String,
    pub(crate) gateway_id: String,
    pub(crate) district: String,
    pub(crate) lat: Option<f64>,
    pub(crate) lon: Option<f64>,
    pub(crate) plate: &'static str,
    pub(crate) stream_seq: u64,
}

/// A batch as the aggregator sends it: the writer, its rows, the epoch.
pub(crate) struct Batch {
    pub(crate) writer: String,
    pub(crate) rows: EncodedRows,
}

/// The data set: batches to insert and the rows they leave stored.
pub(crate) struct AnalystData {
    pub(crate) batches: Vec<Batch>,
    /// Writer and newest epoch of each fence written before the inserts.
    pub(crate) fences: Vec<(String, u64)>,
    pub(crate) stored: Vec<StoredRow>,
}

/// Date of day index `day` (0 is 2026-10-26).
pub(crate) fn date_of(day: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 10, 26)
        .and_then(|first| first.checked_add_days(chrono::Days::new(u64::from(day))))
        .expect("a date")
}

/// UTC seconds of local midnight (Asia/Almaty) starting `date`.
pub(crate) fn almaty_midnight(date: NaiveDate) -> i64 {
    date.and_hms_opt(0, 0, 0)
        .expect("midnight")
        .and_utc()
        .timestamp()
        - ALMATY_OFFSET_SECONDS
}

/// The Asia/Almaty date of UTC seconds `utc`.
pub(crate) fn almaty_date(utc: i64) -> NaiveDate {
    DateTime::from_timestamp(utc + ALMATY_OFFSET_SECONDS, 0)
        .expect("a time")
        .date_naive()
}

/// Local time (seconds after Almaty midnight) of the first detection of the
/// group of `day` and `region`: a spread over the day, and the edges the
/// queries must get right.
fn group_start(day: u32, region: usize, events: i64) -> i64 {
    match (day, region) {
        // Starts exactly at the first second of the week.
        (WEEK_FIRST_DAY, 0) => 0,
        // Its last detection is the week's last second (23:59:59).
        (WEEK_LAST_DAY, 1) => 86_399 - (events - 1) * DETECTION_GAP,
        // The first second after the week.
        (14, 2) => 0,
        // Just before the week: the last minute of 2026-11-01.
        (6, 3) => 86_399 - (events - 1) * DETECTION_GAP - 20,
        // 00:10 local, still the previous day in UTC.
        (9, 1) | (10, 3) => 600,
        _ => {
            i64::from((day * 5 + region as u32 * 7) % 22 + 1) * 3600
                + i64::from((day + region as u32) % 60) * 60
        }
    }
}

/// Builds the data set.
pub(crate) fn analyst_data() -> AnalystData {
    let mut batches = Vec::new();
    let mut stored = Vec::new();
    let mut next_sequence = [1u64; REGIONS.len()];
    let mut event_number = 0u128;
    let epoch_of = |region: usize| 5 + region as u64;
    for day in 0..DAYS {
        for (region_index, (region, digits)) in REGIONS.iter().enumerate() {
            let region_number = region_index as u32;
            let events = i64::from(3 + (day * 3 + region_number * 5) % 6);
            let start = almaty_midnight(date_of(day)) + group_start(day, region_index, events);
            let writer = format!("p{region_index}");
            let mut rows = EncodedRows::new();
            let mut group = Vec::new();
            for k in 0..events {
                let k_number = k as u32;
                let detected_at = start + k * DETECTION_GAP;
                let (offence_type, offence_family) =
                    OFFENCE_TYPES[((day + region_number + k_number) % 4) as usize];
                let camera = (day + k_number) % 3 + 1;
                let plate = if k % 3 == 0 {
                    ""
                } else {
                    PLATES[((day * (region_number + 1) + k_number) % 5) as usize]
                };
                let (lat, lon) = if camera == 3 {
                    (None, None)
                } else {
                    (
                        Some(43.2381 + f64::from(region_number) * 1.1 + f64::from(camera) * 0.0137),
                        Some(76.8712 + f64::from(region_number) * 0.9 + f64::from(camera) * 0.0213),
                    )
                };
                let event = OffenceEvent {
                    schema_version: EVENT_SCHEMA_VERSION,
                    event_id: uuid::Uuid::from_u128(
                        0xa11a_0000_0000_0000_0000_0000_0000_0000 + event_number,
                    ),
                    offence_type: offence_type.into(),
                    offence_family: offence_family.into(),
                    legal_category: legal_category_of(offence_type).into(),
                    article: String::new(),
                    detected_at: DateTime::from_timestamp(detected_at, 250_000_000)
                        .expect("a time"),
                    device_time: None,
                    received_at: DateTime::from_timestamp(detected_at + 1, 0),
                    ingested_at: DateTime::from_timestamp(detected_at + 2, 0).expect("a time"),
                    clock_skew: false,
                    camera_id: format!("CAM-{digits}-{camera}"),
                    region: (*region).into(),
                    region_source: RegionSource::Registry,
                    district: format!("{region} district {}", camera % 2 + 1),
                    source_format: source_format_of(&format!("CAM-{digits}-{camera}")).into(),
                    gateway_id: format!("gw{}", camera % 2 + 1),
                    source_event_id: None,
                    confidence: Some(0.9),
                    confidence_raw: Some(0.9),
                    plate: (!plate.is_empty()).then(|| plate.to_string()),
                    speed_kmh: None,
                    speed_limit_kmh: None,
                    lat,
                    lon,
                    evidence_url: None,
                };
                event_number += 1;
                let stream_seq = next_sequence[region_index];
                next_sequence[region_index] += 1;
                rows.push(&event.view(), SOURCE_STREAM, &writer, stream_seq);
                group.push(StoredRow {
                    detected_at,
                    inserted_at: 0,
                    day: almaty_date(detected_at),
                    region,
                    offence_type,
                    offence_family,
                    camera_id: event.camera_id.clone(),
                    gateway_id: event.gateway_id.clone(),
                    district: event.district.clone(),
                    lat,
                    lon,
                    plate,
                    stream_seq,
                });
                // One event of one group is written again by a later batch
                // (a double, as the audit would report it).
                if (day, region_index, k) == (8, 1, 0) {
                    let again_seq = next_sequence[region_index] + 1_000;
                    let mut again = EncodedRows::new();
                    again.push(&event.view(), SOURCE_STREAM, &writer, again_seq);
                    let again_inserted = detected_at + 3_600;
                    again.seal(
                        u32::try_from(again_inserted).expect("2026"),
                        epoch_of(region_index),
                    );
                    batches.push(Batch {
                        writer: writer.clone(),
                        rows: again,
                    });
                    let mut double = group[group.len() - 1].clone();
                    double.stream_seq = again_seq;
                    double.inserted_at = again_inserted;
                    stored.push(double);
                }
            }
            let delay = 2 + i64::from((day * 7 + region_number * 11) % 40);
            let inserted_at = start + (events - 1) * DETECTION_GAP + delay;
            rows.seal(
                u32::try_from(inserted_at).expect("2026"),
                epoch_of(region_index),
            );
            for row in &mut group {
                row.inserted_at = inserted_at;
            }
            stored.extend(group);
            batches.push(Batch { writer, rows });
        }
    }
    // A stale owner of p0 (an older epoch): the fence drops its batch.
    let mut stale = EncodedRows::new();
    let mut stale_event = OffenceEvent::example();
    stale_event.event_id = uuid::Uuid::from_u128(0xdead_0000_0000_0000_0000_0000_0000_0001);
    stale_event.detected_at =
        DateTime::from_timestamp(almaty_midnight(date_of(8)) + 3_600, 0).expect("a time");
    stale.push(&stale_event.view(), SOURCE_STREAM, "p0", 9_999);
    stale.seal(
        u32::try_from(almaty_midnight(date_of(8)) + 3_700).expect("2026"),
        epoch_of(0) - 1,
    );
    batches.push(Batch {
        writer: "p0".into(),
        rows: stale,
    });
    let fences = (0..REGIONS.len())
        .map(|region| (format!("p{region}"), epoch_of(region)))
        .collect();
    AnalystData {
        batches,
        fences,
        stored,
    }
}

/// A fresh database on the shared 18.16 server, migrated, holding the data
/// set, written through the fence as the aggregator writes.
pub(crate) async fn load_into_clickhouse(prefix: &str, data: &AnalystData) -> Store {
    let clickhouse = cctv_testkit::shared_clickhouse().expect("clickhouse-server must start");
    let store = Store::new(&ClickHouseConfig {
        url: clickhouse.http_url(),
        database: cctv_testkit::unique_name(prefix),
        ..ClickHouseConfig::default()
    })
    .expect("settings");
    migrate_load_and_roll(&store, data).await;
    store
}

/// The last slot (insert day in Asia/Almaty) the tests roll up: the views then read
/// the rollups for the first half of the queried week's rows and the rows
/// themselves after it.
pub(crate) fn rolled_through() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 4).expect("a date")
}

/// Migrates the database of `store`, loads the data set and rolls up the
/// slots through [`rolled_through`] (twice, as a retake does).
pub(crate) async fn migrate_load_and_roll(store: &Store, data: &AnalystData) {
    store.migrate().await.expect("migrate");
    load_rows(store, data).await;
    let first = data
        .stored
        .iter()
        .map(|row| almaty_date(row.inserted_at))
        .min()
        .expect("rows");
    roll_and_mark(store, first, rolled_through()).await;
    // October is rolled up completely: merged to one part per rollup, as
    // the roller does with every completed month.
    store.compact_month(202_610).await.expect("merge October");
    for table in ["offence_day_rollup", "camera_day_rollup"] {
        let parts = active_parts(store, table, 202_610).await;
        assert_eq!(parts, 1, "October of {table} in one part");
    }
    store
        .roll_slots(first, rolled_through())
        .await
        .expect("take the rolled slots again");
    assert_eq!(
        store.rolled_through().await.expect("read the newest mark"),
        Some(rolled_through())
    );
    assert_eq!(
        store.rollup_differences().await.expect("compare"),
        Vec::new(),
        "every rolled slot counts its rows"
    );
}

/// Active parts of `month` (YYYYMM) of `table` in the store's database.
pub(crate) async fn active_parts(store: &Store, table: &str, month: u32) -> u64 {
    store
        .client()
        .query(
            "SELECT count() FROM system.parts \
             WHERE database = ? AND table = ? AND partition = toString(?) AND active",
        )
        .bind(store.config().database.as_str())
        .bind(table)
        .bind(month)
        .fetch_one()
        .await
        .expect("parts")
}

/// Rolls up the slots `first..=last` and marks them, with the store's own
/// statements and values bound as `Store::roll_up` binds them.
pub(crate) async fn roll_and_mark(store: &Store, first: NaiveDate, last: NaiveDate) {
    store.roll_slots(first, last).await.expect("roll up");
    let database = Identifier(&store.config().database);
    let day = |day: NaiveDate| day.format("%Y-%m-%d").to_string();
    store
        .client()
        .query(rollup_sql::MARK_SLOTS)
        .bind(database)
        .bind(day(first))
        .bind(u64::try_from((last - first).num_days() + 1).expect("in order"))
        .bind(database)
        .bind(day(first))
        .bind(day(last))
        .execute()
        .await
        .expect("mark the rolled slots");
}

/// Writes the fences, then every batch through `insert_fenced`.
pub(crate) async fn load_rows(store: &Store, data: &AnalystData) {
    for (writer, epoch) in &data.fences {
        store
            .fence(writer, *epoch, "analyst-test")
            .await
            .expect("fence");
    }
    for batch in &data.batches {
        store
            .insert_fenced(&[(batch.writer.as_str(), &batch.rows)])
            .await
            .expect("insert");
    }
    assert_eq!(
        store.count_events().await.expect("count"),
        data.stored.len() as u64,
        "every batch but the stale one is stored"
    );
}

/// Runs `sql` on the 18.16 database of `store` and returns its result as
/// TabSeparated text (no `?` placeholders: the text is sent as it is).
pub(crate) async fn query_tsv(store: &Store, sql: &str) -> Result<String, String> {
    let mut cursor = store
        .client()
        .query_raw(sql)
        .fetch_bytes("TabSeparated")
        .map_err(|error| error.to_string())?;
    let bytes = cursor.collect().await.map_err(|error| error.to_string())?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// One expected cell of a result.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cell {
    /// Text, compared exactly.
    Text(String),
    /// An integer, compared exactly.
    Int(i64),
    /// A float, compared within 1e-6 (relative).
    Float(f64),
    /// SQL NULL (`\N`).
    Null,
}

impl From<&str> for Cell {
    fn from(text: &str) -> Self {
        Cell::Text(text.to_string())
    }
}

impl From<String> for Cell {
    fn from(text: String) -> Self {
        Cell::Text(text)
    }
}

/// `Cell::Int` from each integer type the expectations use.
macro_rules! int_cells {
    ($($int:ty),*) => {
        $(impl From<$int> for Cell {
            fn from(value: $int) -> Self {
                Cell::Int(i64::try_from(value).expect("small"))
            }
        })*
    };
}
int_cells!(u64, i64, usize);

impl From<f64> for Cell {
    fn from(value: f64) -> Self {
        Cell::Float(value)
    }
}

impl From<NaiveDate> for Cell {
    fn from(value: NaiveDate) -> Self {
        Cell::Text(value.format("%Y-%m-%d").to_string())
    }
}

/// Builds a row of expected cells: `row![a, b, c]`.
macro_rules! row {
    ($($cell:expr),* $(,)?) => {
        vec![$($crate::analyst_data::Cell::from($cell)),*]
    };
}
pub(crate) use row;

/// The lines of a TabSeparated result, split into cells.
pub(crate) fn parse_tsv(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .map(|line| line.split('\t').map(str::to_string).collect())
        .collect()
}

/// Whether one actual cell is the expected one.
fn cell_matches(actual: &str, expected: &Cell) -> bool {
    match expected {
        Cell::Text(text) => actual == text,
        Cell::Int(value) => actual.parse::<i64>().ok() == Some(*value),
        Cell::Float(value) => actual
            .parse::<f64>()
            .is_ok_and(|actual| (actual - value).abs() <= 1e-6 * value.abs().max(1.0)),
        Cell::Null => actual == "\\N",
    }
}

/// Fails with both tables unless `actual` (TabSeparated) has exactly the
/// expected rows, in order.
pub(crate) fn assert_rows(what: &str, actual: &str, expected: &[Vec<Cell>]) {
    let rows = parse_tsv(actual);
    let matches = rows.len() == expected.len()
        && rows.iter().zip(expected).all(|(row, expected)| {
            row.len() == expected.len()
                && row
                    .iter()
                    .zip(expected)
                    .all(|(actual, expected)| cell_matches(actual, expected))
        });
    assert!(
        matches,
        "{what}: the result differs from the rows the test inserted\nactual:\n{actual}\nexpected:\n{}",
        expected
            .iter()
            .map(|row| format!("{row:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// `quantileExact(level)` as ClickHouse computes it: the element at
/// `floor(level * n)` of the sorted values (the last one for level 1).
pub(crate) fn quantile_exact(values: &mut [i64], level: f64) -> i64 {
    values.sort_unstable();
    let index = if level < 1.0 {
        (level * values.len() as f64) as usize
    } else {
        values.len() - 1
    };
    values[index.min(values.len() - 1)]
}

/// UTC seconds as ClickHouse prints a `DateTime` in Asia/Almaty.
pub(crate) fn almaty_text(utc: i64) -> String {
    DateTime::<Utc>::from_timestamp(utc + ALMATY_OFFSET_SECONDS, 0)
        .expect("a time")
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// Counts of `rows` by `key`, in key order.
pub(crate) fn count_by<'a, K: Ord>(
    rows: impl Iterator<Item = &'a StoredRow>,
    key: impl Fn(&StoredRow) -> K,
) -> BTreeMap<K, u64> {
    let mut counts = BTreeMap::new();
    for row in rows {
        *counts.entry(key(row)).or_insert(0) += 1;
    }
    counts
}

/// Sorted by count (most first), then by key.
pub(crate) fn by_count_desc<K: Ord + Clone>(counts: &BTreeMap<K, u64>) -> Vec<(K, u64)> {
    let mut sorted: Vec<(K, u64)> = counts.iter().map(|(k, n)| (k.clone(), *n)).collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    sorted
}

/// Per region: offences, then the median, 95th percentile and maximum of
/// `inserted_at - detected_at` (the freshness queries of the cookbook and
/// the dashboard).
pub(crate) fn freshness_by_region<'a>(rows: impl Iterator<Item = &'a StoredRow>) -> Vec<Vec<Cell>> {
    let mut latencies: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for row in rows {
        latencies
            .entry(row.region)
            .or_default()
            .push(row.inserted_at - row.detected_at);
    }
    latencies
        .into_iter()
        .map(|(region, mut values)| {
            let max = values.iter().copied().max().unwrap_or_default();
            row![
                region,
                values.len(),
                quantile_exact(&mut values, 0.5),
                quantile_exact(&mut values, 0.95),
                max
            ]
        })
        .collect()
}
