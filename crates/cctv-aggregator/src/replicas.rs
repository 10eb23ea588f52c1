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
//! partition asks ClickHouse what was written, after two waits:
//! - no fenced insert of the partition may still run on any replica
//!   ([`Replicas::fenced_inserts_in_flight`]); a replica that refuses the
//!   connection runs nothing, one that does not answer may, so then the
//!   partition waits;
//! - the replica read from must hold every part its shard committed
//!   (`Store::sync_replica`); a part that only a dead replica holds keeps
//!   the partition waiting until that replica returns, rather than writing
//!   its rows a second time.

use std::sync::atomic::{AtomicUsize, Ordering};

use cctv_store::{Store, StoreError};

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

#[cfg(test)]
mod tests {
    use super::*;
    use cctv_store::ClickHouseConfig;

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
