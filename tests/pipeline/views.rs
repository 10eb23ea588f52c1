//! The analysts' views of `cctvctl` (`totals --by`, `top`, `trend`, each
//! output format and language) against a real ClickHouse holding known rows:
//! partly rolled up (read through `offence_totals` and `camera_totals`),
//! partly inserted after the roll (read from the rows). Every number is
//! checked against a model of the inserted rows, computed here, never by
//! ClickHouse. The binary runs as analysts run it, with
//! `CCTV_CLICKHOUSE_URL` and `CCTV_CLICKHOUSE_DATABASE`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use cctv_event::OffenceEvent;
use cctv_store::{
    ClickHouseConfig, Dimension, EventRow, RollupPolicy, Store, StreamPosition, TopSubject,
    TotalsFilter,
};
use cctv_testkit::{shared_clickhouse, unique_name};
use chrono::{DateTime, Datelike as _, Days, NaiveDate};

/// Offset of Asia/Almaty from UTC (UTC+05:00 since 2024-03-01).
const ALMATY_OFFSET_SECONDS: i64 = 5 * 3600;
/// First detection day of the data.
pub(crate) const FIRST_DAY: (i32, u32, u32) = (2026, 11, 1);
/// Days of data.
pub(crate) const DAYS: u64 = 14;
/// Offences per day (before the late ones).
const PER_DAY: u64 = 45;

/// Regions of the data (and `unknown`).
const REGIONS: [&str; 6] = ["KZ-75", "KZ-71", "KZ-79", "KZ-35", "KZ-63", "unknown"];
/// Offence types, with their legal category.
const TYPES: [(&str, &str); 7] = [
    ("traffic.speeding", "administrative"),
    ("traffic.red_light", "administrative"),
    ("traffic.illegal_parking", "administrative"),
    ("traffic.no_seat_belt", "administrative"),
    ("traffic.phone_use", "administrative"),
    ("public_order.littering", "administrative"),
    ("public_order.vandalism", "criminal"),
];
const GATEWAYS: [&str; 3] = ["gw-north", "gw-south", "gw-east"];
const FORMATS: [&str; 4] = ["hikvision", "dahua", "canonical", "frigate"];
/// Plates: clear, and hashed as plate privacy stores them.
const PLATES: [&str; 5] = [
    "404ZXC16",
    "hmac:9f2c1e7a5b3d4c6e8f0a1b2c3d4e5f60",
    "777ABA02",
    "hmac:0a1b2c3d4e5f60718293a4b5c6d7e8f9",
    "",
];

/// One stored offence, as the views read it.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub(crate) day: NaiveDate,
    pub(crate) detected_at: i64,
    pub(crate) inserted_at: i64,
    pub(crate) region: &'static str,
    pub(crate) offence_type: &'static str,
    pub(crate) category: &'static str,
    pub(crate) camera: String,
    pub(crate) gateway: &'static str,
    pub(crate) format: &'static str,
    pub(crate) plate: &'static str,
    pub(crate) place: Option<(f64, f64)>,
}

impl Stored {
    /// The key of `dimension`, as `cctvctl` prints it.
    pub(crate) fn key(&self, dimension: Dimension) -> String {
        match dimension {
            Dimension::Day => self.day.to_string(),
            Dimension::Week => {
                let back = u64::from(self.day.weekday().num_days_from_monday());
                (self.day - Days::new(back)).to_string()
            }
            Dimension::Month => self.day.format("%Y-%m").to_string(),
            Dimension::Region => self.region.into(),
            Dimension::OffenceType => self.offence_type.into(),
            Dimension::Family => self.offence_type.split('.').next().unwrap().into(),
            Dimension::LegalCategory => self.category.into(),
            Dimension::Camera => self.camera.clone(),
            Dimension::Gateway => self.gateway.into(),
            Dimension::Format => self.format.into(),
        }
    }
}

