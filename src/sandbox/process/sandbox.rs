//! Starting one process sandbox (host side of [`super::spawn`]) and tearing it down.

use super::cgroup::{Cgroups, Limits, SandboxCgroup};
use super::spawn::{PipeFds, Plan, child_main};
use super::{ProcessOptions, is_root, layout, resource_name};
use crate::sandbox::{BoxFuture, IsolationKind, Sandbox, SandboxError, SandboxSpec, StartTimings};
use hearth_agent::client::Client;
use std::ffi::CString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A running process sandbox.
pub struct ProcessSandbox {
    name: String,
    dir: PathBuf,
    cgroup: SandboxCgroup,
    child: Option<Child>,
    pid1: i32,
    lifeline: Option<OwnedFd>,
    client: Option<Client>,
    timings: StartTimings,
    /// (workspace, uid, gid) to restore at teardown.
    restore_owner: Option<(PathBuf, u32, u32)>,
}

fn start_err(msg: impl Into<String>) -> SandboxError {
    SandboxError::Start(msg.into())
}

fn io_ctx(context: String) -> impl FnOnce(io::Error) -> SandboxError {
    move |source| SandboxError::Io { context, source }
}

fn cpath(p: &Path) -> Result<CString, SandboxError> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| SandboxError::Config(format!("path {} contains NUL", p.display())))
}

