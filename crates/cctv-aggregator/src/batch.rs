//! The batching decision, kept pure: when does a buffer become a batch.

use std::time::{Duration, Instant};

/// What to do with the current buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchDecision {
    /// Keep filling.
    Wait,
    /// Flush now: the row limit was reached.
    FlushFull,
    /// Flush now: the oldest row is old enough.
    FlushAge,
    /// Flush now: the buffer holds as many unacked messages as it may (the
    /// consumer delivers at most `max_ack_pending`; a buffer waiting for
    /// rows that cannot come would only wait for its age).
    FlushMessages,
}

/// What the reader does with its buffer now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Handover {
    /// Keep filling.
    Keep,
    /// Hand it to the writer, waiting for room if need be: it is full, or
    /// the instance is over its row budget (backpressure).
    Wait,
    /// Hand it to the writer, which has room now.
    Now,
}

/// Whether to hand the buffer over: at once when it must go (full, or over
/// the budget) or when it is old enough and the writer has room. A buffer
/// old enough whose writer still holds the previous batch (inserting, or
/// queued behind the insert) keeps filling until the writer has room, up to
/// its limits: a slow insert makes the next one larger instead of leaving
/// the rows in NATS, so inserts keep pace with ClickHouse.
pub(crate) fn handover(
    decision: BatchDecision,
    over_budget: bool,
    writer_has_room: bool,
) -> Handover {
    match decision {
        BatchDecision::FlushFull | BatchDecision::FlushMessages => Handover::Wait,
        BatchDecision::FlushAge if over_budget => Handover::Wait,
        BatchDecision::FlushAge if writer_has_room => Handover::Now,
        BatchDecision::FlushAge => Handover::Keep,
        BatchDecision::Wait => Handover::Keep,
    }
}

/// Decides when a buffer is flushed: at `max_rows` rows, at `max_messages`
/// messages, or when its first row has waited `max_age`. Time is passed in,
/// so tests need no clock.
#[derive(Debug, Clone)]
pub struct Batcher {
    max_rows: usize,
    max_messages: usize,
    max_age: Duration,
    /// While rows keep coming, the buffer may grow this old ([`Batcher::set_busy_age`]).
    busy_age: Duration,
    opened_at: Option<Instant>,
    last_added_at: Option<Instant>,
    rows: usize,
    messages: usize,
}

impl Batcher {
    /// A batcher with the given limits (`max_rows` and `max_messages` at
    /// least 1).
    pub fn new(max_rows: usize, max_messages: usize, max_age: Duration) -> Self {
        Self {
            max_rows: max_rows.max(1),
            max_messages: max_messages.max(1),
            max_age,
            busy_age: max_age,
            opened_at: None,
            last_added_at: None,
            rows: 0,
            messages: 0,
        }
    }

    /// The message limit for a consumer allowed `max_ack_pending` unacked
    /// deliveries: a quarter of it, so that while the writer's batch and
    /// the one filling are unacked the consumer still delivers the next
    /// messages.
    pub fn messages_for(max_ack_pending: usize) -> usize {
        (max_ack_pending / 4).max(1)
    }

    /// Records one message with `rows` rows (0: skipped, waiting for an ack) at `now`.
    pub fn add(&mut self, rows: usize, now: Instant) {
        if self.opened_at.is_none() {
            self.opened_at = Some(now);
        }
        self.last_added_at = Some(now);
        self.rows += rows;
        self.messages += 1;
    }

    /// Whether to flush at `now`.
    pub fn decide(&self, now: Instant) -> BatchDecision {
        let Some(due) = self.deadline() else {
            return BatchDecision::Wait;
        };
        if self.rows >= self.max_rows {
            return BatchDecision::FlushFull;
        }
        if self.messages >= self.max_messages {
            return BatchDecision::FlushMessages;
        }
        if now >= due {
            return BatchDecision::FlushAge;
        }
        BatchDecision::Wait
    }

    /// Lets the buffer grow `busy_age` old (never less than `max_age`) as
    /// long as rows keep coming: it goes at that age, or once nothing was
    /// added for `max_age`, whichever comes first, so the end of a burst
    /// waits no longer than before. `max_age` turns it off. Applies to the
    /// buffer being filled too.
    pub fn set_busy_age(&mut self, busy_age: Duration) {
        self.busy_age = busy_age.max(self.max_age);
    }

    /// Changes the row limit (at least 1), for the buffer being filled too.
    pub fn set_max_rows(&mut self, max_rows: usize) {
        self.max_rows = max_rows.max(1);
    }

    /// When the age limit falls due, if anything is buffered: `max_age`
    /// after the first row, or with a busy age ([`Batcher::set_busy_age`])
    /// `busy_age` after it or `max_age` after the last message, whichever
    /// is sooner.
    pub fn deadline(&self) -> Option<Instant> {
        let opened_at = self.opened_at?;
        let last_added_at = self.last_added_at.unwrap_or(opened_at);
        Some((opened_at + self.busy_age).min(last_added_at + self.max_age))
    }

    /// Room left before the row limit.
    pub fn room(&self) -> usize {
        self.max_rows.saturating_sub(self.rows)
    }

