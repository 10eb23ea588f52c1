//! In-process counters of what became of every raw message, for tests and
//! for the shutdown summary. They add up: every handled raw delivery is
//! exactly one of counted, duplicate, ignored or dead-lettered.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Shared counters; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct IngestStats {
    inner: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    counted: AtomicU64,
    duplicate: AtomicU64,
    ignored: AtomicU64,
    dead_lettered: AtomicU64,
    events_new: AtomicU64,
    events_duplicate: AtomicU64,
    retried: AtomicU64,
}

/// A copy of the counters at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Raw messages that produced at least one new event.
    pub counted: u64,
    /// Raw messages whose events were all duplicates.
    pub duplicate: u64,
    /// Valid raw messages that are not offences.
    pub ignored: u64,
    /// Raw messages sent to the dead-letter stream.
    pub dead_lettered: u64,
    /// Events the events stream stored as new.
    pub events_new: u64,
    /// Events the events stream dropped as duplicates.
    pub events_duplicate: u64,
    /// Raw deliveries left unacked after a failed publish (redelivered later).
    pub retried: u64,
}

impl StatsSnapshot {
    /// Raw messages handled to a final outcome.
    pub fn handled(&self) -> u64 {
        self.counted + self.duplicate + self.ignored + self.dead_lettered
    }
}

impl IngestStats {
    pub(crate) fn add_counted(&self) {
        self.inner.counted.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn add_duplicate(&self) {
        self.inner.duplicate.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn add_ignored(&self) {
        self.inner.ignored.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn add_dead_lettered(&self) {
        self.inner.dead_lettered.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn add_events(&self, new: u64, duplicate: u64) {
        self.inner.events_new.fetch_add(new, Ordering::Relaxed);
        self.inner
            .events_duplicate
            .fetch_add(duplicate, Ordering::Relaxed);
    }
    pub(crate) fn add_retried(&self) {
        self.inner.retried.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        StatsSnapshot {
            counted: read(&self.inner.counted),
            duplicate: read(&self.inner.duplicate),
            ignored: read(&self.inner.ignored),
            dead_lettered: read(&self.inner.dead_lettered),
            events_new: read(&self.inner.events_new),
            events_duplicate: read(&self.inner.events_duplicate),
            retried: read(&self.inner.retried),
        }
    }
}
