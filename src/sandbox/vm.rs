//! VM isolation: each sandbox is a hearth-vmm microVM booted in this process. The rootfs is
//! attached read-only (the agent puts a tmpfs overlay on top), the workspace directory becomes an
//! ext4 image attached read-write as `/dev/vdb` and mounted by the agent at `/work`, and the host
//! reaches the agent over the VM's in-process vsock.

use super::artifacts::GuestArtifacts;
use super::network::HostNetwork;
use super::workspace::{self, ScratchDir};
use super::{
    BoxFuture, Isolation, IsolationKind, Sandbox, SandboxError, SandboxSpec, StartTimings,
};
use hearth_agent::client::Client;
use hearth_vmm::{Vm, VmBuilder, VmError, VmExit};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The agent's vsock port (`hearth.port`, the agent's default).
pub const AGENT_PORT: u32 = 1024;
/// How long teardown waits for the agent to acknowledge shutdown, and then for the guest to
/// power off, before killing the VM.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);
/// How long teardown waits for `/work` to come back.
const SYNC_BACK_TIMEOUT: Duration = Duration::from_secs(600);
/// Console lines included in error messages.
const CONSOLE_TAIL_LINES: usize = 30;

/// Starts sandboxes as microVMs.
#[derive(Debug, Clone)]
pub struct VmIsolation {
    artifacts: GuestArtifacts,
    deadline: Option<Duration>,
    keep_log_on_failure: bool,
    network: Option<Arc<HostNetwork>>,
    kernel_args: Vec<String>,
}

impl VmIsolation {
    pub fn new(artifacts: GuestArtifacts) -> Self {
        Self {
            artifacts,
            deadline: None,
            keep_log_on_failure: false,
            network: None,
            kernel_args: Vec::new(),
        }
    }

    /// Appends parameters to every guest's kernel command line (after hearth's own, so a later
    /// `loglevel=7` overrides the default `quiet`). Each must be one parameter: not empty, no
    /// whitespace or control characters.
    pub fn kernel_args(mut self, args: Vec<String>) -> Result<Self, SandboxError> {
        if let Some(bad) = args
            .iter()
            .find(|a| a.is_empty() || a.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(SandboxError::Config(format!(
                "kernel parameter {bad:?}: give one parameter per flag, without spaces"
            )));
        }
        self.kernel_args = args;
        Ok(self)
    }

    /// Gives sandboxes that ask for it ([`SandboxSpec::network`]) a tap on `net`; without this,
    /// they get no network device at all.
    pub fn network(mut self, net: Arc<HostNetwork>) -> Self {
        self.network = Some(net);
        self
    }

    /// Kills every VM this long after its start, whatever it is doing.
    pub fn deadline(mut self, d: Option<Duration>) -> Self {
        self.deadline = d;
        self
    }

    /// Keeps the sandbox's scratch directory (console log) when the VM fails to start; the
    /// error then names the log file. Off by default (a job runner must not leak directories).
    pub fn keep_log_on_failure(mut self, keep: bool) -> Self {
        self.keep_log_on_failure = keep;
        self
    }

    pub fn artifacts(&self) -> &GuestArtifacts {
        &self.artifacts
    }

    /// Boots a VM for `spec` and connects to its agent.
    pub async fn start_vm(&self, spec: &SandboxSpec) -> Result<VmSandbox, SandboxError> {
        let started = Instant::now();
        let mut scratch = ScratchDir::new(&spec.name)?;
        let console = scratch.path().join("console.log");
        match self.boot(spec, &scratch, &console, started).await {
            Ok((vm, client, timings)) => Ok(VmSandbox {
                vm: Mutex::new(Some(vm)),
                client: Some(client),
                timings,
                console,
                workspace: spec.workspace.clone().filter(|_| spec.sync_back),
                scratch: Some(scratch),
                keep_log: false,
            }),
            Err(e) => {
                if self.keep_log_on_failure && console.exists() {
                    let _ = std::fs::remove_file(scratch.path().join("workspace.ext4"));
                    scratch.keep();
                    Err(with_log_path(e, &console))
                } else {
                    Err(e)
                }
            }
        }
    }

