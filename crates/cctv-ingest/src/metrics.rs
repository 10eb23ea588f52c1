//! Metric names of the ingest service. Labels are low-cardinality only:
//! format, outcome, reason.

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
