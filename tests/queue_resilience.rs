//! The queue when things go wrong: a frontend that disappears mid-job and comes back, a process
//! that dies with a job running (restart reconcile), and an executor whose heartbeats stop.

mod queue_common;

use hearth::config::{Config, ConfigFlags};
use hearth::job::logs::{LogSink, QueueLogTransport, SinkOptions};
use hearth::job::redact::Redactor;
use hearth::queue::embedded;
use hearth::queue::server::{self, ServerState};
use hearth::queue::store::{JobState, Store, StoreOptions};
use queue_common::*;
use std::time::{Duration, Instant};

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn frontend_outage_mid_job_loses_no_log_entry() {
    let Harness {
        dir: _dir,
        db,
        store,
        server,
        ..
    } = Harness::start(StoreOptions::default()).await;
    let addr = server.addr();
    let id = store.submit("batches", &job("github.com/a/b")).unwrap();
    let c = client_for(&server.base_url(), single("batches"), "ex");
    c.ping().await.unwrap();
    let j = c.dequeue().await.unwrap().unwrap();
    let jr = c.job_ref(&j).unwrap();
    let sink = LogSink::new(
        QueueLogTransport {
            client: c.clone(),
            job: jr.clone(),
        },
        Redactor::for_job(SECRET, &j.redacted_values),
        SinkOptions {
            update_interval: Duration::from_millis(50),
            ..Default::default()
        },
    );

    let first = sink.open("setup.git.fetch", vec!["git".into(), "fetch".into()]);
    for i in 0..10 {
        first.stdout(format!("line {i}\n").as_bytes());
    }
    wait_for("the first lines to arrive", || {
        store
            .logs(id)
            .unwrap()
            .first()
            .is_some_and(|e| e.out.contains("line 9"))
    })
    .await;

    server.shutdown().await;
    // The frontend is gone: keep producing output, finish entries, open new ones.
    for i in 10..30 {
        first.stdout(format!("line {i}\n").as_bytes());
    }
    first.stderr(format!("password {SECRET}\n").as_bytes());
    first.finish(0);
    let second = sink.open("step.docker.0", vec!["docker".into(), "run".into()]);
    second.stdout(b"during the outage");
    second.finish(2);
    let third = sink.open("teardown.fs", vec![]);
    third.finish(0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(sink.pending() >= 3, "nothing could be delivered while down");

    // The frontend comes back on the same address with the same database.
    let store2 = Store::open(&db, StoreOptions::default()).unwrap();
    let server2 = server::serve(
        &addr.to_string(),
        ServerState {
            store: store2.clone(),
            secret: Some(SECRET.to_string()),
        },
    )
    .await
    .unwrap();
    sink.flush(Duration::from_secs(10)).await.unwrap();

    let logs = store2.logs(id).unwrap();
    let keys: Vec<&str> = logs.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["setup.git.fetch", "step.docker.0", "teardown.fs"]);
    let expected: String = (0..30)
        .map(|i| format!("stdout: line {i}\n"))
        .collect::<String>()
        + "stderr: password SECRET_REMOVED\n";
    assert_eq!(logs[0].out, expected);
    assert_eq!(logs[0].exit_code, Some(0));
    assert_eq!(
        (logs[1].out.as_str(), logs[1].exit_code),
        ("stdout: during the outage\n", Some(2))
    );
    assert_eq!(logs[2].exit_code, Some(0));
    assert!(logs.iter().all(|e| e.duration_ms.is_some()));
    assert!(c.mark_complete(&jr).await.unwrap());
    assert_eq!(store2.get(id).unwrap().unwrap().state, JobState::Completed);
    server2.shutdown().await;
}

fn embedded_config(db: &std::path::Path) -> Config {
    let flags = ConfigFlags {
        db: Some(db.to_path_buf()),
        ..Default::default()
    };
    Config::load(&|_| None, &flags).unwrap()
}

#[tokio::test]
async fn restart_requeues_then_fails_jobs_left_processing() {
    let dir = tempfile::tempdir().unwrap();
    let config = embedded_config(&dir.path().join("queue.sqlite"));
    assert!(config.is_embedded());
    let opts = StoreOptions {
        max_resets: 1,
        ..Default::default()
    };

    let q = embedded::serve(&config, "127.0.0.1:0", opts.clone())
        .await
        .unwrap();
    let id = q.store.submit("codeintel", &job("r/a")).unwrap();
    let c = q.client(&config, None).unwrap();
    c.ping().await.unwrap();
    let first = c.dequeue().await.unwrap().unwrap();
    assert_eq!((first.id, first.queue.as_deref()), (id, Some("codeintel")));
    // The process "dies" with the job running.
    q.server.shutdown().await;
    drop(q.store);

    let q = embedded::serve(&config, "127.0.0.1:0", opts.clone())
        .await
        .unwrap();
    assert_eq!(q.reconciled.requeued, vec![id]);
    let rec = q.store.get(id).unwrap().unwrap();
    assert_eq!((rec.state, rec.num_resets), (JobState::Queued, 1));
    assert!(q.store.token_info(&first.token).unwrap().is_none());
    let c = q.client(&config, None).unwrap();
    let again = c.dequeue().await.unwrap().unwrap();
    assert_eq!(again.id, id, "the same job runs again");
    q.server.shutdown().await;
    drop(q.store);

    // Dying once more exceeds max_resets: failed, never left running.
    let q = embedded::serve(&config, "127.0.0.1:0", opts).await.unwrap();
    assert_eq!(q.reconciled.failed, vec![id]);
    let rec = q.store.get(id).unwrap().unwrap();
    assert_eq!(rec.state, JobState::Failed);
    assert_eq!(
        rec.failure_message.as_deref(),
        Some("job processor died while handling this message too many times")
    );
    q.server.shutdown().await;
}

#[tokio::test]
async fn heartbeats_keep_a_job_and_silence_resets_it() {
    let h = Harness::start(StoreOptions {
        stall_after: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let id = h.store.submit("batches", &job("r/a")).unwrap();
    let c = h.client(multi(&["batches"]), "ex");
    let j = c.dequeue().await.unwrap().unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(900) {
        let res = c
            .heartbeat(&[j.record_uid()], &Default::default())
            .await
            .unwrap();
        assert_eq!(
            res.known_ids,
            vec![j.record_uid()],
            "still ours after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        h.store.get(id).unwrap().unwrap().state,
        JobState::Processing
    );
    wait_for("the stalled job to be requeued", || {
        h.store.get(id).unwrap().unwrap().state == JobState::Queued
    })
    .await;
    let res = c
        .heartbeat(&[j.record_uid()], &Default::default())
        .await
        .unwrap();
    assert!(
        res.known_ids.is_empty(),
        "the reset job is no longer known to the executor"
    );
}
