//! A real `nats-server` with JetStream on a free port and a temp store directory.

use std::{
    ffi::OsString,
    io::{BufRead, BufReader},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    sync::OnceLock,
    time::{Duration, Instant},
};

use crate::{
    nats_binary::nats_server_binary,
    ports::{free_port, wait_until_port_free},
    process::{create_dir, create_temp_dir, write_file, ProcessSpec, ServerProcess},
    tls::{copy_into, CertificateFiles},
    TestkitError,
};

/// Server name used in errors.
const NATS_BINARY: &str = "nats-server";

/// The binary [`nats_server_binary`] resolved first, so that each start does not
/// run `nats-server --version` again. A failed resolution is not kept: the next
/// start tries (and reports) again.
static RESOLVED_BINARY: OnceLock<PathBuf> = OnceLock::new();

/// How long start-up may take before [`TestkitError::NotReady`].
const NATS_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long `restart` waits for the old port to become free and rebinds it.
const RESTART_PORT_TIMEOUT: Duration = Duration::from_secs(10);

/// How many times `start` tries fresh ports when a port was taken meanwhile.
const START_ATTEMPTS: u32 = 3;

/// A running `nats-server` with JetStream (file storage in a temp dir).
///
/// Dropping it kills the process and removes the directory.
#[derive(Debug)]
pub struct NatsServer {
    // Declared before `temp_dir` so the process is killed before its directory is
    // removed (fields drop in declaration order).
    process: ServerProcess,
    port: u16,
    temp_dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts a server with JetStream on a free port and waits until it answers.
    pub fn start() -> Result<NatsServer, TestkitError> {
        Self::start_with_config("")
    }

    /// Like [`NatsServer::start`], appending `extra_config` (nats config syntax, e.g.
    /// an `authorization { .. }` block) to the generated config, which sets the
    /// listen address, JetStream store dir, limits and `max_payload`.
    pub fn start_with_config(extra_config: &str) -> Result<NatsServer, TestkitError> {
        Self::start_with_config_and_env(extra_config, &[])
    }

    /// Like [`NatsServer::start_with_config`], with `env` added to the server's
    /// environment (kept across restarts), so a config can read secrets as
    /// `$VARIABLE` the way a deployed server does.
    pub fn start_with_config_and_env(
        extra_config: &str,
        env: &[(&str, &str)],
    ) -> Result<NatsServer, TestkitError> {
        Self::start_configured(None, None, extra_config, env)
    }

    /// Like [`NatsServer::start`], with `jetstream_lines` in the
    /// `jetstream { .. }` block instead of [`NATS_JETSTREAM_ENV`]'s, e.g.
    /// `sync_interval: always`.
    pub fn start_with_jetstream(jetstream_lines: &str) -> Result<NatsServer, TestkitError> {
        Self::start_configured(None, Some(jetstream_lines), "", &[])
    }

    /// Like [`NatsServer::start_with_config_and_env`], with TLS on the client
    /// port: the certificate, key and CA of `tls` are copied into the
    /// server's temp dir and a `tls { .. }` block names them. The URL stays
    /// `nats://127.0.0.1:<port>` (the server sends its INFO in plain text,
    /// then the client upgrades), so certificates must name `127.0.0.1`.
    pub fn start_with_tls(
        tls: &NatsTls<'_>,
        extra_config: &str,
        env: &[(&str, &str)],
    ) -> Result<NatsServer, TestkitError> {
        Self::start_configured(Some(tls), None, extra_config, env)
    }