    async fn boot(
        &self,
        spec: &SandboxSpec,
        scratch: &ScratchDir,
        console: &Path,
        started: Instant,
    ) -> Result<(Vm, Client, StartTimings), SandboxError> {
        let link = match (&self.network, spec.network) {
            (Some(net), true) => Some(net.attach().map_err(|e| {
                SandboxError::Start(format!("attaching the VM's network link: {e}"))
            })?),
            (None, true) => {
                tracing::warn!(name = %spec.name,
                    "VM networking is off (--no-network): the sandbox has no network");
                None
            }
            (_, false) => None,
        };
        let mut builder = VmBuilder::new()
            .kernel(&self.artifacts.kernel)
            .rootfs(&self.artifacts.rootfs, true)
            .cmdline_extra(format!("hearth.overlay=tmpfs hearth.port={AGENT_PORT}"))
            .vcpus(spec.cpus)
            .memory_mib(spec.memory_mib)
            .console_log(console);
        for arg in &self.kernel_args {
            builder = builder.cmdline_extra(arg.clone());
        }
        if let Some(d) = self.deadline {
            builder = builder.deadline(d);
        }
        if let Some(link) = link {
            tracing::info!(name = %spec.name, tap = link.tap.name(), guest = %link.guest,
                "VM network link");
            builder = builder
                .cmdline_extra(link.cmdline())
                .net(link.tap, link.mac);
        }
        if let Some(dir) = &spec.workspace {
            let image = scratch.path().join("workspace.ext4");
            let (dir, img, mib) = (dir.clone(), image.clone(), spec.workspace_disk_mib);
            blocking(move || workspace::make_image(&dir, &img, mib)).await??;
            // The first disk after the rootfs (/dev/vda) is /dev/vdb.
            builder = builder
                .disk(image, false)
                .cmdline_extra("hearth.work=/dev/vdb");
        }
        let vm = blocking(move || builder.start())
            .await?
            .map_err(|e| SandboxError::Start(e.to_string()))?;

        let timeout = spec.ready_timeout;
        let (vm, ready) = blocking(move || {
            let r = vm.wait_ready(timeout);
            (vm, r)
        })
        .await?;
        if let Err(e) = ready {
            return Err(not_ready(vm, &e.to_string()).await);
        }
        let client = match connect(&vm, timeout.saturating_sub(started.elapsed())).await {
            Ok(c) => c,
            Err(e) => return Err(not_ready(vm, &e).await),
        };
        let boot = vm.timings();
        let timings = StartTimings {
            total: started.elapsed(),
            detail: boot.to_string(),
        };
        tracing::info!(name = %spec.name, total_ms = timings.total.as_millis() as u64, boot = %boot, "VM sandbox ready");
        Ok((vm, client, timings))
    }
}

/// Runs blocking VMM work off the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, SandboxError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SandboxError::Start(format!("VMM task failed: {e}")))
}

/// Connects to the agent, retrying while it is not listening yet.
async fn connect(vm: &Vm, budget: Duration) -> Result<Client, String> {
    let give_up = Instant::now() + budget.max(Duration::from_secs(5));
    let mut delay = Duration::from_millis(5);
    loop {
        match vm.connect(AGENT_PORT).await {
            Ok(stream) => {
                return Client::handshake(stream)
                    .await
                    .map_err(|e| format!("agent handshake: {e}"));
            }
            Err(VmError::Vsock(e)) if Instant::now() < give_up && vm.exit().is_none() => {
                tracing::debug!(error = %e, "agent not accepting yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(200));
            }
            Err(e) => {
                return Err(format!(
                    "connecting to the agent on vsock port {AGENT_PORT}: {e}"
                ));
            }
        }
    }
}

/// Stops a VM that failed to come up and describes why, with the console tail.
async fn not_ready(vm: Vm, what: &str) -> SandboxError {
    let (exit, tail) = blocking(move || {
        let mut vm = vm;
        let tail = vm.console_tail();
        (vm.kill(), tail)
    })
    .await
    .unwrap_or((VmExit::Error("VMM task failed".into()), String::new()));
    SandboxError::NotReady(format!(
        "{what} (VM: {exit})\n--- console tail ---\n{}",
        last_lines(&tail, CONSOLE_TAIL_LINES)
    ))
}

fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn with_log_path(e: SandboxError, log: &Path) -> SandboxError {
    let note = format!("console log kept at {}", log.display());
    match e {
        SandboxError::Start(m) => SandboxError::Start(format!("{m}\n{note}")),
        SandboxError::NotReady(m) => SandboxError::NotReady(format!("{m}\n{note}")),
        other => other,
    }
}

impl Isolation for VmIsolation {
    fn kind(&self) -> IsolationKind {
        IsolationKind::Vm
    }

    fn start<'a>(
        &'a self,
        spec: &'a SandboxSpec,
    ) -> BoxFuture<'a, Result<Box<dyn Sandbox>, SandboxError>> {
        Box::pin(async move {
            let sb = self.start_vm(spec).await?;
            Ok(Box::new(sb) as Box<dyn Sandbox>)
        })
    }
}

/// A running microVM with its connected agent. Dropping it kills the VM and removes its scratch
/// directory (workspace image, console log).
pub struct VmSandbox {
    vm: Mutex<Option<Vm>>,
    client: Option<Client>,
    timings: StartTimings,
    console: PathBuf,
    /// The host workspace to sync `/work` back into at teardown.
    workspace: Option<PathBuf>,
    scratch: Option<ScratchDir>,
    keep_log: bool,
}

impl VmSandbox {
    /// Keeps the console log (the scratch directory minus the workspace image) after
    /// shutdown, for a failure report.
    pub fn keep_console_log(&mut self) {
        self.keep_log = true;
    }

