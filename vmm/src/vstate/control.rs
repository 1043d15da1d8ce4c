//! Shared VM lifecycle state: the exit reason (first one wins), boot timestamps, the stop flag
//! and the event-loop wake-up fd. Written from vCPU threads, devices and the host handle.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::VmExit;
use crate::vstate::probe::VcpuProbe;

/// Timestamps of the boot phases.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stamps {
    /// Guest RAM is mapped and the KVM VM (memory slots, irqchip, PIT) exists.
    pub kvm_vm_created: Option<Instant>,
    /// The kernel started loading into guest RAM (devices are set up by then).
    pub kernel_load_start: Option<Instant>,
    /// The kernel and its boot information are in guest RAM.
    pub kernel_loaded: Option<Instant>,
    /// The VM (memory, devices, vCPUs) is set up.
    pub vm_created: Option<Instant>,
    /// vCPU 0 entered the guest for the first time.
    pub kernel_entry: Option<Instant>,
    /// The agent signalled readiness.
    pub agent_ready: Option<Instant>,
}

#[derive(Debug, Default)]
struct State {
    exit: Option<VmExit>,
    stamps: Stamps,
}

/// Lifecycle state shared by every thread of one VM.
#[derive(Debug)]
pub struct VmControl {
    state: Mutex<State>,
    cond: Condvar,
    stop: AtomicBool,
    wake: EventFd,
    probe: VcpuProbe,
}

impl VmControl {
    /// Fresh state.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            state: Mutex::new(State::default()),
            cond: Condvar::new(),
            stop: AtomicBool::new(false),
            wake: EventFd::new(EFD_NONBLOCK)?,
            probe: VcpuProbe::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records why the VM stops (only the first reason counts) and asks every thread to stop.
    pub fn request_exit(&self, exit: VmExit) {
        let mut s = self.lock();
        if s.exit.is_none() {
            tracing::debug!(?exit, "vm exit requested");
            s.exit = Some(exit);
        }
        self.stop.store(true, Ordering::SeqCst);
        // The event loop polls the stop flag at least every timeout; the wake is best effort.
        let _ = self.wake.write(1);
        self.cond.notify_all();
    }

    /// True once an exit was requested.
    pub fn should_stop(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// The exit reason, if any.
    pub fn exit(&self) -> Option<VmExit> {
        self.lock().exit.clone()
    }

    /// The eventfd written on exit requests (watched by the event loop).
    pub fn wake_fd(&self) -> &EventFd {
        &self.wake
    }

    /// Requests for and answers of vCPU register snapshots.
    pub fn probe(&self) -> &VcpuProbe {
        &self.probe
    }

    /// Records a phase timestamp (first write wins).
    pub fn stamp(&self, f: impl FnOnce(&mut Stamps) -> &mut Option<Instant>) {
        let mut s = self.lock();
        let slot = f(&mut s.stamps);
        if slot.is_none() {
            *slot = Some(Instant::now());
            self.cond.notify_all();
        }
    }

    /// The timestamps so far.
    pub fn stamps(&self) -> Stamps {
        self.lock().stamps
    }

    /// Blocks until the VM exited or `timeout` passed.
    pub fn wait_exit(&self, timeout: Option<Duration>) -> Option<VmExit> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut s = self.lock();
        loop {
            if let Some(e) = &s.exit {
                return Some(e.clone());
            }
            s = match deadline {
                None => self.cond.wait(s).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return None;
                    }
                    self.cond
                        .wait_timeout(s, d - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
    }

    /// Blocks until the agent is ready (Ok), the VM exits (Err with the exit) or the timeout
    /// passes (Err(None)).
    pub fn wait_ready(&self, timeout: Duration) -> Result<Instant, Option<VmExit>> {
        let deadline = Instant::now() + timeout;
        let mut s = self.lock();
        loop {
            if let Some(t) = s.stamps.agent_ready {
                return Ok(t);
            }
            if let Some(e) = &s.exit {
                return Err(Some(e.clone()));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(None);
            }
            s = self
                .cond
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_exit_wins_and_wakes_waiters() {
        let c = std::sync::Arc::new(VmControl::new().unwrap());
        assert!(c.wait_exit(Some(Duration::from_millis(1))).is_none());
        let c2 = c.clone();
        let t = std::thread::spawn(move || c2.wait_exit(None));
        c.request_exit(VmExit::PowerOff);
        c.request_exit(VmExit::Reset);
        assert_eq!(t.join().unwrap(), Some(VmExit::PowerOff));
        assert!(c.should_stop());
        assert_eq!(c.wake_fd().read().unwrap(), 2);
        assert!(matches!(
            c.wait_ready(Duration::from_millis(1)),
            Err(Some(VmExit::PowerOff))
        ));
    }

    #[test]
    fn ready_stamp_is_kept_once() {
        let c = VmControl::new().unwrap();
        assert!(matches!(c.wait_ready(Duration::from_millis(1)), Err(None)));
        c.stamp(|s| &mut s.agent_ready);
        let first = c.stamps().agent_ready.unwrap();
        c.stamp(|s| &mut s.agent_ready);
        assert_eq!(c.stamps().agent_ready.unwrap(), first);
        assert_eq!(c.wait_ready(Duration::from_millis(1)).unwrap(), first);
    }
}
