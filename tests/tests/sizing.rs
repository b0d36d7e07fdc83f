//! The VM follows what the container asks for outside CRI (`ctr run --memory-limit`, `--cpus`),
//! as runc does, within the configured maxima; a request above them fails at create with an
//! error that says so, and leaves nothing behind. A pod's VM grows for its containers (balloon,
//! vCPUs online) up to its ceiling, and refuses beyond it at that call.

use std::time::Duration;

use myvm_tests::{
    containerd::Containerd,
    cri::{container_config, pod_config, Cri},
    pods::{leftovers, remove_pod, run_sh_on, IMAGE, RT as MYVM},
    TempDir,
};

const RUNC: &str = "io.containerd.runc.v2";

/// Holds 400 MiB of the container's memory (tmpfs pages are charged to its cgroup) and prints
/// the CPUs it sees.
const HOLD: &str = "nproc; dd if=/dev/zero of=/big/f bs=1M count=400 2>/dev/null && echo held-400";

/// `ctr run --rm` of `cmd` on `runtime`: (exit code, stdout, stderr).
fn run(
    c: &Containerd,
    runtime: &str,
    id: &str,
    extra: &[&str],
    cmd: &str,
) -> (i32, String, String) {
    let o = run_sh_on(c, runtime, extra, id, cmd);
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A runtime config file (`--runtime-config-path`) holding `toml`, in `dir`.
fn config_file(dir: &TempDir, toml: &str) -> String {
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, toml).unwrap();
    cfg.display().to_string()
}

fn assert_nothing_left(c: &Containerd, id: &str) {
    assert!(c.shims().is_empty(), "shims left: {:?}", c.shims());
    let left = leftovers("default", id);
    assert!(left.is_empty(), "{id} left: {left:?}");
}

#[test]
fn ctr_run_gets_the_memory_and_cpus_it_asks_for_like_runc() {
    let c = Containerd::start();
    let limits = [
        "--memory-limit",
        "1073741824",
        "--cpus",
        "2",
        "--mount",
        "type=tmpfs,src=none,dst=/big,options=size=600m",
    ];
    // runc, the reference, runs it.
    let (code, out, err) = run(&c, RUNC, "hold-runc", &limits, HOLD);
    assert_eq!(code, 0, "runc: {out}{err}");
    assert!(out.contains("held-400"), "runc: {out}");
    // So does myvm: a VM sized for a 1 GiB container, with 2 vCPUs.
    let (code, out, err) = run(&c, MYVM, "hold-myvm", &limits, HOLD);
    assert_eq!(code, 0, "myvm: {out}{err}");
    assert_eq!(out, "2\nheld-400\n", "{err}");
    assert_nothing_left(&c, "hold-myvm");
    // Without limits, the configured 256 MiB VM: the same 400 MiB does not fit (the control).
    let (code, out, _) = run(
        &c,
        MYVM,
        "hold-small",
        &["--mount", "type=tmpfs,src=none,dst=/big,options=size=600m"],
        HOLD,
    );
    assert!(
        code != 0 || !out.contains("held-400"),
        "a 256 MiB VM held 400 MiB: {out}"
    );
    assert_nothing_left(&c, "hold-small");
}

#[test]
fn asks_over_the_configured_maxima_fail_at_create_and_leave_nothing() {
    let c = Containerd::start();
    let dir = TempDir::new("myvm-sizing");
    let cfg = config_file(&dir, "max_memory_mib = 512\nmax_vcpus = 1\n");
    let with = |extra: &[&'static str]| {
        let mut v = vec!["--runtime-config-path", cfg.as_str()];
        v.extend_from_slice(extra);
        v
    };
    let (code, _, err) = run(
        &c,
        MYVM,
        "too-big",
        &with(&["--memory-limit", "1073741824"]),
        "true",
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("asks for 1024 MiB of memory") && err.contains("max_memory_mib"),
        "{err}"
    );
    assert_nothing_left(&c, "too-big");
    let (code, _, err) = run(&c, MYVM, "too-wide", &with(&["--cpus", "2"]), "true");
    assert_ne!(code, 0);
    assert!(
        err.contains("asks for 2 CPUs") && err.contains("max_vcpus"),
        "{err}"
    );
    assert_nothing_left(&c, "too-wide");
    // Within the maxima it runs.
    let (code, out, err) = run(
        &c,
        MYVM,
        "fits",
        &with(&["--memory-limit", "268435456"]),
        "nproc",
    );
    assert_eq!((code, out.as_str()), (0, "1\n"), "{err}");
}

/// Holds 400 MiB in one process (dd's buffer) and says so; OOM-killed where there is no room.
const DD_400: &str = "dd if=/dev/zero of=/dev/null bs=400M count=1 2>/dev/null && echo held";

