//! Configuration of the ingest service: one TOML file, every field documented
//! and defaulted, plus a fixed list of environment overrides.
//!
//! Environment overrides: `CCTV_NATS_URL`, `CCTV_NATS_USER`,
//! `CCTV_NATS_PASSWORD`, `CCTV_NATS_TOKEN`, `CCTV_NATS_NKEY_SEED`,
//! `CCTV_NATS_CREDS`, `CCTV_NATS_TLS_CA`, `CCTV_NATS_TLS_CERT`,
//! `CCTV_NATS_TLS_KEY`, `CCTV_INGEST_METRICS_LISTEN`, `CCTV_PLATE_HASH_KEY`.
//! Secrets come only from the environment.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cctv_bus::{NatsConfig, StreamsConfig};
use cctv_normalize::PlateKey;
use cctv_runtime::TelemetryConfig;
use serde::Deserialize;

use crate::IngestError;

/// The whole ingest configuration.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// NATS connection.
    pub nats: NatsConfig,
    /// Stream names and limits (created or verified at start).
    pub streams: StreamsConfig,
    /// Consumer and batching.
    pub ingest: IngestSettings,
    /// Reference data files.
    pub data: DataSettings,
    /// Input limits.
    pub limits: LimitsSettings,
    /// What personal data leaves the service in clear.
    pub privacy: PrivacySettings,
    /// Metrics endpoint and logs.
    pub telemetry: TelemetryConfig,
}

/// Consumer and batching settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestSettings {
    /// Durable consumer name on `CCTV_RAW`; instances with the same name share the work.
    pub consumer: String,
    /// Most raw messages handled as one batch (their publishes are pipelined).
    pub batch_size: usize,
    /// How long a batch that is not full yet waits for more messages: raw
    /// messages from single-message gateways trickle in, and a batch of a
    /// few makes event batches of one or two events per partition, each a
    /// NATS message the aggregator holds unacked. 0 takes what is ready.
    #[serde(with = "humantime_serde")]
    pub batch_linger: Duration,
    /// Most batches whose publishes are in flight at once.
    pub max_in_flight_batches: usize,
    /// Most bytes of raw payloads one batch holds (a larger message makes a
    /// batch of its own). With `max_in_flight_batches` it bounds the raw
    /// bytes, and what they turn into, in memory by bytes, not only by count:
    /// a gateway batch of 100 items counts as one message. A pull delivers
    /// at most this many bytes too, raised at start to twice the server's
    /// `max_payload` so that every message can be delivered.
    pub max_batch_bytes: usize,
    /// Time JetStream waits for an ack before redelivering a raw message.
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// Most raw messages delivered but not yet acked.
    pub max_ack_pending: i64,
    /// Most events in one event batch message on `CCTV_EVENTS`.
    pub event_batch_max_events: usize,
    /// Most bytes of event JSON in one event batch message.
    pub event_batch_max_bytes: usize,
    /// Time allowed to finish in-flight batches after a shutdown request.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for IngestSettings {
    fn default() -> Self {
        Self {
            consumer: "cctv-ingest".into(),
            batch_size: 1000,
            batch_linger: Duration::from_millis(20),
            max_in_flight_batches: 4,
            max_batch_bytes: 2 * 1024 * 1024,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 20_000,
            event_batch_max_events: 2_000,
            event_batch_max_bytes: 512 * 1024,
            shutdown_grace: Duration::from_secs(20),
        }
    }
}

/// Where the reference data comes from. Unset paths use the data compiled
/// into the binary (the repository's `data/`); the registry defaults to empty.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct DataSettings {
    /// Offence taxonomy TOML.
    pub taxonomy_path: Option<PathBuf>,
    /// Regions TOML.
    pub regions_path: Option<PathBuf>,
    /// Camera registry CSV.
    pub registry_path: Option<PathBuf>,
}

/// Input limits (see `cctv_normalize::Limits`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSettings {
    /// Largest payload accepted, bytes.
    pub max_payload_bytes: usize,
    /// Longest string field accepted, bytes.
    pub max_string_bytes: usize,
    /// Most offences in one message.
    pub max_events_per_message: usize,
    /// Deepest JSON nesting accepted.
    pub max_json_depth: usize,
    /// Deepest XML element nesting accepted.
    pub max_xml_depth: usize,
    /// How far in the future a detection may be.
    #[serde(with = "humantime_serde")]
    pub max_future: Duration,
    /// How far in the past a detection may be.
    #[serde(with = "humantime_serde")]
    pub max_past: Duration,
    /// Device clock ahead of receipt by more than this is flagged.
    #[serde(with = "humantime_serde")]
    pub max_clock_skew: Duration,
}

