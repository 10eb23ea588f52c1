//! `cctvctl audit`: compares what the events stream holds, by event id, with
//! what ClickHouse holds for that stream, and reports every difference:
//! events of the stream missing in ClickHouse (named by the sequences of the
//! messages that carry them), event ids stored more than once, rows stored
//! from sequences beyond the stream's last one, and events the stream holds
//! that cannot be decoded. Exit code 1 on any difference (2 stays for usage
//! and connection errors).
//!
//! A message of `CCTV_EVENTS` is an event batch, and the same event may come
//! in several messages (a republish, a redelivered raw message): the owner
//! of its partition writes it once. So the stream side is the set of event
//! ids read from every message (an ordered consumer), each with the lowest
//! sequence that carries it; the ClickHouse side is streamed id by id with
//! its copy count and folded in ([`IdFold`], pure and unit-tested).
//!
//! Both sides are taken in rounds ([`RoundPlan`]): round `i` of `n` holds
//! the ids with `id mod n = i` (an id's partition is `id mod p`), read from
//! the partitions' subjects that hold them (as the stream is when the round
//! starts) and grouped by ClickHouse with the same arithmetic in SQL, so
//! memory holds a round's distinct ids (a map entry of 24 bytes) and what
//! the rounds before found missing as sequence ranges, not the stream's
//! ids (measured: README, "Auditing"). `cctvctl audit` shows its progress
//! on a terminal.
//!
//! It also compares every rolled-up slot of the rollups behind
//! `offence_totals` and `camera_totals` with the rows of that slot (a full
//! read of the rows up to the newest rolled slot); `--repair` first takes
//! every differing slot into the rollups again, from the rows.
//!
//! Events missing in ClickHouse below rows it holds (ClickHouse lost a part,
//! e.g. in a power cut) are not written again by themselves: an owner
//! resumes after the highest sequence written. `--repair` therefore also
//! asks the owner of every partition with missing events to read it again
//! from the first message carrying one (a rewind request in the lease
//! bucket, `rewind.p<k>`); the owner skips every id ClickHouse holds, so
//! only what is missing is written (the aggregator's `replay.rs`).

use std::fmt::{self, Write as _};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, stream};
use std::collections::{BTreeMap, HashMap};

use cctv_store::{DoubledEventId, IdRound, SlotDifference, Store};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressFinish, ProgressStyle};
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
    /// Count every rolled-up slot whose rollups differ from its rows into
    /// them again (the rows are the truth), and ask the owners of partitions
    /// with missing events to read them again from the first such event
    /// (only what ClickHouse lacks is written). Safe while the pipeline runs;
    /// combine with `--wait` to wait for the result.
    #[arg(long)]
    pub repair: bool,
    /// Take the event ids in this many rounds, each a share of them (fewer
    /// ids in memory at once, here and in ClickHouse's grouping; a round
    /// reads only the partitions that hold its share when N and the
    /// partition count share a divisor, else the whole stream; each round
    /// scans the stream's rows in ClickHouse). Default: as many as keep a
    /// round under about 8 million ids, judged by the stream's size.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_ROUNDS)))]
    pub rounds: Option<u16>,
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

    /// Every sequence in either.
    pub fn union(&self, other: &SequenceRanges) -> SequenceRanges {
        let mut all: Vec<SequenceRange> =
            self.ranges.iter().chain(&other.ranges).copied().collect();
        all.sort_unstable_by_key(|range| (range.first, range.last));
        let mut united = SequenceRanges::new();
        for range in all {
            united.push_range(range.first, range.last);
        }
        united
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
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
    /// Stored ids from sequences below the stream's first sequence: expired
    /// from the stream, so they cannot be checked (not a difference).
    pub expired: u64,
    /// Stored ids that no message of the stream carries although the
    /// sequence they were stored from is still in the stream.
    pub foreign: u64,
    /// Events read from the stream (repeats included).
    pub events_in_stream: u64,
    /// Sequences of messages (or events in them) that cannot be decoded:
    /// never written, so their events are not counted.
    pub undecodable: SequenceRanges,
    /// Events on a partition's subject that belong to another partition by
    /// their id (the partition count is not the one they were sent with).
    pub misrouted: u64,
}

impl StreamAudit {
    /// Whether ClickHouse and the stream agree.
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty()
            && self.doubled.is_empty()
            && self.doubled_event_ids == 0
            && self.beyond_last.is_empty()
            && self.foreign == 0
            && self.undecodable.is_empty()
            && self.misrouted == 0
    }
}

/// The audit of every source stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AuditReport {
    /// The current events stream first, then older incarnations found in ClickHouse.
    pub streams: Vec<StreamAudit>,
    /// The rollups compared with the rows.
    pub rollups: RollupAudit,
    /// Partitions asked to be read again (`--repair`), with the sequence.
    pub rewinds_requested: Vec<RewindRequested>,
    /// Rounds the event ids were taken in (`--rounds`).
    pub id_rounds: u16,
    /// Messages of the events stream delivered to the audit, over all rounds.
    pub messages_read: u64,
    /// Why each of several rounds read the whole stream, when they did.
    pub whole_stream_reads: Option<String>,
    /// Whether every stream and the rollups are clean.
    pub clean: bool,
}

impl AuditReport {
    /// Whether every stream and the rollups are clean.
    pub fn is_clean(&self) -> bool {
        self.streams.iter().all(StreamAudit::is_clean) && self.rollups.differences.is_empty()
    }
}

/// A partition whose owner `--repair` asked to read it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RewindRequested {
    /// The partition.
    pub partition: u16,
    /// The stream sequence it is read again from (an earlier request may
    /// have asked for less).
    pub from: u64,
}

/// The rollups behind `offence_totals` and `camera_totals` against the rows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RollupAudit {
    /// The newest rolled-up slot (insert day in the views' zone), if any.
    pub rolled_through: Option<String>,
    /// Rolled-up slots whose rollup differs from their rows.
    pub differences: Vec<RollupDifference>,
    /// Slots counted into the rollups again by `--repair`.
    pub repaired: Vec<String>,
}

