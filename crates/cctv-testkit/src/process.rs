//! One server child process: spawning with captured output, readiness polling,
//! stopping, and a watchdog that cleans up if the test process dies.

use std::{
    ffi::OsString,
    fs::{File, OpenOptions},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use crate::{wait::millis, wait_until, TestkitError};

/// How often readiness and exit are polled.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// How long `stop` waits after SIGTERM before it sends SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// How many trailing lines of each log file go into an error.
const LOG_TAIL_LINES: usize = 40;

/// Shell script run by the watchdog: while the test process ($1) lives, sleep; once
/// it is gone, kill the server ($2) and remove its directory ($3). The watchdog is
/// killed by us when the server is stopped normally, so it only acts on crashes.
const WATCHDOG_SCRIPT: &str =
    "while kill -0 \"$1\" 2>/dev/null; do sleep 1; done; kill -KILL \"$2\" 2>/dev/null; rm -rf \"$3\"";

/// How to start one server and where its output goes.
#[derive(Debug, Clone)]
pub(crate) struct ProcessSpec {
    /// Name used in errors, e.g. "nats-server".
    pub(crate) server_name: &'static str,
    /// The executable.
    pub(crate) binary: PathBuf,
    /// Command line arguments.
    pub(crate) args: Vec<OsString>,
    /// The server's temp directory; working directory and watchdog cleanup target.
    pub(crate) dir: PathBuf,
    /// Log files the server writes itself, included in log tails.
    pub(crate) extra_log_paths: Vec<PathBuf>,
    /// Environment variables set for the server on top of the inherited ones
    /// (e.g. the passwords a NATS config reads as `$VAR`).
    pub(crate) envs: Vec<(OsString, OsString)>,
}

impl ProcessSpec {
    /// File receiving the child's stdout (appended across restarts).
    fn stdout_path(&self) -> PathBuf {
        self.dir.join("stdout.log")
    }

    /// File receiving the child's stderr (appended across restarts).
    fn stderr_path(&self) -> PathBuf {
        self.dir.join("stderr.log")
    }
}

/// A server child process that is killed when dropped.
#[derive(Debug)]
pub(crate) struct ServerProcess {
    spec: ProcessSpec,
    child: Option<Child>,
    watchdog: Option<Child>,
}

impl ServerProcess {
    /// Creates the handle without starting anything.
    pub(crate) fn new(spec: ProcessSpec) -> Self {
        Self {
            spec,
            child: None,
            watchdog: None,
        }
    }

    /// Starts the process of `spec` and waits until `probe` says it is ready
    /// (see [`ServerProcess::wait_ready`]); on failure the process is killed.
    pub(crate) fn start(
        spec: ProcessSpec,
        timeout: Duration,
        probe: impl FnMut() -> bool,
    ) -> Result<Self, TestkitError> {
        let mut process = ServerProcess::new(spec);
        process.spawn()?;
        process.wait_ready(timeout, probe)?;
        Ok(process)
    }

    /// Starts the process (killing a previous one first) and its watchdog.
    pub(crate) fn spawn(&mut self) -> Result<(), TestkitError> {
        self.kill();
        let stdout = open_append(&self.spec.stdout_path())?;
        let stderr = open_append(&self.spec.stderr_path())?;
        let child = Command::new(&self.spec.binary)
            .args(&self.spec.args)
            .envs(self.spec.envs.iter().map(|(name, value)| (name, value)))
            .current_dir(&self.spec.dir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|source| {
                TestkitError::io(format!("spawn {}", self.spec.binary.display()), source)
            })?;
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG_SCRIPT)
            .arg("cctv-testkit-watchdog")
            .arg(std::process::id().to_string())
            .arg(child.id().to_string())
            .arg(&self.spec.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        self.child = Some(child);
        match watchdog {
            Ok(watchdog) => self.watchdog = Some(watchdog),
            Err(source) => {
                self.kill();
                return Err(TestkitError::io("spawn watchdog shell", source));
            }
        }
        Ok(())
    }

    /// Polls `probe` until it returns true, failing early if the process exits and
    /// with [`TestkitError::NotReady`] after `timeout`.
    pub(crate) fn wait_ready(
        &mut self,
        timeout: Duration,
        mut probe: impl FnMut() -> bool,
    ) -> Result<(), TestkitError> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.exit_status() {
                return Err(TestkitError::Exited {
                    server: self.spec.server_name.to_owned(),
                    status: status.to_string(),
                    log_tail: self.log_tail(),
                });
            }
            if probe() {
                return Ok(());
            }
            if started.elapsed() >= timeout {
                return Err(TestkitError::NotReady {
                    server: self.spec.server_name.to_owned(),
                    waited_ms: millis(started.elapsed()),
                    log_tail: self.log_tail(),
                });
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// The exit status if the process has exited, `None` while it runs or when it
    /// was never started.
    fn exit_status(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        child.try_wait().ok().flatten()
    }

    /// Whether the process was started and has not exited.
    pub(crate) fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The process id while a process is held.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends SIGTERM and waits for exit, escalating to SIGKILL after 10 s.
    pub(crate) fn stop(&mut self) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        if matches!(child.try_wait(), Ok(None)) {
            // `kill` the command avoids a libc dependency for sending SIGTERM.
            let term_sent = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success());
            if term_sent {
                let exited = wait_until(
                    STOP_GRACE,
                    POLL_INTERVAL,
                    "server exit after SIGTERM",
                    || !matches!(child.try_wait(), Ok(None)),
                );
                if exited.is_ok() {
                    self.forget_child();
                    return;
                }
            }
        }
        self.kill();
    }

    /// Sends SIGKILL and reaps the process; no-op when nothing runs.
    pub(crate) fn kill(&mut self) {
        if let Some(child) = self.child.as_mut() {
            // Errors mean the process already exited, which is the goal anyway.
            let _ = child.kill();
            let _ = child.wait();
        }
        self.forget_child();
    }

    /// Drops the child handle and kills the watchdog so it cannot act on a reused pid.
    fn forget_child(&mut self) {
        self.child = None;
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }

    /// The last lines of stdout, stderr and the server's own log files.
    pub(crate) fn log_tail(&self) -> String {
        let mut paths = vec![self.spec.stdout_path(), self.spec.stderr_path()];
        paths.extend(self.spec.extra_log_paths.iter().cloned());
        let mut tail = String::new();
        for path in paths {
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            if bytes.is_empty() {
                continue;
            }
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            let first_kept = lines.len().saturating_sub(LOG_TAIL_LINES);
            tail.push_str(&format!("==> {} <==\n", path.display()));
            for line in lines.iter().skip(first_kept) {
                tail.push_str(line);
                tail.push('\n');
            }
        }
        if tail.is_empty() {
            tail.push_str("(no output)\n");
        }
        tail
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Opens `path` for appending, creating it.
fn open_append(path: &Path) -> Result<File, TestkitError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| TestkitError::io(format!("open {}", path.display()), source))
}

