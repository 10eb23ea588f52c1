//! The aggregator: partition leases, and per owned partition a term of
//! sessions (fence, settle, resume point and seen-set from ClickHouse, fresh
//! consumer, read and batch, insert through the fence, ack).
//!
//! A session ends on any delivery anomaly (a gap in consumer sequences, a
//! stream error after a reconnect); the next starts again from what
//! ClickHouse holds, so an anomaly costs a re-read, never a row. A term ends
//! when the lease is handed over or lost; a lost lease stops it at once, and
//! whatever it still sends is dropped by the fence. A rewind request
//! (`rewind.p<k>`) ends the session too, and the next one reads the
//! partition again from the requested sequence (`replay.rs`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use cctv_bus::{LeaseBucket, LeaseWriteError, StreamKind};
use cctv_runtime::Health;
use cctv_store::{ChunkPool, EncodedRows, ResumePoint, RollupPolicy, Store, StoreError};
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::batch::{handover, Handover};
use crate::budget::{RowBudget, RowsHeld};
use crate::delivery::{Delivery, DeliveryOrder};
use crate::inserter::{Inserter, Linger};
use crate::metrics as names;
use crate::ownership::{Action, Ownership};
use crate::refusals::{Refusals, REFUSAL_MAX_BACKOFF};
use crate::replay::{Replay, ReplayPlan, Replayed, Rewind};
use crate::replicas::Replicas;
use crate::seen::SeenSet;
use crate::{AggregatorConfig, AggregatorError, AggregatorStats, BatchDecision, Batcher};

/// Batches a partition's writer holds at a time (being inserted, or in
/// the group commit's queue): one. The next keeps filling in the reader
/// until the writer is done with it, so an instance holds two cycles of
/// rows per partition (the batch inserted and the one filling), not three
/// (with one more queued, closed by its age, between them).
const WRITER_SLOTS: usize = 1;
/// Pause after a failed session before the next.
const SESSION_RETRY: Duration = Duration::from_millis(500);
/// How often a partition's lag gauge is refreshed from its consumer.
const LAG_REFRESH: Duration = Duration::from_secs(2);
/// Rows one group-commit insert carries at most (one part; the batches of
/// many partitions).
const INSERT_GROUP_MAX_ROWS: usize = 200_000;
/// How often a session checks that its pull stream still delivers.
const STALL_CHECK: Duration = Duration::from_secs(2);
/// A session whose consumer has undelivered messages and nothing in flight,
/// with no delivery for this long, pulls anew.
const STALL_AFTER: Duration = Duration::from_secs(15);
/// Pause between looks at the inserts still running in ClickHouse.
const SETTLE_POLL: Duration = Duration::from_millis(100);
/// Bytes of free row chunks an instance keeps for reuse (`cctv_store::ChunkPool`).
const FREE_CHUNK_BYTES: usize = 32 << 20;
/// Tries to confirm ownership before a rewind is marked done (200 ms
/// doubling between them: about 3 s in all), and to delete the request.
const OWNERSHIP_CHECKS: usize = 5;
/// How long an idle consumer of a dead term survives on the server.
const CONSUMER_INACTIVE: Duration = Duration::from_secs(120);

/// Runs the aggregator until `shutdown`, then drains its partitions, releases
/// their leases and returns.
pub async fn run(
    config: AggregatorConfig,
    shutdown: CancellationToken,
    stats: AggregatorStats,
) -> Result<(), AggregatorError> {
    config.validate()?;
    cctv_runtime::fault_point("on_start");
    let health = Health::starting();
    if let Some(listen) = config.telemetry.listen {
        let address = cctv_runtime::serve(listen, health.clone(), shutdown.clone())
            .await
            .map_err(|e| AggregatorError::Config(format!("cannot listen on {listen}: {e}")))?;
        tracing::info!(%address, "metrics and health endpoint listening");
    } else {
        cctv_runtime::install_metrics();
    }
    let store = Store::new(&config.clickhouse)?;
    if !prepare_store(&store, &config, &shutdown, &health).await? {
        return Ok(());
    }
    let Some(client) =
        cctv_bus::connect_with_retry(&config.nats, "cctv-aggregator", &shutdown).await?
    else {
        return Ok(());
    };
    let js = jetstream::new(client.clone());
    let (bucket, partitions) = loop {
        let opened = async {
            cctv_bus::ensure_stream(&js, StreamKind::Events, &config.streams.events).await?;
            let bucket = LeaseBucket::open(&js, &config.streams.leases).await?;
            let partitions = bucket.partitions_or_init().await?;
            Ok::<_, cctv_bus::BusError>((bucket, partitions))
        }
        .await;
        match opened {
            Ok(found) => break found,
            Err(error) if error.is_transient() => {
                tracing::warn!(%error, "events stream or lease bucket not ready; retrying");
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(SESSION_RETRY) => {}
                }
            }
            Err(error) => return Err(error.into()),
        }
    };
    let instance = instance_id(&config);
    tracing::info!(%instance, partitions, "aggregator started");
    health.set_ok();
    // One set of replicas and one group-commit task per ClickHouse shard (a
    // single server is one shard of one replica).
    let nodes = store.shard_nodes()?;
    let shard_count = nodes.len();
    let shards = nodes
        .into_iter()
        .enumerate()
        .map(|(index, nodes)| {
            let replicas = Arc::new(Replicas::new(nodes));
            let in_shard = (0..partitions)
                .filter(|partition| usize::from(*partition) % shard_count == index)
                .count();
            let linger = Arc::new(
                Linger::new(
                    config.aggregator.insert_linger,
                    in_shard,
                    config.aggregator.batch_max_rows,
                )
                .busy_from(config.aggregator.busy_rows_per_second)
                .for_shard(index),
            );
            let inserter = Inserter::start(replicas.clone(), INSERT_GROUP_MAX_ROWS, linger.clone());
            // Each shard its share of the row budget: a shard that cannot be
            // written holds at most its share, and the others go on.
            let budget = RowBudget::new(
                (config.aggregator.max_rows_in_memory / shard_count)
                    .max(config.aggregator.batch_max_rows),
            );
            ShardHandle {
                replicas,
                inserter,
                linger,
                budget,
            }
        })
        .collect();
    let holds_first = Arc::new(AtomicBool::new(false));
    let roller = tokio::spawn(crate::roller::run(
        store.clone(),
        config.rollup.clone(),
        holds_first.clone(),
        shutdown.clone(),
    ));
    let context = Arc::new(Context {
        holds_first,
        max_payload: client.server_info().max_payload,
        js,
        shards,
        chunks: ChunkPool::new(FREE_CHUNK_BYTES),
        config: config.clone(),
        stats: stats.clone(),
        health,
        instance: instance.clone(),
        bucket: bucket.clone(),
    });
    let result = LeaseLoop::new(context, bucket, partitions)
        .run(&shutdown)
        .await;
    roller.abort();
    // Acks are fire-and-forget publishes: push the last ones out before the
    // connection is dropped, so a clean stop leaves nothing written unacked.
    if let Err(error) = tokio::time::timeout(config.aggregator.shutdown_grace, client.flush())
        .await
        .map_err(|_| "timed out".to_string())
        .and_then(|flushed| flushed.map_err(|e| e.to_string()))
    {
        tracing::warn!(%error, "final flush of acks failed; they will be redelivered and skipped");
    }
    let snapshot = stats.snapshot();
    tracing::info!(
        rows_written = snapshot.rows_written,
        batches = snapshot.batches,
        duplicates = snapshot.duplicates,
        skipped = snapshot.skipped,
        resets = snapshot.resets,
        "aggregator stopped"
    );
    result
}

/// The configured member id, or `<host>-<pid>-<random>`.
fn instance_id(config: &AggregatorConfig) -> String {
    if !config.aggregator.instance_id.is_empty() {
        return config.aggregator.instance_id.clone();
    }
    let host: String = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .unwrap_or_else(|| "host".into())
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(32)
        .collect();
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &random[..8])
}

fn is_transient(error: &AggregatorError) -> bool {
    match error {
        AggregatorError::Bus(error) => error.is_transient(),
        AggregatorError::Store(error) => error.is_transient(),
        AggregatorError::Config(_) => false,
    }
}

