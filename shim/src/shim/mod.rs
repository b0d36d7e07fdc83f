//! `containerd-shim-myvm-v2`: containerd's task API v2 (containerd-shim 0.11, sync) on top of a
//! myvm sandbox. One shim per pod: a CRI sandbox boots the VM, the pod's containers join it
//! through the same shim (containerd is given the same address); a plain `ctr run` container is
//! its own sandbox.

mod events;
pub mod io;
pub mod metrics;
pub mod mounts;
pub mod rootfs;
pub mod sandbox;
mod service;
pub mod shared_tree;
pub mod sizing;
pub mod state;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use containerd_shim::{
    self as shim, protos::protobuf::MessageDyn, synchronous::publisher::RemotePublisher,
    Config as ShimConfig, DeleteResponse, ExitSignal, Flags,
};

use self::{sandbox::Sandbox, state::Ctr};
use crate::config::Config;

pub const RUNTIME_ID: &str = "io.containerd.myvm.v2";

/// CRI annotations that place a container in a pod.
pub const ANNOTATION_TYPE: &str = "io.kubernetes.cri.container-type";
pub const ANNOTATION_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// The sandbox a bundle's container belongs to: its CRI pod, or itself.
pub fn sandbox_id_of(container_id: &str, annotations: &HashMap<String, String>) -> String {
    match (
        annotations.get(ANNOTATION_TYPE).map(String::as_str),
        annotations.get(ANNOTATION_SANDBOX_ID),
    ) {
        (Some("container"), Some(sid)) if !sid.is_empty() => sid.clone(),
        _ => container_id.to_string(),
    }
}

/// The annotations of the bundle's `config.json` (none if it cannot be read).
pub fn read_annotations(bundle: &Path) -> HashMap<String, String> {
    std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .map(|spec| annotations_of(&spec))
        .unwrap_or_default()
}

/// The annotations of a parsed OCI spec.
pub fn annotations_of(spec: &serde_json::Value) -> HashMap<String, String> {
    spec.get("annotations")
        .cloned()
        .and_then(|a| serde_json::from_value(a).ok())
        .unwrap_or_default()
}

pub struct Inner {
    pub namespace: String,
    pub id: String,
    /// Our ttrpc socket (`unix:///run/containerd/s/<hash>`), removed when the shim shuts down.
    pub socket: String,
    pub exit: Arc<ExitSignal>,
    pub publisher: Mutex<Option<RemotePublisher>>,
    pub sandbox: Mutex<Option<Arc<Sandbox>>>,
    pub containers: Mutex<HashMap<String, Arc<Ctr>>>,
    /// The configuration from MYVM_CONFIG or the default path, or why it could not be loaded
    /// (reported by Create unless the task's runtime options name another file).
    pub config: Result<Config, String>,
    /// When this shim process started serving (the first step of a start's timeline).
    pub started: std::time::SystemTime,
}

impl Inner {
    pub fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Some(p) = self.publisher.lock().unwrap().as_ref() {
            if let Err(e) = p.publish(Default::default(), topic, &self.namespace, event) {
                tracing::warn!(topic, "publishing event: {e}");
            }
        }
    }
}

#[derive(Clone)]
pub struct Service {
    pub inner: Arc<Inner>,
}

/// Removes the socket named in the bundle's `address` file if no shim serves it any more (the
/// shim was killed). A live pod shim keeps its socket: `delete` also runs for one failed
/// container of a running pod.
fn remove_stale_socket() {
    let Ok(address) = std::fs::read_to_string("address") else {
        return;
    };
    let Some(path) = address.trim().strip_prefix("unix://") else {
        return;
    };
    if let Err(e) = std::os::unix::net::UnixStream::connect(path) {
        if e.kind() == std::io::ErrorKind::ConnectionRefused {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The shim library's settings. They must be passed to `run`: the library installs its
/// SIGCHLD reaper before `Shim::new` sees the config, and that reaper steals the exit status
/// of every child we wait for ourselves (QEMU, the daemons, `ip`/`tc`: ECHILD at random).
pub fn shim_config() -> ShimConfig {
    ShimConfig {
        no_reaper: true,
        no_sub_reaper: true,
        ..Default::default()
    }
}

fn config_path() -> PathBuf {
    std::env::var_os("MYVM_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(crate::config::DEFAULT_PATH))
}

impl shim::Shim for Service {
    type T = Service;

    fn new(_runtime_id: &str, args: &Flags, config: &mut ShimConfig) -> Self {
        // We wait for our own children; `shim_config` already turned the library's reaper off.
        debug_assert!(config.no_reaper && config.no_sub_reaper);
        let cfg = Config::load(&config_path()).map_err(|e| e.to_string());
        if let Ok(c) = &cfg {
            config.default_log_level = c.log_level.clone();
        }
        Service {
            inner: Arc::new(Inner {
                namespace: args.namespace.clone(),
                id: args.id.clone(),
                socket: args.socket.clone(),
                exit: Arc::new(ExitSignal::default()),
                publisher: Mutex::new(None),
                sandbox: Mutex::new(None),
                containers: Mutex::new(HashMap::new()),
                config: cfg,
                started: std::time::SystemTime::now(),
            }),
        }
    }

    fn start_shim(&mut self, opts: shim::StartOpts) -> Result<String, shim::Error> {
        let bundle = std::env::current_dir().map_err(|e| shim::Error::Other(e.to_string()))?;
        let grouping = sandbox_id_of(&opts.id, &read_annotations(&bundle));
        let (_pid, address) = shim::spawn(opts, &grouping, Vec::new())?;
        // The bundle's `address` file is how containerd finds a running shim again after a
        // restart (without it, it deems the shim dead and deletes the task), and how the
        // library finds the socket to remove. The shim writes it, as runc's shim does.
        containerd_shim::util::write_address(&address)?;
        Ok(address)
    }

    fn delete_shim(&mut self) -> Result<DeleteResponse, shim::Error> {
        let bundle = std::env::current_dir().unwrap_or_default();
        let sid = sandbox_id_of(&self.inner.id, &read_annotations(&bundle));
        sandbox::cleanup_dead(&self.inner.namespace, &sid, &self.inner.id);
        remove_stale_socket();
        let mut resp = DeleteResponse::new();
        resp.exit_status = 137;
        resp.set_exited_at(
            state::Exit {
                status: 137,
                at_ns: state::now_ns(),
            }
            .timestamp(),
        );
        Ok(resp)
    }

    fn wait(&mut self) {
        self.inner.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        *self.inner.publisher.lock().unwrap() = Some(publisher);
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_group_their_containers() {
        let mut a = HashMap::new();
        assert_eq!(sandbox_id_of("c1", &a), "c1");
        a.insert(ANNOTATION_TYPE.to_string(), "sandbox".to_string());
        a.insert(ANNOTATION_SANDBOX_ID.to_string(), "pod1".to_string());
        assert_eq!(sandbox_id_of("pod1", &a), "pod1");
        a.insert(ANNOTATION_TYPE.to_string(), "container".to_string());
        assert_eq!(sandbox_id_of("c2", &a), "pod1");
    }
}
