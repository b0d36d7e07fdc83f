//! Host-side client of the in-guest agent: ttrpc over hybrid vsock, every call with a timeout.

use std::{
    os::fd::IntoRawFd,
    path::Path,
    time::{Duration, Instant},
};

use myvm_protocol::{agent, agent_ttrpc, AGENT_VSOCK_PORT};

use crate::hybrid_vsock::{self, HybridVsockError};

/// Default timeout of one agent call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Vsock(#[from] HybridVsockError),
    #[error("agent call {call}: {source}")]
    Call {
        call: &'static str,
        source: ttrpc::Error,
    },
    #[error("agent did not become ready within {timeout:?} (last error: {last})")]
    NotReady { timeout: Duration, last: String },
}

pub struct AgentClient {
    inner: agent_ttrpc::AgentClient,
    timeout: Duration,
}

impl AgentClient {
    /// One connection attempt: hybrid vsock handshake + ttrpc client (no call is made).
    pub fn connect(uds: &Path, handshake_timeout: Duration) -> Result<Self, AgentError> {
        let stream = hybrid_vsock::connect(uds, AGENT_VSOCK_PORT, handshake_timeout)?;
        let client =
            ttrpc::Client::new(stream.into_raw_fd()).map_err(|source| AgentError::Call {
                call: "connect",
                source,
            })?;
        Ok(AgentClient {
            inner: agent_ttrpc::AgentClient::new(client),
            timeout: CALL_TIMEOUT,
        })
    }

    /// Connects and calls `Check` until the agent answers, `alive` says to give up, or `timeout`
    /// passes. `alive` is polled between attempts (e.g. "is the VMM still running?").
    pub fn wait_ready(
        uds: &Path,
        timeout: Duration,
        mut alive: impl FnMut() -> Result<(), String>,
    ) -> Result<Self, AgentError> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no attempt made");
        while Instant::now() < deadline {
            alive().map_err(|why| AgentError::NotReady { timeout, last: why })?;
            let left = deadline.saturating_duration_since(Instant::now());
            match Self::connect(uds, left.min(Duration::from_secs(1))) {
                Ok(mut client) => {
                    client.timeout = left
                        .min(Duration::from_secs(2))
                        .max(Duration::from_millis(100));
                    match client.check() {
                        Ok(_) => {
                            client.timeout = CALL_TIMEOUT;
                            return Ok(client);
                        }
                        Err(e) => last = e.to_string(),
                    }
                }
                Err(AgentError::Vsock(e))
                    if e.is_transient() || matches!(e, HybridVsockError::Connect { .. }) =>
                {
                    last = e.to_string()
                }
                Err(e) => return Err(e),
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(AgentError::NotReady { timeout, last })
    }

    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    fn ctx(&self) -> ttrpc::context::Context {
        ttrpc::context::with_timeout(self.timeout.as_nanos() as i64)
    }

    pub fn check(&self) -> Result<agent::CheckResponse, AgentError> {
        self.inner
            .check(self.ctx(), &agent::CheckRequest::new())
            .map_err(|source| AgentError::Call {
                call: "Check",
                source,
            })
    }

    pub fn version(&self) -> Result<agent::VersionResponse, AgentError> {
        self.inner
            .version(self.ctx(), &agent::VersionRequest::new())
            .map_err(|source| AgentError::Call {
                call: "Version",
                source,
            })
    }

    pub fn guest_details(&self) -> Result<agent::GuestDetailsResponse, AgentError> {
        self.inner
            .get_guest_details(self.ctx(), &agent::GuestDetailsRequest::new())
            .map_err(|source| AgentError::Call {
                call: "GetGuestDetails",
                source,
            })
    }

    pub fn shutdown(&self) -> Result<(), AgentError> {
        self.inner
            .shutdown(self.ctx(), &agent::ShutdownRequest::new())
            .map(|_| ())
            .map_err(|source| AgentError::Call {
                call: "Shutdown",
                source,
            })
    }
}
