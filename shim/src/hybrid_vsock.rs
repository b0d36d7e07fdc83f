//! Host side of Firecracker's *hybrid vsock*: the VMM (or vhost-device-vsock) exposes the guest's
//! vsock as a Unix socket. To reach guest port P the host connects, writes `CONNECT P\n` and reads
//! `OK <host-port>\n`; after that the stream is the guest connection. Connections the guest makes
//! to host port P arrive on the Unix socket `<uds>_P`.

use std::{
    io::{self, Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// Longest acknowledgement we accept (`OK 4294967295\n` is 14 bytes).
const MAX_ACK_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum HybridVsockError {
    #[error("connecting to the hybrid vsock socket {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("guest vsock port {port} refused the connection (socket closed before `OK`)")]
    Refused { port: u32 },
    #[error("unexpected reply to `CONNECT {port}`: {reply:?}")]
    BadReply { port: u32, reply: String },
    #[error("no reply to `CONNECT {port}` within {timeout:?}")]
    Timeout { port: u32, timeout: Duration },
    #[error("hybrid vsock I/O for port {port}: {source}")]
    Io { port: u32, source: io::Error },
}

impl HybridVsockError {
    /// Errors worth retrying while the guest is still booting (nobody listening yet).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Refused { .. } | Self::Timeout { .. })
            || matches!(self, Self::Io { source, .. }
                if matches!(source.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe))
    }
}

/// Connects to `port` in the guest through the hybrid vsock socket `uds`.
/// `timeout` bounds the handshake; the returned stream has no timeouts set.
pub fn connect(uds: &Path, port: u32, timeout: Duration) -> Result<UnixStream, HybridVsockError> {
    let stream = UnixStream::connect(uds).map_err(|source| HybridVsockError::Connect {
        path: uds.to_path_buf(),
        source,
    })?;
    handshake(stream, port, timeout)
}

/// Performs the `CONNECT`/`OK` handshake on an already connected stream.
pub fn handshake(
    mut stream: UnixStream,
    port: u32,
    timeout: Duration,
) -> Result<UnixStream, HybridVsockError> {
    let io_err = |source| HybridVsockError::Io { port, source };
    // A caller whose deadline has just passed asks for no time at all (and a zero socket timeout
    // is an error to the OS): that is a timeout, which callers retry or report as such.
    if timeout.is_zero() {
        return Err(HybridVsockError::Timeout { port, timeout });
    }
    let deadline = Instant::now() + timeout;
    stream.set_write_timeout(Some(timeout)).map_err(io_err)?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(io_err)?;

    // Read byte by byte up to the newline: whatever follows belongs to the guest's stream.
    let mut reply = Vec::with_capacity(16);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HybridVsockError::Timeout { port, timeout });
        }
        stream.set_read_timeout(Some(left)).map_err(io_err)?;
        let mut byte = [0u8; 1];
        match stream.read(&mut byte) {
            Ok(0) if reply.is_empty() => return Err(HybridVsockError::Refused { port }),
            Ok(0) => return Err(bad_reply(port, &reply)),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => {
                reply.push(byte[0]);
                if reply.len() > MAX_ACK_LEN {
                    return Err(bad_reply(port, &reply));
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(HybridVsockError::Timeout { port, timeout })
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset && reply.is_empty() => {
                return Err(HybridVsockError::Refused { port })
            }
            Err(e) => return Err(io_err(e)),
        }
    }
    parse_ack(&reply).ok_or_else(|| bad_reply(port, &reply))?;
    stream.set_read_timeout(None).map_err(io_err)?;
    stream.set_write_timeout(None).map_err(io_err)?;
    Ok(stream)
}

