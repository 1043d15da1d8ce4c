//! The KVM exits of this process's vCPUs during a boot, from the host kernel's `kvm:kvm_exit`
//! and `kvm:kvm_entry` tracepoints (tracefs): how many of each reason, how long the host took
//! from each exit to the next entry, how long the guest ran in between, and the guest addresses
//! that exited most, named from the vmlinux symbols. Exit counts do not depend on how loaded or
//! how deeply emulated the machine is; what one exit costs does (about a microsecond on
//! hardware, tens to hundreds of microseconds under the emulated-SVM harness: BENCHMARKS.md,
//! "Where a harness boot goes").

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use hearth_vmm::arch::x86_64::symbols::KernelSymbols;

/// Where tracefs may be mounted.
const TRACEFS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];
const EVENTS: [&str; 2] = ["kvm_exit", "kvm_entry"];
/// Per-CPU ring buffer: a harness boot has ~2,000 exits, two lines each.
const BUFFER_KIB: &str = "16384";
/// The vCPU threads' names (`hearth-vcpu<N>`) as tracefs shows them (`comm-tid`).
const VCPU_COMM: &str = "hearth-vcpu";

/// An exit trace being recorded; [`ExitTrace::finish`] stops it.
pub struct ExitTrace {
    dir: PathBuf,
}

impl ExitTrace {
    /// Clears the trace buffer and turns the two tracepoints on.
    pub fn start() -> Result<Self, String> {
        let dir = TRACEFS
            .iter()
            .map(PathBuf::from)
            .find(|d| d.join("events/kvm/kvm_exit").is_dir())
            .ok_or("no kvm tracepoints: mount tracefs (mount -t tracefs none /sys/kernel/tracing) and load kvm")?;
        let t = Self { dir };
        t.write("tracing_on", "0")?;
        t.write("buffer_size_kb", BUFFER_KIB)?;
        t.write("trace", "")?;
        for e in EVENTS {
            t.write(&format!("events/kvm/{e}/enable"), "1")?;
        }
        t.write("tracing_on", "1")?;
        Ok(t)
    }

    /// Stops recording, turns the tracepoints off and returns the recorded text.
    pub fn finish(self) -> Result<String, String> {
        self.write("tracing_on", "0")?;
        let text = std::fs::read_to_string(self.dir.join("trace"))
            .map_err(|e| format!("reading {}/trace: {e}", self.dir.display()))?;
        for e in EVENTS {
            self.write(&format!("events/kvm/{e}/enable"), "0")?;
        }
        Ok(text)
    }

    fn write(&self, file: &str, value: &str) -> Result<(), String> {
        let p = self.dir.join(file);
        std::fs::write(&p, value).map_err(|e| format!("writing {}: {e}", p.display()))
    }
}

/// Exits by reason and by guest address, from the text of a tracefs `trace` file.
#[derive(Debug, Default, PartialEq)]
pub struct ExitSummary {
    /// Reason → (exits, seconds from exit to the next entry).
    pub reasons: HashMap<String, (u64, f64)>,
    /// (reason, guest rip) → exits.
    pub sites: HashMap<(String, u64), u64>,
    /// Seconds the guest ran: from each entry to the exit after it.
    pub guest_s: f64,
    /// Every exit in time order: (seconds since the first entry, reason, guest rip).
    pub exits: Vec<(f64, String, u64)>,
}

/// Per-vCPU state while reading the trace in time order.
#[derive(Default)]
struct Vcpu {
    entered: Option<f64>,
    exited: Option<(f64, String)>,
}

impl ExitSummary {
    /// Reads the `kvm_exit`/`kvm_entry` lines of hearth's vCPU threads; other lines are skipped.
    pub fn parse(trace: &str) -> Self {
        let mut s = Self::default();
        let mut vcpus: HashMap<String, Vcpu> = HashMap::new();
        let mut first_entry = None;
        for line in trace.lines() {
            let t: Vec<&str> = line.split_whitespace().collect();
            let Some(i) = t
                .iter()
                .position(|w| *w == "kvm_exit:" || *w == "kvm_entry:")
            else {
                continue;
            };
            if i < 2 || !t[0].starts_with(VCPU_COMM) {
                continue;
            }
            let Ok(ts) = t[i - 1].trim_end_matches(':').parse::<f64>() else {
                continue;
            };
            let after = |key: &str| t.iter().position(|w| *w == key).and_then(|k| t.get(k + 1));
            let vcpu = vcpus.entry(t[0].to_string()).or_default();
            if t[i] == "kvm_exit:" {
                let reason = after("reason").map_or("?", |r| r).to_string();
                let rip = after("rip")
                    .and_then(|r| u64::from_str_radix(r.trim_start_matches("0x"), 16).ok())
                    .unwrap_or(0);
                if let Some(e) = vcpu.entered.take() {
                    s.guest_s += ts - e;
                }
                s.reasons.entry(reason.clone()).or_default().0 += 1;
                *s.sites.entry((reason.clone(), rip)).or_default() += 1;
                let since = ts - *first_entry.get_or_insert(ts);
                s.exits.push((since, reason.clone(), rip));
                vcpu.exited = Some((ts, reason));
            } else {
                if let Some((x, reason)) = vcpu.exited.take() {
                    s.reasons.entry(reason).or_default().1 += ts - x;
                }
                first_entry.get_or_insert(ts);
                vcpu.entered = Some(ts);
            }
        }
        s
    }

