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
            let conn = open(stream)?;
            let path = path.clone();
            outputs.push(std::thread::spawn(move || copy_out(conn, &path)));
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

fn open_fifo_write(path: &str) -> io::Result<File> {
    File::options().write(true).open(path)
}

fn copy_out(mut conn: UnixStream, path: &str) {
    let result = open_fifo_write(path).and_then(|mut f| io::copy(&mut conn, &mut f));
    if let Err(e) = result {
        tracing::warn!("copying output to {path}: {e}");
        // Drain, so the process never blocks on a stream nobody reads.
        let _ = io::copy(&mut conn, &mut io::sink());
    }
}

fn copy_in(path: &str, mut conn: UnixStream) {
    match File::open(path) {
        Ok(mut f) => {
            if let Err(e) = io::copy(&mut f, &mut conn) {
                tracing::debug!("stdin from {path}: {e}");
            }
        }
        Err(e) => tracing::warn!("opening stdin {path}: {e}"),
    }
    let _ = conn.shutdown(Shutdown::Write);
}
