//! The agent's server: accepts connections and multiplexes requests on each.
//! One reader task decodes frames, a dispatcher routes them to per-request
//! tasks, and one writer task (the outbox) sends every reply.

use super::exec::{ExecControl, run_exec};
use super::files::{FileControl, UploadCredit, new_upload_credit, run_get, run_put};
use super::reaper::Reaper;
use crate::outbox::Outbox;
use crate::proto::{self, ErrorCode, Message, PROTOCOL_VERSION, RequestId};
use crate::transport::{TransportError, read_message};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

/// What the agent does when a client asks it to shut down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownMode {
    /// sync, then power the machine off (PID 1 in a guest).
    PowerOff,
    /// sync, then exit the process (host mode).
    Exit,
}

/// State shared by all connections.
pub struct AgentState {
    pub reaper: Arc<Reaper>,
    pub shutdown_tx: mpsc::Sender<()>,
}

enum Active {
    Exec(mpsc::UnboundedSender<ExecControl>),
    Put(mpsc::UnboundedSender<FileControl>, UploadCredit),
    Get(mpsc::UnboundedSender<FileControl>),
}

/// Bytes written to a connection that have not left this machine yet (`None`: unknown). For
/// vsock this is SIOCOUTQ: the bytes the device has not consumed.
pub type UnsentBytes = Box<dyn Fn() -> Option<usize> + Send + Sync>;

/// The most the agent waits, after answering Shutdown, for the answer to leave the machine.
const SHUTDOWN_SEND_LIMIT: Duration = Duration::from_secs(3);
/// Without SIOCOUTQ (older kernels): a pause for the kernel's transmit work instead.
const SHUTDOWN_SEND_PAUSE: Duration = Duration::from_millis(200);

/// SIOCOUTQ of a socket: bytes the transport has not sent yet.
pub fn socket_unsent_bytes(fd: std::os::fd::RawFd) -> Option<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one c_int through the pointer, which points to a live
    // local; an fd that is not a socket only makes the call fail.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n) };
    if rc == 0 {
        usize::try_from(n).ok()
    } else {
        None
    }
}

/// Waits until `unsent` reports nothing left to send, at most `limit`. A powered-off guest sends
/// nothing more: the answer to Shutdown must have left before, or the client waits for it
/// forever (a guest without ACPI halts, and its VMM may keep the connection open).
async fn wait_until_sent(unsent: &UnsentBytes, limit: Duration) {
    let start = tokio::time::Instant::now();
    loop {
        match unsent() {
            Some(0) => return,
            Some(_) if start.elapsed() < limit => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Some(n) => {
                tracing::warn!(
                    unsent = n,
                    "shutdown answer not sent after {limit:?}; going on"
                );
                return;
            }
            None => {
                tokio::time::sleep(SHUTDOWN_SEND_PAUSE).await;
                return;
            }
        }
    }
}

