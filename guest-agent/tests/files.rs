//! File transfer through a real agent: round trips, hostile uploads, errors,
//! and file transfer sharing a connection with execs and a cancel.

mod common;

use common::{RawTar, TestAgent, tree_listing};
use hearth_agent::client::ClientError;
use hearth_agent::proto::{ErrorCode, ExecSpec, ExitStatus};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn make_tree(p: &Path) {
    std::fs::create_dir_all(p.join("src/nested")).unwrap();
    std::fs::write(
        p.join("src/nested/data.bin"),
        (0..=255u8).cycle().take(300_000).collect::<Vec<_>>(),
    )
    .unwrap();
    std::fs::write(p.join("run.sh"), b"#!/bin/sh\necho ran\n").unwrap();
    std::fs::set_permissions(p.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(p.join("private"), b"secret").unwrap();
    std::fs::set_permissions(p.join("private"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink("src/nested/data.bin", p.join("link")).unwrap();
    std::fs::write(p.join("empty"), b"").unwrap();
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

#[tokio::test]
async fn tree_round_trip_keeps_bytes_modes_and_symlinks() {
    let agent = TestAgent::start();
    let client = agent.client().await;
    let local = tempfile::tempdir().unwrap();
    make_tree(local.path());
    let guest_dir = agent.dir.path().join("guest/work");
    client
        .put_files(local.path(), guest_dir.to_str().unwrap())
        .await
        .unwrap();
    // the "guest" side (same machine here) has the tree, and a command can use it
    let mut spec = ExecSpec::argv(["./run.sh"]);
    spec.cwd = Some(guest_dir.to_str().unwrap().as_bytes().to_vec());
    let out = client.exec_collect(spec).await.unwrap();
    assert_eq!(out.stdout, b"ran\n");
    let back = tempfile::tempdir().unwrap();
    let stats = client
        .get_files(guest_dir.to_str().unwrap(), back.path())
        .await
        .unwrap();
    assert_eq!(stats.files, 4);
    assert_eq!(stats.symlinks, 1);
    assert_eq!(tree_listing(back.path()), tree_listing(local.path()));
    for f in ["src/nested/data.bin", "run.sh", "private", "empty"] {
        assert_eq!(
            std::fs::read(back.path().join(f)).unwrap(),
            std::fs::read(local.path().join(f)).unwrap(),
            "{f}"
        );
        assert_eq!(
            mode(&back.path().join(f)),
            mode(&local.path().join(f)),
            "{f}"
        );
    }
    assert_eq!(
        std::fs::read_link(back.path().join("link"))
            .unwrap()
            .to_str(),
        Some("src/nested/data.bin")
    );
}

#[tokio::test]
async fn get_single_file() {
    let agent = TestAgent::start();
    let client = agent.client().await;
    let guest_file = agent.dir.path().join("report.txt");
    std::fs::write(&guest_file, b"results\n").unwrap();
    let back = tempfile::tempdir().unwrap();
    client
        .get_files(guest_file.to_str().unwrap(), back.path())
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(back.path().join("report.txt")).unwrap(),
        b"results\n"
    );
}

#[tokio::test]
async fn hostile_uploads_are_refused_and_touch_nothing_outside() {
    let agent = TestAgent::start();
    let client = agent.client().await;
    let root = tempfile::tempdir().unwrap();
    let dest = root.path().join("dest");
    let outside = root.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"untouched").unwrap();
    let abs = outside.join("abs");
    let hostile = [
        RawTar::default()
            .file("ok.txt", b"fine")
            .file("../outside/secret", b"pwned")
            .finish(),
        RawTar::default()
            .file(abs.to_str().unwrap(), b"pwned")
            .finish(),
        RawTar::default()
            .symlink("l", outside.to_str().unwrap())
            .file("l/secret", b"pwned")
            .finish(),
        RawTar::default()
            .hardlink("h", "../outside/secret")
            .finish(),
    ];
    for tar in hostile {
        match client
            .put_tar(std::io::Cursor::new(tar), dest.to_str().unwrap())
            .await
        {
            Err(ClientError::Agent {
                code: ErrorCode::PathEscape,
                message,
            }) => {
                assert!(
                    message.contains("escapes") || message.contains("refusing"),
                    "{message}"
                )
            }
            other => panic!("hostile upload not refused: {other:?}"),
        }
        assert_eq!(tree_listing(&outside), vec!["secret".to_string()]);
        assert_eq!(std::fs::read(outside.join("secret")).unwrap(), b"untouched");
    }
    // the connection is still usable after the refusals
    client.ping().await.unwrap();
}

#[tokio::test]
async fn transfer_errors_are_reported() {
    let agent = TestAgent::start();
    let client = agent.client().await;
    let back = tempfile::tempdir().unwrap();
    let err = client
        .get_files("/no/such/path/here", back.path())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Agent {
                code: ErrorCode::Io,
                ..
            }
        ),
        "{err:?}"
    );
    let local = tempfile::tempdir().unwrap();
    let err = client
        .put_files(local.path(), "relative/dest")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Agent {
                code: ErrorCode::BadRequest,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn execs_transfer_and_cancel_share_one_connection() {
    let agent = TestAgent::start();
    let client = agent.client().await;
    let local = tempfile::tempdir().unwrap();
    std::fs::write(local.path().join("big"), vec![7u8; 8 * 1024 * 1024]).unwrap();
    let dest = agent.dir.path().join("shared");
    let doomed = client.exec(ExecSpec::script("sleep 100")).await.unwrap();
    let c1 = client.clone();
    let exec1 = tokio::spawn(async move {
        c1.exec_collect(ExecSpec::script("head -c 3000000 /dev/zero"))
            .await
    });
    let c2 = client.clone();
    let exec2 = tokio::spawn(async move {
        c2.exec_collect(ExecSpec::script("sleep 0.2; echo two"))
            .await
    });
    let c3 = client.clone();
    let d = dest.clone();
    let put = tokio::spawn(async move { c3.put_files(local.path(), d.to_str().unwrap()).await });
    doomed.cancel().await.unwrap();
    let cancelled = doomed.collect().await.unwrap();
    assert!(cancelled.info.cancelled);
    let e1 = exec1.await.unwrap().unwrap();
    assert_eq!(e1.stdout.len(), 3_000_000);
    assert_eq!(exec2.await.unwrap().unwrap().stdout, b"two\n");
    put.await.unwrap().unwrap();
    assert_eq!(
        std::fs::read(dest.join("big")).unwrap().len(),
        8 * 1024 * 1024
    );
    assert_eq!(cancelled.info.status, ExitStatus::Signal(libc::SIGKILL));
}
