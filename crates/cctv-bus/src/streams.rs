//! Creating and verifying the contract's streams.

use async_nats::jetstream::{self, stream};

use crate::subjects::{DLQ_PREFIX, EVENTS_PREFIX, RAW_PREFIX};
use crate::{BusError, StreamSettings, StreamsConfig};

/// Which of the three streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// `CCTV_RAW`.
    Raw,
    /// `CCTV_EVENTS`.
    Events,
    /// `CCTV_DLQ`.
    Dlq,
}

impl StreamKind {
    /// The subject filter the stream captures.
    pub fn subjects(self) -> Vec<String> {
        let prefix = match self {
            StreamKind::Raw => RAW_PREFIX,
            StreamKind::Events => EVENTS_PREFIX,
            StreamKind::Dlq => DLQ_PREFIX,
        };
        vec![format!("{prefix}.>")]
    }
}

/// Creates all three streams, or verifies and updates them if they exist.
pub async fn ensure_streams(
    js: &jetstream::Context,
    streams: &StreamsConfig,
) -> Result<(), BusError> {
    ensure_stream(js, StreamKind::Raw, &streams.raw).await?;
    ensure_stream(js, StreamKind::Events, &streams.events).await?;
    ensure_stream(js, StreamKind::Dlq, &streams.dlq).await?;
    Ok(())
}

/// Creates one stream, or verifies its subjects and brings its limits in line
/// with `settings` if it exists. Returns its current info.
pub async fn ensure_stream(
    js: &jetstream::Context,
    kind: StreamKind,
    settings: &StreamSettings,
) -> Result<stream::Info, BusError> {
    let wanted = stream::Config {
        name: settings.name.clone(),
        subjects: kind.subjects(),
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        max_age: settings.max_age,
        duplicate_window: settings.duplicate_window,
        max_bytes: settings.max_bytes,
        num_replicas: settings.replicas,
        ..Default::default()
    };
    match js.get_stream(&settings.name).await {
        Ok(mut existing) => {
            let info = existing
                .info()
                .await
                .map_err(|e| BusError::jetstream("stream info", e))?
                .clone();
            if info.config.subjects != wanted.subjects {
                return Err(BusError::StreamMismatch {
                    stream: settings.name.clone(),
                    found: info.config.subjects,
                    expected: wanted.subjects,
                });
            }
            let same_limits = info.config.max_age == wanted.max_age
                && info.config.duplicate_window == wanted.duplicate_window
                && info.config.max_bytes == wanted.max_bytes;
            if same_limits {
                return Ok(info);
            }
            let mut updated = info.config.clone();
            updated.max_age = wanted.max_age;
            updated.duplicate_window = wanted.duplicate_window;
            updated.max_bytes = wanted.max_bytes;
            tracing::info!(stream = %settings.name, "updating stream limits");
            js.update_stream(updated)
                .await
                .map_err(|e| BusError::jetstream("stream update", e))
        }
        Err(error)
            if matches!(
                error.kind(),
                jetstream::context::GetStreamErrorKind::JetStream(_)
            ) =>
        {
            // Not found (or another API error): try to create; a real error
            // surfaces from the create call.
            let mut created = js
                .create_stream(wanted)
                .await
                .map_err(|e| BusError::jetstream("stream create", e))?;
            let info = created
                .info()
                .await
                .map_err(|e| BusError::jetstream("stream info", e))?
                .clone();
            tracing::info!(stream = %settings.name, "created stream");
            Ok(info)
        }
        Err(error) => Err(BusError::jetstream("stream lookup", error)),
    }
}

/// A name for one incarnation of a stream: its name and creation time. A
/// stream deleted and created again restarts its sequences, so positions
/// stored downstream are keyed by this, never by the name alone.
pub fn stream_identity(info: &stream::Info) -> String {
    format!(
        "{}@{}",
        info.config.name,
        info.created.timestamp_nanos_opt().unwrap_or_default()
    )
}
