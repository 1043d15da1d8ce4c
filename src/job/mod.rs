//! One job's life: the runner ([`runner::JobRunner`], the worker's `JobHandler`), the host
//! workspace with its git clone through a per-job credentials proxy and its files, the steps run
//! through the sandbox's agent, log entries (line prefixes, batching, 1 s updates) and redaction.

pub mod files_store;
pub mod git;
pub mod git_proxy;
pub mod host_cmd;
pub mod logs;
pub mod redact;
pub mod runner;
pub mod steps;
pub mod workspace;
