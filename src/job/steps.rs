//! The job's steps, each run through the sandbox's agent with its output streamed into a log
//! entry: docker steps (`step.docker.<key|index>`) run their script from
//! `/work/.sourcegraph-executor/` with `/bin/sh`, in `/work/<dir>` with the step's env; `src`
//! steps (`step.src.<key|index>`) run `src <args…>` the same way. Container images are not
//! supported yet: a docker step runs in the sandbox's default root filesystem, and its log says
//! so on its first line.

use crate::job::host_cmd::canceled_text;
use crate::job::logs::LogSink;
use crate::job::workspace::{self, GUEST_WORKSPACE, SCRIPTS_DIR, WorkspaceError};
use crate::queue::types::Job;
use crate::queue::worker::{CancelReason, CancelSignal};
use hearth_agent::client::{Client, ExecEvent};
use hearth_agent::proto::{ExecSpec, ExitStatus, OutputStream};
use std::time::Duration;

/// After asking the agent to cancel, how long to wait for the exit before giving up on it.
const CANCEL_WAIT: Duration = Duration::from_secs(5);

/// Why a step did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("starting command: {0}")]
    Start(String),
    #[error("running command: {0}")]
    Agent(String),
    #[error("command failed with exit code {0}")]
    Failed(i32),
    #[error("{}", canceled_text(*.0))]
    Canceled(CancelReason),
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
}

/// Which list a step came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    Docker,
    Src,
}

/// One step, ready to run.
#[derive(Debug, Clone)]
pub struct Step {
    pub kind: StepKind,
    pub key: String,
    /// The command shown in the log entry (what runs in the sandbox).
    pub command: Vec<String>,
    pub cwd: String,
    pub env: Vec<(String, String)>,
    /// A first line for the log (the docker image note).
    pub note: Option<String>,
}

