//! The set of running jobs by record id (`"<id>"` or `"<id>-<queue>"`), each with a cancel
//! signal that heartbeats (`cancelIds`) and the runtime deadline trip.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Why a job was asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    /// The frontend listed it in `cancelIds` (→ markFailed; the frontend stores `canceled`).
    Canceled,
    /// `EXECUTOR_MAXIMUM_RUNTIME_PER_JOB` elapsed (→ markErrored).
    Timeout,
}

/// A job's stop request; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct CancelSignal {
    reason: Arc<AtomicU8>,
    notify: Arc<Notify>,
}

impl CancelSignal {
    /// Requests a stop (the first reason wins).
    pub fn trip(&self, reason: CancelReason) {
        let code = match reason {
            CancelReason::Canceled => 1,
            CancelReason::Timeout => 2,
        };
        if self
            .reason
            .compare_exchange(0, code, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            self.notify.notify_waiters();
        }
    }

    /// The stop reason, if any.
    pub fn reason(&self) -> Option<CancelReason> {
        match self.reason.load(Ordering::SeqCst) {
            1 => Some(CancelReason::Canceled),
            2 => Some(CancelReason::Timeout),
            _ => None,
        }
    }

    /// Resolves once a stop is requested.
    pub async fn tripped(&self) -> CancelReason {
        loop {
            let notified = self.notify.notified();
            if let Some(r) = self.reason() {
                return r;
            }
            notified.await;
        }
    }
}

/// Running jobs; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct RunningJobs {
    inner: Arc<Mutex<BTreeMap<String, CancelSignal>>>,
}

impl RunningJobs {
    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<String, CancelSignal>) -> R) -> R {
        let mut g = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut g)
    }

    /// Registers a job and returns its signal.
    pub fn add(&self, uid: &str) -> CancelSignal {
        let signal = CancelSignal::default();
        self.with(|m| m.insert(uid.to_string(), signal.clone()));
        signal
    }

    pub fn remove(&self, uid: &str) {
        self.with(|m| m.remove(uid));
    }

    /// Record ids to report in the next heartbeat.
    pub fn ids(&self) -> Vec<String> {
        self.with(|m| m.keys().cloned().collect())
    }

    /// Trips a job's signal; false when it is not running here.
    pub fn cancel(&self, uid: &str) -> bool {
        match self.with(|m| m.get(uid).cloned()) {
            Some(s) => {
                s.trip(CancelReason::Canceled);
                true
            }
            None => false,
        }
    }

    pub fn len(&self) -> usize {
        self.with(|m| m.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cancel_trips_once() {
        let r = RunningJobs::default();
        let s = r.add("1-batches");
        assert_eq!(r.ids(), vec!["1-batches"]);
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.tripped().await }
        });
        assert!(r.cancel("1-batches"));
        assert!(!r.cancel("2-batches"));
        s.trip(CancelReason::Timeout);
        assert_eq!(waiter.await.unwrap(), CancelReason::Canceled);
        assert_eq!(s.reason(), Some(CancelReason::Canceled));
        r.remove("1-batches");
        assert!(r.is_empty());
    }
}
