//! Shared helpers for the Linux-boot tests (`vm_*`): artifact lookup with clear failures.
#![allow(dead_code)]

use std::path::PathBuf;

/// Path from an artifact variable; panics with the reason when unset or missing.
pub fn artifact(var: &str) -> PathBuf {
    let v = std::env::var_os(var).unwrap_or_else(|| {
        panic!("{var} is not set: build the guest artifacts with `eval \"$(harness/artifacts.sh)\"` or run harness/run-vm-tests.sh")
    });
    let p = PathBuf::from(v);
    assert!(p.is_file(), "{var}={} does not exist", p.display());
    p
}

/// Panics unless /dev/kvm can be opened.
pub fn require_kvm() {
    if let Err(e) = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        panic!(
            "this test needs /dev/kvm with hardware virtualization (use harness/run-vm-tests.sh): {e}"
        );
    }
}

/// A per-test scratch directory.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hearth-vm-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// What a test tells its deadline about the VMs it runs, so a hang can be reported with the
/// guest's console and the vsock device's state. Cheap to share; the latest VM wins.
#[derive(Default)]
pub struct Probe {
    vms: std::sync::Mutex<Vec<(PathBuf, Option<hearth_vmm::VsockHandle>)>>,
}

impl Probe {
    /// Registers a started VM (its console log and vsock device).
    pub fn watch(&self, vm: &hearth_vmm::Vm) {
        let console = vm.console_log_path().map(PathBuf::from).unwrap_or_default();
        let mut vms = self.vms.lock().unwrap_or_else(|p| p.into_inner());
        vms.retain(|(c, _)| *c != console);
        vms.push((console, vm.vsock().cloned()));
        // Only the recent ones matter for a report.
        let excess = vms.len().saturating_sub(4);
        vms.drain(..excess);
    }

    /// Console tails and vsock states of the watched VMs.
    pub fn report(&self) -> String {
        let vms = self.vms.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        let mut out = String::new();
        for (console, vsock) in vms {
            out.push_str(&format!("--- console {} (tail) ---\n", console.display()));
            out.push_str(&tail(&std::fs::read(&console).unwrap_or_default(), 4000));
            out.push('\n');
            if let (Some(v), Ok(rt)) = (vsock, &rt) {
                let state = rt.block_on(v.describe(std::time::Duration::from_secs(5)));
                out.push_str("--- vsock device ---\n");
                out.push_str(
                    &state.unwrap_or_else(|| "(no answer from the event loop in 5 s)".into()),
                );
                out.push('\n');
            }
        }
        out
    }
}

/// Where `vm`'s vCPUs are now, one line each (see [`hearth_vmm::Vm::vcpu_states`]).
pub fn vcpu_report(vm: &hearth_vmm::Vm) -> String {
    let states = vm.vcpu_states(std::time::Duration::from_secs(2));
    if states.is_empty() {
        return "(no vCPU answered in 2 s)".into();
    }
    states.iter().map(|s| format!("{s}\n")).collect()
}

/// The last `n` bytes of `bytes` as (lossy) text.
pub fn tail(bytes: &[u8], n: usize) -> String {
    String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(n)..]).into_owned()
}

/// Every thread's stack of this process, with gdb when the harness provides it (given at most a
/// minute: attaching to threads inside KVM_RUN must not become the next hang).
pub fn thread_stacks() -> String {
    let dir = std::env::temp_dir();
    let out_path = dir.join(format!("hearth-gdb-{}.txt", std::process::id()));
    let Ok(out) = std::fs::File::create(&out_path) else {
        return "(cannot create a file for gdb's output)".into();
    };
    let err = out.try_clone();
    let mut cmd = std::process::Command::new("gdb");
    cmd.args(["-p", &std::process::id().to_string(), "-batch", "-nx"])
        .args(["-ex", "set pagination off", "-ex", "thread apply all bt"])
        .stdin(std::process::Stdio::null())
        .stdout(out);
    if let Ok(err) = err {
        cmd.stderr(err);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return format!("(no gdb for thread stacks: {e})"),
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut note = String::new();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(100))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                note = "(gdb did not finish within 60 s; killed)\n".into();
                break;
            }
        }
    }
    let text = std::fs::read(&out_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    note + &tail(&text, 40_000)
}

