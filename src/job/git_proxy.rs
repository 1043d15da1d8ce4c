//! The per-job git proxy (the original's `newGitProxyServer`): a throw-away HTTP reverse proxy on
//! `127.0.0.1:<random port>` that forwards git smart-HTTP requests for the job's repository to
//! `<upstream>/.executors/git/<repo>/…`, adding the job's credentials. git is only ever given
//! `http://127.0.0.1:<port>/<repo>`, so no secret reaches its argv, environment or config.
//!
//! Differences from the original: the upstream keeps any path prefix of the frontend URL (the
//! original drops it, a documented caveat), and request bodies are buffered (bounded; git's
//! negotiation requests are small) while responses are streamed.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Largest request body forwarded (git upload-pack negotiation).
const MAX_REQUEST_BYTES: usize = 64 << 20;

/// Errors starting the proxy.
#[derive(Debug, thiserror::Error)]
pub enum GitProxyError {
    #[error("binding the git proxy listener: {0}")]
    Bind(#[source] std::io::Error),
    #[error("building the git proxy's HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// Where and as whom the proxy forwards.
#[derive(Debug, Clone)]
pub struct ProxyTarget {
    /// The frontend base URL (`https://sg.example.com`); `/.executors/git` is appended.
    pub upstream_base: String,
    /// `github.com/foo/bar`: only paths under `/<repository>/` are forwarded.
    pub repository: String,
    /// The `Authorization` value: `Bearer <job token>`, or `token-executor <secret>` when the
    /// job has no token.
    pub authorization: String,
    pub job_id: i64,
    pub executor_name: String,
}

impl ProxyTarget {
    /// The original's credentials choice: the job token when there is one, else the secret.
    pub fn authorization_for(job_token: &str, executor_secret: &str) -> String {
        if job_token.is_empty() {
            format!("token-executor {executor_secret}")
        } else {
            format!("Bearer {job_token}")
        }
    }
}

struct ProxyState {
    target: ProxyTarget,
    http: reqwest::Client,
}

/// A running proxy; [`GitProxy::close`] stops it.
pub struct GitProxy {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl GitProxy {
    /// Binds `127.0.0.1:0` and serves until closed.
    pub async fn start(target: ProxyTarget) -> Result<GitProxy, GitProxyError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(GitProxyError::Bind)?;
        let addr = listener.local_addr().map_err(GitProxyError::Bind)?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // Connections end with the proxy: nothing pooled outlives the job.
            .pool_idle_timeout(Duration::from_secs(5))
            .build()
            .map_err(GitProxyError::Client)?;
        let state = Arc::new(ProxyState { target, http });
        let app = axum::Router::new().fallback(forward).with_state(state);
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = stop_rx.await;
            });
            if let Err(e) = served.await {
                tracing::warn!(error = %e, "git proxy stopped with an error");
            }
        });
        Ok(GitProxy {
            addr,
            stop: Some(stop_tx),
            task,
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The clone URL git is given: `http://127.0.0.1:<port>/<repository>`.
    pub fn clone_url(&self, repository: &str) -> String {
        format!("{}/{}", self.base_url(), repository.trim_start_matches('/'))
    }

    /// Stops accepting, lets in-flight requests end (at most 2 s), then drops everything.
    pub async fn close(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(Duration::from_secs(2), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
            let _ = (&mut self.task).await;
        }
    }
}

impl Drop for GitProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Hop-by-hop headers and the ones the proxy sets itself are not copied.
fn skip_header(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "authorization"
            | "content-length"
            | "x-sourcegraph-actor-uid"
            | "x-sourcegraph-job-id"
            | "x-sourcegraph-executor-name"
    )
}

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        if !skip_header(name) {
            to.append(name.clone(), value.clone());
        }
    }
}

