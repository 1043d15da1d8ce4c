//! Framing: a 4-byte little-endian payload length, then the payload.

use super::limits::{FRAME_HEADER_LEN, MAX_FRAME_PAYLOAD};
use super::{DecodeError, Message};

/// Encodes a message as a complete frame (length prefix + payload).
pub fn encode_frame(msg: &Message) -> Vec<u8> {
    let payload = msg.encode();
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Validates a frame header and returns the payload length it announces.
pub fn payload_len(header: [u8; FRAME_HEADER_LEN]) -> Result<usize, DecodeError> {
    let len = u32::from_le_bytes(header) as usize;
    if len > MAX_FRAME_PAYLOAD {
        return Err(DecodeError::FrameTooLarge {
            len,
            max: MAX_FRAME_PAYLOAD,
        });
    }
    if len < 5 {
        return Err(DecodeError::Truncated);
    }
    Ok(len)
}

/// Parses the first frame in `buf`. Returns `Ok(None)` when more bytes are
/// needed, or the message and the number of bytes it used.
pub fn parse_frame(buf: &[u8]) -> Result<Option<(Message, usize)>, DecodeError> {
    let Some(header) = buf.first_chunk::<FRAME_HEADER_LEN>() else {
        return Ok(None);
    };
    let len = payload_len(*header)?;
    let Some(payload) = buf.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + len) else {
        return Ok(None);
    };
    let msg = Message::decode(payload)?;
    Ok(Some((msg, FRAME_HEADER_LEN + len)))
}
