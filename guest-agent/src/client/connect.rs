//! Connecting to an agent by address: `unix:PATH` or `vsock:CID:PORT`.

use super::{Client, ClientError};
use std::path::Path;

/// Connects over a Unix socket (`@name`: abstract namespace) and performs the handshake.
pub async fn connect_unix(path: &Path) -> Result<Client, ClientError> {
    let stream =
        crate::unix_socket::connect(path)
            .await
            .map_err(|source| ClientError::Connect {
                addr: format!("unix:{}", path.display()),
                source,
            })?;
    Client::handshake(stream).await
}

/// Connects over AF_VSOCK to `(cid, port)` and performs the handshake.
pub async fn connect_vsock(cid: u32, port: u32) -> Result<Client, ClientError> {
    let addr = tokio_vsock::VsockAddr::new(cid, port);
    let stream = tokio_vsock::VsockStream::connect(addr)
        .await
        .map_err(|source| ClientError::Connect {
            addr: format!("vsock:{cid}:{port}"),
            source,
        })?;
    Client::handshake(stream).await
}

/// Connects to `unix:PATH` or `vsock:CID:PORT`.
pub async fn connect(addr: &str) -> Result<Client, ClientError> {
    if let Some(path) = addr.strip_prefix("unix:") {
        if path.is_empty() {
            return Err(ClientError::BadAddress(addr.into()));
        }
        return connect_unix(Path::new(path)).await;
    }
    if let Some(rest) = addr.strip_prefix("vsock:") {
        let (cid, port) = rest
            .split_once(':')
            .ok_or_else(|| ClientError::BadAddress(addr.into()))?;
        let cid = cid
            .parse()
            .map_err(|_| ClientError::BadAddress(addr.into()))?;
        let port = port
            .parse()
            .map_err(|_| ClientError::BadAddress(addr.into()))?;
        return connect_vsock(cid, port).await;
    }
    Err(ClientError::BadAddress(addr.into()))
}
