//! HTTP client for Sourcegraph's `/.executors/` queue API (a real frontend or hearth's embedded
//! server): `token-executor` auth for dequeue/heartbeat, job-scoped `Bearer` auth with
//! `X-Sourcegraph-Job-ID` / `X-Sourcegraph-Executor-Name` for log entries and mark*, and retries
//! with exponential backoff while the frontend is unreachable.

use crate::config::{Config, EXECUTOR_VERSION, QueueSelection};
use crate::metrics::Metrics;
use crate::queue::types::{
    AddExecutionLogEntryRequest, DequeueRequest, ExecutionLogEntry, ExecutorTelemetry,
    HeartbeatRequest, HeartbeatResponse, Job, MarkCompleteRequest, MarkErroredRequest, QueueJobIds,
    UpdateExecutionLogEntryRequest,
};
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Client errors (after retries, for transient ones).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{op}: request failed: {source}")]
    Transport {
        op: &'static str,
        source: reqwest::Error,
    },
    #[error("{op}: unexpected status code {status}: {body}")]
    Status {
        op: &'static str,
        status: u16,
        body: String,
    },
    #[error("{op}: decoding the response: {source}")]
    Decode {
        op: &'static str,
        source: serde_json::Error,
    },
    #[error("building the HTTP client: {0}")]
    Build(reqwest::Error),
    #[error("job {0} has no queue and the executor polls several queues")]
    NoQueue(i64),
}

impl ClientError {
    /// Worth retrying: the frontend was unreachable, timed out or answered 429/502/503/504.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Transport { .. } => true,
            ClientError::Status { status, .. } => matches!(status, 429 | 502 | 503 | 504),
            _ => false,
        }
    }
}

/// Exponential backoff for transient failures.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub initial_delay: Duration,
    pub max_delay: Duration,
    /// Total attempts per call, first included; 0 retries forever.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(5),
            max_attempts: 5,
        }
    }
}

/// Everything the client needs; [`ClientOptions::from_config`] fills it from a [`Config`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub base_url: String,
    pub password: String,
    pub executor_name: String,
    pub queues: QueueSelection,
    pub version: String,
    pub num_cpus: u32,
    pub memory: String,
    pub disk_space: String,
    pub retry: RetryPolicy,
    pub request_timeout: Duration,
}

impl ClientOptions {
    /// Options for `config`; `base_url` overrides the frontend URL (the embedded server's).
    pub fn from_config(config: &Config, base_url: Option<&str>) -> ClientOptions {
        ClientOptions {
            base_url: base_url
                .map(str::to_string)
                .or_else(|| config.frontend_url.clone())
                .unwrap_or_default(),
            password: config.frontend_password.clone(),
            executor_name: config.executor_name.clone(),
            queues: config.queues.clone(),
            version: EXECUTOR_VERSION.to_string(),
            num_cpus: config.job_num_cpus,
            memory: config.job_memory.clone(),
            disk_space: config.disk_space.clone(),
            retry: RetryPolicy::default(),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// What job-scoped calls need to know about a dequeued job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRef {
    pub id: i64,
    pub token: String,
    /// The queue in the URL: the job's own, else the single configured queue.
    pub queue: String,
}

/// The queue client. Cheap to clone.
#[derive(Clone)]
pub struct QueueClient {
    http: reqwest::Client,
    opts: ClientOptions,
    metrics: Option<Metrics>,
}

impl QueueClient {
    pub fn new(opts: ClientOptions, metrics: Option<Metrics>) -> Result<QueueClient, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(opts.request_timeout)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(ClientError::Build)?;
        Ok(QueueClient {
            http,
            opts,
            metrics,
        })
    }

    /// The same client, recording `src_apiworker_apiclient_queue_*` into `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> QueueClient {
        self.metrics = Some(metrics);
        self
    }

    pub fn options(&self) -> &ClientOptions {
        &self.opts
    }

    /// The [`JobRef`] for a job dequeued by this client.
    pub fn job_ref(&self, job: &Job) -> Result<JobRef, ClientError> {
        let queue = match (&job.queue, &self.opts.queues) {
            (Some(q), _) => q.clone(),
            (None, QueueSelection::Single(q)) => q.clone(),
            (None, QueueSelection::Multi(qs)) if qs.len() == 1 => qs[0].clone(),
            (None, QueueSelection::Multi(_)) => return Err(ClientError::NoQueue(job.id)),
        };
        Ok(JobRef {
            id: job.id,
            token: job.token.clone(),
            queue,
        })
    }

    fn url(&self, endpoint: &str) -> String {
        format!(
            "{}/.executors/{endpoint}",
            self.opts.base_url.trim_end_matches('/')
        )
    }

