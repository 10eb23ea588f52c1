//! Metric names of the ingest service. Labels are low-cardinality only:
//! format, outcome, reason.

use std::sync::OnceLock;

use cctv_normalize::Format;
use metrics::Counter;

/// Raw messages handled, by `format` and `outcome`
/// (`counted`, `duplicate`, `ignored`, `dead_lettered`).
pub(crate) const RAW_MESSAGES: &str = "cctv_ingest_raw_messages_total";
/// Canonical events published, by `format` and `outcome` (`new`, `duplicate`).
pub(crate) const EVENTS: &str = "cctv_ingest_events_total";
/// Ignored messages by `format` and `reason`.
pub(crate) const IGNORED: &str = "cctv_ingest_ignored_total";
/// Dead-lettered messages by `format` and `reason`.
pub(crate) const DEAD_LETTERS: &str = "cctv_ingest_dead_letters_total";
/// Raw messages whose publishes failed and that will be redelivered.
pub(crate) const RETRIES: &str = "cctv_ingest_retries_total";
/// Seconds spent on one batch, from fetch to acks.
pub(crate) const BATCH_SECONDS: &str = "cctv_ingest_batch_seconds";
/// Messages in one processed batch.
pub(crate) const BATCH_SIZE: &str = "cctv_ingest_batch_messages";
/// Raw messages pending in the consumer (lag), from the last message's metadata.
pub(crate) const LAG: &str = "cctv_ingest_consumer_pending";

/// The `format` label of a raw message: a known format, or `other`, so that
/// metrics keep a bounded label set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FormatLabel(Option<Format>);

impl FormatLabel {
    /// Number of distinct labels: every format plus `other`.
    const COUNT: usize = Format::ALL.len() + 1;

    pub(crate) fn new(format: Option<Format>) -> Self {
        Self(format)
    }

    pub(crate) fn as_str(self) -> &'static str {
        self.0.map_or("other", Format::as_str)
    }

    fn index(self) -> usize {
        match self.0 {
            Some(Format::Canonical) => 0,
            Some(Format::Hikvision) => 1,
            Some(Format::Dahua) => 2,
            Some(Format::Onvif) => 3,
            Some(Format::Deepstream) => 4,
            Some(Format::Frigate) => 5,
            None => 6,
        }
    }
}

/// The final outcome of a raw message (the `outcome` label of
/// [`RAW_MESSAGES`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RawOutcome {
    Counted,
    Duplicate,
    Ignored,
    DeadLettered,
}

impl RawOutcome {
    const COUNT: usize = 4;

    fn as_str(self) -> &'static str {
        match self {
            RawOutcome::Counted => "counted",
            RawOutcome::Duplicate => "duplicate",
            RawOutcome::Ignored => "ignored",
            RawOutcome::DeadLettered => "dead_lettered",
        }
    }
}

/// Handles of the counters incremented for every raw message, one per
/// (format, outcome), each registered with the recorder on its first use.
///
/// A labelled `counter!` builds and hashes its key and looks it up in the
/// recorder on every call; the hot loop increments these handles instead.
/// Registering on first use (not up front) keeps the exposition exactly as
/// before: a series appears when it is first incremented.
pub(crate) struct HotCounters {
    raw_messages: [[OnceLock<Counter>; RawOutcome::COUNT]; FormatLabel::COUNT],
    /// `[new, duplicate]` per format.
    events: [[OnceLock<Counter>; 2]; FormatLabel::COUNT],
}

impl HotCounters {
    pub(crate) fn new() -> Self {
        Self {
            raw_messages: std::array::from_fn(|_| std::array::from_fn(|_| OnceLock::new())),
            events: std::array::from_fn(|_| std::array::from_fn(|_| OnceLock::new())),
        }
    }

    /// [`RAW_MESSAGES`] of `format` and `outcome`.
    pub(crate) fn raw_messages(&self, format: FormatLabel, outcome: RawOutcome) -> &Counter {
        self.raw_messages[format.index()][outcome as usize].get_or_init(|| {
            metrics::counter!(RAW_MESSAGES, "format" => format.as_str(), "outcome" => outcome.as_str())
        })
    }

    /// [`EVENTS`] of `format`, outcome `new`.
    pub(crate) fn events_new(&self, format: FormatLabel) -> &Counter {
        self.events[format.index()][0].get_or_init(
            || metrics::counter!(EVENTS, "format" => format.as_str(), "outcome" => "new"),
        )
    }

    /// [`EVENTS`] of `format`, outcome `duplicate`.
    pub(crate) fn events_duplicate(&self, format: FormatLabel) -> &Counter {
        self.events[format.index()][1].get_or_init(
            || metrics::counter!(EVENTS, "format" => format.as_str(), "outcome" => "duplicate"),
        )
    }
}
