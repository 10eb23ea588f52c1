//! `cctvctl report` rendered by a real browser: the report of known rows
//! (partly rolled up, partly late) is written by the binary, opened from disk
//! in headless Chromium (Debian's `chromium`, installed by
//! `scripts/install-chromium.sh`) with the network cut off, screenshotted,
//! and its DOM as Chromium parsed it read back: the map's 20 regions, the
//! bars, the trend's points, the top cameras, freshness and the total are
//! there, and every number equals what ClickHouse answers to this test's own
//! SQL over `offence_events`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use cctv_store::Store;
use clickhouse::sql::Identifier;
use serde::Deserialize;

use crate::views::{cctvctl, loaded_store};

/// Size of the screenshot.
const WINDOW: (u32, u32) = (1200, 1800);

/// Debian's chromium, or a failure naming the installer (never a skip).
fn chromium() -> PathBuf {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("chromium"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "chromium is not installed: the report test renders the report in headless \
                 Chromium; run scripts/install-chromium.sh (apt-get install chromium)"
            )
        })
}

/// Runs headless Chromium on the file with `mode` (`--screenshot=...` or
/// `--dump-dom`), no network; returns stdout.
fn run_chromium(file: &Path, mode: &str) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let output = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            // Every request other than the file itself fails: the report
            // must need nothing from a network.
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--proxy-server=127.0.0.1:9",
            &format!("--user-data-dir={}", profile.path().display()),
            &format!("--window-size={},{}", WINDOW.0, WINDOW.1),
            mode,
            &format!("file://{}", file.display()),
        ])
        .output()
        .expect("chromium runs");
    assert!(
        output.status.success(),
        "chromium {mode}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 DOM")
}

/// The attributes of every `<tag ...>` of `html` that has `attribute`.
fn elements_with(html: &str, tag: &str, attribute: &str) -> Vec<BTreeMap<String, String>> {
    let opening = format!("<{tag} ");
    let mut found = Vec::new();
    for piece in html.split(&opening).skip(1) {
        let Some(end) = piece.find('>') else { continue };
        let mut attributes = BTreeMap::new();
        let mut rest = &piece[..end];
        while let Some(eq) = rest.find("=\"") {
            let name = rest[..eq].trim().to_string();
            let value_start = eq + 2;
            let Some(length) = rest[value_start..].find('"') else {
                break;
            };
            attributes.insert(name, rest[value_start..value_start + length].to_string());
            rest = &rest[value_start + length + 1..];
        }
        if attributes.contains_key(attribute) {
            found.push(attributes);
        }
    }
    found
}

