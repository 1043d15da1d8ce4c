//! Virtio device model shared by every device behind the MMIO transport.
//!
//! This module is the contract between the transport (`mmio`) and the devices (`block`, `vsock`):
//! the interrupt trigger, the activation arguments and the [`VirtioDevice`] trait.

pub mod block;
pub mod mmio;
pub mod net;
pub mod vsock;

use std::io;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// The guest memory type used by every device.
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;

/// Feature bit: the device complies with virtio 1.0+ (bit 32).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Virtio device ids.
pub const TYPE_NET: u32 = 1;
/// Block device id.
pub const TYPE_BLOCK: u32 = 2;
/// Vsock device id.
pub const TYPE_VSOCK: u32 = 19;

/// The cause of an interrupt, as seen in the MMIO InterruptStatus register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqKind {
    /// A used buffer was added to a virtqueue (VIRTIO_MMIO_INT_VRING).
    Vring,
    /// The configuration space changed (VIRTIO_MMIO_INT_CONFIG).
    Config,
}

impl IrqKind {
    /// The InterruptStatus bit of this kind.
    pub fn bit(self) -> u32 {
        match self {
            IrqKind::Vring => 1,
            IrqKind::Config => 2,
        }
    }
}

/// One virtio-mmio device's interrupt: the interrupt-status register plus the irqfd.
#[derive(Debug)]
pub struct IrqTrigger {
    status: AtomicU32,
    irqfd: EventFd,
    /// When the irqfd was last signalled ([`monotonic_ns`]).
    last_raised_ns: AtomicU64,
    /// How often [`IrqTrigger::repeat_if_unacknowledged`] signalled again.
    repeats: AtomicU64,
}

/// Nanoseconds since the first call in this process (a monotonic clock for atomics).
fn monotonic_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

impl IrqTrigger {
    /// A trigger with a fresh non-blocking irqfd.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            status: AtomicU32::new(0),
            irqfd: EventFd::new(EFD_NONBLOCK)?,
            last_raised_ns: AtomicU64::new(0),
            repeats: AtomicU64::new(0),
        })
    }

    /// Sets the status bit of `kind` and signals the irqfd.
    pub fn trigger(&self, kind: IrqKind) -> io::Result<()> {
        self.status.fetch_or(kind.bit(), Ordering::SeqCst);
        self.last_raised_ns.store(monotonic_ns(), Ordering::SeqCst);
        self.irqfd.write(1)
    }

    /// Raises the used-ring interrupt for `queue`, which just got used entries, unless the
    /// driver asked for none ([`driver_wants_interrupt`]). Every device signals its used rings
    /// through here.
    pub fn signal_used(
        &self,
        queue: &mut virtio_queue::Queue,
        mem: &GuestMemory,
    ) -> io::Result<()> {
        if driver_wants_interrupt(queue, mem) {
            self.trigger(IrqKind::Vring)
        } else {
            Ok(())
        }
    }

    /// Signals the irqfd again when InterruptStatus is still set `older_than` after the last
    /// signal: the guest has not acknowledged it. Seen under nested virtualization: an edge was
    /// lost, the status stayed set and the guest waited forever for a completion it had been
    /// told about (the driver's handler reads and acknowledges the status, so a repeated edge for
    /// a set status is handled, never spurious). Returns whether it signalled.
    pub fn repeat_if_unacknowledged(&self, older_than: Duration) -> bool {
        if self.status() == 0 {
            return false;
        }
        let now = monotonic_ns();
        let last = self.last_raised_ns.load(Ordering::SeqCst);
        if now.saturating_sub(last) < older_than.as_nanos() as u64 {
            return false;
        }
        self.last_raised_ns.store(now, Ordering::SeqCst);
        let n = self.repeats.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            tracing::warn!(
                repeats = n,
                status = self.status(),
                "virtio: the guest did not acknowledge an interrupt; raising it again"
            );
        }
        self.irqfd.write(1).is_ok()
    }

    /// How long ago the irqfd was last signalled (raised or raised again).
    pub fn since_last_raised(&self) -> Duration {
        let last = self.last_raised_ns.load(Ordering::SeqCst);
        Duration::from_nanos(monotonic_ns().saturating_sub(last))
    }

    /// How often the interrupt was raised again for lack of an acknowledgement.
    pub fn repeats(&self) -> u64 {
        self.repeats.load(Ordering::Relaxed)
    }

    /// The current InterruptStatus value.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clears `bits` from the status.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// The irqfd registered with KVM_IRQFD by the device manager.
    pub fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }
}

