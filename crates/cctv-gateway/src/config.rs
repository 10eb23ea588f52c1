//! Configuration of the gateway: one TOML file, every field documented and
//! defaulted, plus a fixed list of environment overrides.
//!
//! Environment overrides: the NATS ones of `cctv-bus` (`CCTV_NATS_URL`,
//! `CCTV_NATS_USER`, `CCTV_NATS_PASSWORD`, `CCTV_NATS_TOKEN`,
//! `CCTV_NATS_NKEY_SEED`, `CCTV_NATS_CREDS`, `CCTV_NATS_TLS_CA`,
//! `CCTV_NATS_TLS_CERT`, `CCTV_NATS_TLS_KEY`, `CCTV_NATS_INBOX_PREFIX`),
//! `CCTV_GATEWAY_METRICS_LISTEN`, `CCTV_GATEWAY_MQTT_PASSWORD`, and the
//! device secrets: each device names the variable holding its token or
//! password (`secret_env`); a variable missing from the environment is looked
//! up in the file named by `CCTV_GATEWAY_SECRETS_FILE` (`NAME=value` lines).
//! Secrets never come from the TOML file: the structs have no field for them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cctv_bus::NatsConfig;
use cctv_normalize::Format;
use cctv_runtime::TelemetryConfig;
use serde::Deserialize;

use crate::auth::{AuthKind, Credential};
use crate::GatewayError;

/// Environment variable naming a file of `NAME=value` secrets.
pub const SECRETS_FILE_ENV: &str = "CCTV_GATEWAY_SECRETS_FILE";
/// Environment variable holding the MQTT broker password.
pub const MQTT_PASSWORD_ENV: &str = "CCTV_GATEWAY_MQTT_PASSWORD";
/// Environment variable overriding `telemetry.listen`.
pub const METRICS_LISTEN_ENV: &str = "CCTV_GATEWAY_METRICS_LISTEN";
/// Largest message either intake accepts, bytes: one NATS message of the
/// server's default `max_payload` (1 MiB) with room for its headers.
pub const MAX_MESSAGE_BYTES: usize = 960 * 1024;
/// Largest secrets file read, bytes.
const MAX_SECRETS_FILE_BYTES: u64 = 1 << 20;

/// The whole gateway configuration.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Who this gateway is.
    pub gateway: GatewaySettings,
    /// NATS connection: the gateway's own user (`gw<N>`), whose inbox prefix
    /// defaults to `_INBOX_<user>`.
    pub nats: NatsConfig,
    /// How messages leave for NATS.
    pub publish: PublishSettings,
    /// The on-disk spool.
    pub spool: SpoolSettings,
    /// The HTTP listener for camera pushes.
    pub http: HttpSettings,
    /// The devices allowed to push, each with its credential.
    pub devices: Vec<DeviceSettings>,
    /// The MQTT subscription (off without `[mqtt]`).
    pub mqtt: Option<MqttSettings>,
    /// Metrics endpoint and logs.
    pub telemetry: TelemetryConfig,
}

/// Identity of the gateway.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewaySettings {
    /// The `<gateway_id>` of every subject (one token: letters, digits, `-`,
    /// `_`); with the shipped `auth.conf` the NATS user of the same name.
    pub id: String,
    /// Time allowed after a shutdown request to send what the spool holds.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            id: "gw1".into(),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// How messages are published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PublishMode {
    /// CloudEvents batches on `cctv.raw.batch.<gateway_id>` (contract 2.1).
    #[default]
    Batch,
    /// One NATS message per vendor message on `cctv.raw.<format>.<gateway_id>`.
    Single,
}

