//! Process isolation (`--isolation process`, `EXECUTOR_USE_FIRECRACKER=false`): the same agent as
//! in a VM, run as a host process inside new user, mount, PID, network (loopback only), UTS, IPC
//! and cgroup namespaces, in a per-sandbox cgroup with memory/CPU/PID limits, on a private root
//! with the workspace bind-mounted at `/work`. Weaker than a VM: the host kernel is shared.
//!
//! Users: the sandbox's root is an unprivileged host uid. As root, hearth maps sandbox ids
//! `0..65536` to host ids `uid_base..uid_base+65536` and attaches the workspace as an id-mapped
//! mount (host root's files are the sandbox root's; what the sandbox writes is owned by host
//! root); on filesystems without id-mapped mounts the workspace is chowned to `uid_base` for the
//! sandbox's lifetime instead. As an ordinary user, hearth maps sandbox root to itself.
//!
//! Layout on the host: `<runtime_dir>/<name>/{agent.log,sock/agent.sock,root/}` (root is
//! only a mount point inside the sandbox's mount namespace) and the cgroup
//! `<hearth's cgroup>/hearth/<name>` (see [`cgroup`]). `<name>` ends in the owning
//! hearth process's `<pid>-<starttime>`; [`ProcessIsolation::reconcile`] removes the
//! sandboxes whose owner is gone.

pub mod cgroup;
mod layout;
mod sandbox;
mod spawn;

pub use sandbox::ProcessSandbox;

use super::{BoxFuture, Isolation, IsolationKind, Sandbox, SandboxError, SandboxSpec};
use cgroup::{Cgroups, Limits};
use std::path::PathBuf;

/// Tunables; [`ProcessOptions::default`] runs `/proc/self/exe agent --listen unix:…`.
#[derive(Debug, Clone)]
pub struct ProcessOptions {
    /// The binary that serves the agent protocol.
    pub agent_program: PathBuf,
    /// Arguments before `--listen unix:PATH` (`["agent"]` for the hearth binary, none for
    /// `hearth-agent`).
    pub agent_args: Vec<String>,
    /// Per-sandbox directories (sockets, agent logs, root mount points).
    pub runtime_dir: PathBuf,
    /// First host uid/gid of the sandbox id range when hearth runs as root.
    pub uid_base: u32,
    /// Size of that range.
    pub id_count: u32,
    /// `pids.max` of each sandbox.
    pub pids_max: u64,
    /// `HEARTH_AGENT_LOG` for the agent (its log file is `Sandbox::log_path`).
    pub agent_log_level: String,
}

impl Default for ProcessOptions {
    fn default() -> Self {
        ProcessOptions {
            agent_program: PathBuf::from("/proc/self/exe"),
            agent_args: vec!["agent".into()],
            runtime_dir: default_runtime_dir(),
            uid_base: 1_500_000_000,
            id_count: 65536,
            pids_max: 4096,
            agent_log_level: "warn".into(),
        }
    }
}

/// `/run/hearth/process` as root, else `$XDG_RUNTIME_DIR/hearth/process` or
/// `/tmp/hearth-<uid>/process`.
pub fn default_runtime_dir() -> PathBuf {
    if is_root() {
        return PathBuf::from("/run/hearth/process");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d).join("hearth/process"),
        None => PathBuf::from(format!("/tmp/hearth-{}/process", euid())),
    }
}

pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

pub(crate) fn is_root() -> bool {
    euid() == 0
}

/// Starts process sandboxes.
pub struct ProcessIsolation {
    opts: ProcessOptions,
    cgroups: Cgroups,
}

/// What [`ProcessIsolation::reconcile`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Sandbox names whose leftovers (processes, cgroup, directory) were removed.
    pub removed: Vec<String>,
}

impl ProcessIsolation {
    /// Checks that limits can be enforced (a usable cgroup hierarchy) and that the agent binary
    /// exists.
    pub fn new(opts: ProcessOptions) -> Result<ProcessIsolation, SandboxError> {
        let cgroups = Cgroups::detect().map_err(|e| SandboxError::Config(e.to_string()))?;
        if !opts.agent_program.exists() {
            return Err(SandboxError::Config(format!(
                "agent program {} does not exist",
                opts.agent_program.display()
            )));
        }
        std::fs::create_dir_all(&opts.runtime_dir).map_err(|source| SandboxError::Io {
            context: format!("creating {}", opts.runtime_dir.display()),
            source,
        })?;
        Ok(ProcessIsolation { opts, cgroups })
    }

