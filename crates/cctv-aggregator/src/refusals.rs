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

/// What to do after a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// Try again (the streak is younger than the grace).
    pub(crate) again: bool,
    /// The refusal began a streak (pauses start again from the shortest).
    pub(crate) new_streak: bool,
}

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
    /// far: whether to try again, and whether the refusal began a new
    /// streak. Rows written since the last refusal, or a last refusal longer
    /// ago than the grace and than twice the longest pause (a streak tries
    /// again more often than that), begin a new streak.
    pub(crate) fn retry(&mut self, written: u64, now: Instant) -> Verdict {
        let quiet = self.grace.max(2 * REFUSAL_MAX_BACKOFF);
        let new_streak = self.last.is_none_or(|(last, written_then)| {
            written > written_then || now.saturating_duration_since(last) >= quiet
        });
        if new_streak {
            self.since = Some(now);
        }
        self.last = Some((now, written));
        Verdict {
            again: self.age(now) < self.grace,
            new_streak,
        }
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

    /// Tries at `seconds` (rows written by then), their verdicts' `again`.
    fn tries(refusals: &mut Refusals, start: Instant, at: &[(u64, u64)]) -> Vec<bool> {
        at.iter()
            .map(|(seconds, written)| {
                refusals
                    .retry(*written, start + Duration::from_secs(*seconds))
                    .again
            })
            .collect()
    }

    #[test]
    fn a_streak_is_tried_again_until_the_grace_is_over() {
        let start = Instant::now();
        let mut refusals = Refusals::new(Duration::from_secs(120));
        let at = [(0, 0), (30, 0), (60, 0), (90, 0), (119, 0), (120, 0)];
        assert_eq!(
            tries(&mut refusals, start, &at),
            [true, true, true, true, true, false]
        );
        assert_eq!(
            refusals.age(start + Duration::from_secs(120)),
            Duration::from_secs(120)
        );
    }

    #[test]
    fn rows_written_in_between_begin_a_new_streak() {
        let start = Instant::now();
        let mut refusals = Refusals::new(Duration::from_secs(120));
        assert_eq!(
            tries(&mut refusals, start, &[(0, 0), (100, 0)]),
            [true, true]
        );
        // A session wrote rows, then was refused again soon after.
        let verdict = refusals.retry(50, start + Duration::from_secs(110));
        assert_eq!(
            verdict,
            Verdict {
                again: true,
                new_streak: true
            }
        );
        assert_eq!(
            tries(&mut refusals, start, &[(140, 50), (229, 50), (230, 50)]),
            [true, true, false]
        );
    }

    #[test]
    fn a_refusal_long_after_the_last_begins_a_new_streak() {
        let start = Instant::now();
        let mut refusals = Refusals::new(Duration::from_secs(120));
        assert!(refusals.retry(0, start).new_streak);
        // An idle partition (nothing written), refused again an hour later.
        let later = refusals.retry(0, start + Duration::from_secs(3600));
        assert!(later.new_streak && later.again);
        let at = [(3630, 0), (3660, 0), (3690, 0), (3719, 0), (3720, 0)];
        assert_eq!(
            tries(&mut refusals, start, &at),
            [true, true, true, true, false]
        );
    }

    #[test]
    fn a_short_grace_ends_however_long_the_pauses_grow() {
        // Pauses of up to 30 s against a grace of 10 s: the streak still
        // ends (a gap under twice the longest pause continues it).
        let start = Instant::now();
        let mut refusals = Refusals::new(Duration::from_secs(10));
        let at = [(0, 0), (1, 0), (3, 0), (7, 0), (15, 0)];
        assert_eq!(
            tries(&mut refusals, start, &at),
            [true, true, true, true, false]
        );
    }

    #[test]
    fn no_grace_ends_at_the_first_refusal() {
        let mut refusals = Refusals::new(Duration::ZERO);
        assert!(!refusals.retry(0, Instant::now()).again);
        assert!(!refusals.retry(1, Instant::now()).again);
    }
}
