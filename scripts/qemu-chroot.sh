#!/usr/bin/env bash
# Runs qemu-system-x86_64 from the Debian trixie chroot that guest-images/build-qemu-chroot.sh
# builds (QEMU from trixie-backports), with the same arguments:
#
#   scripts/qemu-chroot.sh [qemu-system-x86_64 arguments…]
#
# The chroot is $VUSB_QEMU_CHROOT, else /var/cache/vusb/qemu-trixie. Paths on the command line
# work unchanged: the directories holding them (found in the arguments, including the values
# of key=value options such as path=… or file=…), /tmp, $TMPDIR and the current directory are
# bind-mounted into the chroot at the same places, as are /dev, /proc and /sys. Paths under the
# chroot's own system directories (/usr, /etc, /lib…) refer to the chroot's files.
#
# The mounts are made in a private mount namespace: nothing shows on the host and nothing is
# left behind, however QEMU ends. The script execs its way into QEMU (unshare, then chroot,
# keep the process), so its PID is QEMU's and signals sent to it reach QEMU. It needs root, or
# unprivileged user namespaces (then QEMU runs with the caller's rights).
set -euo pipefail

ROOT="${VUSB_QEMU_CHROOT:-/var/cache/vusb/qemu-trixie}"
QEMU=/usr/bin/qemu-system-x86_64
STAGE_VAR=_VUSB_QEMU_CHROOT_STAGE

die() {
    echo "qemu-chroot: error: $*" >&2
    exit 1
}

if [ "${!STAGE_VAR:-}" != inner ]; then
    # Outer stage: check the chroot, then re-run this script in a new mount namespace.
    [ -d "$ROOT" ] || die "no QEMU chroot at $ROOT: build it with guest-images/build-qemu-chroot.sh (as root)"
    if [ ! -x "$ROOT$QEMU" ] || [ ! -f "$ROOT/.vusb-stamp" ]; then
        die "the QEMU chroot at $ROOT is incomplete: rebuild it with guest-images/build-qemu-chroot.sh (as root)"
    fi
    userns=()
    [ "$(id -u)" -eq 0 ] || userns=(--user --map-root-user)
    # No --fork: unshare execs the command in its own process.
    export "$STAGE_VAR=inner"
    exec unshare "${userns[@]}" --mount --propagation private -- \
        bash "$(readlink -f "${BASH_SOURCE[0]}")" "$@"
fi
unset "$STAGE_VAR"

# Inner stage: in the private mount namespace.
CALLER_PWD="$(pwd -P)"
ROOT_REAL="$(readlink -f "$ROOT")"
# The chroot is entered through the current directory, not its path: a rebuild that swaps the
# directory meanwhile cannot make the mounts and the chroot land in different trees.
cd "$ROOT_REAL"

# Whether directory $1 is to be left to the chroot: its own system directories (the tests'
# paths under them mean the chroot's files), the pseudo-filesystems bound below anyway, and
# the chroot itself.
is_own_dir() {
    case "$1" in
    / | /var | /var/lib | /run) return 0 ;;
    /usr | /usr/* | /bin | /bin/* | /sbin | /sbin/* | /lib | /lib/* | /lib32 | /lib32/* | \
        /lib64 | /lib64/* | /libx32 | /libx32/* | /etc | /etc/* | /var/lib/dpkg | \
        /var/lib/dpkg/* | /var/lib/apt | /var/lib/apt/* | /dev | /dev/* | /proc | /proc/* | \
        /sys | /sys/*) return 0 ;;
    esac
    [ "$1" = "$ROOT_REAL" ] || [[ "$1" == "$ROOT_REAL"/* ]]
}

DIRS=()
# Queues for binding the directory that holds path $1 (or $1 itself if it is a directory).
# A path that does not exist yet (a socket QEMU is to create) needs its nearest existing
# ancestor.
add_path() {
    local p="$1"
    case "$p" in
    /*) ;;
    *) p="$CALLER_PWD/$p" ;;
    esac
    [ -d "$p" ] || p="$(dirname -- "$p")"
    while [ ! -d "$p" ]; do
        p="$(dirname -- "$p")"
    done
    p="$(readlink -f -- "$p")" || return 0
    is_own_dir "$p" || DIRS+=("$p")
}

add_path /tmp
[ -z "${TMPDIR:-}" ] || add_path "$TMPDIR/."
add_path "$CALLER_PWD/."
for arg in "$@"; do
    # QEMU options are comma-separated lists of key=value pairs (or bare values).
    IFS=, read -r -a parts <<<"$arg"
    for part in "${parts[@]}"; do
        value="${part#*=}"
        case "$value" in
        /*) add_path "$value" ;;
        */*)
            # A relative path only as a whole argument (-kernel dir/bzImage): in a list, a
            # value with a slash is more likely something else.
            if [ "$value" = "$arg" ]; then
                add_path "$value"
            fi
            ;;
        esac
    done
done

# Parents first, so that a directory below one already bound is skipped: it is visible
# through its parent at the same path.
mapfile -t DIRS < <(printf '%s\n' "${DIRS[@]}" | LC_ALL=C sort -u)
BOUND=()
for dir in "${DIRS[@]}"; do
    covered=0
    for b in "${BOUND[@]}"; do
        if [[ "$dir" == "$b"/* ]]; then
            covered=1
            break
        fi
    done
    [ "$covered" = 1 ] && continue
    # mkdir -p would follow a symbolic link of the chroot (say var/run -> /run) out of it.
    target="$(readlink -m -- "$ROOT_REAL$dir")"
    if [ "$target" != "$ROOT_REAL$dir" ]; then
        echo "qemu-chroot: warning: $dir crosses a symbolic link inside the chroot; not bound" >&2
        continue
    fi
    # Without root (user namespace) a missing mount point cannot be made in the chroot.
    if ! mkdir -p -- ".$dir" 2>/dev/null; then
        echo "qemu-chroot: warning: cannot create the mount point for $dir in the chroot; not bound" >&2
        continue
    fi
    mount --rbind -- "$dir" ".$dir"
    BOUND+=("$dir")
done

for fs in dev proc sys; do
    mount --rbind "/$fs" "./$fs"
done

chdir_to=/
if [ -d ".$CALLER_PWD" ]; then
    chdir_to="$CALLER_PWD"
fi
exec chroot . /usr/bin/env --chdir="$chdir_to" "$QEMU" "$@"
