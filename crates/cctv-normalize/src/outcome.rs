//! What became of a raw message: offences, ignored, or rejected with a reason.

use cctv_event::OffenceEvent;

/// The result of normalising one raw message.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// One or more offences to publish (each counted once downstream).
    Offences(Vec<OffenceEvent>),
    /// A valid message that is not an offence; counted in metrics only.
    Ignored(IgnoreReason),
    /// The message cannot be used; it goes to the dead-letter stream.
    Rejected(Rejection),
}

/// Why a valid message is not an offence. Stable names, used as metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IgnoreReason {
    /// A device heartbeat.
    Heartbeat,
    /// A plate read with no violation.
    PlateRead,
    /// A state (traffic jam, flow) rather than an offence.
    State,
    /// An event type or rule that maps to no offence.
    NotOffence,
    /// A repeat of an incident already counted (a `Stop`, an `inactive`, an
    /// `Initialized` replay, a later picture of a group).
    LifecycleRepeat,
    /// Marked as a false positive by the source.
    FalsePositive,
}

impl IgnoreReason {
    /// Stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            IgnoreReason::Heartbeat => "heartbeat",
            IgnoreReason::PlateRead => "plate_read",
            IgnoreReason::State => "state",
            IgnoreReason::NotOffence => "not_offence",
            IgnoreReason::LifecycleRepeat => "lifecycle_repeat",
            IgnoreReason::FalsePositive => "false_positive",
        }
    }
}

/// Why a message was rejected. The code is the `Cctv-Error-Reason` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// The subject's format token is not supported.
    UnsupportedFormat,
    /// The payload is larger than the configured limit.
    PayloadTooLarge,
    /// The payload is not valid UTF-8 where text is required.
    InvalidUtf8,
    /// The payload does not parse (JSON, XML or text syntax).
    Malformed,
    /// The payload nests deeper than allowed.
    TooDeep,
    /// An XML payload carries a document type declaration (entities, DTD).
    DtdForbidden,
    /// A required field is missing or null.
    MissingField,
    /// A field has the wrong type or an impossible value.
    InvalidField,
    /// A string field is longer than allowed.
    FieldTooLong,
    /// The offence name is neither a canonical code nor a known alias.
    UnknownOffence,
    /// The time cannot be parsed.
    InvalidTime,
    /// The time is too far in the future or the past.
    TimeOutOfRange,
    /// The confidence is outside its scale.
    ConfidenceOutOfRange,
    /// The message carries more offences than allowed, or a batch more
    /// items than allowed.
    TooManyEvents,
    /// An item of a CloudEvents batch is not a usable CloudEvent: not an
    /// object, wrong `specversion`, no `id`, a `type` outside
    /// `kz.cctv.raw.<format>`, no `source`, or bad `data` / `data_base64`.
    InvalidBatchItem,
    /// An item of a batch names another gateway as its `source`: no gateway
    /// speaks for another.
    ForeignSource,
}

impl RejectReason {
    /// Stable short code, sent as `Cctv-Error-Reason` and used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::UnsupportedFormat => "unsupported_format",
            RejectReason::PayloadTooLarge => "payload_too_large",
            RejectReason::InvalidUtf8 => "invalid_utf8",
            RejectReason::Malformed => "malformed",
            RejectReason::TooDeep => "too_deep",
            RejectReason::DtdForbidden => "dtd_forbidden",
            RejectReason::MissingField => "missing_field",
            RejectReason::InvalidField => "invalid_field",
            RejectReason::FieldTooLong => "field_too_long",
            RejectReason::UnknownOffence => "unknown_offence",
            RejectReason::InvalidTime => "invalid_time",
            RejectReason::TimeOutOfRange => "time_out_of_range",
            RejectReason::ConfidenceOutOfRange => "confidence_out_of_range",
            RejectReason::TooManyEvents => "too_many_events",
            RejectReason::InvalidBatchItem => "invalid_batch_item",
            RejectReason::ForeignSource => "foreign_source",
        }
    }
}

/// A rejection: a stable reason code and a human explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Stable reason.
    pub reason: RejectReason,
    /// Human text (`Cctv-Error`), naming the field or limit at fault.
    pub detail: String,
}

impl Rejection {
    /// Builds a rejection.
    pub fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// A rejection for a required field that is missing, null or empty.
pub(crate) fn missing_field(field: &str) -> Rejection {
    Rejection::new(
        RejectReason::MissingField,
        format!("required field {field} is missing or empty"),
    )
}

/// At most 64 characters of a value quoted in a rejection detail.
pub(crate) fn clip(text: &str) -> &str {
    match text.char_indices().nth(64) {
        Some((index, _)) => text.get(..index).unwrap_or(text),
        None => text,
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason.as_str(), self.detail)
    }
}
