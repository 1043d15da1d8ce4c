#!/usr/bin/env bash
# hearth's whole test suite, the one command CI runs (.ci/run) and the README names:
#   scripts/test.sh [--quick]
# 1. installs the Debian packages the host tests need (as root, once);
# 2. lint: cargo fmt --check and cargo clippy --all-targets -D warnings;
# 3. host tests: every test target of the workspace except the VM ones (vm_*), plus the unit tests
#    of examples that have them (boot_timeline's exit-trace parser), with the static
#    agent built first (the PID 1 tests run it);
# 4. fuzz: builds every cargo-fuzz target and runs each for HEARTH_FUZZ_SECONDS (default 30);
# 5. the VM suite: harness/run-vm-tests.sh (directly where /dev/kvm is hardware virtualization,
#    inside QEMU's emulated-SVM machine otherwise; it builds/caches the guest kernel and rootfs).
# --quick runs 2 and 3 only. Every stage must pass; the script stops at the first failure and
# prints a summary with each stage's time.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
# shellcheck source=../harness/lib.sh
. "$repo/harness/lib.sh"
HEARTH_LOG_TAG=test

quick=0
[ "${1:-}" = --quick ] && quick=1
fuzz_seconds="${HEARTH_FUZZ_SECONDS:-30}"
summary=()
stage() {
    local name="$1" start rc; shift
    log "=== $name"
    start=$(date +%s)
    set +e; "$@"; rc=$?; set -e
    summary+=("$(printf '%-12s %4ss  %s' "$name" "$(( $(date +%s) - start ))" "$([ $rc = 0 ] && echo ok || echo "FAILED ($rc)")")")
    if [ $rc != 0 ]; then
        printf '%s\n' "${summary[@]}" >&2
        die "stage $name failed"
    fi
}

deps() {
    # git: job tests serve a repository over smart HTTP; iproute2/util-linux: namespace tests;
    # e2fsprogs: workspace disk images; jq: test target discovery; nftables: network isolation.
    ensure_pkgs git iproute2 util-linux e2fsprogs jq nftables ca-certificates
}

lint() {
    cargo fmt --all --check && cargo clippy --workspace --all-targets --locked -- -D warnings
}

host_tests() {
    local targets args=() t
    targets=$(cargo metadata --no-deps --format-version 1 --locked \
        | jq -r '.packages[].targets[] | select(.kind | index("test")) | .name' | sort -u)
    for t in $targets; do
        case "$t" in vm_*) ;; *) args+=(--test "$t") ;; esac
    done
    cargo test --workspace --locked --no-fail-fast --lib --bins --examples "${args[@]}"
}

fuzz() {
    command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
    local t
    (cd fuzz && for t in $(cargo fuzz list); do
        log "fuzz $t for ${fuzz_seconds}s"
        RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" -- -max_total_time="$fuzz_seconds" -rss_limit_mb=2048 \
            >"/tmp/hearth-fuzz-$t.log" 2>&1 || { tail -50 "/tmp/hearth-fuzz-$t.log"; exit 1; }
        grep -E '^Done [0-9]+ runs' "/tmp/hearth-fuzz-$t.log" || true
    done)
}

stage deps deps
stage lint lint
stage host-tests host_tests
if [ $quick = 0 ]; then
    stage fuzz fuzz
    stage vm-tests bash "$repo/harness/run-vm-tests.sh"
fi
printf '%s\n' "${summary[@]}" >&2
log "all stages passed"
