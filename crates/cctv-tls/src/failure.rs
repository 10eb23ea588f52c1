//! What a failed TLS handshake rejected, in words, from any error whose
//! source chain holds the rustls error (async-nats and hyper wrap it in
//! `io::Error`s of their own).

use std::error::Error;

use rustls::{AlertDescription, CertificateError};

/// Says what was wrong when `error` (or an error in its source chain) is a
/// TLS handshake failure; `None` for any other error (a refused or reset
/// connection is not a TLS failure: it may pass by itself).
pub fn describe_failure(error: &(dyn Error + 'static)) -> Option<String> {
    let mut cause = Some(error);
    while let Some(current) = cause {
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return Some(describe(tls));
        }
        cause = next_cause(current);
    }
    None
}

/// The error `error` wraps. `io::Error::source` skips the error an
/// `io::Error` wraps (it returns that error's source), and hyper-rustls wraps
/// tokio-rustls' `io::Error` in another, so look inside instead.
fn next_cause<'a>(error: &'a (dyn Error + 'static)) -> Option<&'a (dyn Error + 'static)> {
    if let Some(wrapped) = error
        .downcast_ref::<std::io::Error>()
        .and_then(std::io::Error::get_ref)
    {
        return Some(wrapped);
    }
    error.source()
}

fn describe(error: &rustls::Error) -> String {
    match error {
        rustls::Error::InvalidCertificate(certificate) => {
            let what = match certificate {
                CertificateError::UnknownIssuer => {
                    "is not issued by the configured CA (unknown issuer)".to_string()
                }
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    format!("has expired ({error})")
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    format!("is not valid yet ({error})")
                }
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => {
                    format!("is not valid for the host name in the URL ({error})")
                }
                _ => format!("was rejected ({error})"),
            };
            format!("the server's TLS certificate {what}")
        }
        rustls::Error::AlertReceived(AlertDescription::CertificateRequired) => {
            "the server requires a client certificate and none is configured".to_string()
        }
        rustls::Error::AlertReceived(
            alert @ (AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateRevoked
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::AccessDenied),
        ) => format!("the server refused this client's TLS certificate (alert {alert:?})"),
        rustls::Error::InvalidMessage(_) => format!(
            "TLS handshake failed: the server did not answer in TLS, is it a plain-text port? ({error})"
        ),
        other => format!("TLS handshake failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rustls_error_is_found_through_io_errors_and_named() {
        let expired = rustls::Error::InvalidCertificate(CertificateError::Expired);
        let wrapped = std::io::Error::new(std::io::ErrorKind::InvalidData, expired);
        let described = describe_failure(&wrapped).unwrap_or_default();
        assert!(
            described.starts_with("the server's TLS certificate has expired"),
            "{described}"
        );
        let alert = rustls::Error::AlertReceived(AlertDescription::CertificateRequired);
        assert_eq!(
            describe_failure(&alert).as_deref(),
            Some("the server requires a client certificate and none is configured")
        );
        // hyper-rustls: an io::Error around tokio-rustls' io::Error around it.
        let unknown = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let twice = std::io::Error::other(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            unknown,
        ));
        let described = describe_failure(&twice).unwrap_or_default();
        assert!(
            described.contains("not issued by the configured CA"),
            "{described}"
        );
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(describe_failure(&refused), None);
    }
}
