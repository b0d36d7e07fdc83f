//! The pod's microVM as the shim sees it: booted on the first Create, shared directory for
//! rootfs and volumes, agent client, and the event loop that turns guest exits into task events.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use myvm_protocol::agent::{
    CreateSandboxRequest, GetEventsRequest, SetCpusRequest, SetMemoryRequest, SharedMount,
};

use super::{
    shared_tree::{valid_id, ContainerMounts, SharedTree, SharedTreeError},
    sizing::{self, Ask, Growth, Plan, Sizing},
};
use crate::{
    agent_client::AgentClient,
    assets::Assets,
    check::HostInfo,
    config::Config,
    host_cgroup::{HostCgroup, Limits},
    network::PodNetwork,
    port_forward::PortForward,
    vm::{ShareAccess, SharedDir, Vm, VmOptions, RUN_ROOT},
};

/// Guest mount point of the sandbox's shared directory.
pub const GUEST_SHARED: &str = "/run/myvm/shared";
/// virtio-fs tag of the shared directory.
pub const SHARED_TAG: &str = "myvmfs";
/// Guest mount point and virtio-fs tag of the volumes' directory: served by a virtiofsd of its
/// own, through which no set-user-ID file, device node or file capability can be made.
pub const GUEST_VOLUMES: &str = "/run/myvm/volumes";
pub const VOLUMES_TAG: &str = "myvmvol";

/// Parent of the VM directories of containerd namespace `ns`.
pub fn sandboxes_root(ns: &str) -> PathBuf {
    Path::new(RUN_ROOT).join("sandboxes").join(ns)
}

/// Name of sandbox `id`'s VM directory. CRI ids are 64 hex digits, too long for the VM's
/// Unix sockets (108 bytes in all), so long ids are shortened, keeping a hash of the whole.
pub fn vm_dir_name(id: &str) -> String {
    if id.len() <= 32 {
        return id.to_string();
    }
    // Stable across builds: the next shim must find a dead one's directory.
    let hash = crate::stable_hash(id.as_bytes());
    let prefix: String = id.chars().take(16).collect();
    format!("{prefix}-{hash:016x}")
}

/// Host memory a sandbox's VMM and daemons may use beyond the guest's RAM (QEMU's own memory and
/// TCG translation cache, virtiofsd, vhost-device-vsock).
pub const HOST_OVERHEAD_MIB: u64 = 384;

/// Name of sandbox `id`'s host cgroup.
pub fn host_cgroup_name(ns: &str, id: &str) -> String {
    format!("{ns}-{}", vm_dir_name(id))
}

/// Host directory shared with the guest of sandbox `id` in namespace `ns` (rootfs).
pub fn shared_dir(ns: &str, id: &str) -> PathBuf {
    Path::new(RUN_ROOT).join("shared").join(ns).join(id)
}

/// Host directory of sandbox `id`'s volumes.
pub fn volumes_dir(ns: &str, id: &str) -> PathBuf {
    Path::new(RUN_ROOT).join("volumes").join(ns).join(id)
}

pub struct Sandbox {
    pub id: String,
    /// The VM's size at boot and the most it can grow to.
    pub plan: Plan,
    /// What the pod has now (grows with its containers), and what each container asks for.
    size: Mutex<(Sizing, HashMap<String, Ask>)>,
    vm: Mutex<Option<Vm>>,
    pub agent: AgentClient,
    pub uds: PathBuf,
    host: HostSide,
    serial_log: PathBuf,
}

/// What a sandbox sets up on the host around its VM, released in one place: on any failure of
/// `Sandbox::boot` and in `Sandbox::stop`.
struct HostSide {
    shared: SharedTree,
    volumes: Option<SharedTree>,
    network: Option<PodNetwork>,
    port_forward: Option<PortForward>,
    cgroup: Option<Arc<HostCgroup>>,
}

