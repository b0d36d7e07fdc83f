//! vhost-user frontend: virtio devices whose queues are served by an external daemon
//! (`vhost-device-vsock` for vsock, `virtiofsd` for virtio-fs), as QEMU's
//! `vhost-user-vsock-device` / `vhost-user-fs-device` do. The daemon maps guest RAM from our memfd,
//! gets the kick eventfds (KVM ioeventfds on QueueNotify) and the call eventfd (a KVM irqfd),
//! so the data path never enters the VMM.

use std::{path::Path, sync::Arc};

use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserProtocolFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

use super::virtio_mmio::{
    ActivateError, ActiveQueue, MmioTransport, VirtioDevice, VIRTIO_F_VERSION_1,
};
use super::{Bus, IrqLine};
use crate::boot::layout::VirtioSlot;
use crate::config::VmmConfig;
use crate::memory::GuestMemory;
use crate::vstate::vm::Vm;

pub const VIRTIO_ID_VSOCK: u32 = 19;
pub const VIRTIO_ID_FS: u32 = 26;
/// vhost-user: the backend speaks the protocol-feature extension.
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
/// Transport features we can pass through (split rings, no IOMMU / packed rings).
const TRANSPORT_FEATURES: u64 =
    VIRTIO_F_VERSION_1 | VIRTIO_RING_F_INDIRECT_DESC | VIRTIO_RING_F_EVENT_IDX;
