//! A pod's containers as Kubernetes expects them, through containerd's CRI gRPC API: the pod's
//! namespaces (uts, ipc, pid as the pod asks), its sysctls (containerd 2.x's `net.*` ones too),
//! StopContainer's grace period, the container's seccomp filter in execs, setuid, and
//! `-info`. Each assertion runs with handler `runc` (the reference) and with `myvm`.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use myvm_tests::{
    containerd::Containerd,
    cri::{container_config, namespace_options, pod_config, security_context, v1, Cri},
    TempDir,
};

const HANDLERS: [&str; 2] = ["runc", "myvm"];

/// The pod's config with pid mode `pid` and ipc mode `ipc`, and the container configs that
/// go with it (the kubelet copies the pod's namespace options into each container's).
struct Pod {
    config: v1::PodSandboxConfig,
    id: String,
}

impl Pod {
    fn run(
        cri: &mut Cri,
        name: &str,
        handler: &str,
        logs: &TempDir,
        pid: v1::NamespaceMode,
        ipc: v1::NamespaceMode,
        sysctls: &[(&str, &str)],
    ) -> Pod {
        let mut config = pod_config(&format!("{name}-{handler}"), logs.path());
        let ns = namespace_options(&mut config);
        ns.pid = pid as i32;
        ns.ipc = ipc as i32;
        config.linux.as_mut().unwrap().sysctls = sysctls
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let id = cri
            .run_pod(&config, handler)
            .unwrap_or_else(|e| panic!("RunPodSandbox {name} ({handler}): {e}"));
        Pod { config, id }
    }

    fn container(&self, name: &str, cmd: &[&str]) -> v1::ContainerConfig {
        let mut c = container_config(name, cmd);
        security_context(&mut c).namespace_options = self
            .config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone());
        c
    }

    fn start(&self, cri: &mut Cri, config: v1::ContainerConfig) -> String {
        let name = config.metadata.as_ref().unwrap().name.clone();
        cri.start_container(&self.id, &self.config, config)
            .unwrap_or_else(|e| panic!("container {name}: {e}"))
    }
}

/// `readlink /proc/<pid>/ns/<ns>` in container `id`.
fn ns_of(cri: &mut Cri, id: &str, pid: &str, ns: &str) -> String {
    cri.sh(id, &format!("readlink /proc/{pid}/ns/{ns}"))
}

/// StopContainer(timeout); how long it took. The container has exited after it.
fn timed_stop(cri: &mut Cri, id: &str, timeout: i64) -> Duration {
    let t = Instant::now();
    cri.stop_container(id, timeout)
        .unwrap_or_else(|e| panic!("StopContainer {id}: {e}"));
    let took = t.elapsed();
    assert_eq!(
        cri.container_status(id).state(),
        v1::ContainerState::ContainerExited
    );
    took
}

#[test]
fn cri_containers_share_the_pods_uts_and_ipc_and_get_its_sysctls() {
    let c = Containerd::start();
    let mut cri = Cri::connect(&c.socket);
    let logs = TempDir::new("myvm-cri-logs");
    for handler in HANDLERS {
        // What containerd 2.x adds to every pod, and an ipc sysctl.
        let pod = Pod::run(
            &mut cri,
            "ns",
            handler,
            &logs,
            v1::NamespaceMode::Container,
            v1::NamespaceMode::Pod,
            &[
                ("net.ipv4.ip_unprivileged_port_start", "0"),
                ("net.ipv4.ping_group_range", "0 2147483647"),
                ("kernel.shm_rmid_forced", "1"),
            ],
        );
        let a = pod.start(&mut cri, pod.container("a", &["sleep", "3600"]));
        let b = pod.start(&mut cri, pod.container("b", &["sleep", "3601"]));
        for ns in ["uts", "ipc"] {
            assert_eq!(
                ns_of(&mut cri, &a, "self", ns),
                ns_of(&mut cri, &b, "self", ns),
                "{handler}: the containers are in different {ns} namespaces"
            );
        }
        // One IPC namespace: a POSIX message queue made in a is b's too.
        cri.sh(&a, "touch /dev/mqueue/pod-queue");
        assert_eq!(cri.sh(&b, "ls /dev/mqueue"), "pod-queue", "{handler}");
        assert_eq!(cri.sh(&b, "hostname"), format!("ns-{handler}"));
        // pid CONTAINER: a pid namespace each, the container's process is its PID 1.
        assert_ne!(
            ns_of(&mut cri, &a, "self", "pid"),
            ns_of(&mut cri, &b, "self", "pid"),
            "{handler}"
        );
        assert_eq!(cri.sh(&a, "tr '\\0' ' ' < /proc/1/cmdline"), "sleep 3600");
        let ps = cri.sh(&a, "ps -o args");
        assert!(
            !ps.contains("3601") && !ps.contains("2147483647"),
            "{handler}: a sees other processes of the pod:\n{ps}"
        );
        for (sysctl, want) in [
            ("kernel/shm_rmid_forced", "1"),
            ("net/ipv4/ip_unprivileged_port_start", "0"),
            ("net/ipv4/ping_group_range", "0\t2147483647"),
        ] {
            let got = cri.sh(&b, &format!("cat /proc/sys/{sysctl}"));
            assert_eq!(got, want, "{handler}: {sysctl}");
        }
        // As PID 1, `sleep` ignores SIGTERM: the SIGKILL after the grace period ends it.
        let took = timed_stop(&mut cri, &a, 2);
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_secs(10),
            "{handler}: StopContainer with a 2 s grace period took {took:?}"
        );
        assert_eq!(cri.container_status(&a).exit_code, 137, "{handler}");
        cri.remove_pod(&pod.id).expect("removing the pod");
    }
}