impl Default for LimitsSettings {
    fn default() -> Self {
        let limits = cctv_normalize::Limits::default();
        let std = |delta: chrono::TimeDelta| delta.to_std().unwrap_or_default();
        Self {
            max_payload_bytes: limits.max_payload_bytes,
            max_string_bytes: limits.max_string_bytes,
            max_events_per_message: limits.max_events_per_message,
            max_json_depth: limits.max_json_depth,
            max_xml_depth: limits.max_xml_depth,
            max_future: std(limits.max_future),
            max_past: std(limits.max_past),
            max_clock_skew: std(limits.max_clock_skew),
        }
    }
}

impl LimitsSettings {
    /// The normaliser's limits.
    pub fn to_limits(&self) -> cctv_normalize::Limits {
        let delta = |d: Duration| chrono::TimeDelta::from_std(d).unwrap_or(chrono::TimeDelta::MAX);
        cctv_normalize::Limits {
            max_payload_bytes: self.max_payload_bytes,
            max_string_bytes: self.max_string_bytes,
            max_events_per_message: self.max_events_per_message,
            max_json_depth: self.max_json_depth,
            max_xml_depth: self.max_xml_depth,
            max_future: delta(self.max_future),
            max_past: delta(self.max_past),
            max_clock_skew: delta(self.max_clock_skew),
        }
    }
}

/// Environment variable holding the plate hash key (`privacy.plates =
/// "keyed_hash"`), at least [`PlateKey::MIN_BYTES`] bytes.
pub const PLATE_HASH_KEY_ENV: &str = "CCTV_PLATE_HASH_KEY";

/// How plates are stored in the events (and so in ClickHouse).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlateStorage {
    /// The plate as the camera read it.
    #[default]
    Clear,
    /// `hmac:<hex>`: HMAC-SHA256 of the normalised plate under the key from
    /// `CCTV_PLATE_HASH_KEY`, first 16 bytes. Counts per plate still work.
    KeyedHash,
}

/// Privacy settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrivacySettings {
    /// `"clear"` (default) or `"keyed_hash"`.
    pub plates: PlateStorage,
    /// The plate hash key, from `CCTV_PLATE_HASH_KEY` only (never from the
    /// file). Its `Debug` form is redacted.
    #[serde(skip)]
    pub plate_hash_key: Option<PlateHashKey>,
}

/// The raw bytes of `CCTV_PLATE_HASH_KEY`, kept as given so that
/// [`IngestConfig::validate`] can name a key that is too short.
#[derive(Clone)]
pub struct PlateHashKey(Vec<u8>);

impl PlateHashKey {
    /// Wraps the key bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }

    /// The normaliser's key, `None` when too short.
    pub fn to_plate_key(&self) -> Option<PlateKey> {
        PlateKey::new(self.0.clone())
    }
}

impl std::fmt::Debug for PlateHashKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PlateHashKey(<{} bytes, redacted>)", self.0.len())
    }
}

impl PrivacySettings {
    /// The key the normaliser hashes plates with: `None` when plates are
    /// stored in clear; an error naming the variable when it is missing or
    /// too short.
    pub fn plate_key(&self) -> Result<Option<PlateKey>, IngestError> {
        if self.plates == PlateStorage::Clear {
            return Ok(None);
        }
        let Some(key) = &self.plate_hash_key else {
            return Err(IngestError::Config(format!(
                "privacy.plates = \"keyed_hash\" needs the key in {PLATE_HASH_KEY_ENV} \
                 (at least {} bytes), which is not set",
                PlateKey::MIN_BYTES
            )));
        };
        match key.to_plate_key() {
            Some(plate_key) => Ok(Some(plate_key)),
            None => Err(IngestError::Config(format!(
                "{PLATE_HASH_KEY_ENV} is {} bytes; privacy.plates = \"keyed_hash\" needs \
                 at least {}",
                key.0.len(),
                PlateKey::MIN_BYTES
            ))),
        }
    }
}

