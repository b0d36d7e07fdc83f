//! One microVM with its devices: the vhost-user daemons, the hypervisor backend and the agent
//! connection. Whatever happens, dropping a [`Vm`] leaves no process, socket or directory behind.

use std::{
    io::{BufRead, BufReader, Read},
    os::{
        fd::AsFd,
        unix::net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
    process::ExitStatus,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant, SystemTime},
};

use myvm_protocol::READY_VSOCK_PORT;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::{
    agent_client::{AgentClient, AgentError},
    assets::Assets,
    check::HostInfo,
    hybrid_vsock,
    hypervisor::{self, BackendKind, FsDevice, Hypervisor, HypervisorError, NetDevice, VmConfig},
    process::tail,
    serial::SerialLog,
    vhost_user::{self, DaemonError, FsDaemon, VsockDaemon},
};

/// Guest kernel command line every myvm VM gets. `reboot=t` + `panic=-1`: a guest reset or panic
/// ends the VMM (QEMU runs with -no-reboot).
pub const BASE_CMDLINE: &str = "console=ttyS0 reboot=t panic=-1 random.trust_cpu=on";

/// Default root of per-VM directories.
pub const RUN_ROOT: &str = "/run/myvm";

/// A host directory shared with the guest over virtio-fs.
#[derive(Debug, Clone)]
pub struct SharedDir {
    pub tag: String,
    pub path: PathBuf,
    pub access: ShareAccess,
    /// The guest can create no set-user-ID or set-group-ID file, device node or file capability
    /// through it: for directories the host's own users share (volumes), see
    /// [`crate::setid_filter`].
    pub no_privileged_files: bool,
}

/// What the guest may write in a shared directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShareAccess {
    ReadWrite,
    /// Nothing (virtiofsd `--readonly`).
    ReadOnly,
    /// Only inside what the host mounts below the directory later (read-write mounts): the
    /// directory is served through a read-only bind of itself, so the guest cannot change the
    /// host's mount points (see `shim::shared_tree`).
    MountsOnly,
}

#[derive(Debug, Clone)]
pub struct VmOptions {
    /// Backend; `None` = what the host supports best (see [`HostInfo::auto_backend`]).
    pub backend: Option<BackendKind>,
    /// vCPUs online at boot.
    pub vcpus: u32,
    /// vCPUs the VM has (0 = `vcpus`): the ones above `vcpus` stay offline until the agent
    /// brings them online (`maxcpus=` on the kernel command line).
    pub max_vcpus: u32,
    pub memory_mib: u32,
    /// Guest RAM (MiB) a balloon holds from boot: what the guest can grow into.
    pub balloon_mib: u32,
    pub extra_cmdline: String,
    pub shared_dirs: Vec<SharedDir>,
    /// Parent of the VM's own directory.
    pub run_root: PathBuf,
    /// Name of the VM's directory (default: generated).
    pub id: Option<String>,
    /// How long the guest may take to answer the agent's `Check`.
    pub boot_timeout: Duration,
    /// Tap-backed network devices, and the network namespace they (and the VMM) live in.
    pub net: Vec<NetDevice>,
    pub netns: Option<PathBuf>,
    /// Host cgroup the VMM and daemons are moved into as soon as they run.
    pub host_cgroup: Option<std::sync::Arc<crate::host_cgroup::HostCgroup>>,
}

