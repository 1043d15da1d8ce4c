//! Starting the agent inside fresh namespaces.
//!
//! Why re-exec rather than fork the agent library: hearth is a multi-threaded tokio process, and a
//! forked child of such a process may only call async-signal-safe functions until it execs — no
//! allocator, no runtime. So the child side below is raw syscalls over data prepared before the
//! fork ([`Plan`]), and it ends in `execveat` of the agent binary (opened before the fork, so it
//! need not be reachable inside the new root), which then starts its own runtime as PID 1.
//!
//! Process tree and protocol (pipes `c2p` child→parent, `p2c` parent→child, `lifeline`):
//!
//! 1. std forks C1. C1 starts a session, joins the sandbox cgroup(s), unshares
//!    user+mount+PID+net+UTS+IPC+cgroup namespaces, sends `c<pid>`, and waits for one byte on
//!    `p2c`: the parent writes C1's uid/gid maps meanwhile (a process cannot map ids other than
//!    its own for itself).
//! 2. C1 becomes root of the user namespace and forks GC, PID 1 of the new PID namespace, then
//!    sends `g<pid>` and only watches: it kills GC when the lifeline (held by the parent) breaks —
//!    hearth died or dropped the sandbox — and exits with GC's status.
//! 3. GC makes `/` private, builds the new root on a tmpfs ([`Op`]s), sets the hostname, brings
//!    `lo` up, pivots, remounts `/` read-only, `chdir("/work")`, sets no_new_privs and execs the
//!    agent. A failing step sends `e<index>` so the parent can name it.

use std::ffi::{CString, c_char, c_int, c_ulong};
use std::io;
use std::os::fd::RawFd;

/// One step of building the new root (paths are host paths under the new root, or sources).
#[derive(Debug)]
pub enum Op {
    Mkdir {
        path: CString,
        mode: u32,
    },
    Mount {
        src: CString,
        target: CString,
        fstype: CString,
        flags: c_ulong,
        data: Option<CString>,
    },
    /// Recursive bind, then a remount adding read-only, nosuid, nodev (keeping the flags the
    /// kernel locks, like noexec and the atime mode).
    BindReadOnly {
        src: CString,
        target: CString,
    },
    /// Plain recursive bind (read-write).
    Bind {
        src: CString,
        target: CString,
    },
    /// Attaches a detached mount tree (from `open_tree(OPEN_TREE_CLONE)` in the parent, which can
    /// reach paths the sandbox's uid cannot) at `target`.
    MoveMount {
        tree_fd: RawFd,
        target: CString,
    },
    Symlink {
        target: CString,
        link: CString,
    },
    /// Creates an empty file (a bind target for a device node).
    Touch {
        path: CString,
    },
    /// Skips errors of the wrapped step.
    Optional(Box<Op>),
}

/// Capabilities the agent and the jobs keep (Docker's default set): CHOWN, DAC_OVERRIDE, FOWNER,
/// FSETID, KILL, SETGID, SETUID, SETPCAP, NET_BIND_SERVICE, NET_RAW, SYS_CHROOT, MKNOD,
/// AUDIT_WRITE, SETFCAP.
pub const KEEP_CAPS: [u32; 14] = [0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31];

/// Steps before the ops, by index (for error messages).
pub const PRE_STEPS: [&str; 7] = [
    "starting a new session",
    "joining the sandbox cgroup",
    "creating the namespaces (unshare)",
    "waiting for the uid/gid maps",
    "becoming root in the user namespace",
    "forking PID 1",
    "making the mount tree private",
];
/// Steps after the ops.
pub const POST_STEPS: [&str; 7] = [
    "setting the hostname",
    "bringing up lo",
    "pivot_root into the new root",
    "remounting / read-only",
    "chdir /work",
    "dropping capabilities and setting no_new_privs",
    "executing the agent",
];

/// Everything the child side needs, prepared before the fork.
pub struct Plan {
    pub exe_fd: RawFd,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
    pub cgroup_procs: Vec<CString>,
    pub ops: Vec<Op>,
    pub new_root: CString,
    pub hostname: Vec<u8>,
    /// hearth is root: supplementary groups can be dropped.
    pub root_mode: bool,
    pub c2p_w: RawFd,
    pub c2p_r: RawFd,
    pub p2c_r: RawFd,
    pub p2c_w: RawFd,
    pub lifeline_r: RawFd,
    argv_ptrs: Vec<*const c_char>,
    envp_ptrs: Vec<*const c_char>,
}

