//! Entry point for the cargo-fuzz target `vsock_tx` (not a stable API).
//!
//! The fuzz input *is* guest memory: descriptor tables, available rings and packet buffers all
//! come from it, so the muxer sees arbitrary (hostile) chains, headers, lengths and addresses.

use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::AsyncWrite;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::muxer::Muxer;
use super::shared::BackendShared;
use super::{VsockHandle, VsockStream};

/// Guest memory size; addresses at or beyond it are invalid.
const MEM_SIZE: usize = 0x1_0000;
/// Ring layout (small offsets so short inputs reach them).
const TX_DESC: u64 = 0x000;
const TX_AVAIL: u64 = 0x100;
const TX_USED: u64 = 0x200;
const RX_DESC: u64 = 0x300;
const RX_AVAIL: u64 = 0x400;
const RX_USED: u64 = 0x500;
const GUEST_CID: u64 = 3;

fn make_queue(size: u16, desc: u64, avail: u64, used: u64) -> Option<Queue> {
    let mut q = Queue::new(256).ok()?;
    q.try_set_size(size).ok()?;
    q.try_set_desc_table_address(GuestAddress(desc)).ok()?;
    q.try_set_avail_ring_address(GuestAddress(avail)).ok()?;
    q.try_set_used_ring_address(GuestAddress(used)).ok()?;
    q.set_ready(true);
    Some(q)
}

/// Feed one fuzz input through TX parsing, the muxer and RX writing. Must never panic.
///
/// Input layout: `[tx_size_log2, rx_size_log2, listen_port_lo, rounds, memory image ...]`;
/// after the image (first `MEM_SIZE` bytes) come 10-byte patches `[offset u16 LE, 8 bytes]`
/// applied between rounds so later rounds see new chains on existing connections.
pub fn fuzz_tx_queue(data: &[u8]) {
    let Some((params, rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]) else {
        return;
    };
    let (image, patches) = rest.split_at(rest.len().min(MEM_SIZE));
    if mem.write_slice(image, GuestAddress(0)).is_err() {
        return;
    }
    let tx_size = 1u16 << (params[0] % 5);
    let rx_size = 1u16 << (params[1] % 5);
    let (Some(mut txq), Some(mut rxq)) = (
        make_queue(tx_size, TX_DESC, TX_AVAIL, TX_USED),
        make_queue(rx_size, RX_DESC, RX_AVAIL, RX_USED),
    ) else {
        return;
    };
    let Ok(backend) = BackendShared::new() else {
        return;
    };
    let handle = VsockHandle::new(backend.clone());
    let mut muxer = Muxer::new(GUEST_CID, backend);
    let Ok(mut listener) = handle.listen(u32::from(params[2])) else {
        return;
    };
    let mut accepted: Vec<VsockStream> = Vec::new();
    let mut cx = Context::from_waker(Waker::noop());
    let mut patches = patches.chunks_exact(10);
    for _ in 0..=(params[3] % 8) {
        muxer.process_tx(&mem, &mut txq, 64);
        while let Some(stream) = listener.try_accept() {
            accepted.push(stream);
        }
        for stream in &mut accepted {
            // Host output exercises RX data packets and credit checks.
            let _: Poll<_> = Pin::new(stream).poll_write(&mut cx, &[0x5a; 3000]);
        }
        muxer.process_commands();
        muxer.process_rx(&mem, &mut rxq);
        if let Some(p) = patches.next() {
            let offset = u64::from(u16::from_le_bytes([p[0], p[1]]));
            // Patches past the end of memory are simply rejected by vm-memory.
            let _ = mem.write_slice(&p[2..], GuestAddress(offset));
        }
    }
    drop(accepted);
    muxer.process_commands();
    muxer.process_rx(&mem, &mut rxq);
}
