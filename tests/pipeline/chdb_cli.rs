//! The queries of `cctvctl` and of its report on current ClickHouse
//! (chdb-core 26.x, through the harness of `chdb.rs`) next to 18.16: the
//! analysts' data set is loaded into both (fenced RowBinary inserts, half of
//! it rolled up, so the views read rollups and rows at once), and on both
//! the project's own `Store` answers every grouping of `totals --by` (each
//! dimension alone and every pair), `top` cameras, places and plates,
//! freshness, `trend` (`query_trend`), the report's data (`gather_report`)
//! and the audit's reads of the stored rows, unfiltered and under filters
//! that send the queries to each source (`offence_totals`, `camera_totals`,
//! the rows). Every answer must equal the numbers computed here from the
//! inserted rows (never by ClickHouse), and the two servers must answer
//! alike. Without chdb the test fails, naming `scripts/install-chdb.sh`.

use std::collections::{BTreeMap, BTreeSet};

use cctv_cli::{gather_report, query_trend, ReportData, Trend, TrendDay};
use cctv_store::{
    Dimension, Freshness, GroupedRow, Store, StoredSequence, StoredSpan, TopRow, TopSubject,
    TotalsFilter,
};
use chrono::{Datelike as _, Days, NaiveDate};

use crate::analyst_data::{
    analyst_data, by_count_desc, count_by, date_of, legal_category_of, load_into_clickhouse,
    migrate_load_and_roll, quantile_exact, source_format_of, StoredRow, SOURCE_STREAM,
    WEEK_FIRST_DAY, WEEK_LAST_DAY,
};
use crate::chdb::{pinned_version, ChdbServer};

/// Cameras of the report's top list (fewer than there are: the limit binds).
const REPORT_TOP: u64 = 5;

/// The key of `dimension` of a stored row, as the queries print it.
fn key_of(row: &StoredRow, dimension: Dimension) -> String {
    match dimension {
        Dimension::Day => row.day.to_string(),
        Dimension::Week => {
            let back = u64::from(row.day.weekday().num_days_from_monday());
            (row.day - Days::new(back)).to_string()
        }
        Dimension::Month => row.day.format("%Y-%m").to_string(),
        Dimension::Region => row.region.into(),
        Dimension::OffenceType => row.offence_type.into(),
        Dimension::Family => row.offence_family.into(),
        Dimension::LegalCategory => legal_category_of(row.offence_type).into(),
        Dimension::Camera => row.camera_id.clone(),
        Dimension::Gateway => row.gateway_id.clone(),
        Dimension::Format => source_format_of(&row.camera_id).into(),
    }
}

/// Whether `filter` keeps `row` (what `push_where` asks of a source).
fn keeps(filter: &TotalsFilter, row: &StoredRow) -> bool {
    filter.from_day.is_none_or(|from| row.day >= from)
        && filter.to_day.is_none_or(|to| row.day <= to)
        && (filter.regions.is_empty() || filter.regions.iter().any(|r| r == row.region))
        && (filter.offence_types.is_empty()
            || filter.offence_types.iter().any(|t| t == row.offence_type))
        && filter
            .gateway_prefix
            .as_ref()
            .is_none_or(|prefix| row.gateway_id.starts_with(prefix.as_str()))
}

/// The rows `filter` keeps.
fn kept<'a>(rows: &'a [StoredRow], filter: &'a TotalsFilter) -> Vec<&'a StoredRow> {
    rows.iter().filter(|row| keeps(filter, row)).collect()
}

/// `Store::grouped` as the rows give it: largest first, then by keys.
fn expected_grouped(
    rows: &[&StoredRow],
    first: Dimension,
    second: Option<Dimension>,
) -> Vec<GroupedRow> {
    let counts = count_by(rows.iter().copied(), |row| {
        (
            key_of(row, first),
            second.map_or_else(String::new, |dimension| key_of(row, dimension)),
        )
    });
    by_count_desc(&counts)
        .into_iter()
        .map(|((key1, key2), events)| GroupedRow { key1, key2, events })
        .collect()
}

/// A coordinate rounded to 0.01 degree, as `round(x, 2)` prints it.
fn cell_coordinate(degrees: f64) -> f64 {
    (degrees * 100.0).round() / 100.0
}

/// What one ranked key gathers: regions, districts, cameras, offences.
#[derive(Default)]
struct Ranked {
    regions: BTreeSet<&'static str>,
    districts: BTreeSet<String>,
    cameras: BTreeSet<String>,
    events: u64,
}