    pub fn options(&self) -> &ProcessOptions {
        &self.opts
    }

    /// "v1" or "v2".
    pub fn cgroup_version(&self) -> &'static str {
        self.cgroups.version()
    }

    /// Removes sandboxes left by hearth processes that are gone: kills their processes, removes
    /// their cgroups and runtime directories. Sandboxes of live hearth processes are kept.
    pub fn reconcile(&self) -> ReconcileReport {
        let mut report = ReconcileReport::default();
        let mut names = self.cgroups.existing();
        if let Ok(rd) = std::fs::read_dir(&self.opts.runtime_dir) {
            for e in rd.flatten() {
                if let Some(n) = e.file_name().to_str()
                    && !names.iter().any(|x| x == n)
                {
                    names.push(n.to_string());
                }
            }
        }
        for name in names {
            let dir = self.opts.runtime_dir.join(&name);
            if owner_alive(&name) {
                continue;
            }
            let cg = self.cgroups.open(&name);
            if let Err(e) = cg.remove(std::time::Duration::from_secs(5)) {
                tracing::warn!(sandbox = %name, error = %e, "reconcile: cgroup not removed");
            }
            if dir.exists()
                && let Err(e) = std::fs::remove_dir_all(&dir)
            {
                tracing::warn!(sandbox = %name, error = %e, "reconcile: directory not removed");
            }
            tracing::info!(sandbox = %name, "reconcile: removed a stale process sandbox");
            report.removed.push(name);
        }
        report
    }
}

impl Isolation for ProcessIsolation {
    fn kind(&self) -> IsolationKind {
        IsolationKind::Process
    }

    fn start<'a>(
        &'a self,
        spec: &'a SandboxSpec,
    ) -> BoxFuture<'a, Result<Box<dyn Sandbox>, SandboxError>> {
        Box::pin(async move {
            let limits = Limits {
                memory_bytes: spec.memory_mib.max(16) * 1024 * 1024,
                cpus: u32::from(spec.cpus.max(1)),
                pids: self.opts.pids_max,
            };
            let sb = sandbox::start(&self.opts, &self.cgroups, spec, limits).await?;
            Ok(Box::new(sb) as Box<dyn Sandbox>)
        })
    }
}

/// `<pid>-<starttime>` of this process: the owner part of every resource name.
fn owner_stamp() -> String {
    let pid = std::process::id();
    format!("{pid}-{}", start_time(pid).unwrap_or(0))
}

fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22, counted after the ")" that ends the command name.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

/// Whether the hearth process named in a resource name (`…-<pid>-<starttime>`) still runs.
fn owner_alive(name: &str) -> bool {
    let mut it = name.rsplitn(3, '-');
    let (Some(st), Some(pid)) = (
        it.next().and_then(|s| s.parse::<u64>().ok()),
        it.next().and_then(|p| p.parse::<u32>().ok()),
    ) else {
        return false;
    };
    start_time(pid) == Some(st)
}

/// A resource name from the spec's name: `[A-Za-z0-9_.-]`, at most 24 bytes, a random part so
/// names never collide, and the owner (`<pid>-<starttime>`) so reconcile can tell orphans from
/// sandboxes of a live hearth process. Short enough for a unix socket path under the runtime dir.
pub(crate) fn resource_name(spec_name: &str) -> String {
    let clean: String = spec_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(24)
        .collect();
    let clean = if clean.is_empty() || clean.starts_with('.') {
        format!("s{clean}")
    } else {
        clean
    };
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{clean}-{}-{}", &suffix[..8], owner_stamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_names_are_safe_and_unique() {
        let a = resource_name("job 42/../x");
        assert!(a.starts_with("job_42_.._x-"), "{a}");
        assert!(!a.contains('/'));
        assert_ne!(resource_name("x"), resource_name("x"));
        assert!(resource_name("..").starts_with("s.."));
    }

    #[test]
    fn owner_in_the_name() {
        assert!(start_time(std::process::id()).is_some());
        assert!(owner_alive(&resource_name("job-7")));
        assert!(!owner_alive("job-7-abcdef12-999999999-1"));
        assert!(!owner_alive("garbage"));
    }
}
