//! Booting a test guest under QEMU and talking to it through its serial ports.
//!
//! The guest has two serial ports. The first (ttyS0) is the kernel console; the second (ttyS1)
//! carries only what `/init` and the test's script print. Keeping them apart means kernel
//! messages can never split a marker line the test waits for. Both, and QEMU's own stderr, are
//! merged line by line into one log file, each line tagged with where it came from.

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};

use crate::assets::guest_assets;
use crate::cpio::CpioArchive;
use crate::util::{die_with_harness, log_dir, tail_lines};

/// The line `/init` prints after the test's script ends, followed by its exit code.
pub const EXIT_MARKER: &str = "VUSB-TEST-EXIT=";

/// From the guest's side, the host's 127.0.0.1 under QEMU user networking.
pub const HOST_ADDR: &str = "10.0.2.2";

/// How many log lines a failure report shows.
const TAIL_LINES: usize = 60;

/// Shell functions available to every test script (busybox sh), defined before it runs.
const SCRIPT_PRELUDE: &str = r#"
fail() { echo "FAIL: $*"; exit 1; }

# wait_for SECONDS COMMAND...: runs COMMAND every 0.2 s until it succeeds or SECONDS pass.
wait_for() {
    _wait_left=$(($1 * 5))
    shift
    until "$@"; do
        _wait_left=$((_wait_left - 1))
        [ "$_wait_left" -gt 0 ] || return 1
        sleep 0.2
    done
}

# usbip_attach BUSID: imports BUSID from the USB/IP server on the host.
usbip_attach() { usbip --tcp-port "$VUSB_PORT" attach -r "$VUSB_HOST" -b "$1"; }

# usbip_port_of BUSID: the vhci port that BUSID of the host is imported on (empty if none).
usbip_port_of() {
    usbip port 2>/dev/null | awk -v busid="$1" '
        /^Port [0-9]+:/ { port = $2; sub(":", "", port); port += 0 }
        $0 ~ ("usbip://.*/" busid "$") { print port; exit }'
}

# usbip_ports_in_use: how many vhci ports hold an imported device.
usbip_ports_in_use() { usbip port 2>/dev/null | grep -c '^Port [0-9]*:'; }
"#;

/// What to boot.
#[derive(Debug, Clone)]
pub struct GuestConfig {
    name: String,
    script: String,
    env: Vec<(String, String)>,
    files: Vec<(String, Vec<u8>, u32)>,
    memory_mib: u32,
    cpus: u32,
    kernel_args: Vec<String>,
    qemu_args: Vec<OsString>,
    qemu_command: Vec<OsString>,
    host_forwards: Vec<(u16, u16)>,
}

impl GuestConfig {
    /// A guest that runs `script` (busybox sh) as `/test.sh`. `name` names its log file:
    /// `<target>/vm-test-logs/<name>.log`. The script sees `$VUSB_HOST` (the host's address)
    /// and the helpers of the prelude (`fail`, `wait_for`, `usbip_attach`, `usbip_port_of`,
    /// `usbip_ports_in_use`); `usbip_attach` needs `$VUSB_PORT`, set with [`Self::env`].
    pub fn new(name: &str, script: &str) -> Self {
        Self {
            name: name.to_owned(),
            script: script.to_owned(),
            env: vec![("VUSB_HOST".to_owned(), HOST_ADDR.to_owned())],
            files: Vec::new(),
            memory_mib: 512,
            cpus: 1,
            kernel_args: Vec::new(),
            qemu_args: Vec::new(),
            qemu_command: vec!["qemu-system-x86_64".into()],
            host_forwards: Vec::new(),
        }
    }

    /// Exports a variable to the script.
    pub fn env(mut self, key: &str, value: impl ToString) -> Self {
        assert!(
            !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad variable name {key:?}"
        );
        self.env.push((key.to_owned(), value.to_string()));
        self
    }

