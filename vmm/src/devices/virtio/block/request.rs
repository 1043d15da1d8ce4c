//! virtio-blk request parsing and execution (virtio 1.2 §5.2.6). Pure functions over guest
//! memory and a descriptor chain, so the fuzz target can drive them directly.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress};

use crate::devices::virtio::GuestMemory;
use crate::file_map::FileMap;

/// Sector size.
pub const SECTOR_SIZE: u64 = 512;
/// Request header size (type, reserved, sector).
const HEADER_LEN: u32 = 16;
/// Bytes returned by GET_ID.
pub const ID_BYTES: usize = 20;
/// Most data descriptors accepted in one request.
const MAX_DATA_DESCRIPTORS: usize = 1024;

const VIRTIO_BLK_T_IN: u32 = 0;
const VIRTIO_BLK_T_OUT: u32 = 1;
const VIRTIO_BLK_T_FLUSH: u32 = 4;
const VIRTIO_BLK_T_GET_ID: u32 = 8;

/// Status byte values.
pub const VIRTIO_BLK_S_OK: u8 = 0;
/// I/O error.
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
/// Unsupported request.
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// The request kinds this device serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// Read from the disk into guest memory.
    In,
    /// Write guest memory to the disk.
    Out,
    /// Flush to stable storage.
    Flush,
    /// Return the device id string.
    GetId,
    /// Anything else: answered with UNSUPP.
    Unsupported(u32),
}

/// A parsed, shape-checked request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// What to do.
    pub kind: RequestKind,
    /// First sector.
    pub sector: u64,
    /// Data buffers in guest memory.
    pub data: Vec<(GuestAddress, u32)>,
    /// Where the status byte goes.
    pub status: GuestAddress,
}

impl Request {
    /// Total data bytes.
    pub fn data_len(&self) -> u64 {
        self.data.iter().map(|d| u64::from(d.1)).sum()
    }
}

/// Why a chain is not a valid request (the chain is then returned with 0 bytes used).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    /// Fewer than header + status descriptors.
    #[error("descriptor chain too short")]
    TooShort,
    /// Too many data descriptors.
    #[error("descriptor chain too long")]
    TooLong,
    /// The header is write-only or too small.
    #[error("bad request header descriptor")]
    BadHeader,
    /// The header could not be read.
    #[error("request header outside guest memory")]
    HeaderRead,
    /// The status descriptor is not writable or empty.
    #[error("bad status descriptor")]
    BadStatus,
    /// A data descriptor has the wrong direction or lies outside guest memory.
    #[error("bad data descriptor")]
    BadData,
}

/// Parses one descriptor chain into a request. Never panics on guest data.
pub fn parse<M>(chain: DescriptorChain<M>, mem: &GuestMemory) -> Result<Request, RequestError>
where
    M: Clone + Deref,
    M::Target: vm_memory::GuestMemory,
{
    let mut descs = Vec::new();
    for d in chain {
        if descs.len() > MAX_DATA_DESCRIPTORS + 2 {
            return Err(RequestError::TooLong);
        }
        descs.push(d);
    }
    if descs.len() < 2 {
        return Err(RequestError::TooShort);
    }
    let head = descs[0];
    if head.is_write_only() || head.len() < HEADER_LEN {
        return Err(RequestError::BadHeader);
    }
    let kind_raw: u32 = mem
        .read_obj(head.addr())
        .map_err(|_| RequestError::HeaderRead)?;
    let sector: u64 = head
        .addr()
        .0
        .checked_add(8)
        .and_then(|a| mem.read_obj(GuestAddress(a)).ok())
        .ok_or(RequestError::HeaderRead)?;
    let last = descs[descs.len() - 1];
    if !last.is_write_only() || last.len() < 1 {
        return Err(RequestError::BadStatus);
    }
    let kind = match kind_raw {
        VIRTIO_BLK_T_IN => RequestKind::In,
        VIRTIO_BLK_T_OUT => RequestKind::Out,
        VIRTIO_BLK_T_FLUSH => RequestKind::Flush,
        VIRTIO_BLK_T_GET_ID => RequestKind::GetId,
        other => RequestKind::Unsupported(other),
    };
    let status_addr = last
        .addr()
        .0
        .checked_add(u64::from(last.len()) - 1)
        .ok_or(RequestError::BadStatus)?;
    if !vm_memory::GuestMemoryBackend::address_in_range(mem, GuestAddress(status_addr)) {
        return Err(RequestError::BadStatus);
    }
    let mut data = Vec::with_capacity(descs.len() - 2);
    for d in &descs[1..descs.len() - 1] {
        let must_write = matches!(kind, RequestKind::In | RequestKind::GetId);
        if matches!(
            kind,
            RequestKind::In | RequestKind::Out | RequestKind::GetId
        ) && d.is_write_only() != must_write
        {
            return Err(RequestError::BadData);
        }
        if !vm_memory::GuestMemoryBackend::check_range(mem, d.addr(), d.len() as usize) {
            return Err(RequestError::BadData);
        }
        data.push((d.addr(), d.len()));
    }
    Ok(Request {
        kind,
        sector,
        data,
        status: GuestAddress(status_addr),
    })
}