impl HostSide {
    /// Removes the taps and redirects, the host cgroup and the shared directory.
    fn release(&self) {
        if let Some(pf) = &self.port_forward {
            pf.stop();
        }
        if let Some(n) = &self.network {
            n.teardown();
        }
        if let Some(cg) = &self.cgroup {
            cg.remove();
        }
        self.shared.remove();
        if let Some(v) = &self.volumes {
            v.remove();
        }
    }
}

impl Sandbox {
    pub fn boot(
        ns: &str,
        id: &str,
        config: &Config,
        plan: Plan,
        hostname: &str,
        netns: Option<&Path>,
    ) -> anyhow::Result<Sandbox> {
        use anyhow::Context;
        let mut assets = Assets::discover()?;
        if let Some(k) = &config.kernel {
            assets.kernel = k.clone();
        }
        if let Some(i) = &config.initrd {
            assets.initrd = i.clone();
        }
        let backend = config.backend().map_err(anyhow::Error::msg)?;
        // Whatever a dead shim of the same sandbox left behind goes first.
        cleanup_dead(ns, id, id);
        let mut host = HostSide {
            shared: SharedTree::create(&shared_dir(ns, id))?,
            volumes: None,
            network: None,
            port_forward: None,
            cgroup: None,
        };
        match SharedTree::create(&volumes_dir(ns, id)) {
            Ok(v) => host.volumes = Some(v),
            Err(e) => {
                host.release();
                return Err(e).context("the volumes' directory");
            }
        }
        let volumes_path = host.volumes.as_ref().map(|v| v.path().to_path_buf());
        // The pod's network (CRI: the netns CNI configured); none for a plain container.
        if let Some(path) = netns {
            match PodNetwork::setup(path) {
                Ok(n) => host.network = Some(n),
                Err(e) => {
                    host.release();
                    return Err(e).context("connecting the pod network");
                }
            }
        }
        // Caps and accounts the VMM and daemons: guest memory plus room for the VMM itself.
        host.cgroup = match HostCgroup::create(
            &host_cgroup_name(ns, id),
            Limits {
                memory_bytes: (plan.guest_ram_mib(plan.initial.memory_mib) + HOST_OVERHEAD_MIB)
                    << 20,
                pids: 1024,
            },
        ) {
            Ok(cg) => Some(Arc::new(cg)),
            Err(e) => {
                tracing::warn!(sandbox = id, "no host cgroup for the VM: {e}");
                None
            }
        };
        let network = host.network.as_ref();
        let opts = VmOptions {
            backend,
            vcpus: plan.initial.vcpus,
            max_vcpus: plan.ceiling.vcpus,
            memory_mib: plan.vm_memory_mib,
            balloon_mib: plan.balloon_mib(plan.initial.memory_mib),
            // The guest writes only inside the rootfs and volumes mounted below them.
            shared_dirs: vec![
                SharedDir {
                    tag: SHARED_TAG.into(),
                    path: host.shared.path().to_path_buf(),
                    access: ShareAccess::MountsOnly,
                    no_privileged_files: false,
                },
                SharedDir {
                    tag: VOLUMES_TAG.into(),
                    path: volumes_path.unwrap_or_default(),
                    access: ShareAccess::MountsOnly,
                    no_privileged_files: true,
                },
            ],
            run_root: sandboxes_root(ns),
            id: Some(vm_dir_name(id)),
            boot_timeout: Duration::from_secs(config.boot_timeout_s),
            extra_cmdline: match plan.kernel_param() {
                Some(p) => format!("{} {p}", config.kernel_params),
                None => config.kernel_params.clone(),
            },
            net: network.map(PodNetwork::devices).unwrap_or_default(),
            netns: network.map(|n| n.netns.clone()),
            host_cgroup: host.cgroup.clone(),
        };
        let vm = match Vm::boot(&opts, &assets, &HostInfo::detect()) {
            Ok(vm) => vm,
            Err(e) => {
                host.release();
                return Err(e).context("booting the sandbox VM");
            }
        };
        let agent = vm.agent().clone();
        let req = CreateSandboxRequest {
            sandbox_id: id.to_string(),
            hostname: hostname.to_string(),
            mounts: vec![
                SharedMount {
                    tag: SHARED_TAG.into(),
                    mount_point: GUEST_SHARED.into(),
                    ..Default::default()
                },
                SharedMount {
                    tag: VOLUMES_TAG.into(),
                    mount_point: GUEST_VOLUMES.into(),
                    ..Default::default()
                },
            ],
            interfaces: network
                .map(PodNetwork::guest_interfaces)
                .unwrap_or_default(),
            routes: network.map(|n| n.routes.clone()).unwrap_or_default(),
            ..Default::default()
        };
        if let Err(e) = agent.call("CreateSandbox", |c, ctx| c.create_sandbox(ctx, &req)) {
            let _ = vm.shutdown(Duration::from_secs(2));
            host.release();
            return Err(e).context("CreateSandbox");
        }
        // CRI PortForward dials localhost in the pod's netns: carried to the guest's.
        if let Some(netns) = host.network.as_ref().map(|n| n.netns.clone()) {
            match PortForward::start(&netns, vm.vsock_uds()) {
                Ok(pf) => host.port_forward = Some(pf),
                Err(e) => tracing::warn!(sandbox = id, "no port-forward: {e}"),
            }
        }
        let t = vm.timeline();
        for (step, at) in [
            ("vmm_spawned", t.vmm_spawned),
            ("kernel_started", t.kernel_started),
            ("agent_started", t.agent_started),
            ("agent_ready", t.agent_ready),
        ] {
            if let Some(at) = at {
                crate::timing::mark(id, step, at);
            }
        }
        crate::timing::mark_now(id, "sandbox_created");
        tracing::info!(
            sandbox = id,
            backend = vm.backend(),
            boot_ms = vm.boot_time().as_millis() as u64,
            "sandbox VM ready"
        );
        let serial_log = vm.serial_log().to_path_buf();
        Ok(Sandbox {
            id: id.to_string(),
            plan,
            size: Mutex::new((plan.initial, HashMap::new())),
            uds: vm.vsock_uds().to_path_buf(),
            vm: Mutex::new(Some(vm)),
            agent,
            host,
            serial_log,
        })
    }

