//! End-to-end runs of the `myvm-vmm` binary with tiny hand-made guests (an ELF with a PVH note
//! and a few instructions) that complete a whole guest lifecycle on this host's /dev/kvm, which
//! our real kernel cannot do under KVM-PVM: write to the serial port, then end the VM through the
//! i8042 reset command or a triple fault (what `reboot=t` does). Seccomp is on (the default).
//! Needs root and /dev/kvm.

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
