//! The job runner with VM isolation: jobs from the embedded queue run in microVMs booted by
//! `sandbox::vm`, the workspace handed over as an ext4 disk at `/work` sized by the disk-space
//! setting. Jobs without a repository (the outer machine of the VM harness has no git). Needs
//! /dev/kvm with hardware virtualization and the guest artifacts: run through
//! harness/run-vm-tests.sh (never skips: panics with the reason when something is missing).

use hearth::config::{Config, ConfigFlags};
use hearth::job::logs::SinkOptions;
use hearth::job::runner::{JobRunner, RunnerOptions};
use hearth::queue::embedded;
use hearth::queue::store::{JobState, StoreOptions};
use hearth::queue::types::Job;
use hearth::queue::worker::{self, WorkerOptions};
use hearth::sandbox::artifacts::GuestArtifacts;
use hearth::sandbox::vm::VmIsolation;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

const DISK_MIB: u64 = 128;

fn artifacts() -> GuestArtifacts {
    let var = |name: &str| {
        let p = std::env::var_os(name).unwrap_or_else(|| {
            panic!("{name} is not set: run through harness/run-vm-tests.sh (or eval \"$(harness/artifacts.sh)\")")
        });
        let p = PathBuf::from(p);
        assert!(p.is_file(), "{name}={} does not exist", p.display());
        p
    };
    let a = GuestArtifacts {
        kernel: var("HEARTH_KERNEL"),
        rootfs: var("HEARTH_ROOTFS"),
    };
    if let Err(e) = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        panic!(
            "this test needs /dev/kvm with hardware virtualization (use harness/run-vm-tests.sh): {e}"
        );
    }
    a
}

fn job(json: &str) -> Job {
    serde_json::from_str(json).unwrap()
}

fn stdout(out: &str) -> Vec<&str> {
    out.lines()
        .filter_map(|l| l.strip_prefix("stdout: "))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_in_vms_with_the_workspace_disk() {
    let artifacts = artifacts();
    let dir = tempfile::tempdir().unwrap();
    let flags = ConfigFlags {
        db: Some(dir.path().join("queue.sqlite")),
        ..Default::default()
    };
    let config = Config::load(&|_| None, &flags).unwrap();
    let q = embedded::serve(&config, "127.0.0.1:0", StoreOptions::default())
        .await
        .unwrap();
    let disk = q
        .store
        .submit("batches", &job(include_str!("jobs/e2e/vm-disk.json")))
        .unwrap();
    let failing = q
        .store
        .submit("batches", &job(include_str!("jobs/e2e/failing-step.json")))
        .unwrap();
    let workspace_root = dir.path().join("workspaces");
    let runner = JobRunner::new(
        Arc::new(VmIsolation::new(artifacts)),
        RunnerOptions {
            workspace_root: workspace_root.clone(),
            cpus: 1,
            memory_mib: 256,
            disk_mib: DISK_MIB,
            git_upstream: None,
            network: false,
            ready_timeout: Duration::from_secs(240),
            keep_workspaces: false,
            sandbox_prefix: "executor".into(),
            log: SinkOptions::default(),
            flush_timeout: Duration::from_secs(30),
        },
        None,
    );
    let client = q.client(&config, None).unwrap();
    client.ping().await.unwrap();
    let opts = WorkerOptions {
        max_jobs: 1,
        poll_interval: Duration::from_millis(50),
        heartbeat_interval: Duration::from_secs(1),
        max_runtime_per_job: Duration::from_secs(600),
        teardown_grace: Duration::from_secs(60),
        num_total_jobs: 2,
        max_active_time: Duration::ZERO,
    };
    let sum = worker::run(client, Arc::new(runner), opts, None, std::future::pending()).await;
    assert_eq!((sum.completed, sum.errored), (1, 1), "{sum:?}");

    let rec = q.store.get(disk).unwrap().unwrap();
    assert_eq!(rec.state, JobState::Completed, "{rec:?}");
    let logs = q.store.logs(disk).unwrap();
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
    assert!(logs.iter().all(|e| e.exit_code == Some(0)), "{logs:#?}");
    assert!(
        logs[2].out.starts_with("Starting vm sandbox executor-"),
        "{}",
        logs[2].out
    );
    let out = stdout(&logs[3].out);
    assert_eq!(out.len(), 4, "{}", logs[3].out);
    assert_eq!(out[..2], ["{\"steps\":[]}", "/work"]);
    assert_eq!(out[3], "hi from the vm");
    let blocks: u64 = out[2]
        .strip_prefix("blocks ")
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(|| panic!("df output {:?}", out[2]));
    // An ext4 file system on a DISK_MIB disk (minus its metadata).
    assert!(
        blocks > DISK_MIB * 1024 * 7 / 10 && blocks <= DISK_MIB * 1024,
        "{blocks} KiB for a {DISK_MIB} MiB disk"
    );
    eprintln!(
        "VM job entries: {:#?}",
        logs.iter()
            .map(|e| (&e.key, e.duration_ms))
            .collect::<Vec<_>>()
    );

    let rec = q.store.get(failing).unwrap().unwrap();
    assert_eq!(rec.state, JobState::Failed);
    assert_eq!(
        rec.failure_message.as_deref(),
        Some("running command \"step.docker.fails\": command failed with exit code 3")
    );
    let logs = q.store.logs(failing).unwrap();
    let step = logs.iter().find(|e| e.key == "step.docker.fails").unwrap();
    assert_eq!(
        (stdout(&step.out), step.exit_code),
        (vec!["before"], Some(3))
    );
    assert!(!logs.iter().any(|e| e.key == "step.docker.never"));

    assert_eq!(
        std::fs::read_dir(&workspace_root).unwrap().count(),
        0,
        "workspaces left behind"
    );
    q.server.shutdown().await;
}
