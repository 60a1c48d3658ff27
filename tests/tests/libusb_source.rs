//! hrh-exporter's libusb device source against real kernel USB devices, in one guest.
//!
//! The guest makes configfs gadgets on dummy_hcd (`guest-images/hrh-gadgets.sh`: a CDC-ACM
//! serial port, a mass-storage device backed by a file and a vendor-defined HID device, each
//! its own USB device) and has QEMU's USB audio device on an emulated xHCI (isochronous
//! endpoints, which dummy_hcd lacks). It exports them with `hrh-exporter --device VID:PID`,
//! imports them back over the loopback with the stock client (`usbip attach` + vhci-hcd) and
//! uses them through the ordinary drivers: serial data both ways, a mass-storage write and
//! read-back, HID reports over interrupt endpoints, sound played as isochronous OUT (found in
//! the WAV file QEMU writes), an unplug and replug of the serial gadget while it is imported,
//! and a detach in the middle of a disk read.
//!
//! Run with `cargo nextest run -p vusb-vm-tests --run-ignored only libusb` after
//! `cargo build --workspace` (or through scripts/test.sh).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use vusb_vm_tests::{log_dir, workspace_binary_files, workspace_root, Guest, GuestConfig};

/// Boot to `/test.sh` takes 10–20 s under TCG; this leaves room for a loaded machine.
const BOOT: Duration = Duration::from_secs(120);
/// Any one step of the script.
const STEP: Duration = Duration::from_secs(90);
/// QEMU's emulated USB audio device.
const AUDIO_ID: &str = "46f4:0002";
/// How long the audio step plays.
const AUDIO_SECONDS: usize = 2;

/// The script's shell functions (busybox sh; the harness's prelude comes first).
const FUNCTIONS: &str = r#"
VHCI=/sys/devices/platform/vhci_hcd.0
trap 'sed "s/^/EXPORTER| /" /tmp/exporter.log 2>/dev/null' EXIT

busid_of() { sh /hrh-gadgets.sh list | sed -n "s/.*name=$1 busid=\([^ ]*\) .*/\1/p"; }
attach() { usbip attach -r 127.0.0.1 -b "$1"; }
listed() {
    usbip list -r 127.0.0.1 >/tmp/list 2>&1 || return 1
    for b in "$@"; do grep -q "^ *$b:" /tmp/list || return 1; done
}
alive() { kill -0 "$EXPORTER" 2>/dev/null; }
first() { for f in "$@"; do [ -e "$f" ] && echo "${f##*/}" && return 0; done; return 1; }
# The client-side nodes of the imported devices (the gadgets' local ones live elsewhere).
client_tty() { first $VHCI/usb*/*/*/tty/ttyACM*; }
client_disk() { first $VHCI/usb*/*/*/host*/target*/*/block/sd*; }
client_hidraw() { first $VHCI/usb*/*/*/*/hidraw/hidraw*; }
client_dsp() { first $VHCI/usb*/*/*/sound/card*/dsp*; }
# local_busid VID:PID: the bus id of a device of this machine (not an imported one).
local_busid() {
    for d in /sys/bus/usb/devices/*; do
        case "${d##*/}" in *:* | usb*) continue ;; esac
        case "$(readlink -f "$d")" in */vhci_hcd*) continue ;; esac
        [ "$(cat "$d/idVendor"):$(cat "$d/idProduct")" = "$1" ] && echo "${d##*/}" && return 0
    done
    return 1
}
size() { wc -c <"$1"; }
sha() { sha256sum "$1" | cut -d' ' -f1; }
"#;

/// The test proper.
const SCRIPT: &str = r#"
modprobe xhci-pci || fail "modprobe xhci-pci failed"
modprobe snd-pcm-oss || fail "modprobe snd-pcm-oss failed"
sh /hrh-gadgets.sh setup 16 >/tmp/gadgets.out 2>&1 || { cat /tmp/gadgets.out; fail "gadget setup failed"; }
ACM=$(busid_of acm); STORAGE=$(busid_of storage); HID=$(busid_of hid)
wait_for 30 local_busid "$AUDIO_ID" >/dev/null || fail "QEMU's USB audio device did not appear"
AUDIO=$(local_busid "$AUDIO_ID")
echo "BUSIDS acm=$ACM storage=$STORAGE hid=$HID audio=$AUDIO"
hrh-exporter list 2>&1 | sed 's/^/DEVLIST| /'

