//! CPU time of a process, from Linux's procfs.
//!
//! Throughput alone cannot tell which side of a connection is the
//! bottleneck, and on a shared machine it moves with other people's load.
//! CPU time spent per URB does neither: it says what one core can carry.
//! Time spent runnable but waiting for a CPU shows how much other load
//! there was.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Totals over all threads of a process since they started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuTimes {
    /// Time on a CPU.
    pub run: Duration,
    /// Time runnable but waiting for a CPU that something else had.
    pub wait: Duration,
}

impl CpuTimes {
    /// What was spent between `earlier` and `self`.
    pub fn since(self, earlier: CpuTimes) -> CpuTimes {
        CpuTimes {
            run: self.run.saturating_sub(earlier.run),
            wait: self.wait.saturating_sub(earlier.wait),
        }
    }
}

/// Whose CPU time to read.
#[derive(Debug, Clone)]
pub struct CpuClock {
    task_dir: PathBuf,
}

impl CpuClock {
    /// This process.
    pub fn this_process() -> Self {
        Self {
            task_dir: PathBuf::from("/proc/self/task"),
        }
    }

    /// Another process, e.g. the server under test.
    pub fn process(pid: u32) -> Self {
        Self {
            task_dir: PathBuf::from(format!("/proc/{pid}/task")),
        }
    }

    /// Run and wait time of all threads of the process so far, from
    /// `schedstat` (nanoseconds, where `stat` counts 10 ms ticks). Threads
    /// that have exited are not counted, which is harmless for servers
    /// whose threads live as long as the connection.
    pub fn read(&self) -> io::Result<CpuTimes> {
        let mut run = 0u64;
        let mut wait = 0u64;
        for task in std::fs::read_dir(&self.task_dir)? {
            let path = task?.path().join("schedstat");
            // A thread that ended since the directory was listed.
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let (r, w) = parse_schedstat(&text).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unexpected {}: {text:?}", path.display()),
                )
            })?;
            run += r;
            wait += w;
        }
        Ok(CpuTimes {
            run: Duration::from_nanos(run),
            wait: Duration::from_nanos(wait),
        })
    }
}

/// `schedstat` is "run_ns wait_ns timeslices".
fn parse_schedstat(text: &str) -> Option<(u64, u64)> {
    let mut fields = text.split_whitespace().map(str::parse::<u64>);
    Some((fields.next()?.ok()?, fields.next()?.ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedstat_gives_run_and_wait_time_in_nanoseconds() {
        assert_eq!(
            parse_schedstat("329443104 331246207 103\n"),
            Some((329_443_104, 331_246_207))
        );
        assert_eq!(parse_schedstat(""), None);
        assert_eq!(parse_schedstat("12"), None);
    }

    #[test]
    fn own_cpu_time_grows_with_work() {
        let clock = CpuClock::this_process();
        let before = clock.read().unwrap();
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(30) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let spent = clock.read().unwrap().since(before);
        assert!(spent.run >= Duration::from_millis(1), "{spent:?}");
    }
}
