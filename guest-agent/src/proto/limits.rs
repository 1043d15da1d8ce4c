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

/// How many bytes of a `pending`-byte message a sender holding `credit` under a `window`-byte
/// window sends now; `None`: wait for more credit.
///
/// A sender waits until it can send the whole message, or half a window's worth when the
/// message is larger than that, instead of sending whatever the credit allows (silly-window
/// avoidance). Receivers hand credit back per message they consumed, so pieces cut short by a
/// low credit would come back as equally small grants and keep every later piece small: an
/// upload fell from ~19 to ~8 MiB/s in the harness that way, in ~8 KiB messages
/// (BENCHMARKS.md, "vsock throughput"). Once the receiver has consumed everything, the credit
/// is back to the whole window, or to three quarters of it with a receiver that batches its
/// grants by a quarter window (the Rust client for exec output), so waiting for at most half
/// of it cannot deadlock. A `window` of 0 (not known yet) waits for any usable credit.
pub fn piece_to_send(credit: u64, pending: usize, window: u64) -> Option<usize> {
    let cost = u64::from(DATA_MESSAGE_COST);
    let need = data_cost(pending).min(window / 2 + cost).max(cost + 1);
    if credit < need {
        return None;
    }
    let affordable = usize::try_from(credit - cost).unwrap_or(usize::MAX);
    Some(pending.min(affordable))
}

/// Agent version string (the crate version).
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: u64 = 1024 * 1024;

    #[test]
    fn whole_message_when_the_credit_covers_it() {
        assert_eq!(
            piece_to_send(data_cost(MAX_CHUNK), MAX_CHUNK, WINDOW),
            Some(MAX_CHUNK)
        );
        assert_eq!(piece_to_send(WINDOW, 100, WINDOW), Some(100));
        assert_eq!(piece_to_send(data_cost(100), 100, WINDOW), Some(100));
    }

    #[test]
    fn waits_instead_of_sending_a_short_piece() {
        // The old rule sent MAX_CHUNK - 256 bytes here and left a 256-byte tail.
        assert_eq!(
            piece_to_send(data_cost(MAX_CHUNK) - 256, MAX_CHUNK, WINDOW),
            None
        );
        assert_eq!(piece_to_send(u64::from(DATA_MESSAGE_COST), 1, WINDOW), None);
    }

    #[test]
    fn a_small_window_still_moves_in_half_window_pieces() {
        let window = u64::from(MIN_WINDOW);
        assert_eq!(piece_to_send(window / 2 + 63, MAX_CHUNK, window), None);
        let half = usize::try_from(window / 2).unwrap();
        assert_eq!(
            piece_to_send(window / 2 + 64, MAX_CHUNK, window),
            Some(half)
        );
        assert_eq!(
            piece_to_send(window, MAX_CHUNK, window),
            Some(MIN_WINDOW as usize - DATA_MESSAGE_COST as usize)
        );
    }

    #[test]
    fn unknown_window_takes_any_usable_credit() {
        assert_eq!(piece_to_send(0, 10, 0), None);
        assert_eq!(piece_to_send(65, 10, 0), Some(1));
    }

    /// A sender streaming MAX_CHUNK messages to a receiver that grants each message's cost back
    /// once it consumed it (the agent's and the client's CreditReturner), consuming only when
    /// the sender waits: every piece stays a whole chunk.
    #[test]
    fn per_message_grants_keep_pieces_whole() {
        let mut credit = WINDOW;
        let mut in_flight = std::collections::VecDeque::new();
        let mut pieces = Vec::new();
        let mut pending = MAX_CHUNK;
        while pieces.len() < 200 {
            match piece_to_send(credit, pending, WINDOW) {
                Some(n) => {
                    credit -= data_cost(n);
                    in_flight.push_back(n);
                    pieces.push(n);
                    pending -= n;
                    if pending == 0 {
                        pending = MAX_CHUNK;
                    }
                }
                None => {
                    let consumed = in_flight
                        .pop_front()
                        .expect("waiting with nothing in flight");
                    credit += data_cost(consumed);
                }
            }
            assert!(credit <= WINDOW);
        }
        assert!(pieces.iter().all(|&n| n == MAX_CHUNK), "{pieces:?}");
    }
}
