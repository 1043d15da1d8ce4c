//! The agent inside a hearth-vmm guest, reached over the in-process vsock backend: exec, exit
//! codes, bulk and binary output, files, several VMs, power-off, panics, deadlines and repeated
//! boots. Run through harness/run-vm-tests.sh where the host lacks hardware virtualization.

mod common;

use std::time::{Duration, Instant};

use hearth_agent::client::{Client, ExecEvent};
use hearth_agent::proto::{ExecSpec, ExitStatus};
use hearth_vmm::{Vm, VmBuilder, VmExit};

const AGENT_PORT: u32 = 1024;
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Whole-test limits (under the emulated-SVM harness; a hang fails with console tails, the vsock
/// state and thread stacks instead of running into the harness limit, 900 s per binary).
const TEST_LIMIT: Duration = Duration::from_secs(300);
const BULK_TEST_LIMIT: Duration = Duration::from_secs(600);
const REPEAT_TEST_LIMIT: Duration = Duration::from_secs(720);
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

fn tiny_vm(name: &str) -> VmBuilder {
    common::require_kvm();
    let dir = common::scratch(name);
    VmBuilder::new()
        .kernel(common::artifact("HEARTH_KERNEL"))
        .rootfs(common::artifact("HEARTH_ROOTFS_TINY"), true)
        .cmdline_extra("hearth.overlay=tmpfs")
        .memory_mib(256)
        .console_log(dir.join("console.log"))
        .deadline(Duration::from_secs(600))
}

fn ready(vm: &Vm) {
    not_ready_fails(vm, vm.wait_ready(READY_TIMEOUT));
}

/// Fails the test with the VMM's view of a guest whose agent did not become ready.
fn not_ready_fails(vm: &Vm, waited: Result<Duration, hearth_vmm::VmError>) {
    if let Err(e) = waited {
        // The console is `quiet`: the thread states tell a guest spinning in KVM_RUN from an idle
        // one, the VMM's boot timings how far it got.
        panic!(
            "agent not ready: {e}\nboot timings: {}\n{}",
            vm.timings(),
            rt().block_on(failure_report(vm))
        );
    }
}

async fn client(vm: &Vm) -> Client {
    let stream = match vm.connect(AGENT_PORT).await {
        Ok(s) => s,
        Err(e) => panic!(
            "vsock connect to the agent: {e}\n{}",
            failure_report(vm).await
        ),
    };
    match Client::handshake(stream).await {
        Ok(c) => c,
        Err(e) => panic!("agent handshake: {e}\n{}", failure_report(vm).await),
    }
}

/// Why a VM's agent connection may have failed: the VM's exit (if it stopped), the vsock state,
/// the process's threads and the console tail.
async fn failure_report(vm: &Vm) -> String {
    format!(
        "VM exit: {:?}\n--- vsock device ---\n{}\n--- vCPUs ---\n{}\n--- threads ---\n{}\n\
         --- console tail ---\n{}",
        vm.exit(),
        vsock_state(vm).await,
        common::vcpu_report(vm),
        common::thread_activity(),
        vm.console_tail()
    )
}

/// The vsock device's state (queues, interrupt status, connections) for a stall report.
async fn vsock_state(vm: &Vm) -> String {
    match vm.vsock() {
        Some(v) => v
            .describe(Duration::from_secs(5))
            .await
            .unwrap_or_else(|| "(the event loop did not answer within 5 s)".into()),
        None => "(no vsock device)".into(),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Attempts of a heavy case when the emulated machine kills its guest (below).
const INFRA_ATTEMPTS: usize = 3;

/// Whether this runs under `harness/run-in-svm.sh` (it sets `HEARTH_IN_SVM_HARNESS=1`).
/// Under the emulated-SVM harness the cases run one at a time. The emulated machine's lost
/// interrupts, hung guests and own kernel crashes came with guests streaming or booting side by
/// side on its two vCPUs (2026-12-03: alone, the 100 MiB stream passed 3 of 3 in ~21 s; beside
/// `twenty_boots_in_a_row_leak_nothing` it failed 3 attempts in a row, after the outer kernel
/// had crashed once). Taken before a case's deadline starts. On hardware they run in parallel.
fn one_at_a_time_under_the_harness() -> Option<std::sync::MutexGuard<'static, ()>> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    in_svm_harness().then(|| {
        SERIAL
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    })
}

