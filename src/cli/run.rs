//! `hearth run`: the executor daemon. Loads the `EXECUTOR_*` configuration (flags win), serves
//! the queue API itself on loopback when no `EXECUTOR_FRONTEND_URL` is set (SQLite file, see
//! `hearth submit|jobs|logs|cancel`), serves `/metrics` when asked, and runs up to
//! `EXECUTOR_MAXIMUM_NUM_JOBS` jobs at once — no more than the host vCPU/memory budget holds —
//! in VM or process sandboxes.
//!
//! SIGTERM/SIGINT: stop dequeuing and let running jobs finish within `--shutdown-timeout`; at
//! the deadline (or on a second signal) running jobs are handed back: requeued at once in the
//! embedded queue (failed after too many resets), left to the frontend's heartbeat stall reset
//! otherwise. Their sandboxes are torn down as the process exits.

use super::isolation::IsolationOpts;
use anyhow::Context;
use hearth::config::parse::{parse_datasize, parse_go_duration};
use hearth::config::{Config, ConfigFlags};
use hearth::job::runner::{JobRunner, RunnerOptions};
use hearth::metrics::{self, Metrics};
use hearth::queue::client::{ClientOptions, QueueClient};
use hearth::queue::embedded::{self, EmbeddedQueue};
use hearth::queue::store::StoreOptions;
use hearth::queue::worker::{self, WorkerOptions};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigFlags,
    #[command(flatten)]
    pub isolation: IsolationOpts,
    /// Parent directory of the per-job workspaces. Default: $TMPDIR/hearth-workspaces.
    #[arg(long, value_name = "DIR")]
    pub workspace_root: Option<PathBuf>,
    /// Address of the embedded queue API (no EXECUTOR_FRONTEND_URL); port 0 picks a free one.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub listen: String,
    /// After SIGTERM/SIGINT, how long running jobs may take to finish before they are handed
    /// back (Go duration).
    #[arg(long, value_name = "DURATION", default_value = "5m")]
    pub shutdown_timeout: String,
    /// vCPUs all running jobs may use together. Default: the host's online CPUs.
    #[arg(long, value_name = "N")]
    pub host_cpus: Option<u64>,
    /// Memory all running jobs may use together (e.g. 16G). Default: MemTotal minus 1 GiB.
    #[arg(long, value_name = "SIZE")]
    pub host_memory: Option<String>,
    /// Base URL serving `/.executors/git/<repo>` for clones (env HEARTH_GIT_UPSTREAM). Default:
    /// the frontend URL. The embedded queue serves no repositories, so jobs with a repository
    /// need this in embedded mode.
    #[arg(long, value_name = "URL")]
    pub git_upstream: Option<String>,
}

/// 0 running, 1 draining (stop dequeuing), 2 hand back now.
type Stage = watch::Receiver<u8>;

pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let config = Config::from_env(&args.config)?;
    let shutdown_timeout = parse_go_duration(&args.shutdown_timeout)
        .map_err(|e| anyhow::anyhow!("--shutdown-timeout {:?}: {e}", args.shutdown_timeout))?;
    let kind = args.isolation.kind(&config);
    if let Some(notice) = kind.weakness_notice() {
        eprintln!("hearth: {notice}");
        tracing::warn!("{notice}");
    }
    let isolation = args.isolation.build(&config)?;
    let metrics = Metrics::new(&config.queues.names());
    if let Some(addr) = &config.metrics_addr {
        let (bound, _task) = metrics::serve(addr, metrics.clone()).await?;
        eprintln!("hearth: metrics on http://{bound}/metrics");
    }
    let stage = signals()?;

    let (client, embedded) = if config.is_embedded() {
        let eq = embedded::serve(&config, &args.listen, StoreOptions::default())
            .await
            .context("starting the embedded queue")?;
        eprintln!(
            "hearth: embedded queue on {} (db {})",
            eq.server.base_url(),
            config.embedded_db.display()
        );
        let r = &eq.reconciled;
        if !r.requeued.is_empty() || !r.failed.is_empty() {
            eprintln!(
                "hearth: jobs left running by an earlier hearth: requeued {:?}, failed {:?}",
                r.requeued, r.failed
            );
        }
        (eq.client(&config, Some(metrics.clone()))?, Some(eq))
    } else {
        let client = QueueClient::new(
            ClientOptions::from_config(&config, None),
            Some(metrics.clone()),
        )?;
        if !wait_for_frontend(&client, stage.clone()).await {
            return Ok(ExitCode::from(1));
        }
        (client, None)
    };

    let mut opts = WorkerOptions::from_config(&config);
    opts.max_jobs = budgeted_max_jobs(&config, args.host_cpus, args.host_memory.as_deref())?;
    let workspace_root = args
        .workspace_root
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("hearth-workspaces"));
    std::fs::create_dir_all(&workspace_root)
        .with_context(|| format!("creating {}", workspace_root.display()))?;
    let mut runner_opts = RunnerOptions::from_config(&config, workspace_root);
    runner_opts.git_upstream = args
        .git_upstream
        .clone()
        .or_else(|| std::env::var("HEARTH_GIT_UPSTREAM").ok())
        .filter(|u| !u.is_empty());
    let runner = JobRunner::new(isolation, runner_opts, Some(metrics.clone()));
    eprintln!(
        "hearth: running up to {} job(s) at once with {kind} isolation, executor {}",
        opts.max_jobs, config.executor_name
    );

    let mut draining = stage.clone();
    let worker = worker::run(client, Arc::new(runner), opts, Some(metrics), async move {
        let _ = draining.wait_for(|s| *s >= 1).await;
    });
    tokio::pin!(worker);
    let mut stage = stage;
    tokio::select! {
        summary = &mut worker => {
            eprintln!("hearth: worker stopped: {summary:?}");
            return Ok(ExitCode::SUCCESS);
        }
        _ = stage.wait_for(|s| *s >= 1) => {}
    }
    eprintln!(
        "hearth: stopping: no new jobs; running jobs have {shutdown_timeout:?} to finish \
         (signal again to hand them back now)"
    );
    tokio::select! {
        summary = &mut worker => {
            eprintln!("hearth: all running jobs finished: {summary:?}");
            return Ok(ExitCode::SUCCESS);
        }
        _ = tokio::time::sleep(shutdown_timeout) => {}
        _ = stage.wait_for(|s| *s >= 2) => {}
    }
    hand_back(embedded.as_ref());
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM/SIGINT bump the stage: first drain, then hand back.
fn signals() -> anyhow::Result<Stage> {
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let (tx, rx) = watch::channel(0u8);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tx.send_modify(|s| *s = s.saturating_add(1));
        }
    });
    Ok(rx)
}