/// Device-specific feature bits (0..24) are passed through as the backend offers them.
const DEVICE_FEATURES_MASK: u64 = (1 << 24) - 1;
pub const QUEUE_SIZE: u16 = 256;
const VSOCK_CONFIG_SIZE: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum VhostUserError {
    #[error("connecting to vhost-user socket {0}: {1}")]
    Connect(String, vhost::Error),
    #[error("vhost-user {0} on {1}: {2}")]
    Request(&'static str, String, vhost::Error),
    #[error("vhost-user backend {0} does not offer VIRTIO_F_VERSION_1")]
    NoVersion1(String),
    #[error("vhost-user vsock backend {0} does not support the CONFIG protocol feature (needed for the guest CID)")]
    NoConfig(String),
    #[error("guest memory region cannot be shared: {0}")]
    Memory(vhost::Error),
    #[error("virtio-mmio transport: {0}")]
    Transport(std::io::Error),
    #[error(transparent)]
    Vm(#[from] crate::vstate::vm::VmError),
    #[error(transparent)]
    Bus(#[from] crate::devices::bus::BusError),
}

#[derive(Debug, Clone)]
pub enum Kind {
    Vsock,
    Fs { tag: String, request_queues: u16 },
}

/// A duplicate of a daemon connection's socket, to notice the daemon going away (POLLHUP).
#[derive(Debug)]
pub struct BackendWatch {
    pub name: String,
    pub fd: std::os::fd::OwnedFd,
}

pub struct VhostUserDevice {
    kind: Kind,
    socket: String,
    frontend: Frontend,
    mem: GuestMemory,
    call: IrqLine,
    backend_features: u64,
    protocol_features: Option<VhostUserProtocolFeatures>,
    config: Vec<u8>,
    started: Vec<usize>,
}

impl VhostUserDevice {
    /// Connects to the daemon and negotiates what does not depend on the guest driver.
    pub fn connect(
        kind: Kind,
        socket: &Path,
        mem: GuestMemory,
        call: IrqLine,
    ) -> Result<Self, VhostUserError> {
        let name = socket.display().to_string();
        let nq = num_queues(&kind);
        let mut frontend = Frontend::connect(socket, nq as u64)
            .map_err(|e| VhostUserError::Connect(name.clone(), e))?;
        let req = |what: &'static str| {
            let name = name.clone();
            move |e| VhostUserError::Request(what, name, e)
        };
        frontend.set_owner().map_err(req("SET_OWNER"))?;
        let backend_features = frontend.get_features().map_err(req("GET_FEATURES"))?;
        if backend_features & VIRTIO_F_VERSION_1 == 0 {
            return Err(VhostUserError::NoVersion1(name));
        }
        let mut protocol_features = None;
        if backend_features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            let offered = frontend
                .get_protocol_features()
                .map_err(req("GET_PROTOCOL_FEATURES"))?;
            let wanted = VhostUserProtocolFeatures::MQ
                | VhostUserProtocolFeatures::CONFIG
                | VhostUserProtocolFeatures::REPLY_ACK;
            let acked = offered & wanted;
            frontend
                .set_protocol_features(acked)
                .map_err(req("SET_PROTOCOL_FEATURES"))?;
            if acked.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                // Every request is acknowledged: activation is synchronous (the rings are
                // enabled in the daemon when the guest's DRIVER_OK write completes) and the
                // daemon's errors are reported.
                frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
            protocol_features = Some(acked);
        }
        let config = match &kind {
            Kind::Vsock => {
                let has_config = protocol_features
                    .is_some_and(|p| p.contains(VhostUserProtocolFeatures::CONFIG));
                if !has_config {
                    return Err(VhostUserError::NoConfig(name));
                }
                let (_, payload) = frontend
                    .get_config(
                        0,
                        VSOCK_CONFIG_SIZE,
                        VhostUserConfigFlags::WRITABLE,
                        &[0u8; VSOCK_CONFIG_SIZE as usize],
                    )
                    .map_err(req("GET_CONFIG"))?;
                payload.to_vec()
            }
            Kind::Fs {
                tag,
                request_queues,
            } => fs_config(tag, *request_queues),
        };
        tracing::debug!(socket = %name, features = %format!("{backend_features:#x}"), ?protocol_features, "vhost-user backend connected");
        Ok(VhostUserDevice {
            kind,
            socket: name,
            frontend,
            mem,
            call,
            backend_features,
            protocol_features,
            config,
            started: Vec::new(),
        })
    }

    pub fn kind(&self) -> &Kind {
        &self.kind
    }

    /// A watch on the daemon connection (a dup of its socket).
    pub fn watch(&self) -> std::io::Result<BackendWatch> {
        use std::os::fd::{AsRawFd, BorrowedFd};
        // SAFETY: the frontend's socket is open for as long as `self` lives; we only dup it.
        let fd =
            unsafe { BorrowedFd::borrow_raw(self.frontend.as_raw_fd()) }.try_clone_to_owned()?;
        Ok(BackendWatch {
            name: format!("{} ({})", kind_name(&self.kind), self.socket),
            fd,
        })
    }

    /// The guest CID the vsock daemon serves (from its config space).
    pub fn vsock_guest_cid(&self) -> Option<u64> {
        match self.kind {
            Kind::Vsock => self
                .config
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes),
            _ => None,
        }
    }

    fn hva(&self, gpa: u64) -> Result<u64, ActivateError> {
        self.mem
            .get_host_address(GuestAddress(gpa))
            .map(|p| p as u64)
            .map_err(|e| ActivateError(format!("ring address {gpa:#x}: {e}")))
    }

    fn start(
        &mut self,
        acked: u64,
        queues: &[ActiveQueue],
        kicks: &[Arc<EventFd>],
    ) -> Result<(), ActivateError> {
        let f = |what: &'static str| move |e: vhost::Error| ActivateError(format!("{what}: {e}"));
        let mut features = acked;
        if self.protocol_features.is_some() {
            features |= VHOST_USER_F_PROTOCOL_FEATURES;
        }
        self.frontend
            .set_features(features)
            .map_err(f("SET_FEATURES"))?;
        let regions = self
            .mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<Vec<_>, _>>()
            .map_err(f("memory region"))?;
        self.frontend
            .set_mem_table(&regions)
            .map_err(f("SET_MEM_TABLE"))?;
        for q in queues {
            let i = q.index;
            self.frontend
                .set_vring_num(i, q.size)
                .map_err(f("SET_VRING_NUM"))?;
            let cfg = VringConfigData {
                queue_max_size: QUEUE_SIZE,
                queue_size: q.size,
                flags: 0,
                desc_table_addr: self.hva(q.desc)?,
                used_ring_addr: self.hva(q.used)?,
                avail_ring_addr: self.hva(q.avail)?,
                log_addr: None,
            };
            self.frontend
                .set_vring_addr(i, &cfg)
                .map_err(f("SET_VRING_ADDR"))?;
            self.frontend
                .set_vring_base(i, 0)
                .map_err(f("SET_VRING_BASE"))?;
            self.frontend
                .set_vring_call(i, &self.call.0)
                .map_err(f("SET_VRING_CALL"))?;
            self.frontend
                .set_vring_kick(i, &kicks[i])
                .map_err(f("SET_VRING_KICK"))?;
            if self.protocol_features.is_some() {
                self.frontend
                    .set_vring_enable(i, true)
                    .map_err(f("SET_VRING_ENABLE"))?;
            }
            self.started.push(i);
        }
        Ok(())
    }
}

