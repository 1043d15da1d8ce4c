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
use super::packet::{HDR_LEN, HOST_CID, Op, PacketHeader, TYPE_STREAM};
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

/// What one input reached (lets tests check the harness gets past parsing).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FuzzReach {
    /// Guest connections accepted by the listener.
    pub accepted: usize,
    /// RX used-ring entries written.
    pub rx_used: u32,
}

/// Feed one fuzz input through TX parsing, the muxer and RX writing. Must never panic.
///
/// Input layout: `[tx_size_log2, rx_size_log2, listen_port_lo, rounds, memory image ...]`;
/// after the image (first `MEM_SIZE` bytes) come 10-byte patches `[offset u16 LE, 8 bytes]`
/// applied between rounds so later rounds see new chains on existing connections.
pub fn fuzz_tx_queue(data: &[u8]) -> FuzzReach {
    let mut reach = FuzzReach::default();
    let Some((params, rest)) = data.split_first_chunk::<4>() else {
        return reach;
    };
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]) else {
        return reach;
    };
    let (image, patches) = rest.split_at(rest.len().min(MEM_SIZE));
    if mem.write_slice(image, GuestAddress(0)).is_err() {
        return reach;
    }
    let tx_size = 1u16 << (params[0] % 5);
    let rx_size = 1u16 << (params[1] % 5);
    let (Some(mut txq), Some(mut rxq)) = (
        make_queue(tx_size, TX_DESC, TX_AVAIL, TX_USED),
        make_queue(rx_size, RX_DESC, RX_AVAIL, RX_USED),
    ) else {
        return reach;
    };
    let Ok(backend) = BackendShared::new() else {
        return reach;
    };
    let handle = VsockHandle::new(backend.clone());
    let mut muxer = Muxer::new(GUEST_CID, backend);
    let Ok(mut listener) = handle.listen(u32::from(params[2])) else {
        return reach;
    };
    let mut accepted: Vec<VsockStream> = Vec::new();
    let mut cx = Context::from_waker(Waker::noop());
    let mut patches = patches.chunks_exact(10);
    for _ in 0..=(params[3] % 8) {
        muxer.process_tx(&mem, &mut txq, 64);
        while let Some(stream) = listener.try_accept() {
            accepted.push(stream);
            reach.accepted += 1;
        }
        for stream in &mut accepted {
            // Host output exercises RX data packets and credit checks.
            let _: Poll<_> = Pin::new(stream).poll_write(&mut cx, &[0x5a; 3000]);
        }
        muxer.process_commands();
        reach.rx_used += muxer.process_rx(&mem, &mut rxq);
        if let Some(p) = patches.next() {
            let offset = u64::from(u16::from_le_bytes([p[0], p[1]]));
            // Patches past the end of memory are simply rejected by vm-memory.
            let _ = mem.write_slice(&p[2..], GuestAddress(offset));
        }
    }
    drop(accepted);
    muxer.process_commands();
    reach.rx_used += muxer.process_rx(&mem, &mut rxq);
    reach
}

/// A valid input: a REQUEST to the listener, then a data packet, and 16 RX buffers. Write it
/// into the corpus to give the fuzzer a head start.
pub fn seed_request_then_rw() -> Vec<u8> {
    let mut img = vec![0u8; 0x900];
    let desc =
        |img: &mut Vec<u8>, table: usize, i: usize, addr: u64, len: u32, flags: u16, next: u16| {
            let at = table + 16 * i;
            img[at..at + 8].copy_from_slice(&addr.to_le_bytes());
            img[at + 8..at + 12].copy_from_slice(&len.to_le_bytes());
            img[at + 12..at + 14].copy_from_slice(&flags.to_le_bytes());
            img[at + 14..at + 16].copy_from_slice(&next.to_le_bytes());
        };
    let hdr = |op: Op, len: u32| PacketHeader {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port: 1000,
        dst_port: 16,
        len,
        type_: TYPE_STREAM,
        op: op as u16,
        buf_alloc: 65536,
        ..PacketHeader::default()
    };
    // TX chain 0: REQUEST in descriptor 2; chain 1: RW header (0) -> payload (1).
    desc(&mut img, TX_DESC as usize, 2, 0x800, HDR_LEN as u32, 0, 0);
    desc(&mut img, TX_DESC as usize, 0, 0x600, HDR_LEN as u32, 1, 1);
    desc(&mut img, TX_DESC as usize, 1, 0x700, 5, 0, 0);
    img[0x800..0x800 + HDR_LEN].copy_from_slice(&hdr(Op::Request, 0).to_bytes());
    img[0x600..0x600 + HDR_LEN].copy_from_slice(&hdr(Op::Rw, 5).to_bytes());
    img[0x700..0x705].copy_from_slice(b"hello");
    let avail = TX_AVAIL as usize;
    img[avail + 2..avail + 4].copy_from_slice(&2u16.to_le_bytes());
    img[avail + 4..avail + 6].copy_from_slice(&2u16.to_le_bytes());
    // RX: 16 device-writable 256-byte buffers at 0x1000.
    for i in 0..16u16 {
        desc(
            &mut img,
            RX_DESC as usize,
            usize::from(i),
            0x1000 + u64::from(i) * 0x100,
            0x100,
            2,
            0,
        );
        let at = RX_AVAIL as usize + 4 + 2 * usize::from(i);
        img[at..at + 2].copy_from_slice(&i.to_le_bytes());
    }
    let avail = RX_AVAIL as usize;
    img[avail + 2..avail + 4].copy_from_slice(&16u16.to_le_bytes());
    let mut input = vec![4, 4, 16, 3];
    input.extend_from_slice(&img);
    input
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_reaches_an_established_connection_with_rx_traffic() {
        let reach = fuzz_tx_queue(&seed_request_then_rw());
        assert_eq!(reach.accepted, 1);
        // RESPONSE, host data packets, then SHUTDOWN after the stream is dropped.
        assert!(reach.rx_used >= 3, "{reach:?}");
        assert_eq!(fuzz_tx_queue(&[]), FuzzReach::default());
        // Truncated or garbage input must not panic either.
        let seed = seed_request_then_rw();
        for cut in [5, 100, 0x300, 0x500, seed.len() - 1] {
            fuzz_tx_queue(&seed[..cut]);
        }
    }
}