// SAFETY: the raw pointers point into the CStrings owned by the same Plan, which is never
// mutated after `finish`; sharing it between threads only reads it.
unsafe impl Send for Plan {}
// SAFETY: as above.
unsafe impl Sync for Plan {}

impl Plan {
    /// Builds the NULL-terminated argv/envp arrays (call once, after filling the fields).
    pub fn finish(mut self) -> Plan {
        self.argv_ptrs = self.argv.iter().map(|s| s.as_ptr()).collect();
        self.argv_ptrs.push(std::ptr::null());
        self.envp_ptrs = self.envp.iter().map(|s| s.as_ptr()).collect();
        self.envp_ptrs.push(std::ptr::null());
        self
    }

    #[allow(clippy::too_many_arguments)]
    pub fn new(
        exe_fd: RawFd,
        argv: Vec<CString>,
        envp: Vec<CString>,
        cgroup_procs: Vec<CString>,
        ops: Vec<Op>,
        new_root: CString,
        hostname: Vec<u8>,
        root_mode: bool,
        fds: PipeFds,
    ) -> Plan {
        Plan {
            exe_fd,
            argv,
            envp,
            cgroup_procs,
            ops,
            new_root,
            hostname,
            root_mode,
            c2p_w: fds.c2p_w,
            c2p_r: fds.c2p_r,
            p2c_r: fds.p2c_r,
            p2c_w: fds.p2c_w,
            lifeline_r: fds.lifeline_r,
            argv_ptrs: Vec::new(),
            envp_ptrs: Vec::new(),
        }
        .finish()
    }

    /// A human description of step `idx` (as reported by the child).
    pub fn describe(&self, idx: u32) -> String {
        let i = idx as usize;
        if i < PRE_STEPS.len() {
            return PRE_STEPS[i].to_string();
        }
        let j = i - PRE_STEPS.len();
        if let Some(op) = self.ops.get(j) {
            return describe_op(op);
        }
        POST_STEPS
            .get(j - self.ops.len())
            .map(|s| s.to_string())
            .unwrap_or_else(|| format!("step {idx}"))
    }
}

fn describe_op(op: &Op) -> String {
    let s = |c: &CString| c.to_string_lossy().into_owned();
    match op {
        Op::Mkdir { path, .. } => format!("mkdir {}", s(path)),
        Op::Mount {
            src,
            target,
            fstype,
            ..
        } => format!("mount {} ({}) on {}", s(src), s(fstype), s(target)),
        Op::BindReadOnly { src, target } => format!("read-only bind {} on {}", s(src), s(target)),
        Op::Bind { src, target } => format!("bind {} on {}", s(src), s(target)),
        Op::MoveMount { target, .. } => format!("attach the workspace on {}", s(target)),
        Op::Symlink { target, link } => format!("symlink {} -> {}", s(link), s(target)),
        Op::Touch { path } => format!("create {}", s(path)),
        Op::Optional(inner) => describe_op(inner),
    }
}

/// The raw pipe ends the child side uses.
pub struct PipeFds {
    pub c2p_w: RawFd,
    pub c2p_r: RawFd,
    pub p2c_r: RawFd,
    pub p2c_w: RawFd,
    pub lifeline_r: RawFd,
}

fn last_err() -> io::Error {
    io::Error::last_os_error()
}

fn check(r: c_int) -> io::Result<()> {
    if r < 0 { Err(last_err()) } else { Ok(()) }
}

/// Sends a tagged 5-byte message (atomic: below PIPE_BUF).
fn send(fd: RawFd, tag: u8, value: u32) {
    let v = value.to_le_bytes();
    let msg = [tag, v[0], v[1], v[2], v[3]];
    // SAFETY: writes 5 bytes from a live stack buffer.
    unsafe { libc::write(fd, msg.as_ptr().cast(), msg.len()) };
}

/// Reports step `idx` as failed and returns its error.
fn fail(p: &Plan, idx: usize, e: io::Error) -> io::Error {
    send(p.c2p_w, b'e', idx as u32);
    e
}