/// `Store::top` as the rows give it.
fn expected_top(rows: &[&StoredRow], subject: TopSubject, limit: u64) -> Vec<TopRow> {
    let mut ranked: BTreeMap<String, Ranked> = BTreeMap::new();
    for row in rows {
        let key = match subject {
            TopSubject::Cameras => row.camera_id.clone(),
            TopSubject::Places => match (row.lat, row.lon) {
                (Some(lat), Some(lon)) => {
                    format!("{},{}", cell_coordinate(lat), cell_coordinate(lon))
                }
                _ => continue,
            },
            TopSubject::Plates if row.plate.is_empty() => continue,
            TopSubject::Plates => row.plate.to_string(),
        };
        let entry = ranked.entry(key).or_default();
        entry.regions.insert(row.region);
        entry.districts.insert(row.district.clone());
        entry.cameras.insert(row.camera_id.clone());
        entry.events += 1;
    }
    let mut top: Vec<TopRow> = ranked
        .into_iter()
        .map(|(key, ranked)| {
            // `any()` of a camera's or a place's region and district: the
            // data gives each one region and one district, so it is exact.
            let only = |values: &BTreeSet<String>| {
                assert_eq!(values.len(), 1, "{key}: any() would be ambiguous");
                values.iter().next().cloned().unwrap_or_default()
            };
            let regions: BTreeSet<String> = ranked.regions.iter().map(|r| r.to_string()).collect();
            let (region, detail, cameras) = match subject {
                TopSubject::Cameras => (only(&regions), String::new(), 1),
                TopSubject::Places => (
                    only(&regions),
                    only(&ranked.districts),
                    ranked.cameras.len() as u64,
                ),
                TopSubject::Plates if regions.len() == 1 => {
                    (only(&regions), String::new(), ranked.cameras.len() as u64)
                }
                TopSubject::Plates => (
                    "several".to_string(),
                    String::new(),
                    ranked.cameras.len() as u64,
                ),
            };
            TopRow {
                key,
                region,
                detail,
                cameras,
                events: ranked.events,
            }
        })
        .collect();
    top.sort_by(|a, b| b.events.cmp(&a.events).then_with(|| a.key.cmp(&b.key)));
    top.truncate(usize::try_from(limit).expect("a small limit"));
    top
}

/// `Store::freshness` as the rows give it (detection -> insert, seconds).
fn expected_freshness(rows: &[&StoredRow]) -> Freshness {
    let mut latencies: Vec<i64> = rows
        .iter()
        .map(|row| row.inserted_at - row.detected_at)
        .collect();
    if latencies.is_empty() {
        return Freshness::default();
    }
    Freshness {
        events: latencies.len() as u64,
        min_seconds: latencies.iter().copied().min().unwrap_or_default(),
        median_seconds: quantile_exact(&mut latencies, 0.5),
        p90_seconds: quantile_exact(&mut latencies, 0.9),
        p99_seconds: quantile_exact(&mut latencies, 0.99),
        max_seconds: latencies.iter().copied().max().unwrap_or_default(),
    }
}

/// Offences of `day` among `rows`.
fn events_of_day(rows: &[&StoredRow], day: NaiveDate) -> u64 {
    rows.iter().filter(|row| row.day == day).count() as u64
}

/// `query_trend` of `from..=to` as the rows give it.
fn expected_trend(rows: &[&StoredRow], from: NaiveDate, to: NaiveDate) -> Trend {
    let length = Days::new(u64::try_from((to - from).num_days() + 1).expect("in order"));
    let days: Vec<TrendDay> = from
        .iter_days()
        .take_while(|day| *day <= to)
        .map(|day| {
            let previous_day = day - length;
            TrendDay {
                day,
                events: events_of_day(rows, day),
                previous_day,
                previous_events: events_of_day(rows, previous_day),
            }
        })
        .collect();
    Trend {
        total: days.iter().map(|day| day.events).sum(),
        previous_total: days.iter().map(|day| day.previous_events).sum(),
        days,
    }
}

/// `gather_report` of `from..=to` as the rows give it (no time stamp).
fn expected_report(rows: &[&StoredRow], from: NaiveDate, to: NaiveDate) -> ReportData {
    let pairs = |dimension| {
        expected_grouped(rows, dimension, None)
            .into_iter()
            .map(|row| (row.key1, row.events))
            .collect()
    };
    ReportData {
        from,
        to,
        regions: pairs(Dimension::Region),
        offence_types: pairs(Dimension::OffenceType),
        days: from
            .iter_days()
            .take_while(|day| *day <= to)
            .map(|day| (day, events_of_day(rows, day)))
            .collect(),
        top_cameras: expected_top(rows, TopSubject::Cameras, REPORT_TOP),
        freshness: expected_freshness(rows),
        generated_at: String::new(),
    }
}

