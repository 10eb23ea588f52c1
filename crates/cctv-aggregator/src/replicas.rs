//! The replicas of one ClickHouse shard, and which of them a partition
//! owner talks to.
//!
//! A single server is a shard of one replica. On a cluster a shard's
//! partitions write to its first replica while it answers and move to the
//! next when it does not ([`Replicas::fail_over`]). An insert that failed
//! is first sent again, the very same bytes, to the next replica: the
//! replicated tables drop a block they already hold (ClickHouse's insert
//! deduplication, by the block's hash, kept in ZooKeeper for the shard), so
//! whether or not the first attempt was committed, the rows are written once.
//! When that does not succeed either, and at every session start, the
//! partition asks ClickHouse what was written:
//! - first it waits until no fenced insert of the partition still runs on
//!   any replica ([`Replicas::fenced_inserts_in_flight`]); a replica that
//!   refuses the connection runs nothing, one that does not answer may, so
//!   then the partition waits;
//! - then it reads every replica and takes the union
//!   ([`Replicas::resume_point`], [`Replicas::for_each_written_id`]): each
//!   committed part is on at least the replica that committed it, however
//!   far the others have copied it. So the answer does not depend on
//!   replication having caught up, and needs no right beyond reading; while
//!   a replica is down the partition cannot know what only that replica
//!   holds, and waits for it rather than writing rows a second time.

use std::sync::atomic::{AtomicUsize, Ordering};

use cctv_store::{ResumePoint, Store, StoreError};

/// The replicas of one shard.
#[derive(Debug)]
pub(crate) struct Replicas {
    nodes: Vec<Store>,
    preferred: AtomicUsize,
}

impl Replicas {
    /// The replicas, the preferred one first.
    pub(crate) fn new(nodes: Vec<Store>) -> Self {
        Self {
            nodes,
            preferred: AtomicUsize::new(0),
        }
    }

    /// The replica in use, and its index.
    pub(crate) fn current(&self) -> (usize, &Store) {
        let index = self.preferred.load(Ordering::Acquire) % self.nodes.len().max(1);
        (index, &self.nodes[index])
    }

    /// After replica `failed` did not answer: use the next one (unless
    /// another caller moved on already).
    pub(crate) fn fail_over(&self, failed: usize, error: &StoreError) {
        if self.nodes.len() < 2
            || !matches!(
                error,
                StoreError::Unavailable { .. } | StoreError::Refused { .. }
            )
        {
            return;
        }
        let next = (failed + 1) % self.nodes.len();
        if self
            .preferred
            .compare_exchange(failed, next, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            tracing::warn!(
                failed = self.nodes[failed].url(),
                next = self.nodes[next].url(),
                %error,
                "ClickHouse replica unavailable; using the next replica of the shard"
            );
        }
    }

    /// Whether the shard has several replicas (replicated tables: a repeated
    /// insert of the same bytes writes nothing more).
    pub(crate) fn is_replicated(&self) -> bool {
        self.nodes.len() > 1
    }

    /// Writes `writer`'s fence for `epoch` into every replica; fails while
    /// one does not take it (see `Store::fence`).
    pub(crate) async fn fence(
        &self,
        writer: &str,
        epoch: u64,
        owner: &str,
    ) -> Result<(), StoreError> {
        for node in &self.nodes {
            node.fence(writer, epoch, owner).await?;
        }
        Ok(())
    }

