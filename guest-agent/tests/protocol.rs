//! Wire-level robustness: malformed, truncated and oversized frames, version
//! mismatches on both sides, a credit-violating agent, and a client that
//! disconnects mid-exec.

mod common;

use common::{TestAgent, eventually, proc_status_kib, process_exists};
use hearth_agent::client::{Client, ClientError, ExecEvent};
use hearth_agent::proto::{
    self, ErrorCode, ExecSpec, Hello, Message, OutputStream, PROTOCOL_VERSION, encode_frame,
};
use hearth_agent::transport::read_message;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

/// Connects raw, reads the agent's hello, and optionally sends ours.
async fn raw(agent: &TestAgent, send_hello: bool) -> UnixStream {
    let mut s = UnixStream::connect(&agent.socket).await.unwrap();
    match read_message(&mut s).await.unwrap() {
        Some(Message::Hello(h)) => {
            assert_eq!(h.protocol_version, PROTOCOL_VERSION);
            assert!(h.capabilities.iter().any(|c| c == "exec"));
        }
        other => panic!("expected hello, got {other:?}"),
    }
    if send_hello {
        s.write_all(&encode_frame(&Message::Hello(proto::hello(&[]))))
            .await
            .unwrap();
    }
    s
}

/// Expects a connection-level error frame and then the end of the stream.
async fn expect_error_then_close(s: &mut UnixStream, code: ErrorCode, text: &str) {
    match read_message(s).await.unwrap() {
        Some(Message::Error {
            id: 0,
            code: c,
            message,
        }) => {
            assert_eq!(c, code, "{message}");
            assert!(
                message.contains(text),
                "{message:?} should mention {text:?}"
            );
        }
        other => panic!("expected error frame, got {other:?}"),
    }
    // A clean EOF, or a reset when the agent closed with our bytes unread.
    match read_message(s).await {
        Ok(None) => {}
        Err(hearth_agent::transport::TransportError::Io(e))
            if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("connection should close, got {other:?}"),
    }
}

async fn agent_still_serves(agent: &TestAgent) {
    let client = agent.client().await;
    client.ping().await.unwrap();
    let out = client.exec_collect(ExecSpec::argv(["true"])).await.unwrap();
    assert_eq!(out.info.status, proto::ExitStatus::Code(0));
}

#[tokio::test]
async fn malformed_frame_gets_error_and_close() {
    let agent = TestAgent::start();
    let mut s = raw(&agent, true).await;
    // valid length, unknown message kind 0xee
    s.write_all(&[5, 0, 0, 0, 0xee, 1, 0, 0, 0]).await.unwrap();
    expect_error_then_close(&mut s, ErrorCode::Protocol, "unknown message kind").await;
    let mut s = raw(&agent, true).await;
    // a Ping with trailing junk
    s.write_all(&[7, 0, 0, 0, 0x30, 1, 0, 0, 0, 9, 9])
        .await
        .unwrap();
    expect_error_then_close(&mut s, ErrorCode::Protocol, "unexpected bytes").await;
    agent_still_serves(&agent).await;
}

#[tokio::test]
async fn garbage_instead_of_hello() {
    let agent = TestAgent::start();
    let mut s = raw(&agent, false).await;
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    expect_error_then_close(&mut s, ErrorCode::Protocol, "exceeds the limit").await;
    agent_still_serves(&agent).await;
}

#[tokio::test]
async fn oversized_frame_is_refused_without_allocating() {
    let agent = TestAgent::start();
    let before = proc_status_kib(agent.pid(), "VmHWM");
    let mut s = raw(&agent, true).await;
    s.write_all(&0x7fff_ffffu32.to_le_bytes()).await.unwrap();
    expect_error_then_close(&mut s, ErrorCode::Protocol, "exceeds the limit").await;
    let after = proc_status_kib(agent.pid(), "VmHWM");
    assert!(
        after - before < 16 * 1024,
        "agent peak RSS grew {before} -> {after} KiB"
    );
    agent_still_serves(&agent).await;
}

#[tokio::test]
async fn truncated_frame_then_eof() {
    let agent = TestAgent::start();
    let mut s = raw(&agent, true).await;
    s.write_all(&[100, 0, 0, 0, 0x30, 1, 0]).await.unwrap();
    s.shutdown().await.unwrap();
    expect_error_then_close(&mut s, ErrorCode::Protocol, "middle of a frame").await;
    agent_still_serves(&agent).await;
}

#[tokio::test]
async fn agent_refuses_other_protocol_version() {
    let agent = TestAgent::start();
    let mut s = raw(&agent, false).await;
    let hello = Hello {
        protocol_version: 99,
        software_version: "future".into(),
        capabilities: vec![],
    };
    s.write_all(&encode_frame(&Message::Hello(hello)))
        .await
        .unwrap();
    expect_error_then_close(&mut s, ErrorCode::VersionMismatch, "client speaks 99").await;
}

/// A fake agent on a socket pair: sends `hello`, then runs `script` on the stream.
async fn fake_agent<F, Fut>(hello: Hello, script: F) -> UnixStream
where
    F: FnOnce(UnixStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    tokio::spawn(async move {
        theirs
            .write_all(&encode_frame(&Message::Hello(hello)))
            .await
            .unwrap();
        match read_message(&mut theirs).await.unwrap() {
            Some(Message::Hello(_)) => {}
            other => panic!("client sent {other:?}"),
        }
        script(theirs).await;
    });
    ours
}

