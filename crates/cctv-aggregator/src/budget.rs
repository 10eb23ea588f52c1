//! The instance's memory bound: rows decoded and not yet written, over all
//! the partitions it owns.
//!
//! Each partition already holds at most a filling batch and the batches its
//! writer has in hand, but that bound grows with the partitions an instance
//! owns (one instance may own all of them) and with the events one message
//! brings. The budget caps the sum: a reader that finds the instance over
//! budget hands its open batch to its writer and reads nothing more until
//! written batches bring the total back under the budget. Rows are counted
//! by guards ([`RowsHeld`]) that travel with the rows, from the reader's
//! open batch to the writer, and give their rows back when dropped (written,
//! or the session ended), so no path can leak budget.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// Rows held by one instance, against its budget.
#[derive(Debug, Clone)]
pub(crate) struct RowBudget {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    limit: usize,
    held: AtomicUsize,
    released: Notify,
}

impl RowBudget {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                limit,
                held: AtomicUsize::new(0),
                released: Notify::new(),
            }),
        }
    }

    /// A guard holding no rows yet.
    pub(crate) fn guard(&self) -> RowsHeld {
        RowsHeld {
            shared: self.shared.clone(),
            rows: 0,
        }
    }

    /// Rows held by every guard.
    pub(crate) fn held(&self) -> usize {
        self.shared.held.load(Ordering::Acquire)
    }

    /// Whether the instance holds more rows than its budget.
    pub(crate) fn over(&self) -> bool {
        self.held() > self.shared.limit
    }

    /// Waits until the instance holds no more rows than its budget.
    pub(crate) async fn wait_within(&self) {
        loop {
            // Registered before the check, so a release in between wakes it.
            let released = self.shared.released.notified();
            if !self.over() {
                return;
            }
            released.await;
        }
    }
}

/// Rows counted against a [`RowBudget`] until this guard is dropped.
#[derive(Debug)]
pub(crate) struct RowsHeld {
    shared: Arc<Shared>,
    rows: usize,
}

impl RowsHeld {
    /// Counts `rows` more.
    pub(crate) fn add(&mut self, rows: usize) {
        self.rows += rows;
        self.shared.held.fetch_add(rows, Ordering::AcqRel);
    }

    /// Moves everything held into a new guard, leaving this one empty.
    pub(crate) fn take(&mut self) -> RowsHeld {
        RowsHeld {
            shared: self.shared.clone(),
            rows: std::mem::take(&mut self.rows),
        }
    }
}

impl Drop for RowsHeld {
    fn drop(&mut self) {
        if self.rows > 0 {
            self.shared.held.fetch_sub(self.rows, Ordering::AcqRel);
            self.shared.released.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn guards_count_rows_until_dropped_wherever_they_went() {
        let budget = RowBudget::new(10);
        let mut open = budget.guard();
        open.add(6);
        open.add(5);
        assert_eq!(budget.held(), 11);
        assert!(budget.over());
        // Handing the open batch over moves its rows, it does not free them.
        let handed = open.take();
        assert_eq!(budget.held(), 11);
        drop(open);
        assert_eq!(budget.held(), 11);
        drop(handed);
        assert_eq!(budget.held(), 0);
        assert!(!budget.over());
    }

    #[tokio::test]
    async fn a_waiting_reader_resumes_when_written_rows_are_released() {
        let budget = RowBudget::new(10);
        let mut inserting = budget.guard();
        inserting.add(15);
        let waiter = tokio::spawn({
            let budget = budget.clone();
            async move { budget.wait_within().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "returned while over budget");
        drop(inserting);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("still waiting after the rows were released")
            .unwrap();
        // Within budget: no wait at all.
        budget.wait_within().await;
    }
}
