//! Test-only guest driver: real split virtqueues in guest memory, a device on an event-loop
//! thread, and helpers to send/receive vsock packets the way a guest kernel would.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::packet::{HDR_LEN, HOST_CID, Op, PacketHeader, TYPE_STREAM};
use super::{NUM_QUEUES, Vsock, VsockHandle};
use crate::devices::virtio::{ActivateArgs, IrqTrigger, VIRTIO_F_VERSION_1, VirtioDevice};

pub const GUEST_CID: u64 = 3;
pub const QSIZE: u16 = 64;
const MEM_SIZE: usize = 16 << 20;
/// Per-descriptor buffer slot size (fits a 64 KiB payload).
const SLOT: u64 = 0x1_1000;
/// RX buffer size like Linux: header + 4 KiB in one descriptor.
pub const RX_BUF: u32 = HDR_LEN as u32 + 4096;

/// A descriptor written verbatim: (index, addr, len, flags, next).
pub type RawDesc = (u16, u64, u32, u16, u16);

/// The driver side of one split queue.
pub struct DriverQueue {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    bufs: u64,
    free: Vec<u16>,
    chains: HashMap<u16, Vec<u16>>,
    avail_idx: u16,
    used_seen: u16,
}

impl DriverQueue {
    pub fn new(base: u64, bufs: u64) -> Self {
        DriverQueue {
            size: QSIZE,
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
            bufs,
            free: (0..QSIZE).rev().collect(),
            chains: HashMap::new(),
            avail_idx: 0,
            used_seen: 0,
        }
    }

    pub fn device_queue(&self) -> Queue {
        let mut q = Queue::new(256).unwrap();
        q.try_set_size(self.size).unwrap();
        q.try_set_desc_table_address(GuestAddress(self.desc))
            .unwrap();
        q.try_set_avail_ring_address(GuestAddress(self.avail))
            .unwrap();
        q.try_set_used_ring_address(GuestAddress(self.used))
            .unwrap();
        q.set_ready(true);
        q
    }

    /// Buffer slot of descriptor `i`.
    pub fn slot(&self, i: u16) -> u64 {
        self.bufs + u64::from(i) * SLOT
    }

    fn write_desc(
        &self,
        mem: &GuestMemoryMmap,
        i: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        mem.write_slice(&raw, GuestAddress(self.desc + 16 * u64::from(i)))
            .unwrap();
    }

    /// Publish a chain of raw descriptors `(addr, len, flags)` (NEXT links are added here
    /// unless `raw_links` is set, in which case flags/next are used verbatim via `next`).
    pub fn push_chain(&mut self, mem: &GuestMemoryMmap, descs: &[(u64, u32, u16)]) -> u16 {
        let ids: Vec<u16> = (0..descs.len()).map(|_| self.free.pop().unwrap()).collect();
        for (k, &(addr, len, flags)) in descs.iter().enumerate() {
            let (flags, next) = match ids.get(k + 1) {
                Some(&n) => (flags | VRING_DESC_F_NEXT as u16, n),
                None => (flags, 0),
            };
            self.write_desc(mem, ids[k], addr, len, flags, next);
        }
        self.publish(mem, ids[0]);
        self.chains.insert(ids[0], ids.clone());
        ids[0]
    }

    /// Publish descriptor `head` as written by the caller (for hostile chains).
    pub fn push_raw(
        &mut self,
        mem: &GuestMemoryMmap,
        head: u16,
        descs: &[(u16, u64, u32, u16, u16)],
    ) {
        for &(i, addr, len, flags, next) in descs {
            self.write_desc(mem, i, addr, len, flags, next);
        }
        self.publish(mem, head);
    }

