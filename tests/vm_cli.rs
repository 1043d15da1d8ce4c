//! The `hearth` binary booting real VMs: `hearth test-vm` (also cloning a repository served by
//! `git http-backend` into the VM's workspace), and `hearth exec` without `--agent` (exit codes,
//! output bytes, `--workspace` round trip). Needs /dev/kvm with hardware
//! virtualization and the guest artifacts: run through harness/run-vm-tests.sh, which passes
//! the `hearth` binary in as HEARTH_BIN.

#[path = "job_common/git_server.rs"]
#[allow(dead_code)]
mod git_server;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Generous: under the emulated-SVM harness one boot takes seconds to tens of seconds.
const LIMIT: Duration = Duration::from_secs(300);

fn hearth() -> PathBuf {
    match std::env::var_os("HEARTH_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_hearth")),
    }
}

/// Panics with the reason unless KVM and the kernel + rootfs are available.
fn require_vm() {
    for var in ["HEARTH_KERNEL", "HEARTH_ROOTFS"] {
        let Some(p) = std::env::var_os(var) else {
            panic!(
                "{var} is not set: run `eval \"$(harness/artifacts.sh)\"` or harness/run-vm-tests.sh"
            );
        };
        assert!(
            PathBuf::from(&p).is_file(),
            "{var}={} does not exist",
            PathBuf::from(p).display()
        );
    }
    if let Err(e) = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        panic!(
            "this test needs /dev/kvm with hardware virtualization (use harness/run-vm-tests.sh): {e}"
        );
    }
    let bin = hearth();
    assert!(
        bin.is_file(),
        "the hearth binary {} is missing",
        bin.display()
    );
}

/// Runs `hearth ARGS`, killing it after [`LIMIT`].
fn run(args: &[&str]) -> Output {
    run_env(args, &[])
}

/// Runs `hearth ARGS` with `env` added to the environment, killing it after [`LIMIT`].
fn run_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    run_with(args, env, |_| {})
}

