//! Crash and restart behaviour: a shim killed with SIGKILL takes its VM and daemons along and
//! containerd cleans up; containerd restarted under running pods manages them again.

use std::time::Duration;

use myvm_protocol::SANDBOX_ERROR_TOPIC;
use myvm_tests::{
    containerd::{processes, Containerd},
    events::{sandbox_error, Events},
    pid_alive, wait_until,
};

const RT: &str = "io.containerd.myvm.v2";
const IMAGE: &str = "localhost/busybox:latest";

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Children of `pid`, forked by any of its threads (the shim's VMM and vhost-user daemons).
fn children(pid: u32) -> Vec<u32> {
    processes()
        .into_iter()
        .filter(|(_, ppid, _)| *ppid == pid)
        .map(|(child, _, _)| child)
        .collect()
}

fn run_detached(c: &Containerd, id: &str) {
    let o = c.ctr(&[
        "run",
        "-d",
        "--runtime",
        RT,
        IMAGE,
        id,
        "sh",
        "-c",
        "trap 'exit 0' TERM; while true; do sleep 1; done",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn killed_shim_takes_its_vm_along_and_containerd_cleans_up() {
    let c = Containerd::start();
    run_detached(&c, "victim");
    let shims = c.shims();
    assert_eq!(shims.len(), 1);
    let shim = shims[0].0;
    let socket = shims[0]
        .1
        .split(' ')
        .skip_while(|a| *a != "-socket")
        .nth(1)
        .and_then(|a| a.strip_prefix("unix://"))
        .expect("the shim's -socket")
        .to_string();
    let helpers = children(shim);
    assert!(
        helpers.len() >= 3,
        "VMM, vsock and virtiofsd under the shim: {helpers:?}"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until(
        "the VM and daemons to die with the shim",
        Duration::from_secs(10),
        || helpers.iter().all(|p| !pid_alive(*p)),
    );
    // containerd sees the shim gone, reports the task stopped and runs the shim's `delete`.
    wait_until(
        "containerd to see the task stopped",
        Duration::from_secs(20),
        || {
            let ls = stdout(&c.ctr(&["task", "ls"]));
            !ls.contains("RUNNING")
        },
    );
    let _ = c.ctr(&["task", "rm", "victim"]);
    let o = c.ctr(&["container", "rm", "victim"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let shared = myvm::shim::sandbox::shared_dir("default", "victim");
    wait_until(
        "the shared directory to go",
        Duration::from_secs(10),
        || !shared.exists(),
    );
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(&shared.display().to_string()), "{mounts}");
    let vmdir = myvm::shim::sandbox::sandboxes_root("default").join("victim");
    assert!(!vmdir.exists(), "{} left", vmdir.display());
    assert!(
        !std::path::Path::new(&socket).exists(),
        "the dead shim's socket {socket} is left"
    );
}

#[test]
fn restarted_containerd_manages_running_pods_again() {
    let c = Containerd::start();
    run_detached(&c, "survivor");
    let vm = c.vm_pids();
    assert_eq!(vm.len(), 1);

    c.restart();
    assert!(pid_alive(vm[0]), "the VM died with containerd");
    let ls = stdout(&c.ctr(&["task", "ls"]));
    assert!(
        ls.lines()
            .any(|l| l.starts_with("survivor") && l.contains("RUNNING")),
        "{ls}"
    );
    let o = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "after",
        "survivor",
        "echo",
        "still here",
    ]);
    assert_eq!(
        stdout(&o),
        "still here\n",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = c.ctr(&["task", "kill", "survivor"]);
    assert!(o.status.success());
    wait_until("the task to stop", Duration::from_secs(20), || {
        stdout(&c.ctr(&["task", "ls"])).contains("STOPPED")
    });
    assert!(c.ctr(&["task", "rm", "survivor"]).status.success());
    assert!(c.ctr(&["container", "rm", "survivor"]).status.success());
    wait_until("the shim and VM to exit", Duration::from_secs(15), || {
        c.shims().is_empty() && !pid_alive(vm[0])
    });
}

#[test]
fn hung_guest_is_stopped_and_its_task_reported_killed() {
    let c = Containerd::start();
    let events = Events::subscribe(&c.socket);
    run_detached(&c, "frozen");
    let vm = c.vm_pids();
    assert_eq!(vm.len(), 1);
    // A guest that stops answering while its VMM still runs (as a hung or hostile one would).
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(vm[0] as i32),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    wait_until(
        "the task to be reported dead",
        Duration::from_secs(60),
        || stdout(&c.ctr(&["task", "ls"])).contains("STOPPED"),
    );
    wait_until("the VMM to be killed", Duration::from_secs(20), || {
        !pid_alive(vm[0])
    });
    let log = std::fs::read_to_string(c.dir().join("containerd.log")).unwrap();
    assert!(
        log.contains("the agent stopped answering"),
        "no clear error in containerd's log"
    );
    let e = events.wait_for(SANDBOX_ERROR_TOPIC, Duration::from_secs(5), |_| true);
    let err = sandbox_error(&e);
    assert_eq!(
        (err.sandbox_id.as_str(), err.reason.as_str()),
        ("frozen", "agent-unresponsive")
    );
    assert_eq!(err.container_ids, ["frozen"]);
    assert!(c.ctr(&["task", "rm", "frozen"]).status.success());
    assert!(c.ctr(&["container", "rm", "frozen"]).status.success());
    wait_until("the shim to exit", Duration::from_secs(15), || {
        c.shims().is_empty()
    });
    let shared = myvm::shim::sandbox::shared_dir("default", "frozen");
    assert!(!shared.exists(), "{} left", shared.display());
}
