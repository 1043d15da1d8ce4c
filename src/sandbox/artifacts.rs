//! Finding the guest kernel and root filesystem: explicit paths (`--kernel`, `--rootfs`), else
//! `HEARTH_KERNEL` / `HEARTH_ROOTFS`, else the newest finished build in the artifact cache
//! (`$HEARTH_CACHE`, default `~/.cache/hearth`: `kernel/vmlinux-<key>/vmlinux`,
//! `rootfs/debian-<key>/rootfs.ext4`, each directory marked complete by a `done` file; see
//! kernel/build.sh and rootfs/build.sh).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// A kernel and a root filesystem image to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestArtifacts {
    pub kernel: PathBuf,
    pub rootfs: PathBuf,
}

/// Errors locating the guest artifacts.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error(
        "no guest {what} found ({tried}); build the artifacts with `eval \"$(harness/artifacts.sh)\"` \
         (which exports HEARTH_KERNEL and HEARTH_ROOTFS) or pass --{flag}"
    )]
    NotFound {
        what: &'static str,
        flag: &'static str,
        tried: String,
    },
    #[error("guest {what} {path} (from {source_name}) is not a readable file")]
    Missing {
        what: &'static str,
        path: PathBuf,
        source_name: String,
    },
}

/// Where to look, so tests can point at their own environment and cache.
#[derive(Debug, Clone, Default)]
pub struct ArtifactSearch {
    /// Explicit kernel (the `--kernel` flag).
    pub kernel: Option<PathBuf>,
    /// Explicit rootfs (the `--rootfs` flag).
    pub rootfs: Option<PathBuf>,
    /// `HEARTH_KERNEL`.
    pub env_kernel: Option<PathBuf>,
    /// `HEARTH_ROOTFS`.
    pub env_rootfs: Option<PathBuf>,
    /// The artifact cache directory.
    pub cache: Option<PathBuf>,
}

impl ArtifactSearch {
    /// Explicit paths plus this process's environment (`HEARTH_KERNEL`, `HEARTH_ROOTFS`,
    /// `HEARTH_CACHE`, `XDG_CACHE_HOME`, `HOME`).
    pub fn from_env(kernel: Option<PathBuf>, rootfs: Option<PathBuf>) -> Self {
        let var = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let cache = var("HEARTH_CACHE")
            .or_else(|| var("XDG_CACHE_HOME").map(|c| c.join("hearth")))
            .or_else(|| var("HOME").map(|h| h.join(".cache/hearth")));
        Self {
            kernel,
            rootfs,
            env_kernel: var("HEARTH_KERNEL"),
            env_rootfs: var("HEARTH_ROOTFS"),
            cache,
        }
    }

    /// Resolves both artifacts.
    pub fn resolve(&self) -> Result<GuestArtifacts, ArtifactError> {
        let cache = self.cache.as_deref();
        let kernel = pick(
            "kernel",
            "kernel",
            self.kernel.as_deref(),
            self.env_kernel.as_deref(),
            "HEARTH_KERNEL",
            cache.map(|c| (c.join("kernel"), "vmlinux-", "vmlinux")),
        )?;
        let rootfs = pick(
            "rootfs",
            "rootfs",
            self.rootfs.as_deref(),
            self.env_rootfs.as_deref(),
            "HEARTH_ROOTFS",
            cache.map(|c| (c.join("rootfs"), "debian-", "rootfs.ext4")),
        )?;
        Ok(GuestArtifacts { kernel, rootfs })
    }
}

fn pick(
    what: &'static str,
    flag: &'static str,
    explicit: Option<&Path>,
    env: Option<&Path>,
    env_name: &str,
    cached: Option<(PathBuf, &str, &str)>,
) -> Result<PathBuf, ArtifactError> {
    let check = |p: &Path, source_name: String| {
        if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(ArtifactError::Missing {
                what,
                path: p.to_path_buf(),
                source_name,
            })
        }
    };
    if let Some(p) = explicit {
        return check(p, format!("--{flag}"));
    }
    if let Some(p) = env {
        return check(p, env_name.to_string());
    }
    let mut tried = format!("no --{flag}, {env_name} unset");
    if let Some((dir, prefix, file)) = cached {
        if let Some(p) = newest_cached(&dir, prefix, file) {
            return Ok(p);
        }
        tried.push_str(&format!(", nothing in {}/{prefix}*/{file}", dir.display()));
    }
    Err(ArtifactError::NotFound { what, flag, tried })
}

