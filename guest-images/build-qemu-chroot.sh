#!/usr/bin/env bash
# Builds a Debian trixie chroot holding QEMU from trixie-backports, for the tests that need a
# newer QEMU than Debian 12 ships (vhost-user-test-device-pci appeared in QEMU 10.2; bookworm
# has 7.2). The host's own libraries are left alone: QEMU runs inside the chroot through
# scripts/qemu-chroot.sh.
#
#   guest-images/build-qemu-chroot.sh [--rebuild] [DIR]
#
# DIR defaults to $VUSB_QEMU_CHROOT, then to /var/cache/vusb/qemu-trixie: a machine-wide
# cache, so that fresh clones of the repository reuse the chroot instead of spending a
# minute and a few hundred MB on each. DIR/.vusb-stamp records the hash of this script (and of
# guest-images/lib/build-common.sh, which it sources) and the QEMU version; the chroot is rebuilt
# only when the script changed, when QEMU no longer runs inside it (a half-deleted or damaged
# tree), or with --rebuild.
#
# Building needs root, network access to a Debian mirror (the one apt on the host uses) and
# debootstrap, which is installed with apt-get when missing. The mirror is the one of the
# host's own suite in apt's sources (VUSB_DEBIAN_MIRROR and VUSB_DEBIAN_SECURITY_MIRROR
# override it). Progress goes to stderr.
set -euo pipefail

SELF="$(readlink -f "${BASH_SOURCE[0]}")"
LIB="$(dirname "$SELF")/lib/build-common.sh"
BUILD_NAME=build-qemu-chroot
# shellcheck source=SCRIPTDIR/lib/build-common.sh
. "$LIB"

REBUILD=0
DIR_ARG=
for arg in "$@"; do
    case "$arg" in
    --rebuild) REBUILD=1 ;;
    -h | --help)
        sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$SELF"
        exit 0
        ;;
    -*) die "unknown option $arg (usage: build-qemu-chroot.sh [--rebuild] [DIR])" ;;
    *)
        [ -z "$DIR_ARG" ] || die "more than one directory given"
        DIR_ARG="$arg"
        ;;
    esac
