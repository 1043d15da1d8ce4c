//! Expected log entries for the job e2e tests, and comparisons that ignore what legitimately
//! varies (git progress output, the interleaving of stdout and stderr).

use super::git_server::REPO;
use super::{E2e, Entry, image_note};

pub fn s(items: &[&str]) -> Vec<String> {
    items.iter().map(|x| x.to_string()).collect()
}

/// Checks the `setup.git.*` entries at the front of `logs` (after `setup.fs.workspace`) and
/// returns the rest.
pub fn check_git<'a>(
    logs: &'a [Entry],
    repo_dir: &str,
    commit: &str,
    fetch_flags: &[&str],
    sparse: &[&str],
) -> &'a [Entry] {
    let r = if repo_dir.is_empty() {
        "$WS".to_string()
    } else {
        format!("$WS/{repo_dir}")
    };
    let git = |args: &[&str]| [s(&["git", "-C", &r]), s(args)].concat();
    let mut fetch = s(&[
        "-c",
        "protocol.version=2",
        "fetch",
        "--progress",
        "--no-recurse-submodules",
    ]);
    fetch.extend(s(fetch_flags));
    fetch.extend(s(&["origin", commit]));
    let fetch: Vec<&str> = fetch.iter().map(String::as_str).collect();
    let mut expected = vec![
        ("setup.git.init", git(&["init"])),
        (
            "setup.git.add-remote",
            git(&["remote", "add", "origin", &format!("$PROXY/{REPO}")]),
        ),
        (
            "setup.git.disable-gc",
            git(&["config", "--local", "gc.auto", "0"]),
        ),
        ("setup.git.fetch", git(&fetch)),
    ];
    if !sparse.is_empty() {
        expected.push((
            "setup.git.sparse-checkout-config",
            git(&["config", "--local", "core.sparseCheckout", "1"]),
        ));
        let mut set = vec!["sparse-checkout", "set", "--no-cone", "--"];
        set.extend(sparse);
        expected.push(("setup.git.sparse-checkout-set", git(&set)));
        expected.push((
            "setup.git.checkout",
            git(&[
                "-c",
                "protocol.version=2",
                "checkout",
                "--progress",
                "--force",
                commit,
            ]),
        ));
    } else {
        expected.push((
            "setup.git.checkout",
            git(&["checkout", "--progress", "--force", commit]),
        ));
    }
    expected.push((
        "setup.git.set-remote",
        git(&["remote", "set-url", "origin", REPO]),
    ));
    assert!(logs.len() >= expected.len(), "{logs:#?}");
    for (entry, (key, command)) in logs.iter().zip(&expected) {
        assert_eq!((entry.key.as_str(), &entry.command), (*key, command));
        assert_eq!(entry.exit_code, Some(0), "{entry:#?}");
        match *key {
            "setup.git.init" => assert_eq!(
                entry.stdout(),
                [format!("Initialized empty Git repository in {r}/.git/")],
                "{entry:#?}"
            ),
            "setup.git.fetch" => {
                assert!(
                    entry.out.lines().all(|l| l.starts_with("stderr: ")),
                    "{entry:#?}"
                );
                assert!(
                    entry
                        .stderr()
                        .contains(&format!("From $PROXY/{REPO}").as_str()),
                    "{entry:#?}"
                );
                assert!(
                    entry
                        .stderr()
                        .iter()
                        .any(|l| l.contains(&format!("{commit} -> FETCH_HEAD"))),
                    "{entry:#?}"
                );
            }
            "setup.git.checkout" => assert!(
                entry
                    .stderr()
                    .iter()
                    .any(|l| l.starts_with(&format!("HEAD is now at {}", &commit[..7]))),
                "{entry:#?}"
            ),
            _ => assert_eq!(entry.out, "", "{entry:#?}"),
        }
    }
    &logs[expected.len()..]
}

pub fn extras(paths: &[&str]) -> Entry {
    Entry {
        key: "setup.fs.extras".into(),
        command: vec![],
        exit_code: Some(0),
        out: paths
            .iter()
            .map(|p| format!("Wrote $WS/{p} in $D\n"))
            .collect(),
    }
}

pub fn step(
    key: &str,
    script: &str,
    exit: i32,
    image: &str,
    stdout: &[&str],
    stderr: &[&str],
) -> Entry {
    let mut out = format!("stderr: {}\n", image_note(image));
    for l in stderr {
        out.push_str(&format!("stderr: {l}\n"));
    }
    for l in stdout {
        out.push_str(&format!("stdout: {l}\n"));
    }
    Entry {
        key: key.into(),
        command: s(&["/bin/sh", &format!("/work/.sourcegraph-executor/{script}")]),
        exit_code: Some(exit),
        out,
    }
}

/// Compares entries; step outputs are compared per stream (stdout and stderr arrive on two
/// pipes, so their interleaving is not deterministic).
pub fn assert_entries(actual: &[Entry], expected: &[Entry]) {
    let keys = |v: &[Entry]| v.iter().map(|e| e.key.clone()).collect::<Vec<_>>();
    assert_eq!(keys(actual), keys(expected), "{actual:#?}");
    for (a, e) in actual.iter().zip(expected) {
        assert_eq!(
            (&a.key, &a.command, a.exit_code),
            (&e.key, &e.command, e.exit_code),
            "{a:#?}"
        );
        if a.key.starts_with("step.") {
            assert_eq!(a.stdout(), e.stdout(), "{a:#?}");
            assert_eq!(a.stderr(), e.stderr(), "{a:#?}");
            assert!(
                a.out
                    .lines()
                    .all(|l| l.starts_with("stdout: ") || l.starts_with("stderr: "))
            );
        } else {
            assert_eq!(a.out, e.out, "{a:#?}");
        }
    }
}

/// The step script name for a job cloning [`REPO`] at `commit` (empty: a job without a repo).
pub fn script(id: i64, index: usize, commit: &str) -> String {
    let repo = if commit.is_empty() {
        String::new()
    } else {
        REPO.replace('/', "_")
    };
    format!("{id}.{index}_{repo}@{commit}.sh")
}

/// The git server saw only requests for this job, carrying its token and identity.
pub fn assert_proxy_auth(h: &E2e, id: i64) {
    let seen = h.git.seen();
    assert!(!seen.is_empty());
    for r in seen {
        assert!(
            r.path.starts_with(&format!("/.executors/git/{REPO}/")),
            "{r:?}"
        );
        let auth = r.authorization.unwrap_or_default();
        assert!(auth.starts_with("Bearer ") && auth.len() > 20, "{auth}");
        assert_eq!(r.job_id.as_deref(), Some(id.to_string().as_str()));
        assert_eq!(r.executor.as_deref(), Some(h.config.executor_name.as_str()));
        assert_eq!(r.actor.as_deref(), Some("internal"));
    }
}

/// Processes whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if !e
            .file_name()
            .to_string_lossy()
            .chars()
            .all(|c| c.is_ascii_digit())
        {
            continue;
        }
        let cmd = std::fs::read(e.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        if cmd.contains(needle) {
            out.push(cmd);
        }
    }
    out
}
