//! The job corpus cases, shared by tests/job_e2e.rs (process sandboxes) and tests/vm_job.rs
//! (microVMs, through the VM harness): each submits a corpus job, runs a worker and checks the
//! final state and the exact log entries. What differs between the modes is in [`super::Setup`]
//! (the sandbox start/teardown texts, sizes, time limits).

use super::expect::*;
use super::files_frontend::FilesFrontend;
use super::git_server::{REPO, SLOW_REPO};
use super::*;
use hearth::queue::store::JobState;
use std::time::{Duration, Instant};

pub async fn docker_steps_full_clone(h: &E2e) {
    let id = h.submit("docker-steps.json");
    let sum = h.work(1, 1, h.timing().job_limit).await;
    assert_eq!(sum.completed, 1, "{:?}", h.record(id));
    assert_eq!(h.record(id).state, JobState::Completed);
    let logs = h.normalized_logs(id);
    assert_eq!(logs[0], h.workspace_entry());
    let rest = check_git(&logs[1..], "repository", &h.git.head, &[], &[]);
    let (s0, s1) = (script(id, 0, &h.git.head), script(id, 1, &h.git.head));
    let mut expected = vec![
        extras(&[
            &format!(".sourcegraph-executor/{s0}"),
            &format!(".sourcegraph-executor/{s1}"),
        ]),
        h.sandbox_start_entry(),
        step(
            "step.docker.hello",
            &s0,
            0,
            "alpine:3",
            &["hello world", "hello again", "/work/repository"],
            &["+ echo 'hello world'", "+ cat README.md", "+ pwd"],
        ),
        step(
            "step.docker.1",
            &s1,
            0,
            "busybox",
            &["second commit", "first commit"],
            &["+ git log --format=%s", "+ echo to-stderr", "to-stderr"],
        ),
    ];
    expected.extend(h.teardown_entries());
    assert_entries(rest, &expected);
    assert_proxy_auth(h, id);
    h.assert_clean();
}

pub async fn cli_step_legacy_path_with_tags(h: &E2e) {
    let id = h.run_to_completion("cli-step.json").await;
    let logs = h.normalized_logs(id);
    assert_eq!(logs[0], h.workspace_entry());
    let rest = check_git(&logs[1..], "repository", &h.git.head, &["--tags"], &[]);
    let s0 = script(id, 0, &h.git.head);
    let mut expected = vec![
        extras(&[
            "bin/src",
            "input.json",
            &format!(".sourcegraph-executor/{s0}"),
        ]),
        h.sandbox_start_entry(),
        step(
            "step.docker.tags",
            &s0,
            0,
            "alpine:3",
            &["v1"],
            &["+ git tag"],
        ),
        Entry {
            key: "step.src.batch-exec".into(),
            command: s(&[
                "src",
                "batch",
                "exec",
                "-f",
                "input.json",
                "-repo",
                "repository",
            ]),
            exit_code: Some(0),
            out: "stdout: src batch exec -f input.json -repo repository\n\
                  stdout: cwd /work/repository\n"
                .into(),
        },
    ];
    expected.extend(h.teardown_entries());
    assert_entries(rest, &expected);
    h.assert_clean();
}

pub async fn shallow_clone_of_an_older_commit(h: &E2e) {
    let id = h.run_to_completion("shallow.json").await;
    let logs = h.normalized_logs(id);
    let rest = check_git(
        &logs[1..],
        "",
        &h.git.first,
        &["--no-tags", "--depth=1"],
        &[],
    );
    let s0 = script(id, 0, &h.git.first);
    let mut expected = vec![
        extras(&[&format!(".sourcegraph-executor/{s0}")]),
        h.sandbox_start_entry(),
        step(
            "step.docker.inspect",
            &s0,
            0,
            "alpine:3",
            &["1", "true", "hello", REPO],
            &[
                "+ git rev-list --count HEAD",
                "+ git rev-parse --is-shallow-repository",
                "+ git tag",
                "+ cat README.md",
                "+ git remote get-url origin",
            ],
        ),
    ];
    expected.extend(h.teardown_entries());
    assert_entries(rest, &expected);
    h.assert_clean();
}

