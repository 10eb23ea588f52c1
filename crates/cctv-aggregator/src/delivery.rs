//! The delivery-order check of a session, kept pure: which deliveries are
//! new, which were already handled, and when a gap ends the session.
//!
//! A session's consumer is created afresh at the sequence after the
//! partition's resume point (read from ClickHouse), so its consumer
//! sequences start at 1 and must follow each other without a hole: a
//! missing one (a delivery lost in a reconnect) means something after it
//! could be written before it, and the session starts over from ClickHouse.
//! Stream sequences at or below the highest one seen, or written by a batch
//! that was cut short, are redeliveries: only their ack matters.

use std::collections::HashSet;

use cctv_store::ResumePoint;

/// What to do with one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// Not seen before: decode it and write its events.
    New,
    /// Held, written or skipped before: ack it with the batch, write nothing.
    AlreadyHandled,
    /// A consumer sequence is missing: end the session.
    Gap,
}

/// The order check of one session.
#[derive(Debug, Clone)]
pub(crate) struct DeliveryOrder {
    /// Consumer sequence the next delivery must have (fresh consumer: 1).
    next_consumer_sequence: u64,
    /// Highest stream sequence accepted or written.
    highest_seen: u64,
    /// Sequences above the resume point already in ClickHouse (cut-short batch).
    already_written: HashSet<u64>,
}

impl DeliveryOrder {
    /// The check for a fresh consumer that starts after `resume`.
    pub(crate) fn after(resume: ResumePoint) -> Self {
        Self {
            next_consumer_sequence: 1,
            highest_seen: resume.written_through,
            already_written: resume.already_written,
        }
    }

    /// Whether a delivery as `consumer_sequence` follows the last without a
    /// gap.
    pub(crate) fn is_next(&self, consumer_sequence: u64) -> bool {
        consumer_sequence == self.next_consumer_sequence
    }

    /// Judges the delivery of `stream_sequence` as consumer sequence
    /// `consumer_sequence`. After a [`Delivery::Gap`] the session ends and
    /// this check is not used again.
    pub(crate) fn judge(&mut self, stream_sequence: u64, consumer_sequence: u64) -> Delivery {
        if consumer_sequence != self.next_consumer_sequence {
            return Delivery::Gap;
        }
        self.next_consumer_sequence += 1;
        if stream_sequence <= self.highest_seen || self.already_written.contains(&stream_sequence) {
            self.highest_seen = self.highest_seen.max(stream_sequence);
            return Delivery::AlreadyHandled;
        }
        self.highest_seen = stream_sequence;
        Delivery::New
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resume(written_through: u64, already: &[u64]) -> ResumePoint {
        ResumePoint {
            written_through,
            already_written: already.iter().copied().collect(),
        }
    }

    #[test]
    fn consecutive_new_deliveries_are_new() {
        let mut order = DeliveryOrder::after(resume(0, &[]));
        assert_eq!(order.judge(1, 1), Delivery::New);
        // Stream sequences may jump (other partitions' messages between).
        assert_eq!(order.judge(5, 2), Delivery::New);
        assert_eq!(order.judge(9, 3), Delivery::New);
    }

    #[test]
    fn a_missing_consumer_sequence_is_a_gap() {
        let mut order = DeliveryOrder::after(resume(0, &[]));
        assert!(order.is_next(1));
        assert_eq!(order.judge(3, 1), Delivery::New);
        assert!(!order.is_next(3));
        assert_eq!(order.judge(7, 3), Delivery::Gap);
        let mut order = DeliveryOrder::after(resume(0, &[]));
        assert_eq!(
            order.judge(3, 2),
            Delivery::Gap,
            "a fresh consumer starts at 1"
        );
    }

    #[test]
    fn what_is_written_or_seen_is_only_acked() {
        // Written through 10; 14 and 16 of a cut-short batch are in ClickHouse.
        let mut order = DeliveryOrder::after(resume(10, &[14, 16]));
        assert_eq!(order.judge(10, 1), Delivery::AlreadyHandled);
        assert_eq!(order.judge(12, 2), Delivery::New);
        assert_eq!(order.judge(14, 3), Delivery::AlreadyHandled);
        assert_eq!(order.judge(15, 4), Delivery::New);
        assert_eq!(order.judge(16, 5), Delivery::AlreadyHandled);
        // A redelivery of something accepted in this session.
        assert_eq!(order.judge(15, 6), Delivery::AlreadyHandled);
        assert_eq!(order.judge(17, 7), Delivery::New);
    }
}
