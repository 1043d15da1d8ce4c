//! The job runner: one dequeued job from start to finish, as the original's handler does it.
//!
//! 1. `setup.fs.workspace`: a fresh host directory under the workspace root.
//! 2. `setup.git.*`: the repository cloned on the host through a per-job credentials proxy.
//! 3. `setup.fs.extras`: `files` (inline or from the file store) and the docker step scripts.
//! 4. `setup.sandbox.start`: a sandbox from the [`Isolation`] with the workspace at `/work`.
//! 5. `step.docker.*`, then `step.src.*`, each through the agent; the first failure stops.
//! 6. `teardown.sandbox.remove` and `teardown.fs`, always, then the log entries are flushed.
//!
//! Errors carry the original's wrapping (`creating workspace: …`, `running command "<key>": …`,
//! or for jobs with `cliSteps` the legacy `failed to prepare workspace: …`,
//! `failed to perform docker step: …`), redacted like the logs. The worker maps the result (and
//! a cancel or timeout) to markComplete / markErrored / markFailed.

use crate::config::Config;
use crate::job::files_store::FilesStore;
use crate::job::git::{self, CloneError};
use crate::job::git_proxy::ProxyTarget;
use crate::job::logs::{LogSink, QueueLogTransport, SinkOptions};
use crate::job::redact::Redactor;
use crate::job::steps::{self, Step, StepKind};
use crate::job::workspace::{self, SCRIPTS_DIR, Workspace, WorkspaceFile};
use crate::metrics::Metrics;
use crate::queue::worker::{HandlerError, JobContext, JobHandler};
use crate::sandbox::{Isolation, IsolationKind, SandboxSpec};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runner settings.
#[derive(Debug, Clone)]
pub struct RunnerOptions {
    /// Parent of the per-job workspace directories.
    pub workspace_root: PathBuf,
    /// `EXECUTOR_JOB_NUM_CPUS`.
    pub cpus: u8,
    /// `EXECUTOR_JOB_MEMORY` in MiB.
    pub memory_mib: u64,
    /// `EXECUTOR_FIRECRACKER_DISK_SPACE` in MiB: the size of the VM's workspace disk.
    pub disk_mib: u64,
    /// Base URL for clones (`<url>/.executors/git/<repo>`); `None` uses the queue client's
    /// frontend URL, as the original does.
    pub git_upstream: Option<String>,
    /// Give sandboxes outbound network access.
    pub network: bool,
    pub ready_timeout: Duration,
    /// `EXECUTOR_KEEP_WORKSPACES`: leave the workspace directory for inspection.
    pub keep_workspaces: bool,
    /// `EXECUTOR_VM_PREFIX`: sandbox names are `<prefix>-<job id>-<random>`.
    pub sandbox_prefix: String,
    pub log: SinkOptions,
    /// How long to keep trying to deliver log entries at the end of a job.
    pub flush_timeout: Duration,
}

impl RunnerOptions {
    /// From the executor configuration; `workspace_root` is where workspaces go.
    pub fn from_config(c: &Config, workspace_root: PathBuf) -> RunnerOptions {
        RunnerOptions {
            workspace_root,
            cpus: u8::try_from(c.job_num_cpus.max(1)).unwrap_or(u8::MAX),
            memory_mib: (c.job_memory_bytes >> 20).max(64),
            disk_mib: (c.disk_space_bytes >> 20).max(64),
            git_upstream: None,
            network: true,
            ready_timeout: Duration::from_secs(60),
            keep_workspaces: c.keep_workspaces,
            sandbox_prefix: c.vm_prefix.clone(),
            log: SinkOptions::default(),
            flush_timeout: Duration::from_secs(60),
        }
    }
}

/// Runs jobs in sandboxes from one [`Isolation`].
pub struct JobRunner {
    isolation: Arc<dyn Isolation>,
    opts: RunnerOptions,
    metrics: Option<Metrics>,
}

/// What one job needs besides the context.
struct Run<'a> {
    ctx: &'a JobContext,
    sink: &'a LogSink,
    /// Jobs with `cliSteps` take the original's legacy path (its error texts).
    legacy: bool,
}

impl Run<'_> {
    fn workspace_err(&self, e: impl std::fmt::Display) -> String {
        if self.legacy {
            format!("failed to prepare workspace: {e}")
        } else {
            format!("creating workspace: {e}")
        }
    }

    fn canceled(&self) -> Option<String> {
        self.ctx
            .cancel
            .reason()
            .map(|r| crate::job::host_cmd::canceled_text(r).to_string())
    }
}

