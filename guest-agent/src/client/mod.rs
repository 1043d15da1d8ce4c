//! Async host client: handshake, then many concurrent requests over one
//! connection. A reader task routes incoming frames to per-request channels
//! and enforces the credit windows, so a flooding agent cannot grow host memory.

mod connect;
mod exec;
mod files;
mod route;

pub use connect::{connect, connect_unix, connect_vsock};
pub use exec::{ExecEvent, ExecHandle, ExecOutput, ExecStream};

use crate::archive::ArchiveError;
use crate::outbox::Outbox;
use crate::proto::{self, ErrorCode, Hello, Message, PROTOCOL_VERSION, RequestId};
use crate::transport::{TransportError, read_message};
use route::{Route, RouteRx, Routed};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::io::{AsyncRead, AsyncWrite};

/// Errors seen by the host client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("bad agent address {0:?}: expected unix:PATH or vsock:CID:PORT")]
    BadAddress(String),
    #[error("handshake failed: {0}")]
    Handshake(String),
    #[error("protocol version mismatch: agent speaks {agent}, this client speaks {client}")]
    VersionMismatch { agent: u16, client: u16 },
    #[error("agent reported {code:?}: {message}")]
    Agent { code: ErrorCode, message: String },
    #[error("connection to the agent closed: {0}")]
    ConnectionClosed(String),
    #[error("protocol violation by the agent: {0}")]
    Protocol(String),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("file transfer: {0}")]
    Archive(#[from] ArchiveError),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("no answer from the agent to {request} within {waited:?}")]
    NoAnswer {
        request: &'static str,
        waited: std::time::Duration,
    },
}

/// How long [`Client::shutdown`] waits for the agent's answer (or the connection's end).
pub const SHUTDOWN_ANSWER_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Capabilities the client announces.
pub const CLIENT_CAPABILITIES: &[&str] = &["flow-control"];

/// State shared between the client handles and the reader task.
struct Shared {
    routes: Mutex<HashMap<RequestId, Route>>,
    closed: Mutex<Option<String>>,
}

struct Inner {
    out: Outbox,
    shared: Arc<Shared>,
    next_id: AtomicU32,
    agent: Hello,
    reader: tokio::task::AbortHandle,
}

