//! The Grafana dashboard of `deploy/grafana/` against ClickHouse 18.16
//! holding known rows: the dashboard JSON is loaded, each panel's SQL (and
//! each query variable's) is turned into what the ClickHouse plugin
//! (grafana-clickhouse-datasource 4.x) sends for a fixed time range and
//! variable selection, run, and its result compared with numbers computed
//! here from the inserted rows. `chdb.rs` runs the same SQL on current
//! ClickHouse.
//!
//! The expansion follows the plugin's own code, in its order:
//! 1. `$__conditionalAll(condition, $variable)` (frontend,
//!    `CHDatasource.applyConditionalAll`): the condition, or `1=1` when the
//!    variable is "All" (`$__all`) or empty; arguments split at top-level
//!    commas, the last occurrence first.
//! 2. Grafana's template variables (`$name`, `${name}`, `${name:format}`):
//!    without a format the plugin's own (`CHDatasource.format`: a list as
//!    `'a','b'`, one value as it is), `singlequote` as Grafana's formatter
//!    (each value quoted, `'` escaped as `\'`, joined by `,`). Unknown names
//!    (the plugin's macros) are left alone.
//! 3. The backend's macros (`pkg/macros/macros.go`, via macropro):
//!    `$__fromTime` / `$__toTime` -> `toDateTime(<unix seconds>)`,
//!    `$__timeFilter(c)` -> `c >= toDateTime(<from>) AND c <= toDateTime(<to>)`,
//!    `$__dateFilter(c)` -> `c >= toDate('<from date>') AND c <= toDate('<to date>')`
//!    (UTC dates), `$__timeFrom(c)`, `$__timeTo(c)`; arguments trimmed. Any
//!    other `$__` macro fails the test: this file does not know its expansion.

use std::collections::{BTreeMap, BTreeSet};

use cctv_store::Store;
use chrono::DateTime;
use serde_json::Value;

use crate::analyst_data::{
    almaty_midnight, analyst_data, assert_rows, by_count_desc, count_by, date_of,
    freshness_by_region, load_into_clickhouse, parse_tsv, quantile_exact, query_tsv, row, Cell,
    StoredRow, WEEK_FIRST_DAY, WEEK_LAST_DAY,
};

/// The dashboard, relative to the workspace root.
const DASHBOARD: &str = "deploy/grafana/dashboards/cctv-offences.json";

/// The data source provisioning file, relative to the workspace root.
const DATASOURCE: &str = "deploy/grafana/provisioning/datasources/cctv-clickhouse.yaml";

/// The plugin's id, the `type` of its data sources.
const PLUGIN_ID: &str = "grafana-clickhouse-datasource";

fn repo_file(path: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("read {}: {error}", path.display()))
}

/// The dashboard JSON.
pub(crate) fn dashboard() -> Value {
    serde_json::from_str(&repo_file(DASHBOARD)).expect("the dashboard is JSON")
}

/// A dashboard time range, as Grafana hands it to the plugin's backend.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TimeRange {
    /// Start, UTC milliseconds.
    pub(crate) from_ms: i64,
    /// End, UTC milliseconds.
    pub(crate) to_ms: i64,
}

/// The range the tests query: 2026-11-02 00:00:00.000 to 2026-11-08
/// 23:59:59.999 in Asia/Almaty, as Grafana's absolute range of those days.
pub(crate) fn test_range() -> TimeRange {
    TimeRange {
        from_ms: almaty_midnight(date_of(WEEK_FIRST_DAY)) * 1000,
        to_ms: almaty_midnight(date_of(WEEK_LAST_DAY + 1)) * 1000 - 1,
    }
}

/// The value of a dashboard variable.
#[derive(Debug, Clone)]
pub(crate) enum VariableValue {
    /// "All" selected (`$__all`).
    All,
    /// Values selected in a multi-value variable.
    Values(Vec<String>),
    /// A constant (or single-value) variable.
    Text(String),
}

/// A selection of the dashboard's variables.
pub(crate) type Selection = BTreeMap<String, VariableValue>;