/// Parses the acknowledgement line (without its newline): `OK <u32>`.
pub fn parse_ack(line: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(line).ok()?;
    let port = text.strip_prefix("OK ")?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

fn bad_reply(port: u32, reply: &[u8]) -> HybridVsockError {
    HybridVsockError::BadReply {
        port,
        reply: String::from_utf8_lossy(reply).into_owned(),
    }
}

/// The Unix socket on which guest-initiated connections to host port `port` arrive.
pub fn guest_listener_path(uds: &Path, port: u32) -> PathBuf {
    let mut s = uds.as_os_str().to_owned();
    s.push(format!("_{port}"));
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{io::BufRead, os::unix::net::UnixListener, thread};

    /// A peer that reads the CONNECT line, checks it, then answers with `reply` (and maybe data).
    fn peer(reply: &'static [u8], then_close: bool) -> (tempdir::Dir, std::thread::JoinHandle<()>) {
        let dir = tempdir::Dir::new();
        let path = dir.path().join("v.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let h = thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut r = std::io::BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            assert_eq!(line, "CONNECT 1024\n");
            (&s).write_all(reply).unwrap();
            if !then_close {
                thread::sleep(Duration::from_millis(500));
            }
        });
        (dir, h)
    }

    mod tempdir {
        pub struct Dir(std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                let p = std::env::temp_dir().join(format!(
                    "myvm-hv-test-{}-{:?}",
                    std::process::id(),
                    std::thread::current().id()
                ));
                let _ = std::fs::remove_dir_all(&p);
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
            pub fn path(&self) -> &std::path::Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn good_handshake_keeps_following_bytes() {
        let (dir, h) = peer(b"OK 1073741824\nhello", false);
        let mut s = connect(&dir.path().join("v.sock"), 1024, Duration::from_secs(2)).unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        h.join().unwrap();
    }

    #[test]
    fn refused_port_is_refused() {
        let (dir, h) = peer(b"", true);
        let err = connect(&dir.path().join("v.sock"), 1024, Duration::from_secs(2)).unwrap_err();
        assert!(
            matches!(err, HybridVsockError::Refused { port: 1024 }),
            "{err}"
        );
        assert!(err.is_transient());
        h.join().unwrap();
    }

    #[test]
    fn garbage_reply_is_rejected() {
        let (dir, h) = peer(b"HELLO there\n", true);
        let err = connect(&dir.path().join("v.sock"), 1024, Duration::from_secs(2)).unwrap_err();
        assert!(
            matches!(&err, HybridVsockError::BadReply { reply, .. } if reply == "HELLO there"),
            "{err}"
        );
        assert!(!err.is_transient());
        h.join().unwrap();
    }

    #[test]
    fn endless_reply_is_rejected() {
        let (dir, h) = peer(&[b'O'; 100], false);
        let err = connect(&dir.path().join("v.sock"), 1024, Duration::from_secs(2)).unwrap_err();
        assert!(matches!(err, HybridVsockError::BadReply { .. }), "{err}");
        h.join().unwrap();
    }

    #[test]
    fn silent_peer_times_out() {
        let (dir, h) = peer(b"", false);
        let t = Instant::now();
        let err =
            connect(&dir.path().join("v.sock"), 1024, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, HybridVsockError::Timeout { .. }), "{err}");
        assert!(t.elapsed() < Duration::from_millis(450));
        h.join().unwrap();
    }

    /// Found by the `hybrid_vsock` fuzz target: a zero timeout was an I/O error ("cannot set a
    /// 0 duration timeout"), which `AgentClient::wait_ready` gives up on instead of timing out.
    #[test]
    fn zero_timeout_is_a_timeout() {
        let (host, _peer) = UnixStream::pair().unwrap();
        let err = handshake(host, 1024, Duration::ZERO).unwrap_err();
        assert!(matches!(err, HybridVsockError::Timeout { .. }), "{err}");
        assert!(err.is_transient());
    }

    #[test]
    fn missing_socket_is_a_connect_error() {
        let err = connect(
            Path::new("/nonexistent/myvm.sock"),
            1024,
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(matches!(err, HybridVsockError::Connect { .. }), "{err}");
    }

    #[test]
    fn ack_parser() {
        assert_eq!(parse_ack(b"OK 5"), Some(5));
        assert_eq!(parse_ack(b"OK 4294967295"), Some(u32::MAX));
        assert_eq!(parse_ack(b"OK 4294967296"), None);
        assert_eq!(parse_ack(b"OK "), None);
        assert_eq!(parse_ack(b"OK -1"), None);
        assert_eq!(parse_ack(b"ok 5"), None);
        assert_eq!(parse_ack(b"OK 5 6"), None);
        assert_eq!(parse_ack(&[0xff, 0xfe]), None);
    }

    #[test]
    fn listener_path() {
        assert_eq!(
            guest_listener_path(Path::new("/run/x/vsock.sock"), 1025),
            PathBuf::from("/run/x/vsock.sock_1025")
        );
    }
}
