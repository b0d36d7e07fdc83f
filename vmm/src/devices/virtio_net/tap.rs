//! A tap interface opened by name: `/dev/net/tun` with TUNSETIFF(IFF_TAP | IFF_NO_PI |
//! IFF_VNET_HDR), a 12-byte `virtio_net_hdr_v1` in front of every frame (TUNSETVNETHDRSZ), no
//! offloads (TUNSETOFFLOAD 0: the kernel hands us complete, checksummed frames), non-blocking.
//!
//! The tap must already exist in the calling thread's network namespace: TUNSETIFF would create
//! a fresh, unconnected one, so the name is looked up first. A jailed VMM (no CAP_NET_ADMIN, no
//! /dev/net/tun) gets its taps already attached, as inherited fds ([`Tap::from_fd`]).

use std::{
    ffi::CString,
    fs::File,
    io::{self, Read, Write},
    os::{
        fd::{AsRawFd, RawFd},
        unix::fs::OpenOptionsExt,
    },
};

use super::VNET_HDR_LEN;

const fn iow(nr: u64, size: usize) -> u64 {
    (1 << 30) | ((size as u64) << 16) | ((b'T' as u64) << 8) | nr
}
/// `_IOW('T', 202, int)`
pub const TUNSETIFF: u64 = iow(202, 4);
/// `_IOW('T', 208, unsigned int)`
pub const TUNSETOFFLOAD: u64 = iow(208, 4);
/// `_IOW('T', 216, int)`
pub const TUNSETVNETHDRSZ: u64 = iow(216, 4);
/// `_IOR('T', 210, unsigned int)`
pub const TUNGETIFF: u64 = (2 << 30) | (4 << 16) | ((b'T' as u64) << 8) | 210;

const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

/// `struct ifreq` with the `ifr_flags` member of its union (40 bytes on x86_64).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("tap {tap}: no such interface in the VMM's network namespace ({err})")]
    NotFound { tap: String, err: io::Error },
    #[error("tap {tap}: opening /dev/net/tun: {err}")]
    OpenTun { tap: String, err: io::Error },
    #[error("tap {tap}: {op}: {err}{hint}")]
    Ioctl {
        tap: String,
        op: &'static str,
        err: io::Error,
        hint: &'static str,
    },
    #[error("tap name {0:?} is not a valid interface name")]
    BadName(String),
    #[error("tap {tap}: fd {fd} {why}")]
    BadFd { tap: String, fd: RawFd, why: String },
}

/// An open tap queue.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Opens the existing tap `name` (see the module documentation).
    pub fn open(name: &str) -> Result<Tap, TapError> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return Err(TapError::BadName(name.to_owned()));
        }
        let cname = CString::new(name).map_err(|_| TapError::BadName(name.to_owned()))?;
        // SAFETY: valid NUL-terminated string; if_nametoindex only reads it.
        if unsafe { libc::if_nametoindex(cname.as_ptr()) } == 0 {
            return Err(TapError::NotFound {
                tap: name.to_owned(),
                err: io::Error::last_os_error(),
            });
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|err| TapError::OpenTun {
                tap: name.to_owned(),
                err,
            })?;
        let tap = Tap {
            file,
            name: name.to_owned(),
        };
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `req` is (same layout/size).
        let r = unsafe { libc::ioctl(tap.file.as_raw_fd(), TUNSETIFF as _, &mut req) };
        tap.check(r, "TUNSETIFF")?;
        tap.configure()
    }

    /// Takes over `fd`, a `/dev/net/tun` file already attached to the tap `name` (with IFF_TAP,
    /// IFF_NO_PI and IFF_VNET_HDR) by whoever started the VMM. The fd must be open and owned by
    /// nobody else in this process.
    pub fn from_fd(name: &str, fd: RawFd) -> Result<Tap, TapError> {
        let bad = |why: String| TapError::BadFd {
            tap: name.to_owned(),
            fd,
            why,
        };
        // SAFETY: F_GETFD only checks that `fd` is open.
        if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(bad(format!("is not open ({})", io::Error::last_os_error())));
        }
        // SAFETY: `fd` is open and, by this function's contract, ours alone from here on.
        let file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: 0,
            _pad: [0; 22],
        };
        // SAFETY: TUNGETIFF writes a `struct ifreq`, which `req` is.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNGETIFF as _, &mut req) } < 0 {
            let e = io::Error::last_os_error();
            return Err(bad(format!("is not an attached tap (TUNGETIFF: {e})")));
        }
        let got = req.name.split(|&b| b == 0).next().unwrap_or_default();
        if got != name.as_bytes() {
            return Err(bad(format!(
                "is attached to {:?}, not to it",
                String::from_utf8_lossy(got)
            )));
        }
        let want = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
        if req.flags & want != want {
            return Err(bad(format!(
                "lacks IFF_TAP | IFF_NO_PI | IFF_VNET_HDR (flags {:#x})",
                req.flags
            )));
        }
        // SAFETY: plain fcntl flag calls on our fd.
        let r = unsafe {
            let fl = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC)
        };
        if r < 0 {
            return Err(bad(format!("fcntl: {}", io::Error::last_os_error())));
        }
        Tap {
            file,
            name: name.to_owned(),
        }
        .configure()
    }

    /// 12-byte vnet headers and no offloads.
    fn configure(self) -> Result<Tap, TapError> {
        let tap = self;
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads an int through the pointer.
        let r = unsafe { libc::ioctl(tap.file.as_raw_fd(), TUNSETVNETHDRSZ as _, &hdr_len) };
        tap.check(r, "TUNSETVNETHDRSZ")?;
        // SAFETY: TUNSETOFFLOAD takes its flags by value; 0 = no offloads.
        let r =
            unsafe { libc::ioctl(tap.file.as_raw_fd(), TUNSETOFFLOAD as _, 0 as libc::c_ulong) };
        tap.check(r, "TUNSETOFFLOAD")?;
        Ok(tap)
    }

    fn check(&self, r: libc::c_int, op: &'static str) -> Result<(), TapError> {
        if r >= 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        let hint = match err.raw_os_error() {
            Some(libc::EINVAL) if op == "TUNSETIFF" => {
                " (is it a tap? a tun or another kind of interface has that name)"
            }
            Some(libc::EBUSY) => " (another process has this single-queue tap open)",
            Some(libc::EPERM) => {
                " (not allowed to attach to it: CAP_NET_ADMIN or the tap's owner needed)"
            }
            _ => "",
        };
        Err(TapError::Ioctl {
            tap: self.name.clone(),
            op,
            err,
            hint,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one frame (virtio_net_hdr_v1 + Ethernet frame); WouldBlock when none is queued.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes one frame (virtio_net_hdr_v1 + Ethernet frame).
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        (&self.file).write(buf)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
