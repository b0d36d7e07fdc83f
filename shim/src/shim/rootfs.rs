//! Container root filesystems on the host: containerd's mounts (an overlay from the snapshotter)
//! are mounted under the sandbox's shared directory, which virtiofsd serves to the guest.

use std::path::{Path, PathBuf};

use containerd_shim_protos::api::Mount;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("mkdir {path}: {source}")]
    Mkdir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("mount {kind} {source_path} on {target}: {errno}")]
    Mount {
        kind: String,
        source_path: String,
        target: PathBuf,
        errno: nix::Error,
    },
    #[error("the container has no rootfs: no mounts from containerd and no {0}")]
    Missing(PathBuf),
}

/// Splits mount options into flags and data (what mount(8) does for the common ones).
pub fn parse_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => flags &= !MsFlags::MS_RDONLY,
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            other => data.push(other.to_string()),
        }
    }
    (flags, data.join(","))
}

/// Mounts the container's rootfs at `target` (created). With no mounts, binds `bundle/rootfs`.
pub fn mount_rootfs(mounts: &[Mount], bundle: &Path, target: &Path) -> Result<(), RootfsError> {
    std::fs::create_dir_all(target).map_err(|source| RootfsError::Mkdir {
        path: target.into(),
        source,
    })?;
    if mounts.is_empty() {
        let src = bundle.join("rootfs");
        if !src.is_dir() {
            return Err(RootfsError::Missing(src));
        }
        return do_mount(
            "bind",
            &src.display().to_string(),
            target,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            "",
        );
    }
    for m in mounts {
        let (flags, data) = parse_options(&m.options);
        let kind = if m.type_.is_empty() {
            "bind"
        } else {
            m.type_.as_str()
        };
        let fstype_flags = if kind == "bind" {
            flags | MsFlags::MS_BIND
        } else {
            flags
        };
        do_mount(kind, &m.source, target, fstype_flags, &data)?;
    }
    Ok(())
}

fn do_mount(
    kind: &str,
    source: &str,
    target: &Path,
    flags: MsFlags,
    data: &str,
) -> Result<(), RootfsError> {
    let fstype = if kind == "bind" { None } else { Some(kind) };
    let data = if data.is_empty() { None } else { Some(data) };
    mount(Some(source), target, fstype, flags, data).map_err(|errno| RootfsError::Mount {
        kind: kind.into(),
        source_path: source.into(),
        target: target.into(),
        errno,
    })
}

/// Unmounts everything at `target` (lazily if busy) and removes the now empty directory.
pub fn unmount_rootfs(target: &Path) {
    for _ in 0..8 {
        match umount2(target, MntFlags::empty()) {
            Ok(()) => continue,
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => break,
            Err(nix::errno::Errno::EBUSY) => {
                let _ = umount2(target, MntFlags::MNT_DETACH);
            }
            Err(e) => {
                tracing::warn!("umount {}: {e}", target.display());
                break;
            }
        }
    }
    // Only empty directories: never delete through a mount that is still there.
    let _ = std::fs::remove_dir(target);
    if let Some(parent) = target.parent() {
        let _ = std::fs::remove_dir(parent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let opts: Vec<String> = [
            "ro",
            "nosuid",
            "lowerdir=/a:/b",
            "upperdir=/u",
            "workdir=/w",
            "index=off",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (flags, data) = parse_options(&opts);
        assert_eq!(flags, MsFlags::MS_RDONLY | MsFlags::MS_NOSUID);
        assert_eq!(data, "lowerdir=/a:/b,upperdir=/u,workdir=/w,index=off");
    }
}
