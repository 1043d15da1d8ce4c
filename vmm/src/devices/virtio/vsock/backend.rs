//! The tokio side of the in-process vsock backend: [`VsockHandle`], [`VsockStream`],
//! [`VsockListener`].

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot};

use super::VsockError;
use super::shared::{BackendShared, Command, ConnData, ConnKey, ConnShared, LISTEN_BACKLOG};

/// How long [`VsockHandle::connect`] waits for the guest's RESPONSE or RST.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Cheap-to-clone handle for opening host↔guest vsock connections (`Send + Sync`).
#[derive(Clone)]
pub struct VsockHandle {
    shared: Arc<BackendShared>,
}

impl std::fmt::Debug for VsockHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VsockHandle").finish_non_exhaustive()
    }
}

/// Sends [`Command::ConnectAbandoned`] if a connect future is dropped (timeout or caller gave
/// up) before the device answered, so the half-open connection does not linger.
struct AbandonGuard<'a> {
    shared: &'a BackendShared,
    armed: bool,
}

impl Drop for AbandonGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            // The device being gone is fine: then there is nothing to clean up.
            let _ = self.shared.send(Command::ConnectAbandoned);
        }
    }
}

static NEXT_LISTENER_ID: AtomicU64 = AtomicU64::new(1);

impl VsockHandle {
    pub(crate) fn new(shared: Arc<BackendShared>) -> Self {
        VsockHandle { shared }
    }

    /// Connect to guest port `port` (the guest must be listening). A guest RST gives
    /// [`VsockError::ConnectionRefused`]; no answer within [`DEFAULT_CONNECT_TIMEOUT`] gives
    /// [`VsockError::TimedOut`]. Connections requested before the driver is up wait for it.
    pub async fn connect(&self, port: u32) -> Result<VsockStream, VsockError> {
        self.connect_timeout(port, DEFAULT_CONNECT_TIMEOUT).await
    }

    /// [`VsockHandle::connect`] with an explicit timeout.
    pub async fn connect_timeout(
        &self,
        port: u32,
        timeout: Duration,
    ) -> Result<VsockStream, VsockError> {
        let (reply, answer) = oneshot::channel();
        self.shared.send(Command::Connect { port, reply })?;
        let mut guard = AbandonGuard {
            shared: &self.shared,
            armed: true,
        };
        let result = match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(VsockError::DeviceGone),
            Err(_) => return Err(VsockError::TimedOut { port, timeout }),
        };
        guard.armed = false;
        result
    }

    /// A description of the device's state (virtqueue indices, interrupt status, every
    /// connection's credit counters and buffers), taken on the event loop thread: for reports
    /// when a transfer stalls. `None` when the event loop does not answer within `timeout` (or
    /// the device is gone), which is itself a finding.
    pub async fn describe(&self, timeout: Duration) -> Option<String> {
        let (reply, answer) = oneshot::channel();
        self.shared.send(Command::Dump(reply)).ok()?;
        tokio::time::timeout(timeout, answer).await.ok()?.ok()
    }

    /// Accept guest-initiated connections to (host CID 2, `port`).
    pub fn listen(&self, port: u32) -> Result<VsockListener, VsockError> {
        if self.shared.inbox().closed {
            return Err(VsockError::DeviceGone);
        }
        let mut listeners = self.shared.listeners();
        if listeners.get(&port).is_some_and(|l| !l.tx.is_closed()) {
            return Err(VsockError::AddrInUse { port });
        }
        let (tx, rx) = mpsc::channel(LISTEN_BACKLOG);
        let id = NEXT_LISTENER_ID.fetch_add(1, Ordering::Relaxed);
        listeners.insert(port, super::shared::ListenerEntry { id, tx });
        Ok(VsockListener {
            port,
            id,
            rx,
            shared: self.shared.clone(),
        })
    }
}

/// Accepts guest→host connections on one host port. Dropping it stops listening.
pub struct VsockListener {
    port: u32,
    id: u64,
    rx: mpsc::Receiver<VsockStream>,
    shared: Arc<BackendShared>,
}

