//! Real service processes for the crash tests: the `cctv-ingest` and
//! `cctv-aggregator` binaries that `cargo test --workspace` builds into
//! `target/debug` (with the `fault-injection` feature, see `tests/Cargo.toml`),
//! each with a TOML config in a temp dir pointing at the test's servers.
//!
//! A [`ServiceProcess`] can be killed with SIGKILL, stopped with SIGTERM and
//! started again with the same config; its stderr (JSON logs) is appended to
//! one file whose tail goes into assertion messages. Dropping it kills it.

use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

/// Environment variables a child must not inherit: they would override its
/// config file or arm fault points the test did not ask for.
const SCRUBBED_ENV: [&str; 10] = [
    "CCTV_CONFIG",
    "CCTV_NATS_URL",
    "CCTV_CLICKHOUSE_URL",
    "CCTV_CLICKHOUSE_DATABASE",
    "CCTV_CLICKHOUSE_USER",
    "CCTV_INGEST_METRICS_LISTEN",
    "CCTV_AGGREGATOR_METRICS_LISTEN",
    "CCTV_FAULT",
    "CCTV_FAULT_AFTER_BATCHES",
    "CCTV_PLATE_HASH_KEY",
];

/// Exit signal of `std::process::abort`.
pub(crate) const SIGABRT: i32 = 6;
/// Exit signal of a `kill -9`.
pub(crate) const SIGKILL: i32 = 9;

/// Lines of the service log shown in assertion messages.
const LOG_TAIL_LINES: usize = 30;

/// Which service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Ingest,
    Aggregator,
}

impl Kind {
    fn binary_name(self) -> &'static str {
        match self {
            Kind::Ingest => "cctv-ingest",
            Kind::Aggregator => "cctv-aggregator",
        }
    }
}

/// The service binary next to this test's build: the test executable is
/// `target/<profile>/deps/pipeline-<hash>`, the binary `target/<profile>/<name>`.
pub(crate) fn service_binary(kind: Kind) -> PathBuf {
    let name = kind.binary_name();
    let test_executable = std::env::current_exe().expect("path of the test executable");
    let profile_dir = test_executable
        .parent()
        .and_then(Path::parent)
        .expect("test executable inside target/<profile>/deps");
    let binary = profile_dir.join(name);
    assert!(
        binary.is_file(),
        "{} is missing: the crash tests spawn the real service binaries; build them with \
         `cargo test --workspace` (or `cargo build -p {name} --features {name}/fault-injection`)",
        binary.display()
    );
    binary
}

/// A service process with its config, environment and log file.
pub(crate) struct ServiceProcess {
    kind: Kind,
    binary: PathBuf,
    config_path: PathBuf,
    log_path: PathBuf,
    env: Vec<(String, String)>,
    child: Option<Child>,
    /// How many times the process was started.
    pub(crate) starts: u32,
    /// Length of the log when the current run was started.
    log_offset: usize,
}

impl ServiceProcess {
    /// Writes `config_toml` into `dir` and starts the service with `env` added.
    pub(crate) fn start(
        kind: Kind,
        dir: &Path,
        config_toml: &str,
        env: &[(&str, &str)],
    ) -> ServiceProcess {
        Self::start_instance(kind, "", dir, config_toml, env)
    }

    /// Like [`ServiceProcess::start`], for one of several instances of a
    /// kind: `label` keeps their config and log files apart.
    pub(crate) fn start_instance(
        kind: Kind,
        label: &str,
        dir: &Path,
        config_toml: &str,
        env: &[(&str, &str)],
    ) -> ServiceProcess {
        let name = format!("{}{label}", kind.binary_name());
        let config_path = dir.join(format!("{name}.toml"));
        std::fs::write(&config_path, config_toml).expect("write service config");
        let mut process = ServiceProcess {
            kind,
            binary: service_binary(kind),
            config_path,
            log_path: dir.join(format!("{name}.log")),
            env: env
                .iter()
                .map(|(key, value)| ((*key).to_string(), (*value).to_string()))
                .collect(),
            child: None,
            starts: 0,
            log_offset: 0,
        };
        process.restart();
        process
    }

