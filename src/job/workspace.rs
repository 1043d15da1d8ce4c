//! The job's workspace on the host: a fresh directory under the workspace root that the sandbox
//! gets as `/work` (VM: copied into a disk image of the job's disk-space size; process: bound),
//! the paths inside it, and `setup.fs.extras` (the job's `files` plus one script per docker step
//! under `.sourcegraph-executor/`, written with mode 0777 and `modifiedAt` as mtime, as the
//! original does).

use crate::job::logs::LogSink;
use crate::queue::types::Job;
use std::path::{Component, Path, PathBuf};
use std::time::{Instant, SystemTime};

/// Where step scripts go, relative to the workspace (the original's `ScriptsPath`).
pub const SCRIPTS_DIR: &str = ".sourcegraph-executor";

/// The workspace as the sandbox sees it.
pub const GUEST_WORKSPACE: &str = "/work";

/// Workspace errors (texts follow the original where it has one).
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("refusing to write outside of working directory")]
    Outside,
    #[error("invalid repo path {0:?} not a subdirectory of the workspace")]
    RepoOutside(String),
    #[error("invalid directory {0:?}: it leaves the workspace")]
    DirOutside(String),
    #[error("file {path:?}: invalid modifiedAt {value:?}")]
    ModifiedAt { path: String, value: String },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> WorkspaceError {
    let context = context.into();
    move |source| WorkspaceError::Io { context, source }
}

