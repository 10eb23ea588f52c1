//! The roller: keeps the rollups behind `offence_totals` and
//! `camera_totals` (see `cctv_store`'s `rollup.rs`). One instance runs it,
//! the owner of partition 0; a run taken twice in a handover is harmless, as
//! is a run cut short (the next one takes its slots again).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cctv_store::{RollupPolicy, Store};
use tokio_util::sync::CancellationToken;

use crate::metrics as names;

/// How often the roller looks whether a run is due.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Runs the roller until `shutdown`: every `policy.interval` while
/// `holds_first` (this instance owns partition 0), first as soon as it does.
pub(crate) async fn run(
    store: Store,
    policy: RollupPolicy,
    holds_first: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    if !policy.enabled {
        tracing::info!("rollups off (rollup.enabled = false): the totals views read every row");
        return;
    }
    let mut last_run: Option<Instant> = None;
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(CHECK_EVERY) => {}
        }
        if !holds_first.load(Ordering::Acquire)
            || last_run.is_some_and(|at| at.elapsed() < policy.interval)
        {
            continue;
        }
        last_run = Some(Instant::now());
        let run = store.roll_up(&policy, |done, total| {
            if total > 1 {
                tracing::info!(done, total, "rolling up slots");
            }
        });
        let report = tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            report = run => report,
        };
        match report {
            Ok(report) => {
                metrics::counter!(names::ROLLUP_RUNS, "outcome" => "ok").increment(1);
                metrics::counter!(names::ROLLUP_SLOTS).increment(report.rolled);
                if report.rolled > 0 {
                    tracing::info!(
                        rolled = report.rolled,
                        retaken = report.retaken,
                        through = ?report.rolled_through,
                        months_merged = ?report.compacted,
                        "rollups updated"
                    );
                }
            }
            Err(error) => {
                metrics::counter!(names::ROLLUP_RUNS, "outcome" => "error").increment(1);
                tracing::warn!(%error, "rollup run failed; the views read those days from the rows until the next run");
            }
        }
    }
}