fn in_svm_harness() -> bool {
    std::env::var_os("HEARTH_IN_SVM_HARNESS").is_some_and(|v| v == "1")
}

/// Whether `vm`'s guest died of the emulated-SVM harness rather than of the test: there, a guest
/// that triple-faults mid-run is the emulated machine's failure. The same kernel, rootfs, agent
/// and 20 MiB streams under QEMU 7.2 + KVM as the VMM in the same harness triple-faulted (and
/// hung) at a similar rate (vsock README, "Guest deaths under the emulated harness"). On real
/// hardware virtualization this is never excused.
fn killed_by_the_harness(vm: &Vm) -> bool {
    in_svm_harness() && vm.exit() == Some(VmExit::TripleFault)
}

/// Under the harness, why a stream that stalled for 60 s is the guest hanging, as QEMU's guests
/// hang in this harness too: its vsock device (`state`, its `describe()` text) holds no data for
/// the host, and either its interrupt has gone unacknowledged so long that it was raised again at
/// least 100 times (every 200 ms: 20 s and more: the guest no longer runs its interrupt handler),
/// or a vCPU thread is busy in KVM_RUN (≥ 80 % of a CPU; seen 2026-12-03 with the interrupt
/// taken and the guest's next TX chain posted but never notified: the vCPU spins on that MMIO
/// write without the exit completing). `None`: a failure of the test.
fn guest_hung_in_the_harness(state: &str, threads: &[common::ThreadUse]) -> Option<&'static str> {
    if !in_svm_harness() || !state.contains("to host: queued 0 ") {
        return None;
    }
    if interrupt_ignored_with_nothing_queued(state) {
        return Some("the guest stopped taking interrupts");
    }
    let vcpu_spins = threads
        .iter()
        .any(|t| t.name_state.starts_with("hearth-vcpu") && t.ticks.is_some_and(|n| n >= 80));
    vcpu_spins.then_some("the guest's vCPU spins in KVM_RUN without progress")
}

