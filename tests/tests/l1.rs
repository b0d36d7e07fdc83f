//! The L1 tier: myvm on KVM, tested on a machine without vmx/svm. An L1 VM runs under QEMU's
//! software CPU with AMD SVM emulated (nested paging included), so /dev/kvm works inside it as
//! on a hardware host; there a private containerd runs containers on myvm with the builtin VMM
//! (what `auto` picks on such a host) and with QEMU on KVM (tests/l1/node.sh, myvm-l1-cri).
//! One L1 boot serves both backends.

use std::time::Duration;

use myvm_tests::l1::L1;

/// Runs `script` in `l1`, or in a fresh L1 if `l1` is gone; if L1's own kernel crashes on the
/// way (a fault of the emulated SVM, not of myvm: see `L1::crash`), runs it again in a fresh L1,
/// up to 3 times in all. Any other failure counts at once.
fn run_retrying_l1_crashes(l1: &mut Option<L1>, script: &str) -> Result<String, String> {
    let mut crashes = Vec::new();
    while crashes.len() < 3 {
        let vm = l1.get_or_insert_with(L1::boot);
        match vm.try_run(script, Duration::from_secs(600)) {
            Ok(job) if job.code == 0 => return Ok(job.output),
            // A real failure: reported; the next script gets a fresh L1 (this one may hold
            // what the failed script left running).
            Ok(job) if vm.crash().is_none() => {
                *l1 = None;
                return Err(format!("{script}: exit {}\n{}", job.code, job.output));
            }
            Err(e) if vm.crash().is_none() => {
                let console = vm.console();
                *l1 = None;
                return Err(format!("{script}: {e}\nL1 console:\n{console}"));
            }
            _ => {
                let crash = vm.crash().unwrap_or_default();
                eprintln!("l1: L1's kernel crashed ({crash}); again in a fresh L1");
                crashes.push(crash);
                *l1 = None;
            }
        }
    }
    Err(format!(
        "{script}: L1's kernel crashed 3 times: {crashes:?}"
    ))
}

#[test]
fn containers_run_on_kvm_with_builtin_and_qemu_in_l1() {
    let mut l1 = None;
    let mut failed = Vec::new();
    for backend in ["auto", "qemu"] {
        if let Err(e) =
            run_retrying_l1_crashes(&mut l1, &format!("sh /opt/myvm-tests/node.sh {backend}"))
        {
            failed.push(format!("backend {backend}: {e}"));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
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
