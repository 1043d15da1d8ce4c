//! The single writer of a connection: every task queues messages here and one
//! task writes them to the stream, flushing when the queue runs dry.

use crate::proto::Message;
use crate::transport::{TransportError, write_message};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

enum Outgoing {
    Msg(Message),
    /// Flush everything queued before, then acknowledge.
    Flush(oneshot::Sender<()>),
}

/// A cloneable handle for queueing outgoing messages.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Outgoing>,
}

impl Outbox {
    /// Creates the outbox and the writer future that drains it into `w`.
    pub fn new<W: AsyncWrite + Unpin + Send + 'static>(
        mut w: W,
    ) -> (
        Outbox,
        impl std::future::Future<Output = Result<(), TransportError>>,
    ) {
        let (tx, mut rx) = mpsc::channel::<Outgoing>(64);
        let writer = async move {
            while let Some(item) = rx.recv().await {
                match item {
                    Outgoing::Msg(m) => write_message(&mut w, &m).await?,
                    Outgoing::Flush(ack) => {
                        w.flush().await?;
                        let _ = ack.send(());
                    }
                }
                if rx.is_empty() {
                    w.flush().await?;
                }
            }
            w.flush().await?;
            let _ = w.shutdown().await;
            Ok(())
        };
        (Outbox { tx }, writer)
    }

    /// Queues a message; false when the connection is gone.
    pub async fn send(&self, m: Message) -> bool {
        self.tx.send(Outgoing::Msg(m)).await.is_ok()
    }

    /// Queues a message from a blocking thread.
    pub fn blocking_send(&self, m: Message) -> bool {
        self.tx.blocking_send(Outgoing::Msg(m)).is_ok()
    }

    /// Queues a message and waits until it has been written and flushed.
    pub async fn send_flushed(&self, m: Message) -> bool {
        if !self.send(m).await {
            return false;
        }
        let (ack, done) = oneshot::channel();
        if self.tx.send(Outgoing::Flush(ack)).await.is_err() {
            return false;
        }
        done.await.is_ok()
    }
}
