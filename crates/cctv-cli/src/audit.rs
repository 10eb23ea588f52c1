//! `cctvctl audit`: compares what the events stream holds, by stream
//! sequence, with what ClickHouse holds for that stream, and reports every
//! difference: sequences missing in ClickHouse, sequences stored more than
//! once, event ids stored more than once, and rows whose sequence lies beyond
//! the stream's last sequence. Exit code 1 on any difference (2 stays for
//! usage and connection errors).
//!
//! The stream side is a set of sequence ranges: `first..=last` when nothing
//! was deleted inside the stream, else the sequences an ordered headers-only
//! consumer reads. The ClickHouse side is streamed in sequence chunks and
//! folded into ranges as it arrives, so memory grows with the number of gaps,
//! not with the number of rows. The range arithmetic is pure and unit-tested.
//!
//! There is no `--repair`: the design has no rollup table (`offence_totals`
//! is a plain view over `offence_events`), so there is nothing to rebuild.

use std::fmt::{self, Write as _};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, stream};
use cctv_store::{DoubledEventId, Store, StoredSequence, AUDIT_CHUNK_SEQUENCES};
use futures::StreamExt;
use serde::ser::SerializeStruct as _;
use serde::Serialize;

use crate::CliConfig;

/// Pause between audits of `--wait`.
const WAIT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Doubled event ids listed by example (all are counted).
const EVENT_ID_EXAMPLES: u64 = 20;
/// Ranges printed per finding in the text report (JSON has all).
const RANGES_PRINTED: usize = 20;
/// Longest wait for the next message of the ordered consumer listing the stream.
const LISTING_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Flags of `cctvctl audit`.
#[derive(Debug, Clone, clap::Args)]
pub struct AuditArgs {
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: AuditFormat,
    /// Audit again every second until clean or this time is up (`60s`, `5m`),
    /// e.g. while a pipeline drains; the last audit decides the exit code.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub wait: Option<Duration>,
}

/// How the audit report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuditFormat {
    /// A human-readable summary.
    Text,
    /// One JSON document (every range, for machines).
    Json,
}

/// One inclusive range of stream sequences.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SequenceRange {
    /// First sequence of the range.
    pub first: u64,
    /// Last sequence of the range (inclusive).
    pub last: u64,
}

/// A set of stream sequences as sorted, disjoint, non-adjacent inclusive ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SequenceRanges {
    ranges: Vec<SequenceRange>,
}

impl SequenceRanges {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// `first..=last`; empty when `first > last`.
    pub fn from_range(first: u64, last: u64) -> Self {
        let mut ranges = Self::new();
        ranges.push_range(first, last);
        ranges
    }

    /// Adds `first..=last`, which must not start before the last range added
    /// (ascending input, as the stream and the sorted queries deliver it);
    /// overlaps and repeats are merged, out-of-order input is ignored.
    pub fn push_range(&mut self, first: u64, last: u64) {
        if first > last {
            return;
        }
        match self.ranges.last_mut() {
            Some(tail) if first <= tail.last.saturating_add(1) => {
                if first >= tail.first {
                    tail.last = tail.last.max(last);
                }
            }
            _ => self.ranges.push(SequenceRange { first, last }),
        }
    }

    /// Adds one sequence (ascending input).
    pub fn push(&mut self, sequence: u64) {
        self.push_range(sequence, sequence);
    }

    /// The ranges, ascending.
    pub fn ranges(&self) -> &[SequenceRange] {
        &self.ranges
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Number of sequences in the set.
    pub fn count(&self) -> u64 {
        self.ranges
            .iter()
            .map(|range| range.last - range.first + 1)
            .sum()
    }

    /// The sequences of `self` that are not in `other`.
    pub fn difference(&self, other: &SequenceRanges) -> SequenceRanges {
        let mut result = SequenceRanges::new();
        let mut index = 0;
        for range in &self.ranges {
            // Skip the ranges of `other` that end before this one starts.
            while other
                .ranges
                .get(index)
                .is_some_and(|cut| cut.last < range.first)
            {
                index += 1;
            }
            // The first sequence not yet decided; `None` once the range is used up.
            let mut next = Some(range.first);
            let mut probe = index;
            while let (Some(start), Some(cut)) = (next, other.ranges.get(probe)) {
                if cut.first > range.last {
                    break;
                }
                if cut.first > start {
                    result.push_range(start, cut.first - 1);
                }
                // `cut.last >= start` here (sorted, non-adjacent ranges), so
                // `cut.last + 1` cannot overflow when it is below `range.last`.
                next = (cut.last < range.last).then(|| cut.last + 1);
                probe += 1;
            }
            if let Some(start) = next {
                result.push_range(start, range.last);
            }
        }
        result
    }

    /// The sequences of `self` within `first..=last`.
    pub fn within(&self, first: u64, last: u64) -> SequenceRanges {
        let mut outside = SequenceRanges::new();
        if first > 0 {
            outside.push_range(0, first - 1);
        }
        if last < u64::MAX {
            outside.push_range(last + 1, u64::MAX);
        }
        self.difference(&outside)
    }
}

impl fmt::Display for SequenceRanges {
    /// `1-5, 9, 12-20`, or `none`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ranges.is_empty() {
            return f.write_str("none");
        }
        for (index, range) in self.ranges.iter().enumerate() {
            if index > 0 {
                f.write_str(", ")?;
            }
            if range.first == range.last {
                write!(f, "{}", range.first)?;
            } else {
                write!(f, "{}-{}", range.first, range.last)?;
            }
        }
        Ok(())
    }
}

