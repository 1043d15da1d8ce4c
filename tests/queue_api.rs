//! The queue client against the embedded `/.executors/` server over loopback: dequeue, heartbeat,
//! log entries, mark*, auth, job tokens, stall resets and restart reconcile.

mod queue_common;

use hearth::queue::client::JobRef;
use hearth::queue::store::{JobState, StoreOptions};
use hearth::queue::types::{ExecutionLogEntry, ExecutorTelemetry};
use queue_common::*;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn dequeue_single_and_multi_queue() {
    let h = Harness::start(StoreOptions::default()).await;
    let b = h.store.submit("batches", &job("github.com/a/b")).unwrap();
    let c = h.store.submit("codeintel", &job("github.com/c/d")).unwrap();

    let single = h.client(single("batches"), "ex-1");
    single.ping().await.unwrap();
    let got = single.dequeue().await.unwrap().expect("200 with a job");
    assert_eq!((got.id, got.version, got.queue.clone()), (b, 2, None));
    assert_eq!(got.repository_name, "github.com/a/b");
    assert!(!got.token.is_empty());
    assert!(
        single.dequeue().await.unwrap().is_none(),
        "204: batches is empty"
    );

    let multi = h.client(multi(&["batches", "codeintel"]), "ex-2");
    let got = multi.dequeue().await.unwrap().expect("200 with a job");
    assert_eq!((got.id, got.queue.as_deref()), (c, Some("codeintel")));
    assert_eq!(got.record_uid(), format!("{c}-codeintel"));
    assert!(multi.dequeue().await.unwrap().is_none());
    let rec = h.store.get(c).unwrap().unwrap();
    assert_eq!(
        (rec.state, rec.worker_hostname.as_deref()),
        (JobState::Processing, Some("ex-2"))
    );
}

