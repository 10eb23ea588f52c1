//! Test certificates made with Debian's `openssl` at test time: a CA of the
//! test's own, server and client certificates issued by it, and on request an
//! expired one or one for another host name. Nothing is kept: the CA's
//! directory is removed when the [`TestCa`] is dropped.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::{
    process::{create_temp_dir, write_file},
    TestkitError,
};

/// The `openssl ca` configuration: any subject, extensions from the request
/// file, the same subject may be issued twice.
const CA_CONFIG: &str = "[ca]\ndefault_ca = test_ca\n\
[test_ca]\ndatabase = index.txt\nnew_certs_dir = .\nserial = serial\n\
default_md = sha256\npolicy = any_subject\nunique_subject = no\n\
[any_subject]\ncommonName = supplied\n";

/// A certificate and its private key, PEM files.
#[derive(Debug, Clone)]
pub struct CertificateFiles {
    /// The certificate.
    pub cert: PathBuf,
    /// Its private key (P-256).
    pub key: PathBuf,
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateUse {
    /// A server (extended key usage `serverAuth`).
    Server,
    /// A client (`clientAuth`).
    Client,
    /// Both (`serverAuth,clientAuth`): a NATS route, which dials and is dialled.
    ServerAndClient,
}

/// How long a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// From now for this many days.
    Days(u32),
    /// Valid on 1 January 2020 only: expired.
    Expired,
}

/// One certificate to issue.
#[derive(Debug, Clone)]
pub struct CertificateRequest<'a> {
    /// File stem of the certificate and key in the CA's directory.
    pub name: &'a str,
    /// Subject `CN`.
    pub common_name: &'a str,
    /// Subject alternative names in openssl syntax (`DNS:localhost`,
    /// `IP:127.0.0.1`).
    pub alt_names: &'a [&'a str],
    /// Server or client.
    pub usage: CertificateUse,
    /// Valid or expired.
    pub validity: Validity,
}

/// A certificate authority for one test, in a temp dir of its own.
#[derive(Debug)]
pub struct TestCa {
    dir: tempfile::TempDir,
}

impl TestCa {
    /// Creates a CA whose certificate has subject `CN=<common_name>`.
    pub fn new(common_name: &str) -> Result<TestCa, TestkitError> {
        let dir = create_temp_dir("tls")?;
        let ca = TestCa { dir };
        write_file(&ca.path("ca.cnf"), CA_CONFIG)?;
        write_file(&ca.path("index.txt"), "")?;
        write_file(&ca.path("serial"), "1000\n")?;
        ca.new_key("ca.key")?;
        ca.openssl(&[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-subj",
            &format!("/CN={common_name}"),
            "-days",
            "30",
            "-sha256",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
            "ca.pem",
        ])?;
        Ok(ca)
    }

    /// The CA certificate (PEM), what clients and servers are told to trust.
    pub fn ca_file(&self) -> PathBuf {
        self.path("ca.pem")
    }

    /// The directory holding every file of this CA.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A server certificate for `localhost` and `127.0.0.1`, valid 30 days.
    pub fn server_certificate(&self, name: &str) -> Result<CertificateFiles, TestkitError> {
        self.issue(&CertificateRequest {
            name,
            common_name: "localhost",
            alt_names: &["DNS:localhost", "IP:127.0.0.1"],
            usage: CertificateUse::Server,
            validity: Validity::Days(30),
        })
    }

    /// A client certificate with subject `CN=<user>` and SAN `DNS:<user>`
    /// (what nats-server's `verify_and_map` maps to the user `<user>`).
    pub fn client_certificate(&self, user: &str) -> Result<CertificateFiles, TestkitError> {
        self.issue(&CertificateRequest {
            name: user,
            common_name: user,
            alt_names: &[&format!("DNS:{user}")],
            usage: CertificateUse::Client,
            validity: Validity::Days(30),
        })
    }

