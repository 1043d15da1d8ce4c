//! End-to-end harness for the job runner: the embedded queue (`queue::embedded::serve`), a git
//! repository over smart HTTP, the runner with a process (or local-agent) isolation or VM
//! isolation, the Job JSON corpus under `tests/jobs/e2e/`, log normalisation for exact
//! comparisons, and the corpus cases themselves ([`cases`]), which run unchanged in every mode.
#![allow(dead_code)]

pub mod cases;
pub mod expect;
pub mod files_frontend;
pub mod git_server;
pub mod load;
pub mod local_agent;
pub mod vm;

use git_server::GitServer;
use hearth::config::{Config, ConfigFlags};
use hearth::job::logs::SinkOptions;
use hearth::job::runner::{JobRunner, RunnerOptions};
use hearth::queue::client::{QueueClient, RetryPolicy};
use hearth::queue::embedded::{self, EmbeddedQueue};
use hearth::queue::store::{JobRecord, JobState, StoreOptions};
use hearth::queue::types::{ExecutionLogEntry, Job};
use hearth::queue::worker::{self, WorkerOptions, WorkerSummary};
use hearth::sandbox::process::{ProcessIsolation, ProcessOptions};
use hearth::sandbox::{Isolation, IsolationKind};
use local_agent::LocalAgent;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub struct E2e {
    pub dir: tempfile::TempDir,
    pub config: Config,
    pub queue: EmbeddedQueue,
    pub git: GitServer,
    pub workspace_root: PathBuf,
    /// Agent sockets and per-sandbox state (the process isolation's runtime directory).
    pub sock_dir: PathBuf,
    pub setup: Setup,
}

/// How sandboxes are made in a run, and what the expectations depend on.
pub struct Setup {
    pub isolation: Arc<dyn Isolation>,
    /// What the isolation logs under `setup.sandbox.start` after `Ready in …` (normalised).
    pub start_detail: String,
    pub memory_mib: u64,
    /// The workspace disk size (`EXECUTOR_FIRECRACKER_DISK_SPACE`).
    pub disk_mib: u64,
    pub ready_timeout: Duration,
    pub timing: Timing,
}

/// Time limits of the cases; a VM boots (and under the emulated-SVM harness everything runs
/// slower), so VM runs get larger ones.
#[derive(Debug, Clone)]
pub struct Timing {
    /// `EXECUTOR_MAXIMUM_RUNTIME_PER_JOB` for jobs that should finish.
    pub job_limit: Duration,
    /// The runtime limit of the timeout case (longer than a sandbox start, shorter than its
    /// step), and how the worker spells it (Go's duration format).
    pub runtime_limit: Duration,
    pub runtime_limit_text: &'static str,
    /// A timed-out or cancelled job ends within this of its limit or cancel.
    pub stop_within: Duration,
    /// A cancelled step's log entry ends within this of the cancel (heartbeat interval + 1 s).
    pub step_cancel_within: Duration,
    /// A cancelled clone ends within this of the cancel.
    pub clone_cancel_within: Duration,
}

impl Timing {
    pub fn process() -> Timing {
        Timing {
            job_limit: Duration::from_secs(60),
            runtime_limit: Duration::from_secs(3),
            runtime_limit_text: "3s",
            stop_within: Duration::from_secs(10),
            step_cancel_within: Duration::from_millis(1200),
            clone_cancel_within: Duration::from_secs(3),
        }
    }
}

/// `sandbox::process` (namespaces + cgroups, as root), or with `HEARTH_E2E_ISOLATION=local` the
/// test-only local agent (a plain host process in a private mount namespace).
fn process_setup(sock_dir: &Path) -> Setup {
    let (isolation, start_detail): (Arc<dyn Isolation>, String) =
        if std::env::var("HEARTH_E2E_ISOLATION").is_ok_and(|v| v == "local") {
            (
                Arc::new(LocalAgent::new(sock_dir.to_path_buf())),
                String::new(),
            )
        } else {
            // SAFETY: geteuid has no preconditions.
            assert_eq!(
                unsafe { libc::geteuid() },
                0,
                "the job e2e tests need root (process sandboxes: namespaces and cgroups)"
            );
            let iso = ProcessIsolation::new(ProcessOptions {
                agent_program: PathBuf::from(env!("CARGO_BIN_EXE_hearth")),
                runtime_dir: sock_dir.to_path_buf(),
                ..ProcessOptions::default()
            })
            .expect("process isolation unavailable on this host");
            let detail = format!(
                "process sandbox $SANDBOX, cgroup {}\n{}\n",
                iso.cgroup_version(),
                IsolationKind::Process.weakness_notice().unwrap_or_default()
            );
            (Arc::new(iso), detail)
        };
    Setup {
        isolation,
        start_detail,
        memory_mib: 512,
        disk_mib: 1024,
        ready_timeout: Duration::from_secs(20),
        timing: Timing::process(),
    }
}

