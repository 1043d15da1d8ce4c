//! The frontend's executor version check (`CheckSourcegraphVersion(v, ">= 4.3.0-0", "2022-11-24")`):
//! decides whether a dequeue returns a v2 job payload.

/// Why a version string was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("failed to check version {0:?}: not a semantic version or build-date version")]
pub struct VersionError(pub String);

/// True when the executor `version` may receive v2 payloads: `dev` builds always; build-date
/// versions (`<n>_<YYYY-MM-DD>_…`) from 2022-11-24 on; semvers from 4.3.0-0 on. Anything else is an
/// error (the frontend answers 500).
pub fn supports_v2_payload(version: &str) -> Result<bool, VersionError> {
    if version == "dev" || version == "0.0.0+dev" {
        return Ok(true);
    }
    if let Some(date) = build_date(version) {
        return Ok(date >= "2022-11-24");
    }
    let (major, minor, patch, pre) =
        parse_semver(version).ok_or_else(|| VersionError(version.to_string()))?;
    // ">= 4.3.0-0": every 4.3.0 prerelease counts too.
    let _ = pre;
    Ok((major, minor, patch) >= (4, 3, 0))
}

fn build_date(v: &str) -> Option<&str> {
    let (num, rest) = v.split_once('_')?;
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) || rest.len() < 11 {
        return None;
    }
    let date = &rest[..10];
    let ok = date.bytes().enumerate().all(|(i, b)| match i {
        4 | 7 => b == b'-',
        _ => b.is_ascii_digit(),
    }) && rest.as_bytes()[10] == b'_';
    ok.then_some(date)
}

/// Parses `[v]MAJOR[.MINOR[.PATCH]][-PRE][+BUILD]` as Masterminds/semver does (missing parts = 0).
fn parse_semver(v: &str) -> Option<(u64, u64, u64, Option<&str>)> {
    let v = v.strip_prefix('v').unwrap_or(v);
    let v = v.split_once('+').map_or(v, |(a, _)| a);
    let (core, pre) = match v.split_once('-') {
        Some((c, p)) if !p.is_empty() => (c, Some(p)),
        Some(_) => return None,
        None => (v, None),
    };
    let mut parts = core.split('.');
    let num = |s: Option<&str>| -> Option<u64> {
        match s {
            None => Some(0),
            Some(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s.parse().ok(),
            Some(_) => None,
        }
    };
    let major = parts
        .next()
        .filter(|s| !s.is_empty())
        .and_then(|s| num(Some(s)))?;
    let minor = num(parts.next())?;
    let patch = num(parts.next())?;
    if parts.next().is_some() {
        return None;
    }
    Some((major, minor, patch, pre))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(supports_v2_payload("5.5.0"), Ok(true));
        assert_eq!(supports_v2_payload("4.3.0"), Ok(true));
        assert_eq!(supports_v2_payload("4.3.0-rc.1"), Ok(true));
        assert_eq!(supports_v2_payload("v4.2.9"), Ok(false));
        assert_eq!(supports_v2_payload("3.43"), Ok(false));
        assert_eq!(supports_v2_payload("dev"), Ok(true));
        assert_eq!(supports_v2_payload("0.0.0+dev"), Ok(true));
        assert_eq!(supports_v2_payload("199999_2022-11-24_abcdef"), Ok(true));
        assert_eq!(supports_v2_payload("199999_2022-11-23_abcdef"), Ok(false));
        assert!(supports_v2_payload("banana").is_err());
        assert!(supports_v2_payload("").is_err());
        assert!(supports_v2_payload("1.2.3.4").is_err());
    }
}
