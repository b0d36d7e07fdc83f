//! Kubernetes features of a pod's mounts and network, through containerd's CRI gRPC API: volume
//! mount propagation, port-forward, and a privileged container's network tooling. Each assertion
//! runs with handler `runc` (the reference) where the host allows, and with `myvm`.

use std::{path::Path, process::Command, time::Duration};

use myvm_tests::{
    containerd::Containerd,
    cri::{container_config, pod_config, v1, Cri},
    TempDir,
};

const HANDLERS: [&str; 2] = ["runc", "myvm"];

fn sh(script: &str) {
    let ok = Command::new("sh").args(["-c", script]).status().unwrap();
    assert!(ok.success(), "{script}");
}

/// A host directory that is a shared mount point of its own, as the kubelet needs for a volume
/// with propagation (containerd checks it); unmounted, with what is below, on drop.
struct SharedDir(TempDir);

impl SharedDir {
    fn new() -> SharedDir {
        let d = TempDir::new("myvm-propagation");
        let p = d.path().display();
        sh(&format!("mount --bind {p} {p} && mount --make-rshared {p}"));
        SharedDir(d)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for SharedDir {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A privileged pod (for its privileged containers).
fn privileged_pod(config: &mut v1::PodSandboxConfig) {
    config
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
        .privileged = true;
}

/// A volume with the propagation `HostToContainer` (rslave) or `Bidirectional` (rshared)
/// starts; a mount made on the host under its source after the start is seen in the container.
#[test]
fn cri_volume_propagation_from_the_host() {
    use v1::MountPropagation::{PropagationBidirectional, PropagationHostToContainer};
    let c = Containerd::start();
    let mut cri = Cri::connect(&c.socket);
    let logs = TempDir::new("myvm-cri-logs");
    for handler in HANDLERS {
        let vol = SharedDir::new();
        let mut config = pod_config(&format!("prop-{handler}"), logs.path());
        privileged_pod(&mut config);
        let pod = cri
            .run_pod(&config, handler)
            .unwrap_or_else(|e| panic!("RunPodSandbox ({handler}): {e}"));
        let mut ids = Vec::new();
        for (name, propagation) in [
            ("slave", PropagationHostToContainer),
            ("shared", PropagationBidirectional),
        ] {
            let mut cfg = container_config(name, &["sleep", "3600"]);
            cfg.mounts = vec![v1::Mount {
                container_path: "/vol".into(),
                host_path: vol.path().display().to_string(),
                propagation: propagation as i32,
                ..Default::default()
            }];
            if propagation == PropagationBidirectional {
                // As the kubelet asks: Bidirectional needs a privileged container.
                cfg.linux
                    .get_or_insert_with(Default::default)
                    .security_context
                    .get_or_insert_with(Default::default)
                    .privileged = true;
            }
            let id = cri
                .start_container(&pod, &config, cfg)
                .unwrap_or_else(|e| panic!("{handler}: container {name}: {e}"));
            ids.push(id);
        }
        std::fs::write(vol.path().join("before"), "before\n").unwrap();
        // After the start: a new mount on the host under the volume's source.
        let sub = vol.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        sh(&format!("mount -t tmpfs later {}", sub.display()));
        std::fs::write(sub.join("file"), "mounted-later\n").unwrap();
        for id in &ids {
            assert_eq!(cri.sh(id, "cat /vol/before"), "before", "{handler}");
            let mut got = String::new();
            let seen = (0..50).any(|_| {
                got = cri.exec_sync(id, &["cat", "/vol/sub/file"]).1;
                got.trim() == "mounted-later" || {
                    std::thread::sleep(Duration::from_millis(200));
                    false
                }
            });
            assert!(
                seen,
                "{handler}: the host's later mount is not seen in {id}: {got:?}"
            );
        }
        cri.remove_pod(&pod).expect("removing the pod");
        let _ = nix::mount::umount2(&sub, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// `GET /` to 127.0.0.1:`port` from inside the network namespace `netns`, as containerd's
/// port-forward dials: the response, or the error.
fn get_in_netns(netns: &str, port: u16) -> Result<String, String> {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    let ns = std::fs::File::open(netns).map_err(|e| format!("{netns}: {e}"))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: an fd we hold; this thread alone changes namespace, then ends.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error().to_string());
            }
            let mut c = std::net::TcpStream::connect(("127.0.0.1", port))
                .map_err(|e| format!("connect 127.0.0.1:{port}: {e}"))?;
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            c.write_all(b"GET / HTTP/1.0\r\n\r\n")
                .map_err(|e| e.to_string())?;
            let mut out = String::new();
            c.read_to_string(&mut out).map_err(|e| e.to_string())?;
            Ok(out)
        })
        .join()
        .unwrap()
    })
}