    /// Asks for a job: 200 → `Some(job)`, 204 → `None`.
    pub async fn dequeue(&self) -> Result<Option<Job>, ClientError> {
        let (endpoint, queues) = match &self.opts.queues {
            QueueSelection::Single(q) => (format!("queue/{q}/dequeue"), Vec::new()),
            QueueSelection::Multi(qs) => ("queue/dequeue".to_string(), qs.clone()),
        };
        let body = DequeueRequest {
            queues,
            executor_name: self.opts.executor_name.clone(),
            version: self.opts.version.clone(),
            num_cpus: self.opts.num_cpus,
            memory: self.opts.memory.clone(),
            disk_space: self.opts.disk_space.clone(),
        };
        let res = self.post("Dequeue", &endpoint, &body, None).await;
        if res.is_err()
            && let Some(m) = &self.metrics
        {
            m.dequeue_error();
        }
        match res? {
            Some(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|source| ClientError::Decode {
                        op: "Dequeue",
                        source,
                    })
            }
            None => Ok(None),
        }
    }

    /// Heartbeat for the running jobs (record ids `"<id>"` or `"<id>-<queue>"`). Returns the ids
    /// the frontend still knows and those it wants cancelled, as record ids of the same form.
    pub async fn heartbeat(
        &self,
        running: &[String],
        telemetry: &ExecutorTelemetry,
    ) -> Result<HeartbeatResponse, ClientError> {
        let (endpoint, body) = self.heartbeat_body(running, telemetry);
        let bytes = self
            .post("Heartbeat", &endpoint, &body, None)
            .await?
            .unwrap_or_default();
        if bytes.is_empty() {
            return Ok(HeartbeatResponse::default());
        }
        serde_json::from_slice(&bytes).map_err(|source| ClientError::Decode {
            op: "Heartbeat",
            source,
        })
    }

    /// The startup connectivity check: a minimal heartbeat (registers this executor).
    pub async fn ping(&self) -> Result<(), ClientError> {
        self.heartbeat(&[], &ExecutorTelemetry::default())
            .await
            .map(|_| ())
    }

    fn heartbeat_body(
        &self,
        running: &[String],
        telemetry: &ExecutorTelemetry,
    ) -> (String, HeartbeatRequest) {
        match &self.opts.queues {
            QueueSelection::Single(q) => {
                let ids: Vec<i64> = running.iter().filter_map(|r| r.parse().ok()).collect();
                (
                    format!("queue/{q}/heartbeat"),
                    HeartbeatRequest {
                        version: "V2".into(),
                        executor_name: self.opts.executor_name.clone(),
                        job_ids: Some(ids),
                        telemetry: telemetry.clone(),
                        ..Default::default()
                    },
                )
            }
            QueueSelection::Multi(qs) => {
                let mut by_queue: BTreeMap<String, Vec<String>> = BTreeMap::new();
                for uid in running {
                    if let Some((id, queue)) = uid.split_once('-') {
                        by_queue
                            .entry(queue.to_string())
                            .or_default()
                            .push(id.to_string());
                    }
                }
                (
                    "queue/heartbeat".to_string(),
                    HeartbeatRequest {
                        version: String::new(),
                        executor_name: self.opts.executor_name.clone(),
                        job_ids: None,
                        job_ids_by_queue: by_queue
                            .into_iter()
                            .map(|(queue_name, job_ids)| QueueJobIds {
                                queue_name,
                                job_ids,
                            })
                            .collect(),
                        queue_names: qs.clone(),
                        telemetry: telemetry.clone(),
                    },
                )
            }
        }
    }

    /// Appends a log entry; returns the entry id for updates.
    pub async fn add_execution_log_entry(
        &self,
        job: &JobRef,
        entry: &ExecutionLogEntry,
    ) -> Result<i64, ClientError> {
        let body = AddExecutionLogEntryRequest {
            executor_name: self.opts.executor_name.clone(),
            job_id: job.id,
            entry: entry.clone(),
        };
        let endpoint = format!("queue/{}/addExecutionLogEntry", job.queue);
        let bytes = self
            .post("AddExecutionLogEntry", &endpoint, &body, Some(job))
            .await?
            .unwrap_or_default();
        serde_json::from_slice(&bytes).map_err(|source| ClientError::Decode {
            op: "AddExecutionLogEntry",
            source,
        })
    }

    /// Replaces entry `entry_id` with the full `entry`.
    pub async fn update_execution_log_entry(
        &self,
        job: &JobRef,
        entry_id: i64,
        entry: &ExecutionLogEntry,
    ) -> Result<(), ClientError> {
        let body = UpdateExecutionLogEntryRequest {
            executor_name: self.opts.executor_name.clone(),
            job_id: job.id,
            entry_id,
            entry: entry.clone(),
        };
        let endpoint = format!("queue/{}/updateExecutionLogEntry", job.queue);
        self.post("UpdateExecutionLogEntry", &endpoint, &body, Some(job))
            .await
            .map(|_| ())
    }

    /// markComplete. `Ok(false)`: 404, the job is no longer this executor's.
    pub async fn mark_complete(&self, job: &JobRef) -> Result<bool, ClientError> {
        let body = MarkCompleteRequest {
            executor_name: self.opts.executor_name.clone(),
            job_id: job.id,
        };
        self.mark("MarkComplete", "markComplete", job, &body).await
    }

    /// markErrored (retryable failure as the frontend sees it).
    pub async fn mark_errored(&self, job: &JobRef, message: &str) -> Result<bool, ClientError> {
        let body = self.errored_body(job, message);
        self.mark("MarkErrored", "markErrored", job, &body).await
    }

    /// markFailed (terminal).
    pub async fn mark_failed(&self, job: &JobRef, message: &str) -> Result<bool, ClientError> {
        let body = self.errored_body(job, message);
        self.mark("MarkFailed", "markFailed", job, &body).await
    }

    fn errored_body(&self, job: &JobRef, message: &str) -> MarkErroredRequest {
        MarkErroredRequest {
            executor_name: self.opts.executor_name.clone(),
            job_id: job.id,
            error_message: message.to_string(),
        }
    }

    async fn mark<B: Serialize>(
        &self,
        op: &'static str,
        name: &str,
        job: &JobRef,
        body: &B,
    ) -> Result<bool, ClientError> {
        let endpoint = format!("queue/{}/{name}", job.queue);
        match self.post(op, &endpoint, body, Some(job)).await {
            Ok(_) => Ok(true),
            Err(ClientError::Status { status: 404, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `GET /.executors/test/auth`: `Ok(())` when the frontend accepts the password.
    pub async fn test_auth(&self) -> Result<(), ClientError> {
        let op = "TestAuth";
        let req = self
            .http
            .get(self.url("test/auth"))
            .header(CONTENT_TYPE, "application/json")
            .header(
                AUTHORIZATION,
                format!("token-executor {}", self.opts.password),
            );
        let res = req
            .send()
            .await
            .map_err(|source| ClientError::Transport { op, source })?;
        let status = res.status();
        if status == StatusCode::OK {
            return Ok(());
        }
        let body = res.text().await.unwrap_or_default();
        Err(ClientError::Status {
            op,
            status: status.as_u16(),
            body,
        })
    }

    /// POSTs `body` with retries on transient failures. 200 → `Some(body)`, 204 → `None`.
    async fn post<B: Serialize>(
        &self,
        op: &'static str,
        endpoint: &str,
        body: &B,
        job: Option<&JobRef>,
    ) -> Result<Option<Vec<u8>>, ClientError> {
        let started = Instant::now();
        let mut delay = self.opts.retry.initial_delay;
        let mut attempt = 0u32;
        let result = loop {
            attempt += 1;
            let res = self.post_once(op, endpoint, body, job).await;
            match res {
                Err(e)
                    if e.is_transient()
                        && (self.opts.retry.max_attempts == 0
                            || attempt < self.opts.retry.max_attempts) =>
                {
                    tracing::debug!(op, attempt, error = %e, "retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.opts.retry.max_delay);
                }
                other => break other,
            }
        };
        if let Some(m) = &self.metrics {
            m.queue_call(op, started.elapsed().as_secs_f64(), result.is_ok());
        }
        result
    }

    async fn post_once<B: Serialize>(
        &self,
        op: &'static str,
        endpoint: &str,
        body: &B,
        job: Option<&JobRef>,
    ) -> Result<Option<Vec<u8>>, ClientError> {
        let mut req = self
            .http
            .post(self.url(endpoint))
            .header(CONTENT_TYPE, "application/json")
            .json(body);
        req = match job {
            Some(job) => {
                let auth = if job.token.is_empty() {
                    format!("token-executor {}", self.opts.password)
                } else {
                    format!("Bearer {}", job.token)
                };
                req.header(AUTHORIZATION, auth)
                    .header("X-Sourcegraph-Job-ID", job.id.to_string())
                    .header("X-Sourcegraph-Executor-Name", &self.opts.executor_name)
            }
            None => req.header(
                AUTHORIZATION,
                format!("token-executor {}", self.opts.password),
            ),
        };
        let res = req
            .send()
            .await
            .map_err(|source| ClientError::Transport { op, source })?;
        let status = res.status();
        let bytes = res
            .bytes()
            .await
            .map_err(|source| ClientError::Transport { op, source })?;
        match status {
            StatusCode::OK => Ok(Some(bytes.to_vec())),
            StatusCode::NO_CONTENT => Ok(None),
            other => Err(ClientError::Status {
                op,
                status: other.as_u16(),
                body: String::from_utf8_lossy(&bytes).into_owned(),
            }),
        }
    }
}
