//! Protocol messages and their binary encoding (see PROTOCOL.md).

use super::DecodeError;
use super::wire::{Reader, Writer};

/// Identifies one request (and every message belonging to it) on a connection.
/// Chosen by the client; 0 is reserved for connection-level messages.
pub type RequestId = u32;

/// First message sent by each side after connecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub protocol_version: u16,
    /// Version of the software sending it (agent or client).
    pub software_version: String,
    /// Feature names the sender supports (e.g. "exec", "files").
    pub capabilities: Vec<String>,
}

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Program {
    /// Executed directly; `argv[0]` is looked up in `PATH`.
    Argv(Vec<Vec<u8>>),
    /// Run by bash when present, else /bin/sh, via `-c`.
    Script(Vec<u8>),
}

/// A command to execute in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSpec {
    pub program: Program,
    /// Added to the agent's base environment (later entries win).
    pub env: Vec<(Vec<u8>, Vec<u8>)>,
    pub cwd: Option<Vec<u8>>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Bytes written to the child's stdin, then closed. None: stdin is /dev/null.
    pub stdin: Option<Vec<u8>>,
    pub timeout_ms: Option<u64>,
    /// Initial output credit in bytes (see flow control in PROTOCOL.md).
    pub window: u32,
}

/// Which pipe a chunk of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

/// Final report of an exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    pub status: ExitStatus,
    pub wall_time_us: u64,
    /// Peak resident set size of the process (and its waited-for children), KiB.
    pub peak_rss_kib: u64,
    pub timed_out: bool,
    pub cancelled: bool,
}

/// Machine-readable class of an `Error` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    VersionMismatch,
    BadRequest,
    UnknownRequest,
    DuplicateRequest,
    SpawnFailed,
    PathEscape,
    Io,
    Protocol,
    Unsupported,
}

/// Every message of the protocol, in either direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Hello(Hello),
    // client -> agent
    Exec {
        id: RequestId,
        spec: ExecSpec,
    },
    Signal {
        id: RequestId,
        signal: i32,
    },
    Cancel {
        id: RequestId,
    },
    Credit {
        id: RequestId,
        bytes: u32,
    },
    PutFiles {
        id: RequestId,
        dest: Vec<u8>,
    },
    GetFiles {
        id: RequestId,
        path: Vec<u8>,
        window: u32,
    },
    Ping {
        id: RequestId,
    },
    Shutdown {
        id: RequestId,
    },
    // both directions (file data)
    FileChunk {
        id: RequestId,
        data: Vec<u8>,
    },
    FileEnd {
        id: RequestId,
    },
    // agent -> client
    Started {
        id: RequestId,
        pid: u32,
    },
    Output {
        id: RequestId,
        stream: OutputStream,
        data: Vec<u8>,
    },
    Exited {
        id: RequestId,
        info: ExitInfo,
    },
    Done {
        id: RequestId,
    },
    Pong {
        id: RequestId,
    },
    Error {
        id: RequestId,
        code: ErrorCode,
        message: String,
    },
}

mod kind {
    pub const HELLO: u8 = 0x01;
    pub const EXEC: u8 = 0x10;
    pub const SIGNAL: u8 = 0x11;
    pub const CANCEL: u8 = 0x12;
    pub const CREDIT: u8 = 0x13;
    pub const PUT_FILES: u8 = 0x20;
    pub const FILE_CHUNK: u8 = 0x21;
    pub const FILE_END: u8 = 0x22;
    pub const GET_FILES: u8 = 0x23;
    pub const PING: u8 = 0x30;
    pub const SHUTDOWN: u8 = 0x31;
    pub const STARTED: u8 = 0x40;
    pub const OUTPUT: u8 = 0x41;
    pub const EXITED: u8 = 0x42;
    pub const DONE: u8 = 0x43;
    pub const PONG: u8 = 0x44;
    pub const ERROR: u8 = 0x45;
}

impl ErrorCode {
    fn to_wire(self) -> u16 {
        match self {
            ErrorCode::VersionMismatch => 1,
            ErrorCode::BadRequest => 2,
            ErrorCode::UnknownRequest => 3,
            ErrorCode::DuplicateRequest => 4,
            ErrorCode::SpawnFailed => 5,
            ErrorCode::PathEscape => 6,
            ErrorCode::Io => 7,
            ErrorCode::Protocol => 8,
            ErrorCode::Unsupported => 9,
        }
    }
    fn from_wire(v: u16) -> Result<Self, DecodeError> {
        Ok(match v {
            1 => ErrorCode::VersionMismatch,
            2 => ErrorCode::BadRequest,
            3 => ErrorCode::UnknownRequest,
            4 => ErrorCode::DuplicateRequest,
            5 => ErrorCode::SpawnFailed,
            6 => ErrorCode::PathEscape,
            7 => ErrorCode::Io,
            8 => ErrorCode::Protocol,
            9 => ErrorCode::Unsupported,
            _ => {
                return Err(DecodeError::BadTag {
                    what: "error code",
                    tag: v.min(255) as u8,
                });
            }
        })
    }
}