#[test]
fn cri_pod_pid_namespace_is_shared_when_the_pod_asks() {
    let c = Containerd::start();
    let mut cri = Cri::connect(&c.socket);
    let logs = TempDir::new("myvm-cri-logs");
    for handler in HANDLERS {
        let pod = Pod::run(
            &mut cri,
            "pidpod",
            handler,
            &logs,
            v1::NamespaceMode::Pod,
            v1::NamespaceMode::Pod,
            &[],
        );
        let a = pod.start(&mut cri, pod.container("a", &["sleep", "3600"]));
        // b's shell leaves a child behind when SIGTERM ends it.
        let b = pod.start(
            &mut cri,
            pod.container("b", &["sh", "-c", "sleep 3601 & wait"]),
        );
        assert_eq!(
            ns_of(&mut cri, &a, "self", "pid"),
            ns_of(&mut cri, &b, "self", "pid"),
            "{handler}"
        );
        // The pause process is PID 1; a sees b and the pause's sleep.
        let init = cri.sh(&a, "tr '\\0' ' ' < /proc/1/cmdline");
        assert!(
            init.contains("sleep 2147483647"),
            "{handler}: PID 1 is {init:?}"
        );
        let ps = cri.sh(&a, "ps -o args");
        assert!(
            ps.contains("sleep 3601"),
            "{handler}: a does not see b:\n{ps}"
        );
        // Not PID 1, b's shell dies of SIGTERM at once; what it left is killed with it (the
        // container has no pid namespace of its own to take it along).
        let took = timed_stop(&mut cri, &b, 30);
        assert!(
            took < Duration::from_secs(5),
            "{handler}: StopContainer took {took:?}"
        );
        assert_eq!(cri.container_status(&b).exit_code, 143, "{handler}");
        let ps = cri.sh(&a, "ps -o args");
        assert!(
            !ps.contains("sleep 3601"),
            "{handler}: b's child is left:\n{ps}"
        );
        cri.remove_pod(&pod.id).expect("removing the pod");
    }
}

#[test]
fn cri_host_pid_and_ipc_are_the_guests() {
    let c = Containerd::start();
    let mut cri = Cri::connect(&c.socket);
    let logs = TempDir::new("myvm-cri-logs");
    for handler in HANDLERS {
        let pod = Pod::run(
            &mut cri,
            "hostns",
            handler,
            &logs,
            v1::NamespaceMode::Node,
            v1::NamespaceMode::Node,
            &[],
        );
        let a = pod.start(&mut cri, pod.container("a", &["sleep", "3700"]));
        let b = pod.start(&mut cri, pod.container("b", &["sleep", "3701"]));
        // One pid and one ipc namespace for the pod: the node's (runc), the guest's root ones
        // (myvm), where the pause process and the other container are seen.
        for ns in ["pid", "ipc"] {
            let of_a = ns_of(&mut cri, &a, "self", ns);
            assert_eq!(of_a, ns_of(&mut cri, &b, "self", ns), "{handler} {ns}");
            if handler == "runc" {
                let host = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
                assert_eq!(of_a, host.display().to_string(), "runc {ns}");
            }
        }
        let ps = cri.sh(&a, "ps -o args");
        assert!(
            ps.contains("sleep 3701") && ps.contains("sleep 2147483647"),
            "{handler}: a does not see b and the pause process:\n{ps}"
        );
        if handler == "myvm" {
            // The guest's PID 1, myvm's agent; and the guest's POSIX message queues.
            let init = cri.sh(&a, "tr '\\0' ' ' < /proc/1/cmdline");
            assert!(init.starts_with("/init"), "PID 1 is {init:?}");
            cri.sh(&a, "touch /dev/mqueue/guest-queue");
            assert!(cri.sh(&b, "ls /dev/mqueue").contains("guest-queue"));
        }
        cri.remove_pod(&pod.id).expect("removing the pod");
    }
}