/// The filters every query runs under: none (the views read the rollups
/// and the rows), a week of two regions (still the views), and that with
/// two types and a gateway prefix (the rows: the views have no gateway).
fn filters() -> Vec<(&'static str, TotalsFilter)> {
    let week = TotalsFilter {
        from_day: Some(date_of(WEEK_FIRST_DAY)),
        to_day: Some(date_of(WEEK_LAST_DAY)),
        regions: ["KZ-75", "KZ-11"].map(String::from).to_vec(),
        ..TotalsFilter::default()
    };
    let narrow = TotalsFilter {
        offence_types: ["traffic.speeding", "public_order.littering"]
            .map(String::from)
            .to_vec(),
        gateway_prefix: Some("gw1".into()),
        ..week.clone()
    };
    vec![
        ("unfiltered", TotalsFilter::default()),
        ("a week of two regions", week),
        ("a week of two regions, two types, gateway gw1", narrow),
    ]
}

/// Fails unless `counted`, the offences an answer adds up to, is the
/// number of `rows` inserted in the answer's range.
fn assert_total(what: &str, counted: u64, rows: &[&StoredRow]) {
    assert_eq!(
        counted,
        rows.len() as u64,
        "{what}: its offences add up to {counted}, the rows inserted in range are {}",
        rows.len()
    );
}

