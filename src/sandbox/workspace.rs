//! The VM workspace: a per-sandbox scratch directory, the host directory packed into an ext4
//! image (`mkfs.ext4 -d`) that the guest mounts at `/work`, and mirroring `/work` back into the
//! host directory after the guest's tree was downloaded into a staging directory.

use super::SandboxError;
use std::path::{Path, PathBuf};
use std::process::Command;

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
    let context = context.into();
    move |source| SandboxError::Io { context, source }
}

/// A per-sandbox directory (`$TMPDIR/hearth-<pid>.<name>-XXXXXX`, pid = the owning hearth
/// process) holding the console log, the workspace image and the sync-back staging tree. Removed
/// on drop unless [`ScratchDir::keep`] was called (a failed boot keeps its console log for the
/// user, marked by a [`KEPT_MARKER`] file); [`reconcile_scratch_dirs`] removes the unmarked ones
/// of hearth processes that died without cleaning up.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
    keep: bool,
}

impl ScratchDir {
    pub fn new(name: &str) -> Result<Self, SandboxError> {
        let safe: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .take(40)
            .collect();
        let dir = tempfile::Builder::new()
            .prefix(&format!("hearth-{}.{safe}-", std::process::id()))
            .tempdir()
            .map_err(io("creating the sandbox scratch directory"))?;
        Ok(Self {
            path: dir.keep(),
            keep: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Leaves the directory (and the files in it) in place on drop, and out of reconcile.
    pub fn keep(&mut self) {
        self.keep = true;
        if let Err(e) = std::fs::write(self.path.join(KEPT_MARKER), b"") {
            tracing::warn!(path = %self.path.display(), error = %e, "could not mark the scratch directory as kept");
        }
    }

    /// Removes the directory now.
    pub fn remove(mut self) -> Result<(), SandboxError> {
        self.keep = true; // drop does nothing more
        match std::fs::remove_dir_all(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(SandboxError::Io {
                context: format!("removing {}", self.path.display()),
                source: e,
            }),
            _ => Ok(()),
        }
    }
}

/// The file that marks a scratch directory kept on purpose (a failed boot's console log).
pub const KEPT_MARKER: &str = "KEPT";

/// Removes the scratch directories under `tmp` (normally `std::env::temp_dir()`) whose owning
/// hearth process is gone and that were not kept on purpose: what a crashed or killed hearth
/// left (workspace images can be large). Returns what it removed.
pub fn reconcile_scratch_dirs(tmp: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("hearth-"))
            .and_then(|n| n.split_once('.'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let path = entry.path();
        let owner_alive = Path::new(&format!("/proc/{pid}")).exists();
        if owner_alive || !path.is_dir() || path.join(KEPT_MARKER).exists() {
            continue;
        }
        match std::fs::remove_dir_all(&path) {
            Ok(()) => removed.push(path),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "could not remove a stale sandbox scratch directory")
            }
        }
    }
    removed
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if !self.keep
            && let Err(e) = std::fs::remove_dir_all(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove the sandbox scratch directory");
        }
    }
}

/// The `mkfs.ext4` to run: `HEARTH_MKFS_EXT4`, else the first of PATH, /usr/sbin, /sbin.
fn mkfs_ext4() -> PathBuf {
    if let Some(p) = std::env::var_os("HEARTH_MKFS_EXT4").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join("mkfs.ext4"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("mkfs.ext4"))
}