    /// Makes room for `container_id` asking for `ask` (a new container, or an in-place resize,
    /// whose missing fields keep their values): when the pod's containers together need more
    /// than the VM gives now, the host cgroup is raised, memory is added (hot-added blocks, or a
    /// deflated balloon) and the agent brings vCPUs online. Err: the VM cannot hold it (nothing
    /// changed), or growing failed (what grew stays, and the ask is not recorded).
    pub fn fit(&self, container_id: &str, ask: Ask) -> Result<(), String> {
        let mut size = self.size.lock().unwrap_or_else(|p| p.into_inner());
        let mut asks = size.1.clone();
        // An Update may carry only some resources: the others stay as they were.
        let old = asks.get(container_id).copied().unwrap_or_default();
        let ask = Ask {
            memory_bytes: ask.memory_bytes.or(old.memory_bytes),
            cpus: ask.cpus.or(old.cpus),
        };
        asks.insert(container_id.to_string(), ask);
        let now = size.0;
        let mut next = sizing::grow(
            &self.plan,
            now,
            sizing::pod_need(self.plan.initial, asks.values()),
        )?;
        if next.memory_mib > now.memory_mib {
            // What the guest has now: hotplug adds whole blocks.
            next.memory_mib = self.grow_memory(next.memory_mib)?;
            size.0.memory_mib = next.memory_mib;
        }
        if next.vcpus > now.vcpus {
            let req = SetCpusRequest {
                online: next.vcpus,
                ..Default::default()
            };
            let r = self
                .agent
                .call("SetCpus", |c, ctx| c.set_cpus(ctx, &req))
                .map_err(|e| format!("bringing vCPUs online: {e}"))?;
            tracing::info!(
                sandbox = self.id,
                online = r.online,
                present = r.present,
                "vCPUs online"
            );
        }
        if next != now {
            tracing::info!(sandbox = self.id, ?now, ?next, "the pod's VM grew");
        }
        *size = (next, asks);
        Ok(())
    }

