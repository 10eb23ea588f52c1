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

/// Environment variable naming the armed fault point.
pub const FAULT_ENV: &str = "CCTV_FAULT";

/// Environment variable: the pass of the armed point that aborts (from 1).
pub const FAULT_AFTER_ENV: &str = "CCTV_FAULT_AFTER_BATCHES";

/// Whether fault points are compiled into this build.
pub const FAULT_INJECTION_COMPILED: bool = cfg!(feature = "fault-injection");

/// Aborts the process if `name` is the armed point and this is its armed pass.
#[cfg(feature = "fault-injection")]
pub fn fault_point(name: &'static str) {
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
    let Some((point, after)) = armed else { return };
    if point != name {
        return;
    }
    let pass = PASSES.fetch_add(1, Ordering::SeqCst) + 1;
    if pass >= *after {
        // Straight to stderr: the log pipeline may buffer and never flush.
        eprintln!("fault injected at {name} (pass {pass}); aborting");
        std::process::abort();
    }
}

/// Fault points compile to nothing without the `fault-injection` feature.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn fault_point(_name: &'static str) {}