/// A deterministic sequence (a linear congruential generator).
struct Sequence(u64);

impl Sequence {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below
    }
}

pub(crate) fn first_day() -> NaiveDate {
    NaiveDate::from_ymd_opt(FIRST_DAY.0, FIRST_DAY.1, FIRST_DAY.2).unwrap()
}

/// The camera `n`: its id, region, gateway, format and place (every fourth
/// has no coordinates). Two cameras share each 0.01 degree place.
fn camera(
    n: u64,
) -> (
    String,
    &'static str,
    &'static str,
    &'static str,
    Option<(f64, f64)>,
) {
    let region = REGIONS[(n % REGIONS.len() as u64) as usize];
    let place =
        (n % 4 != 3).then_some((43.2 + (n / 2) as f64 * 0.11, 76.9 + (n / 2) as f64 * 0.07));
    (
        format!("CAM-{n:02}"),
        region,
        GATEWAYS[(n % 3) as usize],
        FORMATS[(n % 4) as usize],
        place,
    )
}

/// The offences of the data: `PER_DAY` a day (more on some days, so the
/// trend changes), detected over each whole Almaty day.
pub(crate) fn offences() -> Vec<Stored> {
    let mut sequence = Sequence(0x5eed);
    let mut out = Vec::new();
    for day_index in 0..DAYS {
        let day = first_day() + Days::new(day_index);
        let midnight =
            day.and_hms_opt(0, 0, 0).unwrap().and_utc().timestamp() - ALMATY_OFFSET_SECONDS;
        let count = PER_DAY + (day_index % 5) * 6;
        for _ in 0..count {
            // Cameras with low numbers are busier: a clear top list.
            let camera_number = sequence.next(14).min(sequence.next(14));
            let (camera, region, gateway, format, place) = self::camera(camera_number);
            let (offence_type, category) =
                TYPES[sequence.next(100).min(sequence.next(100)) as usize % TYPES.len()];
            let detected_at = midnight + i64::try_from(sequence.next(86_400)).unwrap();
            out.push(Stored {
                day,
                detected_at,
                inserted_at: 0,
                region,
                offence_type,
                category,
                camera,
                gateway,
                format,
                plate: PLATES[sequence.next(PLATES.len() as u64) as usize],
                place,
            });
        }
    }
    out
}

fn to_row(stored: &Stored, number: u64) -> EventRow {
    let event = OffenceEvent {
        event_id: uuid::Uuid::from_u128(
            0x7715_0000_0000_0000_0000_0000_0000_0000 | u128::from(number),
        ),
        offence_type: stored.offence_type.into(),
        offence_family: stored.key(Dimension::Family),
        legal_category: stored.category.into(),
        region: stored.region.into(),
        camera_id: stored.camera.clone(),
        gateway_id: stored.gateway.into(),
        source_format: stored.format.into(),
        plate: (!stored.plate.is_empty()).then(|| stored.plate.to_string()),
        lat: stored.place.map(|(lat, _)| lat),
        lon: stored.place.map(|(_, lon)| lon),
        district: format!("district of {}", stored.camera),
        detected_at: DateTime::from_timestamp(stored.detected_at, 0).unwrap(),
        ..OffenceEvent::example()
    };
    let position = StreamPosition {
        stream_seq: number + 1,
        batch_first_seq: number + 1,
        batch_rows: 1,
    };
    EventRow::from_event(
        event,
        "CCTV_EVENTS@1",
        "p0",
        position,
        u32::try_from(stored.inserted_at).unwrap(),
    )
}

