//! The reference boot, before hearth has its own VMM: Debian's QEMU (`-M microvm -enable-kvm` with a
//! vhost-vsock-device) boots hearth's guest kernel and root filesystem, the agent comes up as PID 1,
//! and the host side drives it over AF_VSOCK: handshake, `uname -a`, a script with its exit code,
//! a file put and got back, shutdown. It also measures the time from QEMU start to agent ready
//! (first completed handshake), the number the VMM is compared against.
//!
//! Needs `/dev/kvm` that boots a standard guest, `/dev/vhost-vsock`, `qemu-system-x86_64` and the
//! artifacts in HEARTH_KERNEL, HEARTH_BZIMAGE, HEARTH_ROOTFS, HEARTH_ROOTFS_TINY. Run it with
//! `harness/run-vm-tests.sh`, which provides all of that (inside emulated SVM where needed).
//! A missing piece fails the test with the reason; nothing is skipped.

#[path = "../benches/support/qemu_microvm.rs"]
mod qemu_microvm;

use hearth_agent::client::{Client, connect_vsock};
use hearth_agent::proto::{ExecSpec, ExitStatus};
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use qemu_microvm::{MicrovmGuest, microvm_command, qemu_binary};

const AGENT_PORT: u32 = 1024;
const READY_LIMIT: Duration = Duration::from_secs(240);
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(60);
/// A whole test, boot included: a guest or agent that stops answering fails the test with the
/// console tail instead of hanging the suite.
const TEST_LIMIT: Duration = Duration::from_secs(420);

/// Serializes the boots: the timing must not be disturbed by a second guest on the same cores.
static ONE_GUEST_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn artifact(var: &str) -> PathBuf {
    let path = std::env::var_os(var).unwrap_or_else(|| {
        panic!("{var} is not set: build the guest artifacts (eval \"$(harness/artifacts.sh)\") or run harness/run-vm-tests.sh")
    });
    let path = PathBuf::from(path);
    assert!(path.is_file(), "{var}={} is not a file", path.display());
    path
}

fn require_device(path: &str) {
    assert!(
        !Path::new("/sys/module/kvm_pvm").exists(),
        "this host's KVM is kvm_pvm, which does not boot standard guests: run the VM tests with harness/run-vm-tests.sh"
    );
    if let Err(e) = OpenOptions::new().read(true).write(true).open(path) {
        panic!(
            "cannot open {path} read-write ({e}); VM tests need hardware virtualization: run them with harness/run-vm-tests.sh"
        );
    }
}

/// A running QEMU; killed on drop so a failing test never leaves a guest behind.
struct Qemu {
    child: Child,
    console: PathBuf,
    cid: u32,
    _dir: tempfile::TempDir,
}

impl Qemu {
    fn boot(kernel: &Path, rootfs: &Path, cid: u32) -> (Qemu, Instant) {
        let dir = tempfile::tempdir().expect("tempdir");
        let console = dir.path().join("console.log");
        let stderr = File::create(dir.path().join("qemu.stderr")).expect("qemu stderr file");
        let append = format!(
            "console=ttyS0 reboot=t panic=-1 quiet root=/dev/vda ro init=/sbin/hearth-agent \
             hearth.port={AGENT_PORT} hearth.overlay=tmpfs"
        );
        let guest = MicrovmGuest {
            kernel,
            rootfs,
            memory_mib: 512,
            vsock_cid: cid,
            console: &console,
            append: &append,
        };
        let mut cmd = microvm_command(&guest, stderr);
        println!("qemu command: {cmd:?}");
        let started = Instant::now();
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", qemu_binary()));
        (
            Qemu {
                child,
                console,
                cid,
                _dir: dir,
            },
            started,
        )
    }

    fn diagnostics(&self) -> String {
        diagnostics(&self.console)
    }

