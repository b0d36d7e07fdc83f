//! Where the time of a start goes: each component step is logged once, with its wall-clock time,
//! as `myvm timing id=<sandbox or container> step=<step> epoch_us=<µs since the epoch>`. The
//! shim's log goes to containerd's log, so one grep over it gives the whole timeline of a start
//! (`make bench` does that). Steps, in order:
//!
//! | step | logged when |
//! |---|---|
//! | `shim_started` | the shim process starts serving (after containerd exec'd it) |
//! | `vmm_spawned` | the VMM process (QEMU or myvm-vmm) is running |
//! | `kernel_started` | the guest kernel's first instruction (agent's READY less guest uptime) |
//! | `agent_started` | the agent (PID 1) starts |
//! | `agent_ready` | the agent announced itself on the READY vsock port |
//! | `sandbox_created` | `CreateSandbox` returned (shares mounted, network configured) |
//! | `rootfs_mounted` | the container's rootfs and volumes are mounted in the shared directory |
//! | `container_created` | `CreateContainer` returned |
//! | `container_started` | `StartContainer` returned |
//! | `exit_reported` | the container's exit was published to containerd |

use std::time::{SystemTime, UNIX_EPOCH};

/// The log line's fixed part, for whoever parses it.
pub const MARKER: &str = "myvm timing";

pub fn mark(id: &str, step: &str, at: SystemTime) {
    let us = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros());
    tracing::info!("{MARKER} id={id} step={step} epoch_us={us}");
}

pub fn mark_now(id: &str, step: &str) {
    mark(id, step, SystemTime::now());
}
