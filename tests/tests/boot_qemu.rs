//! The guest image boots in a real microVM through the qemu backend and the agent answers over
//! hybrid vsock; nothing is left behind afterwards.

use std::time::{Duration, Instant};

use myvm::{
    assets::Assets,
    check::HostInfo,
    hypervisor::BackendKind,
    vm::{Vm, VmError, VmOptions},
};
use myvm_tests::{assert_jailed, built_kernel_release, pid_alive, setup, status_field, TempDir};

fn options(run_root: &TempDir) -> VmOptions {
    options_for(run_root, BackendKind::Qemu)
}

fn options_for(run_root: &TempDir, backend: BackendKind) -> VmOptions {
    VmOptions {
        backend: Some(backend),
        vcpus: 2,
        memory_mib: 256,
        run_root: run_root.path().to_path_buf(),
        boot_timeout: Duration::from_secs(60),
        ..Default::default()
    }
}

#[test]
fn boots_answers_and_leaves_nothing_behind() {
    boot_answer_cleanup(BackendKind::Qemu);
}

// The same boot through the builtin VMM needs vmx/svm (on KVM-PVM the guest kernel never
// reaches /init): tests/tests/l1.rs runs it, and containers on it, inside an L1 VM with
// emulated AMD SVM.

/// On hosts without hardware virtualization the builtin VMM cannot boot the guest to its agent,
/// but it must still start jailed: /dev/kvm, kernel, initrd, serial log and the vhost-user
/// sockets reachable in its jail, running the guest (not exiting) until the boot times out.
#[test]
fn builtin_vmm_runs_jailed() {
    setup();
    let host = HostInfo::detect();
    assert!(host.kvm, "needs /dev/kvm");
    assert!(host.builtin_vmm.is_some(), "needs myvm-vmm (make build)");
    vmm_with_kvm_runs_jailed(BackendKind::Builtin, "myvm-vmm", host);
}

/// The same for QEMU with KVM (what the qemu backend runs on hosts with hardware
/// virtualization; here it is forced onto KVM-PVM, where it starts but cannot finish booting).
#[test]
fn qemu_with_kvm_runs_jailed() {
    setup();
    let mut host = HostInfo::detect();
    assert!(host.kvm, "needs /dev/kvm");
    assert!(host.qemu.is_some(), "needs qemu-system-x86_64");
    host.hw_virt = true;
    vmm_with_kvm_runs_jailed(BackendKind::Qemu, "qemu-system-x86_64", host);
}

fn vmm_with_kvm_runs_jailed(backend: BackendKind, binary: &'static str, host: HostInfo) {
    let run_root = TempDir::new("myvm-e2e-jail");
    let assets = Assets::discover().expect("assets");
    let mut opts = options_for(&run_root, backend);
    opts.boot_timeout = Duration::from_secs(4);
    let root = run_root.path().to_path_buf();
    let watcher = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(4);
        while Instant::now() < deadline {
            let vmm = std::fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
                let pid: u32 = e.file_name().to_str()?.parse().ok()?;
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                let cmd = String::from_utf8_lossy(&cmd);
                (cmd.contains(binary) && cmd.contains(root.to_str().unwrap())).then_some(pid)
            });
            if let Some(pid) = vmm {
                // Give it time to set up the VM (or to fail doing so).
                std::thread::sleep(Duration::from_millis(1500));
                assert!(pid_alive(pid), "{binary} exited in its jail");
                assert_jailed(pid);
                assert_eq!(status_field(pid, "Seccomp:"), "2", "seccomp filters on");
                let kvm = std::fs::read_dir(format!("/proc/{pid}/fd"))
                    .unwrap()
                    .flatten()
                    .any(|f| {
                        std::fs::read_link(f.path())
                            .is_ok_and(|l| l.to_string_lossy().contains("kvm-vm"))
                    });
                assert!(kvm, "{binary} has a KVM VM open");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{binary} never ran");
    });
    let result = Vm::boot(&opts, &assets, &host);
    watcher.join().unwrap();
    match result {
        Ok(_) => assert!(HostInfo::detect().hw_virt, "the guest booted under KVM-PVM"),
        Err(e) => {
            let text = e.to_string();
            assert!(
                text.contains("never announced"),
                "the VMM must not have exited: {text}"
            );
        }
    }
    assert_eq!(std::fs::read_dir(run_root.path()).unwrap().count(), 0);
}

