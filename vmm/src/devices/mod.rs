//! Emulated devices and the PIO/MMIO buses vCPU exits are dispatched on.

pub mod bus;
pub mod i8042;
pub mod serial;
pub mod vhost_user;
pub mod virtio_balloon;
pub mod virtio_mmio;
pub mod virtio_net;

pub use bus::{Bus, BusDevice};

use std::sync::Arc;
use vmm_sys_util::eventfd::EventFd;

/// An interrupt line: an eventfd that KVM turns into an IOAPIC pin edge (irqfd).
#[derive(Debug, Clone)]
pub struct IrqLine(pub Arc<EventFd>);

impl IrqLine {
    pub fn new() -> std::io::Result<Self> {
        Ok(IrqLine(Arc::new(EventFd::new(
            libc::EFD_NONBLOCK | libc::EFD_CLOEXEC,
        )?)))
    }
    pub fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

impl vm_superio::Trigger for IrqLine {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        IrqLine::trigger(self)
    }
}
