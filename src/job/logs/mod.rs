//! Streaming a job's output into execution log entries, as the original executor does: an entry
//! is added as soon as it opens, re-sent in full at least every `update_interval` (1 s) while it
//! changes, and once more when it finishes (with `exitCode` and `durationMs`). Every snapshot is
//! redacted before it leaves the process. While the frontend is unreachable nothing is dropped:
//! entries stay in memory (each bounded by `max_entry_bytes`) and are sent, in order, once it is
//! back; [`LogSink::flush`] waits for that before the job is marked.

mod lines;

pub use lines::{LineSplitter, MAX_LINE_BYTES, Stream};

use crate::job::redact::Redactor;
use crate::queue::client::{ClientError, JobRef, QueueClient};
use crate::queue::types::ExecutionLogEntry;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Where entries go: the queue API in production, anything in tests.
pub trait LogTransport: Send + Sync + 'static {
    /// addExecutionLogEntry; returns the entry id.
    fn add(
        &self,
        entry: &ExecutionLogEntry,
    ) -> impl Future<Output = Result<i64, ClientError>> + Send;
    /// updateExecutionLogEntry with the full entry.
    fn update(
        &self,
        entry_id: i64,
        entry: &ExecutionLogEntry,
    ) -> impl Future<Output = Result<(), ClientError>> + Send;
}

/// The queue API as a [`LogTransport`] for one job.
#[derive(Clone)]
pub struct QueueLogTransport {
    pub client: QueueClient,
    pub job: JobRef,
}

impl LogTransport for QueueLogTransport {
    async fn add(&self, entry: &ExecutionLogEntry) -> Result<i64, ClientError> {
        self.client.add_execution_log_entry(&self.job, entry).await
    }

    async fn update(&self, entry_id: i64, entry: &ExecutionLogEntry) -> Result<(), ClientError> {
        self.client
            .update_execution_log_entry(&self.job, entry_id, entry)
            .await
    }
}

/// Sink tuning.
#[derive(Debug, Clone)]
pub struct SinkOptions {
    /// Changed entries are re-sent at least this often (1 s).
    pub update_interval: Duration,
    /// `out` of one entry is cut (with a note) beyond this many bytes, which bounds the backlog.
    pub max_entry_bytes: usize,
}

impl Default for SinkOptions {
    fn default() -> Self {
        SinkOptions {
            update_interval: Duration::from_secs(1),
            max_entry_bytes: 16 << 20,
        }
    }
}

/// Flush failures.
#[derive(Debug, thiserror::Error)]
pub enum LogSinkError {
    #[error("{unsent} log entries could not be delivered within {waited:?}")]
    Unsent { unsent: usize, waited: Duration },
}

struct EntryState {
    entry: ExecutionLogEntry,
    opened: Instant,
    splitter: LineSplitter,
    id: Option<i64>,
    version: u64,
    sent_version: u64,
    finished: bool,
    truncated: bool,
}

impl EntryState {
    fn pending(&self) -> bool {
        self.id.is_none() || self.version > self.sent_version
    }
}

#[derive(Default)]
struct SinkState {
    entries: Vec<EntryState>,
    closing: bool,
}

struct Shared {
    state: Mutex<SinkState>,
    notify: Notify,
    redactor: Redactor,
    max_entry_bytes: usize,
}

impl Shared {
    fn with_state<R>(&self, f: impl FnOnce(&mut SinkState) -> R) -> R {
        let mut guard = match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }
}

/// A job's log sink; [`LogSink::open`] starts entries.
pub struct LogSink {
    shared: Arc<Shared>,
    writer: JoinHandle<()>,
}

/// One open entry; write output into it, then [`EntryHandle::finish`].
pub struct EntryHandle {
    shared: Arc<Shared>,
    index: usize,
    done: bool,
}

fn rfc3339_now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl LogSink {
    /// Starts the background writer (needs a tokio runtime).
    pub fn new<T: LogTransport>(transport: T, redactor: Redactor, opts: SinkOptions) -> LogSink {
        let shared = Arc::new(Shared {
            state: Mutex::new(SinkState::default()),
            notify: Notify::new(),
            redactor,
            max_entry_bytes: opts.max_entry_bytes,
        });
        let writer = tokio::spawn(run_writer(shared.clone(), transport, opts.update_interval));
        LogSink { shared, writer }
    }

    /// Opens an entry (sent right away) with `key` (e.g. `setup.git.fetch`, `step.docker.0`)
    /// and the command it runs.
    pub fn open(&self, key: &str, command: Vec<String>) -> EntryHandle {
        let index = self.shared.with_state(|s| {
            s.entries.push(EntryState {
                entry: ExecutionLogEntry {
                    key: key.to_string(),
                    command,
                    start_time: rfc3339_now(),
                    ..Default::default()
                },
                opened: Instant::now(),
                splitter: LineSplitter::default(),
                id: None,
                version: 1,
                sent_version: 0,
                finished: false,
                truncated: false,
            });
            s.entries.len() - 1
        });
        self.shared.notify.notify_one();
        EntryHandle {
            shared: self.shared.clone(),
            index,
            done: false,
        }
    }

    /// Entries not yet delivered in their latest form.
    pub fn pending(&self) -> usize {
        self.shared
            .with_state(|s| s.entries.iter().filter(|e| e.pending()).count())
    }

    /// Sends everything still pending and stops the writer; waits at most `timeout`. Call it
    /// before mark*: the job token is deleted when the job is marked.
    pub async fn flush(self, timeout: Duration) -> Result<(), LogSinkError> {
        self.shared.with_state(|s| s.closing = true);
        self.shared.notify.notify_one();
        let started = Instant::now();
        let mut writer = self.writer;
        if tokio::time::timeout(timeout, &mut writer).await.is_ok() {
            return Ok(());
        }
        writer.abort();
        let unsent = self
            .shared
            .with_state(|s| s.entries.iter().filter(|e| e.pending()).count());
        Err(LogSinkError::Unsent {
            unsent,
            waited: started.elapsed(),
        })
    }
}

