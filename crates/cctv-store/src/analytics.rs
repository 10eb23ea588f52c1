//! Analyst views beyond the contract's totals: counts grouped by any one or
//! two dimensions, the top cameras, places and plates, and freshness
//! (detection -> queryable).
//!
//! Long ranges read the views behind the rollups (`offence_totals`: day,
//! region, type; `camera_totals`: day, camera, region); only dimensions and
//! filters those views lack (gateway, format, legal category, plates,
//! places, insert times) read `offence_events`. Every query is built as a
//! [`BoundSql`]: SQL text with `?` placeholders and the values bound to them
//! in order by the client, so no data is ever spliced into the text, and
//! other test suites can run the very same statements elsewhere
//! ([`BoundSql::to_query`], then `sql_display`). Plain SQL of ClickHouse
//! 18.16 and current releases: no window functions, no `WITH FILL` (missing
//! days are filled by the callers).

use clickhouse::sql::Identifier;
use clickhouse::Client;
use serde::Deserialize;

use crate::{Store, StoreError, TotalsFilter};

/// What counts can be grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dimension {
    /// Detection day (`YYYY-MM-DD`, in the configured time zone).
    Day,
    /// Monday of the detection day's week (`YYYY-MM-DD`).
    Week,
    /// Month of the detection day (`YYYY-MM`).
    Month,
    /// Region code.
    Region,
    /// Canonical offence code.
    OffenceType,
    /// Offence family (the code's part before the dot).
    Family,
    /// Legal category as stored with the event.
    LegalCategory,
    /// Camera id.
    Camera,
    /// Gateway id.
    Gateway,
    /// Source (payload) format.
    Format,
}

impl Dimension {
    /// Every dimension, in the order the CLI lists them.
    pub const ALL: [Dimension; 10] = [
        Dimension::Day,
        Dimension::Week,
        Dimension::Month,
        Dimension::Region,
        Dimension::OffenceType,
        Dimension::Family,
        Dimension::LegalCategory,
        Dimension::Camera,
        Dimension::Gateway,
        Dimension::Format,
    ];

    /// The column name of this dimension in CSV and JSON output.
    pub fn column(self) -> &'static str {
        match self {
            Dimension::Day => "day",
            Dimension::Week => "week",
            Dimension::Month => "month",
            Dimension::Region => "region",
            Dimension::OffenceType => "offence_type",
            Dimension::Family => "family",
            Dimension::LegalCategory => "legal_category",
            Dimension::Camera => "camera_id",
            Dimension::Gateway => "gateway_id",
            Dimension::Format => "source_format",
        }
    }

    /// Whether `offence_totals` (day, region, offence type) can answer it.
    fn in_offence_totals(self) -> bool {
        matches!(
            self,
            Dimension::Day
                | Dimension::Week
                | Dimension::Month
                | Dimension::Region
                | Dimension::OffenceType
                | Dimension::Family
        )
    }

    /// Whether `camera_totals` (day, camera, region) can answer it.
    fn in_camera_totals(self) -> bool {
        matches!(
            self,
            Dimension::Day
                | Dimension::Week
                | Dimension::Month
                | Dimension::Region
                | Dimension::Camera
        )
    }

    /// The key expression of this dimension over a source whose detection
    /// day column is `day` (a view, or the events' subquery).
    fn expression(self) -> &'static str {
        match self {
            Dimension::Day => "toString(day)",
            Dimension::Week => "toString(toMonday(day))",
            Dimension::Month => "substring(toString(day), 1, 7)",
            Dimension::Region => "region",
            Dimension::OffenceType => "offence_type",
            // The family is the code's part before the dot, which is also
            // what the events' own `offence_family` column holds.
            Dimension::Family => "splitByChar('.', offence_type)[1]",
            Dimension::LegalCategory => "legal_category",
            Dimension::Camera => "camera_id",
            Dimension::Gateway => "gateway_id",
            Dimension::Format => "source_format",
        }
    }
}

