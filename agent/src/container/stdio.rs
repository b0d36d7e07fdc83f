//! Process stdio: pipes (or a pty) in the guest, one vsock stream per stdio stream to the host.
//!
//! Output is never lost: the agent reads a process's stdout/stderr pipe only once the host has
//! attached that stream, so until then the pipe holds the bytes (and blocks the writer when full:
//! back-pressure), and a process that already exited leaves its last bytes in the pipe. A stream
//! ends after the last byte, when every writer has closed the pipe.

use std::{
    fs::File,
    io::{self, Read},
    os::{
        fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
        unix::net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant},
};

use nix::{
    fcntl::OFlag,
    poll::{poll, PollFd, PollFlags, PollTimeout},
    sys::socket::{recvmsg, ControlMessageOwned, MsgFlags},
    unistd::pipe2,
};

use super::error::{ContainerError, Result};

/// What the host asked for (from the `Stdio` message).
#[derive(Debug, Clone, Copy, Default)]
pub struct StdioRequest {
    pub terminal: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// The agent's ends of a process's stdio, waiting for the host to attach.
#[derive(Default)]
pub struct ProcessIo {
    pub stdin: Mutex<Option<File>>,
    pub stdout: Mutex<Option<File>>,
    pub stderr: Mutex<Option<File>>,
    /// pty master, for resizing.
    pub pty: Mutex<Option<File>>,
}

/// The process's ends, handed to libcontainer (closed in the agent once the process exists).
#[derive(Default)]
pub struct ChildIo {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdin,
    Stdout,
    Stderr,
}

impl ProcessIo {
    pub fn slot(&self, stream: Stream) -> &Mutex<Option<File>> {
        match stream {
            Stream::Stdin => &self.stdin,
            Stream::Stdout => &self.stdout,
            Stream::Stderr => &self.stderr,
        }
    }

