#!/usr/bin/env bash
# Builds the guest assets used by the VM tests: a kernel and a small initramfs.
#
#   guest-images/build-test-initramfs.sh [CACHE_DIR]
#
# CACHE_DIR defaults to $VUSB_GUEST_IMAGES_DIR, then to <repo>/target/guest-images.
# Outputs there: vmlinuz, initramfs.cpio.gz, stamp.
#
# The initramfs is a busybox system with the stock Linux USB/IP tools (usbip, usbipd), the
# stock usbredir exporter (usbredirect, which the simulated gateway runs to compare with this
# repository's usbredir front-end), iproute2's tc and the kernel modules both test roles need:
# the USB/IP client (vhci-hcd + class drivers) and a simulated home gateway (dummy_hcd +
# configfs gadgets + usbip-host, and netem behind an ifb device to shape its link in both
# directions, tests/src/link.rs). It also holds this repository's virtio-usb host controller
# driver, built against the image's kernel (guest-images/build-virtio-usb-hcd.sh), as
# /opt/virtio-usb-hcd/virtio_usb_hcd.ko: outside the module tree, so that nothing loads it
# before a test insmods it. Its /init brings up the
# network of QEMU user networking (guest 10.0.2.15, host reachable at 10.0.2.2), loads
# vhci-hcd and runs /test.sh, which each test appends as a second cpio archive (the kernel
# unpacks concatenated archives in order). Test output goes to the second serial port
# (/dev/ttyS1) so that kernel messages on the console (ttyS0) never split a test's lines; the
# last line is `VUSB-TEST-EXIT=<exit code of /test.sh>`, then the guest powers off.
#
# Rebuilding is skipped when the stamp holds the hash of this script, the driver's sources, the
# kernel version and the versions of the Debian packages the image is made from. Runs as root
# on Debian 12; missing packages are installed with apt-get.
set -euo pipefail

SELF="$(readlink -f "${BASH_SOURCE[0]}")"
REPO_ROOT="$(cd "$(dirname "$SELF")/.." && pwd)"
OUT="${1:-${VUSB_GUEST_IMAGES_DIR:-$REPO_ROOT/target/guest-images}}"

say() { echo "build-test-initramfs: $*" >&2; }
die() {
    echo "build-test-initramfs: error: $*" >&2
    exit 1
}

# Packages whose files end up in the image or that the tests run on the host.
PACKAGES=(linux-image-amd64 busybox-static usbip usbredirect usb.ids cpio kmod gzip util-linux qemu-system-x86 iproute2)

is_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]
}

ensure_packages() {
    local missing=() p
    for p in "$@"; do
        is_installed "$p" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        die "missing Debian packages: ${missing[*]} (run this script as root, or: apt-get install -y ${missing[*]})"
    fi
    say "installing missing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Package lists may be empty on a fresh machine; an install failure is retried once after
    # refreshing them.
    if ! apt-get install -y --no-install-recommends "${missing[@]}" >&2; then
        apt-get update >&2 || die "apt-get update failed"
        apt-get install -y --no-install-recommends "${missing[@]}" >&2 ||
            die "could not install Debian packages: ${missing[*]}"
    fi
    for p in "${missing[@]}"; do
        is_installed "$p" || die "Debian package $p is still not installed"
    done
}

command -v dpkg-query >/dev/null || die "this script needs a Debian system (dpkg-query not found)"
ensure_packages "${PACKAGES[@]}"

# The kernel is the one the linux-image-amd64 meta-package points at; the host may well run
# another kernel (uname -r is not used on purpose).
KPKG="$(dpkg-query -W -f='${Depends}' linux-image-amd64 | tr ',|' '\n' |
    sed -n 's/^ *\(linux-image-[^ ]*\).*/\1/p' | head -n1)"
