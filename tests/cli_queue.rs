//! The real `hearth` binary against a temporary embedded-queue database: `submit`, `jobs`,
//! `logs`, `cancel`, `validate`, and `run --isolation process` (needs root for the process
//! sandbox: fails, never skips, without it) running jobs, draining on SIGTERM, handing jobs back
//! at the shutdown deadline, and recovering a job after hearth was SIGKILLed.

#[allow(dead_code)]
#[path = "job_common/git_server.rs"]
mod git_server;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const HEARTH: &str = env!("CARGO_BIN_EXE_hearth");

fn hearth(db: &Path, args: &[&str]) -> Output {
    Command::new(HEARTH)
        .args(args)
        .env("HEARTH_QUEUE_DB", db)
        .env_remove("EXECUTOR_FRONTEND_URL")
        .env_remove("EXECUTOR_USE_FIRECRACKER")
        .output()
        .expect("running hearth")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn submit(db: &Path, dir: &Path, job: &str) -> i64 {
    let path = dir.join(format!("job-{}.json", rand_suffix()));
    std::fs::write(&path, job).unwrap();
    let out = hearth(db, &["submit", path.to_str().unwrap()]);
    assert!(out.status.success(), "submit: {out:?}");
    stdout(&out)
        .trim()
        .parse()
        .expect("submit prints the job id")
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn job_json(db: &Path, id: i64) -> serde_json::Value {
    let out = hearth(db, &["jobs", "--json", "--limit", "0"]);
    assert!(out.status.success(), "{out:?}");
    stdout(&out)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|j| j["id"] == id)
        .unwrap_or_else(|| panic!("job {id} not listed"))
}

fn wait_state(db: &Path, id: i64, states: &[&str], timeout: Duration) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let j = job_json(db, id);
        if states.iter().any(|s| j["state"] == *s) {
            return j;
        }
        assert!(
            start.elapsed() < timeout,
            "job {id} not in {states:?} after {timeout:?}: {j}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

const HELLO_JOB: &str = r#"{"dockerSteps":[{"key":"hello","image":"alpine:3",
  "commands":["echo hello from $(hostname)","pwd"],"dir":"","env":[]}]}"#;

#[test]
fn submit_jobs_logs_cancel() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("q.sqlite");
    let a = submit(&db, dir.path(), HELLO_JOB);
    let b = submit(&db, dir.path(), HELLO_JOB);
    assert_eq!(b, a + 1);
    let list = hearth(&db, &["jobs"]);
    assert!(list.status.success());
    let text = stdout(&list);
    assert!(text.starts_with("ID"), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.contains("queued")).count(),
        2,
        "{text}"
    );
    assert_eq!(job_json(&db, a)["queue"], "batches");

    // Cancel a queued job: canceled at once; again: already finished (exit 1).
    let c = hearth(&db, &["cancel", &a.to_string()]);
    assert!(c.status.success(), "{c:?}");
    assert!(stdout(&c).contains("canceled"));
    assert_eq!(job_json(&db, a)["state"], "canceled");
    let again = hearth(&db, &["cancel", &a.to_string()]);
    assert_eq!(again.status.code(), Some(1));
    assert!(stdout(&again).contains("already finished: canceled"));
    let unknown = hearth(&db, &["cancel", "999"]);
    assert_eq!(unknown.status.code(), Some(1));

    // Filters.
    let canceled = hearth(&db, &["jobs", "--state", "canceled", "--json"]);
    let lines: Vec<String> = stdout(&canceled).lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(!hearth(&db, &["jobs", "--state", "bogus"]).status.success());

    // Logs of a job without entries, and of an unknown job.
    let l = hearth(&db, &["logs", &b.to_string()]);
    assert!(l.status.success());
    assert!(stdout(&l).contains(&format!("=== job {b} is queued")));
    assert!(!hearth(&db, &["logs", "12345"]).status.success());

    // A file that is not a job is refused; --queue picks the queue.
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{not json").unwrap();
    assert!(
        !hearth(&db, &["submit", bad.to_str().unwrap()])
            .status
            .success()
    );
    let good = dir.path().join("good.json");
    std::fs::write(&good, HELLO_JOB).unwrap();
    let o = hearth(
        &db,
        &["submit", "--queue", "codeintel", good.to_str().unwrap()],
    );
    let id: i64 = stdout(&o).trim().parse().unwrap();
    assert_eq!(job_json(&db, id)["queue"], "codeintel");
}