    /// Forgets what a removed container asked for (the VM keeps its size).
    pub fn forget(&self, container_id: &str) {
        let mut size = self.size.lock().unwrap_or_else(|p| p.into_inner());
        size.1.remove(container_id);
    }

    /// What the pod has now.
    pub fn sizing(&self) -> Sizing {
        self.size.lock().unwrap_or_else(|p| p.into_inner()).0
    }

    /// Gives the guest `memory_mib` (hot-added blocks, or a deflated balloon) after raising the
    /// host cgroup for it; returns what the guest has now.
    fn grow_memory(&self, memory_mib: u32) -> Result<u32, String> {
        let initial = self.plan.initial.memory_mib;
        // Hotplug adds whole blocks: the guest gets that much.
        let gets = match self.plan.growth {
            Growth::Hotplug => initial + (memory_mib - initial).next_multiple_of(sizing::BLOCK_MIB),
            Growth::Fixed | Growth::Balloon => memory_mib,
        };
        if let Some(cg) = &self.host.cgroup {
            let bytes = (self.plan.guest_ram_mib(gets) + HOST_OVERHEAD_MIB) << 20;
            cg.set_memory_max(bytes).map_err(|e| e.to_string())?;
        }
        match self.plan.growth {
            Growth::Fixed => Err("this pod's VM does not grow".into()),
            Growth::Hotplug => {
                let want = memory_mib - initial;
                let req = SetMemoryRequest {
                    added_mib: u64::from(want),
                    boot_mib: u64::from(self.plan.initial.memory_mib),
                    ..Default::default()
                };
                let r = self
                    .agent
                    .call("SetMemory", |c, ctx| c.set_memory(ctx, &req))
                    .map_err(|e| format!("adding memory to the guest: {e}"))?;
                if r.added_mib < u64::from(want) {
                    return Err(format!(
                        "the guest added {} MiB of memory, not the {want} MiB asked",
                        r.added_mib
                    ));
                }
                Ok(initial + r.added_mib as u32)
            }
            Growth::Balloon => self.deflate(memory_mib).map(|()| memory_mib),
        }
    }

