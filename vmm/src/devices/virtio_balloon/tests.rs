//! The balloon as a Linux driver drives it: negotiation through the virtio-mmio registers, PFN
//! arrays on the inflate queue, free blocks on the reporting queue, the target through the
//! control channel's words; and what a hostile driver may send.

use std::os::fd::AsRawFd;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::*;
use crate::devices::virtio_mmio::{reg, status, INT_CONFIG, INT_VRING};
use crate::devices::BusDevice;

const MEM: u64 = 64 << 20;
const QSIZE: u16 = 16;
const F_WRITE: u16 = 2;

fn qbase(q: usize) -> u64 {
    0x10_0000 * (q as u64 + 1)
}

struct Guest {
    t: MmioTransport,
    b: Balloon,
    mem: GuestMemory,
    irq: IrqLine,
    avail: [u16; 3],
}

impl Guest {
    fn reg(&mut self, off: u64) -> u32 {
        let mut v = [0u8; 4];
        self.t.read(off, &mut v);
        u32::from_le_bytes(v)
    }
    fn write_reg(&mut self, off: u64, v: u32) {
        self.t.write(off, &v.to_le_bytes());
    }

    /// A device, not started.
    fn new() -> Guest {
        let mem = crate::memory::create(MEM).unwrap();
        let irq = IrqLine::new().unwrap();
        let (t, b) = new_device(&mem, irq.clone()).unwrap();
        Guest {
            t,
            b,
            mem,
            irq,
            avail: [0; 3],
        }
    }