/// CRI PortForward: containerd enters the pod's network namespace on the host and dials
/// localhost:<port>. A server listening on the pod's 127.0.0.1 only answers, through the
/// streaming URL (a WebSocket, as kubectl port-forward) and in the namespace directly; a port
/// nothing listens on is refused; and nothing of it is left once the pod is gone.
#[test]
fn cri_port_forward_reaches_the_pods_localhost() {
    let c = Containerd::start();
    let mut cri = Cri::connect(&c.socket);
    let logs = TempDir::new("myvm-cri-logs");
    for handler in HANDLERS {
        let config = pod_config(&format!("pf-{handler}"), logs.path());
        let pod = cri
            .run_pod(&config, handler)
            .unwrap_or_else(|e| panic!("RunPodSandbox ({handler}): {e}"));
        let cfg = container_config(
            "web",
            &[
                "sh",
                "-c",
                "mkdir /www && echo hello-port-forward > /www/index.html && \
                 exec httpd -f -p 127.0.0.1:8080 -h /www",
            ],
        );
        let web = cri
            .start_container(&pod, &config, cfg)
            .unwrap_or_else(|e| panic!("{handler}: {e}"));
        myvm_tests::wait_until("httpd", Duration::from_secs(20), || {
            cri.exec_sync(&web, &["wget", "-q", "-O-", "http://127.0.0.1:8080/"])
                .1
                .contains("hello-port-forward")
        });
        // Through the streaming server, as kubectl port-forward.
        let url = cri
            .port_forward(&pod, &[8080])
            .unwrap_or_else(|e| panic!("{handler}: PortForward: {e}"));
        let (data, errors) = myvm_tests::portforward::exchange(
            &url,
            8080,
            b"GET / HTTP/1.0\r\n\r\n",
            "hello-port-forward",
            Duration::from_secs(20),
        )
        .unwrap_or_else(|e| panic!("{handler}: port-forward stream: {e}"));
        assert!(
            data.contains("200 OK") && data.contains("hello-port-forward"),
            "{handler}: data {data:?}, errors {errors:?}"
        );
        // containerd's path itself: localhost in the pod's namespace on the host.
        let netns = cri.pod_netns(&pod);
        let page = get_in_netns(&netns, 8080).unwrap_or_else(|e| panic!("{handler}: {e}"));
        assert!(page.contains("hello-port-forward"), "{handler}: {page}");
        // Nothing listens on 8081: no page (refused, or reset by the forwarder).
        let none = get_in_netns(&netns, 8081);
        assert!(
            none.as_ref().map_or(true, |p| p.is_empty()),
            "{handler}: 8081 answered {none:?}"
        );
        cri.remove_pod(&pod).expect("removing the pod");
        assert!(
            !Path::new(&netns).exists(),
            "{handler}: the pod's netns {netns} is left"
        );
    }
}

/// A privileged container builds what CNI plugins and container engines build: a bridge
/// (`brctl addbr`), a veth pair on it, a tap (`tunctl`), and NAT and conntrack rules with the
/// host's own iptables (nft backend; busybox has none), from the host's /usr mounted
/// read-only. The guest kernel has them built in (no modules to load).
#[test]
fn cri_privileged_container_builds_bridges_veths_taps_and_nat() {
    let c = Containerd::start();
    let mut cri = Cri::connect(&c.socket);
    let logs = TempDir::new("myvm-cri-logs");
    let lib = "/host/usr/lib/x86_64-linux-gnu";
    let iptables = format!(
        "XTABLES_LIBDIR={lib}/xtables {lib}/ld-linux-x86-64.so.2 --library-path {lib} \
         /host/usr/sbin/xtables-nft-multi iptables"
    );
    let script = format!(
        "set -e; brctl addbr br0; ip link add v0 type veth; brctl addif br0 v0; \
         tunctl -t tap9 >/dev/null; ip link set br0 up; \
         {iptables} -t nat -A POSTROUTING -s 10.99.0.0/24 -j MASQUERADE; \
         {iptables} -t nat -A PREROUTING -p tcp --dport 81 -j DNAT --to-destination 10.99.0.2:80; \
         {iptables} -A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT; \
         ip -o link show | cut -d' ' -f2; brctl show br0 | tail -n1 | tr '\\t' ' '; \
         {iptables} -t nat -S; {iptables} -S FORWARD"
    );
    for handler in HANDLERS {
        let mut config = pod_config(&format!("netadm-{handler}"), logs.path());
        privileged_pod(&mut config);
        let pod = cri
            .run_pod(&config, handler)
            .unwrap_or_else(|e| panic!("RunPodSandbox ({handler}): {e}"));
        let mut cfg = container_config("netadm", &["sleep", "3600"]);
        cfg.linux
            .get_or_insert_with(Default::default)
            .security_context
            .get_or_insert_with(Default::default)
            .privileged = true;
        cfg.mounts = vec![v1::Mount {
            container_path: "/host/usr".into(),
            host_path: "/usr".into(),
            readonly: true,
            ..Default::default()
        }];
        let id = cri
            .start_container(&pod, &config, cfg)
            .unwrap_or_else(|e| panic!("{handler}: {e}"));
        let (code, out, err) = cri.exec_sync(&id, &["sh", "-c", &script]);
        assert_eq!(code, 0, "{handler}: {out}\n{err}");
        for want in [
            "br0:",
            "v0@veth0:",
            "tap9:",
            "v0",
            "-A POSTROUTING -s 10.99.0.0/24 -j MASQUERADE",
            "-A PREROUTING -p tcp -m tcp --dport 81 -j DNAT --to-destination 10.99.0.2:80",
            "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        ] {
            assert!(out.contains(want), "{handler}: no {want:?} in\n{out}");
        }
        cri.remove_pod(&pod).expect("removing the pod");
    }
}
