//! A bounded byte ring that grows lazily up to its capacity.
//!
//! Each vsock connection has two (guest→host and host→guest). Data is copied straight from guest
//! memory into the free space (and from the filled space into guest memory), so the ring exposes
//! its free and filled regions as at most two slices each instead of going byte by byte.

#[derive(Debug)]
pub struct RingBuffer {
    buf: Vec<u8>,
    head: usize,
    len: usize,
    cap: usize,
}

const INITIAL_ALLOC: usize = 16 * 1024;

impl RingBuffer {
    /// An empty ring that will hold at most `cap` bytes.
    pub fn new(cap: usize) -> Self {
        RingBuffer {
            buf: Vec::new(),
            head: 0,
            len: 0,
            cap,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes that can still be pushed.
    pub fn free(&self) -> usize {
        self.cap - self.len
    }

    /// Drop all contents (keeps the allocation).
    pub fn clear(&mut self) {
        self.head = 0;
        self.len = 0;
    }

    /// Make sure the allocation can hold `want` bytes in total (never above `cap`).
    fn grow_for(&mut self, want: usize) {
        let want = want.min(self.cap);
        if want <= self.buf.len() {
            return;
        }
        let new_size = want
            .max(self.buf.len().saturating_mul(2))
            .max(INITIAL_ALLOC)
            .min(self.cap);
        let mut next = vec![0u8; new_size];
        let (a, b) = self.filled();
        next[..a.len()].copy_from_slice(a);
        next[a.len()..a.len() + b.len()].copy_from_slice(b);
        self.buf = next;
        self.head = 0;
    }

    /// The filled region, oldest bytes first, as up to two slices.
    pub fn filled(&self) -> (&[u8], &[u8]) {
        if self.len == 0 {
            return (&[], &[]);
        }
        let size = self.buf.len();
        let first = (size - self.head).min(self.len);
        (
            &self.buf[self.head..self.head + first],
            &self.buf[..self.len - first],
        )
    }

    /// Up to `n` free bytes as two mutable slices (second may be empty); fill them, then call
    /// [`RingBuffer::commit`] with the number of bytes written.
    pub fn free_slices(&mut self, n: usize) -> (&mut [u8], &mut [u8]) {
        let n = n.min(self.free());
        self.grow_for(self.len + n);
        let size = self.buf.len();
        if size == 0 || n == 0 {
            return (&mut [], &mut []);
        }
        let tail = (self.head + self.len) % size;
        if tail + n <= size {
            (&mut self.buf[tail..tail + n], &mut [])
        } else {
            let (front, back) = self.buf.split_at_mut(tail);
            let second = n - back.len();
            (back, &mut front[..second])
        }
    }

    /// Mark `n` bytes handed out by [`RingBuffer::free_slices`] as filled.
    pub fn commit(&mut self, n: usize) {
        debug_assert!(n <= self.free() && self.len + n <= self.buf.len());
        self.len = (self.len + n).min(self.buf.len());
    }

    /// Append as much of `src` as fits; returns the number of bytes taken.
    pub fn push(&mut self, src: &[u8]) -> usize {
        let (a, b) = self.free_slices(src.len());
        let (na, nb) = (a.len(), b.len());
        a.copy_from_slice(&src[..na]);
        b.copy_from_slice(&src[na..na + nb]);
        self.commit(na + nb);
        na + nb
    }

    /// Drop `n` bytes from the front.
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.len);
        if n == 0 {
            return;
        }
        self.head = (self.head + n) % self.buf.len();
        self.len -= n;
        if self.len == 0 {
            self.head = 0;
        }
    }

    /// Copy up to `dst.len()` bytes from the front into `dst` and drop them.
    pub fn pop_into(&mut self, dst: &mut [u8]) -> usize {
        let (a, b) = self.filled();
        let na = a.len().min(dst.len());
        dst[..na].copy_from_slice(&a[..na]);
        let nb = b.len().min(dst.len() - na);
        dst[na..na + nb].copy_from_slice(&b[..nb]);
        self.consume(na + nb);
        na + nb
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_grows_and_respects_capacity() {
        let mut r = RingBuffer::new(40_000);
        let data: Vec<u8> = (0..30_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(r.push(&data), 30_000);
        let mut out = vec![0u8; 25_000];
        assert_eq!(r.pop_into(&mut out), 25_000);
        assert_eq!(out, data[..25_000]);
        // Wraps around the end of the allocation.
        assert_eq!(r.push(&data), 30_000);
        assert_eq!(r.len(), 35_000);
        // Only 5_000 fit now.
        assert_eq!(r.push(&data), 5_000);
        assert_eq!(r.free(), 0);
        let mut all = vec![0u8; 50_000];
        assert_eq!(r.pop_into(&mut all), 40_000);
        let mut expect = data[25_000..].to_vec();
        expect.extend_from_slice(&data);
        expect.extend_from_slice(&data[..5_000]);
        assert_eq!(&all[..40_000], &expect[..]);
        assert!(r.is_empty());
    }

    #[test]
    fn grows_while_wrapped_keeps_order() {
        let mut r = RingBuffer::new(1 << 20);
        let a: Vec<u8> = (0..INITIAL_ALLOC).map(|i| i as u8).collect();
        r.push(&a);
        let mut sink = vec![0u8; INITIAL_ALLOC - 100];
        r.pop_into(&mut sink);
        r.push(&[7u8; 1000]); // wraps inside the initial allocation
        r.push(&[9u8; 50_000]); // forces growth while wrapped
        let mut out = vec![0u8; 51_100];
        assert_eq!(r.pop_into(&mut out), 51_100);
        assert_eq!(&out[..100], &a[INITIAL_ALLOC - 100..]);
        assert!(out[100..1100].iter().all(|&b| b == 7));
        assert!(out[1100..].iter().all(|&b| b == 9));
    }
}
