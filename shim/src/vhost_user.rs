//! The vhost-user device daemons both backends share: `vhost-device-vsock` (vsock, served to the
//! host as Firecracker-style hybrid vsock) and `virtiofsd` (virtio-fs). One of each per VM boot.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use crate::process::{tail, Managed, ProcessError};

/// How long a daemon may take to create its vhost-user socket.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("preparing the daemon's directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("{name} exited ({status}) before creating {socket}; its log says:\n{log}")]
    Exited {
        name: String,
        status: std::process::ExitStatus,
        socket: PathBuf,
        log: String,
    },
    #[error("{name} did not create {socket} within {timeout:?}; its log says:\n{log}")]
    NoSocket {
        name: String,
        socket: PathBuf,
        timeout: Duration,
        log: String,
    },
}

/// A running vhost-device-vsock for one VM.
#[derive(Debug)]
pub struct VsockDaemon {
    pub process: Managed,
    /// vhost-user socket the VMM connects to.
    pub vhost_socket: PathBuf,
    /// Hybrid vsock socket for the host side.
    pub uds: PathBuf,
}

/// A running virtiofsd sharing one host directory.
#[derive(Debug)]
pub struct FsDaemon {
    // Field order is drop order: the daemon goes before its mount point.
    pub process: Managed,
    pub vhost_socket: PathBuf,
    pub tag: String,
    pub shared_dir: PathBuf,
    _propagation: PropagatingDir,
}

/// The shared directory made a mount point of its own with shared propagation. virtiofsd's
/// namespace sandbox gives it a mount namespace of its own holding only that directory, copied
/// when it starts; what the shim mounts below the directory later (container rootfs, volumes)
/// reaches that copy only through propagation. With `mounts_only`, the bind is read-only (and
/// nosuid, nodev): the guest can then write only inside what is mounted below it. Unmounted on
/// drop.
#[derive(Debug)]
struct PropagatingDir(PathBuf);

impl PropagatingDir {
    fn new(dir: &Path, mounts_only: bool) -> Result<Self, DaemonError> {
        use nix::mount::{mount, MsFlags};
        let err = |source: nix::errno::Errno| DaemonError::Dir {
            path: dir.to_path_buf(),
            source: source.into(),
        };
        mount(
            Some(dir),
            dir,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(err)?;
        let guard = PropagatingDir(dir.to_path_buf());
        if mounts_only {
            mount(
                None::<&str>,
                dir,
                None::<&str>,
                MsFlags::MS_BIND
                    | MsFlags::MS_REMOUNT
                    | MsFlags::MS_RDONLY
                    | MsFlags::MS_NOSUID
                    | MsFlags::MS_NODEV,
                None::<&str>,
            )
            .map_err(err)?;
        }
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED,
            None::<&str>,
        )
        .map_err(err)?;
        Ok(guard)
    }
}

impl Drop for PropagatingDir {
    fn drop(&mut self) {
        unmount_propagating_dir(&self.0);
    }
}

/// Undoes what starting virtiofsd on `dir` mounted (also after the shim that did it died).
pub fn unmount_propagating_dir(dir: &Path) {
    use nix::mount::{umount2, MntFlags};
    let _ = umount2(dir, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW);
}

/// Starts vhost-device-vsock for the VM in `dir`. It parses every vsock packet the guest sends,
/// so it runs unprivileged and jailed ([`crate::jail`]): `uid` (the VM's own, see
/// [`crate::jail::VmUids`]), no capabilities, no_new_privs, a mount namespace holding its
/// binary and `dir/vsock`, the directory of its sockets (the shim, as root, still reaches them).
pub fn start_vsock(
    binary: &Path,
    dir: &Path,
    guest_cid: u32,
    uid: u32,
) -> Result<VsockDaemon, DaemonError> {
    let own = dir.join("vsock");
    let mkdir = |source| DaemonError::Dir {
        path: own.clone(),
        source,
    };
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&own)
            .map_err(mkdir)?;
        std::os::unix::fs::chown(&own, Some(uid), Some(uid)).map_err(mkdir)?;
        // The VM directory stays root's (0700 for everyone else): the daemon gets through it
        // by its group (its gid is its uid), 0710.
        use std::os::unix::fs::PermissionsExt;
        std::os::unix::fs::chown(dir, None, Some(uid)).map_err(mkdir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o710)).map_err(mkdir)?;
    }
    let vhost_socket = own.join("vsock.vhost.sock");
    let uds = own.join("vsock.sock");
    let mut cmd = Command::new(binary);
    cmd.arg("--guest-cid")
        .arg(guest_cid.to_string())
        .arg("--socket")
        .arg(&vhost_socket)
        .arg("--uds-path")
        .arg(&uds);
    cmd.env("RUST_LOG", "warn");
    // Jailed like the VMM: its binary, its socket directory, nothing else of the host.
    let jail = (|| {
        let mut jail = crate::jail::Jail::new(&dir.join("jail"), uid)?;
        jail.bind(binary, false)?;
        jail.bind(&own, true)?;
        jail.enter(&mut cmd)
    })();
    jail.map_err(|source| DaemonError::Dir {
        path: dir.join("jail"),
        source,
    })?;
    let mut process = Managed::spawn(
        "vhost-device-vsock",
        cmd,
        Some(&dir.join("vhost-device-vsock.log")),
    )?;
    wait_for_socket(&mut process, &vhost_socket)?;
    Ok(VsockDaemon {
        process,
        vhost_socket,
        uds,
    })
}

