//! Helper processes (QEMU, vhost-user daemons) that never outlive their owner.
//!
//! Each child gets `PR_SET_PDEATHSIG(SIGKILL)`, so it dies with the thread that spawned it even if
//! the owner is killed with SIGKILL; dropping a [`Managed`] kills and reaps it.

use std::{
    fs::File,
    io,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{mpsc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("starting {name} ({program}): {source}")]
    Spawn {
        name: String,
        program: PathBuf,
        source: io::Error,
    },
    #[error("creating log file {path}: {source}")]
    Log { path: PathBuf, source: io::Error },
    #[error("waiting for {name}: {source}")]
    Wait { name: String, source: io::Error },
}

/// A child process owned by the host side.
#[derive(Debug)]
pub struct Managed {
    name: String,
    child: Child,
    status: Option<ExitStatus>,
    log: Option<PathBuf>,
}

impl Managed {
    /// Spawns `cmd` with stdin closed and stdout+stderr appended to `log` (if given).
    pub fn spawn(name: &str, mut cmd: Command, log: Option<&Path>) -> Result<Self, ProcessError> {
        cmd.stdin(Stdio::null());
        match log {
            Some(path) => {
                let f = File::options()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| ProcessError::Log {
                        path: path.to_path_buf(),
                        source,
                    })?;
                let f2 = f.try_clone().map_err(|source| ProcessError::Log {
                    path: path.to_path_buf(),
                    source,
                })?;
                cmd.stdout(f).stderr(f2);
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        // SAFETY: only async-signal-safe calls (prctl, getppid, raise) between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                // The owner may have died between fork and prctl.
                if libc::getppid() == 1 {
                    libc::raise(libc::SIGKILL);
                }
                Ok(())
            });
        }
        let program = PathBuf::from(cmd.get_program());
        let child = spawn_from_spawner(cmd).map_err(|source| ProcessError::Spawn {
            name: name.to_string(),
            program,
            source,
        })?;
        tracing::debug!(name, pid = child.id(), "started");
        Ok(Managed {
            name: name.to_string(),
            child,
            status: None,
            log: log.map(Path::to_path_buf),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> Option<&Path> {
        self.log.as_deref()
    }

    /// The exit status if the process has exited (reaps it).
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, ProcessError> {
        if self.status.is_none() {
            self.status = self.child.try_wait().map_err(|source| ProcessError::Wait {
                name: self.name.clone(),
                source,
            })?;
        }
        Ok(self.status)
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>, ProcessError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait()? {
                return Ok(Some(s));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; always reaps.
    pub fn terminate(&mut self, grace: Duration) -> Result<ExitStatus, ProcessError> {
        if let Some(s) = self.try_wait()? {
            return Ok(s);
        }
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        if let Some(s) = self.wait_timeout(grace)? {
            return Ok(s);
        }
        tracing::warn!(
            name = self.name,
            "did not exit on SIGTERM within {grace:?}: SIGKILL"
        );
        self.kill()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) -> Result<ExitStatus, ProcessError> {
        if let Some(s) = self.try_wait()? {
            return Ok(s);
        }
        let _ = self.child.kill();
        let s = self.child.wait().map_err(|source| ProcessError::Wait {
            name: self.name.clone(),
            source,
        })?;
        self.status = Some(s);
        Ok(s)
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the process. Threads
/// of a ttrpc server pool (or of a test harness) come and go, so every child is forked by one
/// thread that lives as long as the process.
fn spawn_from_spawner(cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("myvm-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawning the spawner thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    tx.lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, reply_tx))
        .map_err(|_| io::Error::other("spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("spawner thread is gone"))?
}

/// Makes `cmd`'s process join the network namespace `ns` between fork and exec. `ns` must stay
/// open until `cmd` is spawned.
pub fn join_netns(cmd: &mut Command, ns: &File) {
    use std::os::fd::AsRawFd;
    let fd = ns.as_raw_fd();
    // SAFETY: setns(2) is async-signal-safe; the caller keeps `ns` open through the spawn.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Makes `cmd` run as `uid`:`uid` with no supplementary groups, no capabilities (a uid change
/// from 0 clears them) and no_new_privs. Register it before [`Managed::spawn`]: its
/// parent-death signal must be set after the uid change, which clears it.
pub fn run_unprivileged(cmd: &mut Command, uid: u32) {
    // SAFETY: setgroups/setgid/setuid/prctl are async-signal-safe; nothing is allocated.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(uid) != 0
                || libc::setuid(uid) != 0
                || libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The last `max_lines` lines of a (log) file, for error messages.
pub fn tail(path: &Path, max_lines: usize) -> String {
    // Bounded: a log can be as large as a guest made it.
    crate::serial::tail(path, max_lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminate_and_status() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let mut p = Managed::spawn("sleep", cmd, None).unwrap();
        assert!(p.try_wait().unwrap().is_none());
        let s = p.terminate(Duration::from_secs(2)).unwrap();
        assert!(!s.success());
    }

    #[test]
    fn log_and_tail() {
        let dir = std::env::temp_dir().join(format!("myvm-proc-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("out.log");
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "for i in 1 2 3 4 5; do echo line$i; done; echo err >&2",
        ]);
        let mut p = Managed::spawn("sh", cmd, Some(&log)).unwrap();
        assert!(p
            .wait_timeout(Duration::from_secs(5))
            .unwrap()
            .unwrap()
            .success());
        assert_eq!(tail(&log, 2), "line5\nerr");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn child_survives_the_thread_that_asked_for_it() {
        let p = std::thread::spawn(|| {
            let mut cmd = Command::new("sleep");
            cmd.arg("30");
            Managed::spawn("sleep", cmd, None).unwrap()
        })
        .join()
        .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let mut p = p;
        let status = p.try_wait().unwrap();
        assert!(
            status.is_none(),
            "pdeathsig must not fire when a worker thread exits: {status:?}"
        );
    }

    #[test]
    fn spawn_error_names_the_program() {
        let err = Managed::spawn("nope", Command::new("/nonexistent/bin"), None).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/bin"), "{err}");
    }
}
