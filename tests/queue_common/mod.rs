//! Shared harness for the queue tests: an embedded server on a loopback port backed by a SQLite
//! file in a temp dir, and clients with short retry intervals.
#![allow(dead_code)]

use hearth::config::QueueSelection;
use hearth::queue::client::{ClientOptions, QueueClient, RetryPolicy};
use hearth::queue::server::{self, ServerHandle, ServerState};
use hearth::queue::store::{Store, StoreOptions};
use hearth::queue::types::Job;
use reqwest::StatusCode;
use std::path::PathBuf;
use std::time::Duration;

pub const SECRET: &str = "hunter2hunter2hunter2";

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub db: PathBuf,
    pub store: Store,
    pub server: ServerHandle,
    pub base: String,
    pub http: reqwest::Client,
}

impl Harness {
    pub async fn start(opts: StoreOptions) -> Harness {
        Harness::start_with_secret(opts, Some(SECRET)).await
    }

    pub async fn start_with_secret(opts: StoreOptions, secret: Option<&str>) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("queue.sqlite");
        let store = Store::open(&db, opts).unwrap();
        let server = server::serve(
            "127.0.0.1:0",
            ServerState {
                store: store.clone(),
                secret: secret.map(str::to_string),
            },
        )
        .await
        .unwrap();
        let base = server.base_url();
        Harness {
            dir,
            db,
            store,
            server,
            base,
            http: reqwest::Client::new(),
        }
    }

    pub fn client(&self, queues: QueueSelection, executor: &str) -> QueueClient {
        client_for(&self.base, queues, executor)
    }

    pub fn executor_auth(&self) -> String {
        format!("token-executor {SECRET}")
    }

    /// A raw POST; returns status and body text.
    pub async fn post(
        &self,
        url: &str,
        auth: &str,
        body: serde_json::Value,
    ) -> (StatusCode, String) {
        self.post_with(url, &[("Authorization", auth)], body.to_string())
            .await
    }

    pub async fn post_with(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: String,
    ) -> (StatusCode, String) {
        let mut req = self
            .http
            .post(url)
            .header("Content-Type", "application/json")
            .body(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        (status, res.text().await.unwrap())
    }
}

pub fn client_for(base: &str, queues: QueueSelection, executor: &str) -> QueueClient {
    QueueClient::new(
        ClientOptions {
            base_url: base.to_string(),
            password: SECRET.to_string(),
            executor_name: executor.to_string(),
            queues,
            version: "5.5.0".to_string(),
            num_cpus: 4,
            memory: "12G".to_string(),
            disk_space: "20G".to_string(),
            retry: RetryPolicy {
                initial_delay: Duration::from_millis(20),
                max_delay: Duration::from_millis(100),
                max_attempts: 3,
            },
            request_timeout: Duration::from_secs(5),
        },
        None,
    )
    .unwrap()
}

pub fn single(q: &str) -> QueueSelection {
    QueueSelection::Single(q.to_string())
}

pub fn multi(qs: &[&str]) -> QueueSelection {
    QueueSelection::Multi(qs.iter().map(|s| s.to_string()).collect())
}

pub fn job(repo: &str) -> Job {
    Job {
        repository_name: repo.to_string(),
        commit: "0123456789abcdef0123456789abcdef01234567".to_string(),
        ..Default::default()
    }
}