pub fn start_virtiofsd(
    binary: &Path,
    dir: &Path,
    tag: &str,
    shared_dir: &Path,
    access: crate::vm::ShareAccess,
    no_privileged_files: bool,
) -> Result<FsDaemon, DaemonError> {
    let vhost_socket = dir.join(format!("fs-{tag}.vhost.sock"));
    let mut cmd = Command::new(binary);
    cmd.arg("--socket-path")
        .arg(&vhost_socket)
        .arg("--shared-dir")
        .arg(shared_dir)
        .args([
            "--cache",
            "auto",
            // Own mount (only the shared directory), pid and network namespaces.
            "--sandbox",
            "namespace",
            // No file handles, so no CAP_DAC_READ_SEARCH: with it, open_by_handle_at reaches
            // any inode of a shared filesystem (a volume's: the host's), outside the shared
            // directory. One O_PATH fd per inode the guest holds instead.
            "--inode-file-handles=never",
            "--announce-submounts",
            "--xattr",
        ])
        .args(["--log-level", "warn"]);
    if access == crate::vm::ShareAccess::ReadOnly {
        cmd.arg("--readonly");
    }
    if no_privileged_files {
        // No device nodes, no file capabilities, and (the filter) no set-user/group-ID modes.
        cmd.arg("--modcaps=-dac_read_search:-mknod:-setfcap");
        let program = crate::setid_filter::program().map_err(|e| DaemonError::Dir {
            path: shared_dir.to_path_buf(),
            source: std::io::Error::other(format!("the set-id seccomp filter: {e}")),
        })?;
        use std::os::unix::process::CommandExt;
        // SAFETY: applying a prebuilt filter makes system calls only.
        unsafe {
            cmd.pre_exec(move || crate::setid_filter::apply(&program));
        }
    } else {
        cmd.arg("--modcaps=-dac_read_search");
    }
    let log = dir.join(format!("virtiofsd-{tag}.log"));
    let propagation =
        PropagatingDir::new(shared_dir, access == crate::vm::ShareAccess::MountsOnly)?;
    let mut process = Managed::spawn("virtiofsd", cmd, Some(&log))?;
    wait_for_socket(&mut process, &vhost_socket)?;
    Ok(FsDaemon {
        process,
        vhost_socket,
        tag: tag.to_string(),
        shared_dir: shared_dir.to_path_buf(),
        _propagation: propagation,
    })
}

fn wait_for_socket(process: &mut Managed, socket: &Path) -> Result<(), DaemonError> {
    let start = Instant::now();
    loop {
        if socket.exists() {
            return Ok(());
        }
        if let Some(status) = process.try_wait()? {
            return Err(DaemonError::Exited {
                name: process.name().to_string(),
                status,
                socket: socket.to_path_buf(),
                log: process_log(process),
            });
        }
        if start.elapsed() > SOCKET_TIMEOUT {
            let err = DaemonError::NoSocket {
                name: process.name().to_string(),
                socket: socket.to_path_buf(),
                timeout: SOCKET_TIMEOUT,
                log: process_log(process),
            };
            let _ = process.kill();
            return Err(err);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn process_log(process: &Managed) -> String {
    process.log_path().map(|p| tail(p, 20)).unwrap_or_default()
}
