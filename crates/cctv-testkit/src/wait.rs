//! Polling a condition with a deadline instead of sleeping a fixed time.

use std::time::{Duration, Instant};

use crate::TestkitError;

/// Calls `condition` every `poll` until it returns true or `timeout` has passed.
///
/// The condition is always evaluated at least once, and once more at the deadline,
/// so a zero timeout means "check now". `what` names the condition in the error.
pub fn wait_until<F: FnMut() -> bool>(
    timeout: Duration,
    poll: Duration,
    what: &str,
    mut condition: F,
) -> Result<(), TestkitError> {
    let started = Instant::now();
    let deadline = started + timeout;
    loop {
        if condition() {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(TestkitError::Timeout {
                what: what.to_owned(),
                waited_ms: millis(started.elapsed()),
            });
        }
        // Never sleep past the deadline, so the last check happens on time.
        std::thread::sleep(poll.min(deadline - now));
    }
}

/// Milliseconds of a duration, saturating instead of truncating silently.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn succeeds_once_condition_holds() {
        let mut calls = 0;
        let result = wait_until(
            Duration::from_secs(5),
            Duration::from_millis(1),
            "three calls",
            || {
                calls += 1;
                calls >= 3
            },
        );
        assert!(result.is_ok());
        assert_eq!(calls, 3);
    }

    #[test]
    fn times_out_with_named_condition() {
        let result = wait_until(
            Duration::from_millis(20),
            Duration::from_millis(5),
            "never",
            || false,
        );
        match result {
            Err(TestkitError::Timeout { what, waited_ms }) => {
                assert_eq!(what, "never");
                assert!(waited_ms >= 20);
            }
            other => panic!("expected timeout, got {other:?}"),
        }
    }
}
