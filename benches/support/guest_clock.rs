//! `HEARTH_BENCH_GUEST_TIMES=1`: the guest's own side of each boot, read from its console.
//!
//! The agent logs one line just before it signals ready, with three times on the guest's clock
//! (from the guest kernel's start): agent started, guest set up, listening on vsock
//! (`hearth_agent::agent::ready::ReadyTimes`). Both VMMs boot the same kernel, rootfs and agent,
//! so these say how long the *guest* took under each VMM, apart from each VMM's own start-up and
//! the handshake. Both guests get `HEARTH_AGENT_LOG=hearth_agent=debug`; QEMU's guest also gets
//! the ready-port parameter, without which its agent logs no such line (QEMU's microvm has no
//! device at that port and ignores the write). Off by default: the line costs serial-port exits.

use hearth_vmm::READY_PORT;

/// Whether the guest-clock times are on for this run.
pub fn enabled() -> bool {
    std::env::var("HEARTH_BENCH_GUEST_TIMES").is_ok_and(|v| v == "1")
}

/// Extra kernel parameters for both guests (empty when off).
pub fn cmdline_for_both() -> &'static str {
    if enabled() {
        " HEARTH_AGENT_LOG=hearth_agent=debug"
    } else {
        ""
    }
}

/// Extra kernel parameters for QEMU's guest only (hearth's builder adds the ready port itself).
pub fn cmdline_for_qemu() -> String {
    if enabled() {
        format!(" hearth.ready=pio:{READY_PORT:#x}")
    } else {
        String::new()
    }
}

/// Prints the medians of the guest-clock times of `which`'s boots (nothing when there are none).
pub fn report(bench: &str, which: super::Which, times: &[hearth_agent::agent::ready::ReadyTimes]) {
    if times.is_empty() {
        return;
    }
    let mut started: Vec<f64> = times.iter().map(|t| t.started_ms).collect();
    let mut set_up: Vec<f64> = times.iter().map(|t| t.set_up_ms).collect();
    let mut listening: Vec<f64> = times.iter().map(|t| t.listening_ms).collect();
    println!(
        "GUEST_CLOCK {bench} {} n={} median ms since the guest kernel's start: agent started \
         {:.1}, set up {:.1}, listening {:.1}",
        which.name(),
        times.len(),
        super::median(&mut started),
        super::median(&mut set_up),
        super::median(&mut listening)
    );
}
