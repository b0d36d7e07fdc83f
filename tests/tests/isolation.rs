//! Escape and isolation, through real microVMs: what root in a container of a myvm pod can see and
//! do. Every check compares with a fact the test gathers on the host, so it fails if the
//! boundary is not there:
//!
//! - the host's processes, files, kernel, network interfaces, memory and /dev/kvm are not visible;
//! - `mount`, `unshare` and module loading are refused by the container's spec (capabilities,
//!   seccomp), and a privileged container, which may do them, shows the refusals come from the spec;
//! - a memory hog, a full tmpfs and a fork bomb stay inside their limits while a second pod keeps
//!   answering;
//! - a VMM killed from the host or a guest kernel panic ends that pod with exit 137 and a clear
//!   error, `ctr task rm`/`container rm` work, and nothing of the pod is left on the host;
//! - the guest out of memory as a whole is a SandboxError event naming the VM, a container over
//!   its own limit a TaskOOM.
//!
//! Container ids carry the test's pid: `/run/myvm` is shared by every containerd on the host.

use std::{
    collections::BTreeSet,
    os::unix::process::CommandExt,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use myvm_protocol::SANDBOX_ERROR_TOPIC;
use myvm_tests::{
    built_kernel_release,
    containerd::Containerd,
    cri::{container_config, pod_config, v1, Cri},
    events::{sandbox_error, Events},
    pid_alive,
    pods::*,
    wait_until, TempDir,
};

/// Capability bits (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_MODULE: u32 = 16;
const CAP_SYS_RAWIO: u32 = 17;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYS_BOOT: u32 = 22;

/// Host network interfaces (not `lo`) and their MAC addresses.
fn host_interfaces() -> (BTreeSet<String>, BTreeSet<String>) {
    let mut names = BTreeSet::new();
    let mut macs = BTreeSet::new();
    for e in std::fs::read_dir("/sys/class/net").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "lo" {
            continue;
        }
        if let Ok(mac) = std::fs::read_to_string(e.path().join("address")) {
            let mac = mac.trim().to_string();
            if mac.chars().any(|ch| ch != '0' && ch != ':') {
                macs.insert(mac);
            }
        }
        names.insert(name);
    }
    (names, macs)
}