#[tokio::test]
async fn client_refuses_other_protocol_version() {
    let hello = Hello {
        protocol_version: 7,
        software_version: "x".into(),
        capabilities: vec![],
    };
    let stream = fake_agent(hello, |_s| async {}).await;
    match Client::handshake(stream).await {
        Err(ClientError::VersionMismatch { agent: 7, client }) => {
            assert_eq!(client, PROTOCOL_VERSION)
        }
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("handshake with a version-7 agent succeeded"),
    }
}

/// Runs one exec against a fake agent that answers with `flood(id, window)`,
/// and returns the error the client reports.
async fn flooded_exec(flood: fn(u32, u32) -> Vec<Message>) -> ClientError {
    let stream = fake_agent(
        proto::hello(proto::AGENT_CAPABILITIES),
        move |mut s| async move {
            let Some(Message::Exec { id, spec }) = read_message(&mut s).await.unwrap() else {
                panic!("no exec")
            };
            for m in flood(id, spec.window) {
                if s.write_all(&encode_frame(&m)).await.is_err() {
                    return;
                }
            }
            // keep the connection open until the client cancels or goes away
            loop {
                match read_message(&mut s).await {
                    Ok(Some(Message::Cancel { .. })) | Ok(None) | Err(_) => break,
                    Ok(Some(_)) => {}
                }
            }
        },
    )
    .await;
    let client = Client::handshake(stream).await.unwrap();
    let mut spec = ExecSpec::argv(["x"]);
    spec.window = 4096;
    let mut exec = client.exec(spec).await.unwrap();
    // Let the flood arrive before consuming anything.
    tokio::time::sleep(Duration::from_millis(200)).await;
    loop {
        match exec.next().await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("exec ended without an error"),
            Err(e) => return e,
        }
    }
}

fn assert_protocol_error(e: ClientError, text: &str) {
    match e {
        ClientError::Agent {
            code: ErrorCode::Protocol,
            message,
        } => assert!(message.contains(text), "{message}"),
        other => panic!("expected a protocol violation, got {other:?}"),
    }
}

#[tokio::test]
async fn client_stops_an_agent_that_ignores_credit() {
    // one chunk bigger than the window
    let e = flooded_exec(|id, window| {
        let data = vec![b'x'; window as usize + 1];
        vec![Message::Output {
            id,
            stream: OutputStream::Stdout,
            data,
        }]
    })
    .await;
    assert_protocol_error(e, "credit");
    // many tiny chunks: each also costs the per-message overhead
    let e = flooded_exec(|id, window| {
        (0..window)
            .map(|_| Message::Output {
                id,
                stream: OutputStream::Stdout,
                data: vec![b'y'],
            })
            .collect()
    })
    .await;
    assert_protocol_error(e, "credit");
}

#[tokio::test]
async fn client_stops_an_agent_that_floods_control_messages() {
    let e =
        flooded_exec(|id, _| (0..5000).map(|_| Message::Started { id, pid: 1 }).collect()).await;
    assert_protocol_error(e, "flooded");
}

#[tokio::test]
async fn disconnect_mid_exec_kills_the_process_group() {
    let agent = TestAgent::start();
    let client = agent.client().await;
    let mut stream = client
        .exec(ExecSpec::script("sleep 1000 & echo $!; wait"))
        .await
        .unwrap();
    let mut pids = Vec::new();
    while pids.len() < 2 {
        match stream.next().await.unwrap().unwrap() {
            ExecEvent::Started { pid } => pids.push(pid),
            ExecEvent::Output { data, .. } => {
                pids.push(String::from_utf8(data).unwrap().trim().parse().unwrap())
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(pids.iter().all(|p| process_exists(*p)));
    drop(stream);
    drop(client);
    for pid in pids {
        assert!(
            eventually(Duration::from_secs(5), || !process_exists(pid)).await,
            "process {pid} survived the client's disconnect"
        );
    }
    agent_still_serves(&agent).await;
}

#[tokio::test]
async fn ping_and_shutdown_end_the_host_agent() {
    let mut agent = TestAgent::start();
    let client = agent.client().await;
    client.ping().await.unwrap();
    assert!(
        client
            .agent_hello()
            .capabilities
            .iter()
            .any(|c| c == "files")
    );
    client.shutdown().await.unwrap();
    let exited = eventually(Duration::from_secs(5), || !agent.alive()).await;
    assert!(exited, "agent still running after shutdown");
    assert_eq!(agent.child.wait().unwrap().code(), Some(0));
}

#[tokio::test]
async fn requests_for_unknown_ids_get_error_frames() {
    let agent = TestAgent::start();
    let mut s = raw(&agent, true).await;
    for msg in [
        Message::Signal { id: 77, signal: 15 },
        Message::Cancel { id: 78 },
        Message::FileChunk {
            id: 79,
            data: vec![1, 2, 3],
        },
        Message::Started { id: 80, pid: 1 },
    ] {
        let id = msg.id();
        s.write_all(&encode_frame(&msg)).await.unwrap();
        match read_message(&mut s).await.unwrap() {
            Some(Message::Error { id: got, code, .. }) => {
                assert_eq!(got, id);
                assert!(
                    matches!(code, ErrorCode::UnknownRequest | ErrorCode::Protocol),
                    "{code:?}"
                );
            }
            other => panic!("expected an error frame for {id}, got {other:?}"),
        }
    }
    // credits for finished requests are silently dropped; the connection lives on
    s.write_all(&encode_frame(&Message::Credit { id: 81, bytes: 5 }))
        .await
        .unwrap();
    s.write_all(&encode_frame(&Message::Ping { id: 82 }))
        .await
        .unwrap();
    assert_eq!(
        read_message(&mut s).await.unwrap(),
        Some(Message::Pong { id: 82 })
    );
}