/// The disk behind a block device.
#[derive(Debug)]
pub struct Disk {
    /// The image file.
    pub file: File,
    /// Writes are refused.
    pub read_only: bool,
    /// Size in sectors.
    pub sectors: u64,
    /// GET_ID answer.
    pub id: [u8; ID_BYTES],
    /// A read-only disk's image, mapped: reads are copied from here instead of `read(2)` per
    /// data buffer ([`crate::file_map`] says why). Writable disks are not mapped: their reads
    /// and writes go through the file.
    pub map: Option<FileMap>,
}

impl Disk {
    /// A disk of `sectors` sectors on `file`; a read-only one is mapped when it can be (when
    /// not, its reads go through the file).
    pub fn new(file: File, read_only: bool, sectors: u64, id: [u8; ID_BYTES]) -> Self {
        let map = if read_only {
            FileMap::whole(&file).unwrap_or_else(|e| {
                tracing::debug!(error = %e, "disk image not mappable; reading it with read(2)");
                None
            })
        } else {
            None
        };
        Self {
            file,
            read_only,
            sectors,
            id,
            map,
        }
    }
}

/// Copies the `len` bytes of a read at byte `start` of a mapped image into the request's buffers.
fn read_from_map(req: &Request, map: &FileMap, start: u64, mem: &GuestMemory) -> bool {
    let Ok(mut offset) = usize::try_from(start) else {
        return false;
    };
    for &(addr, l) in &req.data {
        if let Err(e) = map.copy_to_guest(offset, mem, addr, l as usize) {
            tracing::warn!(error = %e, "block read failed");
            return false;
        }
        offset += l as usize;
    }
    true
}

/// Executes `req`; returns (status byte, bytes written into guest memory excluding status).
pub fn execute(req: &Request, disk: &mut Disk, mem: &GuestMemory) -> (u8, u32) {
    match req.kind {
        RequestKind::In | RequestKind::Out => {
            let len = req.data_len();
            let in_range = req
                .sector
                .checked_mul(SECTOR_SIZE)
                .and_then(|start| start.checked_add(len).map(|end| (start, end)))
                .filter(|&(_, end)| end <= disk.sectors * SECTOR_SIZE);
            let Some((start, _)) = in_range else {
                return (VIRTIO_BLK_S_IOERR, 0);
            };
            if req.kind == RequestKind::Out && disk.read_only {
                return (VIRTIO_BLK_S_IOERR, 0);
            }
            if let (RequestKind::In, Some(map)) = (req.kind, &disk.map) {
                return if read_from_map(req, map, start, mem) {
                    (VIRTIO_BLK_S_OK, len as u32)
                } else {
                    (VIRTIO_BLK_S_IOERR, 0)
                };
            }
            if disk.file.seek(SeekFrom::Start(start)).is_err() {
                return (VIRTIO_BLK_S_IOERR, 0);
            }
            for &(addr, l) in &req.data {
                let r = if req.kind == RequestKind::In {
                    mem.read_exact_volatile_from(addr, &mut disk.file, l as usize)
                } else {
                    mem.write_all_volatile_to(addr, &mut disk.file, l as usize)
                };
                if let Err(e) = r {
                    tracing::warn!(error = %e, "block I/O failed");
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
            }
            let written = if req.kind == RequestKind::In {
                len as u32
            } else {
                0
            };
            (VIRTIO_BLK_S_OK, written)
        }
        RequestKind::Flush => match disk.file.sync_data() {
            Ok(()) => (VIRTIO_BLK_S_OK, 0),
            Err(_) => (VIRTIO_BLK_S_IOERR, 0),
        },
        RequestKind::GetId => {
            let Some(&(addr, l)) = req.data.first() else {
                return (VIRTIO_BLK_S_IOERR, 0);
            };
            let n = (l as usize).min(ID_BYTES);
            match mem.write_slice(&disk.id[..n], addr) {
                Ok(()) => (VIRTIO_BLK_S_OK, n as u32),
                Err(_) => (VIRTIO_BLK_S_IOERR, 0),
            }
        }
        RequestKind::Unsupported(t) => {
            tracing::debug!(request_type = t, "unsupported block request");
            (VIRTIO_BLK_S_UNSUPP, 0)
        }
    }
}