/// A rolled-up slot whose rollup differs from its rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RollupDifference {
    /// `offence_day_rollup` or `camera_day_rollup`.
    pub rollup: String,
    /// The slot (insert day in the views' zone).
    pub slot: String,
    /// Rows of the slot.
    pub rows: u64,
    /// What the rollup counts for the slot.
    pub rolled: u64,
    /// Keys whose counts differ.
    pub keys_differing: u64,
}

impl From<SlotDifference> for RollupDifference {
    fn from(difference: SlotDifference) -> Self {
        Self {
            rollup: difference.rollup.to_string(),
            slot: difference.slot.to_string(),
            rows: difference.rows,
            rolled: difference.rolled,
            keys_differing: difference.keys_differing,
        }
    }
}

/// Compares the rollups with the rows; with `repair`, first counts every
/// differing slot into them again. A rollup that counts more than its rows
/// cannot be repaired this way (rows were deleted behind it): it stays a
/// difference.
pub async fn audit_rollups(store: &Store, repair: bool) -> anyhow::Result<RollupAudit> {
    let mut audit = RollupAudit::default();
    store
        .sync_rollups()
        .await
        .context("failed to bring this replica's rollups up to date")?;
    if repair {
        let differing = store
            .rollup_differences()
            .await
            .context("failed to compare the rollups with the rows")?;
        let mut slots: Vec<_> = differing.iter().map(|difference| difference.slot).collect();
        slots.dedup();
        for slot in slots {
            store
                .roll_slots(slot, slot)
                .await
                .with_context(|| format!("failed to count slot {slot} into the rollups again"))?;
            audit.repaired.push(slot.to_string());
        }
    }
    audit.rolled_through = store
        .rolled_through()
        .await
        .context("failed to read the newest rolled-up slot")?
        .map(|slot| slot.to_string());
    audit.differences = store
        .rollup_differences()
        .await
        .context("failed to compare the rollups with the rows")?
        .into_iter()
        .map(RollupDifference::from)
        .collect();
    Ok(audit)
}

/// Folds the stored event ids of one stream into an audit against the ids
/// the stream holds, one round of ids at a time ([`IdFold::begin_round`]).
#[derive(Debug, Default)]
pub(crate) struct IdFold {
    /// Ids of the stream's current round not yet met in ClickHouse, with
    /// their lowest sequence.
    pending: HashMap<[u8; 16], u64>,
    /// The stream when the current round read it: what a stored sequence
    /// is judged against (a long audit's stream moves on between rounds).
    round_extent: Option<StreamExtent>,
    /// The first sequence the stream held after the current round read it
    /// (rows from below it are judged expired).
    first_after: u64,
    /// The partition count, for [`IdFold::first_missing`].
    partitions: Option<u16>,
    /// Sequences of the ids of the rounds done that were never met.
    missing: SequenceRanges,
    /// Per partition, the lowest of them.
    first_missing: BTreeMap<u16, u64>,
    extent: Option<StreamExtent>,
    rows: u64,
    /// Sequences of doubled ids, in the order met (sorted at the end).
    doubled: Vec<u64>,
    extra_rows: u64,
    doubled_ids: u64,
    doubled_examples: Vec<DoubledEventId>,
    /// Sequences beyond the stream's last, in the order met.
    beyond_last: Vec<u64>,
    expired: u64,
    foreign: u64,
}

impl IdFold {
    /// A fold over the ids of a stream (`None`: an incarnation that no
    /// longer exists), starting with a round of `ids` read from `extent`.
    pub(crate) fn new(stream: Option<(StreamExtent, HashMap<[u8; 16], u64>)>) -> Self {
        match stream {
            Some((extent, ids)) => Self {
                pending: ids,
                extent: Some(extent),
                round_extent: Some(extent),
                ..Self::default()
            },
            None => Self::default(),
        }
    }

    /// With `partitions` known: [`IdFold::first_missing`] per partition.
    pub(crate) fn with_partitions(mut self, partitions: Option<u16>) -> Self {
        self.partitions = partitions;
        self
    }

    /// Ends the round and starts the next with the stream's `ids` of it,
    /// read from `extent`: what the last round did not meet stays missing
    /// (kept as sequence ranges, so memory holds one round's ids).
    pub(crate) fn begin_round(&mut self, ids: HashMap<[u8; 16], u64>, extent: StreamExtent) {
        let done = std::mem::replace(&mut self.pending, ids);
        if self.extent.is_some() {
            self.round_extent = Some(extent);
        }
        self.first_after = 0;
        let mut sequences = Vec::with_capacity(done.len());
        for (id, sequence) in done {
            sequences.push(sequence);
            if let Some(partitions) = self.partitions {
                let partition = cctv_bus::subjects::partition_of(&id, partitions);
                self.first_missing
                    .entry(partition)
                    .and_modify(|lowest| *lowest = (*lowest).min(sequence))
                    .or_insert(sequence);
            }
        }
        self.missing = self.missing.union(&ranges_of(sequences));
    }

    /// The stream's first sequence after the current round read it: stored
    /// ids from below it that the round did not read are expired, not foreign.
    pub(crate) fn expired_below(&mut self, first_seq: u64) {
        self.first_after = first_seq;
    }

    /// One stored id: the lowest sequence it was stored from and its copies.
    pub(crate) fn add(&mut self, id: [u8; 16], stream_seq: u64, copies: u64) {
        self.rows += copies;
        if copies > 1 {
            self.doubled.push(stream_seq);
            self.extra_rows += copies - 1;
            self.doubled_ids += 1;
            self.keep_example(id, copies);
        }
        let Some(extent) = self.round_extent else {
            return;
        };
        if self.pending.remove(&id).is_some() {
            return;
        }
        if stream_seq > extent.last_seq {
            self.beyond_last.push(stream_seq);
        } else if stream_seq < extent.first_seq.max(self.first_after) {
            self.expired += 1;
        } else {
            // Stored from a sequence the stream still has, yet no message of
            // the stream carries the id: written from something else.
            self.foreign += 1;
        }
    }

