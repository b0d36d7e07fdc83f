//! Volumes: the OCI spec's bind mounts name host paths (CRI's /etc/hosts, /etc/resolv.conf,
//! emptyDir, hostPath, configmap and secret files, `ctr run --mount`). The guest cannot see the
//! host, so each one is bind-mounted under the container's directory in the sandbox's shared
//! directory, which virtiofsd serves, and the spec is rewritten to bind the guest's view of it.
//! Writes go through in both directions; read-only sources are also read-only on the host side,
//! and no volume is set-user-ID or device-special on the host side.

use std::path::Path;

use serde_json::{json, Value};

use super::shared_tree::{ContainerMounts, SharedTreeError, MOUNTS_DIR};

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
    #[error("sharing {source_path} into the VM: {error}")]
    Share {
        source_path: String,
        #[source]
        error: SharedTreeError,
    },
    #[error("the spec's mounts are malformed: {0}")]
    Malformed(String),
}

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

/// Rewrites `spec`'s bind mounts to come through the shared directory: each source is bound at
/// the container's `mounts/<n>` (through `cm`, which undoes it on drop); `guest_dir` is the
/// container's directory as the guest sees it.
pub fn share_bind_mounts(
    spec: &mut Value,
    cm: &mut ContainerMounts,
    guest_dir: &str,
) -> Result<(), MountError> {
    let Some(mounts) = spec.get_mut("mounts") else {
        return Ok(());
    };
    let mounts = mounts
        .as_array_mut()
        .ok_or_else(|| MountError::Malformed("`mounts` is not an array".into()))?;
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
        let src = Path::new(&source);
        if !src.is_absolute() {
            return Err(MountError::RelativeSource {
                destination,
                source_path: source,
            });
        }
        if std::fs::metadata(src).is_err() {
            return Err(MountError::MissingSource {
                destination,
                source_path: source,
            });
        }
        cm.bind_volume(n, src, is_readonly(m))
            .map_err(|error| MountError::Share {
                source_path: source.clone(),
                error,
            })?;
        m["source"] = Value::String(format!("{guest_dir}/{MOUNTS_DIR}/{n}"));
    }
    Ok(())
}