/// Waits for ClickHouse and migrates or checks the schema. `Ok(false)` when
/// shutdown came first.
async fn prepare_store(
    store: &Store,
    config: &AggregatorConfig,
    shutdown: &CancellationToken,
    health: &Health,
) -> Result<bool, AggregatorError> {
    let mut pause = Duration::from_millis(200);
    loop {
        let attempt = if config.aggregator.migrate_on_start {
            store.migrate().await.map(|_| ())
        } else {
            store.check_schema().await
        };
        match attempt {
            Ok(()) => return Ok(true),
            Err(error) if error.is_transient() => {
                health.set_problem("clickhouse unreachable");
                tracing::warn!(url = %store.config().url, %error, "ClickHouse not ready; retrying");
            }
            Err(error) => return Err(error.into()),
        }
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(false),
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(config.aggregator.retry_max_backoff);
    }
}

/// What every partition term shares.
struct Context {
    js: jetstream::Context,
    /// Whether this instance owns partition 0 (and so keeps the rollups).
    holds_first: Arc<AtomicBool>,
    /// The server's largest message, in bytes.
    max_payload: usize,
    /// The ClickHouse shards; partition `p` writes to shard `p mod shards`.
    shards: Vec<ShardHandle>,
    /// Rows decoded and not yet written, over all partitions.
    /// Chunks of encoded rows, reused from batch to batch.
    chunks: Arc<ChunkPool>,
    config: AggregatorConfig,
    stats: AggregatorStats,
    health: Health,
    instance: String,
    /// The lease bucket (a session deletes the rewind request it carried out).
    bucket: LeaseBucket,
}

/// One ClickHouse shard as the instance uses it.
struct ShardHandle {
    replicas: Arc<Replicas>,
    /// The instance's group-commit insert task for this shard.
    inserter: Inserter,
    /// Its linger, which follows how many of the shard's partitions the
    /// instance owns.
    linger: Arc<Linger>,
    /// Rows decoded and not yet written to this shard.
    budget: RowBudget,
}

impl Context {
    /// The shard partition `partition` writes to.
    fn shard_for(&self, partition: u16) -> &ShardHandle {
        &self.shards[usize::from(partition) % self.shards.len()]
    }
}

/// Until when a term may write: moved forward by every renewal.
#[derive(Debug)]
pub(crate) struct LeaseGate {
    base: Instant,
    valid_until_nanos: AtomicU64,
}

impl LeaseGate {
    fn new(valid_until: Instant) -> Self {
        let gate = Self {
            base: Instant::now(),
            valid_until_nanos: AtomicU64::new(0),
        };
        gate.extend(valid_until);
        gate
    }

    fn extend(&self, valid_until: Instant) {
        let nanos = valid_until
            .checked_duration_since(self.base)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        self.valid_until_nanos.fetch_max(nanos, Ordering::SeqCst);
    }

    fn is_valid(&self, now: Instant) -> bool {
        let nanos = now
            .checked_duration_since(self.base)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        nanos < self.valid_until_nanos.load(Ordering::SeqCst)
    }
}

/// One running term of an owned partition.
struct Term {
    handle: JoinHandle<Result<(), AggregatorError>>,
    /// Cancelled to drain (handover, shutdown): flush, ack, end.
    drain: CancellationToken,
    gate: Arc<LeaseGate>,
    /// The partition's rewind request as last read from the bucket.
    rewind: watch::Sender<Option<Rewind>>,
}

/// Reads the lease bucket, acts on [`Ownership`]'s plan, starts and stops terms.
struct LeaseLoop {
    context: Arc<Context>,
    bucket: LeaseBucket,
    partitions: u16,
    ownership: Ownership,
    terms: HashMap<u16, Term>,
    /// Rewind requests by partition, as last read.
    rewinds: BTreeMap<u16, Rewind>,
    member_revision: Option<u64>,
    member_written: Option<Instant>,
    ttl: Duration,
}

impl LeaseLoop {
    fn new(context: Arc<Context>, bucket: LeaseBucket, partitions: u16) -> Self {
        let ttl = context.config.aggregator.lease_ttl;
        let ownership = Ownership::new(context.instance.clone(), partitions, ttl);
        Self {
            context,
            bucket,
            partitions,
            ownership,
            terms: HashMap::new(),
            rewinds: BTreeMap::new(),
            member_revision: None,
            member_written: None,
            ttl,
        }
    }

