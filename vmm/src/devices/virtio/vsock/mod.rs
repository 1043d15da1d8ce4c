//! virtio-vsock with an in-process host backend.
//!
//! The guest driver talks to [`Vsock`] (a [`VirtioDevice`](super::VirtioDevice) living on the
//! VMM event-loop thread); host code talks to [`VsockHandle`], which hands out tokio
//! [`VsockStream`]s (`AsyncRead + AsyncWrite`). No Unix socket files are involved. The two sides
//! meet only through short mutex-protected buffers, an eventfd (tokio → event loop) and wakers
//! (event loop → tokio), so neither ever blocks the other.
//!
//! Wiring (see `README.md` next to this file):
//! ```ignore
//! let (vsock, handle) = Vsock::new(3)?;
//! let vsock = Arc::new(Mutex::new(vsock));
//! event_manager.add_subscriber(vsock.clone());      // registers its eventfds in `init`
//! mmio_transport_for(vsock);                       // device_type 19, 3 queues of 128
//! let stream = handle.connect(1024).await?;        // host -> guest port 1024
//! let mut listener = handle.listen(2000)?;         // guest -> (CID 2, port 2000)
//! ```
//!
//! Layout: [`packet`] (wire header + hostile-chain parsing), `ring_buffer` (bounded byte rings),
//! `shared` (what both sides share), `connection` (state machine + credit), `muxer` (routing,
//! listeners, RX scheduling), `rx_queue` (writing RX chains), `device` (virtio + event loop),
//! `backend` (tokio side).

mod backend;
mod connection;
mod device;
mod muxer;
pub mod packet;
mod ring_buffer;
mod rx_queue;
mod shared;

#[doc(hidden)]
pub mod fuzzing;

#[cfg(test)]
mod stress_tests;
#[cfg(test)]
pub(crate) mod test_driver;
#[cfg(test)]
mod tests;

use std::io;
use std::time::Duration;

pub use backend::{DEFAULT_CONNECT_TIMEOUT, VsockHandle, VsockListener, VsockStream};
pub use device::{NUM_QUEUES, QUEUE_SIZE, Vsock};
pub use muxer::MAX_CONNECTIONS;
pub use shared::{HOST_BUF_ALLOC, HOST_TX_BUF};

/// The default guest CID.
pub const DEFAULT_GUEST_CID: u64 = 3;

/// Errors of the vsock device and its host backend.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("invalid guest CID {cid}: must be in 3..=4294967294")]
    InvalidCid { cid: u64 },
    #[error("the guest refused the connection to vsock port {port}")]
    ConnectionRefused { port: u32 },
    #[error("no answer from the guest for vsock port {port} within {timeout:?}")]
    TimedOut { port: u32, timeout: Duration },
    #[error("too many vsock connections (limit {max})")]
    TooManyConnections { max: usize },
    #[error("host vsock port {port} already has a listener")]
    AddrInUse { port: u32 },
    #[error("the guest driver reset the vsock device")]
    DeviceReset,
    #[error("the vsock device is gone")]
    DeviceGone,
    #[error("creating a vsock eventfd failed: {0}")]
    EventFd(#[source] io::Error),
    #[error("creating the vsock timerfd failed: {0}")]
    TimerFd(#[source] io::Error),
}

impl From<VsockError> for io::Error {
    fn from(e: VsockError) -> io::Error {
        let kind = match &e {
            VsockError::InvalidCid { .. } => io::ErrorKind::InvalidInput,
            VsockError::ConnectionRefused { .. } => io::ErrorKind::ConnectionRefused,
            VsockError::TimedOut { .. } => io::ErrorKind::TimedOut,
            VsockError::TooManyConnections { .. } => io::ErrorKind::OutOfMemory,
            VsockError::AddrInUse { .. } => io::ErrorKind::AddrInUse,
            VsockError::DeviceReset => io::ErrorKind::ConnectionReset,
            VsockError::DeviceGone => io::ErrorKind::NotConnected,
            VsockError::EventFd(inner) | VsockError::TimerFd(inner) => inner.kind(),
        };
        io::Error::new(kind, e)
    }
}
