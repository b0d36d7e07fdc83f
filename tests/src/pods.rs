//! Pods through `ctr` for the end-to-end suites that attack or break them (isolation, escape):
//! starting and removing them, finding their shim and VMM, and what must be left of them (nothing).

use std::{
    path::Path,
    process::{Child, Output},
    time::{Duration, Instant},
};

use myvm::shim::sandbox::{cleanup_dead, sandboxes_root, shared_dir, vm_dir_name};

use crate::{
    containerd::{kill_shim, processes, Containerd},
    pid_alive, wait_until,
};

pub const RT: &str = "io.containerd.myvm.v2";
pub const IMAGE: &str = "localhost/busybox:latest";

pub fn text(o: &Output) -> String {
    format!(
        "exit: {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `ctr run --rm` of `script` in a new pod (its own microVM), with `opts` before the image.
pub fn run_sh(c: &Containerd, opts: &[&str], id: &str, script: &str) -> Output {
    run_sh_on(c, RT, opts, id, script)
}

/// [`run_sh`] with containerd runtime `runtime` (e.g. runc's, the reference).
pub fn run_sh_on(c: &Containerd, runtime: &str, opts: &[&str], id: &str, script: &str) -> Output {
    let mut args = vec!["run", "--rm", "--runtime", runtime];
    args.extend_from_slice(opts);
    args.extend_from_slice(&[IMAGE, id, "sh", "-c", script]);
    let o = c.ctr(&args);
    let _ = c.ctr(&["container", "rm", id]);
    o
}

/// The shim of pod `id` of this containerd: (pid, command line).
pub fn shim_of(c: &Containerd, id: &str) -> Option<(u32, String)> {
    let flag = format!(" -id {id} ");
    c.shims().into_iter().find(|(_, cmd)| cmd.contains(&flag))
}

/// The socket path in a shim's command line (`-socket unix://PATH`).
pub fn shim_socket(cmd: &str) -> Option<&str> {
    cmd.split(' ')
        .skip_while(|a| *a != "-socket")
        .nth(1)
        .and_then(|v| v.strip_prefix("unix://"))
}

/// Everything of pod `id` (namespace `ns`) still on the host: processes, mounts, directories.
pub fn leftovers(ns: &str, id: &str) -> Vec<String> {
    let vm_dir = sandboxes_root(ns).join(vm_dir_name(id));
    let shared = shared_dir(ns, id);
    let mut left = Vec::new();
    for (pid, _, cmd) in processes() {
        let ours = cmd.contains(&format!("{}/", vm_dir.display()))
            || cmd.contains(&shared.display().to_string())
            || (cmd.contains("containerd-shim-myvm-v2") && cmd.contains(&format!(" -id {id} ")));
        if ours && pid_alive(pid) {
            left.push(format!("process {pid}: {cmd}"));
        }
    }
    for line in std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
    {
        let target = line.split(' ').nth(1).unwrap_or("");
        if target.starts_with(&vm_dir.display().to_string())
            || target.starts_with(&shared.display().to_string())
        {
            left.push(format!("mount {line}"));
        }
    }
    for dir in [&vm_dir, &shared] {
        if dir.exists() {
            left.push(format!("directory {}", dir.display()));
        }
    }
    left
}

/// Makes sure pods of a failed test go: kills their shims (containerd then runs the shim's
/// `delete`, which unmounts and removes what the pod left), waits, and cleans up what remains.
/// A passing test has already removed them; then this does nothing.
pub struct PodGuard<'a> {
    c: &'a Containerd,
    pods: Vec<(&'static str, String)>,
}

impl<'a> PodGuard<'a> {
    pub fn new(c: &'a Containerd) -> Self {
        PodGuard {
            c,
            pods: Vec::new(),
        }
    }

    pub fn add(&mut self, ns: &'static str, id: &str) {
        self.pods.push((ns, id.to_string()));
    }
}

impl Drop for PodGuard<'_> {
    fn drop(&mut self) {
        for (ns, id) in &self.pods {
            if let Some((pid, cmd)) = shim_of(self.c, id) {
                kill_shim(pid, &cmd);
            }
            let t = Instant::now();
            while !leftovers(ns, id).is_empty() && t.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(200));
            }
            cleanup_dead(ns, id, id);
        }
    }
}

/// A child process killed (and reaped) on drop.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Exec in a running task of this containerd: it must answer, and quickly, while another pod is
/// misbehaving.
pub fn assert_answers(c: &Containerd, id: &str, what: &str) {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let exec_id = format!(
        "alive{}",
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let t = Instant::now();
    let o = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        &exec_id,
        id,
        "sh",
        "-c",
        "echo alive",
    ]);
    let took = t.elapsed();
    assert_eq!(
        (o.status.code(), stdout(&o).as_str()),
        (Some(0), "alive\n"),
        "the second pod did not answer {what}: {}",
        text(&o)
    );
    assert!(
        took < Duration::from_secs(10),
        "the second pod took {took:?} to answer {what}"
    );
}

