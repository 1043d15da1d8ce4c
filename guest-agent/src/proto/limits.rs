//! Protocol constants: version, magic and size limits.

/// Version of the wire protocol. Both sides must announce the same version.
pub const PROTOCOL_VERSION: u16 = 2;

/// Magic bytes at the start of every `Hello` body.
pub const MAGIC: [u8; 4] = *b"HRTH";

/// Largest frame payload (kind + request id + body) accepted by the decoder.
/// A length prefix above this is rejected before anything is allocated.
pub const MAX_FRAME_PAYLOAD: usize = 1024 * 1024;

/// Size of the length prefix in front of every frame.
pub const FRAME_HEADER_LEN: usize = 4;

/// Largest data chunk (output, file data) a sender puts in one frame.
pub const MAX_CHUNK: usize = 64 * 1024;

/// Largest stdin payload that fits in an `Exec` request (leaves room for argv/env).
pub const MAX_STDIN: usize = MAX_FRAME_PAYLOAD / 2;

/// Default credit window (bytes of output in flight per request) used by the client.
pub const DEFAULT_WINDOW: u32 = 1024 * 1024;

/// Credit window the agent grants for an upload (`PutFiles`).
pub const PUT_WINDOW: u32 = 1024 * 1024;

/// Credit charged for each data message (`Output`, `FileChunk`) on top of its
/// data length, so a window bounds the number of queued messages too.
pub const DATA_MESSAGE_COST: u32 = 64;

/// Smallest window a request may announce (must exceed `DATA_MESSAGE_COST`).
pub const MIN_WINDOW: u32 = 4096;

/// Credit a data message with `len` data bytes uses.
pub const fn data_cost(len: usize) -> u64 {
    len as u64 + DATA_MESSAGE_COST as u64
}

/// Agent version string (the crate version).
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