/// Handed to a device when the driver sets DRIVER_OK.
#[derive(Debug)]
pub struct ActivateArgs {
    /// Guest memory.
    pub mem: GuestMemory,
    /// The queues, validated by the transport (ready, size, addresses).
    pub queues: Vec<virtio_queue::Queue>,
    /// One ioeventfd per queue, already registered with KVM.
    pub queue_evts: Vec<EventFd>,
    /// The device's interrupt.
    pub irq: std::sync::Arc<IrqTrigger>,
    /// Features the driver acknowledged.
    pub acked_features: u64,
}

/// Why a device could not be activated.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The transport handed over a different number of queues than the device has.
    #[error("bad queue count: expected {expected}, got {got}")]
    BadQueueCount {
        /// Queues the device needs.
        expected: usize,
        /// Queues received.
        got: usize,
    },
    /// Writing or creating an eventfd failed.
    #[error("eventfd: {0}")]
    EventFd(#[source] io::Error),
    /// The device was already activated.
    #[error("device already activated")]
    AlreadyActivated,
    /// A device-specific failure.
    #[error("{0}")]
    Device(String),
}

/// A virtio device behind the MMIO transport. Also an event-manager subscriber: it is added to the
/// VMM's single EventManager as `Arc<Mutex<Self>>`, and in `init` it registers an "activate"
/// EventFd.
pub trait VirtioDevice: event_manager::MutEventSubscriber + Send {
    /// Virtio device id (blk 2, net 1, vsock 19).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Offered features, including [`VIRTIO_F_VERSION_1`].
    fn avail_features(&self) -> u64;
    /// Reads the config space; out-of-range bytes are filled with 0, never a panic.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the config space; out-of-range or read-only writes are ignored with a warning.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Called on a vCPU thread. Must not block: store `args`, then write the activate EventFd;
    /// the event-loop thread registers the queue eventfds (via EventOps) in `process`.
    fn activate(&mut self, args: ActivateArgs) -> Result<(), ActivateError>;
    /// Driver wrote 0 to Status. Drop queues/state; return false if reset is not supported.
    fn reset(&mut self) -> bool;
}

/// Copies the bytes of a device's config space `config` at `offset` into `data`; bytes past its
/// end read as 0 (what every device's [`VirtioDevice::read_config`] does, never a panic).
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Some(start) = usize::try_from(offset).ok().filter(|&s| s < config.len()) else {
        return;
    };
    let n = data.len().min(config.len() - start);
    data[..n].copy_from_slice(&config[start..start + n]);
}

/// `VIRTQ_AVAIL_F_NO_INTERRUPT` in the available ring's flags (virtio 1.2, 2.7.6).
const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;

/// Whether the driver wants an interrupt for the used entries just added to `queue`. With
/// `VIRTIO_RING_F_EVENT_IDX` negotiated its `used_event` decides (virtio-queue's
/// `needs_notification`); without it, the driver's `VIRTQ_AVAIL_F_NO_INTERRUPT` flag, which
/// virtio-queue 0.18 does not look at (Linux sets it while its work drains the queue and looks at
/// the used ring again before clearing it). A ring we cannot read gets the interrupt.
pub fn driver_wants_interrupt(queue: &mut virtio_queue::Queue, mem: &GuestMemory) -> bool {
    use virtio_queue::QueueT;
    use vm_memory::{Bytes, GuestAddress};
    if queue.event_idx_enabled() {
        return queue.needs_notification(mem).unwrap_or(true);
    }
    // The used index we just published must be visible before we read the flags: the driver
    // sets the flag first and reads the used index after (the spec's pairing barrier).
    std::sync::atomic::fence(Ordering::SeqCst);
    mem.load::<u16>(GuestAddress(queue.avail_ring()), Ordering::Acquire)
        .map_or(true, |flags| {
            u16::from_le(flags) & VIRTQ_AVAIL_F_NO_INTERRUPT == 0
        })
}

