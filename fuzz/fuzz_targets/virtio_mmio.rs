//! The builtin VMM's virtio-mmio transport (`myvm_vmm::devices::virtio_mmio`) driven as a hostile
//! guest driver would: register reads and writes of any offset, width and value through the MMIO
//! `Bus` (as vCPU exits dispatch them), writes to guest RAM (descriptor tables, rings, buffers),
//! and queue notifications.
//!
//! The device behind the transport stands in for a vhost-user backend (the VMM processes no queue
//! itself; `vhost-device-vsock` / `virtiofsd` do, on the rings the transport hands over at
//! activation). It checks what the transport promises a backend (acked features were offered,
//! rings are aligned and inside guest RAM, one activation per reset, a reset only after an
//! activation) and, on a kick, serves the rings with `virtio-queue` 0.18 as such a daemon does:
//! pop descriptor chains (direct and indirect), read the readable part, write it back into the
//! writable part, add used entries, signal the irq.
//!
//! Input: a sequence of operations, see `run`. Seeds: fuzz/seeds/virtio_mmio (gen_seeds.py).

#![no_main]

use std::{
    io::{Read, Write},
    sync::{Arc, Mutex},
};

use libfuzzer_sys::fuzz_target;
use myvm_vmm::{
    boot::layout::VirtioSlot,
    devices::{
        virtio_mmio::{
            reg, status, ActivateError, ActiveQueue, MmioTransport, VirtioDevice, MMIO_MAGIC,
            MMIO_VERSION, VENDOR_ID, VIRTIO_F_VERSION_1,
        },
        Bus, IrqLine,
    },
    memory::GuestMemory,
};
use virtio_queue::{Queue, QueueT, Reader, Writer};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

/// Guest RAM: two regions with a hole between them (as around the 32-bit MMIO gap).
const RAM: [(u64, usize); 2] = [(0, 0x1_0000), (0x2_0000, 0x1_0000)];
/// Guest addresses the memory-write operation can reach (RAM, the hole and past the end).
const ADDR_SPAN: u32 = 0x4_0000;
/// Queue sizes the device offers (a vhost-user device offers 256; 16 and 1 are edge cases).
const MAX_SIZES: [u16; 3] = [256, 16, 1];
const F_INDIRECT_DESC: u64 = 1 << 28;
const F_EVENT_IDX: u64 = 1 << 29;
const FEATURES: u64 = VIRTIO_F_VERSION_1 | F_INDIRECT_DESC | F_EVENT_IDX | 1;
/// Most bytes the backend reads from one chain (chains may reference the same RAM many times).
const MAX_CHAIN_BYTES: u64 = 64 << 10;

/// What a vhost-user daemon would hold after activation.
struct Active {
    acked: u64,
    queues: Vec<ActiveQueue>,
    kicks: Vec<Arc<EventFd>>,
    /// (next_avail, next_used) per entry of `queues`: the daemon's ring positions.
    positions: Vec<(u16, u16)>,
}

#[derive(Default)]
struct Backend {
    active: Option<Active>,
}

struct FuzzDevice {
    backend: Arc<Mutex<Backend>>,
    mem: GuestMemory,
    /// vsock config space: the guest CID (le64), as the vhost-user vsock device has it.
    config: [u8; 8],
}

impl VirtioDevice for FuzzDevice {
    fn device_type(&self) -> u32 {
        19
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        MAX_SIZES.to_vec()
    }

    fn features(&self) -> u64 {
        FEATURES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| self.config.get(usize::try_from(o).ok()?))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(
        &mut self,
        acked: u64,
        queues: &[ActiveQueue],
        kicks: &[Arc<EventFd>],
    ) -> Result<(), ActivateError> {
        let mut b = self.backend.lock().unwrap();
        assert!(
            b.active.is_none(),
            "activate() on a device that is already active (no reset in between)"
        );
        assert_eq!(
            acked & !FEATURES,
            0,
            "acked features {acked:#x} were not offered"
        );
        assert_ne!(acked & VIRTIO_F_VERSION_1, 0, "VERSION_1 not acked");
        assert_eq!(kicks.len(), MAX_SIZES.len());
        let mut seen = [false; MAX_SIZES.len()];
        for q in queues {
            assert!(q.index < MAX_SIZES.len(), "queue index {}", q.index);
            assert!(!seen[q.index], "queue {} handed over twice", q.index);
            seen[q.index] = true;
            assert!(
                q.size.is_power_of_two() && q.size <= MAX_SIZES[q.index],
                "queue {} has size {}",
                q.index,
                q.size
            );
            let n = u64::from(q.size);
            // Split virtqueue layout: descriptor table, avail ring (+ used_event), used ring
            // (+ avail_event); and what a vhost-user daemon is given: host addresses of each.
            for (what, addr, len, align) in [
                ("descriptor table", q.desc, 16 * n, 16),
                ("avail ring", q.avail, 6 + 2 * n, 2),
                ("used ring", q.used, 6 + 8 * n, 4),
            ] {
                assert_eq!(addr % align, 0, "queue {} {what} at {addr:#x}", q.index);
                assert!(
                    self.mem.check_range(GuestAddress(addr), len as usize),
                    "queue {} {what} {addr:#x}+{len:#x} outside guest RAM",
                    q.index
                );
                assert!(self.mem.get_host_address(GuestAddress(addr)).is_ok());
            }
        }
        b.active = Some(Active {
            acked,
            queues: queues.to_vec(),
            kicks: kicks.to_vec(),
            positions: vec![(0, 0); queues.len()],
        });
        Ok(())
    }