/// A seccomp profile allowing everything but `syscalls` (EPERM), in `dir`; its path.
fn profile(dir: &TempDir, name: &str, syscalls: &[&str]) -> String {
    let path = dir.path().join(format!("{name}.json"));
    let json = serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": syscalls, "action": "SCMP_ACT_ERRNO"}],
    });
    std::fs::write(&path, json.to_string()).unwrap();
    path.display().to_string()
}

fn seccomp(kind: v1::security_profile::ProfileType, path: &str) -> Option<v1::SecurityProfile> {
    Some(v1::SecurityProfile {
        profile_type: kind as i32,
        localhost_ref: path.into(),
    })
}

/// The security lines of a process's status (seccomp mode, capabilities, no_new_privs).
const SECURITY: &str = "grep -E '^(Seccomp|NoNewPrivs|Cap(Inh|Prm|Eff|Bnd|Amb)):'";

#[test]
fn cri_exec_gets_the_containers_seccomp_filter() {
    use v1::security_profile::ProfileType;
    let c = Containerd::start();
    let mut cri = Cri::connect(&c.socket);
    let logs = TempDir::new("myvm-cri-logs");
    let profiles = TempDir::new("myvm-seccomp");
    let no_chmod = profile(&profiles, "no-chmod", &["chmod", "fchmod", "fchmodat"]);
    let no_hostname = profile(&profiles, "no-hostname", &["sethostname"]);
    for handler in HANDLERS {
        let pod = Pod::run(
            &mut cri,
            "sec",
            handler,
            &logs,
            v1::NamespaceMode::Container,
            v1::NamespaceMode::Pod,
            &[],
        );
        // RuntimeDefault: the exec has the main process's filter, capabilities, no_new_privs.
        let mut cfg = pod.container("dflt", &["sleep", "3600"]);
        security_context(&mut cfg).seccomp = seccomp(ProfileType::RuntimeDefault, "");
        let dflt = pod.start(&mut cri, cfg);
        let main = cri.sh(&dflt, &format!("{SECURITY} /proc/1/status"));
        assert!(main.contains("Seccomp:\t2"), "{handler}: {main}");
        let exec = cri.sh(&dflt, &format!("{SECURITY} /proc/self/status"));
        assert_eq!(exec, main, "{handler}: the exec's security differs");

        // A Localhost profile that blocks chmod: in the main process and in an exec.
        let mut cfg = pod.container(
            "nochmod",
            &[
                "sh",
                "-c",
                "touch /tmp/f; chmod 600 /tmp/f; echo $? > /tmp/main; exec sleep 3600",
            ],
        );
        security_context(&mut cfg).seccomp = seccomp(ProfileType::Localhost, &no_chmod);
        let nochmod = pod.start(&mut cri, cfg);
        myvm_tests::wait_until("the main process's chmod", Duration::from_secs(20), || {
            cri.exec_sync(&nochmod, &["cat", "/tmp/main"]).0 == 0
        });
        assert_ne!(
            cri.sh(&nochmod, "cat /tmp/main"),
            "0",
            "{handler}: main chmod"
        );
        let (code, _, err) = cri.exec_sync(&nochmod, &["chmod", "600", "/tmp/f"]);
        assert_ne!(code, 0, "{handler}: chmod in an exec was allowed");
        assert!(err.contains("not permitted"), "{handler}: {err}");

        // sethostname blocked, even with CAP_SYS_ADMIN.
        let mut cfg = pod.container(
            "nohostname",
            &[
                "sh",
                "-c",
                "hostname main-renamed; echo $? > /tmp/main; exec sleep 3600",
            ],
        );
        let sc = security_context(&mut cfg);
        sc.seccomp = seccomp(ProfileType::Localhost, &no_hostname);
        sc.capabilities = Some(v1::Capability {
            add_capabilities: vec!["SYS_ADMIN".into()],
            ..Default::default()
        });
        let nohost = pod.start(&mut cri, cfg);
        myvm_tests::wait_until(
            "the main process's hostname",
            Duration::from_secs(20),
            || cri.exec_sync(&nohost, &["cat", "/tmp/main"]).0 == 0,
        );
        assert_ne!(
            cri.sh(&nohost, "cat /tmp/main"),
            "0",
            "{handler}: main sethostname"
        );
        assert!(
            cri.sh(&nohost, "grep CapEff /proc/self/status") != "CapEff:\t0000000000000000",
            "{handler}"
        );
        let (code, _, err) = cri.exec_sync(&nohost, &["hostname", "exec-renamed"]);
        assert_ne!(code, 0, "{handler}: sethostname in an exec was allowed");
        assert!(err.contains("not permitted"), "{handler}: {err}");
        assert_eq!(cri.sh(&nohost, "hostname"), format!("sec-{handler}"));
        cri.remove_pod(&pod.id).expect("removing the pod");
    }
}

