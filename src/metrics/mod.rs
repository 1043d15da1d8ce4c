//! Executor metrics: the original's queue-client and processor metric names where they apply,
//! plus hearth's own (jobs running/succeeded/failed, VM boot seconds, step durations, dequeue
//! errors). The text goes into every heartbeat's `prometheusMetrics` and onto a local `/metrics`
//! ([`serve`]).

mod registry;

pub use registry::{Kind, Registry};

use axum::Router;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const QUEUE_TOTAL: &str = "src_apiworker_apiclient_queue_total";
const QUEUE_DURATION: &str = "src_apiworker_apiclient_queue_duration_seconds";
const QUEUE_ERRORS: &str = "src_apiworker_apiclient_queue_errors_total";
const PROCESSOR_HANDLERS: &str = "src_executor_processor_handlers";
const PROCESSOR_TOTAL: &str = "src_executor_processor_total";
const PROCESSOR_ERRORS: &str = "src_executor_processor_errors_total";
const PROCESSOR_DURATION: &str = "src_executor_processor_duration_seconds";
const JOBS_RUNNING: &str = "hearth_jobs_running";
const JOBS_SUCCEEDED: &str = "hearth_jobs_succeeded_total";
const JOBS_FAILED: &str = "hearth_jobs_failed_total";
const VM_BOOT: &str = "hearth_vm_boot_seconds";
const STEP_DURATION: &str = "hearth_step_duration_seconds";
const DEQUEUE_ERRORS: &str = "hearth_dequeue_errors_total";

/// Default Prometheus client buckets (the original's queue-client RED metrics use them).
const DEFAULT_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// The original's processor buckets.
const PROCESSOR_BUCKETS: [f64; 11] = [
    30.0, 60.0, 150.0, 300.0, 450.0, 600.0, 900.0, 1200.0, 1800.0, 2700.0, 3600.0,
];
const BOOT_BUCKETS: [f64; 10] = [0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0];
const STEP_BUCKETS: [f64; 10] = [0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0];

/// How a job ended, for the job counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOutcome {
    Succeeded,
    Failed,
}

/// The executor's metrics. Cheap to clone; clones share the registry.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    queue_label: String,
}