#[test]
fn validate_reports_kvm_kind_and_process_warning() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("q.sqlite");
    let out = hearth(&db, &["validate", "--isolation", "process"]);
    let text = stdout(&out);
    let expected = if Path::new("/sys/module/kvm_pvm").exists() {
        "PVM (kvm_pvm"
    } else if Path::new("/sys/module/kvm_intel").exists() {
        "hardware virtualization (kvm_intel)"
    } else if Path::new("/sys/module/kvm_amd").exists() {
        "hardware virtualization (kvm_amd)"
    } else {
        "/dev/kvm"
    };
    let kvm_line = text
        .lines()
        .find(|l| l.contains(" kvm: "))
        .unwrap_or_else(|| panic!("no kvm line: {text}"));
    assert!(kvm_line.contains(expected), "{kvm_line}");
    assert!(
        text.contains("WARN  isolation: WARNING: process isolation")
            && text.contains("weaker than a VM"),
        "{text}"
    );
    assert!(text.contains("ok    isolation: process"), "{text}");
    assert!(text.contains("embedded"), "{text}");
    assert!(
        out.status.success() && text.contains("All checks passed!"),
        "validate failed on this host: {text}"
    );

    // VM isolation on a kvm_pvm host: jobs could not boot, so validate fails and says why.
    let vm = hearth(&db, &["validate", "--isolation", "vm"]);
    let vm_text = stdout(&vm);
    if Path::new("/sys/module/kvm_pvm").exists() {
        assert_eq!(vm.status.code(), Some(1), "{vm_text}");
        assert!(
            vm_text.contains("FAIL  kvm: /dev/kvm is PVM")
                && vm_text.contains("--isolation process"),
            "{vm_text}"
        );
    } else {
        assert!(!vm_text.contains("FAIL  kvm"), "{vm_text}");
    }
    // VM isolation reports the VMM threads' seccomp filters; a mistyped mode is an error (it
    // must not silently switch the filters off).
    assert!(
        vm_text.contains("ok    seccomp: vCPU and event-loop threads filtered"),
        "{vm_text}"
    );
    // VM networking: the nftables table is checked (`nft -c`), not loaded.
    assert!(
        vm_text.contains("ok    network: taps hearth<n> from 10.213.0.0/16"),
        "{vm_text}"
    );
    let typo = Command::new(HEARTH)
        .args(["validate", "--isolation", "vm"])
        .env("HEARTH_QUEUE_DB", &db)
        .env_remove("EXECUTOR_FRONTEND_URL")
        .env("HEARTH_SECCOMP", "of")
        .output()
        .unwrap();
    assert!(
        stdout(&typo).contains("FAIL  seccomp: HEARTH_SECCOMP: unknown seccomp mode \"of\""),
        "{}",
        stdout(&typo)
    );

    // EXECUTOR_USE_FIRECRACKER=false selects process isolation without the flag.
    let env_sel = Command::new(HEARTH)
        .args(["validate"])
        .env("HEARTH_QUEUE_DB", &db)
        .env("EXECUTOR_USE_FIRECRACKER", "false")
        .env_remove("EXECUTOR_FRONTEND_URL")
        .output()
        .unwrap();
    assert!(
        stdout(&env_sel).contains("ok    isolation: process"),
        "{}",
        stdout(&env_sel)
    );

    // An invalid configuration fails.
    let bad = Command::new(HEARTH)
        .args(["validate", "--isolation", "process"])
        .env("HEARTH_QUEUE_DB", &db)
        .env("EXECUTOR_MAXIMUM_NUM_JOBS", "zero")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(stdout(&bad).contains("FAIL  config"), "{}", stdout(&bad));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_checks_frontend_auth() {
    let dir = tempfile::tempdir().unwrap();
    let flags = hearth::config::ConfigFlags {
        db: Some(dir.path().join("server.sqlite")),
        frontend_password: Some("s3cret".into()),
        ..Default::default()
    };
    let config = hearth::config::Config::load(&|_| None, &flags).unwrap();
    let server = hearth::queue::embedded::serve(
        &config,
        "127.0.0.1:0",
        hearth::queue::store::StoreOptions::default(),
    )
    .await
    .unwrap();
    let url = server.server.base_url();
    let db = dir.path().join("unused.sqlite");
    let run = |password: &'static str| {
        let url = url.clone();
        let db = db.clone();
        tokio::task::spawn_blocking(move || {
            Command::new(HEARTH)
                .args(["validate", "--isolation", "process"])
                .env("HEARTH_QUEUE_DB", &db)
                .env("EXECUTOR_FRONTEND_URL", &url)
                .env("EXECUTOR_FRONTEND_PASSWORD", password)
                .env("EXECUTOR_QUEUE_NAME", "batches")
                .output()
                .unwrap()
        })
    };
    let good = run("s3cret").await.unwrap();
    assert!(
        stdout(&good).contains("executor token accepted"),
        "{}",
        stdout(&good)
    );
    let bad = run("wrong").await.unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        stdout(&bad).contains("FAIL  frontend: failed to authorize with frontend"),
        "{}",
        stdout(&bad)
    );
}

