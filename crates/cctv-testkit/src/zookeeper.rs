//! A real ZooKeeper (Debian's `zookeeper` package, a JVM process) on a free
//! port with its data in a temp dir: what ClickHouse 18.16's replicated
//! tables coordinate through.

use std::{
    ffi::OsString,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    environment::find_binary,
    ports::free_port,
    process::{create_dir, create_temp_dir, write_file, ProcessSpec, ServerProcess},
    TestkitError,
};

/// The ZooKeeper jar of Debian's `libzookeeper-java` (its manifest names the
/// jars it needs).
const ZOOKEEPER_JAR: &str = "/usr/share/java/zookeeper.jar";
/// Env var that overrides the class path.
const CLASSPATH_ENV: &str = "CCTV_ZOOKEEPER_CLASSPATH";
/// The JVM.
const JAVA_BINARY: &str = "java";
/// Env var that overrides the JVM.
const JAVA_ENV: &str = "CCTV_JAVA_BIN";
/// A JVM starts slowly on a busy 2-core machine.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How many times `start` tries a fresh port when it was taken meanwhile.
const START_ATTEMPTS: u32 = 3;

/// A running single-node ZooKeeper on 127.0.0.1.
///
/// Dropping it kills the process and removes the directory.
#[derive(Debug)]
pub struct ZooKeeperServer {
    // Declared before `temp_dir` so the process dies before its directory goes.
    process: ServerProcess,
    port: u16,
    temp_dir: tempfile::TempDir,
}

impl ZooKeeperServer {
    /// Starts ZooKeeper on a free port and waits until it serves sessions.
    pub fn start() -> Result<ZooKeeperServer, TestkitError> {
        let java = find_binary(JAVA_BINARY, JAVA_ENV)?;
        let classpath = std::env::var(CLASSPATH_ENV)
            .ok()
            .filter(|value| !value.is_empty())
            .unwrap_or_else(|| ZOOKEEPER_JAR.to_string());
        if !classpath.contains(':') && !Path::new(&classpath).is_file() {
            return Err(TestkitError::BinaryNotFound {
                name: classpath,
                hint: " (install Debian's zookeeper package: scripts/install-servers.sh)".into(),
            });
        }
        let mut attempt = 1;
        loop {
            match Self::start_once(&java, &classpath) {
                Err(error) if error.is_port_conflict() && attempt < START_ATTEMPTS => {
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    fn start_once(java: &Path, classpath: &str) -> Result<ZooKeeperServer, TestkitError> {
        let temp_dir = create_temp_dir("zookeeper")?;
        let dir = temp_dir.path().to_path_buf();
        create_dir(&dir.join("data"))?;
        let port = free_port()?;
        let config = dir.join("zoo.cfg");
        write_file(&config, &zoo_config(&dir, port))?;
        // Logs go to the console, which the testkit captures.
        write_file(
            &dir.join("log4j.properties"),
            "log4j.rootLogger=WARN, CONSOLE\n\
             log4j.appender.CONSOLE=org.apache.log4j.ConsoleAppender\n\
             log4j.appender.CONSOLE.layout=org.apache.log4j.PatternLayout\n\
             log4j.appender.CONSOLE.layout.ConversionPattern=%d %p %c: %m%n\n",
        )?;
        let mut full_classpath = dir.clone().into_os_string();
        full_classpath.push(":");
        full_classpath.push(classpath);
        let spec = ProcessSpec {
            server_name: "zookeeper",
            binary: PathBuf::from(java),
            args: vec![
                OsString::from("-Xmx256m"),
                OsString::from("-Dzookeeper.admin.enableServer=false"),
                OsString::from("-Dzookeeper.4lw.commands.whitelist=ruok,srvr"),
                OsString::from("-cp"),
                full_classpath,
                OsString::from("org.apache.zookeeper.server.ZooKeeperServerMain"),
                config.into_os_string(),
            ],
            dir,
            extra_log_paths: Vec::new(),
            envs: Vec::new(),
        };
        Ok(ZooKeeperServer {
            process: ServerProcess::start(spec, READY_TIMEOUT, || serves_requests(port))?,
            port,
            temp_dir,
        })
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id while a process is held.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// The temp directory holding config and data.
    pub fn temp_dir(&self) -> &Path {
        self.temp_dir.path()
    }

    /// The last lines of its output, for assertion messages.
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }
}

/// A standalone server's `zoo.cfg`: short ticks, so that sessions of
/// killed ClickHouse servers expire within seconds.
fn zoo_config(dir: &Path, port: u16) -> String {
    format!(
        "tickTime=500\n\
         initLimit=10\n\
         syncLimit=5\n\
         minSessionTimeout=1000\n\
         maxSessionTimeout=20000\n\
         dataDir={}/data\n\
         clientPort={port}\n\
         clientPortAddress=127.0.0.1\n\
         maxClientCnxns=0\n\
         admin.enableServer=false\n\
         4lw.commands.whitelist=ruok,srvr\n",
        dir.display()
    )
}

/// Whether ZooKeeper serves client sessions: `srvr` reports its mode only
/// then (`ruok` answers `imok` as soon as the process listens, before it
/// serves: ClickHouse then failed its handshake).
fn serves_requests(port: u16) -> bool {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_secs(1)) else {
        return false;
    };
    if stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .is_err()
        || stream.write_all(b"srvr").is_err()
    {
        return false;
    }
    let mut answer = String::new();
    stream.read_to_string(&mut answer).is_ok() && answer.contains("Mode: standalone")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_port_and_data_dir() {
        let config = zoo_config(Path::new("/tmp/zk"), 2181);
        assert!(config.contains("clientPort=2181\n"));
        assert!(config.contains("dataDir=/tmp/zk/data\n"));
        assert!(config.contains("clientPortAddress=127.0.0.1\n"));
    }
}
