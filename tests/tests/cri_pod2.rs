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
