//! virtio-blk backed by a raw image file: read, write, flush, get-id; read-only disks refuse
//! writes. Requests are served synchronously on the event-loop thread.

#[doc(hidden)]
pub mod fuzzing;
pub mod request;

use std::fs::File;
use std::path::Path;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use self::request::{Disk, ID_BYTES, SECTOR_SIZE};
use super::{
    ActivateArgs, ActivateError, GuestMemory, IrqTrigger, TYPE_BLOCK, VIRTIO_F_VERSION_1,
    VirtioDevice, read_config_bytes,
};

const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
const VIRTIO_BLK_F_RO: u64 = 1 << 5;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 1] = [QUEUE_SIZE];
/// Data segments per request announced in `seg_max` (a chain also holds header and status).
/// Without VIRTIO_BLK_F_SEG_MAX Linux sends one segment per request: every 4 KiB page of a
/// readahead becomes its own request, notification and interrupt.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Config space: capacity (le64), size_max (le32, unused: no VIRTIO_BLK_F_SIZE_MAX), seg_max.
const CONFIG_LEN: usize = 16;

/// Errors opening a disk.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image could not be opened.
    #[error("opening disk image {path}: {source}")]
    Open {
        /// The image.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// An eventfd could not be created.
    #[error("creating eventfd: {0}")]
    EventFd(#[source] std::io::Error),
}

struct Active {
    mem: GuestMemory,
    queue: Queue,
    evt: EventFd,
    irq: std::sync::Arc<IrqTrigger>,
}

/// A virtio block device.
pub struct Block {
    disk: Disk,
    config: [u8; CONFIG_LEN],
    activate_evt: EventFd,
    pending: Option<ActivateArgs>,
    active: Option<Active>,
    stale_evts: Vec<EventFd>,
    /// Set when the queue became unusable (guest memory errors); requests are then ignored.
    broken: bool,
}

impl Block {
    /// Opens `path` as a raw disk image.
    pub fn open(path: &Path, read_only: bool, id: &str) -> Result<Self, BlockError> {
        let file = File::options()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| BlockError::Open {
                path: path.display().to_string(),
                source,
            })?;
        Self::from_file(file, read_only, id)
    }

    /// Uses an already open image file.
    pub fn from_file(file: File, read_only: bool, id: &str) -> Result<Self, BlockError> {
        let len = file
            .metadata()
            .map_err(|source| BlockError::Open {
                path: "<fd>".into(),
                source,
            })?
            .len();
        let sectors = len / SECTOR_SIZE;
        let mut idb = [0u8; ID_BYTES];
        let n = id.len().min(ID_BYTES);
        idb[..n].copy_from_slice(&id.as_bytes()[..n]);
        Ok(Self {
            disk: Disk::new(file, read_only, sectors, idb),
            config: config_space(sectors),
            activate_evt: EventFd::new(EFD_NONBLOCK).map_err(BlockError::EventFd)?,
            pending: None,
            active: None,
            stale_evts: Vec::new(),
            broken: false,
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.disk.sectors
    }

    fn process_queue(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        if self.broken {
            return;
        }
        let served = serve_queue(&mut a.queue, &a.mem, &mut self.disk);
        if served.broken {
            self.broken = true;
        }
        if served.used > 0
            && let Err(e) = a.irq.signal_used(&mut a.queue, &a.mem)
        {
            tracing::warn!(error = %e, "block interrupt failed");
        }
    }

    fn finish_activation(&mut self, ops: &mut EventOps) {
        for old in self.stale_evts.drain(..) {
            let _ = ops.remove(Events::new(&old, EventSet::IN));
        }
        let Some(mut args) = self.pending.take() else {
            return;
        };
        let (Some(queue), Some(evt)) = (args.queues.pop(), args.queue_evts.pop()) else {
            return;
        };
        if let Err(e) = ops.add(Events::new(&evt, EventSet::IN)) {
            tracing::error!(error = ?e, "registering block queue eventfd failed");
            return;
        }
        self.broken = false;
        self.active = Some(Active {
            mem: args.mem,
            queue,
            evt,
            irq: args.irq,
        });
        // The driver may have queued requests before we were ready.
        self.process_queue();
    }
}

/// What one pass over the available ring did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    /// Used-ring entries written.
    pub used: u32,
    /// The used ring could not be written: the device must stop serving.
    pub broken: bool,
}

/// Serves every available request of `queue`: parse, execute, status byte, used entry. Never
/// panics on guest data (the `virtio_blk_request` fuzz target drives it).
pub fn serve_queue(queue: &mut Queue, mem: &GuestMemory, disk: &mut Disk) -> Served {
    let mut served = Served::default();
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        let used = match request::parse(chain, mem) {
            Ok(req) => {
                let (status, written) = request::execute(&req, disk, mem);
                match vm_memory::Bytes::write_obj(mem, status, req.status) {
                    Ok(()) => written + 1,
                    Err(_) => 0,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "malformed block request skipped");
                0
            }
        };
        if let Err(e) = queue.add_used(mem, head, used) {
            tracing::warn!(error = ?e, "block queue broken; device stops serving");
            served.broken = true;
            break;
        }
        served.used += 1;
    }
    served
}