/// A fresh database holding [`offences`]: each day's offences inserted in
/// one batch a while after the day's last detection, every closed insert
/// day rolled up, then a few late offences of old days inserted now (read
/// from the rows by the views). Returns the store and the model.
pub(crate) async fn loaded_store(prefix: &str) -> (Store, Vec<Stored>) {
    let clickhouse = shared_clickhouse().expect("clickhouse-server must start");
    let store = Store::new(&ClickHouseConfig {
        url: clickhouse.http_url(),
        database: unique_name(prefix),
        ..ClickHouseConfig::default()
    })
    .expect("settings");
    store.migrate().await.expect("migrate");
    let mut model = offences();
    let mut by_day: BTreeMap<NaiveDate, Vec<usize>> = BTreeMap::new();
    for (index, stored) in model.iter().enumerate() {
        by_day.entry(stored.day).or_default().push(index);
    }
    for (day_index, indexes) in by_day.values().enumerate() {
        let last = indexes.iter().map(|&i| model[i].detected_at).max().unwrap();
        let inserted_at = last + 40 + 13 * i64::try_from(day_index).unwrap();
        for &index in indexes {
            model[index].inserted_at = inserted_at;
        }
        let rows: Vec<EventRow> = indexes
            .iter()
            .map(|&index| to_row(&model[index], index as u64))
            .collect();
        store.insert_batch(&rows).await.expect("insert a day");
    }
    let report = store
        .roll_up(&RollupPolicy::default(), |_, _| {})
        .await
        .expect("roll up");
    assert!(
        report.rolled_through.is_some(),
        "the old days are rolled up"
    );
    // Late offences: detected on old days, inserted after the roll.
    let now = chrono::Utc::now().timestamp();
    let mut late = Vec::new();
    for n in 0..9u64 {
        let mut stored = model[usize::try_from(n * 37).unwrap()].clone();
        stored.inserted_at = now;
        stored.camera = "CAM-LATE".into();
        late.push(to_row(&stored, 100_000 + n));
        model.push(stored);
    }
    store.insert_batch(&late).await.expect("late rows");
    (store, model)
}

/// `key1 key2 -> events` of the model under `keep`.
fn model_counts(
    model: &[Stored],
    first: Dimension,
    second: Option<Dimension>,
    keep: impl Fn(&Stored) -> bool,
) -> BTreeMap<(String, String), u64> {
    let mut counts = BTreeMap::new();
    for stored in model.iter().filter(|s| keep(s)) {
        let key2 = second.map_or_else(String::new, |d| stored.key(d));
        *counts.entry((stored.key(first), key2)).or_insert(0) += 1;
    }
    counts
}

async fn store_counts(
    store: &Store,
    first: Dimension,
    second: Option<Dimension>,
    filter: &TotalsFilter,
) -> BTreeMap<(String, String), u64> {
    store
        .grouped(first, second, filter)
        .await
        .unwrap_or_else(|error| panic!("{first:?} x {second:?}: {error}"))
        .into_iter()
        .map(|row| ((row.key1, row.key2), row.events))
        .collect()
}

fn day(text: &str) -> NaiveDate {
    NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
}

/// `target/<profile>/cctvctl`.
pub(crate) fn cctvctl_binary() -> PathBuf {
    let test_executable = std::env::current_exe().expect("path of the test executable");
    let binary = test_executable
        .parent()
        .and_then(std::path::Path::parent)
        .expect("test executable inside target/<profile>/deps")
        .join("cctvctl");
    assert!(
        binary.is_file(),
        "{} is missing: build it with `cargo build -p cctv-cli`",
        binary.display()
    );
    binary
}

/// Runs `cctvctl` against the store's database; returns stdout and stderr,
/// asserting success.
pub(crate) fn cctvctl(store: &Store, args: &[&str]) -> (String, String) {
    let output = Command::new(cctvctl_binary())
        .args(args)
        .env_remove("CCTV_CONFIG")
        .env_remove("CCTV_CLICKHOUSE_USER")
        .env_remove("CCTV_CLICKHOUSE_PASSWORD")
        .env("CCTV_CLICKHOUSE_URL", store.url())
        .env("CCTV_CLICKHOUSE_DATABASE", &store.config().database)
        .env("COLUMNS", "100")
        .output()
        .expect("cctvctl runs");
    let stdout = String::from_utf8(output.stdout).expect("UTF-8 stdout");
    let stderr = String::from_utf8(output.stderr).expect("UTF-8 stderr");
    assert!(
        output.status.success(),
        "cctvctl {args:?}: {stderr}\n{stdout}"
    );
    (stdout, stderr)
}