[ -n "$KPKG" ] || die "cannot tell which kernel linux-image-amd64 depends on"
KVER="${KPKG#linux-image-}"
KVER="${KVER%-unsigned}"
VMLINUZ="/boot/vmlinuz-$KVER"
# The guest's virtio-usb driver is built against this kernel's headers.
ensure_packages "linux-headers-$KVER"
MODDIR="/lib/modules/$KVER"

# Input hash: anything that changes the image changes it.
pkg_versions() {
    local p
    for p in "$KPKG" "linux-headers-$KVER" busybox-static usbip usb.ids libc6 libudev1 libwrap0 kmod \
        usbredirect libusbredirhost1 libusbredirparser1 libusb-1.0-0 libglib2.0-0 \
        iproute2 libbpf1 libelf1 libmnl0 libbsd0 libcap2 libxtables12 zlib1g libmd0; do
        printf '%s=%s\n' "$p" "$(dpkg-query -W -f='${Version}' "$p" 2>/dev/null || echo none)"
    done
}
DRIVER_SRC="$REPO_ROOT/guest-images/virtio-usb-hcd"
DRIVER_BUILD="$REPO_ROOT/guest-images/build-virtio-usb-hcd.sh"
HASH="$({
    cat "$SELF" "$DRIVER_BUILD"
    for f in "$DRIVER_SRC"/*.[ch] "$DRIVER_SRC"/Makefile; do
        echo "== ${f##*/}"
        cat "$f"
    done
    echo "kernel=$KVER"
    pkg_versions
} | sha256sum | cut -d' ' -f1)"

mkdir -p "$OUT"
# Several test processes may ask for the image at once; one builds, the others wait.
exec 9>"$OUT/.lock"
flock 9

if [ -f "$OUT/stamp" ] && [ "$(cat "$OUT/stamp")" = "$HASH" ] &&
    [ -f "$OUT/vmlinuz" ] && [ -f "$OUT/initramfs.cpio.gz" ]; then
    say "up to date: $OUT (kernel $KVER)"
    exit 0
fi

say "building guest image in $OUT (kernel $KVER)"
# Debian's vmlinuz is readable by root only, so this is checked only when it is needed.
[ -r "$VMLINUZ" ] || die "kernel $VMLINUZ is missing or unreadable (from package $KPKG; reading it needs root)"
[ -d "$MODDIR" ] || die "kernel modules $MODDIR are missing (from package $KPKG)"
rm -rf "$OUT/stamp" "$OUT"/stage.*
STAGE="$(mktemp -d "$OUT/stage.XXXXXX")"
trap 'rm -rf "$STAGE"' EXIT

mkdir -p "$STAGE"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,run,root,mnt,var}
ln -s ../run "$STAGE/var/run"
chmod 1777 "$STAGE/tmp"
# The kernel opens /dev/console for /init before anything is mounted.
mknod -m 600 "$STAGE/dev/console" c 5 1
mknod -m 666 "$STAGE/dev/null" c 1 3

say "adding busybox"
BUSYBOX=/bin/busybox
[ -x "$BUSYBOX" ] || die "$BUSYBOX not found (package busybox-static)"
file_is_static() { ! ldd "$1" >/dev/null 2>&1; }
file_is_static "$BUSYBOX" || die "$BUSYBOX is dynamically linked; the busybox-static package provides a static one"
cp "$BUSYBOX" "$STAGE/bin/busybox"
APPLETS="$("$BUSYBOX" --list)"
for a in sh stty dd sha256sum timeout sleep cat grep ip ifconfig modprobe poweroff mount awk sed uevent; do
    grep -qx "$a" <<<"$APPLETS" || die "busybox lacks the applet '$a' that the tests need"
done
for a in $APPLETS; do
    [ "$a" = busybox ] || [ -e "$STAGE/bin/$a" ] || ln -s busybox "$STAGE/bin/$a"
done

# copy_file FILE [PATH]: copies FILE into the stage at PATH (default: its own path), following
# symlinks.
copy_file() {
    local dest="${2:-$1}"
    mkdir -p "$STAGE$(dirname "$dest")"
    cp -L "$1" "$STAGE$dest"
}