impl Message {
    /// The request this message belongs to (0 for `Hello` and connection-level errors).
    pub fn id(&self) -> RequestId {
        match self {
            Message::Hello(_) => 0,
            Message::Exec { id, .. }
            | Message::Signal { id, .. }
            | Message::Cancel { id }
            | Message::Credit { id, .. }
            | Message::PutFiles { id, .. }
            | Message::GetFiles { id, .. }
            | Message::Ping { id }
            | Message::Shutdown { id }
            | Message::FileChunk { id, .. }
            | Message::FileEnd { id }
            | Message::Started { id, .. }
            | Message::Output { id, .. }
            | Message::Exited { id, .. }
            | Message::Done { id }
            | Message::Pong { id }
            | Message::Error { id, .. } => *id,
        }
    }

    /// Encodes the frame payload: kind byte, request id, body.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        match self {
            Message::Hello(h) => {
                w.u8(kind::HELLO);
                w.u32(0);
                for b in super::MAGIC {
                    w.u8(b);
                }
                w.u16(h.protocol_version);
                w.str(&h.software_version);
                w.u32(h.capabilities.len() as u32);
                for c in &h.capabilities {
                    w.str(c);
                }
            }
            Message::Exec { id, spec } => {
                w.u8(kind::EXEC);
                w.u32(*id);
                encode_spec(&mut w, spec);
            }
            Message::Signal { id, signal } => {
                w.u8(kind::SIGNAL);
                w.u32(*id);
                w.i32(*signal);
            }
            Message::Cancel { id } => head(&mut w, kind::CANCEL, *id),
            Message::Credit { id, bytes } => {
                head(&mut w, kind::CREDIT, *id);
                w.u32(*bytes);
            }
            Message::PutFiles { id, dest } => {
                head(&mut w, kind::PUT_FILES, *id);
                w.bytes(dest);
            }
            Message::GetFiles { id, path, window } => {
                head(&mut w, kind::GET_FILES, *id);
                w.bytes(path);
                w.u32(*window);
            }
            Message::Ping { id } => head(&mut w, kind::PING, *id),
            Message::Shutdown { id } => head(&mut w, kind::SHUTDOWN, *id),
            Message::FileChunk { id, data } => {
                head(&mut w, kind::FILE_CHUNK, *id);
                w.bytes(data);
            }
            Message::FileEnd { id } => head(&mut w, kind::FILE_END, *id),
            Message::Started { id, pid } => {
                head(&mut w, kind::STARTED, *id);
                w.u32(*pid);
            }
            Message::Output { id, stream, data } => {
                head(&mut w, kind::OUTPUT, *id);
                w.u8(match stream {
                    OutputStream::Stdout => 1,
                    OutputStream::Stderr => 2,
                });
                w.bytes(data);
            }
            Message::Exited { id, info } => {
                head(&mut w, kind::EXITED, *id);
                match info.status {
                    ExitStatus::Code(c) => {
                        w.u8(0);
                        w.i32(c);
                    }
                    ExitStatus::Signal(s) => {
                        w.u8(1);
                        w.i32(s);
                    }
                }
                w.u64(info.wall_time_us);
                w.u64(info.peak_rss_kib);
                w.bool(info.timed_out);
                w.bool(info.cancelled);
            }
            Message::Done { id } => head(&mut w, kind::DONE, *id),
            Message::Pong { id } => head(&mut w, kind::PONG, *id),
            Message::Error { id, code, message } => {
                head(&mut w, kind::ERROR, *id);
                w.u16(code.to_wire());
                w.str(message);
            }
        }
        w.into_inner()
    }

    /// Decodes one frame payload. Never panics; allocations are bounded by `payload.len()`.
    pub fn decode(payload: &[u8]) -> Result<Message, DecodeError> {
        let mut r = Reader::new(payload);
        let k = r.u8()?;
        let id = r.u32()?;
        let msg = match k {
            kind::HELLO => {
                if r.raw(4)? != super::MAGIC {
                    return Err(DecodeError::BadMagic);
                }
                let protocol_version = r.u16()?;
                let software_version = r.string()?;
                let n = r.count(4)?;
                let mut capabilities = Vec::with_capacity(n);
                for _ in 0..n {
                    capabilities.push(r.string()?);
                }
                Message::Hello(Hello {
                    protocol_version,
                    software_version,
                    capabilities,
                })
            }
            kind::EXEC => Message::Exec {
                id,
                spec: decode_spec(&mut r)?,
            },
            kind::SIGNAL => Message::Signal {
                id,
                signal: r.i32()?,
            },
            kind::CANCEL => Message::Cancel { id },
            kind::CREDIT => Message::Credit {
                id,
                bytes: r.u32()?,
            },
            kind::PUT_FILES => Message::PutFiles {
                id,
                dest: r.bytes()?,
            },
            kind::GET_FILES => Message::GetFiles {
                id,
                path: r.bytes()?,
                window: r.u32()?,
            },
            kind::PING => Message::Ping { id },
            kind::SHUTDOWN => Message::Shutdown { id },
            kind::FILE_CHUNK => Message::FileChunk {
                id,
                data: r.bytes()?,
            },
            kind::FILE_END => Message::FileEnd { id },
            kind::STARTED => Message::Started { id, pid: r.u32()? },
            kind::OUTPUT => {
                let stream = match r.u8()? {
                    1 => OutputStream::Stdout,
                    2 => OutputStream::Stderr,
                    t => {
                        return Err(DecodeError::BadTag {
                            what: "output stream",
                            tag: t,
                        });
                    }
                };
                Message::Output {
                    id,
                    stream,
                    data: r.bytes()?,
                }
            }
            kind::EXITED => {
                let status = match r.u8()? {
                    0 => ExitStatus::Code(r.i32()?),
                    1 => ExitStatus::Signal(r.i32()?),
                    t => {
                        return Err(DecodeError::BadTag {
                            what: "exit status",
                            tag: t,
                        });
                    }
                };
                let info = ExitInfo {
                    status,
                    wall_time_us: r.u64()?,
                    peak_rss_kib: r.u64()?,
                    timed_out: r.bool()?,
                    cancelled: r.bool()?,
                };
                Message::Exited { id, info }
            }
            kind::DONE => Message::Done { id },
            kind::PONG => Message::Pong { id },
            kind::ERROR => {
                let code = ErrorCode::from_wire(r.u16()?)?;
                Message::Error {
                    id,
                    code,
                    message: r.string()?,
                }
            }
            other => return Err(DecodeError::UnknownKind(other)),
        };
        if !matches!(msg, Message::Hello(_) | Message::Error { .. }) && id == 0 {
            return Err(DecodeError::ReservedId);
        }
        r.finish()?;
        Ok(msg)
    }
}

