//! Entry point for the cargo-fuzz target `virtio_blk_request` (not a stable API).
//!
//! The fuzz input *is* guest memory: the descriptor table, available ring, request headers,
//! data buffers and status bytes all come from it, so [`serve_queue`] sees arbitrary (hostile)
//! chains, request types, sectors, lengths and addresses against a small in-memory disk.

use std::fs::File;
use std::os::fd::FromRawFd;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::request::{Disk, ID_BYTES, SECTOR_SIZE};
use super::{Served, serve_queue};
use crate::devices::virtio::fuzz_queue;

/// Guest memory size; addresses at or beyond it are invalid.
const MEM_SIZE: usize = 0x1_0000;
/// Ring layout (small offsets so short inputs reach them).
const DESC: u64 = 0x000;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x1400;

/// A memfd-backed disk of `sectors` sectors (no files left behind, no disk I/O).
fn memory_disk(sectors: u64, read_only: bool) -> Option<Disk> {
    memory_disk_with(sectors, read_only, &[])
}

/// As [`memory_disk`], its first bytes `contents`.
fn memory_disk_with(sectors: u64, read_only: bool, contents: &[u8]) -> Option<Disk> {
    // SAFETY: the name is a valid NUL-terminated string; the flags are valid.
    let fd = unsafe { libc::memfd_create(c"hearth-fuzz-disk".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a fresh descriptor owned by nobody else; `File` takes ownership.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(sectors * SECTOR_SIZE).ok()?;
    std::os::unix::fs::FileExt::write_all_at(&file, contents, 0).ok()?;
    let mut id = [0u8; ID_BYTES];
    id[..10].copy_from_slice(b"hearth-fuz");
    Some(Disk::new(file, read_only, sectors, id))
}

/// Feeds one fuzz input through the block device's queue handling. Must never panic.
///
/// Input layout: `[queue_size_log2, flags (bit 0: read-only), disk_sectors, rounds, memory
/// image ...]`; after the image (first `MEM_SIZE` bytes) come 10-byte patches
/// `[offset u16 LE, 8 bytes]` applied between rounds, so later rounds see new chains.
pub fn fuzz_block_queue(data: &[u8]) -> Served {
    let mut total = Served::default();
    let Some((params, rest)) = data.split_first_chunk::<4>() else {
        return total;
    };
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]) else {
        return total;
    };
    let (image, patches) = rest.split_at(rest.len().min(MEM_SIZE));
    if mem.write_slice(image, GuestAddress(0)).is_err() {
        return total;
    }
    let Some(mut queue) = fuzz_queue(params[0], DESC, AVAIL, USED) else {
        return total;
    };
    let Some(mut disk) = memory_disk(u64::from(params[2]), params[1] & 1 != 0) else {
        return total;
    };
    let mut patches = patches.chunks_exact(10);
    for _ in 0..=(params[3] % 8) {
        let served = serve_queue(&mut queue, &mem, &mut disk);
        total.used += served.used;
        if served.broken {
            total.broken = true;
            break;
        }
        let Some(p) = patches.next() else { break };
        let offset = u64::from(u16::from_le_bytes([p[0], p[1]]));
        // Patches past the end of memory are simply rejected by vm-memory.
        let _ = mem.write_slice(&p[2..], GuestAddress(offset));
    }
    total
}

/// A valid input: OUT (write 1 KiB), IN (read it back), GET_ID, FLUSH, an unsupported type and
/// a malformed chain, on a 64-sector writable disk. Write it into the corpus as a head start.
pub fn seed_requests() -> Vec<u8> {
    let mut img = vec![0u8; 0x3000];
    let desc = |img: &mut Vec<u8>, i: usize, addr: u64, len: u32, flags: u16, next: u16| {
        let at = DESC as usize + 16 * i;
        img[at..at + 8].copy_from_slice(&addr.to_le_bytes());
        img[at + 8..at + 12].copy_from_slice(&len.to_le_bytes());
        img[at + 12..at + 14].copy_from_slice(&flags.to_le_bytes());
        img[at + 14..at + 16].copy_from_slice(&next.to_le_bytes());
    };
    const NEXT: u16 = 1;
    const WRITE: u16 = 2;
    let header = |img: &mut Vec<u8>, at: usize, kind: u32, sector: u64| {
        img[at..at + 4].copy_from_slice(&kind.to_le_bytes());
        img[at + 8..at + 16].copy_from_slice(&sector.to_le_bytes());
    };
    // Request headers at 0x1800 + 16*k, data at 0x2000, status bytes at 0x1f00 + k.
    let mut heads = Vec::new();
    let mut next_desc = 0u16;
    let mut chain = |img: &mut Vec<u8>, k: usize, kind: u32, data: Option<(u64, u32, bool)>| {
        let h = next_desc;
        let hdr_at = 0x1800 + 16 * k;
        header(img, hdr_at, kind, 2);
        desc(img, usize::from(h), hdr_at as u64, 16, NEXT, h + 1);
        let mut d = h + 1;
        if let Some((addr, len, write)) = data {
            desc(
                img,
                usize::from(d),
                addr,
                len,
                NEXT | if write { WRITE } else { 0 },
                d + 1,
            );
            d += 1;
        }
        desc(img, usize::from(d), 0x1f00 + k as u64, 1, WRITE, 0);
        next_desc = d + 1;
        heads.push(h);
    };
    img[0x2000..0x2400].fill(0xa5);
    chain(&mut img, 0, 1, Some((0x2000, 0x400, false))); // OUT
    chain(&mut img, 1, 0, Some((0x2400, 0x400, true))); // IN
    chain(&mut img, 2, 8, Some((0x2800, 20, true))); // GET_ID
    chain(&mut img, 3, 4, None); // FLUSH
    chain(&mut img, 4, 99, None); // unsupported
    // Malformed: a lone header (no status descriptor).
    let lone = next_desc;
    desc(&mut img, usize::from(lone), 0x1880, 16, 0, 0);
    heads.push(lone);
    let avail = AVAIL as usize;
    for (i, h) in heads.iter().enumerate() {
        img[avail + 4 + 2 * i..avail + 6 + 2 * i].copy_from_slice(&h.to_le_bytes());
    }
    img[avail + 2..avail + 4].copy_from_slice(&(heads.len() as u16).to_le_bytes());
    let mut input = vec![5, 0, 64, 1];
    input.extend_from_slice(&img);
    input
}

