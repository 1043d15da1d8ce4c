//! Shared by the benches: artifacts (fail loudly when missing), booting a guest under hearth-vmm
//! or under QEMU (`-M microvm`, vhost-vsock) with the same kernel, rootfs, memory and vCPUs, and
//! the `RESULT` lines `harness/run-benches.sh` collects.
#![allow(dead_code)]

pub mod guest_clock;
pub mod qemu_microvm;

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hearth_agent::agent::ready::ReadyTimes;
use hearth_agent::client::{Client, connect_vsock};
use hearth_vmm::{Vm, VmBuilder};
use qemu_microvm::{MicrovmGuest, microvm_command, qemu_binary};

/// The agent's vsock port.
pub const AGENT_PORT: u32 = 1024;
/// Guest memory for every bench guest (the QEMU reference uses the same).
pub const MEMORY_MIB: u64 = 512;
/// Longest a boot may take before the bench fails (the emulated harness is slow).
pub const READY_LIMIT: Duration = Duration::from_secs(240);
/// Longest one agent call of a bench sample may take ([`Guest::call`]): far above any sample
/// (the slowest, 16 MiB over vsock in the emulated harness, takes about a second), so only a
/// guest that stopped answering reaches it.
pub const CALL_LIMIT: Duration = Duration::from_secs(180);
/// Kernel parameters both VMMs get on top of their own defaults, so the guests do the same work:
/// agent on a tmpfs overlay, agent port.
pub const COMMON_CMDLINE: &str = "hearth.overlay=tmpfs hearth.port=1024";

/// Path from an artifact variable; panics with the reason when unset or missing.
pub fn artifact(var: &str) -> PathBuf {
    let v = std::env::var_os(var).unwrap_or_else(|| {
        panic!("{var} is not set: build the guest artifacts with `eval \"$(harness/artifacts.sh)\"` or use harness/run-benches.sh")
    });
    let p = PathBuf::from(v);
    assert!(p.is_file(), "{var}={} does not exist", p.display());
    p
}

/// Panics unless `path` (/dev/kvm, /dev/vhost-vsock) opens read-write on a KVM that boots
/// standard guests.
pub fn require_device(path: &str) {
    assert!(
        !Path::new("/sys/module/kvm_pvm").exists(),
        "this host's KVM is kvm_pvm, which does not boot standard guests: run the benches with harness/run-benches.sh"
    );
    if let Err(e) = OpenOptions::new().read(true).write(true).open(path) {
        panic!(
            "cannot open {path} read-write ({e}); the benches need hardware virtualization: use harness/run-benches.sh"
        );
    }
}

/// True unless `HEARTH_BENCH_QEMU=0` (explicit opt-out of the QEMU comparison).
pub fn qemu_wanted() -> bool {
    std::env::var("HEARTH_BENCH_QEMU").map_or(true, |v| v != "0")
}

/// A tokio runtime for the agent client.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A booted guest with a connected agent client, under either VMM.
pub struct Guest {
    /// The agent client (handshake done).
    pub client: Client,
    /// Start of the VMM (builder `start()` / QEMU spawn) to completed handshake.
    pub boot: Duration,
    /// The guest's own times, with `HEARTH_BENCH_GUEST_TIMES=1` (`guest_clock`).
    pub guest_times: Option<ReadyTimes>,
    vmm: Vmm,
}

enum Vmm {
    Hearth(Box<Vm>),
    Qemu(Qemu),
}

impl Guest {
    /// The hearth VM, if this guest runs under hearth.
    pub fn hearth_vm(&self) -> Option<&Vm> {
        match &self.vmm {
            Vmm::Hearth(vm) => Some(vm),
            Vmm::Qemu(_) => None,
        }
    }

    /// The QEMU process id, if this guest runs under QEMU.
    pub fn qemu_pid(&self) -> Option<u32> {
        match &self.vmm {
            Vmm::Hearth(_) => None,
            Vmm::Qemu(q) => Some(q.child.id()),
        }
    }

    /// The guest's serial console, last few KiB.
    pub fn console_tail(&self) -> String {
        match &self.vmm {
            Vmm::Hearth(vm) => vm.console_tail(),
            Vmm::Qemu(q) => q.console_tail(),
        }
    }

