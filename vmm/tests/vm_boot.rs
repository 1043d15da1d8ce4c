//! Linux boots under hearth-vmm (run through harness/run-vm-tests.sh where the host lacks
//! hardware virtualization).

mod common;

use std::time::Duration;

use hearth_vmm::seccomp::SeccompMode;
use hearth_vmm::{VmBuilder, VmExit};

/// A whole test, boot included: past it the test fails with thread stacks instead of hanging.
const TEST_LIMIT: Duration = Duration::from_secs(300);

/// (thread name, `Seccomp:` value) of this process's VMM threads.
fn vmm_threads_seccomp() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let comm = comm.trim();
        if !(comm.starts_with("hearth-vcpu") || comm.starts_with("hearth-vmm-even")) {
            continue;
        }
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let mode = status
            .lines()
            .find_map(|l| l.strip_prefix("Seccomp:"))
            .unwrap_or("?")
            .trim()
            .to_string();
        out.push((comm.to_string(), mode));
    }
    out
}

#[test]
fn kernel_without_root_disk_panics_and_is_reported() {
    common::with_deadline(
        "kernel_without_root_disk_panics_and_is_reported",
        TEST_LIMIT,
        |_| kernel_without_root_disk_panics_and_is_reported_body(),
    );
}

fn kernel_without_root_disk_panics_and_is_reported_body() {
    common::require_kvm();
    let kernel = common::artifact("HEARTH_KERNEL");
    let dir = common::scratch("noroot");
    let log = dir.join("console.log");
    let mut vm = VmBuilder::new()
        .kernel(&kernel)
        .memory_mib(128)
        // The default `quiet` hides the banner (KERN_NOTICE).
        .cmdline_extra("loglevel=7")
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
    common::with_deadline("tiny_rootfs_boots_to_agent_ready", TEST_LIMIT, |_| {
        tiny_rootfs_boots_to_agent_ready_body()
    });
}

fn tiny_rootfs_boots_to_agent_ready_body() {
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
        .seccomp(SeccompMode::Enforce)
        .start()
        .unwrap();
    let ready = vm.wait_ready(Duration::from_secs(100));
    let console = std::fs::read_to_string(&log).unwrap_or_default();
    if let Err(e) = ready {
        panic!(
            "agent not ready: {e}; boot timings: {}\n--- threads ---\n{}\nconsole log {}:\n{console}",
            vm.timings(),
            common::thread_activity(),
            log.display()
        );
    }
    eprintln!("boot timings: {}", vm.timings());
    assert!(vm.exit().is_none());
    // Where the vCPU is, as a hang report would say it: its registers are read by its own
    // (filtered) thread, and a kernel address is named from the vmlinux's symbol table.
    let states = vm.vcpu_states(Duration::from_secs(10));
    assert_eq!(states.len(), 1, "the one vCPU answers: {states:?}");
    for s in &states {
        eprintln!("after ready: {s}");
        assert!(s.error.is_none() && s.exits > 0, "{s}");
        if s.rip >= 0xffff_ffff_8000_0000 {
            let sym = s.symbol.as_deref().unwrap_or_default();
            assert!(sym.contains("+0x"), "kernel rip without a symbol: {s}");
        }
    }
    assert!(
        vm.exit().is_none(),
        "the probe stopped the VM: {:?}",
        vm.exit()
    );
    // The guest ran under the filters: every vCPU and event-loop thread of this process is in
    // seccomp filter mode (the kernel's view, /proc/self/task/*/status).
    // (A thread of another test's VM that is just starting has not installed its filter yet:
    // look again for up to 2 s before calling a thread unfiltered.)
    let mut filtered = vmm_threads_seccomp();
    for _ in 0..20 {
        if filtered.iter().all(|(_, mode)| mode == "2") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        filtered = vmm_threads_seccomp();
    }
    assert!(
        filtered.iter().any(|(n, _)| n.starts_with("hearth-vcpu"))
            && filtered
                .iter()
                .any(|(n, _)| n.starts_with("hearth-vmm-even")),
        "no vCPU or event-loop thread found: {filtered:?}"
    );
    assert!(
        filtered.iter().all(|(_, mode)| mode == "2"),
        "a VMM thread without a seccomp filter (Seccomp: 2 = filter mode): {filtered:?}"
    );
    assert_eq!(vm.kill(), VmExit::Killed);
}

/// The bzImage (linux-loader's bzImage loader, Linux 64-bit boot protocol with the zero page)
/// boots the tiny rootfs to a working agent.
#[test]
fn bzimage_boots_tiny_rootfs_to_agent() {
    common::with_deadline("bzimage_boots_tiny_rootfs_to_agent", TEST_LIMIT, |_| {
        bzimage_boots_tiny_rootfs_to_agent_body()
    });
}

fn bzimage_boots_tiny_rootfs_to_agent_body() {
    use hearth_agent::client::Client;
    use hearth_agent::proto::{ExecSpec, ExitStatus};

    common::require_kvm();
    let bzimage = common::artifact("HEARTH_BZIMAGE");
    let rootfs = common::artifact("HEARTH_ROOTFS_TINY");
    let dir = common::scratch("bzimage");
    let log = dir.join("console.log");
    let mut vm = VmBuilder::new()
        .kernel(&bzimage)
        .rootfs(&rootfs, true)
        .cmdline_extra("hearth.overlay=tmpfs")
        .memory_mib(256)
        .console_log(&log)
        .deadline(Duration::from_secs(180))
        .start()
        .unwrap();
    if let Err(e) = vm.wait_ready(Duration::from_secs(150)) {
        let console = std::fs::read_to_string(&log).unwrap_or_default();
        panic!("bzImage: agent not ready: {e}; console:\n{console}");
    }
    eprintln!("bzImage boot timings: {}", vm.timings());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let stream = vm.connect(1024).await.expect("vsock connect");
        let client = Client::handshake(stream).await.expect("handshake");
        let out = client
            .exec_collect(ExecSpec::argv(["uname", "-r"]))
            .await
            .expect("exec uname");
        assert_eq!(out.info.status, ExitStatus::Code(0));
        let release = String::from_utf8_lossy(&out.stdout);
        assert!(release.starts_with("6.12."), "uname -r: {release}");
    });
    assert!(vm.exit().is_none());
    assert_eq!(vm.kill(), VmExit::Killed);
}
