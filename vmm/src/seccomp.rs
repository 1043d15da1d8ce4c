//! Seccomp filters for the VMM's own threads.
//!
//! The threads that handle guest-controlled data install a filter on themselves before they touch
//! any of it: each vCPU thread before its first `KVM_RUN` (MMIO and port I/O exits are emulated
//! there) and the device event-loop thread before it serves a queue (virtio descriptor chains,
//! vsock packets, block requests). A filter is per thread: the rest of the host process (the
//! tokio runtime of `hearth run`, its HTTP client, git, workspaces) is not restricted by it.
//!
//! Threat model as in Firecracker's design: a vCPU or device thread may be under the guest's
//! control the moment it runs. So the allowlists hold only what those threads do in normal
//! operation (memory allocation without `PROT_EXEC`, futexes, eventfd and file reads and writes,
//! `epoll`, the `KVM_RUN` ioctl and nothing else of `ioctl`, thread exit) and deny everything a
//! compromise would want next: `open`, `socket`, `execve`, `fork`/`clone`, `ptrace`, other
//! ioctls (no new KVM VMs, no `TIOCSTI`), `mprotect`/`mmap` making memory executable.
//!
//! File opens (`open`, `openat`, `openat2`) are refused differently: they fail with `EACCES` and
//! the thread goes on. glibc opens files on its own inside `malloc`: the first time any thread
//! trims a heap of a non-main arena it reads `/proc/sys/vm/overcommit_memory` (once per process,
//! and it copes with the open failing). Which thread that is depends on timing, so a VMM thread
//! that merely freed memory could end the process (seen in the harness: `openat` from the event
//! loop in 3 of 15 `hearth exec` boots streaming 20 MiB). A refused open reads nothing either.
//!
//! [`SeccompMode::Enforce`] (the default) ends the whole process on any other denied call, as
//! Firecracker does: the call traps (`SECCOMP_RET_TRAP`), and the `SIGSYS` handler writes the
//! call's number to stderr and exits with status [`DENIED_EXIT_STATUS`] (`_exit`, nothing else runs). A VMM
//! thread making such a call is either compromised or has a bug, and neither may go on;
//! `hearth run` reconciles leftovers at its next start. [`SeccompMode::Log`] lets the call through and has the kernel log it (audit records
//! `type=1326` in the kernel log: how to find a missing entry), [`SeccompMode::Off`] installs
//! nothing (debugging only).

use std::collections::BTreeMap;
use std::str::FromStr;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// What a thread's filter does with a call that is not on its allowlist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeccompMode {
    /// End the process (`SECCOMP_RET_TRAP`, then the `SIGSYS` handler reports the call and exits).
    #[default]
    Enforce,
    /// Allow it and have the kernel log it (`SECCOMP_RET_LOG`).
    Log,
    /// No filter at all.
    Off,
}

/// The environment variable that overrides the default mode of [`crate::VmBuilder`].
pub const MODE_ENV: &str = "HEARTH_SECCOMP";

impl SeccompMode {
    /// [`MODE_ENV`] when set to a valid mode, else [`SeccompMode::Enforce`] (an invalid value is
    /// logged and ignored: a typo must not switch the filter off).
    pub fn from_env() -> SeccompMode {
        match std::env::var(MODE_ENV) {
            Ok(v) => v.parse().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "{MODE_ENV} ignored; seccomp stays enforced");
                SeccompMode::Enforce
            }),
            Err(_) => SeccompMode::Enforce,
        }
    }
}

impl FromStr for SeccompMode {
    type Err = SeccompError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "enforce" | "on" | "true" => Ok(SeccompMode::Enforce),
            "log" => Ok(SeccompMode::Log),
            "off" | "false" => Ok(SeccompMode::Off),
            other => Err(SeccompError::Mode(other.to_string())),
        }
    }
}

impl std::fmt::Display for SeccompMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SeccompMode::Enforce => "enforce",
            SeccompMode::Log => "log",
            SeccompMode::Off => "off",
        })
    }
}

