//! The virtio-net data path: an `event-manager` subscriber per device, run on the `virtio-net`
//! thread.
//!
//! - TX (queue 1 kick): every available chain is read (device-readable descriptors only, at most
//!   [`MAX_FRAME_LEN`] bytes, at least the 12-byte header) into a buffer and written to the tap
//!   as one frame, with a zeroed header (no offloads were negotiated, so the guest's header
//!   carries nothing the tap should act on). Each chain is returned with used length 0.
//! - RX (tap readable, queue 0 kick): frames are read from the tap and copied into the next
//!   chain (device-writable descriptors only) behind a fresh header (flags 0, num_buffers 1); the
//!   used length is header + frame. When the guest has no RX buffer left the frame is kept and
//!   the tap is taken out of the epoll set until the guest kicks queue 0: no busy loop, and the
//!   kernel queues (then drops) frames meanwhile. A frame larger than the chain is dropped and the
//!   chain returned with used length 0 (Linux counts it as an rx length error).
//! - Bad chains are dropped and logged at most once a second per kind, with a count of the
//!   suppressed messages.

use std::{
    io,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::{epoll::EventSet, eventfd::EventFd};

use super::device::{NetStats, Shared};
use super::tap::Tap;
use super::{MAX_FRAME_LEN, VNET_HDR_LEN};
use crate::devices::virtio_mmio::VirtioInterrupt;
use crate::memory::GuestMemory;

/// Avail ring flag: the driver does not want interrupts for this queue for now.
const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;

/// Most frames one event moves in either direction before the loop looks at its other events
/// (RX is level-triggered on the tap; TX re-arms its kick), so a flood one way cannot starve the
/// other direction or the other devices.
const BUDGET: usize = super::QUEUE_SIZE as usize;

const RX_KICK: u32 = 0;
const TX_KICK: u32 = 1;
const TAP: u32 = 2;
const ACTIVATE: u32 = 3;

/// Why a descriptor chain was dropped.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("empty chain (head {0} out of range or unreadable descriptor)")]
    Empty(u16),
    #[error("device-writable descriptor in a TX chain")]
    WritableInTx,
    #[error("device-readable descriptor in an RX chain")]
    ReadableInRx,
    #[error("TX chain longer than {MAX_FRAME_LEN} bytes")]
    TooLong,
    #[error("TX chain of {0} bytes is shorter than the {VNET_HDR_LEN}-byte header")]
    NoHeader(usize),
    #[error("RX chain of {capacity} bytes cannot hold a {frame}-byte frame")]
    TooSmall { capacity: u64, frame: usize },
    #[error("guest memory at {0:#x}: {1}")]
    Memory(u64, vm_memory::GuestMemoryError),
}

/// At most one message per `interval`; counts the ones it swallowed.
#[derive(Debug)]
pub struct RateLimitedLog {
    interval: Duration,
    next: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedLog {
    pub fn new(interval: Duration) -> Self {
        RateLimitedLog {
            interval,
            next: None,
            suppressed: 0,
        }
    }

    /// Some(number of messages suppressed since the last one) when this one may be logged.
    pub fn check(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.next.is_some_and(|n| now < n) {
            self.suppressed += 1;
            return None;
        }
        self.next = Some(now + self.interval);
        Some(std::mem::take(&mut self.suppressed))
    }
}

struct Logs {
    rx: RateLimitedLog,
    tx: RateLimitedLog,
    tap_write: RateLimitedLog,
    ring: RateLimitedLog,
}

pub struct NetHandler {
    tap: Tap,
    mem: GuestMemory,
    shared: Arc<Shared>,
    interrupt: VirtioInterrupt,
    rx_kick: Arc<EventFd>,
    tx_kick: Arc<EventFd>,
    /// Whether the tap is in the epoll set with EPOLLIN.
    tap_listening: bool,
    /// The tap failed (deleted interface, read error): no more RX.
    tap_dead: bool,
    rx_buf: Vec<u8>,
    tx_buf: Vec<u8>,
    /// Scratch list of (address, length) of the descriptors of one RX chain.
    descs: Vec<(GuestAddress, usize)>,
    logs: Logs,
}

impl NetHandler {
    pub fn new(
        tap: Tap,
        mem: GuestMemory,
        shared: Arc<Shared>,
        interrupt: VirtioInterrupt,
        rx_kick: Arc<EventFd>,
        tx_kick: Arc<EventFd>,
    ) -> Self {
        let log = || RateLimitedLog::new(Duration::from_secs(1));
        NetHandler {
            tap,
            mem,
            shared,
            interrupt,
            rx_kick,
            tx_kick,
            tap_listening: false,
            tap_dead: false,
            rx_buf: vec![0; MAX_FRAME_LEN],
            tx_buf: vec![0; MAX_FRAME_LEN],
            descs: Vec::new(),
            logs: Logs {
                rx: log(),
                tx: log(),
                tap_write: log(),
                ring: log(),
            },
        }
    }

