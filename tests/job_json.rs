//! The Job JSON corpus under tests/jobs/: v1 and v2 payloads parse into the expected values and
//! survive a serialise/parse round trip in their own version.

use hearth::queue::types::Job;
use std::path::PathBuf;

fn load(name: &str) -> (Job, serde_json::Value) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/jobs")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    (
        serde_json::from_str(&text).unwrap(),
        serde_json::from_str(&text).unwrap(),
    )
}

fn round_trip(job: &Job) {
    let text = serde_json::to_string(job).unwrap();
    let again: Job = serde_json::from_str(&text).unwrap();
    assert_eq!(&again, job, "{text}");
}

#[test]
fn v2_codeintel_docker_shallow() {
    let (job, _) = load("v2-codeintel-docker-shallow.json");
    assert_eq!(
        (job.version, job.id, job.queue.as_deref()),
        (2, 42, Some("codeintel"))
    );
    assert_eq!(job.record_uid(), "42-codeintel");
    assert!(job.shallow_clone && !job.fetch_tags && job.sparse_checkout.is_empty());
    assert_eq!(job.docker_steps.len(), 3);
    assert_eq!(job.docker_steps[1].key, "indexer");
    assert!(job.docker_steps[1].env.is_empty(), "env: null is empty");
    assert_eq!(job.docker_steps[0].dir, "web");
    assert!(job.cli_steps.is_empty());
    assert_eq!(job.redacted_values["hunter2hunter2"], "PASSWORD_REMOVED");
    assert!(job.docker_auth_config.auths.is_empty());
    round_trip(&job);
    let v = serde_json::to_value(&job).unwrap();
    assert_eq!(v["version"], 2);
    assert_eq!(v["dockerAuthConfig"], serde_json::json!({"auths": {}}));
}

#[test]
fn v2_batches_sparse_files() {
    let (job, raw) = load("v2-batches-sparse-files.json");
    assert_eq!(job.sparse_checkout, vec!["services/api/*"]);
    assert_eq!(job.repository_directory, "repository");
    let input = &job.files["input.json"];
    assert_eq!(input.content, br#"{"steps":[{"run":"echo hi"}]}"#);
    assert_eq!(input.modified_at, None, "Go zero time means unset");
    assert_eq!(
        job.files["step0.json"].modified_at.as_deref(),
        Some("2024-03-01T10:00:00Z")
    );
    let remote = &job.files["workspace-files/services/api/.env"];
    assert_eq!(
        (remote.bucket.as_deref(), remote.key.as_deref()),
        (Some("batch-changes"), Some("spec123/file456"))
    );
    assert!(remote.content.is_empty());
    assert_eq!(
        job.docker_auth_config.auths["registry.example.com"],
        b"user:pass"
    );
    assert_eq!(job.docker_steps[1].key, "step.0.run");
    round_trip(&job);
    // Serialised v2 content is base64 again, byte for byte what came in.
    let v = serde_json::to_value(&job).unwrap();
    assert_eq!(
        v["files"]["input.json"]["content"],
        raw["files"]["input.json"]["content"]
    );
    assert_eq!(v["dockerAuthConfig"], raw["dockerAuthConfig"]);
}

#[test]
fn v1_batches_cli_step() {
    let (job, _) = load("v1-batches-cli-step.json");
    assert_eq!(job.version, 1);
    assert_eq!(job.queue, None);
    assert_eq!(job.record_uid(), "3");
    assert!(job.fetch_tags && !job.shallow_clone);
    assert_eq!(
        job.files["input.json"].content, br#"{"steps":[]}"#,
        "v1 content is a plain string"
    );
    assert!(job.docker_steps.is_empty());
    assert_eq!(job.cli_steps[0].key, "batch-exec");
    assert_eq!(
        job.cli_steps[0].command[..2],
        ["batch".to_string(), "exec".to_string()]
    );
    round_trip(&job);
    let v = serde_json::to_value(&job).unwrap();
    assert!(v.get("version").is_none() && v.get("dockerAuthConfig").is_none());
    assert_eq!(v["files"]["input.json"]["content"], r#"{"steps":[]}"#);
}

#[test]
fn v2_no_repo_binary_file() {
    let (job, _) = load("v2-no-repo-redaction.json");
    assert!(job.repository_name.is_empty() && job.token.is_empty());
    assert_eq!(job.files["script/data.bin"].content, [0u8, 1, 2, 255, 254]);
    assert_eq!(job.docker_steps[0].key, "");
    assert_eq!(job.redacted_values["pa55word-xyz"], "[REDACTED]");
    round_trip(&job);
}

#[test]
fn bad_payloads_are_errors() {
    let bad_b64 = r#"{"version":2,"id":1,"files":{"a":{"content":"***"}}}"#;
    let err = serde_json::from_str::<Job>(bad_b64)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("file \"a\": content is not valid base64"),
        "{err}"
    );
    let bad_version = r#"{"version":3,"id":1}"#;
    assert!(
        serde_json::from_str::<Job>(bad_version)
            .unwrap_err()
            .to_string()
            .contains("unsupported job payload version 3")
    );
    let bad_auth = r#"{"version":2,"id":1,"dockerAuthConfig":{"auths":{"r":{"auth":"%%"}}}}"#;
    assert!(serde_json::from_str::<Job>(bad_auth).is_err());
}