impl JobRunner {
    pub fn new(
        isolation: Arc<dyn Isolation>,
        opts: RunnerOptions,
        metrics: Option<Metrics>,
    ) -> JobRunner {
        JobRunner {
            isolation,
            opts,
            metrics,
        }
    }

    pub fn options(&self) -> &RunnerOptions {
        &self.opts
    }

    /// The whole job except the final flush; `Err` is the failure message.
    async fn run(&self, run: &Run<'_>) -> Result<(), String> {
        let job = &run.ctx.job;
        let entry = run.sink.open("setup.fs.workspace", Vec::new());
        let ws = match Workspace::create(&self.opts.workspace_root, job.id) {
            Ok(ws) => ws,
            Err(e) => {
                entry.write_raw(&format!("{e}\n"));
                entry.finish(1);
                return Err(run.workspace_err(e));
            }
        };
        entry.write_raw(&format!(
            "Created workspace {} ({} MiB disk)\n",
            ws.path().display(),
            self.opts.disk_mib
        ));
        entry.finish(0);

        let mut result = self.in_workspace(run, &ws).await;

        let entry = run.sink.open("teardown.fs", Vec::new());
        if self.opts.keep_workspaces {
            let kept = ws.keep();
            entry.write_raw(&format!(
                "Inspect the workspace contents at: {}\n",
                kept.display()
            ));
            entry.finish(0);
        } else {
            let path = ws.path().display().to_string();
            match ws.remove().await {
                Ok(()) => {
                    entry.write_raw(&format!("Removed {path}\n"));
                    entry.finish(0);
                }
                Err(e) => {
                    entry.write_raw(&format!("{e}\n"));
                    entry.finish(1);
                    result = append_err(result, e.to_string());
                }
            }
        }
        result
    }

    async fn in_workspace(&self, run: &Run<'_>, ws: &Workspace) -> Result<(), String> {
        let ctx = run.ctx;
        let job = &ctx.job;
        if !job.repository_name.is_empty() {
            let repo = ws
                .repo_dir(&job.repository_directory)
                .map_err(|e| run.workspace_err(e))?;
            let o = ctx.client.options();
            let target = ProxyTarget {
                upstream_base: self
                    .opts
                    .git_upstream
                    .clone()
                    .unwrap_or_else(|| o.base_url.clone()),
                repository: job.repository_name.clone(),
                authorization: ProxyTarget::authorization_for(&job.token, &o.password),
                job_id: job.id,
                executor_name: o.executor_name.clone(),
            };
            let started = Instant::now();
            let cloned = git::clone_repo(run.sink, job, &repo, target, &ctx.cancel).await;
            self.observe("setup.git.clone", started);
            cloned.map_err(|e: CloneError| run.workspace_err(e))?;
        }

        let files = self
            .workspace_files(run, ws)
            .await
            .map_err(|e| run.workspace_err(format!("failed to get workspace files: {e}")))?;
        std::fs::create_dir_all(ws.path().join(SCRIPTS_DIR))
            .map_err(|e| run.workspace_err(format!("creating script path: {e}")))?;
        workspace::write_files(run.sink, &files).map_err(|e| {
            run.workspace_err(format!("failed to write virtual machine files: {e}"))
        })?;
        let steps = steps::job_steps(job).map_err(|e| format!("creating commands: {e}"))?;
        if let Some(c) = run.canceled() {
            return Err(run.workspace_err(c));
        }
        self.in_sandbox(run, ws, &steps).await
    }

    /// `files` (fetched from the store when they name one) and one script per docker step.
    async fn workspace_files(
        &self,
        run: &Run<'_>,
        ws: &Workspace,
    ) -> Result<Vec<WorkspaceFile>, String> {
        let job = &run.ctx.job;
        // Only jobs with store-backed files need an HTTP client.
        let store = job
            .files
            .values()
            .any(|f| f.bucket.is_some() && f.key.is_some())
            .then(|| FilesStore::for_job(&run.ctx.client, &run.ctx.job_ref));
        let mut out = Vec::new();
        for (rel, f) in &job.files {
            let path = ws.file_path(rel).map_err(|e| e.to_string())?;
            let content = match &store {
                Some(store) => store.content(f).await.map_err(|e| e.to_string())?,
                None => f.content.clone(),
            };
            out.push(WorkspaceFile {
                path,
                content,
                modified_at: f.modified_at.clone(),
            });
        }
        for (i, s) in job.docker_steps.iter().enumerate() {
            out.push(WorkspaceFile {
                path: ws
                    .path()
                    .join(SCRIPTS_DIR)
                    .join(workspace::script_name(job, i)),
                content: workspace::build_script(&s.commands).into_bytes(),
                modified_at: None,
            });
        }
        Ok(out)
    }

