//! The worker loop against the embedded server with a fake job handler: result → mark* mapping,
//! cancellation through heartbeat `cancelIds`, the runtime deadline, stop after N jobs, metrics.

mod queue_common;

use hearth::job::logs::{LogSink, QueueLogTransport, SinkOptions};
use hearth::job::redact::Redactor;
use hearth::metrics::Metrics;
use hearth::queue::store::{JobState, StoreOptions};
use hearth::queue::worker::{self, HandlerError, JobContext, JobHandler, WorkerOptions};
use queue_common::*;
use std::sync::Arc;
use std::time::Duration;

struct Fake;

impl JobHandler for Fake {
    async fn handle(&self, ctx: JobContext) -> Result<(), HandlerError> {
        let sink = LogSink::new(
            QueueLogTransport {
                client: ctx.client.clone(),
                job: ctx.job_ref.clone(),
            },
            Redactor::for_job(SECRET, &ctx.job.redacted_values),
            SinkOptions {
                update_interval: Duration::from_millis(20),
                ..Default::default()
            },
        );
        let e = sink.open(
            "step.docker.0",
            vec!["echo".into(), ctx.job.repository_name.clone()],
        );
        e.stdout(format!("running {}\n", ctx.job.repository_name).as_bytes());
        let result = match ctx.job.repository_name.as_str() {
            "ok" => Ok(()),
            "fail" => Err(HandlerError::Errored(
                "command failed with exit code 1".into(),
            )),
            "fatal" => Err(HandlerError::Failed("illegal command".into())),
            _ => {
                let reason = ctx.cancel.tripped().await;
                Err(HandlerError::Errored(format!("stopped: {reason:?}")))
            }
        };
        e.finish(if result.is_ok() { 0 } else { 1 });
        sink.flush(Duration::from_secs(5))
            .await
            .map_err(|e| HandlerError::Errored(e.to_string()))?;
        result
    }
}

fn opts() -> WorkerOptions {
    WorkerOptions {
        max_jobs: 2,
        poll_interval: Duration::from_millis(20),
        heartbeat_interval: Duration::from_millis(50),
        max_runtime_per_job: Duration::from_secs(30),
        teardown_grace: Duration::from_secs(5),
        num_total_jobs: 0,
        max_active_time: Duration::ZERO,
    }
}

#[tokio::test]
async fn results_map_to_mark_calls() {
    let h = Harness::start(StoreOptions::default()).await;
    let ok = h.store.submit("batches", &job("ok")).unwrap();
    let fail = h.store.submit("batches", &job("fail")).unwrap();
    let fatal = h.store.submit("batches", &job("fatal")).unwrap();
    let metrics = Metrics::new(&["batches".to_string()]);
    let c = h
        .client(single("batches"), "ex")
        .with_metrics(metrics.clone());
    c.ping().await.unwrap();
    let o = WorkerOptions {
        num_total_jobs: 3,
        ..opts()
    };
    let summary = worker::run(
        c,
        Arc::new(Fake),
        o,
        Some(metrics.clone()),
        std::future::pending(),
    )
    .await;
    assert_eq!(
        (
            summary.dequeued,
            summary.completed,
            summary.errored,
            summary.failed
        ),
        (3, 1, 1, 1)
    );
    let rec = |id| h.store.get(id).unwrap().unwrap();
    assert_eq!(rec(ok).state, JobState::Completed);
    assert_eq!(
        (rec(fail).state, rec(fail).failure_message.as_deref()),
        (JobState::Failed, Some("command failed with exit code 1"))
    );
    assert_eq!(
        (rec(fatal).state, rec(fatal).failure_message.as_deref()),
        (JobState::Failed, Some("illegal command"))
    );
    let logs = h.store.logs(ok).unwrap();
    assert_eq!(logs.len(), 1);
    assert_eq!(
        (logs[0].out.as_str(), logs[0].exit_code),
        ("stdout: running ok\n", Some(0))
    );
    let text = metrics.render();
    assert!(text.contains("hearth_jobs_succeeded_total 1\n"), "{text}");
    assert!(text.contains("hearth_jobs_failed_total 2\n"), "{text}");
    assert!(text.contains("hearth_jobs_running 0\n"), "{text}");
    assert!(
        text.contains("src_apiworker_apiclient_queue_total{op=\"MarkComplete\"} 1\n"),
        "{text}"
    );
}

#[tokio::test]
async fn cancel_ids_from_heartbeats_cancel_the_job() {
    let h = Harness::start(StoreOptions::default()).await;
    let id = h.store.submit("codeintel", &job("waits")).unwrap();
    let c = h.client(multi(&["batches", "codeintel"]), "ex");
    c.ping().await.unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let w = tokio::spawn(worker::run(c, Arc::new(Fake), opts(), None, async {
        let _ = stop_rx.await;
    }));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while h.store.get(id).unwrap().unwrap().state != JobState::Processing {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    h.store.cancel(id).unwrap();
    while h.store.get(id).unwrap().unwrap().state == JobState::Processing {
        assert!(
            std::time::Instant::now() < deadline,
            "cancel never reached the handler"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = stop_tx.send(());
    let summary = w.await.unwrap();
    assert_eq!((summary.dequeued, summary.failed), (1, 1));
    let rec = h.store.get(id).unwrap().unwrap();
    assert_eq!(rec.state, JobState::Canceled);
    assert_eq!(
        h.store.logs(id).unwrap()[0].exit_code,
        Some(1),
        "logs flushed before mark"
    );
}

#[tokio::test]
async fn runtime_deadline_marks_errored() {
    let h = Harness::start(StoreOptions::default()).await;
    let id = h.store.submit("batches", &job("waits")).unwrap();
    let c = h.client(single("batches"), "ex");
    c.ping().await.unwrap();
    let o = WorkerOptions {
        num_total_jobs: 1,
        max_runtime_per_job: Duration::from_millis(200),
        ..opts()
    };
    let summary = worker::run(c, Arc::new(Fake), o, None, std::future::pending()).await;
    assert_eq!(summary.errored, 1);
    let rec = h.store.get(id).unwrap().unwrap();
    assert_eq!(
        rec.state,
        JobState::Failed,
        "MaxNumRetries 0 makes markErrored terminal"
    );
    assert_eq!(
        rec.failure_message.as_deref(),
        Some("job exceeded maximum execution time of 0.2s: stopped: Timeout")
    );
}