/// `NAME=value` entries; an entry without `=` is skipped (docker would pass a host variable
/// through; there is no host environment to take it from here).
fn parse_env(env: &[String]) -> Vec<(String, String)> {
    env.iter()
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn step_key(kind: &str, key: &str, index: usize) -> String {
    if key.is_empty() {
        format!("step.{kind}.{index}")
    } else {
        format!("step.{kind}.{key}")
    }
}

/// The job's steps in order: docker steps, then `src` steps (as the original runs them).
pub fn job_steps(job: &Job) -> Result<Vec<Step>, StepError> {
    let mut steps = Vec::new();
    for (i, s) in job.docker_steps.iter().enumerate() {
        let script = format!(
            "{GUEST_WORKSPACE}/{SCRIPTS_DIR}/{}",
            workspace::script_name(job, i)
        );
        steps.push(Step {
            kind: StepKind::Docker,
            key: step_key("docker", &s.key, i),
            command: vec!["/bin/sh".to_string(), script],
            cwd: workspace::guest_dir(&s.dir)?,
            env: parse_env(&s.env),
            note: Some(format!(
                "stderr: hearth: container images are not supported yet; running in the \
                 sandbox's default root filesystem instead of image {:?}\n",
                s.image
            )),
        });
    }
    for (i, s) in job.cli_steps.iter().enumerate() {
        let mut command = vec!["src".to_string()];
        command.extend(s.command.iter().cloned());
        steps.push(Step {
            kind: StepKind::Src,
            key: step_key("src", &s.key, i),
            command,
            cwd: workspace::guest_dir(&s.dir)?,
            env: parse_env(&s.env),
            note: None,
        });
    }
    Ok(steps)
}

fn exec_spec(step: &Step) -> ExecSpec {
    let mut spec = ExecSpec::argv(step.command.iter().map(|a| a.as_bytes().to_vec()));
    spec.cwd = Some(step.cwd.as_bytes().to_vec());
    spec.env = step
        .env
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
    spec
}

/// Go's `ExitCode()`: the code, or -1 when killed by a signal.
fn exit_code(status: ExitStatus) -> i32 {
    match status {
        ExitStatus::Code(c) => c,
        ExitStatus::Signal(_) => -1,
    }
}

/// Runs `step` through `client`. A tripped `cancel` cancels the exec at once (the agent kills
/// its process group); the entry is finished in every case.
pub async fn run_step(
    client: &Client,
    sink: &LogSink,
    step: &Step,
    cancel: &CancelSignal,
) -> Result<(), StepError> {
    if let Some(reason) = cancel.reason() {
        return Err(StepError::Canceled(reason));
    }
    let entry = sink.open(&step.key, step.command.clone());
    if let Some(note) = &step.note {
        entry.write_raw(note);
    }
    let mut stream = match client.exec(exec_spec(step)).await {
        Ok(s) => s,
        Err(e) => {
            entry.finish(0);
            return Err(StepError::Start(e.to_string()));
        }
    };
    let handle = stream.handle();
    let mut canceled: Option<CancelReason> = None;
    let mut give_up_at: Option<tokio::time::Instant> = None;
    loop {
        let give_up = async move {
            match give_up_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        let event = tokio::select! {
            ev = stream.next() => ev,
            reason = cancel.tripped(), if canceled.is_none() => {
                canceled = Some(reason);
                if let Err(e) = handle.cancel().await {
                    tracing::warn!(key = %step.key, error = %e, "cancelling the step failed");
                }
                give_up_at = Some(tokio::time::Instant::now() + CANCEL_WAIT);
                continue;
            }
            _ = give_up => {
                entry.finish(-1);
                return Err(StepError::Canceled(canceled.unwrap_or(CancelReason::Canceled)));
            }
        };
        match event {
            Ok(Some(ExecEvent::Started { .. })) => {}
            Ok(Some(ExecEvent::Output { stream, data })) => match stream {
                OutputStream::Stdout => entry.stdout(&data),
                OutputStream::Stderr => entry.stderr(&data),
            },
            Ok(Some(ExecEvent::Exited(info))) => {
                let code = exit_code(info.status);
                entry.finish(code);
                return match canceled {
                    Some(reason) => Err(StepError::Canceled(reason)),
                    None if code != 0 => Err(StepError::Failed(code)),
                    None => Ok(()),
                };
            }
            Ok(None) => {
                entry.finish(-1);
                return Err(StepError::Agent(
                    "the agent ended the exec without an exit".into(),
                ));
            }
            Err(e) => {
                entry.finish(-1);
                return match canceled {
                    Some(reason) => Err(StepError::Canceled(reason)),
                    None => Err(StepError::Agent(e.to_string())),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::types::{CliStep, DockerStep};

    #[test]
    fn keys_commands_and_dirs() {
        let job = Job {
            id: 7,
            repository_name: "github.com/a/b".into(),
            commit: "c".into(),
            docker_steps: vec![
                DockerStep {
                    key: "indexer".into(),
                    image: "alpine".into(),
                    dir: "web".into(),
                    env: vec!["A=1".into(), "B=x=y".into(), "NOVALUE".into()],
                    ..Default::default()
                },
                DockerStep::default(),
            ],
            cli_steps: vec![CliStep {
                command: vec!["batch".into(), "exec".into()],
                dir: ".".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let steps = job_steps(&job).unwrap();
        let keys: Vec<&str> = steps.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(keys, ["step.docker.indexer", "step.docker.1", "step.src.0"]);
        assert_eq!(
            steps[0].command,
            [
                "/bin/sh",
                "/work/.sourcegraph-executor/7.0_github.com_a_b@c.sh"
            ]
        );
        assert_eq!(steps[0].cwd, "/work/web");
        assert_eq!(
            steps[0].env,
            [("A".into(), "1".into()), ("B".into(), "x=y".into())]
        );
        assert_eq!(steps[1].cwd, "/work");
        assert_eq!(steps[2].command, ["src", "batch", "exec"]);
        assert!(steps[2].note.is_none());
    }
}
