//! Group commit of the partitions' insert batches: one task per instance
//! takes every batch queued while its previous insert ran and writes them as
//! one fenced INSERT (one part, all or nothing; its `query_id` names every
//! partition it carries). ClickHouse spends most of a small insert's cost
//! per insert, not per row (`cctv-bench-e2e --scenarios store-floor`), so
//! under load fewer, larger inserts cost it several times less. An insert
//! waits at most `aggregator.insert_linger` (100 ms) after its first batch
//! for others to join; under light load a batch goes alone after that.
//!
//! Each partition's writer keeps its own retry logic: a failed group fails
//! every batch in it, and each writer then asks ClickHouse what of its own
//! batch was written before trying again, exactly as for an insert of its
//! own. A batch still queued when its partition's lease is lost may yet be
//! sent: the fence drops it.

use std::sync::Arc;
use std::time::Duration;

use cctv_store::{EncodedRows, Store, StoreError};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, oneshot};

use crate::metrics as names;

/// Batches queued for the group-commit task at most.
const QUEUE: usize = 1024;

/// One partition's batch waiting to be inserted.
struct Request {
    writer: String,
    rows: Arc<EncodedRows>,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// Handle of the instance's group-commit task.
#[derive(Debug, Clone)]
pub(crate) struct Inserter {
    requests: mpsc::Sender<Request>,
}

impl Inserter {
    /// Starts the task; a group holds at most `max_rows` rows (a single
    /// batch larger than that goes alone) and waits at most `linger` after
    /// its first batch for others to join.
    pub(crate) fn start(store: Store, max_rows: usize, linger: Duration) -> Self {
        let (requests, receiver) = mpsc::channel(QUEUE);
        tokio::spawn(run(store, receiver, max_rows, linger));
        Self { requests }
    }

    /// Inserts `rows` of `writer` through the fence, alone or with other
    /// partitions' batches; returns once the insert that carried them ended.
    pub(crate) async fn insert(
        &self,
        writer: &str,
        rows: Arc<EncodedRows>,
    ) -> Result<(), StoreError> {
        let stopped = || StoreError::Unavailable {
            operation: "insert",
            message: "the insert task stopped".into(),
        };
        let (done, answer) = oneshot::channel();
        self.requests
            .send(Request {
                writer: writer.to_string(),
                rows,
                done,
            })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn run(
    store: Store,
    mut requests: mpsc::Receiver<Request>,
    max_rows: usize,
    linger: Duration,
) {
    while let Some(first) = requests.recv().await {
        let deadline = tokio::time::Instant::now() + linger;
        let mut rows = first.rows.len();
        let mut group = vec![first];
        while rows < max_rows {
            let next = match requests.try_recv() {
                Ok(request) => Some(request),
                Err(TryRecvError::Empty) => tokio::time::timeout_at(deadline, requests.recv())
                    .await
                    .ok()
                    .flatten(),
                Err(TryRecvError::Disconnected) => None,
            };
            let Some(request) = next else { break };
            if rows + request.rows.len() <= max_rows {
                rows += request.rows.len();
                group.push(request);
            } else {
                // Too large to join: it opens the next group.
                let result = insert_group(&store, &group).await;
                answer(group, &result);
                rows = request.rows.len();
                group = vec![request];
            }
        }
        let result = insert_group(&store, &group).await;
        answer(group, &result);
    }
}

async fn insert_group(store: &Store, group: &[Request]) -> Result<(), StoreError> {
    let batches: Vec<(&str, &EncodedRows)> = group
        .iter()
        .map(|request| (request.writer.as_str(), request.rows.as_ref()))
        .collect();
    let result = store.insert_fenced(&batches).await;
    metrics::counter!(names::INSERTS).increment(1);
    #[allow(clippy::cast_precision_loss)]
    metrics::histogram!(names::INSERT_GROUP).record(group.len() as f64);
    result
}

/// Gives every request of `group` the group's result, after letting go of
/// its rows (so that the writer gets them back without a copy).
fn answer(group: Vec<Request>, result: &Result<(), StoreError>) {
    for Request { rows, done, .. } in group {
        drop(rows);
        let _ = done.send(result.clone());
    }
}
