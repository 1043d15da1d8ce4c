//! Guest RAM mapped at 2 MiB-aligned host addresses.
//!
//! KVM maps a guest page with a 2 MiB (nested) page-table entry only when the host address and
//! the guest-physical address have the same offset inside a 2 MiB page and the host backs that
//! range with a transparent huge page. `mmap` of anonymous memory is only 4 KiB-aligned on host
//! kernels before 6.7, so guest RAM mapped by vm-memory's own `mmap` was mapped with 4 KiB
//! entries only: more nested page faults (one per 4 KiB page the guest touches), longer walks
//! and more TLB misses, which are very expensive under nested virtualization (see
//! BENCHMARKS.md). QEMU aligns guest RAM the same way (`QEMU_VMALLOC_ALIGN`).
//!
//! [`GuestRam`] over-allocates each region by 2 MiB, trims the mapping to the aligned window,
//! asks for huge pages (`MADV_HUGEPAGE`) and hands the window to vm-memory as a raw mapping.
//! vm-memory does not unmap raw mappings, so [`GuestRam`] does, when it is dropped **and** no
//! other [`GuestMemory`] clone (a device, a vCPU thread, the KVM VM) still refers to the region;
//! otherwise it leaves the mapping in place (never a dangling guest-memory access) and logs it.

use std::sync::{Arc, Weak};

use vm_memory::mmap::{MmapRegion, MmapRegionBuilder};
use vm_memory::{GuestAddress, GuestRegionMmap};

use crate::devices::virtio::GuestMemory;

/// Host alignment of every guest RAM region (the x86_64 huge-page size).
pub const HOST_ALIGN: usize = 2 << 20;

