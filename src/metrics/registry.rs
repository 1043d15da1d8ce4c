//! A small Prometheus registry: counters, gauges and histograms with labels, rendered in the
//! text exposition format (version 0.0.4).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

type Labels = Vec<(String, String)>;

#[derive(Debug, Clone, Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

#[derive(Debug)]
struct Family {
    help: String,
    kind: Kind,
    buckets: Vec<f64>,
    values: BTreeMap<Labels, f64>,
    histograms: BTreeMap<Labels, Histogram>,
}

/// Thread-safe metric families by name. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    families: Arc<Mutex<BTreeMap<String, Family>>>,
}

/// Labels in name order, so a series has one identity whatever order callers use.
fn owned(labels: &[(&str, &str)]) -> Labels {
    let mut l: Labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    l.sort();
    l
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn render_labels(labels: &Labels, extra: Option<(&str, String)>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{v}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn number(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

impl Registry {
    /// Declares a family (idempotent). Histograms need ascending `buckets`.
    pub fn describe(&self, name: &str, help: &str, kind: Kind, buckets: &[f64]) {
        if let Ok(mut f) = self.families.lock() {
            f.entry(name.to_string()).or_insert_with(|| Family {
                help: help.to_string(),
                kind,
                buckets: buckets.to_vec(),
                values: BTreeMap::new(),
                histograms: BTreeMap::new(),
            });
        }
    }

    fn with_family(&self, name: &str, f: impl FnOnce(&mut Family)) {
        if let Ok(mut fams) = self.families.lock()
            && let Some(fam) = fams.get_mut(name)
        {
            f(fam);
        }
    }

    /// Adds `by` to a counter or gauge series (undeclared names are ignored).
    pub fn add(&self, name: &str, labels: &[(&str, &str)], by: f64) {
        self.with_family(name, |fam| {
            *fam.values.entry(owned(labels)).or_insert(0.0) += by;
        });
    }

    /// Sets a gauge series.
    pub fn set(&self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.with_family(name, |fam| {
            fam.values.insert(owned(labels), value);
        });
    }

    /// Records one histogram observation.
    pub fn observe(&self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.with_family(name, |fam| {
            let n = fam.buckets.len();
            let h = fam
                .histograms
                .entry(owned(labels))
                .or_insert_with(|| Histogram {
                    counts: vec![0; n],
                    ..Default::default()
                });
            for (i, b) in fam.buckets.iter().enumerate() {
                if value <= *b {
                    h.counts[i] += 1;
                }
            }
            h.sum += value;
            h.count += 1;
        });
    }

    /// Current value of a counter/gauge series (tests, status output).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let fams = self.families.lock().ok()?;
        fams.get(name)?.values.get(&owned(labels)).copied()
    }

    /// The text exposition of every family.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let Ok(fams) = self.families.lock() else {
            return out;
        };
        for (name, fam) in fams.iter() {
            let _ = writeln!(out, "# HELP {name} {}", fam.help.replace('\n', " "));
            let _ = writeln!(out, "# TYPE {name} {}", fam.kind.as_str());
            if fam.kind == Kind::Histogram {
                for (labels, h) in &fam.histograms {
                    for (b, c) in fam.buckets.iter().zip(&h.counts) {
                        let l = render_labels(labels, Some(("le", number(*b))));
                        let _ = writeln!(out, "{name}_bucket{l} {c}");
                    }
                    let l = render_labels(labels, Some(("le", "+Inf".into())));
                    let _ = writeln!(out, "{name}_bucket{l} {}", h.count);
                    let l = render_labels(labels, None);
                    let _ = writeln!(out, "{name}_sum{l} {}", number(h.sum));
                    let _ = writeln!(out, "{name}_count{l} {}", h.count);
                }
            } else {
                for (labels, v) in &fam.values {
                    let _ = writeln!(out, "{name}{} {}", render_labels(labels, None), number(*v));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_text_format() {
        let r = Registry::default();
        r.describe("a_total", "A things.", Kind::Counter, &[]);
        r.describe("h_seconds", "H.", Kind::Histogram, &[1.0, 5.0]);
        r.add("a_total", &[("op", "x\"y")], 2.0);
        r.add("a_total", &[("op", "x\"y")], 1.0);
        r.observe("h_seconds", &[], 0.5);
        r.observe("h_seconds", &[], 3.0);
        r.observe("h_seconds", &[], 9.0);
        r.add("undeclared", &[], 1.0);
        let text = r.render();
        assert!(
            text.contains("# TYPE a_total counter\na_total{op=\"x\\\"y\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("h_seconds_bucket{le=\"1\"} 1\n"), "{text}");
        assert!(text.contains("h_seconds_bucket{le=\"5\"} 2\n"), "{text}");
        assert!(text.contains("h_seconds_bucket{le=\"+Inf\"} 3\n"), "{text}");
        assert!(
            text.contains("h_seconds_sum 12.5\nh_seconds_count 3\n"),
            "{text}"
        );
        assert!(!text.contains("undeclared"));
        assert_eq!(r.value("a_total", &[("op", "x\"y")]), Some(3.0));
    }
}