fn interrupt_ignored_with_nothing_queued(state: &str) -> bool {
    let repeats = state
        .split("raised again ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok());
    state.contains("irq status 0x1")
        && state.contains("to host: queued 0 ")
        && repeats.is_some_and(|n| n >= 100)
}

/// Runs `case` until it passes, retrying (loudly) only when it returns `Err`, which a case does
/// only for [`killed_by_the_harness`] and [`guest_hung_in_the_harness`]; a third such
/// failure fails the test.
fn retried_on_harness_failures(name: &str, mut case: impl FnMut() -> Result<(), String>) {
    for attempt in 1..=INFRA_ATTEMPTS {
        match case() {
            Ok(()) => return,
            Err(why) if attempt < INFRA_ATTEMPTS => eprintln!(
                "WARNING: {name}: attempt {attempt} of {INFRA_ATTEMPTS}: the emulated machine \
                 killed the guest ({why}); retrying"
            ),
            Err(why) => panic!("{name}: {INFRA_ATTEMPTS} attempts, each guest killed: {why}"),
        }
    }
}

#[test]
fn exec_uname_exit_codes_and_binary_output() {
    let _serial = one_at_a_time_under_the_harness();
    common::with_deadline(
        "exec_uname_exit_codes_and_binary_output",
        TEST_LIMIT,
        |probe| {
            let mut vm = tiny_vm("exec").start().unwrap();
            probe.watch(&vm);
            ready(&vm);
            eprintln!("boot timings: {}", vm.timings());
            rt().block_on(async {
            let c = client(&vm).await;
            let out = c.exec_collect(ExecSpec::argv(["uname", "-a"])).await.unwrap();
            assert_eq!(out.info.status, ExitStatus::Code(0));
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.starts_with("Linux "), "uname printed {text:?}");
            for code in [0, 1, 7, 255] {
                let out = c.exec_collect(ExecSpec::script(format!("exit {code}"))).await.unwrap();
                assert_eq!(out.info.status, ExitStatus::Code(code));
            }
            // Every byte value, several times, through stdout unchanged.
            let script = "i=0; while [ $i -lt 4 ]; do printf \"$(printf '\\\\%03o' $(seq 0 255))\"; i=$((i+1)); done";
            let out = c.exec_collect(ExecSpec::script(script)).await.unwrap();
            let expected: Vec<u8> = (0..4).flat_map(|_| 0..=255u8).collect();
            assert_eq!(out.stdout.len(), expected.len(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
            assert_eq!(out.stdout, expected);
        });
            assert_eq!(vm.kill(), VmExit::Killed);
        },
    );
}

#[test]
fn hundred_mib_of_output_streams_through() {
    let _serial = one_at_a_time_under_the_harness();
    common::with_deadline(
        "hundred_mib_of_output_streams_through",
        BULK_TEST_LIMIT,
        |probe| {
            retried_on_harness_failures("hundred_mib_of_output_streams_through", || {
                let mut vm = tiny_vm("bulk").start().unwrap();
                probe.watch(&vm);
                ready(&vm);
                let streamed = stream_hundred_mib(&vm);
                vm.kill();
                streamed
            })
        },
    );
}

/// One attempt of [`hundred_mib_of_output_streams_through`] in a booted VM: `Err` only when
/// [`killed_by_the_harness`] or [`guest_hung_in_the_harness`].
fn stream_hundred_mib(vm: &Vm) -> Result<(), String> {
    rt().block_on(async {
        let c = client(vm).await;
        let start = Instant::now();
        let mut s = match c
            .exec(ExecSpec::script("head -c 104857600 /dev/zero"))
            .await
        {
            Ok(s) => s,
            Err(_) if killed_by_the_harness(vm) => {
                return Err("triple fault before the exec started".to_string());
            }
            Err(e) => panic!("exec failed: {e}\n{}", failure_report(vm).await),
        };
        let mut total = 0usize;
        let mut nonzero = false;
        let mut status = None;
        // Stalls (gaps between events) explain slow runs: a steady stream has none.
        let (mut last, mut stalls, mut worst) = (Instant::now(), Vec::new(), Duration::ZERO);
        // A stall fails with a reason instead of running into the harness time limit.
        let stall_limit = Duration::from_secs(60);
        loop {
            let next = match tokio::time::timeout(stall_limit, s.next()).await {
                Ok(n) => n,
                Err(_) => {
                    let state = vsock_state(vm).await;
                    let threads = common::thread_cpu_use();
                    let vcpus = common::vcpu_report(vm);
                    if let Some(why) = guest_hung_in_the_harness(&state, &threads) {
                        return Err(format!(
                            "{why} after {} KiB:\n{state}\n--- vCPUs ---\n{vcpus}",
                            total >> 10
                        ));
                    }
                    let threads = common::thread_activity();
                    panic!(
                        "no output for {stall_limit:?} after {} KiB: the stream stalled\n\
                             --- vsock device ---\n{state}\n--- vCPUs ---\n{vcpus}\n\
                             --- threads ---\n{threads}\n--- console tail ---\n{}",
                        total >> 10,
                        vm.console_tail()
                    )
                }
            };
            let ev = match next {
                Ok(Some(ev)) => ev,
                Ok(None) => break,
                Err(_) if killed_by_the_harness(vm) => {
                    return Err(format!("triple fault after {} KiB", total >> 10));
                }
                Err(e) => panic!(
                    "exec stream failed after {} KiB: {e}\n{}",
                    total >> 10,
                    failure_report(vm).await
                ),
            };
            let gap = last.elapsed();
            last = Instant::now();
            worst = worst.max(gap);
            if gap > Duration::from_millis(500) && stalls.len() < 20 {
                stalls.push(format!("{:.1}s@{}KiB", gap.as_secs_f64(), total >> 10));
            }
            match ev {
                ExecEvent::Output { data, .. } => {
                    total += data.len();
                    // memcmp, not a per-byte loop: in a debug build under the emulated
                    // harness the loop alone costs seconds of the measured time.
                    nonzero |= data.chunks(ZEROS.len()).any(|c| c != &ZEROS[..c.len()]);
                }
                ExecEvent::Exited(info) => status = Some(info.status),
                ExecEvent::Started { .. } => {}
            }
        }
        let secs = start.elapsed().as_secs_f64();
        eprintln!(
            "100 MiB guest→host in {secs:.1} s ({:.1} MiB/s)",
            100.0 / secs
        );
        eprintln!("longest gap between events {worst:?}; gaps > 0.5 s: {stalls:?}");
        assert_eq!(status, Some(ExitStatus::Code(0)));
        assert_eq!(total, 100 << 20);
        assert!(!nonzero);
        Ok(())
    })
}

#[test]
fn files_go_in_and_come_back() {
    let _serial = one_at_a_time_under_the_harness();
    common::with_deadline("files_go_in_and_come_back", TEST_LIMIT, |probe| {
        let mut vm = tiny_vm("files").start().unwrap();
        probe.watch(&vm);
        ready(&vm);
        let local = common::scratch("files-local");
        let src = local.join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("a.txt"), b"alpha\n").unwrap();
        let blob: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(src.join("sub/blob.bin"), &blob).unwrap();
        rt().block_on(async {
            let c = client(&vm).await;
            c.put_files(&src, "/tmp/in").await.unwrap();
            let out = c
                .exec_collect(ExecSpec::script(
                    "cat /tmp/in/a.txt; wc -c < /tmp/in/sub/blob.bin; echo made > /tmp/in/new.txt",
                ))
                .await
                .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .collect::<Vec<_>>(),
                ["alpha", "300000"]
            );
            let back = local.join("back");
            std::fs::create_dir_all(&back).unwrap();
            c.get_files("/tmp/in", &back).await.unwrap();
            let root = if back.join("in").exists() {
                back.join("in")
            } else {
                back.clone()
            };
            assert_eq!(std::fs::read(root.join("sub/blob.bin")).unwrap(), blob);
            assert_eq!(std::fs::read(root.join("new.txt")).unwrap(), b"made\n");
        });
        vm.kill();
    });
}

