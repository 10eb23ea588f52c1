//! Group commit of the partitions' insert batches: one task per instance
//! and shard
//! takes every batch queued while its previous insert ran and writes them as
//! one fenced INSERT (one part, all or nothing; its `query_id` names every
//! partition it carries). ClickHouse spends most of a small insert's cost
//! per insert, not per row (`cctv-bench-e2e --scenarios store-floor`), so
//! under load fewer, larger inserts cost it several times less. An insert
//! waits at most `aggregator.insert_linger` (100 ms) after its first batch
//! for others to join; under light load a batch goes alone after that. It
//! goes at once when a batch of every partition the instance owns in the
//! shard is in ([`Linger::complete_group`]): a partition's writer has one
//! batch in the group commit at a time, so nothing more can join. Without
//! that, an aggregator catching up waited out the linger before every
//! insert (100 ms of every 320 ms cycle in a timeline of the bench,
//! `benches/profile/timeline.py`).
//!
//! Inserts keep their size however many aggregators share the work: as the
//! instance owns fewer of its shard's partitions ([`Linger::factor`]: 2
//! when it owns half), each partition's batch may hold that many times
//! `batch_max_rows` rows and the linger grows as much (up to four times
//! the base, to bound the latency). With two instances, each owning half,
//! an insert still carries about as many rows as one instance's, so
//! ClickHouse receives as many inserts, not twice as many.
//!
//! The instances also share the shard's insert time: one that owns 1/f of
//! the shard's partitions waits (f - 1) times its previous insert's duration
//! after that insert before it sends the next ([`pace`]), unless the group
//! is nearly as large as it may grow (its batches are full, as while it
//! catches up: waiting would only leave rows in NATS). The batches keep
//! filling meanwhile, so each instance inserts less often with more rows.
//! Without it two instances under load each sent an insert every cycle, as
//! one does, with half the rows: 33 inserts per million offences against
//! 17 (bench timeline, 2026-12-06), and ClickHouse spends ~20-25 ms of CPU
//! per insert whatever its size (`store-floor` with 4,000 to 100,000 rows
//! per insert; a third of it creating the part's files). Under light load
//! an insert takes tens of milliseconds, so the wait is that long too.
//!
//! Under load the batches themselves grow: while this instance's last
//! insert cycle into the shard carried `aggregator.busy_rows_per_second`
//! or more, times f ([`Linger::busy`]), its partitions' batches may wait
//! `batch_max_age_busy` instead of `batch_max_age` as long as rows keep
//! coming (`Batcher::set_busy_age`), so the inserts become fewer and
//! larger; a steady 10,000 offences/s keeps the short age.
//!
//! Each partition's writer keeps its own retry logic: a failed group fails
//! every batch in it, and each writer then asks ClickHouse what of its own
//! batch was written before trying again, exactly as for an insert of its
//! own. A batch still queued when its partition's lease is lost may yet be
//! sent: the fence drops it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cctv_store::{EncodedRows, StoreError};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, oneshot};

use crate::metrics as names;
use crate::replicas::Replicas;

/// Batches queued for the group-commit task at most.
const QUEUE: usize = 1024;
/// The longest linger, in multiples of the configured one.
const MAX_LINGER_FACTOR: u32 = 4;
/// The longest wait between two inserts of one instance ([`pace`]).
const MAX_PACE: Duration = Duration::from_secs(1);

/// How long an insert waits for more batches: `base` scaled by the share of
/// the shard's partitions this instance does not own.
#[derive(Debug)]
pub(crate) struct Linger {
    base: Duration,
    /// Partitions that write to this shard.
    partitions: usize,
    /// `aggregator.batch_max_rows`: a partition batch's rows at most, times
    /// [`Linger::factor`].
    batch_max_rows: usize,
    /// Of those, the ones this instance owns now.
    owned: AtomicUsize,
    /// Calls for batches ([`Linger::call`]), counted.
    calls: tokio::sync::watch::Sender<u64>,
    /// `aggregator.busy_rows_per_second` ([`Linger::busy`]); 0 never.
    busy_from: usize,
    /// Rows per second of this instance's last insert cycle into the shard.
    rate: AtomicUsize,
    /// The shard's index, the label of [`names::SHARD_BUSY`].
    shard: String,
}