    async fn run(mut self, shutdown: &CancellationToken) -> Result<(), AggregatorError> {
        let poll = (self.ttl / 10).clamp(Duration::from_millis(100), Duration::from_secs(1));
        let mut ticks = tokio::time::interval(poll);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stopping_since: Option<Instant> = None;
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled(), if stopping_since.is_none() => {
                    tracing::info!(held = self.terms.len(), "shutting down: draining partitions");
                    stopping_since = Some(Instant::now());
                    for (partition, term) in &self.terms {
                        term.drain.cancel();
                        self.ownership.draining(*partition);
                    }
                }
                _ = ticks.tick() => {}
            }
            let now = Instant::now();
            self.heartbeat(now).await;
            self.reap_terms().await?;
            if let Some(since) = stopping_since {
                if self.terms.is_empty() {
                    break;
                }
                if since.elapsed() > self.context.config.aggregator.shutdown_grace {
                    tracing::warn!("grace period over with partitions not drained; their rest will be read again");
                    for (_, term) in self.terms.drain() {
                        term.handle.abort();
                    }
                    break;
                }
                // Keep renewing what drains.
                for partition in self.ownership.held_partitions() {
                    if let Some(held) = self.ownership.held(partition) {
                        if now.duration_since(held.renewed_at) >= self.ttl / 3 {
                            self.renew(partition, held.revision).await;
                        }
                    }
                }
                continue;
            }
            if let Err(error) = self.observe(now).await {
                tracing::warn!(%error, "cannot read the lease bucket");
                self.context.health.set_problem("lease bucket unreadable");
            }
            for action in self.ownership.plan(Instant::now()) {
                self.act(action).await;
            }
            #[allow(clippy::cast_precision_loss)]
            metrics::gauge!(names::PARTITIONS_OWNED).set(self.terms.len() as f64);
            self.report_owned_per_shard();
        }
        self.release_orphans().await;
        if let Some(revision) = self.member_revision {
            let key = cctv_bus::member_key(&self.context.instance);
            let _ = self.bucket.delete(&key, revision).await;
        }
        metrics::gauge!(names::PARTITIONS_OWNED).set(0.0);
        Ok(())
    }

    /// Deletes leases in this instance's name that it does not hold: a
    /// create whose answer was lost (a NATS restart) leaves one behind. Nobody
    /// else writes this name, and the next owner fences before it reads, so
    /// handing them over at once is safe; left alone they would wait out the
    /// lease time.
    async fn release_orphans(&self) {
        let Ok(entries) = self.bucket.entries(cctv_bus::LEASE_PREFIX).await else {
            return;
        };
        for entry in entries {
            if entry.value.as_ref() != self.context.instance.as_bytes() {
                continue;
            }
            if let Some(partition) = cctv_bus::parse_lease_key(&entry.key) {
                if self.bucket.delete(&entry.key, entry.revision).await.is_ok() {
                    tracing::info!(partition, "lease released (held without knowing it)");
                }
            }
        }
    }

    /// Tells each shard's group commit how many of its partitions this
    /// instance owns (its linger follows).
    fn report_owned_per_shard(&self) {
        self.context
            .holds_first
            .store(self.terms.contains_key(&0), Ordering::Release);
        let shards = self.context.shards.len();
        for (index, shard) in self.context.shards.iter().enumerate() {
            let owned = self
                .terms
                .keys()
                .filter(|partition| usize::from(**partition) % shards == index)
                .count();
            shard.linger.set_owned(owned);
        }
    }

    /// Rewrites this member's key every TTL/3.
    async fn heartbeat(&mut self, now: Instant) {
        if self
            .member_written
            .is_some_and(|at| now.duration_since(at) < self.ttl / 3)
        {
            return;
        }
        let key = cctv_bus::member_key(&self.context.instance);
        let value = self.context.instance.as_str();
        let written = match self.member_revision {
            None => self.bucket.create(&key, value).await,
            Some(revision) => self.bucket.update(&key, value, revision).await,
        };
        match written {
            Ok(revision) => {
                self.member_revision = Some(revision);
                self.member_written = Some(now);
            }
            Err(LeaseWriteError::Conflict) => {
                // Forgotten by a peer that thought us dead: register again.
                tracing::warn!("member key changed by another instance; registering again");
                self.member_revision = None;
                if let Ok(Some(entry)) = self.bucket.entry(&key).await {
                    self.member_revision = Some(entry.revision);
                }
            }
            Err(error) => tracing::warn!(%error, "member heartbeat failed"),
        }
    }

    /// Reads the whole bucket once: leases, members, rewind requests.
    async fn observe(&mut self, now: Instant) -> Result<(), cctv_bus::BusError> {
        let mut leases: Vec<(u16, String, u64)> = Vec::new();
        let mut members: Vec<(String, u64)> = Vec::new();
        let mut rewinds = BTreeMap::new();
        for entry in self.bucket.entries("").await? {
            if let Some(partition) = cctv_bus::parse_lease_key(&entry.key) {
                if partition < self.partitions {
                    let owner = String::from_utf8_lossy(&entry.value).into_owned();
                    leases.push((partition, owner, entry.revision));
                }
            } else if let Some(id) = entry.key.strip_prefix(cctv_bus::MEMBER_PREFIX) {
                members.push((id.to_string(), entry.revision));
            } else if let Some(partition) = cctv_bus::parse_rewind_key(&entry.key) {
                match cctv_bus::parse_rewind_value(&entry.value) {
                    Some(from) => {
                        rewinds.insert(
                            partition,
                            Rewind {
                                from,
                                revision: entry.revision,
                            },
                        );
                    }
                    None => {
                        tracing::warn!(key = %entry.key, "rewind request without a sequence; ignored")
                    }
                }
            }
        }
        self.ownership.observe(now, &leases, &members);
        for (partition, term) in &self.terms {
            let wanted = rewinds.get(partition).copied();
            term.rewind.send_if_modified(|current| {
                let changed = *current != wanted;
                *current = wanted;
                changed
            });
        }
        self.rewinds = rewinds;
        Ok(())
    }

    async fn act(&mut self, action: Action) {
        match action {
            Action::Acquire {
                partition,
                revision,
            } => self.acquire(partition, revision).await,
            Action::Renew {
                partition,
                revision,
            } => self.renew(partition, revision).await,
            Action::Drain { partition } => {
                tracing::info!(partition, "handing the partition over: draining");
                self.ownership.draining(partition);
                if let Some(term) = self.terms.get(&partition) {
                    term.drain.cancel();
                }
            }
            Action::Abandon { partition } => {
                tracing::warn!(
                    partition,
                    "lost the lease: not renewed in time; stopped writing"
                );
                metrics::counter!(names::LEASES_LOST).increment(1);
                self.stop_now(partition);
            }
            Action::ForgetMember { member, revision } => {
                let key = cctv_bus::member_key(&member);
                if self.bucket.delete(&key, revision).await.is_ok() {
                    tracing::info!(%member, "forgot a dead member");
                }
            }
        }
    }

    async fn acquire(&mut self, partition: u16, revision: Option<u64>) {
        let key = cctv_bus::lease_key(partition);
        let sent_at = Instant::now();
        let value = self.context.instance.as_str();
        let written = match revision {
            None => self.bucket.create(&key, value).await,
            Some(revision) => self.bucket.update(&key, value, revision).await,
        };
        let new_revision = match written {
            Ok(new_revision) => new_revision,
            Err(LeaseWriteError::Conflict) => return,
            Err(error) => {
                tracing::warn!(partition, %error, "lease write failed");
                return;
            }
        };
        // The epoch is fixed by the server's record of this very write.
        let epoch = match self.bucket.entry(&key).await {
            Ok(Some(entry)) if entry.revision == new_revision => {
                cctv_bus::lease_epoch(entry.created, entry.revision)
            }
            Ok(_) => return, // Changed already: somebody else's now.
            Err(error) => {
                tracing::warn!(partition, %error, "cannot read back the lease; leaving it to expire");
                return;
            }
        };
        self.ownership
            .acquired(partition, new_revision, epoch, sent_at);
        let valid_until = self.ownership.valid_until(partition).unwrap_or(sent_at);
        let gate = Arc::new(LeaseGate::new(valid_until));
        let drain = CancellationToken::new();
        let (rewind, rewinds) = watch::channel(self.rewinds.get(&partition).copied());
        let handle = tokio::spawn(run_term(
            self.context.clone(),
            partition,
            epoch,
            drain.clone(),
            gate.clone(),
            rewinds,
        ));
        tracing::info!(
            partition,
            epoch,
            taken_over = revision.is_some(),
            "lease acquired"
        );
        metrics::gauge!(names::PARTITION_OWNED, "partition" => partition.to_string()).set(1.0);
        self.terms.insert(
            partition,
            Term {
                handle,
                drain,
                gate,
                rewind,
            },
        );
    }

    async fn renew(&mut self, partition: u16, revision: u64) {
        let key = cctv_bus::lease_key(partition);
        let sent_at = Instant::now();
        match self
            .bucket
            .update(&key, &self.context.instance, revision)
            .await
        {
            Ok(new_revision) => {
                self.ownership.renewed(partition, new_revision, sent_at);
                if let (Some(term), Some(valid_until)) = (
                    self.terms.get(&partition),
                    self.ownership.valid_until(partition),
                ) {
                    term.gate.extend(valid_until);
                }
            }
            Err(LeaseWriteError::Conflict) => {
                tracing::warn!(
                    partition,
                    "lost the lease: another instance took the partition over; stopped writing"
                );
                metrics::counter!(names::LEASES_LOST).increment(1);
                self.stop_now(partition);
            }
            Err(error) => tracing::warn!(partition, %error, "lease renewal failed"),
        }
    }

    /// Ends a term at once (no flush: what it holds is read again by the next owner).
    fn stop_now(&mut self, partition: u16) {
        if let Some(term) = self.terms.remove(&partition) {
            term.handle.abort();
        }
        self.ownership.dropped(partition);
        metrics::gauge!(names::PARTITION_OWNED, "partition" => partition.to_string()).set(0.0);
    }

    /// Releases the leases of terms that finished draining; fails on a term
    /// that ended with a permanent error.
    async fn reap_terms(&mut self) -> Result<(), AggregatorError> {
        let finished: Vec<u16> = self
            .terms
            .iter()
            .filter(|(_, term)| term.handle.is_finished())
            .map(|(partition, _)| *partition)
            .collect();
        for partition in finished {
            let Some(term) = self.terms.remove(&partition) else {
                continue;
            };
            let outcome = term.handle.await;
            let held = self.ownership.dropped(partition);
            metrics::gauge!(names::PARTITION_OWNED, "partition" => partition.to_string()).set(0.0);
            if let Some(held) = held {
                let key = cctv_bus::lease_key(partition);
                match self.bucket.delete(&key, held.revision).await {
                    Ok(()) => tracing::info!(partition, "lease released"),
                    Err(error) => {
                        tracing::warn!(partition, %error, "lease not released; it will expire");
                    }
                }
            }
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return Err(error),
                Err(join_error) if join_error.is_cancelled() => {}
                Err(join_error) => {
                    return Err(AggregatorError::Config(format!(
                        "partition {partition} task failed: {join_error}"
                    )))
                }
            }
        }
        Ok(())
    }
}

/// One term of an owned partition: fence, then sessions until drained.
async fn run_term(
    context: Arc<Context>,
    partition: u16,
    epoch: u64,
    drain: CancellationToken,
    gate: Arc<LeaseGate>,
    mut rewinds: watch::Receiver<Option<Rewind>>,
) -> Result<(), AggregatorError> {
    // The revision of the last rewind request this term carried out.
    let replayed = Arc::new(AtomicU64::new(0));
    let writer_name = format!("p{partition}");
    let shard = context.shard_for(partition);
    let mut pause = Duration::from_millis(100);
    let mut refusals = Refusals::new(context.config.aggregator.refusal_grace);
    let mut refusal_pause = SESSION_RETRY;
    // The fence first: from now on no older owner's insert writes a row.
    loop {
        match shard
            .replicas
            .fence(&writer_name, epoch, &context.instance)
            .await
        {
            Ok(()) => break,
            Err(error) if error.is_transient() => {
                tracing::warn!(partition, %error, "cannot write the fence yet; retrying");
                backoff(
                    &drain,
                    &mut pause,
                    context.config.aggregator.retry_max_backoff,
                )
                .await;
            }
            Err(error) => {
                let error = error.into();
                if !refused(
                    &context,
                    &mut refusals,
                    partition,
                    &error,
                    0,
                    &mut refusal_pause,
                ) {
                    return Err(error);
                }
                backoff(&drain, &mut refusal_pause, REFUSAL_MAX_BACKOFF).await;
            }
        }
        if drain.is_cancelled() {
            return Ok(());
        }
    }
    let writer = Writer {
        replicas: shard.replicas.clone(),
        stats: context.stats.clone(),
        health: context.health.clone(),
        retry_max_backoff: context.config.aggregator.retry_max_backoff,
        rollup: context.config.rollup.clone(),
        writer_name: writer_name.clone(),
        inserter: shard.inserter.clone(),
        epoch,
        gate,
        written: Arc::new(AtomicU64::new(0)),
    };
    while !drain.is_cancelled() {
        let session = run_session(
            &context,
            partition,
            epoch,
            &writer,
            &drain,
            &mut rewinds,
            &replayed,
        );
        match session.await {
            Ok(SessionEnd::Shutdown) => break,
            Ok(SessionEnd::Reset(reason)) => {
                context.stats.add_reset();
                metrics::counter!(names::RESETS).increment(1);
                tracing::info!(
                    partition,
                    reason,
                    "consumer reset; resuming from ClickHouse"
                );
            }
            Err(error) if is_transient(&error) => {
                context.health.set_problem("session failed; retrying");
                tracing::warn!(partition, %error, "session failed; retrying");
                tokio::select! {
                    biased;
                    () = drain.cancelled() => break,
                    () = tokio::time::sleep(SESSION_RETRY) => {}
                }
            }
            Err(error) => {
                let written = writer.written.load(Ordering::Relaxed);
                if !refused(
                    &context,
                    &mut refusals,
                    partition,
                    &error,
                    written,
                    &mut refusal_pause,
                ) {
                    return Err(error);
                }
                backoff(&drain, &mut refusal_pause, REFUSAL_MAX_BACKOFF).await;
            }
        }
    }
    Ok(())
}

