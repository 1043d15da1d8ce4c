//! End-to-end harness for the job runner: the embedded queue (`queue::embedded::serve`), a git
//! repository over smart HTTP, the runner with a local-agent isolation, the Job JSON corpus under
//! `tests/jobs/e2e/`, and log normalisation for exact comparisons.
#![allow(dead_code)]

pub mod expect;
pub mod git_server;
pub mod local_agent;

use git_server::GitServer;
use hearth::config::{Config, ConfigFlags};
use hearth::job::logs::SinkOptions;
use hearth::job::runner::{JobRunner, RunnerOptions};
use hearth::queue::client::{QueueClient, RetryPolicy};
use hearth::queue::embedded::{self, EmbeddedQueue};
use hearth::queue::store::{JobRecord, StoreOptions};
use hearth::queue::types::{ExecutionLogEntry, Job};
use hearth::queue::worker::{self, WorkerOptions, WorkerSummary};
use hearth::sandbox::Isolation;
use hearth::sandbox::process::{ProcessIsolation, ProcessOptions};
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
    /// Agent sockets and per-sandbox state (the isolation's runtime directory).
    pub sock_dir: PathBuf,
    pub isolation: Arc<dyn Isolation>,
    /// What the isolation logs under `setup.sandbox.start` after `Ready in …` (normalised).
    pub start_detail: String,
}

/// `sandbox::process` (namespaces + cgroups, as root), or with `HEARTH_E2E_ISOLATION=local` the
/// test-only local agent (a plain host process in a private mount namespace).
fn isolation(sock_dir: &Path) -> (Arc<dyn Isolation>, String) {
    if std::env::var("HEARTH_E2E_ISOLATION").is_ok_and(|v| v == "local") {
        return (
            Arc::new(LocalAgent::new(sock_dir.to_path_buf())),
            String::new(),
        );
    }
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
        hearth::sandbox::IsolationKind::Process
            .weakness_notice()
            .unwrap_or_default()
    );
    (Arc::new(iso), detail)
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
    pub async fn start() -> E2e {
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
        let (isolation, start_detail) = isolation(&sock_dir);
        E2e {
            dir,
            config,
            queue,
            git,
            workspace_root,
            sock_dir,
            isolation,
            start_detail,
        }
    }

    pub fn runner(&self) -> JobRunner {
        JobRunner::new(
            self.isolation.clone(),
            runner_options(&self.workspace_root, &self.git.base),
            None,
        )
    }

    pub async fn client(&self) -> QueueClient {
        let mut opts = self
            .queue
            .client(&self.config, None)
            .unwrap()
            .options()
            .clone();
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
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/jobs/e2e")
            .join(name);
        let text = std::fs::read_to_string(&path)
            .unwrap()
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

    /// Runs a worker until it has handled `jobs` jobs.
    pub async fn work(
        &self,
        jobs: u64,
        concurrency: usize,
        max_runtime: Duration,
    ) -> WorkerSummary {
        let client = self.client().await;
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

    /// The job's entries with variable parts replaced (see [`normalize`]).
    pub fn normalized_logs(&self, id: i64) -> Vec<Entry> {
        self.logs(id)
            .iter()
            .map(|e| Entry {
                key: e.key.clone(),
                command: e
                    .command
                    .iter()
                    .map(|c| normalize(c, &self.workspace_root))
                    .collect(),
                exit_code: e.exit_code,
                out: normalize_out(&e.out, &self.workspace_root),
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

/// The `setup.fs.workspace`, `setup.sandbox.start` and teardown entries every job has.
pub fn workspace_entry() -> Entry {
    Entry {
        key: "setup.fs.workspace".into(),
        command: vec![],
        exit_code: Some(0),
        out: "Created workspace $WS (1024 MiB disk)\n".into(),
    }
}

impl E2e {
    pub fn sandbox_start_entry(&self) -> Entry {
        Entry {
            key: "setup.sandbox.start".into(),
            command: vec![],
            exit_code: Some(0),
            out: format!(
                "Starting process sandbox $SANDBOX: 1 CPUs, 512 MiB memory, 1024 MiB workspace \
                 disk\nReady in $MS ms\n{}",
                self.start_detail
            ),
        }
    }
}

pub fn teardown_entries() -> Vec<Entry> {
    vec![
        Entry {
            key: "teardown.sandbox.remove".into(),
            command: vec![],
            exit_code: Some(0),
            out: "Removed process sandbox $SANDBOX\n".into(),
        },
        Entry {
            key: "teardown.fs".into(),
            command: vec![],
            exit_code: Some(0),
            out: "Removed $WS\n".into(),
        },
    ]
}

/// The docker step note line.
pub fn image_note(image: &str) -> String {
    format!(
        "hearth: container images are not supported yet; running in the sandbox's default root \
         filesystem instead of image {image:?}"
    )
}
