//! virtio-net backed by a tap device: one RX and one TX queue, a fixed MAC, no offloads (no
//! checksum, no GSO, no mergeable buffers), so the guest sends and receives plain Ethernet frames
//! of at most MTU size. Frames are moved synchronously on the event-loop thread: the tap is
//! registered edge-triggered and read until it is empty or the guest has no RX buffer left;
//! a frame that finds no buffer waits in the device until the guest posts one.
//!
//! What the guest may reach through the tap is decided on the host (hearth's nftables rules on
//! the tap's name), not here.

pub mod frame;
#[doc(hidden)]
pub mod fuzzing;
pub mod tap;

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use self::frame::{MAX_FRAME_LEN, VNET_HDR_LEN};
use self::tap::Tap;
use super::{
    ActivateArgs, ActivateError, GuestMemory, IrqTrigger, TYPE_NET, VIRTIO_F_VERSION_1,
    VirtioDevice, read_config_bytes,
};

/// VIRTIO_NET_F_MAC: the config space holds the MAC address.
const VIRTIO_NET_F_MAC: u64 = 1 << 5;
const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 2] = [QUEUE_SIZE, QUEUE_SIZE];
const RX_QUEUE: usize = 0;
const TX_QUEUE: usize = 1;
/// TX chains served per wakeup before other event sources get a turn (then a self-kick).
const TX_BUDGET: usize = QUEUE_SIZE as usize;

const TOKEN_RX: u32 = RX_QUEUE as u32;
const TOKEN_TX: u32 = TX_QUEUE as u32;
const TOKEN_TAP: u32 = 2;
const TOKEN_ACTIVATE: u32 = 3;

/// Errors creating the device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The tap could not be opened.
    #[error(transparent)]
    Tap(#[from] tap::TapError),
    /// An eventfd could not be created.
    #[error("creating eventfd: {0}")]
    EventFd(#[source] io::Error),
}

/// Frame counters of one device, readable while the VM runs.
#[derive(Debug, Default)]
pub struct NetStats {
    /// Frames given to the guest.
    pub rx_frames: AtomicU64,
    /// Frames from the tap dropped (bad or too small RX chain).
    pub rx_dropped: AtomicU64,
    /// Frames the guest sent that reached the tap.
    pub tx_frames: AtomicU64,
    /// Frames the guest sent that were dropped (malformed chain, tap refused or full).
    pub tx_dropped: AtomicU64,
}

impl NetStats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

struct Active {
    mem: GuestMemory,
    queues: Vec<Queue>,
    irq: Arc<IrqTrigger>,
}

/// A virtio network device.
pub struct Net {
    tap: Arc<Tap>,
    mac: [u8; 6],
    activate_evt: EventFd,
    pending: Option<ActivateArgs>,
    active: Option<Active>,
    /// The queue eventfds of the current (or last) activation, registered with the event loop.
    queue_evts: Vec<EventFd>,
    /// A frame read from the tap that has not found an RX buffer yet: its length in `rx_buf`.
    rx_waiting: Option<usize>,
    rx_buf: Vec<u8>,
    tx_buf: Vec<u8>,
    stats: Arc<NetStats>,
    /// Set when a queue's used ring could not be written; the device then stops serving.
    broken: bool,
}

impl Net {
    /// A device on `tap` whose guest side has `mac`. The tap must serve this one device.
    pub fn new(tap: Arc<Tap>, mac: [u8; 6]) -> Result<Self, NetError> {
        Ok(Self {
            tap,
            mac,
            activate_evt: EventFd::new(EFD_NONBLOCK).map_err(NetError::EventFd)?,
            pending: None,
            active: None,
            queue_evts: Vec::new(),
            rx_waiting: None,
            rx_buf: vec![0; MAX_FRAME_LEN],
            tx_buf: Vec::with_capacity(MAX_FRAME_LEN + VNET_HDR_LEN),
            stats: Arc::default(),
            broken: false,
        })
    }

    /// The frame counters.
    pub fn stats(&self) -> Arc<NetStats> {
        self.stats.clone()
    }

    /// Moves frames from the tap into RX buffers until the tap is empty or the buffers run out.
    fn process_rx(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        if self.broken {
            return;
        }
        let mut used = 0u32;
        loop {
            let len = match self.rx_waiting {
                Some(len) => len,
                None => match self.tap.read_frame(&mut self.rx_buf) {
                    Ok(len) => len,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        tracing::warn!(tap = self.tap.name(), error = %e, "net: tap read failed");
                        break;
                    }
                },
            };
            self.rx_waiting = Some(len);
            let Some(chain) = a.queues[RX_QUEUE].pop_descriptor_chain(&a.mem) else {
                // No buffer: the frame waits for the guest's next RX notification.
                break;
            };
            let head = chain.head_index();
            let written = match frame::write_rx(chain, &a.mem, &self.rx_buf[..len]) {
                Ok(n) => {
                    NetStats::bump(&self.stats.rx_frames);
                    n
                }
                Err(e) => {
                    tracing::debug!(error = %e, "net: RX frame dropped");
                    NetStats::bump(&self.stats.rx_dropped);
                    0
                }
            };
            self.rx_waiting = None;
            if let Err(e) = a.queues[RX_QUEUE].add_used(&a.mem, head, written) {
                tracing::warn!(error = ?e, "net: RX queue broken; device stops serving");
                self.broken = true;
                break;
            }
            used += 1;
        }
        if used > 0 {
            Self::interrupt(a, RX_QUEUE);
        }
    }

    /// Sends the guest's TX frames to the tap, up to [`TX_BUDGET`] per call.
    fn process_tx(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        if self.broken {
            return;
        }
        let mut used = 0usize;
        while let Some(chain) = a.queues[TX_QUEUE].pop_descriptor_chain(&a.mem) {
            let head = chain.head_index();
            match frame::read_tx(chain, &a.mem, &mut self.tx_buf) {
                Ok(_) => match self.tap.write_frame(&self.tx_buf) {
                    Ok(_) => NetStats::bump(&self.stats.tx_frames),
                    Err(e) => {
                        let len = self.tx_buf.len();
                        tracing::debug!(error = %e, len, "net: tap refused a TX frame");
                        NetStats::bump(&self.stats.tx_dropped);
                    }
                },
                Err(e) => {
                    tracing::debug!(error = %e, "net: malformed TX chain dropped");
                    NetStats::bump(&self.stats.tx_dropped);
                }
            }
            if let Err(e) = a.queues[TX_QUEUE].add_used(&a.mem, head, 0) {
                tracing::warn!(error = ?e, "net: TX queue broken; device stops serving");
                self.broken = true;
                break;
            }
            used += 1;
            if used >= TX_BUDGET {
                if let Some(evt) = self.queue_evts.get(TX_QUEUE)
                    && let Err(e) = evt.write(1)
                {
                    tracing::warn!(error = %e, "net: failed to re-arm TX processing");
                }
                break;
            }
        }
        if used > 0 {
            Self::interrupt(a, TX_QUEUE);
        }
    }

    /// Raises the used-ring interrupt for `queue` unless the driver suppressed it.
    fn interrupt(a: &mut Active, queue: usize) {
        if let Err(e) = a.irq.signal_used(&mut a.queues[queue], &a.mem) {
            tracing::warn!(error = %e, "net: interrupt failed");
        }
    }

    fn finish_activation(&mut self, ops: &mut EventOps) {
        let Some(args) = self.pending.take() else {
            return;
        };
        for old in self.queue_evts.drain(..) {
            let _ = ops.remove(Events::new(&old, EventSet::IN));
        }
        for (index, evt) in args.queue_evts.iter().enumerate() {
            // index < 2, checked in `activate`.
            if let Err(e) = ops.add(Events::with_data(evt, index as u32, EventSet::IN)) {
                tracing::error!(queue = index, error = ?e, "net: cannot register queue eventfd");
                return;
            }
        }
        self.queue_evts = args.queue_evts;
        self.broken = false;
        self.rx_waiting = None;
        self.active = Some(Active {
            mem: args.mem,
            queues: args.queues,
            irq: args.irq,
        });
        // Frames the guest queued before we were ready, and frames waiting in the tap.
        self.process_tx();
        self.process_rx();
    }

    fn drain(&self, token: u32) {
        if let Some(evt) = self.queue_evts.get(token as usize)
            && let Err(e) = evt.read()
            && e.kind() != io::ErrorKind::WouldBlock
        {
            tracing::warn!(error = %e, "net: reading a queue eventfd failed");
        }
    }
}

