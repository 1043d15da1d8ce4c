//! The local Prometheus endpoint serves the executor's metrics in text format.

use hearth::metrics::{self, JobOutcome, Metrics};

#[tokio::test]
async fn metrics_endpoint_serves_prometheus_text() {
    let m = Metrics::new(&["codeintel".to_string(), "batches".to_string()]);
    m.job_started();
    m.job_started();
    m.job_finished(JobOutcome::Succeeded, 12.0);
    m.vm_boot(0.4);
    m.step_duration("setup.git.fetch", 2.0);
    m.step_duration("step.docker.indexer", 40.0);
    m.dequeue_error();
    let (addr, task) = metrics::serve("127.0.0.1:0", m.clone()).await.unwrap();
    let res = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/plain; version=0.0.4");
    let text = res.text().await.unwrap();
    for want in [
        "hearth_jobs_running 1\n",
        "hearth_jobs_succeeded_total 1\n",
        "hearth_dequeue_errors_total 1\n",
        "src_executor_processor_handlers{queue=\"batches_codeintel\"} 1\n",
        "src_executor_processor_total{op=\"Handle\",queue=\"batches_codeintel\"} 1\n",
        "hearth_vm_boot_seconds_bucket{le=\"0.5\"} 1\n",
        "hearth_vm_boot_seconds_bucket{le=\"0.3\"} 0\n",
        "hearth_step_duration_seconds_count{kind=\"setup.git\"} 1\n",
        "hearth_step_duration_seconds_sum{kind=\"step.docker\"} 40\n",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    task.abort();
}
