//! A fake guest driver: negotiates through the virtio-mmio registers as Linux does, builds split
//! rings in guest memory and kicks through QueueNotify (which writes the kick eventfd, as the
//! KVM ioeventfd would). The device's event loop runs on the test thread (`run`).

use super::*;
use crate::devices::virtio_mmio::MmioTransport;

pub(crate) const VRING_DESC_F_NEXT: u16 = 1;
pub(crate) const VRING_DESC_F_WRITE: u16 = 2;
pub(crate) const VRING_DESC_F_INDIRECT: u16 = 4;
pub(crate) const QSIZE: u16 = 256;

pub(crate) fn qbase(q: usize) -> u64 {
    0x10_0000 * (q as u64 + 1)
}

pub(crate) struct Driver {
    pub t: MmioTransport,
    pub mem: GuestMemory,
    /// The device's event loop when it runs on the test thread (None: on its own thread).
    pub em: Option<(NetEventManager, SubscriberId)>,
    pub irq: IrqLine,
    next_desc: [u16; 2],
    avail_idx: [u16; 2],
}

impl Driver {
    /// A device on `tap`, negotiated and running (DRIVER_OK), activation processed, its event
    /// loop run by `run`.
    pub fn new(cfg: &NetConfig, tap: Tap) -> Self {
        let (mut d, em, id) = Driver::create(cfg, tap);
        d.em = Some((em, id));
        d.start();
        d
    }

    /// A device not started yet, and an event loop holding its handler (to run elsewhere).
    pub fn create(cfg: &NetConfig, tap: Tap) -> (Self, NetEventManager, SubscriberId) {
        let mem = crate::memory::create(64 << 20).unwrap();
        let irq = IrqLine::new().unwrap();
        let (t, handler) = new_device(cfg, tap, &mem, irq.clone()).unwrap();
        let mut em = NetEventManager::new().unwrap();
        let id = em.add_subscriber(handler);
        let d = Driver {
            t,
            mem,
            em: None,
            irq,
            next_desc: [0; 2],
            avail_idx: [0; 2],
        };
        (d, em, id)
    }

