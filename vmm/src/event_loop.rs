//! The device event loop: one thread running the event manager until the VM stops or its
//! deadline passes.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};

use crate::VmExit;
use crate::device_manager::Subscriber;
use crate::devices::virtio::IrqTrigger;
use crate::seccomp::{self, SeccompMode, ThreadKind};
use crate::vstate::control::VmControl;

/// Longest single wait, so the stop flag is noticed even if a wake-up is lost.
const MAX_WAIT: Duration = Duration::from_millis(200);
/// A virtio interrupt the guest has not acknowledged this long after it was raised is raised
/// again (see [`IrqTrigger::repeat_if_unacknowledged`]).
const IRQ_RECHECK: Duration = Duration::from_millis(200);

/// Errors starting the loop.
#[derive(Debug, thiserror::Error)]
pub enum EventLoopError {
    /// epoll could not be created.
    #[error("creating the event manager: {0}")]
    Create(#[source] event_manager::Error),
    /// The thread could not be spawned.
    #[error("spawning the event loop thread: {0}")]
    Spawn(#[source] std::io::Error),
}

/// Drains the control's wake eventfd so the loop can check the stop flag.
struct Waker(Arc<VmControl>);

impl MutEventSubscriber for Waker {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.0.wake_fd().read();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.0.wake_fd(), EventSet::IN)) {
            tracing::error!(error = ?e, "registering the event loop waker failed");
        }
    }
}

/// Raises again each of `irqs` the guest left unacknowledged for [`IRQ_RECHECK`] (run after
/// every wait of the loop, at most [`MAX_WAIT`] apart).
pub(crate) fn repeat_unacknowledged(irqs: &[Arc<IrqTrigger>]) {
    for irq in irqs {
        irq.repeat_if_unacknowledged(IRQ_RECHECK);
    }
}

/// Starts the event loop thread with `subscribers`; at `deadline` the VM is stopped with
/// [`VmExit::DeadlineExceeded`]. The thread installs the `seccomp` filter first. Between waits
/// it raises again any of `virtio_irqs` the guest left unacknowledged.
pub fn spawn(
    subscribers: Vec<Subscriber>,
    virtio_irqs: Vec<Arc<IrqTrigger>>,
    control: Arc<VmControl>,
    deadline: Option<Instant>,
    seccomp: SeccompMode,
) -> Result<JoinHandle<()>, EventLoopError> {
    let mut em = EventManager::<Subscriber>::new().map_err(EventLoopError::Create)?;
    em.add_subscriber(Arc::new(Mutex::new(Waker(control.clone()))));
    for s in subscribers {
        em.add_subscriber(s);
    }
    std::thread::Builder::new()
        .name("hearth-vmm-events".into())
        .spawn(move || {
            // Before any queue is served: guest data is handled on this thread from here on.
            if let Err(e) = seccomp::install(ThreadKind::EventLoop, seccomp) {
                control.request_exit(VmExit::Error(format!("event loop: {e}")));
                return;
            }
            while !control.should_stop() {
                let mut wait = MAX_WAIT;
                if let Some(d) = deadline {
                    let now = Instant::now();
                    if now >= d {
                        control.request_exit(VmExit::DeadlineExceeded);
                        break;
                    }
                    wait = wait.min(d - now);
                }
                let ms = wait.as_millis().max(1) as i32;
                if let Err(e) = em.run_with_timeout(ms) {
                    control.request_exit(VmExit::Error(format!("event loop: {e:?}")));
                }
                repeat_unacknowledged(&virtio_irqs);
            }
            tracing::debug!("event loop stops");
        })
        .map_err(EventLoopError::Spawn)
}