/// The selections the tests run: everything, two regions and two types, one
/// region with every type.
pub(crate) fn selections() -> Vec<(&'static str, Selection)> {
    let values =
        |list: &[&str]| VariableValue::Values(list.iter().map(|v| v.to_string()).collect());
    let selection = |region: VariableValue, offence_type: VariableValue| {
        let mut selection = Selection::new();
        selection.insert("tz".into(), VariableValue::Text("Asia/Almaty".into()));
        selection.insert("region".into(), region);
        selection.insert("offence_type".into(), offence_type);
        selection
    };
    vec![
        (
            "all regions, all types",
            selection(VariableValue::All, VariableValue::All),
        ),
        (
            "KZ-75 and KZ-71, speeding and littering",
            selection(
                values(&["KZ-75", "KZ-71"]),
                values(&["traffic.speeding", "public_order.littering"]),
            ),
        ),
        (
            "KZ-79, all types",
            selection(values(&["KZ-79"]), VariableValue::All),
        ),
    ]
}

/// Whether a row passes the variable filters of `selection`.
fn selected(selection: &Selection, row: &StoredRow) -> bool {
    let keeps = |name: &str, value: &str| match selection.get(name) {
        Some(VariableValue::Values(values)) => values.iter().any(|v| v == value),
        Some(VariableValue::Text(text)) => text == value,
        Some(VariableValue::All) | None => true,
    };
    keeps("region", row.region) && keeps("offence_type", row.offence_type)
}

/// `selection` without its offence type filter.
fn region_only(selection: &Selection) -> Selection {
    let mut selection = selection.clone();
    selection.remove("offence_type");
    selection
}

/// The arguments of the macro whose `(` is at `open` in `text`, split at
/// top-level commas, and the index just past its `)`
/// (`CHDatasource.getMacroArgs`).
fn macro_args(text: &str, open: usize) -> Option<(Vec<String>, usize)> {
    let mut depth = 0usize;
    let mut args = Vec::new();
    let mut start = open + 1;
    for (offset, c) in text[open..].char_indices() {
        let index = open + offset;
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    args.push(text[start..index].to_string());
                    return Some((args, index + 1));
                }
            }
            ',' if depth == 1 => {
                args.push(text[start..index].to_string());
                start = index + 1;
            }
            _ => {}
        }
    }
    None
}

/// Step 1: `$__conditionalAll(condition, $variable)`.
fn apply_conditional_all(sql: &str, selection: &Selection) -> Result<String, String> {
    const MACRO: &str = "$__conditionalAll(";
    let mut sql = sql.to_string();
    while let Some(at) = sql.rfind(MACRO) {
        let open = at + MACRO.len() - 1;
        let (args, end) = macro_args(&sql, open).ok_or("an unclosed $__conditionalAll(")?;
        let [condition, variable] = args.as_slice() else {
            return Err(format!("$__conditionalAll takes two arguments: {args:?}"));
        };
        let name = variable
            .trim()
            .trim_start_matches('$')
            .trim_start_matches('{')
            .trim_end_matches('}');
        let phrase = match selection.get(name) {
            Some(VariableValue::All) => "1=1".to_string(),
            Some(VariableValue::Values(values)) if values.is_empty() => "1=1".to_string(),
            Some(_) => condition.clone(),
            None => {
                return Err(format!(
                    "$__conditionalAll names no variable of the dashboard: {name}"
                ))
            }
        };
        sql.replace_range(at..end, &phrase);
    }
    Ok(sql)
}

/// Grafana's `singlequote` format.
fn single_quote(values: &[String]) -> String {
    values
        .iter()
        .map(|value| format!("'{}'", value.replace('\'', "\\'")))
        .collect::<Vec<_>>()
        .join(",")
}

