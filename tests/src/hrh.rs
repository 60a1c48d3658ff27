//! The two-guest test bed: a guest playing the Home Radio Head (HRH), with real kernel USB
//! devices and a USB/IP server, and a client guest with the stock Linux USB/IP client.
//!
//! ```text
//!  HRH guest                                          client guest
//!  configfs gadgets on dummy_hcd ─┐                   usbip attach + vhci-hcd,
//!  QEMU usb-audio on qemu-xhci ───┴ usbipd+usbip-host  cdc_acm, usb-storage, usbhid,
//!                                   or hrh-exporter     snd-usb-audio
//!        :3240 ◄── hostfwd 127.0.0.1:PORT ◄── 10.0.2.2:PORT ─┘
//! ```
//!
//! The HRH's devices are those of `guest-images/hrh-gadgets.sh` (a CDC-ACM serial port, a
//! mass-storage device backed by a file and a vendor-defined HID device, each a separate
//! device on a root hub of its own) plus QEMU's emulated USB audio device, the only
//! isochronous device at hand: dummy_hcd has no isochronous endpoints. QEMU writes what the
//! audio device plays into a WAV file on the host ([`Hrh::wav_path`]), so a test can check
//! that isochronous data crossed the link.
//!
//! Both guests serve shell commands ([`Remote`]); the functions of [`HRH_FUNCTIONS`] and
//! [`CLIENT_FUNCTIONS`] are the vocabulary of the tests. The HRH forwards the server's log to
//! its test channel with the prefix `server| `, so it shows in the HRH's log as it happens.
//!
//! Instead of a USB/IP server, the HRH can run Debian's `usbredirect` on one of its devices
//! ([`Hrh::start_usbredirect`]): a usbredir server on a TCP port of the guest, which
//! [`HrhConfig::forward`] makes reachable from the host, where QEMU's `usb-redir` connects.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::guest::{Guest, GuestConfig};
use crate::remote::{Output, Remote, SERVE_FUNCTION};
use crate::util::{free_port, log_dir, unix_now, workspace_root};

/// The USB/IP port inside the HRH guest, forwarded from a free port of the host.
pub const HRH_GUEST_PORT: u16 = 3240;

/// The HRH's TCP port [`Hrh::mark`] knocks on. Nothing listens there: the HRH's kernel
/// refuses the connection, and a capture of its interface shows when the knock arrived.
pub const MARK_PORT: u16 = 9;

/// The id of QEMU's emulated USB audio device (`-device usb-audio`).
pub const QEMU_AUDIO_ID: &str = "46f4:0002";

/// Where the HRH keeps the server's output; its lines reach the test channel prefixed with
/// this.
pub const SERVER_LOG_PREFIX: &str = "server| ";

/// Which USB/IP server the HRH runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    /// Debian's stock `usbipd` with the kernel's usbip-host driver.
    Usbipd,
    /// The workspace's `hrh-exporter`, exporting the devices through libusb.
    HrhExporter,
}

impl Server {
    /// Its name in the HRH's shell functions and in messages.
    pub fn name(self) -> &'static str {
        match self {
            Server::Usbipd => "usbipd",
            Server::HrhExporter => "hrh-exporter",
        }
    }
}

/// Shell functions both guests get (busybox sh; the harness's prelude is defined before).
pub const COMMON_FUNCTIONS: &str = r#"
# wait_for SECONDS COMMAND...: as the prelude's, but counting time rather than tries: some
# commands here (usbip list against a server that is slow to answer) take a second each.
wait_for() {
    _wait_end=$(($(cut -d. -f1 /proc/uptime) + $1))
    shift
    until "$@"; do
        [ "$(cut -d. -f1 /proc/uptime)" -lt "$_wait_end" ] || return 1
        sleep 0.2
    done
}

# holds_open PID FILE: the process has FILE open. A reader started in the background is
# waited for this way, since data that arrives before it opens its file can be lost (the
# serial gadget drops what comes in while its tty is closed).
holds_open() {
    for _fd in /proc/"$1"/fd/*; do
        [ "$(readlink "$_fd")" = "$2" ] && return 0
    done
    return 1
}

# dead PID: the process is gone (or a zombie waiting to be reaped).
dead() { [ ! -d "/proc/$1" ] || grep -q '^[0-9]* (.*) Z' "/proc/$1/stat" 2>/dev/null; }
"#;

/// Shell functions of the HRH guest (after [`COMMON_FUNCTIONS`]).
pub const HRH_FUNCTIONS: &str = r#"
SERVER_LOG=/tmp/server.log

# audio_busid: the bus id of QEMU's USB audio device.
audio_busid() {
    for d in /sys/bus/usb/devices/*; do
        case "${d##*/}" in *:* | usb*) continue ;; esac
        if [ "$(cat "$d/idVendor"):$(cat "$d/idProduct")" = "$QEMU_AUDIO_ID" ]; then
            echo "${d##*/}"
            return 0
        fi
    done
    return 1
}

