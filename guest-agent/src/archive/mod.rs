//! Tar trees: safe extraction (refusing paths that escape the destination),
//! packing a directory or file, and channel adapters that stream tar chunks
//! between blocking tar code and async tasks. Used by both agent and client.

mod extract;
mod pack;
mod pipe;

pub use extract::{ExtractStats, extract_tar, sanitize_entry_path};
pub use pack::pack_tree;
pub use pipe::{ChunkReader, ChunkWriter};

use std::path::PathBuf;

/// Errors while packing or unpacking a tree.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("tar entry path {path:?} escapes the destination ({reason})")]
    PathEscape { path: PathBuf, reason: &'static str },
    #[error("refusing to write through {path:?}: {reason}")]
    UnsafeTarget { path: PathBuf, reason: &'static str },
    #[error("destination {0:?} is not a directory")]
    DestNotDir(PathBuf),
    #[error("{action} {path:?}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading tar stream: {0}")]
    Tar(#[source] std::io::Error),
}

impl ArchiveError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        ArchiveError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
