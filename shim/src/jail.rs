//! The VMM's jail, in the spirit of Firecracker's jailer. The VMM (QEMU or `myvm-vmm`) is the
//! host process a hostile guest attacks first, so it runs:
//!
//! - as a uid of its own, leased per VM ([`VmUids`]: no two live VMs share one), with no
//!   supplementary groups, no capabilities and no_new_privs;
//! - in a mount namespace of its own whose root is a small tmpfs, read-only once built, holding
//!   only what it needs: the host's `/usr` (and the merged-usr links) and `/etc/ld.so.cache`
//!   read-only, its binary, kernel and initrd read-only, its serial log, its vhost-user sockets,
//!   and the device nodes it may open (`/dev/null`, `/dev/urandom`, `/dev/kvm` for KVM), owned
//!   by its uid where it needs them. Host paths keep their names inside, so command lines do not
//!   change;
//! - with its taps attached for it before it drops privileges ([`attach_taps`]): inherited fds,
//!   so it needs neither CAP_NET_ADMIN nor `/dev/net/tun`.
//!
//! Everything happens between fork and exec (`pre_exec`), with strings prepared beforehand: the
//! child only makes system calls.

use std::{
    collections::BTreeSet,
    ffi::CString,
    fs::File,
    io,
    os::{
        fd::AsRawFd,
        unix::{fs::FileTypeExt, fs::MetadataExt, process::CommandExt},
    },
    path::{Path, PathBuf},
    process::Command,
};

/// First uid of the VMMs' range; a VM's VMM runs as `VMM_UID_BASE | slot`.
pub const VMM_UID_BASE: u32 = 0x4d57_0000;
/// First uid of the vsock daemons' range; a VM's daemon runs as `VSOCK_UID_BASE | slot`.
pub const VSOCK_UID_BASE: u32 = 0x4d56_0000;
/// Slots per range.
const SLOTS: u32 = 0x1_0000;
/// One byte-range lock per slot (open file description locks: released when the holder's file
/// is closed, also when the shim dies).
const LEASE_FILE: &str = "/run/myvm/uids.lock";

/// The uids of one VM's host processes, leased for as long as this value lives.
#[derive(Debug)]
pub struct VmUids {
    slot: u32,
    _lease: File,
}

impl VmUids {
    /// Leases a free slot, starting from one derived from `seed` (so a VM usually gets the same
    /// uids each time, which keeps logs readable).
    pub fn acquire(seed: &[u8]) -> io::Result<VmUids> {
        Self::acquire_in(Path::new(LEASE_FILE), seed)
    }

    fn acquire_in(lease_file: &Path, seed: &[u8]) -> io::Result<VmUids> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        if let Some(dir) = lease_file.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o711)
                .create(dir)?;
        }
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(lease_file)?;
        let start = (crate::stable_hash(seed) % u64::from(SLOTS)) as u32;
        for i in 0..SLOTS {
            let slot = (start + i) % SLOTS;
            let lock = libc::flock {
                l_type: libc::F_WRLCK as libc::c_short,
                l_whence: libc::SEEK_SET as libc::c_short,
                l_start: libc::off_t::from(slot),
                l_len: 1,
                l_pid: 0,
            };
            // SAFETY: F_OFD_SETLK reads the flock struct we pass.
            if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &lock) } == 0 {
                return Ok(VmUids { slot, _lease: file });
            }
            let e = io::Error::last_os_error();
            if !matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) {
                return Err(e);
            }
        }
        Err(io::Error::other(format!(
            "all {SLOTS} VM uid slots are leased ({})",
            lease_file.display()
        )))
    }

    pub fn vmm(&self) -> u32 {
        VMM_UID_BASE | self.slot
    }

    pub fn vsock(&self) -> u32 {
        VSOCK_UID_BASE | self.slot
    }
}

/// The fd the VMM finds its control channel at ([`crate::hypervisor::control`]).
pub const CONTROL_FD: i32 = 199;

