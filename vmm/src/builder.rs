//! [`VmBuilder`]: assembles memory, kernel, devices and vCPUs into a running [`Vm`].

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use linux_loader::loader::Cmdline;
use vm_memory::{Bytes, GuestAddress};

use crate::arch::x86_64::boot::{self, BootProtocol, KernelEntry};
use crate::arch::x86_64::{self as arch, cpuid, layout, mptable};
use crate::device_manager::DeviceManager;
use crate::devices::console::{ConsoleSink, ConsoleTail};
use crate::devices::ready_port::READY_PORT;
use crate::devices::virtio::block::Block;
use crate::devices::virtio::net::{Net, tap::Tap};
use crate::devices::virtio::vsock::{DEFAULT_GUEST_CID, Vsock};
use crate::devices::virtio::{GuestMemory, VirtioDevice};
use crate::seccomp::SeccompMode;
use crate::vstate::control::VmControl;
use crate::vstate::vcpu::{self, Buses, VcpuBoot};
use crate::vstate::vm::KvmVm;
use crate::{Vm, VmError, event_loop, timings};

/// Kernel parameters every guest gets: serial console, reboot via the keyboard controller,
/// immediate reboot on panic, no PCI/ACPI probing or modules, and `quiet`: every console byte is
/// a port-I/O exit to the VMM (two with the 8250 driver's LSR polling), so the default boot log
/// alone cost more than the rest of the boot under the emulated harness (see BENCHMARKS.md).
/// Errors, panics and the power-off/halt lines are still printed (KERN_EMERG..KERN_ERR);
/// `cmdline_extra("loglevel=7")` brings the full log back. `noreplace-smp`: a kernel booted with
/// one CPU otherwise rewrites each of its ~6,000 `lock` prefixes through `text_poke` (two page
/// table switches and a TLB flush each); that was an eighth of a one-vCPU boot in the harness
/// (BENCHMARKS.md, "The lock-prefix rewrite"). `no_timer_check`: while it sets the I/O APIC up,
/// the kernel otherwise spins until the PIT has ticked through it four to five times
/// (`timer_irq_works`: 16-20 ms at the guest kernel's HZ=250) to detect timer wiring that physical
/// boards get wrong; hearth's in-kernel PIT and I/O APIC are wired as its MP table says (Kata
/// Containers' guests skip the check too).
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 quiet reboot=k panic=-1 pci=off nomodule \
    i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd 8250.nr_uarts=1 noreplace-smp \
    no_timer_check";

/// The agent path on the rootfs.
pub const DEFAULT_INIT: &str = "/sbin/hearth-agent";

/// Most vCPUs (bounded by the MP table's size).
pub const MAX_VCPUS: u8 = 32;

#[derive(Debug, Clone)]
struct DiskSpec {
    path: PathBuf,
    read_only: bool,
}

/// Configures and starts a VM.
#[derive(Debug, Clone)]
pub struct VmBuilder {
    kernel: Option<PathBuf>,
    real_mode_code: Option<Vec<u8>>,
    rootfs: Option<DiskSpec>,
    disks: Vec<DiskSpec>,
    scratch_mib: Option<u64>,
    memory_mib: u64,
    vcpus: u8,
    cmdline_extra: Vec<String>,
    init: String,
    console_log: Option<PathBuf>,
    deadline: Option<Duration>,
    vsock_cid: Option<u64>,
    net: Option<NetSpec>,
    seccomp: SeccompMode,
}

/// The VM's network link: a tap and the MAC the guest sees.
#[derive(Debug, Clone)]
struct NetSpec {
    tap: Arc<Tap>,
    mac: [u8; 6],
}

impl Default for VmBuilder {
    fn default() -> Self {
        Self::new()
    }
}

/// Address where [`VmBuilder::real_mode_code`] places its code.
pub const REAL_MODE_CODE_ADDR: u16 = 0x1000;