/// Step 2: template variables. `all_values` are the options "All" stands for.
fn replace_variables(
    sql: &str,
    selection: &Selection,
    all_values: &BTreeMap<String, Vec<String>>,
) -> Result<String, String> {
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at + 1..];
        let (name, format, consumed) = if let Some(braced) = tail.strip_prefix('{') {
            let close = braced.find('}').ok_or("an unclosed ${")?;
            let inner = &braced[..close];
            let (name, format) = match inner.split_once(':') {
                Some((name, format)) => (name, Some(format)),
                None => (inner, None),
            };
            (name, format, close + 2)
        } else {
            let len = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            (&tail[..len], None, len)
        };
        let Some(value) = selection.get(name) else {
            // Not a variable (a macro of the plugin): left as it is.
            out.push('$');
            rest = tail;
            continue;
        };
        let values = match value {
            VariableValue::All => all_values.get(name).cloned().unwrap_or_default(),
            VariableValue::Values(values) => values.clone(),
            VariableValue::Text(text) => vec![text.clone()],
        };
        let is_list = !matches!(value, VariableValue::Text(_));
        let text = match format {
            Some("singlequote") => single_quote(&values),
            Some(other) => return Err(format!("variable format `{other}` is not emulated here")),
            None if is_list => format!("'{}'", values.join("','")),
            None => values.join(""),
        };
        out.push_str(&text);
        rest = &tail[consumed..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `toDateTime(<unix seconds>)` of a time in milliseconds.
fn to_date_time(ms: i64) -> String {
    format!("toDateTime({})", ms.div_euclid(1000))
}

/// `toDate('<UTC date>')` of a time in milliseconds.
fn to_date(ms: i64) -> String {
    let date = DateTime::from_timestamp_millis(ms)
        .expect("a time")
        .date_naive();
    format!("toDate('{}')", date.format("%Y-%m-%d"))
}

/// Step 3: the backend's macros.
fn expand_macros(sql: &str, range: TimeRange) -> Result<String, String> {
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some(at) = rest.find("$__") {
        out.push_str(&rest[..at]);
        let tail = &rest[at + 3..];
        let len = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..len];
        let after = &tail[len..];
        let (args, consumed) = if after.starts_with('(') {
            let (args, end) =
                macro_args(after, 0).ok_or_else(|| format!("an unclosed $__{name}("))?;
            let args = args
                .iter()
                .map(|arg| expand_macros(arg.trim(), range))
                .collect::<Result<Vec<_>, _>>()?;
            (args, len + end)
        } else {
            (Vec::new(), len)
        };
        let one = |args: &[String]| match args {
            [column] => Ok(column.clone()),
            _ => Err(format!("$__{name} takes one argument: {args:?}")),
        };
        let expansion = match name {
            "fromTime" => to_date_time(range.from_ms),
            "toTime" => to_date_time(range.to_ms),
            "timeFilter" => {
                let column = one(&args)?;
                format!(
                    "{column} >= {} AND {column} <= {}",
                    to_date_time(range.from_ms),
                    to_date_time(range.to_ms)
                )
            }
            "dateFilter" => {
                let column = one(&args)?;
                format!(
                    "{column} >= {} AND {column} <= {}",
                    to_date(range.from_ms),
                    to_date(range.to_ms)
                )
            }
            "timeFrom" => format!("{} >= {}", one(&args)?, to_date_time(range.from_ms)),
            "timeTo" => format!("{} <= {}", one(&args)?, to_date_time(range.to_ms)),
            other => return Err(format!("macro $__{other} is not emulated by this test")),
        };
        out.push_str(&expansion);
        rest = &tail[consumed..];
    }
    out.push_str(rest);
    Ok(out)
}

/// What the plugin sends for `raw_sql` with `selection` over `range`.
pub(crate) fn interpolate(
    raw_sql: &str,
    selection: &Selection,
    all_values: &BTreeMap<String, Vec<String>>,
    range: TimeRange,
) -> Result<String, String> {
    let sql = apply_conditional_all(raw_sql, selection)?;
    let sql = replace_variables(&sql, selection, all_values)?;
    expand_macros(&sql, range)
}

/// One query of the dashboard: a panel's target or a query variable.
pub(crate) struct DashboardQuery {
    /// The panel title, or `variable <name>`.
    pub(crate) name: String,
    pub(crate) raw_sql: String,
}

/// Every panel target and query variable of the dashboard, checked for the
/// plugin's data source.
pub(crate) fn dashboard_queries(dashboard: &Value) -> Vec<DashboardQuery> {
    let mut queries = Vec::new();
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list");
    for variable in variables.iter().filter(|v| v["type"] == "query") {
        let name = variable["name"].as_str().expect("a variable name");
        assert_eq!(variable["datasource"]["type"], PLUGIN_ID, "variable {name}");
        queries.push(DashboardQuery {
            name: format!("variable {name}"),
            raw_sql: variable["query"]
                .as_str()
                .expect("a variable query")
                .to_string(),
        });
    }
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().expect("a panel title");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title} has no query");
        for target in targets {
            assert_eq!(target["datasource"]["type"], PLUGIN_ID, "panel {title}");
            assert_eq!(target["editorType"], "sql", "panel {title}");
            queries.push(DashboardQuery {
                name: title.to_string(),
                raw_sql: target["rawSql"].as_str().expect("rawSql").to_string(),
            });
        }
    }
    queries
}

