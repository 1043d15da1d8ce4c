//! Where the guest is: snapshots of each vCPU's registers and exit counters, taken on request
//! by the vCPU threads themselves (only the thread that owns a vCPU fd may call its ioctls while
//! it runs). Used when a guest does not become ready in time: a guest spinning in its kernel
//! shows no console output, and its instruction pointer, interrupt flag and exit count are what
//! tell a hung timer loop from a vCPU stuck in exits or a halted one.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use kvm_ioctls::{VcpuExit, VcpuFd};

/// The kind of a vCPU's last exit to the VMM, with its port or address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LastExit {
    /// No exit yet.
    #[default]
    None,
    /// Port I/O read.
    IoIn(u16),
    /// Port I/O write.
    IoOut(u16),
    /// MMIO read.
    MmioRead(u64),
    /// MMIO write.
    MmioWrite(u64),
    /// KVM_RUN interrupted by a signal (the host's kick).
    Interrupted,
    /// Any other exit.
    Other,
}

impl LastExit {
    /// Classifies a KVM_RUN exit.
    pub fn of(exit: &VcpuExit<'_>) -> Self {
        match exit {
            VcpuExit::IoIn(port, _) => Self::IoIn(*port),
            VcpuExit::IoOut(port, _) => Self::IoOut(*port),
            VcpuExit::MmioRead(addr, _) => Self::MmioRead(*addr),
            VcpuExit::MmioWrite(addr, _) => Self::MmioWrite(*addr),
            VcpuExit::Intr => Self::Interrupted,
            _ => Self::Other,
        }
    }
}

impl fmt::Display for LastExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => write!(f, "none"),
            Self::IoIn(p) => write!(f, "port read {p:#x}"),
            Self::IoOut(p) => write!(f, "port write {p:#x}"),
            Self::MmioRead(a) => write!(f, "mmio read {a:#x}"),
            Self::MmioWrite(a) => write!(f, "mmio write {a:#x}"),
            Self::Interrupted => write!(f, "signal"),
            Self::Other => write!(f, "other"),
        }
    }
}

/// One vCPU's registers and exit counters at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VcpuState {
    /// vCPU index.
    pub id: u8,
    /// Instruction pointer.
    pub rip: u64,
    /// Stack pointer.
    pub rsp: u64,
    /// Flags (bit 9: interrupts enabled).
    pub rflags: u64,
    /// Page-table root.
    pub cr3: u64,
    /// KVM_RUN calls that returned to the VMM (exits to user space, kicks included).
    pub exits: u64,
    /// The last of them.
    pub last_exit: LastExit,
    /// Registers could not be read (the ioctl's error), or `None`.
    pub error: Option<String>,
    /// The kernel function at `rip` (`name+0xoffset`), when the kernel's symbols are known.
    pub symbol: Option<String>,
    /// The *host* kernel's function at `rip`, when `rip` is none of the guest kernel's and the
    /// host kernel has code there: the guest holds the host's registers, which only a broken
    /// virtualization layer below the host does (see [`VcpuState::holds_host_state`]).
    pub host_symbol: Option<String>,
}

impl VcpuState {
    /// Reads `vcpu`'s registers (from its own thread).
    pub fn read(vcpu: &VcpuFd, id: u8, exits: u64, last_exit: LastExit) -> Self {
        let mut s = Self {
            id,
            rip: 0,
            rsp: 0,
            rflags: 0,
            cr3: 0,
            exits,
            last_exit,
            error: None,
            symbol: None,
            host_symbol: None,
        };
        match (vcpu.get_regs(), vcpu.get_sregs()) {
            (Ok(r), Ok(sr)) => {
                s.rip = r.rip;
                s.rsp = r.rsp;
                s.rflags = r.rflags;
                s.cr3 = sr.cr3;
            }
            (Err(e), _) | (_, Err(e)) => s.error = Some(e.to_string()),
        }
        s
    }

    /// Whether the vCPU's instruction pointer is in the host kernel's code rather than the
    /// guest's. Seen under nested virtualization emulated by QEMU's TCG (the test harness): the
    /// guest's saved state became the host's, `rip` right after the host's VMRUN in
    /// `__svm_vcpu_run`, and the guest spun there or triple-faulted. Never the guest's doing.
    pub fn holds_host_state(&self) -> bool {
        self.host_symbol.is_some()
    }

    /// Whether the guest had interrupts enabled (RFLAGS.IF).
    pub fn interrupts_enabled(&self) -> bool {
        self.rflags & (1 << 9) != 0
    }
}

