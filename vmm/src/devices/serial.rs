//! COM1: a 16550A UART (vm-superio) at 0x3f8, IRQ 4, writing to the console sink.

use std::io;

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::console::ConsoleSink;
use crate::device_manager::bus::BusDevice;

/// COM1 I/O base.
pub const COM1_BASE: u64 = 0x3f8;
/// COM1 register window size.
pub const COM1_LEN: u64 = 8;
/// COM1 IRQ.
pub const COM1_IRQ: u32 = 4;

/// An eventfd usable as a vm-superio interrupt trigger.
#[derive(Debug)]
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// The serial port on the PIO bus.
pub struct SerialDevice {
    inner: Serial<EventFdTrigger, vm_superio::serial::NoEvents, ConsoleSink>,
}

impl SerialDevice {
    /// A UART raising `irq` and writing to `sink`.
    pub fn new(irq: EventFd, sink: ConsoleSink) -> Self {
        Self {
            inner: Serial::new(EventFdTrigger(irq), sink),
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if data.len() == 1 && offset < COM1_LEN {
            data[0] = self.inner.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() == 1
            && offset < COM1_LEN
            && let Err(e) = self.inner.write(offset as u8, data[0])
        {
            tracing::warn!(error = ?e, "serial write failed");
        }
    }
}