#[test]
fn root_in_a_container_sees_its_guest_not_the_host() {
    let c = Containerd::start();
    let mut guard = PodGuard::new(&c);

    // Host facts.
    let host_release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap()
        .trim()
        .to_string();
    let host_boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap()
        .trim()
        .to_string();
    let host_mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    assert!(
        Path::new("/dev/kvm").exists(),
        "the host has no /dev/kvm: this test checks it stays invisible"
    );
    assert_ne!(
        host_release,
        built_kernel_release(),
        "host and guest kernels must differ"
    );
    let (host_ifs, host_macs) = host_interfaces();
    // A uniquely named host process.
    let canary = format!("myvm-isolation-canary-{}", std::process::id());
    let canary_proc = KillOnDrop(
        Command::new("sleep")
            .arg0(&canary)
            .arg("600")
            .spawn()
            .unwrap(),
    );
    let canary_pid = canary_proc.0.id();
    // A host file that must stay invisible, and a twin the container gets through a bind mount
    // (the control: the search below does find a host file where one is shared).
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let secret_name = format!("host-secret-{}-{nonce}", std::process::id());
    let hidden = TempDir::new("myvm-iso-hidden");
    let marker = hidden.path().join(&secret_name);
    std::fs::write(&marker, "host only\n").unwrap();
    let shared = TempDir::new("myvm-iso-shared");
    std::fs::write(
        shared.path().join(format!("{secret_name}-shared")),
        "shared\n",
    )
    .unwrap();

    let id = uid("view");
    guard.add("default", &id);
    let script = format!(
        r#"echo "uname=$(uname -r)"
echo "boot_id=$(cat /proc/sys/kernel/random/boot_id)"
echo "uid=$(id -u)"
echo "mem=$(grep MemTotal /proc/meminfo | tr -s ' ' | cut -d' ' -f2)"
for p in /proc/[0-9]*; do echo "proc=${{p#/proc/}} $(tr '\0' ' ' < $p/cmdline)"; done
test -e /proc/{canary_pid} && echo canary_pid=present || echo canary_pid=absent
for n in /sys/class/net/*; do echo "net=${{n##*/}} $(cat $n/address)"; done
test -e /dev/kvm && echo kvm=present || echo kvm=absent
test -e '{marker}' && echo marker=present || echo marker=absent
find / -path /proc -prune -o -path /sys -prune -o -name 'host-secret-*' -print | sed 's/^/found=/'
"#,
        marker = marker.display()
    );
    let o = run_sh(
        &c,
        &[
            "--mount",
            &format!(
                "type=bind,src={},dst=/control,options=rbind:ro",
                shared.path().display()
            ),
        ],
        &id,
        &script,
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = stdout(&o);

    // Root, but in its own kernel: the guest's release and boot, the guest's memory.
    assert_eq!(value(&out, "uid"), Some("0"), "{out}");
    assert_eq!(
        value(&out, "uname"),
        Some(built_kernel_release().as_str()),
        "{out}"
    );
    assert_ne!(value(&out, "uname"), Some(host_release.as_str()), "{out}");
    let boot_id = value(&out, "boot_id").unwrap_or_default();
    assert!(
        !boot_id.is_empty() && boot_id != host_boot_id,
        "boot id {boot_id:?}"
    );
    let mem: u64 = value(&out, "mem").and_then(|v| v.parse().ok()).unwrap();
    assert!(
        mem < 1024 * 1024 && mem * 8 < host_mem_kib,
        "the container sees {mem} kB of RAM (host {host_mem_kib} kB)"
    );

    // Processes: only the container's own; the host's canary, containerd, shims, QEMU: none.
    let procs: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("proc="))
        .collect();
    assert!(!procs.is_empty(), "no /proc entries:\n{out}");
    for p in &procs {
        for host_only in [
            canary.as_str(),
            "containerd",
            "qemu",
            "virtiofsd",
            "vhost-device",
        ] {
            assert!(!p.contains(host_only), "host process visible: {p}");
        }
    }
    assert!(
        procs.len() < 10,
        "more processes than the container's own:\n{procs:#?}"
    );
    assert_eq!(value(&out, "canary_pid"), Some("absent"), "{out}");

    // Network interfaces: the guest's own; none of the host's names or MACs.
    let nets: Vec<(&str, &str)> = out
        .lines()
        .filter_map(|l| l.strip_prefix("net="))
        .filter_map(|l| l.split_once(' '))
        .collect();
    assert!(nets.iter().any(|(n, _)| *n == "lo"), "{out}");
    for (name, mac) in &nets {
        assert!(
            !host_ifs.contains(*name),
            "host interface {name} visible:\n{out}"
        );
        assert!(
            !host_macs.contains(*mac),
            "host MAC {mac} ({name}) visible:\n{out}"
        );
    }

    // Devices and files.
    assert_eq!(
        value(&out, "kvm"),
        Some("absent"),
        "/dev/kvm visible:\n{out}"
    );
    assert_eq!(
        value(&out, "marker"),
        Some("absent"),
        "host file visible:\n{out}"
    );
    let found: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("found="))
        .collect();
    assert_eq!(
        found,
        vec![format!("/control/{secret_name}-shared").as_str()],
        "the search must find the shared twin and nothing else"
    );
    drop(canary_proc);
    assert!(
        leftovers("default", &id).is_empty(),
        "{:?}",
        leftovers("default", &id)
    );
}

/// What a script tries, each attempt printing `<what>=<exit code>` after its error message.
const ATTEMPTS: &str = r#"grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status
mkdir -p /mnt
mount -t tmpfs none /mnt 2>&1; echo "mount=$?"
unshare -m true 2>&1; echo "unshare_mount=$?"
unshare -n true 2>&1; echo "unshare_net=$?"
unshare -U true 2>&1; echo "unshare_user=$?"
printf 'not an ELF module' > /tmp/m.ko; insmod /tmp/m.ko 2>&1; echo "insmod=$?"
(echo 0 > /proc/sys/vm/panic_on_oom) 2>&1; echo "sysctl=$?"
cat /dev/kvm 2>&1; echo "kvm=$?"
echo "uname=$(uname -r)"
"#;

