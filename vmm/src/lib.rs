//! hearth-vmm: boots a minimal Linux guest in-process on KVM, built on rust-vmm crates.
//!
//! ```no_run
//! # fn main() -> Result<(), hearth_vmm::VmError> {
//! let mut vm = hearth_vmm::VmBuilder::new()
//!     .kernel("vmlinux")
//!     .rootfs("rootfs.ext4", true)
//!     .memory_mib(256)
//!     .start()?;
//! vm.wait_ready(std::time::Duration::from_secs(10))?;
//! println!("{}", vm.timings());
//! vm.kill();
//! # Ok(()) }
//! ```

pub mod arch;
mod builder;
pub mod device_manager;
pub mod devices;
pub mod event_loop;
pub mod file_map;
pub mod seccomp;
pub mod timings;
pub mod vstate;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use builder::{DEFAULT_CMDLINE, REAL_MODE_CODE_ADDR, VmBuilder};
pub use timings::BootTimings;

use crate::arch::x86_64::symbols::{self, KernelSymbols};
use crate::devices::console::ConsoleTail;
pub use crate::devices::ready_port::READY_PORT;
pub use crate::devices::virtio::net::tap::{Tap, TapError};
pub use crate::devices::virtio::vsock::{VsockHandle, VsockListener, VsockStream};
use crate::vstate::control::VmControl;
use crate::vstate::memory::GuestRam;
pub use crate::vstate::probe::VcpuState;

/// The vCPU states of a report, `; `-separated (`no vCPU answered` when empty).
fn describe_vcpus(vcpus: &[VcpuState]) -> String {
    if vcpus.is_empty() {
        return "no vCPU answered".into();
    }
    vcpus
        .iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Why a VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest powered off (or halted).
    PowerOff,
    /// The guest rebooted (i8042 reset or KVM reset event).
    Reset,
    /// The guest kernel panicked; the panic line from the console.
    Panic(String),
    /// A triple fault (KVM_EXIT_SHUTDOWN).
    TripleFault,
    /// The host asked the VM to stop.
    Killed,
    /// The VM's deadline passed.
    DeadlineExceeded,
    /// A VMM-side error (unhandled exit, KVM failure).
    Error(String),
}

impl std::fmt::Display for VmExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmExit::PowerOff => write!(f, "guest powered off"),
            VmExit::Reset => write!(f, "guest reset"),
            VmExit::Panic(m) => write!(f, "guest kernel panic: {m}"),
            VmExit::TripleFault => write!(f, "guest triple fault"),
            VmExit::Killed => write!(f, "killed by the host"),
            VmExit::DeadlineExceeded => write!(f, "deadline exceeded"),
            VmExit::Error(m) => write!(f, "VMM error: {m}"),
        }
    }
}

