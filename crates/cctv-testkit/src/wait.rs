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

/// Polls the async `check` every `every` until it returns `Ok`, and returns
/// its value. `Err` says what is still missing (e.g. "40 of 100 rows").
///
/// # Panics
/// After `timeout`, with `what` and the last state: a test that waits for
/// something that never comes fails, it does not hang.
pub async fn poll<T, F, Fut>(what: &str, timeout: Duration, every: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(state) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "timed out after {timeout:?} waiting for {what}: {state}"
                );
                tokio::time::sleep(every).await;
            }
        }
    }
}

/// Polls the async `condition` every 100 ms until it holds.
///
/// # Panics
/// After `timeout`, naming `what`.
pub async fn poll_until<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    poll(what, timeout, Duration::from_millis(100), || {
        let holds = condition();
        async move {
            if holds.await {
                Ok(())
            } else {
                Err("not yet".to_string())
            }
        }
    })
    .await;
}

/// Milliseconds of a duration, saturating instead of truncating silently.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn poll_returns_the_value_once_the_check_passes() {
        let mut calls = 0;
        let value = poll(
            "three calls",
            Duration::from_secs(5),
            Duration::from_millis(1),
            || {
                calls += 1;
                let now = calls;
                async move {
                    if now >= 3 {
                        Ok(now * 10)
                    } else {
                        Err(format!("{now} calls"))
                    }
                }
            },
        )
        .await;
        assert_eq!(value, 30);
    }

    #[tokio::test]
    #[should_panic(expected = "waiting for nothing: 0 of 1")]
    async fn poll_fails_with_the_last_state_after_the_timeout() {
        poll::<(), _, _>(
            "nothing",
            Duration::from_millis(20),
            Duration::from_millis(5),
            || async { Err("0 of 1".to_string()) },
        )
        .await;
    }

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
