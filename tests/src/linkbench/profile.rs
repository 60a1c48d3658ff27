//! Where the HRH's CPU goes during a workload: Linux's `perf` in the HRH guest, sampling
//! every CPU on its clock (`cpu-clock`, a software event: the emulated CPU has no counters)
//! with call chains, and reporting by process, by object and symbol, and, for the USB/IP
//! server's threads, by function with what it calls (`--children`: the time behind each
//! system call). `vusb-linkbench --profile`.
//!
//! The HRH runs Debian's kernel and the host Debian's user space, so the host's `perf` for
//! that kernel goes into the HRH with its libraries. Sampling costs the HRH some CPU: a
//! profiled run's numbers are for reading next to each other, not next to an unprofiled
//! run's.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::workloads::Workload;
use crate::remote::Remote;

/// The host's perf, for the HRH.
pub const PERF: &str = "/usr/bin/perf";

/// The workloads profiled: the round trips, where the servers differ most, and the
/// pendrive.
pub const PROFILED: [Workload; 4] = [
    Workload::SerialBackToBack,
    Workload::HidPing,
    Workload::DiskWrite,
    Workload::DiskRead,
];

/// Samples per second on the HRH's CPU.
const FREQUENCY: u32 = 997;

/// perf report's orderings, each down to a share of the samples: by process; by process
/// and object (kernel, program, each library); hrh-exporter's own samples by object and
/// symbol, as shares of its time; every process's by object and symbol; and the USB/IP
/// servers' functions with their callees. The servers'
/// threads are hrh-exporter's runtime (its threads carry its name) and usbip-host's kernel
/// threads.
const REPORTS: [(&str, &str); 5] = [
    ("--no-children --sort comm", "0.5"),
    ("--no-children --sort comm,dso", "0.1"),
    (
        "--no-children --comms hrh-exporter --sort dso,sym --percentage relative",
        "0.5",
    ),
    ("--no-children --sort comm,dso,sym", "0.3"),
    (
        "--children --sort sym --comms hrh-exporter,stub_rx,stub_tx",
        "1",
    ),
];

const DATA: &str = "/tmp/perf.data";
const PID: &str = "/tmp/perf.pid";
const LOG: &str = "/tmp/perf.log";

/// Whether the host has the perf the HRH needs.
pub fn check_available() -> Result<()> {
    if !Path::new(PERF).exists() {
        bail!("--profile needs {PERF} (Debian's package linux-perf)");
    }
    Ok(())
}

/// Starts sampling in `hrh`, returning once perf samples.
pub fn start(hrh: &mut Remote) -> Result<()> {
    hrh.check(
        &format!(
            "rm -f {DATA}; perf record -a -g -F {FREQUENCY} -e cpu-clock -o {DATA} \
             >{LOG} 2>&1 & echo $! >{PID}"
        ),
        Duration::from_secs(30),
    )?;
    // perf writes its file's header once it has opened its events, before it has walked
    // the running processes; the workload's own processes start after that walk anyway,
    // and only the first moments of the window may go unsampled.
    hrh.check(
        &format!("wait_for 60 test -s {DATA} || {{ cat {LOG}; false; }}"),
        Duration::from_secs(70),
    )
    .context("perf did not start sampling")?;
    Ok(())
}

/// Stops sampling in `hrh` and returns perf's reports ([`REPORTS`]).
pub fn stop(hrh: &mut Remote) -> Result<String> {
    // perf writes its samples out when interrupted; one that must be killed leaves a
    // broken file, which is an error (with perf's log), not a report.
    hrh.check(
        &format!(
            "p=$(cat {PID}); kill -INT \"$p\"; wait_for 120 dead \"$p\" || \
             {{ kill -9 \"$p\"; cat {LOG}; false; }}"
        ),
        Duration::from_secs(150),
    )
    .context("perf did not stop")?;
    let mut report = String::new();
    for (how, limit) in REPORTS {
        let out = hrh.check(
            &format!(
                "perf report -i {DATA} --stdio -g none {how} --percent-limit {limit} 2>&1 \
                 | grep -v '^$'"
            ),
            Duration::from_secs(300),
        )?;
        report.push_str(&out.lines.join("\n"));
        report.push_str("\n\n");
    }
    Ok(report)
}

/// Where a workload's profile is written in the output folder.
pub fn report_path(out: &Path, link: Option<&str>, path: &str, workload: Workload) -> PathBuf {
    out.join("profiles").join(format!(
        "{}-{path}-{}.txt",
        link.unwrap_or("local"),
        workload.name()
    ))
}