    /// Two lines: the reasons (most host time first) and the `top` exit sites.
    pub fn report(&self, symbols: Option<&KernelSymbols>, top: usize) -> String {
        let total: u64 = self.reasons.values().map(|r| r.0).sum();
        let host: f64 = self.reasons.values().map(|r| r.1).sum();
        let mut reasons: Vec<_> = self.reasons.iter().collect();
        reasons.sort_by(|a, b| b.1.1.total_cmp(&a.1.1));
        let mut out = format!(
            "{total} exits, {:.1} ms in the host from exit to entry, guest ran {:.1} ms; by reason:",
            host * 1e3,
            self.guest_s * 1e3
        );
        for (r, (n, secs)) in reasons {
            let _ = write!(out, " {r} {n} ({:.1} ms)", secs * 1e3);
        }
        let mut sites: Vec<_> = self.sites.iter().collect();
        sites.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        out.push_str("\ntop exit sites:");
        for ((reason, rip), n) in sites.into_iter().take(top) {
            let name = symbols.and_then(|s| s.describe(*rip));
            let _ = write!(out, " {n} {reason} {rip:#x}");
            if let Some(name) = name {
                let _ = write!(out, " ({name})");
            }
            out.push(';');
        }
        out
    }

    /// The guest functions the external-interrupt exits found the guest in: interrupts from the
    /// host arrive independently of what the guest runs, so their sites are samples of where
    /// the guest spends its own time (a statistical profile, one sample per host interrupt).
    pub fn interrupt_samples(&self, symbols: Option<&KernelSymbols>) -> Vec<String> {
        self.exits
            .iter()
            .filter(|(_, reason, _)| reason == "interrupt")
            .map(|(_, _, rip)| function_of(symbols, *rip))
            .collect()
    }

    /// The boot as a timeline of exit sites, one line per run of consecutive exits in the same
    /// guest function: `first ms - last ms  exits  reasons  function`. Shows when the guest
    /// reached each stage of its boot (the exits are its only timestamps before its clock starts)
    /// and how long the stretches without exits took.
    pub fn timeline(&self, symbols: Option<&KernelSymbols>) -> String {
        let mut out = String::new();
        let mut stretch: Option<Stretch> = None;
        for (t, reason, rip) in &self.exits {
            let function = function_of(symbols, *rip);
            match &mut stretch {
                Some(st) if st.function == function => {
                    st.last = *t;
                    st.exits += 1;
                    if !st.reasons.contains(reason) {
                        st.reasons.push(reason.clone());
                    }
                }
                _ => {
                    if let Some(st) = stretch.take() {
                        st.write(&mut out);
                    }
                    stretch = Some(Stretch {
                        first: *t,
                        last: *t,
                        exits: 1,
                        function,
                        reasons: vec![reason.clone()],
                    });
                }
            }
        }
        if let Some(st) = stretch {
            st.write(&mut out);
        }
        out
    }
}

/// The name of the guest function at `rip`, or the address.
fn function_of(symbols: Option<&KernelSymbols>, rip: u64) -> String {
    symbols.and_then(|s| s.describe(rip)).map_or_else(
        || format!("{rip:#x}"),
        |d| d.split('+').next().unwrap_or("").to_string(),
    )
}

/// `samples` counted by function, most first: `count percent function` lines, `top` of them.
pub fn profile(samples: &[String], top: usize) -> String {
    let mut counts: HashMap<&str, u64> = HashMap::new();
    for f in samples {
        *counts.entry(f.as_str()).or_default() += 1;
    }
    let mut counts: Vec<_> = counts.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let total = samples.len().max(1) as f64;
    let mut out = format!("{} samples\n", samples.len());
    for (f, n) in counts.into_iter().take(top) {
        let _ = writeln!(out, "{n:6} {:5.1}%  {f}", n as f64 * 100.0 / total);
    }
    out
}

/// Consecutive exits in one guest function: one line of [`ExitSummary::timeline`].
struct Stretch {
    /// Seconds since the first entry of the first and the last exit.
    first: f64,
    last: f64,
    exits: u64,
    function: String,
    /// Exit reasons in order of first appearance.
    reasons: Vec<String>,
}

