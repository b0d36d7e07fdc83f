//! The ttrpc `Agent` service.

use std::{
    collections::HashMap,
    sync::{mpsc, Arc, Mutex},
    time::Instant,
};

use anyhow::Result;
use myvm_protocol::{agent::*, agent_ttrpc, API_VERSION};
use ttrpc::TtrpcContext;

pub struct AgentService {
    started: Instant,
    ready_ns: u64,
    shutdown: Mutex<Option<mpsc::Sender<()>>>,
}

/// Starts the ttrpc server on `listen` (`vsock://-1:1024` in a VM, `unix://…` for tests).
pub fn serve(listen: &str, started: Instant, shutdown: mpsc::Sender<()>) -> Result<ttrpc::Server> {
    let service = Arc::new(AgentService {
        started,
        ready_ns: started.elapsed().as_nanos() as u64,
        shutdown: Mutex::new(Some(shutdown)),
    });
    let services: HashMap<_, _> = agent_ttrpc::create_agent(service);
    let mut server = ttrpc::Server::new()
        .bind(listen)?
        .register_service(services)
        .set_thread_count_min(2)
        .set_thread_count_max(16);
    server.start()?;
    Ok(server)
}

impl agent_ttrpc::Agent for AgentService {
    fn check(&self, _ctx: &TtrpcContext, _req: CheckRequest) -> ttrpc::Result<CheckResponse> {
        Ok(CheckResponse {
            status: check_response::Status::SERVING.into(),
            ..Default::default()
        })
    }

    fn version(&self, _ctx: &TtrpcContext, _req: VersionRequest) -> ttrpc::Result<VersionResponse> {
        Ok(VersionResponse {
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            api_version: API_VERSION,
            ..Default::default()
        })
    }

    fn get_guest_details(
        &self,
        _ctx: &TtrpcContext,
        _req: GuestDetailsRequest,
    ) -> ttrpc::Result<GuestDetailsResponse> {
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

    fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        _req: ShutdownRequest,
    ) -> ttrpc::Result<ShutdownResponse> {
        tracing::info!(
            uptime_s = self.started.elapsed().as_secs(),
            "Shutdown requested by the host"
        );
        // Reply first; the main thread ends the VM a moment later.
        if let Some(tx) = self
            .shutdown
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(50));
                let _ = tx.send(());
            });
        }
        Ok(ShutdownResponse::default())
    }
}

fn internal(e: anyhow::Error) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(ttrpc::Code::INTERNAL, format!("{e:#}")))
}
