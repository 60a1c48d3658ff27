#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine: installs what it needs,
# checks formatting and lints, builds, runs the unit and integration tests,
# builds the guest images and runs the tests that boot QEMU guests.
#
#   scripts/test.sh            everything
#   scripts/test.sh --no-vm    everything but the guest-booting tests
set -euo pipefail
cd "$(dirname "$0")/.."

RUN_VM=1
for arg in "$@"; do
    case "$arg" in
        --no-vm) RUN_VM=0 ;;
        *) echo "usage: scripts/test.sh [--no-vm]" >&2; exit 2 ;;
    esac
done

step() { printf '\n==> %s\n' "$*"; }

step "installing system packages"
scripts/install-deps.sh

if ! command -v cargo >/dev/null; then
    echo "cargo not found: install Rust (rustup) first" >&2
    exit 1
fi
if cargo nextest --version >/dev/null 2>&1; then
    NEXTEST=1
else
    NEXTEST=0
    echo "cargo-nextest not found: falling back to cargo test"
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "building"
cargo build --workspace --all-targets --locked

step "unit and integration tests"
if [ $NEXTEST = 1 ]; then
    cargo nextest run --workspace --locked --no-fail-fast
else
    cargo test --workspace --locked --no-fail-fast
fi

if [ $RUN_VM = 1 ]; then
    step "guest images"
    guest-images/build-test-initramfs.sh
    # A newer QEMU (for vhost-user), in a cached chroot: built here so its
    # first, slow build shows progress and stays out of any test's time limit.
    step "QEMU chroot"
    guest-images/build-qemu-chroot.sh
    # The Debian disk image operators boot, cached likewise; its first build takes minutes.
    step "vHOME disk image"
    guest-images/build-vhome-image.sh
    step "tests that boot QEMU guests"
    if [ $NEXTEST = 1 ]; then
        cargo nextest run -p vusb-vm-tests --locked --run-ignored only --no-fail-fast
    else
        cargo test -p vusb-vm-tests --locked --no-fail-fast -- --ignored --test-threads=1
    fi
fi