pub(super) async fn start(
    opts: &ProcessOptions,
    cgroups: &Cgroups,
    spec: &SandboxSpec,
    limits: Limits,
) -> Result<ProcessSandbox, SandboxError> {
    let begun = Instant::now();
    if spec.network {
        tracing::warn!(
            sandbox = %spec.name,
            "process isolation has loopback-only networking; the job gets no outbound network"
        );
    }
    let name = resource_name(&spec.name);
    let dir = opts.runtime_dir.join(&name);
    let root = is_root();
    let (map_uid, map_gid) = if root {
        (opts.uid_base, opts.uid_base)
    } else {
        // SAFETY: getegid has no preconditions.
        (super::euid(), unsafe { libc::getegid() })
    };
    fs::create_dir(&dir).map_err(io_ctx(format!("creating {}", dir.display())))?;
    // From here on, dropping `sb` cleans up whatever exists.
    let mut sb = ProcessSandbox {
        name: name.clone(),
        dir: dir.clone(),
        cgroup: cgroups.open(&name),
        child: None,
        pid1: 0,
        lifeline: None,
        client: None,
        timings: StartTimings::default(),
        restore_owner: None,
    };
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o711))
        .map_err(io_ctx(format!("chmod {}", dir.display())))?;
    let sock_dir = dir.join("sock");
    let new_root = dir.join("root");
    for d in [&sock_dir, &new_root] {
        fs::create_dir(d).map_err(io_ctx(format!("creating {}", d.display())))?;
    }
    fs::set_permissions(&new_root, fs::Permissions::from_mode(0o755))
        .map_err(io_ctx(format!("chmod {}", new_root.display())))?;
    if root {
        std::os::unix::fs::chown(&sock_dir, Some(map_uid), Some(map_gid))
            .map_err(io_ctx(format!("chown {}", sock_dir.display())))?;
    }
    sb.cgroup = cgroups
        .create(&name, limits)
        .map_err(|e| SandboxError::Config(e.to_string()))?;

    // The workspace: as root a detached clone of its mount, id-mapped (or, where the filesystem
    // cannot, chowned) for the sandbox's users during the handshake; else bound by path.
    let ws_fd = match &spec.workspace {
        Some(ws) => {
            let meta = fs::metadata(ws)
                .map_err(|e| SandboxError::Workspace(format!("{}: {e}", ws.display())))?;
            if !meta.is_dir() {
                return Err(SandboxError::Workspace(format!(
                    "{} is not a directory",
                    ws.display()
                )));
            }
            if root { Some(open_tree(ws)?) } else { None }
        }
        None => None,
    };
    let exe = fs::File::open(&opts.agent_program).map_err(io_ctx(format!(
        "opening the agent program {}",
        opts.agent_program.display()
    )))?;
    let log_path = dir.join("agent.log");
    let log =
        fs::File::create(&log_path).map_err(io_ctx(format!("creating {}", log_path.display())))?;

    let listen = format!("unix:{}/{}", layout::INNER_SOCKET_DIR, layout::SOCKET_NAME);
    let mut argv = vec![CString::new("hearth-agent").unwrap_or_default()];
    for a in opts
        .agent_args
        .iter()
        .chain(["--listen".to_string(), listen].iter())
    {
        argv.push(
            CString::new(a.as_str())
                .map_err(|_| SandboxError::Config("NUL in agent args".into()))?,
        );
    }
    let envp = [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        "HOME=/root".to_string(),
        format!("HEARTH_AGENT_LOG={}", opts.agent_log_level),
        format!("HEARTH_LOG={}", opts.agent_log_level),
    ]
    .into_iter()
    .map(|s| CString::new(s).unwrap_or_default())
    .collect();
    let cgroup_procs = sb
        .cgroup
        .procs_files()
        .iter()
        .map(|p| cpath(p))
        .collect::<Result<Vec<_>, _>>()?;
    let mut hostname = format!("hearth-{}", spec.name)
        .bytes()
        .filter(|b| b.is_ascii_alphanumeric() || *b == b'-')
        .collect::<Vec<u8>>();
    hostname.truncate(63);

    let (c2p_r, c2p_w) = io::pipe().map_err(io_ctx("pipe".into()))?;
    let (p2c_r, p2c_w) = io::pipe().map_err(io_ctx("pipe".into()))?;
    let (life_r, life_w) = io::pipe().map_err(io_ctx("pipe".into()))?;
    let (c2p_w, p2c_r, life_r) = (
        OwnedFd::from(c2p_w),
        OwnedFd::from(p2c_r),
        OwnedFd::from(life_r),
    );
    let ws_canon = match &spec.workspace {
        Some(ws) => Some(
            fs::canonicalize(ws)
                .map_err(|e| SandboxError::Workspace(format!("{}: {e}", ws.display())))?,
        ),
        None => None,
    };
    let workspace_source = match (&ws_fd, &spec.workspace) {
        (Some(fd), _) => layout::WorkspaceSource::Tree(fd.as_raw_fd()),
        (None, Some(_)) => match &ws_canon {
            Some(p) => layout::WorkspaceSource::Path(p),
            None => layout::WorkspaceSource::None,
        },
        (None, None) => layout::WorkspaceSource::None,
    };
    let plan = Arc::new(Plan::new(
        exe.as_raw_fd(),
        argv,
        envp,
        cgroup_procs,
        layout::root_ops(&new_root, workspace_source, &sock_dir),
        cpath(&new_root)?,
        hostname,
        root,
        PipeFds {
            c2p_w: c2p_w.as_raw_fd(),
            c2p_r: c2p_r.as_raw_fd(),
            p2c_r: p2c_r.as_raw_fd(),
            p2c_w: p2c_w.as_raw_fd(),
            lifeline_r: life_r.as_raw_fd(),
        },
    ));
    let mut cmd = Command::new(&opts.agent_program);
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().map_err(io_ctx("log file".into()))?)
        .stderr(log);
    let child_plan = plan.clone();
    // SAFETY: `child_main` only makes async-signal-safe calls on data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || child_main(&child_plan));
    }
    // The child-side fds live until `cmd` is dropped right after spawn, so the handshake thread
    // sees EOF if the child dies early.
    let idmap = match (&ws_fd, &spec.workspace) {
        (Some(fd), Some(ws)) => Some((fd.as_raw_fd(), ws.clone())),
        _ => None,
    };
    let keep = (c2p_w, p2c_r, life_r, exe, ws_fd);
    let spawner = tokio::task::spawn_blocking(move || {
        let r = cmd.spawn();
        drop(cmd);
        drop(keep);
        r
    });
    let handshake = tokio::task::spawn_blocking(move || {
        parent_handshake(c2p_r, p2c_w, root, (map_uid, map_gid), idmap)
    });
    let spawned = spawner
        .await
        .map_err(|e| start_err(format!("spawn task: {e}")))?;
    let hs = handshake
        .await
        .map_err(|e| start_err(format!("handshake task: {e}")))?;
    if let Ok(h) = &hs {
        sb.restore_owner = h.chowned.clone();
    }
    let failed_step = hs.as_ref().ok().and_then(|h| h.failed_step);
    let child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let what = match (failed_step, &hs) {
                (Some(i), _) => plan.describe(i),
                (None, Err(m)) => m.clone(),
                (None, Ok(_)) => "spawning".into(),
            };
            return Err(start_err(format!("{what}: {e}")));
        }
    };
    sb.child = Some(child);
    sb.lifeline = Some(OwnedFd::from(life_w));
    let hs = hs.map_err(start_err)?;
    sb.pid1 = hs
        .pid1
        .ok_or_else(|| start_err("the sandbox's PID 1 was not reported"))?;

    let sock = sock_dir.join(layout::SOCKET_NAME);
    let client = loop {
        if let Ok(c) = hearth_agent::client::connect_unix(&sock).await {
            break c;
        }
        if let Some(child) = sb.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            return Err(SandboxError::NotReady(format!(
                "the agent exited ({status}) before listening; its log:\n{}",
                log_tail(&log_path)
            )));
        }
        if begun.elapsed() > spec.ready_timeout {
            return Err(SandboxError::NotReady(format!(
                "no agent on {} after {:?}; its log:\n{}",
                sock.display(),
                spec.ready_timeout,
                log_tail(&log_path)
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    sb.client = Some(client);
    sb.timings = StartTimings {
        total: begun.elapsed(),
        // Job runners log this detail: it carries the notice every process-mode job log needs.
        detail: format!(
            "process sandbox {name}, cgroup {}\n{}",
            cgroups.version(),
            IsolationKind::Process.weakness_notice().unwrap_or_default()
        ),
    };
    tracing::info!(sandbox = %name, pid1 = sb.pid1, elapsed = ?sb.timings.total, "process sandbox ready");
    Ok(sb)
}

struct Handshake {
    pid1: Option<i32>,
    failed_step: Option<u32>,
    /// The workspace was chowned (no id-mapped mount): (path, uid, gid) to restore.
    chowned: Option<(PathBuf, u32, u32)>,
}

/// Parent side: wait for C1's pid, write its id maps, id-map (or chown) the workspace, release
/// the child, then collect the rest.
fn parent_handshake(
    mut c2p: io::PipeReader,
    mut p2c: io::PipeWriter,
    root: bool,
    (uid, gid): (u32, u32),
    idmap: Option<(RawFd, PathBuf)>,
) -> Result<Handshake, String> {
    let mut hs = Handshake {
        pid1: None,
        failed_step: None,
        chowned: None,
    };
    let mut msg = [0u8; 5];
    let mut released = false;
    loop {
        match c2p.read_exact(&mut msg) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(format!("reading from the sandbox child: {e}")),
        }
        let value = u32::from_le_bytes([msg[1], msg[2], msg[3], msg[4]]);
        match msg[0] {
            b'c' if !released => {
                write_maps(value, root, uid, gid)?;
                if let Some((tree, ws)) = &idmap {
                    hs.chowned = map_workspace(*tree, ws, value, uid, gid)?;
                }
                p2c.write_all(b"g")
                    .map_err(|e| format!("releasing the sandbox child: {e}"))?;
                released = true;
            }
            b'g' => hs.pid1 = i32::try_from(value).ok(),
            b'e' => hs.failed_step = Some(value),
            other => return Err(format!("unexpected message {other} from the sandbox child")),
        }
    }
    Ok(hs)
}

/// Makes the workspace tree id-mapped through the sandbox's user namespace, so sandbox root
/// reads and writes the host's root-owned files as its own. Filesystems without id-mapped mount
/// support get a recursive chown to the sandbox's root instead (undone at teardown).
fn map_workspace(
    tree: RawFd,
    ws: &Path,
    pid: u32,
    uid: u32,
    gid: u32,
) -> Result<Option<(PathBuf, u32, u32)>, String> {
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
    const AT_RECURSIVE: libc::c_uint = 0x8000;
    let ns = fs::File::open(format!("/proc/{pid}/ns/user"))
        .map_err(|e| format!("opening the sandbox's user namespace: {e}"))?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: ns.as_raw_fd() as u64,
    };
    // SAFETY: mount_setattr on our detached tree with a live, correctly sized mount_attr.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint | AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r == 0 {
        return Ok(None);
    }
    let e = io::Error::last_os_error();
    tracing::info!(workspace = %ws.display(), error = %e,
        "no id-mapped mount for the workspace; handing it to the sandbox by chown");
    let meta = fs::metadata(ws).map_err(|e| format!("{}: {e}", ws.display()))?;
    if meta.uid() == uid {
        return Ok(None);
    }
    let restore = (ws.to_path_buf(), meta.uid(), meta.gid());
    chown_tree(ws, uid, gid)
        .map_err(|e| format!("handing {} to the sandbox: {e}", ws.display()))?;
    Ok(Some(restore))
}

