//! What the HRH's one CPU did while a workload ran, read from the HRH's `/proc` before and
//! after it: the USB/IP server's own run time and the whole guest's busy time.
//!
//! The server is hrh-exporter (all its threads) or usbip-host's `stub_rx` and `stub_tx`
//! kernel threads (usbipd itself only lists and imports). Run time comes from each thread's
//! `schedstat`, in nanoseconds; work done in interrupt context (the gadget's completions,
//! the network stack's softirqs) is in neither server's figure but in the HRH's busy time,
//! from `/proc/stat` in clock ticks. On a gateway with one core, a round trip waits for at
//! most the server's time per round trip (less where the server works ahead, as it does for
//! prefetched interrupt transfers).
//!
//! Only live threads can be read. Two readings are compared thread by thread: a thread
//! that started in between counts whole (a restarted server too), and one that ended in
//! between takes its last moments with it (a runtime's idle helper thread, which had
//! nothing to do).

use std::collections::BTreeMap;

use serde::Serialize;

/// Prints `hrhcpu <busy> <all> <busy> <all> <tid>:<ns>...`: the HRH's busy and total clock
/// ticks, read before and after the walk through `/proc` that finds the server's threads,
/// so that two readings can leave out their own walks; then each server thread's run time.
/// Shell built-ins only: a process started per entry of `/proc` would cost more than what
/// is measured.
pub const SNAPSHOT: &str = "ticks() { read -r _ u n sy i w irq si _ </proc/stat; \
     echo \"$((u + n + sy + irq + si)) $((u + n + sy + i + w + irq + si))\"; }; \
     first=$(ticks); threads=; \
     for d in /proc/[0-9]*; do read -r c 2>/dev/null <\"$d/comm\" || continue; \
     case \"$c\" in hrh-exporter|stub_rx|stub_tx) for t in \"$d\"/task/*; do \
     read -r ns _ 2>/dev/null <\"$t/schedstat\" && threads=\"$threads ${t##*/}:$ns\"; \
     done;; esac; done; \
     echo \"hrhcpu $first $(ticks)$threads\"";

/// Clock ticks per second in `/proc/stat` (USER_HZ, 100 on x86-64).
const USER_HZ: f64 = 100.0;

/// One reading of [`SNAPSHOT`].
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The HRH's busy and total ticks when the reading began and when it ended.
    began: Ticks,
    ended: Ticks,
    /// The server's threads and their run time (ns), by thread id.
    threads: BTreeMap<u64, u64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Ticks {
    busy: u64,
    all: u64,
}

impl Snapshot {
    /// The reading in `output` (the lines of the command), if there is one.
    pub fn parse<S: AsRef<str>>(output: &[S]) -> Option<Self> {
        let line = output
            .iter()
            .find_map(|l| l.as_ref().split_once("hrhcpu ").map(|(_, n)| n))?;
        let mut words = line.split_whitespace();
        let mut next = || words.next()?.parse::<u64>().ok();
        let mut ticks = || {
            Some(Ticks {
                busy: next()?,
                all: next()?,
            })
        };
        let (began, ended) = (ticks()?, ticks()?);
        let threads = words
            .map(|w| {
                let (tid, ns) = w.split_once(':')?;
                Some((tid.parse().ok()?, ns.parse().ok()?))
            })
            .collect::<Option<_>>()?;
        Some(Self {
            began,
            ended,
            threads,
        })
    }

    /// What happened between `self` and the later reading `after`, neither reading's own
    /// work included; `None` if a tick counter went back (not two readings of one boot).
    /// The server's time is `None` when `after` found no server.
    pub fn until(&self, after: &Snapshot) -> Option<HrhCpu> {
        let busy = after.began.busy.checked_sub(self.ended.busy)?;
        let all = after.began.all.checked_sub(self.ended.all)?;
        let server_ns: u64 = after
            .threads
            .iter()
            .map(|(tid, ns)| ns.saturating_sub(self.threads.get(tid).copied().unwrap_or(0)))
            .sum();
        Some(HrhCpu {
            server_ms: (!after.threads.is_empty()).then(|| server_ns as f64 / 1e6),
            busy_ms: busy as f64 * 1000.0 / USER_HZ,
            elapsed_ms: all as f64 * 1000.0 / USER_HZ,
        })
    }
}