# hrh_devices: one line per device of this HRH:
#   HRH-DEVICE name=acm busid=19-1 id=1209:000a udc=dummy_udc.0 state=up
hrh_devices() {
    sh /hrh-gadgets.sh list | sed 's/^HRH-GADGET /HRH-DEVICE /'
    if b=$(audio_busid); then
        echo "HRH-DEVICE name=audio busid=$b id=$QEMU_AUDIO_ID udc=- state=up"
    fi
}

# hrh_busids: the bus ids of the devices that are plugged in.
hrh_busids() { hrh_devices | sed -n 's/.* busid=\([0-9][^ ]*\) .*/\1/p'; }

# listed_locally BUSID...: the server on this machine lists all of them.
listed_locally() {
    usbip list -r 127.0.0.1 >/tmp/local-list 2>&1 || return 1
    for b in "$@"; do
        grep -q "^ *$b:" /tmp/local-list || return 1
    done
}

# offered BUSID...: the server offers all of them: it lists each one, or has logged its import
# since it started. A client that was waiting for the server may import a device at once, and
# the list leaves imported devices out.
offered() {
    usbip list -r 127.0.0.1 >/tmp/local-list 2>&1 || return 1
    for b in "$@"; do
        grep -q "^ *$b:" /tmp/local-list ||
            tail -n +"$(cat /tmp/server.log-from)" "$SERVER_LOG" | grep -q " imported $b (" ||
            return 1
    done
}

# exported_or_dead BUSID...: the server offers all of them, or has exited.
exported_or_dead() { offered "$@" || ! server_alive; }

# hrh_export SERVER [PROGRAM]: starts usbipd (binding every device to usbip-host) or
# hrh-exporter (one --device per bus id; PROGRAM: the path of another build, or of a program
# taking the same options) and waits until it offers every device.
hrh_export() {
    kind=$1
    # Where this server's lines start in the log (offered looks for imports there).
    echo $(($(wc -l <"$SERVER_LOG") + 1)) >/tmp/server.log-from
    case "$kind" in
    usbipd)
        modprobe usbip-host || return 1
        # Not -D: in the foreground its messages go to stderr, daemonised only to syslog, and
        # this guest runs no syslog daemon.
        usbipd >>"$SERVER_LOG" 2>&1 &
        echo $! >/tmp/server.pid
        for b in $(hrh_busids); do
            usbip bind -b "$b" || return 1
        done
        ;;
    hrh-exporter)
        # Another build of it may be asked for by its path.
        program=${2:-hrh-exporter}
        set --
        for b in $(hrh_busids); do
            set -- "$@" --device "$b"
        done
        echo "starting: $program --listen 0.0.0.0:3240 $*"
        RUST_LOG="$HRH_RUST_LOG" NO_COLOR=1 "$program" --listen 0.0.0.0:3240 "$@" \
            >>"$SERVER_LOG" 2>&1 &
        echo $! >/tmp/server.pid
        ;;
    *)
        echo "unknown server $kind"
        return 2
        ;;
    esac
    echo "$kind" >/tmp/server.kind
    # shellcheck disable=SC2046
    wait_for 60 exported_or_dead $(hrh_busids)
    if ! server_alive; then
        echo "$kind exited; its output:"
        cat "$SERVER_LOG"
        return 1
    fi
    # shellcheck disable=SC2046
    if ! offered $(hrh_busids); then
        echo "not every device is exported after 60 s; the server lists:"
        cat /tmp/local-list
        return 1
    fi
    echo "SERVER-PID=$(cat /tmp/server.pid)"
}

# hrh_unexport: stops the server and gives the devices back to their local drivers.
hrh_unexport() {
    pid=$(cat /tmp/server.pid) || return 1
    kind=$(cat /tmp/server.kind)
    dead "$pid" && echo "SERVER-HAD-EXITED=yes"
    kill "$pid" 2>/dev/null
    if ! wait_for 20 dead "$pid"; then
        echo "the server ignored SIGTERM for 20 s"
        kill -9 "$pid"
    fi
    if [ "$kind" = usbipd ]; then
        for d in /sys/bus/usb/drivers/usbip-host/[0-9]*; do
            [ -e "$d" ] && usbip unbind -b "${d##*/}"
        done
    fi
    rm -f /tmp/server.pid /tmp/server.kind
}

# server_alive: the server process still runs.
server_alive() { ! dead "$(cat /tmp/server.pid)"; }

# serial_listen: collects what the host sends to the gadget's serial port in /tmp/serial.in.
serial_listen() {
    stty -F /dev/ttyGS0 raw -echo || return 1
    : >/tmp/serial.in
    cat /dev/ttyGS0 >>/tmp/serial.in 2>/dev/null &
    echo $! >/tmp/serial.pid
    wait_for 10 holds_open $! /dev/ttyGS0
}
serial_send() { printf '%s\n' "$1" >/dev/ttyGS0; }
serial_expect() { wait_for "$2" grep -q "$1" /tmp/serial.in; }
# serial_echo TEXT SECONDS: waits for TEXT from the host, prints the first line that came as
# RECEIVED=… and sends that line back prefixed with "echo:".
serial_echo() {
    serial_expect "$1" "$2" || return 1
    _line=$(head -n 1 /tmp/serial.in | tr -d '\r')
    echo "RECEIVED=$_line"
    serial_send "echo:$_line"
}

