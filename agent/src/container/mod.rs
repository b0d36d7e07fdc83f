//! The container layer: OCI containers in the guest through youki's `libcontainer`, their
//! processes, stdio, cgroups and events.

pub mod cgroup;
pub mod child_errors;
pub mod error;
pub mod events;
pub mod exec_security;
pub mod spec;
pub mod stdio;
pub mod validate;

use std::{
    collections::HashMap,
    fs,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    sync::{Arc, Condvar, Mutex, MutexGuard},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use libcontainer::{
    container::{builder::ContainerBuilder, Container, ContainerStatus},
    syscall::syscall::SyscallType,
    workload::default::DefaultExecutor,
};
use nix::{
    sys::{signal::Signal, wait::WaitStatus},
    unistd::Pid,
};

use self::{
    error::{ContainerError, Result},
    events::{Event, EventKind, EventQueue},
    stdio::{ChildIo, ConsoleSocket, ProcessIo, StdioRequest, Stream},
};
use crate::reaper;

/// Where libcontainer keeps container state, and where bundles are written.
pub const STATE_ROOT: &str = "/run/myvm-agent/containers";
pub const BUNDLE_ROOT: &str = "/run/myvm-agent/bundles";

/// Exit status of a process, once it exited.
#[derive(Default)]
pub struct ExitCell {
    value: Mutex<Option<(i32, i64)>>,
    cond: Condvar,
}

impl ExitCell {
    fn set(&self, status: i32, at_ns: i64) {
        *self.value.lock().unwrap_or_else(|e| e.into_inner()) = Some((status, at_ns));
        self.cond.notify_all();
    }

    pub fn get(&self) -> Option<(i32, i64)> {
        *self.value.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits up to `timeout` for the exit.
    pub fn wait(&self, timeout: Duration) -> Option<(i32, i64)> {
        let guard = self.value.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = self
            .cond
            .wait_timeout_while(guard, timeout, |v| v.is_none())
            .unwrap_or_else(|e| e.into_inner());
        *guard
    }
}

pub struct Process {
    pub pid: Pid,
    pub io: ProcessIo,
    pub exit: Arc<ExitCell>,
}

struct ContainerEntry {
    cgroup: PathBuf,
    bundle: PathBuf,
    init: Arc<Process>,
    execs: HashMap<String, Arc<Process>>,
    started: bool,
}

pub struct Manager {
    containers: Mutex<HashMap<String, ContainerEntry>>,
    /// (`as_sibling(false)`: CLONE_PARENT is refused to PID 1; the container init is re-parented
    /// to us anyway, as PID 1 or child subreaper.)
    /// Serialises process creation, so a container being created never inherits (even briefly)
    /// another one's pipe ends, which would delay that one's EOF.
    create_lock: Mutex<()>,
    pub events: Arc<EventQueue>,
    /// Containers share the pid namespace of the first one (sandbox option).
    pub shared_pid_ns: Mutex<Option<PathBuf>>,
    pub share_pid_ns: std::sync::atomic::AtomicBool,
    /// Guest mount points of the sandbox's shared directories (CreateSandbox), where container
    /// `<id>` has its directory `<share>/<id>` (see [`validate`]).
    shares: Mutex<Vec<PathBuf>>,
}

pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Shell-style exit status: code, or 128 + signal.
pub fn exit_status(ws: WaitStatus) -> i32 {
    match ws {
        WaitStatus::Exited(_, code) => code,
        WaitStatus::Signaled(_, sig, _) => 128 + sig as i32,
        _ => 255,
    }
}

impl Manager {
    pub fn new(events: Arc<EventQueue>) -> Self {
        Manager {
            containers: Mutex::default(),
            create_lock: Mutex::default(),
            events,
            shared_pid_ns: Mutex::default(),
            share_pid_ns: Default::default(),
            shares: Mutex::default(),
        }
    }

    pub fn add_share(&self, mount_point: &Path) {
        self.shares
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(mount_point.to_path_buf());
    }

    pub fn take_shares(&self) -> Vec<PathBuf> {
        std::mem::take(&mut *self.shares.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, ContainerEntry>> {
        self.containers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn load(id: &str) -> Result<Container> {
        Container::load(Path::new(STATE_ROOT).join(id))
            .map_err(ContainerError::runtime(format!("loading container {id}")))
    }

    /// Creates a container (its init process waits for `start`).
    pub fn create(
        &self,
        id: &str,
        spec_json: &[u8],
        rootfs: &Path,
        req: StdioRequest,
    ) -> Result<Pid> {
        validate::id("container", id)?;
        let t0 = std::time::Instant::now();
        if self.lock().contains_key(id) {
            return Err(ContainerError::Exists(id.to_string()));
        }
        let shares = self
            .shares
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let container_dir = validate::rootfs(&shares, id, rootfs)?;
        if !rootfs.is_dir() {
            return Err(ContainerError::Invalid(format!(
                "rootfs {} is not a directory in the guest",
                rootfs.display()
            )));
        }
        let mut spec = spec::parse(spec_json)?;
        // Binds may come from the container's directory in any share (rootfs and volumes).
        let container_dirs: Vec<PathBuf> = shares.iter().map(|s| s.join(id)).collect();
        debug_assert!(container_dirs.contains(&container_dir));
        validate::mounts(&spec, &container_dirs)?;
        let pid_ns = if self.share_pid_ns.load(std::sync::atomic::Ordering::Relaxed) {
            self.shared_pid_ns.lock().unwrap().clone()
        } else {
            None
        };
        if let Some(ns) = &pid_ns {
            if !ns.exists() {
                return Err(ContainerError::Precondition(
                    "the sandbox shares one pid namespace, held by its first container, which has exited".into(),
                ));
            }
        }
        spec::adapt(
            &mut spec,
            &spec::Adapt {
                container_id: id,
                rootfs,
                terminal: req.terminal,
                pid_ns: pid_ns.as_deref(),
                pod_pids: &self.running_inits(),
            },
        )?;
        let net_sysctls = spec::take_net_sysctls(&mut spec)?;
        spec::apply_net_sysctls(Path::new("/proc/sys"), &net_sysctls)?;
        let bundle = Path::new(BUNDLE_ROOT).join(id);
        fs::create_dir_all(&bundle)
            .map_err(ContainerError::io(format!("mkdir {}", bundle.display())))?;
        let cleanup_bundle = |e| {
            let _ = fs::remove_dir_all(&bundle);
            e
        };
        spec.save(bundle.join("config.json"))
            .map_err(|e| ContainerError::Other(format!("writing config.json: {e}")))
            .map_err(cleanup_bundle)?;

        let _serial = self.create_lock.lock().unwrap_or_else(|e| e.into_inner());
        let prepared_ms = t0.elapsed().as_millis() as u64;
        let (builder, io_setup) = builder(id, req, &bundle).map_err(cleanup_bundle)?;
        let (built, child_errors) = child_errors::capture(|| {
            builder
                .as_init(&bundle)
                .with_systemd(false)
                .with_detach(true)
                .as_sibling(false)
                .build()
        });
        let built = built.map_err(ContainerError::runtime_in_child(
            format!("creating container {id}"),
            child_errors,
        ));
        let container = match built {
            Ok(c) => c,
            Err(e) => {
                self.destroy_state(id, &bundle);
                return Err(e);
            }
        };
        let pid = container
            .pid()
            .map(|p| Pid::from_raw(p.as_raw()))
            .ok_or_else(|| ContainerError::Other("created container has no pid".into()))?;
        let io = match io_setup.finish(req) {
            Ok(io) => io,
            Err(e) => {
                self.destroy_state(id, &bundle);
                return Err(e);
            }
        };
        drop(_serial);

        if pid_ns.is_none() && self.share_pid_ns.load(std::sync::atomic::Ordering::Relaxed) {
            *self.shared_pid_ns.lock().unwrap() =
                Some(PathBuf::from(format!("/proc/{pid}/ns/pid")));
        }
        // Without a pid namespace of its own (the pod's, or the guest's), what the container
        // started outlives its init: it is killed when the init exits, as runc's shim does.
        let own_pid_ns = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .is_some_and(|ns| {
                ns.iter().any(|n| {
                    n.typ() == oci_spec::runtime::LinuxNamespaceType::Pid && n.path().is_none()
                })
            });
        let init = self.track(id, "", pid, io, !own_pid_ns);
        let cgroup = cgroup::dir(&spec::cgroup_path(id));
        let io_weight = spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().as_ref())
            .and_then(|r| r.block_io().as_ref())
            .and_then(|b| b.weight());
        if let Some(w) = io_weight {
            if let Err(e) = cgroup::set_io_weight(&cgroup, w) {
                tracing::warn!(container = id, "io weight: {e}");
            }
        }
        self.lock().insert(
            id.to_string(),
            ContainerEntry {
                cgroup,
                bundle,
                init,
                execs: HashMap::new(),
                started: false,
            },
        );
        tracing::info!(
            container = id,
            %pid,
            prepared_ms,
            total_ms = t0.elapsed().as_millis() as u64,
            "created"
        );
        Ok(pid)
    }

    /// Guest pids of the containers whose init process still runs.
    fn running_inits(&self) -> Vec<i32> {
        self.lock()
            .values()
            .filter(|e| e.init.exit.get().is_none())
            .map(|e| e.init.pid.as_raw())
            .collect()
    }

    /// Watches `pid` for its exit: records it and queues an Exited (and maybe an OOM) event.
    /// With `kill_all_on_exit`, what is left in the container's cgroup is killed on the exit.
    fn track(
        &self,
        container_id: &str,
        exec_id: &str,
        pid: Pid,
        io: ProcessIo,
        kill_all_on_exit: bool,
    ) -> Arc<Process> {
        let process = Arc::new(Process {
            pid,
            io,
            exit: Arc::default(),
        });
        let rx = reaper::subscribe(pid);
        let exit = process.exit.clone();
        let events = self.events.clone();
        let (cid, eid) = (container_id.to_string(), exec_id.to_string());
        let cg = cgroup::dir(&spec::cgroup_path(container_id));
        let oom_before = cgroup::oom_kills(&cg);
        std::thread::Builder::new()
            .name(format!("wait-{pid}"))
            .spawn(move || {
                let Ok(ws) = rx.recv() else { return };
                let (status, at) = (exit_status(ws), now_ns());
                if kill_all_on_exit {
                    for left in cgroup::pids(&cg).unwrap_or_default() {
                        let _ = nix::sys::signal::kill(Pid::from_raw(left), Signal::SIGKILL);
                    }
                }
                if eid.is_empty() && cgroup::oom_kills(&cg) > oom_before {
                    events.push(Event {
                        container_id: cid.clone(),
                        exec_id: eid.clone(),
                        kind: EventKind::Oom,
                    });
                }
                exit.set(status, at);
                tracing::info!(container = cid, exec = eid, %pid, status, "process exited");
                events.push(Event {
                    container_id: cid,
                    exec_id: eid,
                    kind: EventKind::Exited {
                        pid: pid.as_raw(),
                        exit_status: status,
                        exited_at_ns: at,
                    },
                });
            })
            .expect("spawning a wait thread");
        process
    }

    pub fn start(&self, id: &str) -> Result<()> {
        let mut c = Self::load(id)?;
        if !c.can_start() {
            return Err(ContainerError::Precondition(format!(
                "container {id} cannot start in state {:?}",
                c.status()
            )));
        }
        c.start()
            .map_err(ContainerError::runtime(format!("starting container {id}")))?;
        if let Some(e) = self.lock().get_mut(id) {
            e.started = true;
        }
        tracing::info!(container = id, "started");
        Ok(())
    }

    pub fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process_json: &[u8],
        req: StdioRequest,
    ) -> Result<Pid> {
        validate::id("exec", exec_id)?;
        let (bundle, init) = {
            let map = self.lock();
            let entry = map
                .get(id)
                .ok_or_else(|| ContainerError::NoContainer(id.to_string()))?;
            if entry.execs.contains_key(exec_id) {
                return Err(ContainerError::Exists(format!("{id}/{exec_id}")));
            }
            (entry.bundle.clone(), entry.init.clone())
        };
        if init.exit.get().is_some() {
            return Err(ContainerError::Precondition(format!(
                "container {id} is not running (its init process exited)"
            )));
        }
        let mut process: oci_spec::runtime::Process = serde_json::from_slice(process_json)
            .map_err(|e| {
                ContainerError::Invalid(format!("exec process is not a valid OCI process: {e}"))
            })?;
        if process.args().as_ref().is_none_or(|a| a.is_empty()) {
            return Err(ContainerError::Invalid("exec process has no args".into()));
        }
        process.set_terminal(Some(req.terminal));
        process.set_apparmor_profile(None);
        process.set_selinux_label(None);
        // The container's seccomp filter, which libcontainer's exec path leaves out.
        let security = match Self::container_seccomp(&bundle)? {
            Some(seccomp) => Some(exec_security::ExecSecurity::prepare(
                &seccomp,
                &mut process,
            )?),
            None => None,
        };
        let process_file = bundle.join(format!("exec-{exec_id}.json"));
        fs::write(
            &process_file,
            serde_json::to_vec(&process).map_err(|e| ContainerError::Other(e.to_string()))?,
        )
        .map_err(ContainerError::io("writing the exec process"))?;

        let _serial = self.create_lock.lock().unwrap_or_else(|e| e.into_inner());
        let result = builder(id, req, &bundle).and_then(|(builder, io_setup)| {
            let builder = match security {
                Some(x) => builder.with_executor(x),
                None => builder,
            };
            let (built, child_errors) = child_errors::capture(|| {
                builder
                    .as_tenant()
                    .with_process(Some(&process_file))
                    .with_detach(true)
                    .as_sibling(false)
                    .build()
            });
            let pid = built.map_err(ContainerError::runtime_in_child(
                format!("exec in container {id}"),
                child_errors,
            ))?;
            Ok((Pid::from_raw(pid.as_raw()), io_setup.finish(req)?))
        });
        let _ = fs::remove_file(&process_file);
        let (pid, io) = result?;
        drop(_serial);
        let process = self.track(id, exec_id, pid, io, false);
        if let Some(e) = self.lock().get_mut(id) {
            e.execs.insert(exec_id.to_string(), process);
        }
        tracing::info!(container = id, exec = exec_id, %pid, "exec");
        Ok(pid)
    }

    /// The seccomp filter of the container whose bundle is `bundle` (its adapted spec).
    fn container_seccomp(bundle: &Path) -> Result<Option<oci_spec::runtime::LinuxSeccomp>> {
        let spec = oci_spec::runtime::Spec::load(bundle.join("config.json"))
            .map_err(|e| ContainerError::Other(format!("reading the container's spec: {e}")))?;
        Ok(spec.linux().as_ref().and_then(|l| l.seccomp().clone()))
    }

    pub fn process(&self, id: &str, exec_id: &str) -> Result<Arc<Process>> {
        let map = self.lock();
        let entry = map
            .get(id)
            .ok_or_else(|| ContainerError::NoContainer(id.to_string()))?;
        if exec_id.is_empty() {
            return Ok(entry.init.clone());
        }
        entry
            .execs
            .get(exec_id)
            .cloned()
            .ok_or_else(|| ContainerError::NoProcess {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
            })
    }

    pub fn signal(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let sig = Signal::try_from(signal as i32)
            .map_err(|_| ContainerError::Invalid(format!("unknown signal {signal}")))?;
        let cgroup = {
            let map = self.lock();
            map.get(id)
                .ok_or_else(|| ContainerError::NoContainer(id.to_string()))?
                .cgroup
                .clone()
        };
        if all {
            for pid in cgroup::pids(&cgroup).unwrap_or_default() {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), sig);
            }
        }
        // A process that exited is NOT_FOUND, also with `all`: the host learns from it of an
        // exit whose event it did not get (see WaitProcess).
        let p = self.process(id, exec_id)?;
        if p.exit.get().is_some() {
            return Err(ContainerError::NoProcess {
                container_id: id.into(),
                exec_id: exec_id.into(),
            });
        }
        if all {
            return Ok(());
        }
        nix::sys::signal::kill(p.pid, sig)
            .map_err(|e| ContainerError::io(format!("kill {} {sig}", p.pid))(e.into()))
    }

    pub fn attach(&self, id: &str, exec_id: &str, stream: Stream) -> Result<std::fs::File> {
        self.process(id, exec_id)?.io.take(stream).ok_or_else(|| {
            ContainerError::Precondition(format!(
                "{stream:?} of {id}/{exec_id} is not available (not requested or already attached)"
            ))
        })
    }

    pub fn cgroup(&self, id: &str) -> Result<PathBuf> {
        Ok(self
            .lock()
            .get(id)
            .ok_or_else(|| ContainerError::NoContainer(id.to_string()))?
            .cgroup
            .clone())
    }

    pub fn pause(&self, id: &str) -> Result<()> {
        self.cgroup(id)?;
        Self::load(id)?
            .pause()
            .map_err(ContainerError::runtime(format!("pausing {id}")))
    }

    pub fn resume(&self, id: &str) -> Result<()> {
        self.cgroup(id)?;
        Self::load(id)?
            .resume()
            .map_err(ContainerError::runtime(format!("resuming {id}")))
    }

    /// Kills what is left of the container and removes its cgroup, state and bundle.
    pub fn remove(&self, id: &str) -> Result<()> {
        let entry = self
            .lock()
            .remove(id)
            .ok_or_else(|| ContainerError::NoContainer(id.to_string()))?;
        self.destroy_state(id, &entry.bundle);
        // Give the wait threads a moment to record exits of what delete killed.
        let _ = entry.init.exit.wait(Duration::from_secs(2));
        tracing::info!(container = id, "removed");
        Ok(())
    }

    fn destroy_state(&self, id: &str, bundle: &Path) {
        match Self::load(id) {
            Ok(mut c) => {
                if c.status() == ContainerStatus::Paused {
                    let _ = c.resume();
                }
                if let Err(e) = c.delete(true) {
                    tracing::warn!(container = id, "delete: {e}");
                }
            }
            Err(e) => tracing::debug!(container = id, "no state to delete: {e}"),
        }
        let _ = fs::remove_dir_all(Path::new(STATE_ROOT).join(id));
        let _ = fs::remove_dir_all(bundle);
        let cg = cgroup::dir(&spec::cgroup_path(id));
        if cg.exists() {
            let _ = fs::remove_dir(&cg);
        }
    }

    pub fn ids(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }
}

/// Stdio set-up that spans libcontainer's build: pipes are ready before it, a pty is received
/// after it.
enum IoSetup {
    Pipes(ProcessIo),
    Pty(ConsoleSocket),
}

impl IoSetup {
    fn finish(self, req: StdioRequest) -> Result<ProcessIo> {
        match self {
            IoSetup::Pipes(io) => Ok(io),
            IoSetup::Pty(sock) => sock.receive(req),
        }
    }
}

fn builder(id: &str, req: StdioRequest, bundle: &Path) -> Result<(ContainerBuilder, IoSetup)> {
    let mut b = ContainerBuilder::new(id.to_string(), SyscallType::Linux)
        .with_executor(DefaultExecutor {})
        .with_root_path(STATE_ROOT)
        .map_err(ContainerError::runtime("state root"))?;
    let setup = if req.terminal {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let sock = ConsoleSocket::new(bundle.join(format!("console-{n}.sock")))?;
        b = b.with_console_socket(Some(sock.path()));
        IoSetup::Pty(sock)
    } else {
        let (io, child): (ProcessIo, ChildIo) = stdio::pipes(req)?;
        let fd = |f: Option<OwnedFd>| f.expect("pipes() fills every child end");
        b = b
            .with_stdin(fd(child.stdin))
            .with_stdout(fd(child.stdout))
            .with_stderr(fd(child.stderr));
        IoSetup::Pipes(io)
    };
    Ok((b, setup))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses() {
        let pid = Pid::from_raw(1);
        assert_eq!(exit_status(WaitStatus::Exited(pid, 3)), 3);
        assert_eq!(
            exit_status(WaitStatus::Signaled(pid, Signal::SIGKILL, false)),
            137
        );
    }
}
