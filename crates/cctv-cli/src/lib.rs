//! `cctvctl`: the operator and analyst command line of the CCTV offence pipeline.
//!
//! Each subcommand lives in its own module and exposes a clap `Args` type plus
//! an async `run_*` function that `main` calls:
//!
//! - `setup` ([`run_setup`]): creates or verifies the JetStream streams and
//!   the lease bucket (the partition count, `--partitions N`), and applies
//!   the ClickHouse migrations;
//! - `status` ([`run_status`], [`pipeline_status`]): partitions, their
//!   owners, lease and heartbeat ages, backlog per partition;
//! - `simulate` ([`run_simulate`]): runs the simulator of `cctv-simulate`,
//!   which publishes a camera fleet's messages in any vendor format (alone,
//!   or packed into CloudEvents batches with `--batch N`), and prints the
//!   totals the pipeline must end up with;
//! - `totals` ([`run_totals`]): prints region x offence totals from ClickHouse
//!   and optionally waits until they match an expectation;
//! - `dlq` ([`run_dlq`]): reads dead letters without consuming them, and
//!   replays them to the subjects they came from;
//! - `audit` ([`run_audit`], [`audit_pipeline`]): compares the events stream
//!   with ClickHouse by event id; exit code 1 on any difference.
//!
//! The pure parts (table rendering, status and audit assembly) take plain
//! values and are unit-tested without servers; NATS and ClickHouse are touched only in the `run_*` functions.

mod audit;
mod config;
mod dlq;
mod setup;
mod simulate;
mod status;
mod table;
mod totals;

pub use audit::{
    audit_pipeline, audit_pipeline_with, audit_rollups, render_audit, run_audit, AuditArgs,
    AuditFormat, AuditReport, RollupAudit, RollupDifference, SequenceRange, SequenceRanges,
    StreamAudit, StreamExtent,
};
pub use config::CliConfig;
pub use dlq::{run_dlq, DlqCommand, DlqListArgs, DlqReplayArgs, ListFormat};
pub use setup::{run_setup, SetupArgs};
pub use simulate::run_simulate;
pub use status::{
    assemble_status, pipeline_status, render_status, run_status, ConsumerBacklog, MemberStatus,
    PartitionStatus, StatusArgs, StatusFormat, StatusReport,
};
pub use table::{render_totals, OutputFormat};
pub use totals::{run_totals, TotalsArgs};
