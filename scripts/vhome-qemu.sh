#!/usr/bin/env bash
# Boots a vHOME guest with the USB controllers of one or more running vusb-backend daemons
# attached over vhost-user (docs/virtio-usb.md §10). The guest needs the virtio_usb_hcd driver
# (guest-images/build-vhome-image.sh installs it through DKMS).
#
#   scripts/vhome-qemu.sh --socket /run/vusb/guest1.sock --disk vhome.qcow2 [options]
#   scripts/vhome-qemu.sh --socket S --kernel vmlinuz --initrd initrd [--append ARGS] [options]
#
# Options:
#   --socket PATH        a vusb-backend socket; repeatable, one controller each
#   --disk FILE          boot this disk image (qcow2 or raw, by its extension)
#   --kernel FILE        boot this kernel directly (with --initrd, --append)
#   --initrd FILE
#   --append ARGS        kernel command line (default: console=ttyS0)
#   --memory MIB         guest memory (default 1024); all of it shared with the backends
#   --cpus N             (default 2)
#   --ssh-port PORT      forward 127.0.0.1:PORT to the guest's port 22
#   --console FILE       write the serial console to FILE instead of this terminal
#   --accel auto|kvm|tcg auto (the default) takes KVM when /dev/kvm can be opened and falls
#                        back to software emulation (TCG) when QEMU cannot start KVM; on a
#                        host whose KVM starts but does not run guests, say tcg
#   --qemu PROGRAM       the QEMU to run (default: qemu-system-x86_64 if it is 10.2 or later,
#                        else scripts/qemu-chroot.sh, the trixie QEMU of the test bed)
#   --print              print the QEMU command line instead of running it
#   --                   pass the rest to QEMU unchanged
#
# The serial console is on this terminal; leave QEMU with Ctrl-A X. Every socket must already
# be listening: QEMU connects once, at start-up.
set -euo pipefail

SELF_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

die() {
    echo "vhome-qemu: error: $*" >&2
    exit 2
}

SOCKETS=() DISK='' KERNEL='' INITRD='' APPEND="console=ttyS0" MEMORY=1024 CPUS=2 SSH_PORT='' QEMU=''
CONSOLE='' ACCEL=auto PRINT=0
EXTRA=()
while [ $# -gt 0 ]; do
    case "$1" in
    --socket) SOCKETS+=("${2:?--socket needs a path}"); shift ;;
    --disk) DISK="${2:?--disk needs a file}"; shift ;;
    --kernel) KERNEL="${2:?--kernel needs a file}"; shift ;;
    --initrd) INITRD="${2:?--initrd needs a file}"; shift ;;
    --append) APPEND="${2?--append needs arguments}"; shift ;;
    --memory) MEMORY="${2:?--memory needs MiB}"; shift ;;
    --cpus) CPUS="${2:?--cpus needs a number}"; shift ;;
    --ssh-port) SSH_PORT="${2:?--ssh-port needs a port}"; shift ;;
    --console) CONSOLE="${2:?--console needs a file}"; shift ;;
    --accel) ACCEL="${2:?--accel needs auto, kvm or tcg}"; shift ;;
    --qemu) QEMU="${2:?--qemu needs a program}"; shift ;;
    --print) PRINT=1 ;;
    --) shift; EXTRA=("$@"); break ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
    esac
    shift
done

is_number() { case "$1" in '' | *[!0-9]*) return 1 ;; esac; }
if ! is_number "$MEMORY" || [ "$MEMORY" -lt 128 ]; then
    die "--memory must be a number of MiB, at least 128"
fi
if ! is_number "$CPUS" || [ "$CPUS" -lt 1 ]; then die "--cpus must be a positive number"; fi
[ -z "$SSH_PORT" ] || { is_number "$SSH_PORT" && [ "$SSH_PORT" -le 65535 ]; } ||
    die "--ssh-port must be a TCP port number"