#[test]
fn default_spec_refuses_mount_unshare_and_module_loading() {
    let c = Containerd::start();
    let _guard = {
        let mut g = PodGuard::new(&c);
        for n in ["default", "seccomp", "privileged"] {
            g.add("default", &uid(n));
        }
        g
    };
    let guest = built_kernel_release();

    // ctr's default spec: containerd's default capabilities (no CAP_SYS_ADMIN, no
    // CAP_SYS_MODULE...), no_new_privileges, read-only /proc/sys, and no seccomp profile (ctr adds
    // containerd's default profile only with --seccomp, checked below; CRI only for pods asking
    // RuntimeDefault). The refusals here are the capabilities'.
    let o = run_sh(&c, &[], &uid("default"), ATTEMPTS);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = stdout(&o);
    let caps = cap_eff(&out);
    for (name, bit) in [
        ("CAP_SYS_ADMIN", CAP_SYS_ADMIN),
        ("CAP_SYS_MODULE", CAP_SYS_MODULE),
        ("CAP_SYS_BOOT", CAP_SYS_BOOT),
        ("CAP_SYS_PTRACE", CAP_SYS_PTRACE),
        ("CAP_SYS_RAWIO", CAP_SYS_RAWIO),
        ("CAP_NET_ADMIN", CAP_NET_ADMIN),
    ] {
        assert!(!has_cap(caps, bit), "{name} in CapEff {caps:x}");
    }
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(
        out.contains("Seccomp:\t0"),
        "ctr's default spec has no seccomp: {out}"
    );
    assert_ne!(code(&out, "mount"), 0, "mount allowed:\n{out}");
    assert!(out.contains("permission denied"), "{out}");
    assert_ne!(code(&out, "unshare_mount"), 0, "unshare -m allowed:\n{out}");
    assert_ne!(code(&out, "unshare_net"), 0, "unshare -n allowed:\n{out}");
    assert!(
        out.contains("unshare(0x20000): Operation not permitted"),
        "{out}"
    );
    assert!(
        out.contains("unshare(0x40000000): Operation not permitted"),
        "{out}"
    );
    // No CAP_SYS_MODULE (above); the guest kernel has no module support at all either
    // (CONFIG_MODULES is off: ENOSYS, see the privileged control below).
    assert_ne!(code(&out, "insmod"), 0, "insmod allowed:\n{out}");
    // /proc/sys is read-only: no kernel knobs (the panic test below needs a privileged container).
    assert_ne!(code(&out, "sysctl"), 0, "/proc/sys writable:\n{out}");
    assert!(out.contains("Read-only file system"), "{out}");
    assert_ne!(code(&out, "kvm"), 0, "{out}");
    // The baseline for the seccomp check: without a profile, a user namespace (no capability
    // needed) can be made.
    assert_eq!(code(&out, "unshare_user"), 0, "{out}");

    // With containerd's default seccomp profile: the filter is installed and enforced in the
    // guest (it refuses even what needs no capability, and init_module before the kernel looks).
    let o = run_sh(&c, &["--seccomp"], &uid("seccomp"), ATTEMPTS);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = stdout(&o);
    assert!(out.contains("Seccomp:\t2"), "no seccomp filter: {out}");
    assert!(!has_cap(cap_eff(&out), CAP_SYS_ADMIN), "{out}");
    for what in [
        "mount",
        "unshare_mount",
        "unshare_net",
        "unshare_user",
        "insmod",
    ] {
        assert_ne!(code(&out, what), 0, "{what} allowed under seccomp:\n{out}");
    }
    assert!(
        out.contains("unshare(0x10000000): Operation not permitted"),
        "{out}"
    );
    assert!(
        out.contains("insmod: can't insert '/tmp/m.ko': Operation not permitted"),
        "{out}"
    );

    // The control: a privileged container may mount and unshare, so the refusals above are the
    // spec's. It is still in the guest: no module support there at all (ENOSYS), and the
    // /dev/kvm node ctr copies from the host's device list opens nothing (the guest kernel has
    // no KVM).
    let o = run_sh(&c, &["--privileged"], &uid("privileged"), ATTEMPTS);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = stdout(&o);
    assert!(has_cap(cap_eff(&out), CAP_SYS_ADMIN), "{out}");
    for what in ["mount", "unshare_mount", "unshare_net", "sysctl"] {
        assert_eq!(
            code(&out, what),
            0,
            "{what} refused even privileged:\n{out}"
        );
    }
    assert_ne!(code(&out, "insmod"), 0, "{out}");
    assert!(out.contains("kernel does not support"), "{out}");
    assert_ne!(code(&out, "kvm"), 0, "/dev/kvm opened in the guest:\n{out}");
    assert!(out.contains("/dev/kvm': No such device"), "{out}");
    assert_eq!(value(&out, "uname"), Some(guest.as_str()), "{out}");
}

