//! Per-sandbox cgroups with memory, CPU and PID limits.
//!
//! cgroup v2 is preferred: `<our cgroup>/hearth/<name>` with `memory.max` (+ `memory.swap.max` 0),
//! `cpu.max` and `pids.max`; teardown uses `cgroup.kill`. Hosts still on the hybrid v1 layout
//! (memory/cpu/pids as separate v1 hierarchies, as on this project's CI host) get the same limits
//! through `memory.limit_in_bytes` (+ `memory.memsw.limit_in_bytes`), `cpu.cfs_quota_us` and
//! `pids.max`, one `hearth/<name>` directory per hierarchy. The hearth cgroup sits under the cgroup
//! hearth itself runs in, so limits placed on hearth still cover its sandboxes. When no hierarchy
//! with all three controllers is writable, creating a sandbox fails: process isolation never runs
//! a job without limits.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The directory (under hearth's own cgroup) that holds every sandbox's cgroup.
pub const HEARTH_CGROUP: &str = "hearth";

/// Cgroup set-up failures.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "no usable cgroup hierarchy with the memory, cpu and pids controllers ({0}); process \
         isolation refuses to run jobs without resource limits. Run hearth as root on a host with \
         cgroup v2 (or v1 memory/cpu/pids hierarchies), or in a delegated cgroup v2 subtree \
         (systemd: Delegate=yes)"
    )]
    Unavailable(String),
    #[error("cgroup {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("cgroup {path} still has processes after {waited:?}")]
    Busy { path: String, waited: Duration },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Limits for one sandbox.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub memory_bytes: u64,
    pub cpus: u32,
    pub pids: u64,
}

/// Where the hearth cgroup(s) live on this host.
#[derive(Debug, Clone)]
pub enum Cgroups {
    /// Unified hierarchy: `<hearth dir>`.
    V2 { hearth: PathBuf },
    /// Legacy hierarchies: the hearth dir in each of memory, cpu and pids.
    V1 {
        memory: PathBuf,
        cpu: PathBuf,
        pids: PathBuf,
    },
}

struct MountInfo {
    mount_point: PathBuf,
    root: String,
    fstype: String,
    super_opts: String,
}

fn mounts() -> io::Result<Vec<MountInfo>> {
    let text = fs::read_to_string("/proc/self/mountinfo")?;
    let mut out = Vec::new();
    for line in text.lines() {
        // id parent major:minor root mount-point opts [optional...] - fstype source super-opts
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        if l.len() < 5 || r.len() < 3 {
            continue;
        }
        out.push(MountInfo {
            mount_point: PathBuf::from(unescape(l[4])),
            root: unescape(l[3]),
            fstype: r[0].to_string(),
            super_opts: r[2].to_string(),
        });
    }
    Ok(out)
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `/proc/self/cgroup` lines: (hierarchy controllers, path).
fn own_cgroups() -> io::Result<Vec<(String, String)>> {
    let text = fs::read_to_string("/proc/self/cgroup")?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let _id = it.next()?;
            let ctrls = it.next()?.to_string();
            let path = it.next()?.to_string();
            Some((ctrls, path))
        })
        .collect())
}

/// `mount_point` + (`cgroup_path` relative to the mount's root).
fn join_cgroup(m: &MountInfo, cgroup_path: &str) -> PathBuf {
    let rel = cgroup_path
        .strip_prefix(m.root.trim_end_matches('/'))
        .unwrap_or(cgroup_path);
    m.mount_point.join(rel.trim_start_matches('/'))
}

impl Cgroups {
    /// Finds a usable hierarchy and creates the hearth directory in it (v2: with the controllers
    /// enabled for its children).
    pub fn detect() -> Result<Cgroups, CgroupError> {
        let mounts = mounts().map_err(io_err(Path::new("/proc/self/mountinfo")))?;
        let own = own_cgroups().map_err(io_err(Path::new("/proc/self/cgroup")))?;
        let mut reasons = Vec::new();
        match Cgroups::detect_v2(&mounts, &own) {
            Ok(c) => return Ok(c),
            Err(r) => reasons.push(format!("cgroup v2: {r}")),
        }
        match Cgroups::detect_v1(&mounts, &own) {
            Ok(c) => return Ok(c),
            Err(r) => reasons.push(format!("cgroup v1: {r}")),
        }
        Err(CgroupError::Unavailable(reasons.join("; ")))
    }

