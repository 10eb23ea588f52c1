//! The input of every decoder: one vendor message as it arrived, with the
//! metadata of its subject and headers. It sits below the decoders and the
//! normaliser, which both import it (the normaliser imports the decoders, the
//! decoders import nothing above them).

use chrono::{DateTime, Utc};

/// A raw message as it arrived on `cctv.raw.<format>.<gateway_id>`.
#[derive(Debug, Clone, Copy)]
pub struct RawMessage<'a> {
    /// The `<format>` subject token.
    pub format: &'a str,
    /// The `<gateway_id>` subject token.
    pub gateway_id: &'a str,
    /// The payload exactly as published.
    pub payload: &'a [u8],
    /// `Nats-Msg-Id` header, if any.
    pub msg_id: Option<&'a str>,
    /// `Cctv-Camera-Id` header, if any: wins over the payload's camera.
    pub camera_id: Option<&'a str>,
    /// `Cctv-Received-At` header, if any (RFC 3339).
    pub received_at: Option<&'a str>,
    /// When the raw stream stored the message: the receipt time used when the
    /// gateway sent no `Cctv-Received-At`.
    pub stored_at: Option<DateTime<Utc>>,
}