fn num_queues(kind: &Kind) -> usize {
    match kind {
        Kind::Vsock => 3, // rx, tx, event
        Kind::Fs { request_queues, .. } => 1 + usize::from(*request_queues), // hiprio + requests
    }
}

/// virtio-fs config space: tag[36] (NUL-padded) + num_request_queues (le32).
pub fn fs_config(tag: &str, request_queues: u16) -> Vec<u8> {
    let mut c = vec![0u8; 40];
    let n = tag.len().min(36);
    c[..n].copy_from_slice(&tag.as_bytes()[..n]);
    c[36..40].copy_from_slice(&u32::from(request_queues).to_le_bytes());
    c
}

impl VirtioDevice for VhostUserDevice {
    fn device_type(&self) -> u32 {
        match self.kind {
            Kind::Vsock => VIRTIO_ID_VSOCK,
            Kind::Fs { .. } => VIRTIO_ID_FS,
        }
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE; num_queues(&self.kind)]
    }

    fn features(&self) -> u64 {
        self.backend_features & (TRANSPORT_FEATURES | DEVICE_FEATURES_MASK)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let off = offset as usize;
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.config.get(off + i).copied().unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        tracing::debug!(socket = %self.socket, "ignoring config write at {offset:#x}");
    }

    fn activate(
        &mut self,
        acked: u64,
        queues: &[ActiveQueue],
        kicks: &[Arc<EventFd>],
    ) -> Result<(), ActivateError> {
        self.start(acked, queues, kicks).map_err(|e| {
            ActivateError(format!(
                "{} ({}): {}",
                self.socket,
                kind_name(&self.kind),
                e.0
            ))
        })
    }

    fn reset(&mut self) {
        // GET_VRING_BASE stops a ring in the backend.
        for i in std::mem::take(&mut self.started) {
            if let Err(e) = self.frontend.get_vring_base(i) {
                tracing::warn!(socket = %self.socket, "GET_VRING_BASE {i}: {e}");
            }
        }
    }

    fn vring_irq_always(&self) -> bool {
        true
    }
}

pub fn kind_name(k: &Kind) -> &'static str {
    match k {
        Kind::Vsock => "vsock",
        Kind::Fs { .. } => "virtio-fs",
    }
}

/// Attached devices: the transports (also owned by the bus) and a watch per daemon connection.
pub struct Attached {
    pub transports: Vec<Arc<std::sync::Mutex<MmioTransport>>>,
    pub watches: Vec<BackendWatch>,
}

/// Connects every configured vhost-user device and maps it on the MMIO bus at its slot, with
/// its irqfd and one ioeventfd per queue.
pub fn attach_all(
    cfg: &VmmConfig,
    vm: &Vm,
    mem: &GuestMemory,
    slots: &[VirtioSlot],
    mmio: &mut Bus,
) -> Result<Attached, VhostUserError> {
    let mut wanted: Vec<(Kind, &Path)> = Vec::new();
    if let Some(s) = &cfg.vsock_socket {
        wanted.push((Kind::Vsock, s));
    }
    for fs in &cfg.fs {
        wanted.push((
            Kind::Fs {
                tag: fs.tag.clone(),
                request_queues: fs.request_queues,
            },
            &fs.socket,
        ));
    }
    let mut out = Attached {
        transports: Vec::new(),
        watches: Vec::new(),
    };
    for ((kind, socket), slot) in wanted.into_iter().zip(slots) {
        let irq = IrqLine::new().map_err(VhostUserError::Transport)?;
        vm.register_irqfd(&irq.0, slot.irq)?;
        let name = kind_name(&kind);
        let dev = VhostUserDevice::connect(kind, socket, mem.clone(), irq.clone())?;
        out.watches
            .push(dev.watch().map_err(VhostUserError::Transport)?);
        let transport = MmioTransport::new(Box::new(dev), mem.clone(), irq)
            .map_err(VhostUserError::Transport)?;
        let t = super::virtio_mmio::map_on_bus::<VhostUserError>(transport, vm, slot, mmio)?;
        tracing::info!(
            device = name,
            socket = %socket.display(),
            addr = %format!("{:#x}", slot.addr),
            irq = slot.irq,
            "virtio-mmio device attached"
        );
        out.transports.push(t);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