#[test]
fn two_vms_at_once() {
    let _serial = one_at_a_time_under_the_harness();
    common::with_deadline("two_vms_at_once", TEST_LIMIT, |probe| {
        let mut a = tiny_vm("two-a").start().unwrap();
        let mut b = tiny_vm("two-b").vcpus(2).start().unwrap();
        probe.watch(&a);
        probe.watch(&b);
        ready(&a);
        ready(&b);
        rt().block_on(async {
            let (ca, cb) = tokio::join!(client(&a), client(&b));
            let (oa, ob) = tokio::join!(
                ca.exec_collect(ExecSpec::script("echo a; grep -c ^processor /proc/cpuinfo")),
                cb.exec_collect(ExecSpec::script("echo b; grep -c ^processor /proc/cpuinfo"))
            );
            assert_eq!(oa.unwrap().stdout, b"a\n1\n");
            assert_eq!(ob.unwrap().stdout, b"b\n2\n");
        });
        assert_eq!(a.kill(), VmExit::Killed);
        assert_eq!(b.kill(), VmExit::Killed);
    });
}

#[test]
fn agent_shutdown_powers_the_guest_off() {
    let _serial = one_at_a_time_under_the_harness();
    common::with_deadline("agent_shutdown_powers_the_guest_off", TEST_LIMIT, |probe| {
        let mut vm = tiny_vm("poweroff").start().unwrap();
        probe.watch(&vm);
        ready(&vm);
        rt().block_on(async { client(&vm).await.shutdown().await.unwrap() });
        let exit = vm.wait_timeout(Duration::from_secs(60));
        assert_eq!(
            exit,
            Some(VmExit::PowerOff),
            "console tail:\n{}",
            vm.console_tail()
        );
    });
}

