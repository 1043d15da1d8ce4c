//! The sandbox's filesystem: a tmpfs root holding read-only binds of the host's system
//! directories, the workspace at `/work`, private `/tmp`, `/root`, `/var`, `/run`, `/dev/shm`,
//! a fresh `/proc` (of the new PID namespace), a minimal `/dev` and the agent socket directory at
//! `/run/hearth`. Nothing else of the host (home directories, `/work` of the host, hearth's
//! queue database, `/var`) is visible.

use super::spawn::Op;
use std::ffi::CString;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Host directories bound read-only when they exist (symlinks such as `/bin -> usr/bin` are
/// recreated as symlinks).
pub const SYSTEM_DIRS: [&str; 9] = [
    "usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "opt",
];

/// Where the agent socket directory appears inside.
pub const INNER_SOCKET_DIR: &str = "/run/hearth";
/// The agent's socket file name.
pub const SOCKET_NAME: &str = "agent.sock";

fn c(p: &Path) -> CString {
    // Paths come from the host's directory names and our own runtime dir; an interior NUL cannot
    // occur in a Path obtained from the OS.
    CString::new(p.as_os_str().as_bytes()).unwrap_or_default()
}

fn cs(s: &str) -> CString {
    CString::new(s).unwrap_or_default()
}

/// Where `/work` comes from.
pub enum WorkspaceSource<'a> {
    /// A detached clone of the workspace mount (`open_tree`, root only): reachable even when the
    /// sandbox's uid cannot search the workspace's parent directories.
    Tree(RawFd),
    /// A path bound from inside (unprivileged hearth: the sandbox's uid is hearth's own).
    Path(&'a Path),
    /// An empty tmpfs.
    None,
}

/// Builds the ops for a root at `root`; `socket_dir` is the host directory for the agent socket.
pub fn root_ops(root: &Path, workspace: WorkspaceSource<'_>, socket_dir: &Path) -> Vec<Op> {
    let at = |rel: &str| c(&root.join(rel));
    let mut ops = vec![Op::Mount {
        src: cs("tmpfs"),
        target: c(root),
        fstype: cs("tmpfs"),
        flags: libc::MS_NOSUID | libc::MS_NODEV,
        data: Some(cs("mode=0755,size=16m")),
    }];
    for d in SYSTEM_DIRS {
        let host = Path::new("/").join(d);
        let Ok(meta) = std::fs::symlink_metadata(&host) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            if let Ok(target) = std::fs::read_link(&host) {
                ops.push(Op::Symlink {
                    target: c(&target),
                    link: at(d),
                });
            }
        } else if meta.is_dir() {
            ops.push(Op::Mkdir {
                path: at(d),
                mode: 0o755,
            });
            ops.push(Op::BindReadOnly {
                src: c(&host),
                target: at(d),
            });
        }
    }
    ops.push(Op::Mkdir {
        path: at("work"),
        mode: 0o755,
    });
    match workspace {
        WorkspaceSource::Tree(tree_fd) => ops.push(Op::MoveMount {
            tree_fd,
            target: at("work"),
        }),
        WorkspaceSource::Path(p) => ops.push(Op::Bind {
            src: c(p),
            target: at("work"),
        }),
        WorkspaceSource::None => ops.push(tmpfs(at("work"), "mode=0755")),
    }
    for (d, mode) in [
        ("tmp", "1777"),
        ("root", "0700"),
        ("var", "0755"),
        ("run", "0755"),
    ] {
        ops.push(Op::Mkdir {
            path: at(d),
            mode: 0o755,
        });
        ops.push(tmpfs(at(d), &format!("mode={mode}")));
    }
    ops.push(Op::Mkdir {
        path: at("var/tmp"),
        mode: 0o1777,
    });
    ops.push(Op::Mkdir {
        path: at("run/hearth"),
        mode: 0o755,
    });
    ops.push(Op::Bind {
        src: c(socket_dir),
        target: at("run/hearth"),
    });
    // /proc of the new PID namespace.
    ops.push(Op::Mkdir {
        path: at("proc"),
        mode: 0o555,
    });
    ops.push(Op::Mount {
        src: cs("proc"),
        target: at("proc"),
        fstype: cs("proc"),
        flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        data: None,
    });
    ops.push(Op::Mkdir {
        path: at("sys"),
        mode: 0o555,
    });
    ops.push(Op::Optional(Box::new(Op::Mount {
        src: cs("sysfs"),
        target: at("sys"),
        fstype: cs("sysfs"),
        flags: libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        data: None,
    })));
    // A minimal /dev.
    ops.push(Op::Mkdir {
        path: at("dev"),
        mode: 0o755,
    });
    ops.push(Op::Mount {
        src: cs("tmpfs"),
        target: at("dev"),
        fstype: cs("tmpfs"),
        flags: libc::MS_NOSUID | libc::MS_NOEXEC,
        data: Some(cs("mode=0755,size=1m")),
    });
    for dev in ["null", "zero", "full", "random", "urandom", "tty"] {
        let host = Path::new("/dev").join(dev);
        if !host.exists() {
            continue;
        }
        ops.push(Op::Touch {
            path: at(&format!("dev/{dev}")),
        });
        ops.push(Op::Bind {
            src: c(&host),
            target: at(&format!("dev/{dev}")),
        });
    }
    for (link, target) in [
        ("dev/fd", "/proc/self/fd"),
        ("dev/stdin", "/proc/self/fd/0"),
        ("dev/stdout", "/proc/self/fd/1"),
        ("dev/stderr", "/proc/self/fd/2"),
        ("dev/ptmx", "pts/ptmx"),
    ] {
        ops.push(Op::Symlink {
            target: cs(target),
            link: at(link),
        });
    }
    ops.push(Op::Mkdir {
        path: at("dev/shm"),
        mode: 0o1777,
    });
    ops.push(tmpfs(at("dev/shm"), "mode=1777"));
    ops.push(Op::Mkdir {
        path: at("dev/pts"),
        mode: 0o755,
    });
    ops.push(Op::Optional(Box::new(Op::Mount {
        src: cs("devpts"),
        target: at("dev/pts"),
        fstype: cs("devpts"),
        flags: libc::MS_NOSUID | libc::MS_NOEXEC,
        data: Some(cs("newinstance,ptmxmode=0666,mode=0620")),
    })));
    ops
}

fn tmpfs(target: CString, data: &str) -> Op {
    Op::Mount {
        src: cs("tmpfs"),
        target,
        fstype: cs("tmpfs"),
        flags: libc::MS_NOSUID | libc::MS_NODEV,
        data: Some(cs(data)),
    }
}