#[test]
fn memory_hog_and_disk_fill_stay_in_their_limits_beside_a_second_pod() {
    let c = Containerd::start();
    let mut guard = PodGuard::new(&c);
    let mut events = KillOnDrop(
        Command::new("ctr")
            .arg("-a")
            .arg(&c.socket)
            .arg("events")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let subscriber = Events::subscribe(&c.socket);
    let bystander = uid("bystander");
    guard.add("default", &bystander);
    start_idle_pod(&c, &[], &bystander);
    assert_answers(&c, &bystander, "before");

    // A memory hog under a 32 MiB limit, in a 256 MiB guest: it doubles a string, printing its
    // size, until the OOM killer ends it (137). Its last size shows it was the container's limit,
    // not the guest's memory, that stopped it.
    let hog = uid("hog");
    guard.add("default", &hog);
    let o = run_sh(
        &c,
        &["--memory-limit", "33554432"],
        &hog,
        "x=a; n=1; while true; do x=$x$x; n=$((n * 2)); echo $n; done",
    );
    assert_eq!(
        o.status.code(),
        Some(137),
        "the hog was not OOM-killed: {}",
        text(&o)
    );
    let last: u64 = stdout(&o)
        .lines()
        .rev()
        .find_map(|l| l.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        (1 << 20..32 << 20).contains(&last),
        "the hog reached {last} bytes under a 32 MiB limit"
    );
    assert_answers(&c, &bystander, "after the memory hog");

    // A process filling a 16 MiB tmpfs gets ENOSPC at 16 MiB.
    let fill = uid("fill");
    guard.add("default", &fill);
    let o = run_sh(
        &c,
        &["--mount", "type=tmpfs,src=tmpfs,dst=/fill,options=size=16m"],
        &fill,
        "dd if=/dev/zero of=/fill/big bs=1M count=64 2>&1; echo dd=$?; \
         echo size=$(stat -c %s /fill/big)",
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = stdout(&o);
    assert_ne!(code(&out, "dd"), 0, "64 MiB fit in a 16 MiB tmpfs:\n{out}");
    assert!(out.contains("No space left on device"), "{out}");
    assert_eq!(value(&out, "size"), Some("16777216"), "{out}");
    assert_answers(&c, &bystander, "after the disk fill");

    remove_pod(&c, &bystander);
    for id in [&hog, &fill] {
        assert!(
            leftovers("default", id).is_empty(),
            "{:?}",
            leftovers("default", id)
        );
    }
    let _ = events.0.kill();
    let mut ev = String::new();
    let _ = std::io::Read::read_to_string(events.0.stdout.as_mut().unwrap(), &mut ev);
    assert!(
        ev.lines()
            .any(|l| l.contains("/tasks/oom") && l.contains(&hog)),
        "no OOM event for {hog}:\n{ev}"
    );
    // A container's OOM is the container's: its VM is fine, no sandbox error.
    assert!(
        !subscriber.on("/tasks/oom").is_empty(),
        "the subscriber missed the TaskOOM"
    );
    assert_eq!(subscriber.on(SANDBOX_ERROR_TOPIC), vec![]);
}

/// `pids.current` and `pids.limit` from `ctr task metrics` (the guest's cgroup, as the shim
/// reports it).
fn pids_metrics(c: &Containerd, ns: &str, id: &str) -> Option<(u64, u64)> {
    let out = stdout(&c.ctr_ns(ns, &["task", "metrics", id]));
    let get = |key: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(key))
            .and_then(|l| l.split_whitespace().last()?.parse().ok())
    };
    Some((get("pids.current")?, get("pids.limit")?))
}

