//! The `analyst` scenario of `cctv-bench-e2e`: analysts' queries over a
//! year of offences generated in ClickHouse itself (`INSERT ... SELECT
//! FROM numbers`, no pipeline), timed counting the rows of `offence_events`
//! (what the plain view of migration 2 did) and through the views after one
//! roller run has rolled the year up; the answers must be the same.
//!
//! The queries: the contract's totals query, one region's daily trend over
//! the year, and the year's top 10 cameras.

use std::time::Instant;

use anyhow::{ensure, Context as _};
use cctv_store::{ClickHouseConfig, RollupPolicy, Store};
use cctv_testkit::ClickHouseServer;

/// Rows per generating insert.
const CHUNK_ROWS: u64 = 5_000_000;
/// Days the rows' insert times span (the year before today, UTC).
const DAYS: u64 = 365;
/// Cameras the rows are spread over.
const CAMERAS: u64 = 10_000;
/// Runs of each query; the median is reported.
pub const RUNS: usize = 3;
/// The database of the scenario.
const DATABASE: &str = "analyst_bench";

/// One query's times and answer.
#[derive(Debug, Clone)]
pub struct Timed {
    /// What the query asks.
    pub name: &'static str,
    /// Median seconds of [`RUNS`] runs counting the rows of `offence_events`.
    pub raw_seconds: f64,
    /// Median seconds through the views with the year rolled up.
    pub rolled_seconds: f64,
    /// Lines of the answer (both ways alike).
    pub answer_lines: usize,
}

/// What the scenario measured.
#[derive(Debug, Clone)]
pub struct AnalystResult {
    /// Rows generated.
    pub rows: u64,
    /// Seconds to generate them.
    pub generate_seconds: f64,
    /// Seconds of the first roller run (the whole year).
    pub roll_seconds: f64,
    /// Insert days it rolled up.
    pub slots_rolled: u64,
    /// Rows of `offence_day_rollup` and `camera_day_rollup` after it.
    pub rollup_rows: (u64, u64),
    /// Seconds of the audit's comparison of every rolled day with its rows
    /// (`Store::rollup_differences`, which found none).
    pub audit_seconds: f64,
    /// clickhouse-server's version.
    pub server_version: String,
    /// The queries.
    pub queries: Vec<Timed>,
}

/// The queries over the range from, to (the year): what they ask, the
/// query counting the rows of `offence_events` (what the plain view of
/// migration 2 did, and what an analyst would write without the views),
/// and the query through the views.
fn queries(from: &str, to: &str) -> Vec<(&'static str, String, String)> {
    let days = format!("day >= toDate('{from}') AND day <= toDate('{to}')");
    let detected = "toDate(detected_at, 'Asia/Almaty') AS day, region, offence_type, camera_id";
    vec![
        (
            "contract totals (region x type, all days)",
            format!(
                "SELECT region, offence_type, count() AS events FROM {DATABASE}.offence_events \
                 GROUP BY region, offence_type ORDER BY region, offence_type"
            ),
            format!(
                "SELECT region, offence_type, sum(events) AS events FROM {DATABASE}.offence_totals \
                 GROUP BY region, offence_type ORDER BY region, offence_type"
            ),
        ),
        (
            "one region's daily trend over the year (KZ-75)",
            format!(
                "SELECT day, count() AS events FROM (SELECT {detected} FROM {DATABASE}.offence_events \
                 WHERE region = 'KZ-75') WHERE {days} GROUP BY day ORDER BY day"
            ),
            format!(
                "SELECT day, sum(events) AS events FROM {DATABASE}.offence_totals \
                 WHERE region = 'KZ-75' AND {days} GROUP BY day ORDER BY day"
            ),
        ),
        (
            "top 10 cameras of the year",
            format!(
                "SELECT camera_id, count() AS events FROM (SELECT {detected} FROM {DATABASE}.offence_events) \
                 WHERE {days} GROUP BY camera_id ORDER BY events DESC, camera_id LIMIT 10"
            ),
            format!(
                "SELECT camera_id, sum(events) AS events FROM {DATABASE}.camera_totals \
                 WHERE {days} GROUP BY camera_id ORDER BY events DESC, camera_id LIMIT 10"
            ),
        ),
    ]
}

/// Generates rows `[first, first + count)` of `total`: insert times spread
/// evenly over the [`DAYS`] days from `start` (UTC seconds), detections up
/// to 10 minutes before, 13 offence types, [`CAMERAS`] cameras spread over
/// 20 regions (each camera in one).
fn generate_sql(first: u64, count: u64, total: u64, start: i64) -> String {
    let span = DAYS * 86_400;
    format!(
        "INSERT INTO {DATABASE}.offence_events (event_id, detected_at, offence_type, offence_family, \
         region, camera_id, source_format, gateway_id, plate, received_at, ingested_at, inserted_at, \
         source_stream, writer) \
         SELECT generateUUIDv4(), toDateTime({start} + intDiv(n * {span}, {total}) - n % 600), \
         ['traffic.speeding', 'traffic.red_light', 'traffic.illegal_parking', 'traffic.no_seatbelt', \
          'traffic.phone_use', 'traffic.wrong_way', 'traffic.bus_lane', 'traffic.stop_line', \
          'traffic.no_helmet', 'traffic.pedestrian_crossing', 'public.littering', 'public.vandalism', \
          'traffic.tinted_windows'][n % 13 + 1], \
         if(n % 13 < 10, 'traffic', 'public_order'), \
         ['KZ-10', 'KZ-11', 'KZ-15', 'KZ-19', 'KZ-23', 'KZ-27', 'KZ-31', 'KZ-33', 'KZ-35', 'KZ-39', \
          'KZ-43', 'KZ-47', 'KZ-55', 'KZ-59', 'KZ-61', 'KZ-62', 'KZ-63', 'KZ-71', 'KZ-75', 'KZ-79'] \
          [cityHash64(n, 1) % {CAMERAS} % 20 + 1], \
         concat('CAM-', toString(cityHash64(n, 1) % {CAMERAS})), 'canonical', 'gw-bench', \
         concat('P', toString(cityHash64(n, 2) % 1000000)), \
         toDateTime({start} + intDiv(n * {span}, {total})), toDateTime({start} + intDiv(n * {span}, {total})), \
         toDateTime({start} + intDiv(n * {span}, {total})), 'CCTV_EVENTS@bench', 'p0' \
         FROM (SELECT number + {first} AS n FROM system.numbers LIMIT {count})"
    )
}