/// Runner options for tests: small sandboxes, fast log updates.
pub fn runner_options(workspace_root: &Path, git_base: &str) -> RunnerOptions {
    RunnerOptions {
        workspace_root: workspace_root.to_path_buf(),
        cpus: 1,
        memory_mib: 512,
        disk_mib: 1024,
        git_upstream: Some(git_base.to_string()),
        network: false,
        ready_timeout: Duration::from_secs(20),
        keep_workspaces: false,
        sandbox_prefix: "executor".into(),
        log: SinkOptions {
            update_interval: Duration::from_millis(100),
            ..Default::default()
        },
        flush_timeout: Duration::from_secs(30),
    }
}

pub fn worker_options(jobs: u64, concurrency: usize, max_runtime: Duration) -> WorkerOptions {
    WorkerOptions {
        max_jobs: concurrency,
        poll_interval: Duration::from_millis(50),
        heartbeat_interval: Duration::from_millis(200),
        max_runtime_per_job: max_runtime,
        teardown_grace: Duration::from_secs(20),
        num_total_jobs: jobs,
        max_active_time: Duration::ZERO,
    }
}

impl E2e {
    /// Process sandboxes (see [`process_setup`]).
    pub async fn start() -> E2e {
        E2e::start_with(process_setup).await
    }

    /// Sandboxes from `setup`, given the runtime directory for agent sockets.
    pub async fn start_with(setup: impl FnOnce(&Path) -> Setup) -> E2e {
        let dir = tempfile::tempdir().unwrap();
        let flags = ConfigFlags {
            db: Some(dir.path().join("queue.sqlite")),
            ..Default::default()
        };
        let config = Config::load(&|_| None, &flags).unwrap();
        let queue = embedded::serve(&config, "127.0.0.1:0", StoreOptions::default())
            .await
            .unwrap();
        let git = GitServer::start(&dir.path().join("git")).await;
        let workspace_root = dir.path().join("workspaces");
        let sock_dir = dir.path().join("agents");
        let setup = setup(&sock_dir);
        E2e {
            dir,
            config,
            queue,
            git,
            workspace_root,
            sock_dir,
            setup,
        }
    }

    pub fn kind(&self) -> IsolationKind {
        self.setup.isolation.kind()
    }

    pub fn timing(&self) -> &Timing {
        &self.setup.timing
    }

    pub fn runner(&self) -> JobRunner {
        let mut opts = runner_options(&self.workspace_root, &self.git.base);
        opts.memory_mib = self.setup.memory_mib;
        opts.disk_mib = self.setup.disk_mib;
        opts.ready_timeout = self.setup.ready_timeout;
        JobRunner::new(self.setup.isolation.clone(), opts, None)
    }

    pub async fn client(&self) -> QueueClient {
        self.client_for(&self.queue.server.base_url()).await
    }

    /// A client of the frontend at `base` (the embedded queue's API, or one that adds routes).
    pub async fn client_for(&self, base: &str) -> QueueClient {
        let mut opts = self
            .queue
            .client(&self.config, None)
            .unwrap()
            .options()
            .clone();
        opts.base_url = base.to_string();
        opts.retry = RetryPolicy {
            initial_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(500),
            max_attempts: 4,
        };
        let c = QueueClient::new(opts, None).unwrap();
        c.ping().await.unwrap();
        c
    }