impl std::fmt::Debug for VsockListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VsockListener")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl VsockListener {
    pub fn port(&self) -> u32 {
        self.port
    }

    /// The next connection a guest opened to this port.
    pub async fn accept(&mut self) -> Result<VsockStream, VsockError> {
        self.rx.recv().await.ok_or(VsockError::DeviceGone)
    }

    /// A connection already waiting in the accept queue, if any.
    pub fn try_accept(&mut self) -> Option<VsockStream> {
        self.rx.try_recv().ok()
    }
}

impl Drop for VsockListener {
    fn drop(&mut self) {
        let mut listeners = self.shared.listeners();
        if listeners.get(&self.port).is_some_and(|l| l.id == self.id) {
            listeners.remove(&self.port);
        }
    }
}

/// One established vsock connection: `AsyncRead + AsyncWrite`. Reads see the guest's bytes and
/// then EOF when the guest shuts down its sending side; writes fail with `BrokenPipe` once the
/// guest stops receiving or resets. Dropping it flushes queued bytes and closes the connection.
pub struct VsockStream {
    key: ConnKey,
    conn: Arc<ConnShared>,
    backend: Arc<BackendShared>,
}

impl std::fmt::Debug for VsockStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VsockStream")
            .field("local_port", &self.key.local_port)
            .field("peer_port", &self.key.peer_port)
            .finish_non_exhaustive()
    }
}

fn store_waker(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

impl VsockStream {
    pub(crate) fn new(key: ConnKey, conn: Arc<ConnShared>, backend: Arc<BackendShared>) -> Self {
        VsockStream { key, conn, backend }
    }

    /// The host-side port of this connection.
    pub fn local_port(&self) -> u32 {
        self.key.local_port
    }

    /// The guest-side port of this connection.
    pub fn peer_port(&self) -> u32 {
        self.key.peer_port
    }

    /// Claim the right to queue a kick (at most one in flight per connection).
    fn claim_kick(data: &mut ConnData) -> bool {
        !std::mem::replace(&mut data.kick_queued, true)
    }

    fn send_kick(&self) {
        // If the device is gone there is nobody left to tell.
        let _ = self
            .backend
            .send(Command::Kick(self.key, self.conn.clone()));
    }
}

impl AsyncRead for VsockStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let mut data = self.conn.lock();
        if !data.to_host.is_empty() {
            let want = buf.remaining().min(data.to_host.len());
            let n = data.to_host.pop_into(buf.initialize_unfilled_to(want));
            buf.advance(n);
            // n <= HOST_BUF_ALLOC, so it fits in u32.
            data.fwd_cnt += n as u32;
            let kick = data.credit_update_due() && Self::claim_kick(&mut data);
            drop(data);
            if kick {
                self.send_kick();
            }
            return Poll::Ready(Ok(()));
        }
        if let Some((kind, why)) = &data.aborted {
            return Poll::Ready(Err(io::Error::new(*kind, why.clone())));
        }
        if data.peer_done_sending || data.closed {
            return Poll::Ready(Ok(()));
        }
        store_waker(&mut data.read_waker, cx);
        Poll::Pending
    }
}

impl AsyncWrite for VsockStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut data = self.conn.lock();
        if let Some((kind, why)) = &data.aborted {
            return Poll::Ready(Err(io::Error::new(*kind, why.clone())));
        }
        if data.closed || data.peer_done_receiving || data.host_shut_write {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "vsock connection is closed for writing",
            )));
        }
        let n = data.to_guest.push(buf);
        if n == 0 {
            store_waker(&mut data.write_waker, cx);
            return Poll::Pending;
        }
        let kick = Self::claim_kick(&mut data);
        drop(data);
        if kick {
            self.send_kick();
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Bytes are handed to the device as soon as they are written.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut data = self.conn.lock();
        data.host_shut_write = true;
        let kick = Self::claim_kick(&mut data);
        drop(data);
        if kick {
            self.send_kick();
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for VsockStream {
    fn drop(&mut self) {
        let mut data = self.conn.lock();
        data.host_dropped = true;
        data.read_waker = None;
        data.write_waker = None;
        let kick = Self::claim_kick(&mut data);
        drop(data);
        if kick {
            self.send_kick();
        }
    }
}
