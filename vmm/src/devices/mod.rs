//! Emulated devices: legacy PIO devices and virtio devices.

pub mod console;
pub mod i8042;
pub mod ready_port;
pub mod serial;
pub mod virtio;
