//! Wire types of Sourcegraph's `/.executors/` API: the Job (v1 and v2 payloads), dequeue and
//! heartbeat bodies, execution log entries and mark* bodies. JSON field names are exact.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;

/// A dequeued job, normalised: file contents are bytes whatever the payload version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(try_from = "WireJob", into = "WireJob")]
pub struct Job {
    /// 2 for v2 payloads (base64 file content, `dockerAuthConfig`), 1 otherwise.
    pub version: u32,
    pub id: i64,
    pub token: String,
    /// Set by multi-queue dequeues only.
    pub queue: Option<String>,
    pub repository_name: String,
    pub repository_directory: String,
    pub commit: String,
    pub fetch_tags: bool,
    pub shallow_clone: bool,
    pub sparse_checkout: Vec<String>,
    pub files: BTreeMap<String, VirtualMachineFile>,
    pub docker_steps: Vec<DockerStep>,
    pub cli_steps: Vec<CliStep>,
    pub redacted_values: BTreeMap<String, String>,
    pub docker_auth_config: DockerAuthConfig,
}

impl Job {
    /// The worker's record id: `"<id>"`, or `"<id>-<queue>"` when the job names its queue.
    pub fn record_uid(&self) -> String {
        match &self.queue {
            Some(q) if !q.is_empty() => format!("{}-{q}", self.id),
            _ => self.id.to_string(),
        }
    }
}

/// A file written into the workspace before the steps run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VirtualMachineFile {
    pub content: Vec<u8>,
    /// With `key`: fetch the content from the files API instead.
    pub bucket: Option<String>,
    pub key: Option<String>,
    /// RFC 3339; Go's zero time `0001-01-01T00:00:00Z` means "not set".
    pub modified_at: Option<String>,
}

/// One step run with `docker run` (commands are lines of a shell script).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DockerStep {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    #[serde(default)]
    pub image: String,
    #[serde(default, deserialize_with = "null_default")]
    pub commands: Vec<String>,
    #[serde(default)]
    pub dir: String,
    #[serde(default, deserialize_with = "null_default")]
    pub env: Vec<String>,
}

/// One legacy `src` step (argv after `src`; the JSON name is the singular `command`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct CliStep {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    #[serde(default, deserialize_with = "null_default")]
    pub command: Vec<String>,
    #[serde(default)]
    pub dir: String,
    #[serde(default, deserialize_with = "null_default")]
    pub env: Vec<String>,
}

/// `{"auths": {registry: {"auth": base64(user:password)}}}`; `auth` decoded to bytes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DockerAuthConfig {
    pub auths: BTreeMap<String, Vec<u8>>,
}

/// Errors turning a payload into a [`Job`].
#[derive(Debug, thiserror::Error)]
pub enum JobDecodeError {
    #[error("file {path:?}: content is not valid base64: {source}")]
    FileContent {
        path: String,
        source: base64::DecodeError,
    },
    #[error("dockerAuthConfig registry {registry:?}: auth is not valid base64: {source}")]
    DockerAuth {
        registry: String,
        source: base64::DecodeError,
    },
    #[error("unsupported job payload version {0}")]
    Version(u32),
}

fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireJob {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<u32>,
    #[serde(default)]
    id: i64,
    #[serde(default)]
    token: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    queue: String,
    #[serde(default)]
    repository_name: String,
    #[serde(default)]
    repository_directory: String,
    #[serde(default)]
    commit: String,
    #[serde(default)]
    fetch_tags: bool,
    #[serde(default)]
    shallow_clone: bool,
    #[serde(default)]
    sparse_checkout: Option<Vec<String>>,
    #[serde(default)]
    files: Option<BTreeMap<String, WireFile>>,
    #[serde(default)]
    docker_steps: Option<Vec<DockerStep>>,
    #[serde(default)]
    cli_steps: Option<Vec<CliStep>>,
    #[serde(default)]
    redacted_values: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    docker_auth_config: Option<WireDockerAuth>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bucket: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    modified_at: Option<String>,
}

#[derive(Serialize, Deserialize, Default)]
struct WireDockerAuth {
    #[serde(default, deserialize_with = "null_default")]
    auths: BTreeMap<String, WireAuth>,
}

#[derive(Serialize, Deserialize)]
struct WireAuth {
    #[serde(default)]
    auth: String,
}

const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

impl TryFrom<WireJob> for Job {
    type Error = JobDecodeError;