    fn reset(&mut self) {
        let mut b = self.backend.lock().unwrap();
        assert!(b.active.is_some(), "reset() of a device never activated");
        b.active = None;
    }

    fn vring_irq_always(&self) -> bool {
        true
    }
}

/// The daemon's side: serves the active queues (those kicked, or all when `poll`).
fn serve(backend: &Mutex<Backend>, mem: &GuestMemory, irq: &IrqLine, poll: bool) {
    let mut b = backend.lock().unwrap();
    let Some(a) = b.active.as_mut() else {
        return;
    };
    for (i, aq) in a.queues.iter().enumerate() {
        let kicked = a.kicks[aq.index].read().is_ok();
        if !kicked && !poll {
            continue;
        }
        let mut q = Queue::new(MAX_SIZES[aq.index]).unwrap();
        q.try_set_size(aq.size)
            .expect("transport handed over a bad size");
        q.try_set_desc_table_address(GuestAddress(aq.desc))
            .expect("transport handed over a bad descriptor table address");
        q.try_set_avail_ring_address(GuestAddress(aq.avail))
            .expect("transport handed over a bad avail ring address");
        q.try_set_used_ring_address(GuestAddress(aq.used))
            .expect("transport handed over a bad used ring address");
        q.set_event_idx(a.acked & F_EVENT_IDX != 0);
        q.set_ready(true);
        assert!(q.is_valid(mem), "transport activated an invalid queue");
        let (next_avail, next_used) = a.positions[i];
        q.set_next_avail(next_avail);
        q.set_next_used(next_used);

        for _ in 0..2 * usize::from(aq.size) {
            let Some(chain) = q.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            for d in chain.clone() {
                std::hint::black_box((d.addr(), d.len(), d.is_write_only(), d.has_next()));
            }
            let mut data = Vec::new();
            if let Ok(r) = Reader::new(mem, chain.clone()) {
                let _ = r.take(MAX_CHAIN_BYTES).read_to_end(&mut data);
            }
            let mut written = 0;
            if let Ok(mut w) = Writer::new(mem, chain) {
                let n = data.len().min(w.available_bytes());
                if w.write_all(&data[..n]).is_ok() {
                    written = n as u32;
                }
            }
            let _ = q.add_used(mem, head, written);
        }
        if q.needs_notification(mem).unwrap_or(true) {
            let _ = irq.trigger();
        }
        a.positions[i] = (q.next_avail(), q.next_used());
    }
}

/// Fuzz bytes as operands; zeros once they run out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn bytes(&mut self, n: usize) -> &[u8] {
        let (h, t) = self.0.split_at(n.min(self.0.len()));
        self.0 = t;
        h
    }
    fn le(&mut self, n: usize) -> u64 {
        let mut b = [0u8; 8];
        let h = self.bytes(n);
        b[..h.len()].copy_from_slice(h);
        u64::from_le_bytes(b)
    }
    fn u8(&mut self) -> u8 {
        self.le(1) as u8
    }
    fn u16(&mut self) -> u16 {
        self.le(2) as u16
    }
    fn u32(&mut self) -> u32 {
        self.le(4) as u32
    }
}

fn write32(bus: &Bus, addr: u64, v: u32) {
    bus.write(addr, &v.to_le_bytes());
}

fn read32(bus: &Bus, addr: u64) -> u32 {
    let mut b = [0u8; 4];
    bus.read(addr, &mut b);
    u32::from_le_bytes(b)
}