    /// Puts an extra file into the guest's initramfs.
    pub fn file(mut self, path: &str, contents: impl Into<Vec<u8>>, mode: u32) -> Self {
        self.files.push((path.to_owned(), contents.into(), mode));
        self
    }

    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    pub fn cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus;
        self
    }

    /// Appends to the kernel command line.
    pub fn kernel_arg(mut self, arg: &str) -> Self {
        self.kernel_args.push(arg.to_owned());
        self
    }

    /// Adds the workspace binary `name` as `/usr/bin/<name>`, with its shared libraries.
    pub fn workspace_binary(mut self, name: &str) -> Result<Self> {
        for (path, contents) in crate::binaries::workspace_binary_files(name)? {
            self = self.file(&path, contents, 0o755);
        }
        Ok(self)
    }

    /// Appends arguments to QEMU's command line, e.g. another `-netdev user,…,hostfwd=…` with
    /// its NIC (the default NIC's netdev has the id `n0`).
    pub fn qemu_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.qemu_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Forwards TCP connections to the host's 127.0.0.1:`host_port` to the guest's
    /// `guest_port`, through the default NIC (a `hostfwd` of its user-mode netdev). Another
    /// guest reaches the forwarded port at `10.0.2.2:host_port`, which is how two test guests
    /// talk to each other.
    pub fn host_forward(mut self, host_port: u16, guest_port: u16) -> Self {
        self.host_forwards.push((host_port, guest_port));
        self
    }

    /// Runs QEMU through another command, e.g. `["chroot", "/srv/qemu-root",
    /// "qemu-system-x86_64"]` for a newer QEMU installed in a chroot (paths given to QEMU
    /// must then exist at the same place inside it).
    pub fn qemu_command<I, S>(mut self, command: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.qemu_command = command.into_iter().map(Into::into).collect();
        assert!(!self.qemu_command.is_empty(), "empty QEMU command");
        self
    }

    /// The full `/test.sh`: exported variables, the prelude, then the test's script.
    fn test_script(&self) -> String {
        let mut out = String::new();
        for (key, value) in &self.env {
            out.push_str(&format!(
                "export {key}='{}'\n",
                value.replace('\'', r"'\''")
            ));
        }
        out.push_str(SCRIPT_PRELUDE);
        out.push('\n');
        out.push_str(&self.script);
        out.push('\n');
        out
    }
}

/// Where a line of the log came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// ttyS1: `/init` and the test's script.
    Test,
    /// ttyS0: the kernel console.
    Console,
    /// QEMU's stderr.
    Qemu,
    /// The harness itself (notes about what the host side did).
    Harness,
}

impl Source {
    fn tag(self) -> &'static str {
        match self {
            Source::Test => "test   ",
            Source::Console => "console",
            Source::Qemu => "qemu   ",
            Source::Harness => "harness",
        }
    }
}

#[derive(Debug)]
struct State {
    /// Lines of the test channel, in order.
    test_lines: Vec<String>,
    log: BufWriter<File>,
    open_streams: usize,
    started: Instant,
}

