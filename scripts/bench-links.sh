#!/usr/bin/env bash
# The link benchmark (docs/link-benchmarks.md): pendrive throughput, serial and HID round
# trips and an interrupt stream, through each USB path (local, stock USB/IP, ours over
# virtio-usb, ours over usbredir, stock server with our backend) over each emulated
# home-to-ISP link, in real guests, then the host-only tunnel benchmark
# (scripts/bench-backend.sh). One command: installs and builds what it needs, runs with a
# progress line per step, and writes results.json, results.md, PNG plots and the host-only
# report into one folder.
#
#   scripts/bench-links.sh                       the full run (well over an hour under TCG)
#   scripts/bench-links.sh --quick               a few minutes
#   scripts/bench-links.sh --paths stock,ours-virtio --links metro
#   scripts/bench-links.sh --out DIR             default: bench-results/links-<date>[-quick]
#   scripts/bench-links.sh --quick --capture     also split each transaction at the HRH's NIC
#   scripts/bench-links.sh --quick --profile     also sample the HRH's CPU with perf
#   scripts/bench-links.sh --quick --trace       also trace what the HRH's CPU switches between
#   scripts/bench-links.sh --quick --round-trips 200   more round trips per series
set -euo pipefail
cd "$(dirname "$0")/.."

ARGS=() OUT= SUFFIX= PROFILE=
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) ARGS+=(--quick) SUFFIX=-quick ;;
        --capture) ARGS+=(--capture) ;;
        --profile) ARGS+=(--profile) PROFILE=1 ;;
        --trace) ARGS+=(--trace) ;;
        --paths|--links) ARGS+=("$1" "${2:?$1 needs a list}"); shift ;;
        --round-trips) ARGS+=("$1" "${2:?$1 needs a number}"); shift ;;
        --out) OUT=${2:?--out needs a directory}; shift ;;
        *) echo "usage: scripts/bench-links.sh [--quick] [--capture] [--profile] [--trace] [--round-trips N] [--paths P,..] [--links L,..] [--out DIR]" >&2
           exit 2 ;;
    esac
    shift
done
OUT=${OUT:-bench-results/links-$(date -u +%Y-%m-%d-%H%M)$SUFFIX}

step() { printf '\n==> %s\n' "$*" >&2; }

step "system packages"
scripts/install-deps.sh
# The plots; Debian's, for the system python the script names.
if ! /usr/bin/python3 -c 'import matplotlib' 2>/dev/null; then
    SUDO=
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        python3-matplotlib >/dev/null
fi
# --profile runs the host's perf inside the HRH guest.
if [ -n "$PROFILE" ] && [ ! -x /usr/bin/perf ]; then
    SUDO=
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        linux-perf >/dev/null
fi

step "building (release)"
cargo build --release --locked -p hrh-exporter -p vusb-backend -p vusb-bench -p vusb-vm-tests

step "guest images and the QEMU chroot"
guest-images/build-test-initramfs.sh
guest-images/build-qemu-chroot.sh

step "measuring; results in $OUT"
rc=0
VUSB_BIN_DIR=$PWD/target/release target/release/vusb-linkbench --out "$OUT" "${ARGS[@]}" || rc=$?
[ -f "$OUT/results.json" ] || exit "$rc"

# Also after a failed measurement: the plots show what was measured.
step "plots"
/usr/bin/python3 scripts/bench-links-plot.py "$OUT"

# Host only, no guests: the tunnel's own cost next to raw TCP on the same machine.
step "host-only: hrh-exporter and vusb-backend over TCP loopback against raw TCP"
QUICK=()
[ -n "$SUFFIX" ] && QUICK=(--quick)
scripts/bench-backend.sh "${QUICK[@]}" --out "$OUT" || rc=$?
echo "results: $OUT/results.md" >&2
exit "$rc"
