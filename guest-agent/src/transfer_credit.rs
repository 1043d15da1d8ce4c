//! Credit for a tar stream fed to a blocking extractor (agent uploads, client downloads): each
//! chunk's full cost goes back to the sender once the extractor consumed it, and the cost of
//! chunks it will never consume (it stopped early: an error, or bytes after the end-of-archive
//! marker) once it stopped. Without the second part the sender could wait for credit while the
//! receiver waits for the sender's next message.

use crate::outbox::Outbox;
use crate::proto::{Message, RequestId, data_cost};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// Hands credit back for one transfer. Cheap to clone (the extraction thread holds a clone).
#[derive(Clone)]
pub struct CreditReturner {
    id: RequestId,
    credit: Arc<AtomicI64>,
    out: Outbox,
    /// Cost of chunks handed to the extractor and not credited yet.
    unconsumed: Arc<AtomicI64>,
}

impl CreditReturner {
    /// `credit`: our own record of the sender's credit (the client's route limit), raised with
    /// every grant; `out`: where the Credit messages go.
    pub fn new(id: RequestId, credit: Arc<AtomicI64>, out: Outbox) -> Self {
        CreditReturner {
            id,
            credit,
            out,
            unconsumed: Arc::new(AtomicI64::new(0)),
        }
    }

    fn cost(n: usize) -> i64 {
        i64::try_from(data_cost(n)).unwrap_or(i64::MAX)
    }

    /// A chunk of `n` data bytes was handed to the extractor (or dropped: then call
    /// [`CreditReturner::return_unconsumed`]).
    pub fn forwarded(&self, n: usize) {
        self.unconsumed.fetch_add(Self::cost(n), Ordering::SeqCst);
    }

    /// Takes the cost of one consumed chunk off the unconsumed total; the cost to grant.
    fn take(&self, n: usize) -> Option<u32> {
        let cost = Self::cost(n);
        // Never grant more than was forwarded (return_unconsumed may have granted it already).
        let mut cur = self.unconsumed.load(Ordering::SeqCst);
        loop {
            let grant = cost.min(cur);
            if grant <= 0 {
                return None;
            }
            match self.unconsumed.compare_exchange(
                cur,
                cur - grant,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return u32::try_from(grant).ok(),
                Err(now) => cur = now,
            }
        }
    }

    fn grant_message(&self, bytes: u32) -> Message {
        self.credit.fetch_add(i64::from(bytes), Ordering::SeqCst);
        Message::Credit { id: self.id, bytes }
    }

    /// From the extraction thread: a chunk was consumed.
    pub fn consumed_blocking(&self, n: usize) {
        if let Some(bytes) = self.take(n) {
            self.out.blocking_send(self.grant_message(bytes));
        }
    }

    /// The extractor stopped: grant everything it was given and did not consume.
    pub async fn return_unconsumed(&self) {
        let rest = self.unconsumed.swap(0, Ordering::SeqCst);
        if let Ok(bytes) = u32::try_from(rest)
            && bytes > 0
        {
            self.out.send(self.grant_message(bytes)).await;
        }
    }
}