    /// The value of an agent call, or a panic naming `what` with the error and the guest's
    /// console tail (a guest that died in the emulated harness says why there: a kernel panic,
    /// a triple fault). Waits a moment first: the console lags behind the failure.
    fn expect_ok<T, E: std::fmt::Display>(&self, what: &str, r: Result<T, E>) -> T {
        r.unwrap_or_else(|e| {
            std::thread::sleep(Duration::from_secs(2));
            panic!(
                "{what}: {e}\n--- guest console tail ---\n{}",
                self.console_tail()
            )
        })
    }

    /// Runs one agent call on `rt` and returns its value; panics (as [`Self::expect_ok`]) when
    /// it fails or when the guest has not answered within [`CALL_LIMIT`], so a guest that stops
    /// answering ends the bench with its console instead of hanging it.
    pub fn call<T, E: std::fmt::Display>(
        &self,
        rt: &tokio::runtime::Runtime,
        what: &str,
        call: impl std::future::Future<Output = Result<T, E>>,
    ) -> T {
        // The timer is made inside the runtime: tokio's timers need its context.
        match rt.block_on(async { tokio::time::timeout(CALL_LIMIT, call).await }) {
            Ok(r) => self.expect_ok(what, r),
            Err(_) => self.expect_ok(
                what,
                Err(format!(
                    "no answer from the guest under {} in {CALL_LIMIT:?}",
                    self.vmm_name()
                )),
            ),
        }
    }

    fn vmm_name(&self) -> &'static str {
        match &self.vmm {
            Vmm::Hearth(_) => Which::Hearth.name(),
            Vmm::Qemu(_) => Which::Qemu.name(),
        }
    }

    /// Stops the guest.
    pub fn stop(self) {
        match self.vmm {
            Vmm::Hearth(mut vm) => {
                vm.kill();
            }
            Vmm::Qemu(q) => drop(q),
        }
    }
}

/// Which VMM a bench guest runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// hearth-vmm, in this process.
    Hearth,
    /// Debian's qemu-system-x86_64 -M microvm with vhost-vsock.
    Qemu,
}

impl Which {
    /// Lower-case name for bench ids and RESULT lines.
    pub fn name(self) -> &'static str {
        match self {
            Which::Hearth => "hearth",
            Which::Qemu => "qemu",
        }
    }

    /// The VMMs to bench: hearth, plus QEMU unless opted out.
    pub fn all() -> Vec<Which> {
        if qemu_wanted() {
            vec![Which::Hearth, Which::Qemu]
        } else {
            vec![Which::Hearth]
        }
    }
}

/// Checks everything a bench guest under `which` needs, panicking with the reason.
pub fn require(which: Which) {
    artifact("HEARTH_KERNEL");
    artifact("HEARTH_ROOTFS");
    require_device("/dev/kvm");
    if which == Which::Qemu {
        require_device("/dev/vhost-vsock");
        let q = qemu_binary();
        let ok = Command::new(&q)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "{q} does not run: install qemu-system-x86 or set HEARTH_BENCH_QEMU=0 to bench hearth alone"
        );
    }
}

/// Boots the Debian rootfs under `which` and waits for the agent handshake.
pub async fn boot(which: Which, cid: u32) -> Guest {
    match which {
        Which::Hearth => boot_hearth(cid).await,
        Which::Qemu => boot_qemu(cid).await,
    }
}

async fn boot_hearth(cid: u32) -> Guest {
    let kernel = artifact("HEARTH_KERNEL");
    let rootfs = artifact("HEARTH_ROOTFS");
    let started = Instant::now();
    let vm = VmBuilder::new()
        .kernel(&kernel)
        .rootfs(&rootfs, true)
        .memory_mib(MEMORY_MIB)
        .vcpus(1)
        .vsock_cid(Some(u64::from(cid)))
        .cmdline_extra(format!(
            "{COMMON_CMDLINE}{}",
            guest_clock::cmdline_for_both()
        ))
        .deadline(Duration::from_secs(3600))
        .start()
        .unwrap_or_else(|e| panic!("hearth VM start: {e}"));
    if let Err(e) = vm.wait_ready(READY_LIMIT) {
        panic!(
            "hearth: agent not ready: {e}\nconsole tail:\n{}",
            vm.console_tail()
        );
    }
    let stream = vm
        .connect(AGENT_PORT)
        .await
        .unwrap_or_else(|e| panic!("hearth: vsock connect to the agent: {e}"));
    let client = Client::handshake(stream)
        .await
        .unwrap_or_else(|e| panic!("hearth: agent handshake: {e}"));
    let boot = started.elapsed();
    println!(
        "hearth boot {:.0} ms: {}; ready port → handshake done {:.0} ms",
        boot.as_secs_f64() * 1000.0,
        vm.timings(),
        (boot.saturating_sub(vm.timings().build_to_agent_ready.unwrap_or_default())).as_secs_f64()
            * 1000.0
    );
    let guest_times = guest_clock::enabled()
        .then(|| ReadyTimes::from_console(&vm.console_tail()))
        .flatten();
    Guest {
        client,
        boot,
        guest_times,
        vmm: Vmm::Hearth(Box::new(vm)),
    }
}

