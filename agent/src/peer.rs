//! Who may talk to the agent: the host, and nobody else. Every connection accepted on the agent's
//! vsock ports (API and stdio) is checked against its peer address; one from any other CID (a
//! guest process through a vsock loopback transport, should the kernel ever have one) is closed
//! at once. Unix sockets (`--listen unix://…`, the test mode outside a VM) are exempt: their
//! access is the socket file's permissions.

use std::os::fd::RawFd;

use nix::sys::socket::{getpeername, SockaddrLike, SockaddrStorage};

/// The vsock CID of the host, the only peer allowed on a vsock port.
pub const HOST_CID: u32 = libc::VMADDR_CID_HOST;

/// Why a peer was refused: its address, for the log.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `peer` may talk to the agent: a vsock peer with the host's CID, or a Unix socket peer.
pub fn allowed(peer: &SockaddrStorage) -> Result<(), Refused> {
    if let Some(v) = peer.as_vsock_addr() {
        if v.cid() == HOST_CID {
            Ok(())
        } else {
            Err(Refused(format!("vsock cid {} port {}", v.cid(), v.port())))
        }
    } else if peer.as_unix_addr().is_some() {
        Ok(())
    } else {
        Err(Refused(format!("{:?} peer {peer}", peer.family())))
    }
}

/// [`allowed`] for the peer of connected socket `fd`. A socket whose peer cannot be read (it
/// went away already) is refused too.
pub fn check(fd: RawFd) -> Result<(), Refused> {
    match getpeername::<SockaddrStorage>(fd) {
        Ok(peer) => allowed(&peer),
        Err(e) => Err(Refused(format!("unknown peer ({e})"))),
    }
}

/// Checks a freshly accepted connection; a refused one is logged and shut down (the caller then
/// closes it). `what` names the port for the log.
pub fn admit(fd: RawFd, what: &str) -> bool {
    match check(fd) {
        Ok(()) => true,
        Err(peer) => {
            tracing::warn!(%peer, "refused a {what} connection: only the host may talk to the agent");
            let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Both);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::{TcpListener, TcpStream},
        os::{fd::AsRawFd, unix::net::UnixStream},
    };

    use nix::sys::socket::VsockAddr;

    use super::*;

    fn vsock(cid: u32, port: u32) -> SockaddrStorage {
        let a = VsockAddr::new(cid, port);
        // SAFETY: a valid sockaddr_vm of the length given.
        unsafe { SockaddrStorage::from_raw(a.as_ptr(), Some(a.len())) }.unwrap()
    }

    #[test]
    fn only_the_host_cid_is_allowed_on_vsock() {
        assert_eq!(allowed(&vsock(2, 51234)), Ok(()));
        for cid in [
            libc::VMADDR_CID_HYPERVISOR,
            libc::VMADDR_CID_LOCAL,
            3,
            4,
            libc::VMADDR_CID_ANY,
        ] {
            let r = allowed(&vsock(cid, 1024));
            assert_eq!(r, Err(Refused(format!("vsock cid {cid} port 1024"))));
        }
    }

    #[test]
    fn real_sockets_unix_is_exempt_ip_is_refused() {
        let (a, _b) = UnixStream::pair().unwrap();
        assert_eq!(check(a.as_raw_fd()), Ok(()));
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        let err = check(s.as_raw_fd()).unwrap_err();
        assert!(err.0.contains("127.0.0.1"), "{err}");
        // A refused connection is shut down: the other side sees EOF.
        assert!(!admit(s.as_raw_fd(), "test"));
        let mut buf = [0u8; 1];
        assert_eq!(std::io::Read::read(&mut &c, &mut buf).unwrap(), 0);
        // Not a socket at all.
        let f = std::fs::File::open("/dev/null").unwrap();
        assert!(check(f.as_raw_fd()).is_err());
    }
}
