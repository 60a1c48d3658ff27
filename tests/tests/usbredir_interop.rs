//! vusb-backend's usbredir front-end next to usbredir's own host side: the same real devices
//! reach a stock guest on Debian 12's QEMU (7.2: `usb-redir` on an emulated xHCI, a stock
//! kernel, no driver of ours) once through Debian's `usbredirect` running in the HRH, once
//! through hrh-exporter and `vusb-backend --frontend usbredir`, and the guest must see the
//! same through both.
//!
//! ```text
//!  HRH guest (tests/src/hrh.rs)                   host                       vHOME guest
//!  gadgets ─┬ usbredirect :4001, :4002 ◄─ hostfwd ◄──────────────── usb-redir ─ xHCI 00:08.0
//!           └ hrh-exporter :3240       ◄─ hostfwd ◄─ vusb-backend ◄─ usb-redir ─ xHCI 00:09.0
//! ```
//!
//! One HRH and one vHOME guest serve both routes, one after the other, on the same two
//! devices: the CDC-ACM serial gadget and the mass-storage gadget, one usbredir connection
//! each (usbredirect redirects one device, vusb-backend's front-end takes one `--device`). The
//! vHOME has all four `usb-redir` devices from boot, each route's behind an xHCI of its own;
//! their chardevs reconnect, so a route's devices appear when its server starts. Per route:
//!
//! * both devices enumerate behind that route's controller and get their class drivers;
//! * a line written to the vHOME's /dev/ttyACM0 reaches the HRH's /dev/ttyGS0, which echoes
//!   it back;
//! * 4 MiB written to /dev/sda (the same bytes for both routes; the HRH's backing file is
//!   zeroed in between) read back past the page cache and are in the backing file;
//! * both gadgets are unplugged in the HRH while a reader is blocked on the serial port and
//!   disk reads are in flight: the devices must leave the vHOME's sysfs, their nodes go, their
//!   users end, and the vHOME's kernel logs no Oops, BUG or WARNING.
//!
//! Both routes must pass every check, and everything observed (descriptors, drivers, echoed
//! lines, checksums, what the unplug did) must be the same. Durations, how the HRH's servers
//! fared and what QEMU printed are reported, not compared: usbredirhost goes on sending the
//! failed transfers of an interrupt IN stream after its device_disconnect, which QEMU reports
//! as errors ("received int packet for non interrupt endpoint"), while vusb-backend answers
//! what is pending first, and must leave QEMU nothing to report.
//!
//! Run with `cargo nextest run -p vusb-vm-tests --run-ignored only -E
//! 'binary(usbredir_interop)'` after `cargo build --workspace` (or through scripts/test.sh).

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use vusb_vm_tests::hrh::{CLIENT_FUNCTIONS, COMMON_FUNCTIONS};
use vusb_vm_tests::remote::SERVE_FUNCTION;
use vusb_vm_tests::vhome_guest::{check_console, kernel_trouble};
use vusb_vm_tests::{find_device, Backend, Guest, GuestConfig, Hrh, HrhConfig, Remote, Server};

/// Two TCG guests boot at once: 10–20 s alone, more together on a loaded machine.
const BOOT: Duration = Duration::from_secs(180);
/// An ordinary step (a few shell commands).
const STEP: Duration = Duration::from_secs(60);
/// How much the storage step writes and reads back.
const STORAGE_MIB: u32 = 4;
/// The HRH's TCP ports where usbredirect serves each device.
const ACM_REDIR_PORT: u16 = 4001;
const STORAGE_REDIR_PORT: u16 = 4002;
/// The devices of the scenario, by their name in the HRH.
const DEVICES: [&str; 2] = ["acm", "storage"];

/// One way from the HRH's devices to the vHOME's `usb-redir`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// Debian's `usbredirect` in the HRH, QEMU connected to it over TCP.
    Usbredirect,
    /// hrh-exporter in the HRH, `vusb-backend --frontend usbredir` on the host.
    VusbBackend,
}

