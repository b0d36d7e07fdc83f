//! Kubernetes' view: containerd's CRI gRPC API (what the kubelet calls) with runtime handler
//! `myvm`. A pod is one VM; its containers join it; ExecSync, logs, DNS config and teardown.

use std::time::Duration;

use myvm_tests::{
    built_kernel_release,
    containerd::Containerd,
    cri::{container_config, http_get, pod_config, srv_and_secret_mounts, v1, Cri},
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
    // The VMM and its daemons run in the pod's host cgroup (capped, accounted).
    let cgroup_name = myvm::shim::sandbox::host_cgroup_name("k8s.io", &pod);
    let vm_cgroup = std::fs::read_to_string(format!("/proc/{vm}/cgroup")).unwrap();
    assert!(
        vm_cgroup.contains(&format!("/myvm/{cgroup_name}")),
        "{vm_cgroup}"
    );
    // The vsock daemon (it parses the guest's vsock packets) runs unprivileged.
    let shim = c.shims()[0].0;
    let vsockd: Vec<u32> = myvm_tests::containerd::processes()
        .into_iter()
        .filter(|(_, ppid, cmd)| {
            *ppid == shim
                && cmd
                    .split(' ')
                    .next()
                    .unwrap_or("")
                    .ends_with("vhost-device-vsock")
        })
        .map(|(pid, _, _)| pid)
        .collect();
    assert_eq!(vsockd.len(), 1, "one vsock daemon under the pod's shim");
    let status = std::fs::read_to_string(format!("/proc/{}/status", vsockd[0])).unwrap();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or("")
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string()
    };
    assert_ne!(field("Uid:"), "0", "vhost-device-vsock runs as root");
    assert_eq!(field("CapEff:"), "0000000000000000", "{status}");
    assert_eq!(field("NoNewPrivs:"), "1");
    myvm_tests::assert_jailed_as(vsockd[0], myvm::jail::VSOCK_UID_BASE);
    myvm_tests::assert_jailed(vm);
    // The pod's files are root's alone: rootfs, volumes (secrets), sockets, logs. The VM
    // directory lets the vsock daemon's own group through (0710), nobody else.
    {
        use myvm::shim::sandbox::{sandboxes_root, shared_dir, vm_dir_name};
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let shared = std::fs::metadata(shared_dir("k8s.io", &pod)).unwrap();
        assert_eq!(shared.permissions().mode() & 0o077, 0);
        let vm_dir = sandboxes_root("k8s.io").join(vm_dir_name(&pod));
        let meta = std::fs::metadata(&vm_dir).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o710);
        assert_eq!(meta.gid() >> 16, myvm::jail::VSOCK_UID_BASE >> 16);
        assert_eq!(field("Uid:"), meta.gid().to_string());
    }

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
    for d in myvm::host_cgroup::HostCgroup::existing(&cgroup_name).dirs() {
        assert!(!d.exists(), "{} left", d.display());
    }
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

