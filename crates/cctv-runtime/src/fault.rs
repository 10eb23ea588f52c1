//! Fault points for crash tests: a named place in a service where, when the
//! `fault-injection` feature is compiled in and the environment arms it, the
//! process aborts (`std::process::abort`), as a `kill -9` would stop it at
//! that exact instant. Without the feature a fault point compiles to nothing,
//! so release builds carry no trace of it.
//!
//! Arming: `CCTV_FAULT=<point>` names the point and
//! `CCTV_FAULT_AFTER_BATCHES=<n>` (default 1) lets it pass `n - 1` times and
//! fire on the `n`-th. The points are `on_start` (both services, at the start
//! of `run`), `after_insert` (aggregator: a batch is in ClickHouse, not yet
//! acked) and `after_publish` (ingest: a batch's events are acknowledged by
//! JetStream, its raw messages not yet acked).
//!
//! A failure point ([`fault_fails`]) does not abort: on its armed pass, and
//! only then, it tells the caller to act out the failure it names. The
//! aggregator has `replay_insert_lost` (an insert of a replay is not sent,
//! and reported failed), `replay_insert_unanswered` (it is sent and
//! written, and reported failed, as a timeout after the server committed)
//! and `replay_insert_held` (past the lease check it waits until the lease
//! has lapsed, then is sent even though the writer lost its partition
//! meanwhile: a stale owner's insert).

/// Environment variable naming the armed fault point.
pub const FAULT_ENV: &str = "CCTV_FAULT";

/// Environment variable: the pass of the armed point that aborts (from 1).
pub const FAULT_AFTER_ENV: &str = "CCTV_FAULT_AFTER_BATCHES";

/// Whether fault points are compiled into this build.
pub const FAULT_INJECTION_COMPILED: bool = cfg!(feature = "fault-injection");

/// The pass `name` is at (from 1), if it is the armed point; and the pass
/// it is armed for.
#[cfg(feature = "fault-injection")]
fn armed_pass(name: &'static str) -> Option<(u64, u64)> {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    static ARMED: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static PASSES: AtomicU64 = AtomicU64::new(0);
    let armed = ARMED.get_or_init(|| {
        let point = std::env::var(FAULT_ENV).ok().filter(|p| !p.is_empty())?;
        let after = std::env::var(FAULT_AFTER_ENV)
            .ok()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(1)
            .max(1);
        Some((point, after))
    });
    let (point, after) = armed.as_ref()?;
    if point != name {
        return None;
    }
    Some((PASSES.fetch_add(1, Ordering::SeqCst) + 1, *after))
}

/// Aborts the process if `name` is the armed point and this is its armed pass.
#[cfg(feature = "fault-injection")]
pub fn fault_point(name: &'static str) {
    if let Some((pass, after)) = armed_pass(name) {
        if pass >= after {
            // Straight to stderr: the log pipeline may buffer and never flush.
            eprintln!("fault injected at {name} (pass {pass}); aborting");
            std::process::abort();
        }
    }
}

/// Whether the caller should act out its failure here: `name` is the armed
/// point and this is exactly its armed pass (so once per process).
#[cfg(feature = "fault-injection")]
pub fn fault_fails(name: &'static str) -> bool {
    let fails = armed_pass(name).is_some_and(|(pass, after)| pass == after);
    if fails {
        eprintln!("fault injected at {name}: acting once");
    }
    fails
}

/// Failure points never fail without the `fault-injection` feature.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn fault_fails(_name: &'static str) -> bool {
    false
}

/// Fault points compile to nothing without the `fault-injection` feature.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn fault_point(_name: &'static str) {}