    async fn in_sandbox(
        &self,
        run: &Run<'_>,
        ws: &Workspace,
        steps: &[Step],
    ) -> Result<(), String> {
        let job = &run.ctx.job;
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let spec = SandboxSpec {
            name: format!("{}-{}-{}", self.opts.sandbox_prefix, job.id, &suffix[..8]),
            cpus: self.opts.cpus,
            memory_mib: self.opts.memory_mib,
            workspace: Some(ws.path().to_path_buf()),
            workspace_disk_mib: self.opts.disk_mib,
            sync_back: false,
            network: self.opts.network,
            ready_timeout: self.opts.ready_timeout,
        };
        let kind = self.isolation.kind();
        let setup_err = |e: &dyn std::fmt::Display| {
            if run.legacy {
                format!("failed to setup virtual machine: {e}")
            } else {
                format!("creating runtime runner: {e}")
            }
        };
        let entry = run.sink.open("setup.sandbox.start", Vec::new());
        entry.write_raw(&format!(
            "Starting {kind} sandbox {}: {} CPUs, {} MiB memory, {} MiB workspace disk\n",
            spec.name, spec.cpus, spec.memory_mib, spec.workspace_disk_mib
        ));
        // A cancel during start is acted on once the sandbox is up (then torn down at once):
        // dropping a half-started sandbox could leak what it had made so far.
        let sandbox = match self.isolation.start(&spec).await {
            Ok(s) => s,
            Err(e) => {
                entry.write_raw(&format!("{e}\n"));
                entry.finish(1);
                return Err(setup_err(&e));
            }
        };
        let t = sandbox.timings();
        entry.write_raw(&format!("Ready in {} ms\n", t.total.as_millis()));
        if !t.detail.is_empty() {
            entry.write_raw(&format!("{}\n", t.detail.trim_end()));
        }
        entry.finish(0);
        if kind == IsolationKind::Vm
            && let Some(m) = &self.metrics
        {
            m.vm_boot(t.total.as_secs_f64());
        }

        let mut result = Ok(());
        for step in steps {
            let started = Instant::now();
            let r = steps::run_step(sandbox.client(), run.sink, step, &run.ctx.cancel).await;
            self.observe(&step.key, started);
            if let Err(e) = r {
                result = Err(match (run.legacy, step.kind) {
                    (false, _) => format!("running command {:?}: {e}", step.key),
                    (true, StepKind::Docker) => format!("failed to perform docker step: {e}"),
                    (true, StepKind::Src) => format!("failed to perform src-cli step: {e}"),
                });
                break;
            }
        }

        let entry = run.sink.open("teardown.sandbox.remove", Vec::new());
        match sandbox.teardown().await {
            Ok(()) => {
                entry.write_raw(&format!("Removed {kind} sandbox {}\n", spec.name));
                entry.finish(0);
            }
            Err(e) => {
                entry.write_raw(&format!("{e}\n"));
                entry.finish(1);
                result = append_err(result, format!("tearing down the sandbox: {e}"));
            }
        }
        result
    }

    fn observe(&self, key: &str, started: Instant) {
        if let Some(m) = &self.metrics {
            m.step_duration(key, started.elapsed().as_secs_f64());
        }
    }
}

/// Go's `errors.Append`, flattened to one line.
fn append_err(result: Result<(), String>, more: String) -> Result<(), String> {
    match result {
        Ok(()) => Err(more),
        Err(e) => Err(format!("{e}; {more}")),
    }
}

impl JobHandler for JobRunner {
    async fn handle(&self, ctx: JobContext) -> Result<(), HandlerError> {
        let redactor = Redactor::for_job(&ctx.client.options().password, &ctx.job.redacted_values);
        let sink = LogSink::new(
            QueueLogTransport {
                client: ctx.client.clone(),
                job: ctx.job_ref.clone(),
            },
            redactor.clone(),
            self.opts.log.clone(),
        );
        let run = Run {
            ctx: &ctx,
            sink: &sink,
            legacy: !ctx.job.cli_steps.is_empty(),
        };
        let mut result = self.run(&run).await;
        if let Err(e) = sink.flush(self.opts.flush_timeout).await {
            result = append_err(result, e.to_string());
        }
        result.map_err(|e| HandlerError::Errored(redactor.redact(&e)))
    }
}