#[cfg(test)]
mod tests {
    use super::super::request::{self, Request, RequestKind};
    use super::*;
    use virtio_queue::{Queue, QueueT};

    #[test]
    fn seed_serves_every_chain() {
        let served = fuzz_block_queue(&seed_requests());
        assert_eq!(
            served,
            Served {
                used: 6,
                broken: false
            }
        );
        assert_eq!(fuzz_block_queue(&[]), Served::default());
        // Truncated or garbage input must not panic either.
        let seed = seed_requests();
        for cut in [5, 100, 0x1000, 0x1400, seed.len() - 1] {
            fuzz_block_queue(&seed[..cut]);
        }
        let mut ro = seed.clone();
        ro[1] = 1;
        assert_eq!(fuzz_block_queue(&ro).used, 6);
    }

    /// Guest memory holding the seed's image, and its queue set up by hand.
    fn seeded_memory_and_queue(seed: &[u8]) -> (GuestMemoryMmap<()>, Queue) {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        mem.write_slice(&seed[4..], GuestAddress(0)).unwrap();
        let mut q = Queue::new(256).unwrap();
        q.try_set_size(32).unwrap();
        q.try_set_desc_table_address(GuestAddress(DESC)).unwrap();
        q.try_set_avail_ring_address(GuestAddress(AVAIL)).unwrap();
        q.try_set_used_ring_address(GuestAddress(USED)).unwrap();
        q.set_ready(true);
        (mem, q)
    }

    #[test]
    fn seed_round_trips_data_through_the_disk() {
        // Drive the seed by hand to check the IN request read back what OUT wrote.
        let seed = seed_requests();
        let (mem, mut q) = seeded_memory_and_queue(&seed);
        let mut disk = memory_disk(64, false).unwrap();
        assert_eq!(serve_queue(&mut q, &mem, &mut disk).used, 6);
        let mut back = [0u8; 0x400];
        mem.read_slice(&mut back, GuestAddress(0x2400)).unwrap();
        assert!(back.iter().all(|&b| b == 0xa5));
        let mut id = [0u8; 10];
        mem.read_slice(&mut id, GuestAddress(0x2800)).unwrap();
        assert_eq!(&id, b"hearth-fuz");
        let status: [u8; 5] = mem.read_obj(GuestAddress(0x1f00)).unwrap();
        assert_eq!(status, [0, 0, 0, 0, 2]);
    }

    #[test]
    fn a_read_only_disk_is_read_from_its_mapping() {
        let seed = seed_requests();
        let (mem, mut q) = seeded_memory_and_queue(&seed);
        let contents: Vec<u8> = (0..64 * SECTOR_SIZE as usize)
            .map(|i| (i * 13) as u8)
            .collect();
        let mut disk = memory_disk_with(64, true, &contents).unwrap();
        assert!(disk.map.is_some(), "a read-only disk is mapped");
        assert_eq!(serve_queue(&mut q, &mem, &mut disk).used, 6);
        // The IN request reads 1 KiB from sector 2; OUT was refused, so it is the disk's own.
        let mut back = [0u8; 0x400];
        mem.read_slice(&mut back, GuestAddress(0x2400)).unwrap();
        assert!(back[..] == contents[1024..2048], "read bytes differ");
        let status: [u8; 5] = mem.read_obj(GuestAddress(0x1f00)).unwrap();
        assert_eq!(status, [1, 0, 0, 0, 2]);
        // A read past the end of the disk fails as before, without touching guest memory.
        let request = Request {
            kind: RequestKind::In,
            sector: 63,
            data: vec![(GuestAddress(0x2400), 1024)],
            status: GuestAddress(0x1f00),
        };
        assert_eq!(request::execute(&request, &mut disk, &mem), (1, 0));
    }
}