impl EntryHandle {
    /// Output bytes from the command's stdout.
    pub fn stdout(&self, chunk: &[u8]) {
        self.push(Stream::Stdout, chunk);
    }

    /// Output bytes from the command's stderr.
    pub fn stderr(&self, chunk: &[u8]) {
        self.push(Stream::Stderr, chunk);
    }

    fn push(&self, stream: Stream, chunk: &[u8]) {
        let max = self.shared.max_entry_bytes;
        self.shared.with_state(|s| {
            let e = &mut s.entries[self.index];
            let mut text = String::new();
            e.splitter.push(stream, chunk, &mut text);
            append(e, &text, max);
        });
    }

    /// Appends text as is (e.g. `$ mkfs.ext4 …` lines of setup entries); end it with `\n`.
    pub fn write_raw(&self, text: &str) {
        let max = self.shared.max_entry_bytes;
        self.shared
            .with_state(|s| append(&mut s.entries[self.index], text, max));
    }

    /// Closes the entry with `exit_code`; it is sent at once with `durationMs`.
    pub fn finish(mut self, exit_code: i32) {
        self.close(exit_code);
    }

    fn close(&mut self, exit_code: i32) {
        if self.done {
            return;
        }
        self.done = true;
        let max = self.shared.max_entry_bytes;
        self.shared.with_state(|s| {
            let e = &mut s.entries[self.index];
            let mut text = String::new();
            e.splitter.finish(&mut text);
            append(e, &text, max);
            e.entry.exit_code = Some(exit_code);
            e.entry.duration_ms = Some(e.opened.elapsed().as_millis() as i64);
            e.finished = true;
            e.version += 1;
        });
        self.shared.notify.notify_one();
    }
}

impl Drop for EntryHandle {
    /// An entry dropped without `finish` is closed with exit code -1 so it never looks running.
    fn drop(&mut self) {
        if !self.done {
            tracing::warn!(
                index = self.index,
                "log entry dropped without finish; closing it"
            );
            self.close(-1);
        }
    }
}

fn append(e: &mut EntryState, text: &str, max: usize) {
    if text.is_empty() || e.truncated {
        return;
    }
    if e.entry.out.len() + text.len() > max {
        let room = max.saturating_sub(e.entry.out.len());
        let mut cut = room.min(text.len());
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        e.entry.out.push_str(&text[..cut]);
        e.entry
            .out
            .push_str(&format!("\n[hearth: output truncated after {max} bytes]\n"));
        e.truncated = true;
    } else {
        e.entry.out.push_str(text);
    }
    e.version += 1;
}

async fn run_writer<T: LogTransport>(shared: Arc<Shared>, transport: T, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let closing = shared.with_state(|s| s.closing);
        let all_sent = sync_pass(&shared, &transport).await;
        if closing && all_sent {
            return;
        }
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.notify.notified() => {}
        }
    }
}

/// Sends each pending entry in order; stops at the first failure (entry ids are positions, so
/// adds must stay in order). True when nothing is pending afterwards.
async fn sync_pass<T: LogTransport>(shared: &Shared, transport: &T) -> bool {
    let count = shared.with_state(|s| s.entries.len());
    for index in 0..count {
        let snapshot = shared.with_state(|s| {
            let e = &s.entries[index];
            e.pending().then(|| {
                let redacted = ExecutionLogEntry {
                    key: e.entry.key.clone(),
                    command: shared.redactor.redact_all(&e.entry.command),
                    start_time: e.entry.start_time.clone(),
                    exit_code: e.entry.exit_code,
                    out: shared.redactor.redact(&e.entry.out),
                    duration_ms: e.entry.duration_ms,
                };
                (e.id, e.version, redacted)
            })
        });
        let Some((id, version, entry)) = snapshot else {
            continue;
        };
        let result = match id {
            None => transport.add(&entry).await.map(Some),
            Some(id) => transport.update(id, &entry).await.map(|()| None),
        };
        match result {
            Ok(new_id) => shared.with_state(|s| {
                let e = &mut s.entries[index];
                if let Some(new_id) = new_id {
                    e.id = Some(new_id);
                }
                e.sent_version = e.sent_version.max(version);
            }),
            Err(err) => {
                tracing::warn!(key = %entry.key, error = %err, "sending log entry failed; will retry");
                return false;
            }
        }
    }
    shared.with_state(|s| s.entries.iter().all(|e| !e.pending()))
}

#[cfg(test)]
mod tests;
