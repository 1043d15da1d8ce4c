//! One job's life. For now: log entries (line prefixes, batching, 1 s updates) and redaction.

pub mod logs;
pub mod redact;