# add_binary PROGRAM PACKAGE [PATH]: copies a dynamically linked program (to PATH, default its
# own path) and the shared libraries ldd names for it; a library ldd cannot find stops the
# build rather than a guest later.
add_binary() {
    local bin="$1" package="$2" libs
    [ -x "$bin" ] || die "$bin not found (package $package)"
    copy_file "$bin" "${3:-$1}"
    # ldd prints "name => /path (addr)" for libraries, "name => not found" for missing ones,
    # and "/path (addr)" for the loader.
    libs="$(ldd "$bin")" || die "ldd $bin failed"
    if grep -q 'not found' <<<"$libs"; then
        die "$bin needs libraries that are missing: $(grep 'not found' <<<"$libs" | tr -s ' \t\n' ' ')"
    fi
    awk '/=>/ { if ($3 ~ /^\//) print $3; next } $1 ~ /^\// { print $1 }' <<<"$libs" |
        while read -r lib; do
            [ -e "$STAGE$lib" ] || copy_file "$lib"
        done
}

say "adding usbip, usbipd, usbredirect and their shared libraries"
add_binary /usr/sbin/usbip usbip
add_binary /usr/sbin/usbipd usbip
add_binary /usr/bin/usbredirect usbredirect
# usbip prints vendor/product names from it; optional.
[ -f /usr/share/misc/usb.ids ] && copy_file /usr/share/misc/usb.ids

# iproute2's tc shapes the simulated gateway's link with netem (tests/src/link.rs). Busybox has a
# tc applet without netem, and this busybox's sh runs its applets ahead of anything on PATH, so
# the shaping scripts call /sbin/tc by its path: where iproute2 installs it, on the gateway too.
# Busybox's ip is enough for the rest: `modprobe ifb numifbs=1` creates the ifb device and
# `ip link set dev ifb0 up` brings it up.
say "adding iproute2's tc and its shared libraries"
TC=/usr/sbin/tc
[ -x "$TC" ] || TC=/sbin/tc
add_binary "$TC" iproute2 /sbin/tc
# The copy must run as it is, with the libraries the image holds.
out="$(chroot "$STAGE" /sbin/tc -V 2>&1)" || die "iproute2's tc does not run inside the image: $out"

say "adding kernel modules"
# Client role, NIC, and the simulated-gateway role (gadgets exported with usbip-host, links
# shaped with netem). The HID gadget function gives the gateway a device with interrupt
# endpoints (guest-images/hrh-gadgets.sh), xhci-pci one with isochronous endpoints (QEMU's
# emulated USB audio device, which dummy_hcd cannot replace: it has no isochronous endpoints);
# usbhid, hid-generic and snd-usb-audio are the client's drivers for them (snd-pcm-oss gives
# it /dev/dsp, which plays raw samples written by dd: busybox has no ALSA player).
# The link (tests/src/link.rs) has netem in eth0's root qdisc for outgoing packets and in
# ifb0's for incoming ones, which eth0's ingress qdisc hands to ifb0 with a matchall filter and
# a mirred action. The guest has no /sbin/modprobe for the kernel to load these on demand: the
# shaping script loads them. usbmon lets a test see the transfers a device is given.
MODULES=(
    usbip-core vhci-hcd cdc-acm usb-storage sd_mod usbhid hid-generic snd-usb-audio snd-pcm-oss
    virtio_pci virtio_net e1000
    dummy_hcd libcomposite usb_f_acm usb_f_mass_storage usb_f_hid usb_f_ss_lb usbip-host xhci-pci
    sch_netem sch_ingress cls_matchall act_mirred ifb usbmon
)
declare -A SEEN=()
add_module() {
    local name="$1" file deps dep
    [ -n "${SEEN[$name]:-}" ] && return 0
    SEEN[$name]=1
    file="$(modinfo -k "$KVER" -F filename "$name" 2>/dev/null)" ||
        die "kernel module $name not found for kernel $KVER"
    case "$file" in
    "(builtin)" | "") return 0 ;;
    esac
    mkdir -p "$STAGE$(dirname "$file")"
    cp "$file" "$STAGE$file"
    deps="$(modinfo -k "$KVER" -F depends "$name")"
    for dep in ${deps//,/ }; do
        add_module "$dep"
    done
}
for m in "${MODULES[@]}"; do
    add_module "$m"
