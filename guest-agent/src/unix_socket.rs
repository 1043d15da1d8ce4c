//! Unix sockets by path, or in the abstract namespace when the "path" starts
//! with `@` (no file involved: reachable across mount namespaces, e.g. from
//! the host to an agent running as PID 1 in its own mount namespace).

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::SocketAddr;
use std::path::{Path, PathBuf};
use tokio::net::{UnixListener, UnixStream};

/// The abstract name for a `@name` path.
pub fn abstract_name(path: &Path) -> Option<&[u8]> {
    use std::os::unix::ffi::OsStrExt;
    path.as_os_str().as_bytes().strip_prefix(b"@")
}

/// Binds a listener; a stale socket file at a filesystem path is replaced.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    match abstract_name(path) {
        Some(name) => {
            let addr = SocketAddr::from_abstract_name(name)?;
            let listener = std::os::unix::net::UnixListener::bind_addr(&addr)?;
            listener.set_nonblocking(true)?;
            UnixListener::from_std(listener)
        }
        None => {
            let _ = std::fs::remove_file(path);
            // bind(2) creates the file before listen(2) makes it connectable: a client that
            // waits for the file could be refused in between. Bind under a temporary name and
            // rename it into place once listening, so the file appears only when connectable.
            let mut tmp = path.as_os_str().to_owned();
            tmp.push(format!(".{}.tmp", std::process::id()));
            let tmp = PathBuf::from(tmp);
            let _ = std::fs::remove_file(&tmp);
            match UnixListener::bind(&tmp) {
                Ok(listener) => match std::fs::rename(&tmp, path) {
                    Ok(()) => Ok(listener),
                    Err(e) => {
                        let _ = std::fs::remove_file(&tmp);
                        Err(e)
                    }
                },
                // The temporary name is too long for sun_path, say: bind in place.
                Err(_) => UnixListener::bind(path),
            }
        }
    }
}

/// Connects to a listener bound with [`bind`].
pub async fn connect(path: &Path) -> std::io::Result<UnixStream> {
    match abstract_name(path) {
        Some(name) => {
            let addr = SocketAddr::from_abstract_name(name)?;
            // A local connect completes (or fails) immediately.
            let stream = std::os::unix::net::UnixStream::connect_addr(&addr)?;
            stream.set_nonblocking(true)?;
            UnixStream::from_std(stream)
        }
        None => UnixStream::connect(path).await,
    }
}
