//! `cctvctl setup`: create or verify the JetStream streams and the lease
//! bucket (with the partition count), and apply the ClickHouse migrations.

use anyhow::Context as _;
use async_nats::jetstream;
use cctv_bus::StreamKind;
use cctv_store::Store;

use crate::CliConfig;

/// Flags of `cctvctl setup`.
#[derive(Debug, Clone, clap::Args)]
pub struct SetupArgs {
    /// Leave the NATS streams alone.
    #[arg(long)]
    pub skip_nats: bool,
    /// Leave the ClickHouse schema alone.
    #[arg(long)]
    pub skip_clickhouse: bool,
    /// Partitions of the event stream (1..=1024), fixed for the deployment's
    /// life: each is owned by one aggregator at a time, so it bounds how many
    /// aggregators share the work. Default 16 when nobody chose one; a
    /// different count than the one already set is refused.
    #[arg(long, value_name = "N")]
    pub partitions: Option<u16>,
}

/// Creates or verifies the three streams and migrates the ClickHouse schema,
/// printing what was done.
pub async fn run_setup(config: &CliConfig, args: &SetupArgs) -> anyhow::Result<()> {
    if !args.skip_nats {
        let client = cctv_bus::connect(&config.nats, "cctvctl-setup")
            .await
            .context("failed to connect to NATS")?;
        let js = jetstream::new(client);
        let streams = [
            (StreamKind::Raw, &config.streams.raw),
            (StreamKind::Events, &config.streams.events),
            (StreamKind::Dlq, &config.streams.dlq),
        ];
        for (kind, settings) in streams {
            let info = cctv_bus::ensure_stream(&js, kind, settings)
                .await
                .with_context(|| format!("failed to ensure stream {}", settings.name))?;
            println!(
                "nats: stream {} ready (subjects {}, {} messages, max age {}, duplicate window {})",
                info.config.name,
                info.config.subjects.join(" "),
                info.state.messages,
                humantime::format_duration(info.config.max_age),
                humantime::format_duration(info.config.duplicate_window),
            );
        }
        let bucket = config.lease_bucket(&js).await?;
        let partitions = match args.partitions {
            Some(count) => bucket.set_partitions(count).await,
            None => bucket.partitions_or_init().await,
        }
        .context("failed to set the partition count")?;
        println!(
            "nats: lease bucket {} ready, {partitions} partitions (cctv.events.p0 .. p{})",
            config.streams.leases.name,
            partitions - 1
        );
    }
    if !args.skip_clickhouse {
        let store =
            Store::new(&config.clickhouse).context("failed to create the ClickHouse client")?;
        let version = store
            .migrate()
            .await
            .context("failed to migrate the ClickHouse schema")?;
        println!(
            "clickhouse: database {} at {} at schema version {version}",
            config.clickhouse.database, config.clickhouse.url
        );
    }
    Ok(())
}
