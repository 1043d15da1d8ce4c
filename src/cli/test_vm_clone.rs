//! The `--repo R --revision REV` part of `hearth test-vm`: where the clone comes from, cloning
//! into a fresh host workspace through the job runner's own code ([`hearth::job::git`],
//! [`hearth::job::workspace`]), with the `setup.git.*` entries printed to stderr as they finish,
//! and checking what the guest sees.

use anyhow::{Context, bail};
use hearth::config::Config;
use hearth::job::git;
use hearth::job::git_proxy::ProxyTarget;
use hearth::job::logs::{LogSink, LogTransport, SinkOptions};
use hearth::job::redact::Redactor;
use hearth::job::workspace::Workspace;
use hearth::queue::client::ClientError;
use hearth::queue::types::{ExecutionLogEntry, Job};
use hearth::queue::worker::CancelSignal;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// What the guest runs to report the checked-out commit (`-c safe.directory=*`: the workspace's
/// files belong to whoever ran hearth on the host, not necessarily the guest's user).
pub const GUEST_HEAD_ARGV: [&str; 8] = [
    "git",
    "-c",
    "safe.directory=*",
    "-C",
    "/work",
    "log",
    "-1",
    "--format=%H",
];

/// The clone `hearth test-vm --repo` makes.
#[derive(Debug, Clone)]
pub struct CloneRequest {
    pub repo: String,
    pub revision: String,
    /// The workspace disk size (`EXECUTOR_FIRECRACKER_DISK_SPACE`).
    pub disk_mib: u64,
    target: ProxyTarget,
    password: String,
}

impl CloneRequest {
    /// Checks the arguments and works out the upstream: `git_upstream`, else
    /// `HEARTH_GIT_UPSTREAM`, else the frontend URL. Authenticates like a job without a token
    /// (`token-executor <EXECUTOR_FRONTEND_PASSWORD>`), as the original's test-vm does.
    pub fn new(
        config: &Config,
        repo: &str,
        revision: &str,
        git_upstream: Option<String>,
    ) -> anyhow::Result<CloneRequest> {
        let repo = repo.trim_matches('/');
        if repo.is_empty() {
            bail!("--repo is empty");
        }
        if revision.is_empty() || revision.starts_with('-') {
            bail!("--revision {revision:?} is not a revision");
        }
        let upstream = git_upstream
            .or_else(|| std::env::var("HEARTH_GIT_UPSTREAM").ok())
            .filter(|u| !u.is_empty())
            .or_else(|| config.frontend_url.clone());
        let Some(upstream_base) = upstream else {
            bail!(
                "--repo needs a git server: set EXECUTOR_FRONTEND_URL (clones come from \
                 <frontend>/.executors/git/<repo>), or --git-upstream / HEARTH_GIT_UPSTREAM"
            );
        };
        let parsed = reqwest::Url::parse(&upstream_base)
            .with_context(|| format!("git upstream {upstream_base:?}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            bail!("git upstream {upstream_base:?}: only http and https are supported");
        }
        Ok(CloneRequest {
            repo: repo.to_string(),
            revision: revision.to_string(),
            disk_mib: (config.disk_space_bytes >> 20).max(64),
            target: ProxyTarget {
                upstream_base,
                repository: repo.to_string(),
                authorization: ProxyTarget::authorization_for("", &config.frontend_password),
                job_id: 0,
                executor_name: config.executor_name.clone(),
            },
            password: config.frontend_password.clone(),
        })
    }

    pub fn upstream(&self) -> &str {
        &self.target.upstream_base
    }
}

/// Prints each finished log entry to stderr (a terminal stands in for the queue's log API).
struct PrintTransport {
    next: AtomicI64,
}

impl LogTransport for PrintTransport {
    async fn add(&self, entry: &ExecutionLogEntry) -> Result<i64, ClientError> {
        eprintln!("hearth: {}: {}", entry.key, entry.command.join(" "));
        Ok(self.next.fetch_add(1, Ordering::SeqCst))
    }