impl Linger {
    pub(crate) fn new(base: Duration, partitions: usize, batch_max_rows: usize) -> Self {
        Self {
            base,
            partitions,
            batch_max_rows,
            owned: AtomicUsize::new(partitions),
            calls: tokio::sync::watch::Sender::new(0),
            busy_from: 0,
            rate: AtomicUsize::new(0),
            shard: "0".into(),
        }
    }

    /// For shard `index` (the label of its metric; 0 by default).
    pub(crate) fn for_shard(self, index: usize) -> Self {
        Self {
            shard: index.to_string(),
            ..self
        }
    }

    /// The same, busy ([`Linger::busy`]) from `rows_per_second` (0 never).
    pub(crate) fn busy_from(self, rows_per_second: usize) -> Self {
        Self {
            busy_from: rows_per_second,
            ..self
        }
    }

    /// Records an insert of `rows` rows that ended `cycle` after the one
    /// before it.
    pub(crate) fn record_cycle(&self, rows: usize, cycle: Duration) {
        self.rate
            .store(rows_per_second(rows, cycle), Ordering::Relaxed);
        metrics::gauge!(names::SHARD_BUSY, "shard" => self.shard.clone()).set(if self.busy() {
            1.0
        } else {
            0.0
        });
    }

    /// Whether the shard is busy: this instance's last insert cycle carried
    /// `busy_from` rows per second or more, times [`Linger::factor`] (with
    /// two instances each inserts about half of the shard's rows). Its
    /// partitions' batches then wait `aggregator.batch_max_age_busy`
    /// instead of `batch_max_age`: the inserts grow and become fewer, and
    /// ClickHouse spends most of a small insert's cost per insert (with a
    /// batch age of 1 s instead of 300 ms the mixed-vendor bench sent 16
    /// inserts per million offences instead of 54, and ClickHouse spent
    /// 4.7-5.5 CPU-s per million instead of 7.5-8.1; 2026-12-06). It is a
    /// rate, not a size, so a load that falls below it gets the short age
    /// back after one cycle, and a steady 10,000 offences/s never gets the
    /// long one.
    pub(crate) fn busy(&self) -> bool {
        self.busy_from > 0
            && self
                .rate
                .load(Ordering::Relaxed)
                .saturating_mul(self.factor() as usize)
                >= self.busy_from
    }

    /// Asks every partition of the instance in the shard that holds rows to
    /// hand them over now, however young its batch (its writer permitting):
    /// made when a group's first batch arrives, so that the group carries a
    /// batch of every partition instead of those whose batches happened to
    /// come of age within the linger. Without it the partitions fell into
    /// step with different groups: under the mixed-vendor load one instance
    /// sent 65 inserts per million offences, most of 5-7 of its 16
    /// partitions (bench timeline, 2026-12-06).
    pub(crate) fn call(&self) {
        self.calls
            .send_modify(|calls| *calls = calls.wrapping_add(1));
    }

    /// The calls, for a partition's reader.
    pub(crate) fn calls(&self) -> tokio::sync::watch::Receiver<u64> {
        self.calls.subscribe()
    }

    /// Whether a group of `rows` rows is nearly as large as a group of full
    /// batches ([`Linger::complete_group`] batches of `factor x
    /// batch_max_rows` rows): three quarters of that or more. Such a group
    /// goes without waiting for its [`pace`].
    pub(crate) fn nearly_full(&self, rows: usize) -> bool {
        let full = self
            .complete_group()
            .saturating_mul(self.factor() as usize)
            .saturating_mul(self.batch_max_rows);
        rows.saturating_mul(4) >= full.saturating_mul(3)
    }

    /// Records how many of the shard's partitions the instance owns.
    pub(crate) fn set_owned(&self, owned: usize) {
        self.owned.store(owned, Ordering::Relaxed);
    }

    /// How many batches make a group complete: one per partition of the
    /// shard this instance owns (a partition's writer has at most one batch
    /// in the group commit at a time), or every partition of the shard
    /// while it owns none.
    pub(crate) fn complete_group(&self) -> usize {
        match self.owned.load(Ordering::Relaxed) {
            0 => self.partitions,
            owned => owned,
        }
        .max(1)
    }

