//! Driving a guest step by step. Its script ends in `vusb_serve` (see [`SERVE_FUNCTION`]),
//! which runs the shell commands the harness sends over the test channel, one at a time. A test
//! can then interleave actions on two guests (plug a device out on one, watch it vanish on the
//! other) and read each command's output and exit code.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};

use crate::guest::Guest;

/// A busybox sh function to put into a guest's script; calling it serves commands until the
/// harness says `exit`. Each request is one line, `<id> <command>`; the command runs in a
/// subshell (so that `exit` or `fail` end only the command), with stdin from /dev/null and
/// stderr merged into stdout, between `VUSB-CMD-BEGIN <id>` and `VUSB-CMD-END <id> rc=<code>`.
pub const SERVE_FUNCTION: &str = r#"
vusb_serve() {
    echo VUSB-SERVE-READY
    while IFS= read -r _vusb_line </dev/ttyS1; do
        _vusb_id=${_vusb_line%% *}
        _vusb_cmd=${_vusb_line#* }
        if [ "$_vusb_cmd" = exit ]; then
            echo "VUSB-CMD-END $_vusb_id rc=0"
            return 0
        fi
        echo "VUSB-CMD-BEGIN $_vusb_id"
        ( eval "$_vusb_cmd" ) </dev/null 2>&1
        echo "VUSB-CMD-END $_vusb_id rc=$?"
    done
    echo "VUSB-SERVE-EOF"
    return 1
}
"#;

const READY: &str = "VUSB-SERVE-READY";

/// What a command printed and how it ended.
#[derive(Debug, Clone)]
pub struct Output {
    pub command: String,
    pub rc: i32,
    /// Its lines (stdout and stderr), without lines of background log forwarders.
    pub lines: Vec<String>,
    pub elapsed: Duration,
}

impl Output {
    /// The value of the first line `KEY=value`.
    pub fn value(&self, key: &str) -> Option<&str> {
        let prefix = format!("{key}=");
        self.lines
            .iter()
            .find_map(|line| line.strip_prefix(&prefix))
            .map(str::trim)
    }

    /// Like [`Self::value`], an error when the line is missing.
    pub fn required(&self, key: &str) -> Result<&str> {
        self.value(key).ok_or_else(|| {
            anyhow!(
                "`{}` printed no {key}= line:\n{}",
                self.command,
                self.text()
            )
        })
    }

    /// Its lines joined, for messages.
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }
}

/// A guest whose script serves commands.
#[derive(Debug)]
pub struct Remote {
    guest: Guest,
    next_id: u64,
    ignored_prefixes: Vec<String>,
}

impl Remote {
    /// Wraps a booted guest whose script calls `vusb_serve`.
    pub fn new(guest: Guest) -> Self {
        Self {
            guest,
            next_id: 1,
            ignored_prefixes: Vec::new(),
        }
    }

    /// Leaves lines starting with `prefix` out of command outputs: a guest may forward a
    /// daemon's log to the test channel, where its lines interleave with everything else.
    pub fn ignore_prefix(&mut self, prefix: &str) {
        self.ignored_prefixes.push(prefix.to_owned());
    }

    pub fn guest(&self) -> &Guest {
        &self.guest
    }

    pub fn guest_mut(&mut self) -> &mut Guest {
        &mut self.guest
    }

    /// Waits until the script serves commands (boot included).
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        self.guest.wait_for_line(READY, timeout).map(drop)
    }

    /// Runs `command` (one line of busybox sh) and returns its output, whatever its exit code.
    pub fn run(&mut self, command: &str, timeout: Duration) -> Result<Output> {
        let id = self.next_id;
        self.next_id += 1;
        self.guest.note(&format!("command #{id}: {command}"));
        let started = Instant::now();
        self.guest.send_line(&format!("{id} {command}"))?;
        let end_line = self
            .guest
            .wait_for_line(&format!("VUSB-CMD-END {id} rc="), timeout)
            .map_err(|e| e.context(format!("command #{id} `{command}` did not finish")))?;
        let elapsed = started.elapsed();
        let rc = end_line
            .rsplit_once("rc=")
            .and_then(|(_, rc)| rc.trim().parse::<i32>().ok())
            .ok_or_else(|| anyhow!("malformed end marker {end_line:?}"))?;

        let lines = self.guest.test_lines();
        let begin = format!("VUSB-CMD-BEGIN {id}");
        let end = lines.iter().rposition(|l| *l == end_line).unwrap_or(0);
        let start = lines[..end]
            .iter()
            .rposition(|l| *l == begin)
            .map_or(end, |i| i + 1);
        let lines = lines[start..end]
            .iter()
            .filter(|l| !self.ignored_prefixes.iter().any(|p| l.starts_with(p)))
            .cloned()
            .collect();
        Ok(Output {
            command: command.to_owned(),
            rc,
            lines,
            elapsed,
        })
    }

    /// Runs `command` and fails unless it exits with 0.
    pub fn check(&mut self, command: &str, timeout: Duration) -> Result<Output> {
        let out = self.run(command, timeout)?;
        if out.rc != 0 {
            bail!(
                "guest {}: `{command}` failed (exit code {}):\n{}\nlog: {}",
                self.guest.name(),
                out.rc,
                out.text(),
                self.guest.log_path().display()
            );
        }
        Ok(out)
    }

    /// Ends serving; the script goes on after `vusb_serve` (normally to its end, and the guest
    /// powers off). Returns the script's exit code.
    pub fn finish(mut self, timeout: Duration) -> Result<i32> {
        let id = self.next_id;
        self.guest.send_line(&format!("{id} exit"))?;
        self.guest
            .wait_for_line(&format!("VUSB-CMD-END {id} rc="), timeout)?;
        self.guest.wait_exit(timeout)
    }
}