impl Metrics {
    /// `queues`: the polled queue names (the `queue` label is the sorted names joined by `_`, as
    /// in the original).
    pub fn new(queues: &[String]) -> Metrics {
        let r = Registry::default();
        r.describe(
            QUEUE_TOTAL,
            "Total number of queue client operations.",
            Kind::Counter,
            &[],
        );
        r.describe(
            QUEUE_DURATION,
            "Time in seconds spent performing queue client operations.",
            Kind::Histogram,
            &DEFAULT_BUCKETS,
        );
        r.describe(
            QUEUE_ERRORS,
            "Total number of errors when performing queue client operations.",
            Kind::Counter,
            &[],
        );
        r.describe(
            PROCESSOR_HANDLERS,
            "The number of active handlers.",
            Kind::Gauge,
            &[],
        );
        r.describe(
            PROCESSOR_TOTAL,
            "Total number of processor operations.",
            Kind::Counter,
            &[],
        );
        r.describe(
            PROCESSOR_ERRORS,
            "Total number of errors when performing processor operations.",
            Kind::Counter,
            &[],
        );
        r.describe(
            PROCESSOR_DURATION,
            "Time in seconds spent performing processor operations.",
            Kind::Histogram,
            &PROCESSOR_BUCKETS,
        );
        r.describe(JOBS_RUNNING, "Jobs currently running.", Kind::Gauge, &[]);
        r.describe(
            JOBS_SUCCEEDED,
            "Jobs that completed successfully.",
            Kind::Counter,
            &[],
        );
        r.describe(
            JOBS_FAILED,
            "Jobs that errored, failed or were canceled.",
            Kind::Counter,
            &[],
        );
        r.describe(
            VM_BOOT,
            "Seconds from VM creation to the guest agent being ready.",
            Kind::Histogram,
            &BOOT_BUCKETS,
        );
        r.describe(
            STEP_DURATION,
            "Duration of job steps in seconds, by log key prefix.",
            Kind::Histogram,
            &STEP_BUCKETS,
        );
        r.describe(
            DEQUEUE_ERRORS,
            "Dequeue requests that failed.",
            Kind::Counter,
            &[],
        );
        let mut sorted = queues.to_vec();
        sorted.sort();
        let m = Metrics {
            registry: r,
            queue_label: sorted.join("_"),
        };
        m.registry.set(JOBS_RUNNING, &[], 0.0);
        m.registry.add(JOBS_SUCCEEDED, &[], 0.0);
        m.registry.add(JOBS_FAILED, &[], 0.0);
        m.registry.add(DEQUEUE_ERRORS, &[], 0.0);
        m
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// One queue-client call (`op` ∈ Dequeue, Heartbeat, AddExecutionLogEntry, …).
    pub fn queue_call(&self, op: &str, seconds: f64, ok: bool) {
        self.registry.add(QUEUE_TOTAL, &[("op", op)], 1.0);
        self.registry
            .observe(QUEUE_DURATION, &[("op", op)], seconds);
        if !ok {
            self.registry.add(QUEUE_ERRORS, &[("op", op)], 1.0);
        }
    }

    pub fn dequeue_error(&self) {
        self.registry.add(DEQUEUE_ERRORS, &[], 1.0);
    }

    /// A handler started on a job.
    pub fn job_started(&self) {
        self.registry.add(JOBS_RUNNING, &[], 1.0);
        self.registry
            .add(PROCESSOR_HANDLERS, &[("queue", &self.queue_label)], 1.0);
    }

    /// A handler finished after `seconds`.
    pub fn job_finished(&self, outcome: JobOutcome, seconds: f64) {
        let q = self.queue_label.as_str();
        self.registry.add(JOBS_RUNNING, &[], -1.0);
        self.registry.add(PROCESSOR_HANDLERS, &[("queue", q)], -1.0);
        self.registry
            .add(PROCESSOR_TOTAL, &[("queue", q), ("op", "Handle")], 1.0);
        self.registry.observe(
            PROCESSOR_DURATION,
            &[("queue", q), ("op", "Handle")],
            seconds,
        );
        match outcome {
            JobOutcome::Succeeded => self.registry.add(JOBS_SUCCEEDED, &[], 1.0),
            JobOutcome::Failed => {
                self.registry.add(JOBS_FAILED, &[], 1.0);
                self.registry
                    .add(PROCESSOR_ERRORS, &[("queue", q), ("op", "Handle")], 1.0);
            }
        }
    }

    pub fn vm_boot(&self, seconds: f64) {
        self.registry.observe(VM_BOOT, &[], seconds);
    }

    /// A step's duration; `key` is its log key (`setup.git.fetch`, `step.docker.0`, …) and the
    /// label is its first two dot-separated parts (`setup.git`, `step.docker`).
    pub fn step_duration(&self, key: &str, seconds: f64) {
        let kind: String = key.split('.').take(2).collect::<Vec<_>>().join(".");
        self.registry
            .observe(STEP_DURATION, &[("kind", &kind)], seconds);
    }

    /// The text exposition (for heartbeats and `/metrics`).
    pub fn render(&self) -> String {
        self.registry.render()
    }
}

/// Errors serving `/metrics`.
#[derive(Debug, thiserror::Error)]
#[error("binding the metrics listener on {addr}: {source}")]
pub struct ServeError {
    pub addr: String,
    pub source: std::io::Error,
}

/// Serves `GET /metrics` on `addr`; returns the bound address and the server task.
pub async fn serve(
    addr: &str,
    metrics: Metrics,
) -> Result<(std::net::SocketAddr, JoinHandle<()>), ServeError> {
    let listener = TcpListener::bind(addr).await.map_err(|source| ServeError {
        addr: addr.to_string(),
        source,
    })?;
    let local = listener.local_addr().map_err(|source| ServeError {
        addr: addr.to_string(),
        source,
    })?;
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let m = metrics.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    m.render(),
                )
            }
        }),
    );
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok((local, task))
}
