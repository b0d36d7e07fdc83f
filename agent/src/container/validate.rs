//! What the agent agrees to run, checked before libcontainer sees a request. The host is the only
//! peer the agent talks to ([`crate::peer`]); this is the second line behind that check: even a
//! request that got through may not reach beyond the container's own directory in the shared
//! filesystem.
//!
//! - Ids (container and exec) are names, not paths: `[A-Za-z0-9][A-Za-z0-9_.-]*`, at most 128.
//! - The rootfs is the container's own `<share>/<id>/rootfs`, where `<share>` is a mount point
//!   of CreateSandbox, and is no symlink.
//! - A bind mount's source lies below `<share>/<id>/` (where the host puts the container's
//!   volumes, `mounts/<n>`), also once symlinks are resolved: nothing of the guest's own root,
//!   of the shared directory as a whole or of another container.
//! - Other mounts are of the kernel filesystems a container spec uses (proc, sysfs, tmpfs, devpts,
//!   mqueue, cgroup, cgroup2), which mount no existing path.
//! - Paths are absolute and have no `..` component.

use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{Mount, Spec};

use super::error::{ContainerError, Result};

/// Longest container or exec id.
pub const MAX_ID_LEN: usize = 128;

/// Mount types (other than binds) a container may ask for.
pub const MOUNT_TYPES: [&str; 7] = [
    "proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2",
];

fn invalid(msg: String) -> ContainerError {
    ContainerError::Invalid(msg)
}

/// A container or exec id: `[A-Za-z0-9][A-Za-z0-9_.-]*`, at most [`MAX_ID_LEN`] (containerd's
/// identifiers; CRI's are 64 hex digits).
pub fn id(kind: &str, id: &str) -> Result<()> {
    let ok = id.len() <= MAX_ID_LEN
        && id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "invalid {kind} id {id:?} (use [A-Za-z0-9][A-Za-z0-9_.-]*, at most {MAX_ID_LEN})"
        )))
    }
}

/// An absolute path without `.` or `..` components.
fn clean_absolute(what: &str, path: &Path) -> Result<()> {
    let mut components = path.components();
    let ok = components.next() == Some(Component::RootDir)
        && components.all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "{what} {} is not an absolute path without `..`",
            path.display()
        )))
    }
}

/// The container's directory in the share that holds `rootfs`: `rootfs` must be
/// `<share>/<id>/rootfs` for one of `shares`, and no symlink on the way.
pub fn rootfs(shares: &[PathBuf], container_id: &str, rootfs: &Path) -> Result<PathBuf> {
    clean_absolute("rootfs", rootfs)?;
    if shares.is_empty() {
        return Err(ContainerError::Precondition(
            "no shared directory is mounted in the guest (CreateSandbox first)".into(),
        ));
    }
    let dir = shares
        .iter()
        .map(|s| s.join(container_id))
        .find(|dir| rootfs == dir.join("rootfs"))
        .ok_or_else(|| {
            invalid(format!(
                "rootfs {} is not the container's own {}/{container_id}/rootfs",
                rootfs.display(),
                shares[0].display()
            ))
        })?;
    match rootfs.canonicalize() {
        Ok(real) if real == rootfs => Ok(dir),
        Ok(real) => Err(invalid(format!(
            "rootfs {} leads elsewhere ({})",
            rootfs.display(),
            real.display()
        ))),
        Err(e) => Err(invalid(format!(
            "rootfs {} is not in the guest: {e}",
            rootfs.display()
        ))),
    }
}

fn is_bind(m: &Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .as_ref()
            .is_some_and(|o| o.iter().any(|o| o == "bind" || o == "rbind"))
}

/// The spec's mounts against the rules above; `container_dirs` are the container's directories
/// `<share>/<id>` in every share (the rootfs's, see [`rootfs`], and the volumes').
pub fn mounts(spec: &Spec, container_dirs: &[PathBuf]) -> Result<()> {
    let Some(mounts) = spec.mounts() else {
        return Ok(());
    };
    for m in mounts {
        let dest = m.destination();
        clean_absolute("mount destination", dest)?;
        if is_bind(m) {
            let source = m.source().as_deref().ok_or_else(|| {
                invalid(format!("bind mount on {} has no source", dest.display()))
            })?;
            let mut why = String::from("no shared directory");
            let ok = container_dirs
                .iter()
                .any(|dir| match bind_source(source, dir) {
                    Ok(()) => true,
                    Err(e) => {
                        why = e;
                        false
                    }
                });
            if !ok {
                return Err(invalid(format!("bind mount on {}: {why}", dest.display())));
            }
        } else {
            let typ = m.typ().as_deref().unwrap_or("");
            if !MOUNT_TYPES.contains(&typ) {
                return Err(invalid(format!(
                    "mount on {} has type {typ:?}: only binds from the container's own shared \
                     directory and {} are allowed in the guest",
                    dest.display(),
                    MOUNT_TYPES.join(", ")
                )));
            }
        }
    }
    Ok(())
}