/// A running QEMU, killed on drop.
struct Qemu {
    child: Child,
    console: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Qemu {
    fn console_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.console).unwrap_or_default();
        let start = text.len().saturating_sub(3000);
        text.get(start..).unwrap_or_default().to_string()
    }
}

/// The compared QEMU (`qemu_microvm`) with hearth's kernel parameters
/// (`hearth_vmm::DEFAULT_CMDLINE` minus its VMM-specific reboot method) so both guests run the
/// same kernel configuration.
fn qemu_command(kernel: &Path, rootfs: &Path, cid: u32, console: &Path, stderr: File) -> Command {
    let append = format!(
        "{} root=/dev/vda ro rootfstype=ext4 init=/sbin/hearth-agent {COMMON_CMDLINE}{}{}",
        qemu_cmdline(),
        guest_clock::cmdline_for_both(),
        guest_clock::cmdline_for_qemu()
    );
    let guest = MicrovmGuest {
        kernel,
        rootfs,
        memory_mib: MEMORY_MIB,
        vsock_cid: cid,
        console,
        append: &append,
    };
    microvm_command(&guest, stderr)
}

/// hearth's default kernel parameters with `reboot=k` (hearth's i8042 reset) replaced by
/// `reboot=t` (QEMU microvm has no i8042 by default).
pub fn qemu_cmdline() -> String {
    hearth_vmm::DEFAULT_CMDLINE.replace("reboot=k", "reboot=t")
}

async fn boot_qemu(cid: u32) -> Guest {
    let kernel = artifact("HEARTH_KERNEL");
    let rootfs = artifact("HEARTH_ROOTFS");
    let dir = tempfile::tempdir().expect("tempdir");
    let console = dir.path().join("console.log");
    let stderr = File::create(dir.path().join("qemu.stderr")).expect("qemu stderr file");
    let mut cmd = qemu_command(&kernel, &rootfs, cid, &console, stderr);
    let started = Instant::now();
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", qemu_binary()));
    let mut qemu = Qemu {
        child,
        console,
        _dir: dir,
    };
    loop {
        if let Some(status) = qemu.child.try_wait().expect("try_wait") {
            let stderr =
                std::fs::read_to_string(qemu._dir.path().join("qemu.stderr")).unwrap_or_default();
            panic!(
                "QEMU exited ({status}) before the agent answered\n{stderr}\n{}",
                qemu.console_tail()
            );
        }
        if started.elapsed() > READY_LIMIT {
            panic!(
                "QEMU: agent not ready after {READY_LIMIT:?}\n{}",
                qemu.console_tail()
            );
        }
        let attempt = tokio::time::timeout(Duration::from_secs(5), connect_vsock(cid, AGENT_PORT));
        if let Ok(Ok(client)) = attempt.await {
            let boot = started.elapsed();
            println!("qemu boot {:.0} ms", boot.as_secs_f64() * 1000.0);
            // The agent logged its line before it listened, and QEMU writes the serial port's
            // bytes to the file as the guest sends them.
            let guest_times = guest_clock::enabled()
                .then(|| ReadyTimes::from_console(&qemu.console_tail()))
                .flatten();
            return Guest {
                client,
                boot,
                guest_times,
                vmm: Vmm::Qemu(qemu),
            };
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A guest CID not used by another bench process at the same time.
pub fn guest_cid(seq: u32) -> u32 {
    3 + (std::process::id() % 10_000) * 1000 + seq % 1000
}

/// Median of `v` (sorted in place).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Prints the line `harness/run-benches.sh` collects:
/// `RESULT <bench> <vmm> median=<x> <unit> n=<n> samples=<comma list>`.
pub fn report(bench: &str, which: Which, unit: &str, samples: &[f64]) {
    let mut s = samples.to_vec();
    let m = median(&mut s);
    let list: Vec<String> = samples.iter().map(|x| format!("{x:.1}")).collect();
    println!(
        "RESULT {bench} {} median={m:.2} {unit} n={} samples={}",
        which.name(),
        samples.len(),
        list.join(",")
    );
}