/// A `hearth run --isolation process` child with its stderr collected.
struct Daemon {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    fn start(db: &Path, extra: &[&str]) -> Daemon {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "hearth run --isolation process needs root here (namespaces and cgroups)"
        );
        let mut child = Command::new(HEARTH)
            .args([
                "run",
                "--isolation",
                "process",
                "--job-num-cpus",
                "1",
                "--job-memory",
                "256M",
                "--queue-poll-interval",
                "100ms",
                "--metrics-addr",
                "127.0.0.1:0",
            ])
            .args(extra)
            .env("HEARTH_QUEUE_DB", db)
            .env("HEARTH_LOG", "info")
            .env_remove("EXECUTOR_FRONTEND_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Daemon { child, stderr }
    }

    fn wait_line(&self, needle: &str, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            if let Some(l) = self
                .stderr
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return l.clone();
            }
            assert!(
                start.elapsed() < timeout,
                "no {needle:?} from hearth run after {timeout:?}: {:#?}",
                self.stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill with our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                start.elapsed() < timeout,
                "hearth run did not exit within {timeout:?}: {:#?}",
                self.stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Sandboxes of process `pid` still present (runtime dirs named `…-<pid>-<starttime>`).
fn sandboxes_of(pid: u32) -> Vec<PathBuf> {
    let marker = format!("-{pid}-");
    std::fs::read_dir("/run/hearth/process")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().contains(&marker))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn run_process_mode_completes_jobs_and_drains_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("q.sqlite");
    let mut d = Daemon::start(&db, &["--shutdown-timeout", "60s"]);
    let metrics_line = d.wait_line("metrics on http://", Duration::from_secs(30));
    d.wait_line("running up to 1 job(s)", Duration::from_secs(30));

    let id = submit(&db, dir.path(), HELLO_JOB);
    let j = wait_state(
        &db,
        id,
        &["completed", "errored", "failed"],
        Duration::from_secs(60),
    );
    let logs = stdout(&hearth(&db, &["logs", &id.to_string()]));
    assert_eq!(j["state"], "completed", "{logs}");
    assert!(logs.contains("stdout: hello from hearth-"), "{logs}");
    assert!(logs.contains("stdout: /work"), "{logs}");
    assert!(
        logs.contains("weaker than a VM"),
        "the job log does not say process isolation is weaker than a VM: {logs}"
    );

    // /metrics counts the job.
    let addr = metrics_line
        .split("http://")
        .nth(1)
        .and_then(|s| s.strip_suffix("/metrics"))
        .unwrap()
        .to_string();
    let m = http_get(&addr, "/metrics");
    assert!(m.contains("hearth_jobs_succeeded_total"), "{m}");

    // SIGTERM while a job runs: no new jobs, the running one finishes, clean exit.
    let slow = submit(
        &db,
        dir.path(),
        r#"{"dockerSteps":[{"key":"slow","image":"x","commands":["sleep 2","echo finished-after-sigterm"]}]}"#,
    );
    let follow = Command::new(HEARTH)
        .args(["logs", "--follow", &slow.to_string()])
        .env("HEARTH_QUEUE_DB", &db)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_state(&db, slow, &["processing"], Duration::from_secs(30));
    let queued_after = submit(&db, dir.path(), HELLO_JOB);
    std::thread::sleep(Duration::from_millis(300));
    d.signal(libc::SIGTERM);
    let status = d.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "exit {status:?}");
    let j = job_json(&db, slow);
    assert_eq!(j["state"], "completed", "{j}");
    assert!(stdout(&hearth(&db, &["logs", &slow.to_string()])).contains("finished-after-sigterm"));
    // `logs --follow` streamed the output and ended with the job.
    let followed = follow.wait_with_output().unwrap();
    let text = stdout(&followed);
    assert!(followed.status.success(), "{text}");
    assert!(text.contains("stdout: finished-after-sigterm"), "{text}");
    assert!(text.contains("--- step.docker.slow: exit 0"), "{text}");
    assert!(
        text.ends_with(&format!("=== job {slow} is completed\n")),
        "{text}"
    );
    assert_eq!(
        job_json(&db, queued_after)["state"],
        "queued",
        "a job was dequeued after SIGTERM"
    );
    assert!(sandboxes_of(d.child.id()).is_empty());
}

