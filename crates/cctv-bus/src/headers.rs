//! Header names of the contract and of our own dead letters.

/// JetStream deduplication id.
pub const NATS_MSG_ID: &str = "Nats-Msg-Id";
/// A replayed message's original message id (`cctvctl dlq replay`): its
/// identity, used in place of `Nats-Msg-Id` (which then names the replay,
/// so the raw stream's duplicate window does not swallow it).
pub const ORIGINAL_MSG_ID: &str = "Cctv-Original-Msg-Id";
/// Camera named by the gateway; wins over the payload.
pub const CAMERA_ID: &str = "Cctv-Camera-Id";
/// RFC 3339 time the gateway received the message.
pub const RECEIVED_AT: &str = "Cctv-Received-At";
/// Dead letter: short stable reason code.
pub const ERROR_REASON: &str = "Cctv-Error-Reason";
/// Dead letter: human text.
pub const ERROR: &str = "Cctv-Error";
/// Dead letter: the subject the original was published to.
pub const SOURCE_SUBJECT: &str = "Cctv-Source-Subject";
/// Dead letter: the original's stream and sequence, `<stream>:<seq>`.
pub const SOURCE_SEQUENCE: &str = "Cctv-Source-Sequence";
/// Dead letter: the original's `Nats-Msg-Id`, if it had one.
pub const SOURCE_MSG_ID: &str = "Cctv-Source-Msg-Id";
/// Dead letter: when the message was rejected (RFC 3339).
pub const REJECTED_AT: &str = "Cctv-Rejected-At";
/// Dead letter of a batch item: its 0-based position in the gateway batch.
pub const BATCH_ITEM: &str = "Cctv-Batch-Item";
/// Dead letter: the format of the rejected message (for a batch item, its own).
pub const SOURCE_FORMAT: &str = "Cctv-Source-Format";
/// Content type of a message (`application/vnd.cctv.event-batch.v1` on event batches).
pub const CONTENT_TYPE: &str = "Content-Type";
