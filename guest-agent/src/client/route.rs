//! Per-request routing on the client: the channel from the reader task to the
//! request's consumer, with the two limits that keep host memory bounded
//! whatever the agent sends: the data credit window, and a cap on queued
//! non-data messages.

use crate::proto::{ErrorCode, Message, data_cost};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use tokio::sync::mpsc;

/// Most undelivered non-data messages one request may have queued. A
/// well-behaved agent sends a handful (Started, Credit per consumed chunk,
/// the final message); more means it is flooding.
pub const MAX_QUEUED_CONTROL: usize = 1024;

fn is_data(m: &Message) -> bool {
    matches!(m, Message::Output { .. } | Message::FileChunk { .. })
}

/// The reader task's side of a request.
pub struct Route {
    tx: mpsc::UnboundedSender<Message>,
    /// Credit the agent still has (data messages); None when not tracked.
    pub credit: Option<Arc<AtomicI64>>,
    queued_control: Arc<AtomicUsize>,
}

/// The consumer's side of a request.
pub struct RouteRx {
    rx: mpsc::UnboundedReceiver<Message>,
    queued_control: Arc<AtomicUsize>,
}

/// Creates both ends of a request's route.
pub fn route(credit: Option<Arc<AtomicI64>>) -> (Route, RouteRx) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued_control = Arc::new(AtomicUsize::new(0));
    (
        Route {
            tx,
            credit,
            queued_control: Arc::clone(&queued_control),
        },
        RouteRx { rx, queued_control },
    )
}

/// What the reader must do after routing a message.
pub enum Routed {
    Delivered,
    /// The agent broke a limit: the request was failed; cancel it and drop the route.
    Violation(&'static str),
}

impl Route {
    /// Queues `msg` for the consumer unless it breaks a limit, in which case
    /// the consumer gets a Protocol error instead.
    pub fn deliver(&self, msg: Message) -> Routed {
        let id = msg.id();
        let violation = match &msg {
            Message::Output { data, .. } | Message::FileChunk { data, .. } => match &self.credit {
                Some(credit) => {
                    let cost = i64::try_from(data_cost(data.len())).unwrap_or(i64::MAX);
                    (credit.fetch_sub(cost, Ordering::SeqCst) < cost)
                        .then_some("agent sent more data than the credit window allows")
                }
                None => Some("agent sent data for a request that takes none"),
            },
            _ => (self.queued_control.fetch_add(1, Ordering::SeqCst) >= MAX_QUEUED_CONTROL)
                .then_some("agent flooded a request with control messages"),
        };
        match violation {
            None => {
                let _ = self.tx.send(msg);
                Routed::Delivered
            }
            Some(reason) => {
                let error = Message::Error {
                    id,
                    code: ErrorCode::Protocol,
                    message: reason.to_string(),
                };
                let _ = self.tx.send(error);
                Routed::Violation(reason)
            }
        }
    }
}

impl RouteRx {
    fn account(&self, m: &Message) {
        if !is_data(m) {
            self.queued_control.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// The next message; None when the connection is gone.
    pub async fn recv(&mut self) -> Option<Message> {
        let m = self.rx.recv().await?;
        self.account(&m);
        Some(m)
    }

    /// The next message if one is queued.
    pub fn try_recv(&mut self) -> Option<Message> {
        let m = self.rx.try_recv().ok()?;
        self.account(&m);
        Some(m)
    }
}
