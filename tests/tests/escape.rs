//! Escape paths, tried as an attacker in the guest would: guest root (a privileged hostPID
//! container entering the guest's root mount namespace) against the host's shared directories, a guest that
//! floods its console, a process that forges the kernel's panic line, and a container that keeps
//! its output open to hold up another's exit. Each must fail, and leave nothing on the host.

use std::time::{Duration, Instant};

use myvm::shim::sandbox::{sandboxes_root, shared_dir, vm_dir_name, volumes_dir};
use myvm_protocol::SANDBOX_ERROR_TOPIC;
use myvm_tests::{
    containerd::Containerd,
    cri::{container_config, namespace_options, pod_config, security_context, v1, Cri},
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

/// Guest root (a privileged hostPID container entering the guest's root mount namespace, where
/// the agent mounted the pod's shares) tries what an attacker needs against the host: write junk
/// beside the containers (fill the host disk), plant links where the host will later create,
/// mount or remove (`<next id>`, a container's `mounts` and `rootfs`), in the rootfs share and
/// in the volumes' share. The shares are read-only above the host's mounts, so every attempt
/// fails; a container created afterwards runs with its volume; the host's files are untouched and
/// nothing of the pod stays on the host.
#[test]
fn guest_root_cannot_write_the_shared_directories_outside_their_mounts() {
    let c = Containerd::start();
    let mut cri = Cri::connect(&c.socket);
    let logs = TempDir::new("myvm-escape-logs");
    let victim = TempDir::new("myvm-escape-victim");
    std::fs::write(victim.path().join("precious"), "keep\n").unwrap();
    let vol = TempDir::new("myvm-escape-vol");
    std::fs::write(vol.path().join("data"), "volume\n").unwrap();
    let mut pod_cfg = pod_config("share", logs.path());
    namespace_options(&mut pod_cfg).pid = v1::NamespaceMode::Node as i32;
    pod_cfg
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
        .privileged = true;
    let pod = cri.run_pod(&pod_cfg, "myvm").expect("RunPodSandbox");
    let mut attacker = container_config("attacker", &["sleep", "3600"]);
    security_context(&mut attacker).privileged = true;
    let attacker = cri
        .start_container(&pod, &pod_cfg, attacker)
        .expect("the attacker");
    let v = victim.path().display();
    let script = format!(
        "cd /run/myvm/shared && ls {attacker}/rootfs >/dev/null || exit 99
         echo junk > junk; echo junk=$?
         dd if=/dev/zero of=fill bs=1M count=64 2>/dev/null; echo fill=$?
         ln -s {v} next; echo next=$?
         mkdir next2; echo mkdir=$?
         rm -rf {attacker}/mounts; ln -sfn {v} {attacker}/mounts; echo mounts=$?
         mv {attacker}/rootfs {attacker}/old; echo rootfs=$?
         cd /run/myvm/volumes || exit 98
         echo junk > junk; echo voljunk=$?
         ln -s {v} next; echo volnext=$?
         rm -rf {attacker}/mounts/0; ln -sfn {v} {attacker}/mounts/0; echo volmount=$?"
    );
    let (code, out, err) = cri.exec_sync(
        &attacker,
        &["nsenter", "-t", "1", "-m", "sh", "-c", &script],
    );
    let what = format!("exit {code}\nstdout: {out}\nstderr: {err}");
    for step in [
        "junk", "fill", "next", "mkdir", "mounts", "rootfs", "voljunk", "volnext", "volmount",
    ] {
        let got = out
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{step}=")))
            .unwrap_or_else(|| panic!("no {step}= in {what}"));
        assert_ne!(got, "0", "guest root could {step}: {what}");
    }
    // What the host sees: only the container's directories.
    for dir in [shared_dir("k8s.io", &pod), volumes_dir("k8s.io", &pod)] {
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut want = vec![pod.clone(), attacker.clone()];
        want.sort();
        assert_eq!(names, want, "{}: {what}", dir.display());
    }
    // The next container gets its directories and its volume as if nothing had been tried.
    let mut next = container_config("next", &["sh", "-c", "cat /vol/data; sleep 3600"]);
    next.mounts = vec![v1::Mount {
        container_path: "/vol".into(),
        host_path: vol.path().display().to_string(),
        ..Default::default()
    }];
    let next = cri.start_container(&pod, &pod_cfg, next).expect("next");
    assert_eq!(cri.sh(&next, "cat /vol/data"), "volume");
    cri.remove_pod(&pod).expect("remove the pod");
    assert_eq!(
        std::fs::read_to_string(victim.path().join("precious")).unwrap(),
        "keep\n"
    );
    assert_eq!(
        std::fs::read_to_string(vol.path().join("data")).unwrap(),
        "volume\n"
    );
    wait_until(
        "the pod gone from the host",
        Duration::from_secs(15),
        || !shared_dir("k8s.io", &pod).exists() && !volumes_dir("k8s.io", &pod).exists(),
    );
}

/// The guest's console reaches the host through the capped log (the cap itself and the bounded
/// tail are unit-tested in `shim/src/serial.rs`: a console under TCG writes only tens of KiB/s),
/// the pod goes on answering, and when the VM dies the shim names why from the log's tail.
#[test]
fn the_console_reaches_a_capped_log_and_the_pod_survives_a_flood() {
    let c = Containerd::start();
    let events = Events::subscribe(&c.socket);
    let mut guard = PodGuard::new(&c);
    let id = uid("console");
    guard.add("default", &id);
    let (vmm, socket) = start_victim(&c, &["--privileged"], &id);
    let log = sandboxes_root("default")
        .join(vm_dir_name(&id))
        .join("serial.log");
    // 3000 lines onto the serial console, through the guest kernel's log (root in a privileged
    // container has /dev/kmsg and lifts its rate limit).
    let o = exec(
        &c,
        &id,
        "flood",
        "echo on > /proc/sys/kernel/printk_devkmsg || exit 9
         i=0; while [ $i -lt 3000 ]; do echo \"flooding the console $i\"; i=$((i+1)); done \
           > /dev/kmsg; echo done=$?",
    );
    assert!(stdout(&o).contains("done=0"), "{}", text(&o));
    let flooded = || {
        std::fs::read_to_string(&log)
            .map(|s| s.matches("flooding the console").count())
            .unwrap_or(0)
    };
    wait_until("the flood in the log", Duration::from_secs(20), || {
        flooded() >= 3000
    });
    let size = std::fs::metadata(&log).map_or(0, |m| m.len());
    assert!(size <= myvm::serial::CAP_BYTES, "{size}");
    assert_answers(&c, &id, "after flooding its console");
    kill_vmm(vmm);
    let e = events.wait_for(SANDBOX_ERROR_TOPIC, Duration::from_secs(20), |_| true);
    assert_eq!(sandbox_error(&e).reason, "vmm-exited");
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
    kill_vmm(vmm);
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
