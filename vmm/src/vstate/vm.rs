//! The KVM VM: memory slots, in-kernel irqchip and PIT.

use kvm_bindings::{KVM_PIT_SPEAKER_DUMMY, kvm_pit_config, kvm_userspace_memory_region};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::arch::x86_64::layout::KVM_TSS_ADDRESS;
use crate::devices::virtio::GuestMemory;

/// Errors creating the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// /dev/kvm could not be opened.
    #[error("opening /dev/kvm: {0}")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// A required KVM capability is missing.
    #[error("KVM lacks the required capability {0:?}")]
    MissingCap(Cap),
    /// A VM ioctl failed.
    #[error("{what}: {source}")]
    Kvm {
        /// Which ioctl.
        what: &'static str,
        /// The error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// A guest memory region has no host mapping.
    #[error("guest memory region has no host address: {0}")]
    HostAddress(#[source] vm_memory::GuestMemoryError),
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

const REQUIRED_CAPS: [Cap; 6] = [
    Cap::Irqchip,
    Cap::Ioeventfd,
    Cap::Irqfd,
    Cap::UserMemory,
    Cap::SetTssAddr,
    Cap::Pit2,
];

/// The KVM system handle plus one VM.
pub struct KvmVm {
    /// /dev/kvm.
    pub kvm: Kvm,
    /// The VM.
    pub fd: VmFd,
    /// The memory its slots point at: kept referenced while the VM fd lives, so that the
    /// mapping's owner ([`crate::vstate::memory::GuestRam`]) never unmaps it under the VM.
    _mem: GuestMemory,
}

impl KvmVm {
    /// Creates the VM, registers guest memory and creates the irqchip and PIT.
    pub fn create(mem: &GuestMemory) -> Result<Self, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        for cap in REQUIRED_CAPS {
            if !kvm.check_extension(cap) {
                return Err(VmError::MissingCap(cap));
            }
        }
        let fd = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        fd.set_tss_address(KVM_TSS_ADDRESS)
            .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        for (slot, region) in mem.iter().enumerate() {
            let host = mem
                .get_host_address(region.start_addr())
                .map_err(VmError::HostAddress)?;
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the region is a live mmap owned by `mem`, which the caller keeps alive for
            // as long as the VM exists (the Vm handle owns both and drops the VM fd first); the
            // slots do not overlap because guest memory regions do not.
            unsafe { fd.set_user_memory_region(r) }
                .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
        }
        fd.create_irq_chip()
            .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
        Ok(Self {
            kvm,
            fd,
            _mem: mem.clone(),
        })
    }
}