impl VmBuilder {
    /// Defaults: 256 MiB, 1 vCPU, no disks, no deadline.
    pub fn new() -> Self {
        Self {
            kernel: None,
            real_mode_code: None,
            rootfs: None,
            disks: Vec::new(),
            scratch_mib: None,
            memory_mib: 256,
            vcpus: 1,
            cmdline_extra: Vec::new(),
            init: DEFAULT_INIT.into(),
            console_log: None,
            deadline: None,
            vsock_cid: Some(DEFAULT_GUEST_CID),
            net: None,
            seccomp: SeccompMode::from_env(),
        }
    }

    /// The seccomp filter the vCPU and event-loop threads install on themselves (default
    /// [`SeccompMode::Enforce`], or `HEARTH_SECCOMP`; see [`crate::seccomp`]).
    pub fn seccomp(mut self, mode: SeccompMode) -> Self {
        self.seccomp = mode;
        self
    }

    /// The kernel: an ELF vmlinux (PVH if it has the note) or a bzImage.
    pub fn kernel(mut self, path: impl Into<PathBuf>) -> Self {
        self.kernel = Some(path.into());
        self
    }

    /// Instead of a kernel, run `code` in real mode from 0000:1000 (hand-written test guests).
    pub fn real_mode_code(mut self, code: &[u8]) -> Self {
        self.real_mode_code = Some(code.to_vec());
        self
    }

    /// The root filesystem image (first disk, `/dev/vda`), mounted by the kernel as `/`.
    pub fn rootfs(mut self, path: impl Into<PathBuf>, read_only: bool) -> Self {
        self.rootfs = Some(DiskSpec {
            path: path.into(),
            read_only,
        });
        self
    }

    /// An extra raw disk (`/dev/vdb`, `/dev/vdc`, ... in call order, after the rootfs).
    pub fn disk(mut self, path: impl Into<PathBuf>, read_only: bool) -> Self {
        self.disks.push(DiskSpec {
            path: path.into(),
            read_only,
        });
        self
    }

    /// A zeroed, writable scratch disk of `mib` MiB backed by an unlinked temporary file; it comes
    /// after the other disks.
    pub fn scratch_disk(mut self, mib: u64) -> Self {
        self.scratch_mib = Some(mib);
        self
    }

    /// Guest memory in MiB.
    pub fn memory_mib(mut self, mib: u64) -> Self {
        self.memory_mib = mib;
        self
    }

    /// Number of vCPUs.
    pub fn vcpus(mut self, n: u8) -> Self {
        self.vcpus = n;
        self
    }

    /// Appends kernel command-line parameters.
    pub fn cmdline_extra(mut self, extra: impl Into<String>) -> Self {
        self.cmdline_extra.push(extra.into());
        self
    }

    /// The init program on the rootfs (default [`DEFAULT_INIT`]).
    pub fn init(mut self, path: impl Into<String>) -> Self {
        self.init = path.into();
        self
    }

    /// Writes the guest console to this file (created or truncated).
    pub fn console_log(mut self, path: impl Into<PathBuf>) -> Self {
        self.console_log = Some(path.into());
        self
    }

    /// Stops the VM with [`crate::VmExit::DeadlineExceeded`] this long after `start()`.
    pub fn deadline(mut self, d: Duration) -> Self {
        self.deadline = Some(d);
        self
    }

    /// A virtio-net device on `tap` (the guest's `eth0`, with `mac`). The VM owns the tap from
    /// `start()` on: it is closed, and a non-persistent tap removed, when the VM is dropped. What
    /// the guest can reach through it is the host's business (routes, nftables). A builder cloned
    /// after this call shares the tap: start only one VM from it.
    pub fn net(mut self, tap: Tap, mac: [u8; 6]) -> Self {
        self.net = Some(NetSpec {
            tap: Arc::new(tap),
            mac,
        });
        self
    }