    /// Copies `/work` back (if asked), shuts the guest down and removes the scratch directory;
    /// returns why the VM stopped.
    pub async fn shutdown(mut self) -> Result<VmExit, SandboxError> {
        let client = self
            .client
            .take()
            .ok_or_else(|| SandboxError::Teardown("already torn down".into()))?;
        let sync = match (&self.workspace, &self.scratch) {
            (Some(ws), Some(scratch)) => sync_back(&client, ws, scratch.path()).await,
            _ => Ok(()),
        };
        match tokio::time::timeout(SHUTDOWN_WAIT, client.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "agent shutdown request failed"),
            Err(_) => tracing::debug!("agent did not acknowledge shutdown in time"),
        }
        drop(client);
        let vm = self.vm.lock().unwrap_or_else(|p| p.into_inner()).take();
        let exit = match vm {
            Some(mut vm) => {
                blocking(move || {
                    vm.wait_timeout(SHUTDOWN_WAIT)
                        .unwrap_or_else(|| match vm.kill() {
                            // Killed because it did not power off by itself.
                            VmExit::Killed => VmExit::Killed,
                            other => other,
                        })
                })
                .await?
            }
            None => VmExit::Killed,
        };
        tracing::info!(%exit, "VM stopped");
        let removed = match self.scratch.take() {
            Some(mut s) if self.keep_log => {
                let _ = std::fs::remove_file(s.path().join("workspace.ext4"));
                let _ = std::fs::remove_dir_all(s.path().join("sync-back"));
                s.keep();
                Ok(())
            }
            Some(s) => s.remove(),
            None => Ok(()),
        };
        sync?;
        removed?;
        Ok(exit)
    }

    pub fn console_log(&self) -> &Path {
        &self.console
    }
}

/// Downloads the guest's `/work` into a staging directory, then mirrors it into `dest`.
async fn sync_back(client: &Client, dest: &Path, scratch: &Path) -> Result<(), SandboxError> {
    let staging = scratch.join("sync-back");
    std::fs::create_dir_all(&staging).map_err(|source| SandboxError::Io {
        context: format!("creating {}", staging.display()),
        source,
    })?;
    match tokio::time::timeout(SYNC_BACK_TIMEOUT, client.get_files("/work", &staging)).await {
        Ok(Ok(stats)) => tracing::debug!(?stats, "workspace downloaded"),
        Ok(Err(e)) => {
            return Err(SandboxError::Workspace(format!("copying /work back: {e}")));
        }
        Err(_) => {
            return Err(SandboxError::Workspace(format!(
                "copying /work back took longer than {SYNC_BACK_TIMEOUT:?}"
            )));
        }
    }
    let dest = dest.to_path_buf();
    blocking(move || workspace::mirror_into(&staging, &dest)).await?
}

impl Sandbox for VmSandbox {
    fn kind(&self) -> IsolationKind {
        IsolationKind::Vm
    }

    fn client(&self) -> &Client {
        // Present until teardown, which consumes the sandbox.
        self.client
            .as_ref()
            .expect("the agent client lives until teardown")
    }

    fn timings(&self) -> StartTimings {
        self.timings.clone()
    }

    fn log_path(&self) -> Option<PathBuf> {
        Some(self.console.clone())
    }

    fn teardown(self: Box<Self>) -> BoxFuture<'static, Result<(), SandboxError>> {
        Box::pin(async move { self.shutdown().await.map(|_| ()) })
    }
}

impl Drop for VmSandbox {
    fn drop(&mut self) {
        // Without teardown (error path, panic): stop the VM before the scratch directory goes.
        drop(self.client.take());
        if let Some(mut vm) = self.vm.lock().unwrap_or_else(|p| p.into_inner()).take() {
            vm.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_lines_keeps_the_end() {
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(last_lines("a", 5), "a");
        assert_eq!(last_lines("", 5), "");
    }

    #[test]
    fn kernel_args_are_one_parameter_each() {
        let iso = || {
            VmIsolation::new(GuestArtifacts {
                kernel: "vmlinux".into(),
                rootfs: "rootfs.ext4".into(),
            })
        };
        let ok = iso()
            .kernel_args(vec!["loglevel=7".into(), "initcall_debug".into()])
            .expect("plain parameters");
        assert_eq!(ok.kernel_args, ["loglevel=7", "initcall_debug"]);
        for bad in ["", "a b", "init=/bin/sh\n", "x\ty", "quiet\u{0}"] {
            match iso().kernel_args(vec![bad.into()]) {
                Err(SandboxError::Config(msg)) => assert!(msg.contains("one parameter"), "{msg}"),
                other => panic!("{bad:?} accepted: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn missing_kernel_fails_cleanly_and_keeps_nothing() {
        let t = tempfile::tempdir().unwrap();
        let iso = VmIsolation::new(GuestArtifacts {
            kernel: t.path().join("no-vmlinux"),
            rootfs: t.path().join("no-rootfs"),
        });
        let spec = SandboxSpec {
            name: "unit-missing-kernel".into(),
            cpus: 1,
            memory_mib: 64,
            workspace: None,
            workspace_disk_mib: 64,
            sync_back: false,
            network: false,
            ready_timeout: Duration::from_secs(1),
        };
        let err = match iso.start_vm(&spec).await {
            Ok(_) => panic!("started without a kernel"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("starting the sandbox"), "{err}");
    }
}
