#!/usr/bin/env bash
# The VM test suite in one command:
#   harness/run-vm-tests.sh [--direct|--svm] [--timeout SECS] [-- TEST-BINARY-ARGS...]
# (TEST-BINARY-ARGS default to --show-output.)
#
# 1. builds or finds the guest artifacts (harness/artifacts.sh) and exports HEARTH_KERNEL,
#    HEARTH_BZIMAGE, HEARTH_ROOTFS, HEARTH_ROOTFS_TINY;
# 2. builds every integration test target named `vm_*` in the workspace (cargo test --no-run);
# 3. runs each test binary directly when /dev/kvm is hardware virtualization
#    (harness/probe-hw-virt.sh), otherwise inside the emulated-SVM machine (harness/run-in-svm.sh),
#    with the artifacts, qemu-system-x86_64 and the binary passed in.
# Fails when no `vm_*` test exists, when a required target is missing (HEARTH_VM_REQUIRED, default
# every VM suite of the project: vm_qemu_reference vm_boot vm_agent vm_cli vm_job vm_job_load vm_net), when an
# artifact cannot be built, when any binary fails, or when a binary ran no test (no "test NAME ... ok"
# line in any of its attempts).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
# shellcheck source=lib.sh
. "$here/lib.sh"
HEARTH_LOG_TAG=vm-tests

mode=auto timeout_s="${HEARTH_VM_TEST_TIMEOUT:-900}"
while [ $# -gt 0 ]; do
    case "$1" in
        --direct) mode=direct; shift ;;
        --svm) mode=svm; shift ;;
        --timeout) timeout_s="$2"; shift 2 ;;
        --) shift; break ;;
        *) die "unknown option $1" ;;
    esac