/// Sleeps `pause` (or until `drain`), then doubles it up to `max`.
async fn backoff(drain: &CancellationToken, pause: &mut Duration, max: Duration) {
    tokio::select! {
        biased;
        () = drain.cancelled() => {}
        () = tokio::time::sleep(*pause) => {}
    }
    *pause = (*pause * 2).min(max.max(*pause));
}

/// An error not known to pass ended a step of `partition`'s term: whether
/// to try again ([`Refusals`]; a new streak sets `pause` back to the
/// shortest), said in the log, the metrics and the health.
fn refused(
    context: &Context,
    refusals: &mut Refusals,
    partition: u16,
    error: &AggregatorError,
    written: u64,
    pause: &mut Duration,
) -> bool {
    // ClickHouse's answers only: TLS, settings and the stream's errors are
    // this instance's own and end it at once (its partitions move on).
    if !matches!(error, AggregatorError::Store(StoreError::Server { .. })) {
        return false;
    }
    let now = Instant::now();
    let verdict = refusals.retry(written, now);
    if verdict.new_streak {
        // A new streak's first pause is the shortest.
        *pause = SESSION_RETRY;
    }
    metrics::counter!(names::REFUSALS).increment(1);
    if verdict.again {
        context
            .health
            .set_problem("clickhouse refused with an error not known to pass; retrying");
    }
    tracing::error!(
        partition,
        %error,
        for_secs = refusals.age(now).as_secs(),
        grace_secs = context.config.aggregator.refusal_grace.as_secs(),
        "{}",
        if verdict.again {
            "refused with an error not known to pass; retrying until the grace is over"
        } else {
            "refused with an error not known to pass for longer than the grace; stopping"
        }
    );
    verdict.again
}