/// Which of the VMM's threads a filter is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// A vCPU thread: `KVM_RUN` and the devices' MMIO/PIO handlers.
    Vcpu,
    /// The device event loop: epoll, virtio queues, disk I/O, vsock.
    EventLoop,
}

/// Errors building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// Not one of `enforce`, `log`, `off`.
    #[error("unknown seccomp mode {0:?} (expected enforce, log or off)")]
    Mode(String),
    /// The rules did not compile to BPF (a bug in the rules).
    #[error("compiling the {kind:?} seccomp filter: {source}")]
    Compile {
        /// The thread kind.
        kind: ThreadKind,
        /// seccompiler's error.
        #[source]
        source: seccompiler::BackendError,
    },
    /// The SIGSYS handler could not be installed.
    #[error("installing the SIGSYS handler for the {kind:?} seccomp filter: {source}")]
    Handler {
        /// The thread kind.
        kind: ThreadKind,
        /// sigaction's error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused the filter.
    #[error("installing the {kind:?} seccomp filter: {source}")]
    Install {
        /// The thread kind.
        kind: ThreadKind,
        /// seccompiler's error.
        #[source]
        source: seccompiler::Error,
    },
}

/// The calling thread installs the filter for `kind` (no-op for [`SeccompMode::Off`]). Also sets
/// `no_new_privs` on the thread, which seccomp requires without `CAP_SYS_ADMIN`.
pub fn install(kind: ThreadKind, mode: SeccompMode) -> Result<(), SeccompError> {
    let programs = programs(kind, mode)?;
    if programs.is_empty() {
        return Ok(());
    }
    install_sigsys_handler().map_err(|source| SeccompError::Handler { kind, source })?;
    for p in &programs {
        seccompiler::apply_filter(p).map_err(|source| SeccompError::Install { kind, source })?;
    }
    Ok(())
}

/// The exit status of a process whose VMM thread made a denied call (Firecracker's, too).
pub const DENIED_EXIT_STATUS: i32 = 148;

/// Offset of `si_syscall` in the kernel's `siginfo_t` for `SIGSYS` on x86_64: `si_signo`,
/// `si_errno`, `si_code` (3 × 4 bytes, padded to 16), then `_sigsys { void *_call_addr; int
/// _syscall; unsigned _arch; }`.
const SI_SYSCALL_OFFSET: usize = 24;

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Async-signal-safe only: no allocation, no locks; write(2) and _exit(2) are on every
    // filter's allowlist.
    let nr = if info.is_null() {
        -1
    } else {
        // SAFETY: the kernel passes a valid siginfo_t for a SA_SIGINFO handler; for SIGSYS
        // raised by seccomp, si_syscall is the int at SI_SYSCALL_OFFSET, inside the struct.
        unsafe {
            std::ptr::read_unaligned((info as *const u8).add(SI_SYSCALL_OFFSET) as *const i32)
        }
    };
    let mut msg = *b"hearth-vmm: seccomp: a VMM thread made the denied system call           ; stopping the process (HEARTH_SECCOMP=log to find it, see README)\n";
    let prefix = b"hearth-vmm: seccomp: a VMM thread made the denied system call ".len();
    let mut digits = [b' '; 10];
    let mut n = i64::from(nr).unsigned_abs();
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    msg[prefix..prefix + digits.len()].copy_from_slice(&digits);
    // SAFETY: write(2) of a valid stack buffer to fd 2, then _exit(2): both async-signal-safe.
    unsafe {
        libc::write(2, msg.as_ptr() as *const libc::c_void, msg.len());
        libc::_exit(DENIED_EXIT_STATUS);
    }
}

/// Installs [`on_sigsys`] once per process.
fn install_sigsys_handler() -> std::io::Result<()> {
    static RESULT: std::sync::OnceLock<Result<(), i32>> = std::sync::OnceLock::new();
    let r = RESULT.get_or_init(|| {
        // SAFETY: a zeroed sigaction is a valid value to fill in; the handler is an
        // `extern "C"` fn with the SA_SIGINFO signature and only calls async-signal-safe
        // functions; sigaction reads the struct and writes no memory of ours (oldact is null).
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_sigsys as *const () as usize;
            act.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut act.sa_mask);
            if libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
            }
        }
        Ok(())
    });
    r.map_err(std::io::Error::from_raw_os_error)
}

