//! The "agent ready" signal: one byte written to an x86 I/O port.

/// Byte written to the ready port.
pub const READY_BYTE: u8 = 0x7b;

/// Writes `READY_BYTE` to I/O port `port` (needs CAP_SYS_RAWIO; PID 1 has it).
#[cfg(target_arch = "x86_64")]
pub fn signal_ready(port: u16) -> std::io::Result<()> {
    // SAFETY: ioperm only changes this thread's I/O permission bitmap.
    if unsafe { libc::ioperm(libc::c_ulong::from(port), 1, 1) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: ioperm above granted access to exactly this port, so `out` does
    // not fault; writing a byte to an I/O port has no effect on Rust memory.
    unsafe {
        std::arch::asm!("out dx, al", in("dx") port, in("al") READY_BYTE, options(nomem, nostack, preserves_flags));
    }
    Ok(())
}

#[cfg(not(target_arch = "x86_64"))]
pub fn signal_ready(_port: u16) -> std::io::Result<()> {
    Err(std::io::Error::other("I/O port ready signal needs x86_64"))
}

/// The start of the debug line the agent logs right before it signals ready (main.rs logs it
/// from this constant), with the fields `started_ms`, `set_up_ms` and `listening_ms`.
pub const READY_LOG_MESSAGE: &str = "signalling ready";

/// The guest's side of a boot, from the agent's ready line: ms on the guest's CLOCK_BOOTTIME
/// (from the guest kernel's start) when the agent started, had set the guest up (mounts,
/// network) and listened on vsock.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReadyTimes {
    pub started_ms: f64,
    pub set_up_ms: f64,
    pub listening_ms: f64,
}

impl ReadyTimes {
    /// The times of the last ready line in a guest console log (the agent logs it at debug
    /// level: `HEARTH_AGENT_LOG=hearth_agent=debug` on the kernel command line), if any.
    pub fn from_console(console: &str) -> Option<ReadyTimes> {
        let line = console
            .lines()
            .rev()
            .find(|l| l.contains(READY_LOG_MESSAGE))?;
        let field = |name: &str| -> Option<f64> {
            let key = format!(" {name}=");
            let rest = &line[line.find(&key)? + key.len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(rest.len());
            rest[..end].parse().ok()
        };
        Some(ReadyTimes {
            started_ms: field("started_ms")?,
            set_up_ms: field("set_up_ms")?,
            listening_ms: field("listening_ms")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_times_come_from_the_last_ready_line() {
        let console = "[    0.1] boot\n\
            2026-12-04T21:51:29Z DEBUG hearth_agent: signalling ready (times since the kernel's \
            start: agent started, guest set up, listening) port=1264 started_ms=1.5 set_up_ms=2 \
            listening_ms=3\n\
            2026-12-04T21:51:30Z DEBUG hearth_agent: signalling ready (times since the kernel's \
            start: agent started, guest set up, listening) port=1264 started_ms=448.879821 \
            set_up_ms=519.469722 listening_ms=559.655344\n[   1.0] later\n";
        assert_eq!(
            ReadyTimes::from_console(console),
            Some(ReadyTimes {
                started_ms: 448.879821,
                set_up_ms: 519.469722,
                listening_ms: 559.655344
            })
        );
    }

    #[test]
    fn a_console_without_a_whole_ready_line_has_no_times() {
        assert_eq!(ReadyTimes::from_console("[    0.1] boot\n"), None);
        assert_eq!(
            ReadyTimes::from_console("signalling ready started_ms=1 set_up_ms=x listening_ms=3"),
            None
        );
    }
}
