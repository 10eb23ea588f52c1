//! Metric names of the gateway. Labels are low-cardinality only: source
//! (`http`, `mqtt`), format, reason, outcome; never a device or camera.

/// Vendor messages accepted (durable in the spool), by `source` and `format`.
pub(crate) const RECEIVED: &str = "cctv_gateway_received_total";
/// Pushes refused, by `source` and `reason` (`unauthorized`, `too_large`,
/// `spool_full`, `bad_request`, `not_found`, `method_not_allowed`,
/// `spool_error`).
pub(crate) const REFUSED: &str = "cctv_gateway_refused_total";
/// Images left out of multipart pushes (their names and sizes are logged).
pub(crate) const ATTACHMENTS: &str = "cctv_gateway_attachments_total";
/// Bytes of the images left out.
pub(crate) const ATTACHMENT_BYTES: &str = "cctv_gateway_attachment_bytes_total";
/// Vendor messages acknowledged by JetStream (then removed from the spool).
pub(crate) const PUBLISHED: &str = "cctv_gateway_published_total";
/// NATS messages sent, by `outcome` (`stored`, `duplicate`, `failed`).
pub(crate) const NATS_MESSAGES: &str = "cctv_gateway_nats_messages_total";
/// Whether the publisher has a NATS connection whose publishes are acked (0/1).
pub(crate) const NATS_UP: &str = "cctv_gateway_nats_up";
/// Frame bytes in the spool not yet acknowledged by NATS.
pub(crate) const SPOOL_BYTES: &str = "cctv_gateway_spool_bytes";
/// Records in the spool not yet acknowledged by NATS.
pub(crate) const SPOOL_RECORDS: &str = "cctv_gateway_spool_records";
/// The spool's bound, bytes.
pub(crate) const SPOOL_MAX_BYTES: &str = "cctv_gateway_spool_max_bytes";
/// Group commits (one write and one fsync each).
pub(crate) const SPOOL_FSYNCS: &str = "cctv_gateway_spool_fsyncs_total";
/// Bytes of damaged spool frames that could not be read back.
pub(crate) const SPOOL_CORRUPT_BYTES: &str = "cctv_gateway_spool_corrupt_bytes_total";
/// MQTT messages held without their PUBACK because the spool was full.
pub(crate) const MQTT_HELD: &str = "cctv_gateway_mqtt_held_total";
/// MQTT connection errors (each followed by a reconnect).
pub(crate) const MQTT_ERRORS: &str = "cctv_gateway_mqtt_connection_errors_total";
