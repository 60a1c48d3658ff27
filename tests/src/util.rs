//! Small helpers shared by the harness and the tests.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

/// Makes the process `cmd` starts die with this one. A harness killed by a signal (a
/// benchmark stopped with SIGTERM, a test runner's time-out) unwinds nothing, so the guards
/// that stop guests and daemons never run; without this, those would run on, holding CPUs
/// and ports. The kernel sends the signal when the thread that started the process ends:
/// start long-lived processes from a thread that outlives them.
pub fn die_with_harness(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    let harness = std::process::id();
    // SAFETY: between fork and exec only async-signal-safe calls are allowed; prctl and
    // getppid are system calls, and the closure allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            // prctl takes its arguments as unsigned longs.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            // The harness may have died before the call: then no signal is coming.
            if libc::getppid() as u32 != harness {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the test crate lives inside the workspace")
        .to_path_buf()
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` when set, else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        _ => workspace_root().join("target"),
    }
}

static LOG_TAILS: AtomicBool = AtomicBool::new(true);

/// Whether guests and daemons print the last lines of their logs to stderr when they go: on
/// for tests, whose runner shows stderr only when one fails; off for the link benchmark, whose
/// progress lines would drown in them (its logs stay in [`log_dir`]).
pub fn set_log_tails(on: bool) {
    LOG_TAILS.store(on, Ordering::Relaxed);
}

pub(crate) fn log_tails() -> bool {
    LOG_TAILS.load(Ordering::Relaxed)
}

/// Where the console logs of guests and the logs of spawned daemons are kept:
/// `<target>/vm-test-logs`.
pub fn log_dir() -> Result<PathBuf> {
    let dir = target_dir().join("vm-test-logs");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// A TCP port on 127.0.0.1 that was free a moment ago. The kernel hands out ephemeral ports
/// round-robin, so it is unlikely to be taken again before the caller binds it.
pub fn free_port() -> Result<u16> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding 127.0.0.1:0 for a port")?;
    Ok(listener.local_addr()?.port())
}

/// The host's time, in seconds since the Unix epoch.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Polls `condition` every 50 ms until it returns true (then true) or `timeout` has passed
/// (then false).
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last `n` lines of a text file, for failure reports (reads at most the last 256 KiB).
pub fn tail_lines(path: &Path, n: usize) -> String {
    const MAX: u64 = 256 * 1024;
    let read = || -> std::io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(MAX)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => last_lines(&text, n),
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs one of the repository's build scripts (a path relative to its root) with `args`.
/// Its progress lines go straight to this process's stderr, which the test runner shows for
/// failing tests; on failure, `needs` says what the script requires.
pub fn run_build_script(script: &str, args: &[&Path], needs: &str) -> Result<()> {
    let script = workspace_root().join(script);
    let status = Command::new("bash")
        .arg(&script)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    if !status.success() {
        bail!(
            "{} failed ({status}); its error is printed above. {needs}",
            script.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_started_to_die_with_the_harness_dies_with_it() {
        // The kernel's notion of "the harness" is the starting thread: its end stands in
        // for the whole process being killed.
        let mut child = std::thread::spawn(|| {
            let mut cmd = Command::new("sleep");
            cmd.arg("60");
            die_with_harness(&mut cmd);
            cmd.spawn().unwrap()
        })
        .join()
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the child outlived the thread that started it");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn last_lines_keeps_the_end() {
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(last_lines("a\nb", 5), "a\nb");
        assert_eq!(last_lines("", 5), "");
    }

    #[test]
    fn wait_until_reports_success_and_timeout() {
        let mut calls = 0;
        assert!(wait_until(Duration::from_secs(5), || {
            calls += 1;
            calls == 3
        }));
        assert!(!wait_until(Duration::from_millis(120), || false));
    }

    #[test]
    fn free_port_is_bindable() {
        let port = free_port().unwrap();
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
    }
}