pub async fn sparse_checkout_fetches_only_the_patterns(h: &E2e) {
    let id = h.run_to_completion("sparse.json").await;
    let logs = h.normalized_logs(id);
    let rest = check_git(
        &logs[1..],
        "repository",
        &h.git.head,
        &["--no-tags", "--depth=1", "--filter=blob:none"],
        &["services/api/*"],
    );
    let s0 = script(id, 0, &h.git.head);
    let mut expected = vec![
        extras(&[&format!(".sourcegraph-executor/{s0}")]),
        h.sandbox_start_entry(),
        step(
            "step.docker.step.0.run",
            &s0,
            0,
            "alpine:3",
            &[".git", "services", "api", "handler.go", "main.go"],
            &["+ ls -A", "+ ls services", "+ ls services/api"],
        ),
    ];
    expected.extend(h.teardown_entries());
    assert_entries(rest, &expected);
    assert_proxy_auth(h, id);
    h.assert_clean();
}

pub async fn files_are_written_with_mode_and_mtime(h: &E2e) {
    let id = h.run_to_completion("files.json").await;
    let logs = h.normalized_logs(id);
    let s0 = script(id, 0, "");
    let mut expected = vec![
        h.workspace_entry(),
        extras(&[
            "input.json",
            "nested/dir/data.bin",
            "stamped.txt",
            &format!(".sourcegraph-executor/{s0}"),
        ]),
        h.sandbox_start_entry(),
        step(
            "step.docker.show",
            &s0,
            0,
            "alpine:3",
            &[
                "{\"steps\":[]}",
                " 00 01 02 ff fe",
                "777 1709287200 stamped.txt",
                "777 0 nested/dir/data.bin",
                &s0,
            ],
            &[
                "+ cat input.json",
                "+ echo",
                "+ od -An -tx1 nested/dir/data.bin",
                "+ stat -c '%a %Y %n' stamped.txt nested/dir/data.bin",
                "+ ls -A .sourcegraph-executor",
            ],
        ),
    ];
    expected.extend(h.teardown_entries());
    // data.bin's mtime is "now": only its mode is compared.
    let mut logs = logs;
    let show = &mut logs[3];
    show.out = show
        .out
        .lines()
        .map(|l| match l.strip_suffix(" nested/dir/data.bin") {
            Some(p) if l.starts_with("stdout: 777 ") => {
                let _ = p;
                "stdout: 777 0 nested/dir/data.bin\n".to_string()
            }
            _ => format!("{l}\n"),
        })
        .collect();
    assert_entries(&logs, &expected);
    h.assert_clean();
}

pub async fn files_store_reference_is_fetched_from_the_frontend(h: &E2e) {
    // The embedded queue has no file store: the fetch fails with the frontend's status, before
    // any sandbox is started.
    let id = h.submit("files-store.json");
    h.work(1, 1, h.timing().job_limit).await;
    let rec = h.record(id);
    assert_eq!(rec.state, JobState::Failed);
    assert_eq!(
        rec.failure_message.as_deref(),
        Some(
            "creating workspace: failed to get workspace files: fetching \
             batch-changes/spec123/file456: unexpected status code 404"
        )
    );
    let mut expected = vec![h.workspace_entry()];
    expected.push(h.teardown_entries().remove(1));
    assert_entries(&h.normalized_logs(id), &expected);
    h.assert_clean();
}

