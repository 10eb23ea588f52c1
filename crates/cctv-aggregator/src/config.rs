//! Configuration of the aggregator: one TOML file plus a fixed list of
//! environment overrides: `CCTV_NATS_*` (see `cctv_bus::NatsConfig`),
//! `CCTV_CLICKHOUSE_URL`, `CCTV_CLICKHOUSE_DATABASE`, `CCTV_CLICKHOUSE_USER`,
//! `CCTV_CLICKHOUSE_PASSWORD`, `CCTV_AGGREGATOR_METRICS_LISTEN`.

use std::path::Path;
use std::time::Duration;

use cctv_bus::{NatsConfig, StreamsConfig};
use cctv_runtime::TelemetryConfig;
use cctv_store::{ClickHouseConfig, RollupPolicy};
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
    /// The rollups behind `offence_totals` and `camera_totals`, kept by the
    /// instance that owns partition 0.
    pub rollup: RollupPolicy,
    /// Metrics endpoint and logs.
    pub telemetry: TelemetryConfig,
}

/// Consumer and batching settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AggregatorSettings {
    /// Prefix of the per-partition consumers (`<consumer>-p<k>-<epoch>`).
    /// Any number of instances may share one config: partitions are divided
    /// by leases, not by names.
    pub consumer: String,
    /// This instance's member id in the lease bucket; empty (the default):
    /// `<host>-<pid>-<random>`, unique per process.
    pub instance_id: String,
    /// Lease time to live: a dead owner's partitions are taken over after
    /// about this long (plus one rebuild).
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// How long an event id is remembered per partition (the dedup horizon).
    #[serde(with = "humantime_serde")]
    pub dedup_horizon: Duration,
    /// Unacknowledged messages (event batches) per partition consumer.
    pub max_ack_pending: usize,
    /// Flush a partition's batch at this many rows (whole messages: a batch
    /// may exceed it by one message's events), times f while the instance
    /// owns 1/f of its shard's partitions (f at most 4): inserts keep their
    /// size however many instances share the work.
    pub batch_max_rows: usize,
    /// Flush a batch when its first row is this old.
    #[serde(with = "humantime_serde")]
    pub batch_max_age: Duration,
    /// Flush a batch at this age instead (never shorter than
    /// `batch_max_age`) while the shard is busy: while this instance's last
    /// insert cycle into it carried `busy_rows_per_second` or more, times f
    /// as above. A batch that got nothing for `batch_max_age` still goes, so
    /// the end of a burst waits no longer. Under such load fewer, larger
    /// inserts cost ClickHouse less (it spends most of a small insert's
    /// cost per insert), and the latency is about this long; under lighter
    /// load it is `batch_max_age`'s. Equal to `batch_max_age` turns it off.
    #[serde(with = "humantime_serde")]
    pub batch_max_age_busy: Duration,
    /// The shard's insert rate (rows per second) from which a batch may wait
    /// `batch_max_age_busy`; 0 never.
    pub busy_rows_per_second: usize,
    /// Messages (event batches) requested per pull.
    pub fetch_batch: usize,
    /// How long the instance's insert waits after the first partition batch
    /// for others to join it (group commit), times f as above; it goes at
    /// once when a batch of every owned partition is in. 0 sends what is
    /// queued at once.
    #[serde(with = "humantime_serde")]
    pub insert_linger: Duration,
    /// Rows decoded and not yet written that one instance holds, over all
    /// its partitions; above it the readers hand their open batches to the
    /// writers and read nothing more until written rows free the room (a
    /// row takes about half a KiB). May be exceeded by one message per
    /// partition.
    pub max_rows_in_memory: usize,
    /// Redelivery timeout of the consumer. Correctness does not depend on it.
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// Create or migrate the schema at start (needs DDL rights); when false,
    /// the schema must already be at this build's version.
    pub migrate_on_start: bool,
    /// Longest pause between insert retries while ClickHouse is down.
    #[serde(with = "humantime_serde")]
    pub retry_max_backoff: Duration,
    /// How long a partition keeps trying after errors not known to pass
    /// (an unknown ClickHouse error, a proxy's own error page, a table
    /// missing for a while) with no row written in between, before they
    /// end the aggregator; zero ends it at the first.
    #[serde(with = "humantime_serde")]
    pub refusal_grace: Duration,
    /// Time allowed to flush and ack after a shutdown request.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for AggregatorSettings {
    fn default() -> Self {
        Self {
            consumer: "cctv-aggregator".into(),
            instance_id: String::new(),
            lease_ttl: Duration::from_secs(10),
            dedup_horizon: Duration::from_secs(24 * 3600),
            max_ack_pending: 256,
            batch_max_rows: 5_000,
            batch_max_age: Duration::from_millis(300),
            batch_max_age_busy: Duration::from_secs(1),
            busy_rows_per_second: 25_000,
            fetch_batch: 8,
            insert_linger: Duration::from_millis(100),
            max_rows_in_memory: 200_000,
            ack_wait: Duration::from_secs(300),
            migrate_on_start: true,
            retry_max_backoff: Duration::from_secs(5),
            refusal_grace: Duration::from_secs(120),
            shutdown_grace: Duration::from_secs(20),
        }
    }
}

impl AggregatorConfig {
    /// Reads a TOML file, applies the environment, validates.
    pub fn load(path: Option<&Path>) -> Result<Self, AggregatorError> {
        let mut config = match path {
            Some(path) => {
                let text = cctv_runtime::read_config_file(path).map_err(AggregatorError::Config)?;
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
        self.rollup.validate().map_err(AggregatorError::Config)?;
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
        if settings.max_rows_in_memory < settings.batch_max_rows {
            return Err(AggregatorError::Config(
                "aggregator.max_rows_in_memory must be at least aggregator.batch_max_rows".into(),
            ));
        }
        if settings.lease_ttl < Duration::from_secs(1) {
            return Err(AggregatorError::Config(
                "aggregator.lease_ttl must be at least 1s".into(),
            ));
        }
        if settings.max_ack_pending == 0 {
            return Err(AggregatorError::Config(
                "aggregator.max_ack_pending must be at least 1".into(),
            ));
        }
        let valid_id = |id: &str| {
            id.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !valid_id(&settings.instance_id) {
            return Err(AggregatorError::Config(format!(
                "aggregator.instance_id {:?} may hold only letters, digits, - and _",
                settings.instance_id
            )));
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
    fn oversized_batches_short_leases_and_bad_ids_are_refused() {
        let mut config = AggregatorConfig::default();
        config.aggregator.batch_max_rows = 2_000_000;
        assert!(config.validate().is_err());
        let mut config = AggregatorConfig::default();
        config.aggregator.lease_ttl = Duration::from_millis(10);
        assert!(config.validate().is_err());
        let mut config = AggregatorConfig::default();
        config.aggregator.instance_id = "a.b".into();
        assert!(config.validate().is_err());
        assert!(AggregatorConfig::from_toml("[aggregator]\nrows = 1\n").is_err());
    }
}
