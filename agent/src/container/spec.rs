//! Adapting the OCI spec the host sends to life inside the guest (as Kata's agent does): the
//! rootfs is where the shared filesystem put it, the network namespace is the VM's, namespace
//! paths name processes of the pod in the guest, hooks and LSM labels do not apply, and cgroups
//! live under `/myvm`.

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
    /// Guest pids of the pod's live containers (their init processes): the only processes
    /// whose namespaces a spec may name (`/proc/<pid>/ns/<type>`, as containerd's CRI does for
    /// the pause container's pid, ipc and uts namespaces).
    pub pod_pids: &'a [i32],
}

/// The `/proc/<pid>/ns/<name>` file name of a namespace type.
fn ns_file(typ: LinuxNamespaceType) -> &'static str {
    match typ {
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Time => "time",
    }
}

/// Checks a namespace path of the spec: it must be `/proc/<pid>/ns/<type>` of a live
/// container of this pod (the pid the shim reported is the guest pid, so containerd's paths
/// are valid in the guest as they are). Joining another container's mount namespace is not
/// something a runtime does (containerd never asks it).
fn check_ns_path(typ: LinuxNamespaceType, path: &Path, pod_pids: &[i32]) -> Result<()> {
    let name = ns_file(typ);
    let bad = |why: &str| {
        Err(ContainerError::Invalid(format!(
            "{name} namespace path {}: {why}",
            path.display()
        )))
    };
    if typ == LinuxNamespaceType::Mount {
        return bad("joining another process's mount namespace is not supported");
    }
    let pid = path
        .to_str()
        .and_then(|p| p.strip_prefix("/proc/"))
        .and_then(|p| p.strip_suffix(&format!("/ns/{name}")))
        .and_then(|p| p.parse::<i32>().ok());
    let Some(pid) = pid else {
        return bad(&format!(
            "not of the form /proc/<pid>/ns/{name} (only a namespace of a container of this pod can be joined)"
        ));
    };
    if !pod_pids.contains(&pid) {
        return bad(&format!(
            "process {pid} is not a running container of this pod (running: {pod_pids:?})"
        ));
    }
    if !path.exists() {
        return bad(&format!("process {pid} has exited"));
    }
    Ok(())
}

/// The rootfs propagation libcontainer applies for the spec's `rootfsPropagation` (runc's
/// names, recursive or not).
fn rootfs_propagation(p: &str) -> Result<&'static str> {
    Ok(match p {
        "shared" | "rshared" => "shared",
        "slave" | "rslave" => "slave",
        "private" | "rprivate" => "private",
        "unbindable" | "runbindable" => "unbindable",
        other => {
            return Err(ContainerError::Invalid(format!(
                "unknown rootfsPropagation {other:?}"
            )))
        }
    })
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
    // libcontainer loads the seccomp filter after dropping capabilities when no_new_privs is
    // present, even false (then it fails without CAP_SYS_ADMIN): absent is what false means.
    if process.no_new_privileges() == Some(false) {
        process.set_no_new_privileges(None);
    }
    process.set_apparmor_profile(None);
    process.set_selinux_label(None);

    let linux = spec
        .linux_mut()
        .as_mut()
        .ok_or_else(|| ContainerError::Invalid("the OCI spec has no linux section".into()))?;
    if let Some(namespaces) = linux.namespaces_mut() {
        // The VM's network namespace is the pod's (the spec names the host's, made by CNI).
        namespaces.retain(|ns| ns.typ() != LinuxNamespaceType::Network);
        for ns in namespaces.iter_mut() {
            match (ns.typ(), ns.path().as_deref(), a.pid_ns) {
                (typ, Some(path), _) if !path.as_os_str().is_empty() => {
                    check_ns_path(typ, path, a.pod_pids)?
                }
                (LinuxNamespaceType::Pid, _, Some(p)) => {
                    ns.set_path(Some(p.to_path_buf()));
                }
                _ => {
                    ns.set_path(None);
                }
            }
        }
    }
    // containerd (CRI) asks `rslave` / `rshared` for a volume with mount propagation, as runc
    // reads them; libcontainer knows only the plain names, and applies them recursively anyway.
    if let Some(p) = linux.rootfs_propagation().clone() {
        linux.set_rootfs_propagation(Some(rootfs_propagation(&p)?.to_string()));
    }
    linux.set_cgroups_path(Some(cgroup_path(a.container_id).into()));
    linux.set_mount_label(None);
    Ok(())
}