    /// What the Linux driver does up to DRIVER_OK, on fresh rings.
    pub fn start(&mut self) {
        self.write_reg(reg::STATUS, 0);
        self.write_reg(reg::STATUS, status::ACKNOWLEDGE);
        self.write_reg(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        self.write_reg(reg::DEVICE_FEATURES_SEL, 0);
        let lo = self.reg(reg::DEVICE_FEATURES);
        self.write_reg(reg::DEVICE_FEATURES_SEL, 1);
        let hi = self.reg(reg::DEVICE_FEATURES);
        let offered = (u64::from(hi) << 32) | u64::from(lo);
        // Everything offered (VERSION_1, INDIRECT_DESC, MAC, STATUS, MTU when there).
        self.write_reg(reg::DRIVER_FEATURES_SEL, 0);
        self.write_reg(reg::DRIVER_FEATURES, offered as u32);
        self.write_reg(reg::DRIVER_FEATURES_SEL, 1);
        self.write_reg(reg::DRIVER_FEATURES, (offered >> 32) as u32);
        self.write_reg(reg::STATUS, STATUS_FEATURES_OK);
        assert_eq!(
            self.reg(reg::STATUS),
            STATUS_FEATURES_OK,
            "features accepted"
        );
        for q in 0..2 {
            let b = qbase(q);
            // Fresh rings: zero the avail and used rings.
            self.mem
                .write_slice(&[0u8; 0x2000], GuestAddress(b + 0x1000))
                .unwrap();
            self.write_reg(reg::QUEUE_SEL, q as u32);
            assert_eq!(self.reg(reg::QUEUE_NUM_MAX), u32::from(QSIZE));
            self.write_reg(reg::QUEUE_NUM, u32::from(QSIZE));
            self.write_reg(reg::QUEUE_DESC_LOW, b as u32);
            self.write_reg(reg::QUEUE_DESC_HIGH, 0);
            self.write_reg(reg::QUEUE_DRIVER_LOW, (b + 0x1000) as u32);
            self.write_reg(reg::QUEUE_DRIVER_HIGH, 0);
            self.write_reg(reg::QUEUE_DEVICE_LOW, (b + 0x2000) as u32);
            self.write_reg(reg::QUEUE_DEVICE_HIGH, 0);
            self.write_reg(reg::QUEUE_READY, 1);
        }
        self.next_desc = [0; 2];
        self.avail_idx = [0; 2];
        self.write_reg(reg::STATUS, STATUS_FEATURES_OK | status::DRIVER_OK);
        assert!(self.t.is_activated(), "status {:#x}", self.t.status());
        assert_eq!(self.t.status() & status::DEVICE_NEEDS_RESET, 0);
        if self.em.is_some() {
            // The activation event.
            let end = Instant::now() + Duration::from_secs(5);
            while self.run(10) == 0 {
                assert!(Instant::now() < end, "activation never reached the handler");
            }
        }
    }

    /// Reset by the driver, then a full start again.
    pub fn restart(&mut self) {
        self.write_reg(reg::STATUS, 0);
        self.start();
    }

    pub fn reg(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    pub fn write_reg(&mut self, off: u64, v: u32) {
        self.t.write(off, &v.to_le_bytes());
    }

    /// One round of the event loop; the number of events dispatched. Without a loop here,
    /// just waits.
    pub fn run(&mut self, ms: i32) -> usize {
        match &mut self.em {
            Some((em, _)) => em.run_with_timeout(ms).unwrap(),
            None => {
                std::thread::sleep(Duration::from_millis(ms as u64));
                0
            }
        }
    }

    fn handler(&mut self) -> &mut NetHandler {
        let (em, id) = self.em.as_mut().expect("event loop on the test thread");
        em.subscriber_mut(*id).unwrap()
    }

    pub fn tap_listening(&mut self) -> bool {
        self.handler().tap_listening()
    }

    pub fn stats(&mut self) -> &NetStats {
        self.handler().stats()
    }

    /// Writes descriptor `i` of a table at `table`.
    pub fn write_desc(&self, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let e = table + 16 * u64::from(i);
        self.mem.write_obj(addr, GuestAddress(e)).unwrap();
        self.mem.write_obj(len, GuestAddress(e + 8)).unwrap();
        self.mem.write_obj(flags, GuestAddress(e + 12)).unwrap();
        self.mem.write_obj(next, GuestAddress(e + 14)).unwrap();
    }

    fn alloc(&mut self, q: usize) -> u16 {
        let i = self.next_desc[q];
        self.next_desc[q] = (i + 1) % QSIZE;
        i
    }

    /// Puts a chain of (address, length, device-writable) buffers in the descriptor table and
    /// makes it available; returns the head index.
    pub fn push_chain(&mut self, q: usize, bufs: &[(u64, u32, bool)]) -> u16 {
        let ids: Vec<u16> = bufs.iter().map(|_| self.alloc(q)).collect();
        for (k, (addr, len, w)) in bufs.iter().enumerate() {
            let mut flags = if *w { VRING_DESC_F_WRITE } else { 0 };
            let next = ids.get(k + 1).copied().unwrap_or(0);
            if k + 1 < bufs.len() {
                flags |= VRING_DESC_F_NEXT;
            }
            self.write_desc(qbase(q), ids[k], *addr, *len, flags, next);
        }
        self.publish(q, ids[0]);
        ids[0]
    }

    /// One descriptor pointing at an indirect table at `table` holding `bufs`.
    pub fn push_indirect(&mut self, q: usize, table: u64, bufs: &[(u64, u32, bool)]) -> u16 {
        for (k, (addr, len, w)) in bufs.iter().enumerate() {
            let mut flags = if *w { VRING_DESC_F_WRITE } else { 0 };
            if k + 1 < bufs.len() {
                flags |= VRING_DESC_F_NEXT;
            }
            self.write_desc(table, k as u16, *addr, *len, flags, k as u16 + 1);
        }
        let head = self.alloc(q);
        let len = 16 * bufs.len() as u32;
        self.write_desc(qbase(q), head, table, len, VRING_DESC_F_INDIRECT, 0);
        self.publish(q, head);
        head
    }

    /// Makes `head` available (the ring entry, then the index, as a driver does).
    pub fn publish(&mut self, q: usize, head: u16) {
        let avail = qbase(q) + 0x1000;
        let slot = u64::from(self.avail_idx[q] % QSIZE);
        self.mem
            .write_obj(head, GuestAddress(avail + 4 + 2 * slot))
            .unwrap();
        self.avail_idx[q] = self.avail_idx[q].wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx[q], GuestAddress(avail + 2))
            .unwrap();
    }

    /// Sets the avail ring's flags (1 = VRING_AVAIL_F_NO_INTERRUPT).
    pub fn set_avail_flags(&mut self, q: usize, flags: u16) {
        self.mem
            .write_obj(flags, GuestAddress(qbase(q) + 0x1000))
            .unwrap();
    }

    /// Sets the avail index directly (hostile drivers).
    pub fn set_avail_idx(&mut self, q: usize, idx: u16) {
        self.avail_idx[q] = idx;
        self.mem
            .write_obj(idx, GuestAddress(qbase(q) + 0x1000 + 2))
            .unwrap();
    }

    pub fn kick(&mut self, q: usize) {
        self.write_reg(reg::QUEUE_NOTIFY, q as u32);
    }

    pub fn used_idx(&self, q: usize) -> u16 {
        self.mem
            .read_obj(GuestAddress(qbase(q) + 0x2000 + 2))
            .unwrap()
    }

    /// Used element `n`: (descriptor id, length).
    pub fn used(&self, q: usize, n: u16) -> (u32, u32) {
        let e = qbase(q) + 0x2000 + 4 + 8 * u64::from(n % QSIZE);
        (
            self.mem.read_obj(GuestAddress(e)).unwrap(),
            self.mem.read_obj(GuestAddress(e + 4)).unwrap(),
        )
    }

    /// Runs the event loop until queue `q` has `n` used entries (5 s at most).
    pub fn pump_until(&mut self, q: usize, n: u16) {
        let end = Instant::now() + Duration::from_secs(5);
        while self.used_idx(q) < n {
            assert!(
                Instant::now() < end,
                "queue {q}: {} used entries, {n} expected",
                self.used_idx(q)
            );
            self.run(10);
        }
    }
}
