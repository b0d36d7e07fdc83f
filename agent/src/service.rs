//! The ttrpc `Agent` service: maps the API onto the guest and the container layer.

use std::{
    collections::HashMap,
    path::Path,
    sync::{mpsc, Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Result;
use myvm_protocol::{agent::*, agent_ttrpc, API_VERSION};
use ttrpc::TtrpcContext;

use crate::{
    container::{
        self,
        error::ContainerError,
        events::EventKind,
        stdio::{self, StdioRequest},
        Manager,
    },
    sandbox,
};

/// Longest long poll of GetEvents / WaitProcess (the host sets its call timeout above this).
const MAX_POLL: Duration = Duration::from_secs(30);

pub struct AgentService {
    started: Instant,
    ready_ns: u64,
    manager: Arc<Manager>,
    shutdown: Mutex<Option<mpsc::Sender<()>>>,
}

/// Starts the ttrpc server on `listen` (`vsock://-1:1024` in a VM, `unix://…` for tests).
pub fn serve(
    listen: &str,
    started: Instant,
    manager: Arc<Manager>,
    shutdown: mpsc::Sender<()>,
) -> Result<ttrpc::Server> {
    let service = Arc::new(AgentService {
        started,
        ready_ns: started.elapsed().as_nanos() as u64,
        manager,
        shutdown: Mutex::new(Some(shutdown)),
    });
    // Every method behind the peer check: ttrpc accepts connections itself, so a connection
    // from anyone but the host is closed at its first request, before anything is done for it.
    let services: HashMap<_, _> = agent_ttrpc::create_agent(service)
        .into_iter()
        .map(|(name, method)| {
            let checked: Box<dyn ttrpc::MethodHandler + Send + Sync> = Box::new(HostOnly(method));
            (name, checked)
        })
        .collect();
    let mut server = ttrpc::Server::new()
        .bind(listen)?
        .register_service(services)
        .set_thread_count_default(8)
        .set_thread_count_min(4)
        .set_thread_count_max(64);
    server.start()?;
    Ok(server)
}

/// A method of the API that serves the host only (see [`crate::peer`]).
struct HostOnly(Box<dyn ttrpc::MethodHandler + Send + Sync>);

impl ttrpc::MethodHandler for HostOnly {
    fn handler(&self, ctx: TtrpcContext, req: ttrpc::Request) -> ttrpc::Result<()> {
        if !crate::peer::admit(ctx.fd, &format!("agent API ({})", req.method)) {
            // An error ends the connection in ttrpc; it was shut down already, so the peer
            // gets no answer.
            return Err(ttrpc::Error::Others(
                "refused: only the host may call the agent".into(),
            ));
        }
        self.0.handler(ctx, req)
    }
}

type R<T> = ttrpc::Result<T>;

fn internal(e: anyhow::Error) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(ttrpc::Code::INTERNAL, format!("{e:#}")))
}

fn stdio_request(s: &Stdio) -> StdioRequest {
    StdioRequest {
        terminal: s.terminal,
        stdin: s.stdin,
        stdout: s.stdout,
        stderr: s.stderr && !s.terminal,
    }
}

fn ok<T: Default>() -> R<T> {
    Ok(T::default())
}

impl agent_ttrpc::Agent for AgentService {
    fn check(&self, _: &TtrpcContext, _: CheckRequest) -> R<CheckResponse> {
        Ok(CheckResponse {
            status: check_response::Status::SERVING.into(),
            ..Default::default()
        })
    }

    fn version(&self, _: &TtrpcContext, _: VersionRequest) -> R<VersionResponse> {
        Ok(VersionResponse {
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            api_version: API_VERSION,
            ..Default::default()
        })
    }

