//! The virtio-vsock device: virtio glue and event-loop integration around the [`Muxer`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::Queue;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
use vmm_sys_util::timerfd::TimerFd;

use super::backend::VsockHandle;
use super::connection::SHUTDOWN_TIMEOUT;
use super::muxer::Muxer;
use super::shared::BackendShared;
use super::{VsockError, packet::HOST_CID};
use crate::devices::virtio::{
    ActivateArgs, ActivateError, GuestMemory, IrqTrigger, TYPE_VSOCK, VIRTIO_F_VERSION_1,
    VirtioDevice,
};
/// Queue indices.
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const NUM_QUEUES: usize = 3;
/// Maximum size of each queue. Linux's driver fills the whole RX queue with 4 KiB buffers when it
/// probes the device (an 8 KiB slab object each): 128 halved that work (virtio_vsock_init 21 →
/// 10.5 ms in the harness) and is what QEMU's vhost-vsock offers; 128 × 4 KiB in flight is still
/// more than the agent's streams keep outstanding.
pub const QUEUE_SIZE: u16 = 128;

/// TX chains handled per wakeup before yielding to other event sources.
const TX_BUDGET: u32 = 4 * QUEUE_SIZE as u32;

/// Event-loop tokens (the queue tokens are the queue indices).
const TOKEN_CONTROL: u32 = 100;
const TOKEN_BACKEND: u32 = 101;
const TOKEN_TIMER: u32 = 102;
/// While connections wait for the guest's RST, the timer re-checks this often.
const CLOSING_RECHECK: Duration = Duration::from_millis(250);

struct Active {
    mem: GuestMemory,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    irq: Arc<IrqTrigger>,
}

/// The vsock device (guest side of the transport). Create it with [`Vsock::new`], put it behind
/// the virtio-mmio transport, and add the same `Arc<Mutex<_>>` to the VMM's `EventManager`.
pub struct Vsock {
    guest_cid: u64,
    queue_sizes: [u16; NUM_QUEUES],
    acked_features: u64,
    /// Signalled by `activate`/`reset` (vCPU thread) so the event loop (un)registers queues.
    control_evt: EventFd,
    backend: Arc<BackendShared>,
    /// Fires shutdown timeouts when no other event arrives. One-shot; never `read` (a re-arm
    /// between epoll and the read would block the loop): handling re-arms or disarms it.
    timer: TimerFd,
    /// When the timer is due, if armed.
    timer_due: Option<Instant>,
    pending_activation: Option<ActivateArgs>,
    active: Option<Active>,
    /// Queue eventfds of a reset device, to be removed from the event loop.
    stale_evts: Vec<EventFd>,
    muxer: Muxer,
}

impl std::fmt::Debug for Vsock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vsock")
            .field("guest_cid", &self.guest_cid)
            .field("active", &self.active.is_some())
            .field("connections", &self.muxer.connection_count())
            .finish_non_exhaustive()
    }
}

impl Vsock {
    /// A vsock device for a guest with CID `guest_cid` (3 ..= u32::MAX - 1), plus the handle the
    /// host uses to open and accept connections.
    pub fn new(guest_cid: u64) -> Result<(Vsock, VsockHandle), VsockError> {
        if guest_cid <= HOST_CID || guest_cid >= u64::from(u32::MAX) {
            return Err(VsockError::InvalidCid { cid: guest_cid });
        }
        let backend = BackendShared::new()?;
        let device = Vsock {
            guest_cid,
            queue_sizes: [QUEUE_SIZE; NUM_QUEUES],
            acked_features: 0,
            control_evt: EventFd::new(EFD_NONBLOCK).map_err(VsockError::EventFd)?,
            backend: backend.clone(),
            timer: TimerFd::new().map_err(|e| VsockError::TimerFd(e.into()))?,
            timer_due: None,
            pending_activation: None,
            active: None,
            stale_evts: Vec::new(),
            muxer: Muxer::new(guest_cid, backend.clone()),
        };
        Ok((device, VsockHandle::new(backend)))
    }

    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// Another handle to this device's backend.
    pub fn handle(&self) -> VsockHandle {
        VsockHandle::new(self.backend.clone())
    }

    /// Live connections (all states).
    pub fn connection_count(&self) -> usize {
        self.muxer.connection_count()
    }

