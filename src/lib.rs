//! hearth library: configuration, the Sourcegraph-compatible queue (client, embedded server,
//! SQLite store), job log streaming with redaction, and metrics.

pub mod config;
pub mod job;
pub mod metrics;
pub mod queue;
pub mod sandbox;