#[tokio::test]
async fn dequeue_versions_and_validation() {
    let h = Harness::start(StoreOptions::default()).await;
    let mut with_file = job("github.com/a/b");
    with_file.files.insert(
        "input.json".into(),
        hearth::queue::types::VirtualMachineFile {
            content: b"{}".to_vec(),
            ..Default::default()
        },
    );
    h.store.submit("batches", &with_file).unwrap();
    let url = format!("{}/.executors/queue/batches/dequeue", h.base);
    let (status, body) = h
        .post(
            &url,
            &h.executor_auth(),
            json!({"executorName":"e","version":"banana"}),
        )
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(body.contains("\"error\""), "{body}");
    let (status, body) = h
        .post(
            &url,
            &h.executor_auth(),
            json!({"executorName":"","version":"5.5.0"}),
        )
        .await;
    assert_eq!(
        (status, body.as_str()),
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            r#"{"error":"worker hostname cannot be empty"}"#
        )
    );
    let (status, body) = h
        .post(
            &format!("{}/.executors/queue/dequeue", h.base),
            &h.executor_auth(),
            json!({"executorName":"e","version":"5.5.0","queues":["batches","nope"]}),
        )
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        body.contains(
            "Invalid queue name(s) 'nope' found. Supported queue names are 'batches, codeintel'."
        ),
        "{body}"
    );
    let (status, body) = h
        .post(
            &format!("{}/.executors/queue/dequeue", h.base),
            &h.executor_auth(),
            json!({"executorName":"e","version":"5.5.0"}),
        )
        .await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::NO_CONTENT, ""),
        "no queues: 204"
    );
    // An old executor gets a v1 payload: no version field, plain file content.
    let (status, body) = h
        .post(
            &url,
            &h.executor_auth(),
            json!({"executorName":"e","version":"4.2.0"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v.get("version").is_none(), "{v}");
    assert_eq!(v["files"]["input.json"]["content"], "{}");
    assert!(
        v.get("queue").is_none(),
        "single-queue dequeues do not set queue"
    );
}

#[tokio::test]
async fn heartbeat_known_and_cancel_ids() {
    let h = Harness::start(StoreOptions::default()).await;
    let a = h.store.submit("batches", &job("r/a")).unwrap();
    let b = h.store.submit("codeintel", &job("r/b")).unwrap();
    let mc = h.client(multi(&["batches", "codeintel"]), "ex");
    mc.dequeue().await.unwrap().unwrap();
    mc.dequeue().await.unwrap().unwrap();
    h.store.cancel(b).unwrap();
    let running = vec![
        format!("{a}-batches"),
        format!("{b}-codeintel"),
        "999-batches".to_string(),
    ];
    let telemetry = ExecutorTelemetry {
        os: "linux".into(),
        architecture: "amd64".into(),
        executor_version: "5.5.0".into(),
        prometheus_metrics: "# TYPE hearth_jobs_running gauge\nhearth_jobs_running 2\n".into(),
        ..Default::default()
    };
    let res = mc.heartbeat(&running, &telemetry).await.unwrap();
    assert_eq!(
        res.known_ids,
        vec![format!("{a}-batches"), format!("{b}-codeintel")]
    );
    assert_eq!(res.cancel_ids, vec![format!("{b}-codeintel")]);
    assert_eq!(
        h.store.executor_metrics("ex").unwrap().unwrap(),
        telemetry.prometheus_metrics
    );

    // Single-queue form: ids as numbers or strings; answers are bare ids.
    let url = format!("{}/.executors/queue/batches/heartbeat", h.base);
    let (status, body) = h
        .post(
            &url,
            &h.executor_auth(),
            json!({"executorName":"ex","version":"V2","jobIds":[a, "999"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, format!(r#"{{"knownIds":["{a}"],"cancelIds":[]}}"#));
    let single = h.client(single("codeintel"), "ex");
    let res = single
        .heartbeat(&[b.to_string()], &ExecutorTelemetry::default())
        .await
        .unwrap();
    assert_eq!(
        (res.known_ids, res.cancel_ids),
        (vec![b.to_string()], vec![b.to_string()])
    );

    // Another executor does not know these jobs.
    let other = h.client(multi(&["batches"]), "other");
    let res = other
        .heartbeat(&[format!("{a}-batches")], &ExecutorTelemetry::default())
        .await
        .unwrap();
    assert!(res.known_ids.is_empty());
    // Ids for a queue the executor did not list: 500.
    let (status, _) = h
        .post(&format!("{}/.executors/queue/heartbeat", h.base), &h.executor_auth(),
              json!({"executorName":"ex","queueNames":["batches"],"jobIdsByQueue":[{"queueName":"codeintel","jobIds":["1"]}]}))
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
}

fn entry(key: &str, out: &str, exit: Option<i32>) -> ExecutionLogEntry {
    ExecutionLogEntry {
        key: key.into(),
        command: vec!["git".into(), "init".into()],
        start_time: "2026-01-01T00:00:00.123456789Z".into(),
        exit_code: exit,
        out: out.into(),
        duration_ms: exit.map(|_| 12),
    }
}

#[tokio::test]
async fn log_entries_and_mark_semantics() {
    let h = Harness::start(StoreOptions::default()).await;
    let id = h.store.submit("batches", &job("r/a")).unwrap();
    let c = h.client(single("batches"), "ex");
    c.ping().await.unwrap();
    let j = c.dequeue().await.unwrap().unwrap();
    let jr = c.job_ref(&j).unwrap();
    assert_eq!(
        c.add_execution_log_entry(&jr, &entry("setup.git.init", "", None))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        c.add_execution_log_entry(&jr, &entry("setup.git.fetch", "", None))
            .await
            .unwrap(),
        2
    );
    c.update_execution_log_entry(&jr, 1, &entry("setup.git.init", "stdout: ok\n", Some(0)))
        .await
        .unwrap();
    let err = c
        .update_execution_log_entry(&jr, 9, &entry("x", "", None))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("unexpected status code 500"),
        "{err}"
    );
    let logs = h.store.logs(id).unwrap();
    assert_eq!(
        logs,
        vec![
            entry("setup.git.init", "stdout: ok\n", Some(0)),
            entry("setup.git.fetch", "", None)
        ]
    );

    assert!(c.mark_complete(&jr).await.unwrap());
    assert_eq!(h.store.get(id).unwrap().unwrap().state, JobState::Completed);
    // The token is gone with the job's processing state.
    let err = c
        .add_execution_log_entry(&jr, &entry("late", "", None))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("unexpected status code 401"),
        "{err}"
    );
    // With the shared secret instead: the job is not processing any more → 404 on mark*.
    let by_secret = JobRef {
        token: String::new(),
        ..jr.clone()
    };
    assert!(!c.mark_complete(&by_secret).await.unwrap());
    let err = c
        .add_execution_log_entry(&by_secret, &entry("late", "", None))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains(r#"{"error":"unknown job"}"#),
        "{err}"
    );

    // markErrored is terminal (MaxNumRetries 0); markFailed on a cancelled job stores canceled.
    let e = h.store.submit("batches", &job("r/e")).unwrap();
    let je = c.job_ref(&c.dequeue().await.unwrap().unwrap()).unwrap();
    assert!(
        c.mark_errored(&je, "command failed with exit code 1")
            .await
            .unwrap()
    );
    let rec = h.store.get(e).unwrap().unwrap();
    assert_eq!((rec.state, rec.num_failures), (JobState::Failed, 1));
    assert_eq!(
        rec.failure_message.as_deref(),
        Some("command failed with exit code 1")
    );
    let f = h.store.submit("batches", &job("r/f")).unwrap();
    let jf = c.job_ref(&c.dequeue().await.unwrap().unwrap()).unwrap();
    h.store.cancel(f).unwrap();
    assert!(c.mark_failed(&jf, "canceled").await.unwrap());
    assert_eq!(h.store.get(f).unwrap().unwrap().state, JobState::Canceled);
}

#[tokio::test]
async fn mark_on_a_job_owned_by_another_executor_is_404() {
    let h = Harness::start(StoreOptions::default()).await;
    let id = h.store.submit("batches", &job("r/a")).unwrap();
    let owner = h.client(single("batches"), "owner");
    let intruder = h.client(single("batches"), "intruder");
    intruder.ping().await.unwrap();
    let j = owner.dequeue().await.unwrap().unwrap();
    let jr = intruder.job_ref(&j).unwrap();
    // The token is valid for the job, but the record belongs to "owner".
    assert!(!intruder.mark_complete(&jr).await.unwrap());
    assert!(!intruder.mark_failed(&jr, "x").await.unwrap());
    assert_eq!(
        h.store.get(id).unwrap().unwrap().state,
        JobState::Processing
    );
}