impl Route {
    fn name(self) -> &'static str {
        match self {
            Route::Usbredirect => "usbredirect",
            Route::VusbBackend => "vusb-backend",
        }
    }

    /// The PCI address of the vHOME's xHCI controller that holds this route's devices.
    fn controller(self) -> &'static str {
        match self {
            Route::Usbredirect => "0000:00:08.0",
            Route::VusbBackend => "0000:00:09.0",
        }
    }

    /// The QEMU id of that controller and its slot (`-device qemu-xhci,addr=`).
    fn xhci(self) -> (&'static str, u8) {
        match self {
            Route::Usbredirect => ("stockxhci", 8),
            Route::VusbBackend => ("oursxhci", 9),
        }
    }
}

/// Shell functions of the vHOME guest, after [`COMMON_FUNCTIONS`] and [`CLIENT_FUNCTIONS`]
/// (`dev_dir`, `configured`, `describe`, `serial_*`, `watchers_ended`).
const VHOME_FUNCTIONS: &str = r#"
# bound VID:PID: every interface of the device has its driver (class drivers bind a moment
# after the device is configured, once the hotplug helper has loaded their modules).
bound() {
    _d=$(dev_dir "$1") || return 1
    for _i in "$_d"/*:*; do
        [ -e "$_i/driver" ] || return 1
    done
}

# arrived VID:PID PCI: the device is configured behind the xHCI controller at PCI address PCI
# and bound to its drivers.
arrived() {
    _d=$(dev_dir "$1") || return 1
    readlink -f "$_d" | grep -q "/$2/usb[0-9]*/" && configured "$1" && bound "$1"
}

# arrive VID:PID PCI: waits for arrived, and says where the device is when it does not.
arrive() {
    wait_for 90 arrived "$1" "$2" && return 0
    if _d=$(dev_dir "$1"); then
        echo "$1 is at $(readlink -f "$_d"), not configured behind $2 with its drivers bound"
        describe "$1"
    else
        echo "no USB device $1 appeared within 90 s"
    fi
    return 1
}

# serial_received TEXT SECONDS: waits for TEXT on /dev/ttyACM0 and prints the first line that
# came as RECEIVED=… .
serial_received() {
    serial_expect "$1" "$2" || return 1
    echo "RECEIVED=$(head -n 1 /tmp/serial.in | tr -d '\r')"
}

# storage_write_read MIB: writes MIB MiB of random data to /dev/sda (the same data on every
# call, so that two routes can be compared), reads them back past the page cache and prints
# both hashes.
storage_write_read() {
    [ -f /tmp/data ] || dd if=/dev/urandom of=/tmp/data bs=1M count="$1" 2>/dev/null || return 1
    echo "WRITTEN-SHA256=$(sha256sum </tmp/data | cut -d' ' -f1)"
    dd if=/tmp/data of=/dev/sda bs=1M conv=fsync 2>/tmp/dd.err || { cat /tmp/dd.err; return 1; }
    echo 3 >/proc/sys/vm/drop_caches
    echo "READBACK-SHA256=$(dd if=/dev/sda bs=1M count="$1" iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)"
}

# hold_devices: users of both devices for the unplug: a reader blocked on the serial port and
# a loop of direct reads from the disk, so that transfers are in flight when they go.
hold_devices() {
    rm -f /tmp/watch-*.pid
    cat /dev/ttyACM0 >/dev/null 2>&1 &
    echo $! >/tmp/watch-acm.pid
    sh -c 'while dd if=/dev/sda of=/dev/null bs=64k count=16 iflag=direct 2>/dev/null; do :; done' &
    echo $! >/tmp/watch-sda.pid
    wait_for 10 holds_open "$(cat /tmp/watch-acm.pid)" /dev/ttyACM0
}

gone_from_sysfs() {
    for _id in "$@"; do
        ! dev_dir "$_id" >/dev/null || return 1
    done
}
nodes_gone() { [ ! -e /dev/ttyACM0 ] && [ ! -e /dev/sda ]; }
all_gone() { gone_from_sysfs "$@" && nodes_gone && watchers_ended; }
yes_no() { if "$@"; then echo yes; else echo no; fi; }