    /// Starts a new, empty buffer.
    pub fn reset(&mut self) {
        self.opened_at = None;
        self.last_added_at = None;
        self.rows = 0;
        self.messages = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_old_buffer_waits_for_a_free_writer_and_a_full_one_waits_for_room() {
        use BatchDecision::{FlushAge, FlushFull, FlushMessages, Wait};
        // Old enough: goes when the writer has room, else keeps filling;
        // over the budget it goes whatever the writer holds.
        assert_eq!(handover(FlushAge, false, true), Handover::Now);
        assert_eq!(handover(FlushAge, false, false), Handover::Keep);
        assert_eq!(handover(FlushAge, true, false), Handover::Wait);
        // Full: waits for room (the backpressure), room or not.
        for room in [false, true] {
            for budget in [false, true] {
                assert_eq!(handover(FlushFull, budget, room), Handover::Wait);
                assert_eq!(handover(FlushMessages, budget, room), Handover::Wait);
            }
            assert_eq!(handover(Wait, false, room), Handover::Keep);
        }
    }

    #[test]
    fn empty_buffers_never_flush() {
        let batcher = Batcher::new(10, 100, Duration::from_secs(1));
        let later = Instant::now() + Duration::from_secs(100);
        assert_eq!(batcher.decide(later), BatchDecision::Wait);
        assert_eq!(batcher.deadline(), None);
    }

    #[test]
    fn flushes_at_the_row_limit() {
        let start = Instant::now();
        let mut batcher = Batcher::new(10, 100, Duration::from_secs(1));
        batcher.add(9, start);
        assert_eq!(batcher.decide(start), BatchDecision::Wait);
        assert_eq!(batcher.room(), 1);
        batcher.add(1, start);
        assert_eq!(batcher.decide(start), BatchDecision::FlushFull);
        // A larger limit (this instance's share of the partitions shrank)
        // applies to the open buffer.
        batcher.set_max_rows(20);
        assert_eq!(batcher.decide(start), BatchDecision::Wait);
        assert_eq!(batcher.room(), 10);
        batcher.set_max_rows(0);
        assert_eq!(batcher.decide(start), BatchDecision::FlushFull);
    }

    #[test]
    fn a_busy_buffer_grows_older_while_rows_keep_coming() {
        let ms = Duration::from_millis;
        let start = Instant::now();
        let mut batcher = Batcher::new(100, 100, ms(300));
        batcher.add(1, start);
        batcher.add(1, start + ms(250));
        assert_eq!(batcher.decide(start + ms(300)), BatchDecision::FlushAge);
        // Busy: rows keep coming, so it waits up to the busy age...
        batcher.set_busy_age(ms(1_000));
        assert_eq!(batcher.deadline(), Some(start + ms(550)));
        assert_eq!(batcher.decide(start + ms(300)), BatchDecision::Wait);
        for at in [500, 750, 900] {
            batcher.add(1, start + ms(at));
        }
        assert_eq!(batcher.decide(start + ms(999)), BatchDecision::Wait);
        assert_eq!(batcher.deadline(), Some(start + ms(1_000)));
        assert_eq!(batcher.decide(start + ms(1_000)), BatchDecision::FlushAge);
        // ...but not when they stop: max_age after the last one.
        batcher.reset();
        batcher.add(1, start);
        batcher.add(1, start + ms(100));
        assert_eq!(batcher.deadline(), Some(start + ms(400)));
        assert_eq!(batcher.decide(start + ms(400)), BatchDecision::FlushAge);
        // Never shorter than max_age.
        batcher.set_busy_age(ms(100));
        assert_eq!(batcher.deadline(), Some(start + ms(300)));
    }

    #[test]
    fn flushes_when_the_first_row_is_old_enough() {
        let start = Instant::now();
        let mut batcher = Batcher::new(10, 100, Duration::from_millis(500));
        batcher.add(1, start);
        batcher.add(1, start + Duration::from_millis(400));
        assert_eq!(
            batcher.decide(start + Duration::from_millis(499)),
            BatchDecision::Wait
        );
        assert_eq!(
            batcher.decide(start + Duration::from_millis(500)),
            BatchDecision::FlushAge
        );
        assert_eq!(batcher.deadline(), Some(start + Duration::from_millis(500)));
        batcher.reset();
        assert_eq!(
            batcher.decide(start + Duration::from_secs(5)),
            BatchDecision::Wait
        );
    }

    #[test]
    fn flushes_when_it_holds_all_the_messages_it_may() {
        let start = Instant::now();
        let mut batcher = Batcher::new(1_000, Batcher::messages_for(64), Duration::from_secs(1));
        for _ in 0..15 {
            batcher.add(3, start);
        }
        assert_eq!(batcher.decide(start), BatchDecision::Wait);
        batcher.add(0, start);
        assert_eq!(batcher.decide(start), BatchDecision::FlushMessages);
        batcher.reset();
        batcher.add(3, start);
        assert_eq!(batcher.decide(start), BatchDecision::Wait);
        assert_eq!(Batcher::messages_for(1), 1);
    }
}
