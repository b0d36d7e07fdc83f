//! A microVM with a busybox rootfs shared over virtio-fs, for running containers through the
//! agent in tests (and benchmarks).

use std::{
    io::Read,
    path::{Path, PathBuf},
    time::Duration,
};

use myvm::{
    agent_client::{open_stdio, AgentClient, AgentError, StdioStream},
    assets::Assets,
    check::HostInfo,
    hypervisor::BackendKind,
    vm::{ShareAccess, SharedDir, Vm, VmOptions},
};
use myvm_protocol::agent::*;
use serde_json::{json, Value};

use crate::{busybox_rootfs, setup, TempDir};

/// Guest mount point of the shared directory.
pub const SHARED: &str = "/run/myvm/shared";

pub struct TestVm {
    pub vm: Option<Vm>,
    pub shared: TempDir,
    _run_root: TempDir,
}

/// What a container run produced.
#[derive(Debug)]
pub struct Output {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl TestVm {
    /// Boots a VM (qemu backend) sharing a fresh directory; each container gets a busybox rootfs
    /// of its own at `<id>/rootfs/` there (the agent runs nothing else, see [`Self::rootfs`]).
    pub fn boot() -> TestVm {
        Self::boot_with(false)
    }

    /// Like [`boot`](Self::boot); `shared_pid_namespace`: the sandbox's containers share one pid
    /// namespace.
    pub fn boot_with(shared_pid_namespace: bool) -> TestVm {
        setup();
        let shared = TempDir::new("myvm-shared");
        let run_root = TempDir::new("myvm-run");
        let opts = VmOptions {
            backend: Some(BackendKind::Qemu),
            vcpus: 2,
            memory_mib: 512,
            run_root: run_root.path().to_path_buf(),
            shared_dirs: vec![SharedDir {
                tag: "myvmfs".into(),
                path: shared.path().to_path_buf(),
                access: ShareAccess::ReadWrite,
                no_privileged_files: false,
            }],
            boot_timeout: Duration::from_secs(60),
            ..Default::default()
        };
        let vm = Vm::boot(
            &opts,
            &Assets::discover().expect("assets"),
            &HostInfo::detect(),
        )
        .expect("boot");
        let req = CreateSandboxRequest {
            sandbox_id: "test".into(),
            hostname: "sandbox".into(),
            mounts: vec![SharedMount {
                tag: "myvmfs".into(),
                mount_point: SHARED.into(),
                ..Default::default()
            }],
            shared_pid_namespace,
            ..Default::default()
        };
        vm.agent()
            .call("CreateSandbox", |c, ctx| c.create_sandbox(ctx, &req))
            .expect("CreateSandbox");
        TestVm {
            vm: Some(vm),
            shared,
            _run_root: run_root,
        }
    }

    pub fn agent(&self) -> &AgentClient {
        self.vm.as_ref().unwrap().agent()
    }

    pub fn uds(&self) -> PathBuf {
        self.vm.as_ref().unwrap().vsock_uds().to_path_buf()
    }

    /// Guest path of container `id`'s rootfs: its own directory in the share, as the shim lays
    /// it out (the only rootfs the agent accepts).
    pub fn rootfs(id: &str) -> String {
        format!("{SHARED}/{id}/rootfs")
    }

    /// Creates container `id`, with a busybox rootfs of its own (made on first use; ids that are
    /// no plain name, which the agent refuses, get none).
    pub fn create(&self, id: &str, spec: &Value, stdio: Stdio) -> Result<i32, AgentError> {
        let host_rootfs = host_rootfs(self, id);
        let plain = !id.is_empty() && !id.contains('/') && !id.starts_with('.');
        if plain && !host_rootfs.exists() {
            busybox_rootfs(&host_rootfs);
        }
        let req = CreateContainerRequest {
            container_id: id.into(),
            oci_spec: serde_json::to_vec(spec).unwrap(),
            rootfs: Self::rootfs(id),
            stdio: Some(stdio).into(),
            ..Default::default()
        };
        self.agent()
            .call("CreateContainer", |c, ctx| c.create_container(ctx, &req))
            .map(|r| r.pid)
    }

    pub fn start(&self, id: &str) -> Result<(), AgentError> {
        let req = StartContainerRequest {
            container_id: id.into(),
            ..Default::default()
        };
        self.agent()
            .call("StartContainer", |c, ctx| c.start_container(ctx, &req))
            .map(drop)
    }

