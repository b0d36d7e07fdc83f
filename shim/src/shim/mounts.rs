//! Volumes: the OCI spec's bind mounts name host paths (CRI's /etc/hosts, /etc/resolv.conf,
//! emptyDir, hostPath, configmap and secret files, `ctr run --mount`). The guest cannot see the
//! host, so each one is bind-mounted under the container's directory in the sandbox's shared
//! directory, which virtiofsd serves, and the spec is rewritten to bind the guest's view of it.
//! Writes go through in both directions; read-only sources are also read-only on the host side.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("bind mount for {destination}: source {source_path} does not exist on the host")]
    MissingSource {
        destination: String,
        source_path: String,
    },
    #[error("bind mount for {destination}: source {source_path} is not an absolute path")]
    RelativeSource {
        destination: String,
        source_path: String,
    },
    #[error("sharing {source_path} into the VM at {target}: {what}: {errno}")]
    Share {
        source_path: String,
        target: PathBuf,
        what: &'static str,
        errno: std::io::Error,
    },
    #[error("the spec's mounts are malformed: {0}")]
    Malformed(String),
}

/// Where the host side of the container's shared volumes lives, below its shared directory.
pub const MOUNTS_DIR: &str = "mounts";

fn is_bind(m: &Value) -> bool {
    m.get("type").and_then(Value::as_str) == Some("bind")
        || m.get("options")
            .and_then(Value::as_array)
            .is_some_and(|o| o.iter().any(|v| v == "bind" || v == "rbind"))
}

fn is_readonly(m: &Value) -> bool {
    m.get("options")
        .and_then(Value::as_array)
        .is_some_and(|o| o.iter().any(|v| v == "ro"))
}

/// The guest's own /dev/shm for a container (a pod's shm from the host cannot be shared
/// with the guest's IPC namespace anyway).
fn guest_shm() -> Value {
    json!({
        "destination": "/dev/shm",
        "type": "tmpfs",
        "source": "shm",
        "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
    })
}

/// Rewrites `spec`'s bind mounts to come through the shared directory. `host_dir` is the
/// container's directory in the host shared directory, `guest_dir` the same directory as the
/// guest sees it. On error, whatever was already bound is undone.
pub fn share_bind_mounts(
    spec: &mut Value,
    host_dir: &Path,
    guest_dir: &str,
) -> Result<(), MountError> {
    let Some(mounts) = spec.get_mut("mounts") else {
        return Ok(());
    };
    let mounts = mounts
        .as_array_mut()
        .ok_or_else(|| MountError::Malformed("`mounts` is not an array".into()))?;
    let result = (|| {
        for (n, m) in mounts.iter_mut().enumerate() {
            if !is_bind(m) {
                continue;
            }
            let destination = m
                .get("destination")
                .and_then(Value::as_str)
                .ok_or_else(|| MountError::Malformed(format!("mount {n} has no destination")))?
                .to_string();
            if destination == "/dev/shm" {
                *m = guest_shm();
                continue;
            }
            let source = m
                .get("source")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let target = host_dir.join(MOUNTS_DIR).join(n.to_string());
            bind_into(&source, &destination, &target, is_readonly(m))?;
            m["source"] = Value::String(format!("{guest_dir}/{MOUNTS_DIR}/{n}"));
        }
        Ok(())
    })();
    if result.is_err() {
        unshare_mounts(host_dir);
    }
    result
}

fn bind_into(source: &str, destination: &str, target: &Path, ro: bool) -> Result<(), MountError> {
    let src = Path::new(source);
    if !src.is_absolute() {
        return Err(MountError::RelativeSource {
            destination: destination.into(),
            source_path: source.into(),
        });
    }
    let meta = std::fs::metadata(src).map_err(|_| MountError::MissingSource {
        destination: destination.into(),
        source_path: source.into(),
    })?;
    let fail = |what, errno| MountError::Share {
        source_path: source.into(),
        target: target.into(),
        what,
        errno,
    };
    let parent = target.parent().expect("target has a parent");
    std::fs::create_dir_all(parent).map_err(|e| fail("mkdir", e))?;
    if meta.is_dir() {
        std::fs::create_dir(target).map_err(|e| fail("mkdir", e))?;
    } else {
        std::fs::File::create(target).map_err(|e| fail("create", e))?;
    }
    if ro {
        bind_readonly(src, target).map_err(|e| fail("bind read-only", e))?;
    } else {
        mount(
            Some(src),
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| fail("bind", e.into()))?;
    }
    Ok(())
}