# Plugging and unplugging must be noticed from the kernel's device events: looking on a
# timer only once an hour would come far too late for the waits below.
RUST_LOG=info NO_COLOR=1 hrh-exporter --listen 127.0.0.1:3240 --scan-interval-ms 3600000 \
    --device 1209:000a --device 1209:000b --device 1209:000c --device "$AUDIO_ID" \
    >/tmp/exporter.log 2>&1 &
EXPORTER=$!
wait_for 30 listed "$ACM" "$STORAGE" "$HID" "$AUDIO" || { cat /tmp/list; fail "the gadgets are not all exported"; }
sed 's/^/LIST| /' /tmp/list
# Each opened device has a thread waiting in usbfs for its completions.
reapers_are() { [ "$(cat /proc/$EXPORTER/task/*/comm | grep -c '^reap-')" = "$1" ]; }
reapers_are 4 || fail "not one reaping thread per device: $(cat /proc/$EXPORTER/task/*/comm | tr '\n' ' ')"
echo EXPORTED

# One at a time: `usbip attach` fails while another imported device is still enumerating.
attach "$ACM" || fail "usbip attach $ACM failed"
wait_for 30 client_tty >/dev/null || fail "no ttyACM for the imported serial gadget"
attach "$STORAGE" || fail "usbip attach $STORAGE failed"
wait_for 30 client_disk >/dev/null || fail "no disk for the imported storage gadget"
attach "$HID" || fail "usbip attach $HID failed"
wait_for 30 client_hidraw >/dev/null || fail "no hidraw for the imported HID gadget"
TTY=/dev/$(client_tty); DISK=/dev/$(client_disk); HIDRAW=/dev/$(client_hidraw)
wait_for 10 test -c "$TTY" -a -b "$DISK" -a -c "$HIDRAW" || fail "device nodes missing"
echo "ATTACHED tty=$TTY disk=$DISK hidraw=$HIDRAW"

# Serial, both ways, 16 KiB of random bytes as hex text each way.
stty -F /dev/ttyGS0 raw -echo || fail "stty ttyGS0"
stty -F "$TTY" raw -echo || fail "stty $TTY"
cat /dev/ttyGS0 >/tmp/gs.in & GS_CAT=$!
cat "$TTY" >/tmp/acm.in & ACM_CAT=$!
sleep 1
dd if=/dev/urandom bs=1k count=16 2>/dev/null | od -An -tx1 -v >/tmp/up.txt
dd if=/dev/urandom bs=1k count=16 2>/dev/null | od -An -tx1 -v >/tmp/down.txt
cat /tmp/up.txt >"$TTY" || fail "writing $TTY failed"
cat /tmp/down.txt >/dev/ttyGS0 || fail "writing ttyGS0 failed"
arrived() { [ "$(size /tmp/gs.in)" -ge "$(size /tmp/up.txt)" ] && [ "$(size /tmp/acm.in)" -ge "$(size /tmp/down.txt)" ]; }
wait_for 60 arrived || fail "serial data incomplete: $(size /tmp/gs.in)/$(size /tmp/up.txt) up, $(size /tmp/acm.in)/$(size /tmp/down.txt) down"
kill $GS_CAT $ACM_CAT
[ "$(sha /tmp/up.txt)" = "$(sha /tmp/gs.in)" ] || fail "serial data corrupted host to gadget"
[ "$(sha /tmp/down.txt)" = "$(sha /tmp/acm.in)" ] || fail "serial data corrupted gadget to host"
echo "SERIAL-OK up=$(size /tmp/up.txt) down=$(size /tmp/down.txt)"

