//! Entry point for the cargo-fuzz target `virtio_net_frames` (not a stable API).
//!
//! The fuzz input *is* guest memory: both queues' descriptor tables and available rings and
//! every buffer come from it, so [`frame::read_tx`] and [`frame::write_rx`] see arbitrary
//! (hostile) chains, directions, lengths and addresses, the way the device serves them.

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::frame::{self, MAX_FRAME_LEN};
use crate::devices::virtio::fuzz_queue;

/// Guest memory size; addresses at or beyond it are invalid.
const MEM_SIZE: usize = 0x1_0000;
const TX_RINGS: (u64, u64, u64) = (0x0000, 0x1000, 0x1400);
const RX_RINGS: (u64, u64, u64) = (0x2000, 0x3000, 0x3400);

/// What one input did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    /// TX chains that held a frame.
    pub tx_frames: u32,
    /// RX chains that took a frame.
    pub rx_frames: u32,
    /// Chains of either queue given back unused.
    pub dropped: u32,
}

fn queue(size_log2: u8, rings: (u64, u64, u64)) -> Option<Queue> {
    fuzz_queue(size_log2, rings.0, rings.1, rings.2)
}

/// Feeds one fuzz input through both queues. Must never panic.
///
/// Input layout: `[tx_size_log2, rx_size_log2, rx_frame_len u16 LE, memory image ...]`.
pub fn fuzz_net_queues(data: &[u8]) -> Moved {
    let mut moved = Moved::default();
    let Some((params, image)) = data.split_first_chunk::<4>() else {
        return moved;
    };
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]) else {
        return moved;
    };
    if mem
        .write_slice(&image[..image.len().min(MEM_SIZE)], GuestAddress(0))
        .is_err()
    {
        return moved;
    }
    let (Some(mut tx), Some(mut rx)) = (queue(params[0], TX_RINGS), queue(params[1], RX_RINGS))
    else {
        return moved;
    };
    let mut buf = Vec::new();
    while let Some(chain) = tx.pop_descriptor_chain(&mem) {
        let head = chain.head_index();
        match frame::read_tx(chain, &mem, &mut buf) {
            Ok(_) => moved.tx_frames += 1,
            Err(_) => moved.dropped += 1,
        }
        if tx.add_used(&mem, head, 0).is_err() {
            return moved;
        }
    }
    let len = usize::from(u16::from_le_bytes([params[2], params[3]])).min(MAX_FRAME_LEN);
    let rx_frame = vec![0x5a; len];
    while let Some(chain) = rx.pop_descriptor_chain(&mem) {
        let head = chain.head_index();
        let written = match frame::write_rx(chain, &mem, &rx_frame) {
            Ok(n) => {
                moved.rx_frames += 1;
                n
            }
            Err(_) => {
                moved.dropped += 1;
                0
            }
        };
        if rx.add_used(&mem, head, written).is_err() {
            return moved;
        }
    }
    moved
}

/// A valid input: one TX frame of 60 bytes in two descriptors, one 1526-byte RX buffer, and a
/// writable descriptor in the TX queue (malformed). Write it into the corpus as a head start.
pub fn seed_frames() -> Vec<u8> {
    let mut img = vec![0u8; 0x8000];
    let desc = |img: &mut Vec<u8>, table: u64, i: usize, d: (u64, u32, u16, u16)| {
        let at = table as usize + 16 * i;
        img[at..at + 8].copy_from_slice(&d.0.to_le_bytes());
        img[at + 8..at + 12].copy_from_slice(&d.1.to_le_bytes());
        img[at + 12..at + 14].copy_from_slice(&d.2.to_le_bytes());
        img[at + 14..at + 16].copy_from_slice(&d.3.to_le_bytes());
    };
    let avail = |img: &mut Vec<u8>, ring: u64, heads: &[u16]| {
        let at = ring as usize;
        for (i, h) in heads.iter().enumerate() {
            img[at + 4 + 2 * i..at + 6 + 2 * i].copy_from_slice(&h.to_le_bytes());
        }
        img[at + 2..at + 4].copy_from_slice(&(heads.len() as u16).to_le_bytes());
    };
    const NEXT: u16 = 1;
    const WRITE: u16 = 2;
    desc(&mut img, TX_RINGS.0, 0, (0x4000, 12, NEXT, 1));
    desc(&mut img, TX_RINGS.0, 1, (0x4100, 60, 0, 0));
    desc(&mut img, TX_RINGS.0, 2, (0x4200, 64, WRITE, 0));
    avail(&mut img, TX_RINGS.1, &[0, 2]);
    desc(&mut img, RX_RINGS.0, 0, (0x5000, 1526, WRITE, 0));
    avail(&mut img, RX_RINGS.1, &[0]);
    let mut input = vec![4, 4];
    input.extend_from_slice(&64u16.to_le_bytes());
    input.extend_from_slice(&img);
    input
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_moves_a_frame_each_way_and_drops_the_malformed_chain() {
        let moved = fuzz_net_queues(&seed_frames());
        assert_eq!(
            moved,
            Moved {
                tx_frames: 1,
                rx_frames: 1,
                dropped: 1
            }
        );
        assert_eq!(fuzz_net_queues(&[]), Moved::default());
        let seed = seed_frames();
        for cut in [3, 5, 100, 0x1000, 0x2010, seed.len() - 1] {
            fuzz_net_queues(&seed[..cut]);
        }
        // An RX frame larger than the buffer is dropped, not truncated.
        let mut big = seed.clone();
        big[2..4].copy_from_slice(&2000u16.to_le_bytes());
        assert_eq!(fuzz_net_queues(&big).rx_frames, 0);
    }
}
