//! Sandboxes: where a job's commands run. Two isolation kinds share one contract: a microVM
//! booted in-process by `hearth-vmm` ([`vm`]), or the same guest agent as a host process inside
//! fresh namespaces ([`process`], weaker). Either way the caller gets a connected agent
//! [`Client`], the workspace at `/work`, and a teardown that removes everything it made.

pub mod artifacts;
pub mod network;
pub mod process;
pub mod vm;
pub mod workspace;

use hearth_agent::client::Client;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

/// A boxed future, so the traits stay object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Which isolation a sandbox gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IsolationKind {
    /// A KVM microVM (the default).
    Vm,
    /// Namespaces + cgroups on the host kernel: weaker than a VM.
    Process,
}

impl IsolationKind {
    /// What every job log (and `hearth validate`) must say about this kind, if anything.
    pub fn weakness_notice(self) -> Option<&'static str> {
        match self {
            IsolationKind::Vm => None,
            IsolationKind::Process => Some(
                "WARNING: process isolation (EXECUTOR_USE_FIRECRACKER=false / --isolation \
                 process) is weaker than a VM: jobs run in namespaces and cgroups on the host's \
                 own kernel, so a kernel bug or a misconfiguration can let a job reach the host.",
            ),
        }
    }
}

impl std::fmt::Display for IsolationKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IsolationKind::Vm => "vm",
            IsolationKind::Process => "process",
        })
    }
}

/// What one sandbox should look like.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    /// A short unique name (job id, "exec-<pid>"): names resources (tap, cgroup, image files)
    /// so that reconcile-at-start can find leftovers.
    pub name: String,
    pub cpus: u8,
    pub memory_mib: u64,
    /// Host directory that becomes the guest's `/work` (VM: copied into a disk image of
    /// `workspace_disk_mib`; process: bind-mounted).
    pub workspace: Option<PathBuf>,
    /// Size of the VM workspace disk (the job's disk-space setting).
    pub workspace_disk_mib: u64,
    /// Copy the guest's `/work` back into `workspace` at teardown (`hearth exec --workspace`).
    pub sync_back: bool,
    /// Give the sandbox outbound network access (isolated: no host, private or link-local).
    pub network: bool,
    /// Give up when the agent is not ready after this long.
    pub ready_timeout: Duration,
}

/// Where the time to a ready agent went.
#[derive(Debug, Clone, Default)]
pub struct StartTimings {
    /// Start requested → agent handshake done.
    pub total: Duration,
    /// Human-readable breakdown (VM: boot phases).
    pub detail: String,
}

/// Errors starting or tearing down a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("sandbox configuration: {0}")]
    Config(String),
    #[error("starting the sandbox: {0}")]
    Start(String),
    #[error("the agent did not become ready: {0}")]
    NotReady(String),
    #[error("workspace: {0}")]
    Workspace(String),
    #[error("teardown: {0}")]
    Teardown(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// Starts sandboxes of one kind.
pub trait Isolation: Send + Sync {
    fn kind(&self) -> IsolationKind;
    /// Boots/spawns a sandbox and returns it with a handshaken agent client.
    fn start<'a>(
        &'a self,
        spec: &'a SandboxSpec,
    ) -> BoxFuture<'a, Result<Box<dyn Sandbox>, SandboxError>>;
}

/// One running sandbox.
pub trait Sandbox: Send + Sync {
    fn kind(&self) -> IsolationKind;
    /// The connected agent.
    fn client(&self) -> &Client;
    fn timings(&self) -> StartTimings;
    /// Where the VM console log (or process-mode agent log) is, for error messages.
    fn log_path(&self) -> Option<PathBuf>;
    /// Stops the sandbox and removes everything it made (VM, disk images, tap, nftables rules,
    /// cgroup, namespaces); copies `/work` back first when `sync_back` was asked. Idempotent
    /// work is also done on drop where possible, so a panic leaks nothing.
    fn teardown(self: Box<Self>) -> BoxFuture<'static, Result<(), SandboxError>>;
}
