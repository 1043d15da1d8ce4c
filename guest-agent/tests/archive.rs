//! The shared tar extractor (used by the agent for uploads and by the client
//! for downloads) refuses every way of escaping the destination.

mod common;

use common::{RawTar, tree_listing};
use hearth_agent::archive::{ArchiveError, extract_tar, pack_tree};
use std::os::unix::fs::PermissionsExt;

/// A sandbox: `dest` to extract into, and a sibling `outside` with a file that must survive.
struct Sandbox {
    _root: tempfile::TempDir,
    dest: std::path::PathBuf,
    outside: std::path::PathBuf,
}

fn sandbox() -> Sandbox {
    let root = tempfile::tempdir().unwrap();
    let dest = root.path().join("dest");
    let outside = root.path().join("outside");
    std::fs::create_dir_all(&dest).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"untouched").unwrap();
    Sandbox {
        _root: root,
        dest,
        outside,
    }
}

fn assert_outside_untouched(s: &Sandbox) {
    assert_eq!(tree_listing(&s.outside), vec!["secret".to_string()]);
    assert_eq!(
        std::fs::read(s.outside.join("secret")).unwrap(),
        b"untouched"
    );
    let root = s.dest.parent().unwrap();
    assert_eq!(
        tree_listing(root)
            .iter()
            .filter(|p| !p.starts_with("dest"))
            .count(),
        2
    );
}

#[test]
fn refuses_parent_dir_components() {
    let s = sandbox();
    let tar = RawTar::default()
        .file("../outside/secret", b"pwned")
        .finish();
    let err = extract_tar(&tar[..], &s.dest).unwrap_err();
    assert!(matches!(err, ArchiveError::PathEscape { .. }), "{err}");
    assert!(err.to_string().contains(".."), "{err}");
    let tar = RawTar::default().file("a/../../escape", b"x").finish();
    assert!(matches!(
        extract_tar(&tar[..], &s.dest),
        Err(ArchiveError::PathEscape { .. })
    ));
    assert_outside_untouched(&s);
}

#[test]
fn refuses_absolute_paths() {
    let s = sandbox();
    let target = s.outside.join("abs-file");
    let tar = RawTar::default()
        .file(target.to_str().unwrap(), b"pwned")
        .finish();
    let err = extract_tar(&tar[..], &s.dest).unwrap_err();
    assert!(matches!(err, ArchiveError::PathEscape { .. }), "{err}");
    assert!(!target.exists());
    assert_outside_untouched(&s);
}

#[test]
fn refuses_to_write_through_a_symlinked_directory() {
    let s = sandbox();
    let tar = RawTar::default()
        .symlink("link", s.outside.to_str().unwrap())
        .file("link/secret", b"pwned")
        .finish();
    let err = extract_tar(&tar[..], &s.dest).unwrap_err();
    assert!(matches!(err, ArchiveError::UnsafeTarget { .. }), "{err}");
    assert_outside_untouched(&s);
    // a relative symlink climbing out behaves the same
    let s = sandbox();
    let tar = RawTar::default()
        .symlink("up", "../outside")
        .file("up/new", b"pwned")
        .finish();
    assert!(matches!(
        extract_tar(&tar[..], &s.dest),
        Err(ArchiveError::UnsafeTarget { .. })
    ));
    assert_outside_untouched(&s);
}

#[test]
fn a_file_entry_replaces_a_symlink_instead_of_following_it() {
    let s = sandbox();
    let tar = RawTar::default()
        .symlink("f", "../outside/secret")
        .file("f", b"inside")
        .finish();
    extract_tar(&tar[..], &s.dest).unwrap();
    assert_eq!(std::fs::read(s.dest.join("f")).unwrap(), b"inside");
    assert!(
        !std::fs::symlink_metadata(s.dest.join("f"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_outside_untouched(&s);
}

#[test]
fn refuses_hard_links_out_of_the_destination() {
    let s = sandbox();
    let tar = RawTar::default()
        .hardlink("h", "../outside/secret")
        .finish();
    assert!(matches!(
        extract_tar(&tar[..], &s.dest),
        Err(ArchiveError::PathEscape { .. })
    ));
    let tar = RawTar::default()
        .symlink("l", "../outside/secret")
        .hardlink("h", "l")
        .finish();
    assert!(matches!(
        extract_tar(&tar[..], &s.dest),
        Err(ArchiveError::UnsafeTarget { .. })
    ));
    assert_outside_untouched(&s);
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    let s = sandbox();
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
    assert!(extract_tar(&garbage[..], &s.dest).is_err());
    assert_outside_untouched(&s);
}

#[test]
fn pack_and_extract_keep_modes_symlinks_and_bytes() {
    let src = tempfile::tempdir().unwrap();
    let p = src.path();
    std::fs::create_dir_all(p.join("dir/sub")).unwrap();
    std::fs::write(p.join("dir/sub/bin"), [0u8, 255, 1, 254]).unwrap();
    std::fs::write(p.join("script.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(p.join("script.sh"), std::fs::Permissions::from_mode(0o751)).unwrap();
    std::os::unix::fs::symlink("dir/sub/bin", p.join("rel-link")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", p.join("abs-link")).unwrap();
    std::fs::set_permissions(p.join("dir/sub"), std::fs::Permissions::from_mode(0o550)).unwrap();
    let mut tar = Vec::new();
    pack_tree(p, &mut tar).unwrap();
    let out = tempfile::tempdir().unwrap();
    let stats = extract_tar(&tar[..], out.path()).unwrap();
    assert_eq!((stats.files, stats.symlinks), (2, 2));
    let o = out.path();
    assert_eq!(
        std::fs::read(o.join("dir/sub/bin")).unwrap(),
        [0u8, 255, 1, 254]
    );
    let mode = |rel: &str| {
        std::fs::symlink_metadata(o.join(rel))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("script.sh"), 0o751);
    assert_eq!(mode("dir/sub"), 0o550);
    assert_eq!(
        std::fs::read_link(o.join("rel-link")).unwrap().to_str(),
        Some("dir/sub/bin")
    );
    assert_eq!(
        std::fs::read_link(o.join("abs-link")).unwrap().to_str(),
        Some("/etc/hostname")
    );
    std::fs::set_permissions(p.join("dir/sub"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(o.join("dir/sub"), std::fs::Permissions::from_mode(0o755)).unwrap();
}