# hid_listen: the next output report the host sends, into /tmp/hid.in.
hid_listen() {
    rm -f /tmp/hid.in
    dd if=/dev/hidg0 of=/tmp/hid.in.part bs=8 count=1 2>/dev/null && mv /tmp/hid.in.part /tmp/hid.in &
}
# hid_send HEX: sends an 8-byte input report to the host, once the host polls (its
# interrupt-IN URB is pending at dummy_hcd). A report queued earlier would complete the
# host's first URB at once, and usbhid drops what arrives in the first 50 ms after an open
# (HID_RESUME_RUNNING): the same without USB/IP.
hid_polled() { grep -q 'in-int' "$(sh /hrh-gadgets.sh hcd hid)/urbs"; }
hid_send() {
    wait_for 20 hid_polled || { echo "the host does not poll the HID device"; return 1; }
    echo "$1" | xxd -r -p | dd of=/dev/hidg0 bs=8 count=1 2>/dev/null
}
hid_received() {
    wait_for "$1" test -f /tmp/hid.in || return 1
    echo "HID-RECEIVED=$(od -An -tx1 /tmp/hid.in | tr -d ' \n')"
}

# server_usbfs_mappings: how many of the server process's memory mappings are of usbfs
# device files (hrh-exporter's transfer buffers, which the kernel uses without copying).
server_usbfs_mappings() {
    echo "USBFS-MAPPINGS=$(grep -c ' /dev/bus/usb/' "/proc/$(cat /tmp/server.pid)/maps")"
}

# usbmon_start: records the URBs submitted on the HRH's USB buses (usbmon's text interface)
# until usbmon_bulk_out.
usbmon_start() {
    [ -d /sys/kernel/debug/usb ] || mount -t debugfs nodev /sys/kernel/debug || return 1
    modprobe usbmon || return 1
    cat /sys/kernel/debug/usb/usbmon/0u >/tmp/usbmon.txt &
    echo $! >/tmp/usbmon.pid
}
# usbmon_bulk_out: stops the recording and sums up the bulk OUT URBs of more than 512 bytes
# (data, not mass-storage command blocks) submitted meanwhile. A text line is "tag time S
# Bo:bus:dev:ep status length ...".
usbmon_bulk_out() {
    kill "$(cat /tmp/usbmon.pid)" 2>/dev/null
    awk '$3 == "S" && $4 ~ /^Bo:/ && $6 > 512 { n++; sum += $6; if ($6 > max) max = $6 }
        END { printf "BULK-OUT-URBS=%d\nBULK-OUT-BYTES=%d\nBULK-OUT-MAX=%d\n", n, sum, max }' \
        /tmp/usbmon.txt
}

# storage_sha256 MIB: the hash of the first MIB MiB of the storage gadget's backing file.
storage_sha256() {
    sync
    echo "IMAGE-SHA256=$(dd if=/tmp/hrh-storage.img bs=1M count="$1" 2>/dev/null | sha256sum | cut -d' ' -f1)"
}

# device_id NAME: the VID:PID of the device called NAME (acm, storage, …).
device_id() { hrh_devices | sed -n "s/^HRH-DEVICE name=$1 .* id=\([^ ]*\) .*/\1/p"; }

# tcp_listening PORT: a socket listens on this IPv4 TCP port (state 0A in /proc/net/tcp).
tcp_listening() {
    grep -q "^ *[0-9]*: [0-9A-F]*:$(printf '%04X' "$1") 00000000:0000 0A " /proc/net/tcp
}

# redirect_start NAME PORT: Debian's usbredirect serves the device NAME over usbredir on TCP
# PORT, on every address (QEMU's port forwarding arrives on the guest's address, not on
# loopback). It opens the device at once and serves one connection; its output goes to the
# server log, each line prefixed with "usbredirect NAME: ". It runs at its default verbosity,
# which logs nothing of usbredirhost's: usbredirect hands what usbredirhost logs as an error
# to GLib as G_LOG_LEVEL_ERROR, which aborts the program, and an unplugged device makes
# usbredirhost log errors (failed transfers) before it can tell QEMU the device is gone.
redirect_start() {
    _id=$(device_id "$1")
    [ -n "$_id" ] || { echo "the HRH has no device $1"; return 1; }
    _pidfile=/tmp/usbredirect-$1.pid
    rm -f "$_pidfile"
    echo "starting: usbredirect --device $_id --as 0.0.0.0:$2"
    # The inner shell records usbredirect's pid ($! out here would be the pipeline's last
    # part) and how it ends. GLib prints debug messages (the options) only when asked to,
    # after an empty line each.
    G_MESSAGES_DEBUG=all sh -c '
        usbredirect --device "$2" --as "0.0.0.0:$3" 2>&1 &
        echo $! >"$1"
        wait $!
        echo "exited with status $?"' - "$_pidfile" "$_id" "$2" </dev/null |
        while IFS= read -r _line; do
            [ -z "$_line" ] || echo "usbredirect $1: $_line"
        done >>"$SERVER_LOG" &
    wait_for 10 test -s "$_pidfile" || { echo "usbredirect for $1 did not start"; return 1; }
    wait_for 30 redirect_listening_or_dead "$1" "$2"
    redirect_alive "$1" || { echo "usbredirect for $1 exited; see the server log"; return 1; }
    tcp_listening "$2" || { echo "usbredirect for $1 does not listen on port $2 after 30 s"; return 1; }
    echo "USBREDIRECT-PID=$(cat "$_pidfile")"
}
redirect_listening_or_dead() { tcp_listening "$2" || ! redirect_alive "$1"; }

