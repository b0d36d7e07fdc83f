//! Escape paths, tried as an attacker in the guest would: guest root (a privileged container that
//! mounts the pod's virtio-fs share itself) against the host's shared directory, a guest that
//! floods its console, a process that forges the kernel's panic line, and a container that keeps
//! its output open to hold up another's exit. Each must fail, and leave nothing on the host.

use std::time::{Duration, Instant};

use myvm::shim::sandbox::{sandboxes_root, shared_dir, vm_dir_name, SHARED_TAG};
use myvm_protocol::SANDBOX_ERROR_TOPIC;
use myvm_tests::{
    containerd::Containerd,
    cri::{container_config, pod_config, Cri},
    events::{sandbox_error, Events},
    pods::*,
    wait_until, TempDir,
};

fn uid(name: &str) -> String {
    format!("esc-{name}-{}", std::process::id())
}

fn exec(c: &Containerd, id: &str, exec_id: &str, script: &str) -> std::process::Output {
    c.ctr(&["task", "exec", "--exec-id", exec_id, id, "sh", "-c", script])
}

/// Guest root mounts the pod's share and tries what an attacker needs: write junk beside the
/// containers (fill the host disk), plant links where the host will later create, mount or
/// remove (`<next id>`, its own `mounts`, `rootfs`). The share is read-only above the mounts,
/// so every attempt fails; writing inside its own rootfs still works; the host's files are
/// untouched and nothing of the pod stays on the host.
#[test]
fn guest_root_cannot_write_the_shared_directory_outside_its_mounts() {
    let c = Containerd::start();
    let mut guard = PodGuard::new(&c);
    let victim = TempDir::new("myvm-escape-victim");
    std::fs::write(victim.path().join("precious"), "keep\n").unwrap();
    let id = uid("share");
    guard.add("default", &id);
    start_idle_pod(&c, &["--privileged"], &id);
    let v = victim.path().display();
    let script = format!(
        "mkdir -p /mnt/share && mount -t virtiofs {SHARED_TAG} /mnt/share || exit 99
         cd /mnt/share
         ls -d {id}/rootfs {id}/mounts >/dev/null || exit 98
         echo junk > junk; echo junk=$?
         dd if=/dev/zero of=fill bs=1M count=64 2>/dev/null; echo fill=$?
         ln -s {v} next; echo next=$?
         mkdir next2; echo mkdir=$?
         rm -rf {id}/mounts; ln -sfn {v} {id}/mounts; echo mounts=$?
         mv {id}/rootfs {id}/old; echo rootfs=$?
         echo mine > {id}/rootfs/tmp/mine; echo own=$?
         ls -A"
    );
    let o = exec(&c, &id, "attack", &script);
    let out = stdout(&o);
    for step in ["junk", "fill", "next", "mkdir", "mounts", "rootfs"] {
        let code = out
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{step}=")))
            .unwrap_or_else(|| panic!("no {step}= in {}", text(&o)));
        assert_ne!(code, "0", "guest root could {step}: {}", text(&o));
    }
    assert!(out.contains("own=0"), "{}", text(&o));
    // What the host sees: only the container's directory, its own file in its own rootfs.
    let host = shared_dir("default", &id);
    let names: Vec<String> = std::fs::read_dir(&host)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec![id.clone()], "{}", text(&o));
    assert!(std::fs::symlink_metadata(host.join(&id).join("mounts"))
        .unwrap()
        .is_dir());
    remove_pod(&c, &id);
    assert_eq!(
        std::fs::read_to_string(victim.path().join("precious")).unwrap(),
        "keep\n"
    );
    assert!(!host.exists(), "the pod's shared directory stays");
}

/// A guest that writes to its console without end costs the host a bounded log, and the shim
/// reads only its end when the VM dies.
#[test]
fn a_console_flood_is_capped_on_the_host() {
    let c = Containerd::start();
    let events = Events::subscribe(&c.socket);
    let mut guard = PodGuard::new(&c);
    let id = uid("console");
    guard.add("default", &id);
    let (vmm, socket) = start_victim(&c, &["--privileged"], &id);
    let log = sandboxes_root("default")
        .join(vm_dir_name(&id))
        .join("serial.log");
    // 2.5 MiB of lines onto the serial console (all of the guest's /dev is there for a
    // privileged container).
    let o = exec(
        &c,
        &id,
        "flood",
        "yes 'flooding the console flooding the console flooding the console' | \
         head -c 2621440 > /dev/ttyS0; echo done=$?",
    );
    assert!(stdout(&o).contains("done=0"), "{}", text(&o));
    let size = |p: &std::path::Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let rotated = log.with_extension("log.1");
    wait_until(
        "the flood to reach the log",
        Duration::from_secs(20),
        || size(&rotated) > 0,
    );
    let cap = myvm::serial::CAP_BYTES;
    assert!(
        size(&log) <= cap && size(&rotated) <= cap,
        "{} {}",
        size(&log),
        size(&rotated)
    );
    // The VM dies: the shim names why from a bounded tail of the log.
    let shim = shim_of(&c, &id).expect("the shim").0;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(vmm as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let e = events.wait_for(SANDBOX_ERROR_TOPIC, Duration::from_secs(20), |_| true);
    assert_eq!(sandbox_error(&e).reason, "vmm-exited");
    let hwm_kib: u64 = std::fs::read_to_string(format!("/proc/{shim}/status"))
        .map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        })
        .unwrap_or(0);
    assert!(hwm_kib < 64 << 10, "the shim's peak memory: {hwm_kib} KiB");
    assert_pod_ended_cleanly(&c, &id, &socket);
}