/// The newest `DIR/PREFIX*/FILE` whose directory has a `done` marker (or, for caches written
/// before markers existed, the file itself).
fn newest_cached(dir: &Path, prefix: &str, file: &str) -> Option<PathBuf> {
    let entries = std::fs::read_dir(dir).ok()?;
    let mut best: Option<(SystemTime, PathBuf)> = None;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(prefix) {
            continue;
        }
        let candidate = entry.path().join(file);
        if !candidate.is_file() || !entry.path().join("done").is_file() {
            continue;
        }
        let Ok(modified) = candidate.metadata().and_then(|m| m.modified()) else {
            continue;
        };
        if best.as_ref().is_none_or(|(t, _)| modified > *t) {
            best = Some((modified, candidate));
        }
    }
    best.map(|(_, p)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    #[test]
    fn explicit_beats_env_beats_cache() {
        let d = tempfile::tempdir().unwrap();
        let flag = d.path().join("flag-vmlinux");
        let env = d.path().join("env-vmlinux");
        let envr = d.path().join("env-rootfs");
        touch(&flag);
        touch(&env);
        touch(&envr);
        let s = ArtifactSearch {
            kernel: Some(flag.clone()),
            env_kernel: Some(env.clone()),
            env_rootfs: Some(envr.clone()),
            ..Default::default()
        };
        let a = s.resolve().unwrap();
        assert_eq!(a.kernel, flag);
        assert_eq!(a.rootfs, envr);
        let s = ArtifactSearch {
            env_kernel: Some(env.clone()),
            env_rootfs: Some(envr.clone()),
            ..Default::default()
        };
        assert_eq!(s.resolve().unwrap().kernel, env);
    }

    #[test]
    fn newest_finished_cache_entry_wins() {
        let d = tempfile::tempdir().unwrap();
        let c = d.path();
        let old = c.join("kernel/vmlinux-aaa/vmlinux");
        touch(&old);
        touch(&c.join("kernel/vmlinux-aaa/done"));
        std::thread::sleep(std::time::Duration::from_millis(20));
        let new = c.join("kernel/vmlinux-bbb/vmlinux");
        touch(&new);
        touch(&c.join("kernel/vmlinux-bbb/done"));
        std::thread::sleep(std::time::Duration::from_millis(20));
        // Newest, but unfinished (no `done`): ignored.
        touch(&c.join("kernel/vmlinux-ccc/vmlinux"));
        let rootfs = c.join("rootfs/debian-x/rootfs.ext4");
        touch(&rootfs);
        touch(&c.join("rootfs/debian-x/done"));
        touch(&c.join("rootfs/tiny-y/rootfs-tiny.ext4"));
        let s = ArtifactSearch {
            cache: Some(c.to_path_buf()),
            ..Default::default()
        };
        let a = s.resolve().unwrap();
        assert_eq!(a.kernel, new);
        assert_eq!(a.rootfs, rootfs);
    }

    #[test]
    fn nothing_found_names_the_build_script() {
        let d = tempfile::tempdir().unwrap();
        let s = ArtifactSearch {
            cache: Some(d.path().to_path_buf()),
            ..Default::default()
        };
        let e = s.resolve().unwrap_err().to_string();
        assert!(e.contains("harness/artifacts.sh"), "{e}");
        assert!(e.contains("--kernel"), "{e}");
        let s = ArtifactSearch {
            env_kernel: Some(d.path().join("missing")),
            ..Default::default()
        };
        let e = s.resolve().unwrap_err().to_string();
        assert!(e.contains("HEARTH_KERNEL"), "{e}");
    }
}
