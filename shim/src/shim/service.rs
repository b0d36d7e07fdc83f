//! The task API: every RPC containerd sends to a shim, mapped onto the agent.

use std::{path::Path, sync::Arc};

use containerd_shim::{
    api,
    protos::{
        events::task::*,
        protobuf::{well_known_types::any::Any, Message, MessageField},
        topics::*,
    },
    Task, TtrpcContext, TtrpcResult,
};
use myvm_protocol::agent as ag;
use ttrpc::{Code, Error as TtrpcError};

use super::{
    annotations_of,
    io::{IoCopy, StdioPaths},
    metrics::to_metrics,
    mounts, rootfs,
    sandbox::Sandbox,
    sandbox_id_of,
    shared_tree::check_id,
    sizing,
    state::{now_ns, Ctr, Exit, Proc},
    Inner, Service, ANNOTATION_TYPE,
};
use crate::{
    agent_client::AgentError,
    config::{config_path_from_options, Config},
    timing,
};

fn status(code: Code, msg: impl Into<String>) -> TtrpcError {
    TtrpcError::RpcStatus(ttrpc::get_status(code, msg.into()))
}

fn not_found(what: &str) -> TtrpcError {
    status(Code::NOT_FOUND, format!("{what}: not found"))
}

/// Agent errors keep their gRPC code (NOT_FOUND, INVALID_ARGUMENT, ...) and message.
fn agent_err(e: AgentError) -> TtrpcError {
    match e {
        AgentError::Call {
            source: TtrpcError::RpcStatus(s),
            call,
        } => status(s.code(), format!("myvm agent {call}: {}", s.message())),
        other => status(Code::INTERNAL, format!("myvm: {other}")),
    }
}

/// [`agent_err`] for a call that creates or starts a process: the agent's whole error (with
/// what failed inside the container's own processes) goes to the shim's log too.
fn agent_err_logged(container: &str) -> impl FnOnce(AgentError) -> TtrpcError + '_ {
    move |e| {
        tracing::error!(container, "{e}");
        agent_err(e)
    }
}

impl Inner {
    fn sandbox(&self) -> TtrpcResult<Arc<Sandbox>> {
        self.sandbox
            .lock()
            .unwrap()
            .clone()
            .ok_or_else(|| status(Code::FAILED_PRECONDITION, "no sandbox VM"))
    }

    pub(super) fn ctr(&self, id: &str) -> TtrpcResult<Arc<Ctr>> {
        self.containers
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .ok_or_else(|| not_found(&format!("container {id}")))
    }

    fn proc(&self, id: &str, exec_id: &str) -> TtrpcResult<(Arc<Ctr>, Arc<Proc>)> {
        let c = self.ctr(id)?;
        let p = c
            .process(exec_id)
            .ok_or_else(|| not_found(&format!("process {exec_id} of {id}")))?;
        Ok((c, p))
    }

    /// Boots the sandbox VM if this shim has none yet, and starts the event loop.
    /// `spec` is the parsed OCI spec of the container that creates the sandbox.
    fn ensure_sandbox(
        self: &Arc<Self>,
        sid: &str,
        spec: &serde_json::Value,
        annotations: &std::collections::HashMap<String, String>,
        options: &MessageField<Any>,
    ) -> TtrpcResult<Arc<Sandbox>> {
        let mut guard = self.sandbox.lock().unwrap();
        if let Some(s) = guard.as_ref() {
            return Ok(s.clone());
        }
        let config = self.sandbox_config(options)?;
        let host = sizing::Host::detect();
        let sizing = sizing::sizing(&config, host, annotations, spec)
            .map_err(|e| status(Code::INVALID_ARGUMENT, format!("myvm: {e}")))?;
        let plan = sizing::Plan::new(&config, host, sizing);
        timing::mark(sid, "shim_started", self.started);
        let hostname = spec["hostname"].as_str().unwrap_or_default();
        let netns = spec_netns(spec);
        let sb = Arc::new(
            Sandbox::boot(
                &self.namespace,
                sid,
                &config,
                plan,
                hostname,
                netns.as_deref(),
            )
            .map_err(|e| status(Code::UNAVAILABLE, format!("myvm: {e:#}")))?,
        );
        *guard = Some(sb.clone());
        let me = self.clone();
        let sb2 = sb.clone();
        std::thread::Builder::new()
            .name("agent-events".into())
            .spawn(move || me.event_loop(&sb2))
            .map_err(|e| status(Code::INTERNAL, e.to_string()))?;
        Ok(sb)
    }

