//! The virtio-vsock packet header (virtio spec 1.2, 5.10.6) and descriptor-chain access.
//!
//! We parse chains ourselves instead of using `virtio-vsock`'s `VsockPacket`: that type accepts
//! only "header + at most one data descriptor", each contiguous in host memory, while the spec
//! lets a driver split header and payload over any number of descriptors. Here a chain is
//! flattened into a list of validated guest-memory segments ([`ChainBuffer`]) and the header and
//! payload are copied in and out of it at byte offsets, so any layout works and every address is
//! range-checked before use. Everything in here treats guest data as hostile: no panics, only
//! [`PacketError`]s.

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError, Permissions};

/// Size of the packed `virtio_vsock_hdr`.
pub const HDR_LEN: usize = 44;
/// The host's well-known CID.
pub const HOST_CID: u64 = 2;
/// `VIRTIO_VSOCK_TYPE_STREAM`.
pub const TYPE_STREAM: u16 = 1;
/// Largest payload we accept in one TX packet or produce in one RX packet (Linux uses 64 KiB).
pub const MAX_PKT_PAYLOAD: u32 = 64 * 1024;
/// Longest chain (in descriptors) we are willing to look at.
pub const MAX_CHAIN_SEGMENTS: usize = 256;

/// `VIRTIO_VSOCK_SHUTDOWN_F_RECEIVE`: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// `VIRTIO_VSOCK_SHUTDOWN_F_SEND`: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// Packet operations (`VIRTIO_VSOCK_OP_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Op {
    Request = 1,
    Response = 2,
    Rst = 3,
    Shutdown = 4,
    Rw = 5,
    CreditUpdate = 6,
    CreditRequest = 7,
}

impl Op {
    /// Decode a wire op; `None` for unknown values (including `INVALID` = 0).
    pub fn from_wire(raw: u16) -> Option<Self> {
        Some(match raw {
            1 => Op::Request,
            2 => Op::Response,
            3 => Op::Rst,
            4 => Op::Shutdown,
            5 => Op::Rw,
            6 => Op::CreditUpdate,
            7 => Op::CreditRequest,
            _ => return None,
        })
    }
}

/// A decoded `virtio_vsock_hdr` (all fields little-endian on the wire).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketHeader {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

