//! Extracts a tar stream under a destination directory without ever touching
//! anything outside it: entry paths are checked component by component,
//! existing symlinks are never traversed, and files are opened with O_NOFOLLOW.

use super::ArchiveError;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use tar::EntryType;

/// What an extraction wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ExtractStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub bytes: u64,
}

/// Turns a tar entry path into a relative path with only normal components.
/// Absolute paths, `..` and Windows prefixes are refused; `.` is dropped.
pub fn sanitize_entry_path(raw: &Path) -> Result<PathBuf, ArchiveError> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(ArchiveError::PathEscape {
                    path: raw.into(),
                    reason: "contains '..'",
                });
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(ArchiveError::PathEscape {
                    path: raw.into(),
                    reason: "is absolute",
                });
            }
        }
    }
    Ok(out)
}

/// Extracts `reader` (a tar stream) under `dest`, which is created if missing.
/// Stops at the first refused or failing entry; entries before it stay written.
pub fn extract_tar<R: Read>(reader: R, dest: &Path) -> Result<ExtractStats, ArchiveError> {
    fs::create_dir_all(dest).map_err(|e| ArchiveError::io("creating", dest, e))?;
    let dest = fs::canonicalize(dest).map_err(|e| ArchiveError::io("resolving", dest, e))?;
    if !dest.is_dir() {
        return Err(ArchiveError::DestNotDir(dest));
    }
    let mut archive = tar::Archive::new(reader);
    let mut stats = ExtractStats::default();
    // Directory modes are applied at the end so read-only dirs can still be filled.
    let mut dir_modes: Vec<(PathBuf, u32)> = Vec::new();
    for entry in archive.entries().map_err(ArchiveError::Tar)? {
        let mut entry = entry.map_err(ArchiveError::Tar)?;
        let raw = entry.path().map_err(ArchiveError::Tar)?.into_owned();
        let rel = sanitize_entry_path(&raw)?;
        if rel.as_os_str().is_empty() {
            continue; // the archive root itself ("./")
        }
        let target = dest.join(&rel);
        ensure_parents(&dest, &rel)?;
        let mode = entry.header().mode().map_err(ArchiveError::Tar)? & 0o7777;
        match entry.header().entry_type() {
            EntryType::Directory => {
                match fs::symlink_metadata(&target) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        return Err(ArchiveError::UnsafeTarget {
                            path: target,
                            reason: "exists and is not a directory",
                        });
                    }
                    Err(_) => fs::create_dir(&target)
                        .map_err(|e| ArchiveError::io("creating directory", &target, e))?,
                }
                dir_modes.push((target, mode));
                stats.dirs += 1;
            }
            EntryType::Regular | EntryType::Continuous => {
                remove_non_dir(&target)?;
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&target)
                    .map_err(|e| ArchiveError::io("creating file", &target, e))?;
                stats.bytes += std::io::copy(&mut entry, &mut file).map_err(ArchiveError::Tar)?;
                file.set_permissions(fs::Permissions::from_mode(mode))
                    .map_err(|e| ArchiveError::io("setting mode of", &target, e))?;
                if let Ok(mtime) = entry.header().mtime() {
                    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime);
                    let _ = file.set_modified(t);
                }
                stats.files += 1;
            }
            EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(ArchiveError::Tar)?
                    .ok_or_else(|| ArchiveError::Tar(invalid("symlink without target")))?
                    .into_owned();
                remove_non_dir(&target)?;
                std::os::unix::fs::symlink(&link, &target)
                    .map_err(|e| ArchiveError::io("creating symlink", &target, e))?;
                stats.symlinks += 1;
            }
            EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(ArchiveError::Tar)?
                    .ok_or_else(|| ArchiveError::Tar(invalid("hard link without target")))?
                    .into_owned();
                let link_rel = sanitize_entry_path(&link)?;
                ensure_parents(&dest, &link_rel)?;
                let source = dest.join(&link_rel);
                match fs::symlink_metadata(&source) {
                    Ok(m) if m.is_file() => {}
                    _ => {
                        return Err(ArchiveError::UnsafeTarget {
                            path: source,
                            reason: "hard link target is not a regular file inside the destination",
                        });
                    }
                }
                remove_non_dir(&target)?;
                fs::hard_link(&source, &target)
                    .map_err(|e| ArchiveError::io("creating hard link", &target, e))?;
                stats.hardlinks += 1;
            }
            other => {
                tracing::warn!(path = ?rel, kind = ?other, "skipping unsupported tar entry type");
            }
        }
    }
    for (dir, mode) in dir_modes.into_iter().rev() {
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode))
            .map_err(|e| ArchiveError::io("setting mode of", &dir, e))?;
    }
    Ok(stats)
}

fn invalid(msg: &'static str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

/// Creates the parent directories of `rel` under `dest`, refusing to pass
/// through anything that is not a real directory (symlinks in particular).
fn ensure_parents(dest: &Path, rel: &Path) -> Result<(), ArchiveError> {
    let mut cur = dest.to_path_buf();
    let Some(parent) = rel.parent() else {
        return Ok(());
    };
    for c in parent.components() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(ArchiveError::UnsafeTarget {
                    path: cur,
                    reason: "a parent component is a symlink",
                });
            }
            Ok(_) => {
                return Err(ArchiveError::UnsafeTarget {
                    path: cur,
                    reason: "a parent component is not a directory",
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir(&cur)
                    .map_err(|e| ArchiveError::io("creating directory", &cur, e))?;
            }
            Err(e) => return Err(ArchiveError::io("inspecting", &cur, e)),
        }
    }
    Ok(())
}

/// Removes an existing file or symlink at `path` (never following it);
/// refuses to replace a directory with a non-directory.
fn remove_non_dir(path: &Path) -> Result<(), ArchiveError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Err(ArchiveError::UnsafeTarget {
            path: path.into(),
            reason: "a directory exists where the archive has a non-directory",
        }),
        Ok(_) => fs::remove_file(path).map_err(|e| ArchiveError::io("replacing", path, e)),
        Err(_) => Ok(()),
    }
}
