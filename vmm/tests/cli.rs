//! The `myvm-vmm` process contract: exit codes for bad configuration (before any VM exists),
//! SIGTERM, the parent-death signal, and `--print-config`. The SIGTERM and parent-death tests
//! boot our guest kernel on /dev/kvm (root needed).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

const VMM: &str = env!("CARGO_BIN_EXE_myvm-vmm");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct TmpDir(PathBuf);
impl TmpDir {
    fn new(name: &str) -> Self {
        let d = std::env::temp_dir().join(format!("myvm-vmm-cli-{}-{name}", std::process::id()));
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

fn image_args(serial: &Path) -> Vec<String> {
    vec![
        "--kernel".into(),
        repo().join("build/vmlinux").display().to_string(),
        "--initrd".into(),
        repo().join("build/initramfs.cpio").display().to_string(),
        "--cmdline".into(),
        "console=ttyS0 reboot=t panic=-1".into(),
        "--serial-log".into(),
        serial.display().to_string(),
    ]
}

#[test]
fn bad_configuration_exits_2_with_a_clear_message() {
    let d = TmpDir::new("bad");
    let serial = d.0.join("serial.log");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "--kernel".into(),
                "/nonexistent/vmlinux".into(),
                "--serial-log".into(),
                serial.display().to_string(),
            ],
            "kernel /nonexistent/vmlinux does not exist",
        ),
        (
            [
                image_args(&serial),
                vec!["--memory-mib".into(), "16".into()],
            ]
            .concat(),
            "memory must be 64..=",
        ),
        (
            [image_args(&serial), vec!["--vcpus".into(), "64".into()]].concat(),
            "vcpus must be 1..=32, got 64",
        ),
        (
            [
                image_args(&serial),
                vec!["--fs".into(), "x=/a".into(), "--fs".into(), "x=/b".into()],
            ]
            .concat(),
            "duplicate virtio-fs tag",
        ),
        (
            [
                image_args(&serial),
                vec!["--net".into(), "mac=02:00:00:00:00:01".into()],
            ]
            .concat(),
            "missing tap name",
        ),
        (
            [
                image_args(&serial),
                vec!["--net".into(), "tap=tap0,mac=02:00:00:00:00".into()],
            ]
            .concat(),
            "bad MAC address \"02:00:00:00:00\"",
        ),
        (
            [
                image_args(&serial),
                vec!["--net".into(), "tap=tap0,mac=01:00:5e:00:00:01".into()],
            ]
            .concat(),
            "multicast",
        ),
        (
            [
                image_args(&serial),
                vec![
                    "--net".into(),
                    "tap=tap0,mac=02:00:00:00:00:01,mtu=20".into(),
                ],
            ]
            .concat(),
            "MTU must be 68..=65535, got 20",
        ),
        (
            [
                image_args(&serial),
                vec![
                    "--net".into(),
                    "tap=tap0,mac=02:00:00:00:00:01".into(),
                    "--net".into(),
                    "tap=tap0,mac=02:00:00:00:00:02".into(),
                ],
            ]
            .concat(),
            "duplicate tap \"tap0\"",
        ),
    ];
    for (args, msg) in cases {
        let out = Command::new(VMM).args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(msg),
            "{args:?}: expected {msg:?} in {stderr}"
        );
        assert!(
            !serial.exists(),
            "no VM (and no serial log) for a bad configuration"
        );
    }
    // Unknown flags are usage errors (clap), also exit status 2.
    let out = Command::new(VMM).arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// A tap that cannot be opened is a setup error (status 1) naming the tap and the errno; no VM