    /// The guest's vsock CID (default 3); `None` disables the vsock device.
    pub fn vsock_cid(mut self, cid: Option<u64>) -> Self {
        self.vsock_cid = cid;
        self
    }

    fn validate(&self) -> Result<(), VmError> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(VmError::Config(format!(
                "vCPUs must be 1..={MAX_VCPUS}, got {}",
                self.vcpus
            )));
        }
        if !(16..=(1 << 20)).contains(&self.memory_mib) {
            return Err(VmError::Config(format!(
                "memory must be 16 MiB..1 TiB, got {}",
                self.memory_mib
            )));
        }
        if self.kernel.is_none() == self.real_mode_code.is_none() {
            return Err(VmError::Config(
                "exactly one of kernel or real-mode code is required".into(),
            ));
        }
        Ok(())
    }

    fn cmdline(&self) -> Result<Cmdline, VmError> {
        let err = |e: linux_loader::cmdline::Error| VmError::Config(format!("command line: {e}"));
        let mut c = Cmdline::new(layout::CMDLINE_MAX_SIZE).map_err(err)?;
        c.insert_str(DEFAULT_CMDLINE).map_err(err)?;
        if let Some(r) = &self.rootfs {
            c.insert_str(format!(
                "root=/dev/vda {} rootfstype=ext4 init={}",
                if r.read_only { "ro" } else { "rw" },
                self.init
            ))
            .map_err(err)?;
        }
        c.insert_str(format!("hearth.ready=pio:{READY_PORT:#x}"))
            .map_err(err)?;
        for e in &self.cmdline_extra {
            c.insert_str(e).map_err(err)?;
        }
        Ok(c)
    }

    /// Builds the VM and starts its vCPUs and event loop.
    pub fn start(self) -> Result<Vm, VmError> {
        let build_start = Instant::now();
        let process_start = timings::process_start();
        self.validate()?;
        let control = Arc::new(VmControl::new().map_err(VmError::EventFd)?);
        let deadline = self.deadline.map(|d| build_start + d);

        let ram = arch::create_guest_memory(self.memory_mib << 20)
            .map_err(|e| VmError::Memory(e.to_string()))?;
        // Dropped before `ram` on every path (declared after it), as is everything below.
        let mem = ram.memory().clone();
        // The kernel image goes into guest RAM on its own thread while KVM, the devices and the
        // command line are set up; joined before the vCPUs are created (or when dropped).
        let kernel_load = match &self.kernel {
            Some(k) => Some(KernelLoad::spawn(&mem, k, &control)?),
            None => None,
        };
        let kvm_vm = KvmVm::create(&mem)?;
        let base_cpuid = cpuid::supported(&kvm_vm.kvm).map_err(VmError::Cpuid)?;
        control.stamp(|s| &mut s.kvm_vm_created);

        let console_file = match &self.console_log {
            Some(p) => Some(File::create(p).map_err(|source| VmError::File {
                what: "creating console log",
                path: p.clone(),
                source,
            })?),
            None => None,
        };
        let tail = ConsoleTail::default();
        let mut dm = DeviceManager::new();
        dm.add_legacy(
            &kvm_vm.fd,
            &control,
            ConsoleSink::new(console_file, tail.clone(), control.clone()),
            READY_PORT as u16,
        )?;

        let mut cmdline = self.cmdline()?;
        let mut disks = Vec::new();
        if let Some(r) = &self.rootfs {
            disks.push(Block::open(&r.path, r.read_only, "hearth-root")?);
        }
        for (i, d) in self.disks.iter().enumerate() {
            disks.push(Block::open(
                &d.path,
                d.read_only,
                &format!("hearth-disk{}", i + 1),
            )?);
        }
        if let Some(mib) = self.scratch_mib {
            disks.push(Block::from_file(
                scratch_file(mib)?,
                false,
                "hearth-scratch",
            )?);
        }
        for d in disks {
            let dev: Arc<Mutex<dyn VirtioDevice>> = Arc::new(Mutex::new(d));
            dm.add_virtio(&kvm_vm.fd, &mem, dev, &mut cmdline)?;
        }

        if let Some(n) = &self.net {
            let dev: Arc<Mutex<dyn VirtioDevice>> =
                Arc::new(Mutex::new(Net::new(n.tap.clone(), n.mac)?));
            dm.add_virtio(&kvm_vm.fd, &mem, dev, &mut cmdline)?;
        }

        let vsock = match self.vsock_cid {
            Some(cid) => {
                let (dev, handle) = Vsock::new(cid)?;
                let dev: Arc<Mutex<dyn VirtioDevice>> = Arc::new(Mutex::new(dev));
                dm.add_virtio(&kvm_vm.fd, &mem, dev, &mut cmdline)?;
                Some(handle)
            }
            None => None,
        };

        let boot = match (kernel_load, &self.real_mode_code) {
            (Some(load), _) => write_boot_info(&mem, load.wait()?, &cmdline, self.vcpus)?,
            (None, Some(code)) => {
                mem.write_slice(code, GuestAddress(u64::from(REAL_MODE_CODE_ADDR)))
                    .map_err(|e| VmError::Config(format!("real-mode code does not fit: {e}")))?;
                VcpuBoot::RealMode {
                    ip: REAL_MODE_CODE_ADDR,
                }
            }
            (None, None) => return Err(VmError::Config("no kernel".into())),
        };

        vcpu::install_kick_handler()?;
        let mut vcpu_fds = Vec::new();
        for id in 0..self.vcpus {
            vcpu_fds.push(vcpu::create(
                &kvm_vm.fd,
                &base_cpuid,
                &mem,
                id,
                self.vcpus,
                boot,
            )?);
        }
        let buses = Buses {
            pio: dm.pio.clone(),
            mmio: dm.mmio.clone(),
        };
        let event_loop = event_loop::spawn(
            std::mem::take(&mut dm.subscribers),
            std::mem::take(&mut dm.virtio_irqs),
            control.clone(),
            deadline,
            self.seccomp,
        )?;
        control.stamp(|s| &mut s.vm_created);
        let mut vm = Vm {
            control: control.clone(),
            vcpus: Vec::new(),
            event_loop: Some(event_loop),
            process_start,
            build_start,
            console_log: self.console_log.clone(),
            console_tail: tail,
            kernel: self.kernel.clone(),
            kernel_symbols: std::sync::OnceLock::new(),
            vsock,
            _kvm: Some(kvm_vm),
            ram,
        };
        // From here on `vm` owns guest RAM: no other clone of it may outlive `vm` on an error
        // path, or dropping `vm` could not unmap it (see `GuestRam`).
        drop(dm);
        drop(mem);
        for (id, fd) in vcpu_fds.into_iter().enumerate() {
            let spawned = vcpu::spawn(
                fd,
                id as u8,
                buses.clone(),
                control.clone(),
                vm.ram.memory().clone(),
                self.seccomp,
            );
            match spawned {
                Ok(h) => vm.vcpus.push(h),
                Err(e) => {
                    // The buses reach guest memory through the devices: dropped before `vm`,
                    // which stops and joins what was started, then unmaps guest RAM.
                    drop(buses);
                    drop(vm);
                    return Err(e.into());
                }
            }
        }
        Ok(vm)
    }
}

