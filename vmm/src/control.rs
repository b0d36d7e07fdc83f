//! The control channel: a connected stream socket the VMM inherits (`--control-fd`), served on
//! the main thread. One request per line, one answer per line:
//!
//! | request | answer |
//! |---|---|
//! | `balloon set <MiB>` | `ok` |
//! | `balloon get` | `ok target=<MiB> actual=<MiB> released=<MiB>` |
//! | anything else | `error <why>` |
//!
//! Only the process that started the VMM holds the other end (the shim): there is no socket on a
//! path, so nothing else, the guest least of all, can reach it.

use std::{
    fs::File,
    io::{Read, Write},
    os::fd::{AsRawFd, FromRawFd, RawFd},
};

use crate::devices::virtio_balloon::Balloon;

/// Longest request line; a longer one is refused and the channel closed.
const MAX_LINE: usize = 256;

pub struct Control {
    sock: File,
    buf: Vec<u8>,
    balloon: Option<Balloon>,
}

impl Control {
    /// Takes ownership of the inherited `fd`.
    ///
    /// # Safety
    /// `fd` must be an open descriptor this process owns and nothing else uses.
    pub unsafe fn from_fd(fd: RawFd, balloon: Option<Balloon>) -> Control {
        // SAFETY: the caller guarantees ownership.
        let sock = unsafe { File::from_raw_fd(fd) };
        Control {
            sock,
            buf: Vec::new(),
            balloon,
        }
    }

    pub fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// Reads what arrived and answers every complete request. Returns false when the other end
    /// is gone (or broke the protocol): stop polling.
    pub fn serve(&mut self) -> bool {
        let mut chunk = [0u8; 512];
        let n = match self.sock.read(&mut chunk) {
            Ok(0) => return false,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return true,
            Err(e) => {
                tracing::warn!("control channel: {e}");
                return false;
            }
        };
        self.buf.extend_from_slice(&chunk[..n]);
        while let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=pos).collect();
            let answer = self.answer(String::from_utf8_lossy(&line[..pos]).trim());
            if self
                .sock
                .write_all(format!("{answer}\n").as_bytes())
                .is_err()
            {
                return false;
            }
        }
        if self.buf.len() > MAX_LINE {
            tracing::warn!("control channel: request line too long; closing");
            return false;
        }
        true
    }

    fn answer(&self, line: &str) -> String {
        answer(self.balloon.as_ref(), line)
    }
}

/// The answer to one request line.
pub fn answer(balloon: Option<&Balloon>, line: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["balloon", rest @ ..] => {
            let Some(b) = balloon else {
                return "error this VM has no balloon (start it with --balloon-mib)".into();
            };
            match rest {
                ["set", mib] => match mib.parse::<u64>() {
                    Ok(mib) => match b.set_target_mib(mib) {
                        Ok(()) => "ok".into(),
                        Err(e) => format!("error {e}"),
                    },
                    Err(_) => format!("error bad MiB value {mib:?}"),
                },
                ["get"] => format!(
                    "ok target={} actual={} released={}",
                    b.target_mib(),
                    b.actual_mib(),
                    b.released_bytes() >> 20
                ),
                _ => "error expected `balloon set <MiB>` or `balloon get`".into(),
            }
        }
        _ => format!("error unknown request {line:?}"),
    }
}
