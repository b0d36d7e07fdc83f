//! The virtio-net device against real taps: each test runs in a thread with its own network
//! namespace (`unshare(CLONE_NEWNET)` is per thread), creates a tap there (`ip tuntap`), and
//! drives the device as the Linux driver does, through the virtio-mmio transport and rings in
//! real guest memory (memfd `GuestMemoryMmap`). The host side of the tap is an AF_PACKET socket
//! bound to it: frames the guest sends arrive there, frames sent there reach the guest. Needs
//! root and `ip` (iproute2).

use super::device::{NetStats, CONFIG_SIZE};
use super::*;
use crate::config::MacAddr;
use crate::devices::vhost_user::VIRTIO_RING_F_INDIRECT_DESC;
use crate::devices::virtio_mmio::{reg, status, INT_VRING, VIRTIO_F_VERSION_1};
use crate::devices::BusDevice;
use event_manager::SubscriberId;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress};

mod driver;
mod errors;
mod seccomp;

use driver::Driver;

/// Ethertype of the test frames (IEEE 802 local experimental), so stray kernel traffic on the
/// tap is told apart.
pub(super) const ETHERTYPE: u16 = 0x88b5;
pub(super) const GUEST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
pub(super) const HOST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];

/// Runs `f` on a thread in a fresh network namespace (IPv6 off there, so the kernel sends
/// nothing on its own through the taps) and returns its result; panics propagate.
pub(super) fn in_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: plain syscall; it only changes this thread's network namespace.
        let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            r,
            0,
            "unshare(CLONE_NEWNET) (tests need root): {}",
            std::io::Error::last_os_error()
        );
        // /proc/sys/net shows the namespace of the thread that opens it.
        for k in ["all", "default"] {
            let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{k}/disable_ipv6"), "1");
        }
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Runs a shell command (in the calling thread's network namespace) and checks it succeeded.
pub(super) fn sh(cmd: &str) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A persistent tap in the current namespace (as CNI plugins or `ip tuntap` make them), down.
pub(super) fn make_tap(name: &str) {
    sh(&format!("ip tuntap add dev {name} mode tap"));
}

/// Opens the tap, then brings it up. In this order the kernel attaches the tap's qdisc at once;
/// a tap that was up before gets it from the link-watch worker up to a second after the device
/// attaches (carrier on), and frames sent before that are dropped.
pub(super) fn open_up(name: &str) -> Tap {
    let tap = Tap::open(name).unwrap();
    sh(&format!("ip link set {name} up"));
    tap
}

pub(super) fn net_config(tap: &str, mtu: Option<u32>) -> NetConfig {
    NetConfig {
        tap: tap.into(),
        fd: None,
        mac: MacAddr(GUEST_MAC),
        mtu,
    }
}

/// An Ethernet frame of `len` bytes (header included) with a recognisable payload.
pub(super) fn frame(dst: [u8; 6], src: [u8; 6], len: usize, seed: u8) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ETHERTYPE.to_be_bytes());
    f.extend((0..len - 14).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)));
    f
}

/// An AF_PACKET socket bound to one interface and ethertype: the host side of a tap. Bind it
/// once the interface is up (bound to a down interface, its first send fails with ENETDOWN).
pub(super) struct PacketSocket(OwnedFd);