/// `reboot=k`: Linux writes the keyboard controller's reset command itself (the guest's i8042
/// driver is not involved), and the VMM's i8042 ends the VM with `Reset`.
#[test]
fn guest_reboot_resets_through_the_keyboard_controller() {
    let _serial = one_at_a_time_under_the_harness();
    common::with_deadline(
        "guest_reboot_resets_through_the_keyboard_controller",
        TEST_LIMIT,
        |probe| {
            let mut vm = tiny_vm("reboot").start().unwrap();
            probe.watch(&vm);
            ready(&vm);
            // The exec never completes: the machine resets under it.
            rt().block_on(async {
                let c = client(&vm).await;
                let exec = c.exec_collect(ExecSpec::argv(["reboot", "-f"]));
                let _ = tokio::time::timeout(Duration::from_secs(60), exec).await;
            });
            let exit = vm.wait_timeout(Duration::from_secs(60));
            assert_eq!(
                exit,
                Some(VmExit::Reset),
                "console tail:\n{}",
                vm.console_tail()
            );
        },
    );
}

#[test]
fn guest_panic_is_reported_as_panic() {
    let _serial = one_at_a_time_under_the_harness();
    common::with_deadline("guest_panic_is_reported_as_panic", TEST_LIMIT, |probe| {
        let mut vm = tiny_vm("panic").init("/does/not/exist").start().unwrap();
        probe.watch(&vm);
        let err = vm.wait_ready(READY_TIMEOUT).unwrap_err();
        match vm.wait() {
            VmExit::Panic(msg) => assert!(msg.contains("Kernel panic"), "{msg}"),
            other => panic!(
                "expected a panic, got {other} ({err}); console:\n{}",
                vm.console_tail()
            ),
        }
    });
}

#[test]
fn never_ready_guest_is_killed_at_its_deadline() {
    let _serial = one_at_a_time_under_the_harness();
    common::with_deadline(
        "never_ready_guest_is_killed_at_its_deadline",
        TEST_LIMIT,
        |probe| {
            // /bin/sh as init never signals readiness.
            let start = Instant::now();
            let mut vm = tiny_vm("deadline")
                .init("/bin/sh")
                .deadline(Duration::from_secs(20))
                .start()
                .unwrap();
            probe.watch(&vm);
            let err = vm.wait_ready(READY_TIMEOUT).unwrap_err();
            assert!(
                matches!(
                    err,
                    hearth_vmm::VmError::ExitedBeforeReady {
                        exit: VmExit::DeadlineExceeded
                    }
                ),
                "{err}; console:\n{}",
                vm.console_tail()
            );
            assert_eq!(vm.wait(), VmExit::DeadlineExceeded);
            let e = start.elapsed();
            assert!(
                e >= Duration::from_secs(20) && e < Duration::from_secs(30),
                "took {e:?}"
            );
        },
    );
}

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