    /// How many times `aggregator.batch_max_rows` a partition's batch may
    /// hold now: with two instances each owning half of the partitions,
    /// each partition's batch grows twice as large, so that an insert that
    /// carries one batch of every owned partition keeps the size it has
    /// with one instance (ClickHouse's cost is mostly per insert).
    pub(crate) fn factor(&self) -> u32 {
        share_factor(self.partitions, self.owned.load(Ordering::Relaxed))
    }

    /// The linger now.
    pub(crate) fn current(&self) -> Duration {
        linger_for(
            self.base,
            self.partitions,
            self.owned.load(Ordering::Relaxed),
        )
    }
}

/// `rows` per `cycle`, per second (a cycle under a millisecond counts as
/// one).
fn rows_per_second(rows: usize, cycle: Duration) -> usize {
    let millis = u64::try_from(cycle.as_millis()).unwrap_or(u64::MAX).max(1);
    usize::try_from(u64::try_from(rows).unwrap_or(u64::MAX).saturating_mul(1000) / millis)
        .unwrap_or(usize::MAX)
}

/// `base x` [`share_factor`].
fn linger_for(base: Duration, partitions: usize, owned: usize) -> Duration {
    base * share_factor(partitions, owned)
}

/// How long after an insert that took `insert` the next one waits (unless
/// its group is [`Linger::nearly_full`]), for an instance whose
/// [`Linger::factor`] is `factor`: `(factor - 1) x insert`, at most
/// [`MAX_PACE`]. With one instance, no wait; with f instances each spends
/// about 1/f of its time inserting, so the shard receives about as many
/// inserts as from one.
fn pace(insert: Duration, factor: u32) -> Duration {
    (insert * factor.saturating_sub(1)).min(MAX_PACE)
}

/// `partitions / owned` rounded up, at least 1 and at most
/// [`MAX_LINGER_FACTOR`]; 1 while the instance owns none (nothing to write).
fn share_factor(partitions: usize, owned: usize) -> u32 {
    if owned == 0 || owned >= partitions {
        return 1;
    }
    u32::try_from(partitions.div_ceil(owned))
        .unwrap_or(MAX_LINGER_FACTOR)
        .min(MAX_LINGER_FACTOR)
}

/// One partition's batch waiting to be inserted.
struct Request {
    writer: String,
    rows: Arc<EncodedRows>,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// Handle of the instance's group-commit task.
#[derive(Debug, Clone)]
pub(crate) struct Inserter {
    requests: mpsc::Sender<Request>,
}

impl Inserter {
    /// Starts the task; a group holds at most `max_rows` rows (a single
    /// batch larger than that goes alone) and waits at most `linger` after
    /// its first batch for others to join.
    pub(crate) fn start(replicas: Arc<Replicas>, max_rows: usize, linger: Arc<Linger>) -> Self {
        let (requests, receiver) = mpsc::channel(QUEUE);
        tokio::spawn(run(replicas, receiver, max_rows, linger));
        Self { requests }
    }

