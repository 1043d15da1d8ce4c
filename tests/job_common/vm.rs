//! VM mode of the job e2e cases (tests/vm_job.rs): VM isolation from the guest artifacts the VM
//! harness passes in (never skipped: panics with the reason when something is missing), the VM
//! time limits, one case at a time, and a whole-case deadline that prints diagnostics (the jobs
//! and their log entries, the VM console tails, thread stacks when gdb is there) and aborts
//! instead of hanging.

use super::{E2e, Setup, Timing};
use hearth::queue::store::{ListFilter, Store};
use hearth::sandbox::artifacts::GuestArtifacts;
use hearth::sandbox::vm::VmIsolation;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Writes to the process's stderr directly: libtest captures `eprintln!` of a test and of the
/// threads it spawns, and that buffer is lost when the watchdog aborts.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

/// A whole case, VM boots included, must end within this (the worker's own limit is 300 s).
pub const CASE_DEADLINE: Duration = Duration::from_secs(420);

/// No VM of a case lives longer than this.
pub const VM_DEADLINE: Duration = Duration::from_secs(300);

/// The guest kernel and rootfs from `HEARTH_KERNEL` / `HEARTH_ROOTFS`, and a usable /dev/kvm.
pub fn artifacts() -> GuestArtifacts {
    let var = |name: &str| {
        let p = std::env::var_os(name).unwrap_or_else(|| {
            panic!(
                "{name} is not set: run through harness/run-vm-tests.sh (or eval \"$(harness/artifacts.sh)\")"
            )
        });
        let p = PathBuf::from(p);
        assert!(p.is_file(), "{name}={} does not exist", p.display());
        p
    };
    let a = GuestArtifacts {
        kernel: var("HEARTH_KERNEL"),
        rootfs: var("HEARTH_ROOTFS"),
    };
    if let Err(e) = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        panic!(
            "this test needs /dev/kvm with hardware virtualization (use harness/run-vm-tests.sh): {e}"
        );
    }
    a
}

impl Timing {
    /// VM runs: a boot is part of every job, and the emulated-SVM harness is slow (its timings
    /// are not hardware timings); the bounds still catch a cancel or limit not acted on.
    pub fn vm() -> Timing {
        Timing {
            job_limit: Duration::from_secs(180),
            runtime_limit: Duration::from_secs(60),
            runtime_limit_text: "1m0s",
            stop_within: Duration::from_secs(60),
            step_cancel_within: Duration::from_secs(3),
            clone_cancel_within: Duration::from_secs(10),
        }
    }
}

/// Microvms booted by `sandbox::vm`: 256 MiB, a 128 MiB workspace disk.
pub fn setup(artifacts: GuestArtifacts) -> impl FnOnce(&Path) -> Setup {
    move |_sock_dir| Setup {
        // The VMM kills a VM that outlives any case (a guest or VMM hang ends as a failed job).
        isolation: Arc::new(VmIsolation::new(artifacts).deadline(Some(VM_DEADLINE))),
        start_detail: "$BOOT\n".into(),
        memory_mib: 256,
        disk_mib: 128,
        ready_timeout: Duration::from_secs(120),
        timing: Timing::vm(),
    }
}

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Cases run one after the other (their time bounds assume an otherwise idle machine).
pub fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `case` against a fresh VM-mode [`E2e`] under [`CASE_DEADLINE`].
pub fn run_case<F>(name: &str, case: F)
where
    F: for<'a> FnOnce(&'a E2e) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + 'a>>,
{
    run_owned_case(name, |h| async move { case(&h).await });
}

/// [`run_case`] for a case that takes the [`E2e`] by value (it moves parts of it, e.g. stops
/// its queue server).
pub fn run_owned_case<F, Fut>(name: &str, case: F)
where
    F: FnOnce(E2e) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let _one = one_at_a_time();
    say!("{name}: starting");
    let artifacts = artifacts();
    let rt = runtime();
    let started = Instant::now();
    let h = rt.block_on(E2e::start_with(setup(artifacts)));
    let _watchdog = Watchdog::new(name, CASE_DEADLINE, h.queue.store.clone());
    rt.block_on(case(h));
    say!("{name}: passed in {:.1} s", started.elapsed().as_secs_f64());
}

/// Aborts the test binary with diagnostics when a case runs over its deadline.
pub struct Watchdog {
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    pub fn new(what: &str, limit: Duration, store: Store) -> Watchdog {
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let what = what.to_string();
        let thread = std::thread::spawn(move || {
            let until = Instant::now() + limit;
            while Instant::now() < until {
                if flag.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            say!("{what}: still running after {limit:?}; diagnostics follow, then abort");
            // The store or a stuck thread could block the report: give it a bounded time.
            let report = std::thread::spawn(move || report(&store));
            let until = Instant::now() + Duration::from_secs(60);
            while !report.is_finished() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(100));
            }
            std::process::abort();
        });
        Watchdog {
            done,
            thread: Some(thread),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn report(store: &Store) {
    match store.list(&ListFilter::default()) {
        Ok(jobs) => {
            for j in jobs {
                say!(
                    "job {} ({}): {:?} {:?}",
                    j.id,
                    j.queue,
                    j.state,
                    j.failure_message
                );
                for e in store.logs(j.id).unwrap_or_default() {
                    say!(
                        "  {} exit {:?} after {:?} ms\n{}",
                        e.key,
                        e.exit_code,
                        e.duration_ms,
                        tail(&e.out, 20)
                    );
                }
            }
        }
        Err(e) => say!("(listing the jobs failed: {e})"),
    }
    let scratch = format!("hearth-{}.", std::process::id());
    for d in std::fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        if d.file_name().to_string_lossy().starts_with(&scratch) {
            let log = d.path().join("console.log");
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            say!("--- {} (tail) ---\n{}", log.display(), tail(&text, 40));
        }
    }
    let gdb = std::process::Command::new("gdb")
        .args(["-p", &std::process::id().to_string(), "-batch", "-nx"])
        .args(["-ex", "set pagination off", "-ex", "thread apply all bt"])
        .output();
    match gdb {
        Ok(o) => say!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => say!("(no gdb for thread stacks: {e})"),
    }
}