    /// Deflates the balloon so the pod has `memory_mib`, and waits until the guest has the
    /// memory (it deflates in moments: pages come back to it without the host's help).
    fn deflate(&self, memory_mib: u32) -> Result<(), String> {
        let target = u64::from(self.plan.balloon_mib(memory_mib));
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut vm = self.vm.lock().unwrap_or_else(|p| p.into_inner());
        let vm = vm.as_mut().ok_or("the sandbox VM is gone")?;
        vm.set_balloon_mib(target)
            .map_err(|e| format!("deflating the balloon: {e}"))?;
        loop {
            let b = vm
                .balloon()
                .map_err(|e| format!("reading the balloon: {e}"))?;
            // (QMP reports bytes: a MiB of rounding.)
            if b.actual_mib <= target + 1 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the guest still holds {} MiB in its balloon after 10 s (asked for {target})",
                    b.actual_mib
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Makes the container's directories for its rootfs (in the shared directory) and its
    /// volumes (in the volumes' directory); each undoes itself on drop.
    pub fn add_container(
        &self,
        container_id: &str,
    ) -> Result<(ContainerMounts, ContainerMounts), SharedTreeError> {
        let volumes = self.host.volumes.as_ref().expect("made at boot");
        Ok((
            self.host.shared.add_container(container_id)?,
            volumes.add_container(container_id)?,
        ))
    }

    /// The container's volumes' directory, as the guest sees it.
    pub fn guest_volumes_dir(container_id: &str) -> String {
        format!("{GUEST_VOLUMES}/{container_id}")
    }

    /// The container's directory in the shared directory, as the guest sees it.
    pub fn guest_dir(container_id: &str) -> String {
        format!("{GUEST_SHARED}/{container_id}")
    }

    pub fn guest_rootfs(container_id: &str) -> String {
        format!("{}/rootfs", Self::guest_dir(container_id))
    }

    /// Long-polls the agent for events, acknowledging those up to `*ack` (handled), and returns
    /// the new ones (sequence number above `*ack`, which it advances). The agent repeats what is
    /// not acknowledged, so an answer lost on the way is not an event lost. Err means the agent
    /// (or the VM) is gone.
    pub fn next_events(&self, ack: &mut u64) -> Result<Vec<myvm_protocol::agent::Event>, String> {
        let req = GetEventsRequest {
            timeout_ms: 10_000,
            ack: *ack,
            ..Default::default()
        };
        let events = self
            .agent
            .call_with_timeout("GetEvents", Duration::from_secs(13), |c, ctx| {
                c.get_events(ctx, &req)
            })
            .map_err(|e| e.to_string())?
            .events;
        let last = *ack;
        let new: Vec<_> = events.into_iter().filter(|e| e.seq > last).collect();
        *ack = new.iter().map(|e| e.seq).max().unwrap_or(last);
        Ok(new)
    }

    /// The exit of a process the agent answered NOT_FOUND for (it exited, and its exit event
    /// did not reach us, or is still on its way): what the agent recorded, else 137 now (the
    /// agent no longer knows it at all).
    pub fn lost_exit(&self, container_id: &str, exec_id: &str) -> super::state::Exit {
        let req = myvm_protocol::agent::WaitProcessRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        // An exited process answers at once.
        match self
            .agent
            .call_with_timeout("WaitProcess", Duration::from_secs(5), |c, ctx| {
                c.wait_process(ctx, &req)
            }) {
            Ok(r) => super::state::Exit {
                status: r.exit_status as u32,
                at_ns: r.exited_at_ns,
            },
            Err(e) => {
                tracing::warn!(
                    container = container_id,
                    exec = exec_id,
                    "no exit status from the agent ({e}): reported as killed"
                );
                super::state::Exit {
                    status: 137,
                    at_ns: super::state::now_ns(),
                }
            }
        }
    }

    /// Why the VM ended: from what the guest cannot forge (the host cgroup's OOM kills, whether
    /// the VMM runs, how it exited), with the guest's console as a hint for what the guest
    /// itself ended with (a kernel panic, the guest out of memory as a whole, as opposed to one
    /// container's OOM kill, reported as TaskOOM).
    pub fn death_reason(&self) -> DeathReason {
        let vmm = match self.vm.lock().unwrap().as_mut() {
            Some(vm) => {
                if vm.is_running() {
                    VmmState::Running
                } else {
                    VmmState::Exited(vm.exit_status())
                }
            }
            None => VmmState::Exited(None),
        };
        classify_death(
            &crate::process::tail(&self.serial_log, 60),
            vmm,
            self.host.cgroup.as_ref().map_or(0, |c| c.oom_kills()),
        )
    }

    /// True while the VMM runs.
    pub fn vm_running(&self) -> bool {
        self.vm
            .lock()
            .unwrap()
            .as_mut()
            .is_some_and(|vm| vm.is_running())
    }

    /// Shuts the VM down and releases what it had on the host.
    pub fn stop(&self) {
        if let Some(vm) = self.vm.lock().unwrap().take() {
            match vm.shutdown(Duration::from_secs(5)) {
                Ok(s) => tracing::info!(sandbox = self.id, "VM exited: {s}"),
                Err(e) => tracing::warn!(sandbox = self.id, "VM shutdown: {e}"),
            }
        }
        self.host.release();
    }
}

/// Why a sandbox's VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeathReason {
    /// Short and stable: the `reason` of the SandboxError event (see events.proto).
    pub kind: &'static str,
    /// What happened, with the guest console line that says so where there is one.
    pub message: String,
}

impl std::fmt::Display for DeathReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The VMM process, as the host saw it when the VM was found dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmmState {
    Running,
    Exited(Option<std::process::ExitStatus>),
}

/// The text of a guest kernel log line after its printk time stamp (`[    1.234567] `): where
/// the kernel's own markers stand. A process name or a container's output appears elsewhere.
fn kernel_text(line: &str) -> Option<&str> {
    let (stamp, text) = line
        .trim_end_matches('\r')
        .strip_prefix('[')?
        .split_once("] ")?;
    let (secs, frac) = stamp.trim_start().split_once('.')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(secs) && digits(frac)).then_some(text)
}

