#!/usr/bin/env bash
# Builds (once, cached) the *outer* kernel of the emulated-SVM test machine:
#   - vmlinux: the ELF (PVH-bootable) kernel extracted from Debian's linux-image-cloud-amd64 vmlinuz
#   - modules/: the .ko files the outer machine needs (kvm-amd, vhost-vsock, virtio-blk, ...) and
#     modules.list, their load order (dependencies first, resolved from modules.dep).
# Prints the cache directory on stdout. Everything else goes to stderr.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
. "$here/lib.sh"
HEARTH_LOG_TAG=outer-kernel
lock_script outer-kernel "$0" "$@"

# Modules the outer machine loads, in the order we want them (their dependencies are added first).
#   kvm-amd (+kvm, irqbypass): /dev/kvm backed by the emulated AMD SVM of `-cpu max`
#   vhost_vsock (+vhost, vhost_iotlb, vsock, vmw_vsock_virtio_transport_common): /dev/vhost-vsock
#     for QEMU's vhost-vsock-device and AF_VSOCK sockets on the outer side
#   virtio_mmio, virtio_blk: the outer machine's data disk (large files, see README)
#   overlay: tests that build overlay roots on the outer side
#   tun, veth, nf_tables, nft_chain_nat, nft_masq, nft_ct (+nf_nat, nf_conntrack, nfnetlink):
#     VM networking (vm_net): taps, a veth "internet", hearth's nftables table with NAT
WANTED_MODULES=(kvm-amd vhost_vsock virtio_mmio virtio_blk overlay tun veth nf_tables nft_chain_nat nft_masq nft_ct)

ensure_pkgs linux-image-cloud-amd64 lz4 kmod

# The kernel the meta-package currently points at.
kpkg="$(dpkg-query -W -f='${Depends}' linux-image-cloud-amd64 | tr ',' '\n' | sed -n 's/^ *\(linux-image-[0-9][^ ]*\).*/\1/p' | head -1)"
[ -n "$kpkg" ] || die "cannot tell which kernel linux-image-cloud-amd64 depends on"
kver="${kpkg#linux-image-}"
vmlinuz="/boot/vmlinuz-$kver"
moddir="/lib/modules/$kver"
[ -f "$vmlinuz" ] || die "$vmlinuz missing (is $kpkg installed?)"
[ -f "$moddir/modules.dep" ] || die "$moddir/modules.dep missing (is $kpkg installed?)"

key="$(hash_inputs "$kver" "$vmlinuz" "$moddir/modules.dep" "$here/outer-kernel.sh" "${WANTED_MODULES[*]}")"
out="$HEARTH_CACHE/harness/outer-kernel-$key"
if [ -f "$out/done" ]; then
    log "cached: $out"
    echo "$out"
    exit 0
fi

start=$(date +%s)
tmp="$(mktemp -d "$HEARTH_CACHE/harness/.tmp-outer-XXXXXX" 2>/dev/null || { mkdir -p "$HEARTH_CACHE/harness"; mktemp -d "$HEARTH_CACHE/harness/.tmp-outer-XXXXXX"; })"
trap 'rm -rf "$tmp"' EXIT
log "extracting vmlinux from $vmlinuz"

# The bzImage payload is LZ4 (legacy frame, magic 02 21 4c 18). Find the first offset where an LZ4
# stream decodes to an ELF image; lz4 exits non-zero because of the trailing bzImage bytes, which is
# expected, so the ELF check below is the real test.
found=0
for off in $(grep -obUaP '\x02\x21\x4c\x18' "$vmlinuz" | cut -d: -f1); do
    tail -c +"$((off + 1))" "$vmlinuz" | lz4 -dc >"$tmp/vmlinux" 2>/dev/null || true
    if [ "$(head -c 4 "$tmp/vmlinux" | od -An -tx1 | tr -d ' ')" = 7f454c46 ]; then found=1; break; fi
done
[ "$found" = 1 ] || die "no LZ4-compressed ELF kernel found in $vmlinuz (compression changed? try scripts/extract-vmlinux)"
# PVH boot needs the XEN_ELFNOTE_PHYS32_ENTRY note (type 18).
notes="$(readelf -n "$tmp/vmlinux" 2>/dev/null || true)"
grep -qE 'Xen[[:space:]]+0x[0-9a-f]+[[:space:]]+Unknown note type: \(0x00000012\)' <<<"$notes" \
    || die "extracted vmlinux has no PVH entry note; QEMU microvm cannot boot it"

# Resolve module dependencies from modules.dep (depth first: dependencies before dependents).
declare -A seen=()
order=()
declare -A deps_of=()
while IFS= read -r line; do
    path="${line%%:*}"
    deps_of["$path"]="${line#*:}"
done <"$moddir/modules.dep"
path_of() { # module name (- and _ equivalent) -> path in modules.dep
    local n="${1//-/_}" p b
    for p in "${!deps_of[@]}"; do
        b="$(basename "$p")"; b="${b%%.ko*}"
        [ "${b//-/_}" = "$n" ] && { echo "$p"; return 0; }
    done
    return 1
}
visit() {
    local p="$1" d
    [ -n "${seen[$p]:-}" ] && return 0
    seen["$p"]=1
    for d in ${deps_of[$p]}; do visit "$d"; done
    order+=("$p")
}
for m in "${WANTED_MODULES[@]}"; do
    p="$(path_of "$m")" || die "module $m not found in $moddir/modules.dep"
    visit "$p"
done

mkdir -p "$tmp/modules"
: >"$tmp/modules/modules.list"
for p in "${order[@]}"; do
    b="$(basename "$p")"
    case "$b" in
        *.ko) cp "$moddir/$p" "$tmp/modules/$b" ;;
        *.ko.xz) xz -dc "$moddir/$p" >"$tmp/modules/${b%.xz}"; b="${b%.xz}" ;;
        *.ko.zst) zstd -qdc "$moddir/$p" >"$tmp/modules/${b%.zst}"; b="${b%.zst}" ;;
        *) die "unknown module file type: $p" ;;
    esac
    echo "$b" >>"$tmp/modules/modules.list"
done
echo "$kver" >"$tmp/kernel-version"
log "modules (load order): $(tr '\n' ' ' <"$tmp/modules/modules.list")"
touch "$tmp/done"
trap - EXIT
publish_cache "$tmp" "$out"
prune_cache "$HEARTH_CACHE/harness" "outer-kernel-" 2
log "built $out in $(elapsed_since "$start")"
echo "$out"