/// A kernel image being loaded into guest RAM by a thread of its own.
struct KernelLoad(Option<JoinHandle<Result<KernelEntry, VmError>>>);

impl KernelLoad {
    /// Opens `kernel` (errors here, at once) and starts loading it; stamps the load's start and
    /// end in `control`'s timings.
    fn spawn(mem: &GuestMemory, kernel: &Path, control: &Arc<VmControl>) -> Result<Self, VmError> {
        let mut f = File::open(kernel).map_err(|source| VmError::File {
            what: "opening kernel",
            path: kernel.to_path_buf(),
            source,
        })?;
        let (mem, control) = (mem.clone(), control.clone());
        let handle = std::thread::Builder::new()
            .name("hearth-kload".into())
            .spawn(move || {
                control.stamp(|s| &mut s.kernel_load_start);
                let entry = boot::load_kernel(&mem, &mut f)?;
                control.stamp(|s| &mut s.kernel_loaded);
                Ok(entry)
            })
            .map_err(VmError::KernelLoaderSpawn)?;
        Ok(Self(Some(handle)))
    }

    /// The loaded kernel's entry, once the thread is done.
    fn wait(mut self) -> Result<KernelEntry, VmError> {
        match self.0.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) | None => Err(VmError::KernelLoaderPanicked),
        }
    }
}

