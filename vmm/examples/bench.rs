//! `make bench` helper: boots the same guest image with `myvm-vmm` and with QEMU (`-M microvm`,
//! the qemu backend's arguments) on this host's /dev/kvm and prints, side by side:
//! - VMM process start (execve) to the first KVM_RUN, from `strace -f --seccomp-bpf -ttt`
//!   (only execve and ioctl are traced, the same way for both);
//! - VMM RSS excluding guest memory (sum of `Rss` in /proc/<pid>/smaps without the guest-RAM
//!   memfd mappings), a few seconds after the first KVM_RUN.
//!
//! Run: `cargo run --release -p myvm-vmm --example bench [-- --runs N]` (root, /dev/kvm, strace,
//! qemu-system-x86_64, `make image`). Builds nothing itself: uses the `myvm-vmm` next to this
//! example in the same target dir (or MYVM_VMM_BIN).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

const MEMORY_MIB: u64 = 256;
const SETTLE: Duration = Duration::from_secs(3);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tool(var: &str, default: &str) -> PathBuf {
    if let Ok(p) = std::env::var(var) {
        return p.into();
    }
    if let Ok(t) = std::fs::read_to_string(repo().join("build/tools.env")) {
        for l in t.lines() {
            if let Some(p) = l.strip_prefix(&format!("{var}=")) {
                return p.into();
            }
        }
    }
    default.into()
}

struct Run {
    dir: PathBuf,
    children: Vec<Child>,
}

