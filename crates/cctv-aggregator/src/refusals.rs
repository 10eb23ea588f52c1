//! How long a partition's term keeps trying after errors not known to pass
//! (ClickHouse refused, in a way `StoreError::is_transient` does not know
//! to go away: an unknown error code, a proxy's own error page, a table
//! missing while an operator renames it) before they end the aggregator.
//!
//! Such an error ended the aggregator at once, which turned a passing
//! refusal into a restart (and, on every instance that took the partitions
//! over, another). A term now tries again, with the insert's backoff, until
//! its refusals have gone on for `refusal_grace` without a row written in
//! between; only then does the error end the aggregator, for its supervisor
//! and operator to see. Trying again is safe for the counts: every retry of
//! an insert whose outcome is unknown first asks ClickHouse what it holds
//! (`Writer::write_one`), and a new session starts from ClickHouse's resume
//! point.

use std::time::{Duration, Instant};

/// A partition term's streak of refusals.
#[derive(Debug)]
pub(crate) struct Refusals {
    grace: Duration,
    /// The first refusal since rows were last written.
    since: Option<Instant>,
}

impl Refusals {
    /// No refusal yet; a streak is tried again until `grace` old (zero: never).
    pub(crate) fn new(grace: Duration) -> Self {
        Self { grace, since: None }
    }

    /// After a refusal at `now`: whether to try again. `progressed`: rows
    /// were written since the previous refusal, which starts a new streak.
    pub(crate) fn retry(&mut self, progressed: bool, now: Instant) -> bool {
        if progressed {
            self.since = None;
        }
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
        assert!(refusals.retry(false, at(0)));
        assert!(refusals.retry(false, at(60)));
        assert_eq!(refusals.age(at(60)), Duration::from_secs(60));
        assert!(refusals.retry(false, at(119)));
        assert!(!refusals.retry(false, at(120)));
    }

    #[test]
    fn rows_written_in_between_start_a_new_streak() {
        let start = Instant::now();
        let at = |seconds| start + Duration::from_secs(seconds);
        let mut refusals = Refusals::new(Duration::from_secs(120));
        assert!(refusals.retry(false, at(0)));
        assert!(refusals.retry(false, at(100)));
        // A session wrote rows, then was refused again much later.
        assert!(refusals.retry(true, at(500)));
        assert_eq!(refusals.age(at(500)), Duration::ZERO);
        assert!(refusals.retry(false, at(619)));
        assert!(!refusals.retry(false, at(620)));
    }

    #[test]
    fn no_grace_ends_at_the_first_refusal() {
        let mut refusals = Refusals::new(Duration::ZERO);
        assert!(!refusals.retry(false, Instant::now()));
        assert!(!refusals.retry(true, Instant::now()));
    }
}