impl fmt::Display for VcpuState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(e) = &self.error {
            return write!(f, "vCPU{}: registers unreadable ({e})", self.id);
        }
        write!(f, "vCPU{}: rip {:#x}", self.id, self.rip)?;
        if let Some(sym) = &self.symbol {
            write!(f, " ({sym})")?;
        }
        if let Some(sym) = &self.host_symbol {
            write!(
                f,
                " (the HOST kernel's {sym}: the guest holds the host's state)"
            )?;
        }
        write!(
            f,
            " rsp {:#x} rflags {:#x} (interrupts {}) cr3 {:#x}, {} exits, last {}",
            self.rsp,
            self.rflags,
            if self.interrupts_enabled() {
                "on"
            } else {
                "off"
            },
            self.cr3,
            self.exits,
            self.last_exit
        )
    }
}

/// Requests for vCPU snapshots and their answers. A request is a generation number; each vCPU
/// thread answers the newest generation it has not answered yet when KVM_RUN next returns (the
/// requester kicks it out of the guest).
#[derive(Debug, Default)]
pub struct VcpuProbe {
    generation: AtomicU64,
    answers: Mutex<Vec<(u64, VcpuState)>>,
    cond: Condvar,
}

impl VcpuProbe {
    /// Starts a new request; returns its generation.
    pub fn request(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// The generation to answer, if one newer than `answered` was requested (a load per exit).
    pub fn pending(&self, answered: u64) -> Option<u64> {
        let g = self.generation.load(Ordering::SeqCst);
        (g > answered).then_some(g)
    }

    /// Stores a vCPU's answer to `generation`.
    pub fn answer(&self, generation: u64, state: VcpuState) {
        let mut a = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        a.retain(|(_, s)| s.id != state.id);
        a.push((generation, state));
        self.cond.notify_all();
    }

    /// The answers to `generation` (or newer) so far, by vCPU index, once `count` are in or
    /// `timeout` passed; `poke` runs every few milliseconds while waiting (it kicks the vCPUs).
    pub fn collect(
        &self,
        generation: u64,
        count: usize,
        timeout: Duration,
        mut poke: impl FnMut(),
    ) -> Vec<VcpuState> {
        let deadline = Instant::now() + timeout;
        let mut a = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let fresh = a.iter().filter(|(g, _)| *g >= generation).count();
            let now = Instant::now();
            if fresh >= count || now >= deadline {
                break;
            }
            drop(a);
            poke();
            a = self.answers.lock().unwrap_or_else(|p| p.into_inner());
            let wait = (deadline - now).min(Duration::from_millis(5));
            a = self
                .cond
                .wait_timeout(a, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        let mut out: Vec<VcpuState> = a
            .iter()
            .filter(|(g, _)| *g >= generation)
            .map(|(_, s)| s.clone())
            .collect();
        out.sort_by_key(|s| s.id);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(id: u8, rip: u64) -> VcpuState {
        VcpuState {
            id,
            rip,
            rsp: 0,
            rflags: 0x202,
            cr3: 0,
            exits: 3,
            last_exit: LastExit::IoOut(0x3f8),
            error: None,
            symbol: None,
            host_symbol: None,
        }
    }

    #[test]
    fn only_answers_to_the_current_request_are_collected() {
        let p = VcpuProbe::default();
        assert_eq!(p.pending(0), None);
        let g1 = p.request();
        assert_eq!(p.pending(0), Some(g1));
        p.answer(g1, state(0, 1));
        assert_eq!(p.pending(g1), None);
        let g2 = p.request();
        // vCPU 0's old answer does not count for the new request; vCPU 1 answers it.
        p.answer(g2, state(1, 2));
        let mut pokes = 0;
        let got = p.collect(g2, 2, Duration::from_millis(30), || pokes += 1);
        assert_eq!(got, vec![state(1, 2)]);
        assert!(pokes > 0, "the waiter kicks while answers are missing");
        p.answer(g2, state(0, 3));
        let got = p.collect(g2, 2, Duration::from_secs(5), || {});
        assert_eq!(got, vec![state(0, 3), state(1, 2)]);
    }

    #[test]
    fn a_waiting_collector_is_woken_by_an_answer_from_another_thread() {
        let p = std::sync::Arc::new(VcpuProbe::default());
        let g = p.request();
        let p2 = p.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            let mut s = state(0, 0xffff_ffff_8100_0000);
            s.symbol = Some("default_idle+0x4".into());
            p2.answer(g, s);
        });
        let got = p.collect(g, 1, Duration::from_secs(10), || {});
        t.join().unwrap();
        assert_eq!(got.len(), 1);
        let line = got[0].to_string();
        assert!(
            line.contains("rip 0xffffffff81000000 (default_idle+0x4) rsp")
                && line.contains("interrupts on"),
            "{line}"
        );
        assert!(line.contains("last port write 0x3f8"), "{line}");
    }
}
