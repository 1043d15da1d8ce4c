#!/usr/bin/env bash
# Runs a program N times in a row and marks each run (for looping a VM test binary inside one
# outer machine to measure how often a rare failure happens):
#   harness/repeat.sh N PROGRAM [ARGS...]
# Prints "=== run I HH:MM:SS" before and "=== run I status S" after each run, then a summary
# line "repeat: P passed, F failed"; exits 1 when any run failed. Needs bash, seq and date in
# the outer machine (--bin /usr/bin/bash --bin /usr/bin/seq --bin /usr/bin/date).
set -u
[ $# -ge 2 ] || { echo "usage: $0 N PROGRAM [ARGS...]" >&2; exit 2; }
n="$1"; shift
passed=0 failed=0
for i in $(seq 1 "$n"); do
    echo "=== run $i $(date +%T)"
    "$@" 2>&1
    rc=$?
    echo "=== run $i status $rc"
    if [ "$rc" = 0 ]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
done
echo "repeat: $passed passed, $failed failed"
[ "$failed" = 0 ]