fn hand_back(embedded: Option<&EmbeddedQueue>) {
    match embedded {
        Some(eq) => match eq.store.reconcile_orphaned() {
            Ok(r) => eprintln!(
                "hearth: handed back running jobs: requeued {:?}, failed {:?}",
                r.requeued, r.failed
            ),
            Err(e) => eprintln!("hearth: handing back running jobs failed: {e}"),
        },
        None => eprintln!(
            "hearth: leaving running jobs to the frontend: it requeues them when their \
             heartbeats stop"
        ),
    }
}

/// The original's startup check: ping (a minimal heartbeat) every second until the frontend
/// answers; false when a signal arrives first.
async fn wait_for_frontend(client: &QueueClient, mut stage: Stage) -> bool {
    let started = std::time::Instant::now();
    loop {
        match client.ping().await {
            Ok(()) => return true,
            Err(e) if started.elapsed() > Duration::from_secs(60) || !e.is_transient() => {
                tracing::warn!(error = %e, "frontend not reachable yet")
            }
            Err(e) => tracing::debug!(error = %e, "frontend not reachable yet"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stage.wait_for(|s| *s >= 1) => return false,
        }
    }
}

/// `EXECUTOR_MAXIMUM_NUM_JOBS`, lowered to what the host vCPU/memory budget holds (at least 1).
fn budgeted_max_jobs(
    config: &Config,
    host_cpus: Option<u64>,
    host_memory: Option<&str>,
) -> anyhow::Result<usize> {
    let cpus = match host_cpus {
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
    };
    let memory = match host_memory {
        Some(s) => parse_datasize(s).map_err(|e| anyhow::anyhow!("--host-memory {s:?}: {e}"))?,
        None => mem_total().saturating_sub(1 << 30),
    };
    let job_cpus = u64::from(config.job_num_cpus.max(1));
    let job_mem = config.job_memory_bytes.max(1);
    let fit = (cpus / job_cpus).min(memory / job_mem);
    let wanted = config.maximum_num_jobs as u64;
    let budget = format!("{cpus} vCPUs, {} MiB", memory >> 20);
    if fit == 0 {
        eprintln!(
            "hearth: warning: one job ({job_cpus} vCPUs, {}) exceeds the host budget ({budget}); \
             running one job at a time",
            config.job_memory
        );
        return Ok(1);
    }
    if fit < wanted {
        eprintln!(
            "hearth: warning: EXECUTOR_MAXIMUM_NUM_JOBS={wanted} jobs of {job_cpus} vCPUs and {} \
             exceed the host budget ({budget}); running at most {fit} at once",
            config.job_memory
        );
        return Ok(fit as usize);
    }
    Ok(config.maximum_num_jobs)
}

fn mem_total() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(env: &[(&str, &str)]) -> Config {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load(
            &|k| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()),
            &ConfigFlags::default(),
        )
        .unwrap()
    }

    #[test]
    fn host_budget_limits_concurrency() {
        let c = config(&[
            ("EXECUTOR_MAXIMUM_NUM_JOBS", "8"),
            ("EXECUTOR_JOB_NUM_CPUS", "2"),
            ("EXECUTOR_JOB_MEMORY", "4G"),
        ]);
        // CPU-bound, memory-bound, unconstrained, and a single job larger than the host.
        assert_eq!(budgeted_max_jobs(&c, Some(8), Some("64G")).unwrap(), 4);
        assert_eq!(budgeted_max_jobs(&c, Some(64), Some("10G")).unwrap(), 2);
        assert_eq!(budgeted_max_jobs(&c, Some(64), Some("64G")).unwrap(), 8);
        assert_eq!(budgeted_max_jobs(&c, Some(1), Some("1G")).unwrap(), 1);
        assert!(budgeted_max_jobs(&c, None, Some("lots")).is_err());
    }
}