/// Makes `cmd`'s process inherit one end of a new socketpair as fd [`CONTROL_FD`]; returns the
/// other end, and the child's end, which the caller closes once the process is spawned.
pub fn attach_control(
    cmd: &mut Command,
) -> io::Result<(std::os::unix::net::UnixStream, std::os::fd::OwnedFd)> {
    use std::os::fd::{AsRawFd, OwnedFd};
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    let theirs = OwnedFd::from(theirs);
    let fd = theirs.as_raw_fd();
    // SAFETY: dup2 is async-signal-safe; nothing is allocated.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 leaves the new fd without FD_CLOEXEC: the VMM inherits it.
            if libc::dup2(fd, CONTROL_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok((ours, theirs))
}

/// First fd number the VMM finds its taps at (the n-th tap is `TAP_FD_BASE + n`).
pub const TAP_FD_BASE: i32 = 200;

/// The fd the VMM finds its `n`-th tap at.
pub fn tap_fd(n: usize) -> i32 {
    TAP_FD_BASE + n as i32
}

/// Makes `cmd`'s process open each tap of `taps` (in the network namespace it runs in by then)
/// and keep it as fd `TAP_FD_BASE + n` across exec: the VMM uses them without privileges.
/// Register it after the netns join and before [`Jail::enter`].
pub fn attach_taps(cmd: &mut Command, taps: &[String]) -> io::Result<()> {
    /// `struct ifreq` with the `ifr_flags` member of its union (40 bytes on x86_64).
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    let mut reqs = Vec::new();
    for tap in taps {
        if tap.is_empty() || tap.len() >= libc::IFNAMSIZ || tap.contains('\0') {
            return Err(io::Error::other(format!("bad tap name {tap:?}")));
        }
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
            _pad: [0; 22],
        };
        req.name[..tap.len()].copy_from_slice(tap.as_bytes());
        reqs.push(req);
    }
    // SAFETY: open/ioctl/dup2/close are async-signal-safe; nothing is allocated.
    unsafe {
        cmd.pre_exec(move || {
            for (n, req) in reqs.iter_mut().enumerate() {
                let fd = libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
                if fd < 0 || libc::ioctl(fd, libc::TUNSETIFF, req as *mut IfReq) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // dup2 leaves the new fd without FD_CLOEXEC: the VMM inherits it.
                if libc::dup2(fd, tap_fd(n)) < 0 {
                    return Err(io::Error::last_os_error());
                }
                libc::close(fd);
            }
            Ok(())
        });
    }
    Ok(())
}

#[derive(Debug)]
enum Step {
    Dir(CString),
    File(CString),
    Bind {
        src: CString,
        dst: CString,
        writable: bool,
    },
    Link {
        target: CString,
        link: CString,
    },
    Device {
        path: CString,
        mode: libc::mode_t,
        rdev: libc::dev_t,
        owned: bool,
    },
}

/// A jail being described; [`Jail::enter`] makes a command's process enter it.
#[derive(Debug)]
pub struct Jail {
    /// Host directory the jail's tmpfs is mounted on (in the child's mount namespace only).
    root: PathBuf,
    uid: u32,
    steps: Vec<Step>,
    made: BTreeSet<PathBuf>,
    /// Host directories bound in whole (what lies below them is visible already).
    bound: Vec<PathBuf>,
}

impl Jail {
    /// A jail on `root` (an empty directory, made if missing; the jail's tmpfs is mounted on it
    /// in the jailed process's mount namespace only, so one serves every jail of a VM) for a
    /// process that will run as `uid`, holding the host's system directories read-only.
    pub fn new(root: &Path, uid: u32) -> io::Result<Jail> {
        std::fs::create_dir_all(root)?;
        let mut j = Jail {
            root: root.to_path_buf(),
            uid,
            steps: Vec::new(),
            made: BTreeSet::new(),
            bound: Vec::new(),
        };
        for dir in [
            "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
        ] {
            let path = Path::new(dir);
            match std::fs::symlink_metadata(path) {
                Ok(m) if m.file_type().is_symlink() => {
                    let target = std::fs::read_link(path)?;
                    j.steps.push(Step::Link {
                        target: crate::c_path(&target)?,
                        link: crate::c_path(&j.inside(path))?,
                    });
                }
                Ok(m) if m.is_dir() => j.bind(path, false)?,
                _ => {}
            }
        }
        if Path::new("/etc/ld.so.cache").is_file() {
            j.bind(Path::new("/etc/ld.so.cache"), false)?;
        }
        for dev in ["/dev/null", "/dev/zero", "/dev/urandom"] {
            j.device(Path::new(dev), false)?;
        }
        Ok(j)
    }

