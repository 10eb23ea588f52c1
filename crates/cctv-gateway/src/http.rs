//! The HTTP intake: cameras push to `POST /<format>/<device id>` (HTTPS when
//! a certificate is configured); the answer is 200 only once every message
//! of the push is durable in the spool.
//!
//! | answer | when |
//! | --- | --- |
//! | 200 | the messages are in the spool |
//! | 400 | empty body, broken multipart, no alert part |
//! | 401 | unknown device, missing or wrong credential (`WWW-Authenticate` for basic) |
//! | 404 | a path that is not `/<format>/<device>`, or the device's format differs |
//! | 405 | not a POST |
//! | 413 | a message over `max_message_bytes`, a request over `max_request_bytes` |
//! | 503 | the spool is full (`Retry-After`); nothing was stored |
//! | 500 | the spool cannot be written |
//!
//! Every refusal is counted in `cctv_gateway_refused_total{source="http",reason}`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cctv_normalize::Format;
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::auth::{self, AuthFailure, AuthKind, Credential};
use crate::intake::{self, IntakeError};
use crate::metrics as names;
use crate::record::Message;
use crate::spool::Spool;
use crate::{ids, GatewayError};

/// Time allowed for a TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Seconds a device is told to wait before retrying when the spool is full.
const RETRY_AFTER_SECONDS: &str = "5";

/// What every request handler shares.
pub(crate) struct Intake {
    /// This gateway's id.
    pub(crate) gateway_id: String,
    /// Devices by id.
    pub(crate) credentials: HashMap<String, Credential>,
    /// Where accepted messages go.
    pub(crate) spool: Spool,
    /// Largest message passed on.
    pub(crate) max_message_bytes: usize,
    /// Largest request body.
    pub(crate) max_request_bytes: usize,
}

