//! File transfer from the host side: upload a local tree into the guest and
//! download a guest tree into a local directory, both as streamed tar with
//! credit-based flow control. Downloads are extracted with the same
//! escape-refusing extractor the agent uses: the guest is not trusted.

use super::{Client, ClientError, unexpected};
use crate::archive::{ChunkReader, ChunkWriter, ExtractStats, extract_tar, pack_tree};
use crate::proto::{DEFAULT_WINDOW, Message, RequestId, data_cost, piece_to_send};
use crate::transfer_credit::CreditReturner;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use tokio::sync::mpsc;

/// Unregisters a request when the transfer ends, however it ends.
struct RouteGuard<'a> {
    client: &'a Client,
    id: RequestId,
}

impl Drop for RouteGuard<'_> {
    fn drop(&mut self) {
        self.client.unregister(self.id);
    }
}

impl Client {
    /// Uploads `local` (a directory's contents, or one file) into the guest
    /// directory `dest` (absolute; created if missing).
    pub async fn put_files(&self, local: &Path, dest: &str) -> Result<(), ClientError> {
        let local = local.to_path_buf();
        self.upload(dest, move |w| {
            pack_tree(&local, w).map_err(ClientError::from)
        })
        .await
    }

    /// Uploads an already-built tar stream (read on a blocking thread) into
    /// the guest directory `dest`.
    pub async fn put_tar<R: Read + Send + 'static>(
        &self,
        mut tar: R,
        dest: &str,
    ) -> Result<(), ClientError> {
        self.upload(dest, move |mut w| {
            std::io::copy(&mut tar, &mut w)
                .map(drop)
                .map_err(|e| ClientError::InvalidRequest(format!("reading the tar stream: {e}")))
        })
        .await
    }

    async fn upload<F>(&self, dest: &str, produce: F) -> Result<(), ClientError>
    where
        F: FnOnce(ChunkWriter) -> Result<(), ClientError> + Send + 'static,
    {
        let (id, mut rx) = self.register(None);
        let _guard = RouteGuard { client: self, id };
        self.send(Message::PutFiles {
            id,
            dest: dest.as_bytes().to_vec(),
        })
        .await?;
        let (tx, mut chunks) = mpsc::channel::<Vec<u8>>(4);
        let producing = tokio::task::spawn_blocking(move || produce(ChunkWriter::new(tx)));
        // The agent's first grant is the whole window; credit never exceeds it.
        let (mut credit, mut window): (u64, u64) = (0, 0);
        while let Some(mut chunk) = chunks.recv().await {
            while !chunk.is_empty() {
                let piece = loop {
                    if let Some(n) = piece_to_send(credit, chunk.len(), window) {
                        break n;
                    }
                    match self.recv(&mut rx).await? {
                        Message::Credit { bytes, .. } => {
                            credit += u64::from(bytes);
                            window = window.max(credit);
                        }
                        other => return Err(self.abort(id, other).await),
                    }
                };
                let rest = chunk.split_off(piece);
                credit -= data_cost(piece);
                self.send(Message::FileChunk { id, data: chunk }).await?;
                chunk = rest;
            }
            // Notice an early refusal without waiting for the whole upload.
            while let Some(m) = rx.try_recv() {
                match m {
                    Message::Credit { bytes, .. } => {
                        credit += u64::from(bytes);
                        window = window.max(credit);
                    }
                    other => return Err(self.abort(id, other).await),
                }
            }
        }
        let produced = producing
            .await
            .map_err(|e| ClientError::InvalidRequest(format!("tar producer task failed: {e}")))?;
        if let Err(e) = produced {
            self.send(Message::Cancel { id }).await?;
            return Err(e);
        }
        self.send(Message::FileEnd { id }).await?;
        loop {
            match self.recv(&mut rx).await? {
                Message::Credit { .. } => {}
                Message::Done { .. } => return Ok(()),
                other => return Err(unexpected(other)),
            }
        }
    }

    /// Cancels a transfer after an unexpected message and returns its error.
    async fn abort(&self, id: RequestId, m: Message) -> ClientError {
        let _ = self.send(Message::Cancel { id }).await;
        unexpected(m)
    }

    /// Downloads the guest path `remote` (file or directory) into the local
    /// directory `local_dest`, refusing entries that would escape it.
    pub async fn get_files(
        &self,
        remote: &str,
        local_dest: &Path,
    ) -> Result<ExtractStats, ClientError> {
        let window = DEFAULT_WINDOW;
        let credit = Arc::new(AtomicI64::new(i64::from(window)));
        let (id, mut rx) = self.register(Some(Arc::clone(&credit)));
        let _guard = RouteGuard { client: self, id };
        self.send(Message::GetFiles {
            id,
            path: remote.as_bytes().to_vec(),
            window,
        })
        .await?;
        let (tx, chunks) = mpsc::channel::<Vec<u8>>(64);
        // Credit goes back once the extractor has consumed a chunk, or, for chunks it will never
        // read (it stopped early), once it has stopped: the agent must always be able to reach
        // its FileEnd, or it would wait for credit while we wait for its next message.
        let returner = CreditReturner::new(id, credit, self.inner.out.clone());
        let consumed = returner.clone();
        let on_consumed = Box::new(move |n: usize| consumed.consumed_blocking(n));
        let dest = local_dest.to_path_buf();
        let mut extraction = tokio::task::spawn_blocking(move || {
            extract_tar(ChunkReader::new(chunks, on_consumed), &dest)
        });
        let mut tx = Some(tx);
        let mut extracted = None;
        let failure = loop {
            tokio::select! {
                r = &mut extraction, if extracted.is_none() => {
                    // Finished before the FileEnd: an error, or trailing bytes after the
                    // end-of-archive marker. Either way it reads nothing more.
                    tx = None;
                    let r = r.map_err(|e| {
                        ClientError::InvalidRequest(format!("extraction task failed: {e}"))
                    });
                    returner.return_unconsumed().await;
                    match r {
                        Ok(Ok(stats)) => extracted = Some(Ok(stats)),
                        Ok(Err(e)) => break Some(ClientError::from(e)),
                        Err(e) => break Some(e),
                    }
                }
                m = self.recv(&mut rx) => match m {
                    Ok(Message::FileChunk { data, .. }) => {
                        let n = data.len();
                        returner.forwarded(n);
                        let sent = match &tx {
                            Some(t) => t.send(data).await.is_ok(),
                            None => false,
                        };
                        if !sent {
                            // The extractor is gone (its result is picked up above).
                            tx = None;
                            returner.return_unconsumed().await;
                        }
                    }
                    Ok(Message::FileEnd { .. }) => break None,
                    Ok(other) => break Some(unexpected(other)),
                    Err(e) => break Some(e),
                }
            }
        };
        drop(tx);
        if let Some(f) = failure {
            // Stop the agent's side too (ignored if it already finished).
            if !matches!(
                f,
                ClientError::Agent { .. } | ClientError::ConnectionClosed(_)
            ) {
                let _ = self.send(Message::Cancel { id }).await;
            }
            if extracted.is_none() {
                extraction.abort();
            }
            return Err(f);
        }
        let stats = match extracted {
            Some(r) => r,
            None => extraction
                .await
                .map_err(|e| ClientError::InvalidRequest(format!("extraction task failed: {e}")))?
                .map_err(ClientError::from),
        }?;
        Ok(stats)
    }
}