/// is created (taps are opened first).
#[test]
fn unusable_tap_exits_1_naming_the_tap_and_the_errno() {
    let d = TmpDir::new("tap");
    let serial = d.0.join("serial.log");
    let kernel = d.0.join("vmlinux");
    std::fs::write(&kernel, b"not used").unwrap();
    for (tap, msg) in [
        (
            "myvm-nosuch0",
            "tap myvm-nosuch0: no such interface in the VMM's network namespace (No such device (os error 19))",
        ),
        ("lo", "tap lo: TUNSETIFF: Invalid argument (os error 22)"),
    ] {
        let out = Command::new(VMM)
            .arg("--kernel")
            .arg(&kernel)
            .arg("--serial-log")
            .arg(&serial)
            .arg("--net")
            .arg(format!("tap={tap},mac=02:00:00:00:00:01"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(msg), "expected {msg:?} in {stderr}");
        assert!(!serial.exists(), "nothing created");
    }
}

#[test]
fn print_config_merges_json_and_flags() {
    let d = TmpDir::new("print");
    let serial = d.0.join("serial.log");
    let json = d.0.join("vm.json");
    std::fs::write(
        &json,
        format!(
            r#"{{"kernel": {:?}, "serial_log": {:?}, "memory_mib": 128}}"#,
            repo().join("build/vmlinux"),
            serial
        ),
    )
    .unwrap();
    let out = Command::new(VMM)
        .arg("--config")
        .arg(&json)
        .args(["--vcpus", "3", "--print-config"])
        .args(["--net", "tap=tap0,mac=02:00:00:00:00:01,mtu=1400"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["vcpus"], 3);
    assert_eq!(v["memory_mib"], 128);
    assert_eq!(v["seccomp"], true);
    assert_eq!(
        v["net"],
        serde_json::json!([{"tap": "tap0", "mac": "02:00:00:00:00:01", "mtu": 1400}])
    );
}

fn vhost_vsock_binary() -> PathBuf {
    if let Ok(p) = std::env::var("MYVM_VHOST_VSOCK") {
        return PathBuf::from(p);
    }
    std::fs::read_to_string(repo().join("build/tools.env"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MYVM_VHOST_VSOCK=").map(PathBuf::from))
        })
        .unwrap_or_else(|| {
            "/var/cache/myvm/tools/vhost-device-vsock-0.3.0/bin/vhost-device-vsock".into()
        })
}

/// Kills and reaps a helper process on drop.
struct Reap(std::process::Child);
impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// With a vhost-user vsock device attached and seccomp on (the default), so the teardown of the
/// daemon connection after SIGTERM runs under the VMM thread's filter.
#[test]
fn sigterm_stops_the_vm_with_status_143() {
    let d = TmpDir::new("term");
    let serial = d.0.join("serial.log");
    let vhost = d.0.join("vsock.vhost.sock");
    let _daemon = Reap(
        Command::new(vhost_vsock_binary())
            .args(["--guest-cid", "3", "--socket"])
            .arg(&vhost)
            .arg("--uds-path")
            .arg(d.0.join("vsock.sock"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let end = Instant::now() + Duration::from_secs(10);
    while !vhost.exists() {
        assert!(Instant::now() < end, "vhost-device-vsock socket missing");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut child = Command::new(VMM)
        .args(image_args(&serial))
        .arg("--vsock-socket")
        .arg(&vhost)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the VM runs (the serial log exists once devices are set up), well before the
    // guest could end on its own.
    let end = Instant::now() + Duration::from_secs(10);
    while !serial.exists() {
        assert!(Instant::now() < end, "VMM never created the serial log");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let end = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("myvm-vmm still running 5 s after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(143), "status {status:?}\n{err}");
    assert!(err.contains("stopping the VM"), "{err}");
}

fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            // State is the field after the ")" of the command name; Z = exited, not yet reaped.
            let state = s
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X"))
        }
        Err(_) => false,
    }
}

#[test]
fn vmm_dies_with_its_parent() {
    let d = TmpDir::new("pdeath");
    let serial = d.0.join("serial.log");
    let args: Vec<String> = image_args(&serial)
        .iter()
        .map(|a| format!("'{a}'"))
        .collect();
    // The shell starts the VMM in the background, prints its pid and exits after a second.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{VMM} {} >/dev/null 2>&1 & echo $!; sleep 1",
            args.join(" ")
        ))
        .output()
        .unwrap();
    let pid: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let end = Instant::now() + Duration::from_secs(5);
    while alive(pid) {
        if Instant::now() > end {
            // SAFETY: cleaning up the process this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("myvm-vmm {pid} outlived its parent");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
