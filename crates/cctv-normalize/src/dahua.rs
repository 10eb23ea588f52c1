//! Decoder for the `dahua` format (see spec/domain.md). Not written yet.

use crate::decode::{DecodeContext, Decoded};
use crate::outcome::{RejectReason, Rejection};

/// Decodes one `dahua` message.
pub(crate) fn decode(context: &DecodeContext<'_>) -> Result<Decoded, Rejection> {
    Err(Rejection::new(
        RejectReason::UnsupportedFormat,
        format!("format {:?} has no decoder yet", context.format.as_str()),
    ))
}
