//! `cctvctl setup`: create or verify the JetStream streams and apply the
//! ClickHouse migrations.

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
