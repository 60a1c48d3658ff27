//! A workspace daemon (`hrh-exporter`, `vusb-backend`) running on the host for one test: its
//! output in a log file of its own, startup watched, killed when dropped, and its log printed
//! then, which the test runner shows when the test failed.

use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};

use crate::exporter::workspace_binary;
use crate::util::{die_with_harness, log_dir, tail_lines};

/// How long a daemon gets to become ready after it starts.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// How many log lines a failure report shows.
const TAIL_LINES: usize = 30;

#[derive(Debug)]
pub(crate) struct HostDaemon {
    program: &'static str,
    child: Child,
    log_path: PathBuf,
    killed: bool,
}

impl HostDaemon {
    /// Starts the workspace binary `program` with `args`; its output goes to
    /// `<target>/vm-test-logs/<name>.<log_suffix>.log`.
    pub(crate) fn spawn<I, S>(
        program: &'static str,
        name: &str,
        log_suffix: &str,
        args: I,
    ) -> Result<HostDaemon>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let binary = workspace_binary(program)?;
        let log_path = log_dir()?.join(format!("{name}.{log_suffix}.log"));
        let log =
            File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let mut cmd = Command::new(&binary);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // Plain text: the log is read in files, not on a terminal.
        cmd.env("NO_COLOR", "1");
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        die_with_harness(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(HostDaemon {
            program,
            child,
            log_path,
            killed: false,
        })
    }

    /// Polls `ready` until it says yes; fails if the daemon exits first or if
    /// [`STARTUP_TIMEOUT`] passes, with `not_ready` saying what it failed to do.
    pub(crate) fn wait_ready(
        &mut self,
        not_ready: &str,
        mut ready: impl FnMut() -> Result<bool>,
    ) -> Result<()> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if ready()? {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                return Err(self.failure(&format!("exited ({status}) while starting")));
            }
            if Instant::now() >= deadline {
                return Err(self.failure(&format!("{not_ready} after {STARTUP_TIMEOUT:?}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything it has logged so far.
    pub(crate) fn log(&self) -> Result<String> {
        std::fs::read_to_string(&self.log_path)
            .with_context(|| format!("reading {}", self.log_path.display()))
    }

    /// Whether the process is still alive.
    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills it with SIGKILL, as a crash or power loss would, and reaps it.
    pub(crate) fn kill(&mut self) -> Result<()> {
        self.killed = true;
        if self.child.try_wait()?.is_none() {
            self.child
                .kill()
                .with_context(|| format!("killing {}", self.program))?;
        }
        self.child
            .wait()
            .with_context(|| format!("reaping {}", self.program))?;
        Ok(())
    }

    fn failure(&self, what: &str) -> anyhow::Error {
        anyhow!(
            "{} {what}\nlog: {}\nlast lines:\n{}",
            self.program,
            self.log_path.display(),
            tail_lines(&self.log_path, TAIL_LINES)
        )
    }
}

impl Drop for HostDaemon {
    fn drop(&mut self) {
        // A daemon that died on its own during a test is worth a line in the report.
        let died = !self.killed && !self.is_running();
        let _ = self.kill();
        if !crate::util::log_tails() {
            return;
        }
        eprintln!(
            "---- {}{}: log {} (last {TAIL_LINES} lines) ----\n{}\n---- end of {} ----",
            self.program,
            if died { " (had exited by itself!)" } else { "" },
            self.log_path.display(),
            tail_lines(&self.log_path, TAIL_LINES),
            self.program
        );
    }
}
