//! A minimal HTTP/1.1 endpoint for `/metrics` (Prometheus text) and
//! `/healthz`. Hand-written on purpose: two fixed routes do not justify a web
//! framework, and request sizes are capped.

use std::net::SocketAddr;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Health;

/// Largest request head read; anything longer is answered 431.
const MAX_REQUEST_BYTES: usize = 8 * 1024;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once and returns its handle
/// (`None` if another recorder was installed first).
pub fn install_metrics() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets(&[
                    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ])
                .ok()?
                .install_recorder()
                .ok()
        })
        .clone()
}

/// Binds `listen` and serves `/metrics` and `/healthz` until `shutdown`.
/// Returns the bound address (useful with port 0).
pub async fn serve(
    listen: SocketAddr,
    health: Health,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(listen).await?;
    let address = listener.local_addr()?;
    let handle = install_metrics();
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let Ok((stream, _)) = accepted else { continue };
            let handle = handle.clone();
            let health = health.clone();
            tokio::spawn(async move {
                let _ = answer(stream, handle.as_ref(), &health).await;
            });
        }
    });
    Ok(address)
}

async fn answer(
    mut stream: tokio::net::TcpStream,
    handle: Option<&PrometheusHandle>,
    health: &Health,
) -> std::io::Result<()> {
    let mut buffer = vec![0u8; MAX_REQUEST_BYTES];
    let mut filled = 0;
    // Read until the end of the request head, or give up when it is too long.
    let head_complete = loop {
        if filled == buffer.len() {
            break false;
        }
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            stream.read(&mut buffer[filled..]),
        )
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        if read == 0 {
            return Ok(());
        }
        filled += read;
        if buffer[..filled]
            .windows(4)
            .any(|window| window == b"\r\n\r\n")
        {
            break true;
        }
    };
    if !head_complete {
        return respond(
            &mut stream,
            "431 Request Header Fields Too Large",
            "text/plain",
            "",
        )
        .await;
    }
    let head = String::from_utf8_lossy(&buffer[..filled]);
    let mut parts = head.split_whitespace();
    let method = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("");
    if method != "GET" {
        return respond(&mut stream, "405 Method Not Allowed", "text/plain", "").await;
    }
    match path {
        "/metrics" => {
            let body = handle.map(PrometheusHandle::render).unwrap_or_default();
            respond(&mut stream, "200 OK", "text/plain; version=0.0.4", &body).await
        }
        "/healthz" => match health.problem() {
            None => respond(&mut stream, "200 OK", "text/plain", "ok\n").await,
            Some(reason) => {
                respond(
                    &mut stream,
                    "503 Service Unavailable",
                    "text/plain",
                    &format!("{reason}\n"),
                )
                .await
            }
        },
        _ => respond(&mut stream, "404 Not Found", "text/plain", "").await,
    }
}

async fn respond(
    stream: &mut tokio::net::TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(address: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn serves_metrics_and_health_and_refuses_the_rest() {
        let health = Health::starting();
        let shutdown = CancellationToken::new();
        let address = serve(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            health.clone(),
            shutdown.clone(),
        )
        .await
        .unwrap();
        metrics::counter!("cctv_runtime_test_total").increment(3);
        assert!(get(address, "/healthz").await.starts_with("HTTP/1.1 503"));
        health.set_ok();
        assert!(get(address, "/healthz").await.starts_with("HTTP/1.1 200"));
        let metrics = get(address, "/metrics").await;
        assert!(metrics.contains("cctv_runtime_test_total 3"), "{metrics}");
        assert!(get(address, "/nope").await.starts_with("HTTP/1.1 404"));
        shutdown.cancel();
    }
}