/// The options "All" stands for: every value of the variable in the data.
pub(crate) fn all_values(rows: &[StoredRow]) -> BTreeMap<String, Vec<String>> {
    let distinct = |key: fn(&StoredRow) -> &str| {
        rows.iter()
            .map(key)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .map(str::to_string)
            .collect()
    };
    BTreeMap::from([
        ("region".to_string(), distinct(|r| r.region)),
        ("offence_type".to_string(), distinct(|r| r.offence_type)),
    ])
}

/// The result the dashboard query `name` must give for `selection` over
/// the test range; `None` for a name this test does not know.
pub(crate) fn dashboard_expected(
    name: &str,
    selection: &Selection,
    rows: &[StoredRow],
) -> Option<Vec<Vec<Cell>>> {
    let range = test_range();
    // The range is whole Almaty days, so the day filter of offence_totals
    // and the time filter of offence_events keep the same rows.
    let in_range: Vec<&StoredRow> = rows
        .iter()
        .filter(|r| r.detected_at * 1000 >= range.from_ms && r.detected_at * 1000 <= range.to_ms)
        .collect();
    let chosen: Vec<&StoredRow> = in_range
        .iter()
        .copied()
        .filter(|r| selected(selection, r))
        .collect();
    let latencies = || {
        chosen
            .iter()
            .map(|r| r.inserted_at - r.detected_at)
            .collect::<Vec<_>>()
    };
    // The options of a query variable: its distinct values in the range.
    let options = |key: fn(&StoredRow) -> &str| {
        in_range
            .iter()
            .map(|r| key(r))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .map(|value| row![value])
            .collect()
    };
    let expected = match name {
        "variable region" => options(|r| r.region),
        "variable offence_type" => options(|r| r.offence_type),
        "Offences" => vec![row![chosen.len()]],
        "Detection to queryable, p95 (s)" => vec![row![quantile_exact(&mut latencies(), 0.95)]],
        "By region" => by_count_desc(&count_by(chosen.iter().copied(), |r| r.region))
            .into_iter()
            .map(|(region, n)| row![region, n])
            .collect(),
        "By offence type" => by_count_desc(&count_by(chosen.iter().copied(), |r| r.offence_type))
            .into_iter()
            .map(|(offence_type, n)| row![offence_type, n])
            .collect(),
        "Daily trend" => count_by(chosen.iter().copied(), |r| (r.day, r.offence_type))
            .into_iter()
            .map(|((day, offence_type), n)| row![day, offence_type, n])
            .collect(),
        // camera_totals has no offence type: only the region filter applies.
        "Top cameras (every offence type)" => by_count_desc(&count_by(
            in_range
                .iter()
                .copied()
                .filter(|r| selected(&region_only(selection), r)),
            |r| (r.camera_id.clone(), r.region),
        ))
        .into_iter()
        .take(10)
        .map(|((camera, region), n)| row![camera, region, n])
        .collect(),
        "Region x offence type" => count_by(chosen.iter().copied(), |r| (r.region, r.offence_type))
            .into_iter()
            .map(|((region, offence_type), n)| row![region, offence_type, n])
            .collect(),
        "Freshness by region" => freshness_by_region(chosen.iter().copied()),
        _ => return None,
    };
    Some(expected)
}

/// Runs every query of the dashboard on `store` (holding `rows`) for each
/// selection, fails unless each returns its expected result, and returns
/// the results, parsed.
pub(crate) async fn run_dashboard(
    store: &Store,
    rows: &[StoredRow],
    server: &str,
) -> Vec<Vec<Vec<String>>> {
    let queries = dashboard_queries(&dashboard());
    let all = all_values(rows);
    let mut results = Vec::new();
    for (label, selection) in selections() {
        for query in &queries {
            let expected = dashboard_expected(&query.name, &selection, rows)
                .unwrap_or_else(|| panic!("{DASHBOARD}: no expected result for {:?}", query.name));
            assert!(
                !expected.is_empty(),
                "{}: the data set gives no rows",
                query.name
            );
            let sql = interpolate(&query.raw_sql, &selection, &all, test_range())
                .unwrap_or_else(|error| panic!("{}: {error}", query.name));
            assert!(!sql.contains('$'), "{}: left unexpanded: {sql}", query.name);
            let actual = query_tsv(store, &sql).await.unwrap_or_else(|error| {
                panic!("{} ({label}) fails on {server}: {error}\n{sql}", query.name)
            });
            assert_rows(
                &format!("{DASHBOARD} {:?} ({label}) on {server}", query.name),
                &actual,
                &expected,
            );
            results.push(parse_tsv(&actual));
        }
    }
    results
}

