//! The L1 tier's driver: boots the L1 VM (`l1-image/`, built by `make l1`) under QEMU's software
//! CPU with AMD SVM emulated, so that inside it /dev/kvm works with nested paging and myvm runs
//! on KVM as on a hardware host; then runs shell scripts in it over its second UART and returns
//! their output and exit status. One L1 serves many scripts; it is killed on drop (and with the
//! test process: PR_SET_PDEATHSIG).

use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::{net::UnixStream, process::CommandExt},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{setup, workspace, TempDir};

pub struct L1 {
    dir: TempDir,
    qemu: Child,
    ctl: BufReader<UnixStream>,
    jobs: u32,
}

/// What a script run in L1 printed, and how it exited.
pub struct Job {
    pub code: i32,
    pub output: String,
}

/// `MYVM_L1_KERNEL` and `MYVM_L1_INITRD`: from the environment or `build/l1.env`.
fn l1_images() -> (PathBuf, PathBuf) {
    setup();
    let env = workspace().join("build/l1.env");
    let text = std::fs::read_to_string(&env).unwrap_or_default();
    let get = |k: &str| {
        std::env::var(k)
            .ok()
            .or_else(|| {
                text.lines()
                    .find_map(|l| l.strip_prefix(k)?.strip_prefix('=').map(str::to_string))
            })
            .map(PathBuf::from)
            .filter(|p| p.is_file())
            .unwrap_or_else(|| panic!("{k} not set and not in {} (run `make l1`)", env.display()))
    };
    (get("MYVM_L1_KERNEL"), get("MYVM_L1_INITRD"))
}

