#!/usr/bin/env bash
# The demo: a simulated HRH temperature sensor, exported by hrh-exporter on this
# machine, used by a booted Linux guest through USB/IP. The guest attaches it with
# the stock Linux client (usbip + vhci-hcd) and prints the readings it receives.
#
#   scripts/demo.sh [SECONDS]     how long to show readings (default 15)
#
# Installs what it needs (Debian packages, guest image) on the first run.
set -euo pipefail
cd "$(dirname "$0")/.."
SHOW_SECONDS="${1:-15}"
case "$SHOW_SECONDS" in
    ''|*[!0-9]*) echo "usage: scripts/demo.sh [SECONDS]" >&2; exit 2 ;;
esac

step() { printf '\n==> %s\n' "$*"; }

step "installing system packages (first run only)"
scripts/install-deps.sh

step "building hrh-exporter"
cargo build --release --locked -p hrh-exporter

step "preparing the guest image (cached after the first run)"
guest-images/build-test-initramfs.sh

WORK="$(mktemp -d)"
EXPORTER_PID=""
QEMU_PID=""
cleanup() {
    if [ -n "$QEMU_PID" ]; then kill "$QEMU_PID" 2>/dev/null || true; fi
    if [ -n "$EXPORTER_PID" ]; then kill "$EXPORTER_PID" 2>/dev/null || true; fi
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'echo; echo "interrupted"; exit 130' INT TERM

# A free port on loopback; the guest reaches this machine's 127.0.0.1 as 10.0.2.2.
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"

step "starting hrh-exporter with a simulated sensor on 127.0.0.1:$PORT"
target/release/hrh-exporter --listen "127.0.0.1:$PORT" --simulate sensor \
    >"$WORK/exporter.log" 2>&1 &
EXPORTER_PID=$!
for _ in $(seq 100); do
    grep -q "serving USB/IP" "$WORK/exporter.log" && break
    kill -0 "$EXPORTER_PID" 2>/dev/null || { cat "$WORK/exporter.log" >&2; exit 1; }
    sleep 0.1
done
sed 's/^/    exporter: /' "$WORK/exporter.log"

# The guest's script: the stock USB/IP client attaches the sensor, cdc_acm binds it.
mkdir "$WORK/root"
cat >"$WORK/root/test.sh" <<GUEST
echo "[guest] devices the HRH exports:"
usbip --tcp-port $PORT list -r 10.0.2.2
echo "[guest] attaching 1-1 with the stock Linux client"
usbip --tcp-port $PORT attach -r 10.0.2.2 -b 1-1 || exit 1
i=0
while [ ! -c /dev/ttyACM0 ] && [ \$i -lt 100 ]; do sleep 0.1; i=\$((i + 1)); done
[ -c /dev/ttyACM0 ] || { echo "[guest] no /dev/ttyACM0"; exit 1; }
stty -F /dev/ttyACM0 raw -echo
echo "[guest] readings arriving on /dev/ttyACM0 for $SHOW_SECONDS s:"
timeout $SHOW_SECONDS cat /dev/ttyACM0
echo "[guest] detaching"
usbip detach -p 0
GUEST
(cd "$WORK/root" && echo test.sh | cpio -o -H newc --quiet) >"$WORK/test.cpio"
cat target/guest-images/initramfs.cpio.gz "$WORK/test.cpio" >"$WORK/initrd"

step "booting the guest under QEMU (software emulation: about 20 s to boot)"
qemu-system-x86_64 -nodefaults -no-user-config -display none \
    -accel tcg -cpu max -m 512 -no-reboot \
    -kernel target/guest-images/vmlinuz -initrd "$WORK/initrd" \
    -append "console=ttyS0 panic=-1 quiet" \
    -netdev user,id=n0 -device virtio-net-pci,netdev=n0,romfile= \
    -serial "file:$WORK/console.log" -serial stdio </dev/null &
QEMU_PID=$!
wait "$QEMU_PID" || true
QEMU_PID=""

step "exporter log"
sed 's/^/    exporter: /' "$WORK/exporter.log"
