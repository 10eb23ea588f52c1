//! The camera-fleet simulator of `cctvctl simulate` and the benchmarks.
//!
//! - [`run_simulate`] publishes a fleet's messages to `CCTV_RAW` in any
//!   vendor format (alone, or packed into CloudEvents batches with
//!   `--batch N`) and returns the totals the pipeline must end up with
//!   ([`Expectation`]);
//! - [`compare_totals`] compares them cell by cell with what was counted;
//! - [`parse_day`] reads the day flags shared with `cctvctl totals`.
//!
//! The generator and the vendor payloads (`vendors.rs`) are pure and seeded,
//! unit-tested without servers; NATS is touched only in [`run_simulate`].

mod day;
mod expectation;
mod simulate;
mod vendors;

pub use day::{parse_day, today, yesterday, DAY_TIMEZONE};
pub use expectation::{compare_totals, CellDiff, Expectation, RawOutcomes};
pub use simulate::{run_simulate, FormatChoice, SimulateArgs, SimulateRun};
