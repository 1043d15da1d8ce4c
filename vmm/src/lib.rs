//! hearth-vmm: boots a minimal Linux guest in-process on KVM, built on rust-vmm crates.

pub mod devices;