    async fn update(&self, _id: i64, entry: &ExecutionLogEntry) -> Result<(), ClientError> {
        if let Some(code) = entry.exit_code {
            for line in entry.out.lines() {
                eprintln!("    {line}");
            }
            eprintln!("hearth: {} exited with {code}", entry.key);
        }
        Ok(())
    }
}

/// A fresh workspace (under `$TMPDIR/hearth-workspaces`) with the repository checked out; it
/// is removed again when the clone fails.
pub async fn prepare(c: &CloneRequest) -> anyhow::Result<Workspace> {
    let root = std::env::temp_dir().join("hearth-workspaces");
    let ws = Workspace::create(&root, 0).context("creating the workspace")?;
    let job = Job {
        repository_name: c.repo.clone(),
        commit: c.revision.clone(),
        ..Default::default()
    };
    let sink = LogSink::new(
        PrintTransport {
            next: AtomicI64::new(1),
        },
        Redactor::for_job(&c.password, &BTreeMap::new()),
        SinkOptions::default(),
    );
    eprintln!(
        "hearth: cloning {} at {} from {}",
        c.repo,
        c.revision,
        c.upstream()
    );
    let cloned = git::clone_repo(
        &sink,
        &job,
        ws.path(),
        c.target.clone(),
        &CancelSignal::default(),
    )
    .await;
    let _ = sink.flush(Duration::from_secs(5)).await;
    match cloned {
        Ok(()) => Ok(ws),
        Err(e) => {
            let _ = ws.remove().await;
            bail!(
                "cloning {} at {} from {}: {e} (the git output is above)",
                c.repo,
                c.revision,
                c.upstream()
            )
        }
    }
}

/// The guest's HEAD must be the requested revision when that is a full commit hash (a branch or
/// tag name is only printed).
pub fn check_head(revision: &str, head: &str) -> Result<(), String> {
    let is_hash = revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit());
    if head.len() != 40 || !head.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("the guest reported {head:?} for /work's HEAD"));
    }
    if is_hash && !head.eq_ignore_ascii_case(revision) {
        return Err(format!(
            "the guest's /work is at {head}, not at the requested {revision}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth::config::ConfigFlags;

    fn config(env: &[(&str, &str)]) -> Config {
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load(&|n| env.get(n).cloned(), &ConfigFlags::default()).unwrap()
    }

    #[test]
    fn upstream_and_credentials() {
        let c = config(&[
            ("EXECUTOR_FRONTEND_URL", "https://sg.example.com"),
            ("EXECUTOR_FRONTEND_PASSWORD", "hunter2hunter2hunter2"),
            ("EXECUTOR_QUEUE_NAME", "batches"),
            ("EXECUTOR_FIRECRACKER_DISK_SPACE", "2G"),
        ]);
        let r = CloneRequest::new(&c, "/github.com/a/b/", "main", None).unwrap();
        assert_eq!(r.repo, "github.com/a/b");
        assert_eq!(r.upstream(), "https://sg.example.com");
        assert_eq!(
            r.target.authorization,
            "token-executor hunter2hunter2hunter2"
        );
        assert_eq!(r.disk_mib, 2048);
        let r = CloneRequest::new(&c, "r", "v", Some("http://127.0.0.1:9".into())).unwrap();
        assert_eq!(r.upstream(), "http://127.0.0.1:9");
    }

    #[test]
    fn bad_arguments_are_refused() {
        let c = config(&[]);
        let err = |repo: &str, rev: &str, up: Option<&str>| {
            CloneRequest::new(&c, repo, rev, up.map(str::to_string))
                .unwrap_err()
                .to_string()
        };
        assert!(err("", "main", Some("http://x")).contains("--repo is empty"));
        assert!(err("r", "--upload-pack=x", Some("http://x")).contains("not a revision"));
        assert!(err("r", "main", Some("ftp://x")).contains("only http and https"));
    }

    #[test]
    fn head_checks() {
        let h = "0123456789abcdef0123456789abcdef01234567";
        assert!(check_head(h, h).is_ok());
        assert!(check_head("main", h).is_ok());
        assert!(check_head(&h.to_uppercase(), h).is_ok());
        assert!(check_head(&h.replace('0', "f"), h).is_err());
        assert!(check_head("main", "fatal: not a git repository").is_err());
    }
}
