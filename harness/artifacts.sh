#!/usr/bin/env bash
# Builds (or finds in the cache) every guest artifact and prints `export NAME=PATH` lines:
#   eval "$(harness/artifacts.sh)"
# HEARTH_KERNEL (ELF vmlinux, PVH), HEARTH_BZIMAGE, HEARTH_ROOTFS (bookworm minbase + agent),
# HEARTH_ROOTFS_TINY (busybox + agent). Variables already set in the environment are kept as they
# are (and checked to exist). Progress goes to stderr.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
# shellcheck source=lib.sh
. "$here/lib.sh"
HEARTH_LOG_TAG=artifacts

if [ -z "${HEARTH_KERNEL:-}" ] || [ -z "${HEARTH_BZIMAGE:-}" ]; then
    mapfile -t k < <("$repo/kernel/build.sh") || die "kernel/build.sh failed"
    [ ${#k[@]} -eq 2 ] || die "kernel/build.sh printed ${#k[@]} lines, expected 2 (vmlinux, bzImage)"
    HEARTH_KERNEL="${HEARTH_KERNEL:-${k[0]}}"
    HEARTH_BZIMAGE="${HEARTH_BZIMAGE:-${k[1]}}"
fi
if [ -z "${HEARTH_ROOTFS:-}" ]; then
    HEARTH_ROOTFS="$("$repo/rootfs/build.sh")" || die "rootfs/build.sh failed"
fi
if [ -z "${HEARTH_ROOTFS_TINY:-}" ]; then
    HEARTH_ROOTFS_TINY="$("$repo/rootfs/build.sh" --tiny)" || die "rootfs/build.sh --tiny failed"
fi
for v in HEARTH_KERNEL HEARTH_BZIMAGE HEARTH_ROOTFS HEARTH_ROOTFS_TINY; do
    [ -f "${!v}" ] || die "$v=${!v} is not a file"
    printf 'export %s=%q\n' "$v" "${!v}"
done