    /// Keeps the doubled ids with most copies (then the lowest ids) as
    /// examples, whatever the order met in.
    fn keep_example(&mut self, id: [u8; 16], copies: u64) {
        let full = self.doubled_examples.len() >= EVENT_ID_EXAMPLES as usize;
        if full
            && self
                .doubled_examples
                .last()
                .is_some_and(|last| copies < last.copies)
        {
            return;
        }
        self.doubled_examples.push(DoubledEventId {
            event_id: uuid::Uuid::from_bytes(id).to_string(),
            copies,
        });
        self.doubled_examples.sort_unstable_by(|a, b| {
            b.copies
                .cmp(&a.copies)
                .then_with(|| a.event_id.cmp(&b.event_id))
        });
        self.doubled_examples.truncate(EVENT_ID_EXAMPLES as usize);
    }

    /// Whether every id of the stream was found stored (so far).
    pub(crate) fn is_complete(&self) -> bool {
        self.pending.is_empty() && self.missing.is_empty()
    }

    /// Per partition (of [`IdFold::with_partitions`]; none without), the
    /// lowest sequence of a message carrying an event missing so far.
    pub(crate) fn first_missing(&self) -> BTreeMap<u16, u64> {
        let mut first = self.first_missing.clone();
        let Some(partitions) = self.partitions else {
            return first;
        };
        for (id, sequence) in &self.pending {
            let partition = cctv_bus::subjects::partition_of(id, partitions);
            first
                .entry(partition)
                .and_modify(|lowest| *lowest = (*lowest).min(*sequence))
                .or_insert(*sequence);
        }
        first
    }

    /// The audit: what is still pending is missing.
    pub(crate) fn finish(mut self, source_stream: &str) -> StreamAudit {
        let last = self.round_extent.unwrap_or_default();
        self.begin_round(HashMap::new(), last);
        StreamAudit {
            source_stream: source_stream.to_string(),
            // The stream as the last round read it.
            stream: self.extent.and(self.round_extent),
            rows: self.rows,
            missing: self.missing,
            // Ids come in no particular order; `ranges_of` sorts them.
            doubled: ranges_of(self.doubled),
            extra_rows: self.extra_rows,
            doubled_event_ids: self.doubled_ids,
            doubled_event_id_examples: self.doubled_examples,
            beyond_last: ranges_of(self.beyond_last),
            expired: self.expired,
            foreign: self.foreign,
            ..StreamAudit::default()
        }
    }
}

/// Audits the events stream of `config` against ClickHouse once.
pub async fn audit_pipeline(config: &CliConfig) -> anyhow::Result<AuditReport> {
    audit_pipeline_with(config, false).await
}

/// [`audit_pipeline`], with `repair`: rollup slots that differ from their
/// rows are counted again first (see [`audit_rollups`]).
pub async fn audit_pipeline_with(config: &CliConfig, repair: bool) -> anyhow::Result<AuditReport> {
    audit_pipeline_showing(config, repair, None, Progress::Hidden).await
}

/// [`audit_pipeline`] taking the event ids in `rounds` rounds (at least 1;
/// see [`AuditArgs::rounds`]) instead of as many as the stream's size asks.
pub async fn audit_pipeline_in_rounds(
    config: &CliConfig,
    rounds: u16,
) -> anyhow::Result<AuditReport> {
    audit_pipeline_showing(config, false, Some(rounds), Progress::Hidden).await
}

/// Whether an audit draws its progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    /// Never (the library functions).
    Hidden,
    /// On stderr when it is a terminal (`cctvctl audit`).
    Terminal,
}

async fn audit_pipeline_showing(
    config: &CliConfig,
    repair: bool,
    rounds: Option<u16>,
    shown: Progress,
) -> anyhow::Result<AuditReport> {
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
    // The partition count, read without creating the bucket; an audit
    // runs without it (each round then reads the whole stream), a repair
    // does not.
    let partitions = match cctv_bus::LeaseBucket::existing(&js, &config.streams.leases).await {
        Ok(Some(bucket)) => match bucket.partitions().await {
            Ok(Some(partitions)) => Ok(partitions),
            Ok(None) => Err("the lease bucket holds no partition count".to_string()),
            Err(error) => Err(format!("the partition count could not be read: {error}")),
        },
        Ok(None) => Err("there is no lease bucket".to_string()),
        Err(error) => Err(format!("the lease bucket could not be read: {error}")),
    };
    if let (true, Err(why)) = (repair, &partitions) {
        anyhow::bail!("--repair needs the partition count: {why} (run `cctvctl setup` first)");
    }
    let (partitions, unread) = match partitions {
        Ok(partitions) => (Some(partitions), None),
        Err(why) => (None, Some(why)),
    };
    let of = rounds
        .unwrap_or_else(|| rounds_for(info.state.bytes, partitions))
        .max(1);
    let plan = RoundPlan::new(of, partitions);

    let mut fold = IdFold::new(Some((extent, HashMap::new()))).with_partitions(partitions);
    let mut read = StreamRead::default();
    for round in plan.rounds() {
        let listed = stream_event_ids(&events, &plan, round, shown)
            .await
            .with_context(|| format!("failed to read the events of stream {name}"))?;
        read.add(&listed);
        // Messages that expired while the round read (or before its
        // consumer started) were not delivered: their rows are judged as
        // expired, not foreign.
        let first_now = events
            .get_info()
            .await
            .with_context(|| format!("failed to read the state of stream {name}"))?
            .state
            .first_sequence;
        // As many as the round's distinct ids, when the audit is clean.
        let expected = u64::try_from(listed.ids.len()).unwrap_or(u64::MAX);
        fold.begin_round(listed.ids, listed.extent);
        fold.expired_below(first_now);
        let reading = progress(
            shown,
            Some(expected),
            "{spinner} [{elapsed_precise}] {prefix}{wide_bar} {human_pos}/{human_len} event ids read from ClickHouse",
        );
        reading.set_prefix(plan.label(round));
        store
            .for_each_stored_id(&current, round, |id, seq, copies| {
                reading.inc(1);
                fold.add(id, seq, copies);
            })
            .await
            .with_context(|| format!("failed to audit {current}"))?;
        reading.finish_and_clear();
    }
    let mut report = AuditReport {
        id_rounds: of,
        messages_read: read.messages,
        ..AuditReport::default()
    };
    if of > 1 && read.whole_rounds > 0 {
        report.whole_stream_reads = Some(match (partitions, unread) {
            (Some(partitions), _) => {
                format!("{of} rounds share no divisor with the {partitions} partitions")
            }
            (None, why) => why.unwrap_or_default(),
        });
    }
    if repair && !fold.is_complete() {
        report.rewinds_requested = request_rewinds(&js, config, &fold).await?;
    }
    let mut audit = fold.finish(&current);
    audit.events_in_stream = read.events;
    audit.undecodable = ranges_of(read.undecodable);
    audit.misrouted = read.misrouted;
    report.streams.push(audit);
    let stored = store
        .source_streams()
        .await
        .context("failed to list the source streams in ClickHouse")?;
    for source_stream in stored.iter().filter(|stream| **stream != current) {
        // Rounds by the incarnation's own rows (ClickHouse's side alone).
        let rows = store
            .stored_span(source_stream)
            .await
            .with_context(|| format!("failed to count the rows of {source_stream}"))?
            .rows;
        let of =
            rounds.unwrap_or_else(|| rounds_for(rows.saturating_mul(STREAM_BYTES_PER_EVENT), None));
        let mut fold = IdFold::new(None);
        for index in 0..of.max(1) {
            let round = IdRound {
                of: of.max(1),
                index,
            };
            store
                .for_each_stored_id(source_stream, round, |id, seq, copies| {
                    fold.add(id, seq, copies);
                })
                .await
                .with_context(|| format!("failed to audit {source_stream}"))?;
        }
        report.streams.push(fold.finish(source_stream));
    }
    report.rollups = audit_rollups(&store, repair).await?;
    report.clean = report.is_clean();
    Ok(report)
}