impl Drop for KernelLoad {
    /// Joins a load still running on an error path: its clone of guest memory must be gone
    /// before guest RAM can be unmapped.
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            let _ = h.join();
        }
    }
}

/// Writes what the loaded kernel reads at entry: command line, PVH start info or zero page,
/// MP table.
fn write_boot_info(
    mem: &GuestMemory,
    entry: KernelEntry,
    cmdline: &Cmdline,
    vcpus: u8,
) -> Result<VcpuBoot, VmError> {
    let cmdline_len = boot::write_cmdline(mem, cmdline)?;
    let ram = boot::e820_ram(mem);
    match entry.protocol {
        BootProtocol::Pvh => boot::write_pvh_info(mem, &ram)?,
        BootProtocol::Linux64 => boot::write_zero_page(mem, &ram, cmdline_len, entry.setup_header)?,
    }
    mptable::setup(mem, vcpus)?;
    tracing::debug!(protocol = ?entry.protocol, entry = entry.entry.0, "kernel loaded");
    Ok(VcpuBoot::Kernel {
        protocol: entry.protocol,
        entry: entry.entry.0,
    })
}

/// A sparse, unlinked temporary file of `mib` MiB.
fn scratch_file(mib: u64) -> Result<File, VmError> {
    let dir = std::env::temp_dir();
    let err = |source| VmError::File {
        what: "creating scratch disk in",
        path: dir.clone(),
        source,
    };
    let path = dir.join(format!(
        "hearth-scratch-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    let f = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(err)?;
    std::fs::remove_file(&path).map_err(err)?;
    f.set_len(mib << 20).map_err(err)?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_kernel_fails_start_before_kvm_is_needed() {
        let started = VmBuilder::new()
            .kernel("/nonexistent/hearth-test-kernel")
            .memory_mib(64)
            .start();
        match started {
            Err(VmError::File { what, path, .. }) => {
                assert_eq!(what, "opening kernel");
                assert_eq!(path, Path::new("/nonexistent/hearth-test-kernel"));
            }
            Err(e) => panic!("expected a file error, got: {e}"),
            Ok(_) => panic!("a VM started without a kernel file"),
        }
    }

    #[test]
    fn a_kernel_that_is_neither_elf_nor_bzimage_fails_on_the_loader_thread() {
        let ram = arch::create_guest_memory(64 << 20).expect("guest memory");
        let path = std::env::temp_dir().join(format!("hearth-not-a-kernel-{}", std::process::id()));
        std::fs::write(&path, [0x5a; 8192]).expect("writing the test file");
        let control = Arc::new(VmControl::new().expect("eventfd"));
        let load = KernelLoad::spawn(ram.memory(), &path, &control).expect("spawn");
        let result = load.wait();
        std::fs::remove_file(&path).expect("removing the test file");
        assert!(
            matches!(result, Err(VmError::Boot(_))),
            "expected a boot error, got {result:?}"
        );
        let stamps = control.stamps();
        assert!(
            stamps.kernel_load_start.is_some(),
            "the load's start is stamped"
        );
        assert!(
            stamps.kernel_loaded.is_none(),
            "a failed load is not stamped as loaded"
        );
    }
}
