//! containerd's stdio FIFOs ↔ the agent's per-stream vsock connections.

use std::{
    fs::File,
    io,
    net::Shutdown,
    os::unix::net::UnixStream,
    path::Path,
    sync::Mutex,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use myvm_protocol::copy_stream;

use crate::agent_client::{open_stdio, AgentError, StdioStream};

const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);

/// Paths containerd gave for one process.
#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

impl StdioPaths {
    pub fn request(&self) -> myvm_protocol::agent::Stdio {
        myvm_protocol::agent::Stdio {
            terminal: self.terminal,
            stdin: !self.stdin.is_empty(),
            stdout: !self.stdout.is_empty(),
            stderr: !self.stderr.is_empty() && !self.terminal,
            ..Default::default()
        }
    }
}

/// The copy threads of one process.
#[derive(Default)]
pub struct IoCopy {
    outputs: Mutex<Vec<JoinHandle<()>>>,
    stdin: Mutex<Option<UnixStream>>,
}

impl IoCopy {
    /// Opens the agent streams (before the process starts, so nothing is missed) and starts
    /// copying to/from the FIFOs.
    pub fn attach(
        uds: &Path,
        container: &str,
        exec: &str,
        paths: &StdioPaths,
    ) -> Result<IoCopy, AgentError> {
        let io = IoCopy::default();
        let open = |s| open_stdio(uds, container, exec, s, ATTACH_TIMEOUT);
        let mut outputs = Vec::new();
        for (path, stream) in [
            (&paths.stdout, StdioStream::Stdout),
            (&paths.stderr, StdioStream::Stderr),
        ] {
            if path.is_empty() || (paths.terminal && stream == StdioStream::Stderr) {
                continue;
            }
            let fifo = open_output(path).map_err(|e| AgentError::Stdio {
                container: container.into(),
                exec: exec.into(),
                stream: stream.as_str(),
                reason: format!("opening {path}: {e}"),
            })?;
            let conn = open(stream)?;
            let path = path.clone();
            outputs.push(std::thread::spawn(move || copy_out(conn, fifo, &path)));
        }
        if !paths.stdin.is_empty() {
            let conn = open(StdioStream::Stdin)?;
            let keep = conn.try_clone().map_err(|e| AgentError::Stdio {
                container: container.into(),
                exec: exec.into(),
                stream: "stdin",
                reason: e.to_string(),
            })?;
            *io.stdin.lock().unwrap() = Some(keep);
            let path = paths.stdin.clone();
            std::thread::spawn(move || copy_in(&path, conn));
        }
        *io.outputs.lock().unwrap() = outputs;
        Ok(io)
    }

    /// Closes the process's stdin (CloseIO).
    pub fn close_stdin(&self) {
        if let Some(conn) = self.stdin.lock().unwrap().take() {
            let _ = conn.shutdown(Shutdown::Write);
        }
    }

    /// Waits for the output copies to reach EOF (all output delivered), at most `timeout`.
    pub fn wait_outputs(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let handles: Vec<_> = self.outputs.lock().unwrap().drain(..).collect();
        for h in handles {
            while !h.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            if h.is_finished() {
                let _ = h.join();
            } else {
                tracing::warn!(
                    "output still open {timeout:?} after the process exited (a child holds it?)"
                );
            }
        }
    }
}

/// Opens an output FIFO for writing without waiting for its reader: read-write never blocks,
/// and keeping a read end ourselves (as runc's shim does) means the reader (`ctr`, which may
/// detach and exit) can come and go without the stream failing. Opened before Create returns,
/// so a client's blocking open of the read end always finds its writer.
fn open_output(path: &str) -> io::Result<File> {
    File::options().read(true).write(true).open(path)
}

fn copy_out(mut conn: UnixStream, mut fifo: File, path: &str) {
    if let Err(e) = copy_stream(&mut conn, &mut fifo) {
        tracing::warn!("copying output to {path}: {e}");
        // Drain, so the process never blocks on a stream nobody reads.
        let _ = copy_stream(&mut conn, &mut io::sink());
    }
}

/// Copies the stdin FIFO to the agent. The FIFO is opened without blocking (a blocking open
/// would wait forever for a client that never writes), then polled: the kernel reports no
/// hang-up until a writer has come, so EOF means a writer came and went.
fn copy_in(path: &str, mut conn: UnixStream) {
    use std::os::fd::AsFd;
    use std::os::unix::fs::OpenOptionsExt;

    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut f = match File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!("opening stdin {path}: {e}");
            let _ = conn.shutdown(Shutdown::Write);
            return;
        }
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut fds = [PollFd::new(f.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                tracing::debug!("stdin from {path}: poll: {e}");
                break;
            }
            Ok(_) => {}
        }
        match io::Read::read(&mut f, &mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if let Err(e) = io::Write::write_all(&mut conn, &buf[..n]) {
                    tracing::debug!("stdin from {path}: {e}");
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::debug!("stdin from {path}: {e}");
                break;
            }
        }
    }
    let _ = conn.shutdown(Shutdown::Write);
}
