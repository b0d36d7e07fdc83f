//! Adapting the OCI spec the host sends to life inside the guest (as Kata's agent does): the
//! rootfs is where the shared filesystem put it, the network namespace is the VM's, host-side
//! namespace paths, hooks and LSM labels do not apply, and cgroups live under `/myvm`.

use std::path::Path;

use oci_spec::runtime::{LinuxNamespaceType, Root, Spec};

use super::error::{ContainerError, Result};

/// Guest cgroup (relative to /sys/fs/cgroup) of a container.
pub fn cgroup_path(container_id: &str) -> String {
    format!("/myvm/{container_id}")
}

pub struct Adapt<'a> {
    pub container_id: &'a str,
    pub rootfs: &'a Path,
    pub terminal: bool,
    /// Join this pid namespace (sandbox-wide pid namespace) instead of creating one.
    pub pid_ns: Option<&'a Path>,
}

pub fn parse(json: &[u8]) -> Result<Spec> {
    serde_json::from_slice(json)
        .map_err(|e| ContainerError::Invalid(format!("OCI spec is not valid JSON: {e}")))
}

pub fn adapt(spec: &mut Spec, a: &Adapt) -> Result<()> {
    let readonly = spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false);
    let mut root = Root::default();
    root.set_path(a.rootfs.to_path_buf())
        .set_readonly(Some(readonly));
    spec.set_root(Some(root));
    spec.set_hooks(None);

    let process = spec
        .process_mut()
        .as_mut()
        .ok_or_else(|| ContainerError::Invalid("the OCI spec has no process".into()))?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(ContainerError::Invalid(
            "the OCI spec's process has no args".into(),
        ));
    }
    process.set_terminal(Some(a.terminal));
    process.set_apparmor_profile(None);
    process.set_selinux_label(None);

    let linux = spec
        .linux_mut()
        .as_mut()
        .ok_or_else(|| ContainerError::Invalid("the OCI spec has no linux section".into()))?;
    if let Some(namespaces) = linux.namespaces_mut() {
        // The VM's network namespace is the pod's; host paths mean nothing in the guest.
        namespaces.retain(|ns| ns.typ() != LinuxNamespaceType::Network);
        for ns in namespaces.iter_mut() {
            let path = match (ns.typ(), a.pid_ns) {
                (LinuxNamespaceType::Pid, Some(p)) => Some(p.to_path_buf()),
                _ => None,
            };
            ns.set_path(path);
        }
    }
    linux.set_cgroups_path(Some(cgroup_path(a.container_id).into()));
    linux.set_mount_label(None);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"{
        "ociVersion": "1.0.2",
        "process": {"terminal": true, "user": {"uid": 0, "gid": 0}, "args": ["sh"], "cwd": "/",
                    "apparmorProfile": "docker-default"},
        "root": {"path": "/host/rootfs", "readonly": true},
        "hooks": {"prestart": [{"path": "/usr/bin/hook"}]},
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "network", "path": "/var/run/netns/cni-1"},
                           {"type": "ipc", "path": "/proc/1/ns/ipc"}, {"type": "mount"}],
            "cgroupsPath": "kubepods-besteffort.slice:cri-containerd:abc"
        }
    }"#;

    #[test]
    fn adapts_for_the_guest() {
        let mut spec = parse(SPEC.as_bytes()).unwrap();
        adapt(
            &mut spec,
            &Adapt {
                container_id: "c1",
                rootfs: Path::new("/run/myvm/shared/c1/rootfs"),
                terminal: false,
                pid_ns: None,
            },
        )
        .unwrap();
        let root = spec.root().as_ref().unwrap();
        assert_eq!(root.path(), Path::new("/run/myvm/shared/c1/rootfs"));
        assert_eq!(root.readonly(), Some(true));
        assert!(spec.hooks().is_none());
        let p = spec.process().as_ref().unwrap();
        assert_eq!(p.terminal(), Some(false));
        assert!(p.apparmor_profile().is_none());
        let linux = spec.linux().as_ref().unwrap();
        let ns = linux.namespaces().as_ref().unwrap();
        assert_eq!(ns.len(), 3);
        assert!(ns
            .iter()
            .all(|n| n.typ() != LinuxNamespaceType::Network && n.path().is_none()));
        assert_eq!(linux.cgroups_path().as_deref(), Some(Path::new("/myvm/c1")));
    }

    #[test]
    fn joins_the_sandbox_pid_namespace() {
        let mut spec = parse(SPEC.as_bytes()).unwrap();
        let pidns = Path::new("/proc/42/ns/pid");
        adapt(
            &mut spec,
            &Adapt {
                container_id: "c",
                rootfs: Path::new("/r"),
                terminal: true,
                pid_ns: Some(pidns),
            },
        )
        .unwrap();
        let ns = spec.linux().as_ref().unwrap().namespaces().clone().unwrap();
        let pid = ns
            .iter()
            .find(|n| n.typ() == LinuxNamespaceType::Pid)
            .unwrap();
        assert_eq!(pid.path().as_deref(), Some(pidns));
    }

    #[test]
    fn rejects_bad_specs() {
        assert!(matches!(parse(b"{nope"), Err(ContainerError::Invalid(_))));
        let mut spec = parse(br#"{"ociVersion":"1.0.2","process":{"user":{"uid":0,"gid":0},"args":[],"cwd":"/"},"linux":{}}"#).unwrap();
        let err = adapt(
            &mut spec,
            &Adapt {
                container_id: "c",
                rootfs: Path::new("/r"),
                terminal: false,
                pid_ns: None,
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("no args"), "{err}");
    }
}
