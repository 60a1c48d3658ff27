#!/usr/bin/env bash
# Throughput benchmark of hrh-exporter with the simulated loopback dongle
# over TCP on 127.0.0.1, plus the codec's criterion benchmarks.
#
# The exporter is pinned to CPU 0 and the load generator (usbip-load, one
# thread) to CPU 1, so "one core" means one core. Results go to
# docs/benchmarks/exporter-<date>.md and .json.
#
#   scripts/bench.sh             full matrix and codec benchmarks (~2 min once built)
#   scripts/bench.sh --quick     short windows, no codec benchmarks (~20 s once built)
#   scripts/bench.sh --no-codec  full matrix only
#   scripts/bench.sh --out DIR   write the results to DIR instead
#   scripts/bench.sh --no-build  use the binaries already in target/release
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=0
CODEC=1
BUILD=1
OUT_DIR=docs/benchmarks
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1; CODEC=0 ;;
        --no-codec) CODEC=0 ;;
        --no-build) BUILD=0 ;;
        --out) OUT_DIR=${2:?--out needs a directory}; shift ;;
        *) echo "usage: scripts/bench.sh [--quick] [--no-codec] [--no-build] [--out DIR]" >&2; exit 2 ;;
    esac
    shift
done

if [ "$QUICK" = 1 ]; then
    # 42 cells x ~0.3 s.
    WINDOW=0.25 WARMUP=0.05 SUFFIX=-quick
else
    # 42 cells x ~1.8 s.
    WINDOW=1.5 WARMUP=0.3 SUFFIX=
fi

step() { printf '\n==> %s\n' "$*"; }

if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
    PIN_SERVER=(taskset -c 0)
    PIN_LOADER=(taskset -c 1)
    PINNING="hrh-exporter on CPU 0 (\`taskset -c 0\`), usbip-load on CPU 1 (\`taskset -c 1\`)"
else
    echo "warning: fewer than 2 CPUs or no taskset: running unpinned" >&2
    PIN_SERVER=() PIN_LOADER=()
    PINNING="unpinned (fewer than 2 CPUs or no taskset)"
fi

EXPORTER=target/release/hrh-exporter
LOADER=target/release/usbip-load
if [ "$BUILD" = 1 ]; then
    step "building (release)"
    cargo build --release -p hrh-exporter -p vusb-bench
fi
for bin in "$EXPORTER" "$LOADER"; do
    [ -x "$bin" ] || { echo "$bin is missing: build without --no-build" >&2; exit 1; }
done

# A free port on 127.0.0.1: nothing answers a connection to it.
source scripts/lib/local-ports.sh
PORT=$(free_local_port)

WORK=$(mktemp -d)
EXPORTER_PID=
cleanup() {
    if [ -n "$EXPORTER_PID" ]; then
        kill "$EXPORTER_PID" 2>/dev/null || true
        wait "$EXPORTER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

step "starting the exporter on 127.0.0.1:$PORT"
RUST_LOG=warn "${PIN_SERVER[@]}" "$EXPORTER" --listen "127.0.0.1:$PORT" --simulate loopback \
    >"$WORK/exporter.log" 2>&1 &
EXPORTER_PID=$!
for _ in $(seq 100); do
    port_open "$PORT" && break
    if ! kill -0 "$EXPORTER_PID" 2>/dev/null; then
        cat "$WORK/exporter.log" >&2
        echo "the exporter exited" >&2
        exit 1
    fi
    sleep 0.1
done
port_open "$PORT" || { echo "the exporter does not listen on port $PORT" >&2; exit 1; }

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
step "load matrix: 7 sizes x 3 depths x 2 directions, ${WINDOW} s per cell"
timeout 600 "${PIN_LOADER[@]}" "$LOADER" --server "127.0.0.1:$PORT" --busid 1-1 \
    --server-pid "$EXPORTER_PID" --matrix --duration "$WINDOW" --warmup "$WARMUP" \
    --markdown "$WORK/matrix.md" --json "$WORK/matrix.json"
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
kill "$EXPORTER_PID"
wait "$EXPORTER_PID" 2>/dev/null || true
EXPORTER_PID=

DATE=$(date +%Y-%m-%d)
CPU_MODEL=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || echo unknown)
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo "none")
RUSTC=$(rustc --version)
mkdir -p "$OUT_DIR"
MD="$OUT_DIR/exporter-$DATE$SUFFIX.md"
JSON="$OUT_DIR/exporter-$DATE$SUFFIX.json"