impl Drop for Run {
    fn drop(&mut self) {
        for c in self.children.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait_for(p: &Path, t: Duration) -> bool {
    let end = Instant::now() + t;
    while Instant::now() < end {
        if p.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Seconds from the traced process's execve to its first KVM_RUN, from an strace -ttt log.
fn first_kvm_run(trace: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(trace).ok()?;
    let ts = |l: &str| -> Option<f64> { l.split_whitespace().nth(1)?.parse().ok() };
    let exec = text.lines().find(|l| l.contains("execve("))?;
    let run = text.lines().find(|l| l.contains("KVM_RUN"))?;
    Some(ts(run)? - ts(exec)?)
}

/// RSS (KiB) of `pid` without memfd mappings of 16 MiB or more (guest RAM).
fn rss_without_guest_kib(pid: u32) -> Option<u64> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let mut total = 0;
    let mut guest = false;
    let mut size = 0u64;
    for l in smaps.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.first()
            .is_some_and(|a| a.contains('-') && !a.ends_with(':'))
        {
            guest = f.get(5).is_some_and(|p| p.starts_with("/memfd:"));
            size = 0;
        } else if f.first() == Some(&"Size:") {
            size = f[1].parse().unwrap_or(0);
        } else if f.first() == Some(&"Rss:") {
            let rss: u64 = f[1].parse().unwrap_or(0);
            if !(guest && size >= 16 * 1024) {
                total += rss;
            }
        }
    }
    Some(total)
}

fn traced_child_pid(strace: u32) -> Option<u32> {
    let c = std::fs::read_to_string(format!("/proc/{strace}/task/{strace}/children")).ok()?;
    c.split_whitespace().next()?.parse().ok()
}

fn measure(
    name: &str,
    vmm_cmd: impl Fn(&Path, &Path, &Path) -> Vec<String>,
) -> Result<(f64, u64), String> {
    let dir = std::env::temp_dir().join(format!("myvm-bench-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut run = Run {
        dir: dir.clone(),
        children: vec![],
    };
    let vhost = dir.join("vsock.vhost.sock");
    let daemon = Command::new(tool(
        "MYVM_VHOST_VSOCK",
        "/var/cache/myvm/tools/vhost-device-vsock-0.3.0/bin/vhost-device-vsock",
    ))
    .args(["--guest-cid", "3", "--socket"])
    .arg(&vhost)
    .arg("--uds-path")
    .arg(dir.join("vsock.sock"))
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .map_err(|e| format!("vhost-device-vsock: {e}"))?;
    run.children.push(daemon);
    if !wait_for(&vhost, Duration::from_secs(10)) {
        return Err("vhost-device-vsock socket missing".into());
    }
    let trace = dir.join("trace.txt");
    let serial = dir.join("serial.log");
    let args = vmm_cmd(&dir, &serial, &vhost);
    let strace = Command::new("strace")
        .args([
            "-f",
            "--seccomp-bpf",
            "-qq",
            "-ttt",
            "-e",
            "trace=execve,ioctl",
            "-o",
        ])
        .arg(&trace)
        .args(&args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("vmm.log")).map_err(|e| e.to_string())?)
        .spawn()
        .map_err(|e| format!("strace: {e}"))?;
    let spid = strace.id();
    run.children.push(strace);
    let end = Instant::now() + Duration::from_secs(30);
    let startup = loop {
        if let Some(t) = first_kvm_run(&trace) {
            break t;
        }
        if Instant::now() > end {
            let log = std::fs::read_to_string(dir.join("vmm.log")).unwrap_or_default();
            return Err(format!("{name}: no KVM_RUN within 30 s\n{log}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(SETTLE);
    let pid = traced_child_pid(spid).ok_or("traced VMM pid not found")?;
    let rss =
        rss_without_guest_kib(pid).ok_or(format!("{name}: VMM exited before the RSS sample"))?;
    Ok((startup, rss))
}

fn main() {
    let runs: usize = std::env::args()
        .skip_while(|a| a != "--runs")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(3);
    let kernel = repo().join("build/vmlinux");
    let initrd = repo().join("build/initramfs.cpio");
    let vmm_bin = std::env::var("MYVM_VMM_BIN")
        .map(PathBuf::from)
        .ok()
        .or_else(|| {
            // Next to this example (same target dir), then the default target dir.
            let own = std::env::current_exe()
                .ok()?
                .parent()?
                .parent()?
                .join("myvm-vmm");
            own.exists().then_some(own)
        })
        .unwrap_or_else(|| repo().join("target/release/myvm-vmm"));
    if !vmm_bin.exists() {
        eprintln!(
            "{} missing: cargo build --release -p myvm-vmm --bins --example bench",
            vmm_bin.display()
        );
        std::process::exit(1);
    }
    let hw = std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| myvm_vmm::boot::cpuid::cpuinfo_has_hw_virt(&s))
        .unwrap_or(false);
    let mut cmdline = String::from("console=ttyS0 reboot=t panic=-1 random.trust_cpu=on");
    if !hw {
        cmdline.push(' ');
        cmdline.push_str(myvm_vmm::boot::cmdline::PVM_COMPAT_ARGS);
    }

    let builtin = |_: &Path, serial: &Path, vhost: &Path| -> Vec<String> {
        vec![
            vmm_bin.display().to_string(),
            "--kernel".into(),
            kernel.display().to_string(),
            "--initrd".into(),
            initrd.display().to_string(),
            "--cmdline".into(),
            "console=ttyS0 reboot=t panic=-1 random.trust_cpu=on".into(),
            "--memory-mib".into(),
            MEMORY_MIB.to_string(),
            "--serial-log".into(),
            serial.display().to_string(),
            "--vsock-socket".into(),
            vhost.display().to_string(),
        ]
    };
    let qemu = |_: &Path, serial: &Path, vhost: &Path| -> Vec<String> {
        let m = format!("{MEMORY_MIB}M");
        [
            "qemu-system-x86_64",
            "-M",
            "microvm,acpi=off,memory-backend=mem,x-option-roms=off",
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-m",
            &m,
            "-smp",
            "1",
            "-object",
            &format!("memory-backend-memfd,id=mem,size={m},share=on"),
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
            "-serial",
            &format!("file:{}", serial.display()),
            "-kernel",
            &kernel.display().to_string(),
            "-initrd",
            &initrd.display().to_string(),
            "-append",
            &cmdline,
            "-chardev",
            &format!("socket,id=vsock,path={}", vhost.display()),
            "-device",
            "vhost-user-vsock-device,chardev=vsock",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };

    println!(
        "guest: {} + {}, {MEMORY_MIB} MiB, 1 vCPU, vhost-user vsock; {runs} run(s) each; host hardware virtualization: {}",
        kernel.display(),
        initrd.display(),
        if hw { "yes" } else { "no (KVM-PVM)" }
    );
    let mut results = Vec::new();
    for (name, f) in [
        (
            "builtin",
            &builtin as &dyn Fn(&Path, &Path, &Path) -> Vec<String>,
        ),
        ("qemu", &qemu),
    ] {
        let mut s = Vec::new();
        let mut r = Vec::new();
        for i in 0..runs {
            match measure(&format!("{name}{i}"), f) {
                Ok((t, rss)) => {
                    s.push(t);
                    r.push(rss);
                }
                Err(e) => {
                    eprintln!("{name}: {e}");
                    std::process::exit(1);
                }
            }
        }
        s.sort_by(|a, b| a.total_cmp(b));
        r.sort();
        results.push((name, s[s.len() / 2], r[r.len() / 2]));
    }
    println!(
        "{:<10} {:>28} {:>34}",
        "backend", "start -> first KVM_RUN (ms)", "RSS excl. guest memory (MiB)"
    );
    for (name, t, rss) in &results {
        println!(
            "{:<10} {:>28.1} {:>34.1}",
            name,
            t * 1000.0,
            *rss as f64 / 1024.0
        );
    }
    let (b, q) = (results[0].2 as f64, results[1].2 as f64);
    println!(
        "builtin RSS is {:.1}% of QEMU's (target <= 25%): {}",
        100.0 * b / q,
        if b * 4.0 <= q { "met" } else { "NOT met" }
    );
}
