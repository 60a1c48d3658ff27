# Shell functions shared by the scripts that build cached guest images and chroots
# (guest-images/build-*.sh); sourced, not run. The sourcing script sets BUILD_NAME (its name,
# the prefix of its messages) first, and LOG (where run_step keeps a step's output) before
# its first step.

# shellcheck shell=bash

say() { echo "$BUILD_NAME: $*" >&2; }
die() {
    echo "$BUILD_NAME: error: $*" >&2
    exit 1
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

# take_lock FILE WHAT: holds an exclusive lock on FILE (on descriptor 9) until the script
# exits, so that concurrent runs (several test processes, several checkouts) build WHAT once;
# the others wait here and then find it up to date.
take_lock() {
    exec 9>"$1"
    if ! flock -n 9; then
        say "another build of $2 is running; waiting for it"
        flock 9
    fi
}

# need_host_packages COMMAND-OR-FILE PACKAGE…: installs, with apt-get, the packages of the
# pairs whose command (a name) or file (a path) is missing.
need_host_packages() {
    local missing=() what package
    while [ $# -ge 2 ]; do
        what="$1" package="$2"
        shift 2
        case "$what" in
        /*) [ -e "$what" ] && continue ;;
        *) command -v "$what" >/dev/null && continue ;;
        esac
        missing+=("$package")
    done
    [ ${#missing[@]} -gt 0 ] || return 0
    [ "$(id -u)" -eq 0 ] || die "missing host packages: ${missing[*]} (apt-get install them as root)"
    say "installing ${missing[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    local out
    out="$(mktemp)"
    # The package lists may be empty on a fresh machine: retry once after refreshing them.
    if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >"$out" 2>&1; then
        if ! apt-get update -q >"$out" 2>&1; then
            tail -n 30 "$out" >&2
            rm -f "$out"
            die "apt-get update failed"
        fi
        if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >"$out" 2>&1; then
            tail -n 30 "$out" >&2
            rm -f "$out"
            die "could not install ${missing[*]} (apt-get install -y ${missing[*]})"
        fi
    fi
    rm -f "$out"
}

# The suite the host runs (bookworm, trixie…), from /etc/os-release; empty if unknown.
host_suite() {
    sed -n 's/^VERSION_CODENAME=//p' /etc/os-release 2>/dev/null | tr -d '"' | head -n1
}

# The URI apt on the host fetches suite $1 from, whatever the format of its sources.
apt_uri_for() {
    # shellcheck disable=SC2016 # $(…) are apt's format fields, not shell expansions.
    apt-get indextargets --format '$(RELEASE) $(REPO_URI)' 2>/dev/null |
        awk -v r="$1" '$1 == r { print $2; exit }'
}

# Sets MIRROR and SECURITY_MIRROR (no trailing slash; the latter may be empty) to the Debian
# mirrors apt on the host is configured with for its own suite, so that guests are fetched
# from where the host's packages come from. One mirror serves every suite of the archive.
# VUSB_DEBIAN_MIRROR and VUSB_DEBIAN_SECURITY_MIRROR override them.
detect_debian_mirrors() {
    local suite
    suite="$(host_suite)"
    MIRROR="${VUSB_DEBIAN_MIRROR:-}"
    SECURITY_MIRROR="${VUSB_DEBIAN_SECURITY_MIRROR:-}"
    if [ -z "$MIRROR" ] && [ -n "$suite" ]; then
        MIRROR="$(apt_uri_for "$suite")"
    fi
    if [ -z "$SECURITY_MIRROR" ] && [ -n "$suite" ]; then
        SECURITY_MIRROR="$(apt_uri_for "$suite-security")"
    fi
    [ -n "$MIRROR" ] ||
        die "cannot tell which Debian mirror apt uses (no '$suite' suite in /etc/apt/sources.list*); set VUSB_DEBIAN_MIRROR"
    MIRROR="${MIRROR%/}"
    SECURITY_MIRROR="${SECURITY_MIRROR%/}"
}

# The long steps run in a session of their own, so that an interrupted build can stop them and
# everything they started (wget, dpkg, maintainer scripts) before it deletes its tree. Their
# output goes to $LOG, shown (its end) only when the step fails.
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

# Stops the step under way, if any, and everything in its session; for the EXIT trap.
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

# run_in_chroot ROOT SCRIPT: runs the shell command SCRIPT inside the tree ROOT as a step, with
# /proc, /sys and /dev mounted in a private mount namespace (so that nothing is left mounted
# whatever happens, and the tree can always be deleted safely).
run_in_chroot() {
    # shellcheck disable=SC2016 # the inner script expands its own arguments.
    run_step unshare --mount --propagation private -- /bin/sh -c '
        root="$1"; shift
        mount -t proc proc "$root/proc" &&
        mount --rbind /sys "$root/sys" &&
        mount --rbind /dev "$root/dev" &&
        exec chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
            DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 /bin/sh -c "$1"' \
        sh "$1" "$2"
}
