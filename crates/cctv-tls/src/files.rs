//! The configured CA, client certificate and key, read into a rustls client
//! configuration. Every file is read once, here, so a wrong path or a file
//! of the wrong kind fails at start with the setting and path named.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use crate::TlsError;

/// The files of a client certificate for mutual TLS.
#[derive(Debug, Clone, Copy)]
pub struct ClientIdentity<'a> {
    /// PEM certificate chain, the client's own certificate first.
    pub cert_file: &'a Path,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of that certificate.
    pub key_file: &'a Path,
}

/// Builds a client configuration that trusts only the certificates of
/// `ca_file` (PEM, one or more), or the system's roots without one, and
/// presents `identity` when given. `section` names the settings in errors
/// (`nats` gives `nats.tls_ca_file`).
pub fn client_config(
    section: &str,
    ca_file: Option<&Path>,
    identity: Option<ClientIdentity<'_>>,
) -> Result<ClientConfig, TlsError> {
    let roots = match ca_file {
        Some(path) => configured_roots(&format!("{section}.tls_ca_file"), path)?,
        None => system_roots()?,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| TlsError::Invalid {
            setting: section.to_string(),
            path: Default::default(),
            problem: format!("TLS versions refused by the crypto provider: {error}"),
        })?
        .with_root_certificates(roots);
    let Some(identity) = identity else {
        return Ok(builder.with_no_client_auth());
    };
    let cert_setting = format!("{section}.tls_cert_file");
    let chain = certificates(&cert_setting, identity.cert_file)?;
    let key_setting = format!("{section}.tls_key_file");
    let key_pem = read(&key_setting, identity.key_file)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|error| TlsError::Invalid {
        setting: key_setting,
        path: identity.key_file.to_path_buf(),
        problem: format!("holds no PEM private key ({error})"),
    })?;
    builder
        .with_client_auth_cert(chain, key)
        .map_err(|error| TlsError::Invalid {
            setting: cert_setting,
            path: identity.cert_file.to_path_buf(),
            problem: format!(
                "does not go with the key {}: {error}",
                identity.key_file.display()
            ),
        })
}

/// The certificates of a CA file as trust anchors.
fn configured_roots(setting: &str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for (index, certificate) in certificates(setting, path)?.into_iter().enumerate() {
        roots.add(certificate).map_err(|error| TlsError::Invalid {
            setting: setting.to_string(),
            path: path.to_path_buf(),
            problem: format!("certificate {} is not a usable CA: {error}", index + 1),
        })?;
    }
    Ok(roots)
}

/// The system's trusted roots (the OS store, `SSL_CERT_FILE`, `SSL_CERT_DIR`).
fn system_roots() -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
        return Err(TlsError::SystemRoots(if errors.is_empty() {
            "none found".into()
        } else {
            errors.join("; ")
        }));
    }
    Ok(roots)
}

/// Every PEM certificate of `path`; at least one.
fn certificates(setting: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(setting, path)?;
    let invalid = |problem: String| TlsError::Invalid {
        setting: setting.to_string(),
        path: path.to_path_buf(),
        problem,
    };
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| invalid(format!("is not a PEM certificate file ({error})")))?;
    if chain.is_empty() {
        return Err(invalid("holds no PEM certificate".into()));
    }
    Ok(chain)
}

fn read(setting: &str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        setting: setting.to_string(),
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap_or_else(|error| panic!("write {name}: {error}"));
        path
    }

    #[test]
    fn each_unusable_file_names_its_setting_and_path() {
        let dir = tempfile::tempdir().unwrap_or_else(|error| panic!("{error}"));
        let missing = dir.path().join("missing.pem");
        let message = client_config("nats", Some(&missing), None)
            .err()
            .map(|error| error.to_string());
        assert_eq!(
            message,
            Some(format!(
                "cannot read nats.tls_ca_file {}: No such file or directory (os error 2)",
                missing.display()
            ))
        );
        let empty = write(dir.path(), "empty.pem", "not a certificate\n");
        let message = client_config("clickhouse", Some(&empty), None)
            .err()
            .map(|error| error.to_string())
            .unwrap_or_default();
        assert!(
            message.starts_with("clickhouse.tls_ca_file ")
                && message.ends_with("holds no PEM certificate"),
            "{message}"
        );
        let garbage = write(
            dir.path(),
            "garbage.pem",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        );
        let message = client_config("nats", Some(&garbage), None)
            .err()
            .map(|error| error.to_string())
            .unwrap_or_default();
        assert!(message.contains("is not a usable CA"), "{message}");
        assert!(!TlsError::SystemRoots(String::new()).is_transient());
    }
}