# unplug_outcome VID:PID...: waits up to 60 s for the devices, their nodes and their users to
# go, then says which did.
unplug_outcome() {
    wait_for 60 all_gone "$@"
    echo "GONE-FROM-SYSFS=$(yes_no gone_from_sysfs "$@")"
    echo "NODES-GONE=$(yes_no nodes_gone)"
    echo "USERS-ENDED=$(yes_no watchers_ended)"
}
"#;

/// What the vHOME's USB core made of a device.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Enumerated {
    speed: String,
    configuration: String,
    /// The hash of every descriptor byte the guest read from the device.
    descriptors_sha256: String,
    /// "N cc/ss/pp alt=A driver=D" per interface.
    interfaces: Vec<String>,
}

/// What one route achieved, in a form two routes can be compared in. Durations and other
/// informative findings are in [`Notes`], left out of comparisons.
#[derive(Debug, Clone, PartialEq)]
struct Observed {
    /// Per device name.
    devices: BTreeMap<String, Enumerated>,
    /// The first line the HRH's /dev/ttyGS0 received.
    serial_at_hrh: Option<String>,
    /// The first line the vHOME's /dev/ttyACM0 received: the HRH's echo.
    serial_echo_at_vhome: Option<String>,
    /// Hashes of the data written to /dev/sda, of what was read back, and of the HRH's
    /// backing file afterwards.
    storage_written: Option<String>,
    storage_read_back: Option<String>,
    storage_in_backing_file: Option<String>,
    /// After the unplug: the devices left the vHOME's sysfs, /dev/ttyACM0 and /dev/sda went,
    /// and the processes using them ended.
    unplug_gone_from_sysfs: bool,
    unplug_nodes_gone: bool,
    unplug_users_ended: bool,
    /// Kernel console lines of the vHOME during this route that mean a kernel bug.
    kernel_trouble: Vec<String>,
    notes: Notes,
}

#[derive(Debug, Clone, Default)]
#[allow(dead_code)] // read through Debug
struct Notes {
    /// From the server's start until both devices were ready in the vHOME.
    enumeration: Duration,
    serial: Duration,
    storage: Duration,
    unplug_to_gone: Duration,
    /// The HRH's server processes still ran after the unplug.
    server_alive_after_unplug: bool,
    /// How usbredirect processes ended (their exit status, from the HRH's server log).
    server_exits: Vec<String>,
    /// QEMU's own messages in the vHOME's log during this route.
    qemu_messages: Vec<String>,
    /// Kernel console lines of the HRH during this route that mean a kernel bug.
    hrh_kernel_trouble: Vec<String>,
}

impl PartialEq for Notes {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Observed {
    /// Each compared field by name, for naming the ones where two routes differ.
    fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("devices", format!("{:#?}", self.devices)),
            ("serial_at_hrh", format!("{:?}", self.serial_at_hrh)),
            (
                "serial_echo_at_vhome",
                format!("{:?}", self.serial_echo_at_vhome),
            ),
            ("storage_written", format!("{:?}", self.storage_written)),
            ("storage_read_back", format!("{:?}", self.storage_read_back)),
            (
                "storage_in_backing_file",
                format!("{:?}", self.storage_in_backing_file),
            ),
            (
                "unplug_gone_from_sysfs",
                format!("{:?}", self.unplug_gone_from_sysfs),
            ),
            ("unplug_nodes_gone", format!("{:?}", self.unplug_nodes_gone)),
            (
                "unplug_users_ended",
                format!("{:?}", self.unplug_users_ended),
            ),
            ("kernel_trouble", format!("{:#?}", self.kernel_trouble)),
        ]
    }
}

/// What a guest's log got from `offset` (bytes) on.
fn log_since(guest: &Guest, offset: u64) -> Result<String> {
    let bytes = std::fs::read(guest.log_path())
        .with_context(|| format!("reading {}", guest.log_path().display()))?;
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    Ok(String::from_utf8_lossy(&bytes[start..]).into_owned())
}

/// The length of a guest's log now, where [`log_since`] can start later.
fn log_len(guest: &Guest) -> u64 {
    std::fs::metadata(guest.log_path()).map_or(0, |m| m.len())
}

