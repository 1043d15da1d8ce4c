//! One connection as the device sees it: state machine and credit accounting.
//!
//! Credit (virtio spec 5.10.6.3): every packet carries the sender's `buf_alloc` and `fwd_cnt`.
//! We may have at most `peer_buf_alloc - (tx_cnt - peer_fwd_cnt)` bytes in flight towards the
//! guest; the guest may have at most `HOST_BUF_ALLOC - (rx_cnt - fwd_cnt)` towards us. A guest
//! that sends beyond that is reset, so host memory per connection stays bounded.

use std::num::Wrapping;
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use vm_memory::GuestMemory;

use super::packet::{
    ChainBuffer, HDR_LEN, HOST_CID, MAX_PKT_PAYLOAD, Op, PacketHeader, SHUTDOWN_RCV, SHUTDOWN_SEND,
    TYPE_STREAM,
};
use super::rx_queue::RxSink;
use super::shared::{BackendShared, ConnData, ConnKey, ConnShared, HOST_BUF_ALLOC};
use super::{VsockError, VsockStream};

/// How long we wait for the guest's RST after telling it we are closing.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);
/// Packets one connection may put in the RX queue before others get a turn.
const RX_BURST: usize = 32;

pub type ConnectReply = oneshot::Sender<Result<VsockStream, VsockError>>;

pub enum ConnState {
    /// Host-initiated: REQUEST queued or sent, waiting for the guest's RESPONSE.
    LocalInit {
        reply: Option<ConnectReply>,
    },
    Established,
    /// The host dropped its stream and we sent SHUTDOWN; waiting for the guest's RST.
    Closing {
        deadline: Instant,
    },
}

/// Control packets owed to the guest.
mod pending {
    pub const REQUEST: u8 = 1;
    pub const RESPONSE: u8 = 2;
    pub const RST: u8 = 4;
    pub const CREDIT_UPDATE: u8 = 8;
    pub const CREDIT_REQUEST: u8 = 16;
}

/// What the muxer should do with a connection after an event.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Keep,
    /// Forget the connection (after an RST either way).
    Remove,
}

/// Outcome of [`Connection::flush_rx`].
#[derive(Debug, PartialEq, Eq)]
pub enum Flush {
    /// Nothing more to send for now.
    Idle,
    /// More to send but the burst budget is used up (or the RX queue is empty).
    More,
    /// The final RST went out; forget the connection.
    Remove,
}

pub struct Connection {
    pub key: ConnKey,
    pub state: ConnState,
    pub shared: Arc<ConnShared>,
    pending: u8,
    shutdown_sent: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    tx_cnt: Wrapping<u32>,
    credit_requested: bool,
    /// Queued in the muxer's RX work list.
    pub in_rx_list: bool,
}

impl Connection {
    /// Host-initiated connection; a REQUEST is owed to the guest.
    pub fn local_init(key: ConnKey, reply: ConnectReply) -> Self {
        let mut c = Self::new(key, ConnState::LocalInit { reply: Some(reply) });
        c.pending |= pending::REQUEST;
        c
    }

    /// Guest-initiated connection accepted by a listener; a RESPONSE is owed to the guest.
    pub fn peer_init(key: ConnKey, shared: Arc<ConnShared>, hdr: &PacketHeader) -> Self {
        let mut c = Self::new(key, ConnState::Established);
        shared.lock().peer_buf_alloc = hdr.buf_alloc;
        c.shared = shared;
        c.peer_buf_alloc = hdr.buf_alloc;
        c.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        c.pending |= pending::RESPONSE;
        c
    }

    fn new(key: ConnKey, state: ConnState) -> Self {
        Connection {
            key,
            state,
            shared: ConnShared::new(),
            pending: 0,
            shutdown_sent: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            tx_cnt: Wrapping(0),
            credit_requested: false,
            in_rx_list: false,
        }
    }

