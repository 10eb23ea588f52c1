//! The gateway process: opens the spool, starts the intakes (HTTP, MQTT) and
//! the publisher, and stops them in order.
//!
//! Shutdown order: stop intake (no new connection, no new MQTT message;
//! requests in progress finish), then the publisher sends what the spool
//! holds for up to `gateway.shutdown_grace`, then exit. What is left stays
//! in the spool for the next start.

use std::sync::Arc;

use cctv_runtime::Health;
use tokio_util::sync::CancellationToken;

use crate::spool::Spool;
use crate::{http, mqtt, publisher, GatewayConfig, GatewayError};

/// Runs the gateway until `shutdown` is cancelled, then drains and returns.
///
/// # Errors
/// Invalid settings, a spool or listener that cannot be opened, NATS
/// refusing the credentials.
pub async fn run(config: GatewayConfig, shutdown: CancellationToken) -> Result<(), GatewayError> {
    config.validate()?;
    let config = Arc::new(config);
    let health = Health::starting();
    if let Some(listen) = config.telemetry.listen {
        let address = cctv_runtime::serve(listen, health.clone(), shutdown.clone())
            .await
            .map_err(|e| GatewayError::Listen {
                what: "metrics",
                message: format!("{listen}: {e}"),
            })?;
        tracing::info!(%address, "metrics and health endpoint listening");
    } else {
        cctv_runtime::install_metrics();
    }
    let spool_settings = config.spool.clone();
    let (spool, reader, recovered) = tokio::task::spawn_blocking(move || {
        Spool::open(
            &spool_settings.dir,
            spool_settings.max_bytes,
            spool_settings.segment_bytes,
        )
    })
    .await
    .map_err(|e| GatewayError::Config(format!("spool open task failed: {e}")))??;
    tracing::info!(
        dir = %config.spool.dir.display(),
        records = recovered.records,
        bytes = recovered.bytes,
        torn_bytes = recovered.torn_bytes,
        corrupt_bytes = recovered.corrupt_bytes,
        "spool opened"
    );

    // Intake stops first; the publisher drains after it.
    let intake_shutdown = shutdown.child_token();
    let mut intakes = tokio::task::JoinSet::new();
    if let Some(listen) = config.http.listen {
        let tls = match (&config.http.tls_cert_file, &config.http.tls_key_file) {
            (Some(cert), Some(key)) => Some(http::tls_acceptor(cert, key)?),
            _ => None,
        };
        let listener = http::bind(listen).await?;
        let address = listener.local_addr().ok();
        tracing::info!(address = ?address, tls = tls.is_some(), "HTTP intake listening");
        let intake = Arc::new(http::Intake {
            gateway_id: config.gateway.id.clone(),
            credentials: config.credentials(),
            spool: spool.clone(),
            max_message_bytes: config.http.max_message_bytes,
            max_request_bytes: config.http.max_request_bytes,
        });
        intakes.spawn(http::serve(
            listener,
            tls,
            intake,
            config.http.max_connections,
            config.http.header_timeout,
            intake_shutdown.clone(),
        ));
    }
    if let Some(settings) = config.mqtt.clone() {
        tracing::info!(host = %settings.host, port = settings.port, topics = settings.topics.len(), "MQTT intake starting");
        let gateway_id = config.gateway.id.clone();
        let spool = spool.clone();
        let stop = intake_shutdown.clone();
        intakes.spawn(async move {
            if let Err(error) = mqtt::run(settings, gateway_id, spool, stop).await {
                tracing::error!(%error, "MQTT intake stopped");
            }
        });
    }
    health.set_ok();
    tracing::info!(gateway = %config.gateway.id, mode = ?config.publish.mode, "gateway started");

    let published = publisher::run(config.clone(), spool, reader, health, shutdown.clone());
    tokio::pin!(published);
    let result = tokio::select! {
        result = &mut published => {
            // The publisher only ends early on an error: stop the intakes too.
            intake_shutdown.cancel();
            result
        }
        () = shutdown.cancelled() => {
            intake_shutdown.cancel();
            while intakes.join_next().await.is_some() {}
            published.await
        }
    };
    while intakes.join_next().await.is_some() {}
    tracing::info!("gateway stopped");
    result
}