    fn console_text(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// Connects (retrying while the guest boots) until the handshake completes.
    async fn wait_for_agent(&mut self, started: Instant) -> (Client, Duration) {
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "QEMU exited ({status}) before the agent answered\n{}",
                    self.diagnostics()
                );
            }
            if started.elapsed() > READY_LIMIT {
                panic!(
                    "agent not ready after {READY_LIMIT:?}\n{}",
                    self.diagnostics()
                );
            }
            let attempt =
                tokio::time::timeout(Duration::from_secs(5), connect_vsock(self.cid, AGENT_PORT));
            if let Ok(Ok(client)) = attempt.await {
                return (client, started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the guest is down: QEMU exited (a reboot with reboot=t and -no-reboot) or the
    /// kernel reported that it stopped: the guest kernel has no ACPI, so a power-off halts the CPUs
    /// ("Power off not available: System halted instead") and QEMU keeps running.
    async fn wait_for_shutdown(&mut self) -> String {
        let deadline = Instant::now() + SHUTDOWN_LIMIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return format!("QEMU exited ({status})");
            }
            let console = self.console_text();
            for line in [
                "reboot: Power down",
                "System halted instead",
                "reboot: System halted",
            ] {
                if console.contains(line) {
                    return format!("guest kernel stopped (console: {line:?}); QEMU still running");
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "guest still running {SHUTDOWN_LIMIT:?} after shutdown\n{}",
                    self.diagnostics()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The guest console's tail and QEMU's stderr, for a failure message.
fn diagnostics(console_path: &Path) -> String {
    let mut console = String::new();
    if let Ok(mut f) = File::open(console_path) {
        let _ = f.read_to_string(&mut console);
    }
    let stderr =
        std::fs::read_to_string(console_path.with_file_name("qemu.stderr")).unwrap_or_default();
    let tail: String = console
        .chars()
        .rev()
        .take(3000)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("--- guest console (tail) ---\n{tail}\n--- qemu stderr ---\n{stderr}")
}

/// Runs a test's body under [`TEST_LIMIT`]; past it the test fails with the guest's console tail
/// (the step it was at is the last "step:" line of its output). The body borrows the test's
/// [`Qemu`], so the console is still there to read; QEMU is killed when that is dropped.
async fn within_test_limit<F: std::future::Future<Output = ()>>(console: PathBuf, body: F) {
    if tokio::time::timeout(TEST_LIMIT, body).await.is_err() {
        panic!(
            "test did not finish within {TEST_LIMIT:?}; the last 'step:' line above says where it stopped\n{}",
            diagnostics(&console)
        );
    }
}

fn step(what: &str) {
    println!(
        "step: {what} (t={:?})",
        START.get_or_init(Instant::now).elapsed()
    );
}

static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// A guest CID no other test process on this host uses at the same time.
fn guest_cid(offset: u32) -> u32 {
    3 + (std::process::id() % 100_000) * 4 + offset
}

async fn run(client: &Client, spec: ExecSpec) -> (String, String, ExitStatus) {
    let out = client.exec_collect(spec).await.expect("exec");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.info.status,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_boots_debian_rootfs_and_host_drives_agent_over_vsock() {
    let kernel = artifact("HEARTH_KERNEL");
    let rootfs = artifact("HEARTH_ROOTFS");
    require_device("/dev/kvm");
    require_device("/dev/vhost-vsock");
    let _one = ONE_GUEST_AT_A_TIME.lock().await;

    let (mut qemu, started) = Qemu::boot(&kernel, &rootfs, guest_cid(0));
    let console = qemu.console.clone();
    within_test_limit(console, debian_rootfs_checks(&mut qemu, started)).await;
}

async fn debian_rootfs_checks(qemu: &mut Qemu, started: Instant) {
    step("waiting for the agent");
    let (client, ready) = qemu.wait_for_agent(started).await;
    println!(
        "REFERENCE qemu start -> agent ready (vmlinux, Debian rootfs, 1 vCPU, 512 MiB): {} ms",
        ready.as_millis()
    );

    // The agent is PID 1.
    step("exec cat /proc/1/comm");
    let (comm, _, status) = run(&client, ExecSpec::argv(["cat", "/proc/1/comm"])).await;
    assert_eq!(status, ExitStatus::Code(0));
    assert_eq!(comm.trim(), "hearth-agent");

    // uname -a: hearth's own 6.12 kernel.
    step("exec uname -a");
    let (uname, _, status) = run(&client, ExecSpec::argv(["uname", "-a"])).await;
    assert_eq!(status, ExitStatus::Code(0));
    assert!(
        uname.starts_with("Linux ") && uname.contains(" 6.12."),
        "uname -a: {uname}"
    );
    println!("guest uname -a: {}", uname.trim());

    step("exec a script");
    // A script: separate stdout and stderr, its own exit code, Debian userland present.
    let script = "set -e\necho out-$((6*7))\necho err-line >&2\n. /etc/os-release\necho \"$VERSION_CODENAME\"\nexit 7\n";
    let (stdout, stderr, status) = run(&client, ExecSpec::script(script)).await;
    assert_eq!(
        status,
        ExitStatus::Code(7),
        "stdout: {stdout} stderr: {stderr}"
    );
    assert_eq!(stdout, "out-42\nbookworm\n");
    assert_eq!(stderr, "err-line\n");
    step("exec a self-signalling shell");
    let (_, _, status) = run(&client, ExecSpec::argv(["sh", "-c", "kill -TERM $$"])).await;
    assert_eq!(status, ExitStatus::Signal(15));

    // Put a file in, check it in the guest, get it back.
    let local = tempfile::tempdir().expect("tempdir");
    let payload: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(local.path().join("payload.bin"), &payload).expect("write payload");
    step("put_files");
    client
        .put_files(local.path(), "/root/upload")
        .await
        .expect("put_files");
    let (listing, _, status) = run(
        &client,
        ExecSpec::argv(["wc", "-c", "/root/upload/payload.bin"]),
    )
    .await;
    assert_eq!(status, ExitStatus::Code(0));
    assert_eq!(
        listing.split_whitespace().next(),
        Some("200000"),
        "wc: {listing}"
    );
    step("get_files");
    let back = tempfile::tempdir().expect("tempdir");
    client
        .get_files("/root/upload/payload.bin", back.path())
        .await
        .expect("get_files");
    let got = std::fs::read(back.path().join("payload.bin")).expect("downloaded file");
    assert!(
        got == payload,
        "downloaded file differs ({} bytes)",
        got.len()
    );

    step("shutdown");
    client.shutdown().await.expect("shutdown request");
    let how = qemu.wait_for_shutdown().await;
    println!("guest shut down: {how}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_boots_bzimage_with_tiny_rootfs() {
    let bzimage = artifact("HEARTH_BZIMAGE");
    let rootfs = artifact("HEARTH_ROOTFS_TINY");
    require_device("/dev/kvm");
    require_device("/dev/vhost-vsock");
    let _one = ONE_GUEST_AT_A_TIME.lock().await;

    let (mut qemu, started) = Qemu::boot(&bzimage, &rootfs, guest_cid(1));
    let console = qemu.console.clone();
    within_test_limit(console, bzimage_checks(&mut qemu, started)).await;
}

async fn bzimage_checks(qemu: &mut Qemu, started: Instant) {
    step("waiting for the agent");
    let (client, ready) = qemu.wait_for_agent(started).await;
    println!(
        "qemu start -> agent ready (bzImage, tiny rootfs): {} ms",
        ready.as_millis()
    );
    step("exec uname -r");
    let (uname, _, status) = run(&client, ExecSpec::argv(["uname", "-r"])).await;
    assert_eq!(status, ExitStatus::Code(0));
    assert!(uname.starts_with("6.12."), "uname -r: {uname}");
    step("exec busybox");
    let (out, _, status) = run(&client, ExecSpec::script("busybox | head -1; exit 3")).await;
    assert_eq!(status, ExitStatus::Code(3));
    assert!(out.starts_with("BusyBox"), "busybox banner: {out}");
    step("shutdown");
    client.shutdown().await.expect("shutdown request");
    println!("guest shut down: {}", qemu.wait_for_shutdown().await);
}