    /// Takes the end of `stream` for a host connection (each stream attaches once).
    pub fn take(&self, stream: Stream) -> Option<File> {
        self.slot(stream)
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Closes the agent's write end of stdin if the host never attached it.
    pub fn close_stdin(&self) {
        self.stdin.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

fn devnull(write: bool) -> Result<OwnedFd> {
    let f = File::options()
        .read(!write)
        .write(write)
        .open("/dev/null")
        .map_err(ContainerError::io("open /dev/null"))?;
    Ok(f.into())
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    pipe2(OFlag::O_CLOEXEC).map_err(|e| ContainerError::Io {
        context: "pipe2".into(),
        source: e.into(),
    })
}

/// Pipes for a process without a terminal.
pub fn pipes(req: StdioRequest) -> Result<(ProcessIo, ChildIo)> {
    let io = ProcessIo::default();
    let mut child = ChildIo::default();
    if req.stdin {
        let (r, w) = pipe()?;
        child.stdin = Some(r);
        *io.stdin.lock().unwrap() = Some(File::from(w));
    } else {
        child.stdin = Some(devnull(false)?);
    }
    for (wanted, stream) in [(req.stdout, Stream::Stdout), (req.stderr, Stream::Stderr)] {
        let fd = if wanted {
            let (r, w) = pipe()?;
            *io.slot(stream).lock().unwrap() = Some(File::from(r));
            w
        } else {
            devnull(true)?
        };
        match stream {
            Stream::Stdout => child.stdout = Some(fd),
            _ => child.stderr = Some(fd),
        }
    }
    Ok((io, child))
}

/// A Unix socket on which libcontainer sends the pty master of a terminal process.
pub struct ConsoleSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ConsoleSocket {
    pub fn new(path: PathBuf) -> Result<Self> {
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .map_err(ContainerError::io(format!("bind {}", path.display())))?;
        Ok(ConsoleSocket { listener, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Receives the pty master (sent while the process was created) and sets up the ends:
    /// stdin and stdout are both the master.
    pub fn receive(self, req: StdioRequest) -> Result<ProcessIo> {
        let master = self.receive_fd(Duration::from_secs(10))?;
        let dup = |f: &File| f.try_clone().map_err(ContainerError::io("dup pty master"));
        let io = ProcessIo::default();
        if req.stdin {
            *io.stdin.lock().unwrap() = Some(dup(&master)?);
        }
        *io.stdout.lock().unwrap() = Some(dup(&master)?);
        *io.pty.lock().unwrap() = Some(master);
        Ok(io)
    }

    fn receive_fd(&self, timeout: Duration) -> Result<File> {
        self.listener
            .set_nonblocking(true)
            .map_err(ContainerError::io("console socket"))?;
        let deadline = Instant::now() + timeout;
        let stream: UnixStream = loop {
            match self.listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return Err(ContainerError::Other(
                            "the container never sent its pty".into(),
                        ));
                    }
                    let fd = PollFd::new(self.listener.as_fd(), PollFlags::POLLIN);
                    let _ = poll(&mut [fd], PollTimeout::from(100u16));
                }
                Err(e) => return Err(ContainerError::io("accept on the console socket")(e)),
            }
        };
        stream
            .set_nonblocking(false)
            .map_err(ContainerError::io("console socket"))?;
        let mut buf = [0u8; 1024];
        let mut iov = [io::IoSliceMut::new(&mut buf)];
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| ContainerError::io("receiving the pty master")(e.into()))?;
        for c in msg
            .cmsgs()
            .map_err(|e| ContainerError::io("pty cmsg")(e.into()))?
        {
            if let ControlMessageOwned::ScmRights(fds) = c {
                if let Some(&fd) = fds.first() {
                    // SAFETY: the fd was just received and is owned by nobody else.
                    return Ok(unsafe { File::from_raw_fd(fd) });
                }
            }
        }
        Err(ContainerError::Other(
            "no pty master in the console socket message".into(),
        ))
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Sets the window size of a pty.
pub fn resize(pty: &File, width: u16, height: u16) -> Result<()> {
    let ws = libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from the pointer, which is valid for the call.
    let r = unsafe { libc::ioctl(pty.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if r < 0 {
        return Err(ContainerError::io("TIOCSWINSZ")(io::Error::last_os_error()));
    }
    Ok(())
}

/// A parsed stdio stream header: `STDIO <container> <exec|-> <stream>`.
#[derive(Debug, PartialEq)]
pub struct Header {
    pub container_id: String,
    pub exec_id: String,
    pub stream: Stream,
}

pub const MAX_HEADER: usize = 512;

pub fn parse_header(line: &str) -> std::result::Result<Header, String> {
    let mut w = line.split(' ');
    let (Some("STDIO"), Some(c), Some(e), Some(s), None) =
        (w.next(), w.next(), w.next(), w.next(), w.next())
    else {
        return Err(format!("malformed stdio header {line:?}"));
    };
    let stream = match s {
        "stdin" => Stream::Stdin,
        "stdout" => Stream::Stdout,
        "stderr" => Stream::Stderr,
        other => return Err(format!("unknown stream {other:?}")),
    };
    if c.is_empty() {
        return Err("empty container id".into());
    }
    Ok(Header {
        container_id: c.to_string(),
        exec_id: if e == "-" {
            String::new()
        } else {
            e.to_string()
        },
        stream,
    })
}

/// Reads the header line byte by byte (nothing after the newline is consumed).
pub fn read_header_line(conn: &mut impl Read) -> std::result::Result<String, String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match conn.read(&mut byte) {
            Ok(0) => return Err("connection closed before the header".into()),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => {
                line.push(byte[0]);
                if line.len() > MAX_HEADER {
                    return Err("stdio header too long".into());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading the stdio header: {e}")),
        }
    }
    String::from_utf8(line).map_err(|_| "stdio header is not UTF-8".to_string())
}

/// Reads and parses a stdio header.
#[cfg(test)]
pub fn read_header(conn: &mut impl Read) -> std::result::Result<Header, String> {
    parse_header(&read_header_line(conn)?)
}

/// Pumps one attached stream until EOF. For stdin, the process sees EOF when the host closes
/// its side; for output, the host sees EOF after the last byte.
pub fn pump(stream: Stream, mut end: File, mut conn: File) {
    let result = match stream {
        Stream::Stdin => myvm_protocol::copy_stream(&mut conn, &mut end).map(drop),
        Stream::Stdout | Stream::Stderr => {
            myvm_protocol::copy_stream(&mut end, &mut conn).map(drop)
        }
    };
    if let Err(e) = result {
        // EIO on a pty master means the terminal's last holder exited: a normal end.
        if e.raw_os_error() != Some(libc::EIO) {
            tracing::debug!(?stream, "stdio stream ended: {e}");
        }
    }
    if stream != Stream::Stdin {
        let _ = nix::sys::socket::shutdown(conn.as_raw_fd(), nix::sys::socket::Shutdown::Both);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn header_parsing() {
        assert_eq!(
            parse_header("STDIO c1 - stdout").unwrap(),
            Header {
                container_id: "c1".into(),
                exec_id: String::new(),
                stream: Stream::Stdout
            }
        );
        assert_eq!(parse_header("STDIO c1 e2 stdin").unwrap().exec_id, "e2");
        assert!(parse_header("STDIO c1 e2").is_err());
        assert!(parse_header("STDIO c1 e2 stdout extra").is_err());
        assert!(parse_header("HELLO c1 e2 stdout").is_err());
        assert!(parse_header("STDIO c1 e2 stdfoo").is_err());
    }

    #[test]
    fn header_reader_stops_at_newline() {
        let mut data: &[u8] = b"STDIO c - stderr\nrest";
        assert_eq!(read_header(&mut data).unwrap().stream, Stream::Stderr);
        assert_eq!(data, b"rest");
        let mut long = vec![b'x'; MAX_HEADER + 10];
        long.push(b'\n');
        assert!(read_header(&mut long.as_slice()).is_err());
    }

    #[test]
    fn pipes_keep_output_until_attached() {
        let (io, child) = pipes(StdioRequest {
            stdout: true,
            ..Default::default()
        })
        .unwrap();
        let mut w = File::from(child.stdout.unwrap());
        w.write_all(b"last words").unwrap();
        drop(w);
        let mut out = String::new();
        io.take(Stream::Stdout)
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "last words");
        assert!(io.take(Stream::Stdout).is_none(), "attaches once");
        assert!(io.take(Stream::Stderr).is_none(), "stderr not requested");
    }
}
