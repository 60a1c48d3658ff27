#!/usr/bin/env bash
# Benchmark of vusb-backend alone: added latency per request (virtqueue ->
# USB/IP -> virtqueue) and throughput with the simulated loopback dongle,
# next to a plain USB/IP client on a second loopback dongle of the same
# exporter (the path without the backend) and a raw TCP round trip of the
# same size on the same machine. The guest is simulated by backend-load
# (vusb_backend::sim_driver), so no QEMU and no guest kernel are timed.
#
#   scripts/bench-backend.sh            2 s per measurement (~20 s once built)
#   scripts/bench-backend.sh --quick    0.3 s per measurement
#   scripts/bench-backend.sh --out DIR  results in DIR (default docs/benchmarks)
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER=2 SUFFIX= OUT_DIR=docs/benchmarks
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) SECONDS_PER=0.3 SUFFIX=-quick ;;
        --out) OUT_DIR=${2:?--out needs a directory}; shift ;;
        *) echo "usage: scripts/bench-backend.sh [--quick] [--out DIR]" >&2; exit 2 ;;
    esac
    shift
done

echo "==> building (release)"
cargo build --release -p hrh-exporter -p vusb-backend -p vusb-bench

source scripts/lib/local-ports.sh
PORT=$(free_local_port)

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

# Two dongles: 1-1 through the backend, 1-2 for the direct client.
echo "==> hrh-exporter --simulate loopback (twice) on 127.0.0.1:$PORT"
RUST_LOG=warn target/release/hrh-exporter --listen "127.0.0.1:$PORT" \
    --simulate loopback --simulate loopback \
    >"$WORK/exporter.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do port_open "$PORT" && break; sleep 0.1; done

echo "==> vusb-backend on $WORK/vusb.sock"
RUST_LOG=warn target/release/vusb-backend --socket-path "$WORK/vusb.sock" \
    --device "tcp://127.0.0.1:$PORT/1-1" >"$WORK/backend.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do [ -S "$WORK/vusb.sock" ] && break; sleep 0.1; done
[ -S "$WORK/vusb.sock" ] || { cat "$WORK/backend.log" >&2; exit 1; }

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
echo "==> measuring, ${SECONDS_PER} s each"
target/release/backend-load --socket "$WORK/vusb.sock" --seconds "$SECONDS_PER" \
    --direct "127.0.0.1:$PORT/1-2" \
    --markdown "$WORK/results.md"
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

DATE=$(date +%Y-%m-%d)
mkdir -p "$OUT_DIR"
MD="$OUT_DIR/backend-$DATE$SUFFIX.md"
{
    echo "# vusb-backend benchmark, $DATE${SUFFIX:+ (quick)}"
    echo
    echo "- Machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), Linux $(uname -r); load average $LOAD_BEFORE before, $LOAD_AFTER after."
    echo "- Build: $(rustc --version), release, commit $(git rev-parse --short HEAD 2>/dev/null || echo none)."
    echo "- Setup: hrh-exporter (two loopback dongles), vusb-backend and backend-load as three unpinned processes on 127.0.0.1; the direct USB/IP client runs inside backend-load on the second dongle."
    echo "- Rerun: \`scripts/bench-backend.sh${SUFFIX:+ --quick}\`."
    echo
    cat "$WORK/results.md"
} >"$MD"
echo "written: $MD"
