//! Cloning the job's repository into the workspace on the host, with the original's commands and
//! log keys (`setup.git.init`, `add-remote`, `disable-gc`, `fetch`, `sparse-checkout-config`,
//! `sparse-checkout-set`, `checkout`, `set-remote`), through the per-job [`GitProxy`].
//!
//! git gets `GIT_TERMINAL_PROMPT=0` and `GIT_LFS_SKIP_SMUDGE=1` like the original, and in
//! addition no system or global config (so no host credential helper or URL rewrite applies).

use crate::job::git_proxy::{GitProxy, GitProxyError, ProxyTarget};
use crate::job::host_cmd::{CommandError, HostCommand, run_logged};
use crate::job::logs::LogSink;
use crate::queue::types::Job;
use crate::queue::worker::CancelSignal;
use std::path::Path;

/// Clone errors (the original's `failed <key>: …`).
#[derive(Debug, thiserror::Error)]
pub enum CloneError {
    #[error("spawning git proxy server: {0}")]
    Proxy(#[from] GitProxyError),
    #[error("failed {key}: {source}")]
    Command {
        key: String,
        #[source]
        source: CommandError,
    },
}

/// The environment of every git command.
pub fn git_env() -> Vec<(String, String)> {
    [
        ("GIT_TERMINAL_PROMPT", "0"),
        ("GIT_LFS_SKIP_SMUDGE", "1"),
        ("GIT_CONFIG_NOSYSTEM", "1"),
        ("GIT_CONFIG_GLOBAL", "/dev/null"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The command sequence for `job`, cloning into `repo` from `clone_url`.
pub fn clone_commands(job: &Job, repo: &Path, clone_url: &str) -> Vec<HostCommand> {
    let r = repo.to_string_lossy().into_owned();
    let git = |key: &str, args: &[&str]| HostCommand {
        key: key.to_string(),
        argv: [strings(&["git", "-C", &r]), strings(args)].concat(),
        env: git_env(),
        cwd: None,
    };
    let sparse = !job.sparse_checkout.is_empty();
    let mut fetch = strings(&[
        "-c",
        "protocol.version=2",
        "fetch",
        "--progress",
        "--no-recurse-submodules",
    ]);
    if job.fetch_tags {
        fetch.push("--tags".into());
    }
    if job.shallow_clone {
        if !job.fetch_tags {
            fetch.push("--no-tags".into());
        }
        fetch.push("--depth=1".into());
    }
    if sparse {
        fetch.push("--filter=blob:none".into());
    }
    fetch.push("origin".into());
    fetch.push(job.commit.clone());
    let fetch: Vec<&str> = fetch.iter().map(String::as_str).collect();

    let mut cmds = vec![
        git("setup.git.init", &["init"]),
        git(
            "setup.git.add-remote",
            &["remote", "add", "origin", clone_url],
        ),
        git(
            "setup.git.disable-gc",
            &["config", "--local", "gc.auto", "0"],
        ),
        git("setup.git.fetch", &fetch),
    ];
    if sparse {
        cmds.push(git(
            "setup.git.sparse-checkout-config",
            &["config", "--local", "core.sparseCheckout", "1"],
        ));
        let mut set = vec!["sparse-checkout", "set", "--no-cone", "--"];
        set.extend(job.sparse_checkout.iter().map(String::as_str));
        cmds.push(git("setup.git.sparse-checkout-set", &set));
    }
    // A sparse checkout fetches blobs through the proxy, hence protocol v2 there too.
    let checkout: &[&str] = if sparse {
        &[
            "-c",
            "protocol.version=2",
            "checkout",
            "--progress",
            "--force",
            &job.commit,
        ]
    } else {
        &["checkout", "--progress", "--force", &job.commit]
    };
    cmds.push(git("setup.git.checkout", checkout));
    // Indexers rely on origin naming the upstream repository.
    cmds.push(git(
        "setup.git.set-remote",
        &["remote", "set-url", "origin", &job.repository_name],
    ));
    cmds
}

/// Clones `job`'s repository into `repo` through a proxy to `target`; the proxy is closed before
/// returning, whatever happened.
pub async fn clone_repo(
    sink: &LogSink,
    job: &Job,
    repo: &Path,
    target: ProxyTarget,
    cancel: &CancelSignal,
) -> Result<(), CloneError> {
    let proxy = GitProxy::start(target).await?;
    let url = proxy.clone_url(&job.repository_name);
    let mut result = Ok(());
    for cmd in clone_commands(job, repo, &url) {
        if let Err(source) = run_logged(sink, &cmd, cancel).await {
            result = Err(CloneError::Command {
                key: cmd.key.clone(),
                source,
            });
            break;
        }
    }
    proxy.close().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(c: &HostCommand) -> String {
        c.argv.join(" ")
    }

    #[test]
    fn shallow_sparse_fetch_flags_follow_the_original() {
        let job = Job {
            repository_name: "github.com/a/b".into(),
            commit: "c0ffee".into(),
            shallow_clone: true,
            sparse_checkout: vec!["web/*".into()],
            ..Default::default()
        };
        let cmds = clone_commands(
            &job,
            Path::new("/ws/repo"),
            "http://127.0.0.1:1/github.com/a/b",
        );
        let keys: Vec<&str> = cmds.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "setup.git.init",
                "setup.git.add-remote",
                "setup.git.disable-gc",
                "setup.git.fetch",
                "setup.git.sparse-checkout-config",
                "setup.git.sparse-checkout-set",
                "setup.git.checkout",
                "setup.git.set-remote"
            ]
        );
        assert_eq!(
            argv(&cmds[3]),
            "git -C /ws/repo -c protocol.version=2 fetch --progress --no-recurse-submodules \
             --no-tags --depth=1 --filter=blob:none origin c0ffee"
        );
        assert_eq!(
            argv(&cmds[5]),
            "git -C /ws/repo sparse-checkout set --no-cone -- web/*"
        );
        assert_eq!(
            argv(&cmds[6]),
            "git -C /ws/repo -c protocol.version=2 checkout --progress --force c0ffee"
        );
        assert_eq!(
            argv(&cmds[7]),
            "git -C /ws/repo remote set-url origin github.com/a/b"
        );
    }

    #[test]
    fn full_clone_with_tags() {
        let job = Job {
            repository_name: "r".into(),
            commit: "c".into(),
            fetch_tags: true,
            shallow_clone: true,
            ..Default::default()
        };
        let cmds = clone_commands(&job, Path::new("/w"), "http://x/r");
        assert_eq!(cmds.len(), 6);
        assert_eq!(
            argv(&cmds[3]),
            "git -C /w -c protocol.version=2 fetch --progress --no-recurse-submodules --tags \
             --depth=1 origin c"
        );
        assert_eq!(argv(&cmds[4]), "git -C /w checkout --progress --force c");
    }
}
