//! vCPUs: creation and boot state, one thread each, the KVM_RUN loop and exit dispatch.

use std::sync::{Arc, Once};
use std::thread::JoinHandle;

use kvm_bindings::{
    CpuId, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};

use crate::VmExit;
use crate::arch::x86_64::boot::BootProtocol;
use crate::arch::x86_64::{cpuid, regs};
use crate::device_manager::bus::Bus;
use crate::devices::virtio::GuestMemory;
use crate::seccomp::{self, SeccompMode, ThreadKind};
use crate::vstate::control::VmControl;
use crate::vstate::probe::{LastExit, VcpuState};

/// Errors creating or configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// KVM_CREATE_VCPU or KVM_SET_CPUID2 failed.
    #[error("vCPU {id}: {what}: {source}")]
    Kvm {
        /// vCPU index.
        id: u8,
        /// Which ioctl.
        what: &'static str,
        /// The error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Register setup failed.
    #[error("vCPU {id}: {source}")]
    Regs {
        /// vCPU index.
        id: u8,
        /// The error.
        #[source]
        source: regs::RegsError,
    },
    /// The kick signal handler could not be installed.
    #[error("installing the vCPU kick signal handler: {0}")]
    Signal(#[source] vmm_sys_util::errno::Error),
    /// The thread could not be spawned.
    #[error("spawning vCPU thread: {0}")]
    Spawn(#[source] std::io::Error),
}

/// How vCPU 0 starts.
#[derive(Debug, Clone, Copy)]
pub enum VcpuBoot {
    /// A Linux kernel entry point.
    Kernel {
        /// Entry protocol.
        protocol: BootProtocol,
        /// Entry address.
        entry: u64,
    },
    /// Real mode at 0000:`ip` with flat zero segments (for hand-written test guests).
    RealMode {
        /// Instruction pointer (and linear address) of the first instruction.
        ip: u16,
    },
}

/// The buses a vCPU dispatches exits to.
#[derive(Clone)]
pub struct Buses {
    /// Port I/O.
    pub pio: Bus,
    /// Memory-mapped I/O.
    pub mmio: Bus,
}

/// Creates and configures vCPU `id` of `ncpus`.
pub fn create(
    vm: &VmFd,
    base_cpuid: &CpuId,
    mem: &GuestMemory,
    id: u8,
    ncpus: u8,
    boot: VcpuBoot,
) -> Result<VcpuFd, VcpuError> {
    let kvm = |what| move |source| VcpuError::Kvm { id, what, source };
    let r = |source| VcpuError::Regs { id, source };
    let vcpu = vm
        .create_vcpu(u64::from(id))
        .map_err(kvm("KVM_CREATE_VCPU"))?;
    let mut cpuid = base_cpuid.clone();
    cpuid::filter_for_vcpu(&mut cpuid, id, ncpus);
    vcpu.set_cpuid2(&cpuid).map_err(kvm("KVM_SET_CPUID2"))?;
    match boot {
        VcpuBoot::Kernel { protocol, entry } => {
            regs::setup_msrs(&vcpu).map_err(r)?;
            regs::setup_regs(&vcpu, protocol, entry).map_err(r)?;
            regs::setup_fpu(&vcpu).map_err(r)?;
            regs::setup_sregs(mem, &vcpu, protocol).map_err(r)?;
        }
        VcpuBoot::RealMode { ip } => {
            let mut sregs = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
            sregs.cs.base = 0;
            sregs.cs.selector = 0;
            vcpu.set_sregs(&sregs).map_err(kvm("KVM_SET_SREGS"))?;
            let regs = kvm_bindings::kvm_regs {
                rip: u64::from(ip),
                rflags: 2,
                ..Default::default()
            };
            vcpu.set_regs(&regs).map_err(kvm("KVM_SET_REGS"))?;
        }
    }
    regs::setup_lint(&vcpu).map_err(r)?;
    Ok(vcpu)
}

/// The signal used to kick vCPU threads out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN() + 1
}

extern "C" fn noop_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (no-op) kick handler once per process: its only effect is that KVM_RUN returns
/// EINTR on the signalled thread.
pub fn install_kick_handler() -> Result<(), VcpuError> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = vmm_sys_util::signal::register_signal_handler(kick_signal(), noop_handler)
            .map_err(VcpuError::Signal);
    });
    result
}

/// Sends the kick signal to a vCPU thread that has not been joined yet.
pub fn kick(handle: &JoinHandle<()>) {
    use std::os::unix::thread::JoinHandleExt;
    // SAFETY: the pthread_t comes from a JoinHandle that is still owned (not joined or
    // detached), so the thread id is valid; the signal has a no-op handler installed.
    unsafe {
        libc::pthread_kill(handle.as_pthread_t(), kick_signal());
    }
}

/// Starts the vCPU's thread running the KVM_RUN loop until the VM stops.
pub fn spawn(
    mut vcpu: VcpuFd,
    id: u8,
    buses: Buses,
    control: Arc<VmControl>,
    mem: GuestMemory,
    seccomp: SeccompMode,
) -> Result<JoinHandle<()>, VcpuError> {
    std::thread::Builder::new()
        .name(format!("hearth-vcpu{id}"))
        .spawn(move || {
            // Guest memory must outlive every KVM_RUN of this vCPU, and the vCPU fd (which
            // keeps the KVM VM and its memory slots alive) is closed before the memory clone.
            let mem = mem;
            // Before the first KVM_RUN: from then on the guest drives this thread.
            match seccomp::install(ThreadKind::Vcpu, seccomp) {
                Ok(()) => run_loop(&mut vcpu, id, &buses, &control),
                Err(e) => control.request_exit(VmExit::Error(format!("vCPU {id}: {e}"))),
            }
            drop(vcpu);
            drop(mem);
        })
        .map_err(VcpuError::Spawn)
}

