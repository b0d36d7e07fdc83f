//! In-process virtio-balloon (virtio 1.2, 5.5) with free page reporting, as QEMU's
//! `virtio-balloon-device,free-page-reporting=on`.
//!
//! - **Size**: the host sets a target (`num_pages`, 4 KiB pages) through the control channel
//!   ([`crate::control`]); the guest driver inflates (gives pages to the balloon, PFN arrays on
//!   queue 0) or deflates (queue 1) towards it and writes how many it holds to `actual`. Pages the
//!   guest inflates are punched out of the guest-RAM memfd (`MADV_REMOVE`: gone for the VMM and
//!   the vhost-user daemons alike). Deflating needs nothing from the host: a page the guest touches
//!   again comes back zeroed. The shim boots a pod's VM with room to grow held in the balloon and
//!   deflates it when the pod needs more.
//! - **Free page reporting** (`VIRTIO_BALLOON_F_REPORTING`, queue 2 when negotiated): the guest
//!   reports free blocks (2 MiB and up) as device-writable descriptors; each is punched out the
//!   same way, so memory a container freed goes back to the host.
//!
//! The queues are served on the VMM's main thread (their kicks are KVM ioeventfds it polls). Every
//! descriptor comes from the guest: a PFN or range outside guest RAM is skipped and logged (rate
//! limited); nothing the guest sends can reach host memory outside its own RAM. A hostile guest
//! can only punch out its own memory, or ignore the balloon: the balloon is cooperative, and the
//! host-side bound of a VM is its RAM size and its host cgroup, not the balloon.