impl IngestConfig {
    /// Reads a TOML file, applies the environment, validates.
    pub fn load(path: Option<&Path>) -> Result<Self, IngestError> {
        let mut config = match path {
            Some(path) => {
                let text = cctv_runtime::read_config_file(path).map_err(IngestError::Config)?;
                Self::from_toml(&text)?
            }
            None => Self::default(),
        };
        config.apply_env(|name| std::env::var(name).ok());
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text (no environment, no validation).
    pub fn from_toml(text: &str) -> Result<Self, IngestError> {
        toml::from_str(text).map_err(|e| IngestError::Config(e.to_string()))
    }

    /// Applies the documented environment overrides.
    pub fn apply_env(&mut self, lookup: impl Fn(&str) -> Option<String>) {
        self.nats.apply_env(&lookup);
        if let Some(listen) = lookup("CCTV_INGEST_METRICS_LISTEN").and_then(|v| v.parse().ok()) {
            self.telemetry.listen = Some(listen);
        }
        if let Some(key) = lookup(PLATE_HASH_KEY_ENV).filter(|key| !key.is_empty()) {
            self.privacy.plate_hash_key = Some(PlateHashKey::new(key));
        }
    }

    /// Cross-field checks.
    pub fn validate(&self) -> Result<(), IngestError> {
        self.nats.validate().map_err(IngestError::Config)?;
        self.streams.validate().map_err(IngestError::Config)?;
        let settings = &self.ingest;
        if settings.consumer.is_empty() || settings.consumer.contains(['.', ' ', '*', '>']) {
            return Err(IngestError::Config(format!(
                "ingest.consumer {:?} is not a valid name",
                settings.consumer
            )));
        }
        if settings.batch_size == 0
            || settings.max_in_flight_batches == 0
            || settings.event_batch_max_events == 0
            || settings.event_batch_max_bytes < 4096
        {
            return Err(IngestError::Config(
                "ingest.batch_size, max_in_flight_batches and event_batch_max_events must be at least 1, event_batch_max_bytes at least 4096"
                    .into(),
            ));
        }
        let in_flight = settings
            .batch_size
            .saturating_mul(settings.max_in_flight_batches);
        if i64::try_from(in_flight).unwrap_or(i64::MAX) > settings.max_ack_pending {
            return Err(IngestError::Config(
                "ingest.max_ack_pending must be at least batch_size * max_in_flight_batches".into(),
            ));
        }
        if self.streams.raw.duplicate_window < settings.ack_wait {
            return Err(IngestError::Config(
                "streams.raw.duplicate_window must exceed ingest.ack_wait so redeliveries stay deduplicated".into(),
            ));
        }
        self.privacy.plate_key()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        IngestConfig::default().validate().unwrap();
    }

    #[test]
    fn the_example_configs_parse_and_validate() {
        for path in [
            "../../deploy/local/ingest.toml",
            "../../deploy/examples/ingest.toml",
        ] {
            let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
            let config = IngestConfig::from_toml(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
            config.validate().unwrap_or_else(|e| panic!("{path}: {e}"));
        }
    }

    #[test]
    fn unknown_keys_and_bad_combinations_are_refused() {
        assert!(IngestConfig::from_toml("[ingest]\nbatch = 5\n").is_err());
        let mut config = IngestConfig::default();
        config.ingest.max_ack_pending = 10;
        assert!(config.validate().is_err());
        let mut config = IngestConfig::default();
        config.ingest.consumer = "a.b".into();
        assert!(config.validate().is_err());
    }

    #[test]
    fn keyed_plate_hashing_needs_a_long_enough_key_from_the_environment() {
        let text = "[privacy]\nplates = \"keyed_hash\"\n";
        let config = IngestConfig::from_toml(text).unwrap();
        assert_eq!(config.privacy.plates, PlateStorage::KeyedHash);
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains(PLATE_HASH_KEY_ENV), "{error}");

        let mut short = config.clone();
        short.apply_env(|name| (name == PLATE_HASH_KEY_ENV).then(|| "x".repeat(31)));
        let error = short.validate().unwrap_err().to_string();
        assert!(
            error.contains(PLATE_HASH_KEY_ENV) && error.contains("31 bytes"),
            "{error}"
        );

        let mut keyed = config;
        keyed.apply_env(|name| (name == PLATE_HASH_KEY_ENV).then(|| "k".repeat(32)));
        keyed.validate().unwrap();
        assert!(keyed.privacy.plate_key().unwrap().is_some());
        assert!(!format!("{keyed:?}").contains(&"k".repeat(32)));

        // The key never comes from the file, and the mode is spelled exactly.
        assert!(IngestConfig::from_toml("[privacy]\nplate_hash_key = \"abc\"\n").is_err());
        assert!(IngestConfig::from_toml("[privacy]\nplates = \"hashed\"\n").is_err());
        let clear = IngestConfig::from_toml("[privacy]\nplates = \"clear\"\n").unwrap();
        assert!(clear.privacy.plate_key().unwrap().is_none());
    }

    #[test]
    fn durations_are_human_readable() {
        let config = IngestConfig::from_toml(
            "[ingest]\nack_wait = \"45s\"\n[limits]\nmax_past = \"30days\"\n",
        )
        .unwrap();
        assert_eq!(config.ingest.ack_wait, Duration::from_secs(45));
        assert_eq!(config.limits.max_past, Duration::from_secs(30 * 86_400));
    }
}