/// QEMU's own messages (its stderr) in a piece of a guest's log, without their time stamps.
fn qemu_messages(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|line| line.split_once(" qemu    | ").map(|(_, m)| m.trim()))
        .filter(|m| !m.is_empty())
        .map(str::to_owned)
        .collect()
}

fn token() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("interop-{nanos:09}")
}

/// The vHOME's QEMU arguments: per route an xHCI controller at a known PCI slot with one
/// `usb-redir` per device, whose chardev reconnects every second until its server is there.
fn vhome_qemu_args(hrh: &Hrh, acm: &Backend, storage: &Backend) -> Result<Vec<String>> {
    let mut args = Vec::new();
    for route in [Route::Usbredirect, Route::VusbBackend] {
        let (xhci, slot) = route.xhci();
        args.extend([
            "-device".to_owned(),
            format!("qemu-xhci,id={xhci},addr={slot}"),
        ]);
        for device in DEVICES {
            let id = format!("{xhci}-{device}");
            let chardev = match route {
                Route::Usbredirect => {
                    let guest_port = if device == "acm" {
                        ACM_REDIR_PORT
                    } else {
                        STORAGE_REDIR_PORT
                    };
                    format!(
                        "socket,id={id},host=127.0.0.1,port={},reconnect=1",
                        hrh.forwarded_port(guest_port)?
                    )
                }
                Route::VusbBackend => {
                    let backend = if device == "acm" { acm } else { storage };
                    format!(
                        "socket,id={id},path={},reconnect=1",
                        backend.socket_path().display()
                    )
                }
            };
            args.extend([
                "-chardev".to_owned(),
                chardev,
                "-device".to_owned(),
                format!("usb-redir,chardev={id},id={id}-redir,bus={xhci}.0"),
            ]);
        }
    }
    Ok(args)
}

/// Boots the vHOME guest: stock kernel, the xHCI driver loaded, serving commands.
fn boot_vhome(name: &str, qemu_args: Vec<String>) -> Result<Remote> {
    let script = format!(
        r#"{COMMON_FUNCTIONS}
{CLIENT_FUNCTIONS}
{VHOME_FUNCTIONS}
{SERVE_FUNCTION}
# The stock xHCI driver; the guest's init loads drivers only for hot-plugged devices.
modprobe xhci-pci || fail "modprobe xhci-pci failed"
vusb_serve
"#
    );
    let config = GuestConfig::new(name, &script)
        .memory_mib(512)
        .qemu_args(qemu_args);
    Ok(Remote::new(Guest::boot(config)?))
}

