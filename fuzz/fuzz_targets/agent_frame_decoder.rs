//! Feeds arbitrary bytes to the guest-protocol frame decoder and message
//! parser. Properties: never panics; a frame is never larger than the limit;
//! whatever decodes re-encodes to something that decodes to the same message.
#![no_main]

use hearth_agent::proto::{FRAME_HEADER_LEN, MAX_FRAME_PAYLOAD, Message, encode_frame, parse_frame};
use libfuzzer_sys::fuzz_target;

fn check_round_trip(msg: &Message) {
    let frame = encode_frame(msg);
    match parse_frame(&frame) {
        Ok(Some((again, used))) => {
            assert_eq!(&again, msg, "re-encoded message decodes differently");
            assert_eq!(used, frame.len());
        }
        other => panic!("re-encoded message does not decode: {other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    // As a stream of frames.
    let mut rest = data;
    while let Ok(Some((msg, used))) = parse_frame(rest) {
        assert!(used >= FRAME_HEADER_LEN && used <= FRAME_HEADER_LEN + MAX_FRAME_PAYLOAD);
        check_round_trip(&msg);
        rest = &rest[used..];
    }
    // As one bare payload.
    if let Ok(msg) = Message::decode(data) {
        check_round_trip(&msg);
    }
});
