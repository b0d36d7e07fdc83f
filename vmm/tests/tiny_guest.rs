//! End-to-end runs of the `myvm-vmm` binary with tiny hand-made guests (an ELF with a PVH note
//! and a few instructions) that complete a whole guest lifecycle on this host's /dev/kvm, which
//! our real kernel cannot do under KVM-PVM: write to the serial port, then end the VM through the
//! i8042 reset command or a triple fault (what `reboot=t` does); one drives a virtio-net device
//! through a tap. Seccomp is on (the default). Needs root and /dev/kvm.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

const VMM: &str = env!("CARGO_BIN_EXE_myvm-vmm");
const LOAD: u64 = 0x10_0000;

struct TmpDir(PathBuf);
impl TmpDir {
    fn new(name: &str) -> Self {
        let d = std::env::temp_dir().join(format!("myvm-vmm-tiny-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TmpDir(d)
    }
}
impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A static x86-64 ELF: one PT_LOAD of `code` at LOAD (also the ELF entry) and a PT_NOTE with
/// the Xen PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY = LOAD).
fn tiny_elf(code: &[u8]) -> Vec<u8> {
    const CODE_OFF: usize = 256;
    const NOTE_OFF: usize = 176;
    let mut e = vec![0u8; CODE_OFF + code.len()];
    e[..4].copy_from_slice(b"\x7fELF");
    e[4] = 2; // ELFCLASS64
    e[5] = 1; // little endian
    e[6] = 1; // version
    e[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    e[20..24].copy_from_slice(&1u32.to_le_bytes());
    e[24..32].copy_from_slice(&LOAD.to_le_bytes()); // e_entry
    e[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    e[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    e[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    e[56..58].copy_from_slice(&2u16.to_le_bytes()); // e_phnum
    let phdr = |e: &mut Vec<u8>, at: usize, ty: u32, off: u64, addr: u64, size: u64| {
        e[at..at + 4].copy_from_slice(&ty.to_le_bytes());
        e[at + 4..at + 8].copy_from_slice(&5u32.to_le_bytes()); // R+X
        e[at + 8..at + 16].copy_from_slice(&off.to_le_bytes());
        e[at + 16..at + 24].copy_from_slice(&addr.to_le_bytes()); // vaddr
        e[at + 24..at + 32].copy_from_slice(&addr.to_le_bytes()); // paddr
        e[at + 32..at + 40].copy_from_slice(&size.to_le_bytes()); // filesz
        e[at + 40..at + 48].copy_from_slice(&size.to_le_bytes()); // memsz
        e[at + 48..at + 56].copy_from_slice(&4u64.to_le_bytes()); // align
    };
    phdr(&mut e, 64, 1, CODE_OFF as u64, LOAD, code.len() as u64); // PT_LOAD
    phdr(&mut e, 120, 4, NOTE_OFF as u64, 0, 20); // PT_NOTE
    let n = NOTE_OFF;
    e[n..n + 4].copy_from_slice(&4u32.to_le_bytes()); // namesz
    e[n + 4..n + 8].copy_from_slice(&4u32.to_le_bytes()); // descsz
    e[n + 8..n + 12].copy_from_slice(&18u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
    e[n + 12..n + 16].copy_from_slice(b"Xen\0");
    e[n + 16..n + 20].copy_from_slice(&(LOAD as u32).to_le_bytes());
    e[CODE_OFF..].copy_from_slice(code);
    e
}

/// Writes "OK\n" to COM1. The same bytes run in 32-bit protected and 64-bit long mode.
#[rustfmt::skip]
const PRINT_OK: [u8; 13] = [
    0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0xb0, b'O', 0xee,       // mov al, 'O' ; out dx, al
    0xb0, b'K', 0xee,       // mov al, 'K' ; out dx, al
    0xb0, b'\n', 0xee,      // mov al, '\n'; out dx, al
];
#[rustfmt::skip]
const I8042_RESET: [u8; 7] = [
    0xb0, 0xfe, 0xe6, 0x64, // mov al, 0xfe ; out 0x64, al
    0xf4, 0xeb, 0xfd,       // 1: hlt ; jmp 1b
];
const UD2: [u8; 2] = [0x0f, 0x0b]; // #UD with no IDT -> triple fault

fn run(dir: &Path, code: &[u8], extra: &[&str]) -> (Output, String) {
    let kernel = dir.join("tiny.elf");
    std::fs::write(&kernel, tiny_elf(code)).unwrap();
    let serial = dir.join("serial.log");
    let out = Command::new(VMM)
        .arg("--kernel")
        .arg(&kernel)
        .arg("--serial-log")
        .arg(&serial)
        .args(["--vcpus", "2", "--memory-mib", "64"])
        .args(extra)
        .env("MYVM_VMM_LOG", "info")
        .output()
        .unwrap();
    (out, std::fs::read_to_string(&serial).unwrap_or_default())
}

#[test]
fn i8042_reset_ends_the_vm_with_status_0() {
    let d = TmpDir::new("i8042");
    let (out, serial) = run(&d.0, &[&PRINT_OK[..], &I8042_RESET].concat(), &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(serial, "OK\n");
    assert!(err.contains("guest reset through the i8042"), "{err}");
    assert!(err.contains("protocol=Pvh"), "{err}");
}

#[test]
fn triple_fault_ends_the_vm_with_status_0() {
    let d = TmpDir::new("triple");
    let (out, serial) = run(&d.0, &[&PRINT_OK[..], &UD2].concat(), &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(serial, "OK\n");
    assert!(err.contains("reason=Reset"), "{err}");
}

#[test]
fn linux_boot_protocol_runs_the_same_guest_in_long_mode() {
    let d = TmpDir::new("linux");
    let (out, serial) = run(
        &d.0,
        &[&PRINT_OK[..], &I8042_RESET].concat(),
        &["--boot-protocol", "linux", "--no-seccomp"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(serial, "OK\n");
    assert!(err.contains("protocol=Linux"), "{err}");
    assert!(err.contains("seccomp filters are off"), "{err}");
}

#[test]
fn serial_log_is_appended_not_truncated() {
    let d = TmpDir::new("append");
    std::fs::write(d.0.join("serial.log"), "previous\n").unwrap();
    let (out, serial) = run(&d.0, &[&PRINT_OK[..], &UD2].concat(), &[]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(serial, "previous\nOK\n");
}

fn vhost_vsock_binary() -> PathBuf {
    if let Ok(p) = std::env::var("MYVM_VHOST_VSOCK") {
        return PathBuf::from(p);
    }
    let env = Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/tools.env");
    std::fs::read_to_string(env)
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MYVM_VHOST_VSOCK=").map(PathBuf::from))
        })
        .unwrap_or_else(|| {
            "/var/cache/myvm/tools/vhost-device-vsock-0.3.0/bin/vhost-device-vsock".into()
        })
}

/// A vhost-user daemon that dies while the guest runs ends the VM with status 1 and says which
/// device lost its backend, instead of leaving a guest with a dead device.
#[test]
fn vhost_user_daemon_exit_ends_the_vm_with_an_error() {
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let d = TmpDir::new("hup");
    let vhost = d.0.join("vsock.vhost.sock");
    let mut daemon = Command::new(vhost_vsock_binary())
        .args(["--guest-cid", "3", "--socket"])
        .arg(&vhost)
        .arg("--uds-path")
        .arg(d.0.join("vsock.sock"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    while !vhost.exists() {
        assert!(Instant::now() < end, "daemon socket missing");
        std::thread::sleep(Duration::from_millis(20));
    }
    let kernel = d.0.join("tiny.elf");
    // Print, then halt with interrupts off: the guest never ends on its own.
    std::fs::write(
        &kernel,
        tiny_elf(&[&PRINT_OK[..], &[0xfa, 0xf4, 0xeb, 0xfd]].concat()),
    )
    .unwrap();
    let serial = d.0.join("serial.log");
    let mut vmm = Command::new(VMM)
        .arg("--kernel")
        .arg(&kernel)
        .arg("--serial-log")
        .arg(&serial)
        .arg("--vsock-socket")
        .arg(&vhost)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&serial).unwrap_or_default() != "OK\n" {
        if Instant::now() > end {
            let _ = vmm.kill();
            let _ = daemon.kill();
            let _ = (vmm.wait(), daemon.wait());
            panic!("guest never printed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(vmm.try_wait().unwrap().is_none(), "VM still running");
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    let end = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(st) = vmm.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > end {
            let _ = vmm.kill();
            let _ = vmm.wait();
            panic!("myvm-vmm kept running after its vhost-user daemon died");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut vmm.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("vhost-user backend vsock"), "{err}");
    assert!(err.contains("disconnected"), "{err}");
}

/// 32-bit protected-mode machine code for a guest that drives a virtio-mmio device itself.
#[derive(Default)]
struct Asm(Vec<u8>);

impl Asm {
    /// `mov dword [addr], v`
    fn store32(&mut self, addr: u32, v: u32) {
        self.0.extend([0xc7, 0x05]);
        self.0.extend(addr.to_le_bytes());
        self.0.extend(v.to_le_bytes());
    }
    /// `1: cmp word [addr], v ; jne 1b`
    fn wait16(&mut self, addr: u32, v: u8) {
        self.0.extend([0x66, 0x83, 0x3d]);
        self.0.extend(addr.to_le_bytes());
        self.0.extend([v, 0x75, 0xf6]);
    }
    /// `mov dx, 0x3f8 ; mov al, [addr] ; out dx, al` for each byte
    fn print_mem(&mut self, addr: u32, len: u32) {
        self.0.extend([0x66, 0xba, 0xf8, 0x03]);
        for a in addr..addr + len {
            self.0.push(0xa0);
            self.0.extend(a.to_le_bytes());
            self.0.push(0xee);
        }
    }
}

const ETHERTYPE: u16 = 0x88b5;
const GUEST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

fn eth_frame(dst: [u8; 6], src: [u8; 6], payload: &[u8]) -> Vec<u8> {
    let mut f = [&dst[..], &src, &ETHERTYPE.to_be_bytes(), payload].concat();
    f.resize(60, 0);
    f
}

/// The host side of a tap: an AF_PACKET socket for ETHERTYPE (receive timeout 100 ms).
struct PacketSocket(std::os::fd::OwnedFd);

impl PacketSocket {
    fn bind(ifname: &str) -> Self {
        use std::os::fd::{AsRawFd, FromRawFd};
        let proto = ETHERTYPE.to_be();
        // SAFETY: plain syscalls on a socket owned below; sockaddr_ll is fully initialised.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto));
            assert!(
                fd >= 0,
                "packet socket: {}",
                std::io::Error::last_os_error()
            );
            let fd = std::os::fd::OwnedFd::from_raw_fd(fd);
            let name = std::ffi::CString::new(ifname).unwrap();
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
            let r = libc::bind(
                fd.as_raw_fd(),
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 100_000,
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
    fn send(&self, f: &[u8]) {
        use std::os::fd::AsRawFd;
        // SAFETY: `f` is valid for reads of its length.
        let n = unsafe { libc::send(self.0.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
        assert_eq!(
            n,
            f.len() as isize,
            "send: {}",
            std::io::Error::last_os_error()
        );
    }
    fn recv(&self) -> Option<Vec<u8>> {
        use std::os::fd::AsRawFd;
        let mut b = vec![0u8; 2048];
        // SAFETY: `b` is valid for writes of its length.
        let n = unsafe { libc::recv(self.0.as_raw_fd(), b.as_mut_ptr().cast(), b.len(), 0) };
        (n >= 0).then(|| {
            b.truncate(n as usize);
            b
        })
    }
}

/// The whole virtio-net path with a real guest on KVM: a tiny guest negotiates the device through
/// the virtio-mmio registers (MMIO exits), posts an RX buffer and a TX frame, and kicks both
/// queues (KVM ioeventfds); the `virtio-net` thread (under its seccomp filter) writes the frame
/// to the tap, where the test receives it, and puts the test's reply into the guest's RX buffer;
/// the guest prints the reply's payload on COM1 and resets. The VMM runs in a private network
/// namespace with the tap in it (as the shim runs it in the pod's).
#[test]
fn guest_sends_and_receives_frames_through_a_tap() {
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let d = TmpDir::new("net");
    // Guest memory layout: RX queue 0 rings at 0x210000, TX queue 1 rings at 0x200000, the RX
    // buffer at 0x220000, the TX frame (header + Ethernet frame) in the ELF at LOAD + 0x400.
    let mmio = |off: u32| 0xd000_0000 + off;
    let tx_frame = eth_frame([0xff; 6], GUEST_MAC, b"hello from the tiny guest");
    let mut a = Asm::default();
    for s in [0, 1, 3] {
        a.store32(mmio(0x70), s); // Status: reset, ACKNOWLEDGE, DRIVER
    }
    a.store32(mmio(0x24), 1); // DriverFeaturesSel 1
    a.store32(mmio(0x20), 1); // VIRTIO_F_VERSION_1
    a.store32(mmio(0x70), 0xb); // FEATURES_OK
    for (q, base) in [(0u32, 0x21_0000u32), (1, 0x20_0000)] {
        a.store32(mmio(0x30), q); // QueueSel
        a.store32(mmio(0x38), 16); // QueueNum
        a.store32(mmio(0x80), base); // QueueDesc
        a.store32(mmio(0x90), base + 0x1000); // QueueDriver (avail)
        a.store32(mmio(0xa0), base + 0x2000); // QueueDevice (used)
        a.store32(mmio(0x44), 1); // QueueReady
    }
    a.store32(mmio(0x70), 0xf); // DRIVER_OK

    // RX: one 2 KiB device-writable buffer, made available, kick queue 0.
    a.store32(0x21_0000, 0x22_0000);
    a.store32(0x21_0008, 2048);
    a.store32(0x21_000c, 2); // VIRTQ_DESC_F_WRITE
    a.store32(0x21_1000, 1 << 16); // avail idx 1 (ring[0] = 0)
    a.store32(mmio(0x50), 0);
    // TX: header + frame from the ELF, kick queue 1, wait until it is used.
    a.store32(0x20_0000, LOAD as u32 + 0x400);
    a.store32(0x20_0008, 12 + tx_frame.len() as u32);
    a.store32(0x20_1000, 1 << 16);
    a.store32(mmio(0x50), 1);
    a.wait16(0x20_2002, 1);
    // Wait for the reply in the RX buffer, print its first 4 payload bytes, reset.
    a.wait16(0x21_2002, 1);
    a.print_mem(0x22_0000 + 12 + 14, 4);
    a.0.extend(I8042_RESET);
    assert!(a.0.len() <= 0x400, "code overlaps the TX frame");
    let mut code = a.0;
    code.resize(0x400, 0x90);
    code.extend([0u8; 12]);
    code.extend(&tx_frame);
    let kernel = d.0.join("tiny.elf");
    std::fs::write(&kernel, tiny_elf(&code)).unwrap();
    let serial = d.0.join("serial.log");

    let (status, err, got) = std::thread::spawn(move || {
        // SAFETY: plain syscall; it only changes this thread's network namespace (and that of
        // the processes it starts).
        assert_eq!(
            unsafe { libc::unshare(libc::CLONE_NEWNET) },
            0,
            "unshare (root needed)"
        );
        let _ = std::fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1");
        let ip = |args: &str| {
            let st = Command::new("sh")
                .arg("-c")
                .arg(format!("ip {args}"))
                .status()
                .unwrap();
            assert!(st.success(), "ip {args}");
        };
        ip("tuntap add dev tguest mode tap");
        ip("link set tguest up");
        let host = PacketSocket::bind("tguest");
        let mut vmm = Command::new(VMM)
            .arg("--kernel")
            .arg(&kernel)
            .arg("--serial-log")
            .arg(&serial)
            .args([
                "--memory-mib",
                "64",
                "--net",
                "tap=tguest,mac=02:00:00:00:00:01,mtu=1500",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let end = Instant::now() + Duration::from_secs(20);
        let mut got = None;
        let status = loop {
            if let Some(st) = vmm.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > end {
                let _ = vmm.kill();
                break vmm.wait().unwrap();
            }
            match host.recv() {
                Some(f) if got.is_none() => got = Some(f),
                _ => {}
            }
            if got.is_some() {
                // Until the guest has it (frames sent while the tap's qdisc is not attached
                // yet are dropped by the kernel).
                host.send(&eth_frame(GUEST_MAC, [2, 0, 0, 0, 0, 2], b"RX!\n"));
            }
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut vmm.stderr.take().unwrap(), &mut err).unwrap();
        (status, err, got)
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e));
    assert_eq!(
        got.as_deref(),
        Some(&tx_frame[..]),
        "guest frame on the tap\n{err}"
    );
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(
        err.contains("virtio-mmio device attached device=\"virtio-net\" tap=tguest"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(d.0.join("serial.log")).unwrap(),
        "RX!\n"
    );
}