    fn detect_v2(mounts: &[MountInfo], own: &[(String, String)]) -> Result<Cgroups, String> {
        let m = mounts
            .iter()
            .find(|m| m.fstype == "cgroup2")
            .ok_or("no cgroup2 mount")?;
        let path = own
            .iter()
            .find(|(c, _)| c.is_empty())
            .map(|(_, p)| p.as_str())
            .ok_or("no 0:: line in /proc/self/cgroup")?;
        let base = join_cgroup(m, path);
        let available = fs::read_to_string(base.join("cgroup.controllers"))
            .map_err(|e| format!("{}: {e}", base.display()))?;
        let have: Vec<&str> = available.split_whitespace().collect();
        let missing: Vec<&str> = ["memory", "cpu", "pids"]
            .into_iter()
            .filter(|c| !have.contains(c))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "{} lacks controller(s) {}",
                base.display(),
                missing.join(", ")
            ));
        }
        let enable = "+memory +cpu +pids";
        let delegate = |dir: &Path| -> Result<PathBuf, String> {
            fs::write(dir.join("cgroup.subtree_control"), enable).map_err(|e| {
                if e.raw_os_error() == Some(libc::EBUSY) {
                    format!(
                        "{} has processes, so it cannot delegate controllers to sub-cgroups (run \
                         hearth in a leaf of a delegated subtree, e.g. systemd DelegateSubgroup=)",
                        dir.display()
                    )
                } else {
                    format!("enabling controllers in {}: {e}", dir.display())
                }
            })?;
            let hearth = dir.join(HEARTH_CGROUP);
            mkdir(&hearth).map_err(|e| format!("{}: {e}", hearth.display()))?;
            fs::write(hearth.join("cgroup.subtree_control"), enable)
                .map_err(|e| format!("enabling controllers in {}: {e}", hearth.display()))?;
            Ok(hearth)
        };
        match delegate(&base) {
            Ok(hearth) => Ok(Cgroups::V2 { hearth }),
            // hearth's own cgroup holds processes (a login session, a service without
            // Delegate=): as root, fall back to the top of the hierarchy, as container runtimes do.
            Err(e) if super::is_root() && base != m.mount_point => {
                tracing::info!(reason = %e, "using {}/{HEARTH_CGROUP}", m.mount_point.display());
                delegate(&m.mount_point)
                    .map(|hearth| Cgroups::V2 { hearth })
                    .map_err(|e2| format!("{e}; {e2}"))
            }
            Err(e) => Err(e),
        }
    }

    fn detect_v1(mounts: &[MountInfo], own: &[(String, String)]) -> Result<Cgroups, String> {
        let find = |ctrl: &str| -> Result<PathBuf, String> {
            let m = mounts
                .iter()
                .find(|m| m.fstype == "cgroup" && m.super_opts.split(',').any(|o| o == ctrl))
                .ok_or_else(|| format!("no v1 {ctrl} hierarchy"))?;
            let path = own
                .iter()
                .find(|(c, _)| c.split(',').any(|c| c == ctrl))
                .map(|(_, p)| p.as_str())
                .unwrap_or("/");
            let dir = join_cgroup(m, path).join(HEARTH_CGROUP);
            mkdir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            Ok(dir)
        };
        Ok(Cgroups::V1 {
            memory: find("memory")?,
            cpu: find("cpu")?,
            pids: find("pids")?,
        })
    }

    /// "v2" or "v1".
    pub fn version(&self) -> &'static str {
        match self {
            Cgroups::V2 { .. } => "v2",
            Cgroups::V1 { .. } => "v1",
        }
    }

    fn hearth_dirs(&self) -> Vec<PathBuf> {
        match self {
            Cgroups::V2 { hearth } => vec![hearth.clone()],
            Cgroups::V1 { memory, cpu, pids } => vec![memory.clone(), cpu.clone(), pids.clone()],
        }
    }

    /// Creates `hearth/<name>` with `limits`.
    pub fn create(&self, name: &str, limits: Limits) -> Result<SandboxCgroup, CgroupError> {
        let cg = SandboxCgroup {
            dirs: self.hearth_dirs().iter().map(|d| d.join(name)).collect(),
            v2: matches!(self, Cgroups::V2 { .. }),
        };
        for d in &cg.dirs {
            mkdir(d).map_err(io_err(d))?;
        }
        if let Err(e) = cg.apply(limits) {
            let _ = cg.remove(Duration::from_secs(1));
            return Err(e);
        }
        Ok(cg)
    }

    /// Names of the sandbox cgroups that exist now.
    pub fn existing(&self) -> Vec<String> {
        let mut names = Vec::new();
        for d in self.hearth_dirs() {
            let Ok(rd) = fs::read_dir(&d) else { continue };
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir())
                    && let Some(n) = e.file_name().to_str()
                    && !names.iter().any(|x: &String| x == n)
                {
                    names.push(n.to_string());
                }
            }
        }
        names
    }

    /// The handle of an existing sandbox cgroup (for reconcile).
    pub fn open(&self, name: &str) -> SandboxCgroup {
        SandboxCgroup {
            dirs: self.hearth_dirs().iter().map(|d| d.join(name)).collect(),
            v2: matches!(self, Cgroups::V2 { .. }),
        }
    }
}

