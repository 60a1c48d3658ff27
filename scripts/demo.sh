#!/usr/bin/env bash
# The demo: a simulated HRH temperature sensor, exported by hrh-exporter on this machine,
# imported by vusb-backend and handed to a booted vHOME guest as a virtio-usb host controller.
# The guest runs no USB/IP client: its virtio_usb_hcd driver sees the sensor as a USB device,
# its own cdc_acm binds it, and the readings arrive on /dev/ttyACM0.
#
#   scripts/demo.sh [SECONDS]     how long to show readings (default 15)
#
# Installs what it needs (Debian packages, guest image, a QEMU with vhost-user) on the first
# run, with progress. Ctrl-C stops everything it started. VUSB_ACCEL=kvm (or auto) runs the
# guest with KVM instead of software emulation.
set -euo pipefail
cd "$(dirname "$0")/.."
SHOW_SECONDS="${1:-15}"
case "$SHOW_SECONDS" in
'' | *[!0-9]*) echo "usage: scripts/demo.sh [SECONDS]" >&2; exit 2 ;;
esac

step() { printf '\n==> %s\n' "$*"; }

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'echo; echo "demo: interrupted, stopping everything"; exit 130' INT TERM HUP

step "installing system packages (first run only)"
scripts/install-deps.sh

step "building hrh-exporter and vusb-backend"
cargo build --release --locked -p hrh-exporter -p vusb-backend
BIN=target/release

step "preparing the guest image with the virtio-usb driver (cached after the first run)"
guest-images/build-test-initramfs.sh
step "preparing a QEMU with vhost-user devices, 10.2 or later (cached after the first run)"
guest-images/build-qemu-chroot.sh

source scripts/lib/local-ports.sh
PORT="$(free_local_port)"

step "starting hrh-exporter with a simulated sensor on 127.0.0.1:$PORT (the home side)"
RUST_LOG=info NO_COLOR=1 "$BIN/hrh-exporter" --listen "127.0.0.1:$PORT" --simulate sensor \
    >"$WORK/exporter.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do port_open "$PORT" && break; sleep 0.1; done
port_open "$PORT" || { cat "$WORK/exporter.log" >&2; exit 1; }
sed 's/^/    exporter: /' "$WORK/exporter.log"

step "starting vusb-backend: imports 1-1 and serves it on $WORK/vusb.sock (the ISP side)"
RUST_LOG=info NO_COLOR=1 "$BIN/vusb-backend" --socket-path "$WORK/vusb.sock" \
    --device "tcp://127.0.0.1:$PORT/1-1" >"$WORK/backend.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do [ -S "$WORK/vusb.sock" ] && break; sleep 0.1; done
[ -S "$WORK/vusb.sock" ] || { cat "$WORK/backend.log" >&2; exit 1; }
sed 's/^/    backend: /' "$WORK/backend.log"

# What the guest runs once booted: load the driver, wait for the sensor, show its readings.
mkdir "$WORK/root"
cat >"$WORK/root/test.sh" <<GUEST
echo "[guest] loading the virtio-usb host controller driver"
insmod /opt/virtio-usb-hcd/virtio_usb_hcd.ko || exit 1
i=0
while [ ! -c /dev/ttyACM0 ] && [ \$i -lt 300 ]; do sleep 0.1; i=\$((i + 1)); done
[ -c /dev/ttyACM0 ] || { echo "[guest] the sensor did not appear as /dev/ttyACM0"; exit 1; }
for d in /sys/bus/usb/devices/*; do
    # Devices, not interfaces (1-1:1.0) or root hubs (usb1).
    case "\${d##*/}" in *:* | usb*) continue ;; esac
    # Its parent is a root hub, whose parent is the host controller.
    echo "[guest] USB device \$(cat "\$d/idVendor"):\$(cat "\$d/idProduct") \$(cat "\$d/product" 2>/dev/null), on the controller of \$(basename "\$(readlink -f "\$d/../..")") (driver \$(basename "\$(readlink -f "\$d/../../driver")"))"
done
echo "[guest] driver of the serial port: \$(basename "\$(readlink /sys/class/tty/ttyACM0/device/driver)")"
stty -F /dev/ttyACM0 raw -echo
echo "[guest] readings arriving on /dev/ttyACM0 for $SHOW_SECONDS s:"
# SIGINT: the shell reports a reader ended by SIGTERM with a stray "Terminated".
timeout -s INT $SHOW_SECONDS cat /dev/ttyACM0 | sed 's/^/[guest]   /'
echo "[guest] done"
GUEST
(cd "$WORK/root" && echo test.sh | cpio -o -H newc --quiet) >"$WORK/test.cpio"
# The kernel reads concatenated archives, each starting at a multiple of 4 bytes.
cp target/guest-images/initramfs.cpio.gz "$WORK/initrd"
size=$(stat -c %s "$WORK/initrd")
head -c $(((4 - size % 4) % 4)) /dev/zero >>"$WORK/initrd"
cat "$WORK/test.cpio" >>"$WORK/initrd"

step "booting the vHOME guest (software emulation: about 20 s to boot; console in $WORK/console.log)"
# The guest's test channel is its second serial port; its console goes to a file. Software
# emulation unless VUSB_ACCEL says otherwise: where /dev/kvm exists, it does not always run
# guests (nested virtualisation), and a hung demo explains nothing.
scripts/vhome-qemu.sh --socket "$WORK/vusb.sock" --memory 512 --cpus 1 \
    --accel "${VUSB_ACCEL:-tcg}" \
    --kernel target/guest-images/vmlinuz --initrd "$WORK/initrd" \
    --append "console=ttyS0 panic=-1 quiet" --console "$WORK/console.log" \
    -- -no-reboot -serial stdio </dev/null > >(tee "$WORK/guest.out") &
QEMU_PID=$!
PIDS+=("$QEMU_PID")
rc=0
wait "$QEMU_PID" || rc=$?
[ "$rc" -eq 0 ] || echo "demo: QEMU exited with status $rc" >&2

step "what the two daemons logged"
sed 's/^/    exporter: /' "$WORK/exporter.log"
sed 's/^/    backend: /' "$WORK/backend.log"

# The guest's last line on its test channel is the exit status of its script.
if ! grep -q '^VUSB-TEST-EXIT=0' "$WORK/guest.out"; then
    echo "demo: the guest did not get the readings; the end of its console:" >&2
    tail -n 40 "$WORK/console.log" >&2
    exit 1
fi
echo
echo "demo: the sensor's readings reached the guest through vusb-backend"