impl Serialize for SequenceRanges {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut state = serializer.serialize_struct("SequenceRanges", 2)?;
        state.serialize_field("count", &self.count())?;
        state.serialize_field("ranges", &self.ranges)?;
        state.end()
    }
}

/// What the stream held when the audit read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StreamExtent {
    /// First sequence still in the stream (older ones expired or were purged).
    pub first_seq: u64,
    /// Last sequence ever stored.
    pub last_seq: u64,
    /// Messages in the stream.
    pub messages: u64,
    /// Messages deleted from inside the stream.
    pub num_deleted: u64,
}

/// The audit of one source stream (one incarnation of the events stream).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StreamAudit {
    /// Stream identity `name@created_nanos`, as the rows carry it.
    pub source_stream: String,
    /// The stream as it is now; `None` when this incarnation no longer exists
    /// (only the ClickHouse-side checks apply then).
    pub stream: Option<StreamExtent>,
    /// Rows stored for this stream.
    pub rows: u64,
    /// Sequences in the stream with no row.
    pub missing: SequenceRanges,
    /// Sequences stored more than once.
    pub doubled: SequenceRanges,
    /// Rows beyond one per sequence.
    pub extra_rows: u64,
    /// Event ids stored more than once.
    pub doubled_event_ids: u64,
    /// Some of them, most copies first.
    pub doubled_event_id_examples: Vec<DoubledEventId>,
    /// Stored sequences above the stream's last sequence.
    pub beyond_last: SequenceRanges,
    /// Stored sequences below the stream's first sequence: expired from the
    /// stream, so they cannot be checked for gaps (not a difference).
    pub expired: u64,
}

impl StreamAudit {
    /// Whether ClickHouse and the stream agree.
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty()
            && self.doubled.is_empty()
            && self.doubled_event_ids == 0
            && self.beyond_last.is_empty()
    }
}

/// The audit of every source stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AuditReport {
    /// The current events stream first, then older incarnations found in ClickHouse.
    pub streams: Vec<StreamAudit>,
    /// Whether every stream is clean.
    pub clean: bool,
}

impl AuditReport {
    /// Whether every stream is clean.
    pub fn is_clean(&self) -> bool {
        self.streams.iter().all(StreamAudit::is_clean)
    }
}

/// Folds the stored sequences (ascending, with copy counts) of one stream
/// into an audit against `existing`, the sequences the stream holds.
#[derive(Debug, Default)]
struct Fold {
    present: SequenceRanges,
    doubled: SequenceRanges,
    extra_rows: u64,
}

impl Fold {
    fn add(&mut self, stored: StoredSequence) {
        self.present.push(stored.stream_seq);
        if stored.copies > 1 {
            self.doubled.push(stored.stream_seq);
            self.extra_rows += stored.copies - 1;
        }
    }
}

/// Compares the stored sequences with the stream: pure, for the unit tests.
fn compare(
    source_stream: &str,
    stream: Option<(StreamExtent, &SequenceRanges)>,
    rows: u64,
    fold: Fold,
) -> StreamAudit {
    let mut audit = StreamAudit {
        source_stream: source_stream.to_string(),
        rows,
        doubled: fold.doubled,
        extra_rows: fold.extra_rows,
        ..StreamAudit::default()
    };
    if let Some((extent, existing)) = stream {
        audit.stream = Some(extent);
        audit.missing = existing.difference(&fold.present);
        audit.beyond_last = if extent.last_seq == u64::MAX {
            SequenceRanges::new()
        } else {
            fold.present.within(extent.last_seq + 1, u64::MAX)
        };
        audit.expired = if extent.first_seq > 1 {
            fold.present.within(1, extent.first_seq - 1).count()
        } else {
            0
        };
    }
    audit
}

