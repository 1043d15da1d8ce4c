//! hearth-agent: the guest agent. As PID 1 it sets up the guest and listens
//! on vsock; with `--listen unix:PATH` it runs as an ordinary host process.

use hearth_agent::agent::cmdline::{GuestConfig, parse_cmdline};
use hearth_agent::agent::server::ShutdownMode;
use hearth_agent::agent::{ListenAddr, init, net, ready, serve};
use std::process::ExitCode;

const USAGE: &str = "usage: hearth-agent [--listen vsock:PORT | unix:PATH]\n\
As PID 1 it reads hearth.* settings from the kernel command line.";

fn parse_args() -> Result<Option<ListenAddr>, String> {
    let mut args = std::env::args().skip(1);
    let mut listen = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = Some(args.next().ok_or("--listen needs a value")?.parse()?),
            s if s.starts_with("--listen=") => listen = Some(s["--listen=".len()..].parse()?),
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(listen)
}

/// The kernel command line. `HEARTH_AGENT_CMDLINE` replaces it: the PID 1
/// test runs the agent in a PID + mount namespace on the host, where
/// /proc/cmdline is the host's.
fn read_cmdline() -> String {
    std::env::var("HEARTH_AGENT_CMDLINE")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/cmdline").ok())
        .unwrap_or_default()
}

/// Guest set-up as PID 1. Errors are logged, never fatal: an agent that can
/// answer is more useful than a kernel panic.
fn init_guest() -> GuestConfig {
    // /proc is not mounted yet in a fresh guest: mount it to read the command
    // line, and take it down again before building the overlay root.
    let had_proc = std::path::Path::new("/proc/self").exists();
    if !had_proc && let Err(e) = init::mount("proc", "/proc", "proc", 0, None) {
        tracing::error!(error = %e, "cannot mount /proc to read the kernel command line");
    }
    let cfg = parse_cmdline(&read_cmdline()).unwrap_or_else(|e| {
        tracing::error!(error = %e, "using defaults");
        GuestConfig::default()
    });
    if cfg.overlay_tmpfs {
        if !had_proc {
            // SAFETY: umount2 takes a valid NUL-terminated path literal.
            unsafe { libc::umount2(c"/proc".as_ptr(), libc::MNT_DETACH) };
        }
        match init::overlay_root() {
            Ok(()) => tracing::info!("running on an overlay root (tmpfs upper layer)"),
            Err(e) => {
                tracing::error!(error = %e, "overlay root failed; continuing on the plain root")
            }
        }
    }
    init::standard_mounts();
    if let Err(e) = net::link_up("lo") {
        tracing::warn!(error = %e, "loopback");
    }
    if let Some(n) = &cfg.net
        && let Err(e) = net::configure("eth0", n)
    {
        tracing::error!(error = %e, "eth0");
    }
    if let Some(dns) = cfg.dns
        && let Err(e) = init::write_resolv_conf(dns)
    {
        tracing::warn!(error = %e, "dns");
    }
    if let Some(dev) = &cfg.work_device
        && let Err(e) = init::mount_workspace(dev)
    {
        tracing::error!(error = %e, "workspace");
    }
    cfg
}

/// Time since the kernel booted (CLOCK_BOOTTIME, which counts from the kernel's start), in ms:
/// the guest's side of the boot timeline, logged with the ready signal.
fn ms_since_kernel_boot() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`, a valid local that outlives the call.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
        return f64::NAN;
    }
    ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6
}

/// Logs to stderr. Without `HEARTH_AGENT_LOG` a plain level filter: `EnvFilter`'s directive
/// parser compiles its regular expressions on first use, ~10 ms of a guest's boot under nested
/// emulation.
fn init_logging(pid1: bool) {
    // As PID 1 the log goes to the VM's serial console, where every byte is a VM exit (about
    // 0.25-0.5 ms each under nested emulation): only warnings and errors by default, the host
    // learns readiness from the ready signal and keeps its own timings. HEARTH_AGENT_LOG (on
    // the kernel command line) turns the rest back on.
    let fmt = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false);
    // As before: directives that do not parse fall back to the default level.
    let directives = std::env::var("HEARTH_AGENT_LOG")
        .ok()
        .and_then(|d| tracing_subscriber::EnvFilter::try_new(d).ok());
    match directives {
        Some(filter) => fmt.with_env_filter(filter).init(),
        None => fmt
            .with_max_level(if pid1 {
                tracing::Level::WARN
            } else {
                tracing::Level::INFO
            })
            .init(),
    }
}

/// The agent's async runtime: one thread on a one-vCPU guest, where more workers only add
/// thread start-up to the boot and cross-thread wake-ups to every request; two workers otherwise.
fn runtime_builder() -> tokio::runtime::Builder {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(2);
        b
    }
}

fn main() -> ExitCode {
    let started_ms = ms_since_kernel_boot();
    let pid1 = std::process::id() == 1;
    init_logging(pid1);
    let listen = match parse_args() {
        Ok(l) => l,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    let cfg = if pid1 {
        init_guest()
    } else {
        hearth_agent::agent::become_subreaper();
        GuestConfig::default()
    };
    let set_up_ms = ms_since_kernel_boot();
    let addr = listen.unwrap_or(ListenAddr::Vsock(cfg.port));
    let mode = if pid1 {
        ShutdownMode::PowerOff
    } else {
        ShutdownMode::Exit
    };
    let runtime = match runtime_builder().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let ready_port = cfg.ready_pio_port;
    let result = runtime.block_on(serve(addr, mode, move || {
        if let Some(port) = ready_port {
            // Logged before the signal: a host that stops the VM at ready still gets the line.
            tracing::debug!(
                port,
                started_ms,
                set_up_ms,
                listening_ms = ms_since_kernel_boot(),
                "{} (times since the kernel's start: agent started, guest set up, listening)",
                ready::READY_LOG_MESSAGE
            );
            if let Err(e) = ready::signal_ready(port) {
                tracing::warn!(error = %e, "ready signal failed");
            }
        }
    }));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "agent stopped");
            if pid1 {
                // Returning from PID 1 panics the kernel; power off instead.
                let e = init::power_off();
                tracing::error!(error = %e, "power off failed");
            }
            ExitCode::FAILURE
        }
    }
}