/// Binds `src` (and what is mounted below it) at `target` read-only in one step, with the new
/// mount API: a detached copy of the tree is made read-only, then attached. A bind then a
/// read-only remount would show the volume writable for a moment, and the copy that propagates
/// into virtiofsd's mount namespace at the bind would stay writable.
fn bind_readonly(src: &Path, target: &Path) -> std::io::Result<()> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let (src, target) = (crate::c_path(src)?, crate::c_path(target)?);
    let check = |r: libc::c_long| {
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(r)
        }
    };
    // SAFETY: plain system calls on NUL-terminated strings, a struct we own and our own fd.
    unsafe {
        let flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | libc::AT_RECURSIVE as u32;
        let fd = check(libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            src.as_ptr(),
            flags,
        ))?;
        let tree = OwnedFd::from_raw_fd(fd as i32);
        let attr = libc::mount_attr {
            attr_set: libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        use std::os::fd::AsRawFd;
        check(libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_RECURSIVE,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        ))?;
        check(libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        ))?;
    }
    Ok(())
}

/// Unbinds and removes everything `share_bind_mounts` made below `host_dir`. Never follows a
/// symlink (the guest can write to the shared directory) and removes only what is unmounted.
pub fn unshare_mounts(host_dir: &Path) {
    let dir = host_dir.join(MOUNTS_DIR);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        // MNT_DETACH: a busy volume (an open file in the guest) still goes away from here.
        while umount2(&path, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW).is_ok() {}
        match e.file_type() {
            Ok(t) if t.is_dir() => {
                let _ = std::fs::remove_dir(&path);
            }
            Ok(_) => {
                let _ = std::fs::remove_file(&path);
            }
            Err(_) => {}
        }
    }
    let _ = std::fs::remove_dir(&dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("myvm-mounts-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    #[test]
    fn binds_are_rewritten_and_shm_is_the_guests() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("NOT RUN: needs root to bind mount");
            return;
        }
        let base = tmp("rewrite");
        let vol = base.join("vol");
        std::fs::create_dir(&vol).unwrap();
        std::fs::write(vol.join("f"), "x").unwrap();
        let file = base.join("hosts");
        std::fs::write(&file, "127.0.0.1 localhost\n").unwrap();
        let ctr = base.join("ctr");
        let mut spec = json!({"mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/data", "type": "bind", "source": vol, "options": ["rbind", "rw"]},
            {"destination": "/etc/hosts", "source": file, "options": ["bind", "ro"]},
            {"destination": "/dev/shm", "type": "bind", "source": "/run/x/shm", "options": ["rbind"]},
        ]});
        share_bind_mounts(&mut spec, &ctr, "/run/myvm/shared/c").unwrap();
        let m = spec["mounts"].as_array().unwrap();
        assert_eq!(m[0]["source"], "proc");
        assert_eq!(m[1]["source"], "/run/myvm/shared/c/mounts/1");
        assert_eq!(m[2]["source"], "/run/myvm/shared/c/mounts/2");
        assert_eq!(m[3]["type"], "tmpfs");
        assert_eq!(
            std::fs::read_to_string(ctr.join("mounts/1/f")).unwrap(),
            "x"
        );
        // Read-only on the host side too.
        assert!(std::fs::write(ctr.join("mounts/2"), "evil").is_err());
        // Writable volume: visible on the host.
        std::fs::write(ctr.join("mounts/1/g"), "y").unwrap();
        assert_eq!(std::fs::read_to_string(vol.join("g")).unwrap(), "y");
        unshare_mounts(&ctr);
        assert!(!ctr.join("mounts").exists());
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "127.0.0.1 localhost\n"
        );
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn missing_source_is_a_clear_error_and_undoes_earlier_binds() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("NOT RUN: needs root to bind mount");
            return;
        }
        let base = tmp("missing");
        let src = base.join("src");
        std::fs::create_dir(&src).unwrap();
        let ctr = base.join("ctr");
        let mut spec = json!({"mounts": [
            {"destination": "/a", "type": "bind", "source": src, "options": ["rbind"]},
            {"destination": "/b", "type": "bind", "source": "/nonexistent/myvm", "options": ["rbind"]},
        ]});
        let e = share_bind_mounts(&mut spec, &ctr, "/g").unwrap_err();
        assert!(
            e.to_string().contains("/nonexistent/myvm does not exist"),
            "{e}"
        );
        assert!(!ctr.join("mounts").exists(), "earlier bind left behind");
        let mut rel = json!({"mounts": [{"destination": "/a", "type": "bind", "source": "rel"}]});
        assert!(matches!(
            share_bind_mounts(&mut rel, &ctr, "/g"),
            Err(MountError::RelativeSource { .. })
        ));
        std::fs::remove_dir_all(&base).unwrap();
    }
}
