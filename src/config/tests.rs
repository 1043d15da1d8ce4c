use super::*;
use std::collections::HashMap;

fn load(vars: &[(&str, &str)], flags: &ConfigFlags) -> Result<Config, ConfigError> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::load(&|name| map.get(name).cloned(), flags)
}

const REMOTE: [(&str, &str); 3] = [
    ("EXECUTOR_FRONTEND_URL", "https://sg.example.com"),
    ("EXECUTOR_FRONTEND_PASSWORD", "hunter2hunter2hunter2"),
    ("EXECUTOR_QUEUE_NAME", "batches"),
];

#[test]
fn defaults_match_the_original() {
    let c = load(&REMOTE, &ConfigFlags::default()).unwrap();
    assert_eq!(c.queues, QueueSelection::Single("batches".into()));
    assert_eq!(c.queue_poll_interval, Duration::from_secs(1));
    assert_eq!(c.maximum_num_jobs, 1);
    assert_eq!(c.maximum_runtime_per_job, Duration::from_secs(30 * 60));
    assert_eq!(c.job_num_cpus, 4);
    assert_eq!(c.job_memory, "12G");
    assert_eq!(c.job_memory_bytes, 12 << 30);
    assert_eq!(c.disk_space, "20G");
    assert_eq!(c.disk_space_bytes, 20 << 30);
    assert_eq!(c.num_total_jobs, 0);
    assert_eq!(c.max_active_time, Duration::ZERO);
    assert_eq!(c.vm_prefix, "executor");
    assert_eq!(c.log_level, LogLevel::Warn);
    assert_eq!(c.heartbeat_interval, Duration::from_secs(5));
    assert!(!c.is_embedded());
    let host = hostname();
    let suffix = c.executor_name.strip_prefix(&format!("{host}-")).unwrap();
    assert!(uuid::Uuid::parse_str(suffix).is_ok(), "{}", c.executor_name);
}

#[test]
fn required_values_in_remote_mode() {
    let e = load(
        &[("EXECUTOR_FRONTEND_URL", "https://sg.example.com")],
        &ConfigFlags::default(),
    )
    .unwrap_err();
    assert!(
        e.0.contains(
            &"invalid value \"\" for EXECUTOR_FRONTEND_PASSWORD: no value supplied".to_string()
        ),
        "{e}"
    );
    assert!(
        e.0.contains(&"neither EXECUTOR_QUEUE_NAME or EXECUTOR_QUEUE_NAMES is set".to_string()),
        "{e}"
    );
}

#[test]
fn embedded_mode_needs_nothing() {
    let c = load(&[("HOME", "/home/x")], &ConfigFlags::default()).unwrap();
    assert!(c.is_embedded());
    assert_eq!(c.frontend_password.len(), 32);
    assert_eq!(
        c.queues,
        QueueSelection::Multi(vec!["batches".into(), "codeintel".into()])
    );
    assert_eq!(
        c.embedded_db,
        PathBuf::from("/home/x/.local/state/hearth/queue.sqlite")
    );
}

#[test]
fn validation_messages() {
    let mut vars = REMOTE.to_vec();
    vars.push(("EXECUTOR_QUEUE_NAMES", "batches,codeintel"));
    let e = load(&vars, &ConfigFlags::default()).unwrap_err();
    assert_eq!(
        e.0,
        vec!["both EXECUTOR_QUEUE_NAME and EXECUTOR_QUEUE_NAMES are set"]
    );

    let e = load(
        &[
            ("EXECUTOR_FRONTEND_URL", "sg.example.com"),
            ("EXECUTOR_FRONTEND_PASSWORD", "x"),
            ("EXECUTOR_QUEUE_NAMES", "batches,nope"),
            ("EXECUTOR_JOB_NUM_CPUS", "3"),
            ("EXECUTOR_FIRECRACKER_DISK_SPACE", "lots"),
            ("EXECUTOR_QUEUE_POLL_INTERVAL", "10"),
            ("EXECUTOR_MAXIMUM_NUM_JOBS", "many"),
        ],
        &ConfigFlags::default(),
    )
    .unwrap_err();
    let all = e.0.join("\n");
    assert!(all.contains("EXECUTOR_QUEUE_NAMES contains invalid queue name 'nope', valid names are 'batches, codeintel' and should be comma-separated"), "{all}");
    assert!(
        all.contains(
            "EXECUTOR_FRONTEND_URL must be in the format scheme://host (and optionally :port)"
        ),
        "{all}"
    );
    assert!(
        all.contains("EXECUTOR_JOB_NUM_CPUS must be 1 or an even number"),
        "{all}"
    );
    assert!(
        all.contains("invalid disk size provided for EXECUTOR_FIRECRACKER_DISK_SPACE: \"lots\""),
        "{all}"
    );
    assert!(
        all.contains("invalid duration \"10\" for EXECUTOR_QUEUE_POLL_INTERVAL"),
        "{all}"
    );
    assert!(
        all.contains("invalid int \"many\" for EXECUTOR_MAXIMUM_NUM_JOBS"),
        "{all}"
    );

    let e = load(
        &[
            ("EXECUTOR_FRONTEND_URL", "http://host.docker.internal:3080"),
            ("EXECUTOR_FRONTEND_PASSWORD", "x"),
            ("EXECUTOR_QUEUE_NAME", "codeintel2"),
        ],
        &ConfigFlags::default(),
    )
    .unwrap_err();
    assert!(
        e.0.iter()
            .any(|m| m.starts_with("Making the executor talk to host.docker.internal"))
    );
    assert!(
        e.0.contains(&"EXECUTOR_QUEUE_NAME must be set to one of 'batches, codeintel'".to_string())
    );
}

