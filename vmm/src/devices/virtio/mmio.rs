//! The virtio-mmio transport (virtio 1.2 §4.2, version 2 register layout).
//!
//! Every register access comes from a (hostile) guest: unknown offsets, wrong access sizes,
//! out-of-order status transitions and queue setup outside FEATURES_OK..DRIVER_OK are ignored
//! with a warning; a queue configuration that is invalid at DRIVER_OK puts the device into
//! DEVICE_NEEDS_RESET instead of activating it.

use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::{ActivateArgs, GuestMemory, IrqKind, IrqTrigger, VIRTIO_F_VERSION_1, VirtioDevice};
use crate::device_manager::bus::BusDevice;

const MMIO_MAGIC: u32 = 0x7472_6976; // "virt"
const MMIO_VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x4854_4852; // "RHTH"

/// Offset of the QueueNotify register (the ioeventfd address).
pub const QUEUE_NOTIFY: u64 = 0x050;

const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const REG_CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG_SPACE: u64 = 0x100;

/// Device status bits.
pub mod status {
    /// The guest noticed the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver.
    pub const DRIVER: u32 = 2;
    /// The driver is ready.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error and must be reset.
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    /// The driver gave up.
    pub const FAILED: u32 = 128;
}

const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// One virtio device behind an MMIO window.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemory,
    irq: Arc<IrqTrigger>,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    device_type: u32,
    avail_features: u64,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    queue_sel: u32,
    status: u32,
    activated: bool,
}

/// Errors creating a transport.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    /// An eventfd could not be created.
    #[error("creating eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    /// A queue size offered by the device is not valid.
    #[error("device queue size {0} is invalid: {1:?}")]
    Queue(u16, virtio_queue::Error),
}