/// Sequences in any order as ranges.
fn ranges_of(mut sequences: Vec<u64>) -> SequenceRanges {
    sequences.sort_unstable();
    let mut ranges = SequenceRanges::new();
    for sequence in sequences {
        ranges.push(sequence);
    }
    ranges
}

/// How an audit splits the event ids into rounds, and what of the stream
/// each round reads.
///
/// Round `i` of `n` takes the ids whose number leaves `i` divided by `n`
/// ([`IdRound`]), on both sides, so memory (here, and in ClickHouse's
/// GROUP BY) holds about `1/n` of them. Where `n` and the partition count
/// `p` share a divisor `g` (their greatest common one), an id of round `i`
/// is in a partition `k` with `k mod g = i mod g` (the partition is the id
/// mod `p`), so the round reads only those partitions' subjects (and any
/// subject that is not a partition's, in every round), with one consumer
/// filtered on them: each partition's messages are delivered `n / g` times
/// in all. Otherwise (`g = 1`, or the partition count unknown) every round
/// reads the whole stream.
struct RoundPlan {
    /// Rounds in all.
    of: u16,
    /// The partition count, when known.
    partitions: Option<u16>,
    /// `g` above: 1 reads the whole stream in every round.
    step: u16,
}

impl RoundPlan {
    fn new(of: u16, partitions: Option<u16>) -> Self {
        let step = partitions.map_or(1, |partitions| gcd(of, partitions));
        RoundPlan {
            of,
            partitions,
            step,
        }
    }

    fn rounds(&self) -> impl Iterator<Item = IdRound> + '_ {
        (0..self.of).map(|index| IdRound { of: self.of, index })
    }

    /// Of the stream's subjects with messages (`counts`), those `round`
    /// reads (`None`: the whole stream).
    fn subjects_of(&self, round: IdRound, counts: &[(String, u64)]) -> Option<Vec<String>> {
        if self.step <= 1 {
            return None;
        }
        Some(
            counts
                .iter()
                .filter(|(_, count)| *count > 0)
                .filter(|(subject, _)| {
                    cctv_bus::subjects::parse_event_partition(subject)
                        .is_none_or(|partition| partition % self.step == round.index % self.step)
                })
                .map(|(subject, _)| subject.clone())
                .collect(),
        )
    }

    /// Whether `round` is the first to read the messages of `subject`
    /// (their undecodable and misrouted events are counted once).
    fn first_reading(&self, round: IdRound, subject: &str) -> bool {
        match cctv_bus::subjects::parse_event_partition(subject) {
            Some(_) if self.step > 1 => round.index < self.step,
            _ => round.index == 0,
        }
    }

    /// The progress bars' prefix of `round`.
    fn label(&self, round: IdRound) -> String {
        if self.of <= 1 {
            String::new()
        } else {
            format!("round {}/{} ", round.index + 1, self.of)
        }
    }
}

/// Event ids a round holds at most when the audit sizes its rounds (a
/// round of 1 M ids peaked at about 300 MiB in all; README "Auditing").
const IDS_PER_ROUND: u64 = 8_000_000;
/// Stream bytes per event assumed when sizing the rounds: fewer than an
/// event batch takes per event (measured: about 280 for canonical events),
/// so a round holds fewer ids than [`IDS_PER_ROUND`], not more.
const STREAM_BYTES_PER_EVENT: u64 = 128;
/// Most rounds an audit takes.
pub(crate) const MAX_ROUNDS: u16 = 4096;

/// Rounds for a stream of `bytes`: enough that none holds more than
/// [`IDS_PER_ROUND`] ids. With `partitions` known: a divisor of it up to
/// twice as many as needed (each partition's messages read once), else a
/// multiple of it when more rounds than partitions are needed (each read a
/// few times), else just enough (each round reads the whole stream, which
/// beats hundreds of rounds each scanning ClickHouse).
fn rounds_for(bytes: u64, partitions: Option<u16>) -> u16 {
    let needed = (bytes / STREAM_BYTES_PER_EVENT)
        .div_ceil(IDS_PER_ROUND)
        .clamp(1, u64::from(MAX_ROUNDS));
    let needed = u16::try_from(needed).unwrap_or(MAX_ROUNDS);
    match partitions.filter(|partitions| *partitions > 0) {
        Some(partitions) if needed <= partitions => (needed..=partitions)
            .take_while(|rounds| u32::from(*rounds) <= 2 * u32::from(needed))
            .find(|rounds| partitions % rounds == 0)
            .unwrap_or(needed),
        // The largest multiple within the bound when the next one is beyond it.
        Some(partitions) => (u32::from(needed).div_ceil(u32::from(partitions))
            * u32::from(partitions))
        .min(u32::from(MAX_ROUNDS / partitions * partitions))
        .try_into()
        .unwrap_or(MAX_ROUNDS),
        None => needed,
    }
}

