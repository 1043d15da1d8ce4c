//! Executor configuration: the original's `EXECUTOR_*` environment variables (same names,
//! defaults and validation messages), overridden by command-line flags, into one validated
//! [`Config`].
//!
//! Differences from the original, on purpose: without `EXECUTOR_FRONTEND_URL` hearth serves the
//! queue API itself (embedded mode), so the URL, the password and the queue names become optional
//! there (password: a random per-process secret; queues: both `batches` and `codeintel`).

mod compat;
mod flags;
pub mod parse;

pub use flags::ConfigFlags;

use std::path::PathBuf;
use std::time::Duration;
use thiserror::Error;

/// Queue names the original frontend serves (`internal/executor/types/queues.go`).
pub const VALID_QUEUE_NAMES: [&str; 2] = ["batches", "codeintel"];

/// The version string hearth reports to the frontend: a semver ≥ 4.3.0 so the frontend sends
/// v2 job payloads (see `queue::version`).
pub const EXECUTOR_VERSION: &str = "5.5.0";

/// All problems found while loading; every one is reported, like the original's `AddError`.
#[derive(Debug, Error)]
#[error("invalid configuration:\n{}", .0.join("\n"))]
pub struct ConfigError(pub Vec<String>);

/// Which queue(s) the executor polls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueSelection {
    /// `EXECUTOR_QUEUE_NAME`: single-queue routes (`/.executors/queue/{queue}/…`).
    Single(String),
    /// `EXECUTOR_QUEUE_NAMES`: multi-queue routes (`/.executors/queue/dequeue`, `/heartbeat`).
    Multi(Vec<String>),
}

impl QueueSelection {
    /// The queue names, in order.
    pub fn names(&self) -> Vec<String> {
        match self {
            QueueSelection::Single(q) => vec![q.clone()],
            QueueSelection::Multi(qs) => qs.clone(),
        }
    }
}

/// Log verbosity from `SRC_LOG_LEVEL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
    Critical,
}

impl LogLevel {
    /// The `tracing` filter directive for this level (`crit` maps to `error`).
    pub fn as_filter(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error | LogLevel::Critical => "error",
        }
    }
}

/// The validated executor configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `EXECUTOR_FRONTEND_URL`; `None` selects the embedded queue server.
    pub frontend_url: Option<String>,
    /// `EXECUTOR_FRONTEND_PASSWORD` (in embedded mode a random secret when unset).
    pub frontend_password: String,
    pub queues: QueueSelection,
    /// `EXECUTOR_QUEUE_POLL_INTERVAL` (1s).
    pub queue_poll_interval: Duration,
    /// `EXECUTOR_MAXIMUM_NUM_JOBS` (1).
    pub maximum_num_jobs: usize,
    /// `EXECUTOR_MAXIMUM_RUNTIME_PER_JOB` (30m).
    pub maximum_runtime_per_job: Duration,
    /// `EXECUTOR_JOB_NUM_CPUS`, falling back to `EXECUTOR_FIRECRACKER_NUM_CPUS` (4).
    pub job_num_cpus: u32,
    /// `EXECUTOR_JOB_MEMORY`, falling back to `EXECUTOR_FIRECRACKER_MEMORY` (`12G`), as written.
    pub job_memory: String,
    /// `EXECUTOR_JOB_MEMORY` in bytes.
    pub job_memory_bytes: u64,
    /// `EXECUTOR_FIRECRACKER_DISK_SPACE` (`20G`), as written.
    pub disk_space: String,
    /// `EXECUTOR_FIRECRACKER_DISK_SPACE` in bytes.
    pub disk_space_bytes: u64,
    /// `EXECUTOR_NUM_TOTAL_JOBS` (0 = unlimited).
    pub num_total_jobs: u64,
    /// `EXECUTOR_MAX_ACTIVE_TIME` (0 = unlimited).
    pub max_active_time: Duration,
    /// `EXECUTOR_KEEP_WORKSPACES` (false).
    pub keep_workspaces: bool,
    /// `EXECUTOR_VM_PREFIX` (`executor`).
    pub vm_prefix: String,
    /// `EXECUTOR_USE_FIRECRACKER` (true): hearth's VM sandbox; false selects the process sandbox.
    pub use_vm: bool,
    /// `EXECUTOR_DOCKER_ADD_HOST_GATEWAY` (false).
    pub docker_add_host_gateway: bool,
    /// `SRC_LOG_LEVEL` (`warn`).
    pub log_level: LogLevel,
    /// `SRC_LOG_FORMAT` (`logfmt`).
    pub log_format: String,
    /// `<hostname>-<uuid v4>`, new at every process start.
    pub executor_name: String,
    /// Heartbeat period (5 s in the original; not configurable there).
    pub heartbeat_interval: Duration,
    /// hearth: `HEARTH_QUEUE_DB`, the embedded queue's SQLite file.
    pub embedded_db: PathBuf,
    /// hearth: `HEARTH_METRICS_ADDR`, where to serve `/metrics` (none by default).
    pub metrics_addr: Option<String>,
}

