use super::*;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Clone)]
struct Sent {
    at: Instant,
    id: i64,
    added: bool,
    entry: ExecutionLogEntry,
}

#[derive(Clone, Default)]
struct Fake {
    sent: Arc<Mutex<Vec<Sent>>>,
    down: Arc<AtomicBool>,
}

fn refused() -> ClientError {
    ClientError::Status {
        op: "test",
        status: 503,
        body: "down".into(),
    }
}

impl LogTransport for Fake {
    async fn add(&self, entry: &ExecutionLogEntry) -> Result<i64, ClientError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(refused());
        }
        let mut sent = self.sent.lock().unwrap();
        let id = sent.iter().filter(|s| s.added).count() as i64 + 1;
        sent.push(Sent {
            at: Instant::now(),
            id,
            added: true,
            entry: entry.clone(),
        });
        Ok(id)
    }

    async fn update(&self, entry_id: i64, entry: &ExecutionLogEntry) -> Result<(), ClientError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(refused());
        }
        self.sent.lock().unwrap().push(Sent {
            at: Instant::now(),
            id: entry_id,
            added: false,
            entry: entry.clone(),
        });
        Ok(())
    }
}

impl Fake {
    /// The latest state of every entry, by id.
    fn latest(&self) -> Vec<ExecutionLogEntry> {
        let sent = self.sent.lock().unwrap();
        let n = sent.iter().filter(|s| s.added).count();
        (1..=n as i64)
            .map(|id| {
                sent.iter()
                    .rev()
                    .find(|s| s.id == id)
                    .unwrap()
                    .entry
                    .clone()
            })
            .collect()
    }
}

fn opts(ms: u64) -> SinkOptions {
    SinkOptions {
        update_interval: Duration::from_millis(ms),
        ..Default::default()
    }
}

#[tokio::test]
async fn entries_are_added_at_once_updated_each_interval_and_finished() {
    let fake = Fake::default();
    let sink = LogSink::new(fake.clone(), Redactor::from_pairs([]), opts(100));
    let e = sink.open("step.docker.0", vec!["sh".into(), "-c".into(), "x".into()]);
    tokio::time::sleep(Duration::from_millis(30)).await;
    {
        let sent = fake.sent.lock().unwrap();
        assert_eq!(sent.len(), 1, "added right away");
        assert!(sent[0].added && sent[0].entry.out.is_empty() && sent[0].entry.exit_code.is_none());
    }
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(650) {
        e.stdout(b"tick\n");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    e.finish(3);
    sink.flush(Duration::from_secs(5)).await.unwrap();
    let sent = fake.sent.lock().unwrap().clone();
    let updates: Vec<&Sent> = sent.iter().filter(|s| !s.added).collect();
    // ~6 periodic updates plus the final one, not one per write (65 writes).
    assert!(
        updates.len() >= 5 && updates.len() <= 10,
        "{} updates",
        updates.len()
    );
    for pair in updates.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap <= Duration::from_millis(250),
            "gap {gap:?} between updates"
        );
    }
    let last = &updates.last().unwrap().entry;
    assert_eq!(last.exit_code, Some(3));
    assert!(last.duration_ms.unwrap() >= 600);
    let lines = last.out.lines().count();
    assert!(
        lines >= 40 && last.out.lines().all(|l| l == "stdout: tick"),
        "{lines}"
    );
    assert!(
        time::OffsetDateTime::parse(
            &last.start_time,
            &time::format_description::well_known::Rfc3339
        )
        .is_ok()
    );
}

#[tokio::test]
async fn redaction_applies_to_command_and_out_before_sending() {
    let fake = Fake::default();
    let mut values = std::collections::BTreeMap::new();
    values.insert("ghp_topsecret".to_string(), "${{ secrets.GH }}".to_string());
    let sink = LogSink::new(
        fake.clone(),
        Redactor::for_job("execpass", &values),
        opts(50),
    );
    let e = sink.open(
        "step.src.0",
        vec!["src".into(), "login".into(), "--token=ghp_topsecret".into()],
    );
    // The secret arrives split over two chunks and two writes.
    e.stdout(b"token is ghp_top");
    e.stdout(b"secret; password execpass\n");
    e.stderr(b"execpass\n");
    e.finish(0);
    sink.flush(Duration::from_secs(5)).await.unwrap();
    let sent = fake.sent.lock().unwrap().clone();
    for s in &sent {
        let json = serde_json::to_string(&s.entry).unwrap();
        assert!(
            !json.contains("ghp_topsecret") && !json.contains("execpass"),
            "{json}"
        );
    }
    let last = fake.latest().pop().unwrap();
    assert_eq!(last.command[2], "--token=${{ secrets.GH }}");
    assert_eq!(
        last.out,
        "stdout: token is ${{ secrets.GH }}; password SECRET_REMOVED\nstderr: SECRET_REMOVED\n"
    );
}

#[tokio::test]
async fn backlog_survives_an_outage_in_order() {
    let fake = Fake::default();
    let sink = LogSink::new(fake.clone(), Redactor::from_pairs([]), opts(30));
    let a = sink.open("setup.git.init", vec!["git".into(), "init".into()]);
    a.stdout(b"one\n");
    tokio::time::sleep(Duration::from_millis(80)).await;
    fake.down.store(true, Ordering::SeqCst);
    a.stdout(b"two\n");
    a.finish(0);
    let b = sink.open("setup.git.fetch", vec!["git".into(), "fetch".into()]);
    b.stderr(b"three\n");
    b.finish(1);
    let c = sink.open("step.docker.0", vec![]);
    c.stdout(b"four");
    c.finish(0);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(sink.pending() >= 3);
    fake.down.store(false, Ordering::SeqCst);
    sink.flush(Duration::from_secs(5)).await.unwrap();
    let latest = fake.latest();
    let keys: Vec<&str> = latest.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["setup.git.init", "setup.git.fetch", "step.docker.0"]);
    assert_eq!(latest[0].out, "stdout: one\nstdout: two\n");
    assert_eq!(
        (latest[1].out.as_str(), latest[1].exit_code),
        ("stderr: three\n", Some(1))
    );
    assert_eq!(latest[2].out, "stdout: four\n");
}

#[tokio::test]
async fn flush_reports_undeliverable_entries() {
    let fake = Fake::default();
    fake.down.store(true, Ordering::SeqCst);
    let sink = LogSink::new(fake.clone(), Redactor::from_pairs([]), opts(20));
    sink.open("teardown.fs", vec![]).finish(0);
    let err = sink.flush(Duration::from_millis(100)).await.unwrap_err();
    assert!(
        matches!(err, LogSinkError::Unsent { unsent: 1, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn output_is_bounded_and_dropped_entries_close() {
    let fake = Fake::default();
    let sink = LogSink::new(
        fake.clone(),
        Redactor::from_pairs([]),
        SinkOptions {
            update_interval: Duration::from_millis(20),
            max_entry_bytes: 100,
        },
    );
    let e = sink.open("step.docker.0", vec![]);
    for _ in 0..50 {
        e.stdout(b"0123456789\n");
    }
    drop(e);
    sink.flush(Duration::from_secs(5)).await.unwrap();
    let last = fake.latest().pop().unwrap();
    assert!(last.out.starts_with("stdout: 0123456789\n"));
    assert!(
        last.out
            .ends_with("[hearth: output truncated after 100 bytes]\n"),
        "{}",
        last.out
    );
    assert!(last.out.len() < 160);
    assert_eq!(last.exit_code, Some(-1));
}
