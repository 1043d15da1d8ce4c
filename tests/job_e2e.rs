//! The job runner end to end: corpus jobs (`tests/jobs/e2e/`) through the embedded queue and the
//! worker, cloning a real repository served by `git http-backend` over smart HTTP through the
//! per-job proxy, steps run in process sandboxes (or the local agent) with the workspace at
//! `/work`; each test checks the job's final state and its exact log entries (timings, ports and
//! paths normalised; git's progress output checked by its lines that do not vary). The cases are
//! in `tests/job_common/cases.rs`; tests/vm_job.rs runs the same ones in microVMs.
//!
//! Needs root (process sandboxes: namespaces and cgroups) and `git` with `git http-backend`.

mod job_common;

use job_common::{E2e, cases};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_steps_full_clone() {
    cases::docker_steps_full_clone(&E2e::start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_step_legacy_path_with_tags() {
    cases::cli_step_legacy_path_with_tags(&E2e::start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shallow_clone_of_an_older_commit() {
    cases::shallow_clone_of_an_older_commit(&E2e::start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparse_checkout_fetches_only_the_patterns() {
    cases::sparse_checkout_fetches_only_the_patterns(&E2e::start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_written_with_mode_and_mtime() {
    cases::files_are_written_with_mode_and_mtime(&E2e::start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_store_reference_is_fetched_from_the_frontend() {
    cases::files_store_reference_is_fetched_from_the_frontend(&E2e::start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redacted_values_never_leave_the_process() {
    cases::redacted_values_never_leave_the_process(&E2e::start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_step_stops_the_job_and_marks_it_errored() {
    cases::failing_step_stops_the_job_and_marks_it_errored(&E2e::start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_limit_kills_the_step_and_errors_the_job() {
    cases::runtime_limit_kills_the_step_and_errors_the_job(&E2e::start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_is_acted_on_within_a_second_of_the_heartbeat() {
    cases::cancel_is_acted_on_within_a_second_of_the_heartbeat(&E2e::start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_during_clone_kills_git_and_skips_the_sandbox() {
    cases::cancel_during_clone_kills_git_and_skips_the_sandbox(&E2e::start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_store_content_is_fetched_with_the_job_token() {
    cases::files_store_content_is_fetched_with_the_job_token(&E2e::start().await).await;
}
