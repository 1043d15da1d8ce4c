//! Read-only mappings of host files (the kernel image, read-only disk images) and the copy out
//! of them into guest memory.
//!
//! Why not `pread`: the kernel copies with `copy_to_user`, and glibc's `memcpy` with
//! `rep movsb` for mid-sized blocks, on CPUs with ERMS. QEMU's TCG, which runs the
//! emulated-SVM harness's machine, executes `rep movsb` one byte per iteration: a 19 MB
//! `pread` there took 44-48 ms, a loop of 8-byte loads and stores from a mapping of the same file
//! 4-8 ms (BENCHMARKS.md, "Copies from mappings"). A read served from a mapping also costs no
//! system call. On hardware both copies run at memory bandwidth.
//!
//! A mapped file must keep its length while mapped: reading a page past a shrunk end raises
//! SIGBUS. The files mapped here are the operator's (kernel image, read-only root filesystem),
//! which hearth opens read-only and never changes; the guest cannot change them either.

use std::fs::File;
use std::os::unix::io::AsRawFd;

use vm_memory::{GuestAddress, GuestMemoryBackend as _};

use crate::devices::virtio::GuestMemory;

/// A read-only shared mapping of part of a file; unmapped on drop.
#[derive(Debug)]
pub struct FileMap {
    map: *mut libc::c_void,
    map_len: usize,
    /// Where the requested offset lies in the mapping (which starts on a page boundary).
    skew: usize,
    /// Bytes mapped from the requested offset.
    len: usize,
}

// SAFETY: the mapping is read-only for its whole life (PROT_READ, never changed), so reads from
// any thread are data-race free; the owner alone unmaps it, in `drop`.
unsafe impl Send for FileMap {}
// SAFETY: as above: shared access only ever reads.
unsafe impl Sync for FileMap {}

/// Errors copying out of a mapping into guest memory.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The file range lies outside the mapping.
    #[error("file range {offset}+{len} outside the {mapped}-byte mapping")]
    OutOfMapping {
        /// Offset in the mapping.
        offset: usize,
        /// Length.
        len: usize,
        /// Bytes mapped.
        mapped: usize,
    },
    /// The guest range is not guest RAM (or crosses a region end).
    #[error("guest range {addr:#x}+{len}: {source}")]
    Guest {
        /// Guest address.
        addr: u64,
        /// Length.
        len: usize,
        /// The error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

impl FileMap {
    /// Maps up to `len` bytes of `file` from byte `offset`, cut at the file's end; `None` when
    /// nothing is left there.
    pub fn new(file: &File, offset: u64, len: usize) -> std::io::Result<Option<Self>> {
        let size = file.metadata()?.len();
        if offset >= size || len == 0 {
            return Ok(None);
        }
        let len = len.min(usize::try_from(size - offset).unwrap_or(usize::MAX));
        // SAFETY: sysconf has no memory-safety preconditions.
        let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
            p if p > 0 => p as u64,
            _ => 4096,
        };
        let start = offset - offset % page;
        let skew = (offset - start) as usize;
        let map_len = skew
            .checked_add(len)
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        let start = libc::off_t::try_from(start)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: a new read-only mapping at an address the kernel picks (no MAP_FIXED), so it
        // replaces nothing and aliases no Rust object; the result is checked before any use.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                start,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Some(Self {
            map,
            map_len,
            skew,
            len,
        }))
    }

    /// Maps all of `file`; `None` for an empty file.
    pub fn whole(file: &File) -> std::io::Result<Option<Self>> {
        // `new` cuts the length at the file's end.
        Self::new(file, 0, usize::MAX)
    }

    /// Bytes mapped.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is mapped (never true of a constructed map).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The address of the mapping's first byte (the requested offset's).
    pub fn as_ptr(&self) -> *const u8 {
        (self.map as usize + self.skew) as *const u8
    }

    /// Copies `len` bytes from `offset` in the mapping to guest memory at `addr`.
    pub fn copy_to_guest(
        &self,
        offset: usize,
        mem: &GuestMemory,
        addr: GuestAddress,
        len: usize,
    ) -> Result<(), CopyError> {
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(CopyError::OutOfMapping {
                offset,
                len,
                mapped: self.len,
            });
        }
        let slice = mem
            .get_slice(addr, len)
            .map_err(|source| CopyError::Guest {
                addr: addr.0,
                len,
                source,
            })?;
        let guard = slice.ptr_guard_mut();
        // SAFETY: the source range lies inside this mapping (checked above) and stays mapped
        // while `self` is borrowed; the destination is `len` bytes of guest RAM that `slice`
        // (and `mem`, borrowed for the call) keep mapped. Guest memory is never the mapping of a
        // file mapped here, so the ranges do not overlap; the guest may write its own memory
        // meanwhile, which volatile stores allow.
        unsafe { copy_words(guard.as_ptr(), self.as_ptr().add(offset), len) };
        Ok(())
    }
}

