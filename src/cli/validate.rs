//! `hearth validate`: configuration, isolation (KVM: present? hardware virtualization or PVM;
//! or the process sandbox's cgroups, with a plain warning that it is weaker than a VM), guest
//! kernel and rootfs, git, and the queue: the frontend's reachability and token
//! (`/.executors/test/auth`), or the embedded queue's database. Prints `All checks passed!` and
//! exits 0 when nothing failed, else exits 1.

use super::isolation::IsolationOpts;
use hearth::config::{Config, ConfigFlags};
use hearth::queue::client::{ClientError, ClientOptions, QueueClient};
use hearth::queue::store::{Store, StoreOptions};
use hearth::sandbox::IsolationKind;
use hearth::sandbox::process::{ProcessIsolation, ProcessOptions};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub config: ConfigFlags,
    #[command(flatten)]
    pub isolation: IsolationOpts,
}

#[derive(Default)]
struct Report {
    failed: usize,
}

impl Report {
    fn ok(&mut self, what: &str, detail: impl AsRef<str>) {
        println!("ok    {what}: {}", detail.as_ref());
    }
    fn warn(&mut self, what: &str, detail: impl AsRef<str>) {
        println!("WARN  {what}: {}", detail.as_ref());
    }
    fn fail(&mut self, what: &str, detail: impl AsRef<str>) {
        self.failed += 1;
        println!("FAIL  {what}: {}", detail.as_ref());
    }
}

/// What `/dev/kvm` is backed by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmKind {
    /// kvm_intel / kvm_amd.
    Hardware(&'static str),
    /// kvm_pvm: paravirtualized, no hardware virtualization (Linux guests need a PVM kernel).
    Pvm,
    Unknown,
}

pub fn kvm_kind(sys_module: &Path) -> KvmKind {
    if sys_module.join("kvm_pvm").exists() {
        return KvmKind::Pvm;
    }
    for m in ["kvm_intel", "kvm_amd"] {
        if sys_module.join(m).exists() {
            return KvmKind::Hardware(m);
        }
    }
    KvmKind::Unknown
}

fn check_kvm(r: &mut Report, needed: bool) {
    let kind = match kvm_kind(Path::new("/sys/module")) {
        KvmKind::Hardware(m) => format!("hardware virtualization ({m})"),
        KvmKind::Pvm => "PVM (kvm_pvm: paravirtualized, no hardware virtualization)".to_string(),
        KvmKind::Unknown => "unknown KVM module".to_string(),
    };
    let open = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm");
    let pvm = kvm_kind(Path::new("/sys/module")) == KvmKind::Pvm;
    match open {
        Ok(_) if pvm && needed => r.fail(
            "kvm",
            format!(
                "/dev/kvm is {kind}: standard Linux guests such as hearth's kernel do not boot \
                 under kvm_pvm; use a host with hardware virtualization, or --isolation process"
            ),
        ),
        Ok(_) => r.ok("kvm", format!("/dev/kvm usable; {kind}")),
        Err(e) if needed => r.fail(
            "kvm",
            format!("/dev/kvm: {e} (VM isolation needs KVM; or use --isolation process)"),
        ),
        Err(e) => r.warn(
            "kvm",
            format!("/dev/kvm: {e} (not needed for process isolation)"),
        ),
    }
}

/// The VMM threads' seccomp filters: the mode `HEARTH_SECCOMP` selects, that the filters
/// compile, and that the kernel has the actions they use.
fn check_seccomp(r: &mut Report) {
    use hearth_vmm::seccomp::{MODE_ENV, SeccompMode, ThreadKind, programs};
    let mode = match std::env::var(MODE_ENV) {
        Ok(v) => match v.parse::<SeccompMode>() {
            Ok(m) => m,
            Err(e) => return r.fail("seccomp", format!("{MODE_ENV}: {e}")),
        },
        Err(_) => SeccompMode::Enforce,
    };
    for kind in [ThreadKind::Vcpu, ThreadKind::EventLoop] {
        if let Err(e) = programs(kind, mode) {
            return r.fail("seccomp", e.to_string());
        }
    }
    let actions =
        std::fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail").unwrap_or_default();
    let needed: &[&str] = match mode {
        SeccompMode::Enforce => &["trap", "errno"],
        SeccompMode::Log => &["log"],
        SeccompMode::Off => {
            return r.warn(
                "seccomp",
                format!("{MODE_ENV}=off: VMM threads run without a filter (debugging only)"),
            );
        }
    };
    if let Some(missing) = needed
        .iter()
        .find(|n| !actions.split_whitespace().any(|a| a == **n))
    {
        return r.fail(
            "seccomp",
            format!("the kernel lacks the seccomp action {missing} (actions_avail: {actions:?})"),
        );
    }
    match mode {
        SeccompMode::Log => r.warn(
            "seccomp",
            format!("{MODE_ENV}=log: denied calls of VMM threads are only logged, not stopped"),
        ),
        _ => r.ok(
            "seccomp",
            "vCPU and event-loop threads filtered; file opens fail, any other denied call kills the process",
        ),
    }
}