/// Audits the events stream of `config` against ClickHouse once.
pub async fn audit_pipeline(config: &CliConfig) -> anyhow::Result<AuditReport> {
    let store = Store::new(&config.clickhouse).context("failed to create the ClickHouse client")?;
    let client = cctv_bus::connect(&config.nats, "cctvctl-audit")
        .await
        .context("failed to connect to NATS")?;
    let js = jetstream::new(client);
    let name = &config.streams.events.name;
    let mut events = js
        .get_stream(name)
        .await
        .with_context(|| format!("failed to find stream {name}"))?;
    let info = events
        .info()
        .await
        .with_context(|| format!("failed to read the state of stream {name}"))?
        .clone();
    let current = cctv_bus::stream_identity(&info);
    let extent = extent_of(&info.state);
    let existing = existing_sequences(&events, &extent)
        .await
        .with_context(|| format!("failed to list the sequences of stream {name}"))?;

    let mut report = AuditReport::default();
    report.streams.push(
        audit_stream(&store, &current, Some((extent, &existing)))
            .await
            .with_context(|| format!("failed to audit {current}"))?,
    );
    let stored = store
        .source_streams()
        .await
        .context("failed to list the source streams in ClickHouse")?;
    for source_stream in stored.iter().filter(|stream| **stream != current) {
        report.streams.push(
            audit_stream(&store, source_stream, None)
                .await
                .with_context(|| format!("failed to audit {source_stream}"))?,
        );
    }
    report.clean = report.is_clean();
    Ok(report)
}

fn extent_of(state: &stream::State) -> StreamExtent {
    let span = if state.messages == 0 {
        0
    } else {
        state.last_sequence.saturating_sub(state.first_sequence) + 1
    };
    StreamExtent {
        first_seq: state.first_sequence,
        last_seq: state.last_sequence,
        messages: state.messages,
        num_deleted: state
            .deleted_count
            .unwrap_or_else(|| span.saturating_sub(state.messages)),
    }
}

/// The sequences the stream holds: `first..=last` when nothing was deleted
/// inside it, else what an ordered headers-only consumer reads up to `last`.
async fn existing_sequences(
    events: &stream::Stream,
    extent: &StreamExtent,
) -> anyhow::Result<SequenceRanges> {
    if extent.messages == 0 {
        return Ok(SequenceRanges::new());
    }
    let contiguous = extent.last_seq - extent.first_seq + 1 == extent.messages;
    if extent.num_deleted == 0 && contiguous {
        return Ok(SequenceRanges::from_range(
            extent.first_seq,
            extent.last_seq,
        ));
    }
    let consumer = events
        .create_consumer(consumer::pull::OrderedConfig {
            description: Some("cctvctl audit: list stream sequences".into()),
            headers_only: true,
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: extent.first_seq,
            },
            ..Default::default()
        })
        .await
        .context("failed to create an ordered consumer")?;
    let mut messages = consumer
        .messages()
        .await
        .context("failed to read the stream")?;
    let mut existing = SequenceRanges::new();
    loop {
        let next = tokio::time::timeout(LISTING_IDLE_TIMEOUT, messages.next())
            .await
            .context("the stream stopped delivering while being listed")?;
        let Some(message) = next else {
            anyhow::bail!("the ordered consumer ended before the last sequence");
        };
        let message = message.context("failed to read the stream")?;
        let info = message
            .info()
            .map_err(|e| anyhow::anyhow!("message without JetStream metadata: {e}"))?;
        if info.stream_sequence > extent.last_seq {
            break;
        }
        existing.push(info.stream_sequence);
        if info.stream_sequence == extent.last_seq || info.pending == 0 {
            break;
        }
    }
    Ok(existing)
}

/// Audits one source stream; `stream` is `None` for an incarnation that no
/// longer exists.
async fn audit_stream(
    store: &Store,
    source_stream: &str,
    stream: Option<(StreamExtent, &SequenceRanges)>,
) -> anyhow::Result<StreamAudit> {
    let span = store.stored_span(source_stream).await?;
    let mut fold = Fold::default();
    if span.rows > 0 {
        let mut chunk_first = span.min_seq;
        loop {
            let chunk_last = chunk_first
                .saturating_add(AUDIT_CHUNK_SEQUENCES - 1)
                .min(span.max_seq);
            store
                .for_each_stored_sequence(source_stream, chunk_first, chunk_last, |stored| {
                    fold.add(stored);
                })
                .await?;
            if chunk_last >= span.max_seq {
                break;
            }
            chunk_first = chunk_last + 1;
        }
    }
    let (doubled_ids, examples) = store
        .doubled_event_ids(source_stream, EVENT_ID_EXAMPLES)
        .await?;
    let mut audit = compare(source_stream, stream, span.rows, fold);
    audit.doubled_event_ids = doubled_ids;
    audit.doubled_event_id_examples = examples;
    Ok(audit)
}