impl L1 {
    /// Boots L1 (2 vCPUs, 4 GiB, `-cpu max,+svm` under TCG) and waits for its driver loop.
    pub fn boot() -> L1 {
        let (kernel, initrd) = l1_images();
        let dir = TempDir::new("myvm-l1");
        let sock = dir.path().join("ctl.sock");
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args([
            "-accel",
            "tcg,thread=multi",
            "-cpu",
            "max,+svm",
            "-smp",
            "2",
        ])
        .args([
            "-m",
            "4096",
            "-display",
            "none",
            "-nodefaults",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .arg("-serial")
        .arg(format!("file:{}", dir.path().join("console.log").display()))
        .arg("-chardev")
        .arg(format!(
            "socket,id=ctl,path={},server=on,wait=on",
            sock.display()
        ))
        .args(["-serial", "chardev:ctl"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("qemu.log")).unwrap());
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        let mut qemu = cmd.spawn().expect("qemu-system-x86_64");
        let t = Instant::now();
        let stream = loop {
            match UnixStream::connect(&sock) {
                Ok(s) => break s,
                Err(e) => {
                    let exited = qemu.try_wait().ok().flatten();
                    if exited.is_some() || t.elapsed() > Duration::from_secs(10) {
                        let _ = qemu.kill();
                        let _ = qemu.wait();
                        let log = std::fs::read_to_string(dir.path().join("qemu.log"))
                            .unwrap_or_default();
                        panic!(
                            "L1's control socket {}: {e} (QEMU {}): {log}",
                            sock.display(),
                            exited.map_or("still running".into(), |s| s.to_string())
                        );
                    }
                    std::thread::sleep(Duration::from_millis(50))
                }
            }
        };
        let mut l1 = L1 {
            dir,
            qemu,
            ctl: BufReader::new(stream),
            jobs: 0,
        };
        let mut seen = String::new();
        l1.read_until(Duration::from_secs(300), &mut seen, |l| l == "L1-READY")
            .unwrap_or_else(|e| panic!("L1 did not come up: {e}\n{}", l1.console()));
        eprintln!(
            "l1: ready in {:.1} s; {}",
            t.elapsed().as_secs_f64(),
            l1.console()
                .lines()
                .find(|l| l.starts_with("l1:"))
                .unwrap_or("")
        );
        l1
    }

    /// L1's kernel console so far.
    pub fn console(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("console.log")).unwrap_or_default()
    }

    /// The line of L1's console that shows its own kernel crashed, if it did. Under the emulated
    /// SVM, L1's kernel occasionally oopses while it runs a guest (a fault of the emulation,
    /// seen about once in ten runs of the tier); callers retry those in a fresh L1.
    pub fn crash(&self) -> Option<String> {
        const SIGNS: [&str; 5] = [
            "Kernel panic",
            "Oops:",
            "BUG: ",
            "double fault",
            "general protection fault",
        ];
        self.console()
            .lines()
            .find(|l| SIGNS.iter().any(|s| l.contains(s)))
            .map(str::to_string)
    }

    /// Reads lines from the control channel into `out` until `done` matches one (which is not
    /// added); an error after `timeout` or if L1 goes away.
    fn read_until(
        &mut self,
        timeout: Duration,
        out: &mut String,
        mut done: impl FnMut(&str) -> bool,
    ) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        // Bytes of a line not yet ended: read_until keeps them in `line` across timeouts.
        let mut line = Vec::new();
        let partial = |out: &str, line: &[u8]| format!("{out}{}", String::from_utf8_lossy(line));
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "timed out after {timeout:?}; output so far:\n{}",
                    partial(out, &line)
                ));
            }
            self.ctl.get_ref().set_read_timeout(Some(left)).unwrap();
            match self.ctl.read_until(b'\n', &mut line) {
                Ok(_) if line.ends_with(b"\n") => {
                    let text = String::from_utf8_lossy(&line).into_owned();
                    line.clear();
                    let text = text.trim_end_matches(['\n', '\r']);
                    if done(text) {
                        return Ok(text.to_string());
                    }
                    eprintln!("l1| {text}");
                    out.push_str(text);
                    out.push('\n');
                }
                Ok(_) => {
                    return Err(format!(
                        "L1 closed its control channel; output:\n{}",
                        partial(out, &line)
                    ))
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(format!("reading L1's control channel: {e}")),
            }
        }
    }

    /// Runs `script` with `sh` in L1 (cwd /root, stdin /dev/null); its output and exit code.
    /// Panics, with the output so far and L1's console, if it takes longer than `timeout`.
    pub fn run(&mut self, script: &str, timeout: Duration) -> Job {
        self.try_run(script, timeout)
            .unwrap_or_else(|e| panic!("L1 job {script:?}: {e}\nconsole:\n{}", self.console()))
    }

    /// [`L1::run`], with an error instead of a panic if the script does not end within
    /// `timeout` or L1 goes away.
    pub fn try_run(&mut self, script: &str, timeout: Duration) -> Result<Job, String> {
        self.jobs += 1;
        let marker = format!("__l1_done_{}_{}", std::process::id(), self.jobs);
        let mut msg = format!("RUN {marker}\n");
        for chunk in base64(script.as_bytes()).as_bytes().chunks(76) {
            msg.push_str(std::str::from_utf8(chunk).unwrap());
            msg.push('\n');
        }
        msg.push_str("END\n");
        self.ctl
            .get_mut()
            .write_all(msg.as_bytes())
            .map_err(|e| format!("writing to L1's control channel: {e}"))?;
        let mut output = String::new();
        let end_of_job = format!("{marker} ");
        let end = self.read_until(timeout, &mut output, |l| l.starts_with(&end_of_job))?;
        let code = end[end_of_job.len()..].trim().parse().unwrap_or(-1);
        // L1 starts the end line on a line of its own: drop the empty line that leaves after
        // output that already ended with a newline.
        if output.ends_with("\n\n") {
            output.pop();
        }
        Ok(Job { code, output })
    }
}

impl Drop for L1 {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
        let mut err = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.path().join("qemu.log")) {
            let _ = f.read_to_string(&mut err);
        }
        // (QEMU says it waits for the control socket's client: not news.)
        for line in err
            .lines()
            .filter(|l| !l.contains("QEMU waiting for connection"))
        {
            eprintln!("l1: qemu said: {line}");
        }
    }
}

/// Standard base64 (RFC 4648) with padding: how scripts travel to L1's `base64 -d`.
fn base64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                s.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc4648() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(super::base64(i.as_bytes()), o);
        }
    }
}
