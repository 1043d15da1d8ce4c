//! `harness/bench-summary.sh`: the bench log's summary and its TARGET lines, from logs written
//! the way `benches/support` writes them (`RESULT <bench> <vmm> median=<x> <unit> n=<n> ...`).

use std::path::Path;
use std::process::Command;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/harness/bench-summary.sh");

fn summary(log: &str, mode: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bench.log");
    std::fs::write(&path, log).expect("writing the log");
    run(&path, mode)
}

fn run(log: &Path, mode: &str) -> (i32, String, String) {
    let out = Command::new("bash")
        .arg(SCRIPT)
        .arg(log)
        .arg(mode)
        .output()
        .expect("running bench-summary.sh");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn targets(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter(|l| l.starts_with("TARGET "))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

const BOOT: &str = "\
MACHINE nproc=2 cpu=\"QEMU TCG CPU version 2.5+\" kernel=6.1.0-57-cloud-amd64
noise that is not a result line
RESULT cold_boot_to_agent_ready hearth median=740.00 ms n=21 samples=700.0,740.0
RESULT cold_boot_to_agent_ready qemu median=1580.00 ms n=21 samples=1500.0,1580.0
";

const MEMORY: &str = "\
RESULT vmm_overhead_rss_per_vm hearth median=0.14 MiB n=3 samples=0.9,0.1,0.1
RESULT vmm_overhead_rss_per_vm qemu median=47.06 MiB n=1 samples=47.06
";

#[test]
fn harness_mode_checks_the_boot_ratio_and_the_overhead() {
    let (code, out, err) = summary(&format!("{BOOT}{MEMORY}"), "svm");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("MACHINE nproc=2"), "{out}");
    let row = out
        .lines()
        .find(|l| l.starts_with("cold_boot_to_agent_ready"))
        .unwrap_or_else(|| panic!("no boot row in {out}"));
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>(),
        [
            "cold_boot_to_agent_ready",
            "740.00",
            "1580.00",
            "0.47",
            "ms",
            "(21/21)"
        ]
    );
    assert_eq!(
        targets(&out),
        [
            "TARGET boot, hearth / QEMU (emulated harness) met (0.468 x; limit 0.5 x)",
            "TARGET VMM overhead per VM (RSS, in the harness) met (0.14 MiB; limit 2 MiB)",
        ]
    );
}

#[test]
fn a_ratio_over_the_limit_is_not_met() {
    let log = BOOT.replace("median=740.00", "median=820.05");
    let (code, out, _) = summary(&log, "svm");
    assert_eq!(code, 0);
    assert_eq!(
        targets(&out),
        ["TARGET boot, hearth / QEMU (emulated harness) NOT met (0.519 x; limit 0.5 x)"]
    );
}

#[test]
fn hardware_mode_checks_absolute_boot_time_and_overhead() {
    let log = format!("{BOOT}{MEMORY}").replace("median=740.00", "median=38.50");
    let (code, out, _) = summary(&log, "direct");
    assert_eq!(code, 0);
    assert_eq!(
        targets(&out),
        [
            "TARGET boot to agent ready (hardware) met (38.50 ms; limit 40 ms)",
            "TARGET VMM overhead per VM (hardware, RSS) met (0.14 MiB; limit 2 MiB)",
        ]
    );
    let slow = log.replace("median=38.50", "median=41.00");
    let (_, out, _) = summary(&slow, "direct");
    assert!(
        targets(&out)[0].contains("NOT met (41.00 ms; limit 40 ms)"),
        "{out}"
    );
}

#[test]
fn targets_without_numbers_are_not_claimed() {
    // Only hearth's boot (HEARTH_BENCH_QEMU=0): no ratio to check in the harness.
    let hearth_only: String = BOOT
        .lines()
        .filter(|l| !l.contains(" qemu "))
        .collect::<Vec<_>>()
        .join("\n");
    let (code, out, _) = summary(&hearth_only, "svm");
    assert_eq!(code, 0);
    assert!(targets(&out).is_empty(), "{out}");
    let (_, out, _) = summary(
        "RESULT exec_round_trip_true hearth median=28.00 ms n=5 samples=28\n",
        "direct",
    );
    assert!(targets(&out).is_empty(), "{out}");
}

#[test]
fn bad_arguments_are_refused() {
    let (code, _, err) = summary(BOOT, "hardware");
    assert_eq!(code, 2);
    assert!(err.contains("mode must be direct or svm"), "{err}");
    let (code, _, err) = run(Path::new("/nonexistent/bench.log"), "svm");
    assert_eq!(code, 2);
    assert!(err.contains("cannot read"), "{err}");
}
