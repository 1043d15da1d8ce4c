//! Arbitrary tar entry paths through the sanitizer used before extraction:
//! anything accepted must be relative, made only of normal components, and
//! stay under the destination when joined to it.
#![no_main]

use hearth_agent::archive::sanitize_entry_path;
use libfuzzer_sys::fuzz_target;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

fuzz_target!(|data: &[u8]| {
    let raw = Path::new(OsStr::from_bytes(data));
    if let Ok(rel) = sanitize_entry_path(raw) {
        assert!(rel.is_relative());
        assert!(rel.components().all(|c| matches!(c, Component::Normal(_))));
        let dest = Path::new("/dest");
        assert!(dest.join(&rel).starts_with(dest));
    }
});
