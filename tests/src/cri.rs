//! A small blocking client of containerd's CRI (the kubelet's view), over the gRPC API from the
//! `k8s-cri` crate's proto. crictl is not packaged here; this is what the CRI tests use instead.

use std::{future::Future, path::Path};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::{
    image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient, *,
};
use tonic::transport::{Channel, Endpoint, Uri};

pub use k8s_cri::v1;

pub struct Cri {
    rt: tokio::runtime::Runtime,
    pub runtime: RuntimeServiceClient<Channel>,
    pub images: ImageServiceClient<Channel>,
}

/// A pod's configuration: name, handler-independent settings, logs in `log_dir`.
pub fn pod_config(name: &str, log_dir: &Path) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}-{}", std::process::id()),
            namespace: "myvm-test".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_dir.display().to_string(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption::default()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The pod's namespace options (pid, ipc: `NamespaceMode` values), to set them.
pub fn namespace_options(config: &mut PodSandboxConfig) -> &mut NamespaceOption {
    config
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
        .namespace_options
        .get_or_insert_with(Default::default)
}

/// The container's security context, to set it.
pub fn security_context(config: &mut ContainerConfig) -> &mut LinuxContainerSecurityContext {
    config
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
}

/// A container of busybox running `cmd`, logging to `<pod log dir>/<name>.log`.
pub fn container_config(name: &str, cmd: &[&str]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: "localhost/busybox:latest".into(),
            ..Default::default()
        }),
        command: cmd.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        linux: Some(LinuxContainerConfig::default()),
        ..Default::default()
    }
}

/// `mounts` of a container: host directory `rw_dir` read-write at `/srv`, host file `ro_file`
/// read-only at `/var/run/secrets/token` (a pod's data volume and a secret).
pub fn srv_and_secret_mounts(rw_dir: &Path, ro_file: &Path) -> Vec<Mount> {
    vec![
        Mount {
            container_path: "/srv".into(),
            host_path: rw_dir.display().to_string(),
            ..Default::default()
        },
        Mount {
            container_path: "/var/run/secrets/token".into(),
            host_path: ro_file.display().to_string(),
            readonly: true,
            ..Default::default()
        },
    ]
}

