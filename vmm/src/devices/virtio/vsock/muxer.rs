//! The connection multiplexer: routes guest packets to connections keyed by
//! (host port, guest port), accepts guest connections for registered listeners, opens host
//! connections, and fills the RX queue.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemory;

use super::connection::{ConnectReply, Connection, Flush, Next};
use super::packet::{ChainBuffer, ChainDir, HOST_CID, Op, PacketHeader, TYPE_STREAM};
use super::rx_queue::RxSink;
use super::shared::{BackendShared, Command, ConnKey, ConnShared};
use super::{VsockError, VsockStream};
use tokio::sync::oneshot;

/// Upper bound on simultaneous connections (each may buffer up to
/// `HOST_BUF_ALLOC + HOST_TX_BUF` bytes).
pub const MAX_CONNECTIONS: usize = 128;
/// RSTs for packets that match no connection, waiting for RX buffers; beyond this they are
/// dropped (the guest times out instead).
const MAX_ORPHAN_RSTS: usize = 256;
/// Host ports for host-initiated connections are taken from this range.
const EPHEMERAL_PORTS: std::ops::Range<u32> = (1 << 30)..(1 << 31);
/// How often Closing connections are checked for their shutdown timeout.
const SWEEP_INTERVAL: Duration = Duration::from_millis(250);

pub struct Muxer {
    guest_cid: u64,
    backend: Arc<BackendShared>,
    conns: HashMap<ConnKey, Connection>,
    /// Connections that have something for the RX queue, in service order.
    rx_list: VecDeque<ConnKey>,
    orphan_rsts: VecDeque<PacketHeader>,
    next_local_port: u32,
    chain: ChainBuffer,
    wakers: Vec<Waker>,
    last_sweep: Instant,
    /// A connection entered (or was flushed in) the Closing state since the last
    /// [`Muxer::take_closing_started`].
    closing_started: bool,
}

impl Muxer {
    pub fn new(guest_cid: u64, backend: Arc<BackendShared>) -> Self {
        Muxer {
            guest_cid,
            backend,
            conns: HashMap::new(),
            rx_list: VecDeque::new(),
            orphan_rsts: VecDeque::new(),
            next_local_port: EPHEMERAL_PORTS.start,
            chain: ChainBuffer::new(),
            wakers: Vec::new(),
            last_sweep: Instant::now(),
            closing_started: false,
        }
    }

    /// Number of live connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Whether anything is waiting for RX buffers.
    pub fn has_rx_work(&self) -> bool {
        !self.rx_list.is_empty() || !self.orphan_rsts.is_empty()
    }

    fn wake_all(&mut self) {
        for w in self.wakers.drain(..) {
            w.wake();
        }
    }

    fn schedule(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.get_mut(&key)
            && !conn.in_rx_list
            && conn.wants_rx()
        {
            conn.in_rx_list = true;
            self.rx_list.push_back(key);
        }
    }

    fn queue_orphan_rst(&mut self, hdr: &PacketHeader) {
        if self.orphan_rsts.len() >= MAX_ORPHAN_RSTS {
            tracing::debug!("vsock: orphan RST queue full, dropping");
            return;
        }
        self.orphan_rsts.push_back(PacketHeader {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: hdr.dst_port,
            dst_port: hdr.src_port,
            type_: TYPE_STREAM,
            op: Op::Rst as u16,
            ..PacketHeader::default()
        });
    }

