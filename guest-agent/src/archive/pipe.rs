//! Adapters between blocking `Read`/`Write` (tar) and async tasks, built on a
//! bounded channel of byte chunks so memory stays bounded on both sides.

use crate::proto::MAX_CHUNK;
use std::io::{Read, Write};
use tokio::sync::mpsc;

/// A blocking `Read` fed with chunks from an async task. Reads return EOF once
/// the sender is dropped. Must be used from a blocking thread.
pub struct ChunkReader {
    rx: mpsc::Receiver<Vec<u8>>,
    current: Vec<u8>,
    pos: usize,
    /// Called with the size of each chunk once it has been fully consumed.
    on_consumed: Box<dyn FnMut(usize) + Send>,
}

impl ChunkReader {
    pub fn new(rx: mpsc::Receiver<Vec<u8>>, on_consumed: Box<dyn FnMut(usize) + Send>) -> Self {
        Self {
            rx,
            current: Vec::new(),
            pos: 0,
            on_consumed,
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos >= self.current.len() {
            if !self.current.is_empty() {
                (self.on_consumed)(self.current.len());
                self.current = Vec::new();
                self.pos = 0;
            }
            match self.rx.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A blocking `Write` that sends chunks of at most `MAX_CHUNK` bytes to an
/// async task. Blocks when the channel is full. Must be used from a blocking thread.
pub struct ChunkWriter {
    tx: mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
}

impl ChunkWriter {
    pub fn new(tx: mpsc::Sender<Vec<u8>>) -> Self {
        Self {
            tx,
            buf: Vec::with_capacity(MAX_CHUNK),
        }
    }
    fn send_buf(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(MAX_CHUNK));
        self.tx
            .blocking_send(chunk)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "receiver gone"))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(MAX_CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= MAX_CHUNK {
            self.send_buf()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.send_buf()
    }
}

impl Drop for ChunkWriter {
    fn drop(&mut self) {
        let _ = self.send_buf();
    }
}