impl State {
    fn push(&mut self, source: Source, line: &str) {
        let elapsed = self.started.elapsed().as_secs_f64();
        // A failing log write must not stop the test; the report will show a short log.
        let _ = writeln!(self.log, "{elapsed:8.3} {} | {line}", source.tag());
        let _ = self.log.flush();
        if source == Source::Test {
            self.test_lines.push(line.to_owned());
        }
    }
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A reader thread that panicked leaves consistent data behind.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running guest. QEMU is killed when this is dropped; the log's path and its last lines
/// are then printed to stderr, which the test runner shows when the test failed.
#[derive(Debug)]
pub struct Guest {
    name: String,
    child: Child,
    shared: Arc<Shared>,
    readers: Vec<JoinHandle<()>>,
    log_path: PathBuf,
    /// Index into the test lines after the last line `wait_for_line` matched.
    cursor: usize,
    /// The harness's end of the test channel, for lines sent to the guest.
    input: Option<UnixStream>,
    exit_code: Option<i32>,
    _workdir: tempfile::TempDir,
}

impl Guest {
    /// Boots a guest: builds the guest assets if needed, appends the test's archive to the
    /// initramfs and starts QEMU (TCG, so that it works without KVM).
    pub fn boot(config: GuestConfig) -> Result<Guest> {
        let assets = guest_assets()?;
        let workdir = tempfile::Builder::new()
            .prefix("vusb-guest-")
            .tempdir()
            .context("creating a temporary directory")?;

        let initrd = workdir.path().join("initrd");
        write_initrd(&assets.initramfs, &config, &initrd)?;

        let log_path = log_dir()?.join(format!("{}.log", config.name));
        let log =
            File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                test_lines: Vec::new(),
                log: BufWriter::new(log),
                open_streams: 0,
                started: Instant::now(),
            }),
            changed: Condvar::new(),
        });

        let socket = workdir.path().join("test.sock");
        let mut append = String::from("console=ttyS0 panic=-1");
        for arg in &config.kernel_args {
            append.push(' ');
            append.push_str(arg);
        }
        let mut netdev = String::from("user,id=n0");
        for (host_port, guest_port) in &config.host_forwards {
            netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host_port}-:{guest_port}"));
        }
        let mut cmd = Command::new(&config.qemu_command[0]);
        cmd.args(&config.qemu_command[1..])
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .args(["-accel", "tcg", "-cpu", "max"])
            .args(["-m", &config.memory_mib.to_string()])
            .args(["-smp", &config.cpus.to_string()])
            .arg("-no-reboot")
            .arg("-kernel")
            .arg(&assets.kernel)
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", &append])
            .args(["-netdev", &netdev])
            // No option ROM: the guest boots from -kernel, and this spares a dependency on
            // the ipxe ROM package.
            .args(["-device", "virtio-net-pci,netdev=n0,romfile="])
            .args(["-serial", "stdio"])
            // wait=on: QEMU starts the guest only once the harness is connected, so no early
            // line of the test channel is lost.
            .arg("-chardev")
            .arg(format!(
                "socket,id=testout,path={},server=on,wait=on",
                socket.display()
            ))
            .args(["-serial", "chardev:testout"])
            .args(&config.qemu_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());

        die_with_harness(&mut cmd);
        shared
            .lock()
            .push(Source::Harness, &format!("starting {cmd:?}"));
        let mut child = cmd.spawn().map_err(|e| {
            let program = config.qemu_command[0].to_string_lossy();
            if e.kind() == std::io::ErrorKind::NotFound {
                anyhow!(
                    "{program} not found: install the Debian package qemu-system-x86 \
                     (guest-images/build-test-initramfs.sh does, run as root)"
                )
            } else {
                anyhow!("starting {program}: {e}")
            }
        })?;

        let mut readers = Vec::new();
        let stdout = child.stdout.take().expect("stdout is piped");
        readers.push(spawn_reader(&shared, Source::Console, stdout));
        let stderr = child.stderr.take().expect("stderr is piped");
        readers.push(spawn_reader(&shared, Source::Qemu, stderr));

        let mut guest = Guest {
            name: config.name.clone(),
            child,
            shared,
            readers,
            log_path,
            cursor: 0,
            input: None,
            exit_code: None,
            _workdir: workdir,
        };
        let stream = guest.connect_test_channel(&socket)?;
        guest.input = Some(
            stream
                .try_clone()
                .context("duplicating the test channel's socket")?,
        );
        let reader = spawn_reader(&guest.shared, Source::Test, stream);
        guest.readers.push(reader);
        Ok(guest)
    }

    fn connect_test_channel(&mut self, socket: &Path) -> Result<UnixStream> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match UnixStream::connect(socket) {
                Ok(stream) => return Ok(stream),
                Err(e) => {
                    if let Some(status) = self.child.try_wait()? {
                        return Err(self
                            .failure(&format!("QEMU exited ({status}) before the guest started")));
                    }
                    if Instant::now() >= deadline {
                        return Err(self.failure(&format!(
                            "cannot connect to QEMU's serial socket {}: {e}",
                            socket.display()
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    /// The guest's name (its log file's stem).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The merged log of this guest.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Writes a note into the guest's log, to show in it what the host side did and when.
    pub fn note(&self, text: &str) {
        self.shared.lock().push(Source::Harness, text);
    }

    /// All lines printed so far on the test channel (by `/init` and the test's script).
    pub fn test_lines(&self) -> Vec<String> {
        self.shared.lock().test_lines.clone()
    }

    /// The value of the first test-channel line `KEY=value`.
    pub fn marker(&self, key: &str) -> Option<String> {
        self.markers(key).into_iter().next()
    }

    /// The values of all test-channel lines `KEY=value`, in order.
    pub fn markers(&self, key: &str) -> Vec<String> {
        let prefix = format!("{key}=");
        self.test_lines()
            .iter()
            .filter_map(|line| line.strip_prefix(&prefix).map(|v| v.trim().to_owned()))
            .collect()
    }

    /// Waits for a test-channel line containing `pattern` and returns it. The search starts
    /// after the line the previous call matched, so waiting for the same marker twice waits
    /// for two of them.
    pub fn wait_for_line(&mut self, pattern: &str, timeout: Duration) -> Result<String> {
        let cursor = self.cursor;
        let (index, line) = self.wait_for_test_line(
            timeout,
            |lines| {
                let offset = lines[cursor..]
                    .iter()
                    .position(|line| line.contains(pattern))?;
                Some((cursor + offset, lines[cursor + offset].clone()))
            },
            &format!("the guest ended without printing a line containing {pattern:?}"),
            &format!("no line containing {pattern:?} within {timeout:?}"),
        )?;
        self.cursor = index + 1;
        Ok(line)
    }

    /// Waits until `found` finds what it looks for in the test channel's lines, woken by each
    /// new line. Fails with `ended` when the guest closes its output first, and with `late`
    /// when `timeout` passes.
    fn wait_for_test_line<T>(
        &self,
        timeout: Duration,
        mut found: impl FnMut(&[String]) -> Option<T>,
        ended: &str,
        late: &str,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        loop {
            if let Some(value) = found(&state.test_lines) {
                return Ok(value);
            }
            if state.open_streams == 0 {
                drop(state);
                return Err(self.failure(ended));
            }
            let now = Instant::now();
            if now >= deadline {
                drop(state);
                return Err(self.failure(late));
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Sends a line to the guest over the test channel: the script can read it from
    /// `/dev/ttyS1` (a tty in canonical mode without echo, so it arrives as one line).
    pub fn send_line(&mut self, line: &str) -> Result<()> {
        if line.contains(['\n', '\r']) {
            return Err(anyhow!(
                "a line sent to the guest must not contain line breaks: {line:?}"
            ));
        }
        let input = self
            .input
            .as_mut()
            .ok_or_else(|| anyhow!("guest {}: the test channel is closed", self.name))?;
        input
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| input.flush())
            .map_err(|e| self.failure(&format!("sending a line to the guest: {e}")))
    }

    /// Waits for the script's exit marker and for QEMU to exit, and returns the script's exit
    /// code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<i32> {
        if let Some(code) = self.exit_code {
            return Ok(code);
        }
        let line = self.wait_for_test_line(
            timeout,
            |lines| {
                lines
                    .iter()
                    .find(|line| line.starts_with(EXIT_MARKER))
                    .cloned()
            },
            "the guest ended without printing its exit marker",
            &format!("the test script did not finish within {timeout:?}"),
        )?;
        let code = line[EXIT_MARKER.len()..]
            .trim()
            .parse::<i32>()
            .map_err(|_| {
                anyhow!(
                    "malformed exit marker {line:?} in {}",
                    self.log_path.display()
                )
            })?;

        // The guest powers off right after the marker; give QEMU a moment to notice.
        let exited = crate::util::wait_until(Duration::from_secs(30), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        if !exited {
            self.note("QEMU still running 30 s after the exit marker; killing it");
            self.kill();
        }
        self.exit_code = Some(code);
        Ok(code)
    }

    /// Kills QEMU and waits for its output to be drained into the log.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }

    /// An error that says what went wrong and where to read the guest's log; the log's last
    /// lines are printed to stderr as well.
    fn failure(&self, what: &str) -> anyhow::Error {
        anyhow!(
            "guest {}: {what}\nconsole log: {}\nlast lines:\n{}",
            self.name,
            self.log_path.display(),
            tail_lines(&self.log_path, TAIL_LINES)
        )
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.kill();
        // The runner shows a test's stderr only when it fails, which is when this matters.
        if !crate::util::log_tails() {
            return;
        }
        eprintln!(
            "---- guest {}: console log {} (last {TAIL_LINES} lines) ----\n{}\n---- end of guest {} ----",
            self.name,
            self.log_path.display(),
            tail_lines(&self.log_path, TAIL_LINES),
            self.name
        );
    }
}

/// Writes the initrd: the cached initramfs, zero padding to a multiple of 4 bytes (the kernel
/// looks for a following archive only at such offsets and skips zeros between archives), then
/// an archive with `/test.sh` and the test's files.
fn write_initrd(base: &Path, config: &GuestConfig, dest: &Path) -> Result<()> {
    let mut bytes = std::fs::read(base).with_context(|| format!("reading {}", base.display()))?;
    while bytes.len() % 4 != 0 {
        bytes.push(0);
    }
    let mut archive = CpioArchive::new();
    archive.add_file("/test.sh", config.test_script().as_bytes(), 0o755);
    for (path, contents, mode) in &config.files {
        archive.add_file(path, contents, *mode);
    }
    bytes.extend_from_slice(&archive.finish());
    std::fs::write(dest, bytes).with_context(|| format!("writing {}", dest.display()))
}

fn spawn_reader(
    shared: &Arc<Shared>,
    source: Source,
    mut input: impl Read + Send + 'static,
) -> JoinHandle<()> {
    shared.lock().open_streams += 1;
    let shared = Arc::clone(shared);
    std::thread::spawn(move || {
        let mut pending: Vec<u8> = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = match input.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            pending.extend_from_slice(&buf[..n]);
            let mut state = shared.lock();
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                state.push(source, &clean_line(&line));
            }
            drop(state);
            shared.changed.notify_all();
        }
        let mut state = shared.lock();
        if !pending.is_empty() {
            state.push(source, &clean_line(&pending));
        }
        state.open_streams -= 1;
        drop(state);
        shared.changed.notify_all();
    })
}

/// A line without its line ending and carriage returns (ttys send "\r\n").
fn clean_line(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw)
        .trim_end_matches('\n')
        .replace('\r', "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_exports_quoted_variables_before_the_prelude() {
        let script = GuestConfig::new("t", "echo body")
            .env("VUSB_PORT", 3240)
            .env("ODD", "it's")
            .test_script();
        assert!(script.starts_with("export VUSB_HOST='10.0.2.2'\n"));
        assert!(script.contains("export VUSB_PORT='3240'\n"));
        assert!(script.contains(r"export ODD='it'\''s'"));
        assert!(script.find("wait_for()").unwrap() < script.find("echo body").unwrap());
    }

    #[test]
    fn lines_lose_their_line_endings() {
        assert_eq!(clean_line(b"reading 1: 20.00 C\r\n"), "reading 1: 20.00 C");
        assert_eq!(clean_line(b"partial"), "partial");
    }
}
