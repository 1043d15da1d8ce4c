//! The kernel image as linux-loader reads it: a file position whose large reads (a `PT_LOAD`
//! segment of the vmlinux: 12.6 MB of text, rodata and data for the guest kernel here) fill
//! guest memory with several threads at once, copying from a read-only mapping of the file.
//!
//! Loading the kernel is the one part of a boot that the VMM does on the host CPU: the copy from
//! the page cache plus the first touch (zeroing) of every guest page it lands in.
//! - Threads: under the emulated-SVM harness the load took 150 ms to 1.4 s of a ~2 s boot
//!   (BENCHMARKS.md); with two threads on the harness's two CPUs its median went from 232 to
//!   170 ms in an A/B of 6 boots each.
//! - The copy: from a read-only mapping of the file, eight bytes per load and store, not through
//!   `pread` (see [`crate::file_map`] for why). Reads the file cannot be mapped for fall back
//!   to `pread`.
//!
//! Small reads (headers, notes) stay one `pread` on the calling thread.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::{ReadVolatile, VolatileMemoryError, VolatileSlice};

use crate::file_map::{FileMap, copy_words};

/// Reads below this size are not split.
pub const PARALLEL_MIN: usize = 2 << 20;
/// At most this many threads fill one range.
pub const MAX_THREADS: usize = 4;

/// A position in `file`; see the module documentation.
pub struct KernelReader<'a> {
    file: &'a File,
    pos: u64,
    threads: usize,
}

impl<'a> KernelReader<'a> {
    /// Reads `file` from offset 0 with up to `threads` threads per large read (at least 1, at
    /// most [`MAX_THREADS`]).
    pub fn new(file: &'a File, threads: usize) -> Self {
        Self {
            file,
            pos: 0,
            threads: threads.clamp(1, MAX_THREADS),
        }
    }

    /// One thread per host CPU, up to [`MAX_THREADS`].
    pub fn with_host_threads(file: &'a File) -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::new(file, cpus)
    }
}

impl Read for KernelReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for KernelReader<'_> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let bad = || std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek out of range");
        self.pos = match to {
            SeekFrom::Start(n) => n,
            SeekFrom::Current(d) => self.pos.checked_add_signed(d).ok_or_else(bad)?,
            SeekFrom::End(d) => self
                .file
                .metadata()?
                .len()
                .checked_add_signed(d)
                .ok_or_else(bad)?,
        };
        Ok(self.pos)
    }
}

/// `pread`s `len` bytes at file offset `off` into `dst`; returns how many bytes arrived (fewer
/// only at end of file) or the error that stopped it before any did.
///
/// # Safety
/// `dst` must be valid for writes of `len` bytes, and nothing else may access them meanwhile.
unsafe fn pread_full(fd: i32, dst: *mut u8, len: usize, off: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < len {
        let off = i64::try_from(off + done as u64)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: dst + done .. dst + len lies inside the caller's range (done < len), which the
        // caller guarantees is valid for writes and not accessed by anyone else.
        let n = unsafe { libc::pread(fd, dst.add(done).cast(), len - done, off) };
        match n {
            0 => break,
            n if n > 0 => done += n as usize,
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                if done == 0 {
                    return Err(e);
                }
                break;
            }
        }
    }
    Ok(done)
}

/// Runs `fill(start, n)` for the consecutive `chunk`-sized pieces of `0..len`, each on a thread
/// of its own when there is more than one; returns each piece's wanted length and result, in
/// order.
fn fill_in_pieces<F>(len: usize, chunk: usize, fill: F) -> Vec<(usize, std::io::Result<usize>)>
where
    F: Fn(usize, usize) -> std::io::Result<usize> + Sync,
{
    let piece = |start: usize| {
        let n = chunk.min(len - start);
        (n, fill(start, n))
    };
    if chunk >= len {
        return vec![piece(0)];
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..len)
            .step_by(chunk)
            .map(|start| s.spawn(move || piece(start)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    (
                        0,
                        Err(std::io::Error::other("kernel reader thread panicked")),
                    )
                })
            })
            .collect()
    })
}

