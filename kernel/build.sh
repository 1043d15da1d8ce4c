#!/usr/bin/env bash
# Builds hearth's guest kernel from Debian's linux-source-6.12 and prints two paths:
#   line 1: the ELF vmlinux (PVH entry)      line 2: the bzImage
# Config: `make allnoconfig` with kernel/hearth.config as KCONFIG_ALLCONFIG; every option of the
# fragment is checked in the final .config. Cached under
# ~/.cache/hearth/kernel/<hash of source package version + fragment + KERNEL_RECIPE>; a warm cache
# makes this a no-op. Progress and build time go to stderr (and build-info.txt in the cache).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../harness/lib.sh
. "$here/../harness/lib.sh"
HEARTH_LOG_TAG=kernel
lock_script kernel "$0" "$@"
fragment="$here/hearth.config"
SRC_PKG=linux-source-6.12
# Bump when a change to this script changes what gets built (the make targets, the strip step...);
# editing only messages or checks keeps the cache.
KERNEL_RECIPE=1

ensure_pkgs "$SRC_PKG" build-essential bc flex bison libelf-dev libssl-dev xz-utils
srcver="$(dpkg-query -W -f='${Version}' "$SRC_PKG")"
tarball="/usr/src/$SRC_PKG.tar.xz"
[ -f "$tarball" ] || die "$tarball missing although $SRC_PKG is installed"

key="$(hash_inputs "$SRC_PKG=$srcver" "$fragment" "recipe-$KERNEL_RECIPE")"
out="$HEARTH_CACHE/kernel/vmlinux-$key"
if [ -f "$out/done" ]; then
    log "cached: $out ($(cat "$out/build-info.txt" 2>/dev/null | tr '\n' ' '))"
    echo "$out/vmlinux"; echo "$out/bzImage"
    exit 0
fi

start=$(date +%s)
src="$HEARTH_CACHE/kernel/src-$srcver"
if [ ! -f "$src/.hearth-unpacked" ]; then
    log "unpacking $tarball (once per source version)"
    rm -rf "$src"; mkdir -p "$src"
    tar -xJf "$tarball" -C "$src" --strip-components=1
    touch "$src/.hearth-unpacked"
fi

build="$HEARTH_CACHE/kernel/.build-$key"
rm -rf "$build"; mkdir -p "$build"
jobs="$(nproc)"
kmake() { make -C "$src" O="$build" ARCH=x86_64 -j"$jobs" "$@"; }

log "configuring: allnoconfig + $(basename "$fragment")"
KCONFIG_ALLCONFIG="$fragment" kmake allnoconfig >"$build/config.log" 2>&1 \
    || { tail -20 "$build/config.log" >&2; die "kernel configuration failed"; }

# Every option the fragment asks for must have survived Kconfig's dependency resolution.
bad=()
while IFS= read -r line; do
    if [[ "$line" =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
        grep -qx "${BASH_REMATCH[1]}=${BASH_REMATCH[2]}" "$build/.config" \
            || bad+=("${BASH_REMATCH[1]}=${BASH_REMATCH[2]} (got: $(grep -E "^(# )?${BASH_REMATCH[1]}[= ]" "$build/.config" || echo absent))")
    elif [[ "$line" =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
        if grep -qE "^${BASH_REMATCH[1]}=" "$build/.config"; then bad+=("${BASH_REMATCH[1]} must be unset"); fi
    fi
done <"$fragment"
if [ ${#bad[@]} -gt 0 ]; then
    printf '  %s\n' "${bad[@]}" >&2
    die "${#bad[@]} option(s) of $(basename "$fragment") did not end up as asked (missing dependency?)"
fi
log "config verified: $(grep -cE '^CONFIG_[A-Za-z0-9_]+=' "$fragment") options =y, $(grep -cE '^# CONFIG_.* is not set$' "$fragment") absent"

log "building vmlinux + bzImage with $jobs jobs (a few minutes; progress every 100 objects)"
set +e
kmake vmlinux bzImage 2>&1 | tee "$build/build.log" | awk '
    /^  (CC|AS|AR|LD)/ { n++; if (n % 100 == 0) { printf "[kernel] %d objects built\n", n > "/dev/stderr"; fflush("/dev/stderr") } }'
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" != 0 ]; then
    grep -E 'error|Error' "$build/build.log" | head -20 >&2
    die "kernel build failed (full log: $build/build.log)"
fi

tmp="$HEARTH_CACHE/kernel/.out-$key"
rm -rf "$tmp"; mkdir -p "$tmp"
cp "$build/vmlinux" "$tmp/vmlinux"
strip --strip-debug "$tmp/vmlinux" 2>/dev/null || true
cp "$build/arch/x86/boot/bzImage" "$tmp/bzImage"
cp "$build/.config" "$tmp/config"
notes="$(readelf -n "$tmp/vmlinux" 2>/dev/null || true)"
grep -qE 'Xen[[:space:]]+0x[0-9a-f]+[[:space:]]+Unknown note type: \(0x00000012\)' <<<"$notes" \
    || die "built vmlinux has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)"
secs=$(( $(date +%s) - start ))
{
    echo "source: $SRC_PKG $srcver"
    echo "build time: ${secs} s on $(nproc) cores ($(date -u +%Y-%m-%dT%H:%MZ))"
    echo "vmlinux: $(stat -c %s "$tmp/vmlinux") bytes"
    echo "bzImage: $(stat -c %s "$tmp/bzImage") bytes"
} >"$tmp/build-info.txt"
touch "$tmp/done"
publish_cache "$tmp" "$out"
rm -rf "$build"
prune_cache "$HEARTH_CACHE/kernel" "vmlinux-" 2
log "built in ${secs} s: $(tr '\n' ' ' <"$out/build-info.txt")"
echo "$out/vmlinux"; echo "$out/bzImage"
