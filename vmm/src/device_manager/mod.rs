//! Puts devices on the buses: legacy PIO devices at fixed ports, virtio-mmio devices in 4 KiB
//! windows with an IRQ each, announced to the guest on the kernel command line.

pub mod bus;

use std::sync::{Arc, Mutex};

use event_manager::MutEventSubscriber;
use kvm_ioctls::{IoEventAddress, VmFd};
use linux_loader::loader::Cmdline;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use self::bus::{Bus, BusError};
use crate::arch::x86_64::layout::{IRQ_BASE, IRQ_MAX, MMIO_DEVICE_SIZE, MMIO_DEVICES_START};
use crate::devices::console::ConsoleSink;
use crate::devices::i8042::{I8042, I8042_BASE, I8042_IRQ, I8042_LEN};
use crate::devices::ready_port::ReadyPort;
use crate::devices::serial::{COM1_BASE, COM1_IRQ, COM1_LEN, SerialDevice};
use crate::devices::virtio::mmio::{MmioError, MmioTransport, QUEUE_NOTIFY};
use crate::devices::virtio::{GuestMemory, IrqTrigger, VirtioDevice};
use crate::vstate::control::VmControl;

/// Errors attaching devices.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// Bus range conflict.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// No IRQ left for another virtio device.
    #[error("out of IRQs for virtio devices")]
    OutOfIrqs,
    /// An eventfd could not be created.
    #[error("creating eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    /// KVM_IRQFD / KVM_IOEVENTFD failed.
    #[error("{what}: {source}")]
    Kvm {
        /// Which ioctl.
        what: &'static str,
        /// The error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The MMIO transport could not be created.
    #[error(transparent)]
    Mmio(#[from] MmioError),
    /// The command line is full.
    #[error("announcing a virtio-mmio device on the command line: {0}")]
    Cmdline(String),
}

/// An event-manager subscriber as stored in the VMM's event manager.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Allocates addresses and IRQs and owns the buses while the VM is assembled.
pub struct DeviceManager {
    /// Port I/O bus.
    pub pio: Bus,
    /// MMIO bus.
    pub mmio: Bus,
    /// Subscribers for the event loop.
    pub subscribers: Vec<Subscriber>,
    /// The virtio devices' interrupts, for the event loop's lost-interrupt check.
    pub virtio_irqs: Vec<Arc<IrqTrigger>>,
    next_mmio: u64,
    next_irq: u32,
}

impl Default for DeviceManager {
    fn default() -> Self {
        Self::new()
    }
}

impl DeviceManager {
    /// Empty buses.
    pub fn new() -> Self {
        Self {
            pio: Bus::new(),
            mmio: Bus::new(),
            subscribers: Vec::new(),
            virtio_irqs: Vec::new(),
            next_mmio: MMIO_DEVICES_START,
            next_irq: IRQ_BASE,
        }
    }

    /// COM1, the i8042 reset controller and the ready port.
    pub fn add_legacy(
        &mut self,
        vm: &VmFd,
        control: &Arc<VmControl>,
        console: ConsoleSink,
        ready_port: u16,
    ) -> Result<(), DeviceError> {
        let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(DeviceError::EventFd)?;
        vm.register_irqfd(&serial_irq, COM1_IRQ)
            .map_err(|source| DeviceError::Kvm {
                what: "KVM_IRQFD (serial)",
                source,
            })?;
        let serial = SerialDevice::new(serial_irq, console);
        self.pio
            .insert(Arc::new(Mutex::new(serial)), COM1_BASE, COM1_LEN)?;
        let kbd_irq = EventFd::new(EFD_NONBLOCK).map_err(DeviceError::EventFd)?;
        vm.register_irqfd(&kbd_irq, I8042_IRQ)
            .map_err(|source| DeviceError::Kvm {
                what: "KVM_IRQFD (i8042)",
                source,
            })?;
        let i8042 = I8042::new(control.clone(), Some(kbd_irq));
        self.pio
            .insert(Arc::new(Mutex::new(i8042)), I8042_BASE, I8042_LEN)?;
        self.pio.insert(
            Arc::new(Mutex::new(ReadyPort::new(control.clone()))),
            u64::from(ready_port),
            1,
        )?;
        Ok(())
    }

    /// Puts a virtio device behind a new MMIO window, wires its IRQ and queue notifications into
    /// KVM and announces it on `cmdline`. Returns (window base, IRQ).
    pub fn add_virtio(
        &mut self,
        vm: &VmFd,
        mem: &GuestMemory,
        device: Arc<Mutex<dyn VirtioDevice>>,
        cmdline: &mut Cmdline,
    ) -> Result<(u64, u32), DeviceError> {
        if self.next_irq > IRQ_MAX {
            return Err(DeviceError::OutOfIrqs);
        }
        let irq_no = self.next_irq;
        let base = self.next_mmio;
        let irq = Arc::new(IrqTrigger::new().map_err(DeviceError::EventFd)?);
        vm.register_irqfd(irq.irqfd(), irq_no)
            .map_err(|source| DeviceError::Kvm {
                what: "KVM_IRQFD",
                source,
            })?;
        self.virtio_irqs.push(irq.clone());
        let transport = MmioTransport::new(mem.clone(), device.clone(), irq)?;
        for (i, evt) in transport.queue_evts().iter().enumerate() {
            vm.register_ioevent(evt, &IoEventAddress::Mmio(base + QUEUE_NOTIFY), i as u32)
                .map_err(|source| DeviceError::Kvm {
                    what: "KVM_IOEVENTFD",
                    source,
                })?;
        }
        self.mmio
            .insert(Arc::new(Mutex::new(transport)), base, MMIO_DEVICE_SIZE)?;
        cmdline
            .add_virtio_mmio_device(MMIO_DEVICE_SIZE, GuestAddress(base), irq_no, None)
            .map_err(|e| DeviceError::Cmdline(e.to_string()))?;
        let sub: Subscriber = device;
        self.subscribers.push(sub);
        self.next_irq += 1;
        self.next_mmio += MMIO_DEVICE_SIZE;
        Ok((base, irq_no))
    }
}