impl PacketSocket {
    pub(super) fn bind(ifname: &str) -> Self {
        let proto = ETHERTYPE.to_be();
        // SAFETY: plain syscalls on a fresh socket owned below; sockaddr_ll is fully initialised.
        unsafe {
            let fd = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(proto),
            );
            assert!(
                fd >= 0,
                "packet socket: {}",
                std::io::Error::last_os_error()
            );
            let fd = OwnedFd::from_raw_fd(fd);
            let name = std::ffi::CString::new(ifname).unwrap();
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
            assert!(sll.sll_ifindex > 0, "no interface {ifname}");
            let r = libc::bind(
                fd.as_raw_fd(),
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 200_000,
            };
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const libc::timeval as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            );
            PacketSocket(fd)
        }
    }

    /// Receive buffer size (SO_RCVBUFFORCE: above the sysctl limit, root only).
    pub(super) fn set_rcvbuf(&self, bytes: i32) {
        // SAFETY: plain setsockopt with a valid int.
        let r = unsafe {
            libc::setsockopt(
                self.0.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                &bytes as *const i32 as *const libc::c_void,
                4,
            )
        };
        assert_eq!(r, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
    }

    /// Sends a frame out of the interface: the tap queues it for the device to read.
    pub(super) fn send(&self, f: &[u8]) {
        // SAFETY: `f` is valid for reads of its length.
        let n = unsafe { libc::send(self.0.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
        assert_eq!(
            n,
            f.len() as isize,
            "send: {}",
            std::io::Error::last_os_error()
        );
    }

    /// Next frame the interface received (from the device), None after 200 ms.
    pub(super) fn recv(&self) -> Option<Vec<u8>> {
        let mut b = vec![0u8; 65536];
        // SAFETY: `b` is valid for writes of its length.
        let n = unsafe { libc::recv(self.0.as_raw_fd(), b.as_mut_ptr().cast(), b.len(), 0) };
        (n >= 0).then(|| {
            b.truncate(n as usize);
            b
        })
    }

    /// Waits up to `timeout` for a frame, pumping `d`'s event loop meanwhile.
    pub(super) fn recv_pumping(&self, d: &mut Driver, timeout: Duration) -> Option<Vec<u8>> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            d.run(10);
            if let Some(f) = self.recv() {
                return Some(f);
            }
        }
        None
    }
}

#[test]
fn features_and_config_space() {
    let mem = crate::memory::create(64 << 20).unwrap();
    let dev = NetDevice::new(&net_config("t", Some(9000)), mem.clone()).unwrap();
    use crate::devices::virtio_mmio::VirtioDevice;
    assert_eq!(dev.device_type(), VIRTIO_ID_NET);
    assert_eq!(dev.queue_max_sizes(), vec![256, 256]);
    assert_eq!(
        dev.features(),
        VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_INDIRECT_DESC
            | VIRTIO_NET_F_MAC
            | VIRTIO_NET_F_STATUS
            | VIRTIO_NET_F_MTU
    );
    let mut c = [0xffu8; CONFIG_SIZE];
    dev.read_config(0, &mut c);
    assert_eq!(&c[..6], &GUEST_MAC);
    assert_eq!(u16::from_le_bytes([c[6], c[7]]), VIRTIO_NET_S_LINK_UP);
    assert_eq!(u16::from_le_bytes([c[10], c[11]]), 9000);
    // Byte-wise, partly and wholly out of range, huge offsets: zeros past the end.
    let mut b = [0xffu8; 4];
    dev.read_config(10, &mut b);
    assert_eq!(b, [0x28, 0x23, 0, 0]);
    dev.read_config(u64::MAX, &mut b);
    assert_eq!(b, [0; 4]);

    let dev = NetDevice::new(&net_config("t", None), mem).unwrap();
    assert_eq!(
        dev.features() & VIRTIO_NET_F_MTU,
        0,
        "no MTU feature without mtu"
    );
}

#[test]
fn ioctl_numbers_match_linux() {
    assert_eq!(tap::TUNSETIFF, 0x4004_54ca);
    assert_eq!(tap::TUNSETOFFLOAD, 0x4004_54d0);
    assert_eq!(tap::TUNSETVNETHDRSZ, 0x4004_54d8);
    assert_eq!(tap::TUNGETIFF, 0x8004_54d2);
}