/// The `pre_exec` body: runs in C1 right after std's fork. Returns only on error (C1 and GC
/// either exec or `_exit`).
///
/// # Safety
/// Must only be called in a freshly forked child; uses only async-signal-safe calls.
pub unsafe fn child_main(p: &Plan) -> io::Result<()> {
    // SAFETY (whole block): plain syscalls on fds and NUL-terminated strings owned by `p`.
    unsafe {
        libc::close(p.c2p_r);
        libc::close(p.p2c_w);
        if libc::setsid() < 0 {
            return Err(fail(p, 0, last_err()));
        }
        for f in &p.cgroup_procs {
            let fd = libc::open(f.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(fail(p, 1, last_err()));
            }
            let r = libc::write(fd, b"0".as_ptr().cast(), 1);
            let e = last_err();
            libc::close(fd);
            if r != 1 {
                return Err(fail(p, 1, e));
            }
        }
        let flags = libc::CLONE_NEWUSER
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWNET
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWCGROUP;
        if libc::unshare(flags) < 0 {
            return Err(fail(p, 2, last_err()));
        }
        send(p.c2p_w, b'c', libc::getpid() as u32);
        let mut b = [0u8; 1];
        if libc::read(p.p2c_r, b.as_mut_ptr().cast(), 1) != 1 {
            return Err(fail(p, 3, io::Error::from_raw_os_error(libc::EPIPE)));
        }
        libc::close(p.p2c_r);
        if p.root_mode && libc::setgroups(0, std::ptr::null()) < 0 {
            return Err(fail(p, 4, last_err()));
        }
        if libc::setresgid(0, 0, 0) < 0 || libc::setresuid(0, 0, 0) < 0 {
            return Err(fail(p, 4, last_err()));
        }
        let pid = libc::fork();
        if pid < 0 {
            return Err(fail(p, 5, last_err()));
        }
        if pid > 0 {
            watch(p, pid);
        }
        libc::close(p.lifeline_r);
        pid1(p)
    }
}

/// C1 after the fork: report GC's pid, keep only the lifeline, reap GC, exit with its status.
unsafe fn watch(p: &Plan, gc: libc::pid_t) -> ! {
    // SAFETY (whole block): plain syscalls; `status`, `fds` are live stack values.
    unsafe {
        send(p.c2p_w, b'g', gc as u32);
        if p.lifeline_r != 3 {
            libc::dup2(p.lifeline_r, 3);
        }
        libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32);
        let pidfd = libc::syscall(libc::SYS_pidfd_open, gc, 0) as c_int;
        if pidfd >= 0 {
            loop {
                let mut fds = [
                    libc::pollfd {
                        fd: 3,
                        events: libc::POLLIN,
                        revents: 0,
                    },
                    libc::pollfd {
                        fd: pidfd,
                        events: libc::POLLIN,
                        revents: 0,
                    },
                ];
                let n = libc::poll(fds.as_mut_ptr(), 2, -1);
                if n < 0 {
                    if *libc::__errno_location() == libc::EINTR {
                        continue;
                    }
                    break;
                }
                if fds[1].revents != 0 {
                    break;
                }
                if fds[0].revents != 0 {
                    // The parent is gone or dropped the sandbox: PID 1's death ends the namespace.
                    libc::kill(gc, libc::SIGKILL);
                    break;
                }
            }
        }
        let mut status: c_int = 0;
        loop {
            let r = libc::waitpid(gc, &mut status, 0);
            if r == gc || (r < 0 && *libc::__errno_location() != libc::EINTR) {
                break;
            }
        }
        let code = if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else if libc::WIFSIGNALED(status) {
            128 + libc::WTERMSIG(status)
        } else {
            1
        };
        libc::_exit(code)
    }
}

/// GC: PID 1 of the new namespaces.
unsafe fn pid1(p: &Plan) -> io::Result<()> {
    let base = PRE_STEPS.len();
    let post = base + p.ops.len();
    // SAFETY (whole block): syscalls on NUL-terminated strings and stack buffers owned here.
    unsafe {
        if libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) < 0
        {
            return Err(fail(p, 6, last_err()));
        }
        for (i, op) in p.ops.iter().enumerate() {
            if let Err(e) = run_op(op) {
                return Err(fail(p, base + i, e));
            }
        }
        if libc::sethostname(p.hostname.as_ptr().cast(), p.hostname.len()) < 0 {
            return Err(fail(p, post, last_err()));
        }
        if let Err(e) = loopback_up() {
            return Err(fail(p, post + 1, e));
        }
        let dot = c".".as_ptr();
        if libc::chdir(p.new_root.as_ptr()) < 0
            || libc::syscall(libc::SYS_pivot_root, dot, dot) < 0
            || libc::umount2(dot, libc::MNT_DETACH) < 0
            || libc::chdir(c"/".as_ptr()) < 0
        {
            return Err(fail(p, post + 2, last_err()));
        }
        if libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
            std::ptr::null(),
        ) < 0
        {
            return Err(fail(p, post + 3, last_err()));
        }
        if libc::chdir(c"/work".as_ptr()) < 0 {
            return Err(fail(p, post + 4, last_err()));
        }
        // Keep only Docker's default capability set: no CAP_SYS_ADMIN (mounts), CAP_NET_ADMIN,
        // CAP_SYS_PTRACE, … even inside the user namespace. For a uid-0 exec the bounding set
        // becomes the permitted set.
        for cap in 0..64 {
            if KEEP_CAPS.contains(&cap) {
                continue;
            }
            if libc::prctl(libc::PR_CAPBSET_DROP, cap as c_ulong, 0, 0, 0) < 0
                && *libc::__errno_location() != libc::EINVAL
            {
                return Err(fail(p, post + 5, last_err()));
            }
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
            return Err(fail(p, post + 5, last_err()));
        }
        libc::syscall(
            libc::SYS_execveat,
            p.exe_fd,
            c"".as_ptr(),
            p.argv_ptrs.as_ptr(),
            p.envp_ptrs.as_ptr(),
            libc::AT_EMPTY_PATH,
        );
        Err(fail(p, post + 6, last_err()))
    }
}

