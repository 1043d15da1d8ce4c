//! The boot-ready port: the agent writes 0x7b to it (`hearth.ready=pio:0xPORT`) once its vsock
//! listener is up; the VMM timestamps that as "agent ready".

use std::sync::Arc;

use crate::device_manager::bus::BusDevice;
use crate::vstate::control::VmControl;

/// Default port.
pub const READY_PORT: u64 = 0x4f0;
/// The byte the agent writes.
pub const READY_BYTE: u8 = 0x7b;

/// The ready port on the PIO bus.
pub struct ReadyPort {
    control: Arc<VmControl>,
}

impl ReadyPort {
    /// A port stamping readiness into `control`.
    pub fn new(control: Arc<VmControl>) -> Self {
        Self { control }
    }
}

impl BusDevice for ReadyPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if data == [READY_BYTE] {
            self.control.stamp(|s| &mut s.agent_ready);
        } else {
            tracing::debug!(?data, "ignored write to the ready port");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_ready_byte_counts() {
        let c = Arc::new(VmControl::new().unwrap());
        let mut p = ReadyPort::new(c.clone());
        p.write(0, &[0x7a]);
        p.write(0, &[0x7b, 0]);
        assert!(c.stamps().agent_ready.is_none());
        p.write(0, &[0x7b]);
        assert!(c.stamps().agent_ready.is_some());
    }
}