/// Names why a VM ended. What decides is what the guest cannot forge: the host cgroup's OOM
/// kills, whether the VMM still runs, and whether it was killed by a signal (from the host) or
/// exited by itself (the guest reset or powered off: `panic=-1`, `reboot=t`). Only then does the
/// console say which: the kernel's panic or global OOM marker at the start of a kernel log line.
/// Console text is a hint: guest root can write anything there.
pub fn classify_death(serial_tail: &str, vmm: VmmState, host_oom_kills: u64) -> DeathReason {
    use std::os::unix::process::ExitStatusExt;
    let reason = |kind, message| DeathReason { kind, message };
    if host_oom_kills > 0 {
        return reason(
            "host-oom",
            format!(
                "the VM's host processes ran out of their host cgroup's memory \
                 (guest RAM + {HOST_OVERHEAD_MIB} MiB): {host_oom_kills} killed"
            ),
        );
    }
    let status = match vmm {
        VmmState::Running => {
            return reason("agent-unresponsive", "the agent stopped answering".into())
        }
        VmmState::Exited(status) => status,
    };
    if let Some(sig) = status.and_then(|s| s.signal()) {
        return reason("vmm-exited", format!("the VMM was killed (signal {sig})"));
    }
    let marker = |prefixes: &[&str]| {
        serial_tail
            .lines()
            .rev()
            .find(|l| kernel_text(l).is_some_and(|t| prefixes.iter().any(|p| t.starts_with(p))))
    };
    // A panic names OOM when panic_on_oom or nothing left to kill caused it; "Out of memory:
    // Killed process …" is the global OOM killer. A container's OOM under its own limit says
    // "Memory cgroup out of memory" and is no VM death.
    let oom = [
        "Out of memory: Killed process",
        "Out of memory and no killable",
    ];
    if let Some(l) = marker(&["Kernel panic - not syncing: "]) {
        let text = kernel_text(l).unwrap_or(l);
        if text.contains("Out of memory") {
            reason("guest-oom", format!("guest out of memory ({})", l.trim()))
        } else {
            reason(
                "guest-kernel-panic",
                format!("guest kernel panic ({})", l.trim()),
            )
        }
    } else if let Some(l) = marker(&oom) {
        reason("guest-oom", format!("guest out of memory ({})", l.trim()))
    } else {
        let how = status.map_or("status unknown".to_string(), |s| s.to_string());
        reason("vmm-exited", format!("the VMM exited ({how})"))
    }
}