/// A ready split queue of `2^(size_log2 % 9)` entries at the given ring addresses: the queue
/// the fuzz targets drive from fuzzed guest memory (not a stable API).
#[doc(hidden)]
pub fn fuzz_queue(size_log2: u8, desc: u64, avail: u64, used: u64) -> Option<virtio_queue::Queue> {
    use virtio_queue::QueueT;
    use vm_memory::GuestAddress;
    let mut queue = virtio_queue::Queue::new(256).ok()?;
    queue.try_set_size(1u16 << (size_log2 % 9)).ok()?;
    queue.try_set_desc_table_address(GuestAddress(desc)).ok()?;
    queue.try_set_avail_ring_address(GuestAddress(avail)).ok()?;
    queue.try_set_used_ring_address(GuestAddress(used)).ok()?;
    queue.set_ready(true);
    Some(queue)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_interrupt_flag_is_honoured_without_event_idx() {
        use vm_memory::{Bytes, GuestAddress};
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let mut q = fuzz_queue(4, 0x1000, 0x2000, 0x3000).unwrap();
        assert!(driver_wants_interrupt(&mut q, &mem));
        mem.write_obj(1u16.to_le(), GuestAddress(0x2000)).unwrap();
        assert!(!driver_wants_interrupt(&mut q, &mem));
        mem.write_obj(0u16, GuestAddress(0x2000)).unwrap();
        assert!(driver_wants_interrupt(&mut q, &mem));
        // An available ring outside guest memory: interrupt rather than stay silent.
        let mut far = fuzz_queue(4, 0x1000, 0x10_0000, 0x3000).unwrap();
        assert!(driver_wants_interrupt(&mut far, &mem));
    }

    #[test]
    fn unacknowledged_interrupt_is_raised_again_and_acknowledged_one_is_not() {
        let irq = IrqTrigger::new().unwrap();
        assert!(
            !irq.repeat_if_unacknowledged(Duration::ZERO),
            "nothing raised yet"
        );
        irq.trigger(IrqKind::Vring).unwrap();
        assert_eq!(irq.irqfd().read().unwrap(), 1);
        assert!(
            !irq.repeat_if_unacknowledged(Duration::from_secs(60)),
            "too recent"
        );
        std::thread::sleep(Duration::from_millis(5));
        assert!(irq.repeat_if_unacknowledged(Duration::from_millis(1)));
        assert_eq!(irq.irqfd().read().unwrap(), 1, "signalled again");
        assert_eq!(irq.repeats(), 1);
        irq.ack(IrqKind::Vring.bit());
        std::thread::sleep(Duration::from_millis(5));
        assert!(
            !irq.repeat_if_unacknowledged(Duration::from_millis(1)),
            "acknowledged"
        );
        assert!(irq.irqfd().read().is_err(), "no further signal");
    }

    #[test]
    fn config_reads_past_the_end_are_zero() {
        let mut d = [0xff; 4];
        read_config_bytes(&[1, 2, 3], 1, &mut d);
        assert_eq!(d, [2, 3, 0, 0]);
        read_config_bytes(&[1, 2, 3], 3, &mut d);
        assert_eq!(d, [0; 4]);
        read_config_bytes(&[1, 2, 3], u64::MAX, &mut d);
        assert_eq!(d, [0; 4]);
    }

    #[test]
    fn trigger_sets_status_and_signals_irqfd() {
        let irq = IrqTrigger::new().unwrap();
        assert_eq!(irq.status(), 0);
        irq.trigger(IrqKind::Vring).unwrap();
        irq.trigger(IrqKind::Config).unwrap();
        assert_eq!(irq.status(), 3);
        assert_eq!(irq.irqfd().read().unwrap(), 2);
        irq.ack(1);
        assert_eq!(irq.status(), 2);
    }

    struct Dummy;
    impl event_manager::MutEventSubscriber for Dummy {
        fn process(&mut self, _: event_manager::Events, _: &mut event_manager::EventOps) {}
        fn init(&mut self, _: &mut event_manager::EventOps) {}
    }
    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            0
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[]
        }
        fn avail_features(&self) -> u64 {
            VIRTIO_F_VERSION_1
        }
        fn read_config(&self, _: u64, data: &mut [u8]) {
            data.fill(0);
        }
        fn write_config(&mut self, _: u64, _: &[u8]) {}
        fn activate(&mut self, _: ActivateArgs) -> Result<(), ActivateError> {
            Ok(())
        }
        fn reset(&mut self) -> bool {
            true
        }
    }

    #[test]
    fn device_arc_coerces_to_subscriber_arc() {
        use std::sync::{Arc, Mutex};
        let dev: Arc<Mutex<dyn VirtioDevice>> = Arc::new(Mutex::new(Dummy));
        let sub: Arc<Mutex<dyn event_manager::MutEventSubscriber + Send>> = dev.clone();
        let mut em = event_manager::EventManager::<
            Arc<Mutex<dyn event_manager::MutEventSubscriber + Send>>,
        >::new()
        .unwrap();
        event_manager::SubscriberOps::add_subscriber(&mut em, sub);
        assert_eq!(Arc::strong_count(&dev), 2);
    }
}
