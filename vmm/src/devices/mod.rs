//! Emulated devices: legacy PIO devices and virtio devices.

pub mod virtio;