#[test]
fn cri_setuid_programs_work_unless_no_new_privs() {
    let c = Containerd::start();
    let mut cri = Cri::connect(&c.socket);
    let logs = TempDir::new("myvm-cri-logs");
    // /bin/euid (setuid root) exits with its effective uid: 0, or 1000 % 256 = 232.
    let script = "/bin/euid; echo $? > /tmp/main; exec sleep 3600";
    for handler in HANDLERS {
        let pod = Pod::run(
            &mut cri,
            "suid",
            handler,
            &logs,
            v1::NamespaceMode::Container,
            v1::NamespaceMode::Pod,
            &[],
        );
        for (name, no_new_privs, want) in [("suid", false, "0"), ("nnp", true, "232")] {
            let mut cfg = pod.container(name, &["sh", "-c", script]);
            let sc = security_context(&mut cfg);
            sc.run_as_user = Some(v1::Int64Value { value: 1000 });
            sc.no_new_privs = no_new_privs;
            let id = pod.start(&mut cri, cfg);
            myvm_tests::wait_until("the main process's probe", Duration::from_secs(20), || {
                cri.exec_sync(&id, &["cat", "/tmp/main"]).0 == 0
            });
            assert_eq!(cri.sh(&id, "id -u"), "1000");
            let main = cri.sh(&id, "cat /tmp/main");
            let exec = cri.sh(&id, "/bin/euid; echo $?");
            assert_eq!(
                (main.as_str(), exec.as_str()),
                (want, want),
                "{handler}, no_new_privs {no_new_privs}: euid (main, exec)"
            );
        }
        cri.remove_pod(&pod.id).expect("removing the pod");
    }
}

/// containerd 2.x runs `<shim> -info` with the runtime options on stdin, no namespace, and
/// reads a RuntimeInfo protobuf.
#[test]
fn shim_answers_info_as_containerd_2_asks() {
    use protobuf::Message;
    let exe = std::env::current_exe().unwrap();
    let shim = exe
        .parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("containerd-shim-myvm-v2");
    let ask = |stdin: &[u8]| {
        let mut child = Command::new(&shim)
            .arg("-info")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", shim.display()));
        use std::io::Write;
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "-info failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        myvm::runtime_info::RuntimeInfo::parse_from_bytes(&out.stdout).expect("a RuntimeInfo")
    };
    let info = ask(b"");
    assert_eq!(info.name, "io.containerd.myvm.v2");
    assert!(!info.version.version.is_empty());
    assert_eq!(
        info.features.type_url,
        myvm::runtime_info::FEATURES_TYPE_URL
    );
    let features: serde_json::Value = serde_json::from_slice(&info.features.value).unwrap();
    assert!(features["ociVersionMax"].is_string(), "{features}");
    // The options come back as given (an Any: type_url = 1, value = 2).
    let any = [&[0x0a, 5][..], b"x/opt", &[0x12, 3, 1, 2, 3][..]].concat();
    let info = ask(&any);
    assert_eq!(info.options.type_url, "x/opt");
    assert_eq!(info.options.value, vec![1, 2, 3]);
}
