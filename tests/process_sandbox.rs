//! Process isolation on the host (needs root: namespaces and cgroups; fails, never skips,
//! without them): the workspace at /work, isolated hostname, loopback-only network, the agent as
//! PID 1, the memory limit, nothing left after teardown, reconcile of orphans.

use hearth::sandbox::process::{ProcessIsolation, ProcessOptions};
use hearth::sandbox::{Isolation, IsolationKind, Sandbox, SandboxSpec};
use hearth_agent::proto::{ExecSpec, ExitStatus};
use std::path::PathBuf;
use std::time::Duration;

fn isolation() -> ProcessIsolation {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "process sandbox tests need root (user/PID/mount namespaces and cgroups)"
    );
    ProcessIsolation::new(ProcessOptions {
        agent_program: PathBuf::from(env!("CARGO_BIN_EXE_hearth")),
        ..ProcessOptions::default()
    })
    .expect("process isolation unavailable on this host")
}

fn spec(name: &str, workspace: Option<PathBuf>, memory_mib: u64) -> SandboxSpec {
    SandboxSpec {
        name: name.into(),
        cpus: 1,
        memory_mib,
        workspace,
        workspace_disk_mib: 0,
        sync_back: false,
        network: false,
        ready_timeout: Duration::from_secs(20),
    }
}