enum SessionEnd {
    Shutdown,
    Reset(&'static str),
}

/// One session: settle, resume point and seen-set, fresh consumer, read
/// until drained or an anomaly.
async fn run_session(
    context: &Context,
    partition: u16,
    epoch: u64,
    writer: &Writer,
    drain: &CancellationToken,
    rewinds: &mut watch::Receiver<Option<Rewind>>,
    replayed: &Arc<AtomicU64>,
) -> Result<SessionEnd, AggregatorError> {
    let settings = &context.config.aggregator;
    let shard = context.shard_for(partition);
    let info = cctv_bus::ensure_stream(
        &context.js,
        StreamKind::Events,
        &context.config.streams.events,
    )
    .await?;
    let source_stream = cctv_bus::stream_identity(&info);
    // Inserts of an earlier owner (or of this one, given up after a timeout)
    // may still run in ClickHouse: their rows appear only when they end, so
    // wait for that before reading how far the partition got.
    writer.settle().await?;
    let rebuild_started = Instant::now();
    let mut seen =
        SeenSet::new(u32::try_from(settings.dedup_horizon.as_secs()).unwrap_or(u32::MAX));
    let resume = writer.resume_point(&source_stream).await?;
    if resume.written_through > 0 && info.state.first_sequence > resume.written_through + 1 {
        tracing::error!(
            partition,
            first_in_stream = info.state.first_sequence,
            next_needed = resume.written_through + 1,
            "events expired from the stream before they were written; run `cctvctl audit`"
        );
    }
    // A rewind request not carried out yet: read again from its sequence.
    let now = u64::from(now_secs());
    let plan = ReplayPlan::new(
        *rewinds.borrow_and_update(),
        replayed.load(Ordering::Acquire),
        &resume,
        info.state.first_sequence,
        now,
        settings.dedup_horizon.as_secs(),
    );
    let stream = context
        .js
        .get_stream(&context.config.streams.events.name)
        .await
        .map_err(|e| cctv_bus::BusError::jetstream("get events stream", e))?;
    // The ids written within the horizon; for a replay also within the
    // horizon before its first message was stored (the window that message
    // was first judged in).
    let from_stored_secs = match &plan {
        ReplayPlan::Replay(replay) => stream
            .get_raw_message(replay.request.from.max(info.state.first_sequence))
            .await
            .inspect_err(|error| {
                tracing::warn!(partition, %error, "cannot read where the rewind starts; loading two horizons of ids");
            })
            .ok()
            .and_then(|message| u64::try_from(message.time.timestamp()).ok()),
        _ => None,
    };
    let ids_since = plan.ids_since(now, settings.dedup_horizon.as_secs(), from_stored_secs);
    writer.load_written_ids(&mut seen, ids_since).await?;
    metrics::histogram!(names::REBUILD_SECONDS).record(rebuild_started.elapsed().as_secs_f64());
    let start_sequence = plan.start_sequence(&resume);
    // The highest sequence sent to ClickHouse (or written before this
    // session): moved on by the writer before each batch's first insert.
    let sent_mark = Arc::new(AtomicU64::new(resume.highest_written()));
    let resume = plan.order_from(resume);
    let mut replay = match plan {
        ReplayPlan::None => None,
        ReplayPlan::Nothing(request) => {
            // Nothing written at or after the request: done as asked.
            ReplayDone::unread(context, partition, request, replayed, writer)
                .finish()
                .await;
            None
        }
        ReplayPlan::Replay(replay) => {
            tracing::info!(
                partition,
                from = replay.request.from,
                through = replay.end,
                "rewind requested: reading the partition again; ids ClickHouse holds are skipped"
            );
            Some(replay)
        }
    };

    // A fresh consumer per session, starting where ClickHouse says.
    let consumer_settings = cctv_bus::PartitionConsumerSettings {
        prefix: settings.consumer.clone(),
        partition,
        epoch,
        owner: context.instance.clone(),
        start_sequence,
        ack_wait: settings.ack_wait,
        max_ack_pending: i64::try_from(settings.max_ack_pending).unwrap_or(i64::MAX),
        inactive_threshold: CONSUMER_INACTIVE,
    };
    let consumer_name = consumer_settings.name();
    let consumer = cctv_bus::partition_consumer(&stream, &consumer_settings).await?;
    // At most twice the largest message per pull: bounds what the client
    // buffers per partition, and never less than one message.
    let max_pull_bytes = context.max_payload.saturating_mul(2);
    let messages = cctv_bus::pull_events(&consumer, settings.fetch_batch, max_pull_bytes).await?;
    context.health.set_ok();
    tracing::info!(
        partition,
        %source_stream,
        start_sequence,
        seen_ids = seen.len(),
        rebuild_ms = rebuild_started.elapsed().as_millis() as u64,
        "session started"
    );
    let label = partition.to_string();
    let lag = metrics::gauge!(names::LAG, "partition" => label.clone());
    let consumer_state = Arc::new(ConsumerState::default());
    // Ends with the session, also when its term is aborted.
    let lag_refresh = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(refresh_lag(
        stream.clone(),
        consumer_name,
        lag.clone(),
        consumer_state.clone(),
    )));
    let mut last_delivery = Instant::now();
    let generation = cctv_bus::connection_generation();
    let mut watchdog = tokio::time::interval(STALL_CHECK);
    watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let (batch_sender, batch_receiver) = mpsc::channel::<Batch>(WRITER_SLOTS);
    // A batch takes a slot when handed over and gives it back once written
    // (or given up on): the writer has room when a slot is free.
    let slots = Arc::new(tokio::sync::Semaphore::new(WRITER_SLOTS));
    // Aborted with the session: a term stopped at once (lease lost) must not
    // leave a writer behind that waits for its gate for ever, holding its
    // batches and their share of the row budget.
    let writer_task = {
        let writer = writer.clone();
        tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
            writer.write_all(batch_receiver).await
        }))
    };

    let mut reader = Reader {
        source_stream: &source_stream,
        writer_name: &writer.writer_name,
        order: DeliveryOrder::after(resume),
        rows: EncodedRows::new_in(context.chunks.clone()),
        last_message: None,
        held: shard.budget.guard(),
        chunks: &context.chunks,
        batcher: Batcher::new(
            settings.batch_max_rows,
            Batcher::messages_for(settings.max_ack_pending),
            settings.batch_max_age,
        ),
        stats: &context.stats,
        lag,
        replayed_ids: replay.is_some(),
        replay: replay.take(),
        sent_mark: sent_mark.clone(),
        seen,
        seen_gauge: metrics::gauge!(names::SEEN_IDS, "partition" => label.clone()),
        seen_bytes: metrics::gauge!(names::SEEN_BYTES, "partition" => label),
        duplicates: metrics::counter!(names::EVENTS, "outcome" => "duplicate"),
        last_prune: Instant::now(),
    };
    reader.report_seen();
    let mut chunks = messages.ready_chunks(settings.fetch_batch);
    // The group commit's calls for batches (`Linger::call`): a call heard
    // while this partition has rows hands them over however young they are.
    let mut calls = shard.linger.calls();
    let mut called = false;
    let mut rewinds_open = true;
    let under_way = reader.replay.as_ref().map(|replay| replay.request.revision);
    let replay_end = ReplayHandover {
        context,
        writer,
        partition,
        replayed,
        slots: &slots,
        sender: &batch_sender,
        drain,
    };
    let end = loop {
        let deadline = reader
            .batcher
            .deadline()
            .map(tokio::time::Instant::from_std);
        if deadline.is_none() {
            // A call is for the rows held when it is made.
            calls.borrow_and_update();
        }
        // A batch old enough to go whose writer still holds the previous
        // one keeps filling until the writer has room (`batch::handover`):
        // wait for messages or for that room, not for the passed deadline.
        let waiting_for_room = deadline
            .is_some_and(|deadline| deadline <= tokio::time::Instant::now())
            && slots.available_permits() == 0;
        let chunk = tokio::select! {
            biased;
            () = drain.cancelled() => break SessionEnd::Shutdown,
            () = sleep_until_or_forever(deadline), if !waiting_for_room => None,
            slot = slots.clone().acquire_owned(), if waiting_for_room => {
                let Ok(slot) = slot else {
                    break SessionEnd::Reset("writer stopped");
                };
                if batch_sender.send(reader.take_batch(slot)).await.is_err() {
                    break SessionEnd::Reset("writer stopped");
                }
                reader.maybe_prune();
                report_rows_in_memory(context);
                None
            }
            // (The sender lives as long as the shard's `Linger`.)
            _ = calls.changed(), if deadline.is_some() && !waiting_for_room => {
                called = true;
                None
            }
            changed = rewinds.changed(), if rewinds_open => {
                if changed.is_err() {
                    rewinds_open = false;
                } else {
                    let wanted = *rewinds.borrow_and_update();
                    let done = replayed.load(Ordering::Acquire);
                    // A request neither carried out nor under way in this session.
                    if let Some(request) = wanted.filter(|request| {
                        request.revision != done && Some(request.revision) != under_way
                    }) {
                        if request.from <= sent_mark.load(Ordering::Acquire) {
                            break SessionEnd::Reset("rewind requested");
                        }
                        // Nothing from there was ever sent: this session
                        // writes it in due course (or, if it fails, the next
                        // session, which starts from what ClickHouse holds).
                        // Done as asked, without reading again: an audit
                        // under load names the events not yet written.
                        ReplayDone::unread(context, partition, request, replayed, writer)
                            .finish()
                            .await;
                    }
                }
                None
            }
            _ = watchdog.tick() => {
                if cctv_bus::connection_generation() != generation {
                    break SessionEnd::Reset("NATS reconnected");
                }
                if last_delivery.elapsed() >= STALL_AFTER && consumer_state.starved() {
                    tracing::warn!(partition, "no deliveries although the consumer has pending messages; pulling anew");
                    break SessionEnd::Reset("pull stream stalled");
                }
                None
            }
            chunk = chunks.next() => match chunk {
                Some(chunk) => {
                    last_delivery = Instant::now();
                    Some(chunk)
                }
                None => break SessionEnd::Reset("message stream ended"),
            },
        };
        if let Some(chunk) = chunk {
            let mut anomaly = None;
            let mut break_end = None;
            for item in chunk {
                match item {
                    Ok(message) => {
                        // A replay's batches never carry what follows it: its
                        // last batch goes before the first later message.
                        // (Not on a gap: the missing deliveries may be the
                        // replay's last; `accept` ends the session.)
                        let after_replay = reader.replay.as_ref().is_some_and(|replay| {
                            message.info().is_ok_and(|info| {
                                replay.ends_before(info.stream_sequence)
                                    && reader.order.is_next(info.consumer_sequence)
                            })
                        });
                        if after_replay {
                            if let Err(end) = replay_end.hand_over(&mut reader).await {
                                break_end = Some(end);
                                break;
                            }
                        }
                        if let Err(reason) = reader.accept(message) {
                            anomaly = Some(reason);
                            break;
                        }
                        if reader.replay.as_ref().is_some_and(|replay| replay.ended) {
                            if let Err(end) = replay_end.hand_over(&mut reader).await {
                                break_end = Some(end);
                                break;
                            }
                        }
                    }
                    Err(error) => {
                        tracing::warn!(partition, %error, "events consumer error");
                        anomaly = Some("consumer stream error");
                        break;
                    }
                }
            }
            if let Some(end) = break_end {
                break end;
            }
            if let Some(reason) = anomaly {
                break SessionEnd::Reset(reason);
            }
        }
        // Over the instance's row budget: hand the open batch over (its
        // writer frees rows), then read nothing more until there is room.
        let over_budget = shard.budget.over();
        // The fewer of the shard's partitions this instance owns, the larger
        // each partition's batch (`Linger::factor`): inserts keep their size.
        reader.batcher.set_max_rows(
            settings
                .batch_max_rows
                .saturating_mul(shard.linger.factor() as usize),
        );
        // A busy shard's batches wait longer while rows keep coming, for
        // fewer, larger inserts.
        reader.batcher.set_busy_age(if shard.linger.busy() {
            settings.batch_max_age_busy
        } else {
            settings.batch_max_age
        });
        // Over the budget, or called by the group commit, an open batch
        // goes however young it is.
        let decision = match reader.batcher.decide(Instant::now()) {
            BatchDecision::Wait
                if (over_budget || called) && reader.batcher.deadline().is_some() =>
            {
                BatchDecision::FlushAge
            }
            decision => decision,
        };
        called = false;
        if handover(decision, over_budget, slots.available_permits() > 0) != Handover::Keep {
            // Waiting for the writer's slot is the backpressure: while the
            // writer retries (ClickHouse down) nothing more is read.
            let slot = tokio::select! {
                biased;
                () = drain.cancelled() => break SessionEnd::Shutdown,
                slot = slots.clone().acquire_owned() => slot,
            };
            let Ok(slot) = slot else {
                break SessionEnd::Reset("writer stopped");
            };
            if batch_sender.send(reader.take_batch(slot)).await.is_err() {
                break SessionEnd::Reset("writer stopped");
            }
            reader.maybe_prune();
            report_rows_in_memory(context);
        }
        if over_budget {
            metrics::counter!(names::BUDGET_WAITS).increment(1);
            tokio::select! {
                biased;
                () = drain.cancelled() => break SessionEnd::Shutdown,
                () = shard.budget.wait_within() => {}
            }
        }
    };
    // Everything accepted so far was delivered in order without gaps: flush
    // it, then let the writer finish before the next session reads the
    // resume point. On a drain this is bounded by the caller's grace period.
    drop(chunks);
    lag_refresh.abort();
    if reader.batcher.deadline().is_some() {
        if let Ok(slot) = slots.clone().acquire_owned().await {
            let _ = batch_sender.send(reader.take_batch(slot)).await;
        }
    }
    drop(batch_sender);
    match writer_task.await {
        Ok(Ok(())) => Ok(end),
        Ok(Err(error)) => Err(error.into()),
        Err(join_error) => Err(AggregatorError::Config(format!(
            "writer task failed: {join_error}"
        ))),
    }
}