# redirect_alive NAME: the usbredirect of device NAME still runs.
redirect_alive() { ! dead "$(cat "/tmp/usbredirect-$1.pid" 2>/dev/null)"; }

# redirect_stop NAME: stops the usbredirect of device NAME (which ends its connection).
redirect_stop() {
    _pid=$(cat "/tmp/usbredirect-$1.pid") || return 1
    dead "$_pid" && echo "USBREDIRECT-HAD-EXITED=yes"
    kill "$_pid" 2>/dev/null
    if ! wait_for 20 dead "$_pid"; then
        echo "usbredirect ignored SIGTERM for 20 s"
        kill -9 "$_pid"
    fi
    rm -f "/tmp/usbredirect-$1.pid"
}
"#;

/// Shell functions of the client guest (after [`COMMON_FUNCTIONS`]).
pub const CLIENT_FUNCTIONS: &str = r#"
# dev_dir VID:PID: the sysfs directory of the imported device with that id.
dev_dir() {
    for d in /sys/bus/usb/devices/*; do
        case "${d##*/}" in *:* | usb*) continue ;; esac
        if [ "$(cat "$d/idVendor"):$(cat "$d/idProduct")" = "$1" ]; then
            echo "$d"
            return 0
        fi
    done
    return 1
}

# describe VID:PID: what the client's USB core made of an imported device.
describe() {
    d=$(dev_dir "$1") || { echo "no device $1"; return 1; }
    echo "SPEED=$(cat "$d/speed")"
    echo "CONFIGURATION=$(cat "$d/bConfigurationValue")"
    echo "DESCRIPTORS-SHA256=$(sha256sum <"$d/descriptors" | cut -d' ' -f1)"
    for i in "$d"/*:*; do
        [ -d "$i" ] || continue
        drv=$(readlink "$i/driver")
        echo "INTERFACE=${i##*:} $(cat "$i/bInterfaceClass")/$(cat "$i/bInterfaceSubClass")/$(cat "$i/bInterfaceProtocol") alt=$(cat "$i/bAlternateSetting") driver=${drv##*/}"
    done
}

# attach BUSID VID:PID: imports a device and waits until the USB core has configured it.
# Waiting matters: `usbip attach` reads the state of every used vhci port and fails ("open
# vhci_driver") while an earlier import is still being enumerated.
configured() { d=$(dev_dir "$1") && [ -n "$(cat "$d/bConfigurationValue")" ]; }
attach() {
    usbip_attach "$1" || return 1
    wait_for 60 configured "$2" || { echo "$1 ($2) was not configured within 60 s"; return 1; }
}

# remote_list: `usbip list -r` of the HRH, each line prefixed with "LIST: ".
remote_list() {
    usbip --tcp-port "$VUSB_PORT" list -r "$VUSB_HOST" >/tmp/list.out 2>&1
    rc=$?
    sed 's/^/LIST: /' /tmp/list.out
    echo "LIST-RC=$rc"
}

# ports: `usbip port`, each line prefixed with "PORT: ".
ports() { usbip port 2>&1 | sed 's/^/PORT: /'; }

no_ports() { [ "$(usbip_ports_in_use)" -eq 0 ]; }
detach_all() {
    for p in $(usbip port 2>/dev/null | sed -n 's/^Port \([0-9]*\):.*/\1/p'); do
        usbip detach -p "$((p + 0))" || return 1
    done
    wait_for 30 no_ports
}

serial_listen() {
    stty -F /dev/ttyACM0 raw -echo || return 1
    : >/tmp/serial.in
    cat /dev/ttyACM0 >>/tmp/serial.in 2>/dev/null &
    echo $! >/tmp/serial.pid
    wait_for 10 holds_open $! /dev/ttyACM0
}
serial_send() { printf '%s\n' "$1" >/dev/ttyACM0; }
serial_expect() { wait_for "$2" grep -q "$1" /tmp/serial.in; }

# hid_listen: the next input report, into /tmp/hid.in. usbhid drops reports that arrive in the
# first 50 ms after hidraw is opened, so this gives it a second before the HRH may send.
hid_listen() {
    rm -f /tmp/hid.in
    dd if=/dev/hidraw0 of=/tmp/hid.in.part bs=8 count=1 2>/dev/null && mv /tmp/hid.in.part /tmp/hid.in &
    sleep 1
}
# hid_send HEX: sends an 8-byte output report (hidraw wants the report id first: 0, none).
hid_send() {
    { printf '\000'; echo "$1" | xxd -r -p; } >/tmp/hid.out
    dd if=/tmp/hid.out of=/dev/hidraw0 bs=9 count=1 2>/dev/null
}
hid_received() {
    wait_for "$1" test -f /tmp/hid.in || return 1
    echo "HID-RECEIVED=$(od -An -tx1 /tmp/hid.in | tr -d ' \n')"
}

