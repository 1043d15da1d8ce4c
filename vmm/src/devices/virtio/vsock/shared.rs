//! State shared between the device (event-loop thread) and the tokio side.
//!
//! The two sides never block on each other: they meet in short `Mutex` critical sections that
//! only copy bytes or flip flags. The tokio side wakes the event loop by queueing a [`Command`]
//! and writing the backend `EventFd`; the event loop wakes tokio tasks through stored `Waker`s.

use std::collections::HashMap;
use std::num::Wrapping;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;

use tokio::sync::{mpsc, oneshot};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::ring_buffer::RingBuffer;
use super::{VsockError, VsockStream};

/// Guest→host buffer per connection; this is the `buf_alloc` we advertise to the guest.
pub const HOST_BUF_ALLOC: u32 = 512 * 1024;
/// Host→guest buffer per connection (what a host writer may queue before `poll_write` pends).
pub const HOST_TX_BUF: usize = 256 * 1024;

/// (host port, guest port): identifies a connection (the CIDs are fixed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub local_port: u32,
    pub peer_port: u32,
}

/// Work for the event loop, queued by the tokio side.
pub enum Command {
    /// `VsockHandle::connect`: open a connection to guest port `port`.
    Connect {
        port: u32,
        reply: oneshot::Sender<Result<VsockStream, VsockError>>,
    },
    /// A connect attempt gave up waiting; drop connections whose reply channel is closed.
    ConnectAbandoned,
    /// The stream side of a connection changed (data written, data read, shutdown, dropped).
    Kick(ConnKey, Arc<ConnShared>),
    /// Describe the device's state (queues, connections, credit) for a stall report.
    Dump(oneshot::Sender<String>),
}

/// What both sides know about one connection.
#[derive(Debug)]
pub struct ConnData {
    /// Guest→host bytes not yet read by the host stream (bounded by [`HOST_BUF_ALLOC`]).
    pub to_host: RingBuffer,
    /// Host→guest bytes not yet placed in the RX queue.
    pub to_guest: RingBuffer,
    /// Bytes received from the guest (wrapping, virtio semantics).
    pub rx_cnt: Wrapping<u32>,
    /// Bytes the host reader consumed: our `fwd_cnt`.
    pub fwd_cnt: Wrapping<u32>,
    /// The `fwd_cnt` last sent to the guest.
    pub fwd_cnt_sent: Wrapping<u32>,
    /// The guest's own `buf_alloc`, from its latest header (see [`ConnData::credit_window`]).
    pub peer_buf_alloc: u32,
    /// Guest sent SHUTDOWN(SEND) or RST: reads hit EOF once `to_host` is drained.
    pub peer_done_sending: bool,
    /// Guest sent SHUTDOWN(RCV) or RST: writes fail.
    pub peer_done_receiving: bool,
    /// The connection is gone (RST, device reset): writes fail, reads drain then EOF (or
    /// `aborted`).
    pub closed: bool,
    /// The connection ended without the guest closing it: the device was dropped (the VM
    /// stopped). Reads drain, then fail with this instead of a clean EOF, so a client does not
    /// report "the agent closed the connection" for a guest that crashed.
    pub aborted: Option<(std::io::ErrorKind, String)>,
    /// Host called `poll_shutdown`.
    pub host_shut_write: bool,
    /// The `VsockStream` was dropped.
    pub host_dropped: bool,
    /// A [`Command::Kick`] for this connection is queued and not yet handled.
    pub kick_queued: bool,
    pub read_waker: Option<Waker>,
    pub write_waker: Option<Waker>,
}

impl ConnData {
    fn new() -> Self {
        ConnData {
            to_host: RingBuffer::new(HOST_BUF_ALLOC as usize),
            to_guest: RingBuffer::new(HOST_TX_BUF),
            rx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            fwd_cnt_sent: Wrapping(0),
            peer_buf_alloc: 0,
            peer_done_sending: false,
            peer_done_receiving: false,
            closed: false,
            aborted: None,
            host_shut_write: false,
            host_dropped: false,
            kick_queued: false,
            read_waker: None,
            write_waker: None,
        }
    }

    /// Free buffer space right now.
    pub fn actual_free(&self) -> u32 {
        HOST_BUF_ALLOC.saturating_sub((self.rx_cnt - self.fwd_cnt).0)
    }