done
test_args=("$@")
# Without arguments, show what passing tests printed (boot timings, the REFERENCE line).
[ ${#test_args[@]} -gt 0 ] || test_args=(--show-output)

ensure_pkgs jq bc
suite_start=$(date +%s)
eval "$("$here/artifacts.sh")" || die "guest artifacts could not be built (see above)"
log "artifacts: kernel=$HEARTH_KERNEL bzImage=$HEARTH_BZIMAGE rootfs=$HEARTH_ROOTFS tiny=$HEARTH_ROOTFS_TINY"

if [ "$mode" = auto ]; then
    if "$here/probe-hw-virt.sh"; then mode=direct; else
        rc=$?; [ "$rc" = 1 ] || die "the hardware-virtualization probe failed to run (status $rc)"
        mode=svm
    fi
fi
log "mode: $mode"

log "building the vm_* test targets"
json="$(cd "$repo" && cargo test --workspace --test 'vm_*' --no-run --message-format=json-render-diagnostics)" \
    || die "cargo could not build the vm_* tests"
mapfile -t tests < <(jq -r 'select(.reason == "compiler-artifact" and .executable != null and .profile.test == true
    and (.target.kind | index("test")) and (.target.name | startswith("vm_")))
    | "\(.target.name)\t\(.executable)\t\(.manifest_path)"' <<<"$json")
[ ${#tests[@]} -gt 0 ] || die "no vm_* integration test targets found in the workspace"
# The workspace's executables built alongside (tests run them through CARGO_BIN_EXE_*, whose
# paths exist in the outer machine only when passed in): the `hearth` binary, exported to the
# tests as HEARTH_BIN, plus mkfs.ext4 for its workspace disks.
mapfile -t bins < <(jq -r 'select(.reason == "compiler-artifact" and .executable != null and .profile.test == false
    and (.target.kind | index("bin"))) | "\(.target.name)\t\(.executable)"' <<<"$json" | sort -u)
bin_args=()
for b in ${bins[@]+"${bins[@]}"}; do
    IFS=$'\t' read -r bname bexe <<<"$b"
    [ -x "$bexe" ] || die "built executable $bname ($bexe) is missing"
    bin_args+=(--bin "$bexe")
    [ "$bname" != hearth ] || bin_args+=(--env "HEARTH_BIN=$bexe")
done
printf '%s\n' ${bins[@]+"${bins[@]}"} | cut -f1 | grep -qx hearth || die "the hearth binary was not built with the vm_* tests"
ensure_pkgs e2fsprogs
mkfs_ext4="$(PATH="$PATH:/usr/sbin:/sbin" command -v mkfs.ext4)" || die "mkfs.ext4 not found (e2fsprogs)"
bin_args+=(--bin "$mkfs_ext4")
[ ! -f /etc/mke2fs.conf ] || bin_args+=(--file /etc/mke2fs.conf)
# Optional: tests' hang watchdogs print thread stacks with gdb when it is there.
if gdb_bin="$(command -v gdb)"; then bin_args+=(--bin "$gdb_bin"); fi
# vm_cli and vm_job serve a repository with `git http-backend` and clone it on the (outer) host:
# git, its exec path (upload-pack, the http helpers: their libraries too) and its templates.
ensure_pkgs git
git_bin="$(command -v git)" || die "git not found"
git_exec="$("$git_bin" --exec-path)"
git_args=(--bin "$git_bin" --file "$git_exec" --bin "$git_exec/git-remote-http" --bin "$git_exec/git-http-backend")
git_templates="$(dirname "$(dirname "$git_exec")")/share/git-core/templates"
[ ! -d "$git_templates" ] || git_args+=(--file "$git_templates")
ensure_pkgs iproute2 nftables
net_args=()
for b in ip nft; do
    p="$(PATH="$PATH:/usr/sbin:/sbin" command -v "$b")" || die "$b not found (iproute2, nftables)"
    net_args+=(--bin "$p")
done
for req in ${HEARTH_VM_REQUIRED-vm_qemu_reference vm_boot vm_agent vm_cli vm_job vm_job_load vm_net}; do
    printf '%s\n' "${tests[@]}" | cut -f1 | grep -qx "$req" || die "required VM test target $req was not built"
done
logdir="$(mktemp -d)"
trap 'rm -rf "$logdir"' EXIT

# Attempts per binary when the emulated machine crashes or freezes (see below). The heavy
# vm_agent cases (a 100 MiB stream, 20 boots in a row) met such a failure in about half of the
# binary's runs on 2026-12-02/03, so three attempts were not enough to keep CI reliable. Four
# passed only in their last attempt twice, after three freezes in a row (2026-12-04, and
# 2026-12-05 in twenty_boots_in_a_row_leak_nothing each time). Six: a resumed retry (below)
# reruns only the unfinished tests, a few minutes each here, well inside CI's time. Those
# freezes were the outer kernel rewriting its own code as its last VM went, which run-in-svm.sh
# now prevents (kvm-hold.c); the retries stay for the outer machine's other failures.
max_attempts="${HEARTH_VM_TEST_ATTEMPTS:-6}"
# A retry resumes the binary: the tests that passed before the outer machine failed are skipped
# (`--exact --skip NAME`), so each attempt has less to do. Only without test filters among the
# arguments (--exact would turn a substring filter into an exact one); otherwise the whole
# binary runs again.
resumable=1
for a in ${test_args[@]+"${test_args[@]}"}; do
    case "$a" in -*) ;; *) resumable=0 ;; esac
done
passed=() failed=() retried=()
for t in "${tests[@]}"; do
    IFS=$'\t' read -r name exe manifest <<<"$t"
    pkgdir="$(dirname "$manifest")"
    log "running $name ($exe) in $mode mode"
    start=$(date +%s)
    # The outer machine's kernel (Debian 6.1 running nested SVM under TCG) has been seen to crash
    # on its own (a stack-guard-page hit in its page-fault path while a vCPU thread ran; a vCPU
    # thread spinning in KVM_RUN for minutes, which run-in-svm.sh turns into a panic): an
    # infrastructure failure, not the test's (seen once per suite run in two runs, each time in a
    # hearth vCPU thread; a suite boots ~40 guests under hearth and 2 under QEMU, so whether
    # hearth's way of driving KVM provokes it is open: see BENCHMARKS.md). Such a run
    # is retried, loudly, up to $max_attempts attempts in all; a test failure, a time limit or
    # the last attempt's crash fails the suite as before.
    extra_args=()
    case "$name" in
        vm_cli) extra_args=("${git_args[@]}" "${net_args[@]}") ;;
        vm_job|vm_job_load) extra_args=("${git_args[@]}") ;;
        vm_net) extra_args=("${net_args[@]}") ;;
    esac
    stalls=0 done_tests=()
    for attempt in $(seq 1 "$max_attempts"); do
        run_args=(${test_args[@]+"${test_args[@]}"})
        if [ "$resumable" = 1 ] && [ ${#done_tests[@]} -gt 0 ]; then
            run_args+=(--exact)
            for d in "${done_tests[@]}"; do run_args+=(--skip "$d"); done
            log "resuming $name: skipping the ${#done_tests[@]} test(s) that passed before (${done_tests[*]})"
        fi
        set +e
        if [ "$mode" = direct ]; then
            (cd "$pkgdir" && timeout -k 10 "$timeout_s" "$exe" "${run_args[@]}") 2>&1 | tee "$logdir/$name.log"
        else
            "$here/run-in-svm.sh" --timeout "$timeout_s" --qemu --workdir "$pkgdir" \
                --file "$HEARTH_KERNEL" --file "$HEARTH_BZIMAGE" --file "$HEARTH_ROOTFS" --file "$HEARTH_ROOTFS_TINY" \
                --env "HEARTH_KERNEL=$HEARTH_KERNEL" --env "HEARTH_BZIMAGE=$HEARTH_BZIMAGE" \
                --env "HEARTH_ROOTFS=$HEARTH_ROOTFS" --env "HEARTH_ROOTFS_TINY=$HEARTH_ROOTFS_TINY" \
                --env "CARGO_MANIFEST_DIR=$pkgdir" --pass-env RUST_LOG --pass-env RUST_BACKTRACE "${bin_args[@]}" ${extra_args[@]+"${extra_args[@]}"} \
                -- "$exe" "${run_args[@]}" 2>&1 | tee "$logdir/$name.log"
        fi
        rc=${PIPESTATUS[0]}
        set -e
        # (The harness's log can hold a line twice; each name is kept once.)
        while read -r d; do
            case " ${done_tests[*]} " in *" $d "*) ;; *) done_tests+=("$d") ;; esac
        done < <(grep -aE '^test [^ ]+ \.\.\. ok' "$logdir/$name.log" | tr -d '\r' | cut -d' ' -f2)
        # The outer machine's kernel crashed, or the emulated machine froze as a whole (its
        # heartbeat stopped, run-in-svm.sh killed it after 2 minutes): infrastructure, retried.
        if [ "$mode" = svm ] && [ "$attempt" -lt "$max_attempts" ] \
            && failure="$(outer_machine_failure "$rc" "$logdir/$name.log")"; then
            if [ "$failure" = crashed ]; then
                log "WARNING: the outer machine's kernel crashed while running $name (harness infrastructure, see the panic above); retrying $name (attempt $((attempt + 1)) of $max_attempts)"
                retried+=("$name")
            else
                log "WARNING: the emulated machine froze while running $name (no heartbeat; harness infrastructure); retrying $name (attempt $((attempt + 1)) of $max_attempts)"
                retried+=("$name (frozen)")
            fi
            continue
        fi
        # Every VM test has its own whole-test deadline that fails it with diagnostics well
        # within the per-binary limit; reaching the limit means those watchdogs never ran: the
        # outer machine stalled (seen a few times under load, in QEMU-only tests too). Retried
        # once, loudly; a second time fails the suite.
        if [ "$mode" = svm ] && [ "$rc" = 124 ] && [ "$stalls" -eq 0 ] && [ "$attempt" -lt "$max_attempts" ]; then
            stalls=1
            log "WARNING: $name reached the ${timeout_s} s limit without any test deadline firing (the emulated machine stalled); retrying $name once"
            retried+=("$name (stall)")
            continue
        fi
        break
    done
    # Passed tests, over all attempts (a resumed last attempt may have had none left to run).
    if [ "$rc" = 0 ] && [ ${#done_tests[@]} -eq 0 ]; then
        log "$name exited 0 but ran no test"; rc=1
    fi
    if [ "$rc" = 0 ]; then passed+=("$name"); log "$name passed ($(elapsed_since "$start"))"
    else failed+=("$name"); log "$name FAILED with status $rc ($(elapsed_since "$start"))"; fi
done
# CI shows the head and the tail of a long log: repeat each failing binary's panic messages (up
# to its backtrace, at most 60 lines each) at the end, where they are seen.
for name in ${failed[@]+"${failed[@]}"}; do
    log "why $name failed (its panic messages; the whole log is above):"
    awk '/panicked at/ {show = 1; n = 0}
         /^stack backtrace:|^note: run with|^   [0-9]+: / {show = 0}
         show && n++ < 60 {print "    " $0}' "$logdir/$name.log" >&2 || true
done
log "vm test binaries: ${#passed[@]} ok (${passed[*]:-}), ${#failed[@]} failing (${failed[*]:-}), retried after an outer-machine crash or freeze: ${retried[*]:-none}; suite took $(elapsed_since "$suite_start")"
[ ${#failed[@]} -eq 0 ]