    /// Whether the driver activated the device and the event loop took over its queues.
    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// Raises the used-ring interrupt for `queue` unless the driver asked for none
    /// (`VIRTQ_AVAIL_F_NO_INTERRUPT`: Linux sets it while its RX or TX work drains the queue, and
    /// picks up what we add meanwhile before it turns interrupts back on). Every interrupt costs
    /// the guest its handler's two register accesses, each a VM exit. One the guest leaves
    /// unacknowledged is raised again by the event loop
    /// ([`IrqTrigger::repeat_if_unacknowledged`]), for every virtio device.
    fn signal_interrupt(active: &mut Active, queue: usize) {
        if let Err(e) = active
            .irq
            .signal_used(&mut active.queues[queue], &active.mem)
        {
            tracing::warn!(error = %e, "vsock: failed to signal the used-ring interrupt");
        }
    }

    /// Put owed packets into the RX queue.
    fn run_rx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if !self.muxer.has_rx_work() {
            return;
        }
        let used = self
            .muxer
            .process_rx(&active.mem, &mut active.queues[RX_QUEUE]);
        if used > 0 {
            Self::signal_interrupt(active, RX_QUEUE);
        }
    }

    /// Consume the TX queue, then answer whatever that produced. A guest that keeps refilling
    /// the queue gets [`TX_BUDGET`] chains per wakeup; the rest is picked up on a self-kick after
    /// other event sources had their turn.
    fn run_tx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let (used, more) =
            self.muxer
                .process_tx(&active.mem, &mut active.queues[TX_QUEUE], TX_BUDGET);
        if used > 0 {
            Self::signal_interrupt(active, TX_QUEUE);
        }
        if more && let Err(e) = active.queue_evts[TX_QUEUE].write(1) {
            tracing::warn!(error = %e, "vsock: failed to re-arm TX processing");
        }
        self.run_rx();
    }

    fn finish_activation(&mut self, args: ActivateArgs, ops: &mut EventOps) {
        for (index, evt) in args.queue_evts.iter().enumerate() {
            // index < NUM_QUEUES, checked in `activate`.
            let events = Events::with_data(evt, index as u32, EventSet::IN);
            if let Err(e) = ops.add(events) {
                tracing::error!(queue = index, error = ?e, "vsock: cannot register queue eventfd");
            }
        }
        self.acked_features = args.acked_features;
        self.active = Some(Active {
            mem: args.mem,
            queues: args.queues,
            queue_evts: args.queue_evts,
            irq: args.irq,
        });
        tracing::debug!(cid = self.guest_cid, "vsock: activated");
        // Anything the host asked for before the driver came up, and anything the guest queued.
        let dumps = self.muxer.process_commands();
        self.answer_dumps(dumps);
        self.run_tx();
    }

    /// Make sure the timer fires within `after` (an earlier expiry is kept).
    fn arm_timer_by(&mut self, after: Duration) {
        let at = Instant::now() + after;
        if self.timer_due.is_none_or(|due| due > at) {
            self.arm_timer(Some(after));
        }
    }

    /// Arm the one-shot timer for `after`, or disarm it.
    fn arm_timer(&mut self, after: Option<Duration>) {
        self.timer_due = after.map(|d| Instant::now() + d);
        let result = match after {
            Some(d) => self.timer.reset(d, None),
            None => self.timer.clear(),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "vsock: cannot (re)arm the shutdown timer");
        }
    }

    /// The device's state for a stall report: queue indices, interrupt status, connections.
    pub fn describe(&self) -> String {
        use std::sync::atomic::Ordering;
        use virtio_queue::QueueT;
        let mut out = format!("vsock cid {}: ", self.guest_cid);
        match &self.active {
            None => out.push_str("not active\n"),
            Some(active) => {
                out.push_str(&format!(
                    "irq status {:#x}, last raised {:?} ago, raised again {} times\n",
                    active.irq.status(),
                    active.irq.since_last_raised(),
                    active.irq.repeats()
                ));
                for (name, q) in [("rx", RX_QUEUE), ("tx", TX_QUEUE)] {
                    let queue = &active.queues[q];
                    let avail = queue.avail_idx(&active.mem, Ordering::Acquire);
                    let used = queue.used_idx(&active.mem, Ordering::Acquire);
                    out.push_str(&format!(
                        "{name} queue: avail_idx {:?} next_avail {} used_idx {:?} next_used {}\n",
                        avail.map(|w| w.0),
                        queue.next_avail(),
                        used.map(|w| w.0),
                        queue.next_used(),
                    ));
                }
            }
        }
        out.push_str(&self.muxer.describe());
        out
    }

    fn answer_dumps(&self, dumps: Vec<tokio::sync::oneshot::Sender<String>>) {
        if dumps.is_empty() {
            return;
        }
        let text = self.describe();
        for reply in dumps {
            // The caller may have given up waiting.
            let _ = reply.send(text.clone());
        }
    }

    fn drain(evt: &EventFd, what: &str) {
        if let Err(e) = evt.read()
            && e.kind() != std::io::ErrorKind::WouldBlock
        {
            tracing::warn!(error = %e, "vsock: reading {what} eventfd failed");
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    /// Config space: `guest_cid` as le64.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::devices::virtio::read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        tracing::warn!(
            offset,
            len = data.len(),
            "vsock: ignoring write to read-only config space"
        );
    }

    fn activate(&mut self, args: ActivateArgs) -> Result<(), ActivateError> {
        if args.queues.len() != NUM_QUEUES {
            return Err(ActivateError::BadQueueCount {
                expected: NUM_QUEUES,
                got: args.queues.len(),
            });
        }
        if args.queue_evts.len() != NUM_QUEUES {
            return Err(ActivateError::BadQueueCount {
                expected: NUM_QUEUES,
                got: args.queue_evts.len(),
            });
        }
        self.pending_activation = Some(args);
        self.control_evt.write(1).map_err(ActivateError::EventFd)?;
        Ok(())
    }

    fn reset(&mut self) -> bool {
        self.muxer.reset_all();
        self.pending_activation = None;
        if let Some(active) = self.active.take() {
            self.stale_evts.extend(active.queue_evts);
        }
        if let Err(e) = self.control_evt.write(1) {
            tracing::warn!(error = %e, "vsock: failed to signal reset to the event loop");
        }
        true
    }
}

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        let sources: [(&dyn std::os::fd::AsRawFd, u32); 3] = [
            (&self.control_evt, TOKEN_CONTROL),
            (&self.backend.evt, TOKEN_BACKEND),
            (&self.timer, TOKEN_TIMER),
        ];
        for (fd, token) in sources {
            let events = Events::with_data_raw(fd.as_raw_fd(), token, EventSet::IN);
            if let Err(e) = ops.add(events) {
                tracing::error!(token, error = ?e, "vsock: cannot register event source");
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            TOKEN_CONTROL => {
                Self::drain(&self.control_evt, "control");
                for evt in self.stale_evts.drain(..) {
                    // Already gone from epoll is fine.
                    let _ = ops.remove(Events::empty(&evt));
                }
                if let Some(args) = self.pending_activation.take() {
                    self.finish_activation(args, ops);
                }
            }
            TOKEN_TIMER => {
                // Re-arming or disarming clears the expiration (see the `timer` field).
                self.timer_due = None;
                let mut rearm = None;
                if self.muxer.has_closing() {
                    self.muxer.sweep(Instant::now(), true);
                    rearm = self.muxer.has_closing().then_some(CLOSING_RECHECK);
                }
                self.arm_timer(rearm);
            }
            TOKEN_BACKEND => {
                Self::drain(&self.backend.evt, "backend");
                if self.active.is_some() {
                    let dumps = self.muxer.process_commands();
                    self.answer_dumps(dumps);
                    self.run_rx();
                } else {
                    // Other commands wait for the driver; a state report cannot.
                    let dumps = self.backend.take_dump_requests();
                    self.answer_dumps(dumps);
                }
            }
            token => {
                let index = token as usize;
                let Some(active) = self.active.as_ref() else {
                    return;
                };
                let Some(evt) = active.queue_evts.get(index) else {
                    tracing::warn!(token, "vsock: unknown event token");
                    return;
                };
                Self::drain(evt, "queue");
                match index {
                    RX_QUEUE => self.run_rx(),
                    TX_QUEUE => self.run_tx(),
                    // We never send transport events; the buffers stay with us.
                    _ => {}
                }
            }
        }
        if self.active.is_some() {
            self.muxer.sweep(Instant::now(), false);
            self.run_rx();
            if self.muxer.take_closing_started() {
                self.arm_timer_by(SHUTDOWN_TIMEOUT + CLOSING_RECHECK);
            }
        }
    }
}