impl Default for VmOptions {
    fn default() -> Self {
        VmOptions {
            backend: None,
            vcpus: 1,
            max_vcpus: 0,
            memory_mib: 256,
            balloon_mib: 0,
            extra_cmdline: String::new(),
            shared_dirs: Vec::new(),
            run_root: PathBuf::from(RUN_ROOT),
            id: None,
            boot_timeout: Duration::from_secs(30),
            net: Vec::new(),
            netns: None,
            host_cgroup: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("creating the VM directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the VM directory {0} is too long for the VM's Unix sockets (108 bytes with their names); use a shorter run root or VM id")]
    DirTooLong(PathBuf),
    #[error("{0}")]
    Cgroup(String),
    #[error("leasing uids for the VM's processes: {0}")]
    Uids(std::io::Error),
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    #[error(transparent)]
    Hypervisor(#[from] HypervisorError),
    #[error("the guest did not become ready: {source}\n--- last lines of the serial console ({log}) ---\n{serial}")]
    Boot {
        source: Box<AgentError>,
        log: PathBuf,
        serial: String,
    },
    #[error(transparent)]
    Agent(#[from] AgentError),
}

/// How long a booting guest may take to inflate its balloon to the pod's size.
const BALLOON_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Vm {
    id: String,
    dir: PathBuf,
    // Field order is drop order: the VMM goes first, then its daemons.
    hv: Box<dyn Hypervisor>,
    _console: SerialLog,
    vsock: VsockDaemon,
    fs: Vec<FsDaemon>,
    agent: Option<AgentClient>,
    serial_log: PathBuf,
    boot_time: Duration,
    timeline: BootTimeline,
    /// The uids of the VMM and vsock daemon, leased until they are gone.
    uids: crate::jail::VmUids,
}

impl Vm {
    /// Starts the daemons and the VMM and waits until the agent answers. On any error everything
    /// started so far is stopped and removed.
    pub fn boot(opts: &VmOptions, assets: &Assets, host: &HostInfo) -> Result<Vm, VmError> {
        let started = Instant::now();
        let backend = opts.backend.unwrap_or_else(|| host.auto_backend().0);
        let present = opts.vcpus.max(opts.max_vcpus);
        hypervisor::validate_parts(&assets.kernel, &assets.initrd, present, opts.memory_mib)?;
        if opts.balloon_mib >= opts.memory_mib {
            return Err(HypervisorError::Config(format!(
                "a balloon of {} MiB leaves nothing of {} MiB",
                opts.balloon_mib, opts.memory_mib
            ))
            .into());
        }
        let mut cmdline = format!("{BASE_CMDLINE} {}", opts.extra_cmdline);
        if present > opts.vcpus {
            cmdline.push_str(&format!(" maxcpus={}", opts.vcpus));
        }
        let hv = hypervisor::new_backend(backend, host)?;
        let id = opts.id.clone().unwrap_or_else(new_id);
        let dir = opts.run_root.join(&id);
        // Room for the longest socket path below it (`vsock/vsock.vhost.sock`,
        // `vsock/vsock.sock_<port>`).
        if dir.as_os_str().len() + 30 > 107 {
            return Err(VmError::DirTooLong(dir));
        }
        create_private_dir(&dir)?;
        // From here on, `Guard` removes the directory if we fail before `Vm` exists.
        let guard = DirGuard(dir.clone());

        let uids = crate::jail::VmUids::acquire(dir.as_os_str().as_encoded_bytes())
            .map_err(VmError::Uids)?;
        let vsock = vhost_user::start_vsock(&assets.vhost_vsock, &dir, 3, uids.vsock())?;
        let mut fs = Vec::new();
        for shared in &opts.shared_dirs {
            fs.push(vhost_user::start_virtiofsd(
                &assets.virtiofsd,
                &dir,
                &shared.tag,
                &shared.path,
                shared.access,
                shared.no_privileged_files,
            )?);
        }
        // The VMM writes the console into a FIFO; the host keeps a capped log of it.
        let serial_log = dir.join("serial.log");
        let serial_pipe = dir.join("serial.pipe");
        let console =
            SerialLog::start(&serial_pipe, &serial_log, Some(uids.vmm())).map_err(|source| {
                VmError::Dir {
                    path: serial_pipe.clone(),
                    source,
                }
            })?;
        let config = VmConfig {
            kernel: assets.kernel.clone(),
            initrd: assets.initrd.clone(),
            cmdline: cmdline.trim().to_string(),
            vcpus: present,
            memory_mib: opts.memory_mib,
            balloon_mib: opts.balloon_mib,
            serial_log: serial_pipe,
            vsock_vhost_socket: vsock.vhost_socket.clone(),
            fs: fs
                .iter()
                .map(|d| FsDevice {
                    tag: d.tag.clone(),
                    vhost_socket: d.vhost_socket.clone(),
                })
                .collect(),
            net: opts.net.clone(),
            netns: opts.netns.clone(),
            work_dir: dir.clone(),
            vmm_uid: Some(uids.vmm()),
        };
        let mut vm = Vm {
            id,
            dir,
            hv,
            _console: console,
            vsock,
            fs,
            agent: None,
            serial_log,
            boot_time: Duration::ZERO,
            timeline: BootTimeline::default(),
            uids,
        };
        std::mem::forget(guard); // `vm`'s Drop owns the cleanup now
                                 // The agent announces itself with a guest-initiated connection to READY_VSOCK_PORT.
        let ready_path = hybrid_vsock::guest_listener_path(&vm.vsock.uds, READY_VSOCK_PORT);
        let ready = UnixListener::bind(&ready_path).map_err(|source| VmError::Dir {
            path: ready_path.clone(),
            source,
        })?;
        // The (unprivileged) vsock daemon connects to it for the guest.
        let uid = vm.uids.vsock();
        std::os::unix::fs::chown(&ready_path, Some(uid), Some(uid)).map_err(|source| {
            VmError::Dir {
                path: ready_path.clone(),
                source,
            }
        })?;
        vm.hv.start(&config)?;
        vm.timeline.vmm_spawned = Some(SystemTime::now());
        if let Some(cg) = &opts.host_cgroup {
            for pid in vm.pids() {
                cg.add(pid).map_err(|e| VmError::Cgroup(e.to_string()))?;
            }
        }
        tracing::info!(vm = vm.id, backend = vm.hv.describe(), pids = ?vm.hv.pids(), "VM started");

        if let Err(source) = vm.wait_for_agent(&ready, started, opts.boot_timeout) {
            return Err(VmError::Boot {
                source: Box::new(source),
                log: vm.serial_log.clone(),
                serial: tail(&vm.serial_log, 30),
            });
        }
        if opts.balloon_mib > 0 {
            vm.wait_for_balloon(u64::from(opts.balloon_mib), BALLOON_TIMEOUT);
        }
        vm.boot_time = started.elapsed();
        tracing::info!(
            vm = vm.id,
            boot_ms = vm.boot_time.as_millis() as u64,
            "agent ready"
        );
        Ok(vm)
    }

    /// Waits for the agent's READY connection, then connects to it. Fails early if the VMM or
    /// the vsock daemon exits.
    fn wait_for_agent(
        &mut self,
        ready: &UnixListener,
        started: Instant,
        timeout: Duration,
    ) -> Result<(), AgentError> {
        let deadline = started + timeout;
        let not_ready = |last: String| AgentError::NotReady { timeout, last };
        ready
            .set_nonblocking(true)
            .map_err(|e| not_ready(e.to_string()))?;
        loop {
            self.check_alive().map_err(not_ready)?;
            match ready.accept() {
                Ok((stream, _)) => match read_ready_line(stream) {
                    Some((agent_init_ns, uptime_ns)) => {
                        let now = SystemTime::now();
                        let back = |ns: u64| now.checked_sub(Duration::from_nanos(ns));
                        self.timeline.agent_ready = Some(now);
                        self.timeline.agent_started = back(agent_init_ns);
                        self.timeline.kernel_started = uptime_ns.and_then(back);
                        tracing::debug!(vm = self.id, agent_init_ns, "agent announced itself");
                        break;
                    }
                    None => continue,
                },
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    return Err(not_ready(format!(
                        "accepting the agent's READY connection: {e}"
                    )))
                }
            }
            if Instant::now() >= deadline {
                return Err(not_ready(
                    "the agent never announced itself on the READY vsock port".into(),
                ));
            }
            let fd = PollFd::new(ready.as_fd(), PollFlags::POLLIN);
            let _ = poll(&mut [fd], PollTimeout::from(50u16));
        }
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(2));
        let hv = &mut self.hv;
        let vsock = &mut self.vsock;
        let agent = AgentClient::wait_ready(&vsock.uds.clone(), left, || alive(hv, vsock))?;
        self.agent = Some(agent);
        Ok(())
    }

    fn check_alive(&mut self) -> Result<(), String> {
        alive(&mut self.hv, &mut self.vsock)
    }

    /// True while the VMM and the vsock daemon run (reaps them if they exited: a dead child
    /// is a zombie, and its /proc entry stays until it is reaped).
    pub fn is_running(&mut self) -> bool {
        self.check_alive().is_ok()
    }

    /// The VMM's exit status, once it has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.hv.try_wait().ok().flatten()
    }

