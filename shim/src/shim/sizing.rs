//! How big a sandbox's VM is, decided once before it boots.
//!
//! What asks, in order: a CRI pod's resources (containerd's `io.kubernetes.cri.sandbox-memory`,
//! `-cpu-quota` and `-cpu-period` annotations on the sandbox container), or, for a container
//! that is its own sandbox (`ctr run`, no CRI), its own `linux.resources` (memory limit, CPU
//! quota and period). The VM gets the configured `memory_mib`/`vcpus` or what is asked, whichever
//! is larger, within `max_memory_mib`/`max_vcpus`; a request above them is refused at create.
//!
//! Memory: a container limited to L MiB needs a guest whose *available* memory is at least L
//! plus room for the agent and the container's own runtime work. The guest keeps part of its RAM
//! for itself, measured with `myvm boot --json --memory M` (MemTotal − MemAvailable at idle):
//! 42 MiB at M = 256, 61 at 1024, 86 at 2048, that is about 36 MiB plus 2.5 % of M (struct pages
//! and the like). So M = (L + fixed + headroom) / (1 − 2.5 %).

use std::collections::HashMap;

use crate::config::Config;

/// The guest kernel's and agent's own memory at idle: a fixed part (MiB)…
pub const GUEST_FIXED_MIB: u64 = 36;
/// …and a part per MiB of guest RAM, in thousandths.
pub const GUEST_PER_MILLE: u64 = 25;
/// Room above a container's limit for the agent's work, page cache and a process it execs.
pub const HEADROOM_MIB: u64 = 32;

/// The VM a sandbox gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizing {
    pub memory_mib: u32,
    pub vcpus: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SizingError {
    #[error(
        "{what} asks for {asked_mib} MiB of memory, which needs a {vm_mib} MiB VM; this runtime \
         allows at most {max_mib} MiB per VM (max_memory_mib in the runtime's config.toml)"
    )]
    Memory {
        what: &'static str,
        asked_mib: u64,
        vm_mib: u64,
        max_mib: u64,
    },
    #[error(
        "{what} asks for {asked} CPUs; this runtime allows at most {max} vCPUs per VM \
         (max_vcpus in the runtime's config.toml)"
    )]
    Cpus {
        what: &'static str,
        asked: u64,
        max: u32,
    },
}

/// Guest RAM (MiB) for a container limited to `limit_mib`.
pub fn vm_memory_for(limit_mib: u64) -> u64 {
    let need = limit_mib + GUEST_FIXED_MIB + HEADROOM_MIB;
    // Rounded up to 2 MiB (huge-page aligned guest RAM).
    (need * 1000).div_ceil(1000 - GUEST_PER_MILLE).div_ceil(2) * 2
}

/// The largest container limit (MiB) a VM of `vm_mib` holds: the inverse of [`vm_memory_for`].
pub fn container_room(vm_mib: u64) -> u64 {
    (vm_mib * (1000 - GUEST_PER_MILLE) / 1000).saturating_sub(GUEST_FIXED_MIB + HEADROOM_MIB)
}

/// The host's memory (MiB), the maximum when `max_memory_mib` is left at 0.
#[derive(Debug, Clone, Copy)]
pub struct Host {
    pub memory_mib: u64,
}

impl Host {
    pub fn detect() -> Host {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let kib: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(u64::MAX);
        Host {
            memory_mib: kib / 1024,
        }
    }
}

/// What a container asks for: memory limit (bytes) and CPUs (quota/period, rounded up).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Ask {
    pub memory_bytes: Option<u64>,
    pub cpus: Option<u64>,
}

fn cpus(quota: Option<i64>, period: Option<i64>) -> Option<u64> {
    match (quota, period) {
        (Some(q), Some(p)) if q > 0 && p > 0 => Some((q as u64).div_ceil(p as u64)),
        _ => None,
    }
}