/// Renders the report as text.
pub fn render_audit(report: &AuditReport) -> String {
    let mut text = String::new();
    for audit in &report.streams {
        let _ = writeln!(text, "stream {}", audit.source_stream);
        match &audit.stream {
            Some(extent) => {
                let _ = writeln!(
                    text,
                    "  in NATS: sequences {}..={} ({} messages, {} deleted inside)",
                    extent.first_seq, extent.last_seq, extent.messages, extent.num_deleted
                );
            }
            None => {
                let _ = writeln!(
                    text,
                    "  in NATS: this incarnation no longer exists (only doubles are checked)"
                );
            }
        }
        let _ = writeln!(text, "  in ClickHouse: {} rows", audit.rows);
        finding(&mut text, "missing in ClickHouse", &audit.missing, "");
        finding(
            &mut text,
            "stored more than once",
            &audit.doubled,
            &format!(" ({} extra rows)", audit.extra_rows),
        );
        if audit.doubled_event_ids > 0 {
            let _ = writeln!(
                text,
                "  event ids stored more than once: {}",
                audit.doubled_event_ids
            );
            for example in &audit.doubled_event_id_examples {
                let _ = writeln!(text, "    {} x{}", example.event_id, example.copies);
            }
        }
        finding(
            &mut text,
            "beyond the stream's last sequence",
            &audit.beyond_last,
            "",
        );
        if audit.expired > 0 {
            let _ = writeln!(
                text,
                "  note: {} stored sequences have expired from the stream (not checked for gaps)",
                audit.expired
            );
        }
        let _ = writeln!(
            text,
            "  {}",
            if audit.is_clean() { "clean" } else { "DIFFERS" }
        );
    }
    let _ = writeln!(
        text,
        "audit: {}",
        if report.is_clean() {
            "ClickHouse holds every event of the stream exactly once"
        } else {
            "differences found"
        }
    );
    text
}

/// One line of the text report; nothing when `ranges` is empty.
fn finding(text: &mut String, what: &str, ranges: &SequenceRanges, suffix: &str) {
    if ranges.is_empty() {
        return;
    }
    let shown = SequenceRanges {
        ranges: ranges.ranges.iter().take(RANGES_PRINTED).copied().collect(),
    };
    let more = ranges.ranges.len().saturating_sub(RANGES_PRINTED);
    let _ = write!(
        text,
        "  {what}: {} sequences{suffix}: {shown}",
        ranges.count()
    );
    if more > 0 {
        let _ = write!(text, ", ... ({more} more ranges; --format json lists all)");
    }
    text.push('\n');
}