/// The HRH's CPU over one workload.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct HrhCpu {
    /// The USB/IP server's threads' run time; `None` when no server was found.
    pub server_ms: Option<f64>,
    /// The HRH's busy time: every process, kernel thread and interrupt.
    pub busy_ms: f64,
    /// The time the HRH's CPU counted, busy or idle: the workload's length as it saw it.
    pub elapsed_ms: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_readings_give_the_servers_time_and_the_hrhs() {
        // Each reading's own walk through /proc took 5 busy ticks: left out.
        let before = Snapshot::parse(&["  3 hrhcpu 45 395 50 400 7:1000000 8:500", "0"]).unwrap();
        let after = Snapshot::parse(&["hrhcpu 80 500 85 505 7:25000000 8:1000500"]).unwrap();
        let cpu = before.until(&after).unwrap();
        assert_eq!(
            cpu,
            HrhCpu {
                server_ms: Some(25.0),
                busy_ms: 300.0,
                elapsed_ms: 1000.0
            }
        );
        // Readings in the wrong order: no figures at all.
        assert_eq!(after.until(&before), None);
    }

    #[test]
    fn threads_are_compared_one_by_one() {
        let before = Snapshot::parse(&["hrhcpu 10 20 10 20 7:9000000 8:3000000"]).unwrap();
        // Thread 8 ended, thread 9 started and ran 2 ms, thread 7 ran 1 ms.
        let after = Snapshot::parse(&["hrhcpu 30 60 30 60 7:10000000 9:2000000"]).unwrap();
        assert_eq!(before.until(&after).unwrap().server_ms, Some(3.0));
        // No server found: no server figure, the HRH's still.
        let none = Snapshot::parse(&["hrhcpu 30 60 30 60"]).unwrap();
        let cpu = before.until(&none).unwrap();
        assert_eq!((cpu.server_ms, cpu.busy_ms), (None, 200.0));
    }

    #[test]
    fn a_reading_that_is_not_there_or_is_cut_short_is_none() {
        assert_eq!(Snapshot::parse(&["sh: read: error"]), None);
        assert_eq!(Snapshot::parse(&["hrhcpu 12 7 9"]), None);
        assert_eq!(Snapshot::parse(&["hrhcpu 12 x 9 7"]), None);
        assert_eq!(Snapshot::parse(&["hrhcpu 1 2 3 4 5:"]), None);
    }

    #[test]
    fn the_snapshot_command_runs_in_the_guests_shell() {
        // The host's /proc has the same files as the HRH's. A `sleep` under the server's
        // name stands in for it. The HRH's shell is busybox's, when the host has it.
        let dir = tempfile::tempdir().unwrap();
        let server = dir.path().join("hrh-exporter");
        std::fs::copy("/bin/sleep", &server).unwrap();
        let mut sleeper = std::process::Command::new(&server)
            .arg("30")
            .spawn()
            .unwrap();
        let shell: &[&str] = if std::path::Path::new("/usr/bin/busybox").exists() {
            &["/usr/bin/busybox", "sh"]
        } else {
            &["sh"]
        };
        let out = std::process::Command::new(shell[0])
            .args(&shell[1..])
            .args(["-c", SNAPSHOT])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().collect();
        let _ = sleeper.kill();
        let _ = sleeper.wait();
        let s = Snapshot::parse(&lines).unwrap_or_else(|| panic!("{text}"));
        assert!(s.threads.contains_key(&u64::from(sleeper.id())), "{s:?}");
        assert!(s.ended.all >= s.began.all, "{s:?}");
        assert!(s.ended.all >= s.ended.busy && s.ended.busy > 0, "{s:?}");
    }
}