fn head(w: &mut Writer, k: u8, id: RequestId) {
    w.u8(k);
    w.u32(id);
}

fn encode_spec(w: &mut Writer, spec: &ExecSpec) {
    match &spec.program {
        Program::Argv(argv) => {
            w.u8(0);
            w.u32(argv.len() as u32);
            for a in argv {
                w.bytes(a);
            }
        }
        Program::Script(s) => {
            w.u8(1);
            w.bytes(s);
        }
    }
    w.u32(spec.env.len() as u32);
    for (k, v) in &spec.env {
        w.bytes(k);
        w.bytes(v);
    }
    w.opt_bytes(spec.cwd.as_deref());
    w.opt_u32(spec.uid);
    w.opt_u32(spec.gid);
    w.opt_bytes(spec.stdin.as_deref());
    w.opt_u64(spec.timeout_ms);
    w.u32(spec.window);
}

fn decode_spec(r: &mut Reader<'_>) -> Result<ExecSpec, DecodeError> {
    let program = match r.u8()? {
        0 => {
            let n = r.count(4)?;
            let mut argv = Vec::with_capacity(n);
            for _ in 0..n {
                argv.push(r.bytes()?);
            }
            Program::Argv(argv)
        }
        1 => Program::Script(r.bytes()?),
        t => {
            return Err(DecodeError::BadTag {
                what: "program",
                tag: t,
            });
        }
    };
    let n = r.count(8)?;
    let mut env = Vec::with_capacity(n);
    for _ in 0..n {
        env.push((r.bytes()?, r.bytes()?));
    }
    Ok(ExecSpec {
        program,
        env,
        cwd: r.opt_bytes()?,
        uid: r.opt_u32()?,
        gid: r.opt_u32()?,
        stdin: r.opt_bytes()?,
        timeout_ms: r.opt_u64()?,
        window: r.u32()?,
    })
}