#[test]
fn cri_pods_get_their_network_and_volumes() {
    let c = Containerd::start();
    let mut cri = Cri::connect(&c.socket);
    let logs = TempDir::new("myvm-cri-logs");
    let host = TempDir::new("myvm-cri-vol");
    let data = host.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("index.html"), "hello-from-pod\n").unwrap();
    let secret = host.path().join("token");
    std::fs::write(&secret, "s3cret\n").unwrap();

    // Pod A: a web server whose document root is a host volume; a read-only secret file.
    let a_cfg = pod_config("web-a", logs.path());
    let pod_a = cri.run_pod(&a_cfg, "myvm").expect("RunPodSandbox a");
    let mut server = container_config("server", &["httpd", "-f", "-p", "8080", "-h", "/srv"]);
    server.mounts = srv_and_secret_mounts(&data, &secret);
    let server = cri.start_container(&pod_a, &a_cfg, server).expect("server");
    let ip_a = cri.pod_status(&pod_a).network.expect("pod a network").ip;
    assert!(ip_a.starts_with("10.250."), "pod a ip {ip_a:?}");

    // Inside the guest: the pod's own address on eth0, and localhost.
    let (code, out, err) = cri.exec_sync(&server, &["ip", "-4", "addr", "show"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("inet {ip_a}/24")), "{out}");
    assert!(out.contains("inet 127.0.0.1/8"), "{out}");

    // The host reaches the pod's server at the pod IP.
    let body = http_get(&ip_a, 8080, Duration::from_secs(30));
    assert!(body.contains("hello-from-pod"), "{body}");

    // Volumes: writes go both ways; read-only stays read-only.
    let (code, _, err) = cri.exec_sync(&server, &["sh", "-c", "echo from-container > /srv/out"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read_to_string(data.join("out")).unwrap(),
        "from-container\n"
    );
    std::fs::write(data.join("late"), "from-host\n").unwrap();
    let (_, out, _) = cri.exec_sync(&server, &["cat", "/srv/late", "/var/run/secrets/token"]);
    assert_eq!(out, "from-host\ns3cret\n");
    let (code, _, _) = cri.exec_sync(&server, &["sh", "-c", "echo x > /var/run/secrets/token"]);
    assert_ne!(code, 0, "a read-only volume was writable");
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "s3cret\n");
    // virtiofsd serves the pod from namespaces of its own (mount, network, pid), whose root is
    // the shared directory; the read-only volume is read-only there too, so not even a hostile
    // guest kernel can write it through FUSE.
    let shim = c.shims()[0].0;
    let procs = myvm_tests::containerd::processes();
    // Two: one serves the containers' root filesystems, one the volumes.
    let fsd: Vec<(u32, bool)> = procs
        .iter()
        .filter(|(_, ppid, cmd)| {
            cmd.contains("virtiofsd") && procs.iter().any(|(p, pp, _)| p == ppid && *pp == shim)
        })
        .map(|(pid, _, cmd)| (*pid, cmd.contains("/run/myvm/volumes/")))
        .collect();
    assert_eq!(fsd.len(), 2, "virtiofsd's sandboxed children: {fsd:?}");
    assert!(
        fsd.iter().any(|f| f.1) && fsd.iter().any(|f| !f.1),
        "{fsd:?}"
    );
    for &(pid, volumes) in &fsd {
        for ns in ["mnt", "net", "pid"] {
            let of = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/{ns}")).unwrap();
            assert_ne!(
                of(&pid.to_string()),
                of("self"),
                "virtiofsd in the host's {ns} namespace"
            );
        }
        // Only the capabilities file serving needs: no DAC_READ_SEARCH (open_by_handle_at), no
        // SYS_ADMIN; for volumes no MKNOD or SETFCAP either; none to regain (empty bounding
        // set), no_new_privs, seccomp.
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let caps = |k: &str| {
            let hex = status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .unwrap()
                .trim();
            u64::from_str_radix(hex, 16).unwrap()
        };
        let mut denied = vec![
            2,  /* DAC_READ_SEARCH */
            21, /* SYS_ADMIN */
            12, /* NET_ADMIN */
            19, /* SYS_PTRACE */
        ];
        if volumes {
            denied.extend([27 /* MKNOD */, 31 /* SETFCAP */]);
        }
        for cap in denied {
            assert_eq!(
                caps("CapEff:") & (1 << cap),
                0,
                "virtiofsd (volumes: {volumes}) has capability {cap}"
            );
        }
        assert_eq!(caps("CapBnd:"), 0);
        assert!(
            status.contains("NoNewPrivs:\t1") && status.contains("Seccomp:\t2"),
            "{status}"
        );
        let root = format!("/proc/{pid}/root");
        assert!(
            !std::path::Path::new(&root).join("usr").exists(),
            "virtiofsd sees the host"
        );
        if volumes {
            let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
            let token = mountinfo
                .lines()
                .find(|l| {
                    l.contains("/mounts/")
                        && l.split(' ').nth(3).is_some_and(|r| r.ends_with("/token"))
                })
                .unwrap_or_else(|| panic!("the secret is not mounted for virtiofsd:\n{mountinfo}"));
            assert!(
                token.split(' ').nth(5).unwrap().starts_with("ro,"),
                "{token}"
            );
        }
    }

    // Pod B reaches pod A over the pod network.
    let b_cfg = pod_config("client-b", logs.path());
    let pod_b = cri.run_pod(&b_cfg, "myvm").expect("RunPodSandbox b");
    let client = cri
        .start_container(
            &pod_b,
            &b_cfg,
            container_config(
                "client",
                &[
                    "sh",
                    "-c",
                    "trap 'exit 0' TERM; while true; do sleep 1; done",
                ],
            ),
        )
        .expect("client");
    let ip_b = cri.pod_status(&pod_b).network.expect("pod b network").ip;
    assert_ne!(ip_a, ip_b);
    let (code, out, err) = cri.exec_sync(
        &client,
        &[
            "sh",
            "-c",
            // busybox-static's wget segfaults (glibc NSS in a static binary); nc does not.
            &format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 10 {ip_a} 8080 | tail -n 1"),
        ],
    );
    assert_eq!((code, out.trim()), (0, "hello-from-pod"), "{err}");
    assert_eq!(c.vm_pids().len(), 2, "one VM per pod");
    // Each VMM serves its pod's network from its jail, through the tap fd the shim attached.
    for vmm in c.vm_pids() {
        myvm_tests::assert_jailed(vmm);
        let tap = std::fs::read_link(format!("/proc/{vmm}/fd/{}", myvm::jail::TAP_FD_BASE));
        assert_eq!(tap.unwrap().to_str(), Some("/dev/net/tun"));
    }

    for pod in [&pod_a, &pod_b] {
        cri.remove_pod(pod).expect("removing a pod");
    }
    wait_until("the pods' shims to exit", Duration::from_secs(15), || {
        c.shims().is_empty()
    });
    for pod in [&pod_a, &pod_b] {
        assert_eq!(leftovers_of(pod), Vec::<String>::new());
    }
    // The volumes are the host's again, untouched by the teardown.
    assert_eq!(
        std::fs::read_to_string(data.join("index.html")).unwrap(),
        "hello-from-pod\n"
    );
}
