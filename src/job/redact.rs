//! Secret redaction for log entries: the union of `{executor password → "SECRET_REMOVED"}` and
//! the job's `redactedValues` (the job's replacement wins on the same key), applied to every
//! command element and to `out` before an entry leaves the process. Overlapping secrets: the
//! leftmost, then longest, match is replaced.

use aho_corasick::{AhoCorasick, MatchKind};
use std::collections::BTreeMap;

/// The replacement for the executor's own password.
pub const SECRET_REMOVED: &str = "SECRET_REMOVED";

/// A multi-pattern replacer. Empty secrets are ignored (they would match everywhere).
#[derive(Debug, Clone)]
pub struct Redactor {
    matcher: Option<AhoCorasick>,
    replacements: Vec<String>,
}

impl Redactor {
    /// The executor password plus the job's `redactedValues`.
    pub fn for_job(
        executor_password: &str,
        redacted_values: &BTreeMap<String, String>,
    ) -> Redactor {
        let mut pairs: BTreeMap<String, String> = BTreeMap::new();
        if !executor_password.is_empty() {
            pairs.insert(executor_password.to_string(), SECRET_REMOVED.to_string());
        }
        for (k, v) in redacted_values {
            pairs.insert(k.clone(), v.clone());
        }
        Redactor::from_pairs(pairs)
    }

    /// From `secret → replacement` pairs.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, String)>) -> Redactor {
        let (patterns, replacements): (Vec<String>, Vec<String>) =
            pairs.into_iter().filter(|(k, _)| !k.is_empty()).unzip();
        let matcher = if patterns.is_empty() {
            None
        } else {
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&patterns)
                .ok()
        };
        Redactor {
            matcher,
            replacements,
        }
    }

    /// Redacts `text`.
    pub fn redact(&self, text: &str) -> String {
        match &self.matcher {
            Some(m) => m.replace_all(text, &self.replacements),
            None => text.to_string(),
        }
    }

    /// Redacts every element.
    pub fn redact_all(&self, items: &[String]) -> Vec<String> {
        items.iter().map(|s| self.redact(s)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn union_with_job_values_winning() {
        let mut job = BTreeMap::new();
        job.insert(
            "token-executor hunter2".to_string(),
            "token-executor REDACTED".to_string(),
        );
        job.insert("s3cr3t".to_string(), "${{ secrets.API }}".to_string());
        let r = Redactor::for_job("hunter2", &job);
        assert_eq!(
            r.redact("auth: token-executor hunter2; raw hunter2; key s3cr3t."),
            "auth: token-executor REDACTED; raw SECRET_REMOVED; key ${{ secrets.API }}."
        );
        let mut same = BTreeMap::new();
        same.insert("hunter2".to_string(), "PASSWORD_REMOVED".to_string());
        assert_eq!(
            Redactor::for_job("hunter2", &same).redact("x hunter2"),
            "x PASSWORD_REMOVED"
        );
    }

    #[test]
    fn empty_secrets_are_ignored() {
        let r = Redactor::for_job("", &BTreeMap::from([(String::new(), "X".to_string())]));
        assert_eq!(r.redact("unchanged"), "unchanged");
        assert_eq!(r.redact_all(&["a".into()]), vec!["a".to_string()]);
    }
}
