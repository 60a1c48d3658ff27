#!/usr/bin/env bash
# Builds the vHOME guest disk image an operator boots under libvirt (or scripts/vhome-qemu.sh):
# Debian 12 (bookworm) with its stock kernel, systemd, DHCP on the virtio NIC (systemd-networkd),
# OpenSSH (root, by key only), a serial console on ttyS0 and the virtio-usb host controller
# driver of guest-images/virtio-usb-hcd installed through DKMS, so that the kernel loads it
# when the virtio-usb device appears and rebuilds it when the guest's kernel is upgraded.
#
#   guest-images/build-vhome-image.sh [--rebuild] [OUT]
#
# OUT defaults to $VUSB_VHOME_DIR, then to /var/cache/vusb/vhome, a machine-wide cache. It ends
# up holding:
#   OUT/vhome.qcow2            the disk: 3 GiB, MBR, one ext4 partition, booted by extlinux
#   OUT/vhome_ed25519[.pub]    the key root logs in with (generated once, kept on rebuilds)
#   OUT/vhome.packages         the Debian packages in the image, with their versions
#
# OUT/.vusb-stamp records the hash of the inputs: this script, guest-images/lib, the driver's
# sources, the public key and the version of linux-image-amd64 the host's package lists offer
# (when the host runs bookworm too). An image that is up to date and was not modified since
# (booted in place) is left alone and the script returns at once; otherwise it is rebuilt. The
# Debian tree under the driver, OUT/.rootfs, is cached on its own, so that a change to the
# driver costs a DKMS build and a new disk, not a new debootstrap.
#
# Building needs root, network access to a Debian mirror (the one apt on the host uses for its
# own suite; VUSB_DEBIAN_MIRROR and VUSB_DEBIAN_SECURITY_MIRROR override it), loop devices and
# mount namespaces. The host tools it needs (debootstrap, qemu-utils, extlinux, syslinux-common,
# e2fsprogs, fdisk, openssh-client) are installed with apt-get when missing. Progress goes to
# stderr, one line per step; the output of the long steps only when they fail.
set -euo pipefail

SELF="$(readlink -f "${BASH_SOURCE[0]}")"
HERE="$(dirname "$SELF")"
LIB="$HERE/lib/build-common.sh"
BUILD_NAME=build-vhome-image
# shellcheck source=SCRIPTDIR/lib/build-common.sh
. "$LIB"

REBUILD=0
OUT_ARG=
for arg in "$@"; do
    case "$arg" in
    --rebuild) REBUILD=1 ;;
    -h | --help)
        sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$SELF"
        exit 0
        ;;
    -*) die "unknown option $arg (usage: build-vhome-image.sh [--rebuild] [OUT])" ;;
    *)
        [ -z "$OUT_ARG" ] || die "more than one directory given"
        OUT_ARG="$arg"
        ;;
    esac