async fn forward(State(state): State<Arc<ProxyState>>, req: Request) -> Response {
    let target = &state.target;
    let path = req.uri().path().to_string();
    let prefix = format!("/{}/", target.repository.trim_matches('/'));
    if !path.starts_with(&prefix) {
        // Not this job's repository: refused, as the original does.
        return StatusCode::FORBIDDEN.into_response();
    }
    let mut url = format!(
        "{}/.executors/git{path}",
        target.upstream_base.trim_end_matches('/')
    );
    if let Some(q) = req.uri().query() {
        url.push('?');
        url.push_str(q);
    }
    let method = req.method().clone();
    let mut headers = HeaderMap::new();
    copy_headers(req.headers(), &mut headers);
    let body = match axum::body::to_bytes(req.into_body(), MAX_REQUEST_BYTES).await {
        Ok(b) => b,
        Err(e) => {
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("git proxy: reading the request: {e}"),
            )
                .into_response();
        }
    };
    let upstream = state
        .http
        .request(method, &url)
        .headers(headers)
        .header(header::AUTHORIZATION, &target.authorization)
        .header("X-Sourcegraph-Actor-UID", "internal")
        .header("X-Sourcegraph-Job-ID", target.job_id.to_string())
        .header("X-Sourcegraph-Executor-Name", &target.executor_name)
        .body(body)
        .send()
        .await;
    let upstream = match upstream {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "git proxy: upstream request failed");
            return (StatusCode::BAD_GATEWAY, "git proxy: upstream unreachable").into_response();
        }
    };
    let status = upstream.status();
    let mut out_headers = HeaderMap::new();
    copy_headers(upstream.headers(), &mut out_headers);
    let mut response = Response::new(Body::from_stream(upstream.bytes_stream()));
    *response.status_mut() = status;
    *response.headers_mut() = out_headers;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream that answers with what it received: path?query and the proxy's headers.
    async fn echo_upstream() -> String {
        async fn echo(req: Request) -> String {
            let h = |n: &str| {
                req.headers()
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-")
                    .to_string()
            };
            format!(
                "{} {} auth={} job={} executor={} actor={} protocol={}",
                req.method(),
                req.uri(),
                h("authorization"),
                h("x-sourcegraph-job-id"),
                h("x-sourcegraph-executor-name"),
                h("x-sourcegraph-actor-uid"),
                h("git-protocol"),
            )
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, axum::Router::new().fallback(echo)).await;
        });
        base
    }

    #[tokio::test]
    async fn forwards_the_job_repository_with_credentials_and_refuses_others() {
        let upstream = echo_upstream().await;
        let proxy = GitProxy::start(ProxyTarget {
            upstream_base: format!("{upstream}/prefix/"),
            repository: "github.com/a/b".into(),
            authorization: ProxyTarget::authorization_for("tok", "secret"),
            job_id: 42,
            executor_name: "ex-1".into(),
        })
        .await
        .unwrap();
        let http = reqwest::Client::new();
        let res = http
            .get(format!(
                "{}/info/refs?service=git-upload-pack",
                proxy.clone_url("github.com/a/b")
            ))
            .header("Git-Protocol", "version=2")
            .header("Authorization", "Basic c3RvbGVu")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(
            res.text().await.unwrap(),
            "GET /prefix/.executors/git/github.com/a/b/info/refs?service=git-upload-pack \
             auth=Bearer tok job=42 executor=ex-1 actor=internal protocol=version=2"
        );
        for path in ["/github.com/a/c/info/refs", "/github.com/a/b", "/x"] {
            let res = http
                .get(format!("{}{path}", proxy.base_url()))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 403, "{path}");
        }
        let url = proxy.base_url();
        proxy.close().await;
        assert!(
            http.get(format!("{url}/github.com/a/b/info/refs"))
                .send()
                .await
                .is_err()
        );
    }

    #[test]
    fn secret_fallback_without_a_job_token() {
        assert_eq!(
            ProxyTarget::authorization_for("", "s3"),
            "token-executor s3"
        );
    }
}
