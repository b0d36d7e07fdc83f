//! Sandbox-wide set-up: hostname, shared filesystems, DNS files; and the stdio stream server.

use std::{
    fs::{self, File},
    io::Write,
    os::fd::{FromRawFd, OwnedFd},
    path::Path,
    sync::Arc,
};

use anyhow::{bail, Context, Result};
use nix::{
    mount::{mount, umount2, MntFlags, MsFlags},
    sys::socket::{
        accept, bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, VsockAddr,
    },
};

use crate::container::{stdio, Manager};

/// Mounts a virtio-fs share. Not `nosuid`: the containers' root filesystems and volumes are
/// on it, and setuid programs in a container work as under runc (the spec's own mount options,
/// `nosuid` included, still apply to each bind mount of a volume).
pub fn mount_share(tag: &str, mount_point: &Path, readonly: bool) -> Result<()> {
    fs::create_dir_all(mount_point).with_context(|| format!("mkdir {}", mount_point.display()))?;
    let mut flags = MsFlags::MS_NODEV;
    if readonly {
        flags |= MsFlags::MS_RDONLY;
    }
    mount(
        Some(tag),
        mount_point,
        Some("virtiofs"),
        flags,
        None::<&str>,
    )
    .with_context(|| format!("mount virtio-fs {tag:?} on {}", mount_point.display()))
}

pub fn unmount(mount_point: &Path) {
    if let Err(e) = umount2(mount_point, MntFlags::MNT_DETACH) {
        tracing::warn!("umount {}: {e}", mount_point.display());
    }
}

pub fn write_file(path: &str, content: &str) -> Result<()> {
    if content.is_empty() {
        return Ok(());
    }
    let mut f = File::create(path).with_context(|| format!("create {path}"))?;
    f.write_all(content.as_bytes())
        .with_context(|| format!("write {path}"))
}

/// A listening socket for `vsock://-1:PORT` or `unix:///path`.
pub fn listen_on(addr: &str) -> Result<OwnedFd> {
    if let Some(rest) = addr.strip_prefix("vsock://") {
        let port: u32 = rest
            .rsplit(':')
            .next()
            .unwrap_or("")
            .parse()
            .with_context(|| format!("port in {addr}"))?;
        let fd = socket(
            AddressFamily::Vsock,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &VsockAddr::new(libc::VMADDR_CID_ANY, port),
        )
        .with_context(|| format!("bind {addr}"))?;
        listen(&fd, Backlog::new(64)?)?;
        Ok(fd)
    } else if let Some(path) = addr.strip_prefix("unix://") {
        let _ = fs::remove_file(path);
        let l =
            std::os::unix::net::UnixListener::bind(path).with_context(|| format!("bind {path}"))?;
        Ok(l.into())
    } else {
        bail!("unsupported listen address {addr:?} (vsock://-1:PORT or unix:///path)")
    }
}

/// Serves stdio streams (see the protocol comment in agent.proto) on `addr`, to the host only
/// (see [`crate::peer`]).
pub fn serve_stdio(addr: &str, manager: Arc<Manager>) -> Result<()> {
    let listener = listen_on(addr)?;
    std::thread::Builder::new()
        .name("stdio-accept".into())
        .spawn(move || loop {
            let fd = match accept(std::os::fd::AsRawFd::as_raw_fd(&listener)) {
                Ok(fd) => fd,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!("stdio accept: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    continue;
                }
            };
            // SAFETY: accept returned a new fd that nothing else owns.
            let conn = unsafe { File::from_raw_fd(fd) };
            if !crate::peer::admit(fd, "stdio") {
                continue;
            }
            let manager = manager.clone();
            let _ = std::thread::Builder::new()
                .name("stdio".into())
                .spawn(move || handle_stdio(conn, &manager));
        })?;
    Ok(())
}

fn handle_stdio(mut conn: File, manager: &Manager) {
    let line = match stdio::read_header_line(&mut conn) {
        Ok(l) => l,
        Err(e) => {
            let _ = writeln!(conn, "ERR {e}");
            return;
        }
    };
    if let Some(port) = line.strip_prefix("TCP ") {
        return forward_tcp(conn, port);
    }
    let header = match stdio::parse_header(&line) {
        Ok(h) => h,
        Err(e) => {
            let _ = writeln!(conn, "ERR {e}");
            return;
        }
    };
    match manager.attach(&header.container_id, &header.exec_id, header.stream) {
        Ok(end) => {
            if conn.write_all(b"OK\n").is_ok() {
                stdio::pump(header.stream, end, conn);
            }
        }
        Err(e) => {
            let _ = writeln!(conn, "ERR {e}");
        }
    }
}

/// Port-forward (`TCP <port>`, see agent.proto): connects to `port` on the guest's loopback
/// (the pod's network stack, as `kubectl port-forward` reaches a runc pod's), answers `OK`
/// or `ERR <why>`, then copies both ways until each side ends.
fn forward_tcp(mut conn: File, port: &str) {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
    let port: u16 = match port.parse() {
        Ok(p) if p != 0 => p,
        _ => {
            let _ = writeln!(conn, "ERR invalid port {port:?}");
            return;
        }
    };
    let timeout = std::time::Duration::from_secs(5);
    let tcp = TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)), timeout)
        .or_else(|e| {
            TcpStream::connect_timeout(&SocketAddr::from((Ipv6Addr::LOCALHOST, port)), timeout)
                .map_err(|_| e)
        });
    let tcp = match tcp {
        Ok(t) => t,
        Err(e) => {
            let _ = writeln!(conn, "ERR connecting to localhost:{port} in the pod: {e}");
            return;
        }
    };
    if conn.write_all(b"OK\n").is_err() {
        return;
    }
    let (Ok(mut tcp_in), Ok(mut conn_out)) = (tcp.try_clone(), conn.try_clone()) else {
        return;
    };
    let up = std::thread::Builder::new()
        .name("port-forward".into())
        .spawn(move || {
            let _ = myvm_protocol::copy_stream(&mut conn, &mut tcp_in);
            let _ = tcp_in.shutdown(std::net::Shutdown::Write);
        });
    let mut tcp_out = tcp;
    let _ = myvm_protocol::copy_stream(&mut tcp_out, &mut conn_out);
    // The server is done: a whole close, which the host sees as the end (a half-close does
    // not cross the hybrid vsock), and which ends the other direction too.
    let _ = nix::sys::socket::shutdown(
        std::os::fd::AsRawFd::as_raw_fd(&conn_out),
        nix::sys::socket::Shutdown::Both,
    );
    if let Ok(up) = up {
        let _ = up.join();
    }
}
