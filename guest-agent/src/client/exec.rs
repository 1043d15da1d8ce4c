//! Exec from the host side: a stream of events with credit granted as the
//! caller consumes output, plus cancel/signal handles.

use super::{Client, ClientError, unexpected};
use crate::proto::{DEFAULT_WINDOW, ExecSpec, ExitInfo, Message, OutputStream, Program, RequestId};
use std::sync::Arc;
use std::sync::atomic::AtomicI64;

impl ExecSpec {
    /// Runs `argv` directly.
    pub fn argv<I, A>(argv: I) -> ExecSpec
    where
        I: IntoIterator<Item = A>,
        A: Into<Vec<u8>>,
    {
        Self::from_program(Program::Argv(argv.into_iter().map(Into::into).collect()))
    }

    /// Runs a shell script (bash when present, else /bin/sh).
    pub fn script(script: impl Into<Vec<u8>>) -> ExecSpec {
        Self::from_program(Program::Script(script.into()))
    }

    fn from_program(program: Program) -> ExecSpec {
        ExecSpec {
            program,
            env: Vec::new(),
            cwd: None,
            uid: None,
            gid: None,
            stdin: None,
            timeout_ms: None,
            window: DEFAULT_WINDOW,
        }
    }
}

/// One event of a running exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    Started { pid: u32 },
    Output { stream: OutputStream, data: Vec<u8> },
    Exited(ExitInfo),
}

/// Everything an exec produced, gathered in memory.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub info: ExitInfo,
}

/// Cancels or signals a running exec from anywhere.
#[derive(Clone)]
pub struct ExecHandle {
    client: Client,
    id: RequestId,
}

impl ExecHandle {
    /// Kills the exec's whole process group; the result says `cancelled`.
    pub async fn cancel(&self) -> Result<(), ClientError> {
        self.client.send(Message::Cancel { id: self.id }).await
    }
    /// Sends `signal` to the exec's process group.
    pub async fn signal(&self, signal: i32) -> Result<(), ClientError> {
        self.client
            .send(Message::Signal {
                id: self.id,
                signal,
            })
            .await
    }
}

/// The events of one exec. Output credit is returned to the agent as the
/// caller takes events, so an unread stream makes the agent stop reading the
/// child's pipes. Dropping an unfinished stream cancels the exec.
pub struct ExecStream {
    client: Client,
    id: RequestId,
    rx: super::route::RouteRx,
    window: u32,
    unacked: u32,
    finished: bool,
}

impl Client {
    /// Starts an exec.
    pub async fn exec(&self, mut spec: ExecSpec) -> Result<ExecStream, ClientError> {
        if spec.window == 0 {
            spec.window = DEFAULT_WINDOW;
        }
        if spec.window < crate::proto::MIN_WINDOW {
            return Err(ClientError::InvalidRequest(format!(
                "window {} is below the minimum of {}",
                spec.window,
                crate::proto::MIN_WINDOW
            )));
        }
        if spec
            .stdin
            .as_ref()
            .is_some_and(|s| s.len() > crate::proto::MAX_STDIN)
        {
            return Err(ClientError::InvalidRequest(format!(
                "stdin larger than {} bytes; use put_files for big inputs",
                crate::proto::MAX_STDIN
            )));
        }
        let window = spec.window;
        let credit = Arc::new(AtomicI64::new(i64::from(window)));
        let (id, rx) = self.register(Some(credit));
        let stream = ExecStream {
            client: self.clone(),
            id,
            rx,
            window,
            unacked: 0,
            finished: false,
        };
        self.send(Message::Exec { id, spec }).await?;
        Ok(stream)
    }

    /// Runs an exec to completion and collects its output in memory.
    pub async fn exec_collect(&self, spec: ExecSpec) -> Result<ExecOutput, ClientError> {
        self.exec(spec).await?.collect().await
    }
}

impl ExecStream {
    /// The request id on the connection.
    pub fn id(&self) -> RequestId {
        self.id
    }

    /// A handle for cancel/signal that can live in another task.
    pub fn handle(&self) -> ExecHandle {
        ExecHandle {
            client: self.client.clone(),
            id: self.id,
        }
    }

    /// The next event; `Ok(None)` after `Exited` was returned.
    pub async fn next(&mut self) -> Result<Option<ExecEvent>, ClientError> {
        if self.finished {
            return Ok(None);
        }
        let msg = match self.client.recv(&mut self.rx).await {
            Ok(m) => m,
            Err(e) => {
                self.finished = true;
                return Err(e);
            }
        };
        match msg {
            Message::Started { pid, .. } => Ok(Some(ExecEvent::Started { pid })),
            Message::Output { stream, data, .. } => {
                self.grant(crate::proto::data_cost(data.len())).await?;
                Ok(Some(ExecEvent::Output { stream, data }))
            }
            Message::Exited { info, .. } => {
                self.finish();
                Ok(Some(ExecEvent::Exited(info)))
            }
            other => {
                self.finish();
                Err(unexpected(other))
            }
        }
    }

    /// Returns consumed bytes to the agent in batches of a quarter window.
    async fn grant(&mut self, n: u64) -> Result<(), ClientError> {
        self.unacked = self
            .unacked
            .saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
        if self.unacked >= (self.window / 4).max(1) {
            let bytes = std::mem::take(&mut self.unacked);
            if let Some(route) = self.client.routes().get(&self.id)
                && let Some(c) = &route.credit
            {
                c.fetch_add(i64::from(bytes), std::sync::atomic::Ordering::SeqCst);
            }
            self.client
                .send(Message::Credit { id: self.id, bytes })
                .await?;
        }
        Ok(())
    }

    fn finish(&mut self) {
        self.finished = true;
        self.client.unregister(self.id);
    }

    /// Kills the exec's process group.
    pub async fn cancel(&self) -> Result<(), ClientError> {
        self.handle().cancel().await
    }

    /// Reads all events and returns the collected output.
    pub async fn collect(mut self) -> Result<ExecOutput, ClientError> {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        while let Some(ev) = self.next().await? {
            match ev {
                ExecEvent::Started { .. } => {}
                ExecEvent::Output {
                    stream: OutputStream::Stdout,
                    data,
                } => stdout.extend_from_slice(&data),
                ExecEvent::Output {
                    stream: OutputStream::Stderr,
                    data,
                } => stderr.extend_from_slice(&data),
                ExecEvent::Exited(info) => {
                    return Ok(ExecOutput {
                        stdout,
                        stderr,
                        info,
                    });
                }
            }
        }
        Err(ClientError::Protocol(
            "exec stream ended without an exit".into(),
        ))
    }
}

impl Drop for ExecStream {
    fn drop(&mut self) {
        if !self.finished {
            self.client.unregister(self.id);
            let client = self.client.clone();
            let id = self.id;
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = client.send(Message::Cancel { id }).await;
                });
            }
        }
    }
}
