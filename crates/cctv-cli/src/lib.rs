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
//! - `totals` ([`run_totals`]): counts by one or two dimensions (`--by`,
//!   region x offence type by default) as a compact pivot table, CSV or JSON,
//!   names in English, Russian or Kazakh ([`Names`]), and optionally waits
//!   until region x type totals match an expectation;
//! - `top` ([`run_top`]): the cameras, places or plates with the most
//!   offences in a range;
//! - `trend` ([`run_trend`]): day by day against the previous period;
//! - `report` ([`run_report`]): one self-contained HTML file with a map of
//!   the regions, bars by type, the daily trend, top cameras and freshness;
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
mod map;
mod names;
mod report;
mod setup;
mod simulate;
mod status;
mod table;
mod top;
mod totals;
mod trend;

pub use audit::{
    audit_pipeline, audit_pipeline_in_rounds, audit_pipeline_with, audit_rollups, render_audit,
    run_audit, AuditArgs, AuditFormat, AuditReport, RewindRequested, RollupAudit, RollupDifference,
    SequenceRange, SequenceRanges, StreamAudit, StreamExtent,
};
pub use config::CliConfig;
pub use dlq::{run_dlq, DlqCommand, DlqListArgs, DlqReplayArgs, ListFormat};
pub use map::{project, region_map, RegionMap, RegionPath};
pub use names::{Lang, Names};
pub use report::{
    duration_text, gather_report, render_report, run_report, ReportArgs, ReportData,
    DEFAULT_REPORT_DAYS,
};
pub use setup::{run_setup, SetupArgs};
pub use simulate::run_simulate;
pub use status::{
    assemble_status, pipeline_status, render_status, run_status, ConsumerBacklog, MemberStatus,
    PartitionStatus, StatusArgs, StatusFormat, StatusReport,
};
pub use table::{render_counts, render_totals, Counts, OutputFormat, TableLayout};
pub use top::{plate_note, render_top, run_top, TopArgs, TopWhat};
pub use totals::{parse_dimension, run_totals, FilterArgs, TotalsArgs};
pub use trend::{
    build_trend, change_percent, day_range, previous_period, query_trend, render_trend, run_trend,
    Trend, TrendArgs, TrendDay, DEFAULT_TREND_DAYS,
};