fn vm_size_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("VmSize:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn twenty_boots_in_a_row_leak_nothing() {
    let _serial = one_at_a_time_under_the_harness();
    common::with_deadline(
        "twenty_boots_in_a_row_leak_nothing",
        REPEAT_TEST_LIMIT,
        |probe| {
            let runtime = rt();
            // Every step has a time limit, so a stuck boot names its step (and shows the console)
            // instead of running into the harness time limit.
            let limit = Duration::from_secs(90);
            let boot = |i: usize| -> Result<(), String> {
                let t = Instant::now();
                let mut vm = tiny_vm("repeat").start().unwrap();
                probe.watch(&vm);
                let waited = vm.wait_ready(READY_TIMEOUT);
                if waited.is_err() && killed_by_the_harness(&vm) {
                    return Err(format!("boot {i}: triple fault before the agent was ready"));
                }
                not_ready_fails(&vm, waited);
                let ready_at = t.elapsed();
                runtime.block_on(async {
                    let stuck = |what: &str| -> ! {
                        panic!(
                            "boot {i}: {what} took over {limit:?}; VM exit: {:?}\n\
                             --- threads ---\n{}\n--- console tail ---\n{}",
                            vm.exit(),
                            common::thread_activity(),
                            vm.console_tail()
                        )
                    };
                    let c = tokio::time::timeout(limit, client(&vm))
                        .await
                        .unwrap_or_else(|_| stuck("connect + handshake"));
                    let out = match tokio::time::timeout(
                        limit,
                        c.exec_collect(ExecSpec::script(format!("echo {i}"))),
                    )
                    .await
                    .unwrap_or_else(|_| stuck("exec"))
                    {
                        Ok(out) => out,
                        Err(_) if killed_by_the_harness(&vm) => {
                            return Err(format!("boot {i}: triple fault during the exec"));
                        }
                        Err(e) => {
                            panic!("boot {i}: exec failed: {e}\n{}", failure_report(&vm).await)
                        }
                    };
                    assert_eq!(out.stdout, format!("{i}\n").into_bytes());
                    Ok(())
                })?;
                let exec_at = t.elapsed();
                assert_eq!(vm.kill(), VmExit::Killed);
                eprintln!(
                    "boot {i}: ready {:.1} s, exec done {:.1} s, killed {:.1} s",
                    ready_at.as_secs_f64(),
                    exec_at.as_secs_f64(),
                    t.elapsed().as_secs_f64()
                );
                Ok(())
            };
            let boot = |i: usize| retried_on_harness_failures(&format!("boot {i}"), || boot(i));
            boot(0);
            let (fds, threads, size) = (
                count("/proc/self/fd"),
                count("/proc/self/task"),
                vm_size_kib(),
            );
            let start = Instant::now();
            for i in 1..=20 {
                boot(i);
            }
            eprintln!("20 boots+exec in {:.1} s", start.elapsed().as_secs_f64());
            // Tests run in parallel: other tests' VMs come and go, so allow one VM's worth of slack.
            let (fds2, threads2, size2) = (
                count("/proc/self/fd"),
                count("/proc/self/task"),
                vm_size_kib(),
            );
            assert!(fds2 <= fds + 16, "fds {fds} -> {fds2}");
            assert!(threads2 <= threads + 8, "threads {threads} -> {threads2}");
            assert!(
                size2 <= size + 300 * 1024,
                "VmSize {size} KiB -> {size2} KiB"
            );
        },
    );
}

/// The stall signature is read from the device's own report (the harness case seen on
/// 2026-12-03), and a device that still holds data or whose interrupt was taken is not it.
#[test]
fn stall_signature_of_a_guest_that_stopped_taking_interrupts() {
    let seen = "vsock cid 3: irq status 0x1, last raised 128.008ms ago, raised again 297 times\n\
        ConnKey { local_port: 1073741824, peer_port: 1024 } established | to guest: queued 0 \
        tx_cnt 4441 | to host: queued 0 rx_cnt 94490058";
    assert!(interrupt_ignored_with_nothing_queued(seen));
    assert!(!interrupt_ignored_with_nothing_queued(
        &seen.replace("raised again 297", "raised again 3")
    ));
    assert!(!interrupt_ignored_with_nothing_queued(
        &seen.replace("irq status 0x1", "irq status 0x0")
    ));
    assert!(!interrupt_ignored_with_nothing_queued(
        &seen.replace("to host: queued 0 ", "to host: queued 4096 ")
    ));
}