    /// The configuration for a new sandbox: the file the runtime options' `ConfigPath` names,
    /// else the shim's own (MYVM_CONFIG or /etc/myvm/config.toml).
    fn sandbox_config(&self, options: &MessageField<Any>) -> TtrpcResult<Config> {
        let invalid = |e: String| status(Code::INVALID_ARGUMENT, format!("myvm: {e}"));
        if let Some(o) = options.as_ref() {
            if let Some(path) = config_path_from_options(&o.type_url, &o.value).map_err(invalid)? {
                return Config::load(&path)
                    .map_err(|e| invalid(format!("runtime option ConfigPath: {e}")));
            }
        }
        self.config.clone().map_err(invalid)
    }

    /// Starts a created process in the guest (init: StartContainer; exec: ExecProcess).
    fn start_proc(&self, c: &Ctr, p: &Proc) -> TtrpcResult<u32> {
        let sb = self.sandbox()?;
        if p.exec_id.is_empty() {
            let req = ag::StartContainerRequest {
                container_id: c.id.clone(),
                ..Default::default()
            };
            sb.agent
                .call("StartContainer", |a, ctx| a.start_container(ctx, &req))
                .map_err(agent_err_logged(&c.id))?;
        } else {
            let req = ag::ExecProcessRequest {
                container_id: c.id.clone(),
                exec_id: p.exec_id.clone(),
                process: p.spec.clone().unwrap_or_default(),
                stdio: MessageField::some(p.stdio.request()),
                ..Default::default()
            };
            let r = sb
                .agent
                .call("ExecProcess", |a, ctx| a.exec_process(ctx, &req))
                .map_err(agent_err_logged(&c.id))?;
            *p.pid.lock().unwrap() = r.pid as u32;
            let io = IoCopy::attach(&sb.uds, &c.id, &p.exec_id, &p.stdio).map_err(agent_err)?;
            *p.io.lock().unwrap() = Some(Arc::new(io));
        }
        p.set_status(api::Status::RUNNING);
        Ok(p.pid())
    }

    /// Removes the container from the guest and its rootfs from the host.
    fn remove_ctr(&self, c: &Ctr) {
        if let Ok(sb) = self.sandbox() {
            let req = ag::RemoveContainerRequest {
                container_id: c.id.clone(),
                ..Default::default()
            };
            if let Err(e) = sb
                .agent
                .call("RemoveContainer", |a, ctx| a.remove_container(ctx, &req))
            {
                tracing::warn!(container = c.id, "RemoveContainer: {e}");
            }
            sb.forget(&c.id);
        }
        // Unmounts the rootfs and volumes and removes their mount points.
        c.mounts.lock().unwrap().clear();
    }
}

/// The spec's network namespace entry, if it has one (CRI leaves it out for host network pods).
fn network_namespace(spec: &serde_json::Value) -> Option<&serde_json::Value> {
    spec.pointer("/linux/namespaces")?
        .as_array()?
        .iter()
        .find(|n| n["type"] == "network")
}

/// The network namespace the spec names by path (CRI: the one CNI configured), if any.
fn spec_netns(spec: &serde_json::Value) -> Option<std::path::PathBuf> {
    network_namespace(spec)?["path"]
        .as_str()
        .filter(|p| !p.is_empty())
        .map(Into::into)
}