fn run_op(op: &Op) -> io::Result<()> {
    let null = std::ptr::null::<c_char>();
    // SAFETY (whole block): syscalls on NUL-terminated strings owned by `op` and stack values.
    unsafe {
        match op {
            Op::Mkdir { path, mode } => {
                if libc::mkdir(path.as_ptr(), *mode) < 0
                    && *libc::__errno_location() != libc::EEXIST
                {
                    return Err(last_err());
                }
                check(libc::chmod(path.as_ptr(), *mode))
            }
            Op::Mount {
                src,
                target,
                fstype,
                flags,
                data,
            } => check(libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                *flags,
                data.as_ref()
                    .map_or(std::ptr::null(), |d| d.as_ptr().cast()),
            )),
            Op::Bind { src, target } => check(libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                null,
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            )),
            Op::BindReadOnly { src, target } => {
                check(libc::mount(
                    src.as_ptr(),
                    target.as_ptr(),
                    null,
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ))?;
                let mut st: libc::statvfs = std::mem::zeroed();
                check(libc::statvfs(target.as_ptr(), &mut st))?;
                let mut flags = libc::MS_BIND
                    | libc::MS_REMOUNT
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV;
                for (st_flag, ms_flag) in [
                    (libc::ST_NOEXEC, libc::MS_NOEXEC),
                    (libc::ST_NOATIME, libc::MS_NOATIME),
                    (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
                    (libc::ST_RELATIME, libc::MS_RELATIME),
                ] {
                    if st.f_flag & st_flag != 0 {
                        flags |= ms_flag;
                    }
                }
                check(libc::mount(
                    null,
                    target.as_ptr(),
                    null,
                    flags,
                    std::ptr::null(),
                ))
            }
            Op::MoveMount { tree_fd, target } => {
                const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
                let r = libc::syscall(
                    libc::SYS_move_mount,
                    *tree_fd,
                    c"".as_ptr(),
                    libc::AT_FDCWD,
                    target.as_ptr(),
                    MOVE_MOUNT_F_EMPTY_PATH,
                );
                if r < 0 { Err(last_err()) } else { Ok(()) }
            }
            Op::Symlink { target, link } => check(libc::symlink(target.as_ptr(), link.as_ptr())),
            Op::Touch { path } => {
                let fd = libc::open(
                    path.as_ptr(),
                    libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                    0o644,
                );
                if fd < 0 {
                    return Err(last_err());
                }
                libc::close(fd);
                Ok(())
            }
            Op::Optional(inner) => {
                let _ = run_op(inner);
                Ok(())
            }
        }
    }
}

/// `struct ifreq` with the flags member (40 bytes on Linux).
#[repr(C)]
struct IfReqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn loopback_up() -> io::Result<()> {
    // SAFETY: a socket for ioctls; `req` is a live, correctly sized ifreq.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(last_err());
        }
        let mut req = IfReqFlags {
            name: [0; libc::IFNAMSIZ],
            flags: 0,
            _pad: [0; 22],
        };
        req.name[..2].copy_from_slice(b"lo");
        let mut r = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req);
        if r >= 0 {
            req.flags |= libc::IFF_UP as libc::c_short;
            r = libc::ioctl(fd, libc::SIOCSIFFLAGS, &req);
        }
        let e = last_err();
        libc::close(fd);
        if r < 0 { Err(e) } else { Ok(()) }
    }
}
