//! hearth: a sandbox runner that boots minimal KVM guests in its own process.

mod cli;

use clap::Parser;
use std::io::IsTerminal;
use std::process::ExitCode;

/// Logs go to stderr through `tracing`: human-readable by default, one JSON object per line with
/// `HEARTH_LOG_FORMAT=json`; `HEARTH_LOG` is the filter (default `warn`).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HEARTH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_writer(std::io::stderr);
    if std::env::var("HEARTH_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    init_logging();
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hearth: {e:#}");
            ExitCode::from(125)
        }
    }
}