    /// Waits for a process to exit (long polls until `timeout`).
    pub fn wait(&self, id: &str, exec: &str, timeout: Duration) -> Result<i32, AgentError> {
        let deadline = std::time::Instant::now() + timeout;
        let req = WaitProcessRequest {
            container_id: id.into(),
            exec_id: exec.into(),
            ..Default::default()
        };
        loop {
            match self.agent().call_with_timeout(
                "WaitProcess",
                Duration::from_secs(40),
                |c, ctx| c.wait_process(ctx, &req),
            ) {
                Ok(r) => return Ok(r.exit_status),
                Err(e)
                    if std::time::Instant::now() < deadline
                        && e.to_string().contains("still running") =>
                {
                    continue
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub fn remove(&self, id: &str) -> Result<(), AgentError> {
        let req = RemoveContainerRequest {
            container_id: id.into(),
            ..Default::default()
        };
        self.agent()
            .call("RemoveContainer", |c, ctx| c.remove_container(ctx, &req))
            .map(drop)
    }

    pub fn signal(&self, id: &str, exec: &str, signal: i32, all: bool) -> Result<(), AgentError> {
        let req = SignalProcessRequest {
            container_id: id.into(),
            exec_id: exec.into(),
            signal: signal as u32,
            all,
            ..Default::default()
        };
        self.agent()
            .call("SignalProcess", |c, ctx| c.signal_process(ctx, &req))
            .map(drop)
    }

    /// Attaches stdout+stderr readers (in threads) for a process.
    pub fn attach_output(&self, id: &str, exec: &str) -> OutputReaders {
        let open =
            |s| open_stdio(&self.uds(), id, exec, s, Duration::from_secs(10)).expect("attach");
        let read = |mut conn: std::os::unix::net::UnixStream| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                conn.read_to_end(&mut buf).map(|_| buf)
            })
        };
        OutputReaders {
            stdout: read(open(StdioStream::Stdout)),
            stderr: read(open(StdioStream::Stderr)),
        }
    }

    /// Creates, starts and waits for a container; returns its exit status and output, and removes it.
    pub fn run(&self, id: &str, spec: &Value) -> Result<Output, AgentError> {
        let r = self.run_inner(id, spec);
        if r.is_err() {
            eprintln!("--- guest serial console ---\n{}", self.serial_tail(60));
        }
        r
    }

    pub fn serial_tail(&self, lines: usize) -> String {
        myvm::process::tail(self.vm.as_ref().unwrap().serial_log(), lines)
    }

    fn run_inner(&self, id: &str, spec: &Value) -> Result<Output, AgentError> {
        self.create(
            id,
            spec,
            Stdio {
                stdout: true,
                stderr: true,
                ..Default::default()
            },
        )?;
        let readers = self.attach_output(id, "");
        self.start(id)?;
        let status = self.wait(id, "", Duration::from_secs(60))?;
        let (stdout, stderr) = readers.collect();
        self.remove(id)?;
        Ok(Output {
            status,
            stdout,
            stderr,
        })
    }

    /// Shuts the VM down and checks nothing is left on the host.
    pub fn shutdown(mut self) {
        let vm = self.vm.take().unwrap();
        let pids = vm.pids();
        let dir = vm.dir().to_path_buf();
        let status = vm.shutdown(Duration::from_secs(20)).expect("shutdown");
        assert!(crate::clean_vmm_exit(status), "VMM exit: {status}");
        for p in pids {
            assert!(!crate::pid_alive(p), "process {p} left behind");
        }
        assert!(!dir.exists());
    }
}

pub struct OutputReaders {
    stdout: std::thread::JoinHandle<std::io::Result<Vec<u8>>>,
    stderr: std::thread::JoinHandle<std::io::Result<Vec<u8>>>,
}

impl OutputReaders {
    pub fn collect(self) -> (String, String) {
        let s = |h: std::thread::JoinHandle<std::io::Result<Vec<u8>>>| {
            String::from_utf8_lossy(&h.join().unwrap().expect("read stream")).into_owned()
        };
        (s(self.stdout), s(self.stderr))
    }

    pub fn collect_raw(self) -> (Vec<u8>, Vec<u8>) {
        (
            self.stdout.join().unwrap().expect("read stdout"),
            self.stderr.join().unwrap().expect("read stderr"),
        )
    }
}

/// A default OCI spec (what `runc spec` writes), running `args`.
pub fn spec(args: &[&str]) -> Value {
    let caps = json!([
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FSETID",
        "CAP_FOWNER",
        "CAP_MKNOD",
        "CAP_NET_RAW",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETFCAP",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT",
        "CAP_KILL",
        "CAP_AUDIT_WRITE"
    ]);
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": "container",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
        ],
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}],
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
                            "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

/// A default spec running `sh -c script`.
pub fn sh(script: &str) -> Value {
    spec(&["sh", "-c", script])
}

/// The shared directory's host path of container `id`'s rootfs.
pub fn host_rootfs(vm: &TestVm, id: &str) -> PathBuf {
    vm.shared.path().join(id).join("rootfs")
}

/// True if `path` exists below the host side of container `id`'s rootfs.
pub fn rootfs_has(vm: &TestVm, id: &str, path: &str) -> bool {
    Path::new(&host_rootfs(vm, id))
        .join(path.trim_start_matches('/'))
        .exists()
}
