//! What every format decoder shares: its input ([`DecodeContext`]) and its
//! output ([`Decoded`]).
//!
//! A decoder is a pure function `fn decode(&DecodeContext) -> Result<Decoded,
//! Rejection>`. It reads the payload, applies the vendor's lifecycle rules
//! (which message of an incident counts, which are repeats), and returns
//! vendor-neutral [`Detection`]s. The [`crate::Normalizer`] then resolves
//! names, cameras and regions, checks limits and derives event ids.

use cctv_event::{NameMatch, Taxonomy};

use crate::detection::Detection;
use crate::format::Format;
use crate::limits::Limits;
use crate::outcome::IgnoreReason;
use crate::raw::RawMessage;

/// Everything a decoder may look at.
pub(crate) struct DecodeContext<'a> {
    /// The raw message: payload and metadata.
    pub(crate) raw: &'a RawMessage<'a>,
    /// The payload as text (the normaliser checked UTF-8 already).
    pub(crate) text: &'a str,
    /// The format being decoded.
    pub(crate) format: Format,
    /// Offence names, for decoders whose vendor sends names that may or may
    /// not be offences (rules, zones, event types).
    pub(crate) taxonomy: &'a Taxonomy,
    /// Input limits.
    pub(crate) limits: &'a Limits,
}

impl DecodeContext<'_> {
    /// How the taxonomy classifies `name` for this format.
    pub(crate) fn classify(&self, name: &str) -> NameMatch<'_> {
        self.taxonomy.resolve(self.format.as_str(), name)
    }

    /// Whether `name` maps to an offence for this format.
    pub(crate) fn is_offence(&self, name: &str) -> bool {
        matches!(self.classify(name), NameMatch::Offence(_))
    }
}

/// A decoder's result for a well-formed message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Decoded {
    /// Offence candidates (at least one). Several may name the same offence
    /// (pictures of one group); the normaliser keeps one per event id.
    Detections(Vec<Detection>),
    /// A valid message that is not an offence.
    Ignored(IgnoreReason),
}

impl Decoded {
    /// Combines the per-event results of a multi-event message: any
    /// detections win; otherwise the first ignore reason stands.
    pub(crate) fn combine(parts: impl IntoIterator<Item = Decoded>) -> Decoded {
        let mut detections = Vec::new();
        let mut first_reason = None;
        for part in parts {
            match part {
                Decoded::Detections(mut found) => detections.append(&mut found),
                Decoded::Ignored(reason) => {
                    first_reason.get_or_insert(reason);
                }
            }
        }
        if detections.is_empty() {
            return Decoded::Ignored(first_reason.unwrap_or(IgnoreReason::NotOffence));
        }
        Decoded::Detections(detections)
    }
}

/// The decoders' unit-test harness: one raw message around a text, the
/// builtin taxonomy, and the outcome checks every decoder's tests use.
#[cfg(test)]
pub(crate) mod testing {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use cctv_event::Taxonomy;

    use super::{DecodeContext, Decoded};
    use crate::detection::Detection;
    use crate::format::Format;
    use crate::limits::Limits;
    use crate::outcome::{IgnoreReason, RejectReason, Rejection};
    use crate::raw::RawMessage;

    /// A format's decoder.
    pub(crate) type Decoder = fn(&DecodeContext<'_>) -> Result<Decoded, Rejection>;

    /// Decodes `text` as a message of `format` from gateway `gw-unit`, with
    /// `camera_id` as its `Cctv-Camera-Id` header, under `limits`.
    pub(crate) fn decode_with(
        decoder: Decoder,
        format: Format,
        text: &str,
        camera_id: Option<&str>,
        limits: &Limits,
    ) -> Result<Decoded, Rejection> {
        let taxonomy = Taxonomy::builtin().unwrap();
        let raw = RawMessage {
            format: format.as_str(),
            gateway_id: "gw-unit",
            payload: text.as_bytes(),
            msg_id: None,
            camera_id,
            received_at: None,
            stored_at: None,
        };
        decoder(&DecodeContext {
            raw: &raw,
            text,
            format,
            taxonomy: &taxonomy,
            limits,
        })
    }

    /// The detections of an outcome that must have some.
    pub(crate) fn detections(decoded: Result<Decoded, Rejection>) -> Vec<Detection> {
        match decoded {
            Ok(Decoded::Detections(found)) => found,
            other => panic!("expected detections, got {other:?}"),
        }
    }

    /// The one detection of an outcome that must have exactly one.
    pub(crate) fn one_detection(decoded: Result<Decoded, Rejection>) -> Detection {
        let mut found = detections(decoded);
        assert_eq!(found.len(), 1, "expected one detection, got {found:?}");
        found.remove(0)
    }

    /// The reason of an outcome that must be an ignore.
    pub(crate) fn ignored(decoded: Result<Decoded, Rejection>) -> IgnoreReason {
        match decoded {
            Ok(Decoded::Ignored(reason)) => reason,
            other => panic!("expected an ignore, got {other:?}"),
        }
    }

    /// The reason of an outcome that must be a rejection with a detail.
    pub(crate) fn rejected(decoded: Result<Decoded, Rejection>) -> RejectReason {
        match decoded {
            Err(rejection) => {
                assert!(!rejection.detail.is_empty(), "{rejection:?} has no detail");
                rejection.reason
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
    }
}