/// Serves one client connection until it closes. `unsent`, when the transport can tell, is
/// used to make sure the answer to Shutdown has left the machine before it powers off.
pub async fn serve_connection<S>(stream: S, state: Arc<AgentState>, unsent: Option<UnsentBytes>)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, wr) = tokio::io::split(stream);
    let (out, writer) = Outbox::new(wr);
    let writer = tokio::spawn(writer);
    out.send(Message::Hello(proto::hello(proto::AGENT_CAPABILITIES)))
        .await;

    match read_message(&mut rd).await {
        Ok(Some(Message::Hello(h))) if h.protocol_version == PROTOCOL_VERSION => {
            tracing::debug!(client = %h.software_version, "client connected");
        }
        Ok(Some(Message::Hello(h))) => {
            let message = format!(
                "protocol version mismatch: client speaks {}, agent speaks {PROTOCOL_VERSION}",
                h.protocol_version
            );
            tracing::warn!("{message}");
            out.send_flushed(Message::Error {
                id: 0,
                code: ErrorCode::VersionMismatch,
                message,
            })
            .await;
            return;
        }
        Ok(Some(other)) => {
            let message = format!("expected hello, got message for request {}", other.id());
            out.send_flushed(Message::Error {
                id: 0,
                code: ErrorCode::Protocol,
                message,
            })
            .await;
            return;
        }
        Ok(None) => return,
        Err(e) => {
            report_transport_error(&out, &e).await;
            return;
        }
    }

    // Reader task: decodes frames and hands them over; the channel bound keeps
    // a fast client from queueing unbounded work.
    let (in_tx, mut in_rx) = mpsc::channel::<Result<Message, TransportError>>(16);
    let reader = tokio::spawn(async move {
        loop {
            let r = read_message(&mut rd).await;
            let stop = !matches!(r, Ok(Some(_)));
            let item = match r {
                Ok(Some(m)) => Ok(m),
                Ok(None) => break,
                Err(e) => Err(e),
            };
            if in_tx.send(item).await.is_err() || stop {
                break;
            }
        }
    });

    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<RequestId>();
    let mut active: HashMap<RequestId, Active> = HashMap::new();
    loop {
        tokio::select! {
            Some(id) = done_rx.recv() => { active.remove(&id); }
            item = in_rx.recv() => match item {
                None => break,
                Some(Err(e)) => {
                    report_transport_error(&out, &e).await;
                    break;
                }
                Some(Ok(msg)) => {
                    if !dispatch(msg, &mut active, &out, &state, &done_tx, unsent.as_ref()).await {
                        break;
                    }
                }
            },
        }
    }
    // Dropping the control senders makes every request task stop; exec tasks
    // kill their process groups.
    drop(active);
    reader.abort();
    drop(out);
    let _ = writer.await;
    tracing::debug!("connection closed");
}

async fn report_transport_error(out: &Outbox, e: &TransportError) {
    tracing::warn!(error = %e, "bad input from client; closing connection");
    if !matches!(e, TransportError::Io(_)) {
        let message = e.to_string();
        out.send_flushed(Message::Error {
            id: 0,
            code: ErrorCode::Protocol,
            message,
        })
        .await;
    }
}

fn spawn_request<F>(id: RequestId, done: &mpsc::UnboundedSender<RequestId>, fut: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let done = done.clone();
    tokio::spawn(async move {
        fut.await;
        let _ = done.send(id);
    });
}

