//! Boots our guest image (build/vmlinux + build/initramfs.cpio, `make image`) with the built
//! `myvm-vmm` on this host's /dev/kvm, with a real vhost-device-vsock attached, and waits until
//! the serial log shows `Linux version 6.1`. With hardware virtualization (vmx/svm) it goes on
//! until the agent announces readiness over vsock; without it (KVM-PVM) it stops there and says
//! so. Needs root and /dev/kvm.

use std::{
    io::Read,
    os::unix::net::UnixListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

const KERNEL_LINE: &str = "Linux version 6.1";
const SERIAL_TIMEOUT: Duration = Duration::from_secs(150);
const AGENT_TIMEOUT: Duration = Duration::from_secs(120);
const READY_VSOCK_PORT: u32 = 1025;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Kills and reaps the processes and removes the directory, whatever happens.
struct Cleanup {
    dir: PathBuf,
    children: Vec<(&'static str, Child)>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for (name, c) in self.children.iter_mut().rev() {
            if let Ok(None) = c.try_wait() {
                let _ = c.kill();
            }
            let st = c.wait();
            eprintln!("[boot_serial] {name} stopped: {st:?}");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn vhost_vsock_binary() -> PathBuf {
    if let Ok(p) = std::env::var("MYVM_VHOST_VSOCK") {
        return PathBuf::from(p);
    }
    if let Ok(env) = std::fs::read_to_string(repo().join("build/tools.env")) {
        for line in env.lines() {
            if let Some(p) = line.strip_prefix("MYVM_VHOST_VSOCK=") {
                return PathBuf::from(p);
            }
        }
    }
    PathBuf::from("/var/cache/myvm/tools/vhost-device-vsock-0.3.0/bin/vhost-device-vsock")
}

fn wait_for_path(p: &Path, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if p.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn hw_virt() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| myvm_vmm::boot::cpuid::cpuinfo_has_hw_virt(&s))
        .unwrap_or(false)
}

#[test]
fn guest_kernel_prints_its_banner_on_our_serial_port() {
    let kernel = repo().join("build/vmlinux");
    let initrd = repo().join("build/initramfs.cpio");
    assert!(
        kernel.exists() && initrd.exists(),
        "guest image missing: run `make image` first"
    );
    assert!(Path::new("/dev/kvm").exists(), "/dev/kvm missing");

    let dir = std::env::temp_dir().join(format!("myvm-vmm-boot-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut cleanup = Cleanup {
        dir: dir.clone(),
        children: Vec::new(),
    };

    // vsock backend, exactly as the qemu backend uses it.
    let vhost_sock = dir.join("vsock.vhost.sock");
    let uds = dir.join("vsock.sock");
    let daemon = Command::new(vhost_vsock_binary())
        .args(["--guest-cid", "3", "--socket"])
        .arg(&vhost_sock)
        .arg("--uds-path")
        .arg(&uds)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start vhost-device-vsock");
    cleanup.children.push(("vhost-device-vsock", daemon));
    assert!(
        wait_for_path(&vhost_sock, Duration::from_secs(10)),
        "vhost-device-vsock did not create {}",
        vhost_sock.display()
    );
    let mut ready_path = uds.as_os_str().to_owned();
    ready_path.push(format!("_{READY_VSOCK_PORT}"));
    let ready = UnixListener::bind(PathBuf::from(ready_path)).unwrap();
    ready.set_nonblocking(true).unwrap();

    let serial = dir.join("serial.log");
    let started = Instant::now();
    let vmm = Command::new(env!("CARGO_BIN_EXE_myvm-vmm"))
        .arg("--kernel")
        .arg(&kernel)
        .arg("--initrd")
        .arg(&initrd)
        .args([
            "--cmdline",
            "console=ttyS0 reboot=t panic=-1 random.trust_cpu=on",
            "--vcpus",
            "2",
            "--memory-mib",
            "256",
        ])
        .arg("--serial-log")
        .arg(&serial)
        .arg("--vsock-socket")
        .arg(&vhost_sock)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("vmm.log")).unwrap())
        .spawn()
        .expect("start myvm-vmm");
    cleanup.children.push(("myvm-vmm", vmm));

    let log = |dir: &Path| {
        let mut s = String::new();
        let _ = std::fs::File::open(dir.join("vmm.log")).map(|mut f| f.read_to_string(&mut s));
        s
    };
    let serial_text = || std::fs::read_to_string(&serial).unwrap_or_default();
    loop {
        if serial_text().contains(KERNEL_LINE) {
            break;
        }
        let vmm = &mut cleanup.children[1].1;
        if let Ok(Some(st)) = vmm.try_wait() {
            panic!(
                "myvm-vmm exited ({st}) before the guest printed {KERNEL_LINE:?}\nVMM log:\n{}\nserial:\n{}",
                log(&dir),
                serial_text()
            );
        }
        if started.elapsed() > SERIAL_TIMEOUT {
            panic!(
                "no {KERNEL_LINE:?} on the serial console after {SERIAL_TIMEOUT:?}\nVMM log:\n{}\nserial:\n{}",
                log(&dir),
                serial_text()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "[boot_serial] {KERNEL_LINE:?} on the serial console after {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let vmm_log = log(&dir);
    assert!(
        vmm_log.contains("virtio-mmio device attached") && vmm_log.contains("vsock"),
        "the vsock device was not attached:\n{vmm_log}"
    );
    // The console is still replaying the early log: give the command line line a moment.
    let until = Instant::now() + Duration::from_secs(20);
    while !serial_text().contains("virtio_mmio.device=4K@0xd0000000:5") {
        assert!(
            Instant::now() < until,
            "the guest command line does not announce the vsock device\n{}",
            serial_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    if !hw_virt() {
        eprintln!(
            "[boot_serial] STOPPED at the kernel's first lines: this host has no hardware \
             virtualization (no vmx/svm in /proc/cpuinfo; /dev/kvm is KVM-PVM, which cannot run \
             this guest kernel to /init). Agent readiness was NOT checked."
        );
        return;
    }

    // Hardware virtualization: the agent connects to the host's READY port over vsock.
    let until = Instant::now() + AGENT_TIMEOUT;
    loop {
        match ready.accept() {
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("accept on the READY listener: {e}"),
        }
        if let Ok(Some(st)) = cleanup.children[1].1.try_wait() {
            panic!(
                "myvm-vmm exited ({st}) before agent-ready\n{}",
                serial_text()
            );
        }
        assert!(
            Instant::now() < until,
            "agent not ready after {AGENT_TIMEOUT:?}\nserial:\n{}",
            serial_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "[boot_serial] agent ready after {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// The same kernel through the Linux 64-bit boot protocol (zero page + e820, long-mode entry)
/// instead of PVH: it must also print its banner on our serial port.
#[test]
fn guest_kernel_boots_through_the_linux_boot_protocol_too() {
    let kernel = repo().join("build/vmlinux");
    let initrd = repo().join("build/initramfs.cpio");
    assert!(kernel.exists() && initrd.exists(), "run `make image` first");
    let dir = std::env::temp_dir().join(format!("myvm-vmm-boot-linux-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut cleanup = Cleanup {
        dir: dir.clone(),
        children: Vec::new(),
    };
    let serial = dir.join("serial.log");
    let vmm = Command::new(env!("CARGO_BIN_EXE_myvm-vmm"))
        .arg("--kernel")
        .arg(&kernel)
        .arg("--initrd")
        .arg(&initrd)
        .args([
            "--cmdline",
            "console=ttyS0 reboot=t panic=-1",
            "--boot-protocol",
            "linux",
        ])
        .arg("--serial-log")
        .arg(&serial)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("vmm.log")).unwrap())
        .spawn()
        .unwrap();
    cleanup.children.push(("myvm-vmm", vmm));
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(&serial).unwrap_or_default();
        if text.contains(KERNEL_LINE) {
            break;
        }
        if let Ok(Some(st)) = cleanup.children[0].1.try_wait() {
            panic!(
                "myvm-vmm exited ({st}) before {KERNEL_LINE:?}\n{}\n{text}",
                std::fs::read_to_string(dir.join("vmm.log")).unwrap_or_default()
            );
        }
        assert!(
            started.elapsed() < SERIAL_TIMEOUT,
            "no {KERNEL_LINE:?} after {SERIAL_TIMEOUT:?}\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(dir.join("vmm.log")).unwrap_or_default();
    assert!(log.contains("protocol=Linux"), "{log}");
    eprintln!(
        "[boot_serial] Linux boot protocol: {KERNEL_LINE:?} after {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
