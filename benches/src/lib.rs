//! Support for the benchmarks: the criterion benches live in `benches/`, the
//! end-to-end benchmark in `src/bin/cctv-bench-e2e.rs`.

pub mod analyst;
pub mod gateway;
pub mod hops;