    /// Drain the TX queue, at most `budget` chains (every chain is returned to the guest,
    /// malformed ones included). Returns the number of used-ring entries added and whether the
    /// budget ran out (more chains may be waiting).
    pub fn process_tx<M: GuestMemory>(
        &mut self,
        mem: &M,
        queue: &mut Queue,
        budget: u32,
    ) -> (u32, bool) {
        let mut used = 0;
        let mut popped = 0;
        let mut chain = std::mem::take(&mut self.chain);
        while popped < budget {
            let Some(desc_chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            popped += 1;
            let head = desc_chain.head_index();
            let parsed = chain
                .load(mem, desc_chain, ChainDir::DeviceReads)
                .and_then(|()| chain.parse_tx_header(mem));
            match parsed {
                Ok(hdr) => self.handle_packet(&hdr, &chain, mem),
                Err(e) => tracing::debug!(head, error = %e, "vsock: dropping malformed TX chain"),
            }
            match queue.add_used(mem, head, 0) {
                Ok(()) => used += 1,
                Err(e) => tracing::warn!(head, error = %e, "vsock: failed to add TX used entry"),
            }
        }
        self.chain = chain;
        self.wake_all();
        (used, popped == budget)
    }

    fn handle_packet<M: GuestMemory>(&mut self, hdr: &PacketHeader, chain: &ChainBuffer, mem: &M) {
        if hdr.dst_cid != HOST_CID || hdr.src_cid != self.guest_cid {
            tracing::debug!(
                src = hdr.src_cid,
                dst = hdr.dst_cid,
                "vsock: packet with wrong CIDs dropped"
            );
            return;
        }
        let op = Op::from_wire(hdr.op);
        if hdr.type_ != TYPE_STREAM {
            if op != Some(Op::Rst) {
                self.queue_orphan_rst(hdr);
            }
            return;
        }
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if let Some(conn) = self.conns.get_mut(&key) {
            match conn.handle_tx(hdr, chain, mem, &self.backend, &mut self.wakers) {
                Next::Remove => {
                    self.conns.remove(&key);
                }
                Next::Keep => self.schedule(key),
            }
            return;
        }
        match op {
            Some(Op::Request) => self.accept_from_guest(hdr, key),
            Some(Op::Rst) => {}
            _ => {
                tracing::debug!(
                    ?key,
                    op = hdr.op,
                    "vsock: packet for no connection, answering RST"
                );
                self.queue_orphan_rst(hdr);
            }
        }
    }

    fn accept_from_guest(&mut self, hdr: &PacketHeader, key: ConnKey) {
        if self.conns.len() >= MAX_CONNECTIONS {
            tracing::warn!(
                port = key.local_port,
                "vsock: connection limit reached, refusing guest"
            );
            self.queue_orphan_rst(hdr);
            return;
        }
        let shared = ConnShared::new();
        let accepted = {
            let mut listeners = self.backend.listeners();
            match listeners.get(&key.local_port) {
                Some(entry) => {
                    let stream = VsockStream::new(key, shared.clone(), self.backend.clone());
                    match entry.tx.try_send(stream) {
                        Ok(()) => true,
                        Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                            tracing::warn!(port = key.local_port, "vsock: accept backlog full");
                            false
                        }
                        Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {
                            listeners.remove(&key.local_port);
                            false
                        }
                    }
                }
                None => false,
            }
        };
        if !accepted {
            // The unused stream was dropped above; its kick will not match any connection.
            self.queue_orphan_rst(hdr);
            return;
        }
        self.conns
            .insert(key, Connection::peer_init(key, shared, hdr));
        self.schedule(key);
    }

    /// Handle everything the tokio side queued. Dump requests are returned to the caller, which
    /// adds what only it knows (the queues) before answering.
    pub fn process_commands(&mut self) -> Vec<oneshot::Sender<String>> {
        let commands = std::mem::take(&mut self.backend.inbox().commands);
        let mut dumps = Vec::new();
        for cmd in commands {
            match cmd {
                Command::Dump(reply) => dumps.push(reply),
                Command::Connect { port, reply } => self.connect(port, reply),
                Command::ConnectAbandoned => {
                    let abandoned: Vec<ConnKey> = self
                        .conns
                        .values()
                        .filter(|c| c.connect_abandoned())
                        .map(|c| c.key)
                        .collect();
                    for key in abandoned {
                        tracing::debug!(?key, "vsock: connect abandoned by the host, resetting");
                        if let Some(conn) = self.conns.get_mut(&key) {
                            conn.reset(&mut self.wakers);
                        }
                        self.schedule(key);
                    }
                }
                Command::Kick(key, shared) => {
                    shared.lock().kick_queued = false;
                    if self
                        .conns
                        .get(&key)
                        .is_some_and(|c| Arc::ptr_eq(&c.shared, &shared))
                    {
                        self.schedule(key);
                    }
                }
            }
        }
        self.wake_all();
        dumps
    }

    /// One line per connection (state, credit counters, buffered bytes) plus the RX work list.
    pub fn describe(&self) -> String {
        let mut out = format!(
            "connections {} rx_list {:?} orphan_rsts {}\n",
            self.conns.len(),
            self.rx_list,
            self.orphan_rsts.len()
        );
        for conn in self.conns.values() {
            out.push_str(&conn.describe());
            out.push('\n');
        }
        out
    }