    pub fn stats(&self) -> &NetStats {
        &self.shared.stats
    }

    /// Whether the tap is currently in the epoll set (false while the guest has no RX buffer).
    pub fn tap_listening(&self) -> bool {
        self.tap_listening
    }

    fn set_tap_interest(&mut self, ops: &mut EventOps, listen: bool) {
        if self.tap_dead || listen == self.tap_listening {
            return;
        }
        let set = if listen {
            EventSet::IN
        } else {
            EventSet::empty()
        };
        match ops.modify(Events::with_data(&self.tap, TAP, set)) {
            Ok(()) => self.tap_listening = listen,
            Err(e) => tracing::error!(tap = %self.tap.name(), "virtio-net: epoll modify: {e}"),
        }
    }

    fn tap_failed(&mut self, ops: &mut EventOps, why: &str) {
        tracing::error!(
            tap = %self.tap.name(),
            "virtio-net: {why}; the device receives nothing from now on"
        );
        let _ = ops.remove(Events::with_data(&self.tap, TAP, EventSet::empty()));
        self.tap_dead = true;
        self.tap_listening = false;
    }

    /// Reads one frame into `rx_buf`: Some(length including the header), or None when the tap
    /// has nothing (or failed).
    fn read_tap(&mut self, ops: &mut EventOps) -> Option<usize> {
        loop {
            if self.tap_dead {
                return None;
            }
            match self.tap.read(&mut self.rx_buf) {
                Ok(n) if n >= VNET_HDR_LEN => return Some(n),
                Ok(n) => {
                    // Cannot happen with IFF_VNET_HDR (the kernel always writes the header).
                    tracing::warn!(
                        tap = %self.tap.name(),
                        "virtio-net: {n}-byte read from the tap"
                    );
                    NetStats::add(&self.shared.stats.rx_dropped, 1);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.tap_failed(ops, &format!("reading the tap: {e}"));
                    return None;
                }
            }
        }
    }

    /// Moves frames from the tap into RX buffers until either runs out.
    fn process_rx(&mut self, ops: &mut EventOps) {
        let shared = self.shared.clone();
        let mut guard = shared.lock();
        let Some(active) = guard.as_mut() else {
            self.set_tap_interest(ops, false);
            return;
        };
        let mut used = false;
        let mut budget = BUDGET;
        let listen = loop {
            if budget == 0 {
                break true; // the tap stays readable: epoll reports it again
            }
            budget -= 1;
            let len = match active.rx_pending.take() {
                Some(n) => n,
                None => match self.read_tap(ops) {
                    Some(n) => n,
                    None => break true,
                },
            };
            let Some(chain) = active.rx.pop_descriptor_chain(&self.mem) else {
                // No buffer: keep the frame, stop reading until the guest kicks queue 0.
                active.rx_pending = Some(len);
                break false;
            };
            let head = chain.head_index();
            let frame = &mut self.rx_buf[..len];
            // No offloads negotiated: flags and GSO fields 0 (a fully checksummed frame), one
            // buffer (no VIRTIO_NET_F_MRG_RXBUF).
            frame[..VNET_HDR_LEN].fill(0);
            frame[10..12].copy_from_slice(&1u16.to_le_bytes());
            let written = match write_rx_chain(chain, frame, &mut self.descs) {
                Ok(()) => {
                    NetStats::add(&shared.stats.rx_frames, 1);
                    NetStats::add(&shared.stats.rx_bytes, (len - VNET_HDR_LEN) as u64);
                    len as u32
                }
                Err(e) => {
                    NetStats::add(&shared.stats.rx_dropped, 1);
                    if let Some(s) = self.logs.rx.check() {
                        tracing::warn!(
                            tap = %self.tap.name(),
                            suppressed = s,
                            "virtio-net: RX frame dropped: {e}"
                        );
                    }
                    0
                }
            };
            add_used(
                &mut active.rx,
                &self.mem,
                head,
                written,
                &mut self.logs.ring,
            );
            used = true;
        };
        if used {
            notify(
                &mut active.rx,
                &self.mem,
                &self.interrupt,
                &mut self.logs.ring,
            );
        }
        drop(guard);
        self.set_tap_interest(ops, listen);
    }