    /// A corpus job with `@REPO@`, `@HEAD@`, `@FIRST@`, `@SECRET@` filled in.
    pub fn load(&self, name: &str) -> Job {
        let text = corpus(name)
            .replace("@REPO@", git_server::REPO)
            .replace("@HEAD@", &self.git.head)
            .replace("@FIRST@", &self.git.first)
            .replace("@SECRET@", &self.config.frontend_password);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    pub fn submit(&self, name: &str) -> i64 {
        let job = self.load(name);
        let queue = job.queue.clone().unwrap_or_else(|| "batches".into());
        self.queue.store.submit(&queue, &job).unwrap()
    }

    /// Submits the corpus job `name`, runs one worker until it is handled and checks that it
    /// completed; returns its id.
    pub async fn run_to_completion(&self, name: &str) -> i64 {
        let id = self.submit(name);
        self.work(1, 1, self.timing().job_limit).await;
        let rec = self.record(id);
        assert_eq!(rec.state, JobState::Completed, "{name}: {rec:?}");
        id
    }

    /// Runs a worker until it has handled `jobs` jobs.
    pub async fn work(
        &self,
        jobs: u64,
        concurrency: usize,
        max_runtime: Duration,
    ) -> WorkerSummary {
        self.work_via(
            &self.queue.server.base_url(),
            jobs,
            concurrency,
            max_runtime,
        )
        .await
    }

    /// [`E2e::work`] against the frontend at `base`.
    pub async fn work_via(
        &self,
        base: &str,
        jobs: u64,
        concurrency: usize,
        max_runtime: Duration,
    ) -> WorkerSummary {
        let client = self.client_for(base).await;
        let fut = worker::run(
            client,
            Arc::new(self.runner()),
            worker_options(jobs, concurrency, max_runtime),
            None,
            std::future::pending(),
        );
        tokio::time::timeout(Duration::from_secs(300), fut)
            .await
            .expect("the worker did not finish within 300 s")
    }

    pub fn record(&self, id: i64) -> JobRecord {
        self.queue.store.get(id).unwrap().unwrap()
    }

    pub fn logs(&self, id: i64) -> Vec<ExecutionLogEntry> {
        self.queue.store.logs(id).unwrap()
    }

    /// The job's entries with variable parts replaced (see [`normalize`]; a VM's boot phases
    /// after `Ready in` become `$BOOT`).
    pub fn normalized_logs(&self, id: i64) -> Vec<Entry> {
        let vm = self.kind() == IsolationKind::Vm;
        self.logs(id)
            .iter()
            .map(|e| {
                let mut out = normalize_out(&e.out, &self.workspace_root);
                if vm && e.key == "setup.sandbox.start" {
                    out = boot_detail_normalized(&out);
                }
                Entry {
                    key: e.key.clone(),
                    command: e
                        .command
                        .iter()
                        .map(|c| normalize(c, &self.workspace_root))
                        .collect(),
                    exit_code: e.exit_code,
                    out,
                }
            })
            .collect()
    }

    /// Nothing left behind: no workspace directory, no agent socket.
    pub fn assert_clean(&self) {
        let left = |p: &Path| -> Vec<String> {
            std::fs::read_dir(p)
                .map(|d| {
                    d.flatten()
                        .map(|e| e.path().display().to_string())
                        .collect()
                })
                .unwrap_or_default()
        };
        assert_eq!(
            left(&self.workspace_root),
            Vec::<String>::new(),
            "workspaces left"
        );
        assert_eq!(
            left(&self.sock_dir),
            Vec::<String>::new(),
            "agent sockets left"
        );
        // VM sandboxes' scratch directories (console log, workspace image).
        let scratch = format!("hearth-{}.", std::process::id());
        let scratch_left: Vec<String> = left(&std::env::temp_dir())
            .into_iter()
            .filter(|p| {
                Path::new(p)
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&scratch))
            })
            .collect();
        assert_eq!(scratch_left, Vec::<String>::new(), "sandbox scratch left");
    }
}

/// Lines after `Ready in $MS ms` (a VM's boot phases, which vary) as one `$BOOT` line.
fn boot_detail_normalized(out: &str) -> String {
    let mut kept = String::new();
    let mut lines = out.lines();
    for l in lines.by_ref() {
        kept.push_str(l);
        kept.push('\n');
        if l.starts_with("Ready in ") {
            break;
        }
    }
    if lines.next().is_some() {
        kept.push_str("$BOOT\n");
    }
    kept
}

