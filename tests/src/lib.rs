//! Helpers for myvm's end-to-end tests: finding the built guest image and daemons, and checking
//! that nothing is left behind.
//!
//! The tests need root, QEMU and the image from `make image`; they fail (never skip) with a clear
//! message when something is missing. Paths come from the environment (`make test` sets them) or
//! from `build/image.env` and `build/tools.env` in the workspace.

use std::{
    path::{Path, PathBuf},
    sync::Once,
};

/// Workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Loads `build/image.env` and `build/tools.env` into the environment (variables already set win),
/// and checks we are root.
pub fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for file in ["build/image.env", "build/tools.env"] {
            let path = workspace().join(file);
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e} (run `make image` first)", path.display()));
            for line in text.lines() {
                if let Some((k, v)) = line.split_once('=') {
                    if std::env::var_os(k).is_none() {
                        std::env::set_var(k, v);
                    }
                }
            }
        }
    });
    assert!(
        nix::unistd::geteuid().is_root(),
        "the end-to-end tests need root (they start VMs and daemons)"
    );
}

/// The guest kernel release we built (from `build/image.env`).
pub fn built_kernel_release() -> String {
    setup();
    std::env::var("MYVM_KERNEL_RELEASE").expect("MYVM_KERNEL_RELEASE (build/image.env)")
}

/// True if a process with this pid exists (and is not a zombie we still own).
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// Polls `f` every 100 ms until it is true; panics naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: std::time::Duration, mut f: impl FnMut() -> bool) {
    let t = std::time::Instant::now();
    while !f() {
        assert!(t.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A private temporary directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        let base = std::env::temp_dir();
        for i in 0..1000u32 {
            let p = base.join(format!("{prefix}-{}-{i}", std::process::id()));
            if std::fs::create_dir(&p).is_ok() {
                return TempDir(p);
            }
        }
        panic!("cannot create a temp dir under {}", base.display());
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub mod containerd;
pub mod cri;
pub mod events;
pub mod guest;
pub mod l1;
pub mod pods;
pub mod portforward;

/// Creates a minimal busybox root filesystem in `dir` (static busybox + applet links, passwd,
/// group), like a tiny image's unpacked rootfs.
pub fn busybox_rootfs(dir: &Path) {
    use std::os::unix::fs::symlink;
    for d in [
        "bin",
        "sbin",
        "etc",
        "tmp",
        "proc",
        "sys",
        "dev",
        "root",
        "home/user",
        "var",
        "data",
    ] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).expect("busybox-static");
    let out = std::process::Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .unwrap();
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        if applet != "busybox" {
            let _ = symlink("busybox", dir.join("bin").join(applet));
        }
    }
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("etc/group"),
        "root:x:0:\nwheel:x:10:user\nuser:x:1000:\nnogroup:x:65534:\n",
    )
    .unwrap();
    std::fs::write(dir.join("etc/hostname"), "image\n").unwrap();
}

/// A line of /proc/<pid>/status, e.g. `status_field(pid, "Uid:")`.
pub fn status_field(pid: u32, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field).map(|v| v.trim().to_string()))
        .unwrap_or_default()
}

/// The guest RAM a VMM holds (MiB): guest RAM is a shared memfd, so its resident pages show as
/// the VMM's RssShmem.
pub fn guest_resident_mib(vmm: u32) -> u64 {
    let kib: u64 = status_field(vmm, "RssShmem:")
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap_or(0);
    kib / 1024
}

/// Checks that `pid` (a VMM) runs jailed: a VMM uid, no groups, no capabilities, no_new_privs,
/// in a mount namespace of its own whose root holds the host's /usr but not its homes, its
/// users or containerd's state, and device nodes only for null, zero, urandom (and kvm).
pub fn assert_jailed(pid: u32) {
    assert_jailed_as(pid, myvm::jail::VMM_UID_BASE)
}

/// [`assert_jailed`] for a process of the uid range starting at `uid_base`.
pub fn assert_jailed_as(pid: u32, uid_base: u32) {
    let uid: u32 = status_field(pid, "Uid:")
        .split_whitespace()
        .next()
        .and_then(|u| u.parse().ok())
        .unwrap_or(0);
    assert_eq!(uid >> 16, uid_base >> 16, "uid {uid} of {pid}");
    assert_eq!(status_field(pid, "Groups:"), "");
    assert_eq!(status_field(pid, "CapEff:"), "0000000000000000");
    assert_eq!(status_field(pid, "CapPrm:"), "0000000000000000");
    assert_eq!(status_field(pid, "NoNewPrivs:"), "1");
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/mnt")).unwrap();
    assert_ne!(
        ns(&pid.to_string()),
        ns("self"),
        "VMM in the host's mount namespace"
    );
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    assert!(root.join("usr/bin").is_dir(), "the jail has /usr");
    for hidden in [
        "etc/passwd",
        "etc/shadow",
        "root",
        "home",
        "var/lib",
        "run/containerd",
        "proc",
        "sys",
    ] {
        assert!(
            !root.join(hidden).exists(),
            "/{hidden} is visible in the VMM's jail"
        );
    }
    let mut devs: Vec<String> = std::fs::read_dir(root.join("dev"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|d| d != "kvm")
        .collect();
    devs.sort();
    assert_eq!(devs, ["null", "urandom", "zero"]);
    // Its root is read-only.
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let root_mount = mounts
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/"))
        .unwrap();
    assert!(
        root_mount.split(' ').nth(5).unwrap().starts_with("ro"),
        "{root_mount}"
    );
}

/// How a VMM ends after a successful Shutdown: the host stops it with SIGTERM once the agent
/// has quiesced the guest, on which QEMU exits 0 and myvm-vmm 143.
pub fn clean_vmm_exit(status: std::process::ExitStatus) -> bool {
    status.success() || status.code() == Some(143)
}
