//! The myvm agent API, generated at build time from `protos/agent.proto`
//! (rust-protobuf 3 messages + ttrpc client/server stubs), and the shim's own containerd events
//! (`protos/events.proto`).

/// Protobuf messages.
#[allow(warnings, clippy::all, clippy::pedantic)]
pub mod agent {
    include!(concat!(env!("OUT_DIR"), "/agent.rs"));
}

/// Events the shim publishes to containerd (see `protos/events.proto`).
#[allow(warnings, clippy::all, clippy::pedantic)]
pub mod events {
    include!(concat!(env!("OUT_DIR"), "/events.rs"));
}

/// containerd topic of [`events::SandboxError`].
pub const SANDBOX_ERROR_TOPIC: &str = "/myvm/sandbox/error";

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
/// 2: events carry a sequence number and are acknowledged (`GetEventsRequest.ack`).
pub const API_VERSION: u32 = 2;

/// Copies `from` to `to` until EOF with a plain read/write loop, for the stdio streams on both
/// sides. Not `std::io::copy`: between a socket and a pipe it uses splice(2), which sleeps
/// holding the pipe's lock while it waits for the socket; whoever closes the other end of that
/// pipe meanwhile (a container process exiting, `ctr` detaching) blocks in uninterruptible
/// sleep until data arrives.
pub fn copy_stream(
    from: &mut impl std::io::Read,
    to: &mut impl std::io::Write,
) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
}