fn timestamp_of(
    p: &Proc,
) -> MessageField<containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp> {
    p.exit()
        .map(|e| MessageField::some(e.timestamp()))
        .unwrap_or_default()
}

impl Task for Service {
    fn create(
        &self,
        _: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let inner = &self.inner;
        if !req.checkpoint.is_empty() {
            return Err(status(
                Code::UNIMPLEMENTED,
                "myvm: restoring from a checkpoint is not supported",
            ));
        }
        if inner.containers.lock().unwrap().contains_key(&req.id) {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!("container {} already exists", req.id),
            ));
        }
        check_id(&req.id).map_err(|e| status(Code::INVALID_ARGUMENT, format!("myvm: {e}")))?;
        let bundle = Path::new(&req.bundle);
        // Read and parsed once: everything below works on this value.
        let mut spec: serde_json::Value = std::fs::read(bundle.join("config.json"))
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            .map_err(|e| {
                status(
                    Code::INVALID_ARGUMENT,
                    format!("reading {}/config.json: {e}", req.bundle),
                )
            })?;
        let annotations = annotations_of(&spec);
        if annotations.get(ANNOTATION_TYPE).map(String::as_str) == Some("sandbox")
            && network_namespace(&spec).is_none()
        {
            return Err(status(
                Code::INVALID_ARGUMENT,
                "myvm: host network pods are not supported: a pod runs in its own VM with its own network stack",
            ));
        }
        let sid = sandbox_id_of(&req.id, &annotations);
        check_id(&sid).map_err(|e| status(Code::INVALID_ARGUMENT, format!("myvm: sandbox {e}")))?;
        let sb = inner.ensure_sandbox(&sid, &spec, &annotations, &req.options)?;
        if let Err(e) = sb.fit(&req.id, sizing::container_ask(&spec)) {
            self.cleanup_empty_sandbox();
            return Err(status(Code::INVALID_ARGUMENT, format!("myvm: {e}")));
        }

        // The container's rootfs and the spec's bind mounts go into the shared directory
        // (`shared_tree`); dropping `cm` on any error below undoes them.
        let prepared = (|| -> Result<_, String> {
            let (mut root, mut volumes) = sb.add_container(&req.id).map_err(|e| e.to_string())?;
            mounts::share_bind_mounts(
                &mut spec,
                &mut volumes,
                &Sandbox::guest_volumes_dir(&req.id),
            )
            .map_err(|e| e.to_string())?;
            rootfs::mount_rootfs(&mut root, &req.rootfs, bundle).map_err(|e| e.to_string())?;
            Ok(vec![root, volumes])
        })();
        let cm = match prepared {
            Ok(cm) => cm,
            Err(e) => {
                sb.forget(&req.id);
                self.cleanup_empty_sandbox();
                return Err(status(Code::INVALID_ARGUMENT, format!("myvm: {e}")));
            }
        };
        let spec = serde_json::to_vec(&spec).expect("a JSON value serializes");
        timing::mark_now(&req.id, "rootfs_mounted");
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let creq = ag::CreateContainerRequest {
            container_id: req.id.clone(),
            oci_spec: spec,
            rootfs: Sandbox::guest_rootfs(&req.id),
            stdio: MessageField::some(stdio.request()),
            ..Default::default()
        };
        let created = sb
            .agent
            .call("CreateContainer", |a, ctx| a.create_container(ctx, &creq))
            .map_err(agent_err_logged(&req.id));
        let pid = match created {
            Ok(r) => r.pid as u32,
            Err(e) => {
                drop(cm);
                sb.forget(&req.id);
                self.cleanup_empty_sandbox();
                return Err(e);
            }
        };
        timing::mark_now(&req.id, "container_created");
        let init = Arc::new(Proc::new("", stdio.clone(), None));
        *init.pid.lock().unwrap() = pid;
        let ctr = Arc::new(Ctr {
            id: req.id.clone(),
            bundle: req.bundle.clone(),
            mounts: std::sync::Mutex::new(cm),
            init: init.clone(),
            execs: Default::default(),
        });
        match IoCopy::attach(&sb.uds, &req.id, "", &stdio) {
            Ok(io) => *init.io.lock().unwrap() = Some(Arc::new(io)),
            Err(e) => {
                inner.remove_ctr(&ctr);
                self.cleanup_empty_sandbox();
                return Err(agent_err(e));
            }
        }
        inner.containers.lock().unwrap().insert(req.id.clone(), ctr);
        inner.publish(
            TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(TaskIO {
                    stdin: req.stdin,
                    stdout: req.stdout,
                    stderr: req.stderr,
                    terminal: req.terminal,
                    ..Default::default()
                }),
                pid,
                ..Default::default()
            }),
        );
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn start(&self, _: &TtrpcContext, req: api::StartRequest) -> TtrpcResult<api::StartResponse> {
        let (c, p) = self.inner.proc(&req.id, &req.exec_id)?;
        let pid = self.inner.start_proc(&c, &p)?;
        if req.exec_id.is_empty() {
            timing::mark_now(&c.id, "container_started");
            self.inner.publish(
                TASK_START_EVENT_TOPIC,
                Box::new(TaskStart {
                    container_id: c.id.clone(),
                    pid,
                    ..Default::default()
                }),
            );
        } else {
            self.inner.publish(
                TASK_EXEC_STARTED_EVENT_TOPIC,
                Box::new(TaskExecStarted {
                    container_id: c.id.clone(),
                    exec_id: req.exec_id,
                    pid,
                    ..Default::default()
                }),
            );
        }
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn delete(
        &self,
        _: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let (c, p) = self.inner.proc(&req.id, &req.exec_id)?;
        if p.exit().is_none() && p.status() != api::Status::CREATED {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!("process {} of {} is still running", req.exec_id, req.id),
            ));
        }
        let exit = p.exit().unwrap_or(Exit {
            status: 0,
            at_ns: now_ns(),
        });
        if req.exec_id.is_empty() {
            self.inner.remove_ctr(&c);
            self.inner.containers.lock().unwrap().remove(&req.id);
            self.inner.publish(
                TASK_DELETE_EVENT_TOPIC,
                Box::new(TaskDelete {
                    container_id: c.id.clone(),
                    pid: p.pid(),
                    exit_status: exit.status,
                    exited_at: MessageField::some(exit.timestamp()),
                    id: c.id.clone(),
                    ..Default::default()
                }),
            );
        } else {
            c.execs.lock().unwrap().remove(&req.exec_id);
        }
        Ok(api::DeleteResponse {
            pid: p.pid(),
            exit_status: exit.status,
            exited_at: MessageField::some(exit.timestamp()),
            ..Default::default()
        })
    }

    fn exec(&self, _: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        let c = self.inner.ctr(&req.id)?;
        if c.init.exit().is_some() {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!("container {} is not running", req.id),
            ));
        }
        let mut execs = c.execs.lock().unwrap();
        if execs.contains_key(&req.exec_id) {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!("exec {} already exists", req.exec_id),
            ));
        }
        let spec = req
            .spec
            .as_ref()
            .map(|a| a.value.clone())
            .unwrap_or_default();
        let stdio = StdioPaths {
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
            terminal: req.terminal,
        };
        execs.insert(
            req.exec_id.clone(),
            Arc::new(Proc::new(&req.exec_id, stdio, Some(spec))),
        );
        drop(execs);
        self.inner.publish(
            TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(TaskExecAdded {
                container_id: req.id,
                exec_id: req.exec_id,
                ..Default::default()
            }),
        );
        Ok(api::Empty::new())
    }

    fn resize_pty(&self, _: &TtrpcContext, req: api::ResizePtyRequest) -> TtrpcResult<api::Empty> {
        let sb = self.inner.sandbox()?;
        let r = ag::ResizeTtyRequest {
            container_id: req.id,
            exec_id: req.exec_id,
            width: req.width,
            height: req.height,
            ..Default::default()
        };
        sb.agent
            .call("ResizeTty", |a, ctx| a.resize_tty(ctx, &r))
            .map_err(agent_err)?;
        Ok(api::Empty::new())
    }

    fn close_io(&self, _: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        let (_, p) = self.inner.proc(&req.id, &req.exec_id)?;
        if let Some(io) = p.io.lock().unwrap().as_ref() {
            io.close_stdin();
        }
        Ok(api::Empty::new())
    }

    fn state(&self, _: &TtrpcContext, req: api::StateRequest) -> TtrpcResult<api::StateResponse> {
        let (c, p) = self.inner.proc(&req.id, &req.exec_id)?;
        Ok(api::StateResponse {
            id: req.id,
            bundle: c.bundle.clone(),
            pid: p.pid(),
            status: p.status().into(),
            stdin: p.stdio.stdin.clone(),
            stdout: p.stdio.stdout.clone(),
            stderr: p.stdio.stderr.clone(),
            terminal: p.stdio.terminal,
            exit_status: p.exit().map_or(0, |e| e.status),
            exited_at: timestamp_of(&p),
            exec_id: req.exec_id,
            ..Default::default()
        })
    }

    fn pids(&self, _: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let sb = self.inner.sandbox()?;
        self.inner.ctr(&req.id)?;
        let r = ag::ListProcessesRequest {
            container_id: req.id,
            ..Default::default()
        };
        let pids = sb
            .agent
            .call("ListProcesses", |a, ctx| a.list_processes(ctx, &r))
            .map_err(agent_err)?;
        Ok(api::PidsResponse {
            processes: pids
                .pids
                .into_iter()
                .map(|pid| containerd_shim::protos::types::task::ProcessInfo {
                    pid: pid as u32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    fn kill(&self, _: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let (c, p) = self.inner.proc(&req.id, &req.exec_id)?;
        if p.exit().is_some() {
            return Err(not_found(&format!(
                "process {} of {} (already exited)",
                req.exec_id, req.id
            )));
        }
        let sb = self.inner.sandbox()?;
        let r = ag::SignalProcessRequest {
            container_id: req.id,
            exec_id: req.exec_id,
            signal: req.signal,
            all: req.all,
            ..Default::default()
        };
        match sb
            .agent
            .call("SignalProcess", |a, ctx| a.signal_process(ctx, &r))
        {
            // The agent has no such process running: it exited and we missed the event (or it
            // is on its way). Recorded now, so that the task ends (and `delete -f` does not wait
            // for an exit that never comes).
            Err(e)
                if e.is_status(Code::NOT_FOUND)
                    && (p.exec_id.is_empty() || p.status() != api::Status::CREATED) =>
            {
                let exit = sb.lost_exit(&c.id, &p.exec_id);
                self.inner.exited(&c, &p, exit);
            }
            other => {
                other.map_err(agent_err)?;
            }
        }
        Ok(api::Empty::new())
    }

    fn wait(&self, _: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let (_, p) = self.inner.proc(&req.id, &req.exec_id)?;
        let exit = p.wait();
        Ok(api::WaitResponse {
            exit_status: exit.status,
            exited_at: MessageField::some(exit.timestamp()),
            ..Default::default()
        })
    }

    fn pause(&self, _: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        let c = self.inner.ctr(&req.id)?;
        let r = ag::PauseContainerRequest {
            container_id: req.id.clone(),
            ..Default::default()
        };
        self.inner
            .sandbox()?
            .agent
            .call("PauseContainer", |a, ctx| a.pause_container(ctx, &r))
            .map_err(agent_err)?;
        c.init.set_status(api::Status::PAUSED);
        self.inner.publish(
            TASK_PAUSED_EVENT_TOPIC,
            Box::new(TaskPaused {
                container_id: req.id,
                ..Default::default()
            }),
        );
        Ok(api::Empty::new())
    }

    fn resume(&self, _: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        let c = self.inner.ctr(&req.id)?;
        let r = ag::ResumeContainerRequest {
            container_id: req.id.clone(),
            ..Default::default()
        };
        self.inner
            .sandbox()?
            .agent
            .call("ResumeContainer", |a, ctx| a.resume_container(ctx, &r))
            .map_err(agent_err)?;
        c.init.set_status(api::Status::RUNNING);
        self.inner.publish(
            TASK_RESUMED_EVENT_TOPIC,
            Box::new(TaskResumed {
                container_id: req.id,
                ..Default::default()
            }),
        );
        Ok(api::Empty::new())
    }

    fn stats(&self, _: &TtrpcContext, req: api::StatsRequest) -> TtrpcResult<api::StatsResponse> {
        self.inner.ctr(&req.id)?;
        let r = ag::StatsContainerRequest {
            container_id: req.id,
            ..Default::default()
        };
        let s = self
            .inner
            .sandbox()?
            .agent
            .call("StatsContainer", |a, ctx| a.stats_container(ctx, &r))
            .map_err(agent_err)?;
        let metrics = to_metrics(&s);
        let any = Any {
            type_url: "io.containerd.cgroups.v2.Metrics".into(),
            value: metrics
                .write_to_bytes()
                .map_err(|e| status(Code::INTERNAL, e.to_string()))?,
            ..Default::default()
        };
        Ok(api::StatsResponse {
            stats: MessageField::some(any),
            ..Default::default()
        })
    }

    fn update(&self, _: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        self.inner.ctr(&req.id)?;
        let resources = req
            .resources
            .as_ref()
            .map(|a| a.value.clone())
            .unwrap_or_default();
        // containerd sends the new `linux.resources` as JSON: the VM grows for it first, or
        // the call is refused here (not accepted into a guest-wide OOM).
        let sb = self.inner.sandbox()?;
        if let Ok(new) = serde_json::from_slice::<serde_json::Value>(&resources) {
            sb.fit(&req.id, sizing::resources_ask(&new))
                .map_err(|e| status(Code::INVALID_ARGUMENT, format!("myvm: {e}")))?;
        }
        let r = ag::UpdateContainerRequest {
            container_id: req.id,
            resources,
            ..Default::default()
        };
        sb.agent
            .call("UpdateContainer", |a, ctx| a.update_container(ctx, &r))
            .map_err(agent_err)?;
        Ok(api::Empty::new())
    }

    fn checkpoint(
        &self,
        _: &TtrpcContext,
        _: api::CheckpointTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        Err(status(
            Code::UNIMPLEMENTED,
            "myvm: checkpoint is not supported (the container runs in a microVM)",
        ))
    }

    fn connect(
        &self,
        _: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self.inner.ctr(&req.id).map(|c| c.init.pid()).unwrap_or(0);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: format!("myvm {}", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        })
    }

    fn shutdown(&self, _: &TtrpcContext, _: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        if !self.inner.containers.lock().unwrap().is_empty() {
            return Ok(api::Empty::new());
        }
        if let Some(sb) = self.inner.sandbox.lock().unwrap().take() {
            sb.stop();
        }
        // The library removes the socket only if it can still read the bundle's `address` file,
        // which containerd may already have deleted: remove it here (the listener stays open).
        if let Some(path) = self.inner.socket.strip_prefix("unix://") {
            let _ = std::fs::remove_file(path);
        }
        self.inner.exit.signal();
        Ok(api::Empty::new())
    }
}

impl Service {
    /// After a failed first Create, the VM has no reason to stay.
    fn cleanup_empty_sandbox(&self) {
        if self.inner.containers.lock().unwrap().is_empty() {
            if let Some(sb) = self.inner.sandbox.lock().unwrap().take() {
                sb.stop();
            }
        }
    }
}
