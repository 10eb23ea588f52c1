//! The HTTP client under the ClickHouse client: plain HTTP for `http://`
//! URLs, HTTPS for `https://` ones, the server's certificate checked against
//! `clickhouse.tls_ca_file` (else the system's roots). An `https://` URL is
//! only ever reached over TLS: its connector refuses plain HTTP.

use std::time::Duration;

use clickhouse::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;

use crate::{ClickHouseConfig, StoreError};

/// TCP keepalive of the connections (what the `clickhouse` crate sets).
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// Idle connections are closed before ClickHouse's own keep-alive timeout
/// (3 s on 18.16) closes them under a request.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(2);

/// A `clickhouse` client for `url` with the transport its scheme needs.
pub(crate) fn client_for(config: &ClickHouseConfig, url: &str) -> Result<Client, StoreError> {
    let mut connector = HttpConnector::new();
    connector.set_keepalive(Some(TCP_KEEPALIVE));
    if !url.starts_with("https://") {
        return Ok(Client::with_http_client(
            HyperClient::builder(TokioExecutor::new())
                .pool_idle_timeout(POOL_IDLE_TIMEOUT)
                .build(connector),
        ));
    }
    // The TLS connector gets the socket; it must not insist on `http://`.
    connector.enforce_http(false);
    let tls = cctv_tls::client_config("clickhouse", config.tls_ca_file.as_deref(), None)
        .map_err(|error| StoreError::Settings(error.to_string()))?;
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(connector);
    Ok(Client::with_http_client(
        HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(https),
    ))
}