impl Drop for FileMap {
    fn drop(&mut self) {
        // SAFETY: the mapping was made in `new` with this length and is unmapped only here; no
        // borrow of it outlives `self`.
        unsafe { libc::munmap(self.map, self.map_len) };
    }
}

/// Copies `len` bytes from `src` to `dst`: single bytes up to an 8-byte boundary of `dst`, then
/// eight bytes per load and store, then the tail. The stores are volatile, as stores into guest
/// memory are meant to be; that also keeps the compiler from turning the loop back into a
/// `memcpy` call (whose `rep movsb` this copy avoids, see the module documentation).
///
/// # Safety
/// `src` must be valid for reads and `dst` for writes of `len` bytes, and the two ranges must
/// not overlap.
pub unsafe fn copy_words(dst: *mut u8, src: *const u8, len: usize) {
    let mut i = 0;
    // SAFETY (all three loops): `i < len`, or `i + 8 <= len`, keeps every access inside the
    // caller's ranges; the u64 store is 8-byte aligned (dst + i is, after the first loop) and
    // the load is an unaligned one.
    while i < len && !(dst as usize + i).is_multiple_of(8) {
        unsafe { std::ptr::write_volatile(dst.add(i), src.add(i).read()) };
        i += 1;
    }
    while i + 8 <= len {
        unsafe {
            let word = src.add(i).cast::<u64>().read_unaligned();
            std::ptr::write_volatile(dst.add(i).cast::<u64>(), word);
        }
        i += 8;
    }
    while i < len {
        unsafe { std::ptr::write_volatile(dst.add(i), src.add(i).read()) };
        i += 1;
    }
}

/// Test helpers for code that reads files (here and the kernel reader).
#[cfg(test)]
pub(crate) mod test_files {
    use std::fs::File;

    /// `len` bytes of a pattern that differs from page to page.
    pub fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4096) as u8).collect()
    }

    /// An unlinked temporary file holding `bytes`.
    pub fn file_with(bytes: &[u8]) -> File {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("hearth-test-file-{}-{n}", std::process::id()));
        let mut f = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        std::io::Write::write_all(&mut f, bytes).unwrap();
        f
    }
}

#[cfg(test)]
mod tests {
    use super::test_files::{file_with, pattern};
    use super::*;
    use vm_memory::{Bytes, GuestMemoryMmap};

    #[test]
    fn the_word_copy_handles_every_alignment_and_length() {
        let src = pattern(200);
        for src_off in 0..9 {
            for dst_off in 0..9 {
                for len in [0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 150] {
                    let mut dst = vec![0xeeu8; 200];
                    // SAFETY: both ranges lie inside their vectors (offsets < 9, len <= 150 of
                    // 200 bytes) and are distinct allocations.
                    unsafe {
                        copy_words(
                            dst.as_mut_ptr().add(dst_off),
                            src.as_ptr().add(src_off),
                            len,
                        )
                    };
                    let what = format!("src+{src_off} dst+{dst_off} len {len}");
                    assert_eq!(
                        dst[dst_off..dst_off + len],
                        src[src_off..src_off + len],
                        "{what}"
                    );
                    assert!(dst[..dst_off].iter().all(|&b| b == 0xee), "{what}: before");
                    assert!(
                        dst[dst_off + len..].iter().all(|&b| b == 0xee),
                        "{what}: after"
                    );
                }
            }
        }
    }

    #[test]
    fn a_map_from_an_unaligned_offset_is_cut_at_the_end_of_the_file() {
        let data = pattern(3 * 4096 + 100);
        let f = file_with(&data);
        let m = FileMap::new(&f, 4196, 1 << 20).unwrap().unwrap();
        assert_eq!(m.len(), data.len() - 4196);
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        m.copy_to_guest(10, &mem, GuestAddress(0x2003), 5000)
            .unwrap();
        let mut back = vec![0u8; 5000];
        mem.read_slice(&mut back, GuestAddress(0x2003)).unwrap();
        assert!(back == data[4206..9206], "bytes differ");
        assert!(FileMap::new(&f, data.len() as u64, 1).unwrap().is_none());
        assert!(FileMap::whole(&file_with(&[])).unwrap().is_none());
    }

    #[test]
    fn copies_outside_the_mapping_or_guest_memory_are_refused() {
        let f = file_with(&pattern(8192));
        let m = FileMap::whole(&f).unwrap().unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 10)]).unwrap();
        let past_file = m.copy_to_guest(8000, &mem, GuestAddress(0), 193);
        assert!(matches!(past_file, Err(CopyError::OutOfMapping { .. })));
        let overflow = m.copy_to_guest(usize::MAX, &mem, GuestAddress(0), 2);
        assert!(matches!(overflow, Err(CopyError::OutOfMapping { .. })));
        let past_ram = m.copy_to_guest(0, &mem, GuestAddress((64 << 10) - 100), 200);
        assert!(matches!(past_ram, Err(CopyError::Guest { .. })));
    }
}
