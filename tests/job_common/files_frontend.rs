//! A frontend with a file store: the embedded queue's API (`queue::server::router` over the same
//! store and secret) plus `GET /.executors/files/{bucket}/{key…}`, which, like Sourcegraph's,
//! wants the job-scoped headers and a `Bearer` token bound to that job and the `batches` queue
//! (or the executor secret), and serves the files it was given. It records what it was asked.

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hearth::queue::server::{ServerState, router};
use hearth::queue::store::Store;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// One file-store request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRequest {
    pub path: String,
    pub authorization: Option<String>,
    pub job_id: Option<String>,
    pub executor: Option<String>,
    pub status: u16,
}

pub struct FilesFrontend {
    pub base: String,
    pub seen: Arc<Mutex<Vec<FileRequest>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FilesFrontend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct St {
    store: Store,
    secret: String,
    /// `<bucket>/<key>` → content.
    files: BTreeMap<String, Vec<u8>>,
    seen: Arc<Mutex<Vec<FileRequest>>>,
}

impl FilesFrontend {
    /// Serves `files` (`(bucket, key, content)`) next to the queue API of `store`.
    pub async fn start(store: Store, secret: &str, files: &[(&str, &str, &[u8])]) -> FilesFrontend {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let st = Arc::new(St {
            store: store.clone(),
            secret: secret.to_string(),
            files: files
                .iter()
                .map(|(b, k, c)| (format!("{b}/{k}"), c.to_vec()))
                .collect(),
            seen: seen.clone(),
        });
        let files_routes = axum::Router::new()
            .route(
                "/.executors/files/{bucket}/{*key}",
                axum::routing::get(get_file),
            )
            .with_state(st);
        let app = router(ServerState {
            store,
            secret: Some(secret.to_string()),
        })
        .merge(files_routes);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FilesFrontend { base, seen, task }
    }

    pub fn seen(&self) -> Vec<FileRequest> {
        self.seen.lock().unwrap().clone()
    }
}

fn header(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The frontend's checks for a files route (see the executor reference, §1.2).
fn authorize(st: &St, headers: &HeaderMap) -> Result<(), StatusCode> {
    let auth = header(headers, "authorization").unwrap_or_default();
    if let Some(secret) = auth.strip_prefix("token-executor ") {
        return if secret == st.secret {
            Ok(())
        } else {
            Err(StatusCode::FORBIDDEN)
        };
    }
    let Some(token) = auth.strip_prefix("Bearer ") else {
        return Err(StatusCode::UNAUTHORIZED);
    };
    let job_id: i64 = header(headers, "x-sourcegraph-job-id")
        .and_then(|v| v.parse().ok())
        .ok_or(StatusCode::BAD_REQUEST)?;
    if header(headers, "x-sourcegraph-executor-name").is_none_or(|e| e.is_empty()) {
        return Err(StatusCode::BAD_REQUEST);
    }
    let info = st
        .store
        .token_info(token)
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?
        .ok_or(StatusCode::UNAUTHORIZED)?;
    if info.job_id != job_id || info.queue != "batches" {
        return Err(StatusCode::FORBIDDEN);
    }
    Ok(())
}

async fn get_file(
    State(st): State<Arc<St>>,
    UrlPath((bucket, key)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let path = format!("{bucket}/{key}");
    let reply = match authorize(&st, &headers) {
        Err(status) => status.into_response(),
        Ok(()) => match st.files.get(&path) {
            Some(content) => (StatusCode::OK, content.clone()).into_response(),
            None => StatusCode::NOT_FOUND.into_response(),
        },
    };
    st.seen.lock().unwrap().push(FileRequest {
        path: format!("/.executors/files/{path}"),
        authorization: header(&headers, "authorization"),
        job_id: header(&headers, "x-sourcegraph-job-id"),
        executor: header(&headers, "x-sourcegraph-executor-name"),
        status: reply.status().as_u16(),
    });
    reply
}
