//! The workloads: `vusb-probe` runs in the guest that has the devices and prints its result
//! as one JSON object; its partner on the gadget side (the echo of the round trips, the
//! source of the interrupt stream) runs in the HRH meanwhile.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;

use super::paths::{DISK, HIDRAW, TTY};
use super::Plan;
use crate::remote::{Output, Remote};

/// The gadget-side device nodes in the HRH.
const GADGET_TTY: &str = "/dev/ttyGS0";
const GADGET_HID: &str = "/dev/hidg0";
/// Where the partner keeps its pid and its output.
const PARTNER_PID: &str = "/tmp/partner.pid";
const PARTNER_LOG: &str = "/tmp/partner.log";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Table I: sequential write, then read, of the pendrive.
    DiskWrite,
    DiskRead,
    /// Table II: serial round trips at the research's 1 Hz, and back to back.
    SerialSlow,
    SerialBackToBack,
    /// Round trips through the HID device's interrupt endpoints (OUT report, IN echo).
    HidPing,
    /// Small periodic reports on the interrupt IN endpoint (the research's webcam).
    HidStream,
}

impl Workload {
    pub const ALL: [Workload; 6] = [
        Workload::DiskWrite,
        Workload::DiskRead,
        Workload::SerialSlow,
        Workload::SerialBackToBack,
        Workload::HidPing,
        Workload::HidStream,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::DiskWrite => "disk-write",
            Workload::DiskRead => "disk-read",
            Workload::SerialSlow => "serial-slow",
            Workload::SerialBackToBack => "serial-back-to-back",
            Workload::HidPing => "hid-ping",
            Workload::HidStream => "hid-stream",
        }
    }

    /// What runs on the other side meanwhile, in the background: in the HRH for the round
    /// trips (the echo), in the measuring guest for the stream (its sink). It ends in `exec`,
    /// so that the pid the shell reports is vusb-probe's.
    fn partner(self, plan: &Plan) -> Option<String> {
        match self {
            Workload::DiskWrite | Workload::DiskRead => None,
            Workload::SerialSlow | Workload::SerialBackToBack => {
                Some(format!("exec vusb-probe serial-echo --tty {GADGET_TTY}"))
            }
            Workload::HidPing => Some(format!("exec vusb-probe hid-echo --dev {GADGET_HID}")),
            Workload::HidStream => Some(format!(
                "exec vusb-probe hid-stream-sink --dev {HIDRAW} --count {} --timeout-ms 10000",
                plan.stream_reports
            )),
        }
    }

    /// The command in the foreground: the measurement, or for the stream its source (the
    /// sink in the background measures).
    fn command(self, plan: &Plan) -> String {
        match self {
            Workload::DiskWrite => {
                format!(
                    "vusb-probe disk write --device {DISK} --mib {}",
                    plan.disk_mib
                )
            }
            Workload::DiskRead => {
                format!(
                    "vusb-probe disk read --device {DISK} --mib {}",
                    plan.disk_mib
                )
            }
            Workload::SerialSlow => format!(
                "vusb-probe serial-ping --tty {TTY} --count {} --interval-ms {}",
                plan.pings, plan.slow_interval_ms
            ),
            Workload::SerialBackToBack => format!(
                "vusb-probe serial-ping --tty {TTY} --count {} --interval-ms 0",
                plan.pings
            ),
            Workload::HidPing => format!(
                "vusb-probe hid-ping --dev {HIDRAW} --count {} --interval-ms 0",
                plan.hid_pings
            ),
            Workload::HidStream => format!(
                "vusb-probe hid-stream-source --dev {GADGET_HID} --interval-ms {} --count {}",
                plan.stream_interval_ms, plan.stream_reports
            ),
        }
    }

    /// Generous: at a tenth of a MB/s the disk would still finish, and every round trip may
    /// take its full time-out once.
    fn timeout(self, plan: &Plan) -> Duration {
        let secs = match self {
            Workload::DiskWrite | Workload::DiskRead => 60 + u64::from(plan.disk_mib) * 10,
            Workload::SerialSlow => {
                60 + u64::from(plan.pings) * (u64::from(plan.slow_interval_ms) / 1000 + 2)
            }
            Workload::SerialBackToBack | Workload::HidPing => 60 + u64::from(plan.pings) * 2,
            Workload::HidStream => {
                60 + u64::from(plan.stream_reports) * u64::from(plan.stream_interval_ms) / 500
            }
        };
        Duration::from_secs(secs)
    }
}