fn le_u64(b: &[u8; HDR_LEN], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

fn le_u32(b: &[u8; HDR_LEN], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

fn le_u16(b: &[u8; HDR_LEN], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

impl PacketHeader {
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Self {
        PacketHeader {
            src_cid: le_u64(b, 0),
            dst_cid: le_u64(b, 8),
            src_port: le_u32(b, 16),
            dst_port: le_u32(b, 20),
            len: le_u32(b, 24),
            type_: le_u16(b, 28),
            op: le_u16(b, 30),
            flags: le_u32(b, 32),
            buf_alloc: le_u32(b, 36),
            fwd_cnt: le_u32(b, 40),
        }
    }

    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// Why a descriptor chain was rejected.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    #[error("descriptor {index} is device-writable in a TX (device-readable) chain")]
    WritableInTxChain { index: usize },
    #[error("descriptor {index} is device-readable in an RX (device-writable) chain")]
    ReadableInRxChain { index: usize },
    #[error("descriptor {index} ({addr:#x}, {len} bytes) is outside guest memory")]
    OutOfGuestMemory { index: usize, addr: u64, len: u32 },
    #[error("chain has more than {MAX_CHAIN_SEGMENTS} descriptors")]
    TooManyDescriptors,
    #[error("chain holds {total} bytes, less than the {HDR_LEN}-byte header")]
    HeaderTooShort { total: u64 },
    #[error("header len {len} exceeds the maximum payload of {MAX_PKT_PAYLOAD} bytes")]
    PayloadTooLarge { len: u32 },
    #[error("header len {len} exceeds the {available} payload bytes the chain carries")]
    PayloadBeyondChain { len: u32, available: u64 },
    #[error("access at chain offset {offset} (+{len}) beyond the chain's {total} bytes")]
    BeyondChain { offset: u64, len: usize, total: u64 },
    #[error("guest memory access failed: {0}")]
    Memory(#[from] GuestMemoryError),
}

/// Which way the device accesses a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainDir {
    /// TX queue: every descriptor must be device-readable.
    DeviceReads,
    /// RX queue: every descriptor must be device-writable.
    DeviceWrites,
}

#[derive(Clone, Copy, Debug)]
struct Segment {
    addr: GuestAddress,
    len: u32,
}

/// A descriptor chain flattened into validated guest-memory segments. Reused between chains to
/// avoid allocating per packet.
#[derive(Debug, Default)]
pub struct ChainBuffer {
    segs: Vec<Segment>,
    total: u64,
}

impl ChainBuffer {
    pub fn new() -> Self {
        ChainBuffer {
            segs: Vec::with_capacity(16),
            total: 0,
        }
    }

    /// Total bytes in the chain.
    pub fn len(&self) -> u64 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Load a chain: check direction and that every descriptor lies inside guest memory.
    pub fn load<M: GuestMemory>(
        &mut self,
        mem: &M,
        descs: impl Iterator<Item = Descriptor>,
        dir: ChainDir,
    ) -> Result<(), PacketError> {
        self.segs.clear();
        self.total = 0;
        for (index, d) in descs.enumerate() {
            if index >= MAX_CHAIN_SEGMENTS {
                return Err(PacketError::TooManyDescriptors);
            }
            match dir {
                ChainDir::DeviceReads if d.is_write_only() => {
                    return Err(PacketError::WritableInTxChain { index });
                }
                ChainDir::DeviceWrites if !d.is_write_only() => {
                    return Err(PacketError::ReadableInRxChain { index });
                }
                _ => {}
            }
            if d.len() == 0 {
                continue;
            }
            let access = match dir {
                ChainDir::DeviceReads => Permissions::Read,
                ChainDir::DeviceWrites => Permissions::Write,
            };
            if !mem.check_range(d.addr(), d.len() as usize, access) {
                return Err(PacketError::OutOfGuestMemory {
                    index,
                    addr: d.addr().0,
                    len: d.len(),
                });
            }
            self.segs.push(Segment {
                addr: d.addr(),
                len: d.len(),
            });
            self.total += u64::from(d.len());
        }
        Ok(())
    }

    /// Walk the segments covering `[offset, offset + len)` and call `f(guest_addr, range in the
    /// caller's buffer)` for each piece.
    fn for_each_piece(
        &self,
        offset: u64,
        len: usize,
        mut f: impl FnMut(GuestAddress, std::ops::Range<usize>) -> Result<(), PacketError>,
    ) -> Result<(), PacketError> {
        let end = offset.checked_add(len as u64);
        if end.is_none_or(|e| e > self.total) {
            return Err(PacketError::BeyondChain {
                offset,
                len,
                total: self.total,
            });
        }
        let mut skip = offset;
        let mut done = 0usize;
        for seg in &self.segs {
            if done == len {
                break;
            }
            let seg_len = u64::from(seg.len);
            if skip >= seg_len {
                skip -= seg_len;
                continue;
            }
            // Bounded by seg.len (u32) so the cast is lossless.
            let n = ((seg_len - skip) as usize).min(len - done);
            f(GuestAddress(seg.addr.0 + skip), done..done + n)?;
            done += n;
            skip = 0;
        }
        Ok(())
    }

    /// Copy chain bytes at `offset` into `dst`.
    pub fn read_at<M: GuestMemory>(
        &self,
        mem: &M,
        offset: u64,
        dst: &mut [u8],
    ) -> Result<(), PacketError> {
        let len = dst.len();
        self.for_each_piece(offset, len, |addr, range| {
            mem.read_slice(&mut dst[range], addr)?;
            Ok(())
        })
    }

    /// Copy `src` into the chain at `offset`.
    pub fn write_at<M: GuestMemory>(
        &self,
        mem: &M,
        offset: u64,
        src: &[u8],
    ) -> Result<(), PacketError> {
        self.for_each_piece(offset, src.len(), |addr, range| {
            mem.write_slice(&src[range], addr)?;
            Ok(())
        })
    }

    /// Read and validate the header of a TX packet: `len` must be within [`MAX_PKT_PAYLOAD`] and
    /// the chain must actually carry that many payload bytes after the header.
    pub fn parse_tx_header<M: GuestMemory>(&self, mem: &M) -> Result<PacketHeader, PacketError> {
        if self.total < HDR_LEN as u64 {
            return Err(PacketError::HeaderTooShort { total: self.total });
        }
        let mut raw = [0u8; HDR_LEN];
        self.read_at(mem, 0, &mut raw)?;
        let hdr = PacketHeader::from_bytes(&raw);
        if hdr.len > MAX_PKT_PAYLOAD {
            return Err(PacketError::PayloadTooLarge { len: hdr.len });
        }
        let available = self.total - HDR_LEN as u64;
        if u64::from(hdr.len) > available {
            return Err(PacketError::PayloadBeyondChain {
                len: hdr.len,
                available,
            });
        }
        Ok(hdr)
    }

    /// Payload capacity of an RX chain (0 if it cannot even hold a header).
    pub fn rx_payload_capacity(&self) -> u32 {
        let cap = self.total.saturating_sub(HDR_LEN as u64);
        // Bounded by MAX_PKT_PAYLOAD, so the cast is lossless.
        cap.min(u64::from(MAX_PKT_PAYLOAD)) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    fn hdr() -> PacketHeader {
        PacketHeader {
            src_cid: 3,
            dst_cid: 2,
            src_port: 0x1122_3344,
            dst_port: 1024,
            len: 5,
            type_: TYPE_STREAM,
            op: Op::Rw as u16,
            flags: 0,
            buf_alloc: 0x40000,
            fwd_cnt: 77,
        }
    }

    #[test]
    fn header_roundtrip_and_layout() {
        let h = hdr();
        let b = h.to_bytes();
        assert_eq!(PacketHeader::from_bytes(&b), h);
        assert_eq!(&b[0..8], &3u64.to_le_bytes());
        assert_eq!(&b[24..28], &5u32.to_le_bytes());
        assert_eq!(&b[30..32], &5u16.to_le_bytes());
        assert_eq!(&b[40..44], &77u32.to_le_bytes());
    }

    #[test]
    fn header_and_payload_split_over_three_descriptors() {
        let m = mem();
        let raw = hdr().to_bytes();
        m.write_slice(&raw[..10], GuestAddress(0x1000)).unwrap();
        m.write_slice(&raw[10..], GuestAddress(0x2000)).unwrap();
        m.write_slice(b"hello", GuestAddress(0x3000)).unwrap();
        let descs = [
            Descriptor::new(0x1000, 10, 0, 0),
            Descriptor::new(0x2000, 34, 0, 0),
            Descriptor::new(0x3000, 5, 0, 0),
        ];
        let mut cb = ChainBuffer::new();
        cb.load(&m, descs.into_iter(), ChainDir::DeviceReads)
            .unwrap();
        let h = cb.parse_tx_header(&m).unwrap();
        assert_eq!(h, hdr());
        let mut data = [0u8; 5];
        cb.read_at(&m, HDR_LEN as u64, &mut data).unwrap();
        assert_eq!(&data, b"hello");
    }

    #[test]
    fn hostile_chains_are_rejected() {
        let m = mem();
        let mut cb = ChainBuffer::new();
        let wr = VRING_DESC_F_WRITE as u16;
        let err = cb
            .load(
                &m,
                [Descriptor::new(0x1000, 44, wr, 0)].into_iter(),
                ChainDir::DeviceReads,
            )
            .unwrap_err();
        assert!(matches!(err, PacketError::WritableInTxChain { index: 0 }));
        let err = cb
            .load(
                &m,
                [Descriptor::new(0x1000, 44, 0, 0)].into_iter(),
                ChainDir::DeviceWrites,
            )
            .unwrap_err();
        assert!(matches!(err, PacketError::ReadableInRxChain { index: 0 }));
        let err = cb
            .load(
                &m,
                [Descriptor::new(0xfff0, 44, 0, 0)].into_iter(),
                ChainDir::DeviceReads,
            )
            .unwrap_err();
        assert!(matches!(err, PacketError::OutOfGuestMemory { .. }));
        let err = cb
            .load(
                &m,
                [Descriptor::new(u64::MAX - 4, 44, 0, 0)].into_iter(),
                ChainDir::DeviceReads,
            )
            .unwrap_err();
        assert!(matches!(err, PacketError::OutOfGuestMemory { .. }));

        cb.load(
            &m,
            [Descriptor::new(0x1000, 20, 0, 0)].into_iter(),
            ChainDir::DeviceReads,
        )
        .unwrap();
        assert!(matches!(
            cb.parse_tx_header(&m),
            Err(PacketError::HeaderTooShort { total: 20 })
        ));

        let mut h = hdr();
        h.len = 100;
        m.write_slice(&h.to_bytes(), GuestAddress(0x1000)).unwrap();
        cb.load(
            &m,
            [Descriptor::new(0x1000, 60, 0, 0)].into_iter(),
            ChainDir::DeviceReads,
        )
        .unwrap();
        assert!(matches!(
            cb.parse_tx_header(&m),
            Err(PacketError::PayloadBeyondChain {
                len: 100,
                available: 16
            })
        ));
        h.len = MAX_PKT_PAYLOAD + 1;
        m.write_slice(&h.to_bytes(), GuestAddress(0x1000)).unwrap();
        assert!(matches!(
            cb.parse_tx_header(&m),
            Err(PacketError::PayloadTooLarge { .. })
        ));
        assert!(matches!(
            cb.read_at(&m, 50, &mut [0u8; 20]),
            Err(PacketError::BeyondChain { .. })
        ));
    }

    #[test]
    fn rx_write_spans_descriptors() {
        let m = mem();
        let wr = VRING_DESC_F_WRITE as u16;
        let descs = [
            Descriptor::new(0x1000, 30, wr, 0),
            Descriptor::new(0x2000, 100, wr, 0),
        ];
        let mut cb = ChainBuffer::new();
        cb.load(&m, descs.into_iter(), ChainDir::DeviceWrites)
            .unwrap();
        assert_eq!(cb.rx_payload_capacity(), 86);
        cb.write_at(&m, 0, &hdr().to_bytes()).unwrap();
        let mut back = [0u8; HDR_LEN];
        m.read_slice(&mut back[..30], GuestAddress(0x1000)).unwrap();
        m.read_slice(&mut back[30..], GuestAddress(0x2000)).unwrap();
        assert_eq!(PacketHeader::from_bytes(&back), hdr());
    }
}
