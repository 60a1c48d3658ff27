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
# minute and a few hundred MB on each. DIR/.vusb-stamp records the hash of this script and the
# QEMU version; the chroot is rebuilt only when the script changed, when QEMU no longer runs
# inside it (a half-deleted or damaged tree), or with --rebuild.
#
# Building needs root, network access to a Debian mirror (the one apt on the host uses) and
# debootstrap, which is installed with apt-get when missing. The mirror is the one of the
# host's own suite in apt's sources (VUSB_DEBIAN_MIRROR and VUSB_DEBIAN_SECURITY_MIRROR
# override it). Progress goes to stderr.
set -euo pipefail

SELF="$(readlink -f "${BASH_SOURCE[0]}")"

say() { echo "build-qemu-chroot: $*" >&2; }
die() {
    echo "build-qemu-chroot: error: $*" >&2
    exit 1
}

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

HASH="$(sha256sum "$SELF" | cut -d' ' -f1)"

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

# Nothing may be mounted below a tree that is about to be deleted: rm -rf would go on into
# the host's /dev or /proc.
has_mounts_below() {
    findmnt -rn -o TARGET | awk -v d="$1/" 'index($0 "/", d) == 1 { found = 1 } END { exit !found }'
}

remove_tree() {
    local dir="$1"
    [ -e "$dir" ] || return 0
    if has_mounts_below "$dir"; then
        die "something is mounted below $dir (see findmnt); unmount it before rebuilding"
    fi
    rm -rf --one-file-system -- "$dir"
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
# Concurrent runs (several test processes, several checkouts) build once; the others wait and
# then find the chroot up to date.
exec 9>"$PARENT/.$NAME.lock"
if ! flock -n 9; then
    say "another build of $ROOT is running; waiting for it"
    flock 9
fi
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

if ! command -v debootstrap >/dev/null; then
    say "installing debootstrap with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    # The package lists may be empty on a fresh machine: retry once after refreshing them.
    if ! apt-get install -y -qq --no-install-recommends debootstrap >/dev/null; then
        apt-get update -qq >&2 || die "apt-get update failed"
        apt-get install -y -qq --no-install-recommends debootstrap >/dev/null ||
            die "could not install debootstrap (apt-get install -y debootstrap)"
    fi
fi
[ -e "/usr/share/debootstrap/scripts/$SUITE" ] ||
    die "this debootstrap does not know $SUITE; upgrade the debootstrap package"

# The mirrors apt on the host is configured with (whatever the format of its sources), so that
# the chroot is fetched from where the host's packages come from.
HOST_SUITE="$(sed -n 's/^VERSION_CODENAME=//p' /etc/os-release 2>/dev/null | tr -d '"' | head -n1)"
apt_uri_for() {
    # shellcheck disable=SC2016 # $(…) are apt's format fields, not shell expansions.
    apt-get indextargets --format '$(RELEASE) $(REPO_URI)' 2>/dev/null |
        awk -v r="$1" '$1 == r { print $2; exit }'
}
MIRROR="${VUSB_DEBIAN_MIRROR:-}"
SECURITY_MIRROR="${VUSB_DEBIAN_SECURITY_MIRROR:-}"
if [ -z "$MIRROR" ] && [ -n "$HOST_SUITE" ]; then
    MIRROR="$(apt_uri_for "$HOST_SUITE")"
fi
if [ -z "$SECURITY_MIRROR" ] && [ -n "$HOST_SUITE" ]; then
    SECURITY_MIRROR="$(apt_uri_for "$HOST_SUITE-security")"
fi
[ -n "$MIRROR" ] ||
    die "cannot tell which Debian mirror apt uses (no '$HOST_SUITE' suite in /etc/apt/sources.list*); set VUSB_DEBIAN_MIRROR"
MIRROR="${MIRROR%/}"
SECURITY_MIRROR="${SECURITY_MIRROR%/}"

KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
[ -f "$KEYRING" ] || die "$KEYRING is missing (package debian-archive-keyring)"

BUILD="$(mktemp -d "$PARENT/.$NAME.build.XXXXXX")"
# mktemp makes it private; the chroot's root must be searchable like any other /.
chmod 755 "$BUILD"
LOG="$BUILD.log"

# The long steps run in a session of their own, so that an interrupted build can stop them and
# everything they started (wget, dpkg, maintainer scripts) before it deletes the tree.
CHILD=
run_step() {
    local rc=0
    setsid "$@" >"$LOG" 2>&1 &
    CHILD=$!
    wait "$CHILD" || rc=$?
    CHILD=
    if [ "$rc" -ne 0 ]; then
        tail -n 30 "$LOG" >&2
    fi
    rm -f "$LOG"
    return "$rc"
}
stop_step() {
    [ -n "$CHILD" ] || return 0
    local i
    kill -TERM -- "-$CHILD" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 -- "-$CHILD" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL -- "-$CHILD" 2>/dev/null || true
    while kill -0 -- "-$CHILD" 2>/dev/null; do
        sleep 0.1
    done
    CHILD=
}
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

# Runs a shell command inside the chroot under construction, with /proc, /sys and /dev
# mounted in a private mount namespace (so that nothing is left mounted whatever happens).
run_inside() {
    # shellcheck disable=SC2016 # the inner script expands its own arguments.
    run_step unshare --mount --propagation private -- /bin/sh -c '
        root="$1"; shift
        mount -t proc proc "$root/proc" &&
        mount --rbind /sys "$root/sys" &&
        mount --rbind /dev "$root/dev" &&
        exec chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
            DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 /bin/sh -c "$1"' \
        sh "$BUILD" "$1"
}

# seabios (the PC BIOS) and qemu-system-data (linuxboot_dma.bin, the option ROM that -kernel
# boots through) are needed to boot a guest; QEMU depends on both. ipxe-qemu is not needed
# with romfile= on the NICs, but is a hard dependency too.
PACKAGES="qemu-system-x86"
say "installing $PACKAGES from $BACKPORTS (--no-install-recommends)"
run_inside "apt-get update -q && apt-get install -y -q --no-install-recommends \
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