done
say "building the virtio-usb host controller driver"
"$DRIVER_BUILD" "$KVER" "$STAGE/opt/virtio-usb-hcd" || die "building virtio_usb_hcd.ko failed"
for f in modules.order modules.builtin modules.builtin.modinfo; do
    [ -f "$MODDIR/$f" ] && cp "$MODDIR/$f" "$STAGE$MODDIR/$f"
done
depmod -b "$STAGE" "$KVER" || die "depmod failed on the staged modules"
say "  ${#SEEN[@]} modules: ${!SEEN[*]}"

cat >"$STAGE/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
EOF
cat >"$STAGE/etc/group" <<'EOF'
root:x:0:
EOF
cat >"$STAGE/etc/hosts" <<'EOF'
127.0.0.1 localhost
10.0.2.2 host
EOF

# There is no udev: busybox's `uevent` feeds kernel uevents to this script, which loads the
# driver of each new device (cdc_acm, usb-storage, sd_mod …) as udev would.
cat >"$STAGE/sbin/vusb-hotplug" <<'EOF'
#!/bin/sh
if [ "$ACTION" = add ] && [ -n "$MODALIAS" ]; then
    modprobe -q "$MODALIAS" 2>/dev/null
fi
exit 0
EOF
chmod 755 "$STAGE/sbin/vusb-hotplug"

cat >"$STAGE/init" <<'EOF'
#!/bin/sh
# PID 1 of the VM test guest. Prepares the system, runs /test.sh with its output on the test
# channel (ttyS1, or the console when there is none), reports its exit code and powers off.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
export HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
exec </dev/null >/dev/console 2>&1

OUT=/dev/console
if [ -c /dev/ttyS1 ] && stty -F /dev/ttyS1 -echo 2>/dev/null; then
    OUT=/dev/ttyS1
fi
say() { echo "vusb-init: $*" >"$OUT"; }

finish() {
    echo "VUSB-TEST-EXIT=$1" >"$OUT"
    sync
    # The last close of the tty above waits for its output to drain; this is extra margin.
    sleep 0.2
    poweroff -f
}

say "kernel $(uname -r) up after $(cut -d' ' -f1 /proc/uptime) s"

# Drivers load on demand when devices appear.
uevent /sbin/vusb-hotplug &

modprobe virtio_pci 2>/dev/null
modprobe virtio_net 2>/dev/null
modprobe e1000 2>/dev/null
ip link set lo up
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do
    sleep 0.1
    i=$((i + 1))
done
if [ -e /sys/class/net/eth0 ]; then
    ip addr add 10.0.2.15/24 dev eth0
    ip link set eth0 up
    ip route add default via 10.0.2.2
else
    say "no network interface found"
fi

modprobe vhci-hcd || say "modprobe vhci-hcd failed"

if [ ! -f /test.sh ]; then
    say "no /test.sh in the initramfs"
    finish 127
fi
say "running /test.sh"
cd /root
sh /test.sh </dev/null >"$OUT" 2>&1
finish $?
EOF
chmod 755 "$STAGE/init"

say "packing initramfs"
(cd "$STAGE" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) |
    gzip -9 >"$OUT/initramfs.cpio.gz.tmp"
mv "$OUT/initramfs.cpio.gz.tmp" "$OUT/initramfs.cpio.gz"
cp "$VMLINUZ" "$OUT/vmlinuz.tmp"
mv "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"
echo "$HASH" >"$OUT/stamp"
say "done: $OUT/vmlinuz, $OUT/initramfs.cpio.gz ($(du -h "$OUT/initramfs.cpio.gz" | cut -f1))"