# storage_roundtrip MIB: writes MIB MiB of random data to /dev/sda, reads them back past the
# page cache and prints both hashes.
storage_roundtrip() {
    dd if=/dev/urandom of=/tmp/data bs=1M count="$1" 2>/dev/null || return 1
    echo "WRITTEN-SHA256=$(sha256sum </tmp/data | cut -d' ' -f1)"
    dd if=/tmp/data of=/dev/sda bs=1M conv=fsync 2>/tmp/dd.err || { cat /tmp/dd.err; return 1; }
    echo 3 >/proc/sys/vm/drop_caches
    echo "READBACK-SHA256=$(dd if=/dev/sda bs=1M count="$1" iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)"
}

# audio_play SECONDS BYTE: plays SECONDS s of a constant 8-bit sample (octal BYTE) through
# OSS emulation (8 kHz, unsigned 8-bit, mono, converted by the kernel to what the device
# takes); the device gets it as isochronous OUT packets.
audio_play() {
    head -c $(($1 * 8000)) /dev/zero | tr '\0' "\\$2" >/tmp/tone
    t0=$(cut -d' ' -f1 /proc/uptime)
    dd if=/tmp/tone of=/dev/dsp bs=800 2>/tmp/audio.err
    rc=$?
    t1=$(cut -d' ' -f1 /proc/uptime)
    echo "AUDIO-RC=$rc"
    echo "AUDIO-SECONDS=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')"
    cat /tmp/audio.err
}

# unplug_watchers: processes blocked on the devices when they are unplugged.
unplug_watchers() {
    stty -F /dev/ttyACM0 raw -echo
    cat /dev/ttyACM0 >/dev/null 2>&1 &
    echo $! >/tmp/watch-acm.pid
    dd if=/dev/hidraw0 of=/dev/null bs=8 2>/dev/null &
    echo $! >/tmp/watch-hid.pid
    sh -c 'while dd if=/dev/sda of=/dev/null bs=64k count=16 iflag=direct 2>/dev/null; do :; done' &
    echo $! >/tmp/watch-sda.pid
}
watchers_ended() {
    for f in /tmp/watch-*.pid; do
        dead "$(cat "$f")" || return 1
    done
}
# unplugged BUSID...: their device nodes, vhci ports and the processes using them are gone.
unplugged() {
    for n in /dev/ttyACM0 /dev/sda /dev/hidraw0; do
        [ ! -e "$n" ] || return 1
    done
    for b in "$@"; do
        [ -z "$(usbip_port_of "$b")" ] || return 1
    done
    watchers_ended
}
"#;

/// A device of the HRH, as `hrh_devices` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HrhDevice {
    /// `acm`, `storage`, `hid` or `audio`.
    pub name: String,
    /// Its USB/IP bus id in the HRH ("-" while unplugged).
    pub busid: String,
    /// `vid:pid` in hex.
    pub id: String,
}

/// Parses the `HRH-DEVICE …` lines of an output.
pub fn parse_devices(out: &Output) -> Vec<HrhDevice> {
    out.lines
        .iter()
        .filter_map(|line| line.strip_prefix("HRH-DEVICE "))
        .filter_map(|rest| {
            let field = |key: &str| {
                rest.split_whitespace()
                    .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                    .map(str::to_owned)
            };
            Some(HrhDevice {
                name: field("name")?,
                busid: field("busid")?,
                id: field("id")?,
            })
        })
        .collect()
}

/// The device called `name` (`acm`, `storage`, …) among `devices`.
pub fn find_device<'a>(devices: &'a [HrhDevice], name: &str) -> Result<&'a HrhDevice> {
    devices
        .iter()
        .find(|d| d.name == name)
        .ok_or_else(|| anyhow!("the HRH has no {name} device: {devices:?}"))
}

