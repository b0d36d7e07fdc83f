//! Host-side client of the in-guest agent: ttrpc over hybrid vsock, every call with a timeout.

use std::{
    io::{Read, Write},
    os::{fd::IntoRawFd, unix::net::UnixStream},
    path::Path,
    time::{Duration, Instant},
};

use myvm_protocol::{agent, agent_ttrpc, AGENT_VSOCK_PORT, STDIO_VSOCK_PORT};

use crate::hybrid_vsock::{self, HybridVsockError};

/// Default timeout of one agent call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("attaching {stream} of {container}/{exec}: {reason}")]
    Stdio {
        container: String,
        exec: String,
        stream: &'static str,
        reason: String,
    },
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

impl AgentError {
    /// The agent's answer was this gRPC status code (NOT_FOUND, …).
    pub fn is_status(&self, code: ttrpc::Code) -> bool {
        matches!(self, AgentError::Call { source: ttrpc::Error::RpcStatus(s), .. } if s.code() == code)
    }
}

#[derive(Clone)]
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

    /// Any agent call, with this client's timeout: `agent.call("StartContainer", |c, ctx|
    /// c.start_container(ctx, &req))`.
    pub fn call<T>(
        &self,
        name: &'static str,
        f: impl FnOnce(&agent_ttrpc::AgentClient, ttrpc::context::Context) -> ttrpc::Result<T>,
    ) -> Result<T, AgentError> {
        f(&self.inner, self.ctx()).map_err(|source| AgentError::Call { call: name, source })
    }

    /// Like [`call`](Self::call) with an explicit timeout (long polls).
    pub fn call_with_timeout<T>(
        &self,
        name: &'static str,
        timeout: Duration,
        f: impl FnOnce(&agent_ttrpc::AgentClient, ttrpc::context::Context) -> ttrpc::Result<T>,
    ) -> Result<T, AgentError> {
        let ctx = ttrpc::context::with_timeout(timeout.as_nanos() as i64);
        f(&self.inner, ctx).map_err(|source| AgentError::Call { call: name, source })
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

/// One stdio stream of a process in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdioStream {
    Stdin,
    Stdout,
    Stderr,
}

impl StdioStream {
    pub fn as_str(self) -> &'static str {
        match self {
            StdioStream::Stdin => "stdin",
            StdioStream::Stdout => "stdout",
            StdioStream::Stderr => "stderr",
        }
    }
}

/// Opens a stdio stream of process (`container`, `exec`; "" = init) through the hybrid vsock
/// socket `uds` (see the stdio protocol in agent.proto). For stdin, write and then
/// `shutdown(Write)` for EOF; for output, read to EOF.
pub fn open_stdio(
    uds: &Path,
    container: &str,
    exec: &str,
    stream: StdioStream,
    timeout: Duration,
) -> Result<UnixStream, AgentError> {
    let err = |reason: String| AgentError::Stdio {
        container: container.to_string(),
        exec: exec.to_string(),
        stream: stream.as_str(),
        reason,
    };
    let mut conn = hybrid_vsock::connect(uds, STDIO_VSOCK_PORT, timeout)?;
    let exec_word = if exec.is_empty() { "-" } else { exec };
    conn.set_read_timeout(Some(timeout))
        .map_err(|e| err(e.to_string()))?;
    conn.write_all(format!("STDIO {container} {exec_word} {}\n", stream.as_str()).as_bytes())
        .map_err(|e| err(e.to_string()))?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 1024 {
        match conn.read(&mut byte) {
            Ok(0) => return Err(err("the agent closed the stream".into())),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => line.push(byte[0]),
            Err(e) => return Err(err(e.to_string())),
        }
    }
    let line = String::from_utf8_lossy(&line);
    if line != "OK" {
        return Err(err(line.strip_prefix("ERR ").unwrap_or(&line).to_string()));
    }
    conn.set_read_timeout(None)
        .map_err(|e| err(e.to_string()))?;
    Ok(conn)
}