pub async fn files_store_content_is_fetched_with_the_job_token(h: &E2e) {
    // A frontend with a file store in front of the embedded queue's store.
    let stored: &[u8] = b"API_KEY=from-the-store\n";
    let frontend = FilesFrontend::start(
        h.queue.store.clone(),
        &h.config.frontend_password,
        &[("batch-changes", "spec123/file789", stored)],
    )
    .await;
    let id = h.submit("files-store-fetched.json");
    let sum = h.work_via(&frontend.base, 1, 1, h.timing().job_limit).await;
    assert_eq!(sum.completed, 1, "{:?}", h.record(id));
    assert_eq!(h.record(id).state, JobState::Completed);
    let s0 = script(id, 0, "");
    let mut expected = vec![
        h.workspace_entry(),
        extras(&[
            "input.json",
            "workspace-files/.env",
            &format!(".sourcegraph-executor/{s0}"),
        ]),
        h.sandbox_start_entry(),
        step(
            "step.docker.show",
            &s0,
            0,
            "alpine:3",
            // The store's bytes, mode 0777 and the entry's modifiedAt.
            &["API_KEY=from-the-store", "777 1709287200"],
            &[
                "+ cat workspace-files/.env",
                "+ stat -c '%a %Y' workspace-files/.env",
            ],
        ),
    ];
    expected.extend(h.teardown_entries());
    assert_entries(&h.normalized_logs(id), &expected);
    // One GET, with the job's own token and identity.
    let seen = frontend.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let r = &seen[0];
    assert_eq!(
        (r.path.as_str(), r.status),
        ("/.executors/files/batch-changes/spec123/file789", 200)
    );
    assert!(
        r.authorization
            .as_deref()
            .is_some_and(|a| a.starts_with("Bearer ") && a.len() > 20),
        "{r:?}"
    );
    assert_eq!(r.job_id.as_deref(), Some(id.to_string().as_str()));
    assert_eq!(r.executor.as_deref(), Some(h.config.executor_name.as_str()));
    h.assert_clean();
}

pub async fn redacted_values_never_leave_the_process(h: &E2e) {
    let id = h.run_to_completion("redaction.json").await;
    let raw = h.logs(id);
    let all = serde_json::to_string(&raw).unwrap();
    assert!(!all.contains("pa55word-xyz"), "{all}");
    assert!(!all.contains(&h.config.frontend_password), "{all}");
    let logs = h.normalized_logs(id);
    let s0 = script(id, 0, "");
    let mut expected = vec![
        h.workspace_entry(),
        extras(&[&format!(".sourcegraph-executor/{s0}")]),
        h.sandbox_start_entry(),
        step(
            "step.docker.leaky",
            &s0,
            0,
            "busybox",
            &["the secret is [REDACTED]", "executor token SECRET_REMOVED"],
            &[
                "+ echo the secret is [REDACTED]",
                "+ echo to stderr [REDACTED]",
                "to stderr [REDACTED]",
                "+ echo 'executor token SECRET_REMOVED'",
            ],
        ),
    ];
    expected.extend(h.teardown_entries());
    assert_entries(&logs, &expected);
    h.assert_clean();
}

pub async fn failing_step_stops_the_job_and_marks_it_errored(h: &E2e) {
    let id = h.submit("failing-step.json");
    let sum = h.work(1, 1, h.timing().job_limit).await;
    assert_eq!((sum.completed, sum.errored), (0, 1));
    let rec = h.record(id);
    // markErrored with MaxNumRetries 0 is terminal: `failed`.
    assert_eq!(rec.state, JobState::Failed);
    assert_eq!(
        rec.failure_message.as_deref(),
        Some("running command \"step.docker.fails\": command failed with exit code 3")
    );
    let (s0, s1) = (script(id, 0, ""), script(id, 1, ""));
    let mut expected = vec![
        h.workspace_entry(),
        extras(&[
            &format!(".sourcegraph-executor/{s0}"),
            &format!(".sourcegraph-executor/{s1}"),
        ]),
        h.sandbox_start_entry(),
        step(
            "step.docker.fails",
            &s0,
            3,
            "alpine:3",
            &["before"],
            &["+ echo before", "+ exit 3"],
        ),
    ];
    expected.extend(h.teardown_entries());
    assert_entries(&h.normalized_logs(id), &expected);
    h.assert_clean();
}

fn slow_expected(h: &E2e, id: i64) -> Vec<Entry> {
    let (s0, s1) = (script(id, 0, ""), script(id, 1, ""));
    let mut expected = vec![
        h.workspace_entry(),
        extras(&[
            &format!(".sourcegraph-executor/{s0}"),
            &format!(".sourcegraph-executor/{s1}"),
        ]),
        h.sandbox_start_entry(),
        step(
            "step.docker.slow",
            &s0,
            -1,
            "alpine:3",
            &["started"],
            &["+ echo started", "+ sleep 600"],
        ),
    ];
    expected.extend(h.teardown_entries());
    expected
}

