//! The frontend's two auth schemes: `token-executor <secret>` for executor-scoped routes and
//! `Bearer <job token>` (or the secret) with `X-Sourcegraph-Job-ID` / `X-Sourcegraph-Executor-Name`
//! for job-scoped routes. Status codes follow the original (see docs/sourcegraph-executor.md §1.2).

use super::ServerState;
use super::reply::{self, Reply};
use axum::http::{HeaderMap, StatusCode, header};

const FORM_MESSAGE: &str = "HTTP Authorization request header value must be of the following form: 'token-executor TOKEN' or 'Bearer TOKEN'";

/// Compares without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn split_authorization(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let parts: Vec<&str> = value.split(' ').collect();
    match parts.as_slice() {
        [scheme, token] => Some((scheme.to_string(), token.to_string())),
        _ => None,
    }
}

fn check_secret(state: &ServerState, token: &str, mismatch: StatusCode) -> Result<(), Reply> {
    let Some(secret) = state.secret.as_deref().filter(|s| !s.is_empty()) else {
        return Err(reply::text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Executors are not configured on this instance",
        ));
    };
    if token.is_empty() {
        return Err(reply::text(
            StatusCode::UNAUTHORIZED,
            "no token value in the HTTP Authorization request header",
        ));
    }
    if !constant_time_eq(secret.as_bytes(), token.as_bytes()) {
        return Err(reply::empty(mismatch));
    }
    Ok(())
}

/// Executor-scoped routes (dequeue, heartbeat, test/auth).
pub fn executor(state: &ServerState, headers: &HeaderMap) -> Result<(), Reply> {
    let Some((scheme, token)) = split_authorization(headers) else {
        return Err(reply::text(StatusCode::UNAUTHORIZED, FORM_MESSAGE));
    };
    if !scheme.eq_ignore_ascii_case("token-executor") {
        return Err(reply::text(StatusCode::UNAUTHORIZED, FORM_MESSAGE));
    }
    check_secret(state, &token, StatusCode::UNAUTHORIZED)
}

/// Job-scoped queue routes (`/{queue}/addExecutionLogEntry`, mark*, …).
pub fn job(state: &ServerState, headers: &HeaderMap, queue: &str) -> Result<(), Reply> {
    let Some((scheme, token)) = split_authorization(headers) else {
        return Err(reply::text(StatusCode::UNAUTHORIZED, FORM_MESSAGE));
    };
    if scheme.eq_ignore_ascii_case("token-executor") {
        return check_secret(state, &token, StatusCode::FORBIDDEN);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(reply::text(StatusCode::UNAUTHORIZED, FORM_MESSAGE));
    }
    let job_id = headers
        .get("X-Sourcegraph-Job-ID")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok());
    let Some(job_id) = job_id else {
        return Err(reply::text(
            StatusCode::BAD_REQUEST,
            "failed to parse Job ID",
        ));
    };
    let executor_name = headers
        .get("X-Sourcegraph-Executor-Name")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if executor_name.is_empty() {
        return Err(reply::text(
            StatusCode::BAD_REQUEST,
            "worker hostname cannot be empty",
        ));
    }
    let token = token.trim_matches('"');
    let info = match state.store.token_info(token) {
        Ok(Some(info)) => info,
        Ok(None) => return Err(reply::text(StatusCode::UNAUTHORIZED, "invalid token")),
        Err(e) => {
            return Err(reply::error_json(
                StatusCode::INTERNAL_SERVER_ERROR,
                &e.to_string(),
            ));
        }
    };
    if info.job_id != job_id {
        return Err(reply::text(
            StatusCode::FORBIDDEN,
            "invalid token: job id mismatch",
        ));
    }
    if info.queue != queue {
        return Err(reply::text(
            StatusCode::FORBIDDEN,
            "invalid token: queue mismatch",
        ));
    }
    match state.store.executor_exists(executor_name) {
        Ok(true) => Ok(()),
        Ok(false) => Err(reply::text(StatusCode::UNAUTHORIZED, "executor not found")),
        Err(e) => Err(reply::error_json(
            StatusCode::INTERNAL_SERVER_ERROR,
            &e.to_string(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