/// Errors mapping guest RAM.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// A region has length 0 or its size overflows.
    #[error("invalid guest RAM region at {addr:#x}, {len:#x} bytes")]
    InvalidRegion {
        /// Guest-physical start.
        addr: u64,
        /// Length.
        len: usize,
    },
    /// `mmap` failed.
    #[error("mapping {len:#x} bytes of guest RAM: {source}")]
    Mmap {
        /// Bytes requested (including the alignment slack).
        len: usize,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// vm-memory rejected the mapping.
    #[error("guest RAM region: {0}")]
    Region(#[source] vm_memory::mmap::MmapRegionError),
    /// The regions overlap or are unsorted.
    #[error("guest RAM layout: {0}")]
    Layout(#[source] vm_memory::GuestRegionCollectionError),
}

/// One aligned anonymous mapping owned by [`GuestRam`].
#[derive(Debug)]
struct Mapping {
    addr: usize,
    len: usize,
    /// The vm-memory view of this mapping; unmapping is safe only once no strong reference is
    /// left.
    region: Weak<MmapRegion<()>>,
}

/// Guest RAM: the [`GuestMemory`] everyone uses (clone it freely) plus ownership of its host
/// mappings, which are unmapped when this is dropped after every clone is gone.
#[derive(Debug)]
pub struct GuestRam {
    // Dropped before `mappings` are examined (see `Drop`).
    mem: Option<GuestMemory>,
    mappings: Vec<Mapping>,
}

impl GuestRam {
    /// Maps `ranges` (guest-physical start, length), each at a 2 MiB-aligned host address.
    pub fn new(ranges: &[(GuestAddress, usize)]) -> Result<Self, MemoryError> {
        let mut ram = GuestRam {
            mem: None,
            mappings: Vec::with_capacity(ranges.len()),
        };
        let mut regions = Vec::with_capacity(ranges.len());
        for &(start, len) in ranges {
            let invalid = MemoryError::InvalidRegion { addr: start.0, len };
            if len == 0 || start.0.checked_add(len as u64).is_none() {
                return Err(invalid);
            }
            let addr = map_aligned(len)?;
            // Recorded first so that an error below still unmaps it (the Weak is dead).
            ram.mappings.push(Mapping {
                addr,
                len,
                region: Weak::new(),
            });
            // SAFETY: [addr, addr + len) is a private anonymous read-write mapping created just
            // above and owned by `ram`, which unmaps it only once no MmapRegion refers to it.
            let region = unsafe {
                MmapRegionBuilder::<()>::new(len)
                    .with_raw_mmap_pointer(addr as *mut u8)
                    .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                    .with_mmap_flags(MAP_FLAGS)
                    .build()
            }
            .map_err(MemoryError::Region)?;
            let region = Arc::new(region);
            if let Some(m) = ram.mappings.last_mut() {
                m.region = Arc::downgrade(&region);
            }
            regions.push(Arc::new(
                GuestRegionMmap::with_arc(region, start).ok_or(invalid)?,
            ));
        }
        ram.mem = Some(GuestMemory::from_arc_regions(regions).map_err(MemoryError::Layout)?);
        Ok(ram)
    }

    /// The guest memory (clone it to share it; clones keep the mappings alive).
    pub fn memory(&self) -> &GuestMemory {
        // Only `Drop` takes it out.
        self.mem
            .as_ref()
            .expect("guest memory is present until drop")
    }

    /// Host `(start, length)` of each region's mapping.
    pub fn host_ranges(&self) -> Vec<(u64, u64)> {
        self.mappings
            .iter()
            .map(|m| (m.addr as u64, m.len as u64))
            .collect()
    }
}

impl std::ops::Deref for GuestRam {
    type Target = GuestMemory;

    fn deref(&self) -> &GuestMemory {
        self.memory()
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        drop(self.mem.take());
        for m in &self.mappings {
            if m.region.strong_count() > 0 {
                // Someone still holds a GuestMemory clone (or a KVM VM built on it): unmapping
                // would let it touch whatever gets mapped there next. Leak instead.
                tracing::error!(
                    addr = m.addr,
                    len = m.len,
                    "guest RAM still referenced when its owner was dropped; leaving it mapped"
                );
                continue;
            }
            // SAFETY: [addr, addr + len) is the mapping `map_aligned` created for this region;
            // no MmapRegion (hence no GuestMemory, VolatileSlice or KVM VM holding one) refers to
            // it any more, so nothing can access it after this.
            if unsafe { libc::munmap(m.addr as *mut libc::c_void, m.len) } != 0 {
                tracing::error!(
                    addr = m.addr,
                    len = m.len,
                    error = %std::io::Error::last_os_error(),
                    "munmap of guest RAM failed"
                );
            }
        }
    }
}

const MAP_FLAGS: i32 = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;

/// Maps `len` bytes of anonymous read-write memory at a [`HOST_ALIGN`]-aligned address (the
/// slack before and after is unmapped again) and advises huge pages for it.
fn map_aligned(len: usize) -> Result<usize, MemoryError> {
    let total = len
        .checked_add(HOST_ALIGN)
        .ok_or(MemoryError::InvalidRegion { addr: 0, len })?;
    // SAFETY: a fresh anonymous mapping at an address of the kernel's choosing (no MAP_FIXED):
    // it cannot alias existing memory.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            total,
            libc::PROT_READ | libc::PROT_WRITE,
            MAP_FLAGS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(MemoryError::Mmap {
            len: total,
            source: std::io::Error::last_os_error(),
        });
    }
    let base = p as usize;
    let aligned = base.next_multiple_of(HOST_ALIGN);
    let head = aligned - base;
    let tail = total - head - len;
    // SAFETY: [base, aligned) and [aligned + len, base + total) lie inside the mapping created
    // above, which nothing else knows about yet. A failed trim only leaves slack mapped.
    unsafe {
        if head > 0 {
            libc::munmap(p, head);
        }
        if tail > 0 {
            libc::munmap((aligned + len) as *mut libc::c_void, tail);
        }
    }
    // SAFETY: madvise on our own mapping; MADV_HUGEPAGE only changes how it is backed.
    if unsafe { libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE) } != 0 {
        // No THP support in this kernel: still correct, just 4 KiB pages.
        tracing::debug!(error = %std::io::Error::last_os_error(), "MADV_HUGEPAGE");
    }
    Ok(aligned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

    /// Whether any mapping in /proc/self/maps overlaps [start, start + len).
    fn mapped(start: u64, len: u64) -> bool {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        maps.lines().any(|l| {
            let range = l.split_whitespace().next().unwrap();
            let (a, b) = range.split_once('-').unwrap();
            let a = u64::from_str_radix(a, 16).unwrap();
            let b = u64::from_str_radix(b, 16).unwrap();
            a < start + len && start < b
        })
    }

    #[test]
    fn regions_are_2mib_aligned_and_usable() {
        let ram = GuestRam::new(&[
            (GuestAddress(0), 64 << 20),
            (GuestAddress(1 << 32), (6 << 20) + 4096),
        ])
        .unwrap();
        let ranges = ram.host_ranges();
        assert_eq!(ranges.len(), 2);
        for (r, (start, len)) in ram.iter().zip(&ranges) {
            assert_eq!(start % HOST_ALIGN as u64, 0, "host address {start:#x}");
            assert_eq!(r.len(), *len);
            let host = ram.get_host_address(r.start_addr()).unwrap() as u64;
            assert_eq!(host, *start);
            // Same offset inside a 2 MiB page for guest and host: huge NPT entries possible.
            assert_eq!(
                host % HOST_ALIGN as u64,
                r.start_addr().0 % HOST_ALIGN as u64
            );
        }
        ram.write_obj(0xdead_beef_u32, GuestAddress((64 << 20) - 4))
            .unwrap();
        ram.write_obj(7u8, GuestAddress((1 << 32) + (6 << 20) + 4095))
            .unwrap();
        assert_eq!(
            ram.read_obj::<u32>(GuestAddress((64 << 20) - 4)).unwrap(),
            0xdead_beef
        );
        assert!(ram.write_obj(0u8, GuestAddress(64 << 20)).is_err());
    }

    #[test]
    fn drop_unmaps_once_no_clone_is_left() {
        let ram = GuestRam::new(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let (start, len) = ram.host_ranges()[0];
        let clone = ram.memory().clone();
        assert!(mapped(start, len));
        drop(clone);
        drop(ram);
        assert!(!mapped(start, len), "guest RAM still mapped after drop");
    }

    #[test]
    fn a_live_clone_keeps_the_mapping() {
        let ram = GuestRam::new(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let (start, len) = ram.host_ranges()[0];
        let clone = ram.memory().clone();
        drop(ram);
        // The clone must stay usable: the owner leaves the mapping alone.
        clone.write_obj(1u64, GuestAddress(0)).unwrap();
        assert_eq!(clone.read_obj::<u64>(GuestAddress(0)).unwrap(), 1);
        assert!(mapped(start, len));
        drop(clone);
        // Leaked by design (logged); unmap it here so the test process stays tidy.
        // SAFETY: the only users (ram, clone) are gone.
        unsafe { libc::munmap(start as *mut libc::c_void, len as usize) };
    }

    #[test]
    fn empty_region_is_rejected() {
        assert!(matches!(
            GuestRam::new(&[(GuestAddress(0), 0)]),
            Err(MemoryError::InvalidRegion { .. })
        ));
    }
}