async fn sh(sb: &dyn Sandbox, script: &str) -> (ExitStatus, String, String) {
    let out = sb
        .client()
        .exec_collect(ExecSpec::script(script))
        .await
        .expect("exec through the agent");
    (
        out.info.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn pid_alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[tokio::test]
async fn workspace_hostname_network_pid1_and_clean_teardown() {
    let iso = isolation();
    assert_eq!(iso.kind(), IsolationKind::Process);
    let ws = tempfile::tempdir().unwrap();
    std::fs::write(ws.path().join("hello.txt"), "from the host\n").unwrap();
    let sb = iso
        .start(&spec("ptest-basic", Some(ws.path().to_path_buf()), 256))
        .await
        .expect("start");
    let (status, out, err) = sh(
        sb.as_ref(),
        "set -e\n\
         echo cwd=$(pwd)\n\
         cat hello.txt\n\
         echo written > made-inside.txt\n\
         echo host=$(cat /proc/sys/kernel/hostname)\n\
         echo pid1=$(tr '\\0' ' ' < /proc/1/cmdline)\n\
         echo nprocs=$(ls /proc | grep -c '^[0-9]')\n\
         echo ifaces=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort | tr '\\n' ,)\n\
         echo lo=$(grep -c . /proc/net/if_inet6 2>/dev/null || echo 0)\n\
         echo uid=$(id -u)\n\
         ls /root /home 2>&1 | head -3 || true\n\
         test ! -e /work/coord && echo no-host-work\n",
    )
    .await;
    assert_eq!(status, ExitStatus::Code(0), "stdout: {out}\nstderr: {err}");
    assert!(out.contains("cwd=/work\n"), "{out}");
    assert!(out.contains("from the host\n"), "{out}");
    let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let inner = out
        .lines()
        .find_map(|l| l.strip_prefix("host="))
        .unwrap()
        .to_string();
    assert!(inner.starts_with("hearth-"), "{out}");
    assert_ne!(inner, host_name.trim());
    assert!(
        out.contains("pid1=") && out.contains(" agent --listen unix:/run/hearth/agent.sock"),
        "PID 1 is not the agent: {out}"
    );
    assert!(
        out.contains("ifaces=lo,\n"),
        "network is not loopback-only: {out}"
    );
    assert!(out.contains("uid=0\n"), "{out}");
    assert!(out.contains("no-host-work"), "host /work visible: {out}");
    // The write reached the host workspace, owned by the host's root already while the sandbox
    // runs: the workspace is an id-mapped mount (ext4/tmpfs here), not chowned.
    assert_eq!(
        std::fs::read_to_string(ws.path().join("made-inside.txt")).unwrap(),
        "written\n"
    );
    {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(ws.path().join("made-inside.txt")).unwrap();
        assert_eq!((m.uid(), m.gid()), (0, 0), "workspace not id-mapped");
        assert_eq!(std::fs::metadata(ws.path()).unwrap().uid(), 0);
    }
    // No interface but lo, no routes.
    let (st, out, err) = sh(
        sb.as_ref(),
        "cat /proc/net/route; echo; cat /sys/class/net/lo/operstate 2>/dev/null; \
         grep -c . /proc/net/route",
    )
    .await;
    assert_eq!(st, ExitStatus::Code(0), "{out} {err}");
    assert!(
        out.trim_end().ends_with('1'),
        "routes besides the header: {out}"
    );
    assert!(sb.log_path().unwrap().exists(), "no agent log");
    // No CAP_SYS_ADMIN: mounting fails even as root of the user namespace.
    let (st, out, _) = sh(
        sb.as_ref(),
        "grep CapBnd /proc/self/status; mount -t tmpfs none /tmp 2>/dev/null && echo mounted || echo refused",
    )
    .await;
    assert_eq!(st, ExitStatus::Code(0));
    assert!(out.contains("refused"), "{out}");
    assert!(out.contains("CapBnd:\t00000000a80425fb"), "{out}");
    sb.teardown().await.expect("teardown");
    // The workspace is back to its owner (root) with the sandbox's file in it.
    let meta = std::fs::metadata(ws.path().join("made-inside.txt")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(meta.uid(), 0, "workspace ownership not restored");
}

#[tokio::test]
async fn teardown_leaves_nothing() {
    let iso = isolation();
    let sb = iso
        .start(&spec("ptest-teardown", None, 128))
        .await
        .expect("start");
    // A background process that would outlive a careless teardown.
    let (st, out, err) = sh(
        sb.as_ref(),
        "setsid sleep 1000 </dev/null >/dev/null 2>&1 & sleep 0.3; echo started",
    )
    .await;
    assert_eq!(st, ExitStatus::Code(0), "{out} {err}");
    let log = sb.log_path().unwrap();
    let dir = log.parent().unwrap().to_path_buf();
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    let cgroup_dirs = cgroup_dirs_named(&name);
    assert!(!cgroup_dirs.is_empty(), "no cgroup dir for {name}");
    // The limits from the spec (1 vCPU, 128 MiB), v2 or v1 file names.
    let read = |file: &str| {
        cgroup_dirs
            .iter()
            .find_map(|d| std::fs::read_to_string(d.join(file)).ok())
            .map(|s| s.trim().to_string())
    };
    let mem = read("memory.max").or_else(|| read("memory.limit_in_bytes"));
    assert_eq!(mem.as_deref(), Some("134217728"));
    let cpu = read("cpu.max").or_else(|| read("cpu.cfs_quota_us"));
    assert!(
        matches!(cpu.as_deref(), Some("100000 100000") | Some("100000")),
        "{cpu:?}"
    );
    let mut pids = cgroup_pids(&cgroup_dirs);
    for _ in 0..100 {
        if pids.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        pids = cgroup_pids(&cgroup_dirs);
    }
    assert!(
        pids.len() >= 3,
        "expected C1, the agent and sleep in the cgroup: {pids:?}"
    );
    let t = std::time::Instant::now();
    sb.teardown().await.expect("teardown");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "teardown took {:?}",
        t.elapsed()
    );
    for d in &cgroup_dirs {
        assert!(!d.exists(), "cgroup {} left behind", d.display());
    }
    assert!(!dir.exists(), "runtime dir {} left behind", dir.display());
    for p in pids {
        assert!(!pid_alive(p), "process {p} survived teardown");
    }
}

#[tokio::test]
async fn memory_limit_kills_a_process_over_it() {
    let iso = isolation();
    let sb = iso
        .start(&spec("ptest-oom", None, 64))
        .await
        .expect("start");
    // tail buffers an endless line: it grows until memory.max stops it.
    let (st, out, err) = sh(
        sb.as_ref(),
        "head -c 1000M /dev/zero | tail; echo status=$?",
    )
    .await;
    assert_eq!(st, ExitStatus::Code(0), "{out} {err}");
    assert!(
        out.contains("status=137"),
        "the process over the limit was not SIGKILLed: {out} {err}"
    );
    // The agent survived the OOM kill.
    let (st, out, _) = sh(sb.as_ref(), "echo alive").await;
    assert_eq!((st, out.as_str()), (ExitStatus::Code(0), "alive\n"));
    sb.teardown().await.expect("teardown");
}

#[tokio::test]
async fn reconcile_removes_orphans_of_dead_owners_only() {
    let iso = isolation();
    let live = iso
        .start(&spec("ptest-live", None, 128))
        .await
        .expect("start");
    // An orphan: a cgroup and runtime dir named for a dead owner, with a process in it.
    let name = "ptest-orphan-deadbeef-999999999-1";
    let dirs = cgroup_dirs_named(&live_name(live.as_ref()))
        .iter()
        .map(|d| d.parent().unwrap().join(name))
        .collect::<Vec<_>>();
    let mut child = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .unwrap();
    for d in &dirs {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("cgroup.procs"), child.id().to_string()).unwrap();
    }
    let rundir = iso.options().runtime_dir.join(name);
    std::fs::create_dir_all(rundir.join("sock")).unwrap();
    let report = iso.reconcile();
    // (Another hearth process on this host may have reconciled it first; either way it is gone.)
    let _ = &report;
    assert!(
        !report
            .removed
            .iter()
            .any(|n| n == &live_name(live.as_ref())),
        "a live sandbox was reconciled away"
    );
    for d in &dirs {
        assert!(!d.exists(), "{} not removed", d.display());
    }
    assert!(!rundir.exists());
    let status = child.wait().unwrap();
    assert!(!status.success(), "the orphan's process was not killed");
    // The live sandbox still works.
    let (st, out, _) = sh(live.as_ref(), "echo ok").await;
    assert_eq!((st, out.as_str()), (ExitStatus::Code(0), "ok\n"));
    live.teardown().await.unwrap();
}

fn live_name(sb: &dyn Sandbox) -> String {
    sb.log_path()
        .unwrap()
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// Every `…/hearth/<name>` cgroup directory on this host.
fn cgroup_dirs_named(name: &str) -> Vec<PathBuf> {
    let out = std::process::Command::new("find")
        .args([
            "/sys/fs/cgroup",
            "-maxdepth",
            "6",
            "-type",
            "d",
            "-name",
            name,
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(PathBuf::from)
        .filter(|p| p.parent().is_some_and(|d| d.ends_with("hearth")))
        .collect()
}

fn cgroup_pids(dirs: &[PathBuf]) -> Vec<i32> {
    let mut pids = Vec::new();
    for d in dirs {
        for p in std::fs::read_to_string(d.join("cgroup.procs"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
        {
            if !pids.contains(&p) {
                pids.push(p);
            }
        }
    }
    pids
}

#[tokio::test]
async fn host_loopback_unreachable_and_pids_limited() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "needs root");
    let iso = ProcessIsolation::new(ProcessOptions {
        agent_program: PathBuf::from(env!("CARGO_BIN_EXE_hearth")),
        pids_max: 32,
        ..ProcessOptions::default()
    })
    .expect("process isolation unavailable on this host");
    // A service on the host's loopback: the sandbox's lo is another one.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let sb = iso
        .start(&spec("ptest-limits", None, 128))
        .await
        .expect("start");
    let (st, out, err) = sh(
        sb.as_ref(),
        &format!(
            "if (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null; then echo reached; \
             else echo unreachable; fi"
        ),
    )
    .await;
    assert_eq!(st, ExitStatus::Code(0), "{out} {err}");
    assert_eq!(out, "unreachable\n", "host loopback reachable: {err}");
    // pids.max: 64 background sleeps cannot all start (dash gives up on a failed fork at once,
    // where bash retries with back-off).
    let out = sb
        .client()
        .exec_collect(ExecSpec::argv([
            "/bin/sh",
            "-c",
            "for i in $(seq 64); do sleep 30 & done 2>/dev/null; sleep 0.2; exit 0",
        ]))
        .await
        .expect("exec");
    let _ = out;
    let dirs = cgroup_dirs_named(&live_name(sb.as_ref()));
    let pids_dir = dirs
        .iter()
        .find(|d| d.join("pids.max").exists())
        .expect("no pids cgroup");
    assert_eq!(
        std::fs::read_to_string(pids_dir.join("pids.max"))
            .unwrap()
            .trim(),
        "32"
    );
    let current: usize = std::fs::read_to_string(pids_dir.join("pids.current"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(current <= 32, "pids.max not enforced: {current}");
    let events = std::fs::read_to_string(pids_dir.join("pids.events")).unwrap();
    assert!(
        !events.contains("max 0"),
        "no fork was refused by pids.max: {events}"
    );
    sb.teardown().await.expect("teardown");
}
