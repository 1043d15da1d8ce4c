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