/// One route of the scenario, from starting its server to putting the HRH back as it was
/// (gadgets plugged in, backing file zeroed, no server).
fn run_route(
    hrh: &mut Hrh,
    vhome: &mut Remote,
    route: Route,
    ids: &BTreeMap<&str, String>,
    token: &str,
) -> Result<Observed> {
    let who = route.name();
    let banner = format!("==== route {who} ====");
    hrh.remote().guest().note(&banner);
    vhome.guest().note(&banner);
    let vhome_start = log_len(vhome.guest());
    let hrh_start = log_len(hrh.remote().guest());

    // The server; the vHOME's chardevs connect by themselves.
    let started = Instant::now();
    match route {
        Route::Usbredirect => {
            hrh.start_usbredirect("acm", ACM_REDIR_PORT)?;
            hrh.start_usbredirect("storage", STORAGE_REDIR_PORT)?;
        }
        Route::VusbBackend => {
            hrh.start_server(Server::HrhExporter)?;
        }
    }
    let mut devices = BTreeMap::new();
    for device in DEVICES {
        let id = &ids[device];
        vhome
            .check(
                &format!("arrive {id} {}", route.controller()),
                Duration::from_secs(120),
            )
            .with_context(|| format!("{who}: the {device} device did not arrive"))?;
    }
    for (node, test) in [("/dev/ttyACM0", "-c"), ("/dev/sda", "-b")] {
        vhome
            .check(
                &format!("wait_for 60 test {test} {node} || fail '{node} did not appear'"),
                Duration::from_secs(90),
            )
            .with_context(|| format!("{who}: no {node}"))?;
    }
    let enumeration = started.elapsed();
    for device in DEVICES {
        let out = vhome.check(&format!("describe {}", ids[device]), STEP)?;
        devices.insert(
            device.to_owned(),
            Enumerated {
                speed: out.required("SPEED")?.to_owned(),
                configuration: out.required("CONFIGURATION")?.to_owned(),
                descriptors_sha256: out.required("DESCRIPTORS-SHA256")?.to_owned(),
                interfaces: out
                    .lines
                    .iter()
                    .filter_map(|l| l.strip_prefix("INTERFACE=").map(str::to_owned))
                    .collect(),
            },
        );
    }

    // Serial: a line to the HRH, which echoes it back.
    let serial_started = Instant::now();
    hrh.remote().check("serial_listen", STEP)?;
    vhome.check("serial_listen", STEP)?;
    vhome.check(&format!("serial_send {token}"), STEP)?;
    let out = hrh.remote().run(&format!("serial_echo {token} 20"), STEP)?;
    let serial_at_hrh = out.value("RECEIVED").map(str::to_owned);
    let out = vhome.run(&format!("serial_received echo:{token} 20"), STEP)?;
    let serial_echo_at_vhome = out.value("RECEIVED").map(str::to_owned);
    let serial = serial_started.elapsed();

    // Mass storage.
    let out = vhome.run(
        &format!("storage_write_read {STORAGE_MIB}"),
        Duration::from_secs(240),
    )?;
    let storage = out.elapsed;
    let storage_written = out.value("WRITTEN-SHA256").map(str::to_owned);
    let storage_read_back = out.value("READBACK-SHA256").map(str::to_owned);
    let out = hrh
        .remote()
        .check(&format!("storage_sha256 {STORAGE_MIB}"), STEP)?;
    let storage_in_backing_file = out.value("IMAGE-SHA256").map(str::to_owned);

    // Unplug both gadgets while the vHOME uses them.
    vhome.check("hold_devices", STEP)?;
    // Let the disk reads get going.
    std::thread::sleep(Duration::from_secs(1));
    hrh.remote().check(
        "sh /hrh-gadgets.sh down acm && sh /hrh-gadgets.sh down storage",
        STEP,
    )?;
    let unplugged_at = Instant::now();
    let out = vhome.check(
        &format!("unplug_outcome {} {}", ids["acm"], ids["storage"]),
        Duration::from_secs(90),
    )?;
    let unplug_to_gone = unplugged_at.elapsed();
    let yes = |key: &str| -> Result<bool> { Ok(out.required(key)? == "yes") };
    let unplug_gone_from_sysfs = yes("GONE-FROM-SYSFS")?;
    let unplug_nodes_gone = yes("NODES-GONE")?;
    let unplug_users_ended = yes("USERS-ENDED")?;
    if !(unplug_gone_from_sysfs && unplug_nodes_gone && unplug_users_ended) {
        vhome.run(
            "ls -l /dev/ttyACM0 /dev/sda; ls /sys/bus/usb/devices; ps; for f in /tmp/watch-*.pid; do echo \"$f: $(cat $f)\"; done",
            STEP,
        )?;
    }

    // Back to the starting point: the server stopped, the gadgets back, the backing file
    // zeroed so that the next route's data must get there afresh.
    let server_alive_after_unplug = match route {
        Route::Usbredirect => {
            let mut alive = true;
            for device in DEVICES {
                alive &= hrh.usbredirect_alive(device)?;
                hrh.stop_usbredirect(device)?;
            }
            alive
        }
        Route::VusbBackend => {
            let alive = hrh.remote().run("server_alive", STEP)?.rc == 0;
            hrh.stop_server()?;
            alive
        }
    };
    hrh.remote().check(
        &format!(
            "kill $(cat /tmp/serial.pid) 2>/dev/null; \
             dd if=/dev/zero of=/tmp/hrh-storage.img bs=1M count={STORAGE_MIB} conv=notrunc 2>/dev/null && sync && \
             sh /hrh-gadgets.sh up acm && sh /hrh-gadgets.sh up storage"
        ),
        STEP,
    )?;
    vhome.check("kill $(cat /tmp/serial.pid) 2>/dev/null; true", STEP)?;

    let vhome_log = log_since(vhome.guest(), vhome_start)?;
    let hrh_log = log_since(hrh.remote().guest(), hrh_start)?;
    let banner = format!("==== end of route {who} ====");
    hrh.remote().guest().note(&banner);
    vhome.guest().note(&banner);
    Ok(Observed {
        devices,
        serial_at_hrh,
        serial_echo_at_vhome,
        storage_written,
        storage_read_back,
        storage_in_backing_file,
        unplug_gone_from_sysfs,
        unplug_nodes_gone,
        unplug_users_ended,
        kernel_trouble: kernel_trouble(&vhome_log)
            .into_iter()
            .map(str::to_owned)
            .collect(),
        notes: Notes {
            enumeration,
            serial,
            storage,
            unplug_to_gone,
            server_alive_after_unplug,
            server_exits: hrh_log
                .lines()
                .filter(|line| line.contains("exited with status"))
                .map(|line| line.split_once("| ").map_or(line, |(_, l)| l).to_owned())
                .collect(),
            qemu_messages: qemu_messages(&vhome_log),
            hrh_kernel_trouble: kernel_trouble(&hrh_log)
                .into_iter()
                .map(str::to_owned)
                .collect(),
        },
    })
}