/// Publishing settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublishSettings {
    /// `"batch"` (default) or `"single"`.
    pub mode: PublishMode,
    /// Most vendor messages in one batch (at most 10,000).
    pub batch_max_items: usize,
    /// Most bytes of one batch (at most 1 MiB, and below the server's
    /// `max_payload`).
    pub batch_max_bytes: usize,
    /// How long a batch that is not full waits for more messages.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// Most NATS messages whose acks are awaited together.
    pub max_in_flight: usize,
    /// Time allowed for JetStream's acks; what is not acked is sent again.
    #[serde(with = "humantime_serde")]
    pub ack_timeout: Duration,
}

impl Default for PublishSettings {
    fn default() -> Self {
        Self {
            mode: PublishMode::Batch,
            batch_max_items: 1_000,
            batch_max_bytes: 512 * 1024,
            linger: Duration::from_millis(200),
            max_in_flight: 8,
            ack_timeout: Duration::from_secs(5),
        }
    }
}

/// The spool: every accepted message is written (and fsynced) here before
/// the device gets its answer, and removed once JetStream acknowledged it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolSettings {
    /// Directory of the segment files (created if missing; one gateway each).
    pub dir: PathBuf,
    /// Most bytes of records not yet acknowledged by NATS; beyond it pushes
    /// are refused (HTTP 503, MQTT not acked).
    pub max_bytes: u64,
    /// Size at which a segment file is closed and a new one started; a
    /// segment is deleted once every record in it is acknowledged.
    pub segment_bytes: u64,
}

impl Default for SpoolSettings {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("/var/lib/cctv-gateway/spool"),
            max_bytes: 1 << 30,
            segment_bytes: 16 << 20,
        }
    }
}

/// The HTTP listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Address to listen on; `None` turns HTTP off.
    pub listen: Option<SocketAddr>,
    /// PEM certificate chain; with `tls_key_file`, the listener speaks HTTPS only.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// Largest message passed on (a body, or the alert part of a multipart
    /// body), bytes; larger is answered 413. The ingest refuses more than
    /// 256 KiB anyway.
    pub max_message_bytes: usize,
    /// Largest request body, images included, bytes; larger is answered 413.
    pub max_request_bytes: usize,
    /// Most connections served at once; more wait to be accepted.
    pub max_connections: usize,
    /// Time allowed to send a request head.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            listen: Some(SocketAddr::from(([0, 0, 0, 0], 8088))),
            tls_cert_file: None,
            tls_key_file: None,
            max_message_bytes: 256 * 1024,
            max_request_bytes: 8 << 20,
            max_connections: 1_024,
            header_timeout: Duration::from_secs(10),
        }
    }
}

/// A device allowed to push over HTTP to `/<format>/<id>`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSettings {
    /// The device's name in the URL path (one token).
    pub id: String,
    /// The format it pushes: `hikvision`, `dahua`, `canonical`, `onvif`,
    /// `deepstream` or `frigate`.
    pub format: String,
    /// `"basic"` (user and password) or `"token"` (`Authorization: Bearer`,
    /// or `?token=` for devices that can only set a URL).
    pub auth: AuthKind,
    /// User name of basic auth (default: the device id).
    pub user: Option<String>,
    /// Environment variable (or secrets-file entry) holding the password or token.
    pub secret_env: String,
    /// Camera id sent as the message's `subject` (`Cctv-Camera-Id`); unset
    /// for a recorder with several channels (the registry maps them).
    pub camera_id: Option<String>,
    /// The secret, resolved from `secret_env` at load.
    #[serde(skip)]
    pub secret: Option<String>,
}

/// The MQTT subscription.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttSettings {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Client id: a persistent session (clean session off), so messages not
    /// acked before a crash are sent again on the next connection.
    pub client_id: String,
    /// User name; the password comes from `CCTV_GATEWAY_MQTT_PASSWORD`.
    pub user: Option<String>,
    /// Keep-alive interval.
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
    /// Largest message passed on, bytes; a larger one is dropped with a
    /// warning and counted (it could never be published).
    pub max_message_bytes: usize,
    /// Subscriptions, each with its format and camera mapping.
    pub topics: Vec<TopicSettings>,
    /// The broker password, from `CCTV_GATEWAY_MQTT_PASSWORD` only.
    #[serde(skip)]
    pub password: Option<String>,
}

