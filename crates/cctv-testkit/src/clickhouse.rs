//! A real `clickhouse-server` on free ports with data, logs and configs in a temp dir.

use std::{
    ffi::OsString,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::Path,
    sync::{Mutex, OnceLock, PoisonError},
    time::{Duration, Instant},
};

use crate::{
    environment::find_binary,
    http,
    ports::{free_port, wait_until_port_free},
    process::{create_dir, create_temp_dir, write_file, ProcessSpec, ServerProcess},
    tls::{copy_into, CertificateFiles},
    zookeeper::ZooKeeperServer,
    TestkitError,
};

/// Binary name looked up in `PATH`, `/usr/sbin` and `/usr/bin`.
const CLICKHOUSE_BINARY: &str = "clickhouse-server";

/// Env var that overrides the binary path.
const CLICKHOUSE_BINARY_ENV: &str = "CCTV_CLICKHOUSE_SERVER_BIN";

/// How long start-up may take before [`TestkitError::NotReady`]; 18.16 needs 2-4 s.
const CLICKHOUSE_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long `restart` waits for the old ports to become free and rebinds them.
const RESTART_PORT_TIMEOUT: Duration = Duration::from_secs(10);

/// How many times `start` tries fresh ports when a port was taken meanwhile.
const START_ATTEMPTS: u32 = 3;

/// Read timeout for [`ClickHouseServer::query`]; generous for slow test machines.
const QUERY_TIMEOUT: Duration = Duration::from_secs(120);

/// Read timeout for readiness probes, which must not hang the polling loop.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The default `<users>` section: user `default` without password, from localhost.
const DEFAULT_USERS: &str = "<default><password></password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks><profile>default</profile><quota>default</quota></default>";

/// A running `clickhouse-server` (HTTP and native TCP on 127.0.0.1).
///
/// Dropping it kills the process and removes the directory.
#[derive(Debug)]
pub struct ClickHouseServer {
    // Declared before `temp_dir` so the process is killed before its directory is
    // removed (fields drop in declaration order).
    process: ServerProcess,
    http_port: u16,
    tcp_port: u16,
    /// Port replicas fetch parts from (cluster nodes only).
    interserver_port: Option<u16>,
    /// HTTPS port (servers started with TLS only).
    https_port: Option<u16>,
    users_are_default: bool,
    temp_dir: tempfile::TempDir,
}

/// The ports of one server.
#[derive(Debug, Clone, Copy)]
struct Ports {
    http: u16,
    tcp: u16,
    /// Only for nodes of a cluster.
    interserver: Option<u16>,
    /// Only for servers with TLS.
    https: Option<u16>,
}

impl Ports {
    fn free(interserver: bool) -> Result<Ports, TestkitError> {
        Ok(Ports {
            http: free_port()?,
            tcp: free_port()?,
            interserver: if interserver {
                Some(free_port()?)
            } else {
                None
            },
            https: None,
        })
    }
}

impl ClickHouseServer {
    /// Starts a server with user `default` (no password) and waits until `SELECT 1`
    /// succeeds over HTTP.
    pub fn start() -> Result<ClickHouseServer, TestkitError> {
        Self::start_users(UsersFile::Default)
    }

    /// Starts a server whose `<users>` section is `users_xml_body` instead of the
    /// default user; profiles `default` and `readonly` and quota `default` exist.
    ///
    /// [`ClickHouseServer::query`] only works if the body defines a `default` user
    /// without password; readiness then only requires that the query pipeline answers.
    pub fn start_with_users(users_xml_body: &str) -> Result<ClickHouseServer, TestkitError> {
        Self::start_users(UsersFile::Body(users_xml_body))
    }

    /// Starts a server whose whole `users.xml` (profiles, users, quotas) is
    /// `users_xml`, e.g. the shipped `deploy/clickhouse/users.xml.in`.
    ///
    /// As with [`ClickHouseServer::start_with_users`], [`ClickHouseServer::query`]
    /// only works if the document defines a `default` user without password.
    pub fn start_with_users_xml(users_xml: &str) -> Result<ClickHouseServer, TestkitError> {
        Self::start_users(UsersFile::Document(users_xml))
    }

