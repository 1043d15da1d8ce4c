//! virtio-net frame copying (virtio 1.2 §5.1.6): one Ethernet frame between a descriptor chain
//! and a host buffer. Pure functions over guest memory, so tests and the fuzz target drive them
//! directly. The device offers no offloads, so every header it writes is all zero but
//! `num_buffers` = 1, and every header it reads is dropped unread: nothing of the guest's
//! header reaches the host kernel.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress};

use crate::devices::virtio::GuestMemory;

/// `struct virtio_net_hdr_v1` (flags, gso_type, hdr_len, gso_size, csum_start, csum_offset,
/// num_buffers): its size whenever VIRTIO_F_VERSION_1 is negotiated.
pub const VNET_HDR_LEN: usize = 12;
/// The largest frame taken from or given to the guest: a 64 KiB Ethernet payload and its
/// header (no GSO is offered, so real frames stay at MTU + 14 bytes).
pub const MAX_FRAME_LEN: usize = 65_550;
/// Most descriptors accepted in one chain (the queue size bounds a well-formed chain anyway).
const MAX_DESCRIPTORS: usize = 256;

/// Why a chain could not carry a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A TX chain holds a device-writable descriptor, or an RX chain a device-readable one.
    #[error("descriptor of the wrong direction")]
    WrongDirection,
    /// More descriptors than [`MAX_DESCRIPTORS`].
    #[error("descriptor chain too long")]
    TooLong,
    /// The TX chain holds less than a virtio-net header.
    #[error("TX chain shorter than the virtio-net header")]
    TooShort,
    /// The TX frame is above [`MAX_FRAME_LEN`].
    #[error("TX frame above {MAX_FRAME_LEN} bytes")]
    Oversized,
    /// The RX chain's buffers are smaller than header plus frame.
    #[error("RX buffers too small for the frame")]
    NoRoom,
    /// A descriptor lies outside guest memory.
    #[error("descriptor outside guest memory")]
    BadAddress,
}

/// Copies the frame of one TX chain (its virtio-net header skipped) into `out`, which is
/// cleared first. Returns the frame length. Never panics on guest data.
pub fn read_tx<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemory,
    out: &mut Vec<u8>,
) -> Result<usize, FrameError>
where
    M: Clone + Deref,
    M::Target: vm_memory::GuestMemory,
{
    out.clear();
    // Header bytes still to skip.
    let mut skip = VNET_HDR_LEN;
    let mut total = 0usize;
    for (i, d) in chain.enumerate() {
        if i >= MAX_DESCRIPTORS {
            return Err(FrameError::TooLong);
        }
        if d.is_write_only() {
            return Err(FrameError::WrongDirection);
        }
        let len = d.len() as usize;
        total = total.saturating_add(len);
        if total > MAX_FRAME_LEN + VNET_HDR_LEN {
            return Err(FrameError::Oversized);
        }
        let dropped = skip.min(len);
        skip -= dropped;
        let Some(addr) = d.addr().0.checked_add(dropped as u64) else {
            return Err(FrameError::BadAddress);
        };
        let start = out.len();
        out.resize(start + len - dropped, 0);
        mem.read_slice(&mut out[start..], GuestAddress(addr))
            .map_err(|_| FrameError::BadAddress)?;
    }
    if skip > 0 {
        return Err(FrameError::TooShort);
    }
    Ok(out.len())
}

