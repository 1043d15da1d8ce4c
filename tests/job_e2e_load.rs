//! The job runner under load and trouble, end to end (same harness as `job_e2e.rs`; a separate
//! binary so that no other test's processes and fds disturb the counts): 100 queued jobs at
//! concurrency 2 leave no process, fd, workspace or socket behind, and a frontend that
//! disappears mid-job and comes back loses no log entry.
//!
//! Needs root (the local agent runs in a private mount namespace) and `git http-backend`.

mod job_common;

use job_common::*;

/// The two tests run one at a time: the counts must not see the other test's processes.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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
    load::jobs_leak_nothing(&h, 100, || {
        let mut v = our_processes(&marker);
        v.extend(our_cgroups());
        v
    })
    .await;
    assert_eq!(
        our_cgroups(),
        Vec::<String>::new(),
        "sandbox cgroups left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frontend_outage_mid_job_loses_no_log_entry() {
    let _serial = SERIAL.lock().await;
    load::frontend_outage_mid_job_loses_no_log_entry(E2e::start().await).await;
}