done
OUT="${OUT_ARG:-${VUSB_VHOME_DIR:-/var/cache/vusb/vhome}}"
case "$OUT" in
/*) ;;
*) OUT="$PWD/$OUT" ;;
esac
OUT="${OUT%/}"
[ -n "$OUT" ] || die "OUT cannot be /"
# QEMU's and libvirt's option syntax gives commas a meaning.
case "$OUT" in *,*) die "OUT ($OUT) must not contain a comma" ;; esac

SUITE=bookworm
IMAGE="$OUT/vhome.qcow2"
KEY="$OUT/vhome_ed25519"
PACKAGE_LIST="$OUT/vhome.packages"
STAMP="$OUT/.vusb-stamp"
BASE="$OUT/.rootfs"
STAMP_NAME=.vusb-stamp
HOSTNAME_IN_IMAGE=vhome
DISK_MIB=3072
# The partition starts at 1 MiB, the usual alignment; the MBR and nothing else comes before.
PART_START_MIB=1
# root=UUID= survives the disk being renamed (vda under virtio-blk, sda under SCSI or SATA).
# ttyS0 comes last: it becomes /dev/console, so systemd's messages and emergency shells show on
# the serial port, which is the console both vhome-qemu.sh and the libvirt domain give (they
# have no display); tty0 still gets the kernel's messages where a screen is attached.
KERNEL_CONSOLES="console=tty0 console=ttyS0,115200"

DRIVER_SRC="$HERE/virtio-usb-hcd"
[ -f "$DRIVER_SRC/dkms.conf" ] || die "$DRIVER_SRC/dkms.conf is missing"
dkms_field() {
    sed -n "s/^$1=\"\{0,1\}\([^\"]*\)\"\{0,1\}[[:space:]]*$/\1/p" "$DRIVER_SRC/dkms.conf" | head -n1
}
DRIVER_PACKAGE="$(dkms_field PACKAGE_NAME)"
DRIVER_VERSION="$(dkms_field PACKAGE_VERSION)"
DRIVER_MODULE="$(dkms_field 'BUILT_MODULE_NAME\[0\]')"
if [ -z "$DRIVER_PACKAGE" ] || [ -z "$DRIVER_VERSION" ] || [ -z "$DRIVER_MODULE" ]; then
    die "cannot read PACKAGE_NAME, PACKAGE_VERSION and BUILT_MODULE_NAME[0] from $DRIVER_SRC/dkms.conf"
fi

# The files DKMS builds the driver from, which go to /usr/src in the image (not the objects a
# local build left, nor documentation: editing it is no reason for a new image).
driver_files() {
    (cd "$DRIVER_SRC" && find . -maxdepth 1 -type f \( -name '*.c' -o -name '*.h' -o \
        -name Makefile -o -name Kbuild -o -name dkms.conf \) -printf '%P\n' | LC_ALL=C sort)
}

# The version of linux-image-amd64 the host's package lists offer, when the host runs the
# image's suite: a kernel update there is one for the image too. Cheap (no network).
kernel_candidate() {
    [ "$(host_suite)" = "$SUITE" ] || return 0
    apt-cache show --no-all-versions linux-image-amd64 2>/dev/null | sed -n 's/^Version: //p' | head -n1
}

# What the Debian tree depends on, and what the image depends on on top of it.
base_hash() {
    { sha256sum "$SELF" "$LIB" | cut -d' ' -f1; echo "suite=$SUITE kernel=$(kernel_candidate)"; } |
        sha256sum | cut -d' ' -f1
}
image_hash() {
    {
        echo "base=$1"
        (cd "$DRIVER_SRC" && driver_files | while read -r f; do sha256sum -- "$f"; done)
        cat "$KEY.pub"
    } | sha256sum | cut -d' ' -f1
}

# Size and modification time: QEMU writing to the image (someone booting the cache itself)
# changes them, and such an image is no longer the one built.
image_state() {
    stat -c '%s %Y' "$IMAGE" 2>/dev/null
}

stamp_field() {
    sed -n "s/^$2=//p" "$1" 2>/dev/null | head -n1
}

is_current() {
    [ -f "$IMAGE" ] && [ -f "$KEY" ] && [ -f "$KEY.pub" ] && [ -f "$STAMP" ] || return 1
    [ "$(stamp_field "$STAMP" inputs)" = "$(image_hash "$(base_hash)")" ] || return 1
    [ "$(stamp_field "$STAMP" image)" = "$(image_state)" ]
}

print_usage_hints() {
    cat >&2 <<EOF

Boot it (QEMU 10.2 or later, with a vusb-backend listening on the socket; copy the image
first, or add "-- -snapshot", to keep the cache pristine):
  scripts/vhome-qemu.sh --socket /run/vusb/GUEST.sock --disk $IMAGE --ssh-port 2222
Under libvirt: copy it to /var/lib/libvirt/images/vhome1.qcow2 and see
  scripts/libvirt/vhome-virtio-usb.xml
Log in (root, by key only; the serial console has no password to log in with):
  ssh -i $KEY -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -p 2222 root@127.0.0.1
EOF
}

# The fast path first, without the lock: a finished image is replaced, never modified in place.
if [ "$REBUILD" = 0 ] && is_current; then
    say "up to date: $IMAGE (kernel $(stamp_field "$STAMP" kernel), $(stamp_field "$STAMP" driver))"
    exit 0
fi

[ "$(id -u)" -eq 0 ] || die "$IMAGE is missing or out of date, and building it needs root (debootstrap, chroot, loop devices)"
command -v dpkg-query >/dev/null || die "this script needs a Debian host (dpkg-query not found)"

mkdir -p "$OUT" || die "cannot create $OUT"
take_lock "$OUT/.lock" "$IMAGE"

STARTED=$SECONDS
step() { say "[$(printf '%4d' $((SECONDS - STARTED))) s] $*"; }

need_host_packages debootstrap debootstrap qemu-img qemu-utils extlinux extlinux \
    /usr/lib/syslinux/mbr/mbr.bin syslinux-common mkfs.ext4 e2fsprogs sfdisk fdisk \
    ssh-keygen openssh-client

# The key is the one thing a rebuild keeps: operators have it in their ssh configuration.
if [ ! -f "$KEY" ]; then
    step "generating the ssh key $KEY"
    rm -f "$KEY.pub"
    ssh-keygen -q -t ed25519 -N '' -C "root@$HOSTNAME_IN_IMAGE" -f "$KEY" ||
        die "ssh-keygen failed"
elif [ ! -f "$KEY.pub" ]; then
    ssh-keygen -y -f "$KEY" >"$KEY.pub" || die "cannot derive $KEY.pub from $KEY"
fi

if [ "$REBUILD" = 0 ] && is_current; then
    say "up to date: $IMAGE (built meanwhile by another run)"
    exit 0
fi
if [ -f "$STAMP" ]; then
    if [ "$REBUILD" = 1 ]; then
        step "rebuilding $IMAGE as asked"
    elif [ -f "$IMAGE" ] && [ "$(stamp_field "$STAMP" image)" != "$(image_state)" ]; then
        step "$IMAGE was modified since it was built (booted in place?); rebuilding"
    else
        step "$IMAGE is out of date (this script, the driver or the kernel changed); rebuilding"
    fi
fi

BASE_HASH="$(base_hash)"
IMAGE_HASH="$(image_hash "$BASE_HASH")"

# Leftovers of builds that were killed (the lock guarantees none is running).
for old in "$OUT"/.build.* "$OUT"/.rootfs.build.* "$OUT"/.rootfs.old.*; do
    [ -e "$old" ] || continue
    step "removing leftover $old"
    remove_tree "$old"
done

BUILD="$(mktemp -d "$OUT/.build.XXXXXX")"
BASE_BUILD=
LOG="$BUILD/step.log"
cleanup() {
    stop_step
    # Mounts and loop devices made during the build belong to private mount namespaces, gone
    # with their processes (the loop devices are detached when their mounts go).
    local dir
    for dir in "${BASE_BUILD:-}" "${BUILD:-}"; do
        if [ -n "$dir" ] && [ -e "$dir" ]; then
            say "removing the unfinished build $dir"
            remove_tree "$dir"
        fi
    done
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM HUP

# ---------------------------------------------------------------------------------------------
# The Debian tree: everything but the driver and root's key.

PACKAGES=(
    # Boot: the stock kernel (its initramfs has virtio_blk and virtio_pci), systemd as init.
    linux-image-amd64 initramfs-tools systemd-sysv udev kmod dbus libpam-systemd
    # Network: DHCP on the virtio NIC, DNS from the DHCP server, ssh.
    systemd-resolved openssh-server iproute2 iputils-ping ca-certificates
    # The driver, built by DKMS now and again after every kernel upgrade.
    dkms linux-headers-amd64 gcc make libc6-dev
    # Looking at USB and PCI devices, and the usual tools at a prompt.
    usbutils pciutils procps less
)

build_base() {
    [ -e /usr/share/debootstrap/scripts/$SUITE ] ||
        die "this debootstrap does not know $SUITE; upgrade the debootstrap package"
    local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    [ -f "$keyring" ] || die "$keyring is missing (package debian-archive-keyring)"
    detect_debian_mirrors

    BASE_BUILD="$(mktemp -d "$OUT/.rootfs.build.XXXXXX")"
    # mktemp makes it private; the tree becomes the guest's /.
    chmod 755 "$BASE_BUILD"
    local root="$BASE_BUILD"

    step "debootstrap --variant=minbase $SUITE from $MIRROR"
    # In a private mount namespace: the /proc and /sys debootstrap mounts into the target vanish
    # with it, even when it fails half-way, so the tree can always be deleted safely.
    run_step unshare --mount --propagation private -- \
        debootstrap --variant=minbase --keyring="$keyring" "$SUITE" "$root" "$MIRROR" ||
        die "debootstrap failed (last lines above)"

    {
        cat <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
        if [ -n "$SECURITY_MIRROR" ]; then
            cat <<EOF

Types: deb
URIs: $SECURITY_MIRROR
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
        fi
    } >"$root/etc/apt/sources.list.d/debian.sources"
    rm -f "$root/etc/apt/sources.list"
    # Documentation, manual pages and translations make the image a third bigger; the licences
    # stay.
    cat >"$root/etc/dpkg/dpkg.cfg.d/vhome-nodoc" <<'EOF'
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-exclude=/usr/share/lintian/*
EOF
    # No package may start a service inside the build tree.
    printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
    chmod 755 "$root/usr/sbin/policy-rc.d"
    # Where the kernel packages keep /vmlinuz and /initrd.img, the links extlinux boots.
    printf 'do_symlinks = yes\nlink_in_boot = no\n' >"$root/etc/kernel-img.conf"

    step "installing ${#PACKAGES[@]} packages (kernel, systemd, ssh, dkms, headers, gcc)"
    run_in_chroot "$root" "apt-get update -q && apt-get install -y -q --no-install-recommends \
            ${PACKAGES[*]} && apt-get clean" ||
        die "installing the packages inside the image failed (last lines above)"

    step "configuring the system"
    local kver
    kver="$(kernel_in "$root")"
    if [ ! -e "$root/vmlinuz" ] || [ ! -e "$root/initrd.img" ]; then
        die "the kernel package left no /vmlinuz or /initrd.img link in the image"
    fi
    [ -f "$root/usr/src/linux-headers-$kver/Makefile" ] ||
        die "the headers of $kver (the image's kernel) are missing in the image"

    echo "$HOSTNAME_IN_IMAGE" >"$root/etc/hostname"
    cat >"$root/etc/hosts" <<EOF
127.0.0.1	localhost
127.0.1.1	$HOSTNAME_IN_IMAGE
::1		localhost ip6-localhost ip6-loopback
ff02::1		ip6-allnodes
ff02::2		ip6-allrouters
EOF
    cat >"$root/etc/systemd/network/80-vhome-dhcp.network" <<'EOF'
# Every Ethernet NIC (the virtio NIC of vhome-qemu.sh or libvirt) takes its address by DHCP.
[Match]
Type=ether
Name=en* eth*

[Network]
DHCP=yes
EOF
    # DNS servers from DHCP reach programs through systemd-resolved's stub.
    ln -sfn ../run/systemd/resolve/stub-resolv.conf "$root/etc/resolv.conf"

    cat >"$root/etc/ssh/sshd_config.d/vhome.conf" <<'EOF'
# root logs in with its key (/root/.ssh/authorized_keys) and nobody with a password.
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
# No RSA host key: making one takes minutes on an emulated CPU, and every client since OpenSSH
# 6.5 takes Ed25519.
HostKey /etc/ssh/ssh_host_ed25519_key
HostKey /etc/ssh/ssh_host_ecdsa_key
EOF
    # Host keys made now would be shared by every machine booted from the image: each makes its
    # own at its first boot instead.
    rm -f "$root"/etc/ssh/ssh_host_*
    cat >"$root/etc/systemd/system/vhome-ssh-host-keys.service" <<'EOF'
[Unit]
Description=Generate this machine's SSH host keys
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key
Before=ssh.service

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key
ExecStart=/usr/bin/ssh-keygen -q -t ecdsa -N "" -f /etc/ssh/ssh_host_ecdsa_key

[Install]
WantedBy=ssh.service
EOF
    # A getty on the serial console whatever the kernel's command line says.
    run_in_chroot "$root" "systemctl enable systemd-networkd.service systemd-resolved.service \
            ssh.service vhome-ssh-host-keys.service serial-getty@ttyS0.service &&
        usermod -p '*' root" ||
        die "enabling the services failed (last lines above)"
    # No prompt for a locale or time zone at the first boot on the serial console.
    if [ -e "$root/lib/systemd/system/systemd-firstboot.service" ]; then
        ln -sfn /dev/null "$root/etc/systemd/system/systemd-firstboot.service"
    fi
    # Each machine gets its own ID at its first boot (and with it its DHCP client ID).
    : >"$root/etc/machine-id"
    rm -f "$root/var/lib/dbus/machine-id"
    rm -f "$root/usr/sbin/policy-rc.d"
    # The package lists are only needed to install; the guest fetches them anew.
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
    printf 'base=%s\nkernel=%s\n' "$BASE_HASH" "$kver" >"$root/$STAMP_NAME"

    # Swap the finished tree in.
    if [ -e "$BASE" ]; then
        local old
        old="$(mktemp -u "$OUT/.rootfs.old.XXXXXX")"
        mv -T -- "$BASE" "$old"
        mv -T -- "$root" "$BASE"
        BASE_BUILD="$old"
        remove_tree "$old"
    else
        mv -T -- "$root" "$BASE"
    fi
    BASE_BUILD=
}

# The version of the one kernel installed in tree $1.
kernel_in() {
    local kvers
    mapfile -t kvers < <(find "$1/lib/modules" -mindepth 1 -maxdepth 1 -type d -printf '%f\n')
    [ ${#kvers[@]} -eq 1 ] || die "expected one kernel in the image, found: ${kvers[*]:-none}"
    echo "${kvers[0]}"
}

if [ -f "$BASE/$STAMP_NAME" ] && [ "$(stamp_field "$BASE/$STAMP_NAME" base)" = "$BASE_HASH" ]; then
    step "reusing the Debian tree $BASE"
else
    build_base
fi

# ---------------------------------------------------------------------------------------------
# The image: the tree, the driver, the key, a disk.

ROOT="$BUILD/root"
step "copying the Debian tree"
cp -a -- "$BASE" "$ROOT" || die "cannot copy $BASE to $ROOT"
rm -f "$ROOT/$STAMP_NAME"
KVER="$(kernel_in "$ROOT")"

step "installing $DRIVER_PACKAGE $DRIVER_VERSION through DKMS for $KVER"
SRC_IN_IMAGE="/usr/src/$DRIVER_PACKAGE-$DRIVER_VERSION"
mkdir -p "$ROOT$SRC_IN_IMAGE"
driver_files | while read -r f; do
    cp -- "$DRIVER_SRC/$f" "$ROOT$SRC_IN_IMAGE/$f"
done
DKMS_ID="-m $DRIVER_PACKAGE -v $DRIVER_VERSION"
# dkms names the log of a failed build but does not show it.
run_in_chroot "$ROOT" "dkms add $DKMS_ID &&
    { dkms build $DKMS_ID -k $KVER ||
        { cat /var/lib/dkms/$DRIVER_PACKAGE/$DRIVER_VERSION/build/make.log; exit 1; }; } &&
    dkms install $DKMS_ID -k $KVER && dkms status $DKMS_ID -k $KVER" ||
    die "DKMS could not build or install $DRIVER_PACKAGE for $KVER (last lines above)"
MODULE_PATH="$(find "$ROOT/lib/modules/$KVER" -name "$DRIVER_MODULE.ko*" -print -quit)"
[ -n "$MODULE_PATH" ] || die "dkms install left no $DRIVER_MODULE.ko in /lib/modules/$KVER"
# udev loads the driver by its modalias when the device appears; a driver without a device
# table would need to be loaded at every boot instead.
if ! grep -q "^alias virtio:.* $DRIVER_MODULE\$" "$ROOT/lib/modules/$KVER/modules.alias"; then
    step "$DRIVER_MODULE has no virtio modalias: loading it at every boot instead"
    cat >"$ROOT/etc/modules-load.d/$DRIVER_PACKAGE.conf" <<EOF
# $DRIVER_MODULE declares no virtio device table, so udev cannot load it on demand.
$DRIVER_MODULE
EOF
fi

install -d -m 700 "$ROOT/root/.ssh"
install -m 600 "$KEY.pub" "$ROOT/root/.ssh/authorized_keys"

UUID="$(cat /proc/sys/kernel/random/uuid)"
cat >"$ROOT/etc/fstab" <<EOF
UUID=$UUID	/	ext4	errors=remount-ro	0	1
EOF
mkdir -p "$ROOT/boot/extlinux"
cat >"$ROOT/boot/extlinux/extlinux.conf" <<EOF
# /vmlinuz and /initrd.img are the links the kernel packages keep pointing at the newest
# kernel, so a kernel upgrade needs no change here. Hold Shift while booting for a prompt, to
# boot "previous" (the kernel before the last upgrade).
SERIAL 0 115200
DEFAULT debian
PROMPT 0
TIMEOUT 0

LABEL debian
    LINUX /vmlinuz
    INITRD /initrd.img
    APPEND root=UUID=$UUID ro $KERNEL_CONSOLES

LABEL previous
    LINUX /vmlinuz.old
    INITRD /initrd.img.old
    APPEND root=UUID=$UUID ro $KERNEL_CONSOLES
EOF
# shellcheck disable=SC2016 # dpkg-query's format fields, not shell expansions.
chroot "$ROOT" dpkg-query -W -f '${Package} ${Version}\n' >"$BUILD/vhome.packages" ||
    die "cannot list the packages of the image"

RAW="$BUILD/vhome.raw"
PART_MIB=$((DISK_MIB - PART_START_MIB))
USED_MIB=$(($(du -sxm "$ROOT" | cut -f1)))
# ext4's own metadata and room for the guest to work (apt, logs, another kernel).
[ $((USED_MIB * 3 / 2 + 256)) -le "$PART_MIB" ] ||
    die "the tree takes $USED_MIB MiB, too much for a $DISK_MIB MiB disk"
step "making the disk: $DISK_MIB MiB, ext4 from the tree ($USED_MIB MiB)"
truncate -s "${DISK_MIB}M" "$RAW"
echo "start=$((PART_START_MIB * 2048)), type=83, bootable" | sfdisk -q --label dos "$RAW" >"$LOG" 2>&1 ||
    { cat "$LOG" >&2; die "sfdisk failed"; }
# syslinux 6 reads ext4 only without the 64bit feature. The filesystem is written straight
# into the partition of the disk file; -d fills it from the tree (owners, modes, links, device
# nodes, extended attributes such as file capabilities).
run_step mkfs.ext4 -F -q -O ^64bit -L vhome-root -U "$UUID" -d "$ROOT" \
    -E "offset=$((PART_START_MIB * 1024 * 1024))" "$RAW" "${PART_MIB}M" ||
    die "mkfs.ext4 failed (last lines above)"

step "installing extlinux"
# The partition is mounted through a loop device that the mount sets up and that goes away
# with it; the private mount namespace makes sure the mount goes, whatever happens.
mkdir -p "$BUILD/mnt"
# shellcheck disable=SC2016 # the inner script expands its own arguments.
run_step unshare --mount --propagation private -- /bin/sh -c '
    set -e
    mount -o "loop,offset=$2,sizelimit=$3" "$1" "$4"
    extlinux --install "$4/boot/extlinux"
    umount "$4"' \
    sh "$RAW" "$((PART_START_MIB * 1024 * 1024))" "$((PART_MIB * 1024 * 1024))" "$BUILD/mnt" ||
    die "extlinux --install failed (last lines above)"
# The boot code that finds the active partition and runs its boot sector (extlinux's).
dd if=/usr/lib/syslinux/mbr/mbr.bin of="$RAW" bs=440 count=1 conv=notrunc status=none ||
    die "cannot write the MBR boot code"

step "converting to qcow2 (compressed)"
# Compressed, the image is a third of its size (it is a cache, and operators copy it); clusters
# the guest writes are stored uncompressed. -W lets the compression run on every CPU.
run_step qemu-img convert -c -W -O qcow2 "$RAW" "$BUILD/vhome.qcow2" ||
    die "qemu-img convert failed (last lines above)"
rm -f "$RAW"

# Replace the files by renaming: a QEMU running the old image keeps it open, unchanged.
mv -f -- "$BUILD/vhome.packages" "$PACKAGE_LIST"
mv -f -- "$BUILD/vhome.qcow2" "$IMAGE"
DRIVER_DESC="$DRIVER_PACKAGE $DRIVER_VERSION"
printf 'inputs=%s\nimage=%s\nkernel=%s\ndriver=%s\n' \
    "$IMAGE_HASH" "$(image_state)" "$KVER" "$DRIVER_DESC" >"$STAMP.tmp"
mv -f -- "$STAMP.tmp" "$STAMP"
remove_tree "$BUILD"
BUILD=

step "done: $IMAGE ($(du -h "$IMAGE" | cut -f1) on disk, $DISK_MIB MiB virtual; kernel $KVER, $DRIVER_DESC)"
print_usage_hints