/// Creates `p` unless it exists; either way it must be writable by us.
fn mkdir(p: &Path) -> io::Result<()> {
    match fs::create_dir(p) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        r => r?,
    }
    let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str()))
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: access with a NUL-terminated path.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One sandbox's cgroup directories (one per hierarchy).
#[derive(Debug, Clone)]
pub struct SandboxCgroup {
    dirs: Vec<PathBuf>,
    v2: bool,
}

impl SandboxCgroup {
    fn apply(&self, l: Limits) -> Result<(), CgroupError> {
        let w = |dir: &Path, file: &str, value: String| -> Result<(), CgroupError> {
            let p = dir.join(file);
            fs::write(&p, value).map_err(io_err(&p))
        };
        let period: u64 = 100_000;
        let quota = period * u64::from(l.cpus.max(1));
        if self.v2 {
            let d = &self.dirs[0];
            w(d, "memory.max", l.memory_bytes.to_string())?;
            if d.join("memory.swap.max").exists() {
                w(d, "memory.swap.max", "0".into())?;
            }
            w(d, "cpu.max", format!("{quota} {period}"))?;
            w(d, "pids.max", l.pids.to_string())?;
        } else {
            let (mem, cpu, pids) = (&self.dirs[0], &self.dirs[1], &self.dirs[2]);
            w(mem, "memory.limit_in_bytes", l.memory_bytes.to_string())?;
            if mem.join("memory.memsw.limit_in_bytes").exists() {
                w(
                    mem,
                    "memory.memsw.limit_in_bytes",
                    l.memory_bytes.to_string(),
                )?;
            }
            w(cpu, "cpu.cfs_period_us", period.to_string())?;
            w(cpu, "cpu.cfs_quota_us", quota.to_string())?;
            w(pids, "pids.max", l.pids.to_string())?;
        }
        Ok(())
    }

    /// The `cgroup.procs` files a new process must join (one per hierarchy).
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// The directories (tests check they are gone after teardown).
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Host PIDs of every process in the cgroup (any hierarchy).
    pub fn pids(&self) -> Vec<i32> {
        let mut out = Vec::new();
        for f in self.procs_files() {
            if let Ok(text) = fs::read_to_string(&f) {
                for p in text
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                {
                    if !out.contains(&p) {
                        out.push(p);
                    }
                }
            }
        }
        out
    }