    /// Bytes we may still send before the guest's buffer is full.
    fn peer_free(&self) -> u32 {
        let in_flight = (self.tx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Reset the connection: an RST is owed and the host stream sees the end.
    pub fn reset(&mut self, wakers: &mut Vec<Waker>) {
        self.pending = pending::RST;
        self.fail_connect(VsockError::ConnectionRefused {
            port: self.key.peer_port,
        });
        self.shared.lock().close(wakers);
    }

    /// End the connection without telling the guest (device reset or teardown). After a driver
    /// reset the host stream reads what was received, then EOF (the guest ended it); when the
    /// device is gone (the VM stopped, e.g. a guest crash) it fails instead: no guest closed it.
    pub fn abort(&mut self, err: VsockError, wakers: &mut Vec<Waker>) {
        let aborted = matches!(err, VsockError::DeviceGone).then(|| {
            (
                std::io::ErrorKind::NotConnected,
                format!("{err}: the VM stopped"),
            )
        });
        self.fail_connect(err);
        let mut data = self.shared.lock();
        data.aborted = aborted;
        data.close(wakers);
    }

    fn fail_connect(&mut self, err: VsockError) {
        if let ConnState::LocalInit { reply } = &mut self.state
            && let Some(reply) = reply.take()
        {
            // The connect caller may have given up already; nothing to do then.
            let _ = reply.send(Err(err));
        }
    }

    /// A LocalInit connection whose connect caller gave up.
    pub fn connect_abandoned(&self) -> bool {
        matches!(&self.state, ConnState::LocalInit { reply: Some(r) } if r.is_closed())
    }

    /// Waiting for the guest's RST after our SHUTDOWN.
    pub fn is_closing(&self) -> bool {
        matches!(self.state, ConnState::Closing { .. })
    }

    /// Closing for longer than [`SHUTDOWN_TIMEOUT`].
    pub fn shutdown_expired(&self, now: Instant) -> bool {
        matches!(self.state, ConnState::Closing { deadline } if now >= deadline)
    }

    /// Handle one guest packet addressed to this connection.
    pub fn handle_tx<M: GuestMemory>(
        &mut self,
        hdr: &PacketHeader,
        chain: &ChainBuffer,
        mem: &M,
        backend: &Arc<BackendShared>,
        wakers: &mut Vec<Waker>,
    ) -> Next {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        self.shared.lock().peer_buf_alloc = hdr.buf_alloc;
        if self.peer_free() > 0 {
            self.credit_requested = false;
        }
        match Op::from_wire(hdr.op) {
            Some(Op::Rst) => {
                tracing::debug!(key = ?self.key, "vsock: guest reset the connection");
                self.fail_connect(VsockError::ConnectionRefused {
                    port: self.key.peer_port,
                });
                self.shared.lock().close(wakers);
                return Next::Remove;
            }
            Some(Op::Response) => self.on_response(backend, wakers),
            Some(Op::Rw) => self.on_data(hdr, chain, mem, wakers),
            Some(Op::Shutdown) => self.on_shutdown(hdr.flags, wakers),
            Some(Op::CreditRequest) => self.pending |= pending::CREDIT_UPDATE,
            Some(Op::CreditUpdate) => {}
            Some(Op::Request) => {
                tracing::debug!(key = ?self.key, "vsock: REQUEST for an existing connection ignored");
            }
            None => {
                tracing::debug!(key = ?self.key, op = hdr.op, "vsock: unknown op, resetting");
                self.reset(wakers);
            }
        }
        Next::Keep
    }

    fn on_response(&mut self, backend: &Arc<BackendShared>, wakers: &mut Vec<Waker>) {
        let ConnState::LocalInit { reply } = &mut self.state else {
            tracing::debug!(key = ?self.key, "vsock: unexpected RESPONSE, resetting");
            self.reset(wakers);
            return;
        };
        let reply = reply.take();
        self.state = ConnState::Established;
        let stream = VsockStream::new(self.key, self.shared.clone(), backend.clone());
        let delivered = match reply {
            Some(reply) => reply.send(Ok(stream)).is_ok(),
            None => false,
        };
        if !delivered {
            // The connect caller is gone; the stream we made was dropped with the message (its
            // Drop marks the host side closed), and the guest needs an RST.
            self.reset(wakers);
        }
    }

    fn on_data<M: GuestMemory>(
        &mut self,
        hdr: &PacketHeader,
        chain: &ChainBuffer,
        mem: &M,
        wakers: &mut Vec<Waker>,
    ) {
        if !matches!(
            self.state,
            ConnState::Established | ConnState::Closing { .. }
        ) {
            tracing::debug!(key = ?self.key, "vsock: data before the connection was established, resetting");
            self.reset(wakers);
            return;
        }
        let len = hdr.len;
        let mut data = self.shared.lock();
        if len > data.actual_free() {
            tracing::warn!(key = ?self.key, len, free = data.actual_free(),
                "vsock: guest overran its credit, resetting");
            drop(data);
            self.reset(wakers);
            return;
        }
        if data.host_dropped || data.peer_done_sending || data.closed {
            // Nobody will read it: count it as consumed so the guest never stalls on it.
            data.rx_cnt += len;
            data.fwd_cnt += len;
            return;
        }
        let (a, b) = data.to_host.free_slices(len as usize);
        let first = a.len();
        if first + b.len() != len as usize {
            // Cannot happen while to_host.len() == rx_cnt - fwd_cnt; never write past the ring.
            tracing::error!(key = ?self.key, len, "vsock: receive ring out of step with credit");
            drop(data);
            self.reset(wakers);
            return;
        }
        let copied = chain
            .read_at(mem, HDR_LEN as u64, a)
            .and_then(|()| chain.read_at(mem, (HDR_LEN + first) as u64, b));
        if let Err(e) = copied {
            tracing::debug!(key = ?self.key, error = %e, "vsock: reading TX payload failed");
            drop(data);
            self.reset(wakers);
            return;
        }
        data.to_host.commit(len as usize);
        data.rx_cnt += len;
        wakers.extend(data.read_waker.take());
    }

    fn on_shutdown(&mut self, flags: u32, wakers: &mut Vec<Waker>) {
        tracing::debug!(key = ?self.key, flags, "vsock: guest shut the connection down");
        let mut data = self.shared.lock();
        if flags & SHUTDOWN_RCV != 0 {
            data.peer_done_receiving = true;
            data.to_guest.clear();
        }
        if flags & SHUTDOWN_SEND != 0 {
            data.peer_done_sending = true;
        }
        data.take_wakers(wakers);
        if data.peer_done_receiving && data.peer_done_sending {
            // The guest closed both ways and waits for our RST.
            data.close(wakers);
            self.pending = pending::RST;
        }
    }

    /// The connection's state and counters, for a stall report.
    pub fn describe(&self) -> String {
        let state = match &self.state {
            ConnState::LocalInit { .. } => "connecting",
            ConnState::Established => "established",
            ConnState::Closing { .. } => "closing",
        };
        let data = self.shared.lock();
        format!(
            "{:?} {state} pending {:#x} in_rx_list {} | to guest: queued {} tx_cnt {} \
             peer_fwd_cnt {} peer_buf_alloc {} peer_free {} credit_requested {} | to host: \
             queued {} rx_cnt {} fwd_cnt {} fwd_cnt_sent {} free {} update_due {} | \
             peer_done_sending {} peer_done_receiving {} closed {} host_shut_write {} \
             host_dropped {} kick_queued {} read_waker {} write_waker {}",
            self.key,
            self.pending,
            self.in_rx_list,
            data.to_guest.len(),
            self.tx_cnt,
            self.peer_fwd_cnt,
            self.peer_buf_alloc,
            self.peer_free(),
            self.credit_requested,
            data.to_host.len(),
            data.rx_cnt,
            data.fwd_cnt,
            data.fwd_cnt_sent,
            data.actual_free(),
            data.credit_update_due(),
            data.peer_done_sending,
            data.peer_done_receiving,
            data.closed,
            data.host_shut_write,
            data.host_dropped,
            data.kick_queued,
            data.read_waker.is_some(),
            data.write_waker.is_some(),
        )
    }

    /// Whether there is anything to put into the RX queue for this connection.
    pub fn wants_rx(&self) -> bool {
        if self.pending != 0 {
            return true;
        }
        if !matches!(self.state, ConnState::Established) {
            return false;
        }
        let data = self.shared.lock();
        (!data.to_guest.is_empty() && (self.peer_free() > 0 || !self.credit_requested))
            || data.credit_update_due()
            || self.shutdown_owed(&data) != 0
    }

    /// SHUTDOWN flags still to send once all queued host data is out.
    fn shutdown_owed(&self, data: &ConnData) -> u32 {
        if !data.to_guest.is_empty() && !data.peer_done_receiving && !data.closed {
            return 0;
        }
        let mut flags = 0;
        if data.host_shut_write || data.host_dropped {
            flags |= SHUTDOWN_SEND;
        }
        if data.host_dropped {
            flags |= SHUTDOWN_RCV;
        }
        flags & !self.shutdown_sent
    }

    fn header(
        &self,
        guest_cid: u64,
        op: Op,
        len: u32,
        flags: u32,
        data: &mut ConnData,
    ) -> PacketHeader {
        data.fwd_cnt_sent = data.fwd_cnt;
        PacketHeader {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: self.key.local_port,
            dst_port: self.key.peer_port,
            len,
            type_: TYPE_STREAM,
            op: op as u16,
            flags,
            buf_alloc: HOST_BUF_ALLOC,
            fwd_cnt: data.fwd_cnt.0,
        }
    }

    /// Put owed packets into the RX queue: control packets first, then data within the guest's
    /// credit, then credit updates and shutdowns.
    pub fn flush_rx<M: GuestMemory>(
        &mut self,
        sink: &mut RxSink<'_, M>,
        guest_cid: u64,
        wakers: &mut Vec<Waker>,
    ) -> Flush {
        let mut sent = 0usize;
        let shared = self.shared.clone();
        let mut data = shared.lock();
        if self.pending & pending::RST != 0 {
            if !sink.ready() {
                return Flush::More;
            }
            let hdr = self.header(guest_cid, Op::Rst, 0, 0, &mut data);
            sink.send(&hdr, (&[], &[]));
            return Flush::Remove;
        }
        for (bit, op) in [
            (pending::REQUEST, Op::Request),
            (pending::RESPONSE, Op::Response),
        ] {
            if self.pending & bit != 0 {
                if !sink.ready() {
                    return Flush::More;
                }
                let hdr = self.header(guest_cid, op, 0, 0, &mut data);
                sink.send(&hdr, (&[], &[]));
                self.pending &= !bit;
                sent += 1;
            }
        }
        if !matches!(self.state, ConnState::Established) {
            return Flush::Idle;
        }
        // Data within credit.
        while !data.to_guest.is_empty() && self.peer_free() > 0 {
            if sent >= RX_BURST {
                return Flush::More;
            }
            if !sink.ready() {
                return Flush::More;
            }
            let room = sink.payload_capacity();
            let n = room
                .min(self.peer_free())
                .min(MAX_PKT_PAYLOAD)
                .min(u32::try_from(data.to_guest.len()).unwrap_or(u32::MAX));
            if n == 0 {
                // A chain with no payload room: hand it back empty, try the next one.
                sink.discard();
                continue;
            }
            let hdr = self.header(guest_cid, Op::Rw, n, 0, &mut data);
            let (a, b) = data.to_guest.filled();
            let na = a.len().min(n as usize);
            let nb = n as usize - na;
            if !sink.send(&hdr, (&a[..na], &b[..nb])) {
                continue;
            }
            data.to_guest.consume(n as usize);
            self.tx_cnt += n;
            sent += 1;
            wakers.extend(data.write_waker.take());
        }
        if !data.to_guest.is_empty() && self.peer_free() == 0 && !self.credit_requested {
            self.pending |= pending::CREDIT_REQUEST;
            self.credit_requested = true;
        }
        if data.credit_update_due() {
            self.pending |= pending::CREDIT_UPDATE;
        }
        for (bit, op) in [
            (pending::CREDIT_UPDATE, Op::CreditUpdate),
            (pending::CREDIT_REQUEST, Op::CreditRequest),
        ] {
            if self.pending & bit != 0 {
                if !sink.ready() {
                    return Flush::More;
                }
                let hdr = self.header(guest_cid, op, 0, 0, &mut data);
                sink.send(&hdr, (&[], &[]));
                self.pending &= !bit;
            }
        }
        let flags = self.shutdown_owed(&data);
        if flags != 0 {
            if !sink.ready() {
                return Flush::More;
            }
            let hdr = self.header(guest_cid, Op::Shutdown, 0, flags, &mut data);
            sink.send(&hdr, (&[], &[]));
            self.shutdown_sent |= flags;
            if data.host_dropped {
                self.state = ConnState::Closing {
                    deadline: Instant::now() + SHUTDOWN_TIMEOUT,
                };
            }
        }
        Flush::Idle
    }
}