fn write_maps(pid: u32, root: bool, uid: u32, gid: u32) -> Result<(), String> {
    let w = |file: &str, text: String| {
        fs::write(format!("/proc/{pid}/{file}"), &text)
            .map_err(|e| format!("writing {file} {text:?} of the sandbox: {e}"))
    };
    if root {
        w("uid_map", format!("0 {uid} 65536\n"))?;
        w("gid_map", format!("0 {gid} 65536\n"))?;
    } else {
        w("setgroups", "deny".into())?;
        w("uid_map", format!("0 {uid} 1\n"))?;
        w("gid_map", format!("0 {gid} 1\n"))?;
    }
    Ok(())
}

/// A detached recursive clone of the mount at `p` (`open_tree(OPEN_TREE_CLONE)`), attached at
/// `/work` inside: the sandbox's uid need not be able to reach `p` by path.
fn open_tree(p: &Path) -> Result<OwnedFd, SandboxError> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const AT_RECURSIVE: libc::c_uint = 0x8000;
    let path = cpath(p)?;
    // SAFETY: open_tree with a NUL-terminated path; the returned fd is owned below.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            path.as_ptr(),
            OPEN_TREE_CLONE | AT_RECURSIVE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(SandboxError::Workspace(format!(
            "open_tree {}: {}",
            p.display(),
            io::Error::last_os_error()
        )));
    }
    // SAFETY: open_tree returned a new descriptor that nothing else owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) })
}