{
    echo "# Exporter benchmark, $DATE${SUFFIX:+ (quick)}"
    echo
    echo "- Machine: $(nproc) CPUs, $CPU_MODEL, Linux $(uname -r); load average $LOAD_BEFORE before and $LOAD_AFTER after the matrix."
    echo "- Build: $RUSTC, release profile, commit $COMMIT."
    echo "- Setup: \`hrh-exporter --simulate loopback\` and \`usbip-load\` over TCP on 127.0.0.1; $PINNING."
    echo "- Rerun: \`scripts/bench.sh${SUFFIX:+ --quick}\`; see docs/benchmarks.md for what is measured."
    echo
    echo "## URBs over TCP loopback"
    echo
    cat "$WORK/matrix.md"
} >"$MD"

# The JSON is written again once the codec numbers are in.
write_json() {
    {
        echo "{"
        echo "  \"date\": \"$DATE\","
        echo "  \"machine\": {\"cpus\": $(nproc), \"cpu_model\": \"${CPU_MODEL//\"/}\", \"kernel\": \"$(uname -r)\", \"loadavg_before\": \"$LOAD_BEFORE\", \"loadavg_after\": \"$LOAD_AFTER\"},"
        echo "  \"commit\": \"$COMMIT\","
        echo "  \"window_s\": $WINDOW,"
        echo "  \"exporter\": $(sed 's/^/  /' "$WORK/matrix.json" | sed '1s/^  //'),"
        echo "  \"codec\": [${CODEC_JSON:+
    $CODEC_JSON
  }]"
        echo "}"
    } >"$JSON"
}
CODEC_JSON=
write_json
echo "written: $MD, $JSON"

# "group/name" -> median ns per iteration, from criterion's estimates.
median_ns() {
    sed -E 's/.*"median":\{"confidence_interval":\{[^}]*\},"point_estimate":([0-9.eE+-]+).*/\1/' \
        "target/criterion/$1/new/estimates.json"
}

if [ "$CODEC" = 1 ]; then
    step "codec benchmarks (criterion)"
    cargo bench -p usbip-proto --bench codec --no-run
    "${PIN_LOADER[@]}" cargo bench -p usbip-proto --bench codec -- \
        --warm-up-time 0.5 --measurement-time 1 --noplot
    CODEC_MD="Criterion, median time per message; wire bytes are the 48-byte header plus the payload.

| message | operation | payload | median time | messages/s | wire MB/s |
|---|---|---:|---:|---:|---:|"
    for group in cmd_submit ret_submit; do
        for op in encode decode; do
            for len in 0 512 65536; do
                ns=$(median_ns "$group/${op}_$len")
                row=$(awk -v ns="$ns" -v len="$len" 'BEGIN {
                    printf "%.1f ns|%.0f|%.0f", ns, 1e9 / ns, (48 + len) / ns * 1e3 }')
                IFS='|' read -r t mps mbs <<<"$row"
                name=${group^^}
                CODEC_MD+=$'\n'"| $name | $op | $len B | $t | $mps | $mbs |"
                CODEC_JSON+="${CODEC_JSON:+,
    }{\"message\": \"$group\", \"operation\": \"$op\", \"payload\": $len, \"median_ns\": $ns, \"messages_per_s\": $mps, \"wire_mb_per_s\": $mbs}"
            done
        done
    done
    printf '\n## Codec\n\n%s\n' "$CODEC_MD" >>"$MD"
    write_json
fi

step "results"
sed -n '/^- \*\*/p' "$WORK/matrix.md"
echo "results in $MD and $JSON"