/// The table or view a query reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The `offence_totals` view (rollup + recent rows).
    OffenceTotals,
    /// The `camera_totals` view (rollup + recent rows).
    CameraTotals,
    /// The raw rows of `offence_events`.
    Events,
}

impl Source {
    /// The narrowest source answering `dimensions` under `filter`.
    pub fn for_query(dimensions: &[Dimension], filter: &TotalsFilter) -> Source {
        if filter.gateway_prefix.is_some() {
            return Source::Events;
        }
        if dimensions.iter().all(|d| d.in_offence_totals()) {
            return Source::OffenceTotals;
        }
        if filter.offence_types.is_empty() && dimensions.iter().all(|d| d.in_camera_totals()) {
            return Source::CameraTotals;
        }
        Source::Events
    }
}

/// A value bound to one `?` of a [`BoundSql`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlParam {
    /// A string literal.
    Text(String),
    /// An array of string literals.
    Texts(Vec<String>),
    /// An unsigned number.
    Number(u64),
    /// A quoted identifier (the database).
    Identifier(String),
}

/// SQL with `?` placeholders and the values bound to them, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BoundSql {
    /// The statement, with one `?` per parameter.
    pub sql: String,
    /// The parameters, in the order of their placeholders.
    pub params: Vec<SqlParam>,
}

impl BoundSql {
    /// Appends text without placeholders.
    fn text(&mut self, text: &str) -> &mut Self {
        self.sql.push_str(text);
        self
    }

    /// Appends text holding exactly one `?` and its value.
    fn bound(&mut self, text: &str, param: SqlParam) -> &mut Self {
        debug_assert_eq!(text.matches('?').count(), 1, "{text}");
        self.sql.push_str(text);
        self.params.push(param);
        self
    }

    /// The client query with every parameter bound (the client quotes and
    /// escapes each value; `sql_display` shows the final text).
    pub fn to_query(&self, client: &Client) -> clickhouse::query::Query {
        let mut query = client.query(&self.sql);
        for param in &self.params {
            query = match param {
                SqlParam::Text(text) => query.bind(text.as_str()),
                SqlParam::Texts(texts) => query.bind(texts),
                SqlParam::Number(number) => query.bind(*number),
                SqlParam::Identifier(name) => query.bind(Identifier(name)),
            };
        }
        query
    }
}

/// Database and time zone every analyst query is built for.
#[derive(Debug, Clone, Copy)]
pub struct QueryScope<'a> {
    /// The database holding the tables.
    pub database: &'a str,
    /// Time zone of detection days (that of `offence_totals`).
    pub timezone: &'a str,
}

/// Appends `FROM <source>`; the events are read through a subquery that
/// gives them the views' `day` (and `events` = 1 per row).
fn push_from(sql: &mut BoundSql, scope: QueryScope<'_>, source: Source) {
    match source {
        Source::OffenceTotals => {
            sql.bound(
                " FROM ?.offence_totals",
                SqlParam::Identifier(scope.database.into()),
            );
        }
        Source::CameraTotals => {
            sql.bound(
                " FROM ?.camera_totals",
                SqlParam::Identifier(scope.database.into()),
            );
        }
        Source::Events => {
            sql.bound(
                " FROM (SELECT toDate(detected_at, ?) AS day, ",
                SqlParam::Text(scope.timezone.into()),
            )
            .text(
                "detected_at, inserted_at, region, offence_type, legal_category, camera_id, \
                 gateway_id, source_format, district, plate, lat, lon, toUInt64(1) AS events",
            )
            .bound(
                " FROM ?.offence_events)",
                SqlParam::Identifier(scope.database.into()),
            );
        }
    }
}

