#!/usr/bin/env bash
# Tells whether this machine's /dev/kvm is hardware virtualization that boots a standard Linux guest.
# Exit 0: yes (VM tests can run directly). Exit 1: no, with the reason on stderr (run them under
# harness/run-in-svm.sh). Exit 2: the probe itself could not run (reason on stderr).
# Checks, in order: /dev/kvm exists and is read-writable; the host KVM is not kvm_pvm (a
# paravirtualized nested KVM that only runs tiny hand-written guests); and a probe guest (the outer
# harness kernel + a one-line busybox init) boots under QEMU -enable-kvm within 60 s and reports back.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
. "$here/lib.sh"
HEARTH_LOG_TAG=probe-hw-virt
no() { echo "[probe-hw-virt] no hardware virtualization: $*" >&2; exit 1; }

[ -e /dev/kvm ] || no "/dev/kvm does not exist"
[ -r /dev/kvm ] && [ -w /dev/kvm ] || no "/dev/kvm is not readable and writable by $(id -un)"
[ -d /sys/module/kvm_pvm ] && no "the host KVM is kvm_pvm (/sys/module/kvm_pvm exists); standard guests do not boot under it"

command -v qemu-system-x86_64 >/dev/null && command -v busybox >/dev/null && command -v cpio >/dev/null \
    || ensure_pkgs qemu-system-x86 busybox-static cpio
# The probe guest's kernel: the outer harness kernel, or $HEARTH_PROBE_VMLINUX (any PVH vmlinux).
if [ -n "${HEARTH_PROBE_VMLINUX:-}" ]; then probe_kernel="$HEARTH_PROBE_VMLINUX"
else
    outer="$("$here/outer-kernel.sh")" || { echo "[probe-hw-virt] ERROR: cannot build the probe kernel" >&2; exit 2; }
    probe_kernel="$outer/vmlinux"
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/root/bin" "$tmp/root/proc"
cp "$(command -v busybox)" "$tmp/root/bin/busybox"
cat >"$tmp/root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
echo "HEARTH_PROBE_GUEST_UP $(/bin/busybox cat /proc/sys/kernel/osrelease)"
/bin/busybox poweroff -f
INIT
chmod +x "$tmp/root/init"
(cd "$tmp/root" && find . | cpio -o -H newc --quiet) >"$tmp/probe.cpio"
out="$(timeout -k 5 60 qemu-system-x86_64 -M microvm,accel=kvm,pit=on,rtc=on -cpu host -m 256 -smp 1 \
    -nodefaults -no-user-config -display none -serial stdio -no-reboot \
    -kernel "$probe_kernel" -initrd "$tmp/probe.cpio" -append "console=ttyS0 panic=-1 quiet rdinit=/init" \
    </dev/null 2>&1)" || true
grep -q HEARTH_PROBE_GUEST_UP <<<"$out" || no "a probe Linux guest did not boot under QEMU -enable-kvm within 60 s: $(tail -c 400 <<<"$out")"
echo "[probe-hw-virt] /dev/kvm boots a standard guest: VM tests run directly" >&2