/// GET http://ip:port/ from this host: the response, once the server answers (retrying until
/// `within`).
pub fn http_get(ip: &str, port: u16, within: std::time::Duration) -> String {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    let addr: std::net::SocketAddr = format!("{ip}:{port}").parse().unwrap();
    let deadline = Instant::now() + within;
    loop {
        let attempt = (|| -> std::io::Result<String> {
            let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut body = String::new();
            s.read_to_string(&mut body)?;
            Ok(body)
        })();
        match attempt {
            Ok(body) => return body,
            Err(e) if Instant::now() > deadline => panic!("GET {addr}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// A gRPC channel to containerd's socket (CRI and containerd's own services share it).
pub fn uds_channel(rt: &tokio::runtime::Runtime, socket: &Path) -> Channel {
    let path = socket.to_path_buf();
    rt.block_on(
        Endpoint::try_from("http://[::]:50051")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            })),
    )
    .expect("connecting to containerd's socket")
}

impl Cri {
    pub fn connect(socket: &Path) -> Cri {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let channel = uds_channel(&rt, socket);
        Cri {
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        }
    }

    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// RunPodSandbox with runtime handler `handler`; the pod's id.
    pub fn run_pod(&mut self, config: &PodSandboxConfig, handler: &str) -> Result<String, String> {
        let req = RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        };
        let r = self.rt.block_on(self.runtime.run_pod_sandbox(req));
        r.map(|r| r.into_inner().pod_sandbox_id)
            .map_err(|e| e.message().to_string())
    }

    /// CreateContainer + StartContainer; the container's id.
    pub fn start_container(
        &mut self,
        pod: &str,
        pod_config: &PodSandboxConfig,
        config: ContainerConfig,
    ) -> Result<String, String> {
        let req = CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: Some(pod_config.clone()),
        };
        let id = self
            .rt
            .block_on(self.runtime.create_container(req))
            .map_err(|e| e.message().to_string())?
            .into_inner()
            .container_id;
        let req = StartContainerRequest {
            container_id: id.clone(),
        };
        self.rt
            .block_on(self.runtime.start_container(req))
            .map_err(|e| e.message().to_string())?;
        Ok(id)
    }

    /// ExecSync: (exit code, stdout, stderr).
    pub fn exec_sync(&mut self, id: &str, cmd: &[&str]) -> (i32, String, String) {
        let req = ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 30,
        };
        let r = self
            .rt
            .block_on(self.runtime.exec_sync(req))
            .unwrap_or_else(|e| panic!("ExecSync {cmd:?}: {}", e.message()))
            .into_inner();
        (
            r.exit_code,
            String::from_utf8_lossy(&r.stdout).into_owned(),
            String::from_utf8_lossy(&r.stderr).into_owned(),
        )
    }

    pub fn container_status(&mut self, id: &str) -> ContainerStatus {
        let req = ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        };
        self.rt
            .block_on(self.runtime.container_status(req))
            .unwrap_or_else(|e| panic!("ContainerStatus {id}: {}", e.message()))
            .into_inner()
            .status
            .expect("a status")
    }

    pub fn pod_status(&mut self, id: &str) -> PodSandboxStatus {
        let req = PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: false,
        };
        self.rt
            .block_on(self.runtime.pod_sandbox_status(req))
            .unwrap_or_else(|e| panic!("PodSandboxStatus {id}: {}", e.message()))
            .into_inner()
            .status
            .expect("a status")
    }

    /// PortForward: the streaming URL for `ports` of pod `id`.
    pub fn port_forward(&mut self, id: &str, ports: &[i32]) -> Result<String, String> {
        let req = PortForwardRequest {
            pod_sandbox_id: id.into(),
            port: ports.to_vec(),
        };
        self.rt
            .block_on(self.runtime.port_forward(req))
            .map(|r| r.into_inner().url)
            .map_err(|e| e.message().to_string())
    }

    /// The path of pod `id`'s network namespace on the host (PodSandboxStatus, verbose).
    pub fn pod_netns(&mut self, id: &str) -> String {
        let req = PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
        };
        let info = self
            .rt
            .block_on(self.runtime.pod_sandbox_status(req))
            .unwrap_or_else(|e| panic!("PodSandboxStatus {id}: {}", e.message()))
            .into_inner()
            .info;
        let info: serde_json::Value =
            serde_json::from_str(info.get("info").expect("verbose info")).unwrap();
        info["runtimeSpec"]["linux"]["namespaces"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["type"] == "network")
            .and_then(|n| n["path"].as_str())
            .unwrap_or_else(|| panic!("no network namespace path in {info}"))
            .to_string()
    }

    /// UpdateContainerResources.
    pub fn update_resources(
        &mut self,
        id: &str,
        linux: LinuxContainerResources,
    ) -> Result<(), String> {
        let req = UpdateContainerResourcesRequest {
            container_id: id.into(),
            linux: Some(linux),
            ..Default::default()
        };
        self.rt
            .block_on(self.runtime.update_container_resources(req))
            .map(|_| ())
            .map_err(|e| e.message().to_string())
    }

    /// StopContainer with a grace period of `timeout` seconds.
    pub fn stop_container(&mut self, id: &str, timeout: i64) -> Result<(), String> {
        let req = StopContainerRequest {
            container_id: id.into(),
            timeout,
        };
        self.rt
            .block_on(self.runtime.stop_container(req))
            .map(|_| ())
            .map_err(|e| e.message().to_string())
    }

    /// ExecSync of `sh -c script`: its stdout, trimmed; panics unless it exits 0.
    pub fn sh(&mut self, id: &str, script: &str) -> String {
        let (code, out, err) = self.exec_sync(id, &["sh", "-c", script]);
        assert_eq!(code, 0, "{script:?} in {id}: {err}");
        out.trim().to_string()
    }

    /// StopPodSandbox then RemovePodSandbox.
    pub fn remove_pod(&mut self, id: &str) -> Result<(), String> {
        let stop = StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.rt
            .block_on(self.runtime.stop_pod_sandbox(stop))
            .map_err(|e| format!("StopPodSandbox: {}", e.message()))?;
        let rm = RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.rt
            .block_on(self.runtime.remove_pod_sandbox(rm))
            .map_err(|e| format!("RemovePodSandbox: {}", e.message()))?;
        Ok(())
    }
}