done
ROOT="${DIR_ARG:-${VUSB_QEMU_CHROOT:-/var/cache/vusb/qemu-trixie}}"
case "$ROOT" in
/*) ;;
*) ROOT="$PWD/$ROOT" ;;
esac
ROOT="${ROOT%/}"
[ -n "$ROOT" ] || die "the chroot cannot be /"

SUITE=trixie
BACKPORTS="$SUITE-backports"
# vhost-user-test-device-pci, the device the vhost-user tests attach their backend through.
MIN_MAJOR=10
MIN_MINOR=2
REQUIRED_DEVICE=vhost-user-test-device-pci
STAMP_NAME=.vusb-stamp

# The functions it sources are as much a part of the recipe as the script itself.
HASH="$(cat "$SELF" "$LIB" | sha256sum | cut -d' ' -f1)"

# Runs a command inside a chroot. Without root, a user namespace in which the caller is root
# stands in for it (enough to run QEMU there, not to build).
in_chroot() {
    local dir="$1"
    shift
    if [ "$(id -u)" -eq 0 ]; then
        chroot "$dir" "$@"
    else
        unshare --user --map-root-user chroot "$dir" "$@"
    fi
}

# The first line of `qemu-system-x86_64 --version` run inside the chroot, or nothing.
qemu_version_in() {
    in_chroot "$1" /usr/bin/qemu-system-x86_64 --version 2>/dev/null | head -n1 || true
}

stamp_field() {
    sed -n "s/^$2=//p" "$1/$STAMP_NAME" 2>/dev/null | head -n1
}

# Whether DIR is a finished chroot built by this very script, with a QEMU that still runs.
is_current() {
    local dir="$1" version
    [ -f "$dir/$STAMP_NAME" ] || return 1
    [ "$(stamp_field "$dir" script)" = "$HASH" ] || return 1
    version="$(qemu_version_in "$dir")"
    [ -n "$version" ] && [ "$version" = "$(stamp_field "$dir" qemu)" ]
}

# The fast path first, without taking the lock: a finished chroot is never modified in place.
if [ "$REBUILD" = 0 ] && is_current "$ROOT"; then
    say "up to date: $ROOT ($(stamp_field "$ROOT" qemu))"
    exit 0
fi

[ "$(id -u)" -eq 0 ] || die "$ROOT is missing or out of date, and building it needs root (debootstrap, chroot)"

PARENT="$(dirname "$ROOT")"
NAME="$(basename "$ROOT")"
mkdir -p "$PARENT" || die "cannot create $PARENT"
take_lock "$PARENT/.$NAME.lock" "$ROOT"
if [ "$REBUILD" = 0 ] && is_current "$ROOT"; then
    say "up to date: $ROOT ($(stamp_field "$ROOT" qemu))"
    exit 0
fi

command -v dpkg-query >/dev/null || die "this script needs a Debian host (dpkg-query not found)"
if [ -e "$ROOT" ]; then
    if [ -f "$ROOT/$STAMP_NAME" ] && [ "$(stamp_field "$ROOT" script)" != "$HASH" ]; then
        say "$ROOT was built by another version of this script; rebuilding"
    elif [ "$REBUILD" = 1 ]; then
        say "rebuilding $ROOT as asked"
    else
        say "$ROOT is incomplete or its QEMU does not run; rebuilding"
    fi
fi

started=$SECONDS

# Leftovers of builds that were killed (the lock guarantees none is running).
for old in "$PARENT/.$NAME".build.* "$PARENT/.$NAME".old.*; do
    [ -e "$old" ] || continue
    say "removing leftover $old"
    remove_tree "$old"
done

need_host_packages debootstrap debootstrap
[ -e "/usr/share/debootstrap/scripts/$SUITE" ] ||
    die "this debootstrap does not know $SUITE; upgrade the debootstrap package"

# The mirrors apt on the host is configured with, so that the chroot is fetched from where the
# host's packages come from.
detect_debian_mirrors

KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
[ -f "$KEYRING" ] || die "$KEYRING is missing (package debian-archive-keyring)"

BUILD="$(mktemp -d "$PARENT/.$NAME.build.XXXXXX")"
# mktemp makes it private; the chroot's root must be searchable like any other /.
chmod 755 "$BUILD"
LOG="$BUILD.log"

# Stops the step under way (run_step) and deletes the unfinished tree.
cleanup() {
    stop_step
    rm -f "$LOG"
    # Mounts made during the build live in private mount namespaces, gone with their
    # processes.
    if [ -n "${BUILD:-}" ] && [ -e "$BUILD" ]; then
        say "removing the unfinished chroot $BUILD"
        remove_tree "$BUILD"
    fi
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM HUP

say "debootstrap --variant=minbase $SUITE from $MIRROR into $BUILD"
# In a private mount namespace: the /proc and /sys debootstrap mounts into the target vanish
# with it, even when it fails half-way, so the tree can always be deleted safely.
run_step unshare --mount --propagation private -- \
    debootstrap --variant=minbase --keyring="$KEYRING" "$SUITE" "$BUILD" "$MIRROR" ||
    die "debootstrap failed (last lines above)"
say "  debootstrap done after $((SECONDS - started)) s"
say "configuring apt inside: $SUITE, $SUITE-updates, $BACKPORTS"
{
    cat <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates $BACKPORTS
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
} >"$BUILD/etc/apt/sources.list.d/debian.sources"
rm -f "$BUILD/etc/apt/sources.list"
# Documentation, manual pages and translations of the packages installed next are not needed
# to run QEMU; leaving them out keeps the cache smaller.
cat >"$BUILD/etc/dpkg/dpkg.cfg.d/vusb-nodoc" <<'EOF'
path-exclude=/usr/share/doc/*
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-exclude=/usr/share/lintian/*
EOF
# No package may start a service inside the chroot.
printf '#!/bin/sh\nexit 101\n' >"$BUILD/usr/sbin/policy-rc.d"
chmod 755 "$BUILD/usr/sbin/policy-rc.d"

# seabios (the PC BIOS) and qemu-system-data (linuxboot_dma.bin, the option ROM that -kernel
# boots through) are needed to boot a guest; QEMU depends on both. ipxe-qemu is not needed
# with romfile= on the NICs, but is a hard dependency too.
PACKAGES="qemu-system-x86"
say "installing $PACKAGES from $BACKPORTS (--no-install-recommends)"
run_in_chroot "$BUILD" "apt-get update -q && apt-get install -y -q --no-install-recommends \
        -t $BACKPORTS $PACKAGES && apt-get clean" ||
    die "installing $PACKAGES inside the chroot failed (last lines above)"
say "  installed after $((SECONDS - started)) s"
# The package lists are only needed to install; a rebuild fetches them anew.
rm -rf "$BUILD"/var/lib/apt/lists/* "$BUILD"/var/cache/apt/*.bin

say "checking QEMU inside"
VERSION="$(qemu_version_in "$BUILD")"
[ -n "$VERSION" ] || die "qemu-system-x86_64 --version fails inside the new chroot"
if ! [[ "$VERSION" =~ version\ ([0-9]+)\.([0-9]+) ]]; then
    die "cannot read QEMU's version from: $VERSION"
fi
major="${BASH_REMATCH[1]}"
minor="${BASH_REMATCH[2]}"
if [ "$major" -lt "$MIN_MAJOR" ] || { [ "$major" -eq "$MIN_MAJOR" ] && [ "$minor" -lt "$MIN_MINOR" ]; }; then
    die "$BACKPORTS has QEMU $major.$minor, older than the $MIN_MAJOR.$MIN_MINOR the tests need"
fi
if ! in_chroot "$BUILD" /usr/bin/qemu-system-x86_64 -device help 2>&1 | grep -q "\"$REQUIRED_DEVICE\""; then
    die "QEMU $major.$minor in the chroot has no $REQUIRED_DEVICE"
fi
for f in /usr/share/seabios/bios-256k.bin /usr/share/qemu/linuxboot_dma.bin; do
    [ -e "$BUILD$f" ] || die "$f is missing in the chroot: QEMU could not boot a guest with -kernel"
done

printf 'script=%s\nqemu=%s\n' "$HASH" "$VERSION" >"$BUILD/$STAMP_NAME"

# Swap the finished tree in. A QEMU started from the old tree keeps its root (the old
# directory) until it exits; only that tree's files vanish under it.
if [ -e "$ROOT" ]; then
    OLD="$(mktemp -u "$PARENT/.$NAME.old.XXXXXX")"
    mv -T -- "$ROOT" "$OLD"
    mv -T -- "$BUILD" "$ROOT"
    BUILD=
    remove_tree "$OLD"
else
    mv -T -- "$BUILD" "$ROOT"
    BUILD=
fi

say "done in $((SECONDS - started)) s: $ROOT ($VERSION, $(du -sh --one-file-system "$ROOT" | cut -f1))"
