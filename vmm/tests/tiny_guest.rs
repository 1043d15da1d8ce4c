//! The vCPU loop, PIO dispatch, serial console, i8042 reset, ready port and deadline kill, driven
//! by a few bytes of hand-written 16-bit real-mode code. These run on any /dev/kvm, including
//! this project's nested PVM host where Linux guests cannot boot.

use std::time::{Duration, Instant};

use hearth_vmm::{VmBuilder, VmExit};

fn require_kvm() {
    if let Err(e) = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        panic!("these tests need /dev/kvm (read-write): {e}");
    }
}

// mov dx,0x3f8; (mov al,c; out dx,al)*; mov al,0xfe; out 0x64,al; jmp $
fn print_then_reset(text: &[u8]) -> Vec<u8> {
    let mut code = vec![0xba, 0xf8, 0x03];
    for &c in text {
        code.extend_from_slice(&[0xb0, c, 0xee]);
    }
    code.extend_from_slice(&[0xb0, 0xfe, 0xe6, 0x64, 0xeb, 0xfe]);
    code
}

#[test]
fn serial_output_then_i8042_reset() {
    require_kvm();
    let dir = std::env::temp_dir().join(format!("hearth-tiny-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("console.log");
    let mut vm = VmBuilder::new()
        .real_mode_code(&print_then_reset(b"hello from the guest\n"))
        .memory_mib(16)
        .console_log(&log)
        .deadline(Duration::from_secs(20))
        .start()
        .unwrap();
    assert_eq!(vm.wait(), VmExit::Reset);
    assert_eq!(vm.console_tail(), "hello from the guest\n");
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "hello from the guest\n"
    );
    assert!(vm.timings().vm_created_to_kernel_entry.is_some());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn guest_panic_line_is_reported_as_panic() {
    require_kvm();
    let mut vm = VmBuilder::new()
        .real_mode_code(&print_then_reset(b"Kernel panic - not syncing: test\n"))
        .memory_mib(16)
        .deadline(Duration::from_secs(20))
        .start()
        .unwrap();
    assert_eq!(
        vm.wait(),
        VmExit::Panic("Kernel panic - not syncing: test".into())
    );
}

#[test]
fn ready_port_then_kill() {
    require_kvm();
    // out 0x99 (unknown port, ignored); in al,0x99; mov dx,0x4f0; mov al,0x7b; out dx,al; jmp $
    let code = [
        0xe6, 0x99, 0xe4, 0x99, 0xba, 0xf0, 0x04, 0xb0, 0x7b, 0xee, 0xeb, 0xfe,
    ];
    let mut vm = VmBuilder::new()
        .real_mode_code(&code)
        .memory_mib(16)
        .vcpus(2)
        .deadline(Duration::from_secs(20))
        .start()
        .unwrap();
    let t = vm.wait_ready(Duration::from_secs(10)).unwrap();
    assert!(t < Duration::from_secs(10));
    assert!(vm.is_ready());
    assert!(vm.exit().is_none());
    let start = Instant::now();
    assert_eq!(vm.kill(), VmExit::Killed);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "kill took {:?}",
        start.elapsed()
    );
    let t = vm.timings();
    assert!(t.kernel_entry_to_agent_ready.is_some() && t.build_to_agent_ready.is_some());
}

#[test]
fn spinning_guest_is_stopped_at_its_deadline() {
    require_kvm();
    let start = Instant::now();
    let mut vm = VmBuilder::new()
        .real_mode_code(&[0xeb, 0xfe])
        .memory_mib(16)
        .deadline(Duration::from_millis(300))
        .start()
        .unwrap();
    let err = vm.wait_ready(Duration::from_secs(10)).unwrap_err();
    assert!(matches!(
        err,
        hearth_vmm::VmError::ExitedBeforeReady {
            exit: VmExit::DeadlineExceeded
        }
    ));
    assert_eq!(vm.wait(), VmExit::DeadlineExceeded);
    let e = start.elapsed();
    assert!(
        e >= Duration::from_millis(300) && e < Duration::from_secs(5),
        "took {e:?}"
    );
}

/// A guest that never signals ready: the timeout names where its vCPUs were (the report an
/// operator gets for a guest kernel spinning with nothing on its console).
#[test]
fn ready_timeout_reports_where_each_vcpu_spins() {
    require_kvm();
    // out 0x80,al (an unclaimed port: one exit to the VMM); cli; jmp $ (at offset 3)
    let code = [0xe6, 0x80, 0xfa, 0xeb, 0xfe];
    let mut vm = VmBuilder::new()
        .real_mode_code(&code)
        .memory_mib(16)
        .vcpus(2)
        .deadline(Duration::from_secs(60))
        .start()
        .unwrap();
    let err = vm.wait_ready(Duration::from_millis(500)).unwrap_err();
    let hearth_vmm::VmError::ReadyTimeout { after, vcpus } = &err else {
        panic!("expected a ready timeout, got {err}");
    };
    assert_eq!(*after, Duration::from_millis(500));
    // vCPU 1 (an AP) waits for an INIT/SIPI that never comes: KVM keeps it inside KVM_RUN, and
    // it answers the kick too.
    assert_eq!(vcpus.len(), 2, "{err}");
    let bsp = &vcpus[0];
    assert_eq!(bsp.id, 0);
    assert_eq!(
        bsp.rip,
        u64::from(hearth_vmm::REAL_MODE_CODE_ADDR) + 3,
        "{err}"
    );
    assert!(!bsp.interrupts_enabled(), "{err}");
    // The port write, then at least the kick that fetched the registers.
    assert!(bsp.exits >= 2, "{err}");
    assert!(bsp.error.is_none(), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("agent not ready after 500ms") && text.contains("vCPU0: rip 0x1003"),
        "{text}"
    );
    // A second snapshot is a new one: the spinning vCPU's exit count only grows.
    let again = vm.vcpu_states(Duration::from_secs(5));
    assert_eq!(again.len(), 2);
    assert!(again[0].exits > bsp.exits, "{again:?} after {vcpus:?}");
    assert_eq!(vm.kill(), VmExit::Killed);
}

#[test]
fn many_vms_leak_no_threads_or_fds() {
    require_kvm();
    let count = |p: &str| std::fs::read_dir(p).unwrap().count();
    let run = || {
        let mut vm = VmBuilder::new()
            .real_mode_code(&print_then_reset(b"x"))
            .memory_mib(16)
            .deadline(Duration::from_secs(20))
            .start()
            .unwrap();
        assert_eq!(vm.wait(), VmExit::Reset);
    };
    run();
    let (fds, threads) = (count("/proc/self/fd"), count("/proc/self/task"));
    for _ in 0..20 {
        run();
    }
    // Other tests of this binary run in parallel threads with VMs of their own: their fds and
    // threads come and go. Wait for them to settle; 20 leaked VMs (a dozen fds and threads each)
    // never would.
    let settled = |what: &str, before: usize| {
        let give_up = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let now = count(what);
            if now <= before + 8 {
                return;
            }
            assert!(
                std::time::Instant::now() < give_up,
                "{what}: {before} -> {now} after 20 more VMs"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    settled("/proc/self/fd", fds);
    settled("/proc/self/task", threads);
}