#[test]
fn run_clones_the_repository_through_git_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("q.sqlite");
    // A real repository over smart HTTP (git http-backend) that requires the job's bearer token.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let git = rt.block_on(git_server::GitServer::start(&dir.path().join("git")));
    let mut d = Daemon::start(&db, &["--git-upstream", &git.base]);
    d.wait_line("running up to 1 job(s)", Duration::from_secs(30));
    let job = format!(
        r#"{{"repositoryName":"{}","commit":"{}","dockerSteps":[{{"key":"show","image":"x",
        "commands":["cat README.md","git log --format=%s"]}}]}}"#,
        git_server::REPO,
        git.head
    );
    let id = submit(&db, dir.path(), &job);
    let j = wait_state(
        &db,
        id,
        &["completed", "errored", "failed"],
        Duration::from_secs(60),
    );
    let logs = stdout(&hearth(&db, &["logs", &id.to_string()]));
    assert_eq!(j["state"], "completed", "{logs}");
    assert!(logs.contains("stdout: hello again"), "{logs}");
    assert!(logs.contains("stdout: second commit"), "{logs}");
    let seen = git.seen();
    assert!(!seen.is_empty(), "the git server saw no request");
    assert!(
        seen.iter().all(|s| s
            .authorization
            .as_deref()
            .is_some_and(|a| a.starts_with("Bearer "))),
        "a git request went upstream without the job token: {seen:?}"
    );
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(30)).success());
}