#[test]
fn an_inherited_tap_fd_is_checked_and_taken_over() {
    use std::os::fd::AsRawFd;
    in_netns(|| {
        make_tap("tfd");
        let opened = Tap::open("tfd").unwrap();
        // What a jailed VMM inherits: another fd of a file attached to the tap.
        let dup = || unsafe { libc::dup(opened.as_raw_fd()) };
        let tap = Tap::from_fd("tfd", dup()).unwrap();
        assert_eq!(tap.name(), "tfd");
        let s = Tap::from_fd("other", dup()).unwrap_err().to_string();
        assert!(s.contains("is attached to \"tfd\", not to it"), "{s}");
        let null = std::fs::File::open("/dev/null").unwrap();
        let fd = unsafe { libc::dup(null.as_raw_fd()) };
        let s = Tap::from_fd("tfd", fd).unwrap_err().to_string();
        assert!(s.contains("is not an attached tap"), "{s}");
        let s = Tap::from_fd("tfd", 999).unwrap_err().to_string();
        assert!(s.contains("fd 999 is not open"), "{s}");
    });
}

#[test]
fn tap_open_errors_name_the_tap_and_the_errno() {
    in_netns(|| {
        let e = Tap::open("myvm-nosuch0").unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("myvm-nosuch0") && s.contains("os error 19"),
            "{s}"
        );
        // `lo` exists but is no tap.
        let s = Tap::open("lo").unwrap_err().to_string();
        assert!(
            s.contains("tap lo: TUNSETIFF")
                && s.contains("os error 22")
                && s.contains("is it a tap"),
            "{s}"
        );
        // A single-queue tap takes one user.
        make_tap("tbusy");
        let _first = Tap::open("tbusy").unwrap();
        let s = Tap::open("tbusy").unwrap_err().to_string();
        assert!(s.contains("tbusy") && s.contains("os error 16"), "{s}");
    });
}

#[test]
fn tx_frames_reach_the_tap_from_split_and_indirect_chains() {
    in_netns(|| {
        make_tap("ttx");
        let mut d = Driver::new(&net_config("ttx", Some(1500)), open_up("ttx"));
        let host = PacketSocket::bind("ttx");
        assert!(d.tap_listening(), "tap watched once the guest is running");

        // Header with offload requests the guest did not negotiate (NEEDS_CSUM, GSO TCPv4):
        // they must not reach the tap. Frame split header / 10 bytes / rest.
        let f = frame([0xff; 6], GUEST_MAC, 200, 1);
        let mut hdr = [0u8; VNET_HDR_LEN];
        hdr[0] = 1;
        hdr[1] = 1;
        hdr[4..6].copy_from_slice(&100u16.to_le_bytes());
        d.mem.write_slice(&hdr, GuestAddress(0x40_0000)).unwrap();
        d.mem
            .write_slice(&f[..10], GuestAddress(0x40_1000))
            .unwrap();
        d.mem
            .write_slice(&f[10..], GuestAddress(0x40_2000))
            .unwrap();
        let head = d.push_chain(
            TX_QUEUE,
            &[
                (0x40_0000, 12, false),
                (0x40_1000, 10, false),
                (0x40_2000, 190, false),
            ],
        );
        d.kick(TX_QUEUE);
        let got = host
            .recv_pumping(&mut d, Duration::from_secs(5))
            .expect("frame on the tap");
        assert_eq!(got, f);
        assert_eq!(d.used_idx(TX_QUEUE), 1);
        assert_eq!(d.used(TX_QUEUE, 0), (u32::from(head), 0));
        assert!(d.irq.0.read().is_ok(), "irqfd signalled");
        assert_eq!(d.reg(reg::INTERRUPT_STATUS) & INT_VRING, INT_VRING);
        d.write_reg(reg::INTERRUPT_ACK, INT_VRING);
        assert_eq!(d.reg(reg::INTERRUPT_STATUS), 0);

        // A full-size frame through an indirect table (as Linux sends with INDIRECT_DESC).
        let f = frame([0xff; 6], GUEST_MAC, 1514, 2);
        d.mem
            .write_slice(&[0u8; 12], GuestAddress(0x41_0000))
            .unwrap();
        d.mem.write_slice(&f, GuestAddress(0x41_1000)).unwrap();
        let head = d.push_indirect(
            TX_QUEUE,
            0x50_0000,
            &[(0x41_0000, 12, false), (0x41_1000, 1514, false)],
        );
        d.kick(TX_QUEUE);
        let got = host
            .recv_pumping(&mut d, Duration::from_secs(5))
            .expect("frame on the tap");
        assert_eq!(got, f);
        assert_eq!(d.used(TX_QUEUE, 1), (u32::from(head), 0));
        assert!(d.irq.0.read().is_ok(), "irqfd signalled");

        // While the driver sets VRING_AVAIL_F_NO_INTERRUPT (NAPI polling): no interrupt.
        d.set_avail_flags(TX_QUEUE, 1);
        d.write_reg(reg::INTERRUPT_ACK, INT_VRING);
        let head = d.push_chain(TX_QUEUE, &[(0x41_0000, 12, false), (0x41_1000, 60, false)]);
        d.kick(TX_QUEUE);
        assert!(host.recv_pumping(&mut d, Duration::from_secs(5)).is_some());
        assert_eq!(d.used(TX_QUEUE, 2), (u32::from(head), 0));
        assert!(d.irq.0.read().is_err(), "no interrupt while suppressed");
        assert_eq!(d.reg(reg::INTERRUPT_STATUS), 0);
        d.set_avail_flags(TX_QUEUE, 0);

        let s = d.stats();
        assert_eq!(NetStats::get(&s.tx_frames), 3);
        assert_eq!(NetStats::get(&s.tx_bytes), 200 + 1514 + 60);
        assert_eq!(NetStats::get(&s.tx_dropped), 0);
    });
}

