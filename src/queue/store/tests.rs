use super::*;
use crate::queue::types::{ExecutionLogEntry, ExecutorTelemetry};

fn store(opts: StoreOptions) -> Store {
    Store::open_in_memory(opts).unwrap()
}

fn job(repo: &str) -> Job {
    Job {
        repository_name: repo.into(),
        commit: "deadbeef".into(),
        ..Default::default()
    }
}

fn entry(key: &str, out: &str) -> ExecutionLogEntry {
    ExecutionLogEntry {
        key: key.into(),
        command: vec!["true".into()],
        start_time: "2024-01-01T00:00:00Z".into(),
        out: out.into(),
        ..Default::default()
    }
}

fn q(name: &str) -> Vec<String> {
    vec![name.to_string()]
}

#[test]
fn fifo_across_queues_and_tokens() {
    let s = store(StoreOptions::default());
    let a = s.submit("codeintel", &job("a")).unwrap();
    let b = s.submit("batches", &job("b")).unwrap();
    assert!(matches!(
        s.submit("nope", &job("c")),
        Err(StoreError::InvalidQueue(_))
    ));
    let both = vec!["batches".to_string(), "codeintel".to_string()];
    let j1 = s.dequeue(&both, "ex", true, true).unwrap().unwrap();
    assert_eq!(
        (j1.id, j1.queue.as_deref(), j1.version),
        (a, Some("codeintel"), 2)
    );
    let info = s.token_info(&j1.token).unwrap().unwrap();
    assert_eq!(
        info,
        TokenInfo {
            job_id: a,
            queue: "codeintel".into(),
            repo: "a".into()
        }
    );
    let j2 = s
        .dequeue(&q("batches"), "ex", false, false)
        .unwrap()
        .unwrap();
    assert_eq!((j2.id, j2.queue.clone(), j2.version), (b, None, 1));
    assert!(s.dequeue(&both, "ex", true, true).unwrap().is_none());
    assert!(s.mark_complete(a, "ex").unwrap());
    assert!(
        s.token_info(&j1.token).unwrap().is_none(),
        "token deleted at mark*"
    );
    assert!(
        !s.mark_complete(a, "ex").unwrap(),
        "not processing any more"
    );
    assert!(!s.mark_complete(b, "other").unwrap(), "not ours");
    assert_eq!(s.get(a).unwrap().unwrap().state, JobState::Completed);
}

#[test]
fn mark_semantics() {
    let s = store(StoreOptions {
        max_num_retries: 2,
        ..Default::default()
    });
    let id = s.submit("batches", &job("r")).unwrap();
    s.dequeue(&q("batches"), "ex", false, true)
        .unwrap()
        .unwrap();
    assert!(s.mark_errored(id, "ex", "boom").unwrap());
    let r = s.get(id).unwrap().unwrap();
    assert_eq!((r.state, r.num_failures), (JobState::Errored, 1));
    assert_eq!(r.failure_message.as_deref(), Some("boom"));

    let s = store(StoreOptions::default());
    let id = s.submit("batches", &job("r")).unwrap();
    s.dequeue(&q("batches"), "ex", false, true)
        .unwrap()
        .unwrap();
    assert!(s.mark_errored(id, "ex", "boom").unwrap());
    assert_eq!(
        s.get(id).unwrap().unwrap().state,
        JobState::Failed,
        "MaxNumRetries 0"
    );

    let id = s.submit("batches", &job("r")).unwrap();
    s.dequeue(&q("batches"), "ex", false, true)
        .unwrap()
        .unwrap();
    assert_eq!(s.cancel(id).unwrap(), CancelOutcome::CancelRequested);
    assert!(s.mark_failed(id, "ex", "canceled").unwrap());
    let r = s.get(id).unwrap().unwrap();
    assert_eq!((r.state, r.num_failures), (JobState::Canceled, 0));
    assert_eq!(
        s.cancel(id).unwrap(),
        CancelOutcome::AlreadyFinished(JobState::Canceled)
    );

    let id = s.submit("batches", &job("r")).unwrap();
    assert_eq!(s.cancel(id).unwrap(), CancelOutcome::Canceled);
    assert!(
        s.dequeue(&q("batches"), "ex", false, true)
            .unwrap()
            .is_none()
    );
    assert!(matches!(s.cancel(999), Err(StoreError::UnknownJob)));
}

