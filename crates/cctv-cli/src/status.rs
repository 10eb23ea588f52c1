//! `cctvctl status`: the partitions of the event stream, which aggregator
//! instance owns each (its lease in the lease bucket), how long ago each
//! lease and each instance's heartbeat was written, and the backlog of each
//! partition (events batches not yet acknowledged by its owner's consumer),
//! and the rewind requests not yet carried out (`cctvctl audit --repair`).
//!
//! [`assemble_status`] is the pure core: it joins what the bucket and the
//! stream report into one [`StatusReport`]; [`pipeline_status`] reads them.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Context as _;
use async_nats::jetstream;
use cctv_bus::LeaseEntry;
use chrono::{DateTime, Utc};
use futures::TryStreamExt as _;
use serde::Serialize;

use crate::CliConfig;

/// Flags of `cctvctl status`.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// Name prefix of the aggregators' partition consumers (their
    /// `[aggregator] consumer` setting).
    #[arg(long, default_value = "cctv-aggregator")]
    pub consumer: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = StatusFormat::Text)]
    pub format: StatusFormat,
}

/// How the status is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusFormat {
    /// A table for people.
    Text,
    /// One JSON document.
    Json,
}

/// One partition: its owner and backlog.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PartitionStatus {
    /// Partition number (subject `cctv.events.p<partition>`).
    pub partition: u16,
    /// Instance holding the lease, if any.
    pub owner: Option<String>,
    /// Seconds since the lease was last written (acquired or renewed).
    pub lease_age_seconds: Option<f64>,
    /// The owner's current consumer (the newest of the partition).
    pub consumer: Option<String>,
    /// Event batches of the partition not yet acknowledged by that consumer
    /// (undelivered plus delivered and unacknowledged).
    pub backlog: Option<u64>,
    /// The sequence a rewind request asks the owner to read the partition
    /// again from, until it is carried out.
    pub rewind_from: Option<u64>,
}

/// One aggregator instance that announced itself in the bucket.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemberStatus {
    /// Its instance id.
    pub instance: String,
    /// Seconds since its last heartbeat.
    pub heartbeat_age_seconds: f64,
    /// Partitions whose lease it holds.
    pub partitions_owned: usize,
}

/// What `cctvctl status` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusReport {
    /// The deployment's partition count; `None` before the first setup or
    /// service start.
    pub partitions: Option<u16>,
    /// Live instances, by id.
    pub members: Vec<MemberStatus>,
    /// Every partition, in order.
    pub rows: Vec<PartitionStatus>,
}

impl StatusReport {
    /// Partitions without an owner.
    pub fn unowned(&self) -> usize {
        self.rows.iter().filter(|row| row.owner.is_none()).count()
    }
}

/// A consumer of the events stream as `status` needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerBacklog {
    /// Consumer name.
    pub name: String,
    /// Undelivered plus unacknowledged messages.
    pub backlog: u64,
}

/// Partition and epoch of an aggregator consumer named
/// `<prefix>-p<partition>-<epoch in hex>`.
fn parse_consumer_name(prefix: &str, name: &str) -> Option<(u16, u64)> {
    let rest = name.strip_prefix(prefix)?.strip_prefix("-p")?;
    let (partition, epoch) = rest.split_once('-')?;
    Some((
        partition.parse().ok()?,
        u64::from_str_radix(epoch, 16).ok()?,
    ))
}

fn age_seconds(now: DateTime<Utc>, then: DateTime<Utc>) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let millis = (now - then).num_milliseconds().max(0) as f64;
    millis / 1000.0
}

