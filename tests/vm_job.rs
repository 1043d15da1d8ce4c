//! The job runner with VM isolation: the job corpus cases of tests/job_e2e.rs
//! (`tests/job_common/cases.rs`: clones over smart HTTP from `git http-backend`, shallow, sparse,
//! files, cli steps, redaction, a failing step, the runtime limit, cancels), each job in a
//! microVM booted by `sandbox::vm` with the workspace handed over as an ext4 disk at `/work`
//! sized by the disk-space setting; plus a check of that disk. One case at a time, each under a
//! whole-case deadline (diagnostics, then abort). Needs /dev/kvm with hardware virtualization,
//! the guest artifacts, and git + `git http-backend` in the machine running the test: run
//! through harness/run-vm-tests.sh (never skips: panics with the reason when something is
//! missing).

mod job_common;

use hearth::queue::store::JobState;
use job_common::expect::extras;
use job_common::{E2e, cases, vm};

macro_rules! vm_cases {
    ($($name:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            vm::run_case(stringify!($name), |h| Box::pin(cases::$name(h)));
        }
    )*};
}

vm_cases!(
    docker_steps_full_clone,
    cli_step_legacy_path_with_tags,
    shallow_clone_of_an_older_commit,
    sparse_checkout_fetches_only_the_patterns,
    files_are_written_with_mode_and_mtime,
    files_store_reference_is_fetched_from_the_frontend,
    files_store_content_is_fetched_with_the_job_token,
    redacted_values_never_leave_the_process,
    failing_step_stops_the_job_and_marks_it_errored,
    runtime_limit_kills_the_step_and_errors_the_job,
    cancel_is_acted_on_within_a_second_of_the_heartbeat,
    cancel_during_clone_kills_git_and_skips_the_sandbox,
);

/// The workspace disk: an ext4 file system of the disk-space size, mounted at `/work`.
#[test]
fn workspace_disk_is_sized_by_the_disk_space_setting() {
    vm::run_case("workspace_disk_is_sized_by_the_disk_space_setting", |h| {
        Box::pin(workspace_disk(h))
    });
}

async fn workspace_disk(h: &E2e) {
    let id = h.submit("vm-disk.json");
    let sum = h.work(1, 1, h.timing().job_limit).await;
    assert_eq!(sum.completed, 1, "{:?}", h.record(id));
    assert_eq!(h.record(id).state, JobState::Completed);
    let logs = h.normalized_logs(id);
    let script = job_common::expect::script(id, 0, "");
    let keys: Vec<&str> = logs.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "setup.fs.workspace",
            "setup.fs.extras",
            "setup.sandbox.start",
            "step.docker.disk",
            "teardown.sandbox.remove",
            "teardown.fs"
        ],
        "{logs:#?}"
    );
    // Everything but the step (checked below) is exact.
    let mut expected = vec![
        h.workspace_entry(),
        extras(&["input.json", &format!(".sourcegraph-executor/{script}")]),
        h.sandbox_start_entry(),
        logs[3].clone(),
    ];
    expected.extend(h.teardown_entries());
    assert_eq!(logs, expected);
    let step = &logs[3];
    assert_eq!(step.exit_code, Some(0), "{step:#?}");
    let out = step.stdout();
    assert_eq!(out.len(), 4, "{step:#?}");
    assert_eq!(out[..2], ["{\"steps\":[]}", "/work"]);
    assert_eq!(out[3], "hi from the vm");
    let disk_mib = h.setup.disk_mib;
    let blocks: u64 = out[2]
        .strip_prefix("blocks ")
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(|| panic!("df output {:?}", out[2]));
    // An ext4 file system on a disk_mib disk (minus its metadata).
    assert!(
        blocks > disk_mib * 1024 * 7 / 10 && blocks <= disk_mib * 1024,
        "{blocks} KiB for a {disk_mib} MiB disk"
    );
    h.assert_clean();
}