/// What every route must achieve.
fn assert_route_works(route: Route, seen: &Observed, token: &str) -> Result<()> {
    let who = route.name();
    for device in DEVICES {
        let d = seen
            .devices
            .get(device)
            .with_context(|| format!("{who}: the {device} device was not seen"))?;
        ensure!(
            !d.interfaces.is_empty() && d.interfaces.iter().all(|i| !i.ends_with("driver=")),
            "{who}: an interface of the {device} device has no driver: {:?}",
            d.interfaces
        );
    }
    ensure!(
        seen.serial_at_hrh.as_deref() == Some(token),
        "{who}: the HRH's /dev/ttyGS0 received {:?}, not the line {token:?} written to the vHOME's /dev/ttyACM0",
        seen.serial_at_hrh
    );
    let echo = format!("echo:{token}");
    ensure!(
        seen.serial_echo_at_vhome.as_deref() == Some(echo.as_str()),
        "{who}: the vHOME's /dev/ttyACM0 received {:?}, not the HRH's echo {echo:?}",
        seen.serial_echo_at_vhome
    );
    let written = seen
        .storage_written
        .as_deref()
        .with_context(|| format!("{who}: writing to /dev/sda failed"))?;
    ensure!(
        seen.storage_read_back.as_deref() == Some(written),
        "{who}: /dev/sda read back {:?}, {written} was written",
        seen.storage_read_back
    );
    ensure!(
        seen.storage_in_backing_file.as_deref() == Some(written),
        "{who}: the HRH's backing file holds {:?}, {written} was written",
        seen.storage_in_backing_file
    );
    ensure!(
        seen.unplug_gone_from_sysfs,
        "{who}: the unplugged devices were still in the vHOME's sysfs 60 s later"
    );
    ensure!(
        seen.unplug_nodes_gone,
        "{who}: /dev/ttyACM0 or /dev/sda was still there 60 s after the unplug"
    );
    ensure!(
        seen.unplug_users_ended,
        "{who}: processes using the unplugged devices were still running 60 s later"
    );
    ensure!(
        seen.kernel_trouble.is_empty(),
        "{who}: the vHOME's kernel reported trouble:\n{}",
        seen.kernel_trouble.join("\n")
    );
    Ok(())
}

