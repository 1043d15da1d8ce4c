#!/usr/bin/env bash
# hearth's benchmarks against QEMU in one command:
#   harness/run-benches.sh [--direct|--svm] [--timeout SECS] [--log FILE] [BENCH...]
# BENCH: any of boot exec vsock memory (default: all four).
#
# 1. builds or finds the guest artifacts (harness/artifacts.sh);
# 2. builds the criterion benches of the root package (`cargo bench --no-run`, release profile);
# 3. runs them one after the other in ONE machine: directly when /dev/kvm is hardware
#    virtualization (harness/probe-hw-virt.sh), otherwise inside the emulated-SVM machine
#    (harness/run-in-svm.sh). Every bench boots the same kernel + Debian rootfs under hearth-vmm
#    and under Debian's qemu-system-x86_64 (-M microvm, vhost-vsock), the same number of times,
#    one guest at a time;
# 4. prints each bench's median for both VMMs, n, and the hearth/QEMU ratio (the RESULT lines),
#    and whether the targets are met (harness/bench-summary.sh: TARGET lines).
# The whole output is also kept in --log FILE (default: a temporary file, path printed).
# Fails when a bench fails (a missing artifact, KVM or QEMU makes the bench panic with the reason).
# In the emulated machine, a run whose outer machine crashed or froze is started again (up to
# HEARTH_BENCH_ATTEMPTS, default 3); the log keeps every attempt.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
# shellcheck source=lib.sh
. "$here/lib.sh"
HEARTH_LOG_TAG=benches

mode=auto timeout_s=3600 logfile=""
while [ $# -gt 0 ]; do
    case "$1" in
        --direct) mode=direct; shift ;;
        --svm) mode=svm; shift ;;
        --timeout) timeout_s="$2"; shift 2 ;;
        --log) logfile="$2"; shift 2 ;;
        --) shift; break ;;
        -*) die "unknown option $1" ;;
        *) break ;;
    esac
