//! A real MQTT broker (Debian's `mosquitto`) on a free port with its
//! persistence in a temp dir: what a site's cameras (Frigate, ONVIF
//! bridges) publish to, and what `cctv-gateway` subscribes to.

use std::{
    ffi::OsString,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    environment::find_binary,
    ports::free_port,
    process::{create_temp_dir, write_file, ProcessSpec, ServerProcess},
    TestkitError,
};

/// The broker binary.
const MOSQUITTO_BINARY: &str = "mosquitto";
/// Env var that overrides the broker binary.
const MOSQUITTO_ENV: &str = "CCTV_MOSQUITTO_BIN";
/// How long start-up may take.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How many times `start` tries a fresh port when it was taken meanwhile.
const START_ATTEMPTS: u32 = 3;
/// Messages the broker keeps per offline persistent session (its default,
/// 1,000, would drop the rest while a test's subscriber is down).
const MAX_QUEUED_MESSAGES: u32 = 1_000_000;

/// A running `mosquitto` on 127.0.0.1, anonymous access allowed.
///
/// Dropping it kills the process and removes the directory.
#[derive(Debug)]
pub struct MosquittoServer {
    // Declared before `temp_dir` so the process dies before its directory goes.
    process: ServerProcess,
    port: u16,
    temp_dir: tempfile::TempDir,
}

impl MosquittoServer {
    /// Starts a broker on a free port and waits until it accepts connections.
    pub fn start() -> Result<MosquittoServer, TestkitError> {
        let binary = find_binary(MOSQUITTO_BINARY, MOSQUITTO_ENV).map_err(|error| match error {
            TestkitError::BinaryNotFound { name, .. } => TestkitError::BinaryNotFound {
                name,
                hint: "; install Debian's mosquitto package: scripts/install-servers.sh".into(),
            },
            other => other,
        })?;
        let mut attempt = 1;
        loop {
            match Self::start_once(&binary) {
                Err(error) if error.is_port_conflict() && attempt < START_ATTEMPTS => {
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    fn start_once(binary: &Path) -> Result<MosquittoServer, TestkitError> {
        let temp_dir = create_temp_dir("mosquitto")?;
        let dir = temp_dir.path().to_path_buf();
        let port = free_port()?;
        let config = dir.join("mosquitto.conf");
        write_file(&config, &mosquitto_config(&dir, port))?;
        let spec = ProcessSpec {
            server_name: "mosquitto",
            binary: PathBuf::from(binary),
            args: vec![OsString::from("-c"), config.into_os_string()],
            dir,
            extra_log_paths: Vec::new(),
            envs: Vec::new(),
        };
        Ok(MosquittoServer {
            process: ServerProcess::start(spec, READY_TIMEOUT, || accepts_connections(port))?,
            port,
            temp_dir,
        })
    }

    /// The listener's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The host to connect to, `127.0.0.1`.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// The process id while a process is held.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// The temp directory holding config and persistence.
    pub fn temp_dir(&self) -> &Path {
        self.temp_dir.path()
    }

    /// The last lines of its output, for assertion messages.
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }
}

/// A broker on `port` of loopback, anonymous, persistent, logging to
/// stdout, with room for a long offline queue.
fn mosquitto_config(dir: &Path, port: u16) -> String {
    format!(
        "listener {port} 127.0.0.1\n\
         allow_anonymous true\n\
         persistence true\n\
         persistence_location {}/\n\
         max_queued_messages {MAX_QUEUED_MESSAGES}\n\
         log_dest stdout\n\
         log_type error\n\
         log_type warning\n\
         log_type notice\n",
        dir.display()
    )
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
fn accepts_connections(port: u16) -> bool {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_listens_on_loopback_only_with_a_long_queue() {
        let config = mosquitto_config(Path::new("/tmp/mq"), 18_830);
        assert!(config.contains("listener 18830 127.0.0.1\n"));
        assert!(config.contains("persistence_location /tmp/mq/\n"));
        assert!(config.contains("max_queued_messages 1000000\n"));
    }
}
