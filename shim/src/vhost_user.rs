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
    pub process: Managed,
    pub vhost_socket: PathBuf,
    pub tag: String,
    pub shared_dir: PathBuf,
}

/// Starts vhost-device-vsock for the VM in `dir`. It parses every vsock packet the guest sends,
/// so it runs unprivileged: `uid` (the VM's own, see [`crate::jail::VmUids`]), no
/// capabilities, no_new_privs, and a directory `dir/vsock` of its own for its sockets (the
/// shim, as root, still reaches them).
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
    crate::process::run_unprivileged(&mut cmd, uid);
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
    readonly: bool,
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
            "--sandbox",
            "chroot",
            "--announce-submounts",
            "--xattr",
        ])
        .args(["--log-level", "warn"]);
    if readonly {
        cmd.arg("--readonly");
    }
    let log = dir.join(format!("virtiofsd-{tag}.log"));
    let mut process = Managed::spawn("virtiofsd", cmd, Some(&log))?;
    wait_for_socket(&mut process, &vhost_socket)?;
    Ok(FsDaemon {
        process,
        vhost_socket,
        tag: tag.to_string(),
        shared_dir: shared_dir.to_path_buf(),
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