fn gcd(mut a: u16, mut b: u16) -> u16 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Asks the owner of every partition with missing events to read it again
/// from the first message carrying one.
async fn request_rewinds(
    js: &jetstream::Context,
    config: &CliConfig,
    fold: &IdFold,
) -> anyhow::Result<Vec<RewindRequested>> {
    let bucket = config.lease_bucket(js).await?;
    let Some(partitions) = bucket
        .partitions()
        .await
        .context("failed to read the partition count")?
    else {
        anyhow::bail!("the lease bucket holds no partition count: run `cctvctl setup` first");
    };
    // The fold knew the count from the audit's start (it is fixed).
    anyhow::ensure!(
        fold.partitions == Some(partitions),
        "the partition count ({partitions}) could not be read when the audit started; run it again"
    );
    let mut requested = Vec::new();
    for (partition, first) in fold.first_missing() {
        let from = bucket
            .request_rewind(partition, first)
            .await
            .with_context(|| format!("failed to ask for partition {partition} to be read again"))?;
        requested.push(RewindRequested { partition, from });
    }
    Ok(requested)
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

/// The event ids of one round of a stream, with the lowest sequence
/// carrying each.
struct ListedEvents {
    ids: HashMap<[u8; 16], u64>,
    /// The stream when the round started reading it.
    extent: StreamExtent,
    /// Messages delivered.
    messages: u64,
    /// Whether the round read the whole stream.
    whole: bool,
    /// Events of the round read (repeats included).
    events: u64,
    /// Sequences of what cannot be decoded (each once over the rounds).
    undecodable: Vec<u64>,
    /// Events on a partition's subject that belong to another partition
    /// (each once over the rounds).
    misrouted: u64,
}

/// What the rounds read of the stream, summed.
#[derive(Debug, Default)]
struct StreamRead {
    messages: u64,
    whole_rounds: u64,
    events: u64,
    undecodable: Vec<u64>,
    misrouted: u64,
}

impl StreamRead {
    fn add(&mut self, listed: &ListedEvents) {
        self.messages += listed.messages;
        self.whole_rounds += u64::from(listed.whole);
        self.events += listed.events;
        self.undecodable.extend(&listed.undecodable);
        self.misrouted += listed.misrouted;
    }
}

/// Reads what `round` of `plan` reads of the stream, as it is when the
/// round starts, up to its last sequence then, with one ordered consumer,
/// and keeps the round's event ids.
async fn stream_event_ids(
    events: &stream::Stream,
    plan: &RoundPlan,
    round: IdRound,
    shown: Progress,
) -> anyhow::Result<ListedEvents> {
    // The stream's state now, and with the partitions' subjects each
    // subject's messages (what this round reads of them).
    let (state, counts) = if plan.step > 1 {
        let mut listed = events
            .info_with_subjects(">")
            .await
            .context("failed to read the stream's subjects")?;
        let mut counts = Vec::new();
        while let Some(entry) = listed.next().await {
            let (subject, count) = entry.context("failed to read the stream's subjects")?;
            counts.push((subject, u64::try_from(count).unwrap_or(u64::MAX)));
        }
        (listed.info.state.clone(), counts)
    } else {
        let info = events
            .get_info()
            .await
            .context("failed to read the state of the stream")?;
        (info.state, Vec::new())
    };
    let extent = extent_of(&state);
    let subjects = plan.subjects_of(round, &counts);
    let mut listed = ListedEvents {
        ids: HashMap::new(),
        extent,
        messages: 0,
        whole: subjects.is_none(),
        events: 0,
        undecodable: Vec::new(),
        misrouted: 0,
    };
    let messages = match &subjects {
        None => extent.messages,
        Some(subjects) => counts
            .iter()
            .filter(|(subject, _)| subjects.contains(subject))
            .map(|(_, count)| count)
            .sum(),
    };
    if messages == 0 {
        return Ok(listed);
    }
    let reading = progress(
        shown,
        Some(messages),
        "{spinner} [{elapsed_precise}] {prefix}{wide_bar} {human_pos}/{human_len} messages of the stream read ({msg})",
    );
    reading.set_prefix(plan.label(round));
    let (filter_subject, filter_subjects) = match subjects {
        None => (String::new(), Vec::new()),
        Some(mut subjects) if subjects.len() == 1 => (subjects.remove(0), Vec::new()),
        Some(subjects) => (String::new(), subjects),
    };
    let consumer = events
        .create_consumer(consumer::pull::OrderedConfig {
            description: Some("cctvctl audit: read the events".into()),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: extent.first_seq,
            },
            filter_subject,
            filter_subjects,
            ..Default::default()
        })
        .await
        .context("failed to create an ordered consumer")?;
    // Expired or deleted since the state was read: nothing comes.
    if consumer.cached_info().num_pending == 0 {
        reading.finish_and_clear();
        return Ok(listed);
    }
    let mut delivered = consumer
        .messages()
        .await
        .context("failed to read the stream")?;
    loop {
        let next = tokio::time::timeout(LISTING_IDLE_TIMEOUT, delivered.next())
            .await
            .context("the stream stopped delivering while being read")?;
        let Some(message) = next else {
            anyhow::bail!("the ordered consumer ended before the last sequence");
        };
        let message = message.context("failed to read the stream")?;
        let info = message
            .info()
            .map_err(|e| anyhow::anyhow!("message without JetStream metadata: {e}"))?;
        let sequence = info.stream_sequence;
        if sequence > extent.last_seq {
            break;
        }
        let last = sequence == extent.last_seq || info.pending == 0;
        listed.messages += 1;
        let first_reading = plan.first_reading(round, &message.subject);
        // The partition whose subject carried the message, to check its events against.
        let carrier =
            cctv_bus::subjects::parse_event_partition(&message.subject).zip(plan.partitions);
        match cctv_bus::decode_event_batch(&message.payload) {
            Ok(items) => {
                for item in items {
                    let id = item
                        .ok()
                        .and_then(|event| event.with_view(|view| *view.event_id.as_bytes()).ok());
                    let Some(id) = id else {
                        if first_reading {
                            listed.undecodable.push(sequence);
                        }
                        continue;
                    };
                    if first_reading
                        && carrier.is_some_and(|(partition, partitions)| {
                            cctv_bus::subjects::partition_of(&id, partitions) != partition
                        })
                    {
                        listed.misrouted += 1;
                    }
                    if round.contains(&id) {
                        listed.events += 1;
                        listed.ids.entry(id).or_insert(sequence);
                    }
                }
            }
            Err(_) if first_reading => listed.undecodable.push(sequence),
            Err(_) => {}
        }
        reading.inc(1);
        reading.set_message(format!("{} events", listed.events));
        if last {
            break;
        }
    }
    reading.finish_and_clear();
    Ok(listed)
}