/// Set to `1` to keep every server's temp directory (its logs, config and
/// data) after the test, to look into a failure.
pub const KEEP_DIRS_ENV: &str = "CCTV_TESTKIT_KEEP";

/// Creates a fresh temp directory `cctv-testkit-<kind>-XXXX` under the system
/// temp dir, removed on drop unless [`KEEP_DIRS_ENV`] is `1`.
pub(crate) fn create_temp_dir(kind: &str) -> Result<tempfile::TempDir, TestkitError> {
    let keep = std::env::var(KEEP_DIRS_ENV).is_ok_and(|value| value == "1");
    tempfile::Builder::new()
        .prefix(&format!("cctv-testkit-{kind}-"))
        .disable_cleanup(keep)
        .tempdir_in(std::env::temp_dir())
        .map_err(|source| TestkitError::io("create temp dir", source))
}

/// Creates `path` and its parents.
pub(crate) fn create_dir(path: &Path) -> Result<(), TestkitError> {
    std::fs::create_dir_all(path)
        .map_err(|source| TestkitError::io(format!("create dir {}", path.display()), source))
}

/// Writes `contents` to `path`.
pub(crate) fn write_file(path: &Path, contents: &str) -> Result<(), TestkitError> {
    std::fs::write(path, contents)
        .map_err(|source| TestkitError::io(format!("write {}", path.display()), source))
}