    fn get_guest_details(
        &self,
        _: &TtrpcContext,
        _: GuestDetailsRequest,
    ) -> R<GuestDetailsResponse> {
        let mem = crate::guest::meminfo().map_err(internal)?;
        Ok(GuestDetailsResponse {
            kernel_release: crate::guest::kernel_release(),
            kernel_version: crate::guest::kernel_version(),
            mem_total_bytes: mem.total_bytes,
            mem_available_bytes: mem.available_bytes,
            vcpus: crate::guest::online_cpus(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_ns: crate::guest::uptime_ns(),
            agent_init_ns: self.ready_ns,
            ..Default::default()
        })
    }

    fn set_cpus(&self, _: &TtrpcContext, req: SetCpusRequest) -> R<SetCpusResponse> {
        let (online, present) = crate::guest::set_online_cpus_in(
            std::path::Path::new("/sys/devices/system/cpu"),
            req.online,
        )
        .map_err(internal)?;
        tracing::info!(asked = req.online, online, present, "vCPUs online");
        Ok(SetCpusResponse {
            online,
            present,
            ..Default::default()
        })
    }

    fn set_memory(&self, _: &TtrpcContext, req: SetMemoryRequest) -> R<SetMemoryResponse> {
        let added = crate::guest::set_memory_in(
            std::path::Path::new("/sys"),
            req.boot_mib << 20,
            req.added_mib,
            crate::guest::probe_and_online,
        )
        .map_err(internal)?;
        tracing::info!(asked = req.added_mib, added, "memory hot-added");
        Ok(SetMemoryResponse {
            added_mib: added,
            ..Default::default()
        })
    }

    fn shutdown(&self, _: &TtrpcContext, _: ShutdownRequest) -> R<ShutdownResponse> {
        tracing::info!(
            uptime_s = self.started.elapsed().as_secs(),
            "Shutdown requested by the host"
        );
        // As PID 1 of the VM: nothing left running, everything written back, then the answer,
        // on which the host may stop the VMM at once. The main thread also resets the guest a
        // moment later (time for the reply to leave), for a host that waits for that.
        if std::process::id() == 1 {
            crate::init::quiesce();
        }
        if let Some(tx) = self
            .shutdown
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(10));
                let _ = tx.send(());
            });
        }
        ok()
    }

    fn create_sandbox(
        &self,
        _: &TtrpcContext,
        req: CreateSandboxRequest,
    ) -> R<CreateSandboxResponse> {
        if !req.hostname.is_empty() {
            nix::unistd::sethostname(&req.hostname)
                .map_err(|e| internal(anyhow::anyhow!("sethostname: {e}")))?;
        }
        for m in &req.mounts {
            let mp = Path::new(&m.mount_point);
            if !mp.is_absolute() {
                return Err(
                    ContainerError::Invalid(format!("mount point {mp:?} is not absolute")).into(),
                );
            }
            sandbox::mount_share(&m.tag, mp, m.readonly).map_err(internal)?;
            self.manager.add_share(mp);
        }
        crate::network::configure(&req.interfaces, &req.routes)
            .map_err(|e| internal(e.context("configuring the pod network")))?;
        sandbox::write_file("/etc/resolv.conf", &req.resolv_conf).map_err(internal)?;
        sandbox::write_file("/etc/hosts", &req.hosts).map_err(internal)?;
        self.manager.share_pid_ns.store(
            req.shared_pid_namespace,
            std::sync::atomic::Ordering::Relaxed,
        );
        tracing::info!(
            sandbox = req.sandbox_id,
            mounts = req.mounts.len(),
            "sandbox created"
        );
        ok()
    }

    fn destroy_sandbox(
        &self,
        _: &TtrpcContext,
        _: DestroySandboxRequest,
    ) -> R<DestroySandboxResponse> {
        for id in self.manager.ids() {
            let _ = self.manager.signal(&id, "", libc::SIGKILL as u32, true);
            if let Err(e) = self.manager.remove(&id) {
                tracing::warn!(container = id, "remove: {e}");
            }
        }
        for mp in self.manager.take_shares().into_iter().rev() {
            sandbox::unmount(&mp);
        }
        ok()
    }

    fn create_container(
        &self,
        _: &TtrpcContext,
        req: CreateContainerRequest,
    ) -> R<CreateContainerResponse> {
        let pid = self.manager.create(
            &req.container_id,
            &req.oci_spec,
            Path::new(&req.rootfs),
            stdio_request(req.stdio.get_or_default()),
        )?;
        Ok(CreateContainerResponse {
            pid: pid.as_raw(),
            ..Default::default()
        })
    }

    fn start_container(
        &self,
        _: &TtrpcContext,
        req: StartContainerRequest,
    ) -> R<StartContainerResponse> {
        self.manager.start(&req.container_id)?;
        ok()
    }

    fn exec_process(&self, _: &TtrpcContext, req: ExecProcessRequest) -> R<ExecProcessResponse> {
        let pid = self.manager.exec(
            &req.container_id,
            &req.exec_id,
            &req.process,
            stdio_request(req.stdio.get_or_default()),
        )?;
        Ok(ExecProcessResponse {
            pid: pid.as_raw(),
            ..Default::default()
        })
    }

    fn signal_process(
        &self,
        _: &TtrpcContext,
        req: SignalProcessRequest,
    ) -> R<SignalProcessResponse> {
        self.manager
            .signal(&req.container_id, &req.exec_id, req.signal, req.all)?;
        ok()
    }

    fn wait_process(&self, _: &TtrpcContext, req: WaitProcessRequest) -> R<WaitProcessResponse> {
        let p = self.manager.process(&req.container_id, &req.exec_id)?;
        match p.exit.wait(MAX_POLL) {
            Some((status, at)) => Ok(WaitProcessResponse {
                exit_status: status,
                exited_at_ns: at,
                ..Default::default()
            }),
            None => Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
                ttrpc::Code::DEADLINE_EXCEEDED,
                "process still running (wait again)",
            ))),
        }
    }

    fn close_stdin(&self, _: &TtrpcContext, req: CloseStdinRequest) -> R<CloseStdinResponse> {
        self.manager
            .process(&req.container_id, &req.exec_id)?
            .io
            .close_stdin();
        ok()
    }

    fn resize_tty(&self, _: &TtrpcContext, req: ResizeTtyRequest) -> R<ResizeTtyResponse> {
        let p = self.manager.process(&req.container_id, &req.exec_id)?;
        let pty = p.io.pty.lock().unwrap();
        let pty = pty
            .as_ref()
            .ok_or_else(|| ContainerError::Precondition("the process has no terminal".into()))?;
        stdio::resize(
            pty,
            req.width.min(u16::MAX as u32) as u16,
            req.height.min(u16::MAX as u32) as u16,
        )?;
        ok()
    }

    fn list_processes(
        &self,
        _: &TtrpcContext,
        req: ListProcessesRequest,
    ) -> R<ListProcessesResponse> {
        let dir = self.manager.cgroup(&req.container_id)?;
        Ok(ListProcessesResponse {
            pids: container::cgroup::pids(&dir)?,
            ..Default::default()
        })
    }

    fn stats_container(
        &self,
        _: &TtrpcContext,
        req: StatsContainerRequest,
    ) -> R<StatsContainerResponse> {
        let s = container::cgroup::stats(&self.manager.cgroup(&req.container_id)?)?;
        let cpu = |k: &str| s.cpu.get(k).copied().unwrap_or(0);
        let ev = |k: &str| s.memory_events.get(k).copied().unwrap_or(0);
        Ok(StatsContainerResponse {
            cpu: Some(CpuStats {
                usage_usec: cpu("usage_usec"),
                user_usec: cpu("user_usec"),
                system_usec: cpu("system_usec"),
                nr_periods: cpu("nr_periods"),
                nr_throttled: cpu("nr_throttled"),
                throttled_usec: cpu("throttled_usec"),
                ..Default::default()
            })
            .into(),
            memory: Some(MemoryStats {
                usage_bytes: s.memory_current,
                limit_bytes: s.memory_max,
                swap_usage_bytes: s.swap_current,
                swap_limit_bytes: s.swap_max,
                oom: ev("oom"),
                oom_kill: ev("oom_kill"),
                max: ev("max"),
                stat: s.memory_stat.clone(),
                ..Default::default()
            })
            .into(),
            pids: Some(PidsStats {
                current: s.pids_current,
                limit: s.pids_max,
                ..Default::default()
            })
            .into(),
            io: s
                .io
                .iter()
                .map(|i| IoEntry {
                    major: i.major,
                    minor: i.minor,
                    rbytes: i.rbytes,
                    wbytes: i.wbytes,
                    rios: i.rios,
                    wios: i.wios,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    fn pause_container(
        &self,
        _: &TtrpcContext,
        req: PauseContainerRequest,
    ) -> R<PauseContainerResponse> {
        self.manager.pause(&req.container_id)?;
        ok()
    }

    fn resume_container(
        &self,
        _: &TtrpcContext,
        req: ResumeContainerRequest,
    ) -> R<ResumeContainerResponse> {
        self.manager.resume(&req.container_id)?;
        ok()
    }

    fn update_container(
        &self,
        _: &TtrpcContext,
        req: UpdateContainerRequest,
    ) -> R<UpdateContainerResponse> {
        let resources: oci_spec::runtime::LinuxResources = serde_json::from_slice(&req.resources)
            .map_err(|e| {
            ContainerError::Invalid(format!("resources are not valid OCI LinuxResources: {e}"))
        })?;
        container::cgroup::update(&self.manager.cgroup(&req.container_id)?, &resources)?;
        ok()
    }

    fn remove_container(
        &self,
        _: &TtrpcContext,
        req: RemoveContainerRequest,
    ) -> R<RemoveContainerResponse> {
        self.manager.remove(&req.container_id)?;
        ok()
    }

    fn get_events(&self, _: &TtrpcContext, req: GetEventsRequest) -> R<GetEventsResponse> {
        let timeout = Duration::from_millis(req.timeout_ms as u64).min(MAX_POLL);
        let events = self
            .manager
            .events
            .take(req.ack, timeout)
            .into_iter()
            .map(|(seq, e)| {
                let mut out = Event {
                    container_id: e.container_id,
                    exec_id: e.exec_id,
                    seq,
                    ..Default::default()
                };
                match e.kind {
                    EventKind::Exited {
                        pid,
                        exit_status,
                        exited_at_ns,
                    } => out.set_exited(ProcessExited {
                        pid,
                        exit_status,
                        exited_at_ns,
                        ..Default::default()
                    }),
                    EventKind::Oom => out.set_oom(ContainerOom::default()),
                }
                out
            })
            .collect();
        Ok(GetEventsResponse {
            events,
            ..Default::default()
        })
    }
}