#[test]
fn the_expansion_matches_the_plugins_documented_examples() {
    // macros_test.go of the plugin: from 2014-11-12T11:45:26.371Z, to 2015-11-12T11:45:26.371Z.
    let range = TimeRange {
        from_ms: 1_415_792_726_371,
        to_ms: 1_447_328_726_371,
    };
    let cases = [
        (
            "select * from foo where $__timeFilter(cast(sth as timestamp) )",
            "select * from foo where cast(sth as timestamp) >= toDateTime(1415792726) AND cast(sth as timestamp) <= toDateTime(1447328726)",
        ),
        (
            "select * from foo where ( date >= $__fromTime and date <= $__toTime ) limit 100",
            "select * from foo where ( date >= toDateTime(1415792726) and date <= toDateTime(1447328726) ) limit 100",
        ),
        (
            "$__dateFilter(dateCol)",
            "dateCol >= toDate('2014-11-12') AND dateCol <= toDate('2015-11-12')",
        ),
        (
            "select * from foo where $__timeFilter(coalesce(closed_at, $__toTime))",
            "select * from foo where coalesce(closed_at, toDateTime(1447328726)) >= toDateTime(1415792726) AND coalesce(closed_at, toDateTime(1447328726)) <= toDateTime(1447328726)",
        ),
    ];
    for (raw, expanded) in cases {
        assert_eq!(expand_macros(raw, range).as_deref(), Ok(expanded));
    }
    assert!(expand_macros("$__timeInterval(t)", range).is_err());

    let mut selection = Selection::new();
    selection.insert(
        "region".into(),
        VariableValue::Values(vec!["KZ-75".into(), "it's".into()]),
    );
    selection.insert("offence_type".into(), VariableValue::All);
    selection.insert("tz".into(), VariableValue::Text("Asia/Almaty".into()));
    let all = BTreeMap::new();
    let sql = "WHERE $__conditionalAll(region IN (${region:singlequote}), $region) \
               AND $__conditionalAll(offence_type IN (${offence_type:singlequote}), $offence_type) \
               AND x = '${tz}' AND y IN ($region)";
    assert_eq!(
        interpolate(sql, &selection, &all, range).as_deref(),
        Ok("WHERE region IN ('KZ-75','it\\'s') AND 1=1 AND x = 'Asia/Almaty' AND y IN ('KZ-75','it's')")
    );
}

