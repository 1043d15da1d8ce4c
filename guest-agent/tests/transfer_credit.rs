//! File transfers whose extractor stops before the end of the stream (an error, or bytes after
//! the tar end-of-archive marker) must still end: the sender may be waiting for credit that only
//! the receiver can return. Each of these hung forever before the credit for unread chunks was
//! handed back.

mod common;

use common::{RawTar, TestAgent};
use hearth_agent::client::ClientError;
use hearth_agent::proto::ErrorCode;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

/// A download whose local extraction fails at the first entry while the agent has already sent
/// its whole window (the failure used to be noticed only when the next chunk arrived, and the
/// agent, out of credit, never sent one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_failing_locally_ends_with_the_error() {
    let agent = TestAgent::start();
    let client = agent.client().await;
    let remote = agent.dir.path().join("guest");
    std::fs::create_dir_all(&remote).unwrap();
    // Several windows (1 MiB each) of data in one file.
    std::fs::write(remote.join("big.bin"), vec![7u8; 6 << 20]).unwrap();
    let local = tempfile::tempdir().unwrap();
    // A directory where the archive has the file: extraction refuses the first entry.
    std::fs::create_dir(local.path().join("big.bin")).unwrap();
    for round in 0..5 {
        let r = tokio::time::timeout(
            LIMIT,
            client.get_files(remote.join("big.bin").to_str().unwrap(), local.path()),
        )
        .await
        .unwrap_or_else(|_| panic!("round {round}: download hung after the extractor failed"));
        match r {
            Err(ClientError::Archive(e)) => {
                assert!(e.to_string().contains("directory exists"), "{e}")
            }
            other => panic!("round {round}: expected the extraction error, got {other:?}"),
        }
    }
    // The connection is still usable and the agent dropped the transfer.
    tokio::time::timeout(LIMIT, client.ping())
        .await
        .expect("ping hung")
        .unwrap();
}

/// An upload with megabytes after the end-of-archive marker (an extractor stops reading there):
/// the agent must keep granting credit until the client's FileEnd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_with_trailing_bytes_after_the_archive_completes() {
    let agent = TestAgent::start();
    let client = agent.client().await;
    let dest = agent.dir.path().join("up");
    let mut tar = RawTar::default().file("a.txt", b"alpha\n").finish();
    tar.extend(std::iter::repeat_n(0u8, 5 << 20));
    tokio::time::timeout(
        LIMIT,
        client.put_tar(std::io::Cursor::new(tar), dest.to_str().unwrap()),
    )
    .await
    .expect("upload hung: credit for chunks after the end-of-archive marker never came back")
    .unwrap();
    assert_eq!(std::fs::read(dest.join("a.txt")).unwrap(), b"alpha\n");
}

/// An upload the agent refuses at the first entry while the client still has megabytes to
/// send: the client gets the refusal, the agent keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upload_with_more_data_ends_with_the_error() {
    let agent = TestAgent::start();
    let client = agent.client().await;
    let dest = agent.dir.path().join("up2");
    let big = vec![1u8; 6 << 20];
    let tar = RawTar::default()
        .file("../escape", b"x")
        .file("big.bin", &big)
        .finish();
    let r = tokio::time::timeout(
        LIMIT,
        client.put_tar(std::io::Cursor::new(tar), dest.to_str().unwrap()),
    )
    .await
    .expect("refused upload hung");
    match r {
        Err(ClientError::Agent {
            code: ErrorCode::PathEscape,
            ..
        }) => {}
        other => panic!("expected PathEscape, got {other:?}"),
    }
    tokio::time::timeout(LIMIT, client.ping())
        .await
        .expect("ping hung")
        .unwrap();
}