impl Config {
    /// Loads from the process environment, then applies `flags`.
    pub fn from_env(flags: &ConfigFlags) -> Result<Config, ConfigError> {
        Config::load(&|name| std::env::var(name).ok(), flags)
    }

    /// Loads from `env` (name → value; empty values count as unset, as in the original), then
    /// applies `flags` (which win), then validates.
    pub fn load(
        env: &dyn Fn(&str) -> Option<String>,
        flags: &ConfigFlags,
    ) -> Result<Config, ConfigError> {
        let mut errors = Vec::new();
        let get = |name: &str, flag: &Option<String>| -> Option<String> {
            flag.clone().or_else(|| env(name)).filter(|v| !v.is_empty())
        };

        let frontend_url = get("EXECUTOR_FRONTEND_URL", &flags.frontend_url);
        let embedded = frontend_url.is_none();
        let frontend_password = match get("EXECUTOR_FRONTEND_PASSWORD", &flags.frontend_password) {
            Some(p) => p,
            None if embedded => uuid::Uuid::new_v4().simple().to_string(),
            None => {
                errors.push(no_value("EXECUTOR_FRONTEND_PASSWORD"));
                String::new()
            }
        };
        let queue_name = get("EXECUTOR_QUEUE_NAME", &flags.queue_name);
        let queue_names = get("EXECUTOR_QUEUE_NAMES", &flags.queue_names);
        let queues = select_queues(queue_name, queue_names, embedded, &mut errors);

        let queue_poll_interval = duration(
            "EXECUTOR_QUEUE_POLL_INTERVAL",
            get("EXECUTOR_QUEUE_POLL_INTERVAL", &flags.queue_poll_interval),
            "1s",
            &mut errors,
        );
        let maximum_num_jobs = int::<usize>(
            "EXECUTOR_MAXIMUM_NUM_JOBS",
            get("EXECUTOR_MAXIMUM_NUM_JOBS", &flags.maximum_num_jobs),
            "1",
            &mut errors,
        );
        let maximum_runtime_per_job = duration(
            "EXECUTOR_MAXIMUM_RUNTIME_PER_JOB",
            get(
                "EXECUTOR_MAXIMUM_RUNTIME_PER_JOB",
                &flags.maximum_runtime_per_job,
            ),
            "30m",
            &mut errors,
        );
        let cpus_raw = get("EXECUTOR_JOB_NUM_CPUS", &flags.job_num_cpus)
            .or_else(|| get("EXECUTOR_FIRECRACKER_NUM_CPUS", &None));
        let job_num_cpus = int::<u32>("EXECUTOR_JOB_NUM_CPUS", cpus_raw, "4", &mut errors);
        let job_memory = get("EXECUTOR_JOB_MEMORY", &flags.job_memory)
            .or_else(|| get("EXECUTOR_FIRECRACKER_MEMORY", &None))
            .unwrap_or_else(|| "12G".to_string());
        let disk_space = get("EXECUTOR_FIRECRACKER_DISK_SPACE", &flags.disk_space)
            .unwrap_or_else(|| "20G".to_string());
        let num_total_jobs = int::<u64>(
            "EXECUTOR_NUM_TOTAL_JOBS",
            get("EXECUTOR_NUM_TOTAL_JOBS", &flags.num_total_jobs),
            "0",
            &mut errors,
        );
        let max_active_time = duration(
            "EXECUTOR_MAX_ACTIVE_TIME",
            get("EXECUTOR_MAX_ACTIVE_TIME", &flags.max_active_time),
            "0",
            &mut errors,
        );
        let keep_workspaces = boolean(
            "EXECUTOR_KEEP_WORKSPACES",
            get("EXECUTOR_KEEP_WORKSPACES", &None),
            false,
            &mut errors,
        );
        let use_vm = boolean(
            "EXECUTOR_USE_FIRECRACKER",
            get("EXECUTOR_USE_FIRECRACKER", &None),
            true,
            &mut errors,
        );
        let docker_add_host_gateway = boolean(
            "EXECUTOR_DOCKER_ADD_HOST_GATEWAY",
            get("EXECUTOR_DOCKER_ADD_HOST_GATEWAY", &None),
            false,
            &mut errors,
        );
        let vm_prefix = get("EXECUTOR_VM_PREFIX", &None).unwrap_or_else(|| "executor".to_string());
        let level_raw =
            get("SRC_LOG_LEVEL", &flags.log_level).unwrap_or_else(|| "warn".to_string());
        let log_level = match level_raw.as_str() {
            "dbug" | "debug" => LogLevel::Debug,
            "info" => LogLevel::Info,
            "warn" => LogLevel::Warn,
            "error" => LogLevel::Error,
            "crit" => LogLevel::Critical,
            other => {
                errors.push(format!(
                    "invalid value {other:?} for SRC_LOG_LEVEL: must be one of dbug, info, warn, error, crit"
                ));
                LogLevel::Warn
            }
        };
        let log_format = get("SRC_LOG_FORMAT", &None).unwrap_or_else(|| "logfmt".to_string());
        if !["logfmt", "condensed", "json", "json_gcp"].contains(&log_format.as_str()) {
            errors.push(format!(
                "invalid value {log_format:?} for SRC_LOG_FORMAT: must be one of logfmt, condensed, json, json_gcp"
            ));
        }

        compat::validate(env, &mut errors);

        // Validate (messages follow the original's `Config.Validate`).
        if let Some(url) = &frontend_url {
            validate_frontend_url(url, docker_add_host_gateway, &mut errors);
        }
        if use_vm && job_num_cpus != 1 && !job_num_cpus.is_multiple_of(2) {
            errors.push("EXECUTOR_JOB_NUM_CPUS must be 1 or an even number".to_string());
        }
        let disk_space_bytes = match parse::parse_datasize(&disk_space) {
            Ok(b) => b,
            Err(e) => {
                errors.push(format!(
                    "invalid disk size provided for EXECUTOR_FIRECRACKER_DISK_SPACE: {disk_space:?}: {e}"
                ));
                0
            }
        };
        let job_memory_bytes = match parse::parse_datasize(&job_memory) {
            Ok(b) => b,
            Err(e) => {
                errors.push(format!(
                    "invalid memory size provided for EXECUTOR_JOB_MEMORY: {job_memory:?}: {e}"
                ));
                0
            }
        };
        if maximum_num_jobs == 0 {
            errors.push("EXECUTOR_MAXIMUM_NUM_JOBS must be at least 1".to_string());
        }

        if !errors.is_empty() {
            return Err(ConfigError(errors));
        }
        Ok(Config {
            frontend_url,
            frontend_password,
            queues,
            queue_poll_interval,
            maximum_num_jobs,
            maximum_runtime_per_job,
            job_num_cpus,
            job_memory,
            job_memory_bytes,
            disk_space,
            disk_space_bytes,
            num_total_jobs,
            max_active_time,
            keep_workspaces,
            vm_prefix,
            use_vm,
            docker_add_host_gateway,
            log_level,
            log_format,
            executor_name: format!("{}-{}", hostname(), uuid::Uuid::new_v4()),
            heartbeat_interval: Duration::from_secs(5),
            embedded_db: flags
                .db
                .clone()
                .or_else(|| {
                    env("HEARTH_QUEUE_DB")
                        .filter(|v| !v.is_empty())
                        .map(PathBuf::from)
                })
                .unwrap_or_else(|| default_db_path(env)),
            metrics_addr: get("HEARTH_METRICS_ADDR", &flags.metrics_addr),
        })
    }