/// How long a held insert (`replay_insert_held`) waits at most for its
/// lease to lapse before it is released anyway.
const FAULT_HOLD: Duration = Duration::from_secs(120);

/// The error a failure point reports (see `cctv_runtime::fault_fails`).
fn injected_failure() -> StoreError {
    StoreError::Unavailable {
        operation: "insert",
        message: "failure injected for a test".into(),
    }
}

/// Sets `cctv_aggregator_rows_in_memory` from every shard's row budget
/// (after each handover of a batch to its writer).
fn report_rows_in_memory(context: &Context) {
    let held: usize = context.shards.iter().map(|shard| shard.budget.held()).sum();
    #[allow(clippy::cast_precision_loss)]
    metrics::gauge!(names::ROWS_IN_MEMORY).set(held as f64);
}

fn now_secs() -> u32 {
    u32::try_from(chrono::Utc::now().timestamp().max(0)).unwrap_or(u32::MAX)
}

/// Sets a partition's lag gauge from its consumer's undelivered count.
/// What the server last said about a session's consumer.
#[derive(Debug, Default)]
struct ConsumerState {
    /// Messages not yet delivered.
    pending: AtomicU64,
    /// Messages delivered and not acknowledged.
    ack_pending: AtomicU64,
}

impl ConsumerState {
    /// Whether the server holds undelivered messages while nothing is in
    /// flight: the session's pull requests are gone (lost with a connection
    /// to a restarted server), since a live pull would be served.
    fn starved(&self) -> bool {
        self.pending.load(Ordering::Relaxed) > 0 && self.ack_pending.load(Ordering::Relaxed) == 0
    }
}

async fn refresh_lag(
    stream: jetstream::stream::Stream,
    consumer: String,
    lag: metrics::Gauge,
    state: Arc<ConsumerState>,
) {
    let mut ticks = tokio::time::interval(LAG_REFRESH);
    loop {
        ticks.tick().await;
        if let Ok(info) = stream.consumer_info(&consumer).await {
            #[allow(clippy::cast_precision_loss)]
            lag.set(info.num_pending as f64);
            state.pending.store(info.num_pending, Ordering::Relaxed);
            state
                .ack_pending
                .store(info.num_ack_pending as u64, Ordering::Relaxed);
        }
    }
}

async fn sleep_until_or_forever(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// One batch handed from the reader to the writer.
struct Batch {
    /// Rows to insert, in stream order; their batch fields are set at insert.
    rows: EncodedRows,
    /// Identity of the events stream they were read from.
    source_stream: String,
    /// The last message received for this batch (acked with `AckPolicy::All`).
    last_message: Option<jetstream::Message>,
    /// The rows' share of the instance's budget, given back when written.
    held: RowsHeld,
    /// The writer's slot, given back when written (`WRITER_SLOTS`).
    slot: tokio::sync::OwnedSemaphorePermit,
    /// Whether its rows are read again by a replay (sequences below the
    /// resume point: a failed insert is checked by event id).
    replay: bool,
    /// Set on a replay's last batch: once written, the request is done.
    replay_done: Option<ReplayDone>,
    /// Moved to the last message's sequence before the batch's first insert.
    sent_mark: Arc<AtomicU64>,
}

/// A replay's end, carried out once its last batch is written.
struct ReplayDone {
    bucket: LeaseBucket,
    partition: u16,
    replay: Replay,
    /// The term's record of the last request carried out.
    replayed: Arc<AtomicU64>,
    /// The term's writer (to check it still owns the partition).
    owner: Writer,
}

impl ReplayDone {
    /// The end of `replay`, in partition `partition`'s term.
    fn new(
        context: &Context,
        partition: u16,
        replay: Replay,
        replayed: &Arc<AtomicU64>,
        owner: &Writer,
    ) -> Self {
        ReplayDone {
            bucket: context.bucket.clone(),
            partition,
            replay,
            replayed: replayed.clone(),
            owner: owner.clone(),
        }
    }

    /// A request carried out without reading anything again.
    fn unread(
        context: &Context,
        partition: u16,
        request: Rewind,
        replayed: &Arc<AtomicU64>,
        owner: &Writer,
    ) -> Self {
        Self::new(
            context,
            partition,
            Replay::nothing(request),
            replayed,
            owner,
        )
    }

    /// Records the request as carried out and deletes it (unless a newer
    /// one replaced it: that one is carried out next).
    async fn finish(self) {
        let Replay {
            request,
            rows,
            too_old,
            ..
        } = self.replay;
        // A few tries: a lease renewal late, ClickHouse away for a moment.
        let mut pause = Duration::from_millis(200);
        let mut owns = Ok(false);
        for attempt in 1..=OWNERSHIP_CHECKS {
            owns = self.owner.still_owns().await;
            if matches!(owns, Ok(true)) || attempt == OWNERSHIP_CHECKS {
                break;
            }
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
        match owns {
            Ok(true) => {}
            Ok(false) => {
                // The request stays for the partition's next session.
                tracing::warn!(
                    partition = self.partition,
                    "rewind not marked done: this instance's lease is not trusted or a newer owner fenced the partition"
                );
                return;
            }
            Err(error) => {
                tracing::warn!(partition = self.partition, %error, "rewind not marked done: cannot read the partition's fence; the next session carries it out again");
                return;
            }
        }
        let key = cctv_bus::rewind_key(self.partition);
        let mut deleted = self.bucket.delete(&key, request.revision).await;
        for _ in 1..OWNERSHIP_CHECKS {
            if deleted.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            deleted = self.bucket.delete(&key, request.revision).await;
        }
        // Only a deleted request is done: one still there (NATS away, or a
        // newer request in its place) is carried out again by a later
        // session, which the seen-set makes harmless.
        if deleted.is_ok() {
            self.replayed.store(request.revision, Ordering::Release);
        }
        tracing::info!(
            partition = self.partition,
            from = request.from,
            missing_rows_found = rows,
            messages_too_old = too_old,
            request_deleted = deleted.is_ok(),
            "rewind done"
        );
        if too_old > 0 {
            tracing::warn!(
                partition = self.partition,
                messages_too_old = too_old,
                "a rewind left out messages stored close to the dedup horizon's start (their ids may have left the seen-set); `cctvctl audit` still names what they miss"
            );
        }
    }
}

/// What a session needs to hand a replay's last batch to its writer.
struct ReplayHandover<'a> {
    context: &'a Context,
    writer: &'a Writer,
    partition: u16,
    replayed: &'a Arc<AtomicU64>,
    slots: &'a Arc<tokio::sync::Semaphore>,
    sender: &'a mpsc::Sender<Batch>,
    drain: &'a CancellationToken,
}

impl ReplayHandover<'_> {
    /// Hands the open batch (maybe empty) to the writer as the replay's
    /// last: once it is written, after every batch before it, the request
    /// is done.
    async fn hand_over(&self, reader: &mut Reader<'_>) -> Result<(), SessionEnd> {
        if reader.replay.is_none() {
            return Ok(());
        }
        // The slot first: a session ended meanwhile flushes the open batch
        // still marked as a replay's.
        let slot = tokio::select! {
            biased;
            () = self.drain.cancelled() => return Err(SessionEnd::Shutdown),
            slot = self.slots.clone().acquire_owned() => slot,
        };
        let Ok(slot) = slot else {
            return Err(SessionEnd::Reset("writer stopped"));
        };
        let Some(replay) = reader.replay.take() else {
            return Ok(());
        };
        let mut batch = reader.take_batch(slot);
        batch.replay = true;
        batch.replay_done = Some(ReplayDone::new(
            self.context,
            self.partition,
            replay,
            self.replayed,
            self.writer,
        ));
        if self.sender.send(batch).await.is_err() {
            return Err(SessionEnd::Reset("writer stopped"));
        }
        reader.maybe_prune();
        report_rows_in_memory(self.context);
        Ok(())
    }
}

