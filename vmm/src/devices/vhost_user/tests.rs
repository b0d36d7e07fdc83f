//! Against the real `vhost-device-vsock` (and `virtiofsd`): negotiation through our virtio-mmio
//! transport, driven the way the Linux virtio-mmio driver does, and a real packet through the
//! vsock RX ring. Needs the daemons from `make image` (build/tools.env).

use super::*;
use crate::devices::virtio_mmio::{reg, status};
use crate::devices::BusDevice;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vm_memory::Bytes;

fn tool(var: &str, default: &str) -> PathBuf {
    if let Ok(p) = std::env::var(var) {
        return PathBuf::from(p);
    }
    let env = Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/tools.env");
    if let Ok(text) = std::fs::read_to_string(env) {
        for l in text.lines() {
            if let Some(p) = l.strip_prefix(&format!("{var}=")) {
                return PathBuf::from(p);
            }
        }
    }
    PathBuf::from(default)
}

/// A daemon and its directory, stopped and removed on drop.
struct Daemon {
    child: Child,
    dir: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait_path(p: &Path) {
    let end = Instant::now() + Duration::from_secs(10);
    while !p.exists() {
        assert!(Instant::now() < end, "{} never appeared", p.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("myvm-vmm-vu-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn start_vsock(name: &str) -> Daemon {
    let dir = tmpdir(name);
    let bin = tool(
        "MYVM_VHOST_VSOCK",
        "/var/cache/myvm/tools/vhost-device-vsock-0.3.0/bin/vhost-device-vsock",
    );
    let child = Command::new(&bin)
        .args(["--guest-cid", "3", "--socket"])
        .arg(dir.join("vhost.sock"))
        .arg("--uds-path")
        .arg(dir.join("hybrid.sock"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
    let d = Daemon { child, dir };
    wait_path(&d.dir.join("vhost.sock"));
    d
}

fn rd(t: &mut MmioTransport, off: u64) -> u32 {
    let mut d = [0u8; 4];
    t.read(off, &mut d);
    u32::from_le_bytes(d)
}
fn wr(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

const QSIZE: u16 = 64;
fn qbase(i: usize) -> u64 {
    0x10_0000 * (i as u64 + 1)
}

/// What the Linux driver does: reset, ACK, DRIVER, features (VERSION_1 only), FEATURES_OK,
/// queues, DRIVER_OK. Returns the offered features.
fn drive(t: &mut MmioTransport, queues: usize) -> u64 {
    assert_eq!(rd(t, reg::MAGIC), 0x7472_6976);
    assert_eq!(rd(t, reg::VERSION), 2);
    wr(t, reg::STATUS, 0);
    wr(t, reg::STATUS, status::ACKNOWLEDGE);
    wr(t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    wr(t, reg::DEVICE_FEATURES_SEL, 0);
    let lo = rd(t, reg::DEVICE_FEATURES);
    wr(t, reg::DEVICE_FEATURES_SEL, 1);
    let hi = rd(t, reg::DEVICE_FEATURES);
    let offered = u64::from(hi) << 32 | u64::from(lo);
    wr(t, reg::DRIVER_FEATURES_SEL, 0);
    wr(t, reg::DRIVER_FEATURES, 0);
    wr(t, reg::DRIVER_FEATURES_SEL, 1);
    wr(t, reg::DRIVER_FEATURES, 1); // VERSION_1
    wr(
        t,
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    assert_ne!(
        rd(t, reg::STATUS) & status::FEATURES_OK,
        0,
        "FEATURES_OK accepted"
    );
    for i in 0..queues {
        let b = qbase(i);
        wr(t, reg::QUEUE_SEL, i as u32);
        assert_eq!(rd(t, reg::QUEUE_NUM_MAX), u32::from(QUEUE_SIZE));
        wr(t, reg::QUEUE_NUM, u32::from(QSIZE));
        wr(t, reg::QUEUE_DESC_LOW, b as u32);
        wr(t, reg::QUEUE_DESC_HIGH, 0);
        wr(t, reg::QUEUE_DRIVER_LOW, (b + 0x1000) as u32);
        wr(t, reg::QUEUE_DRIVER_HIGH, 0);
        wr(t, reg::QUEUE_DEVICE_LOW, (b + 0x2000) as u32);
        wr(t, reg::QUEUE_DEVICE_HIGH, 0);
        wr(t, reg::QUEUE_READY, 1);
    }
    wr(t, reg::STATUS, 0xf);
    offered
}

#[test]
fn vsock_negotiation_and_data_both_ways_with_real_vhost_device_vsock() {
    let d = start_vsock("vsock");
    let mem = crate::memory::create(64 << 20).unwrap();
    let irq = IrqLine::new().unwrap();
    let dev = VhostUserDevice::connect(
        Kind::Vsock,
        &d.dir.join("vhost.sock"),
        mem.clone(),
        irq.clone(),
    )
    .expect("vhost-user handshake with vhost-device-vsock");
    assert_eq!(dev.vsock_guest_cid(), Some(3), "guest CID from GET_CONFIG");
    assert!(dev.protocol_features.is_some());
    let mut t = MmioTransport::new(Box::new(dev), mem.clone(), irq.clone()).unwrap();
    assert_eq!(rd(&mut t, reg::DEVICE_ID), VIRTIO_ID_VSOCK);
    // Config space as the guest driver reads it (guest_cid, le64).
    let mut cid = [0u8; 8];
    t.read(reg::CONFIG, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), 3);

    // Post 8 device-writable 4 KiB buffers on the RX queue (0) before activation.
    let (desc, avail) = (qbase(0), qbase(0) + 0x1000);
    for k in 0..8u64 {
        let e = desc + 16 * k;
        mem.write_obj(0x80_0000 + k * 0x1000, GuestAddress(e))
            .unwrap();
        mem.write_obj(0x1000u32, GuestAddress(e + 8)).unwrap();
        mem.write_obj(2u16, GuestAddress(e + 12)).unwrap(); // VIRTQ_DESC_F_WRITE
        mem.write_obj(k as u16, GuestAddress(avail + 4 + 2 * k))
            .unwrap();
    }
    mem.write_obj(8u16, GuestAddress(avail + 2)).unwrap(); // avail idx

    let offered = drive(&mut t, 3);
    assert_ne!(offered & VIRTIO_F_VERSION_1, 0);
    assert_eq!(
        offered & VHOST_USER_F_PROTOCOL_FEATURES,
        0,
        "not leaked to the guest"
    );
    assert!(t.is_activated(), "status {:#x}", t.status());
    assert_eq!(t.status() & status::DEVICE_NEEDS_RESET, 0);
    wr(&mut t, reg::QUEUE_NOTIFY, 0); // kick RX (through the kick eventfd)

    // A host application connects to guest port 1234 through the hybrid socket: the daemon
    // must put a VSOCK_OP_REQUEST into our RX ring and signal the call eventfd (our irqfd).
    let mut s = UnixStream::connect(d.dir.join("hybrid.sock")).unwrap();
    s.write_all(b"CONNECT 1234\n").unwrap();
    let used = qbase(0) + 0x2000;
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let idx: u16 = mem.read_obj(GuestAddress(used + 2)).unwrap();
        if idx >= 1 {
            break;
        }
        assert!(Instant::now() < end, "no packet in the RX used ring");
        std::thread::sleep(Duration::from_millis(10));
    }
    let id: u32 = mem.read_obj(GuestAddress(used + 4)).unwrap();
    let len: u32 = mem.read_obj(GuestAddress(used + 8)).unwrap();
    assert!(id < 8 && len >= 44, "used elem id {id} len {len}");
    let buf = 0x80_0000 + u64::from(id) * 0x1000;
    let src_cid: u64 = mem.read_obj(GuestAddress(buf)).unwrap();
    let dst_cid: u64 = mem.read_obj(GuestAddress(buf + 8)).unwrap();
    let dst_port: u32 = mem.read_obj(GuestAddress(buf + 20)).unwrap();
    let op: u16 = mem.read_obj(GuestAddress(buf + 30)).unwrap();
    assert_eq!(
        (src_cid, dst_cid, dst_port, op),
        (2, 3, 1234, 1),
        "VSOCK_OP_REQUEST host->guest:1234"
    );
    let end = Instant::now() + Duration::from_secs(5);
    while irq.0.read().is_err() {
        assert!(Instant::now() < end, "call eventfd (irqfd) never signalled");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(rd(&mut t, reg::INTERRUPT_STATUS) & 1, 1);

    // The "guest" accepts: a VSOCK_OP_RESPONSE on the TX queue (1), read by the daemon from our
    // memory after our kick; the host application then gets "OK <port>".
    let host_port: u32 = mem.read_obj(GuestAddress(buf + 16)).unwrap();
    let pkt = 0x90_0000u64;
    mem.write_obj(3u64, GuestAddress(pkt)).unwrap(); // src_cid
    mem.write_obj(2u64, GuestAddress(pkt + 8)).unwrap(); // dst_cid
    mem.write_obj(1234u32, GuestAddress(pkt + 16)).unwrap(); // src_port
    mem.write_obj(host_port, GuestAddress(pkt + 20)).unwrap(); // dst_port
    mem.write_obj(0u32, GuestAddress(pkt + 24)).unwrap(); // len
    mem.write_obj(1u16, GuestAddress(pkt + 28)).unwrap(); // type: stream
    mem.write_obj(2u16, GuestAddress(pkt + 30)).unwrap(); // op: response
    mem.write_obj(0u32, GuestAddress(pkt + 32)).unwrap(); // flags
    mem.write_obj(65536u32, GuestAddress(pkt + 36)).unwrap(); // buf_alloc
    mem.write_obj(0u32, GuestAddress(pkt + 40)).unwrap(); // fwd_cnt
    let (tdesc, tavail) = (qbase(1), qbase(1) + 0x1000);
    mem.write_obj(pkt, GuestAddress(tdesc)).unwrap();
    mem.write_obj(44u32, GuestAddress(tdesc + 8)).unwrap();
    mem.write_obj(0u16, GuestAddress(tdesc + 12)).unwrap(); // device-readable
    mem.write_obj(0u16, GuestAddress(tavail + 4)).unwrap();
    mem.write_obj(1u16, GuestAddress(tavail + 2)).unwrap();
    wr(&mut t, reg::QUEUE_NOTIFY, 1);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reply = [0u8; 32];
    let n = std::io::Read::read(&mut s, &mut reply).expect("host side gets the daemon's reply");
    let reply = String::from_utf8_lossy(&reply[..n]).to_string();
    assert!(reply.starts_with("OK "), "reply {reply:?}");
    // The daemon answers the host before it returns the TX descriptor: wait for it.
    let end = Instant::now() + Duration::from_secs(10);
    while mem
        .read_obj::<u16>(GuestAddress(qbase(1) + 0x2000 + 2))
        .unwrap()
        != 1
    {
        assert!(Instant::now() < end, "TX descriptor never returned");
        std::thread::sleep(Duration::from_millis(5));
    }

    // Host -> guest data: an OP_RW packet with the payload lands in the next RX buffer.
    s.write_all(b"hello guest").unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    let payload = loop {
        let idx: u16 = mem.read_obj(GuestAddress(used + 2)).unwrap();
        if idx >= 2 {
            let id: u32 = mem.read_obj(GuestAddress(used + 4 + 8)).unwrap();
            let b = 0x80_0000 + u64::from(id) * 0x1000;
            let op: u16 = mem.read_obj(GuestAddress(b + 30)).unwrap();
            let len: u32 = mem.read_obj(GuestAddress(b + 24)).unwrap();
            assert_eq!(op, 5, "VSOCK_OP_RW");
            let mut data = vec![0u8; len as usize];
            mem.read_slice(&mut data, GuestAddress(b + 44)).unwrap();
            break data;
        }
        assert!(Instant::now() < end, "no data packet in the RX used ring");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(payload, b"hello guest");

    // Driver reset stops the rings in the daemon (GET_VRING_BASE) and the device can be
    // negotiated again on the same connection.
    wr(&mut t, reg::STATUS, 0);
    assert!(!t.is_activated());
}

#[test]
fn connecting_to_a_missing_socket_is_a_clear_error() {
    let mem = crate::memory::create(64 << 20).unwrap();
    let e = VhostUserDevice::connect(
        Kind::Vsock,
        Path::new("/nonexistent/vhost.sock"),
        mem,
        IrqLine::new().unwrap(),
    )
    .err()
    .expect("no daemon");
    assert!(e.to_string().contains("/nonexistent/vhost.sock"), "{e}");
}

#[test]
fn virtiofsd_negotiation_through_the_transport() {
    let dir = tmpdir("fs");
    let shared = dir.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let sock = dir.join("fs.sock");
    let bin = tool(
        "MYVM_VIRTIOFSD",
        "/var/cache/myvm/tools/virtiofsd-1.14.0/bin/virtiofsd",
    );
    let child = Command::new(&bin)
        .arg("--socket-path")
        .arg(&sock)
        .arg("--shared-dir")
        .arg(&shared)
        .args(["--sandbox", "none"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
    let _d = Daemon { child, dir };
    wait_path(&sock);
    let mem = crate::memory::create(64 << 20).unwrap();
    let irq = IrqLine::new().unwrap();
    let kind = Kind::Fs {
        tag: "myvmfs".into(),
        request_queues: 1,
    };
    let dev = VhostUserDevice::connect(kind, &sock, mem.clone(), irq.clone())
        .expect("handshake with virtiofsd");
    let mut t = MmioTransport::new(Box::new(dev), mem, irq).unwrap();
    assert_eq!(rd(&mut t, reg::DEVICE_ID), VIRTIO_ID_FS);
    let mut tag = [0u8; 40];
    t.read(reg::CONFIG, &mut tag);
    assert_eq!(&tag[..7], b"myvmfs\0");
    assert_eq!(u32::from_le_bytes(tag[36..40].try_into().unwrap()), 1);
    drive(&mut t, 2);
    assert!(t.is_activated(), "status {:#x}", t.status());
    assert_eq!(t.status() & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn fs_config_layout() {
    let c = fs_config("myvmfs", 2);
    assert_eq!(c.len(), 40);
    assert_eq!(&c[..6], b"myvmfs");
    assert!(c[6..36].iter().all(|b| *b == 0));
    assert_eq!(&c[36..], &2u32.to_le_bytes());
    let long = fs_config(&"x".repeat(36), 1);
    assert_eq!(&long[..36], "x".repeat(36).as_bytes());
}

/// Child half of `activation_and_reset_work_under_the_vcpu_seccomp_filter`: connects (as the VMM
/// does before filters are installed), then drives activation and reset from a thread running
/// under the vCPU filter, exactly where a guest's DRIVER_OK / reset writes are handled.
#[test]
fn child_activation_under_vcpu_filter() {
    let Some(sock) = std::env::var_os("MYVM_SECCOMP_VHOST_SOCK") else {
        return; // only meaningful as the child of the test below
    };
    let mem = crate::memory::create(64 << 20).unwrap();
    let irq = IrqLine::new().unwrap();
    let dev =
        VhostUserDevice::connect(Kind::Vsock, Path::new(&sock), mem.clone(), irq.clone()).unwrap();
    let mut t = MmioTransport::new(Box::new(dev), mem, irq).unwrap();
    let filters = crate::seccomp::Filters::build().unwrap();
    std::thread::spawn(move || {
        crate::seccomp::apply(&filters.vcpu).unwrap();
        drive(&mut t, 3);
        assert!(t.is_activated(), "status {:#x}", t.status());
        wr(&mut t, reg::QUEUE_NOTIFY, 0);
        wr(&mut t, reg::STATUS, 0);
        assert!(!t.is_activated());
        drop(t); // closes the vhost-user connection under the filter too
    })
    .join()
    .unwrap();
}

#[test]
fn activation_and_reset_work_under_the_vcpu_seccomp_filter() {
    let d = start_vsock("seccomp");
    let sock = d.dir.join("vhost.sock");
    let out = crate::seccomp::run_test_in_child(
        "devices::vhost_user::tests::child_activation_under_vcpu_filter",
        ("MYVM_SECCOMP_VHOST_SOCK", sock.as_os_str()),
    );
    let stdout = crate::seccomp::child_passed(&out);
    assert!(stdout.contains("1 passed"), "{stdout}");
}