    /// When the boot's steps happened.
    pub fn timeline(&self) -> BootTimeline {
        self.timeline
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn backend(&self) -> String {
        self.hv.describe()
    }

    /// Time from `boot` being called to the agent answering.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// Waits (at most `timeout`) until the guest's balloon holds `mib`, so that a pod starts at
    /// its size and not at its VM's ceiling. The driver inflates it while the guest boots; a
    /// guest that does not (it is the guest's to do) is logged, not failed: the host cgroup
    /// still bounds what the VM can take.
    fn wait_for_balloon(&mut self, mib: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            match self.hv.balloon() {
                Ok(b) if b.actual_mib + 1 >= mib => return,
                Ok(b) if Instant::now() >= deadline => {
                    tracing::warn!(
                        vm = self.id,
                        target_mib = mib,
                        actual_mib = b.actual_mib,
                        "the guest has not inflated its balloon"
                    );
                    return;
                }
                Ok(_) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => {
                    tracing::warn!(vm = self.id, "reading the balloon: {e}");
                    return;
                }
            }
        }
    }

    /// Sets how much guest RAM the balloon holds (MiB): less lets the guest grow.
    pub fn set_balloon_mib(&mut self, mib: u64) -> Result<(), VmError> {
        Ok(self.hv.set_balloon_mib(mib)?)
    }

    pub fn balloon(&mut self) -> Result<hypervisor::control::BalloonState, VmError> {
        Ok(self.hv.balloon()?)
    }

    pub fn agent(&self) -> &AgentClient {
        self.agent.as_ref().expect("a booted Vm has an agent")
    }

    pub fn serial_log(&self) -> &Path {
        &self.serial_log
    }

    /// The hybrid vsock socket of this VM.
    pub fn vsock_uds(&self) -> &Path {
        &self.vsock.uds
    }