/// The reading half of a session: checks delivery order, drops repeats of
/// ids already written, builds batches.
struct Reader<'a> {
    source_stream: &'a str,
    writer_name: &'a str,
    /// Which deliveries are new, redelivered, or a gap.
    order: DeliveryOrder,
    rows: EncodedRows,
    last_message: Option<jetstream::Message>,
    /// The open batch's share of the instance's budget.
    held: RowsHeld,
    /// Where the next batch's chunks come from.
    chunks: &'a Arc<ChunkPool>,
    batcher: Batcher,
    stats: &'a AggregatorStats,
    lag: metrics::Gauge,
    /// The replay under way (a rewind request), until its last batch goes.
    replay: Option<Replay>,
    /// Whether the seen-set still holds a replay's ids (up to two horizons).
    replayed_ids: bool,
    /// The highest sequence sent to ClickHouse (given to every batch).
    sent_mark: Arc<AtomicU64>,
    seen: SeenSet,
    seen_gauge: metrics::Gauge,
    seen_bytes: metrics::Gauge,
    duplicates: metrics::Counter,
    last_prune: Instant,
}

impl Reader<'_> {
    /// Takes one delivery. `Err` names an anomaly that ends the session.
    fn accept(&mut self, message: jetstream::Message) -> Result<(), &'static str> {
        let (stream_sequence, consumer_sequence, pending, stored_secs) = match message.info() {
            Ok(info) => (
                info.stream_sequence,
                info.consumer_sequence,
                info.pending,
                u64::try_from(info.published.timestamp()).unwrap_or(0),
            ),
            Err(_) => return Err("message without JetStream metadata"),
        };
        let now = Instant::now();
        let delivery = self.order.judge(stream_sequence, consumer_sequence);
        if delivery == Delivery::Gap {
            // A delivery went missing (lost in a reconnect): nothing after it
            // may be written before it, so start over from ClickHouse.
            return Err("gap in consumer sequence");
        }
        #[allow(clippy::cast_precision_loss)]
        self.lag.set(pending as f64);
        let replayed = match self.replay.as_mut() {
            Some(replay) if delivery == Delivery::New => {
                replay.judge(stream_sequence, stored_secs, pending)
            }
            Some(replay) => {
                replay.passed(stream_sequence, pending);
                Replayed::No
            }
            None => Replayed::No,
        };
        if replayed == Replayed::TooOld {
            // Its ids may have left the seen-set: writing them could double them.
            metrics::counter!(names::REPLAY_TOO_OLD).increment(1);
        }
        if delivery == Delivery::AlreadyHandled || replayed == Replayed::TooOld {
            // A redelivery of something held or written: only its ack matters.
            self.stats.add_skipped(1);
            metrics::counter!(names::SKIPPED).increment(1);
            self.last_message = Some(message);
            self.batcher.add(0, now);
            return Ok(());
        }
        let mut added = 0;
        match cctv_bus::decode_event_batch(&message.payload) {
            Ok(events) => {
                let written_at = now_secs();
                for item in events {
                    let decoded = item.map_err(|e| e.to_string()).and_then(|event| {
                        event
                            .with_view(|view| {
                                let id = *view.event_id.as_bytes();
                                // A replayed message was first judged long
                                // ago: every id held is a repeat to it.
                                let new = if replayed == Replayed::Yes {
                                    self.seen.insert_unless_held(id, written_at)
                                } else {
                                    self.seen.insert(id, written_at)
                                };
                                if !new {
                                    return false;
                                }
                                self.rows.push(
                                    view,
                                    self.source_stream,
                                    self.writer_name,
                                    stream_sequence,
                                );
                                true
                            })
                            .map_err(|e| e.to_string())
                    });
                    match decoded {
                        Ok(true) => added += 1,
                        Ok(false) => {
                            self.stats.add_duplicate();
                            self.duplicates.increment(1);
                        }
                        Err(error) => self.undecodable(stream_sequence, &error),
                    }
                }
            }
            Err(error) => self.undecodable(stream_sequence, &error.to_string()),
        }
        if replayed == Replayed::Yes {
            if let Some(replay) = self.replay.as_mut() {
                replay.rows += added as u64;
            }
        }
        self.batcher.add(added, now);
        self.held.add(added);
        self.last_message = Some(message);
        Ok(())
    }

    fn undecodable(&self, stream_sequence: u64, error: &str) {
        self.stats.add_undecodable();
        metrics::counter!(names::UNDECODABLE).increment(1);
        tracing::error!(stream_sequence, %error, "undecodable event; not written");
    }

    fn take_batch(&mut self, slot: tokio::sync::OwnedSemaphorePermit) -> Batch {
        self.batcher.reset();
        let next = EncodedRows::new_in(self.chunks.clone());
        Batch {
            rows: std::mem::replace(&mut self.rows, next),
            source_stream: self.source_stream.to_string(),
            last_message: self.last_message.take(),
            held: self.held.take(),
            slot,
            replay: self.replay.is_some(),
            replay_done: None,
            sent_mark: self.sent_mark.clone(),
        }
    }

    /// Drops expired ids about once a minute and reports the set's size.
    fn maybe_prune(&mut self) {
        // A replay needs every id it loaded (`ReplayPlan::ids_since`); once
        // it is over, the set goes back to one horizon at once.
        let replay_over = self.replay.is_none() && self.replayed_ids;
        if !replay_over
            && (self.replay.is_some() || self.last_prune.elapsed() < Duration::from_secs(60))
        {
            self.report_seen();
            return;
        }
        self.last_prune = Instant::now();
        self.seen.prune(now_secs());
        if replay_over {
            self.replayed_ids = false;
            self.seen.compact();
        }
        self.report_seen();
    }

    fn report_seen(&self) {
        #[allow(clippy::cast_precision_loss)]
        {
            self.seen_gauge.set(self.seen.len() as f64);
            self.seen_bytes.set(self.seen.heap_bytes() as f64);
        }
    }
}

/// The writing half: inserts batches one at a time, in order, then acks.
#[derive(Clone)]
struct Writer {
    /// The replicas of the partition's shard.
    replicas: Arc<Replicas>,
    stats: AggregatorStats,
    health: Health,
    retry_max_backoff: Duration,
    /// When a batch landed late enough to be missing from a rolled slot.
    rollup: RollupPolicy,
    writer_name: String,
    /// The group-commit insert task of the partition's shard.
    inserter: Inserter,
    epoch: u64,
    gate: Arc<LeaseGate>,
    /// Rows this term has written (a streak of refusals ends with progress).
    written: Arc<AtomicU64>,
}

impl Writer {
    /// Waits until no insert of this partition is still running in
    /// ClickHouse (a predecessor's, or one this writer gave up on after a
    /// timeout), so that the resume point read next is final.
    async fn settle(&self) -> Result<(), StoreError> {
        let mut logged = false;
        loop {
            match self
                .replicas
                .fenced_inserts_in_flight(&self.writer_name)
                .await
            {
                Ok(0) => return Ok(()),
                Ok(running) => {
                    if !logged {
                        tracing::info!(
                            writer = %self.writer_name,
                            running,
                            "waiting for earlier inserts of this partition to end"
                        );
                        logged = true;
                    }
                    tokio::time::sleep(SETTLE_POLL).await;
                }
                // Without the list, a resume point read next could miss an
                // insert still running: never go on without it (an error
                // not known to pass ends the session, `Refusals`).
                Err(error) => return Err(error),
            }
        }
    }

    /// Where the partition stands in ClickHouse: what every replica of its
    /// shard holds, together (see `replicas.rs`).
    async fn resume_point(&self, source_stream: &str) -> Result<ResumePoint, StoreError> {
        self.replicas
            .resume_point(source_stream, &self.writer_name)
            .await
    }

    /// Every id written since `since` (UTC seconds) into `seen`.
    async fn load_written_ids(&self, seen: &mut SeenSet, since: u32) -> Result<(), StoreError> {
        self.replicas
            .for_each_written_id(&self.writer_name, since, |id, at| {
                seen.load(id, at);
            })
            .await
    }

    /// Whether this term may still act for the partition: its lease is
    /// trusted and no newer owner has fenced it (a stale owner's inserts
    /// were dropped by the fence, so what it did proves nothing).
    async fn still_owns(&self) -> Result<bool, StoreError> {
        if !self.gate.is_valid(Instant::now()) {
            return Ok(false);
        }
        Ok(self.replicas.newest_fence(&self.writer_name).await? <= self.epoch)
    }

