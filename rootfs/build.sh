#!/usr/bin/env bash
# Builds hearth's guest root filesystem image and prints its path.
#   rootfs/build.sh          Debian bookworm minbase + bash coreutils git ca-certificates curl tar
#                            procps, the agent as /sbin/hearth-agent           -> rootfs.ext4
#   rootfs/build.sh --tiny   static busybox + the agent (fast tests)         -> rootfs-tiny.ext4
# The image is made without mounting (mkfs.ext4 -d), is meant to be attached read-only, and has no
# journal; the agent builds the writable overlay (hearth.overlay=tmpfs). Mount points /work, /mnt,
# /proc, /sys, /dev, /tmp, /run exist in it.
# The agent: $HEARTH_AGENT_BIN if set, else the path printed by guest-agent/build-static.sh.
# Cache: ~/.cache/hearth/rootfs/base-<hash of package list + script>/ (the Debian tree, slow part)
# and ~/.cache/hearth/rootfs/<variant>-<hash of base + agent binary + script>/ (the image).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
# shellcheck source=../harness/lib.sh
. "$here/../harness/lib.sh"
HEARTH_LOG_TAG=rootfs
lock_script rootfs "$0" "$@"

variant=debian
case "${1:-}" in
    --tiny) variant=tiny ;;
    "") ;;
    *) die "usage: rootfs/build.sh [--tiny]" ;;
esac
SUITE=bookworm
PACKAGES=(bash coreutils git ca-certificates curl tar procps)

ensure_pkgs e2fsprogs
start=$(date +%s)

agent="${HEARTH_AGENT_BIN:-}"
if [ -z "$agent" ]; then
    [ -x "$repo/guest-agent/build-static.sh" ] || die "guest-agent/build-static.sh missing: cannot build the agent"
    log "building the static agent (guest-agent/build-static.sh)"
    agent="$("$repo/guest-agent/build-static.sh" | tail -1)" || die "the agent did not build"
fi
[ -f "$agent" ] || die "agent binary '$agent' does not exist"
is_static "$agent" || die "agent $agent is not a static executable; the guest needs one"

# make_image DIR IMAGE LABEL : ext4 image of DIR's contents, sized to fit with some room.
make_image() {
    local dir="$1" img="$2" label="$3" kib files
    kib=$(du -sk --apparent-size "$dir" | cut -f1)
    files=$(find "$dir" | wc -l)
    # Room: 20 % + 16 MiB, plus up to a 4 KiB block's tail per file.
    kib=$(( kib * 12 / 10 + 16384 + files * 4 ))
    rm -f "$img"
    truncate -s "${kib}K" "$img"
    # No journal: the root is only ever mounted read-only. Fixed UUID/hash seed: same inputs, same
    # metadata apart from timestamps. 4 KiB blocks (mke2fs would pick 1 KiB ones for an image this
    # small: 4 block mappings per page-cache page and 8x the block groups to set up at mount) and
    # inodes for the files there plus half again.
    mkfs.ext4 -q -F -L "$label" -O ^has_journal -b 4096 -N $(( files * 3 / 2 + 1024 )) -I 256 \
        -U "$uuid" -E "hash_seed=$uuid,root_owner=0:0" \
        -d "$dir" "$img" || die "mkfs.ext4 -d $dir failed"
    e2fsck -fn "$img" >/dev/null 2>&1 || die "e2fsck found errors in the fresh image $img"
}

install_agent() { # the agent without debug info (18 MB -> a few MB), as /sbin/hearth-agent
    strip --strip-debug -o "$1/sbin/hearth-agent" "$agent" || die "strip $agent failed"
    chmod 0755 "$1/sbin/hearth-agent"
}

common_dirs() { # the mount points the agent and the VMM rely on
    local d
    for d in proc sys dev tmp run work mnt root etc; do mkdir -p "$1/$d"; done
    chmod 1777 "$1/tmp"
}

