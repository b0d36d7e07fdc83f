//! Kubernetes' view: containerd's CRI gRPC API (what the kubelet calls) with runtime handler
//! `myvm`. A pod is one VM; its containers join it; ExecSync, logs, DNS config and teardown.

use std::time::Duration;

use myvm_tests::{
    built_kernel_release,
    containerd::Containerd,
    cri::{container_config, pod_config, v1, Cri},
    wait_until, TempDir,
};

/// Mount points and directories of pod `id` still on the host.
fn leftovers_of(id: &str) -> Vec<String> {
    let mut left: Vec<String> = std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .filter(|l| l.contains(id) && l.contains("/run/myvm"))
        .map(str::to_string)
        .collect();
    for p in [
        myvm::shim::sandbox::shared_dir("k8s.io", id),
        myvm::shim::sandbox::sandboxes_root("k8s.io").join(myvm::shim::sandbox::vm_dir_name(id)),
    ] {
        if p.exists() {
            left.push(p.display().to_string());
        }
    }
    left
}

#[test]
fn cri_pod_runs_its_containers_in_one_vm() {
    let c = Containerd::start();
    let mut cri = Cri::connect(&c.socket);
    let logs = TempDir::new("myvm-cri-logs");
    let mut pod_cfg = pod_config("web", logs.path());
    pod_cfg.dns_config = Some(v1::DnsConfig {
        servers: vec!["10.250.255.10".into()],
        searches: vec!["myvm-test.svc.cluster.local".into()],
        options: vec!["ndots:5".into()],
    });
    let pod = cri.run_pod(&pod_cfg, "myvm").expect("RunPodSandbox");
    assert_eq!(c.shims().len(), 1, "one shim for the pod");
    assert_eq!(c.vm_pids().len(), 1, "one VM for the pod");
    let vm = c.vm_pids()[0];

    let talker = cri
        .start_container(
            &pod,
            &pod_cfg,
            container_config(
                "talker",
                &["sh", "-c", "echo hello-out; echo hello-err >&2; exit 7"],
            ),
        )
        .expect("talker");
    let server = cri
        .start_container(
            &pod,
            &pod_cfg,
            container_config(
                "server",
                &[
                    "sh",
                    "-c",
                    "trap 'exit 0' TERM; while true; do sleep 1; done",
                ],
            ),
        )
        .expect("server");
    assert_eq!(c.shims().len(), 1, "containers join the pod's shim");
    assert_eq!(c.vm_pids(), vec![vm], "containers join the pod's VM");

    // ExecSync: output, exit code, stderr; the guest kernel, the pod's hostname.
    let (code, out, _) = cri.exec_sync(&server, &["uname", "-r"]);
    assert_eq!((code, out.trim()), (0, built_kernel_release().as_str()));
    let (code, out, _) = cri.exec_sync(&server, &["hostname"]);
    assert_eq!((code, out.trim()), (0, "web"));
    let (code, _, err) = cri.exec_sync(&server, &["sh", "-c", "echo oops >&2; exit 3"]);
    assert_eq!((code, err.trim()), (3, "oops"));
    let (_, resolv, _) = cri.exec_sync(&server, &["cat", "/etc/resolv.conf"]);
    for want in [
        "nameserver 10.250.255.10",
        "search myvm-test.svc.cluster.local",
        "options ndots:5",
    ] {
        assert!(
            resolv.contains(want),
            "resolv.conf lacks {want:?}:\n{resolv}"
        );
    }

    // The exited container: its exit code, and its output in the CRI log.
    wait_until("talker to exit", Duration::from_secs(20), || {
        cri.container_status(&talker).state() == v1::ContainerState::ContainerExited
    });
    assert_eq!(cri.container_status(&talker).exit_code, 7);
    let log = std::fs::read_to_string(logs.path().join("talker.log")).unwrap();
    assert!(log.contains(" stdout F hello-out"), "talker.log:\n{log}");
    assert!(log.contains(" stderr F hello-err"), "talker.log:\n{log}");
    assert_eq!(
        cri.pod_status(&pod).state(),
        v1::PodSandboxState::SandboxReady
    );

    cri.remove_pod(&pod).expect("removing the pod");
    wait_until(
        "the pod's shim and VM to exit",
        Duration::from_secs(15),
        || c.shims().is_empty() && !myvm_tests::pid_alive(vm),
    );
    assert_eq!(leftovers_of(&pod), Vec::<String>::new());
}

#[test]
fn cri_host_network_pod_is_refused_and_leaves_nothing() {
    let c = Containerd::start();
    let mut cri = Cri::connect(&c.socket);
    let logs = TempDir::new("myvm-cri-logs");
    let mut cfg = pod_config("hostnet", logs.path());
    cfg.linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .namespace_options
        .as_mut()
        .unwrap()
        .network = v1::NamespaceMode::Node as i32;
    let err = cri.run_pod(&cfg, "myvm").unwrap_err();
    assert!(
        err.contains("host network") && err.contains("not supported"),
        "unclear error: {err}"
    );
    wait_until("no shim left", Duration::from_secs(10), || {
        c.shims().is_empty()
    });
    assert!(c.vm_pids().is_empty());
}
