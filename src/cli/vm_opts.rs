//! Options shared by the subcommands that boot a VM (`hearth test-vm`, `hearth exec` without
//! `--agent`), and turning them into a [`VmIsolation`] and a [`SandboxSpec`].

use anyhow::Context;
use hearth::sandbox::SandboxSpec;
use hearth::sandbox::artifacts::ArtifactSearch;
use hearth::sandbox::network::{HostNetwork, NetworkOptions};
use hearth::sandbox::vm::VmIsolation;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct VmOpts {
    /// Guest kernel (ELF vmlinux or bzImage). Default: $HEARTH_KERNEL, else the newest build
    /// in ~/.cache/hearth/kernel (made by harness/artifacts.sh).
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Guest root filesystem (ext4 image with the agent). Default: $HEARTH_ROOTFS, else the
    /// newest build in ~/.cache/hearth/rootfs.
    #[arg(long, value_name = "PATH")]
    pub rootfs: Option<PathBuf>,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=32))]
    pub cpus: u8,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 512)]
    pub memory: u64,
    /// Give up when the guest agent is not ready after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    pub ready_timeout: u64,
    /// Give the VM outbound network access: a tap, NATed, with no access to this host, other
    /// VMs, private or link-local ranges (needs root and nftables; loads the `inet hearth`
    /// table; HEARTH_VM_DNS and HEARTH_VM_POOL tune it).
    #[arg(long)]
    pub network: bool,
    /// Extra guest kernel parameter, appended after hearth's own (repeatable), e.g.
    /// `--kernel-arg loglevel=7` for the full boot log on the console.
    #[arg(long = "kernel-arg", value_name = "PARAM")]
    pub kernel_args: Vec<String>,
}

impl VmOpts {
    /// The isolation to start VMs with (artifacts resolved now, so errors come early).
    pub fn isolation(&self) -> anyhow::Result<VmIsolation> {
        let artifacts = ArtifactSearch::from_env(self.kernel.clone(), self.rootfs.clone())
            .resolve()
            .context("finding the guest kernel and rootfs")?;
        tracing::debug!(?artifacts, "guest artifacts");
        let mut iso = VmIsolation::new(artifacts)
            .keep_log_on_failure(true)
            .kernel_args(self.kernel_args.clone())?;
        if self.network {
            let net = NetworkOptions::from_env()
                .and_then(HostNetwork::setup)
                .context("setting up VM networking")?;
            iso = iso.network(Arc::new(net));
        }
        Ok(iso)
    }

    /// A sandbox spec named after this process.
    pub fn spec(&self, what: &str) -> SandboxSpec {
        SandboxSpec {
            name: format!("{what}-{}", std::process::id()),
            cpus: self.cpus,
            memory_mib: self.memory,
            workspace: None,
            workspace_disk_mib: 1024,
            sync_back: false,
            network: self.network,
            ready_timeout: Duration::from_secs(self.ready_timeout),
        }
    }
}