    fn publish(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        mem.write_obj(head.to_le(), GuestAddress(self.avail + 4 + 2 * slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.store(
            self.avail_idx.to_le(),
            GuestAddress(self.avail + 2),
            Ordering::Release,
        )
        .unwrap();
    }

    /// Sets or clears `VIRTQ_AVAIL_F_NO_INTERRUPT` (Linux sets it while it drains the queue).
    pub fn suppress_interrupts(&self, mem: &GuestMemoryMmap, on: bool) {
        mem.store(
            u16::from(on).to_le(),
            GuestAddress(self.avail),
            Ordering::Release,
        )
        .unwrap();
    }

    /// Used entries the device added since last time: (head, len).
    pub fn take_used(&mut self, mem: &GuestMemoryMmap) -> Vec<(u16, u32)> {
        let idx: u16 = u16::from_le(
            mem.load(GuestAddress(self.used + 2), Ordering::Acquire)
                .unwrap(),
        );
        let mut out = Vec::new();
        while self.used_seen != idx {
            let slot = u64::from(self.used_seen % self.size);
            let id: u32 = mem
                .read_obj(GuestAddress(self.used + 4 + 8 * slot))
                .unwrap();
            let len: u32 = mem
                .read_obj(GuestAddress(self.used + 8 + 8 * slot))
                .unwrap();
            let head = u16::try_from(id).unwrap();
            if let Some(ids) = self.chains.remove(&head) {
                self.free.extend(ids);
            }
            out.push((head, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }

    pub fn free_count(&self) -> usize {
        self.free.len()
    }
}

/// A device wired to a guest driver and an event-loop thread.
pub struct Harness {
    pub mem: GuestMemoryMmap,
    pub dev: Arc<Mutex<Vsock>>,
    pub handle: VsockHandle,
    pub rx: DriverQueue,
    pub tx: DriverQueue,
    pub irq: Arc<IrqTrigger>,
    kicks: Vec<EventFd>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Harness {
    /// Device activated, RX queue filled with Linux-sized buffers, event loop running.
    pub fn new() -> Harness {
        let mut h = Self::without_rx_buffers();
        h.fill_rx();
        h
    }

    /// Device activated and event loop running, but no RX buffers posted yet.
    pub fn without_rx_buffers() -> Harness {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let (dev, handle) = Vsock::new(GUEST_CID).unwrap();
        let dev = Arc::new(Mutex::new(dev));
        let mut em = EventManager::<Arc<Mutex<Vsock>>>::new().unwrap();
        em.add_subscriber(dev.clone());
        let irq = Arc::new(IrqTrigger::new().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let irqs = vec![irq.clone()];
        // As the VMM's event loop: serve events, then raise unacknowledged interrupts again.
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                em.run_with_timeout(10).unwrap();
                crate::event_loop::repeat_unacknowledged(&irqs);
            }
        });
        let rx = DriverQueue::new(0x1_0000, 0x10_0000);
        let tx = DriverQueue::new(0x2_0000, 0x60_0000);
        let kicks: Vec<EventFd> = (0..NUM_QUEUES)
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect();
        let args = ActivateArgs {
            mem: mem.clone(),
            queues: vec![
                rx.device_queue(),
                tx.device_queue(),
                DriverQueue::new(0x3_0000, 0xf0_0000).device_queue(),
            ],
            queue_evts: kicks.iter().map(|e| e.try_clone().unwrap()).collect(),
            irq: irq.clone(),
            acked_features: VIRTIO_F_VERSION_1,
        };
        dev.lock().unwrap().activate(args).unwrap();
        Harness {
            mem,
            dev,
            handle,
            rx,
            tx,
            irq,
            kicks,
            stop,
            thread: Some(thread),
        }
    }

    pub fn kick(&self, queue: usize) {
        self.kicks[queue].write(1).unwrap();
    }

    /// Give the device every free descriptor as an RX buffer.
    pub fn fill_rx(&mut self) {
        let mut added = false;
        while self.rx.free_count() > 0 {
            let i = self.rx.free.last().copied().unwrap();
            let addr = self.rx.slot(i);
            self.rx
                .push_chain(&self.mem, &[(addr, RX_BUF, VRING_DESC_F_WRITE as u16)]);
            added = true;
        }
        if added {
            self.kick(0);
        }
    }

    /// Send a packet on the TX queue (header and payload in separate descriptors, as older
    /// Linux drivers do) and kick.
    pub fn send(&mut self, hdr: PacketHeader, payload: &[u8]) {
        self.reap_tx();
        let i = self.tx.free.last().copied().expect("TX queue full");
        let base = self.tx.slot(i);
        self.mem
            .write_slice(&hdr.to_bytes(), GuestAddress(base))
            .unwrap();
        if payload.is_empty() {
            self.tx.push_chain(&self.mem, &[(base, HDR_LEN as u32, 0)]);
        } else {
            let data = base + 0x100;
            self.mem.write_slice(payload, GuestAddress(data)).unwrap();
            let len = u32::try_from(payload.len()).unwrap();
            self.tx
                .push_chain(&self.mem, &[(base, HDR_LEN as u32, 0), (data, len, 0)]);
        }
        self.kick(1);
    }

    /// Returned TX chains.
    pub fn reap_tx(&mut self) -> usize {
        self.tx.take_used(&self.mem).len()
    }

    /// Packets the device put into the RX queue since last time (RX buffers are re-posted).
    pub fn recv(&mut self) -> Vec<(PacketHeader, Vec<u8>)> {
        let used = self.rx.take_used(&self.mem);
        let mut out = Vec::new();
        for (head, len) in used {
            let base = self.rx.slot(head);
            if (len as usize) < HDR_LEN {
                continue;
            }
            let mut raw = [0u8; HDR_LEN];
            self.mem.read_slice(&mut raw, GuestAddress(base)).unwrap();
            let hdr = PacketHeader::from_bytes(&raw);
            assert_eq!(
                len,
                HDR_LEN as u32 + hdr.len,
                "used len must match header len"
            );
            let mut data = vec![0u8; hdr.len as usize];
            self.mem
                .read_slice(&mut data, GuestAddress(base + HDR_LEN as u64))
                .unwrap();
            out.push((hdr, data));
        }
        self.fill_rx();
        out
    }

    /// Poll `recv` until `pred` has seen what it wants (returns true) or 5 s pass.
    pub async fn recv_until(
        &mut self,
        mut pred: impl FnMut(&PacketHeader, &[u8]) -> bool,
    ) -> Vec<(PacketHeader, Vec<u8>)> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut all = Vec::new();
        loop {
            let mut done = false;
            for (h, d) in self.recv() {
                done |= pred(&h, &d);
                all.push((h, d));
            }
            if done {
                return all;
            }
            assert!(Instant::now() < deadline, "timed out; got {all:?}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Wait until `cond` holds for the device (5 s limit).
    pub async fn wait_device(&self, mut cond: impl FnMut(&Vsock) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond(&self.dev.lock().unwrap()) {
            assert!(Instant::now() < deadline, "device condition not reached");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A guest→host header for connection (guest `src_port`, host `dst_port`).
pub fn guest_hdr(src_port: u32, dst_port: u32, op: Op) -> PacketHeader {
    PacketHeader {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len: 0,
        type_: TYPE_STREAM,
        op: op as u16,
        flags: 0,
        buf_alloc: 256 * 1024,
        fwd_cnt: 0,
    }
}
