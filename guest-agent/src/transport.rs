//! Async frame reading/writing over any byte stream, enforcing the frame limit.

use crate::proto::{DecodeError, FRAME_HEADER_LEN, Message, encode_frame, payload_len};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Errors reading or writing frames.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("i/o error on the connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid frame from peer: {0}")]
    Decode(#[from] DecodeError),
    #[error("connection closed in the middle of a frame")]
    TruncatedFrame,
}

/// Reads the next message; `Ok(None)` on a clean end of stream between frames.
/// Allocates at most the frame limit, and only after the header was validated.
pub async fn read_message<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<Message>, TransportError> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    let mut got = 0;
    while got < header.len() {
        let n = r.read(&mut header[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(TransportError::TruncatedFrame)
            };
        }
        got += n;
    }
    let len = payload_len(header)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            TransportError::TruncatedFrame
        } else {
            TransportError::Io(e)
        }
    })?;
    Ok(Some(Message::decode(&payload)?))
}

/// Writes one message as a frame (not flushed).
pub async fn write_message<W: AsyncWrite + Unpin>(
    w: &mut W,
    msg: &Message,
) -> Result<(), TransportError> {
    w.write_all(&encode_frame(msg)).await?;
    Ok(())
}