/// Runs a whole test under a deadline. The body runs on its own thread; past `limit` the test
/// fails with the watched VMs' console tails, their vsock state and every thread's stack instead
/// of hanging the suite (the stuck body thread is left behind; the process ends with the binary).
/// A panic in the body fails the test as usual.
pub fn with_deadline<F>(name: &str, limit: std::time::Duration, body: F)
where
    F: FnOnce(&Probe) + Send + 'static,
{
    log_vmm_events();
    let probe = std::sync::Arc::new(Probe::default());
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let p = probe.clone();
    let worker = std::thread::Builder::new()
        .name(format!("test-{name}"))
        .spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(&p)));
            let _ = done_tx.send(r);
        })
        .expect("spawning the test body thread");
    match done_rx.recv_timeout(limit) {
        Ok(Ok(())) => {
            let _ = worker.join();
        }
        Ok(Err(panic)) => {
            let _ = worker.join();
            std::panic::resume_unwind(panic);
        }
        Err(_) => panic!(
            "{name}: the whole test did not finish within {limit:?}\n{}\n--- thread stacks ---\n{}",
            probe.report(),
            thread_stacks()
        ),
    }
}

/// Prints the VMM's own log events (debug and above, `hearth_vmm` only) on stderr, so a failing
/// test shows what the device model saw (resets, refused packets, exits). Installed once per
/// binary by [`with_deadline`]; lines carry the thread name and the time since installation.
struct VmmLog {
    start: std::time::Instant,
}

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0.push_str(&format!(" {value:?}"));
        } else {
            self.0.push_str(&format!(" {}={value:?}", field.name()));
        }
    }
}

impl tracing::Subscriber for VmmLog {
    fn enabled(&self, meta: &tracing::Metadata<'_>) -> bool {
        meta.target().starts_with("hearth_vmm") && *meta.level() <= tracing::Level::DEBUG
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        let thread = std::thread::current();
        eprintln!(
            "[{:>8.3}s {} {} {}]{}",
            self.start.elapsed().as_secs_f64(),
            thread.name().unwrap_or("?"),
            event.metadata().level(),
            event.metadata().target(),
            fields.0
        );
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Installs [`VmmLog`] (once per process).
pub fn log_vmm_events() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tracing::subscriber::set_global_default(VmmLog {
            start: std::time::Instant::now(),
        });
    });
}

/// Every thread of this process with its scheduler state, kernel wait channel and the CPU time
/// it used over one second. Tells a guest that is idle (its vCPU thread sleeping in the host
/// kernel) from one whose vCPU thread spins in KVM_RUN without returning (seen in the harness's
/// outer kernel: the guest then looks silent to the devices too).
pub fn thread_activity() -> String {
    let mut text = String::new();
    for t in thread_cpu_use() {
        text.push_str(&format!(
            "{} {} wchan {} cpu ticks in 1 s: {:?}\n",
            t.tid, t.name_state, t.wchan, t.ticks
        ));
    }
    text
}

/// One thread of this process as [`thread_cpu_use`] saw it.
pub struct ThreadUse {
    /// Thread id.
    pub tid: String,
    /// `comm` and scheduler state, e.g. `hearth-vcpu0 R`.
    pub name_state: String,
    /// Kernel wait channel.
    pub wchan: String,
    /// Clock ticks (1/100 s) of CPU used over one second; `None` for a thread that is new.
    pub ticks: Option<u64>,
}

/// Every thread's state and the CPU time it used over one second (takes one second).
pub fn thread_cpu_use() -> Vec<ThreadUse> {
    fn snapshot() -> Vec<(String, String, String, u64)> {
        let mut out = Vec::new();
        let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
            return out;
        };
        for t in dir.flatten() {
            let p = t.path();
            let stat = std::fs::read_to_string(p.join("stat")).unwrap_or_default();
            let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
            let wchan = std::fs::read_to_string(p.join("wchan")).unwrap_or_default();
            // Fields after "(comm) ": state is the 1st, utime and stime the 12th and 13th.
            let rest: Vec<&str> = stat
                .rsplit_once(") ")
                .map(|(_, r)| r.split(' ').collect())
                .unwrap_or_default();
            let ticks = |i: usize| rest.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            out.push((
                t.file_name().to_string_lossy().into_owned(),
                format!("{} {}", comm.trim(), rest.first().copied().unwrap_or("?")),
                wchan,
                ticks(11) + ticks(12),
            ));
        }
        out
    }
    let before = snapshot();
    std::thread::sleep(std::time::Duration::from_secs(1));
    snapshot()
        .into_iter()
        .map(|(tid, name_state, wchan, ticks)| {
            let used = before
                .iter()
                .find(|b| b.0 == tid)
                .map(|b| ticks.saturating_sub(b.3));
            ThreadUse {
                tid,
                name_state,
                wchan,
                ticks: used,
            }
        })
        .collect()
}