fn numbers(line: &str) -> Vec<u64> {
    line.split_whitespace()
        .filter_map(|word| word.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dimension_and_pair_counts_what_the_rows_hold_through_the_rollups() {
    let (store, model) = loaded_store("views_grouped").await;
    let (from, to) = (day("2026-11-03"), day("2026-11-09"));
    let filter = TotalsFilter {
        from_day: Some(from),
        to_day: Some(to),
        regions: vec!["KZ-75".into(), "KZ-35".into(), "unknown".into()],
        ..TotalsFilter::default()
    };
    let in_filter = |s: &Stored| {
        s.day >= from && s.day <= to && ["KZ-75", "KZ-35", "unknown"].contains(&s.region)
    };
    for first in Dimension::ALL {
        for second in std::iter::once(None).chain(Dimension::ALL.map(Some)) {
            if second == Some(first) {
                continue;
            }
            assert_eq!(
                store_counts(&store, first, second, &TotalsFilter::default()).await,
                model_counts(&model, first, second, |_| true),
                "{first:?} x {second:?}"
            );
            assert_eq!(
                store_counts(&store, first, second, &filter).await,
                model_counts(&model, first, second, in_filter),
                "{first:?} x {second:?} filtered"
            );
        }
    }
    // A type filter and a gateway filter (the views lack gateways).
    let filter = TotalsFilter {
        offence_types: vec!["public_order.vandalism".into()],
        gateway_prefix: Some("gw-s".into()),
        ..TotalsFilter::default()
    };
    assert_eq!(
        store_counts(&store, Dimension::Camera, Some(Dimension::Format), &filter).await,
        model_counts(&model, Dimension::Camera, Some(Dimension::Format), |s| {
            s.offence_type == "public_order.vandalism" && s.gateway == "gw-south"
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_prints_the_compact_pivot_csv_json_and_every_language() {
    let (store, model) = loaded_store("views_cli").await;
    let total = model.len() as u64;

    // The default view: regions x the largest types, `other`, totals; fits 100 columns.
    let (table, _) = cctvctl(&store, &["totals"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines.iter().all(|line| line.chars().count() <= 100),
        "{table}"
    );
    assert!(table.contains("other ("), "{table}");
    let last = numbers(lines.last().unwrap());
    assert!(lines.last().unwrap().starts_with("total"), "{table}");
    assert_eq!(last.last(), Some(&total), "{table}");
    assert_eq!(last.iter().rev().skip(1).sum::<u64>(), total, "{table}");
    let by_region = model_counts(&model, Dimension::Region, None, |_| true);
    for ((region, _), events) in &by_region {
        let line = lines
            .iter()
            .find(|line| line.starts_with(region.as_str()))
            .unwrap_or_else(|| panic!("{region} missing:\n{table}"));
        assert_eq!(numbers(line).last(), Some(events), "{line}");
    }
    assert!(table.contains("KZ-35 Karaganda Region"), "{table}");
    // The demo's form: `totals --expect` prints the same table once, verified
    // in the unit tests; here the languages of the names.
    let (kazakh, _) = cctvctl(&store, &["totals", "--lang", "kk"]);
    assert!(kazakh.contains("KZ-35 Қарағанды облысы"), "{kazakh}");
    assert!(kazakh.contains("Жылдамдықты"), "{kazakh}");

    // CSV in Russian, two dimensions, filtered by days and regions.
    let (csv, _) = cctvctl(
        &store,
        &[
            "totals",
            "--by",
            "day,region",
            "--format",
            "csv",
            "--lang",
            "ru",
            "--from",
            "2026-11-05",
            "--to",
            "2026-11-08",
            "--region",
            "KZ-75",
            "--region",
            "KZ-ALA",
            "--region",
            "KZ-63",
        ],
    );
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("day,region,region_name,events"));
    let mut from_csv = BTreeMap::new();
    for line in lines {
        let fields: Vec<&str> = line.split(',').collect();
        let name = if fields[1] == "KZ-75" {
            "Алматы"
        } else {
            "Восточно-Казахстанская область"
        };
        assert_eq!(fields[2], name, "{line}");
        from_csv.insert(
            (fields[0].to_string(), fields[1].to_string()),
            fields[3].parse::<u64>().unwrap(),
        );
    }
    let expected = model_counts(&model, Dimension::Day, Some(Dimension::Region), |s| {
        s.day >= day("2026-11-05")
            && s.day <= day("2026-11-08")
            && ["KZ-75", "KZ-63"].contains(&s.region)
    });
    assert_eq!(from_csv, expected);

    // JSON by gateway and format, one type.
    let (json, _) = cctvctl(
        &store,
        &[
            "totals",
            "--by",
            "gateway,format",
            "--type",
            "traffic.red_light",
            "--format",
            "json",
        ],
    );
    let json: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    let from_json: BTreeMap<(String, String), u64> = json
        .iter()
        .map(|item| {
            (
                (
                    item["gateway_id"].as_str().unwrap().to_string(),
                    item["source_format"].as_str().unwrap().to_string(),
                ),
                item["events"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        from_json,
        model_counts(&model, Dimension::Gateway, Some(Dimension::Format), |s| {
            s.offence_type == "traffic.red_light"
        })
    );

    // One dimension: months, categories, with shares.
    let (table, _) = cctvctl(&store, &["totals", "--by", "category"]);
    let criminal = model.iter().filter(|s| s.category == "criminal").count() as u64;
    let line = table
        .lines()
        .find(|l| l.starts_with("criminal"))
        .expect(&table);
    assert_eq!(numbers(line), vec![criminal], "{table}");
    assert!(table.lines().last().unwrap().contains("100.0%"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_and_trend_match_the_rows() {
    let (store, model) = loaded_store("views_top").await;
    let (from, to) = (day("2026-11-08"), day("2026-11-14"));

    // Top cameras of a range, largest first, ties by id.
    let (json, _) = cctvctl(
        &store,
        &[
            "top",
            "cameras",
            "--from",
            "2026-11-08",
            "--to",
            "2026-11-14",
            "--limit",
            "5",
            "--format",
            "json",
        ],
    );
    let json: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    let mut expected: Vec<(u64, String)> = model_counts(&model, Dimension::Camera, None, |s| {
        s.day >= from && s.day <= to
    })
    .into_iter()
    .map(|((camera, _), events)| (events, camera))
    .collect();
    expected.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    expected.truncate(5);
    let got: Vec<(u64, String)> = json
        .iter()
        .map(|item| {
            (
                item["events"].as_u64().unwrap(),
                item["camera_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(got, expected);

    // Every subject filtered by region and type (the region filter must
    // read the rows' region, not the ranking's).
    let filter = TotalsFilter {
        regions: vec!["KZ-75".into(), "unknown".into()],
        offence_types: vec!["traffic.speeding".into(), "traffic.red_light".into()],
        ..TotalsFilter::default()
    };
    let keep = |s: &Stored| {
        ["KZ-75", "unknown"].contains(&s.region)
            && ["traffic.speeding", "traffic.red_light"].contains(&s.offence_type)
    };
    for (subject, dimension) in [
        (TopSubject::Cameras, Some(Dimension::Camera)),
        (TopSubject::Plates, None),
        (TopSubject::Places, None),
    ] {
        let rows = store.top(subject, &filter, 100).await.expect("top");
        let counted: u64 = rows.iter().map(|row| row.events).sum();
        let expected = model
            .iter()
            .filter(|s| keep(s))
            .filter(|s| match subject {
                TopSubject::Plates => !s.plate.is_empty(),
                TopSubject::Places => s.place.is_some(),
                TopSubject::Cameras => true,
            })
            .count() as u64;
        assert_eq!(counted, expected, "{subject:?}");
        assert!(rows
            .iter()
            .all(|row| ["KZ-75", "unknown", "several"].contains(&row.region.as_str())));
        if let Some(dimension) = dimension {
            let by_camera: BTreeMap<(String, String), u64> = rows
                .iter()
                .map(|row| ((row.key.clone(), String::new()), row.events))
                .collect();
            assert_eq!(by_camera, model_counts(&model, dimension, None, keep));
        }
    }

    // Plates: hashed ones said to be hashes.
    let (csv, note) = cctvctl(
        &store,
        &["top", "plates", "--format", "csv", "--limit", "10"],
    );
    let mut plates: BTreeMap<&str, u64> = BTreeMap::new();
    for stored in model.iter().filter(|s| !s.plate.is_empty()) {
        *plates.entry(stored.plate).or_insert(0) += 1;
    }
    let from_csv: BTreeMap<String, u64> = csv
        .lines()
        .skip(1)
        .map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            (fields[1].to_string(), fields[6].parse().unwrap())
        })
        .collect();
    assert_eq!(
        from_csv,
        plates
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect::<BTreeMap<_, _>>()
    );
    assert!(note.contains("keyed hashes (plate privacy on)"), "{note}");

    // Places: 0.01 degree cells, rows without coordinates left out.
    let places = store
        .top(TopSubject::Places, &TotalsFilter::default(), 100)
        .await
        .expect("places");
    let with_place = model.iter().filter(|s| s.place.is_some()).count() as u64;
    assert_eq!(places.iter().map(|row| row.events).sum::<u64>(), with_place);
    assert!(places
        .iter()
        .all(|row| row.cameras >= 1 && row.key.contains(',')));
    assert!(
        places.iter().any(|row| row.cameras >= 2),
        "two cameras share a place"
    );

    // Trend: every day of the range beside the week before.
    let (json, _) = cctvctl(
        &store,
        &[
            "trend",
            "--from",
            "2026-11-08",
            "--to",
            "2026-11-14",
            "--region",
            "KZ-75",
            "--format",
            "json",
        ],
    );
    let trend: serde_json::Value = serde_json::from_str(&json).unwrap();
    let per_day = model_counts(&model, Dimension::Day, None, |s| s.region == "KZ-75");
    let count = |day: &str| {
        per_day
            .get(&(day.to_string(), String::new()))
            .copied()
            .unwrap_or(0)
    };
    let days = trend["days"].as_array().unwrap();
    assert_eq!(days.len(), 7);
    for item in days {
        let day = item["day"].as_str().unwrap();
        let previous_day = item["previous_day"].as_str().unwrap();
        assert_eq!(
            (
                item["events"].as_u64().unwrap(),
                item["previous_events"].as_u64().unwrap()
            ),
            (count(day), count(previous_day)),
            "{item}"
        );
    }
    let total: u64 = (8..=14).map(|d| count(&format!("2026-11-{d:02}"))).sum();
    let previous: u64 = (1..=7).map(|d| count(&format!("2026-11-{d:02}"))).sum();
    assert_eq!(
        (trend["total"].as_u64(), trend["previous_total"].as_u64()),
        (Some(total), Some(previous))
    );
    let (table, _) = cctvctl(
        &store,
        &["trend", "--from", "2026-11-08", "--to", "2026-11-14"],
    );
    assert_eq!(table.lines().count(), 1 + 7 + 1, "{table}");
    assert!(table.contains('█'), "{table}");
}