[ ${#SOCKETS[@]} -gt 0 ] || die "no --socket: name the vhost-user socket of a vusb-backend"
if [ -n "$DISK" ] && [ -n "$KERNEL" ]; then die "--disk and --kernel exclude each other"; fi
[ -n "$DISK" ] || [ -n "$KERNEL" ] || die "nothing to boot: give --disk or --kernel"
[ -z "$INITRD" ] || [ -n "$KERNEL" ] || die "--initrd needs --kernel"
for f in "$DISK" "$KERNEL" "$INITRD"; do
    [ -z "$f" ] || [ -r "$f" ] || die "cannot read $f"
done
for s in "${SOCKETS[@]}"; do
    # QEMU's option syntax gives commas a meaning.
    case "$s" in *,*) die "socket path $s contains a comma" ;; esac
    [ -S "$s" ] || die "$s is not a socket: start vusb-backend --socket-path $s first"
done

# A QEMU with vhost-user-test-device-pci.
qemu_version_ok() {
    local major minor
    read -r major minor < <("$1" --version 2>/dev/null |
        sed -n 's/^QEMU emulator version \([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
    [ -n "$minor" ] || return 1
    [ "$major" -gt 10 ] || { [ "$major" -eq 10 ] && [ "$minor" -ge 2 ]; }
}
if [ -z "$QEMU" ]; then
    if command -v qemu-system-x86_64 >/dev/null && qemu_version_ok qemu-system-x86_64; then
        QEMU=qemu-system-x86_64
    else
        QEMU="$SELF_DIR/qemu-chroot.sh"
    fi
fi

case "$ACCEL" in
auto)
    # QEMU tries the accelerators in the order given.
    if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
        ACCEL_ARGS=(-accel kvm -accel tcg)
    else
        ACCEL_ARGS=(-accel tcg)
    fi
    ;;
kvm | tcg) ACCEL_ARGS=(-accel "$ACCEL") ;;
*) die "--accel must be auto, kvm or tcg" ;;
esac

ARGS=(-nodefaults -no-user-config -display none "${ACCEL_ARGS[@]}" -cpu max -smp "$CPUS"
    -m "${MEMORY}M"
    # vhost-user backends map guest memory from file descriptors: shared memfd RAM.
    -object "memory-backend-memfd,id=mem,size=${MEMORY}M,share=on" -numa "node,memdev=mem"
)
if [ -n "$CONSOLE" ]; then
    case "$CONSOLE" in *,*) die "console file $CONSOLE contains a comma" ;; esac
    ARGS+=(-serial "file:$CONSOLE")
else
    ARGS+=(-serial mon:stdio)
fi
NETDEV=user,id=n0
[ -z "$SSH_PORT" ] || NETDEV+=",hostfwd=tcp:127.0.0.1:$SSH_PORT-:22"
ARGS+=(-netdev "$NETDEV" -device "virtio-net-pci,netdev=n0,romfile=")
if [ -n "$DISK" ]; then
    FORMAT=raw
    case "$DISK" in *.qcow2) FORMAT=qcow2 ;; esac
    ARGS+=(-drive "file=$DISK,format=$FORMAT,if=virtio")
else
    ARGS+=(-kernel "$KERNEL" -append "$APPEND")
    [ -z "$INITRD" ] || ARGS+=(-initrd "$INITRD")
fi
i=0
for s in "${SOCKETS[@]}"; do
    ARGS+=(-chardev "socket,id=vusb$i,path=$s"
        -device "vhost-user-test-device-pci,chardev=vusb$i,virtio-id=21,num_vqs=3,config_size=24")
    i=$((i + 1))
done
ARGS+=("${EXTRA[@]}")

if [ "$PRINT" = 1 ]; then
    # Quoted for a shell where needed, and only there.
    for a in "$QEMU" "${ARGS[@]}"; do
        if [[ "$a" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
            printf '%s ' "$a"
        else
            printf "'%s' " "${a//\'/\'\\\'\'}"
        fi
    done
    echo
    exit 0
fi
exec "$QEMU" "${ARGS[@]}"
