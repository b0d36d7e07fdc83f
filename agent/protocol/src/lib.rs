//! The myvm agent API, generated at build time from `protos/agent.proto`
//! (rust-protobuf 3 messages + ttrpc client/server stubs).

/// Protobuf messages.
#[allow(warnings, clippy::all, clippy::pedantic)]
pub mod agent {
    include!(concat!(env!("OUT_DIR"), "/agent.rs"));
}

/// ttrpc client and server stubs for the `Agent` service.
#[allow(warnings, clippy::all, clippy::pedantic)]
pub mod agent_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/agent_ttrpc.rs"));
}

/// vsock port the agent listens on.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// Host vsock port the agent connects to once it serves, to tell the host it is ready (the host
/// listens on the hybrid vsock socket `<uds>_1025`). Saves the host from polling a booting guest.
pub const READY_VSOCK_PORT: u32 = 1025;

/// vsock port of the agent's stdio streams (one connection per stream; see agent.proto).
pub const STDIO_VSOCK_PORT: u32 = 1026;

/// Version of the agent API (bumped on incompatible changes to the .proto).
pub const API_VERSION: u32 = 1;