    fn try_from(w: WireJob) -> Result<Job, JobDecodeError> {
        let version = w.version.unwrap_or(1);
        if !(1..=2).contains(&version) {
            return Err(JobDecodeError::Version(version));
        }
        let mut files = BTreeMap::new();
        for (path, f) in w.files.unwrap_or_default() {
            let raw = f.content.unwrap_or_default();
            let content = if version == 2 {
                B64.decode(raw.as_bytes())
                    .map_err(|source| JobDecodeError::FileContent {
                        path: path.clone(),
                        source,
                    })?
            } else {
                raw.into_bytes()
            };
            let modified_at = f.modified_at.filter(|m| m != GO_ZERO_TIME && !m.is_empty());
            files.insert(
                path,
                VirtualMachineFile {
                    content,
                    bucket: f.bucket.filter(|b| !b.is_empty()),
                    key: f.key.filter(|k| !k.is_empty()),
                    modified_at,
                },
            );
        }
        let mut auths = BTreeMap::new();
        for (registry, a) in w.docker_auth_config.unwrap_or_default().auths {
            let bytes =
                B64.decode(a.auth.as_bytes())
                    .map_err(|source| JobDecodeError::DockerAuth {
                        registry: registry.clone(),
                        source,
                    })?;
            auths.insert(registry, bytes);
        }
        Ok(Job {
            version,
            id: w.id,
            token: w.token,
            queue: Some(w.queue).filter(|q| !q.is_empty()),
            repository_name: w.repository_name,
            repository_directory: w.repository_directory,
            commit: w.commit,
            fetch_tags: w.fetch_tags,
            shallow_clone: w.shallow_clone,
            sparse_checkout: w.sparse_checkout.unwrap_or_default(),
            files,
            docker_steps: w.docker_steps.unwrap_or_default(),
            cli_steps: w.cli_steps.unwrap_or_default(),
            redacted_values: w.redacted_values.unwrap_or_default(),
            docker_auth_config: DockerAuthConfig { auths },
        })
    }
}

impl From<Job> for WireJob {
    fn from(j: Job) -> WireJob {
        let v2 = j.version >= 2;
        let files = j
            .files
            .into_iter()
            .map(|(path, f)| {
                let content = if f.content.is_empty() {
                    None
                } else if v2 {
                    Some(B64.encode(&f.content))
                } else {
                    Some(String::from_utf8_lossy(&f.content).into_owned())
                };
                let wire = WireFile {
                    content,
                    bucket: f.bucket,
                    key: f.key,
                    modified_at: Some(f.modified_at.unwrap_or_else(|| GO_ZERO_TIME.to_string())),
                };
                (path, wire)
            })
            .collect();
        let docker_auth_config = v2.then(|| WireDockerAuth {
            auths: j
                .docker_auth_config
                .auths
                .into_iter()
                .map(|(r, a)| {
                    (
                        r,
                        WireAuth {
                            auth: B64.encode(a),
                        },
                    )
                })
                .collect(),
        });
        WireJob {
            version: v2.then_some(2),
            id: j.id,
            token: j.token,
            queue: j.queue.unwrap_or_default(),
            repository_name: j.repository_name,
            repository_directory: j.repository_directory,
            commit: j.commit,
            fetch_tags: j.fetch_tags,
            shallow_clone: j.shallow_clone,
            sparse_checkout: Some(j.sparse_checkout),
            files: Some(files),
            docker_steps: Some(j.docker_steps),
            cli_steps: Some(j.cli_steps),
            redacted_values: Some(j.redacted_values),
            docker_auth_config,
        }
    }
}

/// Body of both dequeue routes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct DequeueRequest {
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub queues: Vec<String>,
    #[serde(default)]
    pub executor_name: String,
    #[serde(default)]
    pub version: String,
    #[serde(default, rename = "numCPUs", skip_serializing_if = "is_zero")]
    pub num_cpus: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub memory: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub disk_space: String,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Host facts sent with every heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ExecutorTelemetry {
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub docker_version: String,
    #[serde(default)]
    pub executor_version: String,
    #[serde(default)]
    pub git_version: String,
    #[serde(default)]
    pub ignite_version: String,
    #[serde(default)]
    pub src_cli_version: String,
    #[serde(default)]
    pub prometheus_metrics: String,
}

/// Running job ids of one queue in a multi-queue heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct QueueJobIds {
    pub queue_name: String,
    #[serde(default, deserialize_with = "null_default")]
    pub job_ids: Vec<String>,
}

