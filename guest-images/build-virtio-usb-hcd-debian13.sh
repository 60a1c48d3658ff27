#!/usr/bin/env bash
# Builds the guest's virtio-usb host controller driver against Debian 13's own kernel headers
# (trixie's linux-headers-amd64, with trixie's compiler), the way a Debian 13 guest's DKMS
# would.
#
#   guest-images/build-virtio-usb-hcd-debian13.sh OUTDIR
#
# It works in an overlay on the trixie chroot of build-qemu-chroot.sh (built first if needed),
# so that chroot stays as it is; the headers and compiler installed in the overlay are kept in
# $VUSB_TRIXIE_KBUILD (default /var/cache/vusb/trixie-kbuild) for the next run, and dropped
# when the chroot is rebuilt. Needs root, and a Debian mirror the first time. The module goes
# to OUTDIR/virtio_usb_hcd.ko, and the kernel release it was built for to OUTDIR/kernel. The
# build fails on any compiler warning.
set -euo pipefail

SELF="$(readlink -f "${BASH_SOURCE[0]}")"
HERE="$(dirname "$SELF")"
SRC="$HERE/virtio-usb-hcd"
BUILD_NAME=build-virtio-usb-hcd-debian13
# shellcheck source=SCRIPTDIR/lib/build-common.sh
. "$HERE/lib/build-common.sh"

[ $# -eq 1 ] || die "usage: $0 OUTDIR"
OUT="$(mkdir -p "$1" && cd "$1" && pwd)"
[ "$(id -u)" -eq 0 ] || die "needs root (overlay mounts, chroot)"

ROOT="${VUSB_QEMU_CHROOT:-/var/cache/vusb/qemu-trixie}"
CACHE="${VUSB_TRIXIE_KBUILD:-/var/cache/vusb/trixie-kbuild}"
"$HERE/build-qemu-chroot.sh" "$ROOT"

# The overlay's upper layer only makes sense on the lower layer it was made on.
LOWER="$(sha256sum <"$ROOT/.vusb-stamp" | cut -d' ' -f1)"
if [ "$(cat "$CACHE/lower" 2>/dev/null)" != "$LOWER" ]; then
    [ -e "$CACHE" ] && say "the trixie chroot changed: starting a fresh overlay"
    rm -rf "$CACHE"
fi
mkdir -p "$CACHE/upper" "$CACHE/work" "$CACHE/merged"
echo "$LOWER" >"$CACHE/lower"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/virtio-usb-hcd-debian13.XXXXXX")"
LOG="$WORK/step.log"
trap 'stop_step; rm -rf "$WORK"' EXIT
mkdir "$WORK/src"
cp "$SRC"/*.c "$SRC"/*.h "$SRC"/Makefile "$WORK/src/"

say "building virtio_usb_hcd.ko against trixie's linux-headers-amd64 (installed on first use)"
# shellcheck disable=SC2016 # the inner scripts expand their own variables.
if ! run_step unshare --mount --propagation private -- /bin/sh -c '
    set -e
    root="$1" cache="$2" src="$3"
    m="$cache/merged"
    mount -t overlay overlay -o "lowerdir=$root,upperdir=$cache/upper,workdir=$cache/work" "$m"
    mount -t proc proc "$m/proc"
    mount --rbind /sys "$m/sys"
    mount --rbind /dev "$m/dev"
    mkdir -p "$m/build"
    mount --bind "$src" "$m/build"
    exec chroot "$m" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 /bin/sh -c "
        set -e
        if ! ls -d /usr/src/linux-headers-*-amd64 >/dev/null 2>&1 || ! command -v gcc >/dev/null; then
            apt-get update -q
            # QEMU brought libelf from backports; the kernel build tools need a libdw to match.
            if dpkg-query -W libelf1t64 2>/dev/null | grep -q bpo; then
                apt-get install -y -q --no-install-recommends -t trixie-backports libdw1t64
            fi
            apt-get install -y -q --no-install-recommends linux-headers-amd64 gcc make libc6-dev
            apt-get clean
            rm -rf /var/lib/apt/lists/*
        fi
        kdir=\$(ls -d /usr/src/linux-headers-*-amd64 | sort -V | tail -n 1)
        basename \"\$kdir\" | sed s/^linux-headers-// >/build/kernel
        gcc --version | head -n 1 >/build/compiler
        make -C \"\$kdir\" M=/build KCFLAGS=-Werror modules >/build/build.log 2>&1 ||
            { cat /build/build.log; exit 1; }
    "' sh "$ROOT" "$CACHE" "$WORK/src"; then
    die "the module does not build against Debian 13's headers (output above)"
fi
if grep -i 'warning:' "$WORK/src/build.log" | grep -v 'Skipping BTF' >&2; then
    die "the build printed warnings"
fi
cp "$WORK/src/virtio_usb_hcd.ko" "$OUT/virtio_usb_hcd.ko"
cp "$WORK/src/kernel" "$OUT/kernel"
say "done: $OUT/virtio_usb_hcd.ko for $(cat "$OUT/kernel") ($(cat "$WORK/src/compiler"))"
