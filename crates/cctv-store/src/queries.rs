//! Analyst queries: totals by region and offence type, with filters bound as
//! parameters (never spliced into the SQL text).

use chrono::NaiveDate;
use clickhouse::sql::Identifier;
use serde::Deserialize;

use crate::{Store, StoreError};

/// Filters of the totals query; `None` and empty mean "all".
#[derive(Debug, Clone, Default)]
pub struct TotalsFilter {
    /// First detection day (inclusive, in the configured time zone).
    pub from_day: Option<NaiveDate>,
    /// Last detection day (inclusive).
    pub to_day: Option<NaiveDate>,
    /// Region codes to keep.
    pub regions: Vec<String>,
    /// Offence codes to keep.
    pub offence_types: Vec<String>,
    /// Keep only events from gateways whose id starts with this.
    pub gateway_prefix: Option<String>,
}

/// One line of the totals table.
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, Deserialize, serde::Serialize)]
pub struct TotalsRow {
    /// Region code or `unknown`.
    pub region: String,
    /// Canonical offence code.
    pub offence_type: String,
    /// Counted offences.
    pub events: u64,
}

impl Store {
    /// Totals by region and offence type. Without a gateway filter this reads
    /// the contract's `offence_totals`; with one, the raw rows (the view has
    /// no gateway column).
    pub async fn totals(&self, filter: &TotalsFilter) -> Result<Vec<TotalsRow>, StoreError> {
        let timezone = self.config().timezone.as_str();
        let mut sql =
            String::from("SELECT region, offence_type, toUInt64(sum(events)) AS events FROM ");
        if filter.gateway_prefix.is_some() {
            sql.push_str(
                "(SELECT toDate(detected_at, ?) AS day, region, offence_type, gateway_id, count() AS events \
                 FROM ?.offence_events GROUP BY day, region, offence_type, gateway_id)",
            );
        } else {
            sql.push_str("?.offence_totals");
        }
        sql.push_str(" WHERE 1");
        if filter.from_day.is_some() {
            sql.push_str(" AND day >= toDate(?)");
        }
        if filter.to_day.is_some() {
            sql.push_str(" AND day <= toDate(?)");
        }
        if !filter.regions.is_empty() {
            sql.push_str(" AND has(?, region)");
        }
        if !filter.offence_types.is_empty() {
            sql.push_str(" AND has(?, offence_type)");
        }
        if filter.gateway_prefix.is_some() {
            sql.push_str(" AND startsWith(gateway_id, ?)");
        }
        sql.push_str(" GROUP BY region, offence_type ORDER BY region, offence_type");

        let mut query = self.client().query(&sql);
        if filter.gateway_prefix.is_some() {
            query = query.bind(timezone);
        }
        query = query.bind(Identifier(&self.config().database));
        if let Some(day) = filter.from_day {
            query = query.bind(day.format("%Y-%m-%d").to_string());
        }
        if let Some(day) = filter.to_day {
            query = query.bind(day.format("%Y-%m-%d").to_string());
        }
        if !filter.regions.is_empty() {
            query = query.bind(&filter.regions);
        }
        if !filter.offence_types.is_empty() {
            query = query.bind(&filter.offence_types);
        }
        if let Some(prefix) = &filter.gateway_prefix {
            query = query.bind(prefix.as_str());
        }
        query
            .fetch_all::<TotalsRow>()
            .await
            .map_err(|e| StoreError::from_clickhouse("totals", e))
    }

    /// Number of rows in `offence_events` (all writers).
    pub async fn count_events(&self) -> Result<u64, StoreError> {
        self.client()
            .query("SELECT count() FROM ?.offence_events")
            .bind(Identifier(&self.config().database))
            .fetch_one::<u64>()
            .await
            .map_err(|e| StoreError::from_clickhouse("count", e))
    }
}