#[test]
fn rx_frames_land_in_split_and_indirect_buffers() {
    in_netns(|| {
        make_tap("trx");
        let mut d = Driver::new(&net_config("trx", None), open_up("trx"));
        let host = PacketSocket::bind("trx");
        // Buffer 1: header and frame split over three descriptors (the header itself split).
        let h1 = d.push_chain(
            RX_QUEUE,
            &[
                (0x60_0000, 8, true),
                (0x60_1000, 20, true),
                (0x60_2000, 2000, true),
            ],
        );
        // Buffer 2: an indirect table of two descriptors.
        let h2 = d.push_indirect(
            RX_QUEUE,
            0x50_0000,
            &[(0x61_0000, 12, true), (0x61_1000, 2000, true)],
        );
        d.kick(RX_QUEUE);
        d.run(10);

        let f1 = frame(GUEST_MAC, HOST_MAC, 60, 3);
        host.send(&f1);
        d.pump_until(RX_QUEUE, 1);
        assert_eq!(d.used(RX_QUEUE, 0), (u32::from(h1), 72));
        let mut got = [0u8; 72];
        d.mem
            .read_slice(&mut got[..8], GuestAddress(0x60_0000))
            .unwrap();
        d.mem
            .read_slice(&mut got[8..28], GuestAddress(0x60_1000))
            .unwrap();
        d.mem
            .read_slice(&mut got[28..], GuestAddress(0x60_2000))
            .unwrap();
        let mut hdr = [0u8; 12];
        hdr[10] = 1; // num_buffers = 1, no flags, no GSO
        assert_eq!(&got[..12], &hdr);
        assert_eq!(&got[12..], &f1[..]);
        assert!(d.irq.0.read().is_ok(), "irqfd signalled");
        assert_eq!(d.reg(reg::INTERRUPT_STATUS) & INT_VRING, INT_VRING);

        let f2 = frame(GUEST_MAC, HOST_MAC, 1514, 4);
        host.send(&f2);
        d.pump_until(RX_QUEUE, 2);
        assert_eq!(d.used(RX_QUEUE, 1), (u32::from(h2), 12 + 1514));
        let mut got = vec![0u8; 1514];
        d.mem.read_slice(&mut got, GuestAddress(0x61_1000)).unwrap();
        assert_eq!(got, f2);
        let s = d.stats();
        assert_eq!(NetStats::get(&s.rx_frames), 2);
        assert_eq!(NetStats::get(&s.rx_bytes), 60 + 1514);
    });
}

