//! Container root filesystems on the host: containerd's mounts (an overlay from the snapshotter)
//! are mounted under the sandbox's shared directory, which virtiofsd serves to the guest (through
//! `shared_tree`, the one module that touches that directory).

use std::path::{Path, PathBuf};

use containerd_shim_protos::api::Mount;
use nix::mount::MsFlags;

use super::shared_tree::{ContainerMounts, SharedTreeError};

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("mount {kind} {source_path}: {error}")]
    Mount {
        kind: String,
        source_path: String,
        #[source]
        error: SharedTreeError,
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

/// Mounts the container's rootfs on its mount point in the shared directory. With no mounts
/// from containerd, binds `bundle/rootfs`. Undone when `cm` drops.
pub fn mount_rootfs(
    cm: &mut ContainerMounts,
    mounts: &[Mount],
    bundle: &Path,
) -> Result<(), RootfsError> {
    if mounts.is_empty() {
        let src = bundle.join("rootfs");
        if !src.is_dir() {
            return Err(RootfsError::Missing(src));
        }
        return do_mount(
            cm,
            "bind",
            &src.display().to_string(),
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
        do_mount(cm, kind, &m.source, fstype_flags, &data)?;
    }
    Ok(())
}

fn do_mount(
    cm: &mut ContainerMounts,
    kind: &str,
    source: &str,
    flags: MsFlags,
    data: &str,
) -> Result<(), RootfsError> {
    let fstype = if kind == "bind" { None } else { Some(kind) };
    let data = if data.is_empty() { None } else { Some(data) };
    cm.mount_rootfs(source, fstype, flags, data)
        .map_err(|error| RootfsError::Mount {
            kind: kind.into(),
            source_path: source.into(),
            error,
        })
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
