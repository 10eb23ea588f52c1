//! Metric names of the ingest service. Labels are low-cardinality only:
//! format, outcome, reason.

use std::sync::OnceLock;

use cctv_normalize::Format;
use metrics::Counter;

/// Vendor messages handled (a gateway batch counts per item), by `format`
/// and `outcome` (`published`, `ignored`, `dead_lettered`).
pub(crate) const RAW_MESSAGES: &str = "cctv_ingest_raw_messages_total";
/// Canonical events published, by `format` (new or repeated: the
/// aggregator's `cctv_aggregator_events_total` tells which).
pub(crate) const EVENTS: &str = "cctv_ingest_events_total";
/// Event batch messages published to `CCTV_EVENTS`.
pub(crate) const EVENT_BATCHES: &str = "cctv_ingest_event_batches_total";
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

/// The `format` label of a vendor message: a known format, `batch` (a
/// gateway batch refused whole, or an item too broken to name its format),
/// or `other`, so that metrics keep a bounded label set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FormatLabel {
    Known(Format),
    Batch,
    Other,
}

impl FormatLabel {
    /// Number of distinct labels: every format plus `batch` and `other`.
    const COUNT: usize = Format::ALL.len() + 2;

    pub(crate) fn new(format: Option<Format>) -> Self {
        format.map_or(FormatLabel::Other, FormatLabel::Known)
    }

    /// The label of a format token.
    pub(crate) fn parse(token: &str) -> Self {
        Self::new(Format::parse(token))
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            FormatLabel::Known(format) => format.as_str(),
            FormatLabel::Batch => "batch",
            FormatLabel::Other => "other",
        }
    }

    fn index(self) -> usize {
        match self {
            FormatLabel::Known(format) => Format::ALL
                .iter()
                .position(|known| *known == format)
                .unwrap_or(0),
            FormatLabel::Batch => Format::ALL.len(),
            FormatLabel::Other => Format::ALL.len() + 1,
        }
    }
}

/// The final outcome of a vendor message (the `outcome` label of
/// [`RAW_MESSAGES`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RawOutcome {
    Published,
    Ignored,
    DeadLettered,
}

impl RawOutcome {
    const COUNT: usize = 3;

    fn as_str(self) -> &'static str {
        match self {
            RawOutcome::Published => "published",
            RawOutcome::Ignored => "ignored",
            RawOutcome::DeadLettered => "dead_lettered",
        }
    }
}

/// Handles of the counters incremented for every vendor message, one per
/// (format, outcome), each registered with the recorder on its first use.
///
/// A labelled `counter!` builds and hashes its key and looks it up in the
/// recorder on every call; the hot loop increments these handles instead.
pub(crate) struct HotCounters {
    raw_messages: [[OnceLock<Counter>; RawOutcome::COUNT]; FormatLabel::COUNT],
    events: [OnceLock<Counter>; FormatLabel::COUNT],
}

impl HotCounters {
    pub(crate) fn new() -> Self {
        Self {
            raw_messages: std::array::from_fn(|_| std::array::from_fn(|_| OnceLock::new())),
            events: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    /// [`RAW_MESSAGES`] of `format` and `outcome`.
    pub(crate) fn raw_messages(&self, format: FormatLabel, outcome: RawOutcome) -> &Counter {
        self.raw_messages[format.index()][outcome as usize].get_or_init(|| {
            metrics::counter!(RAW_MESSAGES, "format" => format.as_str(), "outcome" => outcome.as_str())
        })
    }

    /// [`EVENTS`] of `format`.
    pub(crate) fn events(&self, format: FormatLabel) -> &Counter {
        self.events[format.index()]
            .get_or_init(|| metrics::counter!(EVENTS, "format" => format.as_str()))
    }
}