pub async fn runtime_limit_kills_the_step_and_errors_the_job(h: &E2e) {
    let id = h.submit("slow.json");
    let started = Instant::now();
    let t = h.timing().clone();
    let sum = h.work(1, 1, t.runtime_limit).await;
    let took = started.elapsed();
    assert_eq!(sum.errored, 1);
    assert!(took < t.runtime_limit + t.stop_within, "took {took:?}");
    let rec = h.record(id);
    assert_eq!(rec.state, JobState::Failed);
    assert_eq!(
        rec.failure_message.as_deref(),
        Some(
            format!(
                "job exceeded maximum execution time of {}: running command \
                 \"step.docker.slow\": context deadline exceeded",
                t.runtime_limit_text
            )
            .as_str()
        )
    );
    assert_entries(&h.normalized_logs(id), &slow_expected(h, id));
    h.assert_clean();
}

pub async fn cancel_is_acted_on_within_a_second_of_the_heartbeat(h: &E2e) {
    let id = h.submit("slow.json");
    let worker = h.work(1, 1, h.timing().job_limit);
    let watcher = async {
        let deadline = Instant::now() + h.timing().job_limit;
        while !h.logs(id).iter().any(|e| e.out.contains("stdout: started")) {
            assert!(Instant::now() < deadline, "the step never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let canceled_at = Instant::now();
        let canceled_wall = time::OffsetDateTime::now_utc();
        h.queue.store.cancel(id).unwrap();
        (canceled_at, canceled_wall)
    };
    let (sum, (canceled_at, canceled_wall)) = tokio::join!(worker, watcher);
    let took = canceled_at.elapsed();
    assert_eq!(sum.failed, 1);
    assert!(took < h.timing().stop_within, "took {took:?}");
    let rec = h.record(id);
    assert_eq!(rec.state, JobState::Canceled);
    assert_eq!(
        rec.failure_message.as_deref(),
        Some("running command \"step.docker.slow\": context canceled")
    );
    let logs = h.normalized_logs(id);
    assert_entries(&logs, &slow_expected(h, id));
    // The step's entry ended (its process group killed, exit -1) within the heartbeat interval
    // (200 ms: the cancel reaches the worker with the next heartbeat answer) plus 1 s (more
    // under the emulated VM harness: see `Timing`).
    let step = &h.logs(id)[3];
    let started = time::OffsetDateTime::parse(
        &step.start_time,
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let ended = started + time::Duration::milliseconds(step.duration_ms.unwrap());
    let after_cancel = ended - canceled_wall;
    eprintln!("the step's entry ended {after_cancel} after the cancel");
    assert!(
        after_cancel < time::Duration::try_from(h.timing().step_cancel_within).unwrap(),
        "the step ended {after_cancel} after the cancel"
    );
    h.assert_clean();
}

pub async fn cancel_during_clone_kills_git_and_skips_the_sandbox(h: &E2e) {
    let id = h.submit("slow-clone.json");
    let worker = h.work(1, 1, h.timing().job_limit);
    let watcher = async {
        let deadline = Instant::now() + h.timing().job_limit;
        while !h.logs(id).iter().any(|e| e.key == "setup.git.fetch") {
            assert!(Instant::now() < deadline, "the fetch never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !processes_mentioning(SLOW_REPO).is_empty(),
            "git should be fetching"
        );
        let canceled_at = Instant::now();
        h.queue.store.cancel(id).unwrap();
        canceled_at
    };
    let (sum, canceled_at) = tokio::join!(worker, watcher);
    let took = canceled_at.elapsed();
    assert_eq!(sum.failed, 1);
    assert!(took < h.timing().clone_cancel_within, "took {took:?}");
    let rec = h.record(id);
    assert_eq!(rec.state, JobState::Canceled);
    assert_eq!(
        rec.failure_message.as_deref(),
        Some("creating workspace: failed setup.git.fetch: context canceled")
    );
    let logs = h.normalized_logs(id);
    let keys: Vec<&str> = logs.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "setup.fs.workspace",
            "setup.git.init",
            "setup.git.add-remote",
            "setup.git.disable-gc",
            "setup.git.fetch",
            "teardown.fs"
        ]
    );
    assert_eq!(logs[4].exit_code, Some(-1));
    assert_eq!(
        processes_mentioning(SLOW_REPO),
        Vec::<String>::new(),
        "git processes left behind"
    );
    h.assert_clean();
}