/// What to boot as the HRH.
#[derive(Debug, Clone)]
pub struct HrhConfig {
    name: String,
    storage_mib: u32,
    /// Workspace binaries to put into the guest.
    binaries: Vec<&'static str>,
    rust_log: String,
    /// Guest TCP ports forwarded from the host besides the USB/IP port.
    forwards: Vec<u16>,
    /// Where QEMU records the packets of the HRH's network interface.
    capture: Option<PathBuf>,
    /// Programs of the host to put into the guest.
    host_tools: Vec<PathBuf>,
    /// Programs of the host to put into the guest at the paths given.
    programs_at: Vec<(PathBuf, &'static str)>,
    /// Whether the HRH has the bulk sink gadget too.
    sink: bool,
}

/// Where [`HrhConfig::with_second_exporter`] puts the other build of hrh-exporter. Its name
/// stays `hrh-exporter`, which is how the HRH's CPU readings find the server's threads.
pub const SECOND_EXPORTER: &str = "/opt/second/hrh-exporter";

/// Where [`HrhConfig::with_floor_server`] puts `usbfs-floor`, under hrh-exporter's name
/// for the same reason; it takes the options [`Hrh::start_exporter_at`] gives.
pub const FLOOR_SERVER: &str = "/opt/floor/hrh-exporter";

impl HrhConfig {
    /// An HRH whose log is `<name>.log`, with a 16 MiB storage gadget and without hrh-exporter.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            storage_mib: 16,
            binaries: Vec::new(),
            rust_log: "info".to_owned(),
            forwards: Vec::new(),
            capture: None,
            host_tools: Vec::new(),
            programs_at: Vec::new(),
            sink: false,
        }
    }

    /// Puts the hrh-exporter at `path` (another build, with the same shared libraries as the
    /// workspace's) into the guest as [`SECOND_EXPORTER`], for comparing two builds in one
    /// HRH ([`Hrh::start_exporter_at`]).
    pub fn with_second_exporter(mut self, path: &Path) -> Self {
        self.programs_at.push((path.to_owned(), SECOND_EXPORTER));
        self
    }

    /// Puts the workspace's `usbfs-floor` (the least a user-space USB/IP server can do per
    /// URB) into the guest as [`FLOOR_SERVER`].
    pub fn with_floor_server(mut self) -> Result<Self> {
        let path = crate::exporter::workspace_binary("usbfs-floor")?;
        self.programs_at.push((path, FLOOR_SERVER));
        Ok(self)
    }

    /// Adds the bulk sink gadget (`sink` in guest-images/hrh-gadgets.sh): a fifth device,
    /// exported with the others, whose URBs the kernel answers at once.
    pub fn with_sink(mut self) -> Self {
        self.sink = true;
        self
    }

    /// Puts the host's program at `path` (and the shared libraries it links) into the guest
    /// as `/usr/bin/<its name>`: `perf` for [`crate::linkbench`]'s profiles.
    pub fn with_host_tool(mut self, path: &Path) -> Self {
        self.host_tools.push(path.to_owned());
        self
    }

    pub fn storage_mib(mut self, mib: u32) -> Self {
        self.storage_mib = mib;
        self
    }

    /// Puts the workspace's `hrh-exporter` (and the shared libraries it links) into the guest.
    pub fn with_exporter(mut self) -> Self {
        self.binaries.push("hrh-exporter");
        self
    }

    /// Puts the workspace's `vusb-probe` (the benchmarks' measuring tool) into the guest.
    pub fn with_probe(mut self) -> Self {
        self.binaries.push("vusb-probe");
        self
    }

    /// `RUST_LOG` for hrh-exporter (default `info`).
    pub fn rust_log(mut self, filter: &str) -> Self {
        self.rust_log = filter.to_owned();
        self
    }

    /// Forwards a free host port to the HRH's TCP port `guest_port` as well (for usbredirect,
    /// [`Hrh::start_usbredirect`]); [`Hrh::forwarded_port`] tells which.
    pub fn forward(mut self, guest_port: u16) -> Self {
        assert!(
            guest_port != HRH_GUEST_PORT && !self.forwards.contains(&guest_port),
            "guest port {guest_port} is forwarded already"
        );
        self.forwards.push(guest_port);
        self
    }

    /// Records every packet of the HRH's network interface, as the host sees it (after the
    /// link's shaping inside the HRH), into the pcap file `path`. QEMU stamps the packets
    /// with its virtual clock (which runs with the host's, from a whole second at start-up):
    /// [`Hrh::mark`] ties it to the host's.
    pub fn capture(mut self, path: &Path) -> Self {
        self.capture = Some(path.to_owned());
        self.forward(MARK_PORT)
    }
}

/// The HRH guest.
#[derive(Debug)]
pub struct Hrh {
    remote: Remote,
    port: u16,
    /// (guest port, host port) of [`HrhConfig::forward`].
    forwards: Vec<(u16, u16)>,
    wav_path: PathBuf,
}