/// Heartbeat body as the server reads it: the union of the multi-queue form (`jobIdsByQueue`,
/// `queueNames`) and the single-queue V1 form (`jobIds` as numbers or strings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatRequest {
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub executor_name: String,
    /// Single-queue form. Serialised as JSON numbers (`null` when none), as the original does.
    #[serde(
        default,
        deserialize_with = "ids_lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub job_ids: Option<Vec<i64>>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub job_ids_by_queue: Vec<QueueJobIds>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub queue_names: Vec<String>,
    #[serde(flatten)]
    pub telemetry: ExecutorTelemetry,
}

/// Heartbeat answer; ids may come as strings or numbers and are normalised to strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatResponse {
    #[serde(default, deserialize_with = "string_ids")]
    pub known_ids: Vec<String>,
    #[serde(default, deserialize_with = "string_ids")]
    pub cancel_ids: Vec<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StrOrNum {
    Str(String),
    Int(i64),
    Float(f64),
}

impl StrOrNum {
    fn into_string(self) -> String {
        match self {
            StrOrNum::Str(s) => s,
            StrOrNum::Int(i) => i.to_string(),
            StrOrNum::Float(f) => format!("{}", f.trunc() as i64),
        }
    }
}

fn string_ids<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v = Option::<Vec<StrOrNum>>::deserialize(d)?.unwrap_or_default();
    Ok(v.into_iter().map(StrOrNum::into_string).collect())
}

fn ids_lenient<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<i64>>, D::Error> {
    let Some(v) = Option::<Vec<StrOrNum>>::deserialize(d)? else {
        return Ok(None);
    };
    v.into_iter()
        .map(|x| match x {
            StrOrNum::Int(i) => Ok(i),
            StrOrNum::Float(f) => Ok(f.trunc() as i64),
            StrOrNum::Str(s) => s
                .parse::<i64>()
                .map_err(|_| serde::de::Error::custom(format!("invalid job id {s:?}"))),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// One execution log entry (`setup.*`, `step.*`, `teardown.*`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionLogEntry {
    pub key: String,
    #[serde(default, deserialize_with = "null_default")]
    pub command: Vec<String>,
    /// RFC 3339 with nanoseconds.
    #[serde(default)]
    pub start_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub out: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<i64>,
}

/// `addExecutionLogEntry` body: the job reference and the entry, flattened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AddExecutionLogEntryRequest {
    #[serde(default)]
    pub executor_name: String,
    pub job_id: i64,
    #[serde(flatten)]
    pub entry: ExecutionLogEntry,
}

/// `updateExecutionLogEntry` body: the full entry replaces entry `entryId`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateExecutionLogEntryRequest {
    #[serde(default)]
    pub executor_name: String,
    pub job_id: i64,
    pub entry_id: i64,
    #[serde(flatten)]
    pub entry: ExecutionLogEntry,
}

/// `markComplete` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MarkCompleteRequest {
    #[serde(default)]
    pub executor_name: String,
    pub job_id: i64,
}

/// `markErrored` and `markFailed` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MarkErroredRequest {
    #[serde(default)]
    pub executor_name: String,
    pub job_id: i64,
    #[serde(default)]
    pub error_message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_response_accepts_strings_ints_and_null() {
        let r: HeartbeatResponse =
            serde_json::from_str(r#"{"knownIds":["42-batches",7,8.0],"cancelIds":null}"#).unwrap();
        assert_eq!(r.known_ids, vec!["42-batches", "7", "8"]);
        assert!(r.cancel_ids.is_empty());
    }

    #[test]
    fn heartbeat_v1_ids_lenient() {
        let r: HeartbeatRequest =
            serde_json::from_str(r#"{"executorName":"e","version":"V2","jobIds":[1,"2",3.0]}"#)
                .unwrap();
        assert_eq!(r.job_ids, Some(vec![1, 2, 3]));
        assert!(serde_json::from_str::<HeartbeatRequest>(r#"{"jobIds":["x"]}"#).is_err());
    }

    #[test]
    fn log_entry_requests_flatten() {
        let req = AddExecutionLogEntryRequest {
            executor_name: "e".into(),
            job_id: 3,
            entry: ExecutionLogEntry {
                key: "setup.git.init".into(),
                command: vec!["git".into(), "init".into()],
                start_time: "2024-01-01T00:00:00Z".into(),
                exit_code: None,
                out: String::new(),
                duration_ms: None,
            },
        };
        let v = serde_json::to_value(&req).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"executorName":"e","jobId":3,"key":"setup.git.init",
                "command":["git","init"],"startTime":"2024-01-01T00:00:00Z"})
        );
    }

    #[test]
    fn dequeue_request_omits_empty_fields() {
        let r = DequeueRequest {
            executor_name: "e".into(),
            version: "5.5.0".into(),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"executorName":"e","version":"5.5.0"}"#
        );
    }
}