/// Appends ` WHERE ...` for `filter` (every source has `day` and `region`;
/// types and gateways are asked only of sources that have them).
fn push_where(sql: &mut BoundSql, filter: &TotalsFilter) {
    sql.text(" WHERE 1");
    if let Some(day) = filter.from_day {
        sql.bound(
            " AND day >= toDate(?)",
            SqlParam::Text(day.format("%Y-%m-%d").to_string()),
        );
    }
    if let Some(day) = filter.to_day {
        sql.bound(
            " AND day <= toDate(?)",
            SqlParam::Text(day.format("%Y-%m-%d").to_string()),
        );
    }
    if !filter.regions.is_empty() {
        sql.bound(
            " AND has(?, region)",
            SqlParam::Texts(filter.regions.clone()),
        );
    }
    if !filter.offence_types.is_empty() {
        sql.bound(
            " AND has(?, offence_type)",
            SqlParam::Texts(filter.offence_types.clone()),
        );
    }
    if let Some(prefix) = &filter.gateway_prefix {
        sql.bound(
            " AND startsWith(gateway_id, ?)",
            SqlParam::Text(prefix.clone()),
        );
    }
}

/// Counts grouped by one or two dimensions (`key2` is empty with one),
/// largest first: `SELECT key1, key2, events`.
pub fn grouped_sql(
    scope: QueryScope<'_>,
    first: Dimension,
    second: Option<Dimension>,
    filter: &TotalsFilter,
) -> BoundSql {
    let dimensions: Vec<Dimension> = std::iter::once(first).chain(second).collect();
    let source = Source::for_query(&dimensions, filter);
    let mut sql = BoundSql::default();
    sql.text("SELECT ")
        .text(first.expression())
        .text(" AS key1, ")
        .text(second.map_or("''", Dimension::expression))
        .text(" AS key2, toUInt64(sum(events)) AS events");
    push_from(&mut sql, scope, source);
    push_where(&mut sql, filter);
    sql.text(" GROUP BY key1, key2 ORDER BY events DESC, key1, key2");
    sql
}

/// What `cctvctl top` ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopSubject {
    /// Cameras (from `camera_totals` unless filtered by type or gateway).
    Cameras,
    /// Places: cells of 0.01 degree (about 1 km) of the events' coordinates.
    Places,
    /// Plates as stored (`hmac:` values when plate privacy is on).
    Plates,
}

/// The ranking of `subject` under `filter`, `limit` lines:
/// `SELECT key, region, detail, cameras, events`.
pub fn top_sql(
    scope: QueryScope<'_>,
    subject: TopSubject,
    filter: &TotalsFilter,
    limit: u64,
) -> BoundSql {
    let mut sql = BoundSql::default();
    let source = match subject {
        TopSubject::Cameras => Source::for_query(&[Dimension::Camera], filter),
        TopSubject::Places | TopSubject::Plates => Source::Events,
    };
    // The inner query names the region `top_region`: an alias `region`
    // would stand for the aggregate in the WHERE clause's region filter.
    sql.text("SELECT key, top_region AS region, detail, cameras, events FROM (");
    match subject {
        TopSubject::Cameras => sql.text(
            "SELECT camera_id AS key, any(region) AS top_region, '' AS detail, \
             toUInt64(1) AS cameras, toUInt64(sum(events)) AS events",
        ),
        TopSubject::Places => sql.text(
            "SELECT concat(toString(round(assumeNotNull(lat), 2)), ',', \
             toString(round(assumeNotNull(lon), 2))) AS key, any(region) AS top_region, \
             any(district) AS detail, toUInt64(uniqExact(camera_id)) AS cameras, \
             toUInt64(sum(events)) AS events",
        ),
        TopSubject::Plates => sql.text(
            "SELECT plate AS key, if(uniqExact(region) = 1, any(region), 'several') AS top_region, \
             '' AS detail, toUInt64(uniqExact(camera_id)) AS cameras, \
             toUInt64(sum(events)) AS events",
        ),
    };
    push_from(&mut sql, scope, source);
    push_where(&mut sql, filter);
    match subject {
        TopSubject::Cameras => {}
        TopSubject::Places => {
            sql.text(" AND isNotNull(lat) AND isNotNull(lon)");
        }
        TopSubject::Plates => {
            sql.text(" AND plate != ''");
        }
    }
    sql.text(" GROUP BY key) ORDER BY events DESC, key")
        .bound(" LIMIT ?", SqlParam::Number(limit));
    sql
}