impl MutEventSubscriber for Net {
    fn init(&mut self, ops: &mut EventOps) {
        let activate = Events::with_data(&self.activate_evt, TOKEN_ACTIVATE, EventSet::IN);
        if let Err(e) = ops.add(activate) {
            tracing::error!(error = ?e, "net: cannot register the activate eventfd");
        }
        let tap = Events::with_data_raw(
            self.tap.as_raw_fd(),
            TOKEN_TAP,
            EventSet::IN | EventSet::EDGE_TRIGGERED,
        );
        if let Err(e) = ops.add(tap) {
            tracing::error!(error = ?e, "net: cannot register the tap");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            TOKEN_ACTIVATE => {
                let _ = self.activate_evt.read();
                self.finish_activation(ops);
            }
            TOKEN_TAP => self.process_rx(),
            TOKEN_RX => {
                self.drain(TOKEN_RX);
                self.process_rx();
            }
            TOKEN_TX => {
                self.drain(TOKEN_TX);
                self.process_tx();
                // Replies (ARP, TCP ACKs) often come back at once.
                self.process_rx();
            }
            other => tracing::warn!(token = other, "net: event for an unknown source"),
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.mac, offset, data);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        tracing::warn!(offset, "write to virtio-net config ignored (MAC is fixed)");
    }

    fn activate(&mut self, args: ActivateArgs) -> Result<(), ActivateError> {
        if self.active.is_some() || self.pending.is_some() {
            return Err(ActivateError::AlreadyActivated);
        }
        if args.queues.len() != QUEUE_SIZES.len() || args.queue_evts.len() != QUEUE_SIZES.len() {
            return Err(ActivateError::BadQueueCount {
                expected: QUEUE_SIZES.len(),
                got: args.queues.len(),
            });
        }
        self.pending = Some(args);
        self.activate_evt.write(1).map_err(ActivateError::EventFd)
    }

    fn reset(&mut self) -> bool {
        self.pending = None;
        self.active = None;
        self.rx_waiting = None;
        true
    }
}

#[cfg(test)]
mod tests;