done
benches=("$@")
[ ${#benches[@]} -gt 0 ] || benches=(boot exec vsock memory)
[ -n "$logfile" ] || logfile="$(mktemp /tmp/hearth-benches.XXXXXX.log)"

ensure_pkgs jq
eval "$("$here/artifacts.sh")" || die "guest artifacts could not be built (see above)"
log "artifacts: kernel=$HEARTH_KERNEL rootfs=$HEARTH_ROOTFS"

if [ "$mode" = auto ]; then
    if "$here/probe-hw-virt.sh"; then mode=direct; else
        rc=$?; [ "$rc" = 1 ] || die "the hardware-virtualization probe failed to run (status $rc)"
        mode=svm
    fi
fi
log "mode: $mode"

log "building the benches (cargo bench --no-run)"
bench_args=()
for b in "${benches[@]}"; do bench_args+=(--bench "$b"); done
json="$(cd "$repo" && cargo bench -p hearth "${bench_args[@]}" --no-run --message-format=json-render-diagnostics)" \
    || die "cargo could not build the benches"
exes=()
for b in "${benches[@]}"; do
    exe="$(jq -r --arg b "$b" 'select(.reason == "compiler-artifact" and .executable != null
        and (.target.kind | index("bench")) and .target.name == $b) | .executable' <<<"$json" | tail -1)"
    [ -n "$exe" ] && [ -x "$exe" ] || die "bench $b was not built"
    exes+=("$exe")
done

# The program run in the (outer) machine: every bench binary in turn, in bench mode.
runner="$(mktemp /tmp/hearth-bench-runner.XXXXXX.sh)"
trap 'rm -f "$runner"' EXIT
{
    echo '#!/usr/bin/env bash'
    echo 'set -e'
    echo 'export CRITERION_HOME=/tmp/criterion'
    echo 'echo "MACHINE nproc=$(nproc) cpu=\"$(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2- | sed "s/^ //")\" kernel=$(uname -r)"'
    for e in "${exes[@]}"; do printf '%q --bench\n' "$e"; done
} >"$runner"
chmod +x "$runner"

log "running ${benches[*]} in $mode mode; output also in $logfile"
start=$(date +%s)
set +e
if [ "$mode" = direct ]; then
    (cd "$repo" && timeout -k 10 "$timeout_s" bash "$runner") 2>&1 | tee "$logfile"
    rc=${PIPESTATUS[0]}
else
    bin_args=(--bin "$(command -v bash)" --bin "$(command -v grep)" --bin "$(command -v cut)" --bin "$(command -v sed)"
              --bin "$(command -v nproc)" --bin "$(command -v uname)")
    for e in "${exes[@]}"; do bin_args+=(--bin "$e"); done
    # The outer kvm_amd keeps nested paging here (vgif=0 only), unlike the VM test suite's npt=0:
    # both VMMs run their guests on hardware with nested paging (EPT/NPT), and shadow paging in
    # the outer KVM adds seconds of guest page-table work to every boot that neither VMM does
    # (BENCHMARKS.md, "Run 10"). HEARTH_SVM_KVM_AMD_PARAMS overrides it.
    # The outer kernel zeroes pages when they are freed (init_on_free=1), not when they are next
    # handed out: under TCG, the first write to a page that a guest had run code from takes QEMU's
    # self-modifying-code path, so zeroing the pages the previous sample's guest left behind cost
    # the next sample, of either VMM, up to seconds (hearth's 12.7 MB kernel load: 1.1-1.3 s
    # after an earlier guest, 0.17 s in a fresh machine, 0.08-0.13 s with init_on_free=1;
    # BENCHMARKS.md, "Recycled pages"). With it that cost falls in the teardown between samples
    # and each boot is measured on its own. HEARTH_SVM_KERNEL_ARGS overrides it.
    # An outer machine that crashed or froze (lib.sh's outer_machine_failure: an infrastructure
    # failure, harness/README.md) gives no result; the benches are run again in a new machine,
    # up to HEARTH_BENCH_ATTEMPTS (default 3) times. A bench's own failure is not retried.
    attempts="${HEARTH_BENCH_ATTEMPTS:-3}" attempt_log="$(mktemp /tmp/hearth-benches-attempt.XXXXXX.log)"
    : >"$logfile"
    for attempt in $(seq 1 "$attempts"); do
        [ "$attempt" = 1 ] || log "attempt $attempt of $attempts: the outer machine $failure (status $rc)"
        : >"$attempt_log"
        HEARTH_SVM_KVM_AMD_PARAMS="${HEARTH_SVM_KVM_AMD_PARAMS-vgif=0}" \
        HEARTH_SVM_KERNEL_ARGS="${HEARTH_SVM_KERNEL_ARGS-init_on_free=1}" \
        "$here/run-in-svm.sh" --timeout "$timeout_s" --qemu --workdir "$repo" \
            --file "$HEARTH_KERNEL" --file "$HEARTH_ROOTFS" --file "$runner" \
            --env "HEARTH_KERNEL=$HEARTH_KERNEL" --env "HEARTH_ROOTFS=$HEARTH_ROOTFS" \
            --pass-env HEARTH_BENCH_QEMU --pass-env HEARTH_BENCH_DMESG --pass-env HEARTH_BENCH_VMS \
            --pass-env HEARTH_BENCH_GUEST_TIMES \
            --pass-env RUST_LOG "${bin_args[@]}" -- "$(command -v bash)" "$runner" 2>&1 | tee -a "$logfile" "$attempt_log"
        rc=${PIPESTATUS[0]}
        failure="$(outer_machine_failure "$rc" "$attempt_log")" || break
    done
    rm -f "$attempt_log"
fi
set -e
log "benches finished with status $rc after $(elapsed_since "$start")"

echo
"$here/bench-summary.sh" "$logfile" "$mode"
[ "$rc" = 0 ] || die "a bench failed (status $rc); see $logfile"