/// Creates an ext4 image of `mib` MiB at `image` holding the tree at `src`.
pub fn make_image(src: &Path, image: &Path, mib: u64) -> Result<(), SandboxError> {
    if !src.is_dir() {
        return Err(SandboxError::Workspace(format!(
            "{} is not a directory",
            src.display()
        )));
    }
    if mib < 8 {
        return Err(SandboxError::Config(format!(
            "the workspace disk must be at least 8 MiB, got {mib}"
        )));
    }
    let mkfs = mkfs_ext4();
    let out = Command::new(&mkfs)
        .arg("-q")
        .arg("-d")
        .arg(src)
        .args(["-E", "root_owner=0:0", "-F"])
        .arg(image)
        .arg(format!("{mib}M"))
        .output()
        .map_err(io(format!(
            "running {} (install e2fsprogs or set HEARTH_MKFS_EXT4)",
            mkfs.display()
        )))?;
    if !out.status.success() {
        return Err(SandboxError::Workspace(format!(
            "{} -d {} failed ({}): {}",
            mkfs.display(),
            src.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Makes `dest` hold exactly what `staging` holds (moving files out of `staging`): entries of
/// `dest` absent from `staging` are removed, the rest are replaced. A top-level `lost+found`
/// that mkfs created is not brought back unless `dest` already had one.
pub fn mirror_into(staging: &Path, dest: &Path) -> Result<(), SandboxError> {
    let lost_found = staging.join("lost+found");
    if lost_found.is_dir() && !dest.join("lost+found").exists() {
        std::fs::remove_dir_all(&lost_found).map_err(io("removing lost+found"))?;
    }
    mirror_dir(staging, dest)
}

fn mirror_dir(from: &Path, to: &Path) -> Result<(), SandboxError> {
    // Remove what the guest deleted (or replaced by another kind of file).
    for entry in std::fs::read_dir(to).map_err(io(format!("reading {}", to.display())))? {
        let entry = entry.map_err(io(format!("reading {}", to.display())))?;
        let theirs = from.join(entry.file_name());
        let mine = entry.path();
        let keep = match (std::fs::symlink_metadata(&theirs), entry.file_type()) {
            (Ok(t), Ok(m)) => t.is_dir() && m.is_dir(),
            _ => false,
        };
        if !keep {
            remove_any(&mine)?;
        }
    }
    for entry in std::fs::read_dir(from).map_err(io(format!("reading {}", from.display())))? {
        let entry = entry.map_err(io(format!("reading {}", from.display())))?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let ty = entry
            .file_type()
            .map_err(io(format!("reading {}", src.display())))?;
        if ty.is_dir() {
            if !dst.is_dir() {
                std::fs::create_dir(&dst).map_err(io(format!("creating {}", dst.display())))?;
            }
            mirror_dir(&src, &dst)?;
            if let Ok(meta) = std::fs::metadata(&src) {
                let _ = std::fs::set_permissions(&dst, meta.permissions());
            }
        } else if std::fs::rename(&src, &dst).is_err() {
            // Another filesystem: copy (symlinks are recreated, not followed).
            if ty.is_symlink() {
                let target = std::fs::read_link(&src)
                    .map_err(io(format!("reading link {}", src.display())))?;
                std::os::unix::fs::symlink(target, &dst)
                    .map_err(io(format!("creating link {}", dst.display())))?;
            } else {
                std::fs::copy(&src, &dst).map_err(io(format!(
                    "copying {} to {}",
                    src.display(),
                    dst.display()
                )))?;
            }
        }
    }
    Ok(())
}

fn remove_any(p: &Path) -> Result<(), SandboxError> {
    let meta = std::fs::symlink_metadata(p).map_err(io(format!("reading {}", p.display())))?;
    let r = if meta.is_dir() {
        std::fs::remove_dir_all(p)
    } else {
        std::fs::remove_file(p)
    };
    r.map_err(io(format!("removing {}", p.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconcile_removes_only_unkept_dirs_of_dead_owners() {
        let tmp = tempfile::tempdir().unwrap();
        // Above the kernel's pid_max (4194304 at most): never a live process.
        let dead = tmp.path().join("hearth-99999999.job-1-abc");
        let dead_kept = tmp.path().join("hearth-99999999.job-2-def");
        let live = tmp
            .path()
            .join(format!("hearth-{}.job-3-ghi", std::process::id()));
        let other = tmp.path().join("hearth-notapid");
        for d in [&dead, &dead_kept, &live, &other] {
            std::fs::create_dir_all(d.join("sub")).unwrap();
            std::fs::write(d.join("workspace.ext4"), b"img").unwrap();
        }
        std::fs::write(dead_kept.join(KEPT_MARKER), b"").unwrap();
        assert_eq!(reconcile_scratch_dirs(tmp.path()), vec![dead.clone()]);
        assert!(!dead.exists());
        assert!(dead_kept.is_dir() && live.is_dir() && other.is_dir());
    }

    #[test]
    fn scratch_dir_is_removed_on_drop_unless_kept() {
        let d = ScratchDir::new("t/x y").unwrap();
        let p = d.path().to_path_buf();
        assert!(p.is_dir());
        assert!(
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with(&format!("hearth-{}.t_x_y-", std::process::id()))
        );
        drop(d);
        assert!(!p.exists());
        let mut d = ScratchDir::new("kept").unwrap();
        d.keep();
        let p = d.path().to_path_buf();
        drop(d);
        assert!(p.is_dir());
        std::fs::remove_dir_all(p).unwrap();
    }

    #[test]
    fn mirror_replaces_adds_and_deletes() {
        let t = tempfile::tempdir().unwrap();
        let (staging, dest) = (t.path().join("s"), t.path().join("d"));
        std::fs::create_dir_all(staging.join("sub/new")).unwrap();
        std::fs::create_dir_all(staging.join("lost+found")).unwrap();
        std::fs::write(staging.join("keep.txt"), b"changed").unwrap();
        std::fs::write(staging.join("sub/new/made.bin"), [0xff, 0, 0xfe]).unwrap();
        std::fs::create_dir_all(dest.join("sub/gone")).unwrap();
        std::fs::write(dest.join("keep.txt"), b"old").unwrap();
        std::fs::write(dest.join("deleted.txt"), b"x").unwrap();
        std::fs::write(dest.join("sub/gone/f"), b"x").unwrap();
        mirror_into(&staging, &dest).unwrap();
        assert_eq!(std::fs::read(dest.join("keep.txt")).unwrap(), b"changed");
        assert_eq!(
            std::fs::read(dest.join("sub/new/made.bin")).unwrap(),
            [0xff, 0, 0xfe]
        );
        assert!(!dest.join("deleted.txt").exists());
        assert!(!dest.join("sub/gone").exists());
        assert!(!dest.join("lost+found").exists());
    }

    #[test]
    fn make_image_holds_the_tree() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("sub/f.txt"), b"payload\n").unwrap();
        let img = t.path().join("ws.ext4");
        make_image(&src, &img, 16).unwrap();
        assert_eq!(std::fs::metadata(&img).unwrap().len(), 16 << 20);
        // debugfs (e2fsprogs, like mkfs.ext4) reads the file back out of the image.
        let out = Command::new("debugfs")
            .args(["-R", "cat /sub/f.txt"])
            .arg(&img)
            .output()
            .expect("debugfs (e2fsprogs) is needed for this test");
        assert_eq!(
            out.stdout,
            b"payload\n",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn make_image_rejects_a_missing_directory() {
        let t = tempfile::tempdir().unwrap();
        let e = make_image(&t.path().join("nope"), &t.path().join("img"), 64).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
    }
}