impl ReadVolatile for KernelReader<'_> {
    fn read_volatile<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let large = buf.len() >= PARALLEL_MIN;
        let threads = if large { self.threads } else { 1 };
        let window = if large {
            FileMap::new(self.file, self.pos, buf.len()).unwrap_or_else(|e| {
                tracing::debug!(error = %e, "kernel image not mappable; reading it with pread");
                None
            })
        } else {
            None
        };
        // With a window, only what the file has from here is copied (a short read at its end).
        let len = window.as_ref().map_or(buf.len(), FileMap::len);
        // Whole pages per thread, so no two threads fault in the same page.
        let chunk = len.div_ceil(threads).next_multiple_of(4096).max(4096);
        let fd = self.file.as_raw_fd();
        let guard = buf.ptr_guard_mut();
        // Plain addresses, so that the scoped threads may carry them (raw pointers are not Send).
        let base = guard.as_ptr() as usize;
        let src = window.as_ref().map(|w| w.as_ptr() as usize);
        let pos = self.pos;
        let results = fill_in_pieces(len, chunk, |start, n| match src {
            // SAFETY: `buf` (borrowed mutably for this whole call, so its guest memory stays
            // mapped) is valid for writes of `len` bytes from `base`, and `window` (alive until
            // this function returns, after every piece is joined) for reads of `len` bytes from
            // `src`; the pieces [start, start + n) are disjoint, so each byte has one writer.
            // The mapping is of the operator's kernel file, opened read-only: were it truncated
            // under the copy, the read would raise SIGBUS, as any reader of a mapped file would.
            Some(src) => unsafe {
                copy_words((base + start) as *mut u8, (src + start) as *const u8, n);
                Ok(n)
            },
            // SAFETY: as above for `buf`; `pread_full` writes only inside [start, start + n).
            None => unsafe { pread_full(fd, (base + start) as *mut u8, n, pos + start as u64) },
        });
        drop(window);
        // What arrived as one run from the start counts; a short or failed piece ends it (the
        // caller reads again from there, as after any short read).
        let mut total = 0;
        for (wanted, got) in results {
            match got {
                Ok(n) => {
                    total += n;
                    if n < wanted {
                        break;
                    }
                }
                Err(e) if total == 0 => return Err(VolatileMemoryError::IOError(e)),
                Err(_) => break,
            }
        }
        buf.bitmap().mark_dirty(0, total);
        self.pos += total as u64;
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file_map::test_files::{file_with, pattern};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    #[test]
    fn a_large_read_with_threads_lands_every_byte_in_place() {
        let data = pattern(5 * PARALLEL_MIN + 12345);
        let f = file_with(&data);
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        for threads in [1, 2, 3, MAX_THREADS] {
            let mut r = KernelReader::new(&f, threads);
            r.seek(SeekFrom::Start(100)).unwrap();
            let want = data.len() - 100;
            mem.read_exact_volatile_from(GuestAddress(0x1000), &mut r, want)
                .unwrap();
            let mut back = vec![0u8; want];
            mem.read_slice(&mut back, GuestAddress(0x1000)).unwrap();
            assert!(back == data[100..], "{threads} threads: bytes differ");
            assert_eq!(r.stream_position().unwrap(), data.len() as u64);
        }
    }

    #[test]
    fn a_read_past_the_end_of_the_file_fails_as_a_short_file() {
        let data = pattern(3 * PARALLEL_MIN);
        let f = file_with(&data);
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let mut r = KernelReader::new(&f, 4);
        let e = mem
            .read_exact_volatile_from(GuestAddress(0), &mut r, data.len() + 4096)
            .unwrap_err();
        // Every byte the file has arrived, and the shortfall is an error, not a silent success.
        assert!(e.to_string().contains(&data.len().to_string()), "{e}");
    }

    #[test]
    fn small_reads_and_seeks_move_the_position() {
        let data = pattern(10_000);
        let f = file_with(&data);
        let mut r = KernelReader::with_host_threads(&f);
        let mut head = [0u8; 16];
        r.read_exact(&mut head).unwrap();
        assert_eq!(head[..], data[..16]);
        assert_eq!(r.seek(SeekFrom::Current(-6)).unwrap(), 10);
        assert_eq!(r.seek(SeekFrom::End(-10)).unwrap(), 9_990);
        let mut tail = Vec::new();
        r.read_to_end(&mut tail).unwrap();
        assert_eq!(tail, data[9_990..]);
        assert!(r.seek(SeekFrom::Current(-20_000)).is_err());
    }
}