/// `key -> data-events` of the elements.
fn events_by(elements: &[BTreeMap<String, String>], key: &str) -> BTreeMap<String, u64> {
    elements
        .iter()
        .map(|element| {
            (
                element[key].clone(),
                element["data-events"].parse().expect("a count"),
            )
        })
        .collect()
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct KeyCount {
    key: String,
    events: u64,
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct Latency {
    events: u64,
    median: i64,
    p90: i64,
    max: i64,
}

const FROM: &str = "2026-11-01";
const TO: &str = "2026-11-14";

/// `sql` with the database, [`FROM`] and [`TO`] bound to its first three `?`.
fn in_range(store: &Store, sql: &str) -> clickhouse::query::Query {
    store
        .client()
        .query(sql)
        .bind(Identifier(&store.config().database))
        .bind(FROM)
        .bind(TO)
}

/// `key -> count()` of the rows detected in the range, by ClickHouse.
async fn clickhouse_counts(store: &Store, key: &str, limit: u64) -> Vec<KeyCount> {
    let sql = format!(
        "SELECT {key} AS key, count() AS events FROM ?.offence_events \
         WHERE toDate(detected_at, 'Asia/Almaty') BETWEEN toDate(?) AND toDate(?) \
         GROUP BY key ORDER BY events DESC, key LIMIT ?"
    );
    in_range(store, &sql)
        .bind(limit)
        .fetch_all()
        .await
        .expect("counts")
}

fn as_map(counts: Vec<KeyCount>) -> BTreeMap<String, u64> {
    counts.into_iter().map(|c| (c.key, c.events)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_renders_in_chromium_with_clickhouses_numbers() {
    // Fail at once, naming the installer, when there is no browser.
    chromium();
    let (store, _) = loaded_store("report").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let html_path = dir.path().join("report.html");
    let out = html_path.to_str().expect("UTF-8 path");
    cctvctl(
        &store,
        &[
            "report", "--from", FROM, "--to", TO, "--top", "5", "--lang", "kk", "--out", out,
        ],
    );
    let html = std::fs::read_to_string(&html_path).expect("the report");
    for fetch in ["http://", "https://", "src=", "url(", "@import", "<link"] {
        assert!(
            !html.contains(fetch),
            "the report must load nothing: {fetch}"
        );
    }

    // A screenshot of the whole page.
    let png = dir.path().join("report.png");
    run_chromium(&html_path, &format!("--screenshot={}", png.display()));
    let image = std::fs::read(&png).expect("chromium wrote the screenshot");
    assert_eq!(&image[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    let size = |at: usize| u32::from_be_bytes(image[at..at + 4].try_into().unwrap());
    assert_eq!((size(16), size(20)), WINDOW, "the IHDR size");
    assert!(
        image.len() > 40_000,
        "a page with charts, not a blank: {} bytes",
        image.len()
    );
    if let Some(keep) = std::env::var_os("CCTV_REPORT_SCREENSHOT") {
        std::fs::copy(&png, keep).expect("keep the screenshot");
    }

    // The DOM as Chromium parsed it.
    let dom = run_chromium(&html_path, "--dump-dom");
    let total: u64 = in_range(
        &store,
        "SELECT count() FROM ?.offence_events \
         WHERE toDate(detected_at, 'Asia/Almaty') BETWEEN toDate(?) AND toDate(?)",
    )
    .fetch_one()
    .await
    .expect("total");
    let totals = elements_with(&dom, "span", "data-events");
    assert_eq!(totals[0]["id"], "total");
    assert_eq!(totals[0]["data-events"], total.to_string());

    // The map: all 20 regions, each with its count (zero when none).
    let regions = as_map(clickhouse_counts(&store, "region", 100).await);
    let paths = elements_with(&dom, "path", "data-region");
    assert_eq!(paths.len(), 20, "20 regions on the map");
    assert!(paths
        .iter()
        .all(|p| p["d"].len() > 50 && p["fill"].starts_with('#')));
    let on_map = events_by(&paths, "data-region");
    for (code, events) in &on_map {
        assert_eq!(*events, regions.get(code).copied().unwrap_or(0), "{code}");
    }
    let shaded: std::collections::BTreeSet<&str> =
        paths.iter().map(|p| p["fill"].as_str()).collect();
    assert!(shaded.len() >= 3, "regions shaded by count: {shaded:?}");
    // Unknown regions are in the table beside the map.
    let table = events_by(&elements_with(&dom, "tr", "data-region"), "data-region");
    assert_eq!(table, regions, "the table beside the map");
    assert!(dom.contains("Қарағанды облысы"), "Kazakh names");

    // Bars by offence type.
    let bars = elements_with(&dom, "rect", "data-type");
    assert_eq!(
        events_by(&bars, "data-type"),
        as_map(clickhouse_counts(&store, "offence_type", 100).await)
    );
    assert!(bars
        .iter()
        .all(|bar| bar["width"].parse::<f64>().unwrap() > 0.0));

    // The daily trend: one point per day.
    let points = events_by(&elements_with(&dom, "circle", "data-day"), "data-day");
    assert_eq!(points.len(), 14);
    assert_eq!(
        points,
        as_map(
            clickhouse_counts(&store, "toString(toDate(detected_at, 'Asia/Almaty'))", 100).await
        )
    );

    // Top cameras in order.
    let cameras: Vec<(String, u64)> = clickhouse_counts(&store, "camera_id", 5)
        .await
        .into_iter()
        .map(|c| (c.key, c.events))
        .collect();
    let table_start = dom.find("id=\"top-cameras\"").expect("the top cameras");
    let rows: Vec<(String, u64)> = dom[table_start..]
        .split("<td class=\"camera\">")
        .skip(1)
        .map(|cell| {
            let camera = cell[..cell.find('<').unwrap()].to_string();
            let events = elements_with(cell, "td", "data-events")[0]["data-events"]
                .parse()
                .unwrap();
            (camera, events)
        })
        .collect();
    assert_eq!(rows, cameras);

    // Freshness: detection -> insert, as ClickHouse computes it.
    let latency: Latency = in_range(
        &store,
        "SELECT count() AS events, \
             toInt64(quantileExact(0.5)(toInt64(inserted_at) - toInt64(detected_at))) AS median, \
             toInt64(quantileExact(0.9)(toInt64(inserted_at) - toInt64(detected_at))) AS p90, \
             toInt64(max(toInt64(inserted_at) - toInt64(detected_at))) AS max \
             FROM ?.offence_events \
             WHERE toDate(detected_at, 'Asia/Almaty') BETWEEN toDate(?) AND toDate(?)",
    )
    .fetch_one()
    .await
    .expect("latency");
    let freshness = &elements_with(&dom, "dl", "data-median")[0];
    assert_eq!(freshness["data-events"], latency.events.to_string());
    assert_eq!(freshness["data-median"], latency.median.to_string());
    assert_eq!(freshness["data-p90"], latency.p90.to_string());
    assert_eq!(freshness["data-max"], latency.max.to_string());
    assert!(latency.median > 0);
}
