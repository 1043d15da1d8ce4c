//! The job runner under load and trouble, shared by tests/job_e2e_load.rs (process sandboxes)
//! and tests/vm_job_load.rs (microVMs): many queued jobs leave nothing behind, and a frontend
//! that disappears mid-job and comes back loses no log entry.

use super::*;
use hearth::queue::server::{self, ServerState};
use hearth::queue::store::{JobState, Store, StoreOptions};
use hearth::queue::worker;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Runs `n` small jobs at concurrency 2 after a warm-up of two. `leftovers` lists what a
/// sandbox could leave behind (processes, cgroups, VMM threads, scratch directories): the list
/// must be the same after the jobs as before, and the fd count may not grow by more than 4.
pub async fn jobs_leak_nothing(h: &E2e, n: usize, leftovers: impl Fn() -> Vec<String>) {
    // Warm up (lazy statics, thread pools), then take the baseline.
    for _ in 0..2 {
        h.submit("small.json");
    }
    assert_eq!(h.work(2, 2, h.timing().job_limit).await.completed, 2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fds_before = fd_count();
    let before = leftovers();

    let ids: Vec<i64> = (0..n).map(|_| h.submit("small.json")).collect();
    let started = Instant::now();
    let sum = h.work(n as u64, 2, h.timing().job_limit).await;
    let took = started.elapsed();
    if (sum.dequeued, sum.completed) != (n as u64, n as u64) {
        // Say why: each unfinished job's record and its last log entries.
        let why: Vec<String> = ids
            .iter()
            .map(|id| (id, h.record(*id)))
            .filter(|(_, rec)| rec.state != JobState::Completed)
            .map(|(id, rec)| {
                let logs = h.logs(*id);
                let tail = &logs[logs.len().saturating_sub(3)..];
                format!("job {id}: {rec:?}\n  last log entries: {tail:#?}")
            })
            .collect();
        panic!("{sum:?}: not every job completed\n{}", why.join("\n"));
    }
    for id in &ids {
        let rec = h.record(*id);
        assert_eq!(rec.state, JobState::Completed, "{rec:?}");
        let logs = h.normalized_logs(*id);
        let step = logs.iter().find(|e| e.key == "step.docker.run").unwrap();
        assert_eq!(step.stdout(), ["hello again", "{}"], "{step:?}");
        assert_eq!(logs.last().unwrap().key, "teardown.fs");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fds_after = fd_count();
    let after = leftovers();
    eprintln!(
        "{n} jobs at concurrency 2 in {took:?}; fds {fds_before} -> {fds_after}; \
         leftovers {} -> {}",
        before.len(),
        after.len()
    );
    assert_eq!(after, before, "left behind");
    // Idle keep-alive connections of the (new) queue client may differ by a few; a per-job
    // leak would show as n or more.
    assert!(
        fds_after <= fds_before + 4,
        "fds {fds_before} -> {fds_after}: {:?}",
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .map(|e| std::fs::read_link(e.path()).unwrap_or_default())
            .collect::<Vec<_>>()
    );
    h.assert_clean();
}

/// A frontend that goes away while a job streams output and comes back (same address, same
/// database) gets every log entry.
pub async fn frontend_outage_mid_job_loses_no_log_entry(h: E2e) {
    let limit = h.timing().job_limit;
    let id = h.submit("chatty.json");
    let client = h.client().await;
    let runner = Arc::new(h.runner());
    let store = h.queue.store.clone();
    let db = h.dir.path().join("queue.sqlite");
    let secret = h.config.frontend_password.clone();
    let workspace_root = h.workspace_root.clone();
    let server = h.queue.server;
    let addr = server.addr();

    let work = worker::run(
        client,
        runner,
        worker_options(1, 1, limit),
        None,
        std::future::pending(),
    );
    let outage = async {
        let deadline = Instant::now() + limit;
        while !store
            .logs(id)
            .unwrap()
            .iter()
            .any(|e| e.out.contains("stdout: line 3\n"))
        {
            assert!(Instant::now() < deadline, "the step never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server.shutdown().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let store2 = Store::open(&db, StoreOptions::default()).unwrap();
        let server2 = server::serve(
            &addr.to_string(),
            ServerState {
                store: store2.clone(),
                secret: Some(secret),
            },
        )
        .await
        .unwrap();
        (store2, server2)
    };
    let (sum, (store2, server2)) = tokio::join!(work, outage);
    assert_eq!(sum.completed, 1, "{:?}", store2.get(id));
    assert_eq!(store2.get(id).unwrap().unwrap().state, JobState::Completed);
    let logs = store2.logs(id).unwrap();
    let keys: Vec<&str> = logs.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "setup.fs.workspace",
            "setup.git.init",
            "setup.git.add-remote",
            "setup.git.disable-gc",
            "setup.git.fetch",
            "setup.git.checkout",
            "setup.git.set-remote",
            "setup.fs.extras",
            "setup.sandbox.start",
            "step.docker.chatty",
            "teardown.sandbox.remove",
            "teardown.fs"
        ]
    );
    assert!(
        logs.iter()
            .all(|e| e.exit_code == Some(0) && e.duration_ms.is_some())
    );
    let step = &logs[9];
    let stdout: Vec<&str> = step
        .out
        .lines()
        .filter_map(|l| l.strip_prefix("stdout: "))
        .collect();
    let expected: Vec<String> = (1..=40).map(|i| format!("line {i}")).collect();
    assert_eq!(stdout, expected);
    assert_eq!(
        normalize_out(&logs[11].out, &workspace_root),
        "Removed $WS\n"
    );
    server2.shutdown().await;
}