impl Drop for Inner {
    /// The last handle is gone: stop reading; the writer then drains, shuts
    /// the stream down, and the agent sees the connection close.
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// A connection to an agent. Cheap to clone; all clones share the connection.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// Performs the handshake over `stream` and starts the connection tasks.
    pub async fn handshake<S>(stream: S) -> Result<Client, ClientError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut rd, wr) = tokio::io::split(stream);
        let (out, writer) = Outbox::new(wr);
        tokio::spawn(async move {
            if let Err(e) = writer.await {
                tracing::debug!(error = %e, "client writer stopped");
            }
        });
        let mut ours = proto::hello(CLIENT_CAPABILITIES);
        ours.software_version = format!("hearth-client/{}", proto::AGENT_VERSION);
        out.send(Message::Hello(ours)).await;
        let agent = match read_message(&mut rd).await? {
            Some(Message::Hello(h)) => h,
            Some(Message::Error { message, .. }) => return Err(ClientError::Handshake(message)),
            Some(other) => {
                return Err(ClientError::Handshake(format!(
                    "expected hello, got {:?}",
                    other.id()
                )));
            }
            None => return Err(ClientError::Handshake("agent closed the connection".into())),
        };
        if agent.protocol_version != PROTOCOL_VERSION {
            return Err(ClientError::VersionMismatch {
                agent: agent.protocol_version,
                client: PROTOCOL_VERSION,
            });
        }
        tracing::debug!(agent = %agent.software_version, caps = ?agent.capabilities, "connected to agent");
        let shared = Arc::new(Shared {
            routes: Mutex::new(HashMap::new()),
            closed: Mutex::new(None),
        });
        let reader = tokio::spawn(read_loop(rd, Arc::clone(&shared), out.clone())).abort_handle();
        let inner = Arc::new(Inner {
            out,
            shared,
            next_id: AtomicU32::new(1),
            agent,
            reader,
        });
        Ok(Client { inner })
    }

    /// The agent's hello (version and capabilities).
    pub fn agent_hello(&self) -> &Hello {
        &self.inner.agent
    }

    fn routes(&self) -> MutexGuard<'_, HashMap<RequestId, Route>> {
        self.inner
            .shared
            .routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Allocates a request id and its channel.
    fn register(&self, credit: Option<Arc<AtomicI64>>) -> (RequestId, RouteRx) {
        let (route, rx) = route::route(credit);
        let mut routes = self.routes();
        let mut id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        while id == 0 || routes.contains_key(&id) {
            id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        }
        routes.insert(id, route);
        (id, rx)
    }

    fn unregister(&self, id: RequestId) {
        self.routes().remove(&id);
    }

    async fn send(&self, m: Message) -> Result<(), ClientError> {
        if self.inner.out.send(m).await {
            Ok(())
        } else {
            Err(self.closed_error())
        }
    }

    fn closed_error(&self) -> ClientError {
        let reason = self
            .inner
            .shared
            .closed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        ClientError::ConnectionClosed(reason.unwrap_or_else(|| "connection lost".into()))
    }

    /// Waits for the next message of a request; a closed channel means the
    /// connection is gone.
    async fn recv(&self, rx: &mut RouteRx) -> Result<Message, ClientError> {
        rx.recv().await.ok_or_else(|| self.closed_error())
    }

    /// Round-trips a ping.
    pub async fn ping(&self) -> Result<(), ClientError> {
        let (id, mut rx) = self.register(None);
        let r = async {
            self.send(Message::Ping { id }).await?;
            match self.recv(&mut rx).await? {
                Message::Pong { .. } => Ok(()),
                other => Err(unexpected(other)),
            }
        }
        .await;
        self.unregister(id);
        r
    }

    /// Asks the agent to sync and power off (or exit, on the host). Done, or the connection
    /// ending, is success. Waits at most [`SHUTDOWN_ANSWER_LIMIT`]: a guest that powered off
    /// may leave its connection open (no ACPI: it halts and the VMM keeps running), so an answer
    /// lost on the way must not leave the caller waiting forever.
    pub async fn shutdown(&self) -> Result<(), ClientError> {
        let (id, mut rx) = self.register(None);
        let r = async {
            self.send(Message::Shutdown { id }).await?;
            match tokio::time::timeout(SHUTDOWN_ANSWER_LIMIT, rx.recv()).await {
                Ok(Some(Message::Done { .. }) | None) => Ok(()),
                Ok(Some(other)) => Err(unexpected(other)),
                Err(_) => Err(ClientError::NoAnswer {
                    request: "Shutdown",
                    waited: SHUTDOWN_ANSWER_LIMIT,
                }),
            }
        }
        .await;
        self.unregister(id);
        r
    }
}

/// Turns an unexpected message into the right error.
fn unexpected(m: Message) -> ClientError {
    match m {
        Message::Error { code, message, .. } => ClientError::Agent { code, message },
        other => {
            let text: String = format!("{other:?}").chars().take(120).collect();
            ClientError::Protocol(format!("unexpected message {text}"))
        }
    }
}

async fn read_loop<R: AsyncRead + Unpin>(mut rd: R, inner: Arc<Shared>, out: Outbox) {
    let reason = loop {
        let msg = match read_message(&mut rd).await {
            Ok(Some(m)) => m,
            Ok(None) => break "agent closed the connection".to_string(),
            Err(e) => break format!("reading from agent: {e}"),
        };
        let id = msg.id();
        if id == 0 {
            break match msg {
                Message::Error { code, message, .. } => format!("agent error {code:?}: {message}"),
                other => format!("unexpected connection-level message {other:?}"),
            };
        }
        let violation = {
            let mut routes = inner.routes.lock().unwrap_or_else(|p| p.into_inner());
            let Some(route) = routes.get(&id) else {
                tracing::trace!(id, "message for a finished request dropped");
                continue;
            };
            match route.deliver(msg) {
                Routed::Delivered => None,
                Routed::Violation(reason) => {
                    routes.remove(&id);
                    Some(reason)
                }
            }
        };
        if let Some(reason) = violation {
            tracing::warn!(
                id,
                reason,
                "agent broke a flow-control limit; cancelling request"
            );
            out.send(Message::Cancel { id }).await;
        }
    };
    tracing::debug!(%reason, "client connection ended");
    *inner.closed.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
    inner
        .routes
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clear();
}