/// The median of `times`.
fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Runs `sql` [`RUNS`] times: the median seconds and the answer.
fn time_query(server: &ClickHouseServer, sql: &str) -> anyhow::Result<(f64, String)> {
    let mut times = Vec::with_capacity(RUNS);
    let mut answer = String::new();
    for _ in 0..RUNS {
        let started = Instant::now();
        answer = server
            .query(sql)
            .with_context(|| format!("query failed: {sql}"))?;
        times.push(started.elapsed().as_secs_f64());
    }
    Ok((median(times), answer))
}

fn count(server: &ClickHouseServer, sql: &str) -> anyhow::Result<u64> {
    let text = server.query(sql)?;
    text.trim()
        .parse()
        .with_context(|| format!("not a count: {text:?}"))
}

/// Runs the scenario with `rows` generated offences; `progress(what)`
/// reports each step.
pub async fn run(rows: u64, mut progress: impl FnMut(&str)) -> anyhow::Result<AnalystResult> {
    let server = ClickHouseServer::start().context("failed to start clickhouse-server")?;
    let store = Store::new(&ClickHouseConfig {
        url: server.http_url(),
        database: DATABASE.to_string(),
        ..ClickHouseConfig::default()
    })?;
    store.migrate().await?;
    let server_version = server.query("SELECT version()")?.trim().to_string();
    let today = chrono::Utc::now().date_naive();
    let first_day = today - chrono::Days::new(DAYS);
    let start = first_day
        .and_hms_opt(0, 0, 0)
        .context("midnight")?
        .and_utc()
        .timestamp();
    let (from, to) = (first_day.to_string(), today.to_string());

    let started = Instant::now();
    let mut generated = 0;
    while generated < rows {
        let take = CHUNK_ROWS.min(rows - generated);
        tokio::task::block_in_place(|| server.query(&generate_sql(generated, take, rows, start)))
            .context("failed to generate rows")?;
        generated += take;
        progress(&format!(
            "generated {generated} of {rows} rows ({:.0} s)",
            started.elapsed().as_secs_f64()
        ));
    }
    let generate_seconds = started.elapsed().as_secs_f64();
    // Background merges of the generated parts would take CPU from the
    // timed reads: wait for them (at most 10 minutes).
    let settle = Instant::now();
    while count(&server, "SELECT count() FROM system.merges")? > 0
        && settle.elapsed().as_secs() < 600
    {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    ensure!(
        count(
            &server,
            &format!("SELECT count() FROM {DATABASE}.offence_events")
        )? == rows,
        "the generated rows are not all there"
    );

    let queries = queries(&from, &to);
    let mut raw = Vec::new();
    for (name, sql, _) in &queries {
        let (seconds, answer) = tokio::task::block_in_place(|| time_query(&server, sql))?;
        progress(&format!("{name}: {seconds:.2} s counting the rows"));
        raw.push((seconds, answer));
    }

    let started = Instant::now();
    let report = store
        .roll_up(&RollupPolicy::default(), |done, total| {
            progress(&format!("rolled up {done} of {total} insert days"));
        })
        .await?;
    let roll_seconds = started.elapsed().as_secs_f64();
    let rollup_rows = (
        count(
            &server,
            &format!("SELECT count() FROM {DATABASE}.offence_day_rollup"),
        )?,
        count(
            &server,
            &format!("SELECT count() FROM {DATABASE}.camera_day_rollup"),
        )?,
    );

    let started = Instant::now();
    let differences = store.rollup_differences().await?;
    let audit_seconds = started.elapsed().as_secs_f64();
    ensure!(
        differences.is_empty(),
        "the audit finds differences: {differences:?}"
    );
    progress(&format!(
        "audit of the rollups against the rows: {audit_seconds:.1} s"
    ));

    let mut timed = Vec::new();
    for ((name, _, sql), (raw_seconds, raw_answer)) in queries.iter().zip(raw) {
        let (rolled_seconds, answer) = tokio::task::block_in_place(|| time_query(&server, sql))?;
        progress(&format!("{name}: {rolled_seconds:.2} s with the rollups"));
        ensure!(
            answer == raw_answer,
            "{name}: the rollups answer differently from the rows"
        );
        ensure!(!answer.trim().is_empty(), "{name}: no answer");
        timed.push(Timed {
            name,
            raw_seconds,
            rolled_seconds,
            answer_lines: answer.lines().count(),
        });
    }
    Ok(AnalystResult {
        rows,
        generate_seconds,
        roll_seconds,
        slots_rolled: report.rolled,
        rollup_rows,
        audit_seconds,
        server_version,
        queries: timed,
    })
}