    /// Fault tests (`replay_insert_held`): the insert, past the lease
    /// check, waits until the lease has lapsed (the test pauses the process
    /// meanwhile; at most [`FAULT_HOLD`]), as a process paused right there
    /// would, and is then handed to the group commit whatever became of
    /// this task (a lost lease aborts it): a stale owner's insert reaching
    /// ClickHouse, which the fence must drop.
    async fn held_insert(&self, rows: Arc<EncodedRows>) -> Result<(), StoreError> {
        let inserter = self.inserter.clone();
        let writer = self.writer_name.clone();
        let gate = self.gate.clone();
        let held = tokio::spawn(async move {
            let holding = Instant::now();
            while gate.is_valid(Instant::now()) && holding.elapsed() < FAULT_HOLD {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let lease_valid = gate.is_valid(Instant::now());
            let answer = inserter.insert(&writer, rows).await;
            // Straight to stderr, as the fault points report.
            match &answer {
                Ok(()) => eprintln!(
                    "held replay insert of {writer} released (lease valid: {lease_valid}); answered ok"
                ),
                Err(error) => eprintln!(
                    "held replay insert of {writer} released (lease valid: {lease_valid}); answered {error}"
                ),
            }
            answer
        });
        held.await.unwrap_or_else(|_| Err(injected_failure()))
    }

    async fn write_all(&self, mut batches: mpsc::Receiver<Batch>) -> Result<(), StoreError> {
        while let Some(batch) = batches.recv().await {
            self.write_one(batch).await?;
        }
        Ok(())
    }

    async fn write_one(&self, batch: Batch) -> Result<(), StoreError> {
        // `_held` lives until the rows are written (or given up on).
        let Batch {
            mut rows,
            source_stream,
            last_message,
            held: _held,
            slot: _slot,
            replay,
            replay_done,
            sent_mark,
        } = batch;
        // Before anything is sent: a rewind request from a sequence above
        // this mark needs no reading again (`run_session`).
        if let Some(info) = last_message
            .as_ref()
            .and_then(|message| message.info().ok())
        {
            sent_mark.fetch_max(info.stream_sequence, Ordering::AcqRel);
        }
        let mut pause = Duration::from_millis(100);
        let mut attempt = 0u32;
        let mut first_sealed_at = None;
        while !rows.is_empty() {
            // Never send an insert on a lease not known to be valid; if it is
            // lost, the lease loop aborts this task.
            let waiting = Instant::now();
            let mut told = false;
            while !self.gate.is_valid(Instant::now()) {
                if !told && waiting.elapsed() >= Duration::from_secs(5) {
                    tracing::warn!(writer = %self.writer_name, "waiting for the lease to be renewed before writing");
                    told = true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            attempt += 1;
            if attempt > 1 {
                // The previous attempt may have been written after all (a
                // timeout after the server committed, or still running):
                // let it end, then ask ClickHouse.
                if let Err(error) = self.settle().await {
                    self.pause_after(error, &mut pause).await?;
                    continue;
                }
                if replay {
                    // Below the resume point the sequences say nothing: ask
                    // which of the rows' ids were written since the first try.
                    let since = first_sealed_at.unwrap_or_else(now_secs).saturating_sub(1);
                    match self
                        .replicas
                        .written_ids_since(&self.writer_name, since)
                        .await
                    {
                        Ok(present) => {
                            rows.retain_rows(|_, id| !present.contains(&id));
                            if rows.is_empty() {
                                break;
                            }
                        }
                        Err(error) => {
                            self.pause_after(error, &mut pause).await?;
                            continue;
                        }
                    }
                } else {
                    match self.resume_point(&source_stream).await {
                        Ok(resume) => {
                            let before = rows.len();
                            rows.retain(|sequence| {
                                sequence > resume.written_through
                                    && !resume.already_written.contains(&sequence)
                            });
                            if rows.len() < before {
                                tracing::info!(
                                    already = before - rows.len(),
                                    "part of the batch was already written"
                                );
                            }
                            if rows.is_empty() {
                                break;
                            }
                        }
                        Err(error) => {
                            self.pause_after(error, &mut pause).await?;
                            continue;
                        }
                    }
                }
            }
            let sealed_at = now_secs();
            first_sealed_at.get_or_insert(sealed_at);
            rows.seal(sealed_at, self.epoch);
            let started = Instant::now();
            let shared = Arc::new(std::mem::take(&mut rows));
            // Fault tests: a replay's insert reported failed, not sent or sent.
            let inserted = if replay && cctv_runtime::fault_fails("replay_insert_lost") {
                Err(injected_failure())
            } else if replay && cctv_runtime::fault_fails("replay_insert_held") {
                self.held_insert(shared.clone()).await
            } else {
                self.inserter
                    .insert(&self.writer_name, shared.clone())
                    .await
                    .and_then(|()| {
                        if replay && cctv_runtime::fault_fails("replay_insert_unanswered") {
                            return Err(injected_failure());
                        }
                        Ok(())
                    })
            };
            rows = Arc::try_unwrap(shared).unwrap_or_else(|shared| (*shared).clone());
            match inserted {
                Ok(()) => {
                    // Crash tests: the rows are in ClickHouse, the ack is not sent.
                    cctv_runtime::fault_point("after_insert");
                    metrics::histogram!(names::INSERT_SECONDS)
                        .record(started.elapsed().as_secs_f64());
                    #[allow(clippy::cast_precision_loss)]
                    metrics::histogram!(names::BATCH_ROWS).record(rows.len() as f64);
                    metrics::counter!(names::ROWS_WRITTEN).increment(rows.len() as u64);
                    if replay {
                        metrics::counter!(names::REPLAYED_ROWS).increment(rows.len() as u64);
                    }
                    metrics::counter!(names::EVENTS, "outcome" => "new")
                        .increment(rows.len() as u64);
                    metrics::counter!(names::BATCHES).increment(1);
                    metrics::gauge!(names::STORE_DOWN).set(0.0);
                    self.stats.add_written(rows.len() as u64);
                    self.written.fetch_add(rows.len() as u64, Ordering::Relaxed);
                    self.health.set_ok();
                    if self.rollup.landed_late(sealed_at, now_secs()) {
                        self.retake_slot(sealed_at).await?;
                    }
                    break;
                }
                Err(error) => self.pause_after(error, &mut pause).await?,
            }
        }
        if let Some(message) = last_message {
            // `AckPolicy::All`: this acks every earlier delivery too. A lost
            // ack only causes a redelivery that the resume point skips.
            if let Err(error) = message.ack().await {
                tracing::debug!(%error, "ack failed; the redelivery will be skipped");
            }
        }
        if let Some(done) = replay_done {
            done.finish().await;
        }
        Ok(())
    }

    /// After a batch landed so long after it was sealed that its slot may
    /// have been rolled up without it: takes the slot into the rollups
    /// again before the batch is acked, so no count is lost from them. The
    /// server names the slot of the batch's `inserted_at` (`sealed_at`), as
    /// it does for the rows.
    async fn retake_slot(&self, sealed_at: u32) -> Result<(), StoreError> {
        metrics::counter!(names::ROLLUP_LATE_SLOTS).increment(1);
        let mut pause = Duration::from_millis(100);
        loop {
            let (_, store) = self.replicas.current();
            let retaken = async {
                let slot = store.slot_at(sealed_at).await?;
                tracing::warn!(writer = %self.writer_name, %slot, "a batch landed late; taking its slot into the rollups again");
                store.roll_slots(slot, slot).await
            };
            match retaken.await {
                Ok(()) => return Ok(()),
                Err(error) => self.pause_after(error, &mut pause).await?,
            }
        }
    }

    /// Waits before the next attempt; errors not known to pass end the
    /// writer (and its session: the term decides on trying again, `Refusals`).
    async fn pause_after(&self, error: StoreError, pause: &mut Duration) -> Result<(), StoreError> {
        if !error.is_transient() {
            metrics::counter!(names::INSERT_ERRORS, "kind" => "permanent").increment(1);
            self.health.set_problem("clickhouse refused the insert");
            tracing::error!(%error, "insert refused with an error not known to pass; nothing acked");
            return Err(error);
        }
        metrics::counter!(names::INSERT_ERRORS, "kind" => "transient").increment(1);
        metrics::gauge!(names::STORE_DOWN).set(1.0);
        self.health
            .set_problem("clickhouse unavailable; holding events");
        tracing::warn!(%error, pause_ms = pause.as_millis() as u64, "insert failed; retrying");
        tokio::time::sleep(*pause).await;
        *pause = (*pause * 2).min(self.retry_max_backoff);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gate_opens_until_its_deadline_and_only_moves_forward() {
        let now = Instant::now();
        let gate = LeaseGate::new(now + Duration::from_secs(5));
        assert!(gate.is_valid(now));
        assert!(!gate.is_valid(now + Duration::from_secs(5)));
        gate.extend(now + Duration::from_secs(1));
        assert!(gate.is_valid(now + Duration::from_secs(4)));
        gate.extend(now + Duration::from_secs(9));
        assert!(gate.is_valid(now + Duration::from_secs(8)));
    }
}
