//! The analysts' SQL cookbook (`docs/analysts.md`) run against ClickHouse
//! 18.16 holding known rows: every ```sql block of the page, read from the
//! markdown itself (so the page and the test cannot drift), must return
//! exactly the numbers computed here from the rows the test inserted. A
//! block without a `-- name:` line or without an expected result here, or
//! an expected result without its block, fails too. `chdb.rs` runs the same
//! blocks on current ClickHouse.

use std::collections::BTreeSet;

use crate::analyst_data::{
    almaty_text, analyst_data, assert_rows, by_count_desc, count_by, date_of, freshness_by_region,
    load_into_clickhouse, parse_tsv, quantile_exact, query_tsv, row, Cell, StoredRow,
    WEEK_FIRST_DAY, WEEK_LAST_DAY,
};
use cctv_store::Store;

/// The page the queries come from, relative to the workspace root.
const COOKBOOK: &str = "docs/analysts.md";

/// Every query the cookbook must keep (a block removed from the page fails
/// the test until its name is removed here too).
const COOKBOOK_NAMES: [&str; 15] = [
    "total_all_time",
    "totals_by_region_and_type",
    "totals_by_region",
    "totals_by_type_in_regions",
    "totals_by_family",
    "daily_trend_one_region",
    "week_over_week_by_type",
    "top_cameras",
    "top_cameras_detail",
    "one_camera_by_day",
    "repeat_plates",
    "hot_spot_districts",
    "hot_spot_grid",
    "freshness_by_region",
    "freshness_stages",
];

/// One named query of the cookbook.
pub(crate) struct CookbookQuery {
    pub(crate) name: String,
    pub(crate) sql: String,
}

/// Every ```sql block of the cookbook, named by its `-- name: ` first line.
pub(crate) fn cookbook_queries() -> Vec<CookbookQuery> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(COOKBOOK);
    let text = std::fs::read_to_string(&path).expect("read docs/analysts.md");
    let mut queries = Vec::new();
    let mut block: Option<Vec<&str>> = None;
    for line in text.lines() {
        match (&mut block, line.trim_end()) {
            (None, "```sql") => block = Some(Vec::new()),
            (Some(lines), "```") => {
                let first = lines.first().copied().unwrap_or_default();
                let name = first
                    .strip_prefix("-- name: ")
                    .unwrap_or_else(|| {
                        panic!("a sql block of {COOKBOOK} starts without `-- name: `: {first:?}")
                    })
                    .trim()
                    .to_string();
                queries.push(CookbookQuery {
                    name,
                    sql: lines.join("\n"),
                });
                block = None;
            }
            (Some(lines), _) => lines.push(line),
            (None, _) => {}
        }
    }
    assert!(block.is_none(), "an unclosed sql block in {COOKBOOK}");
    queries
}

/// Rows detected in the queried week (2026-11-02 to 2026-11-08, Almaty).
fn week(rows: &[StoredRow]) -> impl Iterator<Item = &StoredRow> {
    let (first, last) = (date_of(WEEK_FIRST_DAY), date_of(WEEK_LAST_DAY));
    rows.iter()
        .filter(move |row| row.day >= first && row.day <= last)
}

/// ClickHouse's `round(x, 1)` of a float: to nearest, ties to even.
fn round_1(value: f64) -> f64 {
    (value * 10.0).round_ties_even() / 10.0
}