/// Starts a long-running pod `id` (`ctr run -d`, with `opts`) that does nothing.
pub fn start_idle_pod(c: &Containerd, opts: &[&str], id: &str) {
    let mut args = vec!["run", "-d", "--runtime", RT];
    args.extend_from_slice(opts);
    args.extend_from_slice(&[
        IMAGE,
        id,
        "sh",
        "-c",
        "trap 'exit 0' TERM; while true; do sleep 1; done",
    ]);
    let o = c.ctr(&args);
    assert!(o.status.success(), "starting {id}: {}", text(&o));
}

/// Kills, deletes and removes pod `id` started with `ctr run -d`; nothing of it may remain.
pub fn remove_pod(c: &Containerd, id: &str) {
    let _ = c.ctr(&["task", "kill", "-s", "SIGKILL", id]);
    wait_until(&format!("{id} to stop"), Duration::from_secs(30), || {
        stdout(&c.ctr(&["task", "ls"]))
            .lines()
            .any(|l| l.starts_with(&format!("{id} ")) && l.contains("STOPPED"))
    });
    let o = c.ctr(&["task", "rm", id]);
    assert!(o.status.success(), "task rm {id}: {}", text(&o));
    let o = c.ctr(&["container", "rm", id]);
    assert!(o.status.success(), "container rm {id}: {}", text(&o));
    wait_until(
        &format!("nothing of {id} left"),
        Duration::from_secs(15),
        || leftovers("default", id).is_empty(),
    );
}

/// A pod whose VM will die (`ctr run -d` of an idle container, with `opts`): its VMM's pid and
/// its shim's socket.
pub fn start_victim(c: &Containerd, opts: &[&str], id: &str) -> (u32, String) {
    start_idle_pod(c, opts, id);
    let (shim, cmd) = shim_of(c, id).expect("the victim's shim");
    let socket = shim_socket(&cmd).expect("the shim's -socket").to_string();
    let vmm = processes()
        .into_iter()
        .find(|(_, ppid, cmd)| {
            *ppid == shim
                && cmd
                    .split(' ')
                    .next()
                    .is_some_and(|a| a.ends_with("qemu-system-x86_64") || a.ends_with("myvm-vmm"))
        })
        .map(|(pid, _, _)| pid)
        .expect("the victim's VMM");
    (vmm, socket)
}

/// The last lines of containerd's log (the shims log through it).
pub fn log_tail(c: &Containerd, n: usize) -> String {
    let log = std::fs::read_to_string(c.dir().join("containerd.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// After the victim's VM is gone: the task is reported stopped with status 137, containerd's log
/// says why, `ctr task rm` and `ctr container rm` work, and nothing of the pod is left on the
/// host (processes, mounts, directories, the shim's socket). Returns the log lines about `id`.
pub fn assert_pod_ended_cleanly(c: &Containerd, id: &str, socket: &str) -> String {
    let stopped = || {
        stdout(&c.ctr(&["task", "ls"]))
            .lines()
            .any(|l| l.starts_with(&format!("{id} ")) && l.contains("STOPPED"))
    };
    let t = Instant::now();
    while !stopped() {
        if t.elapsed() > Duration::from_secs(20) {
            panic!(
                "{id} still not reported stopped 20 s after its VM ended:\n{}\n\
                 containerd's log:\n{}",
                stdout(&c.ctr(&["task", "ls"])),
                log_tail(c, 6)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let log: String = std::fs::read_to_string(c.dir().join("containerd.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(id))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        log.lines()
            .any(|l| l.contains("level=error") && l.contains("VM")),
        "no error about {id}'s VM in containerd's log:\n{log}"
    );
    // ctr 1.6 reports a non-zero exit status of the deleted task as a warning.
    let o = c.ctr(&["task", "rm", id]);
    assert!(o.status.success(), "task rm {id}: {}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("non-zero exit code 137"),
        "{id} did not exit with 137: {}",
        text(&o)
    );
    let o = c.ctr(&["container", "rm", id]);
    assert!(o.status.success(), "container rm {id}: {}", text(&o));
    wait_until(
        &format!("nothing of {id} left on the host"),
        Duration::from_secs(15),
        || leftovers("default", id).is_empty() && !Path::new(socket).exists(),
    );
    log
}

/// SIGKILL to a VMM, as a host operator (or the OOM killer) would.
pub fn kill_vmm(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}
