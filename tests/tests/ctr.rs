//! `ctr` against a real containerd 1.6 with the myvm runtime: run, exit codes, stdin, tty, exec,
//! kill, pause/resume, stats, pids, events, and nothing left behind.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use myvm_tests::{
    built_kernel_release,
    containerd::{myvm_processes, Containerd},
    wait_until,
};

const RT: &str = "io.containerd.myvm.v2";
const IMAGE: &str = "localhost/busybox:latest";

fn text(o: &std::process::Output) -> String {
    format!(
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn ctr_run_exec_and_lifecycle() {
    let before = myvm_processes();
    let shim_sockets = || -> std::collections::BTreeSet<_> {
        std::fs::read_dir("/run/containerd/s")
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    let sockets_before = shim_sockets();
    let c = Containerd::start();
    let mut events = Command::new("ctr")
        .arg("-a")
        .arg(&c.socket)
        .arg("events")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();

    // The command: output, the guest kernel, the exit code.
    let o = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RT,
        IMAGE,
        "hello",
        "sh",
        "-c",
        "echo hi; uname -r; exit 3",
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!("hi\n{}\n", built_kernel_release())
    );

    // stdin
    let o = c.ctr_stdin(
        &[
            "run",
            "--rm",
            "--runtime",
            RT,
            IMAGE,
            "cat",
            "sh",
            "-c",
            "cat; echo end",
        ],
        b"from stdin\n",
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "from stdin\nend\n",
        "{}",
        text(&o)
    );

    // tty, through script(1) for a pty on our side
    let o = c.ctr_in_pty(&format!("run --rm -t --runtime {RT} {IMAGE} tty tty"));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("/dev/pts/0"),
        "{}",
        text(&o)
    );

    // A long-running task: exec, pids, pause/resume, stats, kill. Detached with its stdio on
    // FIFOs that ctr leaves behind: ctr must return at once (it once blocked in the kernel on
    // a FIFO the shim held in splice(2), until the container exited).
    let started = Instant::now();
    let o = c.ctr(&[
        "run",
        "-d",
        "--runtime",
        RT,
        IMAGE,
        "svc",
        "sh",
        "-c",
        "while true; do sleep 0.1; done",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "ctr run -d took {:?}",
        started.elapsed()
    );
    let o = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "svc",
        "sh",
        "-c",
        "echo from exec; exit 5",
    ]);
    assert_eq!(
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).to_string()
        ),
        (Some(5), "from exec\n".into()),
        "{}",
        text(&o)
    );
    let o = c.ctr_in_pty("task exec --exec-id e2 -t svc tty");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("/dev/pts/"),
        "{}",
        text(&o)
    );
    let ps = String::from_utf8_lossy(&c.ctr(&["task", "ps", "svc"]).stdout).to_string();
    assert!(ps.lines().count() >= 2, "{ps}");
    assert!(c.ctr(&["task", "pause", "svc"]).status.success());
    assert!(String::from_utf8_lossy(&c.ctr(&["task", "ls"]).stdout).contains("PAUSED"));
    assert!(c.ctr(&["task", "resume", "svc"]).status.success());
    assert!(String::from_utf8_lossy(&c.ctr(&["task", "ls"]).stdout).contains("RUNNING"));
    let o = c.ctr(&["task", "metrics", "svc"]);
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("memory"),
        "{}",
        text(&o)
    );
    let o = c.ctr(&["task", "checkpoint", "svc"]);
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("not supported"),
        "{}",
        text(&o)
    );
    assert!(c
        .ctr(&["task", "kill", "-s", "SIGKILL", "svc"])
        .status
        .success());
    wait_until("svc to stop", Duration::from_secs(30), || {
        String::from_utf8_lossy(&c.ctr(&["task", "ls"]).stdout).contains("STOPPED")
    });
    assert!(c.ctr(&["task", "rm", "svc"]).status.success());
    assert!(c.ctr(&["container", "rm", "svc"]).status.success());

    // A bad command: a clear error, and nothing left.
    let o = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RT,
        IMAGE,
        "bad",
        "/no/such/binary",
    ]);
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("/no/such/binary"),
        "{}",
        text(&o)
    );
    let _ = c.ctr(&["container", "rm", "bad"]);

    let _ = events.kill();
    let ev = String::from_utf8_lossy(&events.wait_with_output().unwrap().stdout).to_string();
    for topic in [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exit",
        "/tasks/exec-added",
        "/tasks/exec-started",
        "/tasks/paused",
        "/tasks/resumed",
        "/tasks/delete",
    ] {
        assert!(ev.contains(topic), "event {topic} missing:\n{ev}");
    }

    wait_until("myvm processes to exit", Duration::from_secs(15), || {
        myvm_processes() == before
    });
    assert!(
        shim_sockets().is_subset(&sockets_before),
        "shim sockets left in /run/containerd/s"
    );
    assert!(std::fs::read_dir("/run/myvm/sandboxes/default").map_or(true, |d| d.count() == 0));
    assert!(!std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .contains("/run/myvm/shared"));
}