/// The text of `tests/jobs/e2e/<name>`, built in (VM tests run where the source tree is not).
pub fn corpus(name: &str) -> &'static str {
    match name {
        "chatty.json" => include_str!("../jobs/e2e/chatty.json"),
        "cli-step.json" => include_str!("../jobs/e2e/cli-step.json"),
        "docker-steps.json" => include_str!("../jobs/e2e/docker-steps.json"),
        "failing-step.json" => include_str!("../jobs/e2e/failing-step.json"),
        "files-store.json" => include_str!("../jobs/e2e/files-store.json"),
        "files-store-fetched.json" => include_str!("../jobs/e2e/files-store-fetched.json"),
        "files.json" => include_str!("../jobs/e2e/files.json"),
        "redaction.json" => include_str!("../jobs/e2e/redaction.json"),
        "shallow.json" => include_str!("../jobs/e2e/shallow.json"),
        "slow-clone.json" => include_str!("../jobs/e2e/slow-clone.json"),
        "slow.json" => include_str!("../jobs/e2e/slow.json"),
        "small.json" => include_str!("../jobs/e2e/small.json"),
        "sparse.json" => include_str!("../jobs/e2e/sparse.json"),
        "vm-disk.json" => include_str!("../jobs/e2e/vm-disk.json"),
        other => panic!("no corpus job {other:?} (add it to job_common::corpus)"),
    }
}

/// A log entry without its timings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub command: Vec<String>,
    pub exit_code: Option<i32>,
    pub out: String,
}

impl Entry {
    pub fn lines(&self, prefix: &str) -> Vec<&str> {
        self.out
            .lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .collect()
    }
    pub fn stdout(&self) -> Vec<&str> {
        self.lines("stdout: ")
    }
    pub fn stderr(&self) -> Vec<&str> {
        self.lines("stderr: ")
    }
}

/// Replaces `<prefix><token>` with `<name>` where the token is what `is_tok` accepts.
fn replace_tokens(s: &str, prefix: &str, name: &str, is_tok: impl Fn(char) -> bool) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find(prefix) {
        out.push_str(&rest[..i]);
        out.push_str(name);
        let after = &rest[i + prefix.len()..];
        let n = after.find(|c: char| !is_tok(c)).unwrap_or(after.len());
        rest = &after[n..];
    }
    out.push_str(rest);
    out
}

/// `$WS` for the job's workspace path, `$PROXY` for the git proxy's address, `$SANDBOX` for the
/// sandbox name, `$MS` / `$D` for timings.
pub fn normalize(s: &str, workspace_root: &Path) -> String {
    let root = format!("{}/workspace-", workspace_root.display());
    let s = replace_tokens(s, &root, "$WS", |c| c.is_ascii_hexdigit() || c == '-');
    let s = replace_tokens(&s, "http://127.0.0.1:", "$PROXY", |c| c.is_ascii_digit());
    let s = replace_tokens(&s, "sandbox executor-", "sandbox $SANDBOX", |c| {
        c.is_ascii_hexdigit() || c == '-'
    });
    replace_tokens(&s, "Ready in ", "Ready in $MS", |c| c.is_ascii_digit())
}

/// [`normalize`], and `$D` for the durations of `Wrote <path> in <duration>` lines.
pub fn normalize_out(s: &str, workspace_root: &Path) -> String {
    normalize(s, workspace_root)
        .lines()
        .map(|l| match (l.starts_with("Wrote "), l.rfind(" in ")) {
            (true, Some(i)) => format!("{} in $D\n", &l[..i]),
            _ => format!("{l}\n"),
        })
        .collect()
}

impl E2e {
    /// The `setup.fs.workspace`, `setup.sandbox.start` and teardown entries every job has.
    pub fn workspace_entry(&self) -> Entry {
        Entry {
            key: "setup.fs.workspace".into(),
            command: vec![],
            exit_code: Some(0),
            out: format!("Created workspace $WS ({} MiB disk)\n", self.setup.disk_mib),
        }
    }

    pub fn sandbox_start_entry(&self) -> Entry {
        Entry {
            key: "setup.sandbox.start".into(),
            command: vec![],
            exit_code: Some(0),
            out: format!(
                "Starting {} sandbox $SANDBOX: 1 CPUs, {} MiB memory, {} MiB workspace \
                 disk\nReady in $MS ms\n{}",
                self.kind(),
                self.setup.memory_mib,
                self.setup.disk_mib,
                self.setup.start_detail
            ),
        }
    }

    pub fn teardown_entries(&self) -> Vec<Entry> {
        vec![
            Entry {
                key: "teardown.sandbox.remove".into(),
                command: vec![],
                exit_code: Some(0),
                out: format!("Removed {} sandbox $SANDBOX\n", self.kind()),
            },
            Entry {
                key: "teardown.fs".into(),
                command: vec![],
                exit_code: Some(0),
                out: "Removed $WS\n".into(),
            },
        ]
    }
}

/// The docker step note line.
pub fn image_note(image: &str) -> String {
    format!(
        "hearth: container images are not supported yet; running in the sandbox's default root \
         filesystem instead of image {image:?}"
    )
}
