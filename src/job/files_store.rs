//! `files` entries with `bucket` and `key`: their content comes from the frontend's file store,
//! `GET <frontend>/.executors/files/<bucket>/<key>` with the job's credentials (the original's
//! files client). Everything else is written from the inline `content`.

use crate::queue::client::{JobRef, QueueClient};
use crate::queue::types::VirtualMachineFile;
use std::time::Duration;

/// Largest file fetched from the store.
const MAX_FILE_BYTES: usize = 256 << 20;

/// File store errors.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("fetching {bucket}/{key}: {source}")]
    Transport {
        bucket: String,
        key: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("fetching {bucket}/{key}: unexpected status code {status}")]
    Status {
        bucket: String,
        key: String,
        status: u16,
    },
    #[error("fetching {bucket}/{key}: larger than {MAX_FILE_BYTES} bytes")]
    TooLarge { bucket: String, key: String },
}

/// Fetches store-backed files for one job.
pub struct FilesStore {
    http: reqwest::Client,
    base_url: String,
    password: String,
    executor_name: String,
    job: JobRef,
}

impl FilesStore {
    /// Uses the queue client's frontend URL and identity.
    pub fn for_job(client: &QueueClient, job: &JobRef) -> FilesStore {
        let o = client.options();
        FilesStore {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(300))
                .pool_max_idle_per_host(0)
                .build()
                .unwrap_or_default(),
            base_url: o.base_url.trim_end_matches('/').to_string(),
            password: o.password.clone(),
            executor_name: o.executor_name.clone(),
            job: job.clone(),
        }
    }

    /// The file's content: fetched when it names a bucket and key, else inline.
    pub async fn content(&self, file: &VirtualMachineFile) -> Result<Vec<u8>, FilesError> {
        match (&file.bucket, &file.key) {
            (Some(b), Some(k)) => self.get(b, k).await,
            _ => Ok(file.content.clone()),
        }
    }

    async fn get(&self, bucket: &str, key: &str) -> Result<Vec<u8>, FilesError> {
        let auth = if self.job.token.is_empty() {
            format!("token-executor {}", self.password)
        } else {
            format!("Bearer {}", self.job.token)
        };
        let transport = |source| FilesError::Transport {
            bucket: bucket.to_string(),
            key: key.to_string(),
            source,
        };
        let mut res = self
            .http
            .get(format!("{}/.executors/files/{bucket}/{key}", self.base_url))
            .header("Content-Type", "application/json")
            .header("Authorization", auth)
            .header("X-Sourcegraph-Job-ID", self.job.id.to_string())
            .header("X-Sourcegraph-Executor-Name", &self.executor_name)
            .send()
            .await
            .map_err(transport)?;
        if res.status() != reqwest::StatusCode::OK {
            return Err(FilesError::Status {
                bucket: bucket.to_string(),
                key: key.to_string(),
                status: res.status().as_u16(),
            });
        }
        let mut out = Vec::new();
        while let Some(chunk) = res.chunk().await.map_err(transport)? {
            if out.len() + chunk.len() > MAX_FILE_BYTES {
                return Err(FilesError::TooLarge {
                    bucket: bucket.to_string(),
                    key: key.to_string(),
                });
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }
}