    fn inside(&self, path: &Path) -> PathBuf {
        self.root.join(path.strip_prefix("/").unwrap_or(path))
    }

    /// Creates the directories leading to `path` inside the jail (and `path` itself if `dir`).
    fn make_dirs(&mut self, path: &Path, dir: bool) -> io::Result<()> {
        let mut wanted: Vec<&Path> = path.ancestors().skip(usize::from(!dir)).collect();
        wanted.reverse();
        for p in wanted {
            if p == Path::new("/") || !self.made.insert(p.to_path_buf()) {
                continue;
            }
            self.steps.push(Step::Dir(crate::c_path(&self.inside(p))?));
        }
        Ok(())
    }

    /// Makes the host's `path` (file, socket or directory) visible at the same path inside,
    /// read-only unless `writable`.
    pub fn bind(&mut self, path: &Path, writable: bool) -> io::Result<()> {
        if !path.is_absolute() {
            return Err(io::Error::other(format!(
                "jail: {} is not an absolute path",
                path.display()
            )));
        }
        let meta = std::fs::metadata(path)
            .map_err(|e| io::Error::new(e.kind(), format!("jail: {}: {e}", path.display())))?;
        if let Some(dir) = self.bound.iter().find(|d| path.starts_with(d)) {
            if writable {
                return Err(io::Error::other(format!(
                    "jail: {} lies in {}, bound read-only",
                    path.display(),
                    dir.display()
                )));
            }
            return Ok(());
        }
        self.make_dirs(path, meta.is_dir())?;
        if meta.is_dir() {
            self.bound.push(path.to_path_buf());
        }
        let dst = crate::c_path(&self.inside(path))?;
        if !meta.is_dir() {
            self.steps.push(Step::File(dst.clone()));
        }
        self.steps.push(Step::Bind {
            src: crate::c_path(path)?,
            dst,
            writable,
        });
        Ok(())
    }

    /// A device node like the host's `path` (same type and numbers; the host node itself is not
    /// reachable). `owned`: 0600 and owned by the jail's uid (e.g. /dev/kvm); else 0666, root's.
    pub fn device(&mut self, path: &Path, owned: bool) -> io::Result<()> {
        let meta = std::fs::metadata(path)
            .map_err(|e| io::Error::new(e.kind(), format!("jail: {}: {e}", path.display())))?;
        if !meta.file_type().is_char_device() {
            return Err(io::Error::other(format!(
                "jail: {} is not a character device",
                path.display()
            )));
        }
        self.make_dirs(path, false)?;
        self.steps.push(Step::Device {
            path: crate::c_path(&self.inside(path))?,
            mode: libc::S_IFCHR | if owned { 0o600 } else { 0o666 },
            rdev: meta.rdev(),
            owned,
        });
        Ok(())
    }