/// Cleans up after a shim that died: what it mounted in the shared directory, the shared
/// directory, and the sandbox directories (its VM and daemons died with it through
/// PR_SET_PDEATHSIG).
pub fn cleanup_dead(ns: &str, sandbox_id: &str, container_id: &str) {
    if !valid_id(sandbox_id) || !valid_id(container_id) {
        tracing::warn!(
            sandbox_id,
            container_id,
            "not cleaning up after invalid ids"
        );
        return;
    }
    for dir in [shared_dir(ns, sandbox_id), volumes_dir(ns, sandbox_id)] {
        super::shared_tree::cleanup_dead(&dir, sandbox_id, container_id);
    }
    if sandbox_id == container_id {
        HostCgroup::existing(&host_cgroup_name(ns, sandbox_id)).remove();
        let vmdir = sandboxes_root(ns).join(vm_dir_name(sandbox_id));
        if vmdir.exists() {
            // Sockets and logs only: nothing mounted lives there.
            let _ = std::fs::remove_dir_all(&vmdir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_deaths_are_named() {
        use std::os::unix::process::ExitStatusExt;
        let exited = VmmState::Exited(Some(std::process::ExitStatus::from_raw(0)));
        let killed = VmmState::Exited(Some(std::process::ExitStatus::from_raw(9)));
        let kind =
            |tail: &str, vmm: VmmState, host_ooms: u64| classify_death(tail, vmm, host_ooms).kind;
        let panic =
            "[    1.2] foo\n[    2.000000] Kernel panic - not syncing: Attempted to kill init!\r\n";
        let r = classify_death(panic, exited, 0);
        assert_eq!(r.kind, "guest-kernel-panic");
        assert!(r.message.starts_with("guest kernel panic (["), "{r}");
        // A panic caused by OOM is an OOM of the guest as a whole.
        let oom_panic = "[ 3.1] Kernel panic - not syncing: Out of memory: compulsory panic_on_oom is enabled\n";
        assert_eq!(kind(oom_panic, exited, 0), "guest-oom");
        // The guest's global OOM killer, then the VM gone.
        let oom = "[ 9.1] Out of memory: Killed process 42 (hog)\n";
        let r = classify_death(oom, exited, 0);
        assert_eq!(r.kind, "guest-oom");
        assert!(r.message.starts_with("guest out of memory"), "{r}");
        // A container's OOM under its own limit is not the VM's death.
        let memcg = "[ 5.0] Memory cgroup out of memory: Killed process 7 (hog)\n";
        assert_eq!(kind(memcg, exited, 0), "vmm-exited");
        assert_eq!(kind("", exited, 2), "host-oom");
        assert!(classify_death("", exited, 2).message.contains("2 killed"));
        assert_eq!(kind(panic, exited, 2), "host-oom");
        assert_eq!(kind(panic, VmmState::Running, 0), "agent-unresponsive");
        assert_eq!(
            classify_death("boot ok\n", exited, 0).message,
            "the VMM exited (exit status: 0)"
        );
        // What the guest writes cannot name a VM the host killed.
        assert_eq!(kind(panic, killed, 0), "vmm-exited");
        assert!(classify_death(panic, killed, 0)
            .message
            .contains("signal 9"));
        // Forged markers, not where the kernel puts them: a process named "Kernel panic"
        // OOM-killed, a container's output, a marker without a time stamp.
        for forged in [
            "[ 5.0] Memory cgroup out of memory: Killed process 7 (Kernel panic)\n",
            "[ 5.0] Out of memory: Killed process 7 (Kernel panic - not syncing: x)\n",
            "hello Kernel panic - not syncing: x\n",
            "Kernel panic - not syncing: x\n",
            "[abc] Kernel panic - not syncing: x\n",
        ] {
            assert_ne!(kind(forged, exited, 0), "guest-kernel-panic", "{forged}");
        }
        assert_eq!(
            kind("Out of memory: Killed process 1 (x)\n", exited, 0),
            "vmm-exited"
        );
    }

    #[test]
    fn long_sandbox_ids_get_short_stable_vm_dirs() {
        assert_eq!(vm_dir_name("c1"), "c1");
        let cri = "1c3dfbd30407fd0c01db532eb31b9e3e81b205f7a82bd6e558141a04647d9a2c";
        let name = vm_dir_name(cri);
        assert_eq!(name, vm_dir_name(cri));
        assert!(
            name.starts_with("1c3dfbd30407fd0c-") && name.len() == 33,
            "{name}"
        );
        assert_ne!(name, vm_dir_name(&cri.replace('c', "d")));
        // The longest socket a VM directory holds fits in sun_path.
        let sock = sandboxes_root("k8s.io")
            .join(&name)
            .join("vsock.vhost.sock_1025");
        assert!(sock.as_os_str().len() < 100, "{}", sock.display());
    }
}