/// A progress bar on stderr when `shown` asks for it, drawn only when
/// stderr is a terminal (and `TERM` is set, not `dumb`): an audit of a week
/// of events reads millions of them twice (the stream, then ClickHouse's
/// ids), for minutes. A bar dropped unfinished (an error) is cleared, not
/// left looking complete.
fn progress(shown: Progress, len: Option<u64>, template: &str) -> ProgressBar {
    if shown == Progress::Hidden {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(len, ProgressDrawTarget::stderr())
        .with_finish(ProgressFinish::AndClear);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    // Drawn at once: a short phase may end before the first tick.
    bar.tick();
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
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
        if audit.stream.is_some() {
            let _ = writeln!(
                text,
                "  events in the stream: {} (repeats included)",
                audit.events_in_stream
            );
        }
        let _ = writeln!(text, "  in ClickHouse: {} rows", audit.rows);
        finding(
            &mut text,
            "missing in ClickHouse",
            &audit.missing,
            " (of messages with unwritten events)",
        );
        finding(&mut text, "undecodable", &audit.undecodable, "");
        if audit.misrouted > 0 {
            let _ = writeln!(
                text,
                "  events on another partition's subject: {} (sent with another partition count? \
                 in rounds their ids may be missed: audit with --rounds 1)",
                audit.misrouted
            );
        }
        if audit.foreign > 0 {
            let _ = writeln!(
                text,
                "  rows with ids no message of the stream carries: {}",
                audit.foreign
            );
        }
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
                "  note: {} stored events have expired from the stream (not checked)",
                audit.expired
            );
        }
        let _ = writeln!(
            text,
            "  {}",
            if audit.is_clean() { "clean" } else { "DIFFERS" }
        );
    }
    if report.id_rounds > 1 {
        let _ = writeln!(
            text,
            "event ids taken in {} rounds; {} messages of the stream read",
            report.id_rounds, report.messages_read
        );
        if let Some(why) = &report.whole_stream_reads {
            let _ = writeln!(text, "  each round read the whole stream: {why}");
        }
    }
    render_rollups(&mut text, &report.rollups);
    if !report.rewinds_requested.is_empty() {
        let asked: Vec<String> = report
            .rewinds_requested
            .iter()
            .map(|rewind| format!("p{} from {}", rewind.partition, rewind.from))
            .collect();
        let _ = writeln!(
            text,
            "partitions asked to be read again (--repair; their owners write only what is missing): {}",
            asked.join(", ")
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

fn render_rollups(text: &mut String, rollups: &RollupAudit) {
    let _ = writeln!(
        text,
        "rollups: rolled up through {}",
        rollups.rolled_through.as_deref().unwrap_or("(no slot yet)")
    );
    if !rollups.repaired.is_empty() {
        let _ = writeln!(
            text,
            "  counted again from the rows (--repair): {}",
            rollups.repaired.join(", ")
        );
    }
    for difference in &rollups.differences {
        let _ = writeln!(
            text,
            "  {} slot {}: {} rows, rollup counts {} ({} keys differ){}",
            difference.rollup,
            difference.slot,
            difference.rows,
            difference.rolled,
            difference.keys_differing,
            if difference.rolled > difference.rows {
                "; more than the rows: rows were deleted behind the rollup"
            } else {
                "; run with --repair"
            }
        );
    }
    let _ = writeln!(
        text,
        "  {}",
        if rollups.differences.is_empty() {
            "clean"
        } else {
            "DIFFERS"
        }
    );
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
    let mut repair = args.repair;
    let mut repaired = Vec::new();
    let mut rewinds = Vec::new();
    let mut report = loop {
        let report =
            audit_pipeline_showing(config, repair, args.rounds, Progress::Terminal).await?;
        if repair {
            // One repair is enough; waiting audits only look.
            repaired.clone_from(&report.rollups.repaired);
            rewinds.clone_from(&report.rewinds_requested);
            repair = false;
        }
        if report.is_clean() || tokio::time::Instant::now() >= deadline {
            break report;
        }
        tokio::time::sleep(WAIT_POLL_INTERVAL).await;
    };
    report.rollups.repaired = repaired;
    report.rewinds_requested = rewinds;
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

    fn id(n: u8) -> [u8; 16] {
        [n; 16]
    }

    /// Ids 1..=5 in the stream's sequences 10..=15; id 2 carried by two
    /// messages (11 and 14 in the tests' stored rows).
    fn stream_of_five() -> HashMap<[u8; 16], u64> {
        [
            (id(1), 10),
            (id(2), 11),
            (id(3), 12),
            (id(4), 15),
            (id(5), 15),
        ]
        .into()
    }

    /// A stream holding sequences 10..=20.
    const EXTENT: StreamExtent = StreamExtent {
        first_seq: 10,
        last_seq: 20,
        messages: 11,
        num_deleted: 0,
    };

    #[test]
    fn the_fold_finds_missing_doubled_beyond_expired_and_foreign_ids() {
        let extent = EXTENT;
        let stream = stream_of_five();
        let mut fold = IdFold::new(Some((extent, stream.clone()))).with_partitions(Some(4));
        let mut halves = IdFold::new(Some((extent, stream))).with_partitions(Some(2));
        for (event, sequence) in [(3, 12), (5, 15)] {
            halves.add(id(event), sequence, 1);
        }
        halves.begin_round(HashMap::new(), extent);
        fold.add(id(1), 10, 1);
        fold.add(id(2), 14, 2); // doubled
        fold.add(id(4), 15, 1);
        fold.add(id(9), 25, 1); // beyond the last sequence
        fold.add(id(8), 3, 1); // expired from the stream
        fold.add(id(7), 13, 1); // no message carries it

        // Ids 3 (at 12) and 5 (at 15) are missing: partitions 3 and 1 of 4,
        // both partition 1 of 2.
        assert!(!fold.is_complete());
        assert_eq!(fold.first_missing(), [(1, 15), (3, 12)].into());
        // Of two partitions, ids 1, 3 and 5 are partition 1, ids 2 and 4
        // partition 0 (what a round left missing counts as well).
        assert_eq!(halves.first_missing(), [(0, 11), (1, 10)].into());
        assert_eq!(
            halves.finish("CCTV_EVENTS@1").missing,
            ranges(&[(10, 11), (15, 15)])
        );
        let audit = fold.finish("CCTV_EVENTS@1");
        assert_eq!(audit.missing, ranges(&[(12, 12), (15, 15)]));
        assert_eq!(audit.doubled, ranges(&[(14, 14)]));
        assert_eq!((audit.doubled_event_ids, audit.extra_rows), (1, 1));
        assert_eq!(audit.beyond_last, ranges(&[(25, 25)]));
        assert_eq!((audit.expired, audit.foreign, audit.rows), (1, 1, 7));
        assert!(!audit.is_clean());
    }

    #[test]
    fn rows_of_messages_that_expired_while_the_round_read_are_expired() {
        // The round read from sequence 10; by the end of its read the
        // stream began at 14, and the messages 10..=13 it had not reached
        // were gone.
        let mut fold = IdFold::new(Some((EXTENT, [(id(1), 15)].into())));
        fold.expired_below(14);
        fold.add(id(1), 15, 1);
        fold.add(id(2), 12, 1); // from an expired message: not checked
        fold.add(id(3), 16, 1); // from a message still there: foreign
        let audit = fold.finish("CCTV_EVENTS@1");
        assert_eq!((audit.expired, audit.foreign), (1, 1));
        // The report shows the stream as the round found it.
        assert_eq!(audit.stream, Some(EXTENT));
    }

    #[test]
    fn a_fold_in_rounds_finds_what_one_round_finds() {
        let extent = EXTENT;
        let mut stream = stream_of_five();
        stream.insert(id(6), 16);
        // (id, lowest sequence, copies) as ClickHouse holds them.
        let stored = [
            (id(1), 10, 1),
            (id(2), 14, 2),
            (id(4), 15, 1),
            (id(9), 25, 1),
            (id(8), 3, 1),
            (id(7), 13, 1),
            (id(10), 17, 3),
            (id(11), 18, 2),
        ];
        let mut once = IdFold::new(Some((extent, stream.clone()))).with_partitions(Some(4));
        for (event, sequence, copies) in stored {
            once.add(event, sequence, copies);
        }
        let once_first = once.first_missing();
        let once = once.finish("CCTV_EVENTS@1");
        assert_eq!(once.missing, ranges(&[(12, 12), (15, 16)]));
        let examples: Vec<u64> = once
            .doubled_event_id_examples
            .iter()
            .map(|example| example.copies)
            .collect();
        assert_eq!(examples, [3, 2, 2]);

        for of in [2, 3, 4, 7] {
            let mut fold = IdFold::new(Some((extent, HashMap::new()))).with_partitions(Some(4));
            for index in 0..of {
                let round = IdRound { of, index };
                fold.begin_round(
                    stream
                        .iter()
                        .filter(|(event, _)| round.contains(event))
                        .map(|(event, sequence)| (*event, *sequence))
                        .collect(),
                    extent,
                );
                for (event, sequence, copies) in stored {
                    if round.contains(&event) {
                        fold.add(event, sequence, copies);
                    }
                }
            }
            assert!(!fold.is_complete());
            assert_eq!(fold.first_missing(), once_first, "{of} rounds");
            assert_eq!(fold.finish("CCTV_EVENTS@1"), once, "{of} rounds");
        }
    }

    #[test]
    fn a_round_of_a_divisor_of_the_partitions_holds_whole_partitions() {
        let mut value: u128 = 0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c834;
        for _ in 0..2000 {
            value = value
                .wrapping_mul(0x2545_f491_4f6c_dd1d)
                .wrapping_add(0x1405_7b7e_f767_814f);
            let event = value.to_be_bytes();
            for (partitions, of) in [(16, 1), (16, 4), (16, 16), (12, 6), (16, 32), (16, 3)] {
                let partition = cctv_bus::subjects::partition_of(&event, partitions);
                let index = u16::try_from(u128::from_be_bytes(event) % u128::from(of)).unwrap();
                assert!(IdRound { of, index }.contains(&event));
                let step = gcd(of, partitions);
                // The round's share lies in partitions k with k mod step = index mod step.
                assert_eq!(
                    partition % step,
                    index % step,
                    "{partitions} partitions, {of} rounds"
                );
            }
        }
    }

    #[test]
    fn rounds_follow_the_stream_size_and_fit_the_partitions() {
        let bytes_for = |ids: u64| ids * STREAM_BYTES_PER_EVENT;
        assert_eq!(rounds_for(0, Some(16)), 1);
        assert_eq!(rounds_for(bytes_for(IDS_PER_ROUND), Some(16)), 1);
        assert_eq!(
            rounds_for(bytes_for(IDS_PER_ROUND) + STREAM_BYTES_PER_EVENT, Some(16)),
            2
        );
        assert_eq!(rounds_for(bytes_for(3 * IDS_PER_ROUND), Some(16)), 4);
        assert_eq!(rounds_for(bytes_for(3 * IDS_PER_ROUND), Some(17)), 3);
        assert_eq!(rounds_for(bytes_for(3 * IDS_PER_ROUND), Some(18)), 3);
        assert_eq!(rounds_for(bytes_for(5 * IDS_PER_ROUND), Some(16)), 8);
        assert_eq!(rounds_for(bytes_for(2 * IDS_PER_ROUND), Some(1021)), 2);
        assert_eq!(rounds_for(bytes_for(3 * IDS_PER_ROUND), None), 3);
        assert_eq!(rounds_for(bytes_for(20 * IDS_PER_ROUND), Some(16)), 32);
        assert_eq!(rounds_for(u64::MAX, Some(16)), MAX_ROUNDS);
        assert_eq!(rounds_for(u64::MAX, Some(1000)), 4000);
        assert_eq!(rounds_for(bytes_for(3 * IDS_PER_ROUND), Some(0)), 3);
        assert_eq!(gcd(32, 16), 16);
        assert_eq!(gcd(3, 16), 1);
    }

    #[test]
    fn a_round_reads_the_partitions_of_its_share_once_and_other_subjects_always() {
        let mut counts: Vec<(String, u64)> = (0..16)
            .map(|partition| (cctv_bus::subjects::event_partition(partition), 1))
            .collect();
        counts[7].1 = 0;
        counts.push(("cctv.events.legacy".into(), 5));
        let read =
            |plan: &RoundPlan, index| plan.subjects_of(IdRound { of: plan.of, index }, &counts);
        let four = RoundPlan::new(4, Some(16));
        assert_eq!(four.step, 4);
        assert_eq!(
            read(&four, 1).expect("subjects"),
            [
                "cctv.events.p1",
                "cctv.events.p5",
                "cctv.events.p9",
                "cctv.events.p13",
                "cctv.events.legacy"
            ]
        );
        // Partition 7 holds nothing.
        assert_eq!(
            read(&four, 3).expect("subjects"),
            [
                "cctv.events.p3",
                "cctv.events.p11",
                "cctv.events.p15",
                "cctv.events.legacy"
            ]
        );
        for index in 0..4 {
            let round = IdRound { of: 4, index };
            assert!(four.first_reading(round, "cctv.events.p1"));
            assert_eq!(four.first_reading(round, "cctv.events.legacy"), index == 0);
        }
        let many = RoundPlan::new(32, Some(16));
        assert_eq!(many.step, 16);
        assert_eq!(
            read(&many, 17).expect("subjects"),
            ["cctv.events.p1", "cctv.events.legacy"]
        );
        assert!(many.first_reading(IdRound { of: 32, index: 15 }, "cctv.events.p15"));
        assert!(!many.first_reading(IdRound { of: 32, index: 16 }, "cctv.events.p0"));
        // No divisor shared, or no partition count: the whole stream, every round.
        for whole in [RoundPlan::new(3, Some(16)), RoundPlan::new(4, None)] {
            assert_eq!(whole.step, 1);
            assert!(read(&whole, 2).is_none());
            assert!(whole.first_reading(
                IdRound {
                    of: whole.of,
                    index: 0
                },
                "cctv.events.p1"
            ));
            assert!(!whole.first_reading(
                IdRound {
                    of: whole.of,
                    index: 1
                },
                "cctv.events.p1"
            ));
        }
    }

    #[test]
    fn ids_met_in_any_order_give_every_range() {
        let extent = StreamExtent {
            first_seq: 1,
            last_seq: 20,
            messages: 20,
            num_deleted: 0,
        };
        let stream: HashMap<[u8; 16], u64> =
            [(id(1), 14), (id(2), 7), (id(3), 1), (id(4), 10)].into();
        let mut fold = IdFold::new(Some((extent, stream)));
        // ClickHouse returns ids in hash order, not by sequence.
        for (n, seq) in [(1, 14), (2, 7), (3, 1), (4, 10)] {
            fold.add(id(n), seq, 2);
        }
        fold.add(id(9), 30, 1);
        fold.add(id(8), 25, 1);
        let audit = fold.finish("S@1");
        assert_eq!(audit.doubled, ranges(&[(1, 1), (7, 7), (10, 10), (14, 14)]));
        assert_eq!(audit.beyond_last, ranges(&[(25, 25), (30, 30)]));
    }

    #[test]
    fn a_store_holding_each_id_once_is_clean() {
        let extent = StreamExtent {
            first_seq: 1,
            last_seq: 2,
            messages: 2,
            num_deleted: 0,
        };
        let stream: HashMap<[u8; 16], u64> =
            (0..100u8).map(|n| (id(n), 1 + u64::from(n % 2))).collect();
        let mut fold = IdFold::new(Some((extent, stream)));
        for n in 0..100u8 {
            fold.add(id(n), 1 + u64::from(n % 2), 1);
        }
        let audit = fold.finish("S@1");
        assert!(audit.is_clean(), "{audit:?}");
        assert_eq!(audit.rows, 100);
        let mut gone = IdFold::new(None);
        gone.add(id(1), 5, 1);
        assert!(gone.finish("S@0").is_clean());
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
            misrouted: 2,
            ..StreamAudit::default()
        };
        let text = render_audit(&AuditReport {
            streams: vec![audit],
            rollups: RollupAudit {
                rolled_through: Some("2026-12-01".into()),
                differences: vec![RollupDifference {
                    rollup: "offence_day_rollup".into(),
                    slot: "2026-11-30".into(),
                    rows: 10,
                    rolled: 9,
                    keys_differing: 1,
                }],
                repaired: Vec::new(),
            },
            rewinds_requested: vec![
                RewindRequested {
                    partition: 3,
                    from: 40,
                },
                RewindRequested {
                    partition: 9,
                    from: 77,
                },
            ],
            id_rounds: 4,
            messages_read: 1234,
            whole_stream_reads: Some("4 rounds share no divisor with the 9 partitions".into()),
            clean: false,
        });
        assert!(
            text.contains(
                "\nevent ids taken in 4 rounds; 1234 messages of the stream read\n  \
                 each round read the whole stream: 4 rounds share no divisor with the 9 partitions\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("partitions asked to be read again (--repair; their owners write only what is missing): p3 from 40, p9 from 77\n"),
            "{text}"
        );
        assert!(
            text.contains("  missing in ClickHouse: 3 sequences (of messages with unwritten events): 40-41, 77\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "rollups: rolled up through 2026-12-01\n  offence_day_rollup slot 2026-11-30: 10 rows, \
                 rollup counts 9 (1 keys differ); run with --repair\n  DIFFERS\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("  events on another partition's subject: 2 "),
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
