//! Boots one guest and prints the boot-phase timings and the console log: the tool used to find
//! where guest boot time goes (see BENCHMARKS.md). Needs /dev/kvm that boots standard guests.
//!
//! ```sh
//! HEARTH_KERNEL=... HEARTH_ROOTFS=... cargo run -p hearth-vmm --example boot_timeline -- \
//!     [--no-rootfs] [--mem MIB] [--runs N] [CMDLINE EXTRA...]
//! ```

use std::time::Duration;

use hearth_vmm::VmBuilder;

fn main() {
    let kernel = std::env::var_os("HEARTH_KERNEL").expect("HEARTH_KERNEL is not set");
    let rootfs = std::env::var_os("HEARTH_ROOTFS").expect("HEARTH_ROOTFS is not set");
    let mut mem = 512;
    let mut runs = 1;
    let mut extra = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--mem" => mem = args.next().and_then(|v| v.parse().ok()).expect("--mem MIB"),
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            _ => extra.push(a),
        }
    }
    let log = std::env::temp_dir().join("hearth-boot-timeline.log");
    for run in 0..runs {
        let mut b = VmBuilder::new()
            .kernel(&kernel)
            .rootfs(&rootfs, true)
            .memory_mib(mem)
            .console_log(&log)
            .deadline(Duration::from_secs(300));
        for e in &extra {
            b = b.cmdline_extra(e.clone());
        }
        let mut vm = b.start().expect("VM start");
        let ready = vm.wait_ready(Duration::from_secs(240));
        println!("run {run}: ready {ready:?}; {}", vm.timings());
        vm.kill();
    }
    println!("--- console of the last run ---");
    print!("{}", std::fs::read_to_string(&log).unwrap_or_default());
}