    /// Sends every available TX chain to the tap.
    fn process_tx(&mut self) {
        let shared = self.shared.clone();
        let mut guard = shared.lock();
        let Some(active) = guard.as_mut() else {
            return;
        };
        let mut used = false;
        let mut budget = BUDGET;
        while budget > 0 {
            let Some(chain) = active.tx.pop_descriptor_chain(&self.mem) else {
                break;
            };
            budget -= 1;
            let head = chain.head_index();
            match read_tx_chain(chain, &mut self.tx_buf) {
                Ok(len) => {
                    // The guest's header is not passed on: with no offloads negotiated it must
                    // be all zero, and the tap would act on GSO/checksum requests in it.
                    self.tx_buf[..VNET_HDR_LEN].fill(0);
                    match self.tap.write(&self.tx_buf[..len]) {
                        Ok(_) => {
                            NetStats::add(&shared.stats.tx_frames, 1);
                            NetStats::add(&shared.stats.tx_bytes, (len - VNET_HDR_LEN) as u64);
                        }
                        Err(e) => {
                            NetStats::add(&shared.stats.tx_dropped, 1);
                            if let Some(s) = self.logs.tap_write.check() {
                                tracing::warn!(
                                    tap = %self.tap.name(),
                                    suppressed = s,
                                    "virtio-net: TX frame of {} bytes dropped: tap write: {e}",
                                    len - VNET_HDR_LEN
                                );
                            }
                        }
                    }
                }
                Err(e) => {
                    NetStats::add(&shared.stats.tx_dropped, 1);
                    if let Some(s) = self.logs.tx.check() {
                        tracing::warn!(
                            tap = %self.tap.name(),
                            suppressed = s,
                            "virtio-net: TX chain dropped: {e}"
                        );
                    }
                }
            }
            add_used(&mut active.tx, &self.mem, head, 0, &mut self.logs.ring);
            used = true;
        }
        if budget == 0 {
            // There may be more: come back after the other events (the kick was drained).
            let _ = self.tx_kick.write(1);
        }
        if used {
            notify(
                &mut active.tx,
                &self.mem,
                &self.interrupt,
                &mut self.logs.ring,
            );
        }
    }
}

/// Copies `frame` into the device-writable descriptors of `chain`; nothing is written unless
/// the whole frame fits.
fn write_rx_chain(
    chain: DescriptorChain<&GuestMemory>,
    frame: &[u8],
    descs: &mut Vec<(GuestAddress, usize)>,
) -> Result<(), ChainError> {
    let mem = chain.memory();
    let head = chain.head_index();
    descs.clear();
    let mut capacity = 0u64;
    let mut any = false;
    for d in chain.clone() {
        any = true;
        if !d.is_write_only() {
            return Err(ChainError::ReadableInRx);
        }
        descs.push((d.addr(), d.len() as usize));
        capacity += u64::from(d.len());
        if capacity >= frame.len() as u64 {
            break;
        }
    }
    if !any {
        return Err(ChainError::Empty(head));
    }
    if capacity < frame.len() as u64 {
        return Err(ChainError::TooSmall {
            capacity,
            frame: frame.len(),
        });
    }
    let mut rest = frame;
    for &(addr, len) in descs.iter() {
        let n = len.min(rest.len());
        mem.write_slice(&rest[..n], addr)
            .map_err(|e| ChainError::Memory(addr.0, e))?;
        rest = &rest[n..];
        if rest.is_empty() {
            break;
        }
    }
    Ok(())
}

/// Gathers the device-readable descriptors of `chain` into `buf`; returns the length.
fn read_tx_chain(
    chain: DescriptorChain<&GuestMemory>,
    buf: &mut [u8],
) -> Result<usize, ChainError> {
    let mem = chain.memory();
    let head = chain.head_index();
    let mut len = 0usize;
    let mut any = false;
    for d in chain.clone() {
        any = true;
        if d.is_write_only() {
            return Err(ChainError::WritableInTx);
        }
        let dlen = d.len() as usize;
        let end = len
            .checked_add(dlen)
            .filter(|e| *e <= buf.len())
            .ok_or(ChainError::TooLong)?;
        mem.read_slice(&mut buf[len..end], d.addr())
            .map_err(|e| ChainError::Memory(d.addr().0, e))?;
        len = end;
    }
    if !any {
        return Err(ChainError::Empty(head));
    }
    if len < VNET_HDR_LEN {
        return Err(ChainError::NoHeader(len));
    }
    Ok(len)
}

fn add_used(q: &mut Queue, mem: &GuestMemory, head: u16, len: u32, log: &mut RateLimitedLog) {
    if let Err(e) = q.add_used(mem, head, len) {
        if let Some(s) = log.check() {
            tracing::warn!(
                suppressed = s,
                "virtio-net: used ring update for head {head}: {e}"
            );
        }
    }
}

/// Raises the interrupt for used buffers unless the driver asked not to: without EVENT_IDX that
/// is VRING_AVAIL_F_NO_INTERRUPT in the avail ring's flags (Linux sets it while NAPI polls),
/// which virtio-queue 0.18 does not look at. Read after the used index is published (the fence
/// in `needs_notification`), as QEMU does.
fn notify(q: &mut Queue, mem: &GuestMemory, irq: &VirtioInterrupt, log: &mut RateLimitedLog) {
    let wanted = q.needs_notification(mem).and_then(|n| {
        let flags: u16 = mem
            .load(GuestAddress(q.avail_ring()), Ordering::Acquire)
            .map_err(virtio_queue::Error::GuestMemory)?;
        Ok(n && u16::from_le(flags) & VRING_AVAIL_F_NO_INTERRUPT == 0)
    });
    let signal = wanted.unwrap_or_else(|e| {
        if let Some(s) = log.check() {
            tracing::warn!(
                suppressed = s,
                "virtio-net: reading the ring's notification state: {e}"
            );
        }
        true // when in doubt, interrupt
    });
    if signal {
        if let Err(e) = irq.signal_used_queue() {
            tracing::error!("virtio-net: raising the interrupt: {e}");
        }
    }
}

impl MutEventSubscriber for NetHandler {
    fn init(&mut self, ops: &mut EventOps) {
        let add = |ops: &mut EventOps, ev: Events, what: &str| {
            if let Err(e) = ops.add(ev) {
                tracing::error!(tap = %self.tap.name(), "virtio-net: watching the {what}: {e}");
            }
        };
        add(
            ops,
            Events::with_data(self.rx_kick.as_ref(), RX_KICK, EventSet::IN),
            "RX kick",
        );
        add(
            ops,
            Events::with_data(self.tx_kick.as_ref(), TX_KICK, EventSet::IN),
            "TX kick",
        );
        add(
            ops,
            Events::with_data(&self.shared.activate_evt, ACTIVATE, EventSet::IN),
            "activation event",
        );
        // In the set from the start (so modify works) but without EPOLLIN until activation.
        add(
            ops,
            Events::with_data(&self.tap, TAP, EventSet::empty()),
            "tap",
        );
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            RX_KICK => {
                let _ = self.rx_kick.read();
                self.process_rx(ops);
            }
            TX_KICK => {
                let _ = self.tx_kick.read();
                self.process_tx();
            }
            ACTIVATE => {
                let _ = self.shared.activate_evt.read();
                self.process_tx();
                self.process_rx(ops);
            }
            TAP => {
                let set = events.event_set();
                if set.intersects(EventSet::ERROR | EventSet::HANG_UP) {
                    self.tap_failed(ops, &format!("tap reported {set:?}"));
                } else {
                    self.process_rx(ops);
                }
            }
            other => tracing::error!("virtio-net: event with unknown token {other}"),
        }
    }
}