impl Hrh {
    /// Starts booting the HRH guest and returns at once; [`Self::wait_ready`] waits for its
    /// devices. Booting the client meanwhile saves a boot's time.
    pub fn boot(config: HrhConfig) -> Result<Hrh> {
        let port = free_port()?;
        let gadgets_path = workspace_root().join("guest-images/hrh-gadgets.sh");
        let gadgets = std::fs::read(&gadgets_path)
            .with_context(|| format!("reading {}", gadgets_path.display()))?;
        let wav_path = log_dir()?.join(format!("{}.audio.wav", config.name));
        // A WAV left by an earlier run would be mistaken for this run's audio.
        let _ = std::fs::remove_file(&wav_path);

        let script = format!(
            r#"{COMMON_FUNCTIONS}
{HRH_FUNCTIONS}
{SERVE_FUNCTION}
modprobe xhci-pci || fail "modprobe xhci-pci failed"
sh /hrh-gadgets.sh setup "$STORAGE_MIB" $HRH_EXTRA_GADGETS || fail "hrh-gadgets.sh setup failed"
wait_for 30 audio_busid >/dev/null || fail "QEMU's USB audio device did not appear"
: >"$SERVER_LOG"
# A shell loop rather than sed, which would hold lines back in its output buffer.
tail -f "$SERVER_LOG" 2>/dev/null | while IFS= read -r line; do echo "{SERVER_LOG_PREFIX}$line"; done &
hrh_devices
vusb_serve
"#
        );
        let mut guest = GuestConfig::new(&config.name, &script)
            .env("STORAGE_MIB", config.storage_mib)
            .env("QEMU_AUDIO_ID", QEMU_AUDIO_ID)
            .env("HRH_RUST_LOG", &config.rust_log)
            .env("HRH_EXTRA_GADGETS", if config.sink { "sink" } else { "" })
            .file("/hrh-gadgets.sh", gadgets, 0o755)
            .host_forward(port, HRH_GUEST_PORT)
            .qemu_args([
                "-device".to_owned(),
                "qemu-xhci,id=hrhxhci".to_owned(),
                "-device".to_owned(),
                "usb-audio,bus=hrhxhci.0,audiodev=hrhsnd".to_owned(),
                "-audiodev".to_owned(),
                format!("wav,id=hrhsnd,path={}", wav_path.display()),
            ]);
        if let Some(path) = &config.capture {
            guest = guest.qemu_args([
                "-object".to_owned(),
                format!(
                    "filter-dump,id=hrhcapture,netdev=n0,file={}",
                    path.display()
                ),
            ]);
        }
        for name in &config.binaries {
            guest = guest.workspace_binary(name)?;
        }
        for (path, guest_path) in &config.programs_at {
            for (path, contents) in crate::binaries::binary_files_at(path, guest_path)? {
                guest = guest.file(&path, contents, 0o755);
            }
        }
        for tool in &config.host_tools {
            for (path, contents) in crate::binaries::host_binary_files(tool)? {
                guest = guest.file(&path, contents, 0o755);
            }
        }
        let mut forwards = Vec::new();
        for &guest_port in &config.forwards {
            let host_port = free_port()?;
            guest = guest.host_forward(host_port, guest_port);
            forwards.push((guest_port, host_port));
        }
        let mut remote = Remote::new(Guest::boot(guest)?);
        remote.ignore_prefix(SERVER_LOG_PREFIX);
        Ok(Hrh {
            remote,
            port,
            forwards,
            wav_path,
        })
    }

    /// Waits until the HRH serves commands and returns its devices.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<Vec<HrhDevice>> {
        self.remote.wait_ready(timeout)?;
        self.devices()
    }

    /// The host port that reaches the HRH's USB/IP port; the client guest connects to
    /// `10.0.2.2:<port>`.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The host port (on 127.0.0.1) that reaches the HRH's TCP port `guest_port`, forwarded
    /// with [`HrhConfig::forward`].
    pub fn forwarded_port(&self, guest_port: u16) -> Result<u16> {
        self.forwards
            .iter()
            .find(|(guest, _)| *guest == guest_port)
            .map(|(_, host)| *host)
            .ok_or_else(|| anyhow!("the HRH's port {guest_port} is not forwarded"))
    }

    /// Knocks on the HRH's [`MARK_PORT`] (forwarded by [`HrhConfig::capture`]) and returns
    /// the host's time just before, in seconds since the epoch. QEMU's user-mode network
    /// accepts at once and sends the HRH its SYN, which the capture then holds.
    pub fn mark(&self) -> Result<f64> {
        let port = self.forwarded_port(MARK_PORT)?;
        let at = unix_now();
        // Refused or closed by the HRH right away; only the SYN matters.
        let _ = std::net::TcpStream::connect_timeout(
            &(std::net::Ipv4Addr::LOCALHOST, port).into(),
            Duration::from_secs(2),
        );
        Ok(at)
    }

    /// The WAV file QEMU writes what the HRH's USB audio device plays into; complete once the
    /// HRH guest has shut down.
    pub fn wav_path(&self) -> &Path {
        &self.wav_path
    }

    pub fn remote(&mut self) -> &mut Remote {
        &mut self.remote
    }

    /// The HRH's devices now.
    pub fn devices(&mut self) -> Result<Vec<HrhDevice>> {
        let out = self.remote.check("hrh_devices", Duration::from_secs(30))?;
        let devices = parse_devices(&out);
        if devices.is_empty() {
            bail!("the HRH reports no devices:\n{}", out.text());
        }
        Ok(devices)
    }

    /// Starts `server` and waits until it offers every device: lists it, or has let a client
    /// that was waiting for it import it already.
    pub fn start_server(&mut self, server: Server) -> Result<Output> {
        self.remote.check(
            &format!("hrh_export {}", server.name()),
            Duration::from_secs(120),
        )
    }

    /// Starts the hrh-exporter at `program` in the guest ([`SECOND_EXPORTER`], say) as
    /// [`Self::start_server`] starts the usual one.
    pub fn start_exporter_at(&mut self, program: &str) -> Result<Output> {
        self.remote.check(
            &format!("hrh_export hrh-exporter {program}"),
            Duration::from_secs(120),
        )
    }

    /// Stops the server; the devices go back to the HRH's own drivers.
    pub fn stop_server(&mut self) -> Result<Output> {
        self.remote.check("hrh_unexport", Duration::from_secs(60))
    }

    /// Starts Debian's `usbredirect` on the device called `device` (`acm`, `storage`, …), as
    /// a usbredir server on the HRH's TCP port `guest_port` (forward it with
    /// [`HrhConfig::forward`]), and waits until it listens. It takes the device from the
    /// HRH's drivers and serves one connection.
    pub fn start_usbredirect(&mut self, device: &str, guest_port: u16) -> Result<Output> {
        self.remote.check(
            &format!("redirect_start {device} {guest_port}"),
            Duration::from_secs(60),
        )
    }

    /// Whether the `usbredirect` of `device` still runs.
    pub fn usbredirect_alive(&mut self, device: &str) -> Result<bool> {
        Ok(self
            .remote
            .run(&format!("redirect_alive {device}"), Duration::from_secs(30))?
            .rc
            == 0)
    }

    /// Stops the `usbredirect` of `device`, which ends its connection.
    pub fn stop_usbredirect(&mut self, device: &str) -> Result<Output> {
        self.remote
            .check(&format!("redirect_stop {device}"), Duration::from_secs(60))
    }

    /// Shuts the guest down and returns its script's exit code.
    pub fn finish(self, timeout: Duration) -> Result<i32> {
        self.remote.finish(timeout)
    }
}

