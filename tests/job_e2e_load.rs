//! The job runner under load and trouble, end to end (same harness as `job_e2e.rs`; a separate
//! binary so that no other test's processes and fds disturb the counts): 100 queued jobs at
//! concurrency 2 leave no process, fd, workspace or socket behind, and a frontend that
//! disappears mid-job and comes back loses no log entry.
//!
//! Needs root (the local agent runs in a private mount namespace) and `git http-backend`.

mod job_common;

use hearth::queue::server::{self, ServerState};
use hearth::queue::store::{JobState, Store, StoreOptions};
use hearth::queue::worker;
use job_common::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

const MINUTE: Duration = Duration::from_secs(60);

/// The two tests run one at a time: the counts must not see the other test's processes.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// (pid, ppid, cmdline) of every process.
fn processes() -> Vec<(u32, u32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid …`; comm may contain spaces and parentheses.
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let ppid = after
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let cmdline = std::fs::read(e.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        out.push((pid, ppid, cmdline));
    }
    out
}

/// Our descendants, plus any process naming `marker` (agents that might have escaped).
fn our_processes(marker: &str) -> Vec<String> {
    let all = processes();
    let me = std::process::id();
    let mut ours = vec![me];
    let mut changed = true;
    while changed {
        changed = false;
        for (pid, ppid, _) in &all {
            if ours.contains(ppid) && !ours.contains(pid) {
                ours.push(*pid);
                changed = true;
            }
        }
    }
    all.into_iter()
        .filter(|(pid, _, cmd)| (*pid != me && ours.contains(pid)) || cmd.contains(marker))
        .map(|(pid, _, cmd)| format!("{pid} {cmd}"))
        .collect()
}

/// Sandbox cgroups (`<our cgroup>/hearth/executor-*`) that still exist, in every hierarchy.
fn our_cgroups() -> Vec<String> {
    let mut out = Vec::new();
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next(), parts.next());
        let (Some(controllers), Some(path)) = (controllers, path) else {
            continue;
        };
        let mount = match controllers {
            "" => "unified".to_string(),
            c => c.trim_start_matches("name=").to_string(),
        };
        for base in [
            format!("/sys/fs/cgroup/{mount}{path}/hearth"),
            format!("/sys/fs/cgroup{path}/hearth"),
        ] {
            for e in std::fs::read_dir(&base).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("executor-") {
                    out.push(format!("{base}/{name}"));
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_jobs_at_concurrency_two_leak_nothing() {
    let _serial = SERIAL.lock().await;
    let h = E2e::start().await;
    let marker = h.sock_dir.display().to_string();
    // Warm up (lazy statics, thread pools), then take the baseline.
    for _ in 0..2 {
        h.submit("small.json");
    }
    assert_eq!(h.work(2, 2, MINUTE).await.completed, 2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fds_before = fd_count();
    let procs_before = our_processes(&marker);

    let ids: Vec<i64> = (0..100).map(|_| h.submit("small.json")).collect();
    let started = Instant::now();
    let sum = h.work(100, 2, MINUTE).await;
    let took = started.elapsed();
    assert_eq!((sum.dequeued, sum.completed), (100, 100), "{sum:?}");
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
    let procs_after = our_processes(&marker);
    eprintln!(
        "100 jobs at concurrency 2 in {took:?}; fds {fds_before} -> {fds_after}; \
         processes {} -> {}",
        procs_before.len(),
        procs_after.len()
    );
    assert_eq!(procs_after, procs_before, "processes left behind");
    assert_eq!(
        our_cgroups(),
        Vec::<String>::new(),
        "sandbox cgroups left behind"
    );
    // Idle keep-alive connections of the (new) queue client may differ by a few; a per-job
    // leak would show as 100 or more.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frontend_outage_mid_job_loses_no_log_entry() {
    let _serial = SERIAL.lock().await;
    let h = E2e::start().await;
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
        worker_options(1, 1, MINUTE),
        None,
        std::future::pending(),
    );
    let outage = async {
        let deadline = Instant::now() + MINUTE;
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
