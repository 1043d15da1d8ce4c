#!/usr/bin/env bash
# Runs one program with a working /dev/kvm inside QEMU's TCG machine emulating AMD SVM (see README).
#
#   harness/run-in-svm.sh [options] -- PROGRAM [ARGS...]
#
# PROGRAM (and every --bin) is copied into the outer machine at its own absolute path together
# with the shared libraries `ldd` lists. --file copies files or directory trees at their own
# absolute paths. The program runs as root with /dev/kvm, /dev/vhost-vsock and AF_VSOCK available;
# its stdout+stderr stream to ours, and our exit status is its exit status.
# Exit statuses of our own: 124 time limit hit or the outer machine stalled (no heartbeat for
# HEARTH_SVM_STALL_SECS, default 120), 125 harness failure (reason on stderr).
# HEARTH_SVM_KVM_AMD_PARAMS: the outer kvm_amd's module parameters (default "vgif=0 npt=0", see
# below). HEARTH_SVM_OUTER_QEMU: the QEMU binary (command) that runs the outer machine.
# HEARTH_SVM_KERNEL_ARGS: extra parameters for the outer kernel (e.g. init_on_free=1, see
# harness/run-benches.sh). HEARTH_SVM_HOLD_VM=0: no idle VM held open in the outer machine
# (kvm-hold.c says why there is one).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
. "$here/lib.sh"
HEARTH_LOG_TAG=svm-harness
fail() { printf '[svm-harness] ERROR: %s\n' "$*" >&2; exit 125; }

usage() {
    sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    cat >&2 <<'USAGE'
Options:
  --timeout SECS     wall-clock limit for the whole outer machine (default 900)
  --mem MIB          outer machine memory (default 6144; files passed in live in its RAM)
  --smp N            outer vCPUs (default 2)
  --env NAME=VALUE   set in the program's environment (repeatable)
  --pass-env NAME    copy NAME from our environment if set (repeatable)
  --file PATH        copy a file or directory in at the same absolute path (repeatable)
  --bin PATH         copy an executable and its shared libraries (repeatable)
  --qemu             also copy qemu-system-x86_64, its libraries and the microvm firmware
  --workdir DIR      directory the program starts in (default: the current directory; created)
  --keep             keep the staging directory and serial log (printed at the end)
USAGE
    exit 125
}

timeout_s=900 mem=6144 smp=2 workdir="$PWD" keep=0 want_qemu=0
envs=() files=() bins=()
while [ $# -gt 0 ]; do
    case "$1" in
        --timeout) timeout_s="$2"; shift 2 ;;
        --mem) mem="$2"; shift 2 ;;
        --smp) smp="$2"; shift 2 ;;
        --env) [[ "$2" == *=* ]] || fail "--env wants NAME=VALUE, got '$2'"; envs+=("$2"); shift 2 ;;
        --pass-env) if [ -n "${!2+x}" ]; then envs+=("$2=${!2}"); fi; shift 2 ;;
        --file) files+=("$2"); shift 2 ;;
        --bin) bins+=("$2"); shift 2 ;;
        --qemu) want_qemu=1; shift ;;
        --workdir) workdir="$2"; shift 2 ;;
        --keep) keep=1; shift ;;
        -h|--help) usage ;;
        --) shift; break ;;
        -*) fail "unknown option $1 (see --help)" ;;
        *) break ;;
    esac
