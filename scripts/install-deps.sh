#!/usr/bin/env bash
# Installs the Debian packages the build, the demo and the tests need.
# Idempotent and quiet when everything is there already. Needs root (or sudo).
set -euo pipefail

PACKAGES=(
    build-essential pkg-config libusb-1.0-0-dev
    # Guests under test: QEMU, Debian's kernel, busybox and the stock USB/IP tools.
    qemu-system-x86 linux-image-amd64 busybox-static usbip usb.ids cpio kmod gzip util-linux iproute2
    # The stock usbredir exporter, run in the simulated gateway to compare with ours.
    usbredirect
    # Headers of that kernel, to build the guest's virtio-usb driver against.
    linux-headers-amd64
    # A newer QEMU for vhost-user runs from a Debian trixie chroot.
    debootstrap
    openssh-client # the vHOME image test logs into its guest over ssh
    # Checks of the operators' files: libvirt's schema validator, its QEMU driver (for the
    # QEMU command line a domain turns into), systemd's unit checker.
    libvirt-clients libvirt-daemon-driver-qemu libxml2-utils systemd
)

missing=()
for p in "${PACKAGES[@]}"; do
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" = installed ] || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
