//! myvm host side: hypervisor backends, hybrid vsock, the agent client and VM lifecycle.
//! Used by the `myvm` CLI and the containerd shim.

pub mod agent_client;
pub mod assets;
pub mod check;
pub mod config;
pub mod host_cgroup;
pub mod hybrid_vsock;
pub mod hypervisor;
pub mod network;
pub mod process;
pub mod shim;
pub mod timing;
pub mod vhost_user;
pub mod vm;
