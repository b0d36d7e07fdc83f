//! PID 1 duties: pseudo filesystems, cgroup v2 controllers, ending the VM.

use std::{fs, path::Path, time::Duration};

use anyhow::{Context, Result};
use nix::{
    mount::{mount, MsFlags},
    sys::{
        reboot::{reboot, RebootMode},
        signal::{kill, Signal},
    },
    unistd::{sync, Pid},
};

struct Mount {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

const fn m(
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
) -> Mount {
    Mount {
        source,
        target,
        fstype,
        flags,
        data,
    }
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

const MOUNTS: &[Mount] = &[
    m("proc", "/proc", "proc", NOSUID_NODEV_NOEXEC, None),
    m("sysfs", "/sys", "sysfs", NOSUID_NODEV_NOEXEC, None),
    m(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    ),
    m(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    ),
    m(
        "shm",
        "/dev/shm",
        "tmpfs",
        NOSUID_NODEV_NOEXEC,
        Some("mode=1777"),
    ),
    m(
        "tmpfs",
        "/run",
        "tmpfs",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        Some("mode=0755"),
    ),
    m(
        "tmpfs",
        "/tmp",
        "tmpfs",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        Some("mode=1777"),
    ),
    m(
        "cgroup2",
        "/sys/fs/cgroup",
        "cgroup2",
        NOSUID_NODEV_NOEXEC,
        Some("nsdelegate"),
    ),
];

/// Controllers enabled for child cgroups (containers get their own cgroup below the root).
const CGROUP_CONTROLLERS: &[&str] = &["cpu", "cpuset", "io", "memory", "pids"];

pub fn setup() -> Result<()> {
    switch_root_to_tmpfs().context("moving / off the initramfs")?;
    for mnt in MOUNTS {
        fs::create_dir_all(mnt.target).with_context(|| format!("mkdir {}", mnt.target))?;
        mount(
            Some(mnt.source),
            mnt.target,
            Some(mnt.fstype),
            mnt.flags,
            mnt.data,
        )
        .with_context(|| format!("mount {} on {}", mnt.fstype, mnt.target))?;
    }
    // /dev/ptmx must point at this devpts instance.
    let _ = fs::remove_file("/dev/ptmx");
    std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx").context("symlink /dev/ptmx")?;
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        if !Path::new(link).exists() {
            std::os::unix::fs::symlink(target, link).with_context(|| format!("symlink {link}"))?;
        }
    }
    enable_cgroup_controllers();
    nix::unistd::sethostname("myvm").context("sethostname")?;
    crate::network::loopback_up()?;
    std::env::set_var("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    Ok(())
}

/// The initramfs is the kernel's `rootfs` mount, which has no parent: `pivot_root` (used to enter
/// every container) refuses to run while the root is on it. Like `switch_root`, copy the few files
/// of the initramfs (all but the agent) into a tmpfs, move that over `/`, chroot into it, and drop
/// the originals.
fn switch_root_to_tmpfs() -> Result<()> {
    const NEW: &str = "/.newroot";
    fs::create_dir_all(NEW)?;
    mount(
        Some("tmpfs"),
        NEW,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .context("mount tmpfs for the new root")?;
    for entry in fs::read_dir("/")? {
        let path = entry?.path();
        if path == Path::new(NEW) {
            continue;
        }
        // Not the agent itself (`/init`, 8 MB: most of the copy's time under TCG). It runs from
        // the mapping it started with and nothing executes it again (libcontainer clones, it
        // does not re-exec), so the new root does without it.
        if path != Path::new("/init") {
            copy_tree(&path, &Path::new(NEW).join(path.strip_prefix("/")?))
                .with_context(|| format!("copy {}", path.display()))?;
        }
        let _ = remove_tree(&path);
    }
    nix::unistd::chdir(NEW)?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .context("move the new root onto /")?;
    nix::unistd::chroot(".").context("chroot")?;
    nix::unistd::chdir("/")?;
    Ok(())
}

fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    let meta = fs::symlink_metadata(src)?;
    let ft = meta.file_type();
    if ft.is_dir() {
        fs::create_dir(dst)?;
        for entry in fs::read_dir(src)? {
            let entry = entry?;
            copy_tree(&entry.path(), &dst.join(entry.file_name()))?;
        }
    } else if ft.is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(src)?, dst)?;
        return Ok(());
    } else if ft.is_char_device() || ft.is_block_device() {
        let kind = if ft.is_char_device() {
            nix::sys::stat::SFlag::S_IFCHR
        } else {
            nix::sys::stat::SFlag::S_IFBLK
        };
        let mode = nix::sys::stat::Mode::from_bits_truncate(meta.mode());
        nix::sys::stat::mknod(dst, kind, mode, meta.rdev())?;
    } else {
        fs::copy(src, dst)?;
    }
    fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    Ok(())
}

fn remove_tree(path: &Path) -> std::io::Result<()> {
    if fs::symlink_metadata(path)?.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
}

fn enable_cgroup_controllers() {
    let file = "/sys/fs/cgroup/cgroup.subtree_control";
    for c in CGROUP_CONTROLLERS {
        // One at a time, so one controller the kernel lacks does not hide the others.
        if let Err(e) = fs::write(file, format!("+{c}")) {
            eprintln!("myvm-agent: cannot enable cgroup controller {c}: {e}");
        }
    }
}

/// Stops every process but PID 1 and writes every dirty page back (virtio-fs included, so to
/// the host): after this the VM holds nothing the host would lose by stopping it.
pub fn quiesce() {
    // Normally every container is gone by now (the host deletes them first) and nothing waits.
    // Otherwise processes get up to 100 ms after SIGTERM. (kill(-1) itself cannot tell: it
    // counts kernel threads, which ignore signals.)
    if user_processes_left() {
        let everyone = Pid::from_raw(-1);
        let _ = kill(everyone, Signal::SIGTERM);
        let deadline = std::time::Instant::now() + Duration::from_millis(100);
        while user_processes_left() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = kill(everyone, Signal::SIGKILL);
    }
    sync();
}

/// True while a live process other than PID 1 runs (not a kernel thread, not a zombie).
fn user_processes_left() -> bool {
    const PF_KTHREAD: u64 = 0x0020_0000;
    let Ok(dir) = fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten().any(|e| {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            return false;
        };
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command's closing parenthesis: state, ppid, pgrp, session, tty_nr,
        // tpgid, flags, ...
        let mut f = stat
            .rsplit_once(')')
            .map_or("", |(_, r)| r)
            .split_whitespace();
        let state = f.next().unwrap_or("Z");
        let flags: u64 = f.nth(5).and_then(|v| v.parse().ok()).unwrap_or(PF_KTHREAD);
        pid != 1 && state != "Z" && flags & PF_KTHREAD == 0
    })
}

/// Stops every process, syncs and resets the guest. Both backends exit on guest reset.
pub fn end_vm() -> ! {
    quiesce();
    // With `reboot=t` on the kernel command line this is a triple fault: QEMU runs with
    // -no-reboot and exits; the builtin VMM exits on the reset.
    let _ = reboot(RebootMode::RB_AUTOBOOT);
    // Unreachable unless reboot failed; PID 1 must not return.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