if [ "$variant" = tiny ]; then
    ensure_pkgs busybox-static
    bb="$(command -v busybox)"
    is_static "$bb" || die "$bb is not static; install busybox-static"
    key="$(hash_inputs tiny "$bb" "$agent" "$here/build.sh")"
    out="$HEARTH_CACHE/rootfs/tiny-$key"
    if [ -f "$out/done" ]; then log "cached: $out"; echo "$out/rootfs-tiny.ext4"; exit 0; fi
    uuid="$(echo "$key" | sed -E 's/^(.{8})(.{4})(.{4}).*/\1-\2-\3-8000-000000000000/')"
    tmp="$(mkdir -p "$HEARTH_CACHE/rootfs" && mktemp -d "$HEARTH_CACHE/rootfs/.tmp-tiny-XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    tree="$tmp/tree"
    mkdir -p "$tree"/{bin,sbin,usr/bin,usr/sbin}
    common_dirs "$tree"
    cp "$bb" "$tree/bin/busybox"
    while read -r applet; do
        [ "$applet" = bin/busybox ] || ln -sf /bin/busybox "$tree/$applet"
    done < <("$bb" --list-full)
    install_agent "$tree"
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$tree/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$tree/etc/group"
    echo hearth >"$tree/etc/hostname"
    printf '127.0.0.1 localhost\n::1 localhost\n' >"$tree/etc/hosts"
    make_image "$tree" "$tmp/rootfs-tiny.ext4" hearth-tiny
    rm -rf "$tree"
else
    ensure_pkgs mmdebstrap
    # Documentation, manuals and translations are not needed to run jobs.
    MMDEBSTRAP_ARGS=(--mode=root --variant=minbase --format=directory
        --include="$(IFS=,; echo "${PACKAGES[*]}")"
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*'
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
        --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias')
    # The base tree is keyed by its recipe only (not by this whole script), so editing the image
    # step does not re-download Debian. Bump BASE_RECIPE when the post-mmdebstrap steps change.
    BASE_RECIPE=1
    base_key="$(hash_inputs "$SUITE" "${MMDEBSTRAP_ARGS[*]}" "recipe-$BASE_RECIPE" \
        "mmdebstrap-$(dpkg-query -W -f='${Version}' mmdebstrap)")"
    base="$HEARTH_CACHE/rootfs/base-$SUITE-$base_key"
    if [ ! -f "$base/done" ]; then
        log "mmdebstrap $SUITE minbase + ${PACKAGES[*]} (downloads ~60 MB from Debian; 1-2 minutes)"
        btmp="$(mkdir -p "$HEARTH_CACHE/rootfs" && mktemp -d "$HEARTH_CACHE/rootfs/.tmp-base-XXXXXX")"
        mmdebstrap "${MMDEBSTRAP_ARGS[@]}" "$SUITE" "$btmp/tree" >&2 || { rm -rf "$btmp"; die "mmdebstrap failed"; }
        common_dirs "$btmp/tree"
        echo hearth >"$btmp/tree/etc/hostname"
        rm -f "$btmp/tree/etc/machine-id"; : >"$btmp/tree/etc/machine-id"
        touch "$btmp/done"
        publish_cache "$btmp" "$base"
        log "Debian tree ready: $(du -sh "$base/tree" | cut -f1) in $(elapsed_since "$start")"
        prune_cache "$HEARTH_CACHE/rootfs" "base-" 2
    fi
    key="$(hash_inputs "$base_key" "$agent" "$here/build.sh")"
    out="$HEARTH_CACHE/rootfs/debian-$key"
    if [ -f "$out/done" ]; then log "cached: $out"; echo "$out/rootfs.ext4"; exit 0; fi
    uuid="$(echo "$key" | sed -E 's/^(.{8})(.{4})(.{4}).*/\1-\2-\3-8000-000000000000/')"
    tmp="$(mktemp -d "$HEARTH_CACHE/rootfs/.tmp-debian-XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    # Hard-linked copy of the cached tree (instant); the agent is a new file, so the cache is untouched.
    cp -al "$base/tree" "$tmp/tree"
    install_agent "$tmp/tree"
    log "mkfs.ext4 -d ($(du -sh "$tmp/tree" | cut -f1))"
    make_image "$tmp/tree" "$tmp/rootfs.ext4" hearth-root
    rm -rf "$tmp/tree"
fi

img="$(ls "$tmp"/*.ext4)"
{
    echo "variant: $variant"
    echo "agent: $agent ($(sha256sum "$agent" | cut -c1-16))"
    echo "image: $(stat -c %s "$img") bytes (apparent), $(du -k "$img" | cut -f1) KiB used"
    echo "build time: $(( $(date +%s) - start )) s ($(date -u +%Y-%m-%dT%H:%MZ))"
} >"$tmp/build-info.txt"
touch "$tmp/done"
trap - EXIT
publish_cache "$tmp" "$out"
log "built: $(tr '\n' ' ' <"$out/build-info.txt")"
prune_cache "$HEARTH_CACHE/rootfs" "$variant-" 3
echo "$out/$(basename "$img")"
