//! The i8042 keyboard controller at 0x60/0x64: enough of the controller protocol for Linux's
//! i8042 driver to probe it instantly (command-byte read/write, self tests, polled replies), and
//! the CPU reset line: command 0xfe ends the VM with [`VmExit::Reset`]. No keyboard is attached
//! (guests run with `i8042.dumbkbd i8042.noaux`).

use std::collections::VecDeque;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::VmExit;
use crate::device_manager::bus::BusDevice;
use crate::vstate::control::VmControl;

/// First port of the controller.
pub const I8042_BASE: u64 = 0x60;
/// Ports 0x60..=0x64.
pub const I8042_LEN: u64 = 5;
/// Keyboard IRQ.
pub const I8042_IRQ: u32 = 1;

const DATA: u64 = 0;
const COMMAND: u64 = 4;

const SB_OUT_FULL: u8 = 0x01;
const SB_SYSTEM: u8 = 0x04;
const SB_LAST_WAS_CMD: u8 = 0x08;
const SB_UNLOCKED: u8 = 0x10;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_OUTP: u8 = 0xd0;
const CMD_WRITE_OUTP: u8 = 0xd1;
const CMD_WRITE_KBD_OUT: u8 = 0xd2;
const CMD_WRITE_AUX_OUT: u8 = 0xd3;
const CMD_WRITE_AUX: u8 = 0xd4;
const CMD_RESET_CPU: u8 = 0xfe;

const CTR_KBD_INT: u8 = 0x01;
const KBD_ACK: u8 = 0xfa;
const KBD_RESET: u8 = 0xff;
const KBD_SELF_TEST_OK: u8 = 0xaa;
/// Bounded output buffer: a guest cannot make the host allocate without limit.
const MAX_OUT: usize = 16;

/// The controller on the PIO bus.
pub struct I8042 {
    control: Arc<VmControl>,
    irq: Option<EventFd>,
    ctr: u8,
    outp: u8,
    last_was_cmd: bool,
    pending: Option<u8>,
    out: VecDeque<u8>,
}

impl I8042 {
    /// A controller that resets `control` on command 0xfe and raises `irq` (IRQ 1) for keyboard
    /// replies.
    pub fn new(control: Arc<VmControl>, irq: Option<EventFd>) -> Self {
        Self {
            control,
            irq,
            ctr: CTR_KBD_INT | SB_SYSTEM | 0x40,
            outp: 0x01,
            last_was_cmd: false,
            pending: None,
            out: VecDeque::new(),
        }
    }

    fn status(&self) -> u8 {
        let mut s = SB_SYSTEM | SB_UNLOCKED;
        if self.last_was_cmd {
            s |= SB_LAST_WAS_CMD;
        }
        if !self.out.is_empty() {
            s |= SB_OUT_FULL;
        }
        s
    }

    fn reply(&mut self, b: u8) {
        if self.out.len() < MAX_OUT {
            self.out.push_back(b);
        }
    }

    fn kbd_reply(&mut self, b: &[u8]) {
        for &x in b {
            self.reply(x);
        }
        if self.ctr & CTR_KBD_INT != 0
            && let Some(irq) = &self.irq
            && let Err(e) = irq.write(1)
        {
            tracing::warn!(error = %e, "i8042 interrupt failed");
        }
    }

    fn command(&mut self, cmd: u8) {
        self.last_was_cmd = true;
        match cmd {
            CMD_READ_CTR => self.reply(self.ctr),
            CMD_SELF_TEST => self.reply(0x55),
            CMD_KBD_TEST | CMD_AUX_TEST => self.reply(0x00),
            CMD_READ_OUTP => self.reply(self.outp),
            CMD_WRITE_CTR | CMD_WRITE_OUTP | CMD_WRITE_KBD_OUT | CMD_WRITE_AUX_OUT
            | CMD_WRITE_AUX => self.pending = Some(cmd),
            CMD_KBD_DISABLE | CMD_KBD_ENABLE | CMD_AUX_DISABLE | CMD_AUX_ENABLE => {}
            CMD_RESET_CPU => self.control.request_exit(VmExit::Reset),
            other => tracing::debug!(cmd = other, "unhandled i8042 command"),
        }
    }

    fn data(&mut self, b: u8) {
        self.last_was_cmd = false;
        match self.pending.take() {
            Some(CMD_WRITE_CTR) => self.ctr = b,
            Some(CMD_WRITE_OUTP) => {
                self.outp = b;
                // Bit 0 of the output port is the CPU reset line (active low).
                if b & 1 == 0 {
                    self.control.request_exit(VmExit::Reset);
                }
            }
            Some(CMD_WRITE_KBD_OUT) => self.kbd_reply(&[b]),
            Some(CMD_WRITE_AUX_OUT) | Some(CMD_WRITE_AUX) => {} // no mouse attached
            _ => match b {
                KBD_RESET => self.kbd_reply(&[KBD_ACK, KBD_SELF_TEST_OK]),
                _ => self.kbd_reply(&[KBD_ACK]),
            },
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some(b) = data.first_mut() else { return };
        *b = match offset {
            DATA => self.out.pop_front().unwrap_or(0),
            COMMAND => self.status(),
            _ => 0xff,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let [b] = data else { return };
        match offset {
            DATA => self.data(*b),
            COMMAND => self.command(*b),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(d: &mut I8042, off: u64) -> u8 {
        let mut b = [0u8];
        d.read(off, &mut b);
        b[0]
    }

    #[test]
    fn reset_command_ends_the_vm() {
        let c = Arc::new(VmControl::new().unwrap());
        let mut dev = I8042::new(c.clone(), None);
        dev.write(4, &[0xaa]);
        dev.write(0, &[0xfe]);
        assert_eq!(c.exit(), None);
        dev.write(4, &[0xfe]);
        assert_eq!(c.exit(), Some(VmExit::Reset));
    }

    #[test]
    fn controller_commands_reply_through_the_output_buffer() {
        let c = Arc::new(VmControl::new().unwrap());
        let mut d = I8042::new(c.clone(), None);
        assert_eq!(read(&mut d, 4) & SB_OUT_FULL, 0);
        d.write(4, &[CMD_SELF_TEST]);
        assert_eq!(read(&mut d, 4) & SB_OUT_FULL, SB_OUT_FULL);
        assert_eq!(read(&mut d, 0), 0x55);
        assert_eq!(read(&mut d, 4) & SB_OUT_FULL, 0);
        d.write(4, &[CMD_WRITE_CTR]);
        d.write(0, &[0x65]);
        d.write(4, &[CMD_READ_CTR]);
        assert_eq!(read(&mut d, 0), 0x65);
        // Keyboard reset: ACK then self-test passed; the buffer is bounded.
        for _ in 0..100 {
            d.write(0, &[KBD_RESET]);
        }
        assert_eq!(read(&mut d, 0), KBD_ACK);
        assert_eq!(read(&mut d, 0), KBD_SELF_TEST_OK);
        assert_eq!(d.out.len(), MAX_OUT - 2);
        assert_eq!(c.exit(), None);
        d.write(4, &[CMD_WRITE_OUTP]);
        d.write(0, &[0x00]);
        assert_eq!(c.exit(), Some(VmExit::Reset));
    }
}
