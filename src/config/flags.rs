//! Command-line flags that override the `EXECUTOR_*` environment (flatten into a clap command).

use std::path::PathBuf;

/// Flags that override the environment; every field is optional and wins over its variable.
/// Values are parsed and validated together with the environment by [`super::Config::load`].
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigFlags {
    /// Overrides EXECUTOR_FRONTEND_URL (unset: serve the queue API locally).
    #[arg(long, value_name = "URL")]
    pub frontend_url: Option<String>,
    /// Overrides EXECUTOR_FRONTEND_PASSWORD.
    #[arg(long, value_name = "TOKEN")]
    pub frontend_password: Option<String>,
    /// Overrides EXECUTOR_QUEUE_NAME.
    #[arg(long, value_name = "QUEUE")]
    pub queue_name: Option<String>,
    /// Overrides EXECUTOR_QUEUE_NAMES (comma-separated).
    #[arg(long, value_name = "QUEUES")]
    pub queue_names: Option<String>,
    /// Overrides EXECUTOR_QUEUE_POLL_INTERVAL (Go duration, e.g. 1s).
    #[arg(long, value_name = "DURATION")]
    pub queue_poll_interval: Option<String>,
    /// Overrides EXECUTOR_MAXIMUM_NUM_JOBS.
    #[arg(long, value_name = "N")]
    pub maximum_num_jobs: Option<String>,
    /// Overrides EXECUTOR_MAXIMUM_RUNTIME_PER_JOB (Go duration, e.g. 30m).
    #[arg(long, value_name = "DURATION")]
    pub maximum_runtime_per_job: Option<String>,
    /// Overrides EXECUTOR_JOB_NUM_CPUS.
    #[arg(long, value_name = "N")]
    pub job_num_cpus: Option<String>,
    /// Overrides EXECUTOR_JOB_MEMORY (e.g. 12G).
    #[arg(long, value_name = "SIZE")]
    pub job_memory: Option<String>,
    /// Overrides EXECUTOR_FIRECRACKER_DISK_SPACE (e.g. 20G).
    #[arg(long, value_name = "SIZE")]
    pub disk_space: Option<String>,
    /// Overrides EXECUTOR_NUM_TOTAL_JOBS.
    #[arg(long, value_name = "N")]
    pub num_total_jobs: Option<String>,
    /// Overrides EXECUTOR_MAX_ACTIVE_TIME (Go duration).
    #[arg(long, value_name = "DURATION")]
    pub max_active_time: Option<String>,
    /// Overrides SRC_LOG_LEVEL (dbug, info, warn, error, crit).
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Overrides HEARTH_QUEUE_DB (the embedded queue's SQLite file).
    #[arg(long, value_name = "PATH")]
    pub db: Option<PathBuf>,
    /// Overrides HEARTH_METRICS_ADDR (serve Prometheus /metrics on this address).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<String>,
}
