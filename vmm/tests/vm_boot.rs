//! Linux boots under hearth-vmm (run through harness/run-vm-tests.sh where the host lacks
//! hardware virtualization).

mod common;

use std::time::Duration;

use hearth_vmm::{VmBuilder, VmExit};

#[test]
fn kernel_without_root_disk_panics_and_is_reported() {
    common::require_kvm();
    let kernel = common::artifact("HEARTH_KERNEL");
    let dir = common::scratch("noroot");
    let log = dir.join("console.log");
    let mut vm = VmBuilder::new()
        .kernel(&kernel)
        .memory_mib(128)
        .console_log(&log)
        .deadline(Duration::from_secs(60))
        .start()
        .unwrap();
    let exit = vm.wait();
    let console = std::fs::read_to_string(&log).unwrap();
    eprintln!("{}", vm.timings());
    assert!(
        console.contains("Linux version"),
        "no kernel banner on the console:\n{console}"
    );
    match exit {
        VmExit::Panic(msg) => assert!(msg.contains("Kernel panic"), "{msg}"),
        other => panic!("expected a panic exit, got {other}; console:\n{console}"),
    }
}

#[test]
fn tiny_rootfs_boots_to_agent_ready() {
    common::require_kvm();
    let kernel = common::artifact("HEARTH_KERNEL");
    let rootfs = common::artifact("HEARTH_ROOTFS_TINY");
    let dir = common::scratch("tiny");
    let log = dir.join("console.log");
    let mut vm = VmBuilder::new()
        .kernel(&kernel)
        .rootfs(&rootfs, true)
        .memory_mib(256)
        .console_log(&log)
        .deadline(Duration::from_secs(120))
        .start()
        .unwrap();
    let ready = vm.wait_ready(Duration::from_secs(100));
    let console = std::fs::read_to_string(&log).unwrap_or_default();
    if let Err(e) = ready {
        panic!(
            "agent not ready: {e}; console log {}:\n{console}",
            log.display()
        );
    }
    eprintln!("boot timings: {}", vm.timings());
    assert!(vm.exit().is_none());
    assert_eq!(vm.kill(), VmExit::Killed);
}