    fn connect(&mut self, port: u32, reply: ConnectReply) {
        if reply.is_closed() {
            return;
        }
        if self.conns.len() >= MAX_CONNECTIONS {
            // The caller may have given up already.
            let _ = reply.send(Err(VsockError::TooManyConnections {
                max: MAX_CONNECTIONS,
            }));
            return;
        }
        let listeners = self.backend.listeners();
        let mut key = None;
        // At most MAX_CONNECTIONS + listeners ports are taken, so this finds one quickly.
        for _ in 0..=(MAX_CONNECTIONS + listeners.len()) {
            let candidate = self.next_local_port;
            self.next_local_port = if candidate + 1 >= EPHEMERAL_PORTS.end {
                EPHEMERAL_PORTS.start
            } else {
                candidate + 1
            };
            let k = ConnKey {
                local_port: candidate,
                peer_port: port,
            };
            if !self.conns.contains_key(&k) && !listeners.contains_key(&candidate) {
                key = Some(k);
                break;
            }
        }
        drop(listeners);
        let Some(key) = key else {
            let _ = reply.send(Err(VsockError::TooManyConnections {
                max: MAX_CONNECTIONS,
            }));
            return;
        };
        self.conns.insert(key, Connection::local_init(key, reply));
        self.schedule(key);
    }

    /// Whether a shutdown handshake started since the last call (the device then arms its
    /// timer so the timeout fires even if nothing else happens).
    pub fn take_closing_started(&mut self) -> bool {
        std::mem::take(&mut self.closing_started)
    }

    /// Whether any connection waits for the guest's RST.
    pub fn has_closing(&self) -> bool {
        self.conns.values().any(Connection::is_closing)
    }

    /// Reset connections whose shutdown handshake timed out (rate-limited unless `force`).
    pub fn sweep(&mut self, now: Instant, force: bool) {
        if !force && now.duration_since(self.last_sweep) < SWEEP_INTERVAL {
            return;
        }
        self.last_sweep = now;
        let expired: Vec<ConnKey> = self
            .conns
            .values()
            .filter(|c| c.shutdown_expired(now))
            .map(|c| c.key)
            .collect();
        for key in expired {
            tracing::debug!(
                ?key,
                "vsock: the guest did not answer our shutdown, resetting"
            );
            if let Some(conn) = self.conns.get_mut(&key) {
                conn.reset(&mut self.wakers);
            }
            self.schedule(key);
        }
        self.wake_all();
    }

    /// Fill the RX queue with owed packets. Returns the number of used-ring entries added.
    pub fn process_rx<M: GuestMemory>(&mut self, mem: &M, queue: &mut Queue) -> u32 {
        let mut sink = RxSink::new(mem, queue, &mut self.chain);
        while let Some(hdr) = self.orphan_rsts.front() {
            if !sink.ready() {
                break;
            }
            sink.send(hdr, (&[], &[]));
            self.orphan_rsts.pop_front();
        }
        while !sink.exhausted {
            let Some(key) = self.rx_list.pop_front() else {
                break;
            };
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.in_rx_list = false;
            let flushed = conn.flush_rx(&mut sink, self.guest_cid, &mut self.wakers);
            self.closing_started |= conn.is_closing();
            match flushed {
                Flush::Idle => {}
                Flush::More => {
                    conn.in_rx_list = true;
                    self.rx_list.push_back(key);
                }
                Flush::Remove => {
                    self.conns.remove(&key);
                }
            }
        }
        let used = sink.used;
        drop(sink);
        self.wake_all();
        used
    }

    /// The driver reset the device: every connection ends.
    pub fn reset_all(&mut self) {
        for (_, mut conn) in self.conns.drain() {
            conn.abort(VsockError::DeviceReset, &mut self.wakers);
        }
        self.rx_list.clear();
        self.orphan_rsts.clear();
        self.wake_all();
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        let commands = {
            let mut inbox = self.backend.inbox();
            inbox.closed = true;
            std::mem::take(&mut inbox.commands)
        };
        for cmd in commands {
            if let Command::Connect { reply, .. } = cmd {
                let _ = reply.send(Err(VsockError::DeviceGone));
            }
        }
        self.backend.listeners().clear();
        for (_, mut conn) in self.conns.drain() {
            conn.abort(VsockError::DeviceGone, &mut self.wakers);
        }
        self.wake_all();
    }
}
