//! Hypervisor backends behind one trait: `qemu` (QEMU `-M microvm`, KVM or TCG) and `builtin`
//! (our own VMM, `myvm-vmm`). Both boot the same PVH `vmlinux` + initramfs and attach the same
//! vhost-user devices (vsock, virtio-fs), so everything above this module is backend-agnostic.

pub mod builtin;
pub mod control;
pub mod qemu;

use std::{
    fmt,
    path::{Path, PathBuf},
    process::ExitStatus,
    time::Duration,
};

use crate::process::{Managed, ProcessError};

/// Which hypervisor backend runs a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Builtin,
    Qemu,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Builtin => "builtin",
            BackendKind::Qemu => "qemu",
        })
    }
}

impl std::str::FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "builtin" => Ok(BackendKind::Builtin),
            "qemu" => Ok(BackendKind::Qemu),
            other => Err(format!(
                "unknown backend {other:?} (expected builtin or qemu)"
            )),
        }
    }
}

/// CPU acceleration a backend runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualization through /dev/kvm.
    Kvm,
    /// QEMU's software emulation.
    Tcg,
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// A virtio-fs device served by a vhost-user daemon.
#[derive(Debug, Clone)]
pub struct FsDevice {
    pub tag: String,
    pub vhost_socket: PathBuf,
}

/// A virtio-net device backed by a tap device. The tap lives in the network namespace the
/// VMM runs in (`VmConfig::netns`), where the shim created it and wired it to the pod's veth.
/// The VMM does not open it: it inherits the n-th tap attached as fd `TAP_FD_BASE + n`
/// ([`crate::jail::attach_taps`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetDevice {
    /// Name of the tap interface.
    pub tap: String,
    /// MAC address the guest interface gets (the pod veth's, so the pod keeps its identity).
    pub mac: String,
    /// MTU of the pod network (announced to the guest where the device supports it).
    pub mtu: u32,
}

/// Everything a backend needs to boot one VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Kernel command line (the backend may append its device announcements).
    pub cmdline: String,
    /// vCPUs the VM has (the kernel command line may bring fewer online at boot: `maxcpus=`).
    pub vcpus: u32,
    pub memory_mib: u32,
    /// Guest RAM (MiB) the balloon holds from boot (room for the pod to grow).
    pub balloon_mib: u32,
    pub serial_log: PathBuf,
    /// vhost-user socket of the vsock device.
    pub vsock_vhost_socket: PathBuf,
    pub fs: Vec<FsDevice>,
    /// Network devices (tap-backed virtio-net).
    pub net: Vec<NetDevice>,
    /// Network namespace (a path like /var/run/netns/cni-…) the VMM process runs in, so that it
    /// can open the taps there; None = the shim's own.
    pub netns: Option<PathBuf>,
    /// Per-VM directory for the backend's own files (logs, pid files, sockets).
    pub work_dir: PathBuf,
    /// The uid the VMM runs as, jailed (see [`crate::jail`]); None = as the caller, unjailed.
    pub vmm_uid: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    #[error("invalid VM configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("{0} is not available on this host: {1}")]
    Unavailable(BackendKind, String),
    #[error("the VM is not running")]
    NotRunning,
    #[error("preparing the VMM's jail: {0}")]
    Jail(std::io::Error),
    #[error("the VMM's control channel: {0}")]
    Control(String),
}

/// One VM process managed by a backend.
pub trait Hypervisor: Send {
    fn kind(&self) -> BackendKind;
    /// Human-readable description of how the VM runs (e.g. `qemu/tcg`).
    fn describe(&self) -> String;
    /// Boots the VM (returns once the VMM process runs; the guest boots asynchronously).
    fn start(&mut self, config: &VmConfig) -> Result<(), HypervisorError>;
    /// The VMM process, once started.
    fn vmm(&self) -> Option<&Managed>;
    fn vmm_mut(&mut self) -> Option<&mut Managed>;

    /// Sets how much guest RAM the balloon holds (MiB).
    fn set_balloon_mib(&mut self, mib: u64) -> Result<(), HypervisorError>;
    /// The balloon now.
    fn balloon(&mut self) -> Result<control::BalloonState, HypervisorError>;

    /// Pids of the processes the backend started (the VMM).
    fn pids(&self) -> Vec<u32> {
        self.vmm().iter().map(|m| m.pid()).collect()
    }
    /// Sockets and files the backend created (removed on stop).
    fn sockets(&self) -> Vec<PathBuf> {
        Vec::new()
    }
    /// The VMM's exit status if it has exited.
    fn try_wait(&mut self) -> Result<Option<ExitStatus>, HypervisorError> {
        Ok(self
            .vmm_mut()
            .ok_or(HypervisorError::NotRunning)?
            .try_wait()?)
    }
    /// Waits up to `timeout` for the VMM to exit on its own (e.g. after a guest shutdown).
    fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>, HypervisorError> {
        Ok(self
            .vmm_mut()
            .ok_or(HypervisorError::NotRunning)?
            .wait_timeout(timeout)?)
    }
    /// Stops the VM: SIGTERM to the VMM, SIGKILL after `grace`; reaps it.
    fn stop(&mut self, grace: Duration) -> Result<ExitStatus, HypervisorError> {
        Ok(self
            .vmm_mut()
            .ok_or(HypervisorError::NotRunning)?
            .terminate(grace)?)
    }
}

