#!/usr/bin/env bash
# Summarises a bench log (harness/run-benches.sh writes it) and checks the targets:
#   harness/bench-summary.sh LOGFILE MODE        MODE: direct (hardware KVM) or svm (the harness)
# Prints the MACHINE line, one row per bench (hearth and QEMU medians, the hearth/QEMU ratio,
# unit, sample counts), then one TARGET line per target the log has numbers for:
#   direct: boot to agent ready <= 40 ms, VMM overhead <= 2 MiB RSS per VM (hearth's medians);
#   svm:    hearth's boot median <= 0.5 x QEMU's (absolute times are emulator times there), and
#           the same 2 MiB overhead limit (memory accounting does not depend on the CPU).
# A TARGET line says "met" or "NOT met" with the measured value; a target without numbers in the
# log (its bench not run) has no line. Exit status 0 either way: the numbers are the result.
set -euo pipefail
[ $# = 2 ] || { echo "usage: $0 LOGFILE direct|svm" >&2; exit 2; }
log="$1" mode="$2"
case "$mode" in direct|svm) ;; *) echo "$0: mode must be direct or svm, not '$mode'" >&2; exit 2 ;; esac
[ -r "$log" ] || { echo "$0: cannot read $log" >&2; exit 2; }

echo "=== summary ($mode mode; medians; ratio = hearth / qemu) ==="
grep -E '^MACHINE ' "$log" || true
# RESULT <bench> <vmm> median=<x> <unit> n=<n> samples=...
awk -v mode="$mode" '/^RESULT /{
        split($4, m, "="); split($6, n, "=");
        key = $2; med[key, $3] = m[2]; cnt[key, $3] = n[2]; unit[key] = $5;
        if (!(key in seen)) { seen[key] = 1; order[++k] = key }
    }
    function target(what, value, limit, unit_) {
        printf "TARGET %-44s %s (%s %s; limit %s %s)\n", what,
            (value + 0 <= limit + 0 ? "met" : "NOT met"), value, unit_, limit, unit_;
    }
    END {
        printf "%-28s %14s %14s %8s %s\n", "bench", "hearth", "qemu", "ratio", "unit (n hearth/qemu)";
        for (i = 1; i <= k; i++) {
            b = order[i]; h = med[b, "hearth"]; q = med[b, "qemu"];
            r = (h != "" && q != "" && q + 0 != 0) ? sprintf("%.2f", h / q) : "-";
            printf "%-28s %14s %14s %8s %s (%s/%s)\n", b, (h == "" ? "-" : h), (q == "" ? "-" : q), r,
                unit[b], (cnt[b, "hearth"] == "" ? "-" : cnt[b, "hearth"]), (cnt[b, "qemu"] == "" ? "-" : cnt[b, "qemu"]);
        }
        boot_h = med["cold_boot_to_agent_ready", "hearth"]; boot_q = med["cold_boot_to_agent_ready", "qemu"];
        rss = med["vmm_overhead_rss_per_vm", "hearth"];
        if (mode == "direct") {
            if (boot_h != "") target("boot to agent ready (hardware)", boot_h, 40, unit["cold_boot_to_agent_ready"]);
        } else if (boot_h != "" && boot_q != "" && boot_q + 0 != 0) {
            target("boot, hearth / QEMU (emulated harness)", sprintf("%.3f", boot_h / boot_q), 0.5, "x");
        }
        # One overhead limit in both modes: memory accounting does not depend on the (emulated) CPU.
        if (rss != "")
            target(mode == "direct" ? "VMM overhead per VM (hardware, RSS)" : "VMM overhead per VM (RSS, in the harness)",
                rss, 2, unit["vmm_overhead_rss_per_vm"]);
    }' "$log"
grep -E '^GUEST_CLOCK ' "$log" || true # with HEARTH_BENCH_GUEST_TIMES=1