impl MmioTransport {
    /// Wraps `device`, creating its queues and one notification eventfd per queue.
    pub fn new(
        mem: GuestMemory,
        device: Arc<Mutex<dyn VirtioDevice>>,
        irq: Arc<IrqTrigger>,
    ) -> Result<Self, MmioError> {
        let (sizes, device_type, avail_features) = {
            let d = device.lock().unwrap_or_else(|p| p.into_inner());
            (
                d.queue_max_sizes().to_vec(),
                d.device_type(),
                d.avail_features(),
            )
        };
        let queues = sizes
            .iter()
            .map(|&s| Queue::new(s).map_err(|e| MmioError::Queue(s, e)))
            .collect::<Result<Vec<_>, _>>()?;
        let queue_evts = sizes
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK).map_err(MmioError::EventFd))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            device,
            mem,
            irq,
            queues,
            queue_evts,
            device_type,
            avail_features,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            queue_sel: 0,
            status: 0,
            activated: false,
        })
    }

    /// The per-queue notification eventfds (to register as ioeventfds at [`QUEUE_NOTIFY`]).
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The current device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn queue_setup_allowed(&self) -> bool {
        self.status & status::FEATURES_OK != 0 && self.status & status::DRIVER_OK == 0
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        match offset {
            REG_MAGIC => MMIO_MAGIC,
            REG_VERSION => MMIO_VERSION,
            REG_DEVICE_ID => self.device_type,
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.avail_features as u32,
                1 => (self.avail_features >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            REG_QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            REG_INTERRUPT_STATUS => self.irq.status(),
            REG_STATUS => self.status,
            REG_CONFIG_GENERATION => 0,
            _ => {
                tracing::warn!(offset, "virtio-mmio read of an unknown register");
                0
            }
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            REG_DRIVER_FEATURES => self.write_driver_features(v),
            REG_QUEUE_SEL => self.queue_sel = v,
            REG_INTERRUPT_ACK => self.irq.ack(v),
            REG_STATUS => self.write_status(v),
            REG_QUEUE_NUM
            | REG_QUEUE_READY
            | REG_QUEUE_DESC_LOW
            | REG_QUEUE_DESC_HIGH
            | REG_QUEUE_DRIVER_LOW
            | REG_QUEUE_DRIVER_HIGH
            | REG_QUEUE_DEVICE_LOW
            | REG_QUEUE_DEVICE_HIGH => self.write_queue_reg(offset, v),
            QUEUE_NOTIFY => self.notify(v),
            _ => tracing::warn!(
                offset,
                v,
                "virtio-mmio write to an unknown register ignored"
            ),
        }
    }

    fn write_driver_features(&mut self, v: u32) {
        if self.status & status::DRIVER == 0 || self.status & status::FEATURES_OK != 0 {
            tracing::warn!("driver features written outside feature negotiation; ignored");
            return;
        }
        match self.driver_features_sel {
            0 => self.acked_features = (self.acked_features & !0xffff_ffff) | u64::from(v),
            1 => self.acked_features = (self.acked_features & 0xffff_ffff) | (u64::from(v) << 32),
            _ => tracing::warn!(sel = self.driver_features_sel, "bad driver features select"),
        }
    }

    fn write_queue_reg(&mut self, offset: u64, v: u32) {
        if !self.queue_setup_allowed() {
            tracing::warn!(
                offset,
                "queue register written outside FEATURES_OK..DRIVER_OK; ignored"
            );
            return;
        }
        let Some(q) = self.selected_queue() else {
            tracing::warn!("queue register written with an out-of-range QueueSel; ignored");
            return;
        };
        match offset {
            REG_QUEUE_NUM => {
                if let Err(e) = q.try_set_size(v.min(u32::from(u16::MAX)) as u16) {
                    tracing::warn!(size = v, error = ?e, "invalid queue size ignored");
                }
            }
            REG_QUEUE_READY => q.set_ready(v == 1),
            REG_QUEUE_DESC_LOW => q.set_desc_table_address(Some(v), None),
            REG_QUEUE_DESC_HIGH => q.set_desc_table_address(None, Some(v)),
            REG_QUEUE_DRIVER_LOW => q.set_avail_ring_address(Some(v), None),
            REG_QUEUE_DRIVER_HIGH => q.set_avail_ring_address(None, Some(v)),
            REG_QUEUE_DEVICE_LOW => q.set_used_ring_address(Some(v), None),
            REG_QUEUE_DEVICE_HIGH => q.set_used_ring_address(None, Some(v)),
            _ => {}
        }
    }

    fn notify(&mut self, v: u32) {
        // Normally KVM's ioeventfd swallows these writes; this is the fallback path.
        match self.queue_evts.get(v as usize) {
            Some(evt) if self.activated => {
                if let Err(e) = evt.write(1) {
                    tracing::warn!(error = %e, "queue notify eventfd write failed");
                }
            }
            _ => tracing::warn!(queue = v, "notify for an unknown or inactive queue ignored"),
        }
    }

    fn write_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        // Bits may only be added, never removed (except by a reset).
        if v & old != old {
            tracing::warn!(
                old,
                new = v,
                "device status cleared bits without reset; ignored"
            );
            return;
        }
        let added = v & !old;
        if added & status::FEATURES_OK != 0 && !self.features_acceptable() {
            tracing::warn!(acked = self.acked_features, "driver features rejected");
            self.status = v & !status::FEATURES_OK;
            return;
        }
        self.status = v;
        if added & status::DRIVER_OK != 0 && v & status::FEATURES_OK != 0 && !self.activated {
            self.activate();
        }
    }

    fn features_acceptable(&self) -> bool {
        self.acked_features & !self.avail_features == 0
            && self.acked_features & VIRTIO_F_VERSION_1 != 0
    }

    fn activate(&mut self) {
        let mem = self.mem.clone();
        let event_idx = self.acked_features & VIRTIO_RING_F_EVENT_IDX != 0;
        for (i, q) in self.queues.iter_mut().enumerate() {
            if !q.ready() || !q.is_valid(&mem) {
                tracing::warn!(queue = i, "queue not ready or invalid at DRIVER_OK");
                return self.fail();
            }
            q.set_event_idx(event_idx);
        }
        let evts = match self
            .queue_evts
            .iter()
            .map(EventFd::try_clone)
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "cloning queue eventfds failed");
                return self.fail();
            }
        };
        let queues = match self
            .queues
            .iter()
            .map(|q| Queue::try_from(q.state()))
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(q) => q,
            Err(e) => {
                tracing::warn!(error = ?e, "queue state rejected at DRIVER_OK");
                return self.fail();
            }
        };
        let args = ActivateArgs {
            mem,
            queues,
            queue_evts: evts,
            irq: self.irq.clone(),
            acked_features: self.acked_features,
        };
        let result = self
            .device
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .activate(args);
        match result {
            Ok(()) => self.activated = true,
            Err(e) => {
                tracing::warn!(error = %e, "device activation failed");
                self.fail();
            }
        }
    }

    fn fail(&mut self) {
        self.status |= status::DEVICE_NEEDS_RESET;
        if let Err(e) = self.irq.trigger(IrqKind::Config) {
            tracing::warn!(error = %e, "config interrupt failed");
        }
    }

    fn reset(&mut self) {
        if self.activated {
            let ok = self
                .device
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .reset();
            if !ok {
                tracing::warn!("device does not support reset; marking it failed");
                self.status = status::DEVICE_NEEDS_RESET | status::FAILED;
                return;
            }
        }
        self.activated = false;
        self.status = 0;
        self.acked_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        for q in &mut self.queues {
            q.reset();
        }
        self.irq.ack(u32::MAX);
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.device
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .read_config(offset - CONFIG_SPACE, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            tracing::warn!(
                offset,
                len = data.len(),
                "bad virtio-mmio register read size"
            );
            data.fill(0);
            return;
        }
        let v = self.read_reg(offset);
        data.copy_from_slice(&v.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            self.device
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .write_config(offset - CONFIG_SPACE, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            tracing::warn!(
                offset,
                len = data.len(),
                "bad virtio-mmio register write size"
            );
            return;
        };
        if !offset.is_multiple_of(4) {
            tracing::warn!(offset, "unaligned virtio-mmio register write");
            return;
        }
        self.write_reg(offset, u32::from_le_bytes(bytes));
    }
}