fn run(data: &[u8]) {
    let slot = VirtioSlot::nth(0);
    let ranges = RAM.map(|(a, l)| (GuestAddress(a), l));
    let mem = GuestMemory::from_ranges(&ranges).unwrap();
    let irq = IrqLine::new().unwrap();
    let backend = Arc::new(Mutex::new(Backend::default()));
    let dev = FuzzDevice {
        backend: backend.clone(),
        mem: mem.clone(),
        config: 3u64.to_le_bytes(),
    };
    let transport = Arc::new(Mutex::new(
        MmioTransport::new(Box::new(dev), mem.clone(), irq.clone()).unwrap(),
    ));
    let mut bus = Bus::new();
    bus.insert(transport.clone(), slot.addr, slot.size).unwrap();

    let mut input = Input(data);
    while !input.0.is_empty() {
        let op = input.u8();
        let width = [1usize, 2, 4, 8][usize::from(op >> 4) & 3];
        match op % 7 {
            // Register or config write: any offset in the window (and a little past it).
            0 => {
                let off = u64::from(input.u16()) % (slot.size + 0x100);
                let v = input.bytes(width).to_vec();
                bus.write(slot.addr + off, &v);
            }
            // Register or config read.
            1 => {
                let off = u64::from(input.u16()) % (slot.size + 0x100);
                let mut b = vec![0u8; width];
                bus.read(slot.addr + off, &mut b);
                if width == 4 {
                    let v = u32::from_le_bytes(b.try_into().unwrap());
                    match off {
                        reg::MAGIC => assert_eq!(v, MMIO_MAGIC),
                        reg::VERSION => assert_eq!(v, MMIO_VERSION),
                        reg::VENDOR_ID => assert_eq!(v, VENDOR_ID),
                        _ => {}
                    }
                }
            }
            // The guest writes its RAM (descriptors, rings, buffers).
            2 => {
                let addr = input.u32() % ADDR_SPAN;
                let len = usize::from(input.u8());
                let bytes = input.bytes(len).to_vec();
                let _ = mem.write_slice(&bytes, GuestAddress(addr.into()));
            }
            // QueueNotify (no ioeventfd here: the transport kicks the eventfd), then the backend
            // serves what was kicked.
            3 => {
                write32(
                    &bus,
                    slot.addr + reg::QUEUE_NOTIFY,
                    u32::from(input.u8() % 4),
                );
                serve(&backend, &mem, &irq, false);
            }
            // The backend polls every queue (a spurious or event-idx-suppressed kick).
            4 => serve(&backend, &mem, &irq, true),
            // The guest takes the interrupt: InterruptStatus, then InterruptACK.
            5 => {
                let _ = irq.0.read();
                let s = read32(&bus, slot.addr + reg::INTERRUPT_STATUS);
                write32(
                    &bus,
                    slot.addr + reg::INTERRUPT_ACK,
                    s & u32::from(input.u8()),
                );
            }
            // A whole driver initialisation with fuzzed values (a shortcut to activation).
            _ => {
                let a = slot.addr;
                let feat = input.le(8);
                write32(&bus, a + reg::STATUS, status::ACKNOWLEDGE);
                write32(&bus, a + reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
                write32(&bus, a + reg::DRIVER_FEATURES_SEL, 0);
                write32(&bus, a + reg::DRIVER_FEATURES, feat as u32);
                write32(&bus, a + reg::DRIVER_FEATURES_SEL, 1);
                write32(&bus, a + reg::DRIVER_FEATURES, (feat >> 32) as u32);
                let s = read32(&bus, a + reg::STATUS);
                write32(&bus, a + reg::STATUS, s | status::FEATURES_OK);
                for q in 0..MAX_SIZES.len() as u32 {
                    write32(&bus, a + reg::QUEUE_SEL, q);
                    write32(&bus, a + reg::QUEUE_NUM, input.u16().into());
                    write32(&bus, a + reg::QUEUE_DESC_LOW, input.u32());
                    write32(&bus, a + reg::QUEUE_DRIVER_LOW, input.u32());
                    write32(&bus, a + reg::QUEUE_DEVICE_LOW, input.u32());
                    write32(&bus, a + reg::QUEUE_READY, (input.u8() & 1).into());
                }
                let s = read32(&bus, a + reg::STATUS);
                write32(&bus, a + reg::STATUS, s | status::DRIVER_OK);
            }
        }

        // The transport and the device agree on whether it runs, and it runs only in DRIVER_OK.
        let t = transport.lock().unwrap();
        let active = backend.lock().unwrap().active.is_some();
        assert_eq!(t.is_activated(), active, "transport and device disagree");
        if active {
            let s = t.status();
            assert_eq!(
                s & (status::FEATURES_OK | status::DRIVER_OK),
                status::FEATURES_OK | status::DRIVER_OK,
                "device active in status {s:#x}"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| run(data));