/// Detection -> insert latency of the events under `filter`, in seconds:
/// `SELECT events, min_seconds, median_seconds, p90_seconds, p99_seconds,
/// max_seconds` (exact quantiles; zeros when there are no events).
pub fn freshness_sql(scope: QueryScope<'_>, filter: &TotalsFilter) -> BoundSql {
    let mut sql = BoundSql::default();
    sql.text(
        "SELECT count() AS events, \
         toInt64(if(count() = 0, 0, min(latency))) AS min_seconds, \
         toInt64(if(count() = 0, 0, quantileExact(0.5)(latency))) AS median_seconds, \
         toInt64(if(count() = 0, 0, quantileExact(0.9)(latency))) AS p90_seconds, \
         toInt64(if(count() = 0, 0, quantileExact(0.99)(latency))) AS p99_seconds, \
         toInt64(if(count() = 0, 0, max(latency))) AS max_seconds FROM (SELECT \
         toInt64(inserted_at) - toInt64(detected_at) AS latency",
    );
    push_from(&mut sql, scope, Source::Events);
    push_where(&mut sql, filter);
    sql.text(")");
    sql
}

/// One line of a grouped count.
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, Deserialize, serde::Serialize)]
pub struct GroupedRow {
    /// Key of the first dimension.
    pub key1: String,
    /// Key of the second dimension, empty with one dimension.
    pub key2: String,
    /// Counted offences.
    pub events: u64,
}

/// One line of a top list.
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, Deserialize, serde::Serialize)]
pub struct TopRow {
    /// Camera id, `lat,lon` of a place, or plate as stored.
    pub key: String,
    /// Region (`several` for a plate seen in more than one).
    pub region: String,
    /// District of a place; empty otherwise.
    pub detail: String,
    /// Distinct cameras (1 for a camera).
    pub cameras: u64,
    /// Counted offences.
    pub events: u64,
}

/// Detection -> insert latency, seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clickhouse::Row, Deserialize)]
pub struct Freshness {
    /// Events measured.
    pub events: u64,
    /// Smallest latency.
    pub min_seconds: i64,
    /// Median.
    pub median_seconds: i64,
    /// 90th percentile.
    pub p90_seconds: i64,
    /// 99th percentile.
    pub p99_seconds: i64,
    /// Largest latency.
    pub max_seconds: i64,
}

