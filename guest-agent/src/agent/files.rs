//! File transfer requests: PutFiles extracts an uploaded tar stream under a
//! destination (with credit-based flow control), GetFiles streams a tree out
//! as tar under the client's credit window.

use crate::archive::{ArchiveError, ChunkReader, ChunkWriter, extract_tar, pack_tree};
use crate::outbox::Outbox;
use crate::proto::{
    ErrorCode, MIN_WINDOW, Message, PUT_WINDOW, RequestId, data_cost, piece_to_send,
};
use crate::transfer_credit::CreditReturner;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use tokio::sync::mpsc;

/// Control messages the connection forwards to a running file transfer.
#[derive(Debug)]
pub enum FileControl {
    Chunk(Vec<u8>),
    End,
    Credit(u32),
    Cancel,
}

fn archive_error(id: RequestId, e: &ArchiveError) -> Message {
    let code = match e {
        ArchiveError::PathEscape { .. } | ArchiveError::UnsafeTarget { .. } => {
            ErrorCode::PathEscape
        }
        _ => ErrorCode::Io,
    };
    Message::Error {
        id,
        code,
        message: e.to_string(),
    }
}

/// Bytes the client may still send for an upload; the connection charges each
/// incoming chunk against it and refuses chunks beyond it.
pub type UploadCredit = Arc<AtomicI64>;

pub fn new_upload_credit() -> UploadCredit {
    Arc::new(AtomicI64::new(0))
}

/// Receives an upload and extracts it under `dest`.
pub async fn run_put(
    id: RequestId,
    dest: Vec<u8>,
    credit: UploadCredit,
    mut ctl: mpsc::UnboundedReceiver<FileControl>,
    out: Outbox,
) {
    let dest = PathBuf::from(OsStr::from_bytes(&dest));
    if !dest.is_absolute() {
        let message = format!("destination {dest:?} must be an absolute path");
        out.send(Message::Error {
            id,
            code: ErrorCode::BadRequest,
            message,
        })
        .await;
        return;
    }
    let (tx, rx) = mpsc::channel::<Vec<u8>>(64);
    // The connection charges each chunk against `credit`; it goes back as the extractor consumes
    // the chunks, and all at once for chunks it will never read (it stopped early).
    let returner = CreditReturner::new(id, Arc::clone(&credit), out.clone());
    let consumed = returner.clone();
    let on_consumed = Box::new(move |n: usize| consumed.consumed_blocking(n));
    let mut extraction =
        tokio::task::spawn_blocking(move || extract_tar(ChunkReader::new(rx, on_consumed), &dest));
    credit.fetch_add(i64::from(PUT_WINDOW), Ordering::SeqCst);
    if !out
        .send(Message::Credit {
            id,
            bytes: PUT_WINDOW,
        })
        .await
    {
        return;
    }
    let mut tx = Some(tx);
    let (mut ended, mut cancelled, mut reported) = (false, false, false);
    let mut result = None;
    loop {
        if ended && result.is_some() {
            break;
        }
        tokio::select! {
            r = &mut extraction, if result.is_none() => {
                tx = None;
                returner.return_unconsumed().await;
                let r = r.unwrap_or_else(|e| Err(ArchiveError::Tar(std::io::Error::other(e))));
                if let Err(e) = &r {
                    if !cancelled {
                        out.send(archive_error(id, e)).await;
                    }
                    reported = true;
                }
                result = Some(r);
            }
            c = ctl.recv(), if !ended => match c {
                Some(FileControl::Chunk(data)) => {
                    returner.forwarded(data.len());
                    let sent = match &tx {
                        Some(t) => t.send(data).await.is_ok(),
                        None => false,
                    };
                    if !sent {
                        // Nobody reads it (the extractor stopped): the client may still be
                        // sending the rest of its stream and needs the credit to get to FileEnd.
                        tx = None;
                        returner.return_unconsumed().await;
                    }
                }
                Some(FileControl::End) => { ended = true; tx = None; }
                Some(FileControl::Credit(_)) => {}
                Some(FileControl::Cancel) | None => { cancelled = true; ended = true; tx = None; }
            },
        }
    }
    drop(tx);
    if cancelled {
        if !reported {
            let message = "upload cancelled".to_string();
            out.send(Message::Error {
                id,
                code: ErrorCode::Io,
                message,
            })
            .await;
        }
        return;
    }
    if let Some(Ok(stats)) = result {
        tracing::debug!(id, ?stats, "upload extracted");
        out.send(Message::Done { id }).await;
    }
}

/// Streams `path` (a file or directory) out as tar.
pub async fn run_get(
    id: RequestId,
    path: Vec<u8>,
    window: u32,
    mut ctl: mpsc::UnboundedReceiver<FileControl>,
    out: Outbox,
) {
    if window < MIN_WINDOW {
        let message = format!("window {window} is below the minimum of {MIN_WINDOW}");
        out.send(Message::Error {
            id,
            code: ErrorCode::BadRequest,
            message,
        })
        .await;
        return;
    }
    let path = PathBuf::from(OsStr::from_bytes(&path));
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(4);
    let packing = tokio::task::spawn_blocking(move || pack_tree(&path, ChunkWriter::new(tx)));
    let mut credit = u64::from(window);
    while let Some(mut chunk) = rx.recv().await {
        while !chunk.is_empty() {
            let n = loop {
                if let Some(n) = piece_to_send(credit, chunk.len(), u64::from(window)) {
                    break n;
                }
                match ctl.recv().await {
                    Some(FileControl::Credit(n)) => credit = credit.saturating_add(u64::from(n)),
                    Some(FileControl::Cancel) | None => return, // dropping rx stops the packer
                    Some(_) => {}
                }
            };
            let rest = chunk.split_off(n);
            credit -= data_cost(n);
            if !out.send(Message::FileChunk { id, data: chunk }).await {
                return;
            }
            chunk = rest;
        }
        // Pick up credits and cancels that arrived meanwhile.
        while let Ok(c) = ctl.try_recv() {
            match c {
                FileControl::Credit(n) => credit = credit.saturating_add(u64::from(n)),
                FileControl::Cancel => return,
                _ => {}
            }
        }
    }
    let result = packing
        .await
        .unwrap_or_else(|e| Err(ArchiveError::Tar(std::io::Error::other(e))));
    match result {
        Ok(()) => out.send(Message::FileEnd { id }).await,
        Err(e) => out.send(archive_error(id, &e)).await,
    };
}