use std::{
    os::fd::{AsRawFd, RawFd},
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::virtio_mmio::{
    build_queue, read_config_bytes, ActivateError, ActiveQueue, MmioTransport, VirtioDevice,
    VirtioInterrupt, VIRTIO_F_VERSION_1,
};
use super::{Bus, IrqLine};
use crate::boot::layout::VirtioSlot;
use crate::devices::virtio_net::event_handler::RateLimitedLog;
use crate::memory::GuestMemory;
use crate::vstate::vm::Vm;

pub const VIRTIO_ID_BALLOON: u32 = 5;
pub const VIRTIO_BALLOON_F_REPORTING: u64 = 1 << 5;
/// The balloon's unit: 4 KiB pages, whatever the guest's page size.
pub const PAGE_SIZE: u64 = 4096;
/// Linux's page reporting sends up to 32 blocks at once; PFN arrays are one descriptor.
pub const QUEUE_SIZE: u16 = 64;
pub const INFLATE: usize = 0;
pub const DEFLATE: usize = 1;
pub const REPORTING: usize = 2;
/// `struct virtio_balloon_config`: num_pages, actual, free_page_hint_cmd_id, poison_val.
pub const CONFIG_SIZE: u64 = 16;
/// Most bytes of PFNs one inflate chain may carry (Linux sends 256 PFNs).
const MAX_PFN_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BalloonError {
    #[error("virtio-balloon: {0}: {1}")]
    Io(&'static str, std::io::Error),
    #[error(transparent)]
    Vm(#[from] crate::vstate::vm::VmError),
    #[error(transparent)]
    Bus(#[from] crate::devices::bus::BusError),
    #[error("balloon target {target_mib} MiB is more than the guest's {memory_mib} MiB")]
    TooBig { target_mib: u64, memory_mib: u64 },
}

/// What the device (vCPU threads) and the queue handler (main thread) share.
pub struct Shared {
    target_pages: AtomicU32,
    actual_pages: AtomicU32,
    /// Bytes punched out of guest RAM so far (inflated pages and reported free blocks).
    pub released_bytes: AtomicU64,
    /// The rings while the driver runs (by queue index), None before DRIVER_OK / after reset.
    queues: Mutex<Option<Vec<(usize, Queue)>>>,
    interrupt: VirtioInterrupt,
    /// Guest RAM size (bytes): the largest target.
    memory_bytes: u64,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Vec<(usize, Queue)>>> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The device as the transport sees it.
pub struct BalloonDevice {
    shared: Arc<Shared>,
    mem: GuestMemory,
}

impl VirtioDevice for BalloonDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BALLOON
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE; 3]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_BALLOON_F_REPORTING
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; CONFIG_SIZE as usize];
        config[0..4].copy_from_slice(
            &self
                .shared
                .target_pages
                .load(Ordering::SeqCst)
                .to_le_bytes(),
        );
        config[4..8].copy_from_slice(
            &self
                .shared
                .actual_pages
                .load(Ordering::SeqCst)
                .to_le_bytes(),
        );
        read_config_bytes(&config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `actual` is the driver's to write.
        match (offset, <[u8; 4]>::try_from(data)) {
            (4, Ok(v)) => self
                .shared
                .actual_pages
                .store(u32::from_le_bytes(v), Ordering::SeqCst),
            _ => tracing::debug!("virtio-balloon: ignoring config write at {offset:#x}"),
        }
    }

    fn activate(
        &mut self,
        acked_features: u64,
        queues: &[ActiveQueue],
        _kicks: &[Arc<EventFd>],
    ) -> Result<(), ActivateError> {
        let mut wanted = vec![(INFLATE, "inflate"), (DEFLATE, "deflate")];
        if acked_features & VIRTIO_BALLOON_F_REPORTING != 0 {
            wanted.push((REPORTING, "reporting"));
        }
        let mut rings = Vec::new();
        for (index, name) in wanted {
            let q = queues
                .iter()
                .find(|q| q.index == index)
                .ok_or_else(|| ActivateError(format!("{name} queue is not ready")))?;
            rings.push((index, build_queue(q, QUEUE_SIZE, &self.mem, name)?));
        }
        *self.shared.lock() = Some(rings);
        Ok(())
    }

    fn reset(&mut self) {
        *self.shared.lock() = None;
        self.shared.actual_pages.store(0, Ordering::SeqCst);
    }
}

/// The host's handle on the balloon: its size, and its queues (served on the main thread).
#[derive(Clone)]
pub struct Balloon {
    shared: Arc<Shared>,
    kicks: Vec<Arc<EventFd>>,
    mem: GuestMemory,
    log: Arc<Mutex<RateLimitedLog>>,
}

fn pages_of_mib(mib: u64) -> u64 {
    mib * (1 << 20) / PAGE_SIZE
}

impl Balloon {
    /// Sets how much of guest RAM the balloon should hold; the driver is told through a
    /// configuration-change interrupt (once it runs: before, it reads the target when it starts).
    pub fn set_target_mib(&self, mib: u64) -> Result<(), BalloonError> {
        let memory_mib = self.shared.memory_bytes >> 20;
        if mib > memory_mib {
            return Err(BalloonError::TooBig {
                target_mib: mib,
                memory_mib,
            });
        }
        let pages = u32::try_from(pages_of_mib(mib)).unwrap_or(u32::MAX);
        self.shared.target_pages.store(pages, Ordering::SeqCst);
        if self.shared.lock().is_some() {
            self.shared
                .interrupt
                .signal_config()
                .map_err(|e| BalloonError::Io("config interrupt", e))?;
        }
        tracing::info!(target_mib = mib, "balloon target set");
        Ok(())
    }

    pub fn target_mib(&self) -> u64 {
        (u64::from(self.shared.target_pages.load(Ordering::SeqCst)) * PAGE_SIZE) >> 20
    }

    /// What the guest says the balloon holds now.
    pub fn actual_mib(&self) -> u64 {
        (u64::from(self.shared.actual_pages.load(Ordering::SeqCst)) * PAGE_SIZE) >> 20
    }

    pub fn released_bytes(&self) -> u64 {
        self.shared.released_bytes.load(Ordering::Relaxed)
    }

    /// The kick eventfds to poll, with the queue each belongs to.
    pub fn kick_fds(&self) -> Vec<(usize, RawFd)> {
        self.kicks
            .iter()
            .enumerate()
            .map(|(i, k)| (i, k.as_raw_fd()))
            .collect()
    }

    /// Serves queue `index` after its kick: every available chain, then one interrupt.
    pub fn process(&self, index: usize) {
        if let Some(k) = self.kicks.get(index) {
            let _ = k.read();
        }
        let mut guard = self.shared.lock();
        let Some(rings) = guard.as_mut() else {
            return;
        };
        let Some((_, q)) = rings.iter_mut().find(|(i, _)| *i == index) else {
            return;
        };
        let mut used = false;
        while let Some(chain) = q.pop_descriptor_chain(&self.mem) {
            let head = chain.head_index();
            let result = match index {
                INFLATE => self.inflate(chain),
                REPORTING => self.report(chain),
                _ => Ok(()), // deflate: the guest takes its pages back by touching them
            };
            if let Err(e) = result {
                self.warn(&format!("queue {index}: {e}"));
            }
            if let Err(e) = q.add_used(&self.mem, head, 0) {
                self.warn(&format!("queue {index}: used ring: {e}"));
            }
            used = true;
        }
        drop(guard);
        if used {
            if let Err(e) = self.shared.interrupt.signal_used_queue() {
                tracing::error!("virtio-balloon: raising the interrupt: {e}");
            }
        }
    }

    fn warn(&self, msg: &str) {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = log.check() {
            tracing::warn!(suppressed = s, "virtio-balloon: {msg}");
        }
    }

    /// An inflate chain: device-readable descriptors holding little-endian u32 PFNs.
    fn inflate(&self, chain: virtio_queue::DescriptorChain<&GuestMemory>) -> Result<(), String> {
        let mut bytes = Vec::new();
        for d in chain {
            if d.is_write_only() {
                return Err("device-writable descriptor in an inflate chain".into());
            }
            let len = d.len() as usize;
            if bytes.len() + len > MAX_PFN_BYTES {
                return Err(format!("inflate chain longer than {MAX_PFN_BYTES} bytes"));
            }
            let start = bytes.len();
            bytes.resize(start + len, 0);
            self.mem
                .read_slice(&mut bytes[start..], d.addr())
                .map_err(|e| format!("reading PFNs at {:#x}: {e}", d.addr().0))?;
        }
        let pfns = bytes
            .chunks_exact(4)
            .map(|c| u64::from(u32::from_le_bytes(c.try_into().expect("4 bytes"))));
        for (start, pages) in coalesce(pfns) {
            self.release(start * PAGE_SIZE, pages * PAGE_SIZE)?;
        }
        Ok(())
    }

    /// A reporting chain: each device-writable descriptor is a free block of guest RAM.
    fn report(&self, chain: virtio_queue::DescriptorChain<&GuestMemory>) -> Result<(), String> {
        for d in chain {
            self.release(d.addr().0, u64::from(d.len()))?;
        }
        Ok(())
    }

    /// Gives the whole pages in guest RAM `[addr, addr + len)` back to the host.
    fn release(&self, addr: u64, len: u64) -> Result<(), String> {
        let outside = || format!("range {addr:#x}+{len:#x} is not in guest RAM");
        let start = addr
            .checked_next_multiple_of(PAGE_SIZE)
            .ok_or_else(outside)?;
        let end = addr.checked_add(len).ok_or_else(outside)? / PAGE_SIZE * PAGE_SIZE;
        if end <= start {
            return Ok(());
        }
        let (region, raddr) = self
            .mem
            .to_region_addr(GuestAddress(start))
            .ok_or_else(outside)?;
        if raddr
            .0
            .checked_add(end - start)
            .is_none_or(|e| e > region.len())
        {
            return Err(outside());
        }
        let host = region.get_host_address(raddr).map_err(|e| e.to_string())?;
        // SAFETY: [host, host + len) lies inside one mapping of guest RAM (checked above), which
        // stays mapped for the life of the VM. MADV_REMOVE only drops its contents: the guest
        // reads zeroes there next, which is what it asked for.
        let r = unsafe { libc::madvise(host.cast(), (end - start) as usize, libc::MADV_REMOVE) };
        if r != 0 {
            return Err(format!(
                "punching {start:#x}..{end:#x}: {}",
                std::io::Error::last_os_error()
            ));
        }
        self.shared
            .released_bytes
            .fetch_add(end - start, Ordering::Relaxed);
        Ok(())
    }
}

/// Runs of consecutive PFNs as (first, count), in the order given.
pub fn coalesce(pfns: impl Iterator<Item = u64>) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for p in pfns {
        match runs.last_mut() {
            Some((first, n)) if *first + *n == p => *n += 1,
            _ => runs.push((p, 1)),
        }
    }
    runs
}

/// The device's transport (for the MMIO bus) and the host's handle on it, raising `irq`.
pub fn new_device(
    mem: &GuestMemory,
    irq: IrqLine,
) -> Result<(MmioTransport, Balloon), BalloonError> {
    let interrupt = VirtioInterrupt::new(irq);
    let memory_bytes = mem.iter().map(|r| r.len()).sum();
    let shared = Arc::new(Shared {
        target_pages: AtomicU32::new(0),
        actual_pages: AtomicU32::new(0),
        released_bytes: AtomicU64::new(0),
        queues: Mutex::new(None),
        interrupt: interrupt.clone(),
        memory_bytes,
    });
    let dev = BalloonDevice {
        shared: shared.clone(),
        mem: mem.clone(),
    };
    let transport = MmioTransport::with_interrupt(Box::new(dev), mem.clone(), interrupt)
        .map_err(|e| BalloonError::Io("queue eventfds", e))?;
    let balloon = Balloon {
        shared,
        kicks: transport.kicks().to_vec(),
        mem: mem.clone(),
        log: Arc::new(Mutex::new(RateLimitedLog::new(Duration::from_secs(1)))),
    };
    Ok((transport, balloon))
}

/// Creates the balloon holding `initial_mib` from boot, on the MMIO bus at `slot`.
pub fn attach(
    initial_mib: u64,
    vm: &Vm,
    mem: &GuestMemory,
    slot: &VirtioSlot,
    mmio: &mut Bus,
) -> Result<Balloon, BalloonError> {
    let irq = IrqLine::new().map_err(|e| BalloonError::Io("irq eventfd", e))?;
    vm.register_irqfd(&irq.0, slot.irq)?;
    let (transport, balloon) = new_device(mem, irq)?;
    super::virtio_mmio::map_on_bus::<BalloonError>(transport, vm, slot, mmio)?;
    balloon.set_target_mib(initial_mib)?;
    tracing::info!(
        device = "virtio-balloon",
        initial_mib,
        addr = %format!("{:#x}", slot.addr),
        irq = slot.irq,
        "virtio-mmio device attached"
    );
    Ok(balloon)
}

#[cfg(test)]
mod tests;