    /// SIGKILLs everything in the cgroup (v2: `cgroup.kill`).
    pub fn kill_all(&self) {
        if self.v2 && fs::write(self.dirs[0].join("cgroup.kill"), "1").is_ok() {
            return;
        }
        for pid in self.pids() {
            // SAFETY: kill takes plain integers; the pid came from this sandbox's cgroup.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }

    /// Kills what is left, waits (up to `wait`) for the cgroup to empty and removes it.
    pub fn remove(&self, wait: Duration) -> Result<(), CgroupError> {
        let start = Instant::now();
        loop {
            let live: Vec<&PathBuf> = self.dirs.iter().filter(|d| d.exists()).collect();
            if live.is_empty() {
                return Ok(());
            }
            if !self.pids().is_empty() {
                self.kill_all();
            }
            let mut busy = None;
            for d in live {
                match fs::remove_dir(d) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => busy = Some(d.clone()),
                    Err(e) => return Err(io_err(d)(e)),
                }
            }
            if let Some(d) = busy {
                if start.elapsed() >= wait {
                    return Err(CgroupError::Busy {
                        path: d.display().to_string(),
                        waited: wait,
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// How many times the memory limit made the kernel kill a process (v2 `memory.events`
    /// `oom_kill`, v1 `memory.oom_control` `oom_kill`), when the kernel reports it.
    pub fn oom_kills(&self) -> Option<u64> {
        let (file, key) = if self.v2 {
            ("memory.events", "oom_kill")
        } else {
            ("memory.oom_control", "oom_kill")
        };
        let text = fs::read_to_string(self.dirs[0].join(file)).ok()?;
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok()).flatten()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_v2(controllers: &str) -> (tempfile::TempDir, Vec<MountInfo>, Vec<(String, String)>) {
        let d = tempfile::tempdir().unwrap();
        let own = d.path().join("svc");
        fs::create_dir(&own).unwrap();
        fs::write(own.join("cgroup.controllers"), controllers).unwrap();
        let mounts = vec![MountInfo {
            mount_point: d.path().to_path_buf(),
            root: "/".into(),
            fstype: "cgroup2".into(),
            super_opts: "rw".into(),
        }];
        (d, mounts, vec![(String::new(), "/svc".into())])
    }

    #[test]
    fn v2_delegates_controllers_and_writes_limits() {
        let (d, mounts, own) = fake_v2("cpuset cpu io memory hugetlb pids rdma");
        let cg = Cgroups::detect_v2(&mounts, &own).unwrap();
        let hearth = d.path().join("svc/hearth");
        assert!(matches!(&cg, Cgroups::V2 { hearth: h } if *h == hearth));
        for dir in [d.path().join("svc"), hearth.clone()] {
            assert_eq!(
                fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap(),
                "+memory +cpu +pids"
            );
        }
        // A real cgroup2 directory comes with its interface files; fake the optional one.
        fs::create_dir(hearth.join("job-1")).unwrap();
        fs::write(hearth.join("job-1/memory.swap.max"), "max").unwrap();
        let sb = cg
            .create(
                "job-1",
                Limits {
                    memory_bytes: 256 << 20,
                    cpus: 2,
                    pids: 100,
                },
            )
            .unwrap();
        let read = |f: &str| fs::read_to_string(hearth.join("job-1").join(f)).unwrap();
        assert_eq!(read("memory.max"), (256u64 << 20).to_string());
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("cpu.max"), "200000 100000");
        assert_eq!(read("pids.max"), "100");
        assert_eq!(sb.procs_files(), vec![hearth.join("job-1/cgroup.procs")]);
        assert_eq!(cg.existing(), vec!["job-1".to_string()]);
    }

    #[test]
    fn v2_without_controllers_is_refused() {
        let (_d, mounts, own) = fake_v2("cpu io");
        let e = Cgroups::detect_v2(&mounts, &own).unwrap_err();
        assert!(e.contains("lacks controller(s) memory, pids"), "{e}");
    }

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/tail\\04"), "/tail\\04");
    }

    #[test]
    fn cgroup_path_joins_relative_to_mount_root() {
        let m = MountInfo {
            mount_point: "/sys/fs/cgroup/memory".into(),
            root: "/".into(),
            fstype: "cgroup".into(),
            super_opts: "rw,memory".into(),
        };
        assert_eq!(
            join_cgroup(&m, "/a/b"),
            PathBuf::from("/sys/fs/cgroup/memory/a/b")
        );
        let m2 = MountInfo {
            root: "/a".into(),
            ..m
        };
        assert_eq!(
            join_cgroup(&m2, "/a/b"),
            PathBuf::from("/sys/fs/cgroup/memory/b")
        );
    }
}
