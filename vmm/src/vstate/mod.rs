//! KVM state: the VM (memory slots, irqchip, PIT, irqfds, ioeventfds) and the vCPUs.

pub mod vcpu;
pub mod vm;
