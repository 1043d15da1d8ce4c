//! `hearth test-vm --repo R --revision REV` on the host, up to the point where a VM would boot
//! (hearth exits 125 on its own failures, 2 on usage errors):
//! argument and configuration checks, a clone that fails (reported with git's output, nothing
//! booted, workspace removed), and a clone that succeeds through the job runner's credentials
//! proxy (the boot then fails on purpose: the guest artifacts are dummies). The VM half is
//! tests/vm_cli.rs. Needs `git` with `git http-backend`.

#[path = "job_common/git_server.rs"]
#[allow(dead_code)]
mod git_server;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(120);
const PASSWORD: &str = "test-vm-secret-0123456789";

/// Runs `hearth test-vm ARGS` with only `env` (plus PATH) in its environment, killing it after
/// [`LIMIT`].
fn test_vm(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hearth"));
    cmd.arg("test-vm")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("NO_COLOR", "1")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawning hearth");
    let pid = child.id();
    let started = Instant::now();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = done.clone();
    let killer = std::thread::spawn(move || {
        while started.elapsed() < LIMIT {
            if flag.load(std::sync::atomic::Ordering::SeqCst) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: kill takes plain integers; the pid is our child's, not yet reaped (we only
        // reap it through wait_with_output below, which cannot return before it exits).
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        true
    });
    let out = child.wait_with_output().expect("waiting for hearth");
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let killed = killer.join().unwrap();
    eprintln!(
        "hearth test-vm {args:?}: {} in {:.1} s\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status,
        started.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!killed, "hearth test-vm {args:?} ran over {LIMIT:?}");
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Dummy guest artifacts (existing files that are no kernel or file system).
fn dummy_artifacts(dir: &Path) -> (String, String) {
    let (k, r) = (dir.join("vmlinux"), dir.join("rootfs.ext4"));
    std::fs::write(&k, b"not a kernel").unwrap();
    std::fs::write(&r, b"not a file system").unwrap();
    (k.display().to_string(), r.display().to_string())
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path().display().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn repo_and_revision_go_together() {
    let out = test_vm(&["--repo", "github.com/a/b"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--revision <REV>"));
    let out = test_vm(&["--revision", "main"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--repo <NAME>"));
}

#[test]
fn repo_needs_a_git_server_and_a_valid_configuration() {
    // Checked before anything else: no guest artifacts are needed to get these errors.
    let out = test_vm(&["--repo", "github.com/a/b", "--revision", "main"], &[]);
    assert_eq!(out.status.code(), Some(125));
    let err = text(&out.stderr);
    assert!(err.contains("--repo needs a git server"), "{err}");
    assert!(!text(&out.stdout).contains("booting"));

    let out = test_vm(
        &["--repo", "r", "--revision", "main"],
        &[
            ("HEARTH_GIT_UPSTREAM", "http://127.0.0.1:9"),
            ("EXECUTOR_FIRECRACKER_DISK_SPACE", "lots"),
        ],
    );
    assert_eq!(out.status.code(), Some(125));
    let err = text(&out.stderr);
    assert!(
        err.contains("invalid disk size provided for EXECUTOR_FIRECRACKER_DISK_SPACE"),
        "{err}"
    );

    let out = test_vm(
        &["--repo", "r", "--revision=--upload-pack=touch /tmp/x"],
        &[("HEARTH_GIT_UPSTREAM", "http://127.0.0.1:9")],
    );
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains("is not a revision"));
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_failing_clone_is_reported_with_gits_output_and_nothing_boots() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let git = rt.block_on(git_server::GitServer::start(&dir.path().join("git")));
    let (kernel, rootfs) = dummy_artifacts(dir.path());
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let out = test_vm(
        &[
            "--repo",
            "github.com/hearth/missing",
            "--revision",
            &git.head,
            "--git-upstream",
            &git.base,
        ],
        &[
            ("HEARTH_KERNEL", &kernel),
            ("HEARTH_ROOTFS", &rootfs),
            ("TMPDIR", tmp.to_str().unwrap()),
        ],
    );
    assert_eq!(out.status.code(), Some(125));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "cloning github.com/hearth/missing at {} from {}: failed setup.git.fetch: command \
             failed with exit code 128",
            git.head, git.base
        )),
        "{err}"
    );
    // git's own words come through, and the steps before the fetch ran.
    assert!(err.contains("hearth: setup.git.init: git -C "), "{err}");
    assert!(
        err.contains("hearth: setup.git.fetch exited with 128"),
        "{err}"
    );
    assert!(err.contains("    stderr: "), "{err}");
    assert!(!text(&out.stdout).contains("booting"), "a VM was booted");
    assert_eq!(
        entries(&tmp.join("hearth-workspaces")),
        Vec::<String>::new(),
        "workspace left behind"
    );
}

#[test]
fn a_successful_clone_goes_through_the_proxy_with_the_executor_secret() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let git = rt.block_on(git_server::GitServer::start(&dir.path().join("git")));
    let (kernel, rootfs) = dummy_artifacts(dir.path());
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let out = test_vm(
        &["--repo", git_server::REPO, "--revision", &git.first],
        &[
            ("HEARTH_KERNEL", &kernel),
            ("HEARTH_ROOTFS", &rootfs),
            ("HEARTH_GIT_UPSTREAM", &git.base),
            ("EXECUTOR_FRONTEND_PASSWORD", PASSWORD),
            ("EXECUTOR_FIRECRACKER_DISK_SPACE", "256M"),
            ("TMPDIR", tmp.to_str().unwrap()),
        ],
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "cloned {} at {} into the workspace (256 MiB disk at /work)",
            git_server::REPO,
            git.first
        )),
        "{stdout}"
    );
    let err = text(&out.stderr);
    for key in [
        "init",
        "add-remote",
        "disable-gc",
        "fetch",
        "checkout",
        "set-remote",
    ] {
        assert!(
            err.contains(&format!("hearth: setup.git.{key} exited with 0")),
            "{err}"
        );
    }
    // The dummy kernel cannot boot: a clear failure, and the workspace is gone.
    assert_eq!(out.status.code(), Some(125));
    assert!(err.contains("booting the VM"), "{err}");
    assert_eq!(
        entries(&tmp.join("hearth-workspaces")),
        Vec::<String>::new(),
        "workspace left behind"
    );
    let seen = git.seen();
    assert!(!seen.is_empty(), "the git server saw no request");
    for r in &seen {
        assert!(
            r.path
                .starts_with(&format!("/.executors/git/{}/", git_server::REPO)),
            "{r:?}"
        );
        assert_eq!(
            r.authorization.as_deref(),
            Some(format!("token-executor {PASSWORD}").as_str())
        );
        assert_eq!(r.job_id.as_deref(), Some("0"));
        assert!(
            r.executor.as_deref().is_some_and(|e| !e.is_empty()),
            "{r:?}"
        );
        assert_eq!(r.actor.as_deref(), Some("internal"));
    }
    // The secret reaches neither git's command lines nor the output.
    assert!(!err.contains(PASSWORD) && !stdout.contains(PASSWORD));
}
