//! The job runner under load and trouble with VM isolation (tests/job_e2e_load.rs's cases,
//! `tests/job_common/load.rs`, with every job in a microVM): queued jobs at concurrency 2 leave no
//! VMM thread, fd or scratch directory behind, and a frontend that disappears mid-job and comes
//! back loses no log entry. Fewer jobs than in process mode (each boots a VM: 100 of them would
//! take half an hour in the emulated-SVM harness). Needs /dev/kvm with hardware virtualization,
//! the guest artifacts and git: run through harness/run-vm-tests.sh (never skips).

mod job_common;

use job_common::{load, vm};

/// Jobs per leak check: two VMs at a time, five rounds.
const JOBS: usize = 10;

/// What a VM sandbox could leave behind in this process: VMM threads (vCPUs, event loop) and
/// scratch directories (`$TMPDIR/hearth-<pid>.*`: workspace disk images).
fn vm_leftovers() -> Vec<String> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.starts_with("hearth-vcpu") || comm.starts_with("hearth-vmm") {
            out.push(format!("thread {}", comm.trim()));
        }
    }
    let prefix = format!("hearth-{}.", std::process::id());
    for e in std::fs::read_dir(std::env::temp_dir()).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) {
            out.push(format!("scratch {name}"));
        }
    }
    out.sort();
    out
}

#[test]
fn jobs_at_concurrency_two_leak_nothing() {
    vm::run_case("jobs_at_concurrency_two_leak_nothing", |h| {
        Box::pin(async move {
            assert_eq!(vm_leftovers(), Vec::<String>::new(), "before any job");
            load::jobs_leak_nothing(h, JOBS, vm_leftovers).await;
            assert_eq!(vm_leftovers(), Vec::<String>::new(), "after the jobs");
        })
    });
}

#[test]
fn frontend_outage_mid_job_loses_no_log_entry() {
    vm::run_owned_case(
        "frontend_outage_mid_job_loses_no_log_entry",
        load::frontend_outage_mid_job_loses_no_log_entry,
    );
}
