//! The KVM objects: the VM (memory slots, irqchip, PIT), the vCPUs, and shared lifecycle state.

pub mod control;
pub mod memory;
pub mod probe;
pub mod vcpu;
pub mod vm;
