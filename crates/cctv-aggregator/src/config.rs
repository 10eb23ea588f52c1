//! Configuration of the aggregator: one TOML file plus a fixed list of
//! environment overrides: `CCTV_NATS_*` (see `cctv_bus::NatsConfig`),
//! `CCTV_CLICKHOUSE_URL`, `CCTV_CLICKHOUSE_DATABASE`, `CCTV_CLICKHOUSE_USER`,
//! `CCTV_CLICKHOUSE_PASSWORD`, `CCTV_AGGREGATOR_METRICS_LISTEN`.

use std::path::Path;
use std::time::Duration;

use cctv_bus::{NatsConfig, StreamsConfig};
use cctv_store::ClickHouseConfig;
use cctv_telemetry::TelemetryConfig;
use serde::Deserialize;

use crate::AggregatorError;

/// Largest batch accepted: kept well below ClickHouse's
/// `max_insert_block_size` (1,048,576) so one batch is one part.
const MAX_BATCH_ROWS: usize = 500_000;

/// The whole aggregator configuration.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AggregatorConfig {
    /// NATS connection.
    pub nats: NatsConfig,
    /// Streams (only `events` is used; it is created or verified at start).
    pub streams: StreamsConfig,
    /// ClickHouse connection.
    pub clickhouse: ClickHouseConfig,
    /// Consumer and batching.
    pub aggregator: AggregatorSettings,
    /// Metrics endpoint and logs.
    pub telemetry: TelemetryConfig,
}

/// Consumer and batching settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AggregatorSettings {
    /// Durable consumer name; also the `writer` recorded on every row. One
    /// running instance per name.
    pub consumer: String,
    /// Subject filter of this writer (`""` = the whole events stream; e.g.
    /// `cctv.events.s0.>` for one shard). Fixed for the life of the writer.
    pub filter_subject: String,
    /// Flush a batch at this many rows.
    pub batch_max_rows: usize,
    /// Flush a batch when its first row is this old.
    #[serde(with = "humantime_serde")]
    pub batch_max_age: Duration,
    /// Messages requested per pull.
    pub fetch_batch: usize,
    /// Redelivery timeout of the consumer. Correctness does not depend on it.
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// Create or migrate the schema at start (needs DDL rights); when false,
    /// the schema must already be at this build's version.
    pub migrate_on_start: bool,
    /// Longest pause between insert retries while ClickHouse is down.
    #[serde(with = "humantime_serde")]
    pub retry_max_backoff: Duration,
    /// Time allowed to flush and ack after a shutdown request.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for AggregatorSettings {
    fn default() -> Self {
        Self {
            consumer: "cctv-aggregator".into(),
            filter_subject: String::new(),
            batch_max_rows: 20_000,
            batch_max_age: Duration::from_millis(500),
            fetch_batch: 1_000,
            ack_wait: Duration::from_secs(300),
            migrate_on_start: true,
            retry_max_backoff: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(20),
        }
    }
}

impl AggregatorConfig {
    /// Reads a TOML file, applies the environment, validates.
    pub fn load(path: Option<&Path>) -> Result<Self, AggregatorError> {
        let mut config = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    AggregatorError::Config(format!("cannot read {}: {e}", path.display()))
                })?;
                Self::from_toml(&text)?
            }
            None => Self::default(),
        };
        config.apply_env(|name| std::env::var(name).ok());
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text (no environment, no validation).
    pub fn from_toml(text: &str) -> Result<Self, AggregatorError> {
        toml::from_str(text).map_err(|e| AggregatorError::Config(e.to_string()))
    }

    /// Applies the documented environment overrides.
    pub fn apply_env(&mut self, lookup: impl Fn(&str) -> Option<String>) {
        self.nats.apply_env(&lookup);
        self.clickhouse.apply_env(&lookup);
        if let Some(listen) = lookup("CCTV_AGGREGATOR_METRICS_LISTEN").and_then(|v| v.parse().ok())
        {
            self.telemetry.listen = Some(listen);
        }
    }

    /// Cross-field checks.
    pub fn validate(&self) -> Result<(), AggregatorError> {
        self.nats.validate().map_err(AggregatorError::Config)?;
        self.streams.validate().map_err(AggregatorError::Config)?;
        self.clickhouse
            .validate()
            .map_err(AggregatorError::Config)?;
        let settings = &self.aggregator;
        if settings.consumer.is_empty() || settings.consumer.contains(['.', ' ', '*', '>']) {
            return Err(AggregatorError::Config(format!(
                "aggregator.consumer {:?} is not a valid name",
                settings.consumer
            )));
        }
        if settings.batch_max_rows == 0 || settings.batch_max_rows > MAX_BATCH_ROWS {
            return Err(AggregatorError::Config(format!(
                "aggregator.batch_max_rows must be 1..={MAX_BATCH_ROWS} so one batch is one ClickHouse part"
            )));
        }
        if settings.fetch_batch == 0 {
            return Err(AggregatorError::Config(
                "aggregator.fetch_batch must be at least 1".into(),
            ));
        }
        if !settings.filter_subject.is_empty()
            && !settings.filter_subject.starts_with("cctv.events.")
        {
            return Err(AggregatorError::Config(
                "aggregator.filter_subject must be within cctv.events.>".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        AggregatorConfig::default().validate().unwrap();
    }

    #[test]
    fn the_example_configs_parse_and_validate() {
        for path in [
            "../../deploy/local/aggregator.toml",
            "../../deploy/examples/aggregator.toml",
        ] {
            let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
            let config =
                AggregatorConfig::from_toml(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
            config.validate().unwrap_or_else(|e| panic!("{path}: {e}"));
        }
    }

    #[test]
    fn oversized_batches_and_foreign_filters_are_refused() {
        let mut config = AggregatorConfig::default();
        config.aggregator.batch_max_rows = 2_000_000;
        assert!(config.validate().is_err());
        let mut config = AggregatorConfig::default();
        config.aggregator.filter_subject = "cctv.raw.>".into();
        assert!(config.validate().is_err());
        assert!(AggregatorConfig::from_toml("[aggregator]\nrows = 1\n").is_err());
    }
}