/// Most vCPUs a guest may have (the guest kernel's CONFIG_NR_CPUS).
pub const MAX_VCPUS: u32 = 32;
/// Least guest memory that boots the guest image with room for containers.
pub const MIN_MEMORY_MIB: u32 = 64;

/// What every backend's `start` does: check the config, refuse a second VM, spawn the VMM with
/// its output in `<work_dir>/<name>.log`, in the pod's netns with its taps and its control
/// channel attached, and jailed when `config.vmm_uid` says so (`kvm`: it needs /dev/kvm).
/// Returns the shim's end of the control channel.
pub fn spawn_vmm(
    slot: &mut Option<Managed>,
    name: &str,
    cmd: std::process::Command,
    config: &VmConfig,
    kvm: bool,
) -> Result<std::os::unix::net::UnixStream, HypervisorError> {
    validate(config)?;
    if slot.is_some() {
        return Err(HypervisorError::Config(
            "this backend instance already runs a VM".into(),
        ));
    }
    let mut cmd = cmd;
    // The VMM joins the pod's network namespace (to open its taps) between fork and exec.
    let netns = match &config.netns {
        Some(path) => Some(std::fs::File::open(path).map_err(|e| {
            HypervisorError::Config(format!("network namespace {}: {e}", path.display()))
        })?),
        None => None,
    };
    if let Some(ns) = &netns {
        crate::process::join_netns(&mut cmd, ns);
    }
    let taps: Vec<String> = config.net.iter().map(|n| n.tap.clone()).collect();
    crate::jail::attach_taps(&mut cmd, &taps).map_err(HypervisorError::Jail)?;
    let (control, vmm_end) =
        crate::jail::attach_control(&mut cmd).map_err(HypervisorError::Jail)?;
    if let Some(uid) = config.vmm_uid {
        jail(&mut cmd, config, uid, kvm).map_err(HypervisorError::Jail)?;
    }
    tracing::debug!(?cmd, "starting {name}");
    let log = config.work_dir.join(format!("{name}.log"));
    *slot = Some(Managed::spawn(name, cmd, Some(&log))?);
    drop((netns, vmm_end));
    Ok(control)
}

/// Jails `cmd` (see [`crate::jail`]): it sees its binary, the kernel, initrd, serial log and
/// vhost-user sockets, and /dev/kvm if it needs it, all owned or opened for `uid`.
fn jail(
    cmd: &mut std::process::Command,
    config: &VmConfig,
    uid: u32,
    kvm: bool,
) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut jail = crate::jail::Jail::new(&config.work_dir.join("jail"), uid)?;
    jail.bind(Path::new(cmd.get_program()), false)?;
    jail.bind(&config.kernel, false)?;
    jail.bind(&config.initrd, false)?;
    // The serial console: a FIFO the VMM writes (`crate::serial`, made for `uid`).
    jail.bind(&config.serial_log, true)?;
    // The daemons' sockets: connecting takes write permission, given through the socket's group.
    let sockets = std::iter::once(&config.vsock_vhost_socket)
        .chain(config.fs.iter().map(|f| &f.vhost_socket));
    for socket in sockets {
        std::os::unix::fs::chown(socket, None, Some(uid))?;
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660))?;
        jail.bind(socket, true)?;
    }
    if kvm {
        jail.device(Path::new("/dev/kvm"), true)?;
    }
    jail.enter(cmd)
}

pub fn validate(config: &VmConfig) -> Result<(), HypervisorError> {
    validate_parts(
        &config.kernel,
        &config.initrd,
        config.vcpus,
        config.memory_mib,
    )
}

/// Checks what a VM needs before anything is started.
pub fn validate_parts(
    kernel: &Path,
    initrd: &Path,
    vcpus: u32,
    memory_mib: u32,
) -> Result<(), HypervisorError> {
    let bad = |m: String| Err(HypervisorError::Config(m));
    if !kernel.is_file() {
        return bad(format!("kernel {} does not exist", kernel.display()));
    }
    if !initrd.is_file() {
        return bad(format!("initrd {} does not exist", initrd.display()));
    }
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return bad(format!("vcpus must be 1..={MAX_VCPUS}, got {vcpus}"));
    }
    if memory_mib < MIN_MEMORY_MIB {
        return bad(format!(
            "memory must be at least {MIN_MEMORY_MIB} MiB, got {memory_mib}"
        ));
    }
    Ok(())
}

/// Builds the backend for `kind`.
pub fn new_backend(
    kind: BackendKind,
    host: &crate::check::HostInfo,
) -> Result<Box<dyn Hypervisor>, HypervisorError> {
    match kind {
        BackendKind::Qemu => {
            let qemu = host.qemu.clone().ok_or_else(|| {
                HypervisorError::Unavailable(
                    kind,
                    "qemu-system-x86_64 not found (apt-get install qemu-system-x86)".into(),
                )
            })?;
            let accel = if host.hw_virt && host.kvm {
                Accel::Kvm
            } else {
                Accel::Tcg
            };
            Ok(Box::new(qemu::Qemu::new(qemu, accel)))
        }
        BackendKind::Builtin => {
            let vmm = host.builtin_vmm.clone().ok_or_else(|| {
                HypervisorError::Unavailable(
                    kind,
                    "myvm-vmm not found (set MYVM_VMM or install it)".into(),
                )
            })?;
            if !host.kvm {
                return Err(HypervisorError::Unavailable(
                    kind,
                    "/dev/kvm does not exist".into(),
                ));
            }
            Ok(Box::new(builtin::Builtin::new(vmm)))
        }
    }
}
