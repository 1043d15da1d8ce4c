//! A real git repository served over smart HTTP on 127.0.0.1 like a Sourcegraph frontend's
//! `/.executors/git/<repo>/…` routes: a tiny CGI bridge to `git http-backend` that refuses
//! requests without a `Bearer` or `token-executor` credential and records the headers it saw.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const REPO: &str = "github.com/hearth/demo";
/// A repository whose requests hang (for cancelling a clone).
pub const SLOW_REPO: &str = "github.com/hearth/slow";

/// What the server saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub authorization: Option<String>,
    pub job_id: Option<String>,
    pub executor: Option<String>,
    pub actor: Option<String>,
}

pub struct GitServer {
    pub base: String,
    /// First commit (tagged `v1`) and second commit (the branch tip).
    pub first: String,
    pub head: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GitServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "hearth")
        .env("GIT_AUTHOR_EMAIL", "hearth@example.com")
        .env("GIT_COMMITTER_NAME", "hearth")
        .env("GIT_COMMITTER_EMAIL", "hearth@example.com")
        .output()
        .expect("running git (tests need git on PATH)");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn write(dir: &Path, rel: &str, content: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

/// Builds the repository under `root` (`<root>/src` work tree, `<root>/repos/<REPO>` bare).
fn build_repo(root: &Path) -> (PathBuf, String, String) {
    let src = root.join("src");
    std::fs::create_dir_all(&src).unwrap();
    git(&src, &["init", "-q", "-b", "main"]);
    write(&src, "README.md", "hello\n");
    write(&src, "web/index.js", "console.log('hi');\n");
    write(&src, "services/api/main.go", "package main\n");
    write(&src, "services/web/app.py", "print('web')\n");
    git(&src, &["add", "-A"]);
    git(&src, &["commit", "-q", "-m", "first commit"]);
    git(&src, &["tag", "v1"]);
    let first = git(&src, &["rev-parse", "HEAD"]);
    write(&src, "README.md", "hello again\n");
    write(&src, "services/api/handler.go", "package main // handler\n");
    git(&src, &["add", "-A"]);
    git(&src, &["commit", "-q", "-m", "second commit"]);
    let head = git(&src, &["rev-parse", "HEAD"]);
    let projects = root.join("repos");
    let bare = projects.join(REPO);
    std::fs::create_dir_all(bare.parent().unwrap()).unwrap();
    git(
        root,
        &[
            "clone",
            "-q",
            "--bare",
            src.to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
    );
    for (k, v) in [
        ("uploadpack.allowFilter", "true"),
        ("uploadpack.allowAnySHA1InWant", "true"),
        ("http.uploadpack", "true"),
    ] {
        git(&bare, &["config", k, v]);
    }
    (projects, first, head)
}

struct St {
    projects: PathBuf,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl GitServer {
    pub async fn start(root: &Path) -> GitServer {
        let (projects, first, head) = build_repo(root);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let st = Arc::new(St {
            projects,
            seen: seen.clone(),
        });
        let app = axum::Router::new().fallback(cgi).with_state(st);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        GitServer {
            base,
            first,
            head,
            seen,
            task,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn header(req: &Request, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

async fn cgi(State(st): State<Arc<St>>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let authorization = header(&req, "authorization");
    st.seen.lock().unwrap().push(Seen {
        path: path.clone(),
        authorization: authorization.clone(),
        job_id: header(&req, "x-sourcegraph-job-id"),
        executor: header(&req, "x-sourcegraph-executor-name"),
        actor: header(&req, "x-sourcegraph-actor-uid"),
    });
    let Some(path_info) = path.strip_prefix("/.executors/git") else {
        return StatusCode::NOT_FOUND.into_response();
    };
    // A job token, or the executor secret (jobs without a token, `hearth test-vm --repo`).
    let authorized = authorization.is_some_and(|a| {
        ["Bearer ", "token-executor "]
            .iter()
            .any(|scheme| a.strip_prefix(scheme).is_some_and(|t| !t.is_empty()))
    });
    if !authorized {
        return (StatusCode::UNAUTHORIZED, "invalid token").into_response();
    }
    if path_info.starts_with(&format!("/{SLOW_REPO}/")) {
        tokio::time::sleep(std::time::Duration::from_secs(120)).await;
    }
    let method = req.method().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let content_type = header(&req, "content-type").unwrap_or_default();
    let encoding = header(&req, "content-encoding").unwrap_or_default();
    let protocol = header(&req, "git-protocol").unwrap_or_default();
    let body = axum::body::to_bytes(req.into_body(), 256 << 20)
        .await
        .unwrap();
    let mut child = tokio::process::Command::new("git")
        .arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_PROJECT_ROOT", &st.projects)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", path_info)
        .env("QUERY_STRING", query)
        .env("REQUEST_METHOD", method)
        .env("CONTENT_TYPE", content_type)
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", encoding)
        .env("HTTP_GIT_PROTOCOL", protocol)
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(&body).await;
    });
    let mut out = Vec::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut out)
        .await
        .unwrap();
    let _ = writer.await;
    let _ = child.wait().await;
    let (head_len, sep) = match out.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(p) => (p, 4),
        None => match out.windows(2).position(|w| w == b"\n\n") {
            Some(p) => (p, 2),
            None => return (StatusCode::BAD_GATEWAY, "bad CGI output").into_response(),
        },
    };
    let head = String::from_utf8_lossy(&out[..head_len]).to_string();
    let mut response = Response::new(Body::from(out[head_len + sep..].to_vec()));
    for line in head.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("status") {
            let code = v.split_whitespace().next().and_then(|c| c.parse().ok());
            *response.status_mut() = StatusCode::from_u16(code.unwrap_or(500)).unwrap();
        } else if let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::from_bytes(k.trim().as_bytes()),
            axum::http::HeaderValue::from_str(v),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    response
}