    /// `jetstream_lines`: see [`nats_config`].
    fn start_configured(
        tls: Option<&NatsTls<'_>>,
        jetstream_lines: Option<&str>,
        extra_config: &str,
        env: &[(&str, &str)],
    ) -> Result<NatsServer, TestkitError> {
        let binary = resolved_binary()?;
        let envs: Vec<(OsString, OsString)> = env
            .iter()
            .map(|(name, value)| (OsString::from(name), OsString::from(value)))
            .collect();
        let mut attempt = 1;
        loop {
            match Self::start_once(&binary, tls, jetstream_lines, extra_config, &envs) {
                Err(error) if error.is_port_conflict() && attempt < START_ATTEMPTS => {
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    /// One start attempt with a fresh port and directory.
    fn start_once(
        binary: &Path,
        tls: Option<&NatsTls<'_>>,
        jetstream_lines: Option<&str>,
        extra_config: &str,
        envs: &[(OsString, OsString)],
    ) -> Result<NatsServer, TestkitError> {
        let port = free_port()?;
        let (files, tls_block) = match tls {
            Some(tls) => (tls.files(), tls.block()),
            None => (Vec::new(), String::new()),
        };
        let extra = format!("{tls_block}{extra_config}");
        Self::start_node(binary, port, envs, &files, |store_dir| {
            nats_config(port, store_dir, jetstream_lines, &extra)
        })
    }

    /// Starts a server on `port` with the config `config(store_dir)` in a
    /// fresh temp dir, and waits until it answers.
    /// `files` are copied into `<temp dir>/tls/` first (the server's working
    /// directory is its temp dir, so the config names them `tls/<name>`).
    fn start_node(
        binary: &Path,
        port: u16,
        envs: &[(OsString, OsString)],
        files: &[(&Path, &str)],
        config: impl FnOnce(&Path) -> String,
    ) -> Result<NatsServer, TestkitError> {
        let temp_dir = create_temp_dir("nats")?;
        let dir = temp_dir.path().to_path_buf();
        if !files.is_empty() {
            copy_into(&dir, files)?;
        }
        let store_dir = dir.join("js");
        create_dir(&store_dir)?;
        let config_path = dir.join("nats.conf");
        write_file(&config_path, &config(&store_dir))?;
        let spec = ProcessSpec {
            server_name: NATS_BINARY,
            binary: binary.to_path_buf(),
            args: vec![OsString::from("-c"), config_path.into_os_string()],
            dir,
            extra_log_paths: Vec::new(),
            envs: envs.to_vec(),
        };
        Ok(NatsServer {
            process: ServerProcess::start(spec, NATS_READY_TIMEOUT, || sends_info(port))?,
            port,
            temp_dir,
        })
    }

    /// The client URL, `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The temp directory holding config, logs and the JetStream store.
    pub fn temp_dir(&self) -> &Path {
        self.temp_dir.path()
    }

    /// Sends SIGTERM and waits for exit (SIGKILL after 10 s); keeps the store.
    pub fn stop(&mut self) {
        self.process.stop();
    }

    /// Sends SIGKILL, simulating a crash; keeps the store.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts the server again on the same port with the same store, so file-backed
    /// streams survive, and waits until it answers. Stops it first if it runs.
    pub fn restart(&mut self) -> Result<(), TestkitError> {
        self.process.stop();
        let deadline = Instant::now() + RESTART_PORT_TIMEOUT;
        let port = self.port;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            wait_until_port_free(port, remaining)?;
            self.process.spawn()?;
            match self
                .process
                .wait_ready(NATS_READY_TIMEOUT, || sends_info(port))
            {
                Ok(()) => return Ok(()),
                // Someone grabbed the port between our check and the bind: retry.
                Err(error) if error.is_port_conflict() && Instant::now() < deadline => {}
                Err(error) => {
                    self.process.kill();
                    return Err(error);
                }
            }
        }
    }

    /// Whether the process is alive.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// The process id while a process is held.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// The last lines of the server's stdout and stderr, for assertion messages.
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }
}

/// [`nats_server_binary`], resolved once per process.
fn resolved_binary() -> Result<PathBuf, TestkitError> {
    if let Some(binary) = RESOLVED_BINARY.get() {
        return Ok(binary.clone());
    }
    let binary = nats_server_binary()?;
    Ok(RESOLVED_BINARY.get_or_init(|| binary).clone())
}

/// A cluster of `nats-server`s with JetStream on 127.0.0.1: every node routes
/// to every other, so streams with 3 replicas and the meta leader survive
/// the loss of one node.
///
/// Dropping it kills every node and removes their directories.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `size` nodes (cluster `cctv`, server names `n1`, `n2`, ...),
    /// each with `extra_config` appended to its config, and waits until each
    /// answers. JetStream elects its meta leader a moment later: callers
    /// retry their first JetStream request (as the services do).
    pub fn start(size: usize, extra_config: &str) -> Result<NatsCluster, TestkitError> {
        Self::start_with_route_tls(size, extra_config, None)
    }

    /// Like [`NatsCluster::start`], the routes between the nodes in mutual
    /// TLS when `route_certificate` is given: every node presents it and
    /// accepts only routes whose certificate `ca_file` issued (a
    /// `tls { .. verify: true }` block inside `cluster { .. }`). The
    /// certificate must name `127.0.0.1` and be usable as server and client.
    pub fn start_with_route_tls(
        size: usize,
        extra_config: &str,
        route_tls: Option<(&CertificateFiles, &Path)>,
    ) -> Result<NatsCluster, TestkitError> {
        let binary = resolved_binary()?;
        let mut attempt = 1;
        loop {
            match Self::start_once(&binary, size, extra_config, route_tls) {
                Err(error) if error.is_port_conflict() && attempt < START_ATTEMPTS => {
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    fn start_once(
        binary: &Path,
        size: usize,
        extra_config: &str,
        route_tls: Option<(&CertificateFiles, &Path)>,
    ) -> Result<NatsCluster, TestkitError> {
        let (files, route_tls_block) = match route_tls {
            Some((certificate, ca_file)) => (
                vec![
                    (certificate.cert.as_path(), "route.pem"),
                    (certificate.key.as_path(), "route.key"),
                    (ca_file, "route-ca.pem"),
                ],
                "  tls {\n    cert_file: \"tls/route.pem\"\n    key_file: \"tls/route.key\"\n    \
                 ca_file: \"tls/route-ca.pem\"\n    verify: true\n    timeout: 5\n  }\n",
            ),
            None => (Vec::new(), ""),
        };
        let client_ports = (0..size)
            .map(|_| free_port())
            .collect::<Result<Vec<_>, _>>()?;
        let route_ports = (0..size)
            .map(|_| free_port())
            .collect::<Result<Vec<_>, _>>()?;
        let mut nodes = Vec::with_capacity(size);
        for (index, port) in client_ports.iter().enumerate() {
            let routes: Vec<String> = route_ports
                .iter()
                .enumerate()
                .filter(|(other, _)| *other != index)
                .map(|(_, route)| format!("nats://127.0.0.1:{route}"))
                .collect();
            let cluster = format!(
                "server_name: n{}\ncluster {{\n  name: cctv\n  listen: 127.0.0.1:{}\n  routes: [{}]\n{route_tls_block}}}\n{extra_config}",
                index + 1,
                route_ports[index],
                routes.join(", ")
            );
            nodes.push(NatsServer::start_node(
                binary,
                *port,
                &[],
                &files,
                |store_dir| nats_config(*port, store_dir, None, &cluster),
            )?);
        }
        Ok(NatsCluster { nodes })
    }

    /// Every node's client URL, comma-separated (what `CCTV_NATS_URL` takes).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Node `index` (from 0), to kill, stop or restart it.
    pub fn node_mut(&mut self, index: usize) -> Option<&mut NatsServer> {
        self.nodes.get_mut(index)
    }

    /// The nodes.
    pub fn nodes(&self) -> &[NatsServer] {
        &self.nodes
    }
}

/// TLS on a server's client port.
#[derive(Debug, Clone, Copy)]
pub struct NatsTls<'a> {
    /// The server's certificate and key.
    pub certificate: &'a CertificateFiles,
    /// The CA that client certificates must be issued by (needed unless
    /// `client_certificates` is [`ClientCertificates::NotRequested`]).
    pub ca_file: Option<&'a Path>,
    /// Whether clients must present a certificate.
    pub client_certificates: ClientCertificates,
}

/// What the server asks of clients' certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCertificates {
    /// None asked for: TLS encrypts and the server proves who it is.
    NotRequested,
    /// Required and checked against the CA (`verify: true`); users still
    /// authenticate as configured (passwords, nkeys, ...).
    Required,
    /// Required, checked, and the certificate is the credential
    /// (`verify_and_map: true`): its SAN or subject names the user, which
    /// then has no password.
    RequiredAndMapped,
}

impl NatsTls<'_> {
    /// The files to copy into the server's `tls/` directory.
    fn files(&self) -> Vec<(&Path, &'static str)> {
        let mut files = vec![
            (self.certificate.cert.as_path(), "server.pem"),
            (self.certificate.key.as_path(), "server.key"),
        ];
        if let Some(ca_file) = self.ca_file {
            files.push((ca_file, "ca.pem"));
        }
        files
    }

    /// The `tls { .. }` block naming the copied files.
    fn block(&self) -> String {
        let mut block = String::from(
            "tls {\n  cert_file: \"tls/server.pem\"\n  key_file: \"tls/server.key\"\n",
        );
        if self.ca_file.is_some() {
            block.push_str("  ca_file: \"tls/ca.pem\"\n");
        }
        match self.client_certificates {
            ClientCertificates::NotRequested => {}
            ClientCertificates::Required => block.push_str("  verify: true\n"),
            ClientCertificates::RequiredAndMapped => block.push_str("  verify_and_map: true\n"),
        }
        block.push_str("  timeout: 5\n}\n");
        block
    }
}

/// Lines added to the `jetstream { .. }` block of every server the testkit
/// starts, e.g. `sync_interval: always` to run tests or a bench with every
/// write fsynced (a second `jetstream` block in `extra_config` would replace
/// the first, store dir and all).
pub const NATS_JETSTREAM_ENV: &str = "CCTV_TESTKIT_NATS_JETSTREAM";

/// The generated config file; `extra_config` comes last so it may add
/// blocks. `jetstream_lines` go into the `jetstream` block; without them,
/// [`NATS_JETSTREAM_ENV`]'s do.
fn nats_config(
    port: u16,
    store_dir: &Path,
    jetstream_lines: Option<&str>,
    extra_config: &str,
) -> String {
    let from_env = std::env::var(NATS_JETSTREAM_ENV).unwrap_or_default();
    nats_config_with(
        port,
        store_dir,
        jetstream_lines.unwrap_or(&from_env),
        extra_config,
    )
}

/// [`nats_config`] with the extra JetStream lines given.
fn nats_config_with(
    port: u16,
    store_dir: &Path,
    jetstream_extra: &str,
    extra_config: &str,
) -> String {
    format!(
        "listen: 127.0.0.1:{port}\n\
         max_payload: 8MB\n\
         jetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 256MB\n  max_file_store: 4GB\n  {jetstream_extra}\n}}\n\
         {extra_config}\n",
        store_dir.display()
    )
}

/// Whether a connection to `port` receives the `INFO {` greeting NATS sends first.
fn sends_info(port: u16) -> bool {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(stream) = TcpStream::connect_timeout(&address, Duration::from_secs(1)) else {
        return false;
    };
    if stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .is_err()
    {
        return false;
    }
    let mut first_line = String::new();
    match BufReader::new(stream).read_line(&mut first_line) {
        Ok(_) => first_line.starts_with("INFO {"),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nats_binary::nats_server_version;

    #[test]
    fn config_contains_port_store_and_extra() {
        let config = nats_config(
            4222,
            Path::new("/tmp/x/js"),
            None,
            "authorization { token: s3cret }",
        );
        assert!(config.contains("listen: 127.0.0.1:4222"));
        assert!(config.contains("store_dir: \"/tmp/x/js\""));
        assert!(config.ends_with("authorization { token: s3cret }\n"));
    }

    #[test]
    fn jetstream_lines_go_inside_the_jetstream_block() {
        let config = nats_config_with(
            4222,
            Path::new("/tmp/x/js"),
            "sync_interval: always",
            "cluster { name: c }",
        );
        let block = config
            .split("jetstream {")
            .nth(1)
            .and_then(|rest| rest.split('}').next())
            .expect("a jetstream block");
        assert!(block.contains("store_dir: \"/tmp/x/js\""), "{config}");
        assert!(block.contains("sync_interval: always"), "{config}");
        assert_eq!(config.matches("jetstream {").count(), 1, "{config}");
    }

    #[test]
    fn a_server_runs_with_the_jetstream_lines_given() -> Result<(), TestkitError> {
        let mut server = NatsServer::start_with_jetstream("sync_interval: always")?;
        assert!(server.is_running());
        let config = std::fs::read_to_string(server.temp_dir().join("nats.conf"))
            .map_err(|source| TestkitError::io("read nats.conf", source))?;
        assert!(config.contains("sync_interval: always"), "{config}");
        // The lines reach the server: one it cannot parse stops it.
        let refused = NatsServer::start_with_jetstream("sync_interval: bogus");
        assert!(refused.is_err(), "a bad sync_interval was accepted");
        Ok(())
    }

    #[test]
    fn starts_answers_and_restarts_on_same_port() -> Result<(), TestkitError> {
        let mut server = NatsServer::start()?;
        let port = server.port();
        assert!(server.is_running());
        assert!(sends_info(port), "no INFO line");
        assert_eq!(server.url(), format!("nats://127.0.0.1:{port}"));
        let first_pid = server.pid();
        assert!(first_pid.is_some());

        server.stop();
        assert!(!server.is_running());
        assert_eq!(server.pid(), None);
        assert!(!sends_info(port), "stopped server still answers");
        assert!(
            server.temp_dir().join("js").is_dir(),
            "stop removed the store"
        );

        server.restart()?;
        assert!(server.is_running());
        assert_eq!(server.port(), port);
        assert_ne!(server.pid(), first_pid);
        assert!(sends_info(port), "restarted server does not answer");

        server.kill();
        assert!(!server.is_running());
        server.restart()?;
        assert!(
            sends_info(port),
            "server restarted after kill does not answer"
        );
        Ok(())
    }

    #[test]
    fn runs_the_resolved_release() -> Result<(), TestkitError> {
        let version = nats_server_version(&nats_server_binary()?)?;
        let server = NatsServer::start()?;
        // nats-server logs its banner ("  Version:  2.15.1") to stderr at start-up.
        let banner = std::fs::read_to_string(server.temp_dir().join("stderr.log"))
            .map_err(|source| TestkitError::io("read stderr.log", source))?;
        assert!(
            banner
                .lines()
                .any(|line| line.trim_end().ends_with(&format!("Version:  {version}"))),
            "the started server is not {version}:\n{banner}"
        );
        Ok(())
    }

    #[test]
    fn drop_kills_process_and_removes_dir() -> Result<(), TestkitError> {
        let server = NatsServer::start()?;
        let dir = server.temp_dir().to_path_buf();
        let port = server.port();
        let pid = server.pid();
        assert!(dir.is_dir());
        assert!(pid.is_some());
        drop(server);
        assert!(!dir.exists(), "temp dir {} survived drop", dir.display());
        assert!(!sends_info(port), "dropped server still answers");
        if let Some(pid) = pid {
            assert!(
                !Path::new(&format!("/proc/{pid}")).exists(),
                "process survived drop"
            );
        }
        Ok(())
    }

    #[test]
    fn extra_config_is_applied() -> Result<(), TestkitError> {
        let server = NatsServer::start_with_config("authorization { token: \"s3cret\" }")?;
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, server.port()));
        let stream = TcpStream::connect_timeout(&address, Duration::from_secs(1))
            .map_err(|source| TestkitError::io("connect", source))?;
        let mut info = String::new();
        BufReader::new(stream)
            .read_line(&mut info)
            .map_err(|source| TestkitError::io("read INFO", source))?;
        assert!(info.contains("\"auth_required\":true"), "INFO was {info}");
        Ok(())
    }

    #[test]
    fn config_variables_are_read_from_the_given_environment() -> Result<(), TestkitError> {
        let config = "authorization { token: $CCTV_TESTKIT_TOKEN }";
        assert!(
            NatsServer::start_with_config(config).is_err(),
            "server started with an undefined variable"
        );
        let server =
            NatsServer::start_with_config_and_env(config, &[("CCTV_TESTKIT_TOKEN", "s3cret")])?;
        assert!(server.pid().is_some());
        Ok(())
    }

    #[test]
    fn invalid_config_reports_exit_with_log_tail() {
        let result = NatsServer::start_with_config("this is { not valid");
        match result {
            Err(TestkitError::Exited { log_tail, .. }) => assert!(!log_tail.is_empty()),
            other => panic!("expected exit error, got {other:?}"),
        }
    }
}