#[test]
fn fork_bomb_stays_in_its_pids_limit_beside_a_second_pod() {
    let c = Containerd::start();
    let mut cri = Cri::connect(&c.socket);
    let logs = TempDir::new("myvm-iso-logs");
    let mut guard = PodGuard::new(&c);

    let b_cfg = pod_config(&uid("quiet"), logs.path());
    let pod_b = cri.run_pod(&b_cfg, "myvm").expect("RunPodSandbox quiet");
    guard.add("k8s.io", &pod_b);
    let quiet = cri
        .start_container(
            &pod_b,
            &b_cfg,
            container_config(
                "quiet",
                &[
                    "sh",
                    "-c",
                    "trap 'exit 0' TERM; while true; do sleep 1; done",
                ],
            ),
        )
        .expect("quiet");

    // ctr 1.6 has no pids flag (and no `task update`); CRI passes `unified` to the spec, and the
    // agent's libcontainer writes it to the container's cgroup in the guest.
    let a_cfg = pod_config(&uid("bomb"), logs.path());
    let pod_a = cri.run_pod(&a_cfg, "myvm").expect("RunPodSandbox bomb");
    guard.add("k8s.io", &pod_a);
    let mut bomb_cfg = container_config(
        "bomb",
        &[
            "sh",
            "-c",
            "bomb() { bomb | bomb & }; bomb; exec sleep 3600",
        ],
    );
    bomb_cfg.linux = Some(v1::LinuxContainerConfig {
        resources: Some(v1::LinuxContainerResources {
            unified: [("pids.max".to_string(), "64".to_string())].into(),
            ..Default::default()
        }),
        ..Default::default()
    });
    let bomb = cri.start_container(&pod_a, &a_cfg, bomb_cfg).expect("bomb");

    // For a while: the bomb fills its 64 pids and no more; the other pod answers at once.
    let mut peak = 0;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(4) {
        let (current, limit) = pids_metrics(&c, "k8s.io", &bomb)
            .unwrap_or_else(|| panic!("no pids metrics for the bomb"));
        assert_eq!(limit, 64, "pids limit");
        assert!(current <= 64, "{current} pids over a limit of 64");
        peak = peak.max(current);
        let s = Instant::now();
        let (code, out, err) = cri.exec_sync(&quiet, &["echo", "alive"]);
        assert_eq!((code, out.as_str()), (0, "alive\n"), "{err}");
        assert!(
            s.elapsed() < Duration::from_secs(10),
            "the other pod took {:?} to answer",
            s.elapsed()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(peak >= 48, "the fork bomb reached only {peak} pids");
    assert_eq!(
        cri.container_status(&bomb).state(),
        v1::ContainerState::ContainerRunning
    );

    for pod in [&pod_a, &pod_b] {
        cri.remove_pod(pod).expect("removing a pod");
    }
    wait_until("the pods' shims to exit", Duration::from_secs(20), || {
        shim_of(&c, &pod_a).is_none() && shim_of(&c, &pod_b).is_none()
    });
    for pod in [&pod_a, &pod_b] {
        assert_eq!(leftovers("k8s.io", pod), Vec::<String>::new());
    }
}

/// A container id unique to this test process.
fn uid(name: &str) -> String {
    format!("iso-{name}-{}", std::process::id())
}

/// The value of a `key=value` line of a script's output.
fn value<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    out.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// The exit code a script printed as `key=<code>`.
fn code(out: &str, key: &str) -> i32 {
    value(out, key)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key}=<code> in:\n{out}"))
}

fn cap_eff(out: &str) -> u64 {
    out.lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or_else(|| panic!("no CapEff in:\n{out}"))
}

fn has_cap(caps: u64, bit: u32) -> bool {
    caps & (1 << bit) != 0
}

#[test]
fn vmm_killed_from_the_host_ends_the_pod_and_leaves_nothing() {
    let c = Containerd::start();
    let events = Events::subscribe(&c.socket);
    let mut guard = PodGuard::new(&c);
    let id = uid("vmmkill");
    guard.add("default", &id);
    let (vmm, socket) = start_victim(&c, &[], &id);
    kill_vmm(vmm);
    assert_pod_ended_cleanly(&c, &id, &socket);
    let e = events.wait_for(SANDBOX_ERROR_TOPIC, Duration::from_secs(5), |_| true);
    let err = sandbox_error(&e);
    assert_eq!((err.sandbox_id, err.reason), (id, "vmm-exited".to_string()));
}

/// The guest out of memory as a whole (not one container over its own limit) ends the pod with
/// a SandboxError event naming the VM and the reason, distinct from a container's TaskOOM.
#[test]
fn guest_out_of_memory_as_a_whole_is_a_sandbox_error_and_spares_the_other_pod() {
    let c = Containerd::start();
    let events = Events::subscribe(&c.socket);
    let mut guard = PodGuard::new(&c);
    let bystander = uid("oom-bystander");
    guard.add("default", &bystander);
    start_idle_pod(&c, &[], &bystander);

    // Root in a privileged container makes its guest's kernel panic on a system-wide OOM (the
    // guest's own choice: by default its OOM killer would end the hog and the VM would live),
    // then a hog with no memory limit of its own fills the guest's 256 MiB.
    let id = uid("vm-oom");
    guard.add("default", &id);
    let (vmm, socket) = start_victim(&c, &["--privileged"], &id);
    let o = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "arm",
        &id,
        "sh",
        "-c",
        "echo 1 > /proc/sys/vm/panic_on_oom; cat /proc/sys/vm/panic_on_oom",
    ]);
    assert_eq!(stdout(&o), "1\n", "{}", text(&o));
    let o = c.ctr(&[
        "task",
        "exec",
        "-d",
        "--exec-id",
        "hog",
        &id,
        "sh",
        "-c",
        "x=a; while true; do x=$x$x; done",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    // panic=-1 on the guest's command line: the panic resets the guest, and the VMM exits.
    wait_until(
        "the out-of-memory guest's VMM to exit",
        Duration::from_secs(60),
        || !pid_alive(vmm),
    );
    let log = assert_pod_ended_cleanly(&c, &id, &socket);
    assert!(
        log.contains("guest out of memory") && log.contains("Kernel panic"),
        "containerd's log does not say the guest ran out of memory:\n{log}"
    );
    // One event for the sandbox, naming its VM and why; no TaskOOM (no container hit its limit).
    let e = events.wait_for(SANDBOX_ERROR_TOPIC, Duration::from_secs(10), |e| {
        sandbox_error(e).sandbox_id == id
    });
    assert_eq!(e.namespace, "default");
    let err = sandbox_error(&e);
    assert_eq!(err.reason, "guest-oom", "{err:?}");
    assert_eq!(err.vm, myvm::shim::sandbox::vm_dir_name(&id));
    assert!(err.message.contains("Out of memory"), "{err:?}");
    assert_eq!(err.container_ids, vec![id.clone()]);
    assert!(err.at_unix_nanos > 0);
    assert!(
        !events
            .on("/tasks/oom")
            .iter()
            .any(|e| format!("{e:?}").contains(&id)),
        "a whole-VM OOM was reported as a container's TaskOOM"
    );
    assert_eq!(
        events.on(SANDBOX_ERROR_TOPIC).len(),
        1,
        "only the failed VM is reported"
    );
    assert_answers(
        &c,
        &bystander,
        "after the other pod's guest ran out of memory",
    );
    remove_pod(&c, &bystander);
}