#[test]
fn run_hands_back_at_the_deadline_and_recovers_after_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("q.sqlite");
    let long = r#"{"dockerSteps":[{"key":"long","image":"x","commands":["sleep 600"]}]}"#;

    // Deadline: the running job is requeued and its sandbox removed.
    let mut d = Daemon::start(&db, &["--shutdown-timeout", "1s"]);
    let id = submit(&db, dir.path(), long);
    wait_state(&db, id, &["processing"], Duration::from_secs(30));
    d.signal(libc::SIGTERM);
    let status = d.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "exit {status:?}");
    d.wait_line(
        "handed back running jobs: requeued [",
        Duration::from_secs(5),
    );
    let j = job_json(&db, id);
    assert_eq!(j["state"], "queued", "{j}");
    assert_eq!(j["numResets"], 1, "{j}");
    assert!(sandboxes_of(d.child.id()).is_empty(), "sandbox left behind");
    drop(d);
    let c = hearth(&db, &["cancel", &id.to_string()]);
    assert!(c.status.success());

    // SIGKILL mid-job: the sandbox dies with hearth (lifeline); a restart requeues the job and
    // runs it to completion.
    let mut d = Daemon::start(&db, &[]);
    let job = r#"{"dockerSteps":[{"key":"retry","image":"x","commands":["sleep 4.321","echo survived"]}]}"#;
    let id = submit(&db, dir.path(), job);
    wait_state(&db, id, &["processing"], Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    let old_pid = d.child.id();
    d.signal(libc::SIGKILL);
    d.wait_exit(Duration::from_secs(10));
    // The lifeline kills the orphaned sandbox's processes.
    let start = Instant::now();
    loop {
        let alive = Command::new("pgrep")
            .args(["-f", "sleep 4.321"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !alive {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the sandbox of a SIGKILLed hearth kept running"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut d2 = Daemon::start(&db, &[]);
    d2.wait_line("requeued [", Duration::from_secs(30));
    let j = wait_state(
        &db,
        id,
        &["completed", "errored", "failed"],
        Duration::from_secs(60),
    );
    assert_eq!(j["state"], "completed", "{j}");
    assert!(stdout(&hearth(&db, &["logs", &id.to_string()])).contains("stdout: survived"));
    assert!(
        sandboxes_of(old_pid).is_empty(),
        "the dead hearth's sandbox was not reconciled"
    );
    d2.signal(libc::SIGTERM);
    assert!(d2.wait_exit(Duration::from_secs(30)).success());
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_against_a_frontend_url_uses_the_same_client() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "needs root (process sandboxes)"
    );
    let dir = tempfile::tempdir().unwrap();
    let flags = hearth::config::ConfigFlags {
        db: Some(dir.path().join("frontend.sqlite")),
        frontend_password: Some("s3cret".into()),
        ..Default::default()
    };
    let config = hearth::config::Config::load(&|_| None, &flags).unwrap();
    let frontend = hearth::queue::embedded::serve(
        &config,
        "127.0.0.1:0",
        hearth::queue::store::StoreOptions::default(),
    )
    .await
    .unwrap();
    let job: hearth::queue::types::Job = serde_json::from_str(HELLO_JOB).unwrap();
    let id = frontend.store.submit("codeintel", &job).unwrap();
    let url = frontend.server.base_url();
    let own_db = dir.path().join("must-not-be-used.sqlite");
    let mut child = Command::new(HEARTH)
        .args([
            "run",
            "--isolation",
            "process",
            "--job-num-cpus",
            "1",
            "--job-memory",
            "256M",
            "--queue-poll-interval",
            "100ms",
        ])
        .env("EXECUTOR_FRONTEND_URL", &url)
        .env("EXECUTOR_FRONTEND_PASSWORD", "s3cret")
        .env("EXECUTOR_QUEUE_NAME", "codeintel")
        .env("HEARTH_QUEUE_DB", &own_db)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let state = loop {
        let rec = frontend.store.get(id).unwrap().unwrap();
        if !matches!(
            rec.state,
            hearth::queue::store::JobState::Queued | hearth::queue::store::JobState::Processing
        ) {
            break rec.state;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "job not done");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // SAFETY: kill with our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(state, hearth::queue::store::JobState::Completed);
    let logs = frontend.store.logs(id).unwrap();
    assert!(
        logs.iter().any(|e| e.out.contains("hello from hearth-")),
        "{logs:?}"
    );
    assert!(status.success(), "{status:?}");
    assert!(
        !own_db.exists(),
        "the embedded queue was used despite a frontend URL"
    );
}