fn boot_answer_cleanup(backend: BackendKind) {
    setup();
    let run_root = TempDir::new("myvm-e2e-boot");
    let assets = Assets::discover().expect("assets");
    let vm = Vm::boot(
        &options_for(&run_root, backend),
        &assets,
        &HostInfo::detect(),
    )
    .expect("boot");

    let check = vm.agent().check().expect("Check");
    assert_eq!(
        check.status.enum_value_or_default(),
        myvm_protocol::agent::check_response::Status::SERVING
    );
    let version = vm.agent().version().expect("Version");
    assert_eq!(version.api_version, myvm_protocol::API_VERSION);

    let details = vm.agent().guest_details().expect("GetGuestDetails");
    let host_release = nix::sys::utsname::uname()
        .unwrap()
        .release()
        .to_string_lossy()
        .into_owned();
    assert_eq!(
        details.kernel_release,
        built_kernel_release(),
        "guest runs the kernel we built"
    );
    assert_ne!(
        details.kernel_release, host_release,
        "guest kernel must not be the host's"
    );
    assert_eq!(details.vcpus, 2);
    assert!(
        details.mem_total_bytes > 200 << 20 && details.mem_total_bytes <= 256 << 20,
        "{}",
        details.mem_total_bytes
    );
    assert!(details.uptime_ns > 0 && details.agent_init_ns > 0);

    let pids = vm.pids();
    assert_eq!(pids.len(), 2, "VMM + vhost-device-vsock: {pids:?}");
    assert!(pids.iter().all(|p| pid_alive(*p)));
    // The VMM (first) runs jailed.
    assert_jailed(pids[0]);
    let dir = vm.dir().to_path_buf();
    assert!(vm.vsock_uds().exists());
    let serial = vm.serial_log().to_path_buf();
    assert!(
        std::fs::read_to_string(&serial)
            .unwrap()
            .contains("myvm-agent"),
        "agent logs to the serial console"
    );

    let status = vm.shutdown(Duration::from_secs(20)).expect("shutdown");
    assert!(
        myvm_tests::clean_vmm_exit(status),
        "the VMM exits cleanly after the agent's Shutdown: {status}"
    );
    for p in pids {
        assert!(!pid_alive(p), "process {p} left behind");
    }
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert_eq!(std::fs::read_dir(run_root.path()).unwrap().count(), 0);
}

#[test]
fn guest_without_agent_fails_with_serial_log_and_cleans_up() {
    setup();
    let run_root = TempDir::new("myvm-e2e-noagent");
    // An initramfs with no /init: the kernel panics, the VM resets, QEMU exits.
    let empty = run_root.path().join("empty.cpio");
    std::fs::write(&empty, b"").unwrap();
    let mut assets = Assets::discover().expect("assets");
    assets.initrd = empty;
    let vms = run_root.path().join("vms");
    let mut opts = options(&run_root);
    opts.run_root = vms.clone();
    let t = Instant::now();
    let err = Vm::boot(&opts, &assets, &HostInfo::detect())
        .err()
        .expect("boot must fail");
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "failure must be reported promptly: {:?}",
        t.elapsed()
    );
    let msg = err.to_string();
    assert!(matches!(err, VmError::Boot { .. }), "{msg}");
    assert!(msg.contains("VMM exited"), "{msg}");
    assert!(
        msg.contains("Kernel panic"),
        "the serial log tail is in the error: {msg}"
    );
    assert_eq!(
        std::fs::read_dir(&vms).unwrap().count(),
        0,
        "nothing left in {}",
        vms.display()
    );
}

#[test]
fn guest_that_never_answers_times_out_with_serial_log() {
    setup();
    let run_root = TempDir::new("myvm-e2e-timeout");
    let mut opts = options(&run_root);
    // Boot into a shell instead of the agent: the VM runs but nobody listens on port 1024.
    opts.extra_cmdline = "rdinit=/bin/sh".into();
    opts.boot_timeout = Duration::from_secs(5);
    let assets = Assets::discover().expect("assets");
    let t = Instant::now();
    let err = Vm::boot(&opts, &assets, &HostInfo::detect())
        .err()
        .expect("boot must fail");
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    let msg = err.to_string();
    assert!(msg.contains("did not become ready within 5s"), "{msg}");
    let serial_tail: Vec<&str> = msg
        .lines()
        .skip_while(|l| !l.starts_with("--- last lines of the serial console"))
        .skip(1)
        .collect();
    assert!(
        serial_tail.iter().any(|l| l.starts_with("[ ")),
        "kernel console lines in the error: {msg}"
    );
    assert_eq!(std::fs::read_dir(run_root.path()).unwrap().count(), 0);
}

#[test]
fn bad_config_is_a_clear_error_and_leaves_nothing() {
    setup();
    let run_root = TempDir::new("myvm-e2e-badcfg");
    let mut assets = Assets::discover().expect("assets");
    assets.kernel = "/nonexistent/vmlinux".into();
    let err = Vm::boot(&options(&run_root), &assets, &HostInfo::detect())
        .err()
        .expect("must fail");
    assert!(
        err.to_string()
            .contains("kernel /nonexistent/vmlinux does not exist"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(run_root.path()).unwrap().count(), 0);
}