/// Takes the `net.*` sysctls out of the spec, checked. The guest's network namespace is the
/// pod's (as the pause container's is under runc), so the agent sets them there itself:
/// libcontainer refuses them for a container without a network namespace of its own.
pub fn take_net_sysctls(spec: &mut Spec) -> Result<Vec<(String, String)>> {
    let Some(sysctl) = spec
        .linux_mut()
        .as_mut()
        .and_then(|l| l.sysctl_mut().as_mut())
    else {
        return Ok(Vec::new());
    };
    let keys: Vec<String> = sysctl
        .keys()
        .filter(|k| k.starts_with("net.") || k.starts_with("net/"))
        .cloned()
        .collect();
    let mut net = Vec::new();
    for key in keys {
        let value = sysctl.remove(&key).unwrap_or_default();
        let ok = key.split(['.', '/']).all(|c| {
            !c.is_empty()
                && c.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-'))
        });
        if !ok {
            return Err(ContainerError::Invalid(format!(
                "invalid sysctl name {key:?}"
            )));
        }
        net.push((key, value));
    }
    net.sort();
    Ok(net)
}

/// Sets `net.*` sysctls (from [`take_net_sysctls`]) under `proc_sys` (`/proc/sys`).
pub fn apply_net_sysctls(proc_sys: &Path, sysctls: &[(String, String)]) -> Result<()> {
    for (key, value) in sysctls {
        let file = proc_sys.join(key.replace('.', "/"));
        std::fs::write(&file, value).map_err(ContainerError::io(format!(
            "setting sysctl {key}={value:?} in the pod's network namespace"
        )))?;
        tracing::debug!(key, value, "sysctl set");
    }
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

    /// SPEC, its ipc namespace that of this process; and this process's pid.
    fn spec_joining_me() -> (Spec, i32) {
        let me = std::process::id() as i32;
        let json = SPEC.replace("/proc/1/", &format!("/proc/{me}/"));
        (parse(json.as_bytes()).unwrap(), me)
    }

    #[test]
    fn rootfs_propagation_takes_runcs_names() {
        for (asked, got) in [
            ("rslave", "slave"),
            ("rshared", "shared"),
            ("private", "private"),
            ("runbindable", "unbindable"),
        ] {
            assert_eq!(rootfs_propagation(asked).unwrap(), got);
        }
        assert!(matches!(
            rootfs_propagation("sideways"),
            Err(ContainerError::Invalid(_))
        ));
    }

    #[test]
    fn adapts_for_the_guest() {
        let (mut spec, me) = spec_joining_me();
        adapt(
            &mut spec,
            &Adapt {
                container_id: "c1",
                rootfs: Path::new("/run/myvm/shared/c1/rootfs"),
                terminal: false,
                pid_ns: None,
                pod_pids: &[me],
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
        assert!(ns.iter().all(|n| n.typ() != LinuxNamespaceType::Network));
        // The pod's namespaces are joined by their guest paths; the others are new.
        let path_of = |t| ns.iter().find(|n| n.typ() == t).unwrap().path().clone();
        let ipc = format!("/proc/{me}/ns/ipc");
        assert_eq!(path_of(LinuxNamespaceType::Ipc), Some(ipc.into()));
        assert_eq!(path_of(LinuxNamespaceType::Pid), None);
        assert_eq!(path_of(LinuxNamespaceType::Mount), None);
        assert_eq!(linux.cgroups_path().as_deref(), Some(Path::new("/myvm/c1")));
    }

    #[test]
    fn joins_the_sandbox_pid_namespace() {
        let (mut spec, me) = spec_joining_me();
        let pidns = Path::new("/proc/42/ns/pid");
        adapt(
            &mut spec,
            &Adapt {
                container_id: "c",
                rootfs: Path::new("/r"),
                terminal: true,
                pid_ns: Some(pidns),
                pod_pids: &[me],
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

    fn adapt_ns(ns_json: &str, pod_pids: &[i32]) -> Result<Spec> {
        let mut spec = parse(
            format!(
                r#"{{"ociVersion":"1.0.2","process":{{"user":{{"uid":0,"gid":0}},"args":["sh"],"cwd":"/"}},
                    "linux":{{"namespaces":[{ns_json}]}}}}"#
            )
            .as_bytes(),
        )
        .unwrap();
        adapt(
            &mut spec,
            &Adapt {
                container_id: "c",
                rootfs: Path::new("/r"),
                terminal: false,
                pid_ns: None,
                pod_pids,
            },
        )?;
        Ok(spec)
    }

    #[test]
    fn namespace_paths_must_name_a_container_of_the_pod() {
        let me = std::process::id() as i32;
        for typ in ["pid", "ipc", "uts"] {
            let ns = format!(r#"{{"type":"{typ}","path":"/proc/{me}/ns/{typ}"}}"#);
            assert!(adapt_ns(&ns, &[me]).is_ok(), "{typ}");
            let err = adapt_ns(&ns, &[]).unwrap_err().to_string();
            assert!(err.contains("not a running container of this pod"), "{err}");
        }
        for (ns, want) in [
            (
                r#"{"type":"ipc","path":"/var/run/ipc"}"#,
                "not of the form /proc/<pid>/ns/ipc",
            ),
            (
                r#"{"type":"ipc","path":"/proc/1/ns/uts"}"#,
                "not of the form",
            ),
            (
                r#"{"type":"mount","path":"/proc/1/ns/mnt"}"#,
                "mount namespace is not supported",
            ),
        ] {
            let err = adapt_ns(ns, &[1]).unwrap_err().to_string();
            assert!(err.contains(want), "{ns}: {err}");
        }
        // A pid of the pod that has exited since.
        let err = adapt_ns(
            r#"{"type":"uts","path":"/proc/2147483646/ns/uts"}"#,
            &[2147483646],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("has exited"), "{err}");
    }

    #[test]
    fn net_sysctls_are_set_by_the_agent() {
        let mut spec = parse(
            br#"{"ociVersion":"1.0.2","linux":{"sysctl":{
            "net.ipv4.ip_unprivileged_port_start":"0","net.ipv4.ping_group_range":"0 2147483647",
            "kernel.shm_rmid_forced":"1"}}}"#,
        )
        .unwrap();
        let net = take_net_sysctls(&mut spec).unwrap();
        assert_eq!(
            net,
            vec![
                ("net.ipv4.ip_unprivileged_port_start".into(), "0".into()),
                ("net.ipv4.ping_group_range".into(), "0 2147483647".into()),
            ]
        );
        let left = spec.linux().as_ref().unwrap().sysctl().clone().unwrap();
        assert_eq!(left.keys().collect::<Vec<_>>(), ["kernel.shm_rmid_forced"]);
        let dir = std::env::temp_dir().join(format!("myvm-sysctl-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("net/ipv4")).unwrap();
        apply_net_sysctls(&dir, &net).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("net/ipv4/ping_group_range")).unwrap(),
            "0 2147483647"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        for bad in ["net..x", "net.ipv4/../../kernel/x", "net.a b"] {
            let mut spec = parse(
                format!(r#"{{"ociVersion":"1.0.2","linux":{{"sysctl":{{"{bad}":"1"}}}}}}"#)
                    .as_bytes(),
            )
            .unwrap();
            assert!(take_net_sysctls(&mut spec).is_err(), "{bad}");
        }
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
                pod_pids: &[],
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("no args"), "{err}");
    }
}