    /// Stops the process with SIGSTOP (it keeps its state, runs nothing).
    pub(crate) fn pause(&self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args(["-STOP", &pid.to_string()])
                .status();
        }
    }

    /// Lets a paused process run again (SIGCONT).
    pub(crate) fn resume(&self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args(["-CONT", &pid.to_string()])
                .status();
        }
    }

    /// Starts the process again (it must have exited or been killed).
    pub(crate) fn restart(&mut self) {
        assert!(
            self.child.is_none(),
            "{:?} is still running; kill or stop it first",
            self.kind
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open service log");
        let mut command = Command::new(&self.binary);
        command
            .arg("--config")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .env("CCTV_LOG", "info")
            // An error that ends a service prints its message, not a page of
            // backtrace that pushes the message out of the log tail.
            .env("RUST_BACKTRACE", "0")
            .env("RUST_LIB_BACKTRACE", "0");
        for name in SCRUBBED_ENV {
            command.env_remove(name);
        }
        for (key, value) in &self.env {
            command.env(key, value);
        }
        self.log_offset = std::fs::metadata(&self.log_path)
            .ok()
            .and_then(|meta| usize::try_from(meta.len()).ok())
            .unwrap_or(0);
        self.child = Some(command.spawn().expect("spawn service binary"));
        self.starts += 1;
    }

    /// Whether the current run has logged that it started: from then on its
    /// signal handlers are installed, so a SIGTERM is a clean stop (before,
    /// it kills the process like any program's first milliseconds).
    pub(crate) fn started(&self) -> bool {
        let marker = match self.kind {
            Kind::Ingest => "\"ingest started\"",
            Kind::Aggregator => "\"aggregator started\"",
        };
        std::fs::read(&self.log_path)
            .ok()
            .and_then(|log| {
                let run = log.get(self.log_offset..)?;
                Some(String::from_utf8_lossy(run).contains(marker))
            })
            .unwrap_or(false)
    }

    /// Drops the extra environment (e.g. an armed fault point) for the next start.
    pub(crate) fn disarm(&mut self) {
        self.env.clear();
    }

    /// The running process's id.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, then reaps the process; returns its exit status.
    pub(crate) fn kill9(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("a running process to kill");
        let _ = child.kill();
        child.wait().expect("reap killed service")
    }

    /// Sends SIGTERM (the process keeps running until it exits by itself).
    pub(crate) fn terminate(&mut self) {
        let pid = self.pid().expect("a running process to terminate");
        // `kill` the command avoids a libc dependency for one signal.
        let sent = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .is_ok_and(|status| status.success());
        assert!(sent, "could not send SIGTERM to {pid}");
    }

    /// The exit status if the process has exited (then it is reaped and
    /// forgotten, so it can be restarted).
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let status = child.try_wait().expect("poll service process")?;
        self.child = None;
        Some(status)
    }

    /// Polls until the process exits, at most `timeout`.
    pub(crate) async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{:?} did not exit within {timeout:?}\n{}",
                self.kind,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Resident set size in KiB, from `/proc/<pid>/status`.
    pub(crate) fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// The last lines of the service's log.
    pub(crate) fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        let first = lines.len().saturating_sub(LOG_TAIL_LINES);
        format!(
            "--- last lines of {} ---\n{}",
            self.log_path.display(),
            lines[first..].join("\n")
        )
    }

    /// Whether the log contains `needle` (e.g. a fault point's message).
    pub(crate) fn log_contains(&self, needle: &str) -> bool {
        self.log_text().contains(needle)
    }

    /// How many times the log contains `needle`.
    pub(crate) fn log_matches(&self, needle: &str) -> usize {
        self.log_text().matches(needle).count()
    }

    /// The whole log; a line an abort cut short is not valid UTF-8 and must
    /// not hide the rest.
    fn log_text(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether `status` is death by `signal`.
pub(crate) fn killed_by(status: ExitStatus, signal: i32) -> bool {
    status.signal() == Some(signal)
}

/// Reads one gauge or counter from a Prometheus `/metrics` endpoint (the
/// first sample of `name`, whatever its labels); `None` when unreachable or
/// absent.
pub(crate) fn scrape_metric(port: u16, name: &str) -> Option<f64> {
    let page = cctv_testkit::metrics_page(port)?;
    let first = cctv_testkit::metric_samples(&page, name).next();
    first.map(|(_, value)| value)
}