impl Default for MqttSettings {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 1883,
            client_id: "cctv-gateway".into(),
            user: None,
            keep_alive: Duration::from_secs(30),
            max_message_bytes: 256 * 1024,
            topics: Vec::new(),
            password: None,
        }
    }
}

/// One MQTT subscription.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSettings {
    /// Topic filter (`+` and `#` allowed), subscribed with QoS 1.
    pub filter: String,
    /// Format of its messages.
    pub format: String,
    /// Camera id of every message of the filter.
    pub camera_id: Option<String>,
    /// Camera ids by name: the payload's `camera` for `frigate`, else the
    /// topic level `camera_level`.
    #[serde(default)]
    pub cameras: BTreeMap<String, String>,
    /// Topic level (from 0) that names the camera in `cameras` (not frigate).
    pub camera_level: Option<usize>,
    /// For `onvif` JSON: the MQTT topic levels before the ONVIF topic; a
    /// message without a `Topic` member gets the rest of the MQTT topic as
    /// its `Topic` (docs/formats.md: the gateway adds it).
    pub onvif_topic_levels: Option<usize>,
}

impl GatewayConfig {
    /// Reads a TOML file, applies the environment, resolves secrets, validates.
    ///
    /// # Errors
    /// An unreadable or invalid file, a missing secret, a bad combination.
    pub fn load(path: Option<&Path>) -> Result<Self, GatewayError> {
        let mut config = match path {
            Some(path) => {
                let text = cctv_runtime::read_config_file(path).map_err(GatewayError::Config)?;
                Self::from_toml(&text)?
            }
            None => Self::default(),
        };
        let file_secrets = match std::env::var(SECRETS_FILE_ENV) {
            Ok(path) if !path.is_empty() => read_secrets_file(Path::new(&path))?,
            _ => HashMap::new(),
        };
        config.apply_env(|name| {
            std::env::var(name)
                .ok()
                .filter(|value| !value.is_empty())
                .or_else(|| file_secrets.get(name).cloned())
        });
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text (no environment, no validation).
    ///
    /// # Errors
    /// Syntax errors and unknown fields.
    pub fn from_toml(text: &str) -> Result<Self, GatewayError> {
        toml::from_str(text).map_err(|e| GatewayError::Config(e.to_string()))
    }

    /// Applies the documented environment overrides and resolves secrets
    /// through `lookup`.
    pub fn apply_env(&mut self, lookup: impl Fn(&str) -> Option<String>) {
        self.nats.apply_env(&lookup);
        if let Some(listen) = lookup(METRICS_LISTEN_ENV).and_then(|v| v.parse().ok()) {
            self.telemetry.listen = Some(listen);
        }
        for device in &mut self.devices {
            device.secret = lookup(&device.secret_env).filter(|secret| !secret.is_empty());
        }
        if let Some(mqtt) = &mut self.mqtt {
            mqtt.password = lookup(MQTT_PASSWORD_ENV).filter(|secret| !secret.is_empty());
        }
    }

    /// Cross-field checks.
    ///
    /// # Errors
    /// The first rule broken, named.
    pub fn validate(&self) -> Result<(), GatewayError> {
        let invalid = |message: String| Err(GatewayError::Config(message));
        if !cctv_bus::subjects::is_valid_gateway_id(&self.gateway.id) {
            return invalid(format!(
                "gateway.id {:?} is not one subject token",
                self.gateway.id
            ));
        }
        self.nats.validate().map_err(GatewayError::Config)?;
        let publish = &self.publish;
        if publish.batch_max_items == 0
            || publish.batch_max_items > cctv_normalize::MAX_BATCH_ITEMS
            || publish.batch_max_bytes < 4096
            || publish.batch_max_bytes > cctv_normalize::MAX_BATCH_BYTES
        {
            return invalid(format!(
                "publish.batch_max_items must be 1..={} and batch_max_bytes 4096..={}",
                cctv_normalize::MAX_BATCH_ITEMS,
                cctv_normalize::MAX_BATCH_BYTES
            ));
        }
        if publish.max_in_flight == 0 || publish.ack_timeout.is_zero() {
            return invalid("publish.max_in_flight and ack_timeout must be above 0".into());
        }
        let spool = &self.spool;
        if spool.segment_bytes < 4096 || spool.max_bytes < spool.segment_bytes {
            return invalid(
                "spool.segment_bytes must be at least 4096 and spool.max_bytes at least segment_bytes"
                    .into(),
            );
        }
        let http = &self.http;
        if http.tls_cert_file.is_some() != http.tls_key_file.is_some() {
            return invalid("http.tls_cert_file and http.tls_key_file must be set together".into());
        }
        if http.max_message_bytes == 0
            || http.max_request_bytes < http.max_message_bytes
            || http.max_connections == 0
        {
            return invalid(
                "http.max_message_bytes and max_connections must be above 0, max_request_bytes at least max_message_bytes"
                    .into(),
            );
        }
        // A message too large for a batch goes alone, and must fit in one
        // NATS message with its headers.
        if http.max_message_bytes > MAX_MESSAGE_BYTES {
            return invalid(format!(
                "http.max_message_bytes must be at most {MAX_MESSAGE_BYTES}"
            ));
        }
        let mut ids = HashSet::new();
        for device in &self.devices {
            if !cctv_bus::subjects::is_valid_gateway_id(&device.id) {
                return invalid(format!("device id {:?} is not one token", device.id));
            }
            if !ids.insert(device.id.as_str()) {
                return invalid(format!("device {:?} is listed twice", device.id));
            }
            if Format::parse(&device.format).is_none() {
                return invalid(format!(
                    "device {}: format {:?} is not supported",
                    device.id, device.format
                ));
            }
            if device.secret.is_none() {
                return invalid(format!(
                    "device {}: its secret {} is set neither in the environment nor in {SECRETS_FILE_ENV}",
                    device.id, device.secret_env
                ));
            }
        }
        if let Some(mqtt) = &self.mqtt {
            if mqtt.topics.is_empty() {
                return invalid("[mqtt] needs at least one [[mqtt.topics]]".into());
            }
            if mqtt.user.is_some() != mqtt.password.is_some() {
                return invalid(format!(
                    "mqtt.user and {MQTT_PASSWORD_ENV} must be set together"
                ));
            }
            if mqtt.max_message_bytes == 0
                || mqtt.max_message_bytes > MAX_MESSAGE_BYTES
                || mqtt.client_id.is_empty()
            {
                return invalid(format!(
                    "mqtt.max_message_bytes must be 1..={MAX_MESSAGE_BYTES} and client_id not empty"
                ));
            }
            for topic in &mqtt.topics {
                if Format::parse(&topic.format).is_none() {
                    return invalid(format!(
                        "mqtt topic {}: format {:?} is not supported",
                        topic.filter, topic.format
                    ));
                }
                if !crate::topics::valid_filter(&topic.filter) {
                    return invalid(format!("mqtt topic filter {:?} is not valid", topic.filter));
                }
            }
        }
        Ok(())
    }

    /// The credential of each device, by device id.
    pub(crate) fn credentials(&self) -> HashMap<String, Credential> {
        self.devices
            .iter()
            .filter_map(|device| {
                let secret = device.secret.clone()?;
                let format = Format::parse(&device.format)?;
                Some((
                    device.id.clone(),
                    Credential {
                        kind: device.auth,
                        user: device.user.clone().unwrap_or_else(|| device.id.clone()),
                        secret,
                        format,
                        camera_id: device.camera_id.clone(),
                    },
                ))
            })
            .collect()
    }
}

/// Reads `NAME=value` lines (blank lines and `#` comments skipped).
fn read_secrets_file(path: &Path) -> Result<HashMap<String, String>, GatewayError> {
    let unreadable =
        |e: std::io::Error| GatewayError::Config(format!("cannot read {}: {e}", path.display()));
    let size = std::fs::metadata(path).map_err(unreadable)?.len();
    if size > MAX_SECRETS_FILE_BYTES {
        return Err(GatewayError::Config(format!(
            "{} is {size} bytes, over the {MAX_SECRETS_FILE_BYTES} bytes a secrets file may have",
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(unreadable)?;
    Ok(parse_secrets(&text))
}

/// The `NAME=value` pairs of a secrets file.
fn parse_secrets(text: &str) -> HashMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.trim().to_string(), value.trim().to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(name: &str) -> Option<String> {
        name.starts_with("CCTV_GW_")
            .then(|| format!("secret-{name}"))
    }

    #[test]
    fn the_example_config_parses_and_validates() {
        let path = "../../deploy/examples/gateway.toml";
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let mut config = GatewayConfig::from_toml(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
        config.apply_env(|name| match name {
            MQTT_PASSWORD_ENV => Some("mqtt-secret".into()),
            "CCTV_NATS_PASSWORD" => Some("nats-secret".into()),
            other => secrets(other),
        });
        config.validate().unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(config.devices.len() >= 3, "the example lists every vendor");
        assert!(config.mqtt.is_some());
    }

    #[test]
    fn defaults_are_valid() {
        GatewayConfig::default().validate().unwrap();
    }

    #[test]
    fn secrets_come_from_the_environment_or_the_secrets_file_never_the_toml() {
        let text = "[[devices]]\nid = \"cam1\"\nformat = \"hikvision\"\nauth = \"basic\"\n\
                    secret_env = \"CCTV_GW_CAM1\"\n";
        let mut config = GatewayConfig::from_toml(text).unwrap();
        assert!(config.validate().is_err(), "a device without its secret");
        config.apply_env(secrets);
        config.validate().unwrap();
        assert_eq!(
            config.credentials()["cam1"].secret,
            "secret-CCTV_GW_CAM1".to_string()
        );
        let with_secret = format!("{text}secret = \"x\"\n");
        assert!(GatewayConfig::from_toml(&with_secret).is_err());
        assert!(GatewayConfig::from_toml("[mqtt]\npassword = \"x\"\n").is_err());
        let file = parse_secrets("# comment\n\nCCTV_GW_CAM1 = abc \nbroken line\n");
        assert_eq!(file.get("CCTV_GW_CAM1").map(String::as_str), Some("abc"));
        assert_eq!(file.len(), 1);
    }

    #[test]
    fn unknown_keys_and_bad_combinations_are_refused() {
        assert!(GatewayConfig::from_toml("[gateway]\nname = \"x\"\n").is_err());
        for bad in [
            "[gateway]\nid = \"gw.1\"\n",
            "[publish]\nbatch_max_items = 0\n",
            "[publish]\nbatch_max_bytes = 2000000\n",
            "[spool]\nmax_bytes = 100\n",
            "[http]\ntls_cert_file = \"/x.pem\"\n",
            "[http]\nmax_message_bytes = 2000000\nmax_request_bytes = 9000000\n",
            "[mqtt]\nhost = \"x\"\n",
            "[mqtt]\n[[mqtt.topics]]\nfilter = \"a/#/b\"\nformat = \"frigate\"\n",
            "[mqtt]\n[[mqtt.topics]]\nfilter = \"a\"\nformat = \"axis\"\n",
            "[[devices]]\nid = \"c\"\nformat = \"axis\"\nauth = \"token\"\nsecret_env = \"CCTV_GW_C\"\n",
        ] {
            let mut config = GatewayConfig::from_toml(bad).unwrap_or_else(|e| panic!("{bad}: {e}"));
            config.apply_env(secrets);
            assert!(config.validate().is_err(), "accepted: {bad}");
        }
    }
}