/// `rel` joined under `root`, lexically cleaned like Go's `filepath.Join` (a leading `/` is just
/// joined, `..` is resolved); `None` when the result leaves `root`.
pub fn join_inside(root: &Path, rel: &str) -> Option<PathBuf> {
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for c in Path::new(rel).components() {
        match c {
            Component::Normal(p) => parts.push(p),
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    let mut out = root.to_path_buf();
    out.extend(parts);
    Some(out)
}

/// The guest working directory for a step's `dir`: `/work/<dir>`, kept inside `/work`.
pub fn guest_dir(dir: &str) -> Result<String, WorkspaceError> {
    join_inside(Path::new(GUEST_WORKSPACE), dir)
        .map(|p| p.to_string_lossy().into_owned())
        .ok_or_else(|| WorkspaceError::DirOutside(dir.to_string()))
}

/// The script file name of docker step `index` (the original's `ScriptNameFromJobStep`).
pub fn script_name(job: &Job, index: usize) -> String {
    format!(
        "{}.{}_{}@{}.sh",
        job.id,
        index,
        job.repository_name.replace('/', "_"),
        job.commit
    )
}

/// Runs the script under bash when the sandbox has it (first run only), else keeps going with
/// sh; then no errexit, and every command traced (`set -x`), so a step's exit code is that of
/// its last command, as in the original.
const SCRIPT_PREAMBLE: &str = r#"
# hearth: on the first run, switch to bash when there is one.
if [ -z "$1" ]; then
  bash_path=$(command -p -v bash || true)
  if [ -n "$bash_path" ]; then
    exec "$bash_path" "$0" skip-check
  elif [ -x /bin/bash ]; then
    exec /bin/bash "$0" skip-check
  fi
fi

set +e
set -x
"#;

/// A docker step's script: the preamble, a blank line, the commands one per line.
pub fn build_script(commands: &[String]) -> String {
    let mut s = String::from(SCRIPT_PREAMBLE);
    s.push('\n');
    for c in commands {
        s.push_str(c);
        s.push('\n');
    }
    s
}

/// One file to write (content already fetched).
#[derive(Debug, Clone)]
pub struct WorkspaceFile {
    pub path: PathBuf,
    pub content: Vec<u8>,
    pub modified_at: Option<String>,
}

/// A job's host workspace directory. Dropped without [`Workspace::remove`] or
/// [`Workspace::keep`] (a handler dropped mid-job), it is removed synchronously.
#[derive(Debug)]
pub struct Workspace {
    path: PathBuf,
    armed: bool,
}

impl Drop for Workspace {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

impl Workspace {
    /// Creates `<root>/workspace-<job id>-<random>`.
    pub fn create(root: &Path, job_id: i64) -> Result<Workspace, WorkspaceError> {
        std::fs::create_dir_all(root).map_err(io(format!("creating {}", root.display())))?;
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let path = root.join(format!("workspace-{job_id}-{}", &suffix[..12]));
        std::fs::create_dir(&path).map_err(io(format!("creating {}", path.display())))?;
        Ok(Workspace { path, armed: true })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the repository is cloned: the workspace or `repositoryDirectory` inside it.
    pub fn repo_dir(&self, repository_directory: &str) -> Result<PathBuf, WorkspaceError> {
        if repository_directory.is_empty() {
            return Ok(self.path.clone());
        }
        let dir = join_inside(&self.path, repository_directory)
            .ok_or_else(|| WorkspaceError::RepoOutside(repository_directory.to_string()))?;
        std::fs::create_dir_all(&dir).map_err(io("creating repo directory"))?;
        Ok(dir)
    }

    /// A `files` entry's host path (inside the workspace, else the original's refusal).
    pub fn file_path(&self, rel: &str) -> Result<PathBuf, WorkspaceError> {
        join_inside(&self.path, rel).ok_or(WorkspaceError::Outside)
    }

    /// Leaves the directory in place (`EXECUTOR_KEEP_WORKSPACES`).
    pub fn keep(mut self) -> PathBuf {
        self.armed = false;
        self.path.clone()
    }

    /// Removes the directory and everything in it.
    pub async fn remove(mut self) -> Result<(), WorkspaceError> {
        self.armed = false;
        let path = self.path.clone();
        let res = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&path))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        match res {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(WorkspaceError::Io {
                context: format!("removing {}", self.path.display()),
                source: e,
            }),
        }
    }
}

fn parse_mtime(path: &Path, value: &str) -> Result<SystemTime, WorkspaceError> {
    let t = time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
        .map_err(|_| WorkspaceError::ModifiedAt {
            path: path.display().to_string(),
            value: value.to_string(),
        })?;
    Ok(SystemTime::from(t))
}

fn write_one(f: &WorkspaceFile) -> Result<(), WorkspaceError> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = f.path.parent() {
        std::fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
    }
    std::fs::write(&f.path, &f.content).map_err(io(format!("writing {}", f.path.display())))?;
    std::fs::set_permissions(&f.path, std::fs::Permissions::from_mode(0o777))
        .map_err(io(format!("chmod {}", f.path.display())))?;
    if let Some(m) = &f.modified_at {
        let t = parse_mtime(&f.path, m)?;
        let file = std::fs::File::options()
            .write(true)
            .open(&f.path)
            .map_err(io(format!("opening {}", f.path.display())))?;
        file.set_times(std::fs::FileTimes::new().set_accessed(t).set_modified(t))
            .map_err(io(format!("setting times of {}", f.path.display())))?;
    }
    Ok(())
}

/// `setup.fs.extras`: writes `files` (no entry when there is nothing to write, as the original),
/// one `Wrote <path> in <duration>` line per file; exit code 0, or 1 on failure.
pub fn write_files(sink: &LogSink, files: &[WorkspaceFile]) -> Result<(), WorkspaceError> {
    if files.is_empty() {
        return Ok(());
    }
    let entry = sink.open("setup.fs.extras", Vec::new());
    for f in files {
        let started = Instant::now();
        if let Err(e) = write_one(f) {
            entry.finish(1);
            return Err(e);
        }
        entry.write_raw(&format!(
            "Wrote {} in {:?}\n",
            f.path.display(),
            started.elapsed()
        ));
    }
    entry.finish(0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_stay_inside() {
        let root = Path::new("/ws");
        assert_eq!(join_inside(root, "a/b").unwrap(), Path::new("/ws/a/b"));
        assert_eq!(join_inside(root, "/etc/x").unwrap(), Path::new("/ws/etc/x"));
        assert_eq!(join_inside(root, "a/../b").unwrap(), Path::new("/ws/b"));
        assert_eq!(join_inside(root, "").unwrap(), Path::new("/ws"));
        assert!(join_inside(root, "../x").is_none());
        assert!(join_inside(root, "a/../../x").is_none());
        assert_eq!(guest_dir("web").unwrap(), "/work/web");
        assert_eq!(guest_dir(".").unwrap(), "/work");
        assert!(guest_dir("..").is_err());
    }

    #[test]
    fn script_names_and_content() {
        let job = Job {
            id: 42,
            repository_name: "github.com/foo/bar".into(),
            commit: "abc".into(),
            ..Default::default()
        };
        assert_eq!(script_name(&job, 1), "42.1_github.com_foo_bar@abc.sh");
        let s = build_script(&["echo a".into(), "echo b".into()]);
        assert!(s.ends_with("set -x\n\necho a\necho b\n"), "{s}");
    }
}
