//! Property tests: every message round-trips through the frame codec, and the
//! decoder never panics (nor over-allocates) on arbitrary or mutated input.

use hearth_agent::proto::{
    DecodeError, ErrorCode, ExecSpec, ExitInfo, ExitStatus, Hello, MAX_FRAME_PAYLOAD, Message,
    OutputStream, Program, encode_frame, parse_frame,
};
use proptest::prelude::*;

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

fn id() -> impl Strategy<Value = u32> {
    1..=u32::MAX
}

fn exec_spec() -> impl Strategy<Value = ExecSpec> {
    let program = prop_oneof![
        proptest::collection::vec(bytes(16), 0..5).prop_map(Program::Argv),
        bytes(64).prop_map(Program::Script),
    ];
    (
        program,
        proptest::collection::vec((bytes(8), bytes(8)), 0..4),
        proptest::option::of(bytes(16)),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<u32>()),
        proptest::option::of(bytes(64)),
        proptest::option::of(any::<u64>()),
        any::<u32>(),
    )
        .prop_map(
            |(program, env, cwd, uid, gid, stdin, timeout_ms, window)| ExecSpec {
                program,
                env,
                cwd,
                uid,
                gid,
                stdin,
                timeout_ms,
                window,
            },
        )
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        Just(ErrorCode::VersionMismatch),
        Just(ErrorCode::BadRequest),
        Just(ErrorCode::UnknownRequest),
        Just(ErrorCode::DuplicateRequest),
        Just(ErrorCode::SpawnFailed),
        Just(ErrorCode::PathEscape),
        Just(ErrorCode::Io),
        Just(ErrorCode::Protocol),
        Just(ErrorCode::Unsupported),
    ]
}

fn exit_info() -> impl Strategy<Value = ExitInfo> {
    let status = prop_oneof![
        any::<i32>().prop_map(ExitStatus::Code),
        any::<i32>().prop_map(ExitStatus::Signal)
    ];
    (
        status,
        any::<u64>(),
        any::<u64>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(status, wall_time_us, peak_rss_kib, timed_out, cancelled)| ExitInfo {
                status,
                wall_time_us,
                peak_rss_kib,
                timed_out,
                cancelled,
            },
        )
}

fn message() -> impl Strategy<Value = Message> {
    let stream = prop_oneof![Just(OutputStream::Stdout), Just(OutputStream::Stderr)];
    prop_oneof![
        (
            any::<u16>(),
            ".{0,12}",
            proptest::collection::vec(".{0,8}", 0..4)
        )
            .prop_map(|(v, s, c)| {
                Message::Hello(Hello {
                    protocol_version: v,
                    software_version: s,
                    capabilities: c,
                })
            }),
        (id(), exec_spec()).prop_map(|(id, spec)| Message::Exec { id, spec }),
        (id(), any::<i32>()).prop_map(|(id, signal)| Message::Signal { id, signal }),
        id().prop_map(|id| Message::Cancel { id }),
        (id(), any::<u32>()).prop_map(|(id, bytes)| Message::Credit { id, bytes }),
        (id(), bytes(32)).prop_map(|(id, dest)| Message::PutFiles { id, dest }),
        (id(), bytes(32), any::<u32>()).prop_map(|(id, path, window)| Message::GetFiles {
            id,
            path,
            window
        }),
        id().prop_map(|id| Message::Ping { id }),
        id().prop_map(|id| Message::Shutdown { id }),
        (id(), bytes(256)).prop_map(|(id, data)| Message::FileChunk { id, data }),
        id().prop_map(|id| Message::FileEnd { id }),
        (id(), any::<u32>()).prop_map(|(id, pid)| Message::Started { id, pid }),
        (id(), stream, bytes(256)).prop_map(|(id, stream, data)| Message::Output {
            id,
            stream,
            data
        }),
        (id(), exit_info()).prop_map(|(id, info)| Message::Exited { id, info }),
        id().prop_map(|id| Message::Done { id }),
        id().prop_map(|id| Message::Pong { id }),
        (any::<u32>(), error_code(), ".{0,40}").prop_map(|(id, code, message)| Message::Error {
            id,
            code,
            message
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_message_round_trips(msg in message()) {
        let frame = encode_frame(&msg);
        let (decoded, used) = parse_frame(&frame).unwrap().unwrap();
        prop_assert_eq!(used, frame.len());
        prop_assert_eq!(decoded, msg);
    }

    #[test]
    fn every_strict_prefix_asks_for_more_bytes(msg in message()) {
        let frame = encode_frame(&msg);
        for cut in 0..frame.len() {
            prop_assert_eq!(parse_frame(&frame[..cut]).unwrap(), None);
        }
    }

    #[test]
    fn two_frames_back_to_back(a in message(), b in message()) {
        let mut buf = encode_frame(&a);
        buf.extend(encode_frame(&b));
        let (first, used) = parse_frame(&buf).unwrap().unwrap();
        prop_assert_eq!(first, a);
        let (second, used2) = parse_frame(&buf[used..]).unwrap().unwrap();
        prop_assert_eq!(second, b);
        prop_assert_eq!(used + used2, buf.len());
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in bytes(512)) {
        let _ = parse_frame(&data);
        let _ = Message::decode(&data);
    }

    #[test]
    fn mutated_frames_never_panic(msg in message(), pos in any::<usize>(), val in any::<u8>()) {
        let mut frame = encode_frame(&msg);
        let i = pos % frame.len();
        frame[i] = val;
        let _ = parse_frame(&frame);
    }
}

#[test]
fn oversized_length_is_rejected_before_the_payload_arrives() {
    let header = ((MAX_FRAME_PAYLOAD + 1) as u32).to_le_bytes();
    assert_eq!(
        parse_frame(&header),
        Err(DecodeError::FrameTooLarge {
            len: MAX_FRAME_PAYLOAD + 1,
            max: MAX_FRAME_PAYLOAD
        })
    );
}

#[test]
fn huge_element_counts_do_not_allocate() {
    // An Exec whose argv count claims 4 billion entries in a 20-byte payload.
    let mut payload = vec![0x10, 1, 0, 0, 0, 0];
    payload.extend_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(Message::decode(&payload), Err(DecodeError::Truncated));
    // A byte string claiming 4 GiB.
    let mut payload = vec![0x21, 1, 0, 0, 0];
    payload.extend_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(Message::decode(&payload), Err(DecodeError::Truncated));
}

#[test]
fn request_id_zero_is_reserved() {
    let frame = encode_frame(&Message::Ping { id: 0 });
    assert_eq!(parse_frame(&frame), Err(DecodeError::ReservedId));
}