#[test]
fn rx_without_guest_buffers_stops_reading_the_tap_until_a_kick() {
    in_netns(|| {
        make_tap("tnobuf");
        let mut d = Driver::new(&net_config("tnobuf", None), open_up("tnobuf"));
        let host = PacketSocket::bind("tnobuf");
        let f1 = frame(GUEST_MAC, HOST_MAC, 100, 5);
        let f2 = frame(GUEST_MAC, HOST_MAC, 100, 6);
        host.send(&f1);
        // The handler reads the frame, finds no buffer, keeps it and drops the tap from the
        // epoll set.
        let end = Instant::now() + Duration::from_secs(5);
        while d.tap_listening() {
            assert!(Instant::now() < end, "tap still watched without RX buffers");
            d.run(10);
        }
        // More frames queue in the kernel; nothing wakes the loop (no busy loop).
        host.send(&f2);
        assert_eq!(d.run(300), 0, "no events while the guest has no RX buffer");
        assert_eq!(d.used_idx(RX_QUEUE), 0);

        // The guest adds two buffers and kicks: the kept frame, then the queued one.
        let h1 = d.push_chain(RX_QUEUE, &[(0x60_0000, 4096, true)]);
        let h2 = d.push_chain(RX_QUEUE, &[(0x61_0000, 4096, true)]);
        d.kick(RX_QUEUE);
        d.pump_until(RX_QUEUE, 2);
        assert_eq!(d.used(RX_QUEUE, 0), (u32::from(h1), 112));
        assert_eq!(d.used(RX_QUEUE, 1), (u32::from(h2), 112));
        let mut got = vec![0u8; 100];
        d.mem.read_slice(&mut got, GuestAddress(0x60_000c)).unwrap();
        assert_eq!(got, f1, "frame order kept");
        d.mem.read_slice(&mut got, GuestAddress(0x61_000c)).unwrap();
        assert_eq!(got, f2);
        assert_eq!(NetStats::get(&d.stats().rx_dropped), 0);
        // Out of buffers again.
        host.send(&f1);
        let end = Instant::now() + Duration::from_secs(5);
        while d.tap_listening() {
            assert!(Instant::now() < end);
            d.run(10);
        }
    });
}

#[test]
fn full_rings_both_ways_are_served_in_rounds() {
    in_netns(|| {
        make_tap("tflood");
        let mut d = Driver::new(&net_config("tflood", None), open_up("tflood"));
        let host = PacketSocket::bind("tflood");
        host.set_rcvbuf(8 << 20);
        // A full TX ring (256 chains), one kick.
        for i in 0..256u64 {
            let f = frame([0xff; 6], GUEST_MAC, 60, i as u8);
            d.mem
                .write_slice(&[0u8; 12], GuestAddress(0x80_0000 + i * 0x100))
                .unwrap();
            d.mem
                .write_slice(&f, GuestAddress(0x80_0000 + i * 0x100 + 12))
                .unwrap();
            d.push_chain(TX_QUEUE, &[(0x80_0000 + i * 0x100, 72, false)]);
        }
        d.kick(TX_QUEUE);
        d.pump_until(TX_QUEUE, 256);
        let mut got = 0;
        while let Some(f) = host.recv() {
            assert_eq!(f, frame([0xff; 6], GUEST_MAC, 60, got as u8), "order kept");
            got += 1;
        }
        assert_eq!(got, 256);

        // 300 frames towards a guest with 256 buffers: 256 land, the rest wait (one kept by the
        // device, the others in the kernel) until the guest refills.
        for i in 0..256u64 {
            d.push_chain(RX_QUEUE, &[(0x100_0000 + i * 0x1000, 0x1000, true)]);
        }
        d.kick(RX_QUEUE);
        d.run(10);
        // Seeds repeat every 251 frames: the buffers of the second round (the first 44 of the
        // first) never hold a frame that passes for the one expected there.
        let seed = |n: u16| (n % 251) as u8;
        for i in 0..300u16 {
            host.send(&frame(GUEST_MAC, HOST_MAC, 60, seed(i)));
        }
        d.pump_until(RX_QUEUE, 256);
        let check = |d: &Driver, range: std::ops::Range<u16>| {
            for n in range {
                let (id, len) = d.used(RX_QUEUE, n);
                assert_eq!(len, 72);
                let mut f = [0u8; 60];
                let addr = 0x100_0000 + u64::from(id) * 0x1000 + 12;
                d.mem.read_slice(&mut f, GuestAddress(addr)).unwrap();
                let want = frame(GUEST_MAC, HOST_MAC, 60, seed(n));
                assert_eq!(f[..], want[..], "frame {n}");
            }
        };
        check(&d, 0..256);
        let end = Instant::now() + Duration::from_secs(5);
        while d.tap_listening() {
            assert!(Instant::now() < end, "tap still watched with the ring full");
            d.run(10);
        }
        for i in 0..44u64 {
            d.push_chain(RX_QUEUE, &[(0x100_0000 + i * 0x1000, 0x1000, true)]);
        }
        d.kick(RX_QUEUE);
        d.pump_until(RX_QUEUE, 300);
        check(&d, 256..300);
        assert_eq!(NetStats::get(&d.stats().rx_dropped), 0);
    });
}