fn config_space(sectors: u64) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    c[..8].copy_from_slice(&sectors.to_le_bytes());
    c[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
    c
}

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.activate_evt, EventSet::IN)) {
            tracing::error!(error = ?e, "registering block activate eventfd failed");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == std::os::fd::AsRawFd::as_raw_fd(&self.activate_evt) {
            let _ = self.activate_evt.read();
            self.finish_activation(ops);
        } else if self
            .active
            .as_ref()
            .is_some_and(|a| std::os::fd::AsRawFd::as_raw_fd(&a.evt) == fd)
        {
            if let Some(a) = &self.active {
                let _ = a.evt.read();
            }
            self.process_queue();
        } else if let Some(s) = self
            .stale_evts
            .iter()
            .find(|e| std::os::fd::AsRawFd::as_raw_fd(*e) == fd)
        {
            let _ = s.read();
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        let ro = if self.disk.read_only {
            VIRTIO_BLK_F_RO
        } else {
            0
        };
        VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH | VIRTIO_BLK_F_SEG_MAX | ro
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        tracing::warn!(offset, "write to read-only virtio-blk config ignored");
    }

    fn activate(&mut self, args: ActivateArgs) -> Result<(), ActivateError> {
        if self.active.is_some() || self.pending.is_some() {
            return Err(ActivateError::AlreadyActivated);
        }
        if args.queues.len() != 1 || args.queue_evts.len() != 1 {
            return Err(ActivateError::BadQueueCount {
                expected: 1,
                got: args.queues.len(),
            });
        }
        self.pending = Some(args);
        self.activate_evt.write(1).map_err(ActivateError::EventFd)
    }

    fn reset(&mut self) -> bool {
        self.pending = None;
        if let Some(a) = self.active.take() {
            self.stale_evts.push(a.evt);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_announces_capacity_and_seg_max() {
        let f = tempfile_of(8 * SECTOR_SIZE);
        let b = Block::from_file(f, true, "t").unwrap();
        let mut cap = [0u8; 8];
        b.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 8);
        let mut seg = [0u8; 4];
        b.read_config(12, &mut seg);
        assert_eq!(u32::from_le_bytes(seg), SEG_MAX);
        assert_ne!(b.avail_features() & VIRTIO_BLK_F_SEG_MAX, 0);
        assert_ne!(b.avail_features() & VIRTIO_BLK_F_RO, 0);
        let mut past = [0xffu8; 4];
        b.read_config(CONFIG_LEN as u64, &mut past);
        assert_eq!(past, [0; 4]);
    }

    fn tempfile_of(len: u64) -> File {
        let path = std::env::temp_dir().join(format!("hearth-blk-test-{}", std::process::id()));
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f.set_len(len).unwrap();
        f
    }
}