/// Emulated links to the ISP ([`crate::link`]), shaped on the HRH's eth0, which every tunnel
/// crosses both ways.
impl Hrh {
    /// Shapes the link like `link` in both directions; called again, it switches to another.
    pub fn shape(&mut self, link: &crate::link::Link) -> Result<()> {
        self.run_script(&crate::link::shape_script(link, "eth0"))
    }

    /// Takes the shaping off again (nothing happens where there is none).
    pub fn unshape(&mut self) -> Result<()> {
        self.run_script(&crate::link::unshape_script("eth0"))
    }

    /// Runs a script of several lines. A command is one line of the test channel, so the
    /// script travels as printf's `%b` argument, its line breaks as `\n`, into a file. The
    /// guest's tty takes at most 4095 characters a line.
    fn run_script(&mut self, script: &str) -> Result<()> {
        let escaped = script
            .replace('\\', r"\\")
            .replace('\n', r"\n")
            .replace('\'', r"'\''");
        let command = format!("printf '%b' '{escaped}' >/tmp/script.sh && sh /tmp/script.sh");
        if command.len() > 4000 {
            bail!(
                "a script of {} characters is too long for the test channel",
                command.len()
            );
        }
        self.remote.check(&command, Duration::from_secs(60))?;
        Ok(())
    }
}

/// Boots the client guest, which imports from the HRH through `10.0.2.2:<hrh_port>`. Returns
/// at once; wait with [`Remote::wait_ready`].
pub fn boot_client(name: &str, hrh_port: u16) -> Result<Remote> {
    Ok(Remote::new(Guest::boot(client_config(name, hrh_port))?))
}

/// The client guest's configuration (see [`boot_client`]), for adding to it.
pub fn client_config(name: &str, hrh_port: u16) -> GuestConfig {
    let script = format!(
        r#"{COMMON_FUNCTIONS}
{CLIENT_FUNCTIONS}
{SERVE_FUNCTION}
# /dev/dsp for the audio test: OSS emulation takes raw samples from dd.
modprobe snd-pcm-oss || fail "modprobe snd-pcm-oss failed"
vusb_serve
"#
    );
    GuestConfig::new(name, &script).env("VUSB_PORT", hrh_port)
}

/// Counts the clearly positive and clearly negative 16-bit samples of a WAV file that QEMU
/// wrote (canonical 44-byte header, then little-endian samples): `audio_play` with a sample
/// above 0200 gives positive ones, below it negative ones.
pub fn wav_sample_signs(path: &Path) -> Result<(usize, usize)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() < 44 || &bytes[..4] != b"RIFF" {
        bail!("{} is not a WAV file", path.display());
    }
    let mut positive = 0;
    let mut negative = 0;
    for sample in bytes[44..].chunks_exact(2) {
        match i16::from_le_bytes([sample[0], sample[1]]) {
            s if s > 1000 => positive += 1,
            s if s < -1000 => negative += 1,
            _ => {}
        }
    }
    Ok((positive, negative))
}

/// Fails unless `count` samples of the tone are a good part of what `seconds` of playing
/// should give (QEMU's WAV output runs at 44.1 kHz stereo): the isochronous data reached
/// the device. `who` names the path in the message.
pub fn check_tone_reached(count: usize, seconds: u32, who: &str) -> Result<()> {
    let expected = seconds as usize * 44_100 * 2;
    if count < expected / 4 {
        bail!("{who}: only {count} samples of the tone reached QEMU's audio device (played: about {expected})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_lines_are_parsed() {
        let out = Output {
            command: "hrh_devices".into(),
            rc: 0,
            lines: vec![
                "HRH-DEVICE name=acm busid=19-1 id=1209:000a udc=dummy_udc.0 state=up".into(),
                "noise".into(),
                "HRH-DEVICE name=audio busid=17-1 id=46f4:0002 udc=- state=up".into(),
            ],
            elapsed: Duration::ZERO,
        };
        let devices = parse_devices(&out);
        assert_eq!(devices.len(), 2);
        assert_eq!(devices[0].busid, "19-1");
        assert_eq!(devices[1].name, "audio");
        assert_eq!(devices[1].id, QEMU_AUDIO_ID);
    }
}
