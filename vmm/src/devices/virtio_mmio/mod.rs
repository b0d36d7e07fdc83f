//! virtio-mmio transport (virtio 1.x, "version 2" register layout): the register state machine
//! the guest driver talks to, queue configuration through `virtio-queue`, and kick eventfds
//! (registered as KVM ioeventfds on QueueNotify so notifications bypass the VMM).

use std::sync::{
    atomic::{AtomicU32, Ordering},
    Arc,
};

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::{BusDevice, IrqLine};
use crate::memory::GuestMemory;

pub const MMIO_MAGIC: u32 = 0x7472_6976; // "virt"
pub const MMIO_VERSION: u32 = 2;
pub const VENDOR_ID: u32 = 0x4d59_564d; // "MYVM"
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    pub const FAILED: u32 = 128;
}

pub const INT_VRING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

pub mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const SHM_SEL: u64 = 0x0ac;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// A device's interrupt: its irqfd plus the InterruptStatus bits the driver reads and acks.
/// Shared between the transport (register accesses on vCPU threads) and a device that serves
/// its queues in the VMM (on its own thread).
#[derive(Debug, Clone)]
pub struct VirtioInterrupt {
    line: IrqLine,
    status: Arc<AtomicU32>,
}

impl VirtioInterrupt {
    pub fn new(line: IrqLine) -> Self {
        VirtioInterrupt {
            line,
            status: Arc::new(AtomicU32::new(0)),
        }
    }

    /// The device put buffers in a used ring: set INT_VRING, then raise the irq (in this order,
    /// so the driver's handler sees the bit).
    pub fn signal_used_queue(&self) -> std::io::Result<()> {
        self.status.fetch_or(INT_VRING, Ordering::SeqCst);
        self.line.trigger()
    }

    /// The configuration changed (or the device needs a reset).
    pub fn signal_config(&self) -> std::io::Result<()> {
        self.status.fetch_or(INT_CONFIG, Ordering::SeqCst);
        self.line.trigger()
    }

    /// InterruptStatus as the driver reads it.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }
}

/// A ring the driver configured, as handed to the device on activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActiveQueue {
    pub index: usize,
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ActivateError(pub String);

/// Reads `data.len()` bytes of a device's configuration space `config` at `offset` (zeroes past
/// its end), as the driver sees it.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|o| config.get(o))
            .copied()
            .unwrap_or(0);
    }
}

/// A device-side ring for `q` (as the driver configured it), checked against guest memory.
pub fn build_queue(
    q: &ActiveQueue,
    max_size: u16,
    mem: &GuestMemory,
    name: &str,
) -> Result<Queue, ActivateError> {
    use vm_memory::GuestAddress;
    let err =
        |what: &str, e: virtio_queue::Error| ActivateError(format!("{name} queue {what}: {e}"));
    let mut queue = Queue::new(max_size).map_err(|e| err("size", e))?;
    queue.try_set_size(q.size).map_err(|e| err("size", e))?;
    queue
        .try_set_desc_table_address(GuestAddress(q.desc))
        .map_err(|e| err("descriptor table", e))?;
    queue
        .try_set_avail_ring_address(GuestAddress(q.avail))
        .map_err(|e| err("available ring", e))?;
    queue
        .try_set_used_ring_address(GuestAddress(q.used))
        .map_err(|e| err("used ring", e))?;
    queue.set_ready(true);
    if !queue.is_valid(mem) {
        return Err(ActivateError(format!(
            "{name} queue is not valid in guest memory"
        )));
    }
    Ok(queue)
}

/// A virtio device behind the transport.
pub trait VirtioDevice: Send {
    fn device_type(&self) -> u32;
    fn queue_max_sizes(&self) -> Vec<u16>;
    /// Feature bits offered to the driver.
    fn features(&self) -> u64;
    fn read_config(&self, offset: u64, data: &mut [u8]);
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// The driver set DRIVER_OK: start the device on `queues` (ready ones only).
    fn activate(
        &mut self,
        acked_features: u64,
        queues: &[ActiveQueue],
        kicks: &[Arc<EventFd>],
    ) -> Result<(), ActivateError>;
    /// The driver wrote 0 to Status.
    fn reset(&mut self);
    /// Whether InterruptStatus should always report a used-ring update (true when a backend
    /// outside the VMM signals the irqfd directly, as with vhost-user).
    fn vring_irq_always(&self) -> bool {
        false
    }
}

pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemory,
    interrupt: VirtioInterrupt,
    kicks: Vec<Arc<EventFd>>,
    queues: Vec<Queue>,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    status: u32,
    config_generation: u32,
    activated: bool,
}

impl MmioTransport {
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemory,
        irq: IrqLine,
    ) -> std::io::Result<Self> {
        Self::with_interrupt(device, mem, VirtioInterrupt::new(irq))
    }

    /// A transport whose interrupt status is shared with the device (devices that raise their
    /// own interrupts hold a clone of `interrupt`).
    pub fn with_interrupt(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemory,
        interrupt: VirtioInterrupt,
    ) -> std::io::Result<Self> {
        let sizes = device.queue_max_sizes();
        let queues = sizes
            .iter()
            .map(|s| Queue::new(*s).expect("queue max size is a power of two"))
            .collect();
        let kicks = sizes
            .iter()
            .map(|_| EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map(Arc::new))
            .collect::<Result<_, _>>()?;
        Ok(MmioTransport {
            device,
            mem,
            interrupt,
            kicks,
            queues,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            status: 0,
            config_generation: 0,
            activated: false,
        })
    }

    /// Kick eventfd of each queue (to register as ioeventfds on QueueNotify).
    pub fn kicks(&self) -> &[Arc<EventFd>] {
        &self.kicks
    }

    pub fn status(&self) -> u32 {
        self.status
    }

    pub fn is_activated(&self) -> bool {
        self.activated
    }

    fn queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn queue_writable(&self) -> bool {
        self.status & status::FEATURES_OK != 0 && self.status & status::DRIVER_OK == 0
    }

    fn reset(&mut self) {
        if self.activated {
            self.device.reset();
        }
        self.activated = false;
        for q in &mut self.queues {
            q.reset();
        }
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.status = 0;
        self.interrupt.clear();
    }

    fn features_ok(&self) -> bool {
        let offered = self.device.features();
        self.driver_features & !offered == 0 && self.driver_features & VIRTIO_F_VERSION_1 != 0
    }

    fn set_status(&mut self, v: u32) {
        use status::*;
        if v == 0 {
            self.reset();
            return;
        }
        // The driver may only add bits, FAILED included (virtio 1.2, 2.1.2: it reads the status
        // and writes it back with the new bit). Dropping bits would let it stop a running device
        // without a reset, rewrite its queues and features, and activate it a second time.
        if v & self.status != self.status {
            tracing::warn!(
                "virtio-mmio: status {:#x} -> {v:#x} drops bits; ignored",
                self.status
            );
            return;
        }
        let new = v & !self.status;
        if new & FEATURES_OK != 0 && !self.features_ok() {
            // Leave FEATURES_OK clear: the driver reads it back and gives up.
            tracing::warn!(
                "virtio-mmio: driver features {:#x} not acceptable (offered {:#x})",
                self.driver_features,
                self.device.features()
            );
            self.status = v & !FEATURES_OK;
            return;
        }
        self.status = v;
        if new & DRIVER_OK != 0 && self.status & FEATURES_OK != 0 && self.status & FAILED == 0 {
            debug_assert!(!self.activated, "DRIVER_OK is only added once per reset");
            self.activate();
        }
    }

    fn activate(&mut self) {
        let mut active = Vec::new();
        for (i, q) in self.queues.iter().enumerate() {
            if !q.ready() {
                continue;
            }
            if !q.is_valid(&self.mem) {
                self.needs_reset(format!("queue {i} is not valid in guest memory"));
                return;
            }
            active.push(ActiveQueue {
                index: i,
                size: q.size(),
                desc: q.desc_table(),
                avail: q.avail_ring(),
                used: q.used_ring(),
            });
        }
        match self
            .device
            .activate(self.driver_features, &active, &self.kicks)
        {
            Ok(()) => {
                self.activated = true;
                tracing::info!(
                    device_type = self.device.device_type(),
                    queues = active.len(),
                    "virtio device activated"
                );
            }
            Err(e) => self.needs_reset(format!("activation failed: {e}")),
        }
    }

    fn needs_reset(&mut self, why: String) {
        tracing::error!(
            device_type = self.device.device_type(),
            "virtio-mmio: {why}"
        );
        self.status |= status::DEVICE_NEEDS_RESET;
        let _ = self.interrupt.signal_config();
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        match offset {
            reg::MAGIC => MMIO_MAGIC,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => self.queue().map_or(0, |q| q.max_size().into()),
            reg::QUEUE_READY => self.queue().map_or(0, |q| q.ready().into()),
            reg::INTERRUPT_STATUS => {
                let mut s = self.interrupt.status();
                if self.activated && self.device.vring_irq_always() {
                    s |= INT_VRING;
                }
                s
            }
            reg::STATUS => self.status,
            // No shared memory regions: length -1 means "none".
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH => u32::MAX,
            reg::SHM_BASE_LOW | reg::SHM_BASE_HIGH => u32::MAX,
            reg::CONFIG_GENERATION => self.config_generation,
            _ => {
                tracing::debug!("virtio-mmio: read of unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        let queue_reg = matches!(
            offset,
            reg::QUEUE_NUM
                | reg::QUEUE_READY
                | reg::QUEUE_DESC_LOW
                | reg::QUEUE_DESC_HIGH
                | reg::QUEUE_DRIVER_LOW
                | reg::QUEUE_DRIVER_HIGH
                | reg::QUEUE_DEVICE_LOW
                | reg::QUEUE_DEVICE_HIGH
        );
        if queue_reg && !self.queue_writable() {
            tracing::warn!(
                "virtio-mmio: queue register {offset:#x} written in status {:#x}",
                self.status
            );
            return;
        }
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::DRIVER_FEATURES => {
                if self.status & status::DRIVER == 0 || self.status & status::FEATURES_OK != 0 {
                    tracing::warn!("virtio-mmio: features written in status {:#x}", self.status);
                    return;
                }
                match self.driver_features_sel {
                    0 => {
                        self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                    }
                    _ => {}
                }
            }
            reg::QUEUE_SEL => self.queue_sel = v,
            reg::QUEUE_NUM => {
                if let Some(q) = self.queue() {
                    q.set_size(v as u16);
                }
            }
            reg::QUEUE_READY => {
                if let Some(q) = self.queue() {
                    q.set_ready(v == 1);
                }
            }
            reg::QUEUE_DESC_LOW => self.with_queue(|q| q.set_desc_table_address(Some(v), None)),
            reg::QUEUE_DESC_HIGH => self.with_queue(|q| q.set_desc_table_address(None, Some(v))),
            reg::QUEUE_DRIVER_LOW => self.with_queue(|q| q.set_avail_ring_address(Some(v), None)),
            reg::QUEUE_DRIVER_HIGH => self.with_queue(|q| q.set_avail_ring_address(None, Some(v))),
            reg::QUEUE_DEVICE_LOW => self.with_queue(|q| q.set_used_ring_address(Some(v), None)),
            reg::QUEUE_DEVICE_HIGH => self.with_queue(|q| q.set_used_ring_address(None, Some(v))),
            reg::QUEUE_NOTIFY => {
                // Only reached when no ioeventfd is registered for this address.
                if let Some(k) = self.kicks.get(v as usize) {
                    let _ = k.write(1);
                }
            }
            reg::INTERRUPT_ACK => self.interrupt.ack(v),
            reg::STATUS => self.set_status(v),
            reg::SHM_SEL => {}
            _ => tracing::debug!("virtio-mmio: write of unknown register {offset:#x}"),
        }
    }

    fn with_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        if let Some(q) = self.queue() {
            f(q)
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            self.device.read_config(offset - reg::CONFIG, data);
            return;
        }
        if data.len() != 4 || offset & 3 != 0 {
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            self.device.write_config(offset - reg::CONFIG, data);
            self.config_generation = self.config_generation.wrapping_add(1);
            return;
        }
        if data.len() != 4 || offset & 3 != 0 {
            return;
        }
        self.write_reg(
            offset,
            u32::from_le_bytes(data.try_into().expect("4 bytes")),
        );
    }
}

/// Maps `transport` on the MMIO bus at `slot`, each queue's kick a KVM ioeventfd on its
/// QueueNotify register (so notifications bypass the VMM). Returns the transport as the bus
/// holds it.
pub fn map_on_bus<E>(
    transport: MmioTransport,
    vm: &crate::vstate::vm::Vm,
    slot: &crate::boot::layout::VirtioSlot,
    mmio: &mut super::Bus,
) -> Result<Arc<std::sync::Mutex<MmioTransport>>, E>
where
    E: From<crate::vstate::vm::VmError> + From<super::bus::BusError>,
{
    for (q, kick) in transport.kicks().iter().enumerate() {
        vm.register_mmio_ioevent(kick, slot.addr + reg::QUEUE_NOTIFY, q as u32)?;
    }
    let t = Arc::new(std::sync::Mutex::new(transport));
    mmio.insert(t.clone(), slot.addr, slot.size)?;
    Ok(t)
}

#[cfg(test)]
mod tests;
