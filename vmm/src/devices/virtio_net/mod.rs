//! In-process virtio-net device backed by a tap (QEMU's `virtio-net-device` with a tap netdev).
//!
//! - [`tap`]: opens an existing tap by name (TUNSETIFF with IFF_VNET_HDR, 12-byte headers, no
//!   offloads, non-blocking). Taps are opened before the seccomp filters are installed.
//! - [`device`]: the [`VirtioDevice`](super::virtio_mmio::VirtioDevice) behind the virtio-mmio
//!   transport: features (VERSION_1, INDIRECT_DESC, MAC, STATUS, MTU when configured), config
//!   space, activation/reset (on the vCPU thread that handled the register write).
//! - [`event_handler`]: the data path, an `event-manager` subscriber on the `virtio-net` thread:
//!   RX queue 0 and TX queue 1 kicks (KVM ioeventfds on QueueNotify), tap readable, activation.
//!   Used buffers are signalled through the device's irqfd.
//!
//! Every descriptor comes from the guest and is checked: a chain that does not fit the rules
//! (wrong direction, too short, too long, outside guest memory) is returned to the guest unused
//! (used length 0) and logged with a rate limit; the VMM never panics on guest input.

pub mod device;
pub mod event_handler;
pub mod tap;

use event_manager::{EventManager, SubscriberOps};

pub use device::NetDevice;
pub use event_handler::NetHandler;
pub use tap::{Tap, TapError};

use super::virtio_mmio::{MmioTransport, VirtioInterrupt};
use super::{Bus, IrqLine};
use crate::boot::layout::VirtioSlot;
use crate::config::{NetConfig, VmmConfig};
use crate::memory::GuestMemory;
use crate::vstate::vm::Vm;

pub const VIRTIO_ID_NET: u32 = 1;
pub const VIRTIO_NET_F_MTU: u64 = 1 << 3;
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
pub const VIRTIO_NET_F_STATUS: u64 = 1 << 16;
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;
/// `struct virtio_net_hdr_v1` (VERSION_1 always has `num_buffers`): flags, gso_type, hdr_len,
/// gso_size, csum_start, csum_offset, num_buffers.
pub const VNET_HDR_LEN: usize = 12;
/// Largest frame (header included) either way: a 64 KiB IP packet + Ethernet header + VLAN tag
/// (what Firecracker and QEMU accept as well).
pub const MAX_FRAME_LEN: usize = VNET_HDR_LEN + 65550;
pub const QUEUE_SIZE: u16 = 256;
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error("virtio-net ({tap}): {what}: {err}")]
    Io {
        tap: String,
        what: &'static str,
        err: std::io::Error,
    },
    #[error("virtio-net event loop: {0}")]
    EventManager(event_manager::Error),
    #[error(transparent)]
    Vm(#[from] crate::vstate::vm::VmError),
    #[error(transparent)]
    Bus(#[from] crate::devices::bus::BusError),
}

/// Opens the taps of every configured device (before the VM exists: a missing tap is a quick,
/// clear error).
pub fn open_taps(cfg: &VmmConfig) -> Result<Vec<Tap>, NetError> {
    cfg.net
        .iter()
        .map(|n| {
            match n.fd {
                Some(fd) => Tap::from_fd(&n.tap, fd),
                None => Tap::open(&n.tap),
            }
            .map_err(NetError::from)
        })
        .collect()
}

/// One device: its transport (for the MMIO bus) and its data-path handler (for the event loop).
pub fn new_device(
    cfg: &NetConfig,
    tap: Tap,
    mem: &GuestMemory,
    irq: IrqLine,
) -> Result<(MmioTransport, NetHandler), NetError> {
    let io = |what| {
        let tap = cfg.tap.clone();
        move |err| NetError::Io { tap, what, err }
    };
    let interrupt = VirtioInterrupt::new(irq);
    let dev = NetDevice::new(cfg, mem.clone()).map_err(io("activation eventfd"))?;
    let shared = dev.shared();
    let transport = MmioTransport::with_interrupt(Box::new(dev), mem.clone(), interrupt.clone())
        .map_err(io("queue eventfds"))?;
    let kicks = transport.kicks();
    let handler = NetHandler::new(
        tap,
        mem.clone(),
        shared,
        interrupt,
        kicks[RX_QUEUE].clone(),
        kicks[TX_QUEUE].clone(),
    );
    Ok((transport, handler))
}

/// The event loop serving every virtio-net device; None without devices.
pub type NetEventManager = EventManager<NetHandler>;

/// Creates the configured devices on their `slots` (the ones after the vhost-user devices):
/// transport on the MMIO bus, irqfd, one ioeventfd per queue, handler in the returned loop.
pub fn attach_all(
    cfg: &VmmConfig,
    taps: Vec<Tap>,
    vm: &Vm,
    mem: &GuestMemory,
    slots: &[VirtioSlot],
    mmio: &mut Bus,
) -> Result<Option<NetEventManager>, NetError> {
    if cfg.net.is_empty() {
        return Ok(None);
    }
    let mut em = EventManager::new().map_err(NetError::EventManager)?;
    for ((net, tap), slot) in cfg.net.iter().zip(taps).zip(slots) {
        let irq = IrqLine::new().map_err(|err| NetError::Io {
            tap: net.tap.clone(),
            what: "irq eventfd",
            err,
        })?;
        vm.register_irqfd(&irq.0, slot.irq)?;
        let (transport, handler) = new_device(net, tap, mem, irq)?;
        super::virtio_mmio::map_on_bus::<NetError>(transport, vm, slot, mmio)?;
        em.add_subscriber(handler);
        tracing::info!(
            device = "virtio-net",
            tap = %net.tap,
            mac = %net.mac,
            mtu = ?net.mtu,
            addr = %format!("{:#x}", slot.addr),
            irq = slot.irq,
            "virtio-mmio device attached"
        );
    }
    Ok(Some(em))
}

/// Runs the devices' event loop on a new thread named `virtio-net`, under `filter` (the seccomp
/// filter for that thread) when given. `on_error` is called if the loop cannot continue.
pub fn spawn_io_thread(
    mut em: NetEventManager,
    filter: Option<seccompiler::BpfProgram>,
    on_error: impl Fn(String) + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("virtio-net".into())
        .spawn(move || {
            if let Some(f) = filter {
                if let Err(e) = crate::seccomp::apply(&f) {
                    on_error(format!("seccomp on the virtio-net thread: {e}"));
                    return;
                }
            }
            loop {
                if let Err(e) = em.run() {
                    tracing::error!("virtio-net event loop: {e}");
                    on_error(format!("virtio-net event loop: {e}"));
                    return;
                }
            }
        })
}

#[cfg(test)]
mod tests;
