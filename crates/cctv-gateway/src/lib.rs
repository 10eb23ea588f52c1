//! `cctv-gateway`: one per site, brings camera pushes onto NATS without
//! losing an event.
//!
//! Cameras push over HTTP (`POST /<format>/<device>`: Hikvision ISAPI
//! alerts, Dahua event pushes, canonical JSON webhooks, plain or multipart
//! with pictures, which stay out of NATS) or publish to an MQTT broker
//! (Frigate, ONVIF JSON). Every accepted message is first written and
//! fsynced into an on-disk spool (`spool.rs`), then answered; the publisher
//! (`publisher.rs`) sends the spool in order to `cctv.raw.batch.<gateway>`
//! as CloudEvents batches (or one message at a time on
//! `cctv.raw.<format>.<gateway>`) with JetStream acks, and removes what was
//! acknowledged. A full spool refuses new pushes (HTTP 503, MQTT not acked).
//!
//! Pure cores with unit tests: `auth.rs` (device credentials), `ids.rs`
//! (message and batch ids), `record.rs` (the spool's frames), `intake.rs`
//! (multipart), `topics.rs` (MQTT routing), `batching.rs` (when and how to
//! publish). IO at the edges: `http.rs`, `mqtt.rs`, `spool.rs`,
//! `publisher.rs`, `service.rs`.

mod auth;
mod batching;
mod config;
mod error;
mod http;
mod ids;
mod intake;
mod metrics;
mod mqtt;
mod publisher;
mod record;
mod service;
mod spool;
mod topics;

pub use auth::AuthKind;
pub use batching::ATTACHMENTS_HEADER;
pub use config::{
    DeviceSettings, GatewayConfig, GatewaySettings, HttpSettings, MqttSettings, PublishMode,
    PublishSettings, SpoolSettings, TopicSettings, MAX_MESSAGE_BYTES, METRICS_LISTEN_ENV,
    MQTT_PASSWORD_ENV, SECRETS_FILE_ENV,
};
pub use error::GatewayError;
pub use service::run;