/// A process named like the kernel's panic line, killed by its container's OOM, puts
/// "(Kernel panic)" on the console; the VM is then killed from the host. That is reported as a
/// VMM killed, not as a guest kernel panic: console text does not decide.
#[test]
fn console_text_cannot_forge_why_a_vm_died() {
    let c = Containerd::start();
    let events = Events::subscribe(&c.socket);
    let mut guard = PodGuard::new(&c);
    let id = uid("forge");
    guard.add("default", &id);
    let (vmm, socket) = start_victim(&c, &["--memory-limit", "67108864"], &id);
    let o = exec(
        &c,
        &id,
        "hog",
        "printf 'Kernel panic' > /proc/self/comm; cat /proc/self/comm; \
         x=a; while true; do x=$x$x; done",
    );
    assert_eq!(o.status.code(), Some(137), "{}", text(&o));
    let serial = sandboxes_root("default")
        .join(vm_dir_name(&id))
        .join("serial.log");
    wait_until(
        "the OOM kill on the console",
        Duration::from_secs(10),
        || std::fs::read_to_string(&serial).is_ok_and(|s| s.contains("(Kernel panic)")),
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(vmm as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let e = events.wait_for(SANDBOX_ERROR_TOPIC, Duration::from_secs(20), |_| true);
    let err = sandbox_error(&e);
    assert_eq!(err.reason, "vmm-exited", "{err:?}");
    assert!(err.message.contains("signal 9"), "{err:?}");
    assert_pod_ended_cleanly(&c, &id, &socket);
}

/// One container's exit waits for its output to drain (a child keeps its stdout open); another
/// container's exit in the same pod is reported at once all the same.
#[test]
fn exits_of_containers_do_not_wait_on_each_other() {
    let c = Containerd::start();
    let mut cri = Cri::connect(&c.socket);
    let logs = TempDir::new("myvm-escape-logs");
    let pod_cfg = pod_config("exits", logs.path());
    let pod = cri.run_pod(&pod_cfg, "myvm").expect("RunPodSandbox");
    let holder = container_config("holder", &["sh", "-c", "sleep 60 & echo held; exit 0"]);
    cri.start_container(&pod, &pod_cfg, holder).expect("holder");
    let quick = container_config("quick", &["sh", "-c", "sleep 1; exit 3"]);
    let t = Instant::now();
    let quick = cri.start_container(&pod, &pod_cfg, quick).expect("quick");
    let exited = loop {
        let s = cri.container_status(&quick);
        if s.state == myvm_tests::cri::v1::ContainerState::ContainerExited as i32 {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(7),
            "quick's exit not reported after {:?} (it waited on holder's output)",
            t.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(exited.exit_code, 3);
    cri.remove_pod(&pod).expect("remove the pod");
    wait_until(
        "the pod gone from the host",
        Duration::from_secs(15),
        || !shared_dir("k8s.io", &pod).exists(),
    );
}

/// Guest root in a read-write volume tries to leave a root-owned set-user-ID program, a setgid
/// one and a device node for the host's users: refused, and nothing of the kind lands on the
/// host. In its own rootfs the same chmod works, as under runc.
#[test]
fn no_set_id_file_or_device_node_lands_in_a_host_volume() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let c = Containerd::start();
    let vol = TempDir::new("myvm-escape-vol");
    let id = uid("setid");
    let mount = format!(
        "type=bind,src={},dst=/vol,options=rbind:rw",
        vol.path().display()
    );
    let o = run_sh(
        &c,
        &["--mount", &mount],
        &id,
        "cp /bin/busybox /vol/suid; chmod 4755 /vol/suid; echo chmod=$?
         chmod 2755 /vol/suid; echo chmodg=$?
         install -m 4755 /bin/busybox /vol/created; echo install=$?
         mknod /vol/mem c 1 1; echo mknod=$?
         mkdir -m 2775 /vol/d; echo mkdir=$?
         cp /bin/busybox /tmp/suid && chmod 4755 /tmp/suid; echo rootfs=$?
         stat -c %a /tmp/suid",
    );
    let out = stdout(&o);
    for step in ["chmod", "chmodg", "install", "mknod", "mkdir"] {
        let code = out
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{step}=")))
            .unwrap_or_else(|| panic!("no {step}= in {}", text(&o)));
        assert_ne!(
            code,
            "0",
            "guest root could {step} in the volume: {}",
            text(&o)
        );
    }
    assert!(out.contains("rootfs=0\n4755"), "{}", text(&o));
    for e in std::fs::read_dir(vol.path()).unwrap() {
        let e = e.unwrap();
        let meta = e.metadata().unwrap();
        assert_eq!(
            meta.permissions().mode() & 0o6000,
            0,
            "{:?} is set-id on the host",
            e.path()
        );
        let t = meta.file_type();
        assert!(
            !t.is_char_device() && !t.is_block_device(),
            "{:?} is a device node on the host",
            e.path()
        );
    }
    // The plain copy went through: the volume works.
    assert!(vol.path().join("suid").exists(), "{}", text(&o));
}