done
[ $# -ge 1 ] || usage
prog="$1"; shift
if [[ "$prog" != /* ]]; then
    if [ -e "$prog" ]; then prog="$(realpath "$prog")"
    else prog="$(command -v "$prog")" || fail "program '$1' not found"; fi
fi
[ -x "$prog" ] || fail "program $prog is not an executable file"

for tool in qemu-system-x86_64 cpio busybox bc; do
    command -v "$tool" >/dev/null || ensure_pkgs qemu-system-x86 cpio busybox-static bc
done
busybox_bin="$(command -v busybox)"
is_static "$busybox_bin" || fail "$busybox_bin is dynamically linked; install busybox-static"

outer="$("$here/outer-kernel.sh")" || fail "could not build the outer kernel (see above)"

# kvm-hold (kvm-hold.c): one idle KVM VM held open in the outer machine, so that guests coming
# and going never make the outer kernel rewrite its own code (README, "Frozen outer machines").
# Built once per source, static, into the cache. HEARTH_SVM_HOLD_VM=0 leaves it out.
hold_vm="${HEARTH_SVM_HOLD_VM:-1}"
if [ "$hold_vm" = 1 ]; then
    hold_dir="$HEARTH_CACHE/harness/kvm-hold-$(hash_inputs "$here/kvm-hold.c")"
    if [ ! -x "$hold_dir/kvm-hold" ]; then
        command -v gcc >/dev/null && [ -e /usr/include/linux/kvm.h ] || ensure_pkgs gcc libc6-dev linux-libc-dev
        mkdir -p "$HEARTH_CACHE/harness"
        hold_tmp="$(mktemp -d "$HEARTH_CACHE/harness/.tmp-kvm-hold-XXXXXX")"
        gcc -O2 -static -Wall -Werror -o "$hold_tmp/kvm-hold" "$here/kvm-hold.c" \
            || { rm -rf "$hold_tmp"; fail "could not build harness/kvm-hold.c"; }
        publish_cache "$hold_tmp" "$hold_dir"
        prune_cache "$HEARTH_CACHE/harness" "kvm-hold-" 2
    fi
fi

stage="$(mktemp -d "${TMPDIR:-/tmp}/hearth-svm-XXXXXX")"
# Stops the outer machine if it still runs (QEMU's pidfile; checked to be QEMU), then removes
# the staging directory.
stop_outer_machine() {
    local pid
    if [ -n "${watchdog_pid:-}" ]; then kill "$watchdog_pid" 2>/dev/null || true; fi
    pid="$(cat "$stage/qemu.pid" 2>/dev/null)" || return 0
    if [ -n "$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "qemu-system.*$stage"; then
        kill "$pid" 2>/dev/null || true
        for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    return 0
}
cleanup() {
    stop_outer_machine
    if [ "$keep" = 0 ]; then rm -rf "$stage"; else log "kept $stage"; fi
}
trap cleanup EXIT
trap 'echo "[svm-harness] interrupted; stopping the outer machine" >&2; exit 130' INT TERM HUP
root="$stage/root"
mkdir -p "$root"/{proc,sys,dev,tmp,run,harness/bin,harness/modules,usr/bin,usr/sbin,usr/lib,usr/lib64,etc,root}
# Same top-level layout as the host (merged /usr), so copied paths resolve the same way.
for d in bin sbin lib lib64; do
    if [ -L "/$d" ]; then ln -sfn "$(readlink "/$d")" "$root/$d"; else mkdir -p "$root/$d"; fi
done
chmod 1777 "$root/tmp"

copy_in() { # copy_in PATH : one path (file, symlink chain or tree) at the same absolute path
    local p="$1"
    [ -e "$p" ] || fail "missing file to pass in: $p"
    p="$(realpath -s "$p")"
    mkdir -p "$root$(dirname "$p")"
    if [ -d "$p" ]; then cp -a "$p/." "$root$p/" 2>/dev/null || { mkdir -p "$root$p"; cp -a "$p/." "$root$p/"; }
    else
        # Keep the name the program asks for, and the real file if it is a symlink.
        cp -a "$p" "$root$p" 2>/dev/null || true
        if [ -L "$p" ]; then
            local real; real="$(realpath "$p")"
            mkdir -p "$root$(dirname "$real")"; cp -a "$real" "$root$real"
        fi
    fi
}
copy_bin() { # copy_bin PATH : an executable and the shared libraries it loads
    local b="$1" lib
    copy_in "$b"
    if ldd "$b" >/dev/null 2>&1; then
        while read -r lib; do copy_in "$lib"; done < <(ldd "$b" | grep -oE '/[^ ]+' | sort -u)
    fi
}

copy_bin "$prog"
for b in ${bins[@]+"${bins[@]}"}; do copy_bin "$b"; done
for f in ${files[@]+"${files[@]}"}; do copy_in "$f"; done
if [ "$want_qemu" = 1 ]; then
    copy_bin "$(command -v qemu-system-x86_64)"
    for f in /usr/share/qemu/{bios-microvm.bin,qboot.rom,pvh.bin,linuxboot_dma.bin,linuxboot.bin,kvmvapic.bin}; do
        [ -e "$f" ] && copy_in "$f"
    done
fi
cp "$busybox_bin" "$root/harness/bin/busybox"
[ "$hold_vm" != 1 ] || cp "$hold_dir/kvm-hold" "$root/harness/bin/kvm-hold"
# Scripts with #!/bin/sh work even when no shell was passed in.
[ -e "$root/bin/sh" ] || ln -s /harness/bin/busybox "$root/bin/sh"
cp "$outer/modules/"*.ko "$outer/modules/modules.list" "$root/harness/modules/"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\n' >"$root/etc/group"
echo 'hosts: files' >"$root/etc/nsswitch.conf"
printf '127.0.0.1 localhost\n::1 localhost\n' >"$root/etc/hosts"

# The command and its environment, quoted for the outer shell (busybox ash understands %q).
nonce="$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
{
    echo "export PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin:/harness/bin"
    echo "export HOME=/root TMPDIR=/tmp HEARTH_IN_SVM_HARNESS=1"
    for e in ${envs[@]+"${envs[@]}"}; do printf 'export %s=%q\n' "${e%%=*}" "${e#*=}"; done
    printf 'mkdir -p %q && cd %q || exit 125\n' "$workdir" "$workdir"
    printf '%q ' "$prog" "$@"; echo
} >"$root/harness/cmd.sh"
# kvm_amd's parameters in the outer machine (harness/README.md, "The outer kvm_amd"). npt=0: the
# outer KVM shadows the guest's page tables instead of using the emulated CPU's nested paging;
# with nested paging (QEMU 7.2 and 10.0 TCG alike) about one 100 MiB vm_agent stream in three
# lost its guest (a guest handed the outer kernel's registers, a spin on a spinlock with
# interrupts off, triple faults), with npt=0 none in 22. vgif=0: the outer KVM keeps the global
# interrupt flag itself (the emulated virtual GIF did the same kind of harm at boot). Empty:
# kvm_amd's defaults.
kvm_amd_params="${HEARTH_SVM_KVM_AMD_PARAMS-vgif=0 npt=0}"
cat >"$root/init" <<INIT
#!/harness/bin/busybox sh
/harness/bin/busybox --install -s /harness/bin
export PATH=/harness/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm && mount -t devpts devpts /dev/pts && mount -t tmpfs tmpfs /dev/shm
ln -sf /proc/self/fd /dev/fd
stty -F /dev/console -opost 2>/dev/null
hostname hearth-svm
ip link set lo up 2>/dev/null
report() { echo; echo "HEARTH_HARNESS_${nonce}_EXIT=\$1"; sync; poweroff -f; }
# Heartbeat on the second serial port (a file on the host): the host kills a machine whose
# heartbeat stops, which happens only when the emulated machine as a whole makes no progress.
[ -e /dev/ttyS1 ] && (while :; do echo beat; sleep 10; done >/dev/ttyS1 2>/dev/null &)
while read -r m; do
    p=""; [ "\$m" != kvm-amd.ko ] || p="$kvm_amd_params"
    insmod /harness/modules/\$m \$p || { echo "[svm-harness] ERROR: insmod \$m \$p failed" >&2; report 125; }
done </harness/modules/modules.list
for dev in kvm vhost-vsock; do
    [ -e /dev/\$dev ] || { echo "[svm-harness] ERROR: /dev/\$dev missing after loading modules (does -cpu max still offer SVM?)" >&2; report 125; }
done
if [ -x /harness/bin/kvm-hold ]; then
    /harness/bin/kvm-hold </dev/null || { echo "[svm-harness] ERROR: kvm-hold could not hold a VM open" >&2; report 125; }
fi
/harness/bin/busybox sh /harness/cmd.sh </dev/null
report \$?
INIT
chmod +x "$root/init"

# name_outer_code STATE : prints outer-state.py's samples with the outer kernel's symbols. The
# symbols come from a /proc/kallsyms of the outer kernel, read once (one more outer boot, ~15 s,
# only after a freeze) and kept beside the outer kernel.
name_outer_code() {
    local syms="$outer/kallsyms"
    if [ ! -s "$syms" ] && [ -z "${HEARTH_SVM_NO_SYMBOLS:-}" ]; then
        HEARTH_SVM_NO_SYMBOLS=1 "$here/run-in-svm.sh" --timeout 300 -- "$(command -v cat)" /proc/kallsyms \
            >"$syms.tmp" 2>/dev/null && grep -q ' T _stext$' "$syms.tmp" && mv "$syms.tmp" "$syms"
        rm -f "$syms.tmp"
    fi
    if [ -s "$syms" ]; then python3 "$here/outer-state.py" name "$1" "$syms"; else cat "$1"; fi
}

start=$(date +%s.%N)
(cd "$root" && find . -print0 | cpio --null -o -H newc --quiet) >"$stage/initramfs.cpio" \
    || fail "could not pack the initramfs"
size_mb=$(( $(stat -c %s "$stage/initramfs.cpio") / 1048576 ))
log "initramfs ${size_mb} MiB packed in $(printf '%.1f' "$(echo "$(date +%s.%N) - $start" | bc)") s; booting the outer machine (limit ${timeout_s} s)"
[ $((size_mb * 2 + 1024)) -lt "$mem" ] || fail "outer memory ${mem} MiB is too small for a ${size_mb} MiB initramfs; raise --mem"

# softlockup_panic: the outer kernel (6.1 KVM under TCG) has been seen to spin in a vCPU thread's
# KVM_RUN for minutes ("soft lockup - CPU#N stuck", both CPUs, no progress at all). With the
# watchdog at 30 s a CPU stuck for 60 s panics the outer machine, which callers see as an
# infrastructure failure (status 125, "Kernel panic") in a minute instead of at the time limit.
# The heartbeat watchdog: the outer init writes a line to ttyS1 (the file $heartbeat) every 10 s.
# The emulated machine has been seen to freeze as a whole (no console output, no soft-lockup
# watchdog firing, QEMU busy at 100 % CPU per vCPU, e.g. 2026-12-02 17:44 in a boot bench); then
# the heartbeat stops and the run is ended after $stall_s s instead of at the time limit.
serial="$stage/serial.log" heartbeat="$stage/heartbeat.log" stall_s="${HEARTH_SVM_STALL_SECS:-120}"
: >"$heartbeat"
watch_heartbeat() {
    local last_size=0 last_change now size
    last_change=$(date +%s)
    while sleep 5; do
        size=$(stat -c %s "$heartbeat" 2>/dev/null || echo 0) now=$(date +%s)
        if [ "$size" != "$last_size" ]; then last_size=$size last_change=$now; continue; fi
        # Armed by the first beat (the outer kernel's boot comes before it).
        if [ "$size" -gt 0 ] && [ $((now - last_change)) -ge "$stall_s" ]; then
            echo "$((now - last_change))" >"$stage/stalled"
            # Where the emulated CPUs are, before the machine goes (python3 is optional).
            if command -v python3 >/dev/null && [ -S "$stage/monitor.sock" ]; then
                timeout 60 python3 "$here/outer-state.py" sample "$stage/monitor.sock" \
                    >"$stage/outer-state.txt" 2>&1 || true
            fi
            [ -s "$stage/qemu.pid" ] && kill "$(cat "$stage/qemu.pid")" 2>/dev/null || true
            return
        fi
    done
}
watch_heartbeat &
watchdog_pid=$!
set +e
{
    timeout -k 10 "$timeout_s" ${HEARTH_SVM_OUTER_QEMU:-qemu-system-x86_64} \
        -M microvm,accel=tcg,pit=on,rtc=on -cpu max -smp "$smp" -m "$mem" \
        -nodefaults -no-user-config -display none -serial stdio -no-reboot \
        -chardev "file,id=heartbeat,path=$heartbeat" -device isa-serial,chardev=heartbeat,index=1 \
        -pidfile "$stage/qemu.pid" -monitor "unix:$stage/monitor.sock,server=on,wait=off" \
        -kernel "$outer/vmlinux" -initrd "$stage/initramfs.cpio" \
        -append "console=ttyS0 panic=-1 quiet loglevel=3 tsc_early_khz=2600000 softlockup_panic=1 watchdog_thresh=30 rdinit=/init ${HEARTH_SVM_KERNEL_ARGS:-}" \
        </dev/null 2>"$stage/qemu.err" | tee "$serial" | grep -a --line-buffered -v "^HEARTH_HARNESS_${nonce}_EXIT="
    echo "${PIPESTATUS[0]}" >"$stage/qemu.rc"
} &
# In the background and waited for, so that a signal to this script (Ctrl-C, a CI job
# cancelled, a caller's time limit) runs the traps set above at once and takes the outer machine
# down with it: `timeout` puts QEMU in a process group of its own, out of reach of a group kill.
pipeline_pid=$!
wait "$pipeline_pid"
qemu_rc="$(cat "$stage/qemu.rc" 2>/dev/null || echo 125)"
kill "$watchdog_pid" 2>/dev/null; wait "$watchdog_pid" 2>/dev/null
set -e
if [ -e "$stage/stalled" ]; then
    tail -c 2000 "$serial" >&2
    if [ -s "$stage/outer-state.txt" ]; then
        echo "[svm-harness] the emulated CPUs when the machine was found frozen:" >&2
        name_outer_code "$stage/outer-state.txt" >&2
    fi
    echo "[svm-harness] ERROR: the outer machine made no progress for $(cat "$stage/stalled") s (no heartbeat: the emulated machine froze, an infrastructure failure); killed" >&2
    exit 124
fi
if [ "$qemu_rc" = 124 ] || [ "$qemu_rc" = 137 ]; then
    echo "[svm-harness] ERROR: time limit of ${timeout_s} s reached; outer machine killed" >&2
    exit 124
fi
rc="$(tr -d '\r' <"$serial" | sed -n "s/^HEARTH_HARNESS_${nonce}_EXIT=\([0-9]*\)\$/\1/p" | tail -1)"
if [ -z "$rc" ]; then
    cat "$stage/qemu.err" >&2
    fail "the outer machine stopped (QEMU status $qemu_rc) without reporting the program's exit status; kernel panic or crash? (--keep keeps $serial)"
fi
log "program exited with status $rc (outer machine ran $(printf '%.0f' "$(echo "$(date +%s.%N) - $start" | bc)") s)"
exit "$rc"