    /// True when no frontend URL is configured and hearth serves the queue itself.
    pub fn is_embedded(&self) -> bool {
        self.frontend_url.is_none()
    }
}

fn no_value(name: &str) -> String {
    format!("invalid value \"\" for {name}: no value supplied")
}

fn select_queues(
    name: Option<String>,
    names: Option<String>,
    embedded: bool,
    errors: &mut Vec<String>,
) -> QueueSelection {
    let valid = VALID_QUEUE_NAMES.join(", ");
    match (name, names) {
        (None, None) if embedded => {
            QueueSelection::Multi(VALID_QUEUE_NAMES.iter().map(|s| s.to_string()).collect())
        }
        (None, None) => {
            errors.push("neither EXECUTOR_QUEUE_NAME or EXECUTOR_QUEUE_NAMES is set".to_string());
            QueueSelection::Multi(Vec::new())
        }
        (Some(_), Some(_)) => {
            errors.push("both EXECUTOR_QUEUE_NAME and EXECUTOR_QUEUE_NAMES are set".to_string());
            QueueSelection::Multi(Vec::new())
        }
        (Some(q), None) => {
            if !VALID_QUEUE_NAMES.contains(&q.as_str()) {
                errors.push(format!(
                    "EXECUTOR_QUEUE_NAME must be set to one of '{valid}'"
                ));
            }
            QueueSelection::Single(q)
        }
        (None, Some(qs)) => {
            let list: Vec<String> = qs.split(',').map(str::to_string).collect();
            for q in &list {
                if !VALID_QUEUE_NAMES.contains(&q.as_str()) {
                    errors.push(format!(
                        "EXECUTOR_QUEUE_NAMES contains invalid queue name '{q}', valid names are '{valid}' and should be comma-separated"
                    ));
                }
            }
            QueueSelection::Multi(list)
        }
    }
}