/// `chown -R` without following symlinks.
fn chown_tree(p: &Path, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid))?;
    if fs::symlink_metadata(p)?.is_dir() {
        for e in fs::read_dir(p)? {
            chown_tree(&e?.path(), uid, gid)?;
        }
    }
    Ok(())
}

fn log_tail(p: &Path) -> String {
    let text = fs::read_to_string(p).unwrap_or_default();
    let start = text.len().saturating_sub(4000);
    let start = (start..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    text[start..].to_string()
}

impl ProcessSandbox {
    /// The sandbox's resource name (cgroup and runtime directory).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The cgroup (tests inspect it).
    pub fn cgroup(&self) -> &SandboxCgroup {
        &self.cgroup
    }

    /// Host PID of the namespace's PID 1 (the agent).
    pub fn pid1(&self) -> i32 {
        self.pid1
    }

    /// Kills everything and removes what the sandbox made. `grace`: how long the agent may take
    /// to exit by itself first.
    fn cleanup(&mut self, grace: Duration) -> Result<(), String> {
        let mut errors = Vec::new();
        if let Some(mut child) = self.child.take() {
            let until = Instant::now() + grace;
            while Instant::now() < until && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(10));
            }
            // Breaking the lifeline makes C1 kill PID 1; kill it directly too.
            self.lifeline.take();
            if self.pid1 > 0 && matches!(child.try_wait(), Ok(None)) {
                // SAFETY: kill takes plain integers; pid1 is our grandchild, kept from reuse
                // because its parent C1 has not reaped it while C1 is alive.
                unsafe { libc::kill(self.pid1, libc::SIGKILL) };
            }
            self.cgroup.kill_all();
            if let Err(e) = child.wait() {
                errors.push(format!("waiting for the sandbox process: {e}"));
            }
        }
        self.lifeline.take();
        self.client.take();
        if let Err(e) = self.cgroup.remove(Duration::from_secs(10)) {
            errors.push(e.to_string());
        }
        if let Some((ws, uid, gid)) = self.restore_owner.take()
            && let Err(e) = chown_tree(&ws, uid, gid)
        {
            errors.push(format!("restoring the owner of {}: {e}", ws.display()));
        }
        if self.dir.exists()
            && let Err(e) = fs::remove_dir_all(&self.dir)
        {
            errors.push(format!("removing {}: {e}", self.dir.display()));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

impl Sandbox for ProcessSandbox {
    fn kind(&self) -> IsolationKind {
        IsolationKind::Process
    }

    fn client(&self) -> &Client {
        // `client` is only None during start (never handed out) and after teardown (consumed).
        self.client
            .as_ref()
            .expect("ProcessSandbox::client called on a sandbox that is not running")
    }

    fn timings(&self) -> StartTimings {
        self.timings.clone()
    }

    fn log_path(&self) -> Option<PathBuf> {
        Some(self.dir.join("agent.log"))
    }

    fn teardown(mut self: Box<Self>) -> BoxFuture<'static, Result<(), SandboxError>> {
        Box::pin(async move {
            // No Shutdown request: the agent would sync() every host filesystem first (a VM
            // guest needs that; here /work is a bind mount whose writes are already in the host's
            // page cache). Killing PID 1 ends the namespace and everything in it.
            tokio::task::spawn_blocking(move || self.cleanup(Duration::ZERO))
                .await
                .map_err(|e| SandboxError::Teardown(e.to_string()))?
                .map_err(SandboxError::Teardown)
        })
    }
}

impl Drop for ProcessSandbox {
    fn drop(&mut self) {
        if let Err(e) = self.cleanup(Duration::ZERO) {
            tracing::warn!(sandbox = %self.name, error = %e, "process sandbox cleanup");
        }
    }
}