#[test]
fn reset_stops_the_device_and_it_can_start_again() {
    in_netns(|| {
        make_tap("treset");
        let mut d = Driver::new(&net_config("treset", None), open_up("treset"));
        let host = PacketSocket::bind("treset");
        d.write_reg(reg::STATUS, 0);
        assert!(!d.t.is_activated());
        // A frame arrives: the tap is still watched until the handler sees the reset, then
        // dropped from the set; the frame waits in the kernel.
        host.send(&frame(GUEST_MAC, HOST_MAC, 64, 7));
        let end = Instant::now() + Duration::from_secs(5);
        while d.tap_listening() {
            assert!(Instant::now() < end, "tap watched after reset");
            d.run(10);
        }
        assert_eq!(d.run(200), 0, "quiet while reset");
        // The driver starts the device again (fresh rings): the waiting frame is delivered.
        d.restart();
        let h = d.push_chain(RX_QUEUE, &[(0x60_0000, 4096, true)]);
        d.kick(RX_QUEUE);
        d.pump_until(RX_QUEUE, 1);
        assert_eq!(d.used(RX_QUEUE, 0), (u32::from(h), 76));
    });
}

#[test]
fn attach_registers_the_device_with_a_real_kvm_vm() {
    in_netns(|| {
        make_tap("tkvm");
        let vm = crate::vstate::vm::Vm::new(1).expect("VM on /dev/kvm (tests need root)");
        let mem = crate::memory::create(64 << 20).unwrap();
        vm.set_memory(&mem).unwrap();
        let mut cfg = crate::config::VmmConfig::new("/k", "/s");
        cfg.net = vec![net_config("tkvm", Some(1400))];
        let taps = open_taps(&cfg).unwrap();
        let slots = cfg.virtio_slots();
        let mut mmio = Bus::new();
        let em = attach_all(&cfg, taps, &vm, &mem, &slots, &mut mmio)
            .unwrap()
            .expect("an event loop for one device");
        drop(em);
        // The transport answers at the slot.
        let mut b = [0u8; 4];
        assert!(mmio.read(slots[0].addr + reg::DEVICE_ID, &mut b));
        assert_eq!(u32::from_le_bytes(b), VIRTIO_ID_NET);
        // The queue-notify ioeventfds are registered: KVM refuses a second one for the same
        // address and queue index (EEXIST).
        let other = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
        for q in 0..2 {
            let e = vm
                .register_mmio_ioevent(&other, slots[0].addr + reg::QUEUE_NOTIFY, q)
                .unwrap_err();
            assert!(e.to_string().contains("os error 17"), "{e}");
        }
        vm.register_mmio_ioevent(&other, slots[0].addr + reg::QUEUE_NOTIFY, 2)
            .expect("no ioeventfd for a third queue");
    });
}

/// Status bits the Linux driver sets before DRIVER_OK.
pub(super) const STATUS_FEATURES_OK: u32 =
    status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