#[test]
fn heartbeat_known_and_cancel() {
    let s = store(StoreOptions::default());
    let a = s.submit("batches", &job("a")).unwrap();
    let b = s.submit("batches", &job("b")).unwrap();
    s.dequeue(&q("batches"), "ex", false, true).unwrap();
    s.dequeue(&q("batches"), "ex", false, true).unwrap();
    s.cancel(b).unwrap();
    let ids = vec![
        ("batches".to_string(), a),
        ("batches".to_string(), b),
        ("batches".to_string(), 77),
    ];
    let (known, cancel) = s
        .heartbeat("ex", &q("batches"), &ExecutorTelemetry::default(), &ids)
        .unwrap();
    assert_eq!(
        known,
        vec![("batches".to_string(), a), ("batches".to_string(), b)]
    );
    assert_eq!(cancel, vec![("batches".to_string(), b)]);
    assert!(s.executor_exists("ex").unwrap());
    let (known, _) = s
        .heartbeat("other", &q("batches"), &ExecutorTelemetry::default(), &ids)
        .unwrap();
    assert!(
        known.is_empty(),
        "jobs of another executor are not known to it"
    );
}

#[test]
fn log_entries_are_positions_and_owned() {
    let s = store(StoreOptions::default());
    let id = s.submit("batches", &job("a")).unwrap();
    assert!(matches!(
        s.add_log_entry(id, "ex", &entry("k", "")),
        Err(StoreError::UnknownJob)
    ));
    s.dequeue(&q("batches"), "ex", false, true).unwrap();
    assert_eq!(s.add_log_entry(id, "ex", &entry("one", "")).unwrap(), 1);
    assert_eq!(s.add_log_entry(id, "ex", &entry("two", "")).unwrap(), 2);
    s.update_log_entry(id, "ex", 1, &entry("one", "stdout: hi\n"))
        .unwrap();
    assert!(matches!(
        s.update_log_entry(id, "ex", 9, &entry("x", "")),
        Err(StoreError::UnknownEntry(9))
    ));
    assert!(matches!(
        s.add_log_entry(id, "intruder", &entry("x", "")),
        Err(StoreError::UnknownJob)
    ));
    let logs = s.logs(id).unwrap();
    assert_eq!(logs.len(), 2);
    assert_eq!(logs[0].out, "stdout: hi\n");
    assert_eq!(logs[1].key, "two");
}

#[test]
fn stalled_jobs_are_reset_then_failed() {
    let s = store(StoreOptions {
        stall_after: std::time::Duration::ZERO,
        max_resets: 1,
        ..Default::default()
    });
    let id = s.submit("batches", &job("a")).unwrap();
    let first = s
        .dequeue(&q("batches"), "ex", false, true)
        .unwrap()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2));
    assert_eq!(
        s.reset_stalled().unwrap(),
        ResetOutcome {
            requeued: vec![id],
            failed: vec![]
        }
    );
    assert!(s.token_info(&first.token).unwrap().is_none());
    let again = s
        .dequeue(&q("batches"), "ex2", false, true)
        .unwrap()
        .unwrap();
    assert_eq!(again.id, id);
    assert_ne!(again.token, first.token, "token regenerated on re-dequeue");
    std::thread::sleep(std::time::Duration::from_millis(2));
    assert_eq!(
        s.reset_stalled().unwrap(),
        ResetOutcome {
            requeued: vec![],
            failed: vec![id]
        }
    );
    let r = s.get(id).unwrap().unwrap();
    assert_eq!(r.state, JobState::Failed);
    assert_eq!(
        r.failure_message.as_deref(),
        Some("job processor died while handling this message too many times")
    );
}

#[test]
fn fresh_heartbeat_prevents_reset() {
    let s = store(StoreOptions::default());
    let id = s.submit("batches", &job("a")).unwrap();
    s.dequeue(&q("batches"), "ex", false, true).unwrap();
    assert_eq!(s.reset_stalled().unwrap(), ResetOutcome::default());
    assert_eq!(s.get(id).unwrap().unwrap().state, JobState::Processing);
}

#[test]
fn reopened_store_reconciles_orphans() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/queue.sqlite");
    let (running, queued);
    {
        let s = Store::open(&path, StoreOptions::default()).unwrap();
        running = s.submit("batches", &job("a")).unwrap();
        queued = s.submit("batches", &job("b")).unwrap();
        s.dequeue(&q("batches"), "ex", false, true)
            .unwrap()
            .unwrap();
        s.add_log_entry(running, "ex", &entry("setup.git.init", "stdout: x\n"))
            .unwrap();
    }
    let s = Store::open(&path, StoreOptions::default()).unwrap();
    assert_eq!(s.get(running).unwrap().unwrap().state, JobState::Processing);
    let out = s.reconcile_orphaned().unwrap();
    assert_eq!(
        out,
        ResetOutcome {
            requeued: vec![running],
            failed: vec![]
        }
    );
    let r = s.get(running).unwrap().unwrap();
    assert_eq!(
        (r.state, r.num_resets, r.worker_hostname),
        (JobState::Queued, 1, None)
    );
    assert_eq!(
        s.logs(running).unwrap().len(),
        1,
        "logs of the earlier attempt are kept"
    );
    assert_eq!(s.get(queued).unwrap().unwrap().state, JobState::Queued);
    let list = s.list(&ListFilter::default()).unwrap();
    assert_eq!(
        list.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![queued, running]
    );
}