/// Loads the certificate chain and key of the listener.
pub(crate) fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, GatewayError> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let failed = |message: String| GatewayError::Listen {
        what: "HTTPS",
        message,
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| failed(format!("certificate {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(failed(format!("{} holds no certificate", cert.display())));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| failed(format!("key {}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| failed(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| failed(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves pushes on `listener` until `shutdown`: stops accepting, lets the
/// requests in progress finish.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    intake: Arc<Intake>,
    max_connections: usize,
    header_timeout: Duration,
    shutdown: CancellationToken,
) {
    let connections = Arc::new(Semaphore::new(max_connections));
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            permit = connections.clone().acquire_owned() => permit,
        };
        let Ok(permit) = permit else { break };
        let accepted = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let intake = intake.clone();
        let tls = tls.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let _permit = permit;
            match tls {
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
                    match handshake {
                        Ok(Ok(stream)) => {
                            serve_connection(
                                TokioIo::new(stream),
                                intake,
                                header_timeout,
                                shutdown,
                            )
                            .await;
                        }
                        Ok(Err(error)) => tracing::debug!(%error, %peer, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
                None => {
                    serve_connection(TokioIo::new(stream), intake, header_timeout, shutdown).await;
                }
            }
        });
        // Reap finished connections so the set does not grow.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

async fn serve_connection<I>(
    io: TokioIo<I>,
    intake: Arc<Intake>,
    header_timeout: Duration,
    shutdown: CancellationToken,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        let intake = intake.clone();
        async move { Ok::<_, Infallible>(handle(&intake, request).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(io, service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%error, "HTTP connection ended with an error");
            }
        }
        () = shutdown.cancelled() => {
            // Finish the request in progress, take no other.
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// Answers one request.
async fn handle(intake: &Intake, request: Request<Incoming>) -> Response<Full<Bytes>> {
    match accept(intake, request).await {
        Ok(messages) => {
            let mut response = text(StatusCode::OK, "ok\n");
            response
                .headers_mut()
                .insert("x-cctv-messages", HeaderValue::from(messages));
            response
        }
        Err(refusal) => {
            metrics::counter!(names::REFUSED, "source" => "http", "reason" => refusal.reason())
                .increment(1);
            refusal.response()
        }
    }
}

/// Why a push was refused.
#[derive(Debug)]
enum Refusal {
    MethodNotAllowed,
    NotFound,
    Unauthorized { basic: bool },
    TooLarge(String),
    BadRequest(String),
    SpoolFull,
    SpoolError,
}

impl Refusal {
    fn reason(&self) -> &'static str {
        match self {
            Refusal::MethodNotAllowed => "method_not_allowed",
            Refusal::NotFound => "not_found",
            Refusal::Unauthorized { .. } => "unauthorized",
            Refusal::TooLarge(_) => "too_large",
            Refusal::BadRequest(_) => "bad_request",
            Refusal::SpoolFull => "spool_full",
            Refusal::SpoolError => "spool_error",
        }
    }

    fn response(self) -> Response<Full<Bytes>> {
        match self {
            Refusal::MethodNotAllowed => text(StatusCode::METHOD_NOT_ALLOWED, "POST only\n"),
            Refusal::NotFound => text(StatusCode::NOT_FOUND, "POST to /<format>/<device id>\n"),
            Refusal::Unauthorized { basic } => {
                let mut response = text(StatusCode::UNAUTHORIZED, "unauthorized\n");
                if basic {
                    response.headers_mut().insert(
                        WWW_AUTHENTICATE,
                        HeaderValue::from_static("Basic realm=\"cctv-gateway\""),
                    );
                }
                response
            }
            Refusal::TooLarge(why) => text(StatusCode::PAYLOAD_TOO_LARGE, &format!("{why}\n")),
            Refusal::BadRequest(why) => text(StatusCode::BAD_REQUEST, &format!("{why}\n")),
            Refusal::SpoolFull => {
                let mut response =
                    text(StatusCode::SERVICE_UNAVAILABLE, "spool full; retry later\n");
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECONDS));
                response
            }
            Refusal::SpoolError => text(StatusCode::INTERNAL_SERVER_ERROR, "cannot store\n"),
        }
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::copy_from_slice(body.as_bytes())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// Checks, reads and stores one push; the number of messages stored.
async fn accept(intake: &Intake, request: Request<Incoming>) -> Result<usize, Refusal> {
    if request.method() != Method::POST {
        return Err(Refusal::MethodNotAllowed);
    }
    let path = request.uri().path().trim_matches('/').to_string();
    let Some((format_token, device_id)) = path.split_once('/') else {
        return Err(Refusal::NotFound);
    };
    let Some(format) = Format::parse(format_token) else {
        return Err(Refusal::NotFound);
    };
    let Some(credential) = intake.credentials.get(device_id) else {
        // An unknown device is told no more than a wrong password.
        return Err(Refusal::Unauthorized { basic: true });
    };
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    if let Err(failure) = auth::check(
        credential,
        presented,
        auth::query_token(request.uri().query()),
    ) {
        if failure == AuthFailure::Wrong {
            tracing::warn!(device = device_id, "push with a wrong credential");
        }
        return Err(Refusal::Unauthorized {
            basic: credential.kind == AuthKind::Basic,
        });
    }
    if credential.format != format {
        return Err(Refusal::NotFound);
    }
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > intake.max_request_bytes as u64) {
        return Err(Refusal::TooLarge(format!(
            "request over {} bytes",
            intake.max_request_bytes
        )));
    }
    let content_type = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
    let body = Limited::new(request.into_body(), intake.max_request_bytes)
        .collect()
        .await
        .map_err(|error| {
            if error.downcast_ref::<LengthLimitError>().is_some() {
                Refusal::TooLarge(format!("request over {} bytes", intake.max_request_bytes))
            } else {
                Refusal::BadRequest(format!("cannot read the body: {error}"))
            }
        })?
        .to_bytes();
    let received_at_ms = chrono::Utc::now().timestamp_millis();
    let extracted = intake::extract(content_type.as_deref(), &body, intake.max_message_bytes)
        .map_err(|error| match error {
            IntakeError::TooLarge { bytes, limit } => {
                Refusal::TooLarge(format!("message of {bytes} bytes over {limit}"))
            }
            IntakeError::Malformed(why) => Refusal::BadRequest(why),
        })?;
    let attachments = intake::attachments_text(&extracted.attachments);
    if let Some(names) = &attachments {
        let bytes: usize = extracted.attachments.iter().map(|a| a.bytes).sum();
        tracing::info!(device = device_id, attachments = %names, bytes, "pictures left out of NATS");
        metrics::counter!(names::ATTACHMENTS).increment(extracted.attachments.len() as u64);
        metrics::counter!(names::ATTACHMENT_BYTES).increment(bytes as u64);
    }
    let device = format!("http:{device_id}");
    let messages: Vec<Message> = extracted
        .messages
        .iter()
        .map(|body| Message {
            format,
            id: ids::message_id(&intake.gateway_id, &device, format.as_str(), body),
            received_at_ms,
            camera_id: credential.camera_id.clone(),
            attachments: attachments.clone(),
            body: body.to_vec(),
        })
        .collect();
    match intake.spool.append(&messages).await {
        Ok(()) => {
            metrics::counter!(names::RECEIVED, "source" => "http", "format" => format.as_str())
                .increment(messages.len() as u64);
            Ok(messages.len())
        }
        Err(GatewayError::SpoolFull { .. }) => Err(Refusal::SpoolFull),
        Err(error) => {
            tracing::error!(%error, "cannot store a push");
            Err(Refusal::SpoolError)
        }
    }
}

/// Binds the listener (before anything is announced as ready).
pub(crate) async fn bind(listen: SocketAddr) -> Result<TcpListener, GatewayError> {
    TcpListener::bind(listen)
        .await
        .map_err(|e| GatewayError::Listen {
            what: "HTTP",
            message: format!("{listen}: {e}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AuthKind;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    const ALERT: &[u8] =
        include_bytes!("../../cctv-normalize/fixtures/hikvision/anpr_seatbelt.xml");

    /// A self-signed certificate for 127.0.0.1 in `dir`: (cert path, key path, DER).
    fn certificate(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
        let generated = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let cert_path = dir.join("cert.pem");
        let key_path = dir.join("key.pem");
        std::fs::write(&cert_path, generated.cert.pem()).unwrap();
        std::fs::write(&key_path, generated.signing_key.serialize_pem()).unwrap();
        (cert_path, key_path, generated.cert.der().to_vec())
    }

    async fn start(
        dir: &Path,
        tls: Option<TlsAcceptor>,
    ) -> (SocketAddr, crate::spool::SpoolReader, CancellationToken) {
        let (spool, reader, _) = Spool::open(&dir.join("spool"), 1 << 20, 1 << 16).unwrap();
        let credentials = HashMap::from([(
            "cam1".to_string(),
            Credential {
                kind: AuthKind::Token,
                user: "cam1".into(),
                secret: "t0ken".into(),
                format: Format::Hikvision,
                camera_id: Some("AST-0412".into()),
            },
        )]);
        let intake = Arc::new(Intake {
            gateway_id: "gw1".into(),
            credentials,
            spool,
            max_message_bytes: 64 * 1024,
            max_request_bytes: 128 * 1024,
        });
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
        let address = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        tokio::spawn(serve(
            listener,
            tls,
            intake,
            4,
            Duration::from_secs(5),
            shutdown.clone(),
        ));
        (address, reader, shutdown)
    }

    fn request(path: &str, token: Option<&str>, body: &[u8]) -> Vec<u8> {
        let mut head = format!(
            "POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/xml\r\n\
             Content-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        if let Some(token) = token {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body);
        bytes
    }

    async fn exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
        mut stream: S,
        request: &[u8],
    ) -> String {
        stream.write_all(request).await.unwrap();
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response).await;
        String::from_utf8_lossy(&response).into_owned()
    }

    #[tokio::test]
    async fn pushes_are_answered_by_status_and_only_the_accepted_reach_the_spool() {
        let dir = tempfile::tempdir().unwrap();
        let (address, mut reader, shutdown) = start(dir.path(), None).await;
        let post = |path: &'static str, token: Option<&'static str>, body: Vec<u8>| async move {
            let stream = tokio::net::TcpStream::connect(address).await.unwrap();
            exchange(stream, &request(path, token, &body)).await
        };
        let cases = [
            ("/hikvision/cam1", Some("t0ken"), ALERT.to_vec(), "200"),
            ("/hikvision/cam1", Some("wrong"), ALERT.to_vec(), "401"),
            ("/hikvision/cam1", None, ALERT.to_vec(), "401"),
            ("/hikvision/nobody", Some("t0ken"), ALERT.to_vec(), "401"),
            ("/dahua/cam1", Some("t0ken"), ALERT.to_vec(), "404"),
            ("/cam1", Some("t0ken"), ALERT.to_vec(), "404"),
            (
                "/hikvision/cam1",
                Some("t0ken"),
                vec![b'x'; 70 * 1024],
                "413",
            ),
            (
                "/hikvision/cam1",
                Some("t0ken"),
                vec![b'x'; 200 * 1024],
                "413",
            ),
            ("/hikvision/cam1", Some("t0ken"), Vec::new(), "400"),
        ];
        for (path, token, body, status) in cases {
            let response = post(path, token, body).await;
            assert!(
                response.starts_with(&format!("HTTP/1.1 {status}")),
                "{path} {token:?}: {response}"
            );
        }
        let stored = reader.read(100, u64::MAX);
        assert_eq!(stored.len(), 1, "only the accepted push is spooled");
        let message = &stored[0].message;
        assert_eq!(message.body, ALERT);
        assert_eq!(message.format, Format::Hikvision);
        assert_eq!(message.camera_id.as_deref(), Some("AST-0412"));
        assert_eq!(
            message.id,
            ids::message_id("gw1", "http:cam1", "hikvision", ALERT)
        );
        shutdown.cancel();
    }

    #[tokio::test]
    async fn an_https_push_is_accepted_with_the_configured_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, der) = certificate(dir.path());
        let acceptor = tls_acceptor(&cert, &key).unwrap();
        let (address, mut reader, shutdown) = start(dir.path(), Some(acceptor)).await;

        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from(der))
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client_config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
        let server_name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
        let tls = connector.connect(server_name, tcp).await.unwrap();
        let response = exchange(tls, &request("/hikvision/cam1", Some("t0ken"), ALERT)).await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert_eq!(reader.read(10, u64::MAX).len(), 1);

        // Plain HTTP to the HTTPS listener gets no answer.
        let plain = tokio::net::TcpStream::connect(address).await.unwrap();
        let response = exchange(plain, &request("/hikvision/cam1", Some("t0ken"), ALERT)).await;
        assert!(!response.contains("200"), "{response}");
        shutdown.cancel();
    }
}
