//! The CRI part of the L1 tier (tests/tests/l1.rs), run inside the L1 VM where no Rust test
//! harness runs: `myvm-l1-cri <containerd socket> <log dir>` plays the kubelet against that
//! containerd with runtime handler `myvm`. One pod, two containers in one VM; the pod's IP reached
//! from the node; a read-write and a read-only volume over virtio-fs; the VMM's jail; the pod
//! removed. Prints a line per check and panics (exit 101) on the first that fails.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use myvm_tests::cri::{container_config, http_get, pod_config, srv_and_secret_mounts, Cri};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, socket, logs] = &args[..] else {
        panic!("usage: myvm-l1-cri <containerd socket> <log dir>");
    };
    let (socket, logs) = (Path::new(socket), Path::new(logs));
    let t = Instant::now();
    let mut cri = Cri::connect(socket);
    let vol = logs.join("vol");
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::write(vol.join("index.html"), "hello-from-l1-pod\n").unwrap();
    let secret = logs.join("token");
    std::fs::write(&secret, "s3cret\n").unwrap();

    let pod_cfg = pod_config("l1-pod", logs);
    let pod = cri.run_pod(&pod_cfg, "myvm").expect("RunPodSandbox");
    println!("ok: pod {pod} running ({:.1} s)", t.elapsed().as_secs_f64());

    let mut web = container_config("web", &["httpd", "-f", "-p", "8080", "-h", "/srv"]);
    web.mounts = srv_and_secret_mounts(&vol, &secret);
    let web = cri.start_container(&pod, &pod_cfg, web).expect("web");
    let side = cri
        .start_container(&pod, &pod_cfg, container_config("side", &["sleep", "3600"]))
        .expect("side");
    println!(
        "ok: two containers started ({:.1} s)",
        t.elapsed().as_secs_f64()
    );

    // One VM: both containers see the same guest kernel instance, not the node's.
    let boot = |cri: &mut Cri, id: &str| cri.sh(id, "cat /proc/sys/kernel/random/boot_id");
    let node = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let (a, b) = (boot(&mut cri, &web), boot(&mut cri, &side));
    assert_eq!(a, b, "the pod's containers run in different kernels");
    assert_ne!(a, node.trim(), "the container runs in the node's kernel");
    println!("ok: both containers in one VM (boot id {a})");

    // Pod networking: the tap's fd is in the VMM; the node reaches the pod's IP.
    let ip = cri.pod_status(&pod).network.expect("pod network").ip;
    let body = http_get(&ip, 8080, Duration::from_secs(60));
    assert!(body.contains("hello-from-l1-pod"), "{body}");
    println!("ok: node reached the pod at {ip}:8080");

    // Volumes over virtio-fs: read-write both ways; read-only stays so.
    cri.sh(&web, "echo from-container > /srv/out");
    assert_eq!(
        std::fs::read_to_string(vol.join("out")).unwrap(),
        "from-container\n"
    );
    assert_eq!(cri.sh(&web, "cat /var/run/secrets/token"), "s3cret");
    let (code, _, _) = cri.exec_sync(&web, &["sh", "-c", "echo x > /var/run/secrets/token"]);
    assert_ne!(code, 0, "a read-only volume was writable");
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "s3cret\n");
    println!("ok: read-write and read-only volumes");

    // The VMM runs jailed.
    let vmms: Vec<u32> = myvm_tests::containerd::processes()
        .into_iter()
        .filter(|(_, _, cmd)| {
            let exe = cmd.split(' ').next().unwrap_or("");
            exe.ends_with("myvm-vmm") || exe.ends_with("qemu-system-x86_64")
        })
        .map(|(pid, _, _)| pid)
        .collect();
    assert_eq!(vmms.len(), 1, "one VM for the pod: {vmms:?}");
    myvm_tests::assert_jailed(vmms[0]);
    println!("ok: VMM {} jailed", vmms[0]);

    // An in-place resize grows the VM (memory hot-added): 400 MiB, which the pod's 256 MiB
    // could not hold, are then held (dd's buffer, kept while it waits on a pipe); and once freed,
    // free page reporting gives them back to the node.
    let vmm = vmms[0];
    let idle = myvm_tests::guest_resident_mib(vmm);
    cri.update_resources(
        &side,
        myvm_tests::cri::v1::LinuxContainerResources {
            memory_limit_in_bytes: 512 << 20,
            ..Default::default()
        },
    )
    .expect("a resize the VM grows for");
    cri.sh(
        &side,
        "(dd if=/dev/zero bs=400M count=1 | sleep 15) >/dev/null 2>&1 &",
    );
    let wait = |what: &str, secs: u64, cond: &dyn Fn(u64) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let now = myvm_tests::guest_resident_mib(vmm);
            if cond(now) {
                return now;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: guest RAM {now} MiB (idle {idle})"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    let held = wait("holding 400 MiB after the resize", 120, &|m| {
        m >= idle + 350
    });
    let freed = wait("given back after the free", 120, &|m| m + 250 < held);
    println!("ok: grew for a resize; guest RAM idle {idle}, holding {held}, freed {freed} MiB");

    cri.stop_container(&side, 0).expect("StopContainer");
    cri.remove_pod(&pod).expect("remove pod");
    // The shim and its children exit just after RemovePodSandbox returns.
    let gone = || myvm_tests::containerd::myvm_processes().is_empty();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !gone() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        gone(),
        "left running: {:?}",
        myvm_tests::containerd::myvm_processes()
    );
    println!(
        "ok: pod removed, nothing of it runs ({:.1} s)",
        t.elapsed().as_secs_f64()
    );
}