    /// Pids of every host process of this VM (VMM and daemons).
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = self.hv.pids();
        pids.push(self.vsock.process.pid());
        pids.extend(self.fs.iter().map(|d| d.process.pid()));
        pids
    }

    /// Asks the agent to end the VM. Its answer means nothing runs in the guest any more and
    /// every write reached the host, so the VMM is then stopped at once (SIGTERM: QEMU exits 0,
    /// myvm-vmm 143) instead of waiting for the guest's own reset. Without an answer, waits up to
    /// `timeout` for the VMM to exit, then stops it. Returns the VMM's exit status; everything
    /// is cleaned up afterwards.
    pub fn shutdown(mut self, timeout: Duration) -> Result<ExitStatus, VmError> {
        let quiesced = match self.agent.take().map(|a| a.shutdown()) {
            Some(Ok(())) => true,
            Some(Err(e)) => {
                tracing::warn!(vm = self.id, "agent Shutdown failed, stopping the VMM: {e}");
                false
            }
            None => false,
        };
        tracing::debug!(vm = self.id, quiesced, "Shutdown done");
        let status = if quiesced {
            self.hv.stop(Duration::from_secs(1))?
        } else {
            match self.hv.wait_timeout(timeout)? {
                Some(s) => s,
                None => {
                    tracing::warn!(
                        vm = self.id,
                        "VM did not exit within {timeout:?} of Shutdown: stopping it"
                    );
                    self.hv.stop(Duration::from_secs(1))?
                }
            }
        };
        tracing::debug!(vm = self.id, "VMM exited: {status}");
        Ok(status)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.agent = None;
        let _ = self.hv.stop(Duration::from_millis(500));
        let _ = self.vsock.process.terminate(Duration::from_millis(500));
        for d in &mut self.fs {
            let _ = d.process.terminate(Duration::from_millis(500));
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(vm = self.id, "removing {}: {e}", self.dir.display());
        }
    }
}

fn alive(hv: &mut Box<dyn Hypervisor>, vsock: &mut VsockDaemon) -> Result<(), String> {
    if let Ok(Some(status)) = hv.try_wait() {
        return Err(format!(
            "the VMM exited ({status}) before the agent answered"
        ));
    }
    if let Ok(Some(status)) = vsock.process.try_wait() {
        return Err(format!("vhost-device-vsock exited ({status})"));
    }
    Ok(())
}

/// Reads `READY <ns>` from the agent's announcement connection.
/// Reads the agent's `READY <agent init ns> [<guest uptime ns>]` line.
fn read_ready_line(stream: UnixStream) -> Option<(u64, Option<u64>)> {
    stream.set_nonblocking(false).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    let mut line = String::new();
    BufReader::new(stream).take(64).read_line(&mut line).ok()?;
    parse_ready(&line)
}

fn parse_ready(line: &str) -> Option<(u64, Option<u64>)> {
    let mut f = line.trim().strip_prefix("READY ")?.split(' ');
    let init = f.next()?.parse().ok()?;
    let uptime = match f.next() {
        Some(u) => Some(u.parse().ok()?),
        None => None,
    };
    f.next().is_none().then_some((init, uptime))
}

/// When the steps of a VM boot happened, on the host's clock (see `crate::timing`).
#[derive(Debug, Clone, Copy, Default)]
pub struct BootTimeline {
    pub vmm_spawned: Option<SystemTime>,
    /// The guest kernel's first instruction: READY's arrival less the guest's uptime.
    pub kernel_started: Option<SystemTime>,
    pub agent_started: Option<SystemTime>,
    pub agent_ready: Option<SystemTime>,
}

struct DirGuard(PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Creates `dir` readable only by root (0700), its parents traversable but not listable (0711).
pub fn create_private_dir(dir: &Path) -> Result<(), VmError> {
    use std::os::unix::fs::DirBuilderExt;
    let err = |source| VmError::Dir {
        path: dir.to_path_buf(),
        source,
    };
    if let Some(parent) = dir.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(parent)
            .map_err(err)?;
        // Made by an older version, or by hand: other users may traverse, never list.
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o711));
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(err)
}

fn new_id() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "vm-{}-{}-{:08x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

#[cfg(test)]
mod tests {
    use super::parse_ready;

    #[test]
    fn ready_lines() {
        assert_eq!(parse_ready("READY 93000000\n"), Some((93_000_000, None)));
        assert_eq!(
            parse_ready("READY 93000000 1060000000\n"),
            Some((93_000_000, Some(1_060_000_000)))
        );
        for bad in [
            "READY",
            "READY x",
            "READY 1 y",
            "READY 1 2 3",
            "HELLO 1",
            "",
        ] {
            assert_eq!(parse_ready(bad), None, "{bad:?}");
        }
    }
}