    /// Starts a server that also serves HTTPS with `certificate`, copied
    /// into its temp dir, through the shipped `deploy/clickhouse/tls.xml.in`
    /// (18.16's `https_port` and `<openSSL><server>` settings); `users_xml_body` as in [`ClickHouseServer::start_with_users`]
    /// (`None`: the default user). Plain HTTP stays on for the testkit's own
    /// readiness probes and [`ClickHouseServer::query`]; clients under test
    /// use [`ClickHouseServer::https_url`].
    pub fn start_with_tls(
        users_xml_body: Option<&str>,
        certificate: &CertificateFiles,
    ) -> Result<ClickHouseServer, TestkitError> {
        let users = users_xml_body.map_or(UsersFile::Default, UsersFile::Body);
        Self::start_ports(users, Some(certificate))
    }

    /// Shared body of the constructors, retrying on port conflicts.
    fn start_users(users: UsersFile<'_>) -> Result<ClickHouseServer, TestkitError> {
        Self::start_ports(users, None)
    }

    fn start_ports(
        users: UsersFile<'_>,
        certificate: Option<&CertificateFiles>,
    ) -> Result<ClickHouseServer, TestkitError> {
        let binary = find_binary(CLICKHOUSE_BINARY, CLICKHOUSE_BINARY_ENV)?;
        let mut attempt = 1;
        loop {
            let mut ports = Ports::free(false)?;
            if certificate.is_some() {
                ports.https = Some(free_port()?);
            }
            match Self::start_once(&binary, users, ports, "", certificate) {
                Err(error) if error.is_port_conflict() && attempt < START_ATTEMPTS => {
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    /// One start attempt on `ports` with a fresh directory; `extra_config`
    /// goes inside the config's root element.
    fn start_once(
        binary: &Path,
        users: UsersFile<'_>,
        ports: Ports,
        extra_config: &str,
        certificate: Option<&CertificateFiles>,
    ) -> Result<ClickHouseServer, TestkitError> {
        let temp_dir = create_temp_dir("clickhouse")?;
        let dir = temp_dir.path().to_path_buf();
        for subdir in ["data", "tmp", "log", "user_files", "format_schemas"] {
            create_dir(&dir.join(subdir))?;
        }
        let config_path = dir.join("config.xml");
        let mut config = server_config(&dir, ports.http, ports.tcp);
        if let (Some(certificate), Some(https)) = (certificate, ports.https) {
            let tls_dir = copy_into(
                &dir,
                &[
                    (certificate.cert.as_path(), "clickhouse.pem"),
                    (certificate.key.as_path(), "clickhouse.key"),
                ],
            )?;
            // The shipped template, as the local stack renders it: ClickHouse
            // merges config.d/*.xml next to its config file.
            create_dir(&dir.join("config.d"))?;
            write_file(
                &dir.join("config.d/tls.xml"),
                &https_config(&tls_dir, https),
            )?;
        }
        if let Some(interserver) = ports.interserver {
            let cluster_part = format!(
                "    <interserver_http_port>{interserver}</interserver_http_port>\n    \
                 <interserver_http_host>127.0.0.1</interserver_http_host>\n{extra_config}\n</yandex>"
            );
            config = config.replace("</yandex>", &cluster_part);
        }
        write_file(&config_path, &config)?;
        let users_xml = match users {
            UsersFile::Default => users_config(DEFAULT_USERS),
            UsersFile::Body(body) => users_config(body),
            UsersFile::Document(document) => document.to_owned(),
        };
        write_file(&dir.join("users.xml"), &users_xml)?;
        let mut config_arg = OsString::from("--config-file=");
        config_arg.push(&config_path);
        let spec = ProcessSpec {
            server_name: CLICKHOUSE_BINARY,
            binary: binary.to_path_buf(),
            args: vec![config_arg],
            dir: dir.clone(),
            extra_log_paths: vec![dir.join("log/server.log"), dir.join("log/err.log")],
            envs: Vec::new(),
        };
        let mut server = ClickHouseServer {
            process: ServerProcess::new(spec),
            http_port: ports.http,
            tcp_port: ports.tcp,
            interserver_port: ports.interserver,
            https_port: ports.https,
            users_are_default: matches!(users, UsersFile::Default),
            temp_dir,
        };
        server.process.spawn()?;
        server.wait_ready()?;
        Ok(server)
    }

    /// Polls until `GET /` says `Ok.`, the native port accepts and `SELECT 1` runs.
    fn wait_ready(&mut self) -> Result<(), TestkitError> {
        let (http_port, tcp_port) = (self.http_port, self.tcp_port);
        let users_are_default = self.users_are_default;
        self.process.wait_ready(CLICKHOUSE_READY_TIMEOUT, || {
            is_ready(http_port, tcp_port, users_are_default)
        })
    }

    /// The HTTP base URL, `http://127.0.0.1:<http_port>`.
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// The HTTPS URL, `https://127.0.0.1:<https_port>`, of a server started
    /// with [`ClickHouseServer::start_with_tls`].
    pub fn https_url(&self) -> Option<String> {
        self.https_port
            .map(|port| format!("https://127.0.0.1:{port}"))
    }

    /// The HTTP interface port.
    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// The native protocol port.
    pub fn tcp_port(&self) -> u16 {
        self.tcp_port
    }

    /// The temp directory holding configs, data and logs.
    pub fn temp_dir(&self) -> &Path {
        self.temp_dir.path()
    }

    /// The process id while a process is held.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Sends SIGTERM and waits for exit (SIGKILL after 10 s); keeps the data.
    pub fn stop(&mut self) {
        self.process.stop();
    }

    /// Sends SIGKILL, simulating a crash; keeps the data.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts the server again on the same ports with the same data directory and
    /// waits until it is ready. Stops it first if it runs.
    pub fn restart(&mut self) -> Result<(), TestkitError> {
        self.process.stop();
        let deadline = Instant::now() + RESTART_PORT_TIMEOUT;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            wait_until_port_free(self.http_port, remaining)?;
            let remaining = deadline.saturating_duration_since(Instant::now());
            wait_until_port_free(self.tcp_port, remaining)?;
            for port in [self.interserver_port, self.https_port]
                .into_iter()
                .flatten()
            {
                let remaining = deadline.saturating_duration_since(Instant::now());
                wait_until_port_free(port, remaining)?;
            }
            self.process.spawn()?;
            match self.wait_ready() {
                Ok(()) => return Ok(()),
                // Someone grabbed a port between our check and the bind: retry.
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

    /// The last lines of the server's logs, for assertion messages.
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }

    /// Runs `sql` over HTTP as user `default` (no password) and returns the body.
    ///
    /// A non-200 answer becomes [`TestkitError::Query`] carrying the server's message.
    pub fn query(&self, sql: &str) -> Result<String, TestkitError> {
        let response =
            http::request(self.http_port, "POST", "/", sql, QUERY_TIMEOUT).map_err(|source| {
                TestkitError::io(format!("query clickhouse at {}", self.http_url()), source)
            })?;
        if response.status != 200 {
            return Err(TestkitError::Query {
                status: response.status,
                body: response.body,
            });
        }
        Ok(response.body)
    }
}

/// A ClickHouse cluster on 127.0.0.1: `shards` x `replicas` servers of
/// cluster `cctv` (`remote_servers`, `internal_replication`), macros
/// `{shard}` (`01`, `02`, ...) and `{replica}` (`r1`, `r2`, ...), and one
/// ZooKeeper for the replicated tables. User `default` without password.
///
/// Dropping it kills every server, then ZooKeeper, and removes their
/// directories.
#[derive(Debug)]
pub struct ClickHouseCluster {
    // Servers drop (and die) before ZooKeeper.
    shards: Vec<Vec<ClickHouseServer>>,
    zookeeper: ZooKeeperServer,
}

/// Name of the cluster in every node's `remote_servers`.
pub const CLUSTER_NAME: &str = "cctv";

impl ClickHouseCluster {
    /// Starts ZooKeeper and `shards` x `replicas` servers and waits until each answers.
    pub fn start(shards: usize, replicas: usize) -> Result<ClickHouseCluster, TestkitError> {
        Self::start_with_users_xml(shards, replicas, None)
    }

    /// Like [`ClickHouseCluster::start`], every node with the whole
    /// `users.xml` given (e.g. the shipped `deploy/clickhouse/users.xml.in`;
    /// it must keep a password-less `default` user, which the nodes use
    /// between themselves and [`ClickHouseServer::query`] uses).
    pub fn start_with_users_xml(
        shards: usize,
        replicas: usize,
        users_xml: Option<&str>,
    ) -> Result<ClickHouseCluster, TestkitError> {
        let binary = find_binary(CLICKHOUSE_BINARY, CLICKHOUSE_BINARY_ENV)?;
        let zookeeper = ZooKeeperServer::start()?;
        // Every node names every other's port, so a port taken by another
        // process between choosing and binding restarts the whole set.
        let mut attempt = 1;
        let shards = loop {
            match Self::start_nodes(&binary, &zookeeper, shards, replicas, users_xml) {
                Err(error) if error.is_port_conflict() && attempt < START_ATTEMPTS => {
                    attempt += 1;
                }
                result => break result?,
            }
        };
        Ok(ClickHouseCluster { shards, zookeeper })
    }

    /// One attempt at starting the nodes on freshly chosen ports.
    fn start_nodes(
        binary: &Path,
        zookeeper: &ZooKeeperServer,
        shards: usize,
        replicas: usize,
        users_xml: Option<&str>,
    ) -> Result<Vec<Vec<ClickHouseServer>>, TestkitError> {
        let ports: Vec<Vec<Ports>> = (0..shards)
            .map(|_| (0..replicas).map(|_| Ports::free(true)).collect())
            .collect::<Result<_, _>>()?;
        let mut remote = format!("<remote_servers><{CLUSTER_NAME}>");
        for shard in &ports {
            remote.push_str("<shard><internal_replication>true</internal_replication>");
            for replica in shard {
                remote.push_str(&format!(
                    "<replica><host>127.0.0.1</host><port>{}</port></replica>",
                    replica.tcp
                ));
            }
            remote.push_str("</shard>");
        }
        remote.push_str(&format!("</{CLUSTER_NAME}></remote_servers>"));
        let mut servers = Vec::with_capacity(shards);
        for (shard_index, shard) in ports.iter().enumerate() {
            let mut replicas_of_shard = Vec::with_capacity(replicas);
            for (replica_index, replica) in shard.iter().enumerate() {
                let extra = format!(
                    "    <zookeeper><node><host>127.0.0.1</host><port>{}</port></node>\
                     <session_timeout_ms>10000</session_timeout_ms></zookeeper>\n    \
                     <macros><shard>{:02}</shard><replica>r{}</replica></macros>\n    {remote}",
                    zookeeper.port(),
                    shard_index + 1,
                    replica_index + 1
                );
                let users = users_xml.map_or(UsersFile::Default, UsersFile::Document);
                replicas_of_shard.push(ClickHouseServer::start_once(
                    binary, users, *replica, &extra, None,
                )?);
            }
            servers.push(replicas_of_shard);
        }
        Ok(servers)
    }

    /// The cluster's name in `remote_servers`.
    pub fn name(&self) -> &'static str {
        CLUSTER_NAME
    }

    /// Each shard's replicas' HTTP URLs, in order.
    pub fn shard_urls(&self) -> Vec<Vec<String>> {
        self.shards
            .iter()
            .map(|shard| shard.iter().map(ClickHouseServer::http_url).collect())
            .collect()
    }

    /// Replica `replica` of shard `shard` (both from 0).
    pub fn replica(&self, shard: usize, replica: usize) -> Option<&ClickHouseServer> {
        self.shards.get(shard)?.get(replica)
    }

    /// Replica `replica` of shard `shard`, to kill, stop or restart it.
    pub fn replica_mut(&mut self, shard: usize, replica: usize) -> Option<&mut ClickHouseServer> {
        self.shards.get_mut(shard)?.get_mut(replica)
    }

    /// The ZooKeeper server.
    pub fn zookeeper(&self) -> &ZooKeeperServer {
        &self.zookeeper
    }
}

/// What goes into the generated `users.xml`.
#[derive(Debug, Clone, Copy)]
enum UsersFile<'a> {
    /// User `default` without password, from localhost.
    Default,
    /// The inner XML of `<users>`, with the testkit's profiles and quota.
    Body(&'a str),
    /// A whole `users.xml` document.
    Document(&'a str),
}

/// One server per test process, started on first use.
static SHARED_CLICKHOUSE: OnceLock<ClickHouseServer> = OnceLock::new();

/// Serialises the first start so parallel tests do not start several servers.
static SHARED_CLICKHOUSE_INIT: Mutex<()> = Mutex::new(());

/// A ClickHouse server shared by all tests of this process, started on first use.
///
/// Tests share it by using their own database (see [`crate::unique_name`]). It is
/// never dropped; the watchdog kills it and removes its `cctv-testkit-clickhouse-*`
/// temp dir once the test process has exited. A failed start is retried by the
/// next caller.
pub fn shared_clickhouse() -> Result<&'static ClickHouseServer, TestkitError> {
    if let Some(server) = SHARED_CLICKHOUSE.get() {
        return Ok(server);
    }
    let _guard = SHARED_CLICKHOUSE_INIT
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(server) = SHARED_CLICKHOUSE.get() {
        return Ok(server);
    }
    let server = ClickHouseServer::start()?;
    Ok(SHARED_CLICKHOUSE.get_or_init(|| server))
}

/// One readiness probe: `GET /` answers `Ok.`, the native port accepts a connection,
/// and `SELECT 1` returns `1` (or, with custom users, any ClickHouse answer).
fn is_ready(http_port: u16, tcp_port: u16, users_are_default: bool) -> bool {
    let ping_ok = http::request(http_port, "GET", "/", "", PROBE_TIMEOUT)
        .is_ok_and(|response| response.status == 200 && response.body == "Ok.\n");
    if !ping_ok {
        return false;
    }
    let tcp_address = SocketAddr::from((Ipv4Addr::LOCALHOST, tcp_port));
    if TcpStream::connect_timeout(&tcp_address, PROBE_TIMEOUT).is_err() {
        return false;
    }
    let Ok(response) = http::request(http_port, "POST", "/", "SELECT 1", PROBE_TIMEOUT) else {
        return false;
    };
    if response.status == 200 {
        return response.body == "1\n";
    }
    // Custom users may not include a password-less `default`; an authentication
    // exception still proves that queries are being processed.
    !users_are_default && response.body.contains("Code:")
}

/// The generated `config.xml` (ClickHouse 18.16 compatible, `<yandex>` root).
fn server_config(dir: &Path, http_port: u16, tcp_port: u16) -> String {
    let dir = dir.display();
    format!(
        r#"<?xml version="1.0"?>
<yandex>
    <logger>
        <level>warning</level>
        <log>{dir}/log/server.log</log>
        <errorlog>{dir}/log/err.log</errorlog>
        <size>10M</size>
        <count>2</count>
    </logger>
    <http_port>{http_port}</http_port>
    <tcp_port>{tcp_port}</tcp_port>
    <listen_host>127.0.0.1</listen_host>
    <path>{dir}/data/</path>
    <tmp_path>{dir}/tmp/</tmp_path>
    <user_files_path>{dir}/user_files/</user_files_path>
    <format_schema_path>{dir}/format_schemas/</format_schema_path>
    <users_config>{dir}/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mark_cache_size>268435456</mark_cache_size>
    <uncompressed_cache_size>268435456</uncompressed_cache_size>
    <max_concurrent_queries>200</max_concurrent_queries>
</yandex>
"#
    )
}

/// The shipped `deploy/clickhouse/tls.xml.in` (18.16's `https_port` and
/// `<openSSL><server>` settings) rendered for `https_port`, with the
/// certificate and key in `tls_dir` (`clickhouse.pem`, `clickhouse.key`).
fn https_config(tls_dir: &Path, https_port: u16) -> String {
    include_str!("../../../deploy/clickhouse/tls.xml.in")
        .replace("@HTTPS_PORT@", &https_port.to_string())
        .replace("@TLS_DIR@", &tls_dir.display().to_string())
}

/// The generated `users.xml` with `users_body` as the inner XML of `<users>`.
fn users_config(users_body: &str) -> String {
    format!(
        r#"<?xml version="1.0"?>
<yandex>
    <profiles>
        <default><max_memory_usage>4000000000</max_memory_usage></default>
        <readonly><readonly>1</readonly></readonly>
    </profiles>
    <users>{users_body}</users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries>
                <errors>0</errors>
                <result_rows>0</result_rows>
                <read_rows>0</read_rows>
                <execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</yandex>
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unique_name;

    #[test]
    fn starts_and_answers_queries() -> Result<(), TestkitError> {
        let server = ClickHouseServer::start()?;
        assert_eq!(server.query("SELECT 1")?, "1\n");
        let version = server.query("SELECT version()")?;
        assert!(version.starts_with("18."), "unexpected version {version}");
        assert_eq!(
            server.http_url(),
            format!("http://127.0.0.1:{}", server.http_port())
        );
        assert_ne!(server.http_port(), server.tcp_port());
        let error = server.query("SELECT no_such_column");
        match error {
            Err(TestkitError::Query { status, body }) => {
                assert_ne!(status, 200);
                assert!(body.contains("no_such_column"), "body was {body}");
            }
            other => panic!("expected query error, got {other:?}"),
        }
        Ok(())
    }

    #[test]
    fn restart_keeps_data_and_ports_and_drop_cleans_up() -> Result<(), TestkitError> {
        let mut server = ClickHouseServer::start()?;
        let database = unique_name("restart");
        server.query(&format!("CREATE DATABASE {database}"))?;
        server.query(&format!(
            "CREATE TABLE {database}.t (x UInt32) ENGINE = MergeTree ORDER BY x"
        ))?;
        server.query(&format!("INSERT INTO {database}.t VALUES (7)"))?;
        let (http_port, tcp_port) = (server.http_port(), server.tcp_port());

        server.stop();
        assert!(!server.is_running());
        assert!(server.query("SELECT 1").is_err(), "stopped server answers");

        server.restart()?;
        assert!(server.is_running());
        assert_eq!(
            (server.http_port(), server.tcp_port()),
            (http_port, tcp_port)
        );
        assert_eq!(
            server.query(&format!("SELECT sum(x) FROM {database}.t"))?,
            "7\n"
        );

        let dir = server.temp_dir().to_path_buf();
        assert!(dir.join("data").is_dir());
        drop(server);
        assert!(!dir.exists(), "temp dir {} survived drop", dir.display());
        Ok(())
    }

    #[test]
    fn custom_users_are_applied() -> Result<(), TestkitError> {
        let users = "<default><password>s3cret</password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></default>\
                     <reader><password></password><networks><ip>127.0.0.1</ip></networks><profile>readonly</profile><quota>default</quota></reader>";
        let server = ClickHouseServer::start_with_users(users)?;
        assert!(
            matches!(server.query("SELECT 1"), Err(TestkitError::Query { .. })),
            "default user without password was accepted"
        );
        let as_reader = http::request(
            server.http_port(),
            "POST",
            "/?user=reader",
            "SELECT 1",
            PROBE_TIMEOUT,
        )
        .map_err(|source| TestkitError::io("query as reader", source))?;
        assert_eq!((as_reader.status, as_reader.body.as_str()), (200, "1\n"));
        Ok(())
    }

    #[test]
    fn shared_server_is_started_once() -> Result<(), TestkitError> {
        let first = shared_clickhouse()?;
        let second = shared_clickhouse()?;
        assert!(std::ptr::eq(first, second));
        assert_eq!(first.query("SELECT 1")?, "1\n");
        let dir_name = first
            .temp_dir()
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        assert!(dir_name.starts_with("cctv-testkit-"), "dir was {dir_name}");
        assert!(first.temp_dir().starts_with(std::env::temp_dir()));
        Ok(())
    }

    #[test]
    fn generated_configs_contain_ports_and_users() {
        let config = server_config(Path::new("/tmp/ch"), 18123, 19000);
        assert!(config.contains("<http_port>18123</http_port>"));
        assert!(config.contains("<tcp_port>19000</tcp_port>"));
        assert!(config.contains("<path>/tmp/ch/data/</path>"));
        assert!(!config.contains("interserver"));
        let users = users_config("<bob/>");
        assert!(users.contains("<users><bob/></users>"));
        assert!(users.contains("<readonly><readonly>1</readonly></readonly>"));
    }
}

#[cfg(test)]
mod cluster_tests {
    use super::*;
    use crate::unique_name;

    #[test]
    #[allow(clippy::expect_used)]
    fn a_cluster_replicates_within_a_shard_and_answers_through_distributed(
    ) -> Result<(), TestkitError> {
        let cluster = ClickHouseCluster::start(2, 2)?;
        let db = unique_name("cluster");
        for shard in 0..2 {
            for replica in 0..2 {
                let node = cluster.replica(shard, replica).expect("a replica");
                node.query(&format!("CREATE DATABASE {db}"))?;
                node.query(&format!(
                    "CREATE TABLE {db}.t (x UInt32) ENGINE = ReplicatedMergeTree('/clickhouse/tables/{{shard}}/{db}/t', '{{replica}}') ORDER BY x"
                ))?;
                node.query(&format!(
                    "CREATE TABLE {db}.all AS {db}.t ENGINE = Distributed({CLUSTER_NAME}, {db}, t, rand())"
                ))?;
            }
        }
        let first = |shard| cluster.replica(shard, 0).expect("a replica");
        let second = |shard| cluster.replica(shard, 1).expect("a replica");
        // A quorum insert (a URL setting: 18.16 has no `INSERT ... SETTINGS`)
        // returns once both replicas hold the part.
        let quorum = http::request(
            first(0).http_port(),
            "POST",
            "/?insert_quorum=2",
            &format!("INSERT INTO {db}.t VALUES (1), (2)"),
            QUERY_TIMEOUT,
        )
        .map_err(|source| TestkitError::io("quorum insert", source))?;
        assert_eq!(quorum.status, 200, "{}", quorum.body);
        first(1).query(&format!("INSERT INTO {db}.t VALUES (10)"))?;
        second(1).query(&format!("SYSTEM SYNC REPLICA {db}.t"))?;
        assert_eq!(
            second(0).query(&format!("SELECT sum(x) FROM {db}.t"))?,
            "3\n"
        );
        assert_eq!(
            second(1).query(&format!("SELECT sum(x) FROM {db}.t"))?,
            "10\n"
        );
        assert_eq!(
            second(0).query(&format!("SELECT sum(x) FROM {db}.all"))?,
            "13\n"
        );
        Ok(())
    }
}