#[test]
fn the_data_source_is_the_plugin_as_the_read_only_analyst_without_a_secret_in_the_file() {
    let provisioning: Value =
        yaml_serde::from_str(&repo_file(DATASOURCE)).expect("the data source file is YAML");
    let sources = provisioning["datasources"].as_array().expect("datasources");
    assert_eq!(sources.len(), 1);
    let source = &sources[0];
    assert_eq!(source["type"], PLUGIN_ID);
    assert_eq!(source["jsonData"]["username"], "cctv_analyst");
    assert_eq!(source["jsonData"]["defaultDatabase"], "cctv");
    assert_eq!(source["jsonData"]["protocol"], "native");
    assert_eq!(
        source["secureJsonData"]["password"], "$__env{CCTV_CLICKHOUSE_ANALYST_PASSWORD}",
        "the password comes from Grafana's environment"
    );
    // Every panel and variable uses this data source.
    let uid = source["uid"].as_str().expect("a uid");
    let dashboard = dashboard();
    let mut used = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        used.insert(
            panel["datasource"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
        for target in panel["targets"].as_array().expect("targets") {
            used.insert(
                target["datasource"]["uid"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
        }
    }
    assert_eq!(used, BTreeSet::from([uid.to_string()]));
    // The user is one the project ships, read-only, in both layouts.
    for users in [
        repo_file("deploy/clickhouse/users.xml.in"),
        repo_file("deploy/compose/clickhouse/users.xml"),
    ] {
        assert!(users.contains("<cctv_analyst>"), "cctv_analyst is shipped");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_the_numbers_of_the_inserted_rows() {
    let data = analyst_data();
    let store = load_into_clickhouse("grafana", &data).await;
    let dashboard = dashboard();
    let queries = dashboard_queries(&dashboard);
    let titles: BTreeSet<&str> = queries.iter().map(|q| q.name.as_str()).collect();
    for view in [
        "Offences",
        "By region",
        "By offence type",
        "Daily trend",
        "Top cameras (every offence type)",
        "Region x offence type",
        "Freshness by region",
    ] {
        assert!(
            titles.contains(view),
            "the dashboard lost its view {view:?}"
        );
    }
    run_dashboard(&store, &data.stored, "ClickHouse 18.16").await;
}

#[test]
fn the_optional_compose_file_pins_grafana_and_the_plugin_and_mounts_what_exists() {
    let compose: Value = yaml_serde::from_str(&repo_file("deploy/compose/grafana.yaml"))
        .expect("grafana.yaml is YAML");
    let base: Value = yaml_serde::from_str(&repo_file("deploy/compose/compose.yaml"))
        .expect("compose.yaml is YAML");
    let grafana = &compose["services"]["grafana"];
    let image = grafana["image"].as_str().expect("an image");
    let (_, tag) = image.rsplit_once(':').expect("a tag");
    assert!(
        tag.split('.').count() == 3 && tag.split('.').all(|part| part.parse::<u32>().is_ok()),
        "grafana's image is pinned to an exact release: {image}"
    );
    let environment = &grafana["environment"];
    let plugin = environment["GF_PLUGINS_PREINSTALL_SYNC"]
        .as_str()
        .expect("the plugin");
    assert!(
        plugin.starts_with(&format!("{PLUGIN_ID}@"))
            && plugin
                .split('@')
                .nth(1)
                .is_some_and(|v| v.split('.').count() == 3),
        "the plugin is pinned: {plugin}"
    );
    // Secrets: `${VAR:?...}` references to variables .env.example lists.
    let env_example = repo_file("deploy/compose/.env.example");
    for name in [
        "GF_SECURITY_ADMIN_PASSWORD",
        "CCTV_CLICKHOUSE_ANALYST_PASSWORD",
    ] {
        let value = environment[name].as_str().unwrap_or_default();
        let variable = value
            .strip_prefix("${")
            .and_then(|rest| rest.split_once(":?"))
            .map(|(variable, _)| variable)
            .unwrap_or_else(|| {
                panic!("{name} must be a required ${{VAR:?...}} reference, is {value:?}")
            });
        assert!(
            env_example
                .lines()
                .any(|line| line.starts_with(&format!("{variable}="))),
            ".env.example lists {variable}"
        );
    }
    // Mounted files exist; the dashboard provider reads where they are mounted.
    let compose_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/compose");
    let mut dashboards_target = None;
    for volume in grafana["volumes"].as_array().expect("volumes") {
        let volume = volume.as_str().expect("short syntax");
        let mut parts = volume.split(':');
        let (source, target) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        if source.starts_with('.') {
            assert!(
                compose_dir.join(source).exists(),
                "{source} is mounted but does not exist"
            );
        }
        if source.ends_with("grafana/dashboards") {
            dashboards_target = Some(target.to_string());
        }
    }
    let provider: Value = yaml_serde::from_str(&repo_file(
        "deploy/grafana/provisioning/dashboards/cctv.yaml",
    ))
    .expect("the dashboard provider is YAML");
    assert_eq!(
        provider["providers"][0]["options"]["path"].as_str(),
        dashboards_target.as_deref(),
        "the provider reads the mounted dashboards"
    );
    // It waits for a service of the main file, which has a healthcheck.
    for (dependency, _) in grafana["depends_on"].as_object().expect("depends_on") {
        assert!(
            base["services"][dependency.as_str()]["healthcheck"].is_object(),
            "grafana waits for {dependency}, a healthy service of compose.yaml"
        );
    }
    assert!(
        grafana["healthcheck"]["test"].is_array(),
        "grafana has a healthcheck"
    );
}