/// A CRI pod's VM grows when its containers together need more: a container resized up
/// (UpdateContainerResources, Kubernetes' in-place resize) then holds more and sees more CPUs; a
/// container added beyond what the VM can grow to, or a resize beyond it, fails at that call.
#[test]
fn a_cri_pod_grows_for_a_resize_and_refuses_beyond_its_ceiling() {
    let c = Containerd::start();
    let mut cri = Cri::connect(&c.socket);
    let logs = TempDir::new("myvm-cri-logs");
    // No pod resources: the configured 256 MiB and 1 vCPU, growing by memory_growth_mib (1 GiB)
    // to 1280 MiB and to the host's CPUs.
    let pod_cfg = pod_config("grow-pod", logs.path());
    let pod = cri.run_pod(&pod_cfg, "myvm").expect("RunPodSandbox");
    let resources = |mib: i64, cpus: i64| myvm_tests::cri::v1::LinuxContainerResources {
        memory_limit_in_bytes: mib << 20,
        cpu_quota: cpus * 100_000,
        cpu_period: if cpus > 0 { 100_000 } else { 0 },
        ..Default::default()
    };
    let mut app = container_config("app", &["sleep", "600"]);
    app.linux.get_or_insert_with(Default::default).resources = Some(resources(128, 0));
    let app = cri.start_container(&pod, &pod_cfg, app).expect("app");
    let (code, out, _) = cri.exec_sync(&app, &["sh", "-c", DD_400]);
    assert_ne!(
        (code, out.trim()),
        (0, "held"),
        "400 MiB under a 128 MiB limit"
    );
    assert_eq!(cri.sh(&app, "nproc"), "1");
    // Resized up to 1 GiB and 2 CPUs: the VM grows (balloon deflated, a vCPU onlined).
    cri.update_resources(&app, resources(1024, 2))
        .expect("a resize the VM can grow to");
    assert_eq!(cri.sh(&app, DD_400), "held");
    assert_eq!(cri.sh(&app, "nproc"), "2");
    assert_eq!(
        cri.sh(
            &app,
            "cat /sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)/memory.max"
        ),
        (1u64 << 30).to_string()
    );
    // The pod's containers together: 1 GiB + 512 MiB needs more than 1280 MiB.
    let mut big = container_config("big", &["sleep", "60"]);
    big.linux.get_or_insert_with(Default::default).resources = Some(resources(512, 0));
    let err = cri
        .start_container(&pod, &pod_cfg, big)
        .expect_err("a container beyond the VM's ceiling");
    assert!(
        err.contains("can grow to 1280 MiB") && err.contains("memory_growth_mib"),
        "{err}"
    );
    let err = cri
        .update_resources(&app, resources(2048, 0))
        .expect_err("a resize beyond the VM's ceiling");
    assert!(err.contains("can grow to 1280 MiB"), "{err}");
    // What fits still does, and the pod works on.
    let mut small = container_config("small", &["sleep", "60"]);
    small.linux.get_or_insert_with(Default::default).resources = Some(resources(64, 0));
    let small = cri.start_container(&pod, &pod_cfg, small).expect("small");
    assert_eq!(cri.sh(&small, "echo fine"), "fine");
    cri.remove_pod(&pod).expect("remove pod");
}

/// Free page reporting, on the qemu backend (the builtin VMM's is tested in L1 and in its unit
/// tests).
#[test]
fn memory_a_container_frees_goes_back_to_the_host() {
    let c = Containerd::start();
    let dir = TempDir::new("myvm-sizing");
    let cfg = config_file(&dir, "backend = \"qemu\"\n");
    let o = c.ctr(&[
        "run",
        "-d",
        "--null-io",
        "--runtime",
        MYVM,
        "--runtime-config-path",
        &cfg,
        "--memory-limit",
        "1073741824",
        "--mount",
        "type=tmpfs,src=none,dst=/big,options=size=600m",
        IMAGE,
        "fpr",
        "sleep",
        "600",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let vmm = c.vm_pids()[0];
    let exec = |id: &str, script: &str| {
        let o = c.ctr(&["task", "exec", "--exec-id", id, "fpr", "sh", "-c", script]);
        assert!(
            o.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    let idle = myvm_tests::guest_resident_mib(vmm);
    exec(
        "fill",
        "dd if=/dev/zero of=/big/f bs=1M count=400 2>/dev/null",
    );
    let held = myvm_tests::guest_resident_mib(vmm);
    assert!(
        held >= idle + 350, // (some of the 400 MiB may land on pages touched before)
        "idle {idle} MiB, after 400 MiB written {held} MiB"
    );
    exec("free", "rm /big/f");
    // The guest reports free 2 MiB blocks about 2 s after they are freed.
    let mut now = held;
    myvm_tests::wait_until(
        "the VMM to give the freed guest memory back",
        Duration::from_secs(60),
        || {
            now = myvm_tests::guest_resident_mib(vmm);
            now + 300 < held
        },
    );
    eprintln!("guest RAM held: idle {idle} MiB, 400 MiB written {held} MiB, freed {now} MiB");
    remove_pod(&c, "fpr");
    assert_nothing_left(&c, "fpr");
}
