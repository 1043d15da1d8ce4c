//! Writing packets into the guest's RX queue.

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemory;

use super::packet::{ChainBuffer, ChainDir, HDR_LEN, PacketHeader};

/// The RX queue as a packet sink for one processing pass.
pub struct RxSink<'a, M: GuestMemory> {
    mem: &'a M,
    queue: &'a mut Queue,
    chain: &'a mut ChainBuffer,
    /// Chain head currently loaded into `chain` (popped, not yet returned to the guest).
    current: Option<u16>,
    /// Used-ring entries added during this pass (an interrupt is due if non-zero).
    pub used: u32,
    /// The driver has no more RX buffers.
    pub exhausted: bool,
}

impl<'a, M: GuestMemory> RxSink<'a, M> {
    pub fn new(mem: &'a M, queue: &'a mut Queue, chain: &'a mut ChainBuffer) -> Self {
        RxSink {
            mem,
            queue,
            chain,
            current: None,
            used: 0,
            exhausted: false,
        }
    }

    /// Make sure a usable RX chain (one that fits at least a header) is loaded. Malformed chains
    /// are returned to the guest unused. `false`: the driver supplied no more buffers.
    pub fn ready(&mut self) -> bool {
        if self.current.is_some() {
            return true;
        }
        if self.exhausted {
            return false;
        }
        loop {
            let Some(chain) = self.queue.pop_descriptor_chain(self.mem) else {
                self.exhausted = true;
                return false;
            };
            let head = chain.head_index();
            match self.chain.load(self.mem, chain, ChainDir::DeviceWrites) {
                Ok(()) if self.chain.len() >= HDR_LEN as u64 => {
                    self.current = Some(head);
                    return true;
                }
                Ok(()) => tracing::debug!(head, "vsock: RX chain too small for a header"),
                Err(e) => tracing::debug!(head, error = %e, "vsock: dropping malformed RX chain"),
            }
            self.add_used(head, 0);
        }
    }

    /// Payload room in the loaded chain (call after [`RxSink::ready`]).
    pub fn payload_capacity(&self) -> u32 {
        if self.current.is_some() {
            self.chain.rx_payload_capacity()
        } else {
            0
        }
    }

    fn add_used(&mut self, head: u16, len: u32) {
        match self.queue.add_used(self.mem, head, len) {
            Ok(()) => self.used += 1,
            Err(e) => tracing::warn!(head, error = %e, "vsock: failed to add RX used entry"),
        }
    }

    /// Write `hdr` (whose `len` must equal the payload length) and the payload (given as up to
    /// two slices, e.g. a ring buffer's filled regions) into the loaded chain and hand it to the
    /// guest. Returns `false` if no chain was loaded or guest memory rejected the write.
    pub fn send(&mut self, hdr: &PacketHeader, payload: (&[u8], &[u8])) -> bool {
        let Some(head) = self.current.take() else {
            return false;
        };
        let total = HDR_LEN + payload.0.len() + payload.1.len();
        let written = self
            .chain
            .write_at(self.mem, 0, &hdr.to_bytes())
            .and_then(|()| self.chain.write_at(self.mem, HDR_LEN as u64, payload.0))
            .and_then(|()| {
                let at = (HDR_LEN + payload.0.len()) as u64;
                self.chain.write_at(self.mem, at, payload.1)
            });
        match written {
            Ok(()) => {
                // total <= HDR_LEN + MAX_PKT_PAYLOAD, fits in u32.
                self.add_used(head, total as u32);
                true
            }
            Err(e) => {
                tracing::debug!(head, error = %e, "vsock: RX chain write failed");
                self.add_used(head, 0);
                false
            }
        }
    }

    /// Hand the loaded chain back to the guest unused (length 0).
    pub fn discard(&mut self) {
        if let Some(head) = self.current.take() {
            self.add_used(head, 0);
        }
    }

    /// Return an unfilled loaded chain to the queue's available ring position (not to the
    /// guest), so the next pass can use it.
    pub fn unpop(&mut self) {
        if self.current.take().is_some() {
            self.queue.go_to_previous_position();
        }
    }
}

impl<M: GuestMemory> Drop for RxSink<'_, M> {
    fn drop(&mut self) {
        self.unpop();
    }
}