/// The system calls that open files: refused with `EACCES` instead of ending the process (see
/// the module documentation).
pub const REFUSED_OPENS: [i64; 3] = [libc::SYS_open, libc::SYS_openat, libc::SYS_openat2];

/// The compiled BPF programs for `kind` in `mode`, installed in this order (none for
/// [`SeccompMode::Off`]): a filter that fails [`REFUSED_OPENS`] with `EACCES`, and the
/// allowlist, which lets those pass (the kernel applies the stricter verdict of stacked filters).
/// In [`SeccompMode::Log`] both log instead.
pub fn programs(kind: ThreadKind, mode: SeccompMode) -> Result<Vec<BpfProgram>, SeccompError> {
    let (mismatch, open_action) = match mode {
        SeccompMode::Enforce => (
            SeccompAction::Trap,
            SeccompAction::Errno(libc::EACCES as u32),
        ),
        SeccompMode::Log => (SeccompAction::Log, SeccompAction::Log),
        SeccompMode::Off => return Ok(Vec::new()),
    };
    let compile = |source| SeccompError::Compile { kind, source };
    let mut allowed = rules(kind).map_err(compile)?;
    let mut opens = Rules::new();
    for nr in REFUSED_OPENS {
        allowed.insert(nr, vec![]);
        opens.insert(nr, vec![]);
    }
    // The open refusal first: installing a filter takes prctl and seccomp calls, which the
    // allowlist does not have.
    let mut out = Vec::new();
    for (rules, on_mismatch, on_match) in [
        (opens, SeccompAction::Allow, open_action),
        (allowed, mismatch, SeccompAction::Allow),
    ] {
        let filter = SeccompFilter::new(rules, on_mismatch, on_match, TargetArch::x86_64)
            .map_err(compile)?;
        out.push(filter.try_into().map_err(compile)?);
    }
    Ok(out)
}

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

/// The allowlist of `kind`: syscall number → rules (an empty list allows every call of it).
pub fn rules(kind: ThreadKind) -> Result<Rules, seccompiler::BackendError> {
    let mut r = Rules::new();
    common(&mut r)?;
    match kind {
        ThreadKind::Vcpu => {
            // KVM_RUN, plus reading the vCPU's registers for the report of a guest that
            // triple-faulted: no other vCPU or VM ioctl, and none on other fds.
            r.insert(
                libc::SYS_ioctl,
                vec![
                    arg_eq(1, KVM_RUN)?,
                    arg_eq(1, KVM_GET_REGS)?,
                    arg_eq(1, KVM_GET_SREGS)?,
                ],
            );
        }
        ThreadKind::EventLoop => {
            for nr in [
                libc::SYS_epoll_wait,
                libc::SYS_epoll_pwait,
                libc::SYS_epoll_ctl,
                // Disk images: read/write at the current offset after a seek, flush.
                libc::SYS_lseek,
                libc::SYS_pread64,
                libc::SYS_pwrite64,
                libc::SYS_preadv,
                libc::SYS_pwritev,
                libc::SYS_fsync,
                libc::SYS_fdatasync,
                // The vsock device's retransmit/credit timer.
                libc::SYS_timerfd_settime,
                libc::SYS_timerfd_gettime,
            ] {
                r.insert(nr, vec![]);
            }
        }
    }
    Ok(r)
}

/// `_IO(KVMIO, 0x80)`.
const KVM_RUN: u64 = 0xae80;
/// `_IOR(KVMIO, 0x81, struct kvm_regs)` (144 bytes): read-only.
const KVM_GET_REGS: u64 = 0x8090_ae81;
/// `_IOR(KVMIO, 0x83, struct kvm_sregs)` (312 bytes): read-only.
const KVM_GET_SREGS: u64 = 0x8138_ae83;