/// Every query of the CLI and the report on `store`, each checked against
/// the rows; returns each query's name (with the server's) and its answer
/// as text, for the comparison of the servers.
async fn cli_and_report_queries(
    store: &Store,
    rows: &[StoredRow],
    server: &str,
) -> Vec<(String, String)> {
    let mut answers = Vec::new();
    for (filter_name, filter) in filters() {
        let in_range = kept(rows, &filter);
        assert!(
            !in_range.is_empty(),
            "{filter_name}: the data has such rows"
        );

        // `totals --by`: every dimension alone and every pair.
        for first in Dimension::ALL {
            for second in std::iter::once(None).chain(Dimension::ALL.map(Some)) {
                if second == Some(first) {
                    continue;
                }
                let what = format!("totals --by {first:?},{second:?} ({filter_name}) on {server}");
                let grouped = store
                    .grouped(first, second, &filter)
                    .await
                    .unwrap_or_else(|error| panic!("{what}: {error}"));
                assert_total(&what, grouped.iter().map(|row| row.events).sum(), &in_range);
                assert_eq!(
                    grouped,
                    expected_grouped(&in_range, first, second),
                    "{what}"
                );
                answers.push((what, format!("{grouped:?}")));
            }
        }

        // `top`: each subject, all of it and its first five.
        for subject in [TopSubject::Cameras, TopSubject::Places, TopSubject::Plates] {
            for limit in [100, 5] {
                let what = format!("top {subject:?} --limit {limit} ({filter_name}) on {server}");
                let top = store
                    .top(subject, &filter, limit)
                    .await
                    .unwrap_or_else(|error| panic!("{what}: {error}"));
                let expected = expected_top(&in_range, subject, limit);
                if limit == 100 {
                    let ranked: Vec<&StoredRow> = in_range
                        .iter()
                        .copied()
                        .filter(|row| match subject {
                            TopSubject::Cameras => true,
                            TopSubject::Places => row.lat.is_some() && row.lon.is_some(),
                            TopSubject::Plates => !row.plate.is_empty(),
                        })
                        .collect();
                    assert_total(&what, top.iter().map(|row| row.events).sum(), &ranked);
                }
                assert_eq!(top, expected, "{what}");
                answers.push((what, format!("{top:?}")));
            }
        }

        // Freshness, as the report shows it.
        let what = format!("freshness ({filter_name}) on {server}");
        let freshness = store
            .freshness(&filter)
            .await
            .unwrap_or_else(|error| panic!("{what}: {error}"));
        assert_total(&what, freshness.events, &in_range);
        assert_eq!(freshness, expected_freshness(&in_range), "{what}");
        answers.push((what, format!("{freshness:?}")));

        // `trend` and the report of the week (their own range: the filter's
        // days are replaced, its regions, types and gateway kept).
        let (from, to) = (date_of(WEEK_FIRST_DAY), date_of(WEEK_LAST_DAY));
        let all_days = TotalsFilter {
            from_day: None,
            to_day: None,
            ..filter.clone()
        };
        let in_filter = kept(rows, &all_days);
        let what = format!("trend {from}..{to} ({filter_name}) on {server}");
        let trend = query_trend(store, from, to, &filter)
            .await
            .unwrap_or_else(|error| panic!("{what}: {error:#}"));
        let week = TotalsFilter {
            from_day: Some(from),
            to_day: Some(to),
            ..all_days.clone()
        };
        assert_total(&what, trend.total, &kept(rows, &week));
        assert_eq!(trend, expected_trend(&in_filter, from, to), "{what}");
        answers.push((what, format!("{trend:?}")));

        let what = format!("report {from}..{to} ({filter_name}) on {server}");
        let mut report = gather_report(store, from, to, &filter, REPORT_TOP)
            .await
            .unwrap_or_else(|error| panic!("{what}: {error:#}"));
        assert!(!report.generated_at.is_empty(), "{what}: a time stamp");
        report.generated_at.clear();
        let in_week = kept(rows, &week);
        assert_total(&what, report.days.iter().map(|(_, e)| e).sum(), &in_week);
        assert_total(&what, report.regions.iter().map(|(_, e)| e).sum(), &in_week);
        assert_eq!(report, expected_report(&in_week, from, to), "{what}");
        answers.push((what, format!("{report:?}")));
    }

    // `audit`'s reads of the stored rows: the source streams, the span of
    // sequences, each sequence's copies, the event stored twice.
    let what = format!("audit on {server}");
    let streams = store.source_streams().await.expect("source streams");
    assert_eq!(streams, vec![SOURCE_STREAM.to_string()], "{what}");
    let span = store.stored_span(SOURCE_STREAM).await.expect("stored span");
    let sequences: Vec<u64> = rows.iter().map(|row| row.stream_seq).collect();
    let expected_span = StoredSpan {
        rows: rows.len() as u64,
        min_seq: sequences.iter().copied().min().unwrap_or_default(),
        max_seq: sequences.iter().copied().max().unwrap_or_default(),
    };
    assert_eq!(span, expected_span, "{what}: the stored span");
    let mut stored_sequences = Vec::new();
    store
        .for_each_stored_sequence(SOURCE_STREAM, span.min_seq, span.max_seq, |sequence| {
            stored_sequences.push(sequence);
        })
        .await
        .expect("stored sequences");
    let expected_sequences: Vec<StoredSequence> = count_by(rows.iter(), |row| row.stream_seq)
        .into_iter()
        .map(|(stream_seq, copies)| StoredSequence { stream_seq, copies })
        .collect();
    assert_eq!(
        stored_sequences, expected_sequences,
        "{what}: each sequence's copies"
    );
    let (doubled, examples) = store
        .doubled_event_ids(SOURCE_STREAM, 10)
        .await
        .expect("doubled event ids");
    assert_eq!(
        (
            doubled,
            examples.iter().map(|e| e.copies).collect::<Vec<_>>()
        ),
        (1, vec![2]),
        "{what}: the event stored twice"
    );
    answers.push((
        what,
        format!("{streams:?} {span:?} {stored_sequences:?} {examples:?}"),
    ));
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cli_and_report_query_gives_the_same_numbers_on_current_clickhouse_and_18_16() {
    let data = analyst_data();
    let chdb = ChdbServer::start();
    let major = pinned_version()
        .split('.')
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(
        chdb.version.starts_with(&format!("{major}.")),
        "chdb runs ClickHouse {}, pinned {}",
        chdb.version,
        pinned_version()
    );
    let current = chdb.store();
    migrate_load_and_roll(&current, &data).await;
    let old = load_into_clickhouse("chdb-cli-18-16", &data).await;

    let current_label = format!("ClickHouse {} (chdb)", chdb.version);
    let on_current = cli_and_report_queries(&current, &data.stored, &current_label).await;
    let on_old = cli_and_report_queries(&old, &data.stored, "ClickHouse 18.16").await;
    assert_eq!(on_current.len(), on_old.len());
    for ((current_query, current_answer), (old_query, old_answer)) in on_current.iter().zip(&on_old)
    {
        assert_eq!(
            current_answer, old_answer,
            "the CLI's and the report's queries answer alike on both: {current_query} and {old_query}"
        );
    }
}