    /// Where `writer` stands in `source_stream`, from every replica (see the
    /// module documentation); fails while one does not answer.
    pub(crate) async fn resume_point(
        &self,
        source_stream: &str,
        writer: &str,
    ) -> Result<ResumePoint, StoreError> {
        let mut points = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            points.push(node.resume_point(source_stream, writer).await?);
        }
        Ok(union(points))
    }

    /// Every id `writer` wrote since `since`, from every replica (an id held
    /// by several is visited once per replica).
    pub(crate) async fn for_each_written_id(
        &self,
        writer: &str,
        since: u32,
        mut visit: impl FnMut([u8; 16], u32),
    ) -> Result<(), StoreError> {
        for node in &self.nodes {
            node.for_each_written_id(writer, since, &mut visit).await?;
        }
        Ok(())
    }

    /// The newest epoch fenced for `writer` on any replica (0: none).
    pub(crate) async fn newest_fence(&self, writer: &str) -> Result<u64, StoreError> {
        let mut newest = 0;
        for node in &self.nodes {
            newest = newest.max(node.newest_fence(writer).await?);
        }
        Ok(newest)
    }

    /// The ids `writer` wrote since `since` (UTC seconds), on any replica.
    pub(crate) async fn written_ids_since(
        &self,
        writer: &str,
        since: u32,
    ) -> Result<std::collections::HashSet<[u8; 16]>, StoreError> {
        let mut ids = std::collections::HashSet::new();
        self.for_each_written_id(writer, since, |id, _| {
            ids.insert(id);
        })
        .await?;
        Ok(ids)
    }

    /// Fenced inserts of `writer` still running on any replica. A replica
    /// that refuses the connection runs none; any other failure is returned
    /// (the caller waits and asks again).
    pub(crate) async fn fenced_inserts_in_flight(&self, writer: &str) -> Result<u64, StoreError> {
        let mut running = 0;
        for node in &self.nodes {
            match node.fenced_inserts_in_flight(writer).await {
                Ok(count) => running += count,
                Err(StoreError::Refused { .. }) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(running)
    }
}

/// What the replicas of a shard hold together. Batches of a partition are
/// written one after another, each only after the one before succeeded, so
/// the replica that holds the latest batch knows the furthest point, and
/// everything before it is written somewhere; sequences of a cut-short batch
/// beyond it are written where any replica says so.
fn union(points: Vec<ResumePoint>) -> ResumePoint {
    let written_through = points
        .iter()
        .map(|point| point.written_through)
        .max()
        .unwrap_or(0);
    let already_written = points
        .into_iter()
        .flat_map(|point| point.already_written)
        .filter(|sequence| *sequence > written_through)
        .collect();
    ResumePoint {
        written_through,
        already_written,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cctv_store::ClickHouseConfig;

    fn point(written_through: u64, already: &[u64]) -> ResumePoint {
        ResumePoint {
            written_through,
            already_written: already.iter().copied().collect(),
        }
    }

    #[test]
    fn the_replicas_together_know_the_furthest_point() {
        // One replica has not copied the latest batch yet.
        assert_eq!(union(vec![point(40, &[]), point(55, &[])]), point(55, &[]));
        // A cut-short batch's rows, seen on either replica.
        assert_eq!(
            union(vec![point(40, &[42, 44]), point(40, &[43])]),
            point(40, &[42, 43, 44])
        );
        // What one replica holds beyond the furthest complete batch of the other.
        assert_eq!(
            union(vec![point(50, &[]), point(40, &[45, 52])]),
            point(50, &[52])
        );
        assert_eq!(union(Vec::new()), point(0, &[]));
    }

    fn node(url: &str) -> Store {
        Store::new(&ClickHouseConfig {
            url: url.to_string(),
            ..ClickHouseConfig::default()
        })
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn unavailable() -> StoreError {
        StoreError::Unavailable {
            operation: "insert",
            message: "timed out".into(),
        }
    }

    #[test]
    fn a_failed_replica_hands_over_to_the_next_once() {
        let replicas = Replicas::new(vec![node("http://a:8123"), node("http://b:8123")]);
        assert_eq!(replicas.current().0, 0);
        replicas.fail_over(0, &unavailable());
        assert_eq!(replicas.current().1.url(), "http://b:8123");
        // A late report about the old replica does not move it again.
        replicas.fail_over(0, &unavailable());
        assert_eq!(replicas.current().0, 1);
        replicas.fail_over(1, &unavailable());
        assert_eq!(replicas.current().0, 0, "round the shard");
    }

    #[test]
    fn a_server_error_or_a_lone_replica_stays() {
        let replicas = Replicas::new(vec![node("http://a:8123"), node("http://b:8123")]);
        let refused_query = StoreError::Server {
            operation: "insert",
            message: "Code: 60".into(),
            code: Some(60),
        };
        replicas.fail_over(0, &refused_query);
        assert_eq!(replicas.current().0, 0);
        let alone = Replicas::new(vec![node("http://a:8123")]);
        alone.fail_over(0, &unavailable());
        assert_eq!(alone.current().0, 0);
    }
}