impl Stretch {
    fn write(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "{:9.1} - {:9.1} ms {:5} exits  {:<16} {}",
            self.first * 1e3,
            self.last * 1e3,
            self.exits,
            self.reasons.join(","),
            self.function
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "\
# tracer: nop
    hearth-vcpu0-146     [001] d..1.    18.000000: kvm_entry: vcpu 0, rip 0x1000000
    hearth-vcpu0-146     [001] .....    18.000100: kvm_exit: vcpu 0 reason cpuid rip 0xffffffff81c9a0d6 info1 0x0
    hearth-vcpu0-146     [001] d..1.    18.000130: kvm_entry: vcpu 0, rip 0xffffffff81c9a0d8
    hearth-vcpu0-146     [001] .....    18.000330: kvm_exit: vcpu 0 reason cpuid rip 0xffffffff81c9a0d6 info1 0x0
    qemu-system-x86-9    [000] .....    18.000400: kvm_exit: vcpu 0 reason io rip 0x10 info1 0x0
    hearth-vcpu0-146     [001] d..1.    18.000430: kvm_entry: vcpu 0, rip 0xffffffff81c9a0d8
    hearth-vcpu0-146     [001] .....    18.001430: kvm_exit: vcpu 0 reason npf rip 0xffffffff810354da info1 0x0
";

    #[test]
    fn counts_reasons_host_and_guest_time_of_hearth_vcpus_only() {
        let s = ExitSummary::parse(TRACE);
        assert_eq!(s.reasons["cpuid"].0, 2);
        assert!((s.reasons["cpuid"].1 - 0.000130).abs() < 1e-9);
        assert_eq!(s.reasons["npf"], (1, 0.0));
        assert!(
            !s.reasons.contains_key("io"),
            "another process's exit was counted"
        );
        assert_eq!(s.sites[&("cpuid".to_string(), 0xffffffff81c9a0d6)], 2);
        assert!((s.guest_s - (0.000100 + 0.000200 + 0.001000)).abs() < 1e-9);
        let report = s.report(None, 1);
        assert!(
            report.starts_with("3 exits, 0.1 ms in the host"),
            "{report}"
        );
        assert!(
            report.contains("top exit sites: 2 cpuid 0xffffffff81c9a0d6;"),
            "{report}"
        );
    }

    #[test]
    fn timeline_merges_consecutive_exits_in_one_function() {
        let s = ExitSummary::parse(TRACE);
        let t = s.timeline(None);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2, "{t}");
        let words = |l: &str| l.split_whitespace().map(str::to_string).collect::<Vec<_>>();
        assert_eq!(
            words(lines[0]),
            [
                "0.1",
                "-",
                "0.3",
                "ms",
                "2",
                "exits",
                "cpuid",
                "0xffffffff81c9a0d6"
            ]
        );
        assert_eq!(
            words(lines[1]),
            [
                "1.4",
                "-",
                "1.4",
                "ms",
                "1",
                "exits",
                "npf",
                "0xffffffff810354da"
            ]
        );
    }

    #[test]
    fn profile_counts_interrupt_exits_by_function() {
        let trace = format!(
            "{TRACE}\
    hearth-vcpu0-146     [001] d..1.    18.001500: kvm_entry: vcpu 0, rip 0xffffffff810354da
    hearth-vcpu0-146     [001] .....    18.002000: kvm_exit: vcpu 0 reason interrupt rip 0x10 info1 0x0
    hearth-vcpu0-146     [001] d..1.    18.002100: kvm_entry: vcpu 0, rip 0x10
    hearth-vcpu0-146     [001] .....    18.003000: kvm_exit: vcpu 0 reason interrupt rip 0x10 info1 0x0
    hearth-vcpu0-146     [001] d..1.    18.003100: kvm_entry: vcpu 0, rip 0x10
    hearth-vcpu0-146     [001] .....    18.004000: kvm_exit: vcpu 0 reason interrupt rip 0x20 info1 0x0
"
        );
        let samples = ExitSummary::parse(&trace).interrupt_samples(None);
        assert_eq!(samples, ["0x10", "0x10", "0x20"]);
        let p = profile(&samples, 1);
        let lines: Vec<&str> = p.lines().collect();
        assert_eq!(lines[0], "3 samples");
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            ["2", "66.7%", "0x10"]
        );
        assert_eq!(lines.len(), 2, "{p}");
    }

    #[test]
    fn malformed_lines_are_skipped() {
        let s =
            ExitSummary::parse("kvm_exit:\nhearth-vcpu0 x kvm_exit: reason\n\u{fffd} kvm_entry:");
        assert_eq!(s, ExitSummary::default());
    }
}