/// Errors building or driving a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The builder is missing something or has an invalid value.
    #[error("invalid VM configuration: {0}")]
    Config(String),
    /// Guest memory could not be allocated.
    #[error("allocating guest memory: {0}")]
    Memory(String),
    /// KVM VM creation failed.
    #[error(transparent)]
    Kvm(#[from] vstate::vm::VmError),
    /// Kernel loading or boot information failed.
    #[error(transparent)]
    Boot(#[from] arch::x86_64::boot::BootError),
    /// The MP table could not be written.
    #[error(transparent)]
    Mptable(#[from] arch::x86_64::mptable::MptableError),
    /// A vCPU could not be set up.
    #[error(transparent)]
    Vcpu(#[from] vstate::vcpu::VcpuError),
    /// A device could not be attached.
    #[error(transparent)]
    Device(#[from] device_manager::DeviceError),
    /// A disk could not be opened.
    #[error(transparent)]
    Block(#[from] devices::virtio::block::BlockError),
    /// The network device could not be created.
    #[error(transparent)]
    Net(#[from] devices::virtio::net::NetError),
    /// The event loop could not start.
    #[error(transparent)]
    EventLoop(#[from] event_loop::EventLoopError),
    /// Reading CPUID from KVM failed.
    #[error("KVM_GET_SUPPORTED_CPUID: {0}")]
    Cpuid(#[source] kvm_ioctls::Error),
    /// The vsock device could not be created, or a vsock connection failed.
    #[error(transparent)]
    Vsock(#[from] devices::virtio::vsock::VsockError),
    /// The VM has no vsock device.
    #[error("the VM was built without a vsock device")]
    NoVsock,
    /// A file (console log) could not be created.
    #[error("{what} {path}: {source}")]
    File {
        /// What the file is.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// An eventfd could not be created.
    #[error("creating eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    /// The kernel loader thread could not be spawned.
    #[error("spawning the kernel loader thread: {0}")]
    KernelLoaderSpawn(#[source] std::io::Error),
    /// The kernel loader thread panicked.
    #[error("the kernel loader thread panicked")]
    KernelLoaderPanicked,
    /// The VM stopped before the agent became ready.
    #[error("VM stopped before the agent was ready: {exit}")]
    ExitedBeforeReady {
        /// Why it stopped.
        exit: VmExit,
    },
    /// The agent did not signal readiness in time.
    #[error("agent not ready after {after:?}; where the guest was: {}", describe_vcpus(.vcpus))]
    ReadyTimeout {
        /// How long the caller waited.
        after: Duration,
        /// The vCPUs' registers when the wait ended (empty if none answered).
        vcpus: Vec<VcpuState>,
    },
}

/// A running VM. Dropping it kills the VM and joins its threads.
pub struct Vm {
    control: Arc<VmControl>,
    vcpus: Vec<JoinHandle<()>>,
    event_loop: Option<JoinHandle<()>>,
    process_start: Option<Instant>,
    build_start: Instant,
    console_log: Option<PathBuf>,
    console_tail: ConsoleTail,
    /// The kernel image, for naming the function a vCPU is in (see [`Vm::vcpu_states`]).
    kernel: Option<PathBuf>,
    kernel_symbols: std::sync::OnceLock<Option<KernelSymbols>>,
    vsock: Option<VsockHandle>,
    // Dropped after the threads are joined (field order): the KVM VM, then guest memory, which
    // is unmapped once nothing refers to it any more.
    _kvm: Option<vstate::vm::KvmVm>,
    ram: GuestRam,
}

impl Vm {
    /// Blocks until the agent signals readiness; returns the time from `start()`.
    pub fn wait_ready(&self, timeout: Duration) -> Result<Duration, VmError> {
        match self.control.wait_ready(timeout) {
            Ok(t) => Ok(t.saturating_duration_since(self.build_start)),
            Err(Some(exit)) => Err(VmError::ExitedBeforeReady { exit }),
            Err(None) => Err(VmError::ReadyTimeout {
                after: timeout,
                vcpus: self.vcpu_states(Duration::from_secs(2)),
            }),
        }
    }

    /// Each running vCPU's registers and exit counters now: every vCPU thread is kicked out of
    /// the guest and reads its own registers; a `rip` in the kernel is named from the ELF
    /// kernel's symbol table when it has one. vCPUs that do not answer within `timeout` (their
    /// thread stopped, or stuck outside KVM_RUN) are missing from the list.
    pub fn vcpu_states(&self, timeout: Duration) -> Vec<VcpuState> {
        let probe = self.control.probe();
        let generation = probe.request();
        let running: Vec<&JoinHandle<()>> =
            self.vcpus.iter().filter(|h| !h.is_finished()).collect();
        let mut states = probe.collect(generation, running.len(), timeout, || {
            for h in &running {
                vstate::vcpu::kick(h);
            }
        });
        let Some(guest) = self.kernel_symbols() else {
            return states;
        };
        for s in states.iter_mut().filter(|s| s.error.is_none()) {
            s.symbol = guest.describe(s.rip);
        }
        // A kernel-half address outside the guest kernel's text: is it the host kernel's code?
        // (Only with the guest's symbols at hand: without them a guest kernel address could not
        // be told from a host one.)
        let unknown = |s: &VcpuState| {
            s.error.is_none() && !guest.covers(s.rip) && s.rip >= 0xffff_8000_0000_0000
        };
        if states.iter().any(unknown)
            && let Ok(table) = std::fs::read_to_string(symbols::HOST_KALLSYMS)
        {
            for s in states.iter_mut().filter(|s| unknown(s)) {
                s.host_symbol = symbols::describe_host_address(&table, s.rip);
            }
        }
        states
    }

    /// The kernel's function symbols, read once on first use (`None`: no ELF kernel, or no
    /// symbol table in it).
    fn kernel_symbols(&self) -> Option<&KernelSymbols> {
        self.kernel_symbols
            .get_or_init(|| {
                let path = self.kernel.as_ref()?;
                KernelSymbols::load(path)
                    .map_err(|e| tracing::debug!(kernel = %path.display(), error = %e, "no kernel symbols"))
                    .ok()
            })
            .as_ref()
    }

    /// True once the agent signalled readiness.
    pub fn is_ready(&self) -> bool {
        self.control.stamps().agent_ready.is_some()
    }

    /// The host side of the guest's vsock device (cheap to clone).
    pub fn vsock(&self) -> Option<&VsockHandle> {
        self.vsock.as_ref()
    }

    /// Connects to guest vsock port `port` (the guest must be listening).
    pub async fn connect(&self, port: u32) -> Result<VsockStream, VmError> {
        let h = self.vsock.as_ref().ok_or(VmError::NoVsock)?;
        Ok(h.connect(port).await?)
    }

    /// The exit reason, if the VM has stopped (or is stopping).
    pub fn exit(&self) -> Option<VmExit> {
        self.control.exit()
    }

    /// Blocks until the VM stops, then joins its threads.
    pub fn wait(&mut self) -> VmExit {
        let exit = self.control.wait_exit(None).unwrap_or(VmExit::Killed);
        self.join_threads();
        exit
    }

    /// Like [`Vm::wait`] with a timeout; `None` if the VM is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<VmExit> {
        let exit = self.control.wait_exit(Some(timeout))?;
        self.join_threads();
        Some(exit)
    }

    /// Stops the VM (if still running) and returns why it stopped.
    pub fn kill(&mut self) -> VmExit {
        self.control.request_exit(VmExit::Killed);
        self.join_threads();
        self.control.exit().unwrap_or(VmExit::Killed)
    }

    /// Boot-phase timings so far.
    pub fn timings(&self) -> BootTimings {
        BootTimings::from_stamps(self.process_start, self.build_start, &self.control.stamps())
    }

    /// The console log file, if one was configured.
    pub fn console_log_path(&self) -> Option<&Path> {
        self.console_log.as_deref()
    }

    /// The last 16 KiB of console output.
    pub fn console_tail(&self) -> String {
        self.console_tail.snapshot()
    }

    /// Host virtual address ranges `(start, length)` of the guest RAM mappings (for memory
    /// accounting: the VMM's own overhead is the process RSS outside these ranges).
    pub fn guest_ram_host_ranges(&self) -> Vec<(u64, u64)> {
        self.ram.host_ranges()
    }

    fn join_threads(&mut self) {
        // vCPUs may sit in KVM_RUN: kick until each thread has left its loop.
        let give_up = Instant::now() + Duration::from_secs(10);
        while self.vcpus.iter().any(|h| !h.is_finished()) && Instant::now() < give_up {
            for h in self.vcpus.iter().filter(|h| !h.is_finished()) {
                vstate::vcpu::kick(h);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        for h in self.vcpus.drain(..) {
            if h.join().is_err() {
                tracing::error!("a vCPU thread panicked");
            }
        }
        if let Some(h) = self.event_loop.take()
            && h.join().is_err()
        {
            tracing::error!("the event loop thread panicked");
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.control.request_exit(VmExit::Killed);
        self.join_threads();
    }
}
