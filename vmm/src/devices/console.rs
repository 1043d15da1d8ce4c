//! The guest console sink: appends serial output to the per-VM console log, keeps a bounded tail
//! in memory for error reports, and recognises the kernel's panic and power-off messages (this
//! VMM has no ACPI, so those lines are how a power-off or a panic is told apart from a reset).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use crate::VmExit;
use crate::vstate::control::VmControl;

/// Bytes kept in memory for [`ConsoleTail::snapshot`].
const TAIL_BYTES: usize = 16 * 1024;
/// The log file stops growing past this (a guest must not fill the host disk).
const MAX_LOG_BYTES: u64 = 64 * 1024 * 1024;
/// Longest line examined for panic/power-off markers.
const MAX_LINE: usize = 1024;

const PANIC_MARKER: &str = "Kernel panic - not syncing";
const POWER_OFF_MARKER: &str = "reboot: Power down";
const HALT_MARKER: &str = "System halted";

/// The last bytes written to the console, shared with the host handle.
#[derive(Debug, Clone, Default)]
pub struct ConsoleTail(Arc<Mutex<VecDeque<u8>>>);

impl ConsoleTail {
    /// The tail as (lossy) text.
    pub fn snapshot(&self) -> String {
        let t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (a, b) = t.as_slices();
        let mut v = a.to_vec();
        v.extend_from_slice(b);
        String::from_utf8_lossy(&v).into_owned()
    }

    fn push(&self, byte: u8) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if t.len() == TAIL_BYTES {
            t.pop_front();
        }
        t.push_back(byte);
    }
}

/// What a complete console line means for the VM's lifecycle.
pub fn classify_line(line: &str) -> Option<VmExit> {
    if let Some(pos) = line.find(PANIC_MARKER) {
        return Some(VmExit::Panic(line[pos..].trim_end().to_string()));
    }
    if line.contains(POWER_OFF_MARKER) || line.contains(HALT_MARKER) {
        return Some(VmExit::PowerOff);
    }
    None
}

/// `io::Write` sink given to the serial device.
pub struct ConsoleSink {
    file: Option<File>,
    written: u64,
    line: Vec<u8>,
    tail: ConsoleTail,
    control: Arc<VmControl>,
    /// Set when a panic line was seen: the reset that follows is reported as the panic.
    panicked: bool,
}

impl ConsoleSink {
    /// A sink writing to `file` (if any).
    pub fn new(file: Option<File>, tail: ConsoleTail, control: Arc<VmControl>) -> Self {
        Self {
            file,
            written: 0,
            line: Vec::new(),
            tail,
            control,
            panicked: false,
        }
    }

    fn end_line(&mut self) {
        let line = String::from_utf8_lossy(&self.line).into_owned();
        self.line.clear();
        match classify_line(&line) {
            Some(VmExit::Panic(msg)) if !self.panicked => {
                self.panicked = true;
                tracing::info!(%msg, "guest kernel panic");
                self.control.request_exit(VmExit::Panic(msg));
            }
            Some(VmExit::PowerOff) => self.control.request_exit(VmExit::PowerOff),
            _ => {}
        }
    }
}

impl Write for ConsoleSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for &b in buf {
            self.tail.push(b);
            if b == b'\n' {
                self.end_line();
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            }
        }
        if let Some(f) = &mut self.file
            && self.written < MAX_LOG_BYTES
        {
            // A failing log file must not stop the guest: drop the log instead.
            if let Err(e) = f.write_all(buf) {
                tracing::warn!(error = %e, "console log write failed; console logging stops");
                self.file = None;
            }
            self.written += buf.len() as u64;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_kernel_lines() {
        assert_eq!(
            classify_line("[    1.2] Kernel panic - not syncing: VFS: Unable to mount root fs\r"),
            Some(VmExit::Panic(
                "Kernel panic - not syncing: VFS: Unable to mount root fs".into()
            ))
        );
        assert_eq!(
            classify_line("[   3.0] reboot: Power down"),
            Some(VmExit::PowerOff)
        );
        assert_eq!(classify_line("reboot: Restarting system"), None);
        assert_eq!(classify_line("hello"), None);
    }

    #[test]
    fn sink_keeps_tail_and_reports_panic() {
        let control = Arc::new(VmControl::new().unwrap());
        let tail = ConsoleTail::default();
        let mut sink = ConsoleSink::new(None, tail.clone(), control.clone());
        let big = vec![b'x'; TAIL_BYTES + 10];
        sink.write_all(&big).unwrap();
        sink.write_all(b"\nKernel panic - not syncing: boom\n")
            .unwrap();
        assert!(tail.snapshot().ends_with("boom\n"));
        assert_eq!(tail.snapshot().len(), TAIL_BYTES);
        assert_eq!(
            control.exit(),
            Some(VmExit::Panic("Kernel panic - not syncing: boom".into()))
        );
    }
}