/// VM networking: root, /dev/net/tun, and the nftables table accepted by `nft -c` (checked,
/// not loaded: validate changes nothing on the host).
fn check_network(r: &mut Report, off: bool) {
    use hearth::sandbox::network::{NetworkOptions, TAP_PREFIX, nftables};
    if off {
        r.warn("network", "off (--no-network): jobs get no network");
        return;
    }
    let opts = match NetworkOptions::from_env() {
        Ok(o) => o,
        Err(e) => return r.fail("network", e.to_string()),
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return r.fail(
            "network",
            "needs root for taps and nftables (or pass --no-network)",
        );
    }
    if !Path::new("/dev/net/tun").exists() {
        return r.fail(
            "network",
            "/dev/net/tun missing (load the tun module, or pass --no-network)",
        );
    }
    let (pool, prefix) = opts.pool;
    match nftables::check(&opts.ruleset()) {
        Ok(()) => r.ok(
            "network",
            format!(
                "taps {TAP_PREFIX}<n> from {pool}/{prefix}, NAT, table inet {} (nft -c ok), dns {}",
                nftables::TABLE,
                opts.dns
            ),
        ),
        Err(e) => r.fail("network", format!("{e} (or pass --no-network)")),
    }
}

fn check_git(r: &mut Report) {
    match std::process::Command::new("git").arg("version").output() {
        Ok(o) if o.status.success() => {
            let v = String::from_utf8_lossy(&o.stdout)
                .trim()
                .trim_start_matches("git version ")
                .to_string();
            let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
            let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
            if (major, minor) >= (2, 26) {
                r.ok("git", v);
            } else {
                r.fail(
                    "git",
                    format!(
                        "git version is too old, install at least git 2.26, current version: {v}"
                    ),
                );
            }
        }
        Ok(o) => r.fail("git", String::from_utf8_lossy(&o.stderr).trim()),
        Err(e) => r.fail(
            "git",
            format!("git not found: {e} (jobs clone repositories with git)"),
        ),
    }
}

async fn check_frontend(r: &mut Report, config: &Config, url: &str) {
    let client = match QueueClient::new(ClientOptions::from_config(config, None), None) {
        Ok(c) => c,
        Err(e) => return r.fail("frontend", e.to_string()),
    };
    match tokio::time::timeout(Duration::from_secs(20), client.test_auth()).await {
        Err(_) => r.fail("frontend", format!("{url}: no answer within 20s")),
        Ok(Ok(())) => r.ok(
            "frontend",
            format!("{url} reachable, executor token accepted"),
        ),
        Ok(Err(ClientError::Status { status: 401, .. })) => r.fail(
            "frontend",
            "failed to authorize with frontend, is executors.accessToken set correctly in the \
             site-config?",
        ),
        Ok(Err(ClientError::Status { status, body, .. })) => r.fail(
            "frontend",
            format!(
                "{url}/.executors/test/auth answered {status}: {}",
                body.trim()
            ),
        ),
        Ok(Err(e)) => r.fail("frontend", format!("{url} unreachable: {e}")),
    }
}

pub async fn run(args: ValidateArgs) -> anyhow::Result<ExitCode> {
    let mut r = Report::default();
    let config = match Config::from_env(&args.config) {
        Ok(c) => {
            r.ok(
                "config",
                format!(
                    "queues {:?}, up to {} job(s) of {} vCPUs / {}",
                    c.queues.names(),
                    c.maximum_num_jobs,
                    c.job_num_cpus,
                    c.job_memory
                ),
            );
            Some(c)
        }
        Err(e) => {
            r.fail("config", e.to_string());
            None
        }
    };
    let kind = match &config {
        Some(c) => args.isolation.kind(c),
        None => match args.isolation.isolation {
            Some(super::isolation::IsolationArg::Process) => IsolationKind::Process,
            _ => IsolationKind::Vm,
        },
    };
    r.ok("isolation", kind.to_string());
    check_kvm(&mut r, kind == IsolationKind::Vm);
    if kind == IsolationKind::Vm {
        check_seccomp(&mut r);
        check_network(&mut r, args.isolation.no_network);
    }
    match args.isolation.artifact_search().resolve() {
        Ok(a) => r.ok(
            "guest artifacts",
            format!(
                "kernel {}, rootfs {}",
                a.kernel.display(),
                a.rootfs.display()
            ),
        ),
        Err(e) if kind == IsolationKind::Vm => r.fail("guest artifacts", e.to_string()),
        Err(e) => r.warn(
            "guest artifacts",
            format!("{e} (not needed for process isolation)"),
        ),
    }
    if kind == IsolationKind::Process {
        match ProcessIsolation::new(ProcessOptions::default()) {
            Ok(p) => r.ok(
                "process sandbox",
                format!(
                    "namespaces + cgroup {} limits, runtime dir {}",
                    p.cgroup_version(),
                    p.options().runtime_dir.display()
                ),
            ),
            Err(e) => r.fail("process sandbox", e.to_string()),
        }
        if let Some(notice) = kind.weakness_notice() {
            r.warn("isolation", notice);
        }
    }
    check_git(&mut r);
    if let Some(c) = &config {
        match &c.frontend_url {
            Some(url) => check_frontend(&mut r, c, url).await,
            None => match Store::open(&c.embedded_db, StoreOptions::default()) {
                Ok(_) => r.ok(
                    "queue",
                    format!(
                        "embedded (no EXECUTOR_FRONTEND_URL), db {}",
                        c.embedded_db.display()
                    ),
                ),
                Err(e) => r.fail(
                    "queue",
                    format!("embedded queue db {}: {e}", c.embedded_db.display()),
                ),
            },
        }
    }
    if r.failed == 0 {
        println!("All checks passed!");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{} check(s) failed", r.failed);
        Ok(ExitCode::from(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_kind_from_modules() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(kvm_kind(d.path()), KvmKind::Unknown);
        std::fs::create_dir(d.path().join("kvm_intel")).unwrap();
        assert_eq!(kvm_kind(d.path()), KvmKind::Hardware("kvm_intel"));
        std::fs::create_dir(d.path().join("kvm_pvm")).unwrap();
        assert_eq!(kvm_kind(d.path()), KvmKind::Pvm);
    }
}