/// Audits (polling with `--wait`), prints the report; exit code 1 on any difference.
pub async fn run_audit(config: &CliConfig, args: &AuditArgs) -> anyhow::Result<ExitCode> {
    let deadline = tokio::time::Instant::now() + args.wait.unwrap_or_default();
    let report = loop {
        let report = audit_pipeline(config).await?;
        if report.is_clean() || tokio::time::Instant::now() >= deadline {
            break report;
        }
        tokio::time::sleep(WAIT_POLL_INTERVAL).await;
    };
    match args.format {
        AuditFormat::Text => print!("{}", render_audit(&report)),
        AuditFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report).context("failed to encode the report")?
        ),
    }
    if report.is_clean() {
        return Ok(ExitCode::SUCCESS);
    }
    Ok(ExitCode::from(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(list: &[(u64, u64)]) -> SequenceRanges {
        let mut set = SequenceRanges::new();
        for &(first, last) in list {
            set.push_range(first, last);
        }
        set
    }

    #[test]
    fn pushes_merge_adjacent_and_repeated_sequences() {
        let mut set = SequenceRanges::new();
        for sequence in [1, 2, 3, 3, 5, 6, 9] {
            set.push(sequence);
        }
        assert_eq!(set, ranges(&[(1, 3), (5, 6), (9, 9)]));
        assert_eq!(set.count(), 6);
        assert_eq!(set.to_string(), "1-3, 5-6, 9");
        assert_eq!(SequenceRanges::new().to_string(), "none");
        assert!(SequenceRanges::from_range(5, 4).is_empty());
    }

    #[test]
    fn difference_cuts_every_overlap() {
        let stream = ranges(&[(1, 100)]);
        let stored = ranges(&[(1, 10), (12, 50), (52, 52), (60, 99)]);
        assert_eq!(
            stream.difference(&stored),
            ranges(&[(11, 11), (51, 51), (53, 59), (100, 100)])
        );
        assert_eq!(stream.difference(&stream), SequenceRanges::new());
        assert_eq!(stream.difference(&SequenceRanges::new()), stream);
        // Interior deletions in the stream, rows around them.
        let holey = ranges(&[(1, 4), (8, 10), (20, 30)]);
        let stored = ranges(&[(2, 9), (25, 40)]);
        assert_eq!(
            holey.difference(&stored),
            ranges(&[(1, 1), (10, 10), (20, 24)])
        );
        // Ranges at the ends of u64.
        let top = ranges(&[(u64::MAX - 2, u64::MAX)]);
        assert_eq!(
            top.difference(&ranges(&[(u64::MAX, u64::MAX)])),
            ranges(&[(u64::MAX - 2, u64::MAX - 1)])
        );
    }

    #[test]
    fn within_keeps_a_window() {
        let set = ranges(&[(1, 5), (10, 20)]);
        assert_eq!(set.within(4, 12), ranges(&[(4, 5), (10, 12)]));
        assert_eq!(set.within(21, u64::MAX), SequenceRanges::new());
        assert_eq!(set.within(15, u64::MAX), ranges(&[(15, 20)]));
    }

    fn stored(sequence: u64, copies: u64) -> StoredSequence {
        StoredSequence {
            stream_seq: sequence,
            copies,
        }
    }

    #[test]
    fn compare_finds_missing_doubled_beyond_and_expired() {
        let extent = StreamExtent {
            first_seq: 3,
            last_seq: 10,
            messages: 8,
            num_deleted: 0,
        };
        let existing = SequenceRanges::from_range(3, 10);
        let mut fold = Fold::default();
        for item in [
            stored(1, 1),
            stored(3, 1),
            stored(4, 2),
            stored(5, 3),
            stored(8, 1),
            stored(9, 1),
            stored(10, 1),
            stored(12, 1),
        ] {
            fold.add(item);
        }
        let audit = compare("CCTV_EVENTS@1", Some((extent, &existing)), 12, fold);
        assert_eq!(audit.missing, ranges(&[(6, 7)]));
        assert_eq!(audit.doubled, ranges(&[(4, 5)]));
        assert_eq!(audit.extra_rows, 3);
        assert_eq!(audit.beyond_last, ranges(&[(12, 12)]));
        assert_eq!(audit.expired, 1);
        assert!(!audit.is_clean());
    }

    #[test]
    fn a_complete_single_copy_store_is_clean() {
        let extent = StreamExtent {
            first_seq: 1,
            last_seq: 1000,
            messages: 1000,
            num_deleted: 0,
        };
        let existing = SequenceRanges::from_range(1, 1000);
        let mut fold = Fold::default();
        for sequence in 1..=1000 {
            fold.add(stored(sequence, 1));
        }
        let audit = compare("S@1", Some((extent, &existing)), 1000, fold);
        assert!(audit.is_clean(), "{audit:?}");
        let report = AuditReport {
            streams: vec![audit],
            clean: true,
        };
        assert!(render_audit(&report)
            .ends_with("audit: ClickHouse holds every event of the stream exactly once\n"));
        // A vanished incarnation is checked for doubles only.
        let gone = compare("S@0", None, 3, Fold::default());
        assert!(gone.is_clean());
    }

    #[test]
    fn the_text_report_names_the_ranges() {
        let audit = StreamAudit {
            source_stream: "CCTV_EVENTS@7".into(),
            stream: Some(StreamExtent {
                first_seq: 1,
                last_seq: 100,
                messages: 100,
                num_deleted: 0,
            }),
            rows: 98,
            missing: ranges(&[(40, 41), (77, 77)]),
            ..StreamAudit::default()
        };
        let text = render_audit(&AuditReport {
            streams: vec![audit],
            clean: false,
        });
        assert!(
            text.contains("  missing in ClickHouse: 3 sequences: 40-41, 77\n"),
            "{text}"
        );
        assert!(text.ends_with("audit: differences found\n"));
        let json = serde_json::to_value(SequenceRanges::from_range(2, 4)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"count": 3, "ranges": [{"first": 2, "last": 4}]})
        );
    }
}