    /// Issues `request`: a fresh key and a certificate signed by this CA.
    pub fn issue(
        &self,
        request: &CertificateRequest<'_>,
    ) -> Result<CertificateFiles, TestkitError> {
        let name = request.name;
        let files = CertificateFiles {
            cert: self.path(&format!("{name}.pem")),
            key: self.path(&format!("{name}.key")),
        };
        let usage = match request.usage {
            CertificateUse::Server => "serverAuth",
            CertificateUse::Client => "clientAuth",
            CertificateUse::ServerAndClient => "serverAuth,clientAuth",
        };
        let mut extensions = format!(
            "basicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage={usage}\n"
        );
        if !request.alt_names.is_empty() {
            extensions.push_str(&format!("subjectAltName={}\n", request.alt_names.join(",")));
        }
        let extensions_file = format!("{name}.ext");
        write_file(&self.path(&extensions_file), &extensions)?;
        let key_file = format!("{name}.key");
        let request_file = format!("{name}.csr");
        let cert_file = format!("{name}.pem");
        self.new_key(&key_file)?;
        self.openssl(&[
            "req",
            "-new",
            "-key",
            &key_file,
            "-subj",
            &format!("/CN={}", request.common_name),
            "-out",
            &request_file,
        ])?;
        let days;
        let mut args = vec![
            "ca",
            "-batch",
            "-notext",
            "-config",
            "ca.cnf",
            "-cert",
            "ca.pem",
            "-keyfile",
            "ca.key",
            "-in",
            &request_file,
            "-out",
            &cert_file,
            "-extfile",
            &extensions_file,
        ];
        match request.validity {
            Validity::Days(count) => {
                days = count.to_string();
                args.extend(["-days", &days]);
            }
            Validity::Expired => {
                args.extend([
                    "-startdate",
                    "20200101000000Z",
                    "-enddate",
                    "20200102000000Z",
                ]);
            }
        }
        self.openssl(&args)?;
        Ok(files)
    }

    /// A fresh P-256 private key in `file`.
    fn new_key(&self, file: &str) -> Result<(), TestkitError> {
        self.openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            file,
        ])
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `openssl args` in the CA's directory.
    fn openssl(&self, args: &[&str]) -> Result<(), TestkitError> {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .map_err(|source| TestkitError::io("run openssl (apt-get install openssl)", source))?;
        if output.status.success() {
            return Ok(());
        }
        Err(TestkitError::Tool {
            command: format!("openssl {}", args.join(" ")),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        })
    }
}

/// Copies `files` into `<dir>/tls/` under the given names.
pub(crate) fn copy_into(dir: &Path, files: &[(&Path, &str)]) -> Result<PathBuf, TestkitError> {
    let tls_dir = dir.join("tls");
    crate::process::create_dir(&tls_dir)?;
    for (source, name) in files {
        std::fs::copy(source, tls_dir.join(name)).map_err(|error| {
            TestkitError::io(
                format!("copy {} into {}", source.display(), tls_dir.display()),
                error,
            )
        })?;
    }
    Ok(tls_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn openssl_text(args: &[&str]) -> String {
        let output = Command::new("openssl")
            .args(args)
            .output()
            .unwrap_or_else(|error| panic!("openssl: {error}"));
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr)
    }

    #[test]
    fn issued_certificates_verify_against_the_ca_and_the_expired_one_does_not(
    ) -> Result<(), TestkitError> {
        let ca = TestCa::new("testkit CA")?;
        let server = ca.server_certificate("server")?;
        let client = ca.client_certificate("gw1")?;
        let expired = ca.issue(&CertificateRequest {
            name: "expired",
            common_name: "localhost",
            alt_names: &["DNS:localhost"],
            usage: CertificateUse::Server,
            validity: Validity::Expired,
        })?;
        let ca_file = ca.ca_file();
        let ca_arg = ca_file.to_string_lossy();
        for (files, expected) in [
            (&server, "OK"),
            (&client, "OK"),
            (&expired, "certificate has expired"),
        ] {
            let text = openssl_text(&["verify", "-CAfile", &ca_arg, &files.cert.to_string_lossy()]);
            assert!(text.contains(expected), "{}: {text}", files.cert.display());
        }
        let subject = openssl_text(&[
            "x509",
            "-noout",
            "-subject",
            "-ext",
            "subjectAltName",
            "-in",
            &client.cert.to_string_lossy(),
        ]);
        assert!(
            subject.contains("CN = gw1") && subject.contains("DNS:gw1"),
            "{subject}"
        );
        Ok(())
    }
}