    /// Inserts `rows` of `writer` through the fence, alone or with other
    /// partitions' batches; returns once the insert that carried them ended.
    pub(crate) async fn insert(
        &self,
        writer: &str,
        rows: Arc<EncodedRows>,
    ) -> Result<(), StoreError> {
        let stopped = || StoreError::Unavailable {
            operation: "insert",
            message: "the insert task stopped".into(),
        };
        let (done, answer) = oneshot::channel();
        self.requests
            .send(Request {
                writer: writer.to_string(),
                rows,
                done,
            })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn run(
    replicas: Arc<Replicas>,
    mut requests: mpsc::Receiver<Request>,
    max_rows: usize,
    linger: Arc<Linger>,
) {
    // No insert before this (unless its group is nearly full): see `pace`.
    let mut paced_until = tokio::time::Instant::now();
    // When the last insert ended: see `Linger::busy`.
    let mut last_end = None;
    while let Some(first) = requests.recv().await {
        linger.call();
        let deadline = tokio::time::Instant::now() + linger.current();
        let mut rows = first.rows.len();
        let mut group = vec![first];
        while rows < max_rows {
            // Every owned partition's batch is in: nothing more can join, so
            // the group goes at once instead of waiting out the linger;
            // unless it is early and has room to grow.
            let complete = group.len() >= linger.complete_group();
            let held = tokio::time::Instant::now() < paced_until && !linger.nearly_full(rows);
            if complete && !held {
                break;
            }
            let until = if complete {
                paced_until
            } else if held {
                deadline.max(paced_until)
            } else {
                deadline
            };
            let next = match requests.try_recv() {
                Ok(request) => Some(request),
                Err(TryRecvError::Empty) => tokio::time::timeout_at(until, requests.recv())
                    .await
                    .ok()
                    .flatten(),
                Err(TryRecvError::Disconnected) => None,
            };
            let Some(request) = next else { break };
            if rows + request.rows.len() <= max_rows {
                rows += request.rows.len();
                group.push(request);
            } else {
                // Too large to join: it opens the next group.
                paced_until = insert_and_answer(&replicas, group, &linger, &mut last_end).await;
                rows = request.rows.len();
                group = vec![request];
            }
        }
        paced_until = insert_and_answer(&replicas, group, &linger, &mut last_end).await;
    }
}

/// Inserts `group`, answers its writers, records the cycle since
/// `last_end` ([`Linger::record_cycle`]), and returns when the next insert
/// may go ([`pace`]).
async fn insert_and_answer(
    replicas: &Replicas,
    group: Vec<Request>,
    linger: &Linger,
    last_end: &mut Option<tokio::time::Instant>,
) -> tokio::time::Instant {
    let rows = group.iter().map(|request| request.rows.len()).sum();
    let started = tokio::time::Instant::now();
    let result = insert_group(replicas, &group).await;
    answer(group, &result);
    let ended = tokio::time::Instant::now();
    if let Some(previous) = last_end.replace(ended) {
        linger.record_cycle(rows, ended - previous);
    }
    ended + pace(ended - started, linger.factor())
}

/// How long the same group is sent again to the shard's replicas (cluster
/// only) before its writers are told it failed and check for themselves.
const SAME_BYTES_RETRY: Duration = Duration::from_secs(30);
/// Pause between two attempts of the same group.
const SAME_BYTES_PAUSE: Duration = Duration::from_millis(200);

async fn insert_group(replicas: &Replicas, group: &[Request]) -> Result<(), StoreError> {
    let batches: Vec<(&str, &EncodedRows)> = group
        .iter()
        .map(|request| (request.writer.as_str(), request.rows.as_ref()))
        .collect();
    metrics::counter!(names::INSERTS).increment(1);
    #[allow(clippy::cast_precision_loss)]
    metrics::histogram!(names::INSERT_GROUP).record(group.len() as f64);
    // On replicated tables the same bytes may be sent again to any replica
    // of the shard: a block already committed is dropped, so the rows are
    // written once whatever became of the attempt before.
    let give_up = tokio::time::Instant::now() + SAME_BYTES_RETRY;
    loop {
        let (index, store) = replicas.current();
        let started = std::time::Instant::now();
        let result = store.insert_fenced(&batches).await;
        tracing::debug!(
            partitions = batches.len(),
            rows = batches.iter().map(|(_, rows)| rows.len()).sum::<usize>(),
            millis = started.elapsed().as_millis(),
            "insert"
        );
        let Err(error) = result else {
            return Ok(());
        };
        replicas.fail_over(index, &error);
        if !replicas.is_replicated()
            || !error.is_transient()
            || tokio::time::Instant::now() >= give_up
        {
            return Err(error);
        }
        tracing::warn!(%error, "insert failed; sending the same rows again to the shard");
        tokio::time::sleep(SAME_BYTES_PAUSE).await;
    }
}

/// Gives every request of `group` the group's result, after letting go of
/// its rows (so that the writer gets them back without a copy).
fn answer(group: Vec<Request>, result: &Result<(), StoreError>) {
    for Request { rows, done, .. } in group {
        drop(rows);
        let _ = done.send(result.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_linger_grows_with_the_share_owned_by_others() {
        let base = Duration::from_millis(100);
        assert_eq!(linger_for(base, 16, 16), base);
        assert_eq!(linger_for(base, 16, 8), base * 2);
        assert_eq!(linger_for(base, 16, 6), base * 3);
        assert_eq!(linger_for(base, 16, 1), base * MAX_LINGER_FACTOR);
        // Owning nothing (yet): nothing to insert; keep the base.
        assert_eq!(linger_for(base, 16, 0), base);
        let linger = Linger::new(base, 16, 5_000);
        assert_eq!(linger.current(), base);
        linger.set_owned(4);
        assert_eq!(linger.current(), base * 4);
        assert_eq!(linger.factor(), 4);
    }

    #[test]
    fn an_instance_with_a_share_of_the_partitions_takes_that_share_of_the_insert_time() {
        let insert = Duration::from_millis(300);
        // Alone: the next insert may go at once.
        assert_eq!(pace(insert, 1), Duration::ZERO);
        // One of two: as long again; one of four: three times as long.
        assert_eq!(pace(insert, 2), insert);
        assert_eq!(pace(insert, 4), insert * 3);
        // Bounded, however slow the insert was.
        assert_eq!(pace(Duration::from_secs(5), 2), MAX_PACE);
        // A group of full batches does not wait: 8 owned of 16, so batches
        // of 2 x 1,000 rows, 16,000 rows when all are full.
        let linger = Linger::new(Duration::from_millis(100), 16, 1_000);
        linger.set_owned(8);
        assert!(!linger.nearly_full(11_999));
        assert!(linger.nearly_full(12_000));
        assert!(linger.nearly_full(16_000));
        linger.set_owned(16);
        assert!(!linger.nearly_full(11_999));
        assert!(linger.nearly_full(12_000));
    }

    #[test]
    fn a_shard_is_busy_from_its_insert_rate_times_the_share_of_others() {
        let second = Duration::from_secs(1);
        assert_eq!(rows_per_second(25_000, second), 25_000);
        assert_eq!(rows_per_second(8_000, Duration::from_millis(320)), 25_000);
        // A cycle under a millisecond counts as one.
        assert_eq!(rows_per_second(10, Duration::ZERO), 10_000);
        let linger = Linger::new(Duration::from_millis(100), 16, 5_000).busy_from(25_000);
        // No cycle yet: not busy.
        assert!(!linger.busy());
        // 10,000 offences/s in 300 ms cycles: not busy.
        linger.record_cycle(3_000, Duration::from_millis(300));
        assert!(!linger.busy());
        linger.record_cycle(20_000, Duration::from_millis(330));
        assert!(linger.busy());
        // The load falls: the next cycle says so.
        linger.record_cycle(10_000, second);
        assert!(!linger.busy());
        // One of two instances inserts about half of the shard's rows.
        linger.set_owned(8);
        linger.record_cycle(12_500, second);
        assert!(linger.busy());
        // 0: never busy.
        let never = Linger::new(Duration::from_millis(100), 16, 5_000).busy_from(0);
        never.record_cycle(1_000_000, second);
        assert!(!never.busy());
    }

    #[test]
    fn batches_grow_with_the_share_owned_by_others_and_groups_end_when_all_are_in() {
        let linger = Linger::new(Duration::from_millis(100), 16, 5_000);
        // Before ownership is known: every partition of the shard.
        assert_eq!(linger.factor(), 1);
        assert_eq!(linger.complete_group(), 16);
        linger.set_owned(16);
        assert_eq!((linger.factor(), linger.complete_group()), (1, 16));
        linger.set_owned(8);
        assert_eq!((linger.factor(), linger.complete_group()), (2, 8));
        linger.set_owned(5);
        assert_eq!((linger.factor(), linger.complete_group()), (4, 5));
        linger.set_owned(3);
        assert_eq!(
            (linger.factor(), linger.complete_group()),
            (MAX_LINGER_FACTOR, 3)
        );
        linger.set_owned(0);
        assert_eq!((linger.factor(), linger.complete_group()), (1, 16));
    }
}