#[test]
fn flags_override_env_and_fallbacks_apply() {
    let mut vars = REMOTE.to_vec();
    vars.push(("EXECUTOR_FIRECRACKER_NUM_CPUS", "8"));
    vars.push(("EXECUTOR_FIRECRACKER_MEMORY", "2G"));
    vars.push(("EXECUTOR_MAXIMUM_NUM_JOBS", "2"));
    let c = load(&vars, &ConfigFlags::default()).unwrap();
    assert_eq!(c.job_num_cpus, 8);
    assert_eq!(c.job_memory, "2G");
    assert_eq!(c.maximum_num_jobs, 2);

    let flags = ConfigFlags {
        queue_names: Some("codeintel".into()),
        maximum_num_jobs: Some("6".into()),
        queue_poll_interval: Some("250ms".into()),
        ..Default::default()
    };
    let mut vars = REMOTE.to_vec();
    vars.retain(|(k, _)| *k != "EXECUTOR_QUEUE_NAME");
    vars.push(("EXECUTOR_MAXIMUM_NUM_JOBS", "2"));
    let c = load(&vars, &flags).unwrap();
    assert_eq!(c.maximum_num_jobs, 6);
    assert_eq!(c.queue_poll_interval, Duration::from_millis(250));
    assert_eq!(c.queues, QueueSelection::Multi(vec!["codeintel".into()]));
}

#[test]
fn log_level_values() {
    let mut vars = REMOTE.to_vec();
    vars.push(("SRC_LOG_LEVEL", "dbug"));
    assert_eq!(
        load(&vars, &ConfigFlags::default()).unwrap().log_level,
        LogLevel::Debug
    );
    let flags = ConfigFlags {
        log_level: Some("loud".into()),
        ..Default::default()
    };
    let e = load(&REMOTE, &flags).unwrap_err();
    assert!(e.0[0].contains("SRC_LOG_LEVEL"));
}

#[test]
fn remaining_variables_are_validated_like_the_original() {
    let mut vars = REMOTE.to_vec();
    vars.extend([
        ("EXECUTOR_KEEP_WORKSPACES", "sometimes"),
        ("EXECUTOR_USE_FIRECRACKER", "maybe"),
        ("EXECUTOR_DOCKER_ADD_HOST_GATEWAY", "2"),
        ("EXECUTOR_JOB_MEMORY", "plenty"),
        ("EXECUTOR_MAXIMUM_RUNTIME_PER_JOB", "30"),
        ("EXECUTOR_NUM_TOTAL_JOBS", "-"),
        ("EXECUTOR_MAX_ACTIVE_TIME", "1 hour"),
        ("SRC_LOG_FORMAT", "xml"),
        ("EXECUTOR_CLEANUP_TASK_INTERVAL", "often"),
        ("EXECUTOR_FIRECRACKER_BANDWIDTH_INGRESS", "fast"),
        ("EXECUTOR_DOCKER_AUTH_CONFIG", "{"),
    ]);
    let e = load(&vars, &ConfigFlags::default()).unwrap_err();
    let all = e.0.join("\n");
    for expected in [
        "invalid bool \"sometimes\" for EXECUTOR_KEEP_WORKSPACES",
        "invalid bool \"maybe\" for EXECUTOR_USE_FIRECRACKER",
        "invalid bool \"2\" for EXECUTOR_DOCKER_ADD_HOST_GATEWAY",
        "invalid memory size provided for EXECUTOR_JOB_MEMORY: \"plenty\"",
        "invalid duration \"30\" for EXECUTOR_MAXIMUM_RUNTIME_PER_JOB",
        "invalid int \"-\" for EXECUTOR_NUM_TOTAL_JOBS",
        "invalid duration \"1 hour\" for EXECUTOR_MAX_ACTIVE_TIME",
        "invalid value \"xml\" for SRC_LOG_FORMAT",
        "invalid duration \"often\" for EXECUTOR_CLEANUP_TASK_INTERVAL",
        "invalid int \"fast\" for EXECUTOR_FIRECRACKER_BANDWIDTH_INGRESS",
        "invalid EXECUTOR_DOCKER_AUTH_CONFIG, failed to parse",
    ] {
        assert!(all.contains(expected), "{expected:?} missing from:\n{all}");
    }

    // The CPU count rule is Firecracker's: without VM isolation any count goes.
    let mut vars = REMOTE.to_vec();
    vars.extend([
        ("EXECUTOR_USE_FIRECRACKER", "false"),
        ("EXECUTOR_JOB_NUM_CPUS", "3"),
    ]);
    let c = load(&vars, &ConfigFlags::default()).unwrap();
    assert!(!c.use_vm);
    assert_eq!(c.job_num_cpus, 3);
    // EXECUTOR_JOB_NUM_CPUS wins over its fallback.
    let mut vars = REMOTE.to_vec();
    vars.extend([
        ("EXECUTOR_JOB_NUM_CPUS", "2"),
        ("EXECUTOR_FIRECRACKER_NUM_CPUS", "8"),
    ]);
    assert_eq!(
        load(&vars, &ConfigFlags::default()).unwrap().job_num_cpus,
        2
    );

    let mut vars = REMOTE.to_vec();
    vars[0] = ("EXECUTOR_FRONTEND_URL", "ftp://sg.example.com");
    vars.push(("EXECUTOR_MAXIMUM_NUM_JOBS", "0"));
    let all = load(&vars, &ConfigFlags::default())
        .unwrap_err()
        .0
        .join("\n");
    assert!(
        all.contains("EXECUTOR_FRONTEND_URL scheme must be http or https"),
        "{all}"
    );
    assert!(
        all.contains("EXECUTOR_MAXIMUM_NUM_JOBS must be at least 1"),
        "{all}"
    );
}