/// [`run_env`], with `setup` applied to the command before it is spawned.
fn run_with(args: &[&str], env: &[(&str, &str)], setup: impl FnOnce(&mut Command)) -> Output {
    require_vm();
    let start = Instant::now();
    let mut cmd = Command::new(hearth());
    setup(&mut cmd);
    let mut child = cmd
        .args(args)
        .envs(env.iter().copied())
        .env("HEARTH_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning hearth");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        out.read_to_end(&mut v).map(|_| v)
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        err.read_to_end(&mut v).map(|_| v)
    });
    let status = loop {
        if let Some(s) = child.try_wait().expect("waiting for hearth") {
            break s;
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err_t.join().unwrap().unwrap_or_default();
            panic!(
                "hearth {args:?} still running after {LIMIT:?}; stderr:\n{}",
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = Output {
        status,
        stdout: out_t.join().unwrap().expect("reading stdout"),
        stderr: err_t.join().unwrap().expect("reading stderr"),
    };
    eprintln!(
        "hearth {args:?}: {status} in {:.1} s\n--- stderr ---\n{}",
        start.elapsed().as_secs_f64(),
        printable(&output.stderr)
    );
    output
}

/// Output as text for the log, control bytes escaped (a NUL makes log greps treat it as binary).
fn printable(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .chars()
        .flat_map(|c| match c {
            '\n' | '\t' => vec![c],
            c if c.is_control() => c.escape_default().collect(),
            c => vec![c],
        })
        .collect()
}

#[test]
fn test_vm_runs_uname_and_prints_boot_timings() {
    let out = run(&["test-vm"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("--- stdout ---\n{stdout}");
    assert!(out.status.success(), "hearth test-vm failed");
    assert!(
        stdout.lines().any(|l| l.starts_with("Linux ")),
        "no uname line in {stdout:?}"
    );
    for phase in [
        "boot phases:",
        "VM created→kernel entry",
        "kernel entry→agent ready",
        "agent ready (start → handshake):",
        "VM stopped:",
    ] {
        assert!(stdout.contains(phase), "{phase:?} missing from {stdout:?}");
    }
    // The phases carry numbers, not "-" placeholders.
    let phases = stdout
        .lines()
        .find(|l| l.starts_with("boot phases:"))
        .unwrap();
    assert!(
        !phases.contains(" -,") && phases.matches(" ms").count() >= 4,
        "{phases}"
    );
}

#[test]
fn test_vm_clones_the_repository_into_the_workspace() {
    require_vm();
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // git http-backend in this (outer) machine: run-vm-tests.sh passes git in for vm_cli.
    let git = rt.block_on(git_server::GitServer::start(&dir.path().join("git")));
    let out = run_env(
        &[
            "test-vm",
            "--repo",
            git_server::REPO,
            "--revision",
            &git.first,
            "--git-upstream",
            &git.base,
        ],
        &[
            ("EXECUTOR_FIRECRACKER_DISK_SPACE", "128M"),
            ("EXECUTOR_FRONTEND_PASSWORD", "test-vm-secret-0123456789"),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("--- stdout ---\n{stdout}");
    assert!(out.status.success(), "hearth test-vm --repo failed");
    for line in [
        format!(
            "cloned {} at {} into the workspace (128 MiB disk at /work)",
            git_server::REPO,
            git.first
        ),
        format!("guest /work HEAD: {}", git.first),
    ] {
        assert!(stdout.lines().any(|l| l == line), "{line:?} missing");
    }
    assert!(
        stdout.lines().any(|l| l.starts_with("Linux ")),
        "no uname line"
    );
    let seen = git.seen();
    assert!(!seen.is_empty(), "the git server saw no request");
    for r in &seen {
        assert_eq!(
            r.authorization.as_deref(),
            Some("token-executor test-vm-secret-0123456789"),
            "{r:?}"
        );
        assert_eq!(r.job_id.as_deref(), Some("0"), "{r:?}");
        assert_eq!(r.actor.as_deref(), Some("internal"), "{r:?}");
        assert!(
            r.executor.as_deref().is_some_and(|e| !e.is_empty()),
            "{r:?}"
        );
        assert!(
            r.path
                .starts_with(&format!("/.executors/git/{}/", git_server::REPO))
        );
    }
}

#[test]
fn exec_streams_output_and_exits_with_the_command_code() {
    // --kernel-arg reaches the guest's command line (after hearth's own parameters).
    let script = "echo hi; echo oops >&2; tr ' ' '\\n' </proc/cmdline | grep -x 'hearth.probe=7' >&2; exit 3";
    let out = run(&[
        "exec",
        "--kernel-arg",
        "hearth.probe=7",
        "--",
        "sh",
        "-c",
        script,
    ]);
    assert_eq!(out.stdout, b"hi\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("oops\n"), "stderr: {stderr}");
    assert!(stderr.contains("\nhearth.probe=7\n"), "stderr: {stderr}");
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn exec_network_gives_the_guest_eth0_its_address_route_and_resolver() {
    // hearth runs in a network namespace of its own, so its nftables table, the forwarding
    // switch and the tap stay off this machine's network (vm_net covers what gets through).
    let in_new_netns = |cmd: &mut Command| {
        // SAFETY: the closure runs in the forked child before exec and only calls unshare(2),
        // which is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::unshare(libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    };
    let script = "cat /sys/class/net/eth0/address; grep nameserver /etc/resolv.conf; \
                  grep -c . /proc/net/route; grep eth0 /proc/net/route";
    let out = run_with(
        &["exec", "--network", "--", "sh", "-c", script],
        &[("HEARTH_VM_DNS", "203.0.113.53")],
        in_new_netns,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.starts_with("02:68:74:00:00:00\n"), "{stdout}");
    assert!(stdout.contains("nameserver 203.0.113.53"), "{stdout}");
    // /proc/net/route: the default route (destination 0) via 10.213.0.1 (0100D50A, little
    // endian) and the /30 link.
    assert!(stdout.contains("eth0\t00000000\t0100D50A"), "{stdout}");
    assert!(stdout.contains("eth0\t0000D50A\t00000000"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("VM network link") && stderr.contains("hearth0"),
        "the VM network link is logged"
    );
}

#[test]
fn exec_passes_non_utf8_bytes_through_unchanged() {
    // Every byte value, on stdout and on stderr (bash: Debian's sh is dash).
    let script = "for s in 1 2; do printf \"$(printf '\\\\%03o' $(seq 0 255))\" >&$s; done";
    let out = run(&["exec", "--", "bash", "-c", script]);
    assert!(out.status.success());
    let all: Vec<u8> = (0..=255u8).collect();
    assert_eq!(out.stdout, all);
    assert!(
        out.stderr.windows(256).any(|w| w == all.as_slice()),
        "stderr lacks the 256 bytes"
    );
}

#[test]
fn exec_workspace_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    std::fs::create_dir_all(ws.join("sub")).unwrap();
    std::fs::write(ws.join("in.txt"), b"from the host\n").unwrap();
    std::fs::write(ws.join("gone.txt"), b"delete me\n").unwrap();
    let blob: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(ws.join("sub/blob.bin"), &blob).unwrap();
    let script = "pwd; cat in.txt; wc -c < sub/blob.bin; echo made in the guest > sub/new.txt; \
                  printf '\\377\\000' > bin.dat; rm gone.txt; mkdir -p deep/er && echo x > deep/er/f";
    let ws_arg = ws.to_str().unwrap();
    let out = run(&["exec", "--workspace", ws_arg, "--", "bash", "-c", script]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["/work", "from", "the", "host", "200000"]
    );
    assert_eq!(
        std::fs::read(ws.join("sub/new.txt")).unwrap(),
        b"made in the guest\n"
    );
    assert_eq!(std::fs::read(ws.join("bin.dat")).unwrap(), [0xff, 0]);
    assert_eq!(std::fs::read(ws.join("deep/er/f")).unwrap(), b"x\n");
    assert_eq!(std::fs::read(ws.join("sub/blob.bin")).unwrap(), blob);
    assert_eq!(
        std::fs::read(ws.join("in.txt")).unwrap(),
        b"from the host\n"
    );
    assert!(!ws.join("gone.txt").exists(), "deleted in the guest");
    assert!(!ws.join("lost+found").exists(), "mkfs artefact came back");
    // The command's failure still brings the workspace back and keeps its code.
    let out = run(&[
        "exec",
        "--workspace",
        ws_arg,
        "--",
        "sh",
        "-c",
        "echo again > in.txt; exit 9",
    ]);
    assert_eq!(out.status.code(), Some(9));
    assert_eq!(std::fs::read(ws.join("in.txt")).unwrap(), b"again\n");
}
