//! Just enough rtnetlink to configure the pod's interfaces in the guest: link up + MTU, an
//! address, a route. One request at a time, each acknowledged (NLM_F_ACK) before the next.

use std::{
    io,
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const IFLA_MTU: u16 = 4;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;

pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

fn family(ip: &IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => libc::AF_INET as u8,
        IpAddr::V6(_) => libc::AF_INET6 as u8,
    }
}

fn octets(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// Appends a route attribute (header, payload, padding to 4 bytes).
fn attr(buf: &mut Vec<u8>, kind: u16, data: &[u8]) {
    buf.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(data);
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

impl Netlink {
    pub fn open() -> io::Result<Netlink> {
        // SAFETY: plain socket(2); the fd is owned right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: an all-zero sockaddr_nl (pid 0: the kernel assigns one) of the right size.
        let rc = unsafe {
            let mut sa: libc::sockaddr_nl = std::mem::zeroed();
            sa.nl_family = libc::AF_NETLINK as u16;
            libc::bind(
                fd.as_raw_fd(),
                &sa as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Netlink { fd, seq: 0 })
    }

    /// Sends one request and waits for its acknowledgement (Err carries the kernel's errno).
    fn request(&mut self, kind: u16, flags: u16, payload: &[u8]) -> io::Result<()> {
        self.seq += 1;
        let len = NLMSG_HDRLEN + payload.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        let flags = flags | (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
        msg.extend_from_slice(&flags.to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(payload);
        // SAFETY: msg is a valid buffer of msg.len() bytes.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; 8192];
        loop {
            // SAFETY: buf is a valid, writable buffer of buf.len() bytes.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut off = 0;
            let n = n as usize;
            while off + NLMSG_HDRLEN <= n {
                let mlen = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
                let mtype = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap());
                let seq = u32::from_ne_bytes(buf[off + 8..off + 12].try_into().unwrap());
                if mlen < NLMSG_HDRLEN || off + mlen > n {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "bad netlink reply",
                    ));
                }
                if mtype == NLMSG_ERROR && seq == self.seq && mlen >= NLMSG_HDRLEN + 4 {
                    let at = off + NLMSG_HDRLEN;
                    let err = i32::from_ne_bytes(buf[at..at + 4].try_into().unwrap());
                    return if err == 0 {
                        Ok(())
                    } else {
                        Err(io::Error::from_raw_os_error(-err))
                    };
                }
                off += (mlen + 3) & !3;
            }
        }
    }

    /// Sets the link up, and its MTU if given.
    pub fn link_up(&mut self, index: u32, mtu: Option<u32>) -> io::Result<()> {
        let mut p = Vec::new();
        p.push(libc::AF_UNSPEC as u8);
        p.push(0);
        p.extend_from_slice(&0u16.to_ne_bytes()); // type
        p.extend_from_slice(&(index as i32).to_ne_bytes());
        p.extend_from_slice(&(libc::IFF_UP as u32).to_ne_bytes()); // flags
        p.extend_from_slice(&(libc::IFF_UP as u32).to_ne_bytes()); // change
        if let Some(mtu) = mtu {
            attr(&mut p, IFLA_MTU, &mtu.to_ne_bytes());
        }
        self.request(RTM_NEWLINK, 0, &p)
    }

    /// Adds `ip/prefix` to the interface.
    pub fn add_address(&mut self, index: u32, ip: IpAddr, prefix: u8) -> io::Result<()> {
        let mut p = vec![family(&ip), prefix, 0, libc::RT_SCOPE_UNIVERSE];
        p.extend_from_slice(&index.to_ne_bytes());
        attr(&mut p, IFA_LOCAL, &octets(&ip));
        attr(&mut p, IFA_ADDRESS, &octets(&ip));
        let flags = (libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
        self.request(RTM_NEWADDR, flags, &p)
    }

    /// Adds a route to `dest` (None: the default route) through `gateway` (None: on-link).
    pub fn add_route(
        &mut self,
        dest: Option<(IpAddr, u8)>,
        gateway: Option<IpAddr>,
        index: u32,
    ) -> io::Result<()> {
        let fam = dest
            .map(|(d, _)| family(&d))
            .or(gateway.as_ref().map(family))
            .unwrap_or(libc::AF_INET as u8);
        let scope = if gateway.is_some() {
            libc::RT_SCOPE_UNIVERSE
        } else {
            libc::RT_SCOPE_LINK
        };
        let mut p = vec![
            fam,
            dest.map_or(0, |(_, l)| l),
            0,
            0,
            libc::RT_TABLE_MAIN,
            libc::RTPROT_BOOT,
            scope,
            libc::RTN_UNICAST,
        ];
        p.extend_from_slice(&0u32.to_ne_bytes());
        if let Some((d, _)) = dest {
            attr(&mut p, RTA_DST, &octets(&d));
        }
        if let Some(g) = gateway {
            attr(&mut p, RTA_GATEWAY, &octets(&g));
        }
        attr(&mut p, RTA_OIF, &index.to_ne_bytes());
        let flags = (libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
        self.request(RTM_NEWROUTE, flags, &p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded() {
        let mut b = Vec::new();
        attr(&mut b, 5, &[1, 2, 3, 4, 5]);
        assert_eq!(b.len(), 12);
        assert_eq!(&b[..4], &[9, 0, 5, 0]);
    }

    /// Real rtnetlink, in a private network namespace of a throw-away thread (root only).
    #[test]
    #[ignore = "needs root: a private network namespace (make test runs it)"]
    fn configures_loopback_in_a_private_netns() {
        assert!(nix::unistd::geteuid().is_root(), "needs root");
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let mut nl = Netlink::open().unwrap();
            let lo = nix::net::if_::if_nametoindex("lo").unwrap();
            nl.link_up(lo, None).unwrap();
            let ip: IpAddr = "10.99.0.1".parse().unwrap();
            nl.add_address(lo, ip, 8).unwrap();
            let dup = nl.add_address(lo, ip, 8).unwrap_err();
            assert_eq!(dup.raw_os_error(), Some(libc::EEXIST));
            nl.add_route(Some(("10.98.0.0".parse().unwrap(), 16)), None, lo)
                .unwrap();
            let routes = std::fs::read_to_string("/proc/thread-self/net/route").unwrap();
            assert!(routes.contains("0000620A"), "{routes}"); // 10.98.0.0, little-endian hex
            let bad = nl.add_route(None, Some("192.0.2.1".parse().unwrap()), 9999);
            assert!(bad.is_err());
        })
        .join()
        .unwrap();
    }
}
