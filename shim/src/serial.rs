//! The guest's serial console on the host, bounded. The VMM writes into a FIFO; a thread of the
//! host copies it into `serial.log`, which it rotates at [`CAP_BYTES`] (one older file,
//! `serial.log.1`, is kept): a guest that writes to its console without end costs the host at
//! most twice that on disk. Readers take a bounded tail ([`tail`]).

use std::{
    fs::{File, OpenOptions},
    io::{Read, Seek, SeekFrom, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

/// Size at which `serial.log` is rotated.
pub const CAP_BYTES: u64 = 1 << 20;

/// The console copier; dropping it lets the copy end once the VMM is gone too.
#[derive(Debug)]
pub struct SerialLog {
    /// Our own write end: the FIFO never reports end-of-file before we are done with it (the
    /// VMM opens and may close its end at any time).
    _keeper: File,
}

impl SerialLog {
    /// Makes the FIFO `pipe` (for `writer_uid` to open), and copies what comes through it into
    /// `log`, capped.
    pub fn start(pipe: &Path, log: &Path, writer_uid: Option<u32>) -> std::io::Result<SerialLog> {
        use nix::sys::stat::Mode;
        nix::unistd::mkfifo(pipe, Mode::from_bits_truncate(0o600))?;
        if let Some(uid) = writer_uid {
            std::os::unix::fs::chown(pipe, Some(uid), Some(uid))?;
        }
        // Open the read end first (a blocking open of either end waits for the other).
        let reader = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(pipe)?;
        let keeper = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(pipe)?;
        // SAFETY: F_SETFL on an fd we own: blocking reads from now on.
        if unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&reader), libc::F_SETFL, 0) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let out = create_log(log)?;
        let log = log.to_path_buf();
        std::thread::Builder::new()
            .name("serial-log".into())
            .spawn(move || copy_capped(reader, out, &log, CAP_BYTES))?;
        Ok(SerialLog { _keeper: keeper })
    }
}

fn create_log(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

fn rotated(log: &Path) -> PathBuf {
    let mut p = log.as_os_str().to_owned();
    p.push(".1");
    PathBuf::from(p)
}

/// Copies until every writer is gone. Never stops reading before that (a VMM writing into a
/// full pipe would stall its vCPU); when the log cannot be written, the output is dropped.
fn copy_capped(mut from: File, out: File, log: &Path, cap: u64) {
    let mut out = Some(out);
    let mut written = 0u64;
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        if written + n as u64 > cap && out.is_some() {
            let _ = std::fs::rename(log, rotated(log));
            out = create_log(log).ok();
            written = 0;
        }
        if let Some(f) = &mut out {
            if f.write_all(&buf[..n]).is_err() {
                out = None;
            }
        }
        written += n as u64;
    }
}

/// The last `max_lines` lines of the console log at `path` (with its rotated part before it),
/// reading at most 64 KiB of each file, whatever their size.
pub fn tail(path: &Path, max_lines: usize) -> String {
    const MAX_READ: u64 = 64 << 10;
    let read_end = |p: &Path| -> Vec<u8> {
        let Ok(mut f) = File::open(p) else {
            return Vec::new();
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(MAX_READ)));
        let mut v = Vec::new();
        let _ = f.take(MAX_READ).read_to_end(&mut v);
        v
    };
    let mut bytes = read_end(path);
    if bytes.iter().filter(|b| **b == b'\n').count() < max_lines {
        let mut older = read_end(&rotated(path));
        older.extend_from_slice(&bytes);
        bytes = older;
    }
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(max_lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_console_that_never_stops_costs_at_most_twice_the_cap() {
        let dir = std::env::temp_dir().join(format!("myvm-serial-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (pipe, log) = (dir.join("serial.pipe"), dir.join("serial.log"));
        let console = SerialLog::start(&pipe, &log, None).unwrap();
        // The VMM's side: 5 MiB of lines, then a last line.
        let mut w = OpenOptions::new().write(true).open(&pipe).unwrap();
        let line = format!("{}\n", "x".repeat(1023));
        for _ in 0..(5 << 10) {
            w.write_all(line.as_bytes()).unwrap();
        }
        w.write_all(b"[    9.1] the last line\n").unwrap();
        drop(w);
        drop(console);
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let t0 = std::time::Instant::now();
        while tail(&log, 1) != "[    9.1] the last line" {
            assert!(t0.elapsed().as_secs() < 10, "the copy did not finish");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(size(&log) <= CAP_BYTES, "{}", size(&log));
        assert!(size(&rotated(&log)) <= CAP_BYTES);
        assert!(size(&rotated(&log)) > 0);
        let t = tail(&log, 3);
        assert_eq!(t.lines().count(), 3);
        assert!(t.ends_with("the last line"), "{t}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tail_reads_a_bounded_end() {
        let dir = std::env::temp_dir().join(format!("myvm-tail-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("serial.log");
        std::fs::write(rotated(&log), "old 1\nold 2\n").unwrap();
        std::fs::write(&log, "new 1\n").unwrap();
        assert_eq!(tail(&log, 2), "old 2\nnew 1");
        // A huge log with no newline: only the end is read.
        std::fs::write(&log, vec![b'y'; 4 << 20]).unwrap();
        assert!(tail(&log, 1).len() <= 64 << 10);
        assert_eq!(tail(&dir.join("missing"), 5), "");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