fn bind_source(source: &Path, container_dir: &Path) -> std::result::Result<(), String> {
    let outside = || {
        format!(
            "source {} is not below the container's shared directory {}",
            source.display(),
            container_dir.display()
        )
    };
    clean_absolute("source", source).map_err(|e| e.to_string())?;
    if !source.starts_with(container_dir) || source == container_dir {
        return Err(outside());
    }
    // A symlink below the directory (the container can write to its rootfs and volumes) must not
    // lead out of it.
    let real = source
        .canonicalize()
        .map_err(|e| format!("source {}: {e}", source.display()))?;
    let real_dir = container_dir
        .canonicalize()
        .map_err(|e| format!("{}: {e}", container_dir.display()))?;
    if !real.starts_with(&real_dir) || real == real_dir {
        return Err(format!("{} (it leads to {})", outside(), real.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// A fake share with container `c1`'s rootfs and one volume, and a directory outside it.
    struct Share {
        base: PathBuf,
    }

    impl Share {
        fn new(name: &str) -> Share {
            let base =
                std::env::temp_dir().join(format!("myvm-validate-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&base);
            for d in [
                "share/c1/rootfs/etc",
                "share/c1/mounts/0",
                "share/c2/rootfs",
                "outside",
            ] {
                std::fs::create_dir_all(base.join(d)).unwrap();
            }
            Share { base }
        }
        fn share(&self) -> PathBuf {
            self.base.join("share")
        }
        fn dir(&self) -> PathBuf {
            self.share().join("c1")
        }
    }

    impl Drop for Share {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.base);
        }
    }

    fn spec_with(mounts: serde_json::Value) -> Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"user": {"uid": 0, "gid": 0}, "args": ["sh"], "cwd": "/"},
            "root": {"path": "rootfs"},
            "mounts": mounts,
        }))
        .unwrap()
    }

    #[test]
    fn ids() {
        for good in ["abc-1_2.3", "a", "0f", &"x".repeat(128), "a..b"] {
            assert!(id("container", good).is_ok(), "{good:?}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "-x",
            "_x",
            "a/b",
            "../x",
            "a b",
            "a\0",
            "é",
            &"x".repeat(129),
        ] {
            let e = id("container", bad).unwrap_err().to_string();
            assert!(e.contains("invalid container id"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn rootfs_is_the_containers_own() {
        let s = Share::new("rootfs");
        let shares = [s.share()];
        let own = s.dir().join("rootfs");
        assert_eq!(rootfs(&shares, "c1", &own).unwrap(), s.dir());
        for (bad, why) in [
            (s.share().join("c2/rootfs"), "own"),
            (s.share().join("c1"), "own"),
            (s.share().join("rootfs"), "own"),
            (PathBuf::from("/"), "own"),
            (s.share().join("c2/../c1/rootfs"), "without `..`"),
            (PathBuf::from("rel/rootfs"), "absolute"),
        ] {
            let e = rootfs(&shares, "c1", &bad).unwrap_err().to_string();
            assert!(e.contains(why), "{}: {e}", bad.display());
        }
        // A symlink in its place is refused.
        std::fs::create_dir(s.share().join("c4")).unwrap();
        symlink("/", s.share().join("c4/rootfs")).unwrap();
        let e = rootfs(&shares, "c4", &s.share().join("c4/rootfs")).unwrap_err();
        assert!(e.to_string().contains("leads elsewhere"), "{e}");
        // No share mounted yet.
        let e = rootfs(&[], "c1", &own).unwrap_err();
        assert!(e.to_string().contains("CreateSandbox first"), "{e}");
    }

    #[test]
    fn binds_only_from_the_containers_directory() {
        let s = Share::new("binds");
        let dir = s.dir();
        let ok = spec_with(serde_json::json!([
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup"},
            {"destination": "/data", "type": "bind", "source": dir.join("mounts/0"), "options": ["rbind"]},
            {"destination": "/etc2", "source": dir.join("rootfs/etc"), "options": ["bind", "ro"]},
        ]));
        mounts(&ok, std::slice::from_ref(&dir)).unwrap();

        symlink("/", dir.join("mounts/0/root")).unwrap();
        symlink(s.share().join("c2"), dir.join("mounts/other")).unwrap();
        for (source, why) in [
            (PathBuf::from("/"), "not below"),
            (PathBuf::from("/etc"), "not below"),
            (s.share(), "not below"),
            (dir.clone(), "not below"),
            (s.share().join("c2/rootfs"), "not below"),
            (s.base.join("outside"), "not below"),
            (dir.join("mounts/../../c2"), "without `..`"),
            (dir.join("mounts/0/root"), "leads to /"),
            (dir.join("mounts/other"), "leads to"),
            (dir.join("mounts/missing"), "No such file"),
        ] {
            let spec = spec_with(serde_json::json!([
                {"destination": "/x", "type": "bind", "source": source, "options": ["rbind"]},
            ]));
            let e = mounts(&spec, std::slice::from_ref(&dir))
                .unwrap_err()
                .to_string();
            assert!(e.contains(why), "{}: {e}", source.display());
            assert!(e.contains("invalid request: bind mount on /x"), "{e}");
        }
        // A bind by option only, whatever the type says.
        let spec = spec_with(serde_json::json!([
            {"destination": "/x", "type": "proc", "source": "/", "options": ["rbind"]},
        ]));
        assert!(mounts(&spec, std::slice::from_ref(&dir)).is_err());
        // Filesystems that would mount something of the guest, and odd destinations.
        for m in [
            serde_json::json!({"destination": "/x", "type": "virtiofs", "source": "myvmfs"}),
            serde_json::json!({"destination": "/x", "type": "ext4", "source": "/dev/vda"}),
            serde_json::json!({"destination": "/x", "type": "overlay", "source": "overlay"}),
            serde_json::json!({"destination": "/x", "source": "/"}),
            serde_json::json!({"destination": "/a/../../x", "type": "tmpfs", "source": "tmpfs"}),
            serde_json::json!({"destination": "x", "type": "tmpfs", "source": "tmpfs"}),
        ] {
            assert!(
                mounts(
                    &spec_with(serde_json::json!([m])),
                    std::slice::from_ref(&dir)
                )
                .is_err(),
                "{m}"
            );
        }
    }
}
