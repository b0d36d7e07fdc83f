//! The virtio-net device as the transport sees it: identity, features, config space, and
//! activation/reset. The queues themselves are served by the
//! [`NetHandler`](super::NetHandler) on the `virtio-net` thread; both share [`Shared`].

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc, Mutex, MutexGuard,
};

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use super::{
    QUEUE_SIZE, RX_QUEUE, TX_QUEUE, VIRTIO_ID_NET, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MTU,
    VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use crate::config::NetConfig;
use crate::devices::vhost_user::VIRTIO_RING_F_INDIRECT_DESC;
use crate::devices::virtio_mmio::{
    build_queue, read_config_bytes, ActivateError, ActiveQueue, VirtioDevice, VIRTIO_F_VERSION_1,
};
use crate::memory::GuestMemory;

/// `struct virtio_net_config` up to `mtu`: mac[6], status (le16), max_virtqueue_pairs (le16),
/// mtu (le16).
pub const CONFIG_SIZE: usize = 12;

/// The rings of a running device (between DRIVER_OK and reset).
pub struct Active {
    pub rx: Queue,
    pub tx: Queue,
    /// Length of a frame read from the tap (in the handler's RX buffer) that found no guest
    /// buffer yet; delivered first when the guest adds RX buffers.
    pub rx_pending: Option<usize>,
}

/// Frame and error counters (for logs and tests).
#[derive(Debug, Default)]
pub struct NetStats {
    pub rx_frames: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_frames: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Frames read from the tap that no guest buffer could take.
    pub rx_dropped: AtomicU64,
    /// TX chains that were not sent (bad chain or tap write error).
    pub tx_dropped: AtomicU64,
}

impl NetStats {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// State shared between the device (vCPU threads) and its handler (`virtio-net` thread).
pub struct Shared {
    pub state: Mutex<Option<Active>>,
    /// Written on activation: the handler then processes both queues and listens on the tap.
    pub activate_evt: EventFd,
    pub stats: NetStats,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, Option<Active>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct NetDevice {
    tap: String,
    features: u64,
    config: [u8; CONFIG_SIZE],
    mem: GuestMemory,
    shared: Arc<Shared>,
}

impl NetDevice {
    pub fn new(cfg: &NetConfig, mem: GuestMemory) -> std::io::Result<Self> {
        let mut features = VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_INDIRECT_DESC
            | VIRTIO_NET_F_MAC
            | VIRTIO_NET_F_STATUS;
        let mut config = [0u8; CONFIG_SIZE];
        config[..6].copy_from_slice(&cfg.mac.0);
        config[6..8].copy_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
        // max_virtqueue_pairs: only meaningful with VIRTIO_NET_F_MQ (not offered).
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        if let Some(mtu) = cfg.mtu {
            // Validated to 68..=65535 with the configuration.
            let mtu = u16::try_from(mtu).unwrap_or(u16::MAX);
            config[10..12].copy_from_slice(&mtu.to_le_bytes());
            features |= VIRTIO_NET_F_MTU;
        }
        Ok(NetDevice {
            tap: cfg.tap.clone(),
            features,
            config,
            mem,
            shared: Arc::new(Shared {
                state: Mutex::new(None),
                activate_evt: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
                stats: NetStats::default(),
            }),
        })
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    fn queue(&self, q: Option<&ActiveQueue>, name: &str) -> Result<Queue, ActivateError> {
        let q = q.ok_or_else(|| ActivateError(format!("{name} queue is not ready")))?;
        build_queue(q, QUEUE_SIZE, &self.mem, name)
    }
}

impl VirtioDevice for NetDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE; 2]
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        // The MAC is read-only for a VERSION_1 driver; nothing else is writable.
        tracing::debug!(tap = %self.tap, "virtio-net: ignoring config write at {offset:#x}");
    }

    fn activate(
        &mut self,
        _acked_features: u64,
        queues: &[ActiveQueue],
        _kicks: &[Arc<EventFd>],
    ) -> Result<(), ActivateError> {
        let find = |i| queues.iter().find(|q| q.index == i);
        let rx = self.queue(find(RX_QUEUE), "RX")?;
        let tx = self.queue(find(TX_QUEUE), "TX")?;
        *self.shared.lock() = Some(Active {
            rx,
            tx,
            rx_pending: None,
        });
        self.shared
            .activate_evt
            .write(1)
            .map_err(|e| ActivateError(format!("signalling the virtio-net thread: {e}")))?;
        tracing::debug!(tap = %self.tap, "virtio-net activated");
        Ok(())
    }

    fn reset(&mut self) {
        // Drops the rings and any frame waiting for an RX buffer; the handler stops listening on
        // the tap when it next sees it.
        *self.shared.lock() = None;
        tracing::debug!(tap = %self.tap, "virtio-net reset");
    }
}
