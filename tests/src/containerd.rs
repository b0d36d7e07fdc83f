//! A private containerd (root, state and sockets in a temp dir) with the myvm shim on its PATH
//! and a locally built busybox image imported. Stopped, and checked for leftovers, on drop.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use crate::{setup, workspace, TempDir};

pub struct Containerd {
    dir: TempDir,
    pub socket: PathBuf,
}

/// Directory holding the built `containerd-shim-myvm-v2` (the test profile's target dir).
fn shim_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> -> target/<profile>
    exe.parent().and_then(Path::parent).unwrap().to_path_buf()
}

/// PATH with the shim's directory first (containerd finds shims on its PATH).
fn path_with_shim() -> String {
    format!(
        "{}:{}",
        shim_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

impl Containerd {
    pub fn start() -> Containerd {
        setup();
        let dir = TempDir::new("myvm-containerd");
        let shim = shim_dir().join("containerd-shim-myvm-v2");
        assert!(
            shim.exists(),
            "{} missing: build the workspace (`make build`)",
            shim.display()
        );
        let path = path_with_shim();
        let out = Command::new(workspace().join("scripts/containerd-private.sh"))
            .args(["start"])
            .arg(dir.path())
            .env("PATH", &path)
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        assert!(out.status.success(), "containerd did not start");
        let c = Containerd {
            socket: dir.path().join("containerd.sock"),
            dir,
        };
        // busybox also has /bin/euid, setuid root (`mkimage.py --setuid-probe`).
        for (name, cmd, extra) in [
            ("localhost/busybox:latest", r#"["sh"]"#, "--setuid-probe"),
            (
                "localhost/pause:latest",
                r#"["/bin/sh","-c","trap 'exit 0' TERM INT; sleep 2147483647 & wait"]"#,
                "",
            ),
        ] {
            let tar = c.dir.path().join("image.tar");
            let ok = Command::new(workspace().join("scripts/mkimage.py"))
                .args(["--name", name, "--cmd", cmd])
                .args(Some(extra).filter(|e| !e.is_empty()))
                .arg("-o")
                .arg(&tar)
                .status()
                .unwrap()
                .success();
            assert!(ok, "mkimage {name}");
            for ns in ["default", "k8s.io"] {
                let o = c.ctr_ns(ns, &["images", "import", tar.to_str().unwrap()]);
                assert!(
                    o.status.success(),
                    "import {name}: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
            }
        }
        c
    }

    /// Restarts containerd alone (same root, state and sockets); shims keep running.
    pub fn restart(&self) {
        let out = Command::new(workspace().join("scripts/containerd-private.sh"))
            .arg("restart")
            .arg(self.dir.path())
            .env("PATH", path_with_shim())
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        assert!(out.status.success(), "containerd did not restart");
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn ctr_ns(&self, ns: &str, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("-a")
            .arg(&self.socket)
            .args(["-n", ns])
            .args(self.with_fifo_dir(args))
            .output()
            .unwrap()
    }

    /// `args` with `--fifo-dir` in this containerd's directory for the commands that make stdio
    /// FIFOs: a detached `ctr run -d` leaves its FIFO directory behind, and the default one,
    /// /run/containerd/fifo, is shared by every containerd on the host.
    fn with_fifo_dir(&self, args: &[&str]) -> Vec<String> {
        let fifo = self.dir.path().join("fifo").display().to_string();
        let at = match args {
            ["run", ..] => 1,
            ["task" | "t", "exec" | "start", ..] => 2,
            _ => return args.iter().map(|a| a.to_string()).collect(),
        };
        let mut v: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        v.splice(at..at, ["--fifo-dir".to_string(), fifo]);
        v
    }

    /// `ctr ARGS` inside script(1), so ctr has a pty (for `-t`).
    pub fn ctr_in_pty(&self, args: &str) -> Output {
        let args: Vec<&str> = args.split(' ').collect();
        let args = self.with_fifo_dir(&args).join(" ");
        Command::new("script")
            .arg("-qec")
            .arg(format!("ctr -a {} {args}", self.socket.display()))
            .arg("/dev/null")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_ns("default", args)
    }

    /// `ctr` with stdin from `input`.
    pub fn ctr_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        use std::io::Write;
        let mut child = Command::new("ctr")
            .arg("-a")
            .arg(&self.socket)
            .args(self.with_fifo_dir(args))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = Command::new(workspace().join("scripts/containerd-private.sh"))
            .arg("stop")
            .arg(self.dir.path())
            .status();
        // Shims outlive containerd by design; ours must not outlive the test. Killing them
        // takes their VMs and daemons along (PR_SET_PDEATHSIG), and removes their sockets.
        for (pid, cmd) in self.shims() {
            kill_shim(pid, &cmd);
        }
    }
}

/// Kills a shim (pid, command line) and does what containerd's `delete` would do after a dead
/// shim: removes its socket from containerd's shared /run/containerd/s, unmounts its pod's
/// rootfs and volumes, removes the sandbox directories. For tests that fail half-way.
pub fn kill_shim(pid: u32, cmd: &str) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let arg = |name: &str| {
        let mut args = cmd.split(' ');
        args.find(|a| *a == name)?;
        args.next().map(str::to_string)
    };
    if let Some(path) = arg("-socket")
        .as_deref()
        .and_then(|v| v.strip_prefix("unix://"))
    {
        let _ = std::fs::remove_file(path);
    }
    for _ in 0..250 {
        if !crate::pid_alive(pid) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    if let (Some(ns), Some(id)) = (arg("-namespace"), arg("-id")) {
        myvm::shim::sandbox::cleanup_dead(&ns, &id, &id);
    }
}

/// Running processes as (pid, parent pid, command line with spaces).
pub fn processes() -> Vec<(u32, u32, String)> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let ppid = std::fs::read_to_string(e.path().join("stat"))
            .ok()
            .and_then(|s| {
                s.rsplit(')')
                    .next()?
                    .split_whitespace()
                    .nth(1)?
                    .parse()
                    .ok()
            })
            .unwrap_or(0);
        found.push((pid, ppid, String::from_utf8_lossy(&cmd).replace('\0', " ")));
    }
    found
}

impl Containerd {
    /// This containerd's myvm shims: (pid, command line).
    pub fn shims(&self) -> Vec<(u32, String)> {
        let me = self.socket.to_string_lossy().to_string();
        processes()
            .into_iter()
            .filter(|(_, _, cmd)| cmd.contains("containerd-shim-myvm-v2") && cmd.contains(&me))
            .map(|(pid, _, cmd)| (pid, cmd))
            .collect()
    }

    /// The VMs (QEMU or myvm-vmm processes) this containerd's shims run.
    pub fn vm_pids(&self) -> Vec<u32> {
        let shims: Vec<u32> = self.shims().into_iter().map(|(p, _)| p).collect();
        processes()
            .into_iter()
            .filter(|(_, ppid, cmd)| {
                shims.contains(ppid)
                    && cmd.split(' ').next().is_some_and(|a| {
                        a.ends_with("qemu-system-x86_64") || a.ends_with("myvm-vmm")
                    })
            })
            .map(|(pid, _, _)| pid)
            .collect()
    }
}

/// Host processes of myvm (shims, VMMs, daemons) still running.
pub fn myvm_processes() -> std::collections::BTreeSet<String> {
    const NAMES: [&str; 5] = [
        "containerd-shim-myvm-v2",
        "qemu-system-x86_64",
        "myvm-vmm",
        "vhost-device-vsock",
        "virtiofsd",
    ];
    processes()
        .into_iter()
        .map(|(_, _, cmd)| cmd)
        .filter(|cmd| {
            let exe = cmd.split(' ').next().unwrap_or("");
            NAMES.iter().any(|n| exe.ends_with(n))
        })
        .collect()
}
