#!/usr/bin/env bash
# Builds the guest's virtio-usb host controller driver (guest-images/virtio-usb-hcd) for one
# kernel.
#
#   guest-images/build-virtio-usb-hcd.sh KVER OUTDIR
#
# KVER is a Debian kernel release such as 6.1.0-56-amd64; its headers package
# (linux-headers-KVER) is installed with apt-get when missing, which needs root. The module
# is built out of tree in a scratch copy of the sources and written to
# OUTDIR/virtio_usb_hcd.ko. The build fails on any compiler warning.
set -euo pipefail

SELF="$(readlink -f "${BASH_SOURCE[0]}")"
SRC="$(dirname "$SELF")/virtio-usb-hcd"

say() { echo "build-virtio-usb-hcd: $*" >&2; }
die() {
    echo "build-virtio-usb-hcd: error: $*" >&2
    exit 1
}

[ $# -eq 2 ] || die "usage: $0 KVER OUTDIR"
KVER="$1"
OUT="$2"
KDIR="/lib/modules/$KVER/build"
HPKG="linux-headers-$KVER"

if [ ! -f "$KDIR/Makefile" ]; then
    [ "$(id -u)" -eq 0 ] || die "kernel headers $KDIR are missing (run as root, or: apt-get install -y $HPKG)"
    say "installing $HPKG"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends "$HPKG" >&2; then
        apt-get update >&2 || die "apt-get update failed"
        apt-get install -y --no-install-recommends "$HPKG" >&2 || die "could not install $HPKG"
    fi
    [ -f "$KDIR/Makefile" ] || die "$HPKG is installed but $KDIR/Makefile is missing"
fi

mkdir -p "$OUT"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/virtio-usb-hcd.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
cp "$SRC"/*.c "$SRC"/*.h "$SRC"/Makefile "$WORK/"

say "building virtio_usb_hcd.ko for $KVER"
# KCFLAGS=-Werror: a warning is a build failure, not something to scroll past.
if ! make -C "$KDIR" M="$WORK" KCFLAGS=-Werror modules >"$WORK/build.log" 2>&1; then
    cat "$WORK/build.log" >&2
    die "the module does not build against $KVER"
fi
if grep -i 'warning:' "$WORK/build.log" | grep -v 'Skipping BTF' >&2; then
    die "the build printed warnings"
fi
cp "$WORK/virtio_usb_hcd.ko" "$OUT/virtio_usb_hcd.ko.tmp"
mv "$OUT/virtio_usb_hcd.ko.tmp" "$OUT/virtio_usb_hcd.ko"
say "done: $OUT/virtio_usb_hcd.ko"