fn validate_frontend_url(url: &str, add_host_gateway: bool, errors: &mut Vec<String>) {
    match reqwest::Url::parse(url) {
        Ok(u) => {
            let host = u.host_str().unwrap_or("");
            if host.is_empty() || !u.has_authority() {
                errors.push(
                    "EXECUTOR_FRONTEND_URL must be in the format scheme://host (and optionally :port)"
                        .to_string(),
                );
            }
            if host == "host.docker.internal" && !add_host_gateway {
                errors.push("Making the executor talk to host.docker.internal but not allowing host gateway access using EXECUTOR_DOCKER_ADD_HOST_GATEWAY can cause connectivity problems".to_string());
            }
            if !matches!(u.scheme(), "http" | "https") {
                errors.push(format!(
                    "EXECUTOR_FRONTEND_URL scheme must be http or https, got {:?}",
                    u.scheme()
                ));
            }
        }
        Err(e) => {
            errors.push(format!("failed to parse EXECUTOR_FRONTEND_URL: {e}"));
            errors.push(
                "EXECUTOR_FRONTEND_URL must be in the format scheme://host (and optionally :port)"
                    .to_string(),
            );
        }
    }
}

fn duration(name: &str, raw: Option<String>, default: &str, errors: &mut Vec<String>) -> Duration {
    let raw = raw.unwrap_or_else(|| default.to_string());
    parse::parse_go_duration(&raw).unwrap_or_else(|e| {
        errors.push(format!("invalid duration {raw:?} for {name}: {e}"));
        Duration::ZERO
    })
}

fn int<T: std::str::FromStr + Default>(
    name: &str,
    raw: Option<String>,
    default: &str,
    errors: &mut Vec<String>,
) -> T
where
    T::Err: std::fmt::Display,
{
    let raw = raw.unwrap_or_else(|| default.to_string());
    raw.trim().parse::<T>().unwrap_or_else(|e| {
        errors.push(format!("invalid int {raw:?} for {name}: {e}"));
        T::default()
    })
}

fn boolean(name: &str, raw: Option<String>, default: bool, errors: &mut Vec<String>) -> bool {
    match raw {
        None => default,
        Some(raw) => parse::parse_go_bool(&raw).unwrap_or_else(|e| {
            errors.push(format!("invalid bool {raw:?} for {name}: {e}"));
            default
        }),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "hearth".to_string())
}

fn default_db_path(env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    let base = env("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            env("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".local/state"))
        })
        .unwrap_or_else(|| PathBuf::from("/var/lib"));
    base.join("hearth").join("queue.sqlite")
}

#[cfg(test)]
mod tests;