    /// Negotiates `features` and starts the device with the queues they imply.
    fn start(&mut self, features: u64) {
        self.write_reg(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        self.write_reg(reg::DRIVER_FEATURES_SEL, 0);
        self.write_reg(reg::DRIVER_FEATURES, features as u32);
        self.write_reg(reg::DRIVER_FEATURES_SEL, 1);
        self.write_reg(reg::DRIVER_FEATURES, (features >> 32) as u32);
        let ok = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        self.write_reg(reg::STATUS, ok);
        assert_eq!(self.reg(reg::STATUS), ok, "features accepted");
        let queues = if features & VIRTIO_BALLOON_F_REPORTING != 0 {
            3
        } else {
            2
        };
        for q in 0..queues {
            let b = qbase(q);
            self.mem
                .write_slice(&[0u8; 0x3000], GuestAddress(b))
                .unwrap();
            self.write_reg(reg::QUEUE_SEL, q as u32);
            self.write_reg(reg::QUEUE_NUM, u32::from(QSIZE));
            self.write_reg(reg::QUEUE_DESC_LOW, b as u32);
            self.write_reg(reg::QUEUE_DRIVER_LOW, (b + 0x1000) as u32);
            self.write_reg(reg::QUEUE_DEVICE_LOW, (b + 0x2000) as u32);
            self.write_reg(reg::QUEUE_READY, 1);
        }
        self.write_reg(reg::STATUS, ok | status::DRIVER_OK);
        assert!(self.t.is_activated());
    }

    /// One buffer on queue `q`, made available and kicked; then the device serves the queue.
    fn send(&mut self, q: usize, addr: u64, len: u32, writable: bool) {
        let i = self.avail[q] % QSIZE;
        let d = qbase(q) + 16 * u64::from(i);
        self.mem.write_obj(addr, GuestAddress(d)).unwrap();
        self.mem.write_obj(len, GuestAddress(d + 8)).unwrap();
        let flags = if writable { F_WRITE } else { 0 };
        self.mem.write_obj(flags, GuestAddress(d + 12)).unwrap();
        let avail = qbase(q) + 0x1000;
        self.mem
            .write_obj(i, GuestAddress(avail + 4 + 2 * u64::from(i)))
            .unwrap();
        self.avail[q] = self.avail[q].wrapping_add(1);
        self.mem
            .write_obj(self.avail[q], GuestAddress(avail + 2))
            .unwrap();
        self.write_reg(reg::QUEUE_NOTIFY, q as u32);
        self.b.process(q);
    }

    fn used_idx(&self, q: usize) -> u16 {
        self.mem
            .read_obj(GuestAddress(qbase(q) + 0x2000 + 2))
            .unwrap()
    }

    /// Sends the PFNs on the inflate queue, as an array at 0x8000.
    fn inflate(&mut self, pfns: &[u32]) {
        let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
        self.mem.write_slice(&bytes, GuestAddress(0x8000)).unwrap();
        self.send(INFLATE, 0x8000, bytes.len() as u32, false);
    }

    /// Bytes of the guest-RAM memfd that hold pages.
    fn memfd_bytes(&self) -> u64 {
        let r = self.mem.iter().next().unwrap();
        let fd = r.file_offset().unwrap().file().as_raw_fd();
        // SAFETY: fstat into a zeroed struct on an open fd.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::fstat(fd, &mut st) }, 0);
        st.st_blocks as u64 * 512
    }

    fn fill(&self, addr: u64, len: usize) {
        self.mem
            .write_slice(&vec![0xa5u8; len], GuestAddress(addr))
            .unwrap();
    }

    fn is_zero(&self, addr: u64, len: usize) -> bool {
        let mut v = vec![1u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v.iter().all(|b| *b == 0)
    }
}

#[test]
fn identity_features_and_config_space() {
    let mut g = Guest::new();
    assert_eq!(g.reg(reg::DEVICE_ID), VIRTIO_ID_BALLOON);
    g.write_reg(reg::DEVICE_FEATURES_SEL, 0);
    assert_eq!(g.reg(reg::DEVICE_FEATURES), 1 << 5, "free page reporting");
    g.write_reg(reg::DEVICE_FEATURES_SEL, 1);
    assert_eq!(g.reg(reg::DEVICE_FEATURES), 1, "VERSION_1");
    g.b.set_target_mib(16).unwrap();
    assert_eq!(g.reg(reg::CONFIG), 4096, "num_pages in 4 KiB pages");
    // Before the driver runs nobody is interrupted; it reads the target when it starts.
    assert!(g.irq.0.read().is_err());
    // `actual` is the driver's; num_pages is not.
    g.write_reg(reg::CONFIG + 4, 1024);
    g.write_reg(reg::CONFIG, 7);
    assert_eq!(g.reg(reg::CONFIG), 4096);
    assert_eq!(g.b.actual_mib(), 4);
    assert_eq!(g.b.target_mib(), 16);
    // More than the guest has is refused.
    let e = g.b.set_target_mib(65).unwrap_err().to_string();
    assert!(e.contains("65 MiB is more than the guest's 64 MiB"), "{e}");
}

#[test]
fn a_new_target_interrupts_a_running_driver() {
    let mut g = Guest::new();
    g.start(VIRTIO_F_VERSION_1 | VIRTIO_BALLOON_F_REPORTING);
    g.b.set_target_mib(8).unwrap();
    assert_eq!(g.irq.0.read().unwrap(), 1);
    assert_eq!(g.reg(reg::INTERRUPT_STATUS) & INT_CONFIG, INT_CONFIG);
    assert_eq!(g.reg(reg::CONFIG), 2048);
}

#[test]
fn inflated_pages_are_punched_out_of_guest_ram() {
    let mut g = Guest::new();
    g.start(VIRTIO_F_VERSION_1 | VIRTIO_BALLOON_F_REPORTING);
    g.fill(0x200_0000, 1 << 20);
    let before = g.memfd_bytes();
    // 256 PFNs (1 MiB), out of order and in two runs, as Linux may send them.
    let mut pfns: Vec<u32> = (0x2080..0x2100).chain(0x2000..0x2080).collect();
    pfns.swap(3, 7);
    g.inflate(&pfns);
    assert_eq!(g.used_idx(INFLATE), 1);
    assert!(g.irq.0.read().is_ok());
    assert_eq!(g.reg(reg::INTERRUPT_STATUS) & INT_VRING, INT_VRING);
    assert_eq!(g.b.released_bytes(), 1 << 20);
    // (Before reading them back: a read fault on a shmem hole allocates a page again. The PFN
    // array's page was written after `before`.)
    assert!(
        g.memfd_bytes() + (1 << 20) <= before + 4096,
        "memfd held {before} bytes, now {}",
        g.memfd_bytes()
    );
    assert!(g.is_zero(0x200_0000, 1 << 20), "the guest reads zeroes");
    // Deflating asks nothing of the host: the chain is just returned.
    g.send(DEFLATE, 0x8000, 4, false);
    assert_eq!(g.used_idx(DEFLATE), 1);
}

#[test]
fn reported_free_blocks_are_punched_out() {
    let mut g = Guest::new();
    g.start(VIRTIO_F_VERSION_1 | VIRTIO_BALLOON_F_REPORTING);
    g.fill(0x140_0000, 4 << 20);
    g.send(REPORTING, 0x160_0000, 2 << 20, true);
    assert_eq!(g.used_idx(REPORTING), 1);
    assert!(g.is_zero(0x160_0000, 2 << 20));
    assert!(!g.is_zero(0x140_0000, 2 << 20), "only the reported block");
    assert_eq!(g.b.released_bytes(), 2 << 20);
}

#[test]
fn without_reporting_negotiated_there_are_two_queues() {
    let mut g = Guest::new();
    g.start(VIRTIO_F_VERSION_1);
    g.fill(0x200_0000, 4096);
    g.inflate(&[0x2000]);
    assert!(g.is_zero(0x200_0000, 4096));
    // A kick on queue 2 finds no ring: nothing happens.
    g.b.process(REPORTING);
    assert_eq!(g.used_idx(REPORTING), 0);
}

#[test]
fn hostile_buffers_touch_nothing_outside_guest_ram() {
    let mut g = Guest::new();
    g.start(VIRTIO_F_VERSION_1 | VIRTIO_BALLOON_F_REPORTING);
    g.fill(0, 0x1000);
    // PFNs past the end of RAM, and u32::MAX.
    g.inflate(&[(MEM / PAGE_SIZE) as u32, u32::MAX]);
    assert_eq!(g.used_idx(INFLATE), 1, "returned, not stuck");
    // A block running past the end; one that wraps; one not page aligned (only whole pages
    // inside it go).
    g.send(REPORTING, MEM - 4096, 8192, true);
    g.send(REPORTING, u64::MAX - 4095, 8192, true);
    g.fill(0x300_0000, 3 * 4096);
    g.send(REPORTING, 0x300_0000 + 100, 2 * 4096, true);
    assert_eq!(g.used_idx(REPORTING), 3);
    assert!(!g.is_zero(0x300_0000, 4096), "partial first page kept");
    assert!(g.is_zero(0x300_1000, 4096), "whole page inside released");
    assert!(!g.is_zero(0x300_2000, 100), "partial last page kept");
    // A writable descriptor in an inflate chain is refused.
    g.fill(0x200_0000, 4096);
    g.mem
        .write_slice(&0x2000u32.to_le_bytes(), GuestAddress(0x8000))
        .unwrap();
    g.send(INFLATE, 0x8000, 4, true);
    assert!(!g.is_zero(0x200_0000, 4096));
    assert_eq!(g.b.released_bytes(), 4096);
    assert!(!g.is_zero(0, 0x1000), "page 0 untouched");
}

#[test]
fn runs_of_consecutive_pfns() {
    assert_eq!(
        coalesce([5, 6, 7, 9, 10, 3].into_iter()),
        vec![(5, 3), (9, 2), (3, 1)]
    );
    assert!(coalesce(std::iter::empty()).is_empty());
}

#[test]
fn reset_forgets_the_rings_and_actual() {
    let mut g = Guest::new();
    g.start(VIRTIO_F_VERSION_1 | VIRTIO_BALLOON_F_REPORTING);
    g.write_reg(reg::CONFIG + 4, 512);
    g.write_reg(reg::STATUS, 0);
    assert_eq!(g.b.actual_mib(), 0);
    g.fill(0x200_0000, 4096);
    g.b.process(INFLATE);
    assert!(!g.is_zero(0x200_0000, 4096));
}

#[test]
fn control_requests() {
    let g = Guest::new();
    let a = |l: &str| crate::control::answer(Some(&g.b), l);
    assert_eq!(a("balloon set 32"), "ok");
    assert_eq!(a("balloon get"), "ok target=32 actual=0 released=0");
    assert!(a("balloon set 1000").starts_with("error balloon target 1000 MiB"));
    assert!(a("balloon set -1").starts_with("error bad MiB"));
    assert!(a("balloon").starts_with("error expected"));
    assert!(a("reboot").starts_with("error unknown request"));
    assert!(crate::control::answer(None, "balloon get").contains("no balloon"));
}
