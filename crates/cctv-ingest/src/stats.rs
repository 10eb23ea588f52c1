//! In-process counters of what became of every vendor message, for tests and
//! for the shutdown summary. They add up: every handled vendor message (a
//! raw message, or one item of a gateway batch) is exactly one of published,
//! ignored or dead-lettered. Whether a published event is new or a repeat is
//! decided downstream, by the partition's owner in the aggregator.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Shared counters; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct IngestStats {
    inner: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    published: AtomicU64,
    ignored: AtomicU64,
    dead_lettered: AtomicU64,
    events: AtomicU64,
    batches: AtomicU64,
    retried: AtomicU64,
}

/// A copy of the counters at one instant. A gateway batch counts once per
/// item: these count vendor messages, not NATS messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Vendor messages whose offences were published (one or more events;
    /// whether each is new is decided by the aggregator).
    pub published: u64,
    /// Valid vendor messages that are not offences.
    pub ignored: u64,
    /// Vendor messages sent to the dead-letter stream.
    pub dead_lettered: u64,
    /// Events published (repeats included).
    pub events: u64,
    /// Event batch messages published.
    pub batches: u64,
    /// Raw deliveries left unacked after a failed publish (redelivered later).
    pub retried: u64,
}

impl StatsSnapshot {
    /// Vendor messages handled to a final outcome.
    pub fn handled(&self) -> u64 {
        self.published + self.ignored + self.dead_lettered
    }
}

impl IngestStats {
    pub(crate) fn add_published(&self, events: u64) {
        self.inner.published.fetch_add(1, Ordering::Relaxed);
        self.inner.events.fetch_add(events, Ordering::Relaxed);
    }
    pub(crate) fn add_ignored(&self) {
        self.inner.ignored.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn add_dead_lettered(&self) {
        self.inner.dead_lettered.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn add_batches(&self, batches: u64) {
        self.inner.batches.fetch_add(batches, Ordering::Relaxed);
    }
    pub(crate) fn add_retried(&self) {
        self.inner.retried.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        StatsSnapshot {
            published: read(&self.inner.published),
            ignored: read(&self.inner.ignored),
            dead_lettered: read(&self.inner.dead_lettered),
            events: read(&self.inner.events),
            batches: read(&self.inner.batches),
            retried: read(&self.inner.retried),
        }
    }
}
