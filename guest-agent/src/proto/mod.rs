//! The guest protocol: messages, frame codec, limits and version.
//! Pure data and byte handling: no I/O, no async, so it fuzzes cleanly.

mod frame;
mod limits;
mod message;
mod wire;

pub use frame::{encode_frame, parse_frame, payload_len};
pub use limits::*;
pub use message::{
    ErrorCode, ExecSpec, ExitInfo, ExitStatus, Hello, Message, OutputStream, Program, RequestId,
};

/// Why a frame or message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: usize, max: usize },
    #[error("message is truncated")]
    Truncated,
    #[error("{0} unexpected bytes after the message")]
    TrailingBytes(usize),
    #[error("unknown message kind 0x{0:02x}")]
    UnknownKind(u8),
    #[error("invalid {what} tag {tag}")]
    BadTag { what: &'static str, tag: u8 },
    #[error("hello message has wrong magic bytes (not a hearth peer?)")]
    BadMagic,
    #[error("string is not valid UTF-8")]
    InvalidUtf8,
    #[error("request id 0 is reserved for hello")]
    ReservedId,
}

/// Capabilities this build of the agent announces.
pub const AGENT_CAPABILITIES: &[&str] = &["exec", "signal", "files", "shutdown", "flow-control"];

/// Builds the `Hello` this side sends.
pub fn hello(capabilities: &[&str]) -> Hello {
    Hello {
        protocol_version: PROTOCOL_VERSION,
        software_version: AGENT_VERSION.to_string(),
        capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
    }
}