/// Both routes must pass, and vusb-backend must give the guest what usbredirect gives it.
fn compare(stock: &Observed, ours: &Observed, token: &str) -> Result<()> {
    let stock_ok = assert_route_works(Route::Usbredirect, stock, token);
    let ours_ok = assert_route_works(Route::VusbBackend, ours, token);
    match (stock_ok, ours_ok) {
        (Ok(()), Ok(())) => {}
        (Err(s), Err(o)) => bail!("both routes failed:\n{s:#}\n{o:#}"),
        (Err(e), Ok(())) | (Ok(()), Err(e)) => return Err(e),
    }
    let differences: Vec<String> = stock
        .fields()
        .into_iter()
        .zip(ours.fields())
        .filter(|((_, s), (_, o))| s != o)
        .map(|((field, s), (_, o))| {
            format!(
                "{field}:\n  {}: {s}\n  {}: {o}",
                Route::Usbredirect.name(),
                Route::VusbBackend.name()
            )
        })
        .collect();
    ensure!(
        differences.is_empty(),
        "{} differs from {} (the reference) in what the guest saw:\n{}",
        Route::VusbBackend.name(),
        Route::Usbredirect.name(),
        differences.join("\n")
    );
    // The fields list must cover everything compared.
    ensure!(stock == ours, "the routes differ in a field left unnamed");
    Ok(())
}

#[test]
#[ignore = "boots a QEMU guest; run via scripts/test.sh"]
fn usbredirect_and_vusb_backend_agree() -> Result<()> {
    let name = "usbredir_interop";
    let mut hrh = Hrh::boot(
        HrhConfig::new(&format!("{name}-hrh"))
            .with_exporter()
            .forward(ACM_REDIR_PORT)
            .forward(STORAGE_REDIR_PORT),
    )?;
    // The backends wait for QEMU from the start and import the devices by VID:PID (the ids
    // of hrh-gadgets.sh) once hrh-exporter serves them; until then they keep trying.
    let url = |id: &str| format!("tcp://127.0.0.1:{}/{id}", hrh.port());
    let acm_backend =
        Backend::spawn_usbredir(&format!("{name}-acm"), ["--device", &url("1209:000a")])?;
    let storage_backend =
        Backend::spawn_usbredir(&format!("{name}-storage"), ["--device", &url("1209:000b")])?;
    let mut vhome = boot_vhome(
        &format!("{name}-vhome"),
        vhome_qemu_args(&hrh, &acm_backend, &storage_backend)?,
    )?;
    let hrh_devices = hrh.wait_ready(BOOT)?;
    vhome.wait_ready(BOOT)?;
    let mut ids = BTreeMap::new();
    for device in DEVICES {
        ids.insert(device, find_device(&hrh_devices, device)?.id.clone());
    }
    ensure!(
        ids["acm"] == "1209:000a" && ids["storage"] == "1209:000b",
        "the HRH's gadgets have other ids than the backends import: {ids:?}"
    );

    let token = token();
    let stock = run_route(&mut hrh, &mut vhome, Route::Usbredirect, &ids, &token)
        .context("the usbredirect route")?;
    eprintln!("usbredirect: {stock:#?}");
    let ours = run_route(&mut hrh, &mut vhome, Route::VusbBackend, &ids, &token)
        .context("the vusb-backend route")?;
    eprintln!("vusb-backend: {ours:#?}");

    // Boot and the time between the routes count too.
    check_console(vhome.guest())?;
    assert_eq!(vhome.finish(STEP)?, 0, "the vHOME's script failed");
    assert_eq!(hrh.finish(STEP)?, 0, "the HRH's script failed");
    for backend in [&acm_backend, &storage_backend] {
        let log = backend.log()?;
        ensure!(
            !log.contains("panicked"),
            "vusb-backend panicked; its log:\n{log}"
        );
    }
    compare(&stock, &ours, &token)?;
    // hrh-exporter outlives its devices (README); usbredirect's behaviour is only reported.
    ensure!(
        ours.notes.server_alive_after_unplug,
        "hrh-exporter exited when its devices were unplugged"
    );
    let complaints: Vec<&String> = ours
        .notes
        .qemu_messages
        .iter()
        .filter(|m| m.contains("usb-redir"))
        .collect();
    ensure!(
        complaints.is_empty(),
        "QEMU's usb-redir reported errors during the vusb-backend route:\n{complaints:#?}"
    );
    eprintln!(
        "durations (TCG, informative only):\n  usbredirect:  {:?}\n  vusb-backend: {:?}",
        stock.notes, ours.notes
    );
    Ok(())
}
