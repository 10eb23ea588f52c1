//! In-process counters for tests and the shutdown summary.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Shared counters; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct AggregatorStats {
    inner: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    rows_written: AtomicU64,
    batches: AtomicU64,
    skipped: AtomicU64,
    duplicates: AtomicU64,
    resets: AtomicU64,
    undecodable: AtomicU64,
}

/// A copy of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AggregatorSnapshot {
    /// Rows inserted.
    pub rows_written: u64,
    /// Batches inserted.
    pub batches: u64,
    /// Messages skipped as already written.
    pub skipped: u64,
    /// Events dropped because their id was already written.
    pub duplicates: u64,
    /// Consumer resets.
    pub resets: u64,
    /// Undecodable event messages.
    pub undecodable: u64,
}

impl AggregatorStats {
    pub(crate) fn add_written(&self, rows: u64) {
        self.inner.rows_written.fetch_add(rows, Ordering::Relaxed);
        self.inner.batches.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn add_skipped(&self, count: u64) {
        self.inner.skipped.fetch_add(count, Ordering::Relaxed);
    }
    pub(crate) fn add_duplicate(&self) {
        self.inner.duplicates.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn add_reset(&self) {
        self.inner.resets.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn add_undecodable(&self) {
        self.inner.undecodable.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> AggregatorSnapshot {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        AggregatorSnapshot {
            rows_written: read(&self.inner.rows_written),
            batches: read(&self.inner.batches),
            skipped: read(&self.inner.skipped),
            duplicates: read(&self.inner.duplicates),
            resets: read(&self.inner.resets),
            undecodable: read(&self.inner.undecodable),
        }
    }
}
