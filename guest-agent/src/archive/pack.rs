//! Packs a directory tree (or a single file) into a tar stream, keeping modes
//! and storing symlinks as symlinks.

use super::ArchiveError;
use std::io::Write;
use std::path::Path;

/// Writes `src` as a tar stream to `out`. A directory's contents are stored
/// relative to it (`./...`); a single file is stored under its file name.
pub fn pack_tree<W: Write>(src: &Path, out: W) -> Result<(), ArchiveError> {
    let meta = std::fs::symlink_metadata(src).map_err(|e| ArchiveError::io("reading", src, e))?;
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    if meta.is_dir() {
        builder
            .append_dir_all(".", src)
            .map_err(|e| ArchiveError::io("archiving", src, e))?;
    } else {
        let name = src
            .file_name()
            .ok_or_else(|| ArchiveError::DestNotDir(src.into()))?;
        builder
            .append_path_with_name(src, name)
            .map_err(|e| ArchiveError::io("archiving", src, e))?;
    }
    builder
        .into_inner()
        .map_err(|e| ArchiveError::io("finishing archive of", src, e))?;
    Ok(())
}
