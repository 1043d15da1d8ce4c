//! Variables the original executor reads and validates that hearth accepts but does not act on
//! (no janitor period, no CNI bandwidth plugin, no docker daemon in the guest yet): they are
//! still checked the same way, so a configuration the original refuses is refused here too, with
//! the original's messages ([SG] `cmd/executor/internal/config/config.go`).

use base64::Engine;

/// Adds an error to `errors` for each invalid compatibility variable in `env` (empty values
/// count as unset).
pub fn validate(env: &dyn Fn(&str) -> Option<String>, errors: &mut Vec<String>) {
    let get = |name: &str| env(name).filter(|v| !v.is_empty());
    if let Some(raw) = get("EXECUTOR_CLEANUP_TASK_INTERVAL")
        && let Err(e) = super::parse::parse_go_duration(&raw)
    {
        errors.push(format!(
            "invalid duration {raw:?} for EXECUTOR_CLEANUP_TASK_INTERVAL: {e}"
        ));
    }
    for name in [
        "EXECUTOR_FIRECRACKER_BANDWIDTH_INGRESS",
        "EXECUTOR_FIRECRACKER_BANDWIDTH_EGRESS",
    ] {
        if let Some(raw) = get(name)
            && let Err(e) = raw.trim().parse::<i64>()
        {
            errors.push(format!("invalid int {raw:?} for {name}: {e}"));
        }
    }
    if let Some(raw) = get("EXECUTOR_DOCKER_AUTH_CONFIG")
        && let Err(e) = docker_auth_config(&raw)
    {
        errors.push(format!(
            "invalid EXECUTOR_DOCKER_AUTH_CONFIG, failed to parse: {e}"
        ));
    }
    if let Some(raw) = get("EXECUTOR_DOCKER_ADDITIONAL_MOUNTS") {
        // Every mount names a target, so one `;`-separated entry with several targets means the
        // mounts were joined with the wrong separator.
        let targets: usize = ["target", "dst", "destination"]
            .iter()
            .map(|p| raw.matches(p).count())
            .sum();
        if !raw.contains(';') && targets > 1 {
            errors.push(
                "invalid EXECUTOR_DOCKER_ADDITIONAL_MOUNTS, failed to parse due to incorrect \
                 separator"
                    .to_string(),
            );
        }
    }
}

/// Go's `json.Unmarshal` into `{"auths": {registry: {"auth": []byte}}}`: an object (or null)
/// whose `auths` is an object (or null) of objects (or null) whose `auth` is base64 (or null);
/// other fields are ignored.
fn docker_auth_config(raw: &str) -> Result<(), String> {
    use serde_json::Value;
    let v: Value = serde_json::from_str(raw).map_err(|e| e.to_string())?;
    let auths = match &v {
        Value::Null => return Ok(()),
        Value::Object(m) => m.get("auths"),
        other => return Err(format!("expected an object, got {other}")),
    };
    let auths = match auths {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Object(a)) => a,
        Some(other) => return Err(format!("\"auths\": expected an object, got {other}")),
    };
    for (registry, entry) in auths {
        let auth = match entry {
            Value::Null => continue,
            Value::Object(e) => e.get("auth"),
            other => return Err(format!("{registry:?}: expected an object, got {other}")),
        };
        match auth {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => {
                base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .map_err(|e| format!("{registry:?}: auth is not base64: {e}"))?;
            }
            Some(other) => {
                return Err(format!(
                    "{registry:?}: auth: expected a string, got {other}"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn errors(vars: &[(&str, &str)]) -> Vec<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut errors = Vec::new();
        validate(&|n| map.get(n).cloned(), &mut errors);
        errors
    }

    #[test]
    fn valid_and_unset_values_pass() {
        assert!(errors(&[]).is_empty());
        assert!(
            errors(&[
                ("EXECUTOR_CLEANUP_TASK_INTERVAL", "90s"),
                ("EXECUTOR_FIRECRACKER_BANDWIDTH_INGRESS", "1000"),
                ("EXECUTOR_FIRECRACKER_BANDWIDTH_EGRESS", ""),
                (
                    "EXECUTOR_DOCKER_AUTH_CONFIG",
                    r#"{"auths":{"ghcr.io":{"auth":"dXNlcjpwYXNz"},"x":null},"credsStore":"y"}"#
                ),
                (
                    "EXECUTOR_DOCKER_ADDITIONAL_MOUNTS",
                    "type=bind,source=/a,target=/a;type=volume,source=v,dst=/v"
                ),
            ])
            .is_empty()
        );
        assert!(errors(&[("EXECUTOR_DOCKER_AUTH_CONFIG", "null")]).is_empty());
    }

    #[test]
    fn invalid_values_get_the_originals_messages() {
        let e = errors(&[
            ("EXECUTOR_CLEANUP_TASK_INTERVAL", "often"),
            ("EXECUTOR_FIRECRACKER_BANDWIDTH_EGRESS", "fast"),
            (
                "EXECUTOR_DOCKER_AUTH_CONFIG",
                r#"{"auths":{"r":{"auth":"%%"}}}"#,
            ),
            (
                "EXECUTOR_DOCKER_ADDITIONAL_MOUNTS",
                "type=bind,source=/a,target=/a,type=bind,source=/b,destination=/b",
            ),
        ]);
        assert_eq!(e.len(), 4, "{e:?}");
        assert!(e[0].starts_with("invalid duration \"often\" for EXECUTOR_CLEANUP_TASK_INTERVAL"));
        assert!(e[1].starts_with("invalid int \"fast\" for EXECUTOR_FIRECRACKER_BANDWIDTH_EGRESS"));
        assert!(
            e[2].starts_with("invalid EXECUTOR_DOCKER_AUTH_CONFIG, failed to parse: \"r\": auth"),
            "{}",
            e[2]
        );
        assert_eq!(
            e[3],
            "invalid EXECUTOR_DOCKER_ADDITIONAL_MOUNTS, failed to parse due to incorrect separator"
        );
        for bad in [
            "[]",
            "{",
            r#"{"auths":[]}"#,
            r#"{"auths":{"r":{"auth":1}}}"#,
        ] {
            let e = errors(&[("EXECUTOR_DOCKER_AUTH_CONFIG", bad)]);
            assert_eq!(e.len(), 1, "{bad}: {e:?}");
        }
    }
}