/// Joins the lease bucket's leases and members with the stream's consumers.
/// A partition's consumer is the one of the newest epoch (older ones linger
/// until their inactivity threshold removes them).
pub fn assemble_status(
    partitions: Option<u16>,
    leases: &[LeaseEntry],
    members: &[LeaseEntry],
    rewinds: &[LeaseEntry],
    consumers: &[ConsumerBacklog],
    consumer_prefix: &str,
    now: DateTime<Utc>,
) -> StatusReport {
    let rewind_from: BTreeMap<u16, u64> = rewinds
        .iter()
        .filter_map(|entry| {
            Some((
                cctv_bus::parse_rewind_key(&entry.key)?,
                cctv_bus::parse_rewind_value(&entry.value)?,
            ))
        })
        .collect();
    let mut newest: BTreeMap<u16, (u64, &ConsumerBacklog)> = BTreeMap::new();
    for consumer in consumers {
        if let Some((partition, epoch)) = parse_consumer_name(consumer_prefix, &consumer.name) {
            let entry = newest.entry(partition).or_insert((epoch, consumer));
            if epoch >= entry.0 {
                *entry = (epoch, consumer);
            }
        }
    }
    let by_partition: BTreeMap<u16, &LeaseEntry> = leases
        .iter()
        .filter_map(|entry| Some((cctv_bus::parse_lease_key(&entry.key)?, entry)))
        .collect();
    let count = partitions.unwrap_or(0);
    let rows: Vec<PartitionStatus> = (0..count)
        .map(|partition| {
            let lease = by_partition.get(&partition);
            let consumer = newest.get(&partition).map(|(_, consumer)| *consumer);
            PartitionStatus {
                partition,
                owner: lease.map(|entry| String::from_utf8_lossy(&entry.value).into_owned()),
                lease_age_seconds: lease.map(|entry| age_seconds(now, entry.created)),
                consumer: consumer.map(|c| c.name.clone()),
                backlog: consumer.map(|c| c.backlog),
                rewind_from: rewind_from.get(&partition).copied(),
            }
        })
        .collect();
    let mut members: Vec<MemberStatus> = members
        .iter()
        .filter_map(|entry| {
            let instance = entry.key.strip_prefix(cctv_bus::MEMBER_PREFIX)?.to_string();
            let owned = rows
                .iter()
                .filter(|row| row.owner.as_deref() == Some(instance.as_str()))
                .count();
            Some(MemberStatus {
                instance,
                heartbeat_age_seconds: age_seconds(now, entry.created),
                partitions_owned: owned,
            })
        })
        .collect();
    members.sort_by(|a, b| a.instance.cmp(&b.instance));
    StatusReport {
        partitions,
        members,
        rows,
    }
}

/// Renders the report as text.
pub fn render_status(report: &StatusReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let Some(count) = report.partitions else {
        out.push_str("partitions: not set (run `cctvctl setup` or start a service)\n");
        return out;
    };
    let _ = writeln!(
        out,
        "partitions: {count}, {} owned, {} unowned",
        usize::from(count) - report.unowned(),
        report.unowned()
    );
    let _ = writeln!(out, "instances: {}", report.members.len());
    for member in &report.members {
        let _ = writeln!(
            out,
            "  {}  heartbeat {:.1}s ago  owns {}",
            member.instance, member.heartbeat_age_seconds, member.partitions_owned
        );
    }
    let owner_width = report
        .rows
        .iter()
        .filter_map(|row| row.owner.as_ref().map(String::len))
        .max()
        .unwrap_or(1)
        .max("owner".len());
    let _ = writeln!(
        out,
        "{:<9}  {:<owner_width$}  {:>9}  {:>7}",
        "partition", "owner", "lease age", "backlog"
    );
    for row in &report.rows {
        let _ = writeln!(
            out,
            "{:<9}  {:<owner_width$}  {:>9}  {:>7}",
            format!("p{}", row.partition),
            row.owner.as_deref().unwrap_or("-"),
            row.lease_age_seconds
                .map_or_else(|| "-".to_string(), |age| format!("{age:.1}s")),
            row.backlog
                .map_or_else(|| "-".to_string(), |backlog| backlog.to_string()),
        );
    }
    let rewinds: Vec<String> = report
        .rows
        .iter()
        .filter_map(|row| Some(format!("p{} from {}", row.partition, row.rewind_from?)))
        .collect();
    if !rewinds.is_empty() {
        let _ = writeln!(
            out,
            "being read again (audit --repair): {}",
            rewinds.join(", ")
        );
    }
    out
}

/// Reads the lease bucket and the events stream's consumers.
pub async fn pipeline_status(
    config: &CliConfig,
    consumer_prefix: &str,
) -> anyhow::Result<StatusReport> {
    let client = cctv_bus::connect(&config.nats, "cctvctl-status")
        .await
        .context("failed to connect to NATS")?;
    let js = jetstream::new(client);
    let bucket = config.lease_bucket(&js).await?;
    let partitions = bucket.partitions().await?;
    let leases = bucket.entries(cctv_bus::LEASE_PREFIX).await?;
    let members = bucket.entries(cctv_bus::MEMBER_PREFIX).await?;
    let rewinds = bucket.entries(cctv_bus::REWIND_PREFIX).await?;
    let stream = js
        .get_stream(&config.streams.events.name)
        .await
        .with_context(|| format!("failed to read stream {}", config.streams.events.name))?;
    let consumers: Vec<ConsumerBacklog> = stream
        .consumers()
        .try_collect::<Vec<_>>()
        .await
        .context("failed to list the events stream's consumers")?
        .into_iter()
        .map(|info| ConsumerBacklog {
            backlog: info.num_pending + info.num_ack_pending as u64,
            name: info.name,
        })
        .collect();
    Ok(assemble_status(
        partitions,
        &leases,
        &members,
        &rewinds,
        &consumers,
        consumer_prefix,
        Utc::now(),
    ))
}