/// A CRI pod's resources, from containerd's annotations on the sandbox container.
pub fn pod_ask(annotations: &HashMap<String, String>) -> Option<Ask> {
    let get = |k: &str| annotations.get(k).and_then(|v| v.parse::<i64>().ok());
    let memory = get("io.kubernetes.cri.sandbox-memory").filter(|b| *b > 0);
    let quota = get("io.kubernetes.cri.sandbox-cpu-quota");
    let period = get("io.kubernetes.cri.sandbox-cpu-period");
    let is_cri = annotations.contains_key("io.kubernetes.cri.container-type");
    is_cri.then_some(Ask {
        memory_bytes: memory.map(|b| b as u64),
        cpus: cpus(quota, period),
    })
}

/// A container's own resources (`linux.resources` of its OCI spec).
pub fn container_ask(spec: &serde_json::Value) -> Ask {
    resources_ask(&spec["linux"]["resources"])
}

/// What an OCI `linux.resources` object asks for (a spec's, or an Update's).
fn resources_ask(r: &serde_json::Value) -> Ask {
    Ask {
        memory_bytes: r["memory"]["limit"]
            .as_i64()
            .filter(|b| *b > 0)
            .map(|b| b as u64),
        cpus: cpus(r["cpu"]["quota"].as_i64(), r["cpu"]["period"].as_i64()),
    }
}

/// The VM for a sandbox: the pod's ask under CRI, else the container's own.
pub fn sizing(
    config: &Config,
    host: Host,
    annotations: &HashMap<String, String>,
    spec: &serde_json::Value,
) -> Result<Sizing, SizingError> {
    let (ask, what) = match pod_ask(annotations) {
        Some(a) => (a, "the pod"),
        None => (container_ask(spec), "the container"),
    };
    let max_mib = match config.max_memory_mib {
        0 => host.memory_mib,
        m => u64::from(m),
    };
    let max_vcpus = match config.max_vcpus {
        0 => crate::hypervisor::MAX_VCPUS,
        n => n.min(crate::hypervisor::MAX_VCPUS),
    };
    let asked_mib = ask.memory_bytes.map(|b| b.div_ceil(1 << 20));
    let vm_mib = u64::from(config.memory_mib).max(asked_mib.map_or(0, vm_memory_for));
    if vm_mib > max_mib {
        return Err(SizingError::Memory {
            what: if asked_mib.is_some() {
                what
            } else {
                "memory_mib"
            },
            asked_mib: asked_mib.unwrap_or(vm_mib),
            vm_mib,
            max_mib,
        });
    }
    let vcpus = u64::from(config.vcpus).max(ask.cpus.unwrap_or(0));
    if vcpus > u64::from(max_vcpus) {
        return Err(SizingError::Cpus {
            what: if ask.cpus.is_some() { what } else { "vcpus" },
            asked: vcpus,
            max: max_vcpus,
        });
    }
    Ok(Sizing {
        memory_mib: vm_mib as u32,
        vcpus: vcpus as u32,
    })
}

/// Refuses a container that asks for more memory than its pod's VM holds (the VM does not
/// grow yet): a clear error at create instead of a guest-wide OOM later.
pub fn check_fits(vm: Sizing, spec: &serde_json::Value) -> Result<(), String> {
    check_resources_fit(vm, &spec["linux"]["resources"])
}

/// [`check_fits`] for a container's `linux.resources` (also what an Update carries).
pub fn check_resources_fit(vm: Sizing, resources: &serde_json::Value) -> Result<(), String> {
    let Some(limit) = resources_ask(resources).memory_bytes else {
        return Ok(());
    };
    let (asked, room) = (
        limit.div_ceil(1 << 20),
        container_room(u64::from(vm.memory_mib)),
    );
    if asked > room {
        return Err(format!(
            "the container asks for {asked} MiB of memory, but its pod's VM ({} MiB) holds \
             containers of up to {room} MiB; give the pod resources that cover it (a running \
             pod's VM does not grow yet)",
            vm.memory_mib
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