/// What every filtered thread needs: logging and eventfd I/O, locks, sleeping, the allocator,
/// signals for the vCPU kick, thread exit.
fn common(r: &mut Rules) -> Result<(), seccompiler::BackendError> {
    for nr in [
        libc::SYS_read,
        libc::SYS_readv,
        libc::SYS_write,
        libc::SYS_writev,
        libc::SYS_close,
        libc::SYS_futex,
        libc::SYS_sched_yield,
        libc::SYS_nanosleep,
        libc::SYS_clock_nanosleep,
        libc::SYS_clock_gettime,
        libc::SYS_gettimeofday,
        libc::SYS_getpid,
        libc::SYS_gettid,
        libc::SYS_getrandom,
        libc::SYS_brk,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_madvise,
        libc::SYS_rt_sigreturn,
        libc::SYS_rt_sigprocmask,
        libc::SYS_sigaltstack,
        libc::SYS_restart_syscall,
        libc::SYS_exit,
        libc::SYS_exit_group,
    ] {
        r.insert(nr, vec![]);
    }
    // Device activation (DRIVER_OK, written by the guest) duplicates the queue eventfds it hands
    // to the event loop (F_DUPFD_CLOEXEC); Rust's standard library checks an fd with F_GETFD
    // before it closes it (debug builds). No other fcntl command.
    r.insert(
        libc::SYS_fcntl,
        vec![
            arg_eq(1, libc::F_DUPFD_CLOEXEC as u64)?,
            arg_eq(1, libc::F_GETFD as u64)?,
        ],
    );
    // The allocator maps and protects memory, never executable memory.
    r.insert(libc::SYS_mmap, vec![no_prot_exec(2)?]);
    r.insert(libc::SYS_mprotect, vec![no_prot_exec(2)?]);
    Ok(())
}

fn arg_eq(arg: u8, value: u64) -> Result<SeccompRule, seccompiler::BackendError> {
    SeccompRule::new(vec![SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        value,
    )?])
}

/// Argument `arg` (a `prot` value) has no `PROT_EXEC` bit.
fn no_prot_exec(arg: u8) -> Result<SeccompRule, seccompiler::BackendError> {
    SeccompRule::new(vec![SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
        0,
    )?])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_and_mode_compiles() {
        for kind in [ThreadKind::Vcpu, ThreadKind::EventLoop] {
            for mode in [SeccompMode::Enforce, SeccompMode::Log] {
                let p = programs(kind, mode).unwrap();
                assert_eq!(p.len(), 2, "{kind:?}/{mode}: allowlist and open refusal");
                assert!(
                    p[1].len() > 10,
                    "{kind:?}/{mode}: {} instructions",
                    p[1].len()
                );
            }
            assert!(programs(kind, SeccompMode::Off).unwrap().is_empty());
        }
    }

    #[test]
    fn only_the_event_loop_may_use_epoll_and_only_vcpus_kvm_run() {
        let vcpu = rules(ThreadKind::Vcpu).unwrap();
        let events = rules(ThreadKind::EventLoop).unwrap();
        assert!(vcpu.contains_key(&libc::SYS_ioctl));
        assert!(!events.contains_key(&libc::SYS_ioctl));
        assert!(events.contains_key(&libc::SYS_epoll_wait));
        assert!(!vcpu.contains_key(&libc::SYS_epoll_wait));
        for denied in [
            libc::SYS_openat,
            libc::SYS_socket,
            libc::SYS_execve,
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_ptrace,
        ] {
            assert!(!vcpu.contains_key(&denied) && !events.contains_key(&denied));
        }
    }

    #[test]
    fn modes_parse() {
        assert_eq!(
            "enforce".parse::<SeccompMode>().unwrap(),
            SeccompMode::Enforce
        );
        assert_eq!("log".parse::<SeccompMode>().unwrap(), SeccompMode::Log);
        assert_eq!("off".parse::<SeccompMode>().unwrap(), SeccompMode::Off);
        assert!("maybe".parse::<SeccompMode>().is_err());
    }
}