fn run_loop(vcpu: &mut VcpuFd, id: u8, buses: &Buses, control: &VmControl) {
    let mut exits = 0u64;
    let mut last_exit = LastExit::None;
    let mut answered = 0;
    while !control.should_stop() {
        if id == 0 {
            control.stamp(|s| &mut s.kernel_entry);
        }
        let run = vcpu.run();
        exits += 1;
        match run {
            Ok(exit) => {
                last_exit = LastExit::of(&exit);
                if let Some(e) = dispatch(exit, id, buses) {
                    if e == VmExit::TripleFault {
                        log_triple_fault(vcpu, id);
                    }
                    control.request_exit(e);
                }
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                last_exit = LastExit::Interrupted;
            }
            Err(e) => control.request_exit(VmExit::Error(format!("vCPU {id}: KVM_RUN: {e}"))),
        }
        if let Some(generation) = control.probe().pending(answered) {
            answered = generation;
            let state = VcpuState::read(vcpu, id, exits, last_exit);
            control.probe().answer(generation, state);
        }
    }
    tracing::debug!(id, "vCPU thread stops");
}

/// Logs the vCPU's registers when the guest triple-faulted (no guest output explains a triple
/// fault). On AMD hosts they are of no use: KVM's SVM code re-initialises the vCPU on a shutdown
/// intercept before it returns KVM_EXIT_SHUTDOWN (seen in the harness: rip 0xfff0, cs 0xf000,
/// cr0 0x10), so the log says so instead of leaving reset values to be read as the guest's state.
fn log_triple_fault(vcpu: &VcpuFd, id: u8) {
    match (vcpu.get_regs(), vcpu.get_sregs()) {
        (Ok(r), Ok(s)) => tracing::warn!(
            id,
            rip = format_args!("{:#x}", r.rip),
            rsp = format_args!("{:#x}", r.rsp),
            rflags = format_args!("{:#x}", r.rflags),
            cr0 = format_args!("{:#x}", s.cr0),
            cr2 = format_args!("{:#x}", s.cr2),
            cr3 = format_args!("{:#x}", s.cr3),
            cr4 = format_args!("{:#x}", s.cr4),
            efer = format_args!("{:#x}", s.efer),
            cs = format_args!("{:#x}", s.cs.selector),
            idt = format_args!("{:#x}/{:#x}", s.idt.base, s.idt.limit),
            gdt = format_args!("{:#x}/{:#x}", s.gdt.base, s.gdt.limit),
            tr = format_args!("{:#x}", s.tr.base),
            reset_by_kvm = r.rip == 0xfff0 && s.cs.selector == 0xf000,
            "guest triple fault: vCPU state (reset_by_kvm: KVM re-initialised the vCPU, as on AMD)"
        ),
        (r, s) => {
            tracing::warn!(id, regs = ?r.err(), sregs = ?s.err(), "guest triple fault: vCPU state unreadable")
        }
    }
}

/// Handles one exit; returns the VM exit it causes, if any.
fn dispatch(exit: VcpuExit<'_>, id: u8, buses: &Buses) -> Option<VmExit> {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !buses.pio.read(u64::from(port), data) {
                data.fill(0xff);
            }
            None
        }
        VcpuExit::IoOut(port, data) => {
            if !buses.pio.write(u64::from(port), data) {
                tracing::trace!(port, ?data, "write to an unknown port ignored");
            }
            None
        }
        VcpuExit::MmioRead(addr, data) => {
            if !buses.mmio.read(addr, data) {
                data.fill(0);
            }
            None
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !buses.mmio.write(addr, data) {
                tracing::trace!(addr, "MMIO write to an unknown address ignored");
            }
            None
        }
        VcpuExit::Intr | VcpuExit::IrqWindowOpen => None,
        VcpuExit::Shutdown => Some(VmExit::TripleFault),
        VcpuExit::SystemEvent(kind, _) => Some(match kind {
            KVM_SYSTEM_EVENT_SHUTDOWN => VmExit::PowerOff,
            KVM_SYSTEM_EVENT_RESET => VmExit::Reset,
            KVM_SYSTEM_EVENT_CRASH => VmExit::Panic("KVM_SYSTEM_EVENT_CRASH".into()),
            other => VmExit::Error(format!("vCPU {id}: system event {other}")),
        }),
        VcpuExit::Hlt => Some(VmExit::Error(format!(
            "vCPU {id}: halted with no irqchip wake-up"
        ))),
        VcpuExit::FailEntry(reason, cpu) => Some(VmExit::Error(format!(
            "vCPU {id}: KVM_EXIT_FAIL_ENTRY reason {reason:#x} on host cpu {cpu}"
        ))),
        VcpuExit::InternalError => Some(VmExit::Error(format!("vCPU {id}: KVM internal error"))),
        other => Some(VmExit::Error(format!(
            "vCPU {id}: unhandled exit {other:?}"
        ))),
    }
}