    /// Makes `cmd`'s process build the jail and enter it, then become the jail's uid (no
    /// groups, no capabilities, no_new_privs). Register it after anything that needs the host's
    /// mount namespace or root (the netns join, [`attach_taps`]).
    pub fn enter(self, cmd: &mut Command) -> io::Result<()> {
        let root = crate::c_path(&self.root)?;
        let uid = self.uid;
        let steps = self.steps;
        // SAFETY: only system calls between fork and exec, on strings built above.
        unsafe {
            cmd.pre_exec(move || {
                let check = |r: libc::c_int| {
                    if r < 0 {
                        Err(io::Error::last_os_error())
                    } else {
                        Ok(())
                    }
                };
                let null = std::ptr::null::<libc::c_char>();
                check(libc::unshare(libc::CLONE_NEWNS))?;
                // Nothing done here may reach the host's mount namespace.
                check(libc::mount(
                    null,
                    c"/".as_ptr(),
                    null,
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                check(libc::mount(
                    c"myvm-jail".as_ptr(),
                    root.as_ptr(),
                    c"tmpfs".as_ptr(),
                    libc::MS_NOSUID,
                    c"mode=0755,size=1m".as_ptr().cast(),
                ))?;
                for step in &steps {
                    match step {
                        Step::Dir(p) => check(libc::mkdir(p.as_ptr(), 0o755))?,
                        Step::File(p) => {
                            let fd = libc::open(p.as_ptr(), libc::O_CREAT | libc::O_CLOEXEC, 0o600);
                            check(fd)?;
                            libc::close(fd);
                        }
                        Step::Link { target, link } => {
                            check(libc::symlink(target.as_ptr(), link.as_ptr()))?
                        }
                        Step::Bind { src, dst, writable } => {
                            check(libc::mount(
                                src.as_ptr(),
                                dst.as_ptr(),
                                null,
                                libc::MS_BIND | libc::MS_REC,
                                std::ptr::null(),
                            ))?;
                            let mut flags =
                                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV;
                            if !writable {
                                flags |= libc::MS_RDONLY;
                            }
                            check(libc::mount(
                                null,
                                dst.as_ptr(),
                                null,
                                flags,
                                std::ptr::null(),
                            ))?;
                        }
                        Step::Device {
                            path,
                            mode,
                            rdev,
                            owned,
                        } => {
                            check(libc::mknod(path.as_ptr(), *mode, *rdev))?;
                            if *owned {
                                check(libc::chown(path.as_ptr(), uid, uid))?;
                            }
                            // mknod applies the umask.
                            check(libc::chmod(path.as_ptr(), *mode & 0o777))?;
                        }
                    }
                }
                check(libc::chdir(root.as_ptr()))?;
                check(libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as _)?;
                check(libc::umount2(c".".as_ptr(), libc::MNT_DETACH))?;
                check(libc::chdir(c"/".as_ptr()))?;
                check(libc::mount(
                    null,
                    c"/".as_ptr(),
                    null,
                    libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID,
                    std::ptr::null(),
                ))?;
                Ok(())
            });
        }
        crate::process::run_unprivileged(cmd, uid);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_slots_are_exclusive_while_leased() {
        let dir = std::env::temp_dir().join(format!("myvm-uids-{}", std::process::id()));
        let file = dir.join("uids.lock");
        let a = VmUids::acquire_in(&file, b"vm-a").unwrap();
        // The same seed again: the slot is taken, the next one is leased.
        let b = VmUids::acquire_in(&file, b"vm-a").unwrap();
        assert_ne!(a.slot, b.slot);
        assert_eq!(a.vmm() & 0xffff, a.vsock() & 0xffff);
        assert_eq!(a.vmm() >> 16, 0x4d57);
        assert_eq!(a.vsock() >> 16, 0x4d56);
        // Released with its value.
        let slot = a.slot;
        drop(a);
        assert_eq!(VmUids::acquire_in(&file, b"vm-a").unwrap().slot, slot);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_jail_paths_are_refused_before_spawning() {
        let root = std::env::temp_dir().join(format!("myvm-jail-{}", std::process::id()));
        let mut j = Jail::new(&root, 1).unwrap();
        std::fs::remove_dir(&root).unwrap();
        let e = j.bind(Path::new("/nonexistent/kernel"), false).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/kernel"), "{e}");
        assert!(j.bind(Path::new("relative"), false).is_err());
        // Below a directory bound read-only: already there, and never writable.
        let steps = j.steps.len();
        j.bind(Path::new("/usr/bin/env"), false).unwrap();
        assert_eq!(j.steps.len(), steps);
        assert!(j.bind(Path::new("/usr/bin/env"), true).is_err());
        let e = j.device(Path::new("/etc/hostname"), true).unwrap_err();
        assert!(e.to_string().contains("not a character device"), "{e}");
    }
}