/// Prints the status; exit code 0 when every partition has an owner, 1 when
/// some has none (no aggregator running, or a takeover under way).
pub async fn run_status(config: &CliConfig, args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let report = pipeline_status(config, &args.consumer).await?;
    match args.format {
        StatusFormat::Text => print!("{}", render_status(&report)),
        StatusFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(if report.partitions.is_some() && report.unowned() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, value: &str, created: DateTime<Utc>) -> LeaseEntry {
        LeaseEntry {
            key: key.to_string(),
            revision: 1,
            created,
            value: bytes::Bytes::from(value.to_string()),
        }
    }

    #[test]
    fn consumer_names_give_partition_and_epoch() {
        assert_eq!(
            parse_consumer_name("cctv-aggregator", "cctv-aggregator-p12-1a"),
            Some((12, 0x1a))
        );
        assert_eq!(parse_consumer_name("cctv-aggregator", "cctv-ingest"), None);
        assert_eq!(
            parse_consumer_name("cctv-aggregator", "cctv-aggregator-px-1"),
            None
        );
        assert_eq!(
            parse_consumer_name("cctv-aggregator", "cctv-aggregator-p1-zz"),
            None
        );
    }

    #[test]
    fn partitions_join_their_lease_and_newest_consumer() {
        let now = DateTime::parse_from_rfc3339("2026-12-03T10:00:10Z")
            .unwrap()
            .with_timezone(&Utc);
        let earlier = now - chrono::TimeDelta::seconds(4);
        let leases = [
            entry("lease.p0", "agg-a", earlier),
            entry("lease.p2", "agg-b", now),
        ];
        let members = [
            entry("member.agg-b", "agg-b", now),
            entry("member.agg-a", "agg-a", earlier),
        ];
        let consumers = [
            ConsumerBacklog {
                name: "cctv-aggregator-p0-5".into(),
                backlog: 7,
            },
            ConsumerBacklog {
                name: "cctv-aggregator-p0-3".into(),
                backlog: 99,
            },
            ConsumerBacklog {
                name: "cctv-ingest".into(),
                backlog: 1,
            },
        ];
        let rewinds = [entry("rewind.p2", "40", now)];
        let report = assemble_status(
            Some(3),
            &leases,
            &members,
            &rewinds,
            &consumers,
            "cctv-aggregator",
            now,
        );
        assert_eq!(report.rows.len(), 3);
        assert_eq!(report.rows[0].owner.as_deref(), Some("agg-a"));
        assert_eq!(report.rows[0].lease_age_seconds, Some(4.0));
        assert_eq!(
            report.rows[0].consumer.as_deref(),
            Some("cctv-aggregator-p0-5")
        );
        assert_eq!(report.rows[0].backlog, Some(7));
        assert_eq!(report.rows[1].owner, None);
        assert_eq!(report.rows[1].backlog, None);
        assert_eq!(report.rows[2].owner.as_deref(), Some("agg-b"));
        assert_eq!(
            (report.rows[0].rewind_from, report.rows[2].rewind_from),
            (None, Some(40))
        );
        assert_eq!(report.unowned(), 1);
        let members: Vec<(&str, usize)> = report
            .members
            .iter()
            .map(|m| (m.instance.as_str(), m.partitions_owned))
            .collect();
        assert_eq!(members, [("agg-a", 1), ("agg-b", 1)]);
        let text = render_status(&report);
        assert!(
            text.starts_with("partitions: 3, 2 owned, 1 unowned\n"),
            "{text}"
        );
        assert!(text.contains("p1         -"), "{text}");
        assert!(
            text.ends_with("being read again (audit --repair): p2 from 40\n"),
            "{text}"
        );
    }

    #[test]
    fn an_unset_deployment_says_so() {
        let report = assemble_status(None, &[], &[], &[], &[], "cctv-aggregator", Utc::now());
        assert!(report.rows.is_empty());
        assert!(render_status(&report).contains("not set"));
    }
}
