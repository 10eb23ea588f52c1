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
