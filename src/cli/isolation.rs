//! Choosing and building the sandbox isolation for `hearth run` and `hearth validate`:
//! `--isolation vm|process`, else `EXECUTOR_USE_FIRECRACKER` (false ⇒ process).

use anyhow::Context;
use hearth::config::Config;
use hearth::sandbox::artifacts::ArtifactSearch;
use hearth::sandbox::network;
use hearth::sandbox::process::{ProcessIsolation, ProcessOptions};
use hearth::sandbox::vm::VmIsolation;
use hearth::sandbox::workspace;
use hearth::sandbox::{Isolation, IsolationKind};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IsolationArg {
    /// A KVM microVM per job (default).
    Vm,
    /// Namespaces + cgroups on the host kernel: weaker than a VM.
    Process,
}

#[derive(Debug, Clone, clap::Args)]
pub struct IsolationOpts {
    /// Sandbox isolation. Default: vm, or process when EXECUTOR_USE_FIRECRACKER=false.
    #[arg(long, value_enum)]
    pub isolation: Option<IsolationArg>,
    /// Guest kernel for VM isolation. Default: $HEARTH_KERNEL, else the newest cached build.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Guest root filesystem for VM isolation. Default: $HEARTH_ROOTFS, else the newest cached
    /// build.
    #[arg(long, value_name = "PATH")]
    pub rootfs: Option<PathBuf>,
    /// VM isolation without networking: no tap, no nftables rules; jobs get no network.
    /// Default: each VM gets a tap, NATed, with no access to this host, other VMs, private or
    /// link-local ranges (needs root and nftables; HEARTH_VM_DNS and HEARTH_VM_POOL tune it).
    #[arg(long)]
    pub no_network: bool,
}

impl IsolationOpts {
    pub fn kind(&self, config: &Config) -> IsolationKind {
        match self.isolation {
            Some(IsolationArg::Vm) => IsolationKind::Vm,
            Some(IsolationArg::Process) => IsolationKind::Process,
            None if config.use_vm => IsolationKind::Vm,
            None => IsolationKind::Process,
        }
    }

    pub fn artifact_search(&self) -> ArtifactSearch {
        ArtifactSearch::from_env(self.kernel.clone(), self.rootfs.clone())
    }

    /// Builds the isolation; for process isolation also removes sandboxes left by dead hearth
    /// processes.
    pub fn build(&self, config: &Config) -> anyhow::Result<Arc<dyn Isolation>> {
        match self.kind(config) {
            IsolationKind::Vm => {
                let artifacts = self
                    .artifact_search()
                    .resolve()
                    .context("finding the guest kernel and rootfs for VM isolation")?;
                tracing::info!(?artifacts, "VM isolation");
                let removed = workspace::reconcile_scratch_dirs(&std::env::temp_dir());
                if !removed.is_empty() {
                    tracing::warn!(
                        ?removed,
                        "removed VM scratch directories left by an earlier hearth"
                    );
                }
                let mut iso = VmIsolation::new(artifacts);
                if !self.no_network {
                    let net = network::NetworkOptions::from_env()
                        .and_then(network::HostNetwork::setup)
                        .context("setting up VM networking (--no-network runs jobs without it)")?;
                    iso = iso.network(Arc::new(net));
                }
                Ok(Arc::new(iso))
            }
            IsolationKind::Process => {
                let iso = ProcessIsolation::new(ProcessOptions::default())
                    .context("setting up process isolation")?;
                let report = iso.reconcile();
                if !report.removed.is_empty() {
                    tracing::warn!(removed = ?report.removed,
                        "removed process sandboxes left by an earlier hearth");
                }
                Ok(Arc::new(iso))
            }
        }
    }
}
