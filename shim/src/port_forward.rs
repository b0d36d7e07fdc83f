//! Port-forward (`kubectl port-forward`, CRI PortForward). containerd enters the pod's network
//! namespace on the host and dials `localhost:<port>`. In a myvm pod nothing listens there: the
//! pod's network stack is the guest's. So, in that namespace, the shim redirects every TCP
//! connection to 127.0.0.1 (iptables `nat OUTPUT … REDIRECT`) to one listener of its own on
//! 127.0.0.1, learns the port that was asked (`SO_ORIGINAL_DST`), and carries the stream over
//! vsock to the agent, which connects to localhost:<port> in the guest. The rule lives in the
//! pod's namespace only (it goes with it); `stop` removes it and the listener.

use std::{
    fs::File,
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use myvm_protocol::STDIO_VSOCK_PORT;

use crate::network::{run_in, NetworkError};

/// The redirect in the pod's namespace and the listener it sends connections to.
#[derive(Debug)]
pub struct PortForward {
    netns: PathBuf,
    rule: Vec<String>,
    listener: Arc<TcpListener>,
    stopped: Arc<AtomicBool>,
}

/// A listener on 127.0.0.1 (any free port) in the network namespace `netns`.
fn listen_in(netns: &Path) -> Result<TcpListener, NetworkError> {
    let ns = File::open(netns).map_err(|source| NetworkError::Netns {
        path: netns.into(),
        source,
    })?;
    // setns affects the calling thread only: a thread of its own, whose socket stays in the
    // namespace it was made in.
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: an fd we hold; only this short-lived thread changes namespace.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            TcpListener::bind("127.0.0.1:0")
        })
        .join()
        .expect("the listener thread does not panic")
    })
    .map_err(|source| NetworkError::Netns {
        path: netns.into(),
        source,
    })
}

/// The port a redirected connection asked for (`SO_ORIGINAL_DST`).
fn original_port(conn: &TcpStream) -> std::io::Result<u16> {
    const SO_ORIGINAL_DST: libc::c_int = 80;
    // SAFETY: getsockopt fills a sockaddr_in we own, of the size we pass.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let r = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_IP,
            SO_ORIGINAL_DST,
            (&mut addr as *mut libc::sockaddr_in).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(u16::from_be(addr.sin_port))
}

impl PortForward {
    /// Sets up the redirect in `netns` and serves it through the agent behind the hybrid vsock
    /// socket `uds`.
    pub fn start(netns: &Path, uds: &Path) -> Result<PortForward, NetworkError> {
        let listener = Arc::new(listen_in(netns)?);
        let port = listener
            .local_addr()
            .map_err(|source| NetworkError::Netns {
                path: netns.into(),
                source,
            })?
            .port();
        let rule: Vec<String> = [
            "-t",
            "nat",
            "OUTPUT",
            "-o",
            "lo",
            "-p",
            "tcp",
            "-d",
            "127.0.0.1/32",
            "-j",
            "REDIRECT",
            "--to-ports",
            &port.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let pf = PortForward {
            netns: netns.into(),
            rule,
            listener,
            stopped: Arc::default(),
        };
        run_in(netns, "iptables", &pf.args("-A"))?;
        let (listener, stopped, uds) = (pf.listener.clone(), pf.stopped.clone(), uds.to_owned());
        std::thread::Builder::new()
            .name("port-forward".into())
            .spawn(move || accept_loop(&listener, &stopped, &uds))
            .map_err(|source| NetworkError::Netns {
                path: netns.into(),
                source,
            })?;
        Ok(pf)
    }

    /// iptables arguments: `-t nat <action> OUTPUT …`.
    fn args<'a>(&'a self, action: &'a str) -> Vec<&'a str> {
        let mut a: Vec<&str> = self.rule.iter().map(String::as_str).collect();
        a.insert(2, action);
        a
    }

    /// Removes the rule (if the namespace is still there) and stops the listener.
    pub fn stop(&self) {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        if self.netns.exists() {
            if let Err(e) = run_in(&self.netns, "iptables", &self.args("-D")) {
                tracing::debug!("port-forward rule: {e}");
            }
        }
        // Wakes the accept loop, which then sees `stopped`.
        // SAFETY: the listener's fd, still open (we hold an Arc).
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
    }
}

fn accept_loop(listener: &TcpListener, stopped: &AtomicBool, uds: &Path) {
    for conn in listener.incoming() {
        if stopped.load(Ordering::SeqCst) {
            return;
        }
        let Ok(conn) = conn else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let uds = uds.to_owned();
        let _ = std::thread::Builder::new()
            .name("port-forward".into())
            .spawn(move || {
                if let Err(e) = forward(conn, &uds) {
                    tracing::warn!("port-forward: {e}");
                }
            });
    }
}

/// Carries one redirected connection to the guest's localhost:<port> through the agent.
fn forward(mut conn: TcpStream, uds: &Path) -> Result<(), String> {
    let port = original_port(&conn).map_err(|e| format!("SO_ORIGINAL_DST: {e}"))?;
    let mut guest = crate::hybrid_vsock::connect(uds, STDIO_VSOCK_PORT, Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    guest
        .write_all(format!("TCP {port}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 1024 {
        match guest.read(&mut byte) {
            Ok(1) if byte[0] != b'\n' => line.push(byte[0]),
            Ok(1) => break,
            Ok(_) => return Err("the agent closed the stream".into()),
            Err(e) => return Err(e.to_string()),
        }
    }
    let line = String::from_utf8_lossy(&line);
    if line != "OK" {
        // The client sees the connection reset, as with nothing listening under runc.
        return Err(format!("port {port}: {line}"));
    }
    let (mut conn_in, mut guest_out) = (
        conn.try_clone().map_err(|e| e.to_string())?,
        guest.try_clone().map_err(|e| e.to_string())?,
    );
    let up = std::thread::spawn(move || {
        let _ = myvm_protocol::copy_stream(&mut conn_in, &mut guest_out);
        let _ = guest_out.shutdown(Shutdown::Write);
    });
    let _ = myvm_protocol::copy_stream(&mut guest, &mut conn);
    // The server is done (the agent closes the whole stream): so is the client's connection.
    let _ = conn.shutdown(Shutdown::Both);
    let _ = up.join();
    Ok(())
}
