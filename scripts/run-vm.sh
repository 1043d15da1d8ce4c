#!/usr/bin/env bash
# The main job in one command: build hearth and the guest artifacts (cached), boot a microVM and
# run a command in it through the guest agent.
#   scripts/run-vm.sh [-- CMD ARGS...]        (default: uname -a)
# Where /dev/kvm is hardware virtualization, hearth runs directly. Where it is not (kvm_pvm, or
# no KVM), it runs inside QEMU's emulated-SVM machine (harness/run-in-svm.sh), which has a real
# nested /dev/kvm; timings there are not hardware timings.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=../harness/lib.sh
. "$repo/harness/lib.sh"
HEARTH_LOG_TAG=run-vm

[ "${1:-}" = -- ] && shift
[ $# -gt 0 ] || set -- uname -a

eval "$("$repo/harness/artifacts.sh")" || die "guest artifacts could not be built"
log "building hearth (release)"
(cd "$repo" && cargo build --release --locked --bin hearth >&2) || die "cargo build failed"
hearth="${CARGO_TARGET_DIR:-$repo/target}/release/hearth"

if "$repo/harness/probe-hw-virt.sh" 2>/dev/null; then
    log "hardware virtualization: running hearth directly"
    exec "$hearth" exec --kernel "$HEARTH_KERNEL" --rootfs "$HEARTH_ROOTFS" -- "$@"
fi
log "no hardware virtualization here: running hearth inside the emulated-SVM machine"
exec "$repo/harness/run-in-svm.sh" --timeout 300 --bin "$hearth" \
    --file "$HEARTH_KERNEL" --file "$HEARTH_ROOTFS" \
    -- "$hearth" exec --kernel "$HEARTH_KERNEL" --rootfs "$HEARTH_ROOTFS" -- "$@"