/// Routes one message. Returns false when the connection must close.
async fn dispatch(
    msg: Message,
    active: &mut HashMap<RequestId, Active>,
    out: &Outbox,
    state: &Arc<AgentState>,
    done: &mpsc::UnboundedSender<RequestId>,
    unsent: Option<&UnsentBytes>,
) -> bool {
    let id = msg.id();
    let starts_request = matches!(
        msg,
        Message::Exec { .. } | Message::PutFiles { .. } | Message::GetFiles { .. }
    );
    if starts_request && active.contains_key(&id) {
        let message = format!("request id {id} is already in use");
        return out
            .send(Message::Error {
                id,
                code: ErrorCode::DuplicateRequest,
                message,
            })
            .await;
    }
    match msg {
        Message::Exec { id, spec } => {
            let (tx, rx) = mpsc::unbounded_channel();
            active.insert(id, Active::Exec(tx));
            spawn_request(
                id,
                done,
                run_exec(id, spec, rx, out.clone(), Arc::clone(&state.reaper)),
            );
        }
        Message::PutFiles { id, dest } => {
            let (tx, rx) = mpsc::unbounded_channel();
            let credit = new_upload_credit();
            active.insert(id, Active::Put(tx, Arc::clone(&credit)));
            spawn_request(id, done, run_put(id, dest, credit, rx, out.clone()));
        }
        Message::GetFiles { id, path, window } => {
            let (tx, rx) = mpsc::unbounded_channel();
            active.insert(id, Active::Get(tx));
            spawn_request(id, done, run_get(id, path, window, rx, out.clone()));
        }
        Message::Credit { id, bytes } => match active.get(&id) {
            Some(Active::Exec(tx)) => {
                let _ = tx.send(ExecControl::Credit(bytes));
            }
            Some(Active::Get(tx)) => {
                let _ = tx.send(FileControl::Credit(bytes));
            }
            _ => tracing::trace!(id, "credit for finished request ignored"),
        },
        Message::Signal { id, signal } => match active.get(&id) {
            Some(Active::Exec(tx)) => {
                let _ = tx.send(ExecControl::Signal(signal));
            }
            Some(_) => {
                let message = format!("request {id} is a file transfer; only execs take signals");
                return out
                    .send(Message::Error {
                        id,
                        code: ErrorCode::Unsupported,
                        message,
                    })
                    .await;
            }
            // The exec may just have finished; the client drops the answer then.
            None => return unknown(out, id, "exec").await,
        },
        Message::Cancel { id } => match active.get(&id) {
            Some(Active::Exec(tx)) => {
                let _ = tx.send(ExecControl::Cancel);
            }
            Some(Active::Put(tx, _)) | Some(Active::Get(tx)) => {
                let _ = tx.send(FileControl::Cancel);
            }
            None => return unknown(out, id, "request").await,
        },
        Message::FileChunk { id, data } => match active.get(&id) {
            Some(Active::Put(tx, credit)) => {
                let len = i64::try_from(crate::proto::data_cost(data.len())).unwrap_or(i64::MAX);
                if credit.fetch_sub(len, Ordering::SeqCst) < len {
                    let message = "upload exceeded the granted credit window".to_string();
                    let _ = tx.send(FileControl::Cancel);
                    active.remove(&id);
                    return out
                        .send(Message::Error {
                            id,
                            code: ErrorCode::Protocol,
                            message,
                        })
                        .await;
                }
                let _ = tx.send(FileControl::Chunk(data));
            }
            _ => return unknown(out, id, "upload").await,
        },
        Message::FileEnd { id } => match active.get(&id) {
            Some(Active::Put(tx, _)) => {
                let _ = tx.send(FileControl::End);
            }
            _ => return unknown(out, id, "upload").await,
        },
        Message::Ping { id } => return out.send(Message::Pong { id }).await,
        Message::Shutdown { id } => {
            tracing::info!("shutdown requested");
            out.send_flushed(Message::Done { id }).await;
            if let Some(unsent) = unsent {
                wait_until_sent(unsent, SHUTDOWN_SEND_LIMIT).await;
            }
            let _ = state.shutdown_tx.send(()).await;
            return false;
        }
        Message::Hello(_) => {
            let message = "hello sent twice".to_string();
            return out
                .send(Message::Error {
                    id: 0,
                    code: ErrorCode::Protocol,
                    message,
                })
                .await;
        }
        other => {
            let message = format!("message {other:?} is not a request the agent accepts");
            let message: String = message.chars().take(200).collect();
            return out
                .send(Message::Error {
                    id,
                    code: ErrorCode::Protocol,
                    message,
                })
                .await;
        }
    }
    true
}

async fn unknown(out: &Outbox, id: RequestId, what: &str) -> bool {
    let message = format!("no active {what} with request id {id}");
    out.send(Message::Error {
        id,
        code: ErrorCode::UnknownRequest,
        message,
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test]
    async fn shutdown_waits_until_the_answer_is_sent_and_no_longer() {
        // Unsent bytes drain after a few polls: the wait ends then.
        let left = Arc::new(AtomicUsize::new(3));
        let l = Arc::clone(&left);
        let unsent: UnsentBytes = Box::new(move || {
            let n = l.load(Ordering::SeqCst);
            l.store(n.saturating_sub(1), Ordering::SeqCst);
            Some(n)
        });
        let t = std::time::Instant::now();
        wait_until_sent(&unsent, Duration::from_secs(5)).await;
        assert_eq!(left.load(Ordering::SeqCst), 0);
        assert!(t.elapsed() < Duration::from_secs(2));
        // Never drains: gives up at the limit.
        let stuck: UnsentBytes = Box::new(|| Some(7));
        let t = std::time::Instant::now();
        wait_until_sent(&stuck, Duration::from_millis(100)).await;
        assert!(t.elapsed() >= Duration::from_millis(100) && t.elapsed() < Duration::from_secs(2));
    }
}