impl Store {
    /// The scope of this store's queries.
    pub fn query_scope(&self) -> QueryScope<'_> {
        QueryScope {
            database: &self.config().database,
            timezone: &self.config().timezone,
        }
    }

    /// Counts grouped by one or two dimensions ([`grouped_sql`]).
    pub async fn grouped(
        &self,
        first: Dimension,
        second: Option<Dimension>,
        filter: &TotalsFilter,
    ) -> Result<Vec<GroupedRow>, StoreError> {
        grouped_sql(self.query_scope(), first, second, filter)
            .to_query(self.client())
            .fetch_all()
            .await
            .map_err(|e| StoreError::from_clickhouse("grouped totals", e))
    }

    /// The top `limit` cameras, places or plates ([`top_sql`]).
    pub async fn top(
        &self,
        subject: TopSubject,
        filter: &TotalsFilter,
        limit: u64,
    ) -> Result<Vec<TopRow>, StoreError> {
        top_sql(self.query_scope(), subject, filter, limit)
            .to_query(self.client())
            .fetch_all()
            .await
            .map_err(|e| StoreError::from_clickhouse("top", e))
    }

    /// Detection -> insert latency of the events ([`freshness_sql`]).
    pub async fn freshness(&self, filter: &TotalsFilter) -> Result<Freshness, StoreError> {
        freshness_sql(self.query_scope(), filter)
            .to_query(self.client())
            .fetch_one()
            .await
            .map_err(|e| StoreError::from_clickhouse("freshness", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCOPE: QueryScope<'static> = QueryScope {
        database: "cctv",
        timezone: "Asia/Almaty",
    };

    fn filter_of(types: &[&str], gateway: Option<&str>) -> TotalsFilter {
        TotalsFilter {
            offence_types: types.iter().map(|t| t.to_string()).collect(),
            gateway_prefix: gateway.map(String::from),
            ..TotalsFilter::default()
        }
    }

    #[test]
    fn the_narrowest_view_answers() {
        let none = filter_of(&[], None);
        let by =
            |dimensions: &[Dimension], filter: &TotalsFilter| Source::for_query(dimensions, filter);
        use Dimension::*;
        assert_eq!(by(&[Region, OffenceType], &none), Source::OffenceTotals);
        assert_eq!(by(&[Month, Family], &none), Source::OffenceTotals);
        assert_eq!(by(&[Camera, Day], &none), Source::CameraTotals);
        assert_eq!(
            by(&[Camera], &filter_of(&["traffic.speeding"], None)),
            Source::Events
        );
        assert_eq!(by(&[Region], &filter_of(&[], Some("gw"))), Source::Events);
        for dimension in [LegalCategory, Gateway, Format] {
            assert_eq!(by(&[dimension], &none), Source::Events);
        }
    }

    #[test]
    fn placeholders_and_parameters_agree_and_no_value_is_in_the_text() {
        let filter = TotalsFilter {
            from_day: chrono::NaiveDate::from_ymd_opt(2026, 11, 1),
            to_day: chrono::NaiveDate::from_ymd_opt(2026, 11, 30),
            regions: vec!["KZ-75'--".into()],
            offence_types: vec!["traffic.speeding".into()],
            gateway_prefix: Some("gw'1".into()),
        };
        let mut statements = Vec::new();
        for first in Dimension::ALL {
            for second in std::iter::once(None).chain(Dimension::ALL.map(Some)) {
                statements.push(grouped_sql(SCOPE, first, second, &filter));
                statements.push(grouped_sql(SCOPE, first, second, &TotalsFilter::default()));
            }
        }
        for subject in [TopSubject::Cameras, TopSubject::Places, TopSubject::Plates] {
            statements.push(top_sql(SCOPE, subject, &filter, 10));
        }
        statements.push(freshness_sql(SCOPE, &filter));
        for statement in statements {
            assert_eq!(
                statement.sql.matches('?').count(),
                statement.params.len(),
                "{statement:?}"
            );
            for needle in ["KZ-75", "2026-11", "gw'1", "cctv", "Almaty"] {
                assert!(!statement.sql.contains(needle), "{}", statement.sql);
            }
        }
    }

    #[test]
    fn the_events_subquery_gives_the_views_day() {
        let sql = grouped_sql(SCOPE, Dimension::Format, None, &TotalsFilter::default());
        assert!(sql.sql.starts_with(
            "SELECT source_format AS key1, '' AS key2, toUInt64(sum(events)) AS events \
             FROM (SELECT toDate(detected_at, ?) AS day"
        ));
        assert_eq!(
            sql.params,
            vec![
                SqlParam::Text("Asia/Almaty".into()),
                SqlParam::Identifier("cctv".into())
            ]
        );
        let sql = grouped_sql(
            SCOPE,
            Dimension::Week,
            Some(Dimension::Region),
            &TotalsFilter::default(),
        );
        assert!(sql.sql.contains("FROM ?.offence_totals WHERE 1 GROUP BY"));
    }
}
