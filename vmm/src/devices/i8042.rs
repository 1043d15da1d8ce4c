//! The i8042 keyboard controller at 0x60/0x64, reduced to what a guest uses to reset the
//! machine: writing 0xfe to the command port ends the VM with [`VmExit::Reset`].

use std::sync::Arc;

use vm_superio::{I8042Device, Trigger};

use crate::VmExit;
use crate::device_manager::bus::BusDevice;
use crate::vstate::control::VmControl;

/// First port of the controller.
pub const I8042_BASE: u64 = 0x60;
/// Ports 0x60..=0x64.
pub const I8042_LEN: u64 = 5;

/// Resets the VM when triggered.
#[derive(Debug)]
pub struct ResetTrigger(pub Arc<VmControl>);

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.request_exit(VmExit::Reset);
        Ok(())
    }
}

/// The controller on the PIO bus.
pub struct I8042 {
    inner: I8042Device<ResetTrigger>,
}

impl I8042 {
    /// A controller that resets `control` on command 0xfe.
    pub fn new(control: Arc<VmControl>) -> Self {
        Self {
            inner: I8042Device::new(ResetTrigger(control)),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = self.inner.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() == 1 {
            let Ok(()) = self.inner.write(offset as u8, data[0]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_ends_the_vm() {
        let c = Arc::new(VmControl::new().unwrap());
        let mut dev = I8042::new(c.clone());
        dev.write(4, &[0xaa]);
        dev.write(0, &[0xfe]);
        assert_eq!(c.exit(), None);
        dev.write(4, &[0xfe]);
        assert_eq!(c.exit(), Some(VmExit::Reset));
    }
}
