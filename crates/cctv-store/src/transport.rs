//! The HTTP client under the ClickHouse client: plain HTTP for `http://`
//! URLs, HTTPS for `https://` ones, the server's certificate checked against
//! `clickhouse.tls_ca_file` (else the system's roots). An `https://` URL is
//! only ever reached over TLS: its connector refuses plain HTTP.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
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

/// Longest a connection may take to connect and finish its TLS handshake: a
/// plain-HTTP port answers a ClientHello with nothing and would hold the
/// client (a service at start) forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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
            .build(HandshakeTimeout(https)),
    ))
}

/// A connector that fails a connection not established (TCP and TLS) within
/// [`HANDSHAKE_TIMEOUT`], as a TLS error (`rustls::Error::General`), so it
/// is reported as one and never retried as if the server were down.
#[derive(Clone)]
struct HandshakeTimeout<C>(C);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<C> tower_service::Service<hyper::Uri> for HandshakeTimeout<C>
where
    C: tower_service::Service<hyper::Uri>,
    C::Error: Into<BoxError>,
    C::Future: Send + 'static,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: hyper::Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await {
                Ok(result) => result.map_err(Into::into),
                Err(_) => Err(Box::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    rustls::Error::General(format!(
                        "no TLS answer within {} s (is the port the server's https_port?)",
                        HANDSHAKE_TIMEOUT.as_secs()
                    )),
                )) as BoxError),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A port that accepts and never answers (what a plain-HTTP port does
    /// with a ClientHello lacking a line end): the request fails within the
    /// handshake timeout, as a TLS error, not as a server that is down.
    #[tokio::test]
    async fn a_silent_port_fails_the_handshake_in_time_as_tls() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let store = crate::Store::new(&ClickHouseConfig {
            url: format!("https://127.0.0.1:{port}"),
            ..ClickHouseConfig::default()
        })
        .unwrap();
        let started = std::time::Instant::now();
        let error = store.ping().await.unwrap_err();
        assert!(
            started.elapsed() < HANDSHAKE_TIMEOUT * 3,
            "{:?}",
            started.elapsed()
        );
        assert!(
            matches!(&error, StoreError::Tls { message, .. } if message.contains("no TLS answer")),
            "{error:?}"
        );
        assert!(!error.is_transient());
        silent.abort();
    }
}
