//! Route handlers of the embedded `/.executors/` API.

use super::reply::{self, Reply};
use super::{ServerState, auth};
use crate::config::VALID_QUEUE_NAMES;
use crate::queue::store::{HeartbeatIds, StoreError};
use crate::queue::types::{
    AddExecutionLogEntryRequest, DequeueRequest, HeartbeatRequest, HeartbeatResponse,
    MarkCompleteRequest, MarkErroredRequest, UpdateExecutionLogEntryRequest,
};
use crate::queue::version::supports_v2_payload;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

const EMPTY_EXECUTOR_NAME: &str = "worker hostname cannot be empty";

fn validate_queues(queues: &[String]) -> Result<(), Reply> {
    let invalid: Vec<&str> = queues
        .iter()
        .map(String::as_str)
        .filter(|q| !VALID_QUEUE_NAMES.contains(q))
        .collect();
    if invalid.is_empty() {
        Ok(())
    } else {
        Err(reply::internal(StoreError::InvalidQueue(
            invalid.join(", "),
        )))
    }
}

fn unwrap(r: Result<Reply, Reply>) -> Response {
    *r.unwrap_or_else(|e| e)
}

pub async fn dequeue_multi(
    State(s): State<ServerState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    unwrap(dequeue(&s, &headers, &body, None))
}

pub async fn dequeue_single(
    State(s): State<ServerState>,
    Path(queue): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    unwrap(dequeue(&s, &headers, &body, Some(queue)))
}

fn dequeue(
    s: &ServerState,
    headers: &HeaderMap,
    body: &[u8],
    url_queue: Option<String>,
) -> Result<Reply, Reply> {
    auth::executor(s, headers)?;
    let req: DequeueRequest = reply::decode(body)?;
    let (queues, set_queue) = match url_queue {
        Some(q) => (vec![q], false),
        None => (req.queues.clone(), true),
    };
    validate_queues(&queues)?;
    if req.executor_name.is_empty() {
        return Err(reply::internal(EMPTY_EXECUTOR_NAME));
    }
    let v2 = supports_v2_payload(&req.version).map_err(reply::internal)?;
    match s.store.dequeue(&queues, &req.executor_name, set_queue, v2) {
        Ok(Some(job)) => Ok(reply::json(&job)),
        Ok(None) => Ok(reply::empty(StatusCode::NO_CONTENT)),
        Err(e) => Err(reply::internal(e)),
    }
}

pub async fn heartbeat_multi(
    State(s): State<ServerState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    unwrap(heartbeat(&s, &headers, &body, None))
}

pub async fn heartbeat_single(
    State(s): State<ServerState>,
    Path(queue): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    unwrap(heartbeat(&s, &headers, &body, Some(queue)))
}

fn parse_id(raw: &str) -> Result<i64, Reply> {
    raw.parse::<i64>()
        .map_err(|_| reply::internal(format!("failed to parse job ID {raw:?}")))
}

fn heartbeat(
    s: &ServerState,
    headers: &HeaderMap,
    body: &[u8],
    url_queue: Option<String>,
) -> Result<Reply, Reply> {
    auth::executor(s, headers)?;
    let req: HeartbeatRequest = reply::decode(body)?;
    if req.executor_name.is_empty() {
        return Err(reply::internal(EMPTY_EXECUTOR_NAME));
    }
    let multi = url_queue.is_none();
    let mut ids: HeartbeatIds = Vec::new();
    let queues = match url_queue {
        Some(q) => {
            validate_queues(std::slice::from_ref(&q))?;
            for id in req.job_ids.clone().unwrap_or_default() {
                ids.push((q.clone(), id));
            }
            vec![q]
        }
        None => {
            if req.queue_names.is_empty() {
                return Err(reply::internal(
                    "queueNames must be set for multi-queue heartbeats",
                ));
            }
            validate_queues(&req.queue_names)?;
            for group in &req.job_ids_by_queue {
                if !req.queue_names.contains(&group.queue_name) {
                    return Err(reply::internal(format!(
                        "unsupported queue name(s) '{}' submitted in queueJobIds, executor is configured for queues '{}'",
                        group.queue_name,
                        req.queue_names.join(", ")
                    )));
                }
                for raw in &group.job_ids {
                    ids.push((group.queue_name.clone(), parse_id(raw)?));
                }
            }
            req.queue_names.clone()
        }
    };
    let (known, cancel) = s
        .store
        .heartbeat(&req.executor_name, &queues, &req.telemetry, &ids)
        .map_err(reply::internal)?;
    let render = |v: HeartbeatIds| -> Vec<String> {
        v.into_iter()
            .map(|(q, id)| {
                if multi {
                    format!("{id}-{q}")
                } else {
                    id.to_string()
                }
            })
            .collect()
    };
    Ok(reply::json(&HeartbeatResponse {
        known_ids: render(known),
        cancel_ids: render(cancel),
    }))
}

/// The job-scoped operations share their shape: auth, decode, act.
pub async fn job_operation(
    op: &'static str,
    State(s): State<ServerState>,
    Path(queue): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    unwrap(job_op(&s, &headers, &body, &queue, op))
}

fn job_op(
    s: &ServerState,
    headers: &HeaderMap,
    body: &[u8],
    queue: &str,
    op: &str,
) -> Result<Reply, Reply> {
    if !matches!(
        op,
        "addExecutionLogEntry"
            | "updateExecutionLogEntry"
            | "markComplete"
            | "markErrored"
            | "markFailed"
    ) {
        return Err(reply::text(StatusCode::NOT_FOUND, "404 page not found"));
    }
    auth::job(s, headers, queue)?;
    validate_queues(&[queue.to_string()])?;
    let unknown = |e: StoreError| reply::internal(e);
    let finished = |ok: bool| {
        if ok {
            reply::empty(StatusCode::NO_CONTENT)
        } else {
            reply::error_json(StatusCode::NOT_FOUND, "unknown job")
        }
    };
    match op {
        "addExecutionLogEntry" => {
            let req: AddExecutionLogEntryRequest = reply::decode(body)?;
            let id = s
                .store
                .add_log_entry(req.job_id, &req.executor_name, &req.entry)
                .map_err(unknown)?;
            Ok(reply::json(&id))
        }
        "updateExecutionLogEntry" => {
            let req: UpdateExecutionLogEntryRequest = reply::decode(body)?;
            s.store
                .update_log_entry(req.job_id, &req.executor_name, req.entry_id, &req.entry)
                .map_err(unknown)?;
            Ok(reply::empty(StatusCode::NO_CONTENT))
        }
        "markComplete" => {
            let req: MarkCompleteRequest = reply::decode(body)?;
            let ok = s
                .store
                .mark_complete(req.job_id, &req.executor_name)
                .map_err(unknown)?;
            Ok(finished(ok))
        }
        "markErrored" => {
            let req: MarkErroredRequest = reply::decode(body)?;
            let ok = s
                .store
                .mark_errored(req.job_id, &req.executor_name, &req.error_message)
                .map_err(unknown)?;
            Ok(finished(ok))
        }
        _ => {
            let req: MarkErroredRequest = reply::decode(body)?;
            let ok = s
                .store
                .mark_failed(req.job_id, &req.executor_name, &req.error_message)
                .map_err(unknown)?;
            Ok(finished(ok))
        }
    }
}

pub async fn test_auth(State(s): State<ServerState>, headers: HeaderMap) -> Response {
    match auth::executor(&s, &headers) {
        Ok(()) => *reply::text(StatusCode::OK, "ok"),
        Err(e) => *e,
    }
}
