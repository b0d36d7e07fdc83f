//! The L1 tier: myvm on KVM, tested on a machine without vmx/svm. An L1 VM runs under QEMU's
//! software CPU with AMD SVM emulated (nested paging included), so /dev/kvm works inside it as
//! on a hardware host; there a private containerd runs containers on myvm with the builtin VMM
//! (what `auto` picks on such a host) and with QEMU on KVM (tests/l1/node.sh, myvm-l1-cri).
//! One L1 boot serves both backends.

use std::time::Duration;

use myvm_tests::l1::L1;

#[test]
fn containers_run_on_kvm_with_builtin_and_qemu_in_l1() {
    let mut l1 = L1::boot();
    let mut failed = Vec::new();
    for backend in ["auto", "qemu"] {
        let job = l1.run(
            &format!("sh /opt/myvm-tests/node.sh {backend}"),
            Duration::from_secs(600),
        );
        if job.code != 0 {
            failed.push(format!(
                "backend {backend}: exit {}\n{}",
                job.code, job.output
            ));
        }
    }
    assert!(
        failed.is_empty(),
        "{}\nL1 console:\n{}",
        failed.join("\n"),
        l1.console()
    );
    drop(l1);

    // A guest with 2 vCPUs on the builtin VMM. Under this emulated SVM such guests corrupted L1
    // in 2 of 11 runs (not seen on hardware), so this check gets 3 tries, each in a fresh L1.
    let mut tries = Vec::new();
    for _ in 0..3 {
        let mut l1 = L1::boot();
        let r = l1.try_run(
            "myvm boot --backend builtin --vcpus 2 --json",
            Duration::from_secs(180),
        );
        match r {
            Ok(job) if job.code == 0 && job.output.contains("\"vcpus\": 2") => return,
            Ok(job) => tries.push(format!("exit {}: {}", job.code, job.output)),
            Err(e) => tries.push(e),
        }
    }
    panic!(
        "a 2-vCPU guest did not boot in 3 tries:\n{}",
        tries.join("\n---\n")
    );
}
