//! Turns output byte chunks into `stdout: …` / `stderr: …` lines. Partial lines are buffered per
//! stream until their newline (or the stream's end); bytes become text here, lossily, only once a
//! line is complete, so multi-byte characters split across chunks survive.

/// Which stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn prefix(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout: ",
            Stream::Stderr => "stderr: ",
        }
    }
}

/// A line longer than this is cut and emitted in pieces (the original's scanner limit is
/// 100 MiB; hearth keeps memory per entry small).
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// Per-stream partial-line buffers.
#[derive(Debug, Default)]
pub struct LineSplitter {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

fn emit(out: &mut String, stream: Stream, line: &[u8]) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    out.push_str(stream.prefix());
    out.push_str(&String::from_utf8_lossy(line));
    out.push('\n');
}

impl LineSplitter {
    /// Appends the complete lines in `chunk` (with the buffered start of the first) to `out`.
    pub fn push(&mut self, stream: Stream, chunk: &[u8], out: &mut String) {
        let buf = match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        };
        let mut rest = chunk;
        while let Some(pos) = rest.iter().position(|b| *b == b'\n') {
            if buf.is_empty() {
                emit(out, stream, &rest[..pos]);
            } else {
                buf.extend_from_slice(&rest[..pos]);
                emit(out, stream, buf);
                buf.clear();
            }
            rest = &rest[pos + 1..];
        }
        buf.extend_from_slice(rest);
        while buf.len() >= MAX_LINE_BYTES {
            let piece: Vec<u8> = buf.drain(..MAX_LINE_BYTES).collect();
            emit(out, stream, &piece);
        }
    }

    /// Emits whatever partial lines remain (stream end).
    pub fn finish(&mut self, out: &mut String) {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let buf = match stream {
                Stream::Stdout => &mut self.stdout,
                Stream::Stderr => &mut self.stderr,
            };
            if !buf.is_empty() {
                let line = std::mem::take(buf);
                emit(out, stream, &line);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_and_partial_lines() {
        let mut s = LineSplitter::default();
        let mut out = String::new();
        s.push(Stream::Stdout, b"hel", &mut out);
        assert_eq!(out, "");
        s.push(Stream::Stderr, b"oops\r\nwarn", &mut out);
        s.push(Stream::Stdout, b"lo\nworld\n\nx", &mut out);
        assert_eq!(
            out,
            "stderr: oops\nstdout: hello\nstdout: world\nstdout: \n"
        );
        s.finish(&mut out);
        assert_eq!(
            out,
            "stderr: oops\nstdout: hello\nstdout: world\nstdout: \nstdout: x\nstderr: warn\n"
        );
    }

    #[test]
    fn utf8_split_across_chunks_and_invalid_bytes() {
        let mut s = LineSplitter::default();
        let mut out = String::new();
        let euro = "€".as_bytes();
        s.push(Stream::Stdout, &euro[..1], &mut out);
        s.push(Stream::Stdout, &euro[1..], &mut out);
        s.push(Stream::Stdout, b"\n\xff\xfeok\n", &mut out);
        assert_eq!(out, "stdout: €\nstdout: \u{fffd}\u{fffd}ok\n");
    }

    #[test]
    fn overlong_lines_are_cut() {
        let mut s = LineSplitter::default();
        let mut out = String::new();
        s.push(Stream::Stdout, &vec![b'a'; MAX_LINE_BYTES + 10], &mut out);
        assert_eq!(out.len(), "stdout: \n".len() + MAX_LINE_BYTES);
        s.finish(&mut out);
        assert!(out.ends_with("stdout: aaaaaaaaaa\n"));
    }
}
