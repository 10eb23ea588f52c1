//! How long a partition's term keeps trying after ClickHouse refuses in a
//! way `StoreError::is_transient` does not know to go away (an unknown
//! error code, a proxy's own error page, a table missing while an operator
//! renames it) before the refusals end the aggregator.
//!
//! Such an error ended the aggregator at once, which turned a passing
//! refusal into a restart (and, on every instance that took the partitions
//! over, another). A term now tries again, with a backoff of its own (up to
//! [`REFUSAL_MAX_BACKOFF`]: each try starts a session, which rebuilds the
//! seen-set), until its refusals have gone on for `refusal_grace` without a
//! row written in between; only then does the error end the aggregator, for
//! its supervisor and operator to see. Trying again is safe for the counts:
//! every retry of an insert whose outcome is unknown first waits until
//! ClickHouse runs no insert of the partition and asks what it holds
//! (`Writer::write_one`; an error there is a refusal too, never a reason to
//! go on without it), and a new session starts from ClickHouse's resume
//! point. Errors of other kinds (TLS, settings, the stream) end it at once.

use std::time::{Duration, Instant};

/// Longest pause between two tries of a refused term.
pub(crate) const REFUSAL_MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A partition term's streak of refusals.
#[derive(Debug)]
pub(crate) struct Refusals {
    grace: Duration,
    /// The first refusal of the streak.
    since: Option<Instant>,
    /// The last refusal, and the term's rows written by then.
    last: Option<(Instant, u64)>,
}

impl Refusals {
    /// No refusal yet; a streak is tried again until `grace` old (zero: never).
    pub(crate) fn new(grace: Duration) -> Self {
        Self {
            grace,
            since: None,
            last: None,
        }
    }

    /// After a refusal at `now`, with `written` rows written by the term so
    /// far: whether to try again. Rows written since the last refusal, or a
    /// last refusal longer ago than the grace (a streak tries again far more
    /// often), start a new streak.
    pub(crate) fn retry(&mut self, written: u64, now: Instant) -> bool {
        let over = self.last.is_none_or(|(last, written_then)| {
            written > written_then || now.saturating_duration_since(last) >= self.grace
        });
        if over {
            self.since = None;
        }
        self.last = Some((now, written));
        let since = *self.since.get_or_insert(now);
        now.saturating_duration_since(since) < self.grace
    }

    /// How long the streak has gone on at `now` (zero without one).
    pub(crate) fn age(&self, now: Instant) -> Duration {
        self.since
            .map_or(Duration::ZERO, |since| now.saturating_duration_since(since))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streak_is_tried_again_until_the_grace_is_over() {
        let start = Instant::now();
        let at = |seconds| start + Duration::from_secs(seconds);
        let mut refusals = Refusals::new(Duration::from_secs(120));
        assert!(refusals.retry(0, at(0)));
        assert!(refusals.retry(0, at(30)));
        assert!(refusals.retry(0, at(60)));
        assert_eq!(refusals.age(at(60)), Duration::from_secs(60));
        assert!(refusals.retry(0, at(90)));
        assert!(refusals.retry(0, at(119)));
        assert!(!refusals.retry(0, at(120)));
    }

    #[test]
    fn rows_written_in_between_start_a_new_streak() {
        let start = Instant::now();
        let at = |seconds| start + Duration::from_secs(seconds);
        let mut refusals = Refusals::new(Duration::from_secs(120));
        assert!(refusals.retry(0, at(0)));
        assert!(refusals.retry(0, at(100)));
        // A session wrote rows, then was refused again soon after.
        assert!(refusals.retry(50, at(110)));
        assert_eq!(refusals.age(at(110)), Duration::ZERO);
        assert!(refusals.retry(50, at(229)));
        assert!(!refusals.retry(50, at(230)));
    }

    #[test]
    fn a_refusal_long_after_the_last_starts_a_new_streak() {
        let start = Instant::now();
        let at = |seconds| start + Duration::from_secs(seconds);
        let mut refusals = Refusals::new(Duration::from_secs(120));
        assert!(refusals.retry(0, at(0)));
        // An idle partition (nothing written), refused again an hour later.
        assert!(refusals.retry(0, at(3600)));
        assert_eq!(refusals.age(at(3600)), Duration::ZERO);
        for seconds in [3630, 3660, 3690, 3719] {
            assert!(refusals.retry(0, at(seconds)));
        }
        assert!(!refusals.retry(0, at(3720)));
    }

    #[test]
    fn no_grace_ends_at_the_first_refusal() {
        let mut refusals = Refusals::new(Duration::ZERO);
        assert!(!refusals.retry(0, Instant::now()));
        assert!(!refusals.retry(1, Instant::now()));
    }
}