    /// How much the guest is assumed to send before waiting for our credit: Linux caps the
    /// credit it uses at its own `buf_alloc` (so a peer cannot make it queue without bound),
    /// hence `min(ours, theirs)`, a lower bound of the real window.
    pub fn credit_window(&self) -> u32 {
        HOST_BUF_ALLOC.min(self.peer_buf_alloc)
    }

    /// Whether telling the guest our current `fwd_cnt` is worth a CREDIT_UPDATE packet: once the
    /// reader consumed half the window since the last announcement. A guest stalled on credit has
    /// sent a whole window unannounced, so draining it always triggers an update (liveness), and
    /// a streaming guest keeps at least half a window in hand (throughput).
    pub fn credit_update_due(&self) -> bool {
        let unannounced = (self.fwd_cnt - self.fwd_cnt_sent).0;
        unannounced > 0 && unannounced >= self.credit_window() / 2
    }

    /// Mark the connection dead and collect the wakers to wake once the lock is released.
    pub fn close(&mut self, wakers: &mut Vec<Waker>) {
        self.closed = true;
        self.peer_done_sending = true;
        self.peer_done_receiving = true;
        self.to_guest.clear();
        self.take_wakers(wakers);
    }

    pub fn take_wakers(&mut self, wakers: &mut Vec<Waker>) {
        wakers.extend(self.read_waker.take());
        wakers.extend(self.write_waker.take());
    }
}

/// One connection's shared state.
#[derive(Debug)]
pub struct ConnShared {
    data: Mutex<ConnData>,
}

impl ConnShared {
    pub fn new() -> Arc<Self> {
        Arc::new(ConnShared {
            data: Mutex::new(ConnData::new()),
        })
    }

    /// Lock the data. A poisoned lock only means another thread panicked while copying bytes;
    /// the counters are still consistent enough to carry on (or tear down), so keep going.
    pub fn lock(&self) -> MutexGuard<'_, ConnData> {
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Backlog of a listener's accept queue.
pub const LISTEN_BACKLOG: usize = 64;

/// A registered [`super::VsockListener`]'s accept queue.
pub struct ListenerEntry {
    /// Distinguishes successive listeners on the same port.
    pub id: u64,
    pub tx: mpsc::Sender<VsockStream>,
}

#[derive(Default)]
pub struct Inbox {
    pub commands: Vec<Command>,
    /// The device is gone: no more commands are accepted.
    pub closed: bool,
}

/// The part of the backend the handle, streams and device all hold.
pub struct BackendShared {
    pub evt: EventFd,
    pub inbox: Mutex<Inbox>,
    pub listeners: Mutex<HashMap<u32, ListenerEntry>>,
}

impl BackendShared {
    pub fn new() -> Result<Arc<Self>, VsockError> {
        Ok(Arc::new(BackendShared {
            evt: EventFd::new(EFD_NONBLOCK).map_err(VsockError::EventFd)?,
            inbox: Mutex::new(Inbox::default()),
            listeners: Mutex::new(HashMap::new()),
        }))
    }

    pub fn inbox(&self) -> MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn listeners(&self) -> MutexGuard<'_, HashMap<u32, ListenerEntry>> {
        self.listeners.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue a command and wake the event loop. Fails once the device is gone.
    pub fn send(&self, cmd: Command) -> Result<(), VsockError> {
        {
            let mut inbox = self.inbox();
            if inbox.closed {
                return Err(VsockError::DeviceGone);
            }
            inbox.commands.push(cmd);
        }
        self.notify();
        Ok(())
    }

    /// Remove and return the queued state-report requests (answered even while the driver is
    /// not up; the other commands wait for it).
    pub fn take_dump_requests(&self) -> Vec<oneshot::Sender<String>> {
        let mut inbox = self.inbox();
        let (dumps, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut inbox.commands)
            .into_iter()
            .partition(|c| matches!(c, Command::Dump(_)));
        inbox.commands = rest;
        dumps
            .into_iter()
            .filter_map(|c| match c {
                Command::Dump(reply) => Some(reply),
                _ => None,
            })
            .collect()
    }

    /// Wake the event loop.
    pub fn notify(&self) {
        // The eventfd counter cannot realistically overflow (it would take 2^64 - 1 writes
        // without a read); a failure here would only delay processing until the next event.
        if let Err(e) = self.evt.write(1) {
            tracing::warn!(error = %e, "vsock: failed to signal the backend eventfd");
        }
    }
}