/// Writes a virtio-net header and `frame` into the device-writable buffers of one RX chain.
/// Returns the bytes written (the used length). Nothing is written when the chain is bad or too
/// small, so the caller can hand the chain back unused. Never panics on guest data.
pub fn write_rx<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemory,
    frame: &[u8],
) -> Result<u32, FrameError>
where
    M: Clone + Deref,
    M::Target: vm_memory::GuestMemory,
{
    let mut bufs: Vec<(GuestAddress, usize)> = Vec::new();
    let mut room = 0usize;
    for (i, d) in chain.enumerate() {
        if i >= MAX_DESCRIPTORS {
            return Err(FrameError::TooLong);
        }
        if !d.is_write_only() {
            return Err(FrameError::WrongDirection);
        }
        room = room.saturating_add(d.len() as usize);
        bufs.push((d.addr(), d.len() as usize));
    }
    let total = VNET_HDR_LEN + frame.len();
    if room < total {
        return Err(FrameError::NoRoom);
    }
    let mut hdr = [0u8; VNET_HDR_LEN];
    // num_buffers (le16 at offset 10): the frame fits in this one chain.
    hdr[10] = 1;
    let mut sources = [&hdr[..], frame];
    let mut written = 0usize;
    for (addr, len) in bufs {
        let mut at = addr;
        let mut left = len;
        for src in sources.iter_mut() {
            if left == 0 {
                break;
            }
            let n = src.len().min(left);
            if n == 0 {
                continue;
            }
            mem.write_slice(&src[..n], at)
                .map_err(|_| FrameError::BadAddress)?;
            *src = &src[n..];
            left -= n;
            written += n;
            at =
                at.0.checked_add(n as u64)
                    .map(GuestAddress)
                    .ok_or(FrameError::BadAddress)?;
        }
        if written == total {
            break;
        }
    }
    // `room >= total` and every source slice was consumed in order.
    u32::try_from(written).map_err(|_| FrameError::NoRoom)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::vsock::test_driver::DriverQueue;
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::QueueT;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
    }

    #[test]
    fn tx_frame_skips_a_header_split_over_descriptors() {
        let m = mem();
        let mut dq = DriverQueue::new(0x1_0000, 0x10_0000);
        let mut q = dq.device_queue();
        // 5 header bytes, then 7 header bytes + "ab", then "cdef".
        m.write_slice(&[0xee; 5], GuestAddress(0x20_0000)).unwrap();
        m.write_slice(
            &[0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, b'a', b'b'],
            GuestAddress(0x21_0000),
        )
        .unwrap();
        m.write_slice(b"cdef", GuestAddress(0x22_0000)).unwrap();
        dq.push_chain(
            &m,
            &[(0x20_0000, 5, 0), (0x21_0000, 9, 0), (0x22_0000, 4, 0)],
        );
        let chain = q.pop_descriptor_chain(&m).unwrap();
        let mut out = Vec::new();
        assert_eq!(read_tx(chain, &m, &mut out), Ok(6));
        assert_eq!(out, b"abcdef");
    }

    #[test]
    fn tx_chain_shorter_than_the_header_or_writable_is_refused() {
        let m = mem();
        let mut dq = DriverQueue::new(0x1_0000, 0x10_0000);
        let mut q = dq.device_queue();
        dq.push_chain(&m, &[(0x20_0000, 11, 0)]);
        dq.push_chain(&m, &[(0x20_0000, 64, VRING_DESC_F_WRITE as u16)]);
        dq.push_chain(&m, &[(u64::MAX - 4, 64, 0)]);
        let mut out = Vec::new();
        let c = q.pop_descriptor_chain(&m).unwrap();
        assert_eq!(read_tx(c, &m, &mut out), Err(FrameError::TooShort));
        let c = q.pop_descriptor_chain(&m).unwrap();
        assert_eq!(read_tx(c, &m, &mut out), Err(FrameError::WrongDirection));
        let c = q.pop_descriptor_chain(&m).unwrap();
        assert_eq!(read_tx(c, &m, &mut out), Err(FrameError::BadAddress));
    }

    #[test]
    fn rx_frame_lands_after_a_header_with_one_buffer_across_descriptors() {
        let m = mem();
        let mut dq = DriverQueue::new(0x1_0000, 0x10_0000);
        let mut q = dq.device_queue();
        let w = VRING_DESC_F_WRITE as u16;
        dq.push_chain(&m, &[(0x20_0000, 8, w), (0x21_0000, 100, w)]);
        let frame: Vec<u8> = (0..50u8).collect();
        let chain = q.pop_descriptor_chain(&m).unwrap();
        assert_eq!(write_rx(chain, &m, &frame), Ok(62));
        let mut first = [0u8; 8];
        m.read_slice(&mut first, GuestAddress(0x20_0000)).unwrap();
        assert_eq!(first, [0; 8]);
        let mut rest = [0u8; 54];
        m.read_slice(&mut rest, GuestAddress(0x21_0000)).unwrap();
        assert_eq!(&rest[..4], &[0, 0, 1, 0], "num_buffers = 1");
        assert_eq!(&rest[4..], &frame[..]);
    }

    #[test]
    fn rx_chain_too_small_or_readable_gets_nothing_written() {
        let m = mem();
        let mut dq = DriverQueue::new(0x1_0000, 0x10_0000);
        let mut q = dq.device_queue();
        let w = VRING_DESC_F_WRITE as u16;
        m.write_slice(&[0x55; 64], GuestAddress(0x20_0000)).unwrap();
        dq.push_chain(&m, &[(0x20_0000, 20, w)]);
        dq.push_chain(&m, &[(0x20_0000, 64, 0)]);
        let c = q.pop_descriptor_chain(&m).unwrap();
        assert_eq!(write_rx(c, &m, &[1; 9]), Err(FrameError::NoRoom));
        let c = q.pop_descriptor_chain(&m).unwrap();
        assert_eq!(write_rx(c, &m, &[1; 9]), Err(FrameError::WrongDirection));
        let mut back = [0u8; 64];
        m.read_slice(&mut back, GuestAddress(0x20_0000)).unwrap();
        assert_eq!(back, [0x55; 64]);
    }
}