/// The result each named query must return for `rows`; `None` for a name
/// this test does not know.
pub(crate) fn cookbook_expected(name: &str, rows: &[StoredRow]) -> Option<Vec<Vec<Cell>>> {
    let in_week = || week(rows);
    let expected = match name {
        "total_all_time" => vec![row![rows.len(), rows.len()]],
        "totals_by_region_and_type" => count_by(in_week(), |r| (r.region, r.offence_type))
            .into_iter()
            .map(|((region, offence_type), n)| row![region, offence_type, n])
            .collect(),
        "totals_by_region" => by_count_desc(&count_by(in_week(), |r| r.region))
            .into_iter()
            .map(|(region, n)| row![region, n])
            .collect(),
        "totals_by_type_in_regions" => by_count_desc(&count_by(
            in_week().filter(|r| ["KZ-75", "KZ-71"].contains(&r.region)),
            |r| r.offence_type,
        ))
        .into_iter()
        .map(|(offence_type, n)| row![offence_type, n])
        .collect(),
        "totals_by_family" => count_by(in_week(), |r| r.offence_family)
            .into_iter()
            .map(|(family, n)| row![family, n])
            .collect(),
        "daily_trend_one_region" => count_by(in_week().filter(|r| r.region == "KZ-75"), |r| r.day)
            .into_iter()
            .map(|(day, n)| row![day, n])
            .collect(),
        "week_over_week_by_type" => {
            let previous_first = date_of(WEEK_FIRST_DAY - 7);
            let previous_last = date_of(WEEK_FIRST_DAY - 1);
            let this_week = count_by(in_week(), |r| r.offence_type);
            let previous = count_by(
                rows.iter()
                    .filter(|r| r.day >= previous_first && r.day <= previous_last),
                |r| r.offence_type,
            );
            let types: BTreeSet<&str> = this_week.keys().chain(previous.keys()).copied().collect();
            types
                .into_iter()
                .map(|offence_type| {
                    let now = this_week.get(offence_type).copied().unwrap_or(0) as i64;
                    let before = previous.get(offence_type).copied().unwrap_or(0) as i64;
                    let change_pct = if before == 0 {
                        Cell::Null
                    } else {
                        Cell::Float(round_1(100.0 * (now - before) as f64 / before as f64))
                    };
                    let mut cells = row![offence_type, now, before, now - before];
                    cells.push(change_pct);
                    cells
                })
                .collect()
        }
        "top_cameras" => by_count_desc(&count_by(in_week(), |r| (r.camera_id.clone(), r.region)))
            .into_iter()
            .take(10)
            .map(|((camera, region), n)| row![camera, region, n])
            .collect(),
        "top_cameras_detail" => {
            let counts = count_by(in_week(), |r| {
                (r.camera_id.clone(), r.region, r.district.clone())
            });
            // Ties by camera id: the key starts with it.
            by_count_desc(&counts)
                .into_iter()
                .take(10)
                .map(|((camera, region, district), n)| {
                    let types: BTreeSet<&str> = in_week()
                        .filter(|r| r.camera_id == camera)
                        .map(|r| r.offence_type)
                        .collect();
                    row![camera, region, district, n, types.len()]
                })
                .collect()
        }
        "one_camera_by_day" => count_by(in_week().filter(|r| r.camera_id == "CAM-75-1"), |r| {
            (r.day, r.offence_type)
        })
        .into_iter()
        .map(|((day, offence_type), n)| row![day, offence_type, n])
        .collect(),
        "repeat_plates" => {
            let counts = count_by(in_week().filter(|r| !r.plate.is_empty()), |r| r.plate);
            by_count_desc(&counts)
                .into_iter()
                .filter(|(_, n)| *n >= 3)
                .map(|(plate, n)| {
                    let seen: Vec<&StoredRow> = in_week().filter(|r| r.plate == plate).collect();
                    let cameras: BTreeSet<&str> =
                        seen.iter().map(|r| r.camera_id.as_str()).collect();
                    let first = seen.iter().map(|r| r.detected_at).min().unwrap_or_default();
                    let last = seen.iter().map(|r| r.detected_at).max().unwrap_or_default();
                    row![
                        plate,
                        n,
                        cameras.len(),
                        almaty_text(first),
                        almaty_text(last)
                    ]
                })
                .collect()
        }
        "hot_spot_districts" => {
            let counts = count_by(in_week().filter(|r| !r.district.is_empty()), |r| {
                (r.region, r.district.clone())
            });
            by_count_desc(&counts)
                .into_iter()
                .take(10)
                .map(|((region, district), n)| {
                    let cameras: BTreeSet<&str> = in_week()
                        .filter(|r| r.region == region && r.district == district)
                        .map(|r| r.camera_id.as_str())
                        .collect();
                    row![region, district, n, cameras.len()]
                })
                .collect()
        }
        "hot_spot_grid" => {
            // Cells as whole hundredths, so they can be keys.
            let cell = |degrees: f64| (degrees * 100.0).floor() as i64;
            let located = || in_week().filter(|r| r.lat.is_some() && r.lon.is_some());
            let counts = count_by(located(), |r| {
                (
                    cell(r.lat.unwrap_or_default()),
                    cell(r.lon.unwrap_or_default()),
                )
            });
            by_count_desc(&counts)
                .into_iter()
                .take(10)
                .map(|((lat, lon), n)| {
                    let cameras: BTreeSet<&str> = located()
                        .filter(|r| {
                            (
                                cell(r.lat.unwrap_or_default()),
                                cell(r.lon.unwrap_or_default()),
                            ) == (lat, lon)
                        })
                        .map(|r| r.camera_id.as_str())
                        .collect();
                    row![lat as f64 / 100.0, lon as f64 / 100.0, n, cameras.len()]
                })
                .collect()
        }
        "freshness_by_region" => freshness_by_region(in_week()),
        "freshness_stages" => {
            // The fixture's gateway receives 1 s and the ingest 2 s after detection.
            let mut to_queryable: Vec<i64> = in_week()
                .map(|r| r.inserted_at - r.detected_at - 2)
                .collect();
            vec![row![1i64, 1i64, quantile_exact(&mut to_queryable, 0.5)]]
        }
        _ => return None,
    };
    Some(expected)
}

/// Runs every block of the cookbook on `store` (holding `rows`), fails
/// unless each returns its expected result, and returns the results, parsed.
pub(crate) async fn run_cookbook(
    store: &Store,
    rows: &[StoredRow],
    server: &str,
) -> Vec<Vec<Vec<String>>> {
    let mut results = Vec::new();
    for query in cookbook_queries() {
        let expected = cookbook_expected(&query.name, rows).unwrap_or_else(|| {
            panic!(
                "{COOKBOOK}: no expected result for `{}`; add it to cookbook_expected",
                query.name
            )
        });
        assert!(
            !expected.is_empty(),
            "{}: the data set gives no rows",
            query.name
        );
        let actual = query_tsv(store, &query.sql)
            .await
            .unwrap_or_else(|error| panic!("{} fails on {server}: {error}", query.name));
        assert_rows(
            &format!("{COOKBOOK} `{}` on {server}", query.name),
            &actual,
            &expected,
        );
        results.push(parse_tsv(&actual));
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cookbook_query_returns_the_numbers_of_the_inserted_rows() {
    let data = analyst_data();
    let store = load_into_clickhouse("cookbook", &data).await;
    let queries = cookbook_queries();
    let names: BTreeSet<&str> = queries.iter().map(|query| query.name.as_str()).collect();
    assert_eq!(
        names.len(),
        queries.len(),
        "two blocks of {COOKBOOK} share a name"
    );
    assert_eq!(
        names,
        COOKBOOK_NAMES.into_iter().collect(),
        "the blocks of {COOKBOOK} are not the ones this test knows"
    );
    run_cookbook(&store, &data.stored, "ClickHouse 18.16").await;
}