/// What a workload gave: vusb-probe's result, if it printed one, and what went wrong, if
/// anything (vusb-probe prints its result also when a check failed, e.g. lost round trips).
#[derive(Debug, Default)]
pub struct Outcome {
    pub result: Option<Value>,
    pub error: Option<String>,
}

/// Runs `workload` with the devices in `guest` (or in `hrh` itself for the local path) and
/// the gadgets in `hrh`.
pub fn run(
    workload: Workload,
    plan: &Plan,
    hrh: &mut Remote,
    guest: Option<&mut Remote>,
) -> Outcome {
    match run_inner(workload, plan, hrh, guest) {
        Ok(outcome) => outcome,
        Err(e) => Outcome {
            result: None,
            error: Some(format!("{e:#}")),
        },
    }
}

fn run_inner(
    workload: Workload,
    plan: &Plan,
    hrh: &mut Remote,
    mut guest: Option<&mut Remote>,
) -> Result<Outcome> {
    let timeout = workload.timeout(plan);
    let command = workload.command(plan);
    let Some(partner) = workload.partner(plan) else {
        let runner = match guest {
            Some(g) => g,
            None => hrh,
        };
        return Ok(outcome(&command, &runner.run(&command, timeout)?));
    };
    if workload == Workload::HidStream {
        // The sink listens before the source sends; the sink's result is the measurement.
        let sink = guest.as_deref_mut().unwrap_or(&mut *hrh);
        start_partner(sink, &partner)?;
        let source = hrh.run(&command, timeout);
        let sink = guest.unwrap_or(hrh);
        let sunk = stop_partner(sink, false)?;
        let source = source?;
        let mut o = outcome(&partner, &sunk);
        if source.rc != 0 && o.error.is_none() {
            o.error = Some(format!("the source failed:\n{}", source.text()));
        }
        return Ok(o);
    }
    start_partner(hrh, &partner)?;
    let measured = match guest {
        Some(g) => g.run(&command, timeout),
        None => hrh.run(&command, timeout),
    };
    let echoed = stop_partner(hrh, true);
    let mut o = outcome(&command, &measured?);
    if let Err(e) = echoed.and_then(|out| ensure_ok(&out)) {
        o.error.get_or_insert(format!("the echo failed: {e:#}"));
    }
    Ok(o)
}

/// vusb-probe's result line and its exit code (0 fine; 3 measured but a check failed).
fn outcome(command: &str, out: &Output) -> Outcome {
    let result = out
        .lines
        .iter()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .and_then(|l| serde_json::from_str(l).ok());
    let error = (out.rc != 0 || result.is_none())
        .then(|| format!("`{command}` exit code {}:\n{}", out.rc, out.text()));
    Outcome { result, error }
}

fn ensure_ok(out: &Output) -> Result<()> {
    if out.rc != 0 {
        bail!("exit code {}:\n{}", out.rc, out.text());
    }
    Ok(())
}

/// Starts `partner` in the background in `guest` and waits for its ready line: whatever
/// reaches a gadget before its reader has it open is lost, and usbhid drops what arrives in
/// the first moments after hidraw is opened.
fn start_partner(guest: &mut Remote, partner: &str) -> Result<()> {
    guest.check(
        &format!("({partner}) >{PARTNER_LOG} 2>&1 & echo $! >{PARTNER_PID}"),
        Duration::from_secs(30),
    )?;
    guest
        .check(
            &format!("wait_for 30 grep -q 'ready on' {PARTNER_LOG}"),
            Duration::from_secs(40),
        )
        .with_context(|| format!("`{partner}` did not get ready"))?;
    Ok(())
}

/// Waits for the partner to end (a sink ends by itself) or, with `kill`, ends it (an echo
/// prints its result on SIGTERM), and returns what it printed with its exit code.
fn stop_partner(guest: &mut Remote, kill: bool) -> Result<Output> {
    let kill = if kill { "kill \"$p\"; " } else { "" };
    guest.run(
        &format!(
            "p=$(cat {PARTNER_PID}); {kill}wait_for 60 dead \"$p\" || kill -9 \"$p\"; \
             wait \"$p\" 2>/dev/null; cat {PARTNER_LOG}; grep -q '^{{' {PARTNER_LOG}"
        ),
        Duration::from_secs(90),
    )
}