# Mass storage: 8 MiB written, read back past the page cache, and found in the backing file.
dd if=/dev/urandom of=/tmp/blob bs=1M count=8 2>/dev/null
dd if=/tmp/blob of="$DISK" bs=1M conv=fsync 2>/dev/null || fail "writing $DISK failed"
echo 3 >/proc/sys/vm/drop_caches
got=$(dd if="$DISK" bs=1M count=8 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
img=$(dd if=/tmp/hrh-storage.img bs=1M count=8 2>/dev/null | sha256sum | cut -d' ' -f1)
[ "$got" = "$(sha /tmp/blob)" ] || fail "data read back from $DISK differs"
[ "$img" = "$(sha /tmp/blob)" ] || fail "the gadget's backing file does not hold what was written"
echo "STORAGE-OK sha256=$got"

# HID: an input report (interrupt IN) and an output report (interrupt OUT).
timeout 20 dd if="$HIDRAW" of=/tmp/hid.in bs=8 count=1 2>/dev/null & READER=$!
sleep 1
printf 'HRH-IN-1' >/dev/hidg0 || fail "writing hidg0 failed"
wait $READER
[ "$(cat /tmp/hid.in)" = HRH-IN-1 ] || fail "input report: got '$(cat /tmp/hid.in)'"
timeout 20 dd if=/dev/hidg0 of=/tmp/hid.out bs=8 count=1 2>/dev/null & READER=$!
sleep 1
# Unnumbered reports: hidraw wants a 0 report id in front.
printf '\000HRH-OUT1' >"$HIDRAW" || fail "writing $HIDRAW failed"
wait $READER
[ "$(cat /tmp/hid.out)" = HRH-OUT1 ] || fail "output report: got '$(cat /tmp/hid.out)'"
echo HID-OK

# Sound: AUDIO_SECONDS s of a constant 8-bit sample (0xc0) through OSS emulation (8 kHz
# mono, converted by the kernel to what the device takes), sent as isochronous OUT.
attach "$AUDIO" || fail "usbip attach $AUDIO failed"
wait_for 30 client_dsp >/dev/null || fail "no OSS device for the imported audio device"
DSP=/dev/$(client_dsp)
wait_for 10 test -c "$DSP" || fail "$DSP missing"
head -c $((AUDIO_SECONDS * 8000)) /dev/zero | tr '\0' '\300' >/tmp/tone
dd if=/tmp/tone of="$DSP" bs=800 2>/tmp/audio.err || { cat /tmp/audio.err; fail "playing to $DSP failed"; }
echo "AUDIO-OK dsp=$DSP"

# Unplug the serial gadget while it is imported and its port open.
cat "$TTY" >/dev/null 2>&1 & HOLDER=$!
sleep 0.5
sh /hrh-gadgets.sh down acm >/dev/null || fail "unplugging the serial gadget failed"
echo ACM-UNPLUGGED
acm_gone() { ! client_tty >/dev/null && [ -z "$(usbip_port_of "$ACM")" ]; }
wait_for 30 acm_gone || fail "the client still has the unplugged serial device"
alive || fail "hrh-exporter exited after the unplug"
dd if="$DISK" of=/dev/null bs=64k count=16 iflag=direct 2>/dev/null || fail "the disk stopped working after the unplug"
wait $HOLDER
# The unplugged device's reaping thread ends with it.
wait_for 10 reapers_are 3 || fail "a reaping thread outlived its device: $(cat /proc/$EXPORTER/task/*/comm | tr '\n' ' ')"
echo UNPLUG-OK

sh /hrh-gadgets.sh up acm >/dev/null || fail "replugging the serial gadget failed"
ACM=$(busid_of acm)
wait_for 30 listed "$ACM" || { cat /tmp/list; fail "the replugged serial gadget is not exported"; }
attach "$ACM" || fail "usbip attach $ACM after the replug failed"
wait_for 30 client_tty >/dev/null || fail "no ttyACM after the replug"
TTY=/dev/$(client_tty)
wait_for 10 test -c "$TTY" || fail "$TTY missing"
stty -F /dev/ttyGS0 raw -echo; stty -F "$TTY" raw -echo
cat /dev/ttyGS0 >/tmp/gs2.in & GS_CAT=$!
sleep 0.5
echo replugged-token >"$TTY"
wait_for 20 grep -q replugged-token /tmp/gs2.in || fail "no serial data after the replug"
kill $GS_CAT
reapers_are 4 || fail "the replugged device has no reaping thread of its own"
echo REPLUG-OK

# Detach the disk in the middle of a long read: URBs in flight are unlinked and the
# connection closes under them; the device must come back exportable, its local driver too.
# The read repeats until the disk goes away: a small disk on a quiet machine is read
# whole in less than the 2 s below.
( while dd if="$DISK" of=/dev/null bs=1M iflag=direct 2>/dev/null; do :; done ) & DD=$!
sleep 2
kill -0 $DD 2>/dev/null || fail "the disk read ended before the detach"
usbip detach -p "$(usbip_port_of "$STORAGE")" || fail "usbip detach of $STORAGE failed"
wait $DD
wait_for 30 listed "$STORAGE" || { cat /tmp/list; fail "$STORAGE is not exportable after the detach"; }
wait_for 30 test -e "/sys/bus/usb/devices/$STORAGE:1.0/driver" || fail "$STORAGE did not get its local driver back"
alive || fail "hrh-exporter exited"
echo DETACH-OK

for b in "$ACM" "$HID" "$AUDIO"; do usbip detach -p "$(usbip_port_of "$b")" || fail "usbip detach $b failed"; done
wait_for 30 listed "$ACM" "$STORAGE" "$HID" "$AUDIO" || { cat /tmp/list; fail "not every device is exportable at the end"; }
# Released devices go back to their local drivers, cdc_acm's two interfaces included.
for i in "$ACM:1.0" "$ACM:1.1" "$HID:1.0" "$AUDIO:1.0"; do
    wait_for 30 test -e "/sys/bus/usb/devices/$i/driver" || fail "$i did not get its local driver back"
done
# utime + stime, in clock ticks: what polling and serving cost.
echo "EXPORTER-CPU-TICKS=$(awk '{ print $14 + $15 }' /proc/$EXPORTER/stat) after $(cut -d' ' -f1 /proc/uptime) s uptime"
kill "$EXPORTER"
wait "$EXPORTER"
echo "LIBUSB-DONE exporter-exit=$?"
"#;

/// The markers the script prints, in order, and how long each may take after the previous.
const MARKERS: &[(&str, Duration)] = &[
    ("EXPORTED", BOOT),
    ("ATTACHED", STEP),
    ("SERIAL-OK", STEP),
    ("STORAGE-OK", STEP),
    ("HID-OK", STEP),
    ("AUDIO-OK", STEP),
    ("UNPLUG-OK", STEP),
    ("REPLUG-OK", STEP),
    ("DETACH-OK", STEP),
    ("LIBUSB-DONE", STEP),
];

#[test]
#[ignore = "boots a QEMU guest; run via scripts/test.sh"]
fn real_devices_through_libusb() -> Result<()> {
    let name = "libusb_source";
    let gadgets = std::fs::read(workspace_root().join("guest-images/hrh-gadgets.sh"))
        .context("reading guest-images/hrh-gadgets.sh")?;
    let wav = log_dir()?.join(format!("{name}.audio.wav"));
    // A WAV left by an earlier run would be mistaken for this run's sound.
    let _ = std::fs::remove_file(&wav);
    let mut config = GuestConfig::new(name, &format!("{FUNCTIONS}\n{SCRIPT}"))
        .env("AUDIO_ID", AUDIO_ID)
        .env("AUDIO_SECONDS", AUDIO_SECONDS)
        .file("/hrh-gadgets.sh", gadgets, 0o755)
        // The exporter binary and the test files live in the guest's memory.
        .memory_mib(1024)
        .qemu_args([
            "-device".to_owned(),
            "qemu-xhci,id=xhci".to_owned(),
            "-device".to_owned(),
            "usb-audio,bus=xhci.0,audiodev=snd".to_owned(),
            "-audiodev".to_owned(),
            format!("wav,id=snd,path={}", wav.display()),
        ]);
    for (path, contents) in workspace_binary_files("hrh-exporter")? {
        config = config.file(&path, contents, 0o755);
    }
    let mut guest = Guest::boot(config)?;
    let start = Instant::now();
    let mut last = start;
    let mut timings = Vec::new();
    for (marker, timeout) in MARKERS {
        let line = guest.wait_for_line(marker, *timeout)?;
        let now = Instant::now();
        timings.push(format!("{marker}: +{:.1} s", (now - last).as_secs_f64()));
        guest.note(&format!(
            "reached {line:?} after {:.1} s",
            (now - last).as_secs_f64()
        ));
        last = now;
    }
    let code = guest.wait_exit(Duration::from_secs(30))?;
    let exit = lines_value(&guest.test_lines(), "LIBUSB-DONE exporter-exit=");
    guest.note(&format!("timings: {}", timings.join(", ")));
    eprintln!("timings from boot: {}", timings.join(", "));
    if code != 0 {
        bail!("the guest's script failed with exit code {code}");
    }
    assert_eq!(
        exit.as_deref(),
        Some("0"),
        "hrh-exporter did not stop cleanly on SIGTERM"
    );

    let lines = guest.test_lines();
    let exporter: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("EXPORTER| "))
        .collect();
    let busid = |name: &str| -> Result<String> {
        lines
            .iter()
            .find_map(|l| l.strip_prefix("BUSIDS "))
            .and_then(|l| {
                l.split_whitespace()
                    .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            })
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no bus id for {name}"))
    };
    let acm = busid("acm")?;
    let ours = [
        acm.clone(),
        busid("storage")?,
        busid("hid")?,
        busid("audio")?,
    ];
    for (busid, id) in ours
        .iter()
        .zip(["1209:000a", "1209:000b", "1209:000c", AUDIO_ID])
    {
        let listed = |prefix: &str| {
            lines
                .iter()
                .filter_map(|l| l.strip_prefix(prefix))
                .any(|l| l.contains(busid.as_str()) && l.contains(id))
        };
        assert!(
            listed("DEVLIST| "),
            "`hrh-exporter list` misses {busid} {id}"
        );
        assert!(listed("LIST| "), "`usbip list` misses {busid} {id}");
    }
    // The device list as usbip-host would give it: resolved sysfs paths and the interfaces'
    // class triples.
    let listing: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("LIST| "))
        .collect();
    for needle in [
        "/sys/devices/platform/dummy_hcd.",
        "(02/02/01)",
        "(0a/00/00)",
        "(08/06/50)",
        "(03/00/00)",
    ] {
        assert!(
            listing.iter().any(|l| l.contains(needle)),
            "no {needle:?} in {listing:#?}"
        );
    }
    // Never the client's own imports, which carry the same ids.
    for line in exporter.iter().filter(|l| l.contains(" exporting ")) {
        assert!(
            ours.iter()
                .any(|b| line.contains(&format!("exporting {b} "))),
            "exported something else: {line}"
        );
    }
    let count = |needle: &str| exporter.iter().filter(|l| l.contains(needle)).count();
    // Exported at start and again after the replug; withdrawn once.
    assert_eq!(
        count(&format!("exporting {acm} 1209:000a")),
        2,
        "{exporter:#?}"
    );
    assert_eq!(count(&format!("{acm} was unplugged")), 1, "{exporter:#?}");
    assert!(
        !exporter
            .iter()
            .any(|l| l.contains("panicked") || l.contains("ERROR")),
        "{exporter:#?}"
    );

    // QEMU writes 44.1 kHz stereo: a good part of what was played must have arrived (the
    // guest runs slower than real time under TCG, and the device drops what comes late).
    let positive = positive_samples(&wav)?;
    let played = AUDIO_SECONDS * 44_100 * 2;
    assert!(
        positive >= played / 4,
        "only {positive} samples of the tone reached QEMU's audio device (played: about {played})"
    );
    eprintln!("{positive} samples of the tone reached the audio device (played: about {played})");
    Ok(())
}

/// What follows `prefix` on the first line that starts with it.
fn lines_value(lines: &[String], prefix: &str) -> Option<String> {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(prefix).map(|v| v.trim().to_owned()))
}

/// The clearly positive 16-bit samples of a WAV file QEMU wrote (44-byte header, then
/// little-endian samples).
fn positive_samples(path: &Path) -> Result<usize> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() < 44 || &bytes[..4] != b"RIFF" {
        bail!("{} is not a WAV file", path.display());
    }
    Ok(bytes[44..]
        .chunks_exact(2)
        .filter(|s| i16::from_le_bytes([s[0], s[1]]) > 1000)
        .count())
}
