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
//!
//! Growth ([`Plan`]): the VM boots with `memory_growth_mib` more RAM than that (within the
//! maxima) and with as many vCPUs as the host has (within `max_vcpus`), the ones above the pod's
//! offline (`maxcpus=`). The guest is held to the pod's size with `mem=` and never touches the
//! rest until the pod needs it; then the agent hot-adds 128 MiB blocks above the boot memory's
//! last block ([`Growth::Hotplug`]). A VM too big at boot for `mem=` has a balloon hold the extra
//! instead ([`Growth::Balloon`]): 97.5 % of it, the other 2.5 % being what that RAM costs the
//! guest itself (struct pages), so a grown VM offers what a VM booted at that size would. When
//! the pod's containers together ask for more (a container added, an in-place resize), the VM
//! grows and the agent brings vCPUs online ([`grow`]); beyond the ceiling the call fails with an
//! error that says so.

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

/// The host's memory (MiB), the maximum when `max_memory_mib` is left at 0, and its CPUs.
#[derive(Debug, Clone, Copy)]
pub struct Host {
    pub memory_mib: u64,
    pub cpus: u32,
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
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
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
pub fn resources_ask(r: &serde_json::Value) -> Ask {
    Ask {
        memory_bytes: r["memory"]["limit"]
            .as_i64()
            .filter(|b| *b > 0)
            .map(|b| b as u64),
        cpus: cpus(r["cpu"]["quota"].as_i64(), r["cpu"]["period"].as_i64()),
    }
}

/// The most memory (MiB) and vCPUs a VM may have.
fn maxima(config: &Config, host: Host) -> (u64, u32) {
    let max_mib = match config.max_memory_mib {
        0 => host.memory_mib,
        m => u64::from(m),
    };
    let max_vcpus = match config.max_vcpus {
        0 => crate::hypervisor::MAX_VCPUS,
        n => n.min(crate::hypervisor::MAX_VCPUS),
    };
    (max_mib, max_vcpus)
}

/// The guest's memory block (x86_64 below 64 GiB): the unit memory is hot-added in.
pub const BLOCK_MIB: u32 = 128;
/// The largest boot memory (MiB) a guest can be held to with `mem=`: `mem=` is an address
/// limit, so the RAM it keeps must lie below every backend's 32-bit MMIO gap (myvm-vmm's starts
/// at 3.25 GiB, QEMU microvm's at 3 GiB or more).
pub const HOTPLUG_MAX_BOOT_MIB: u32 = 2048;

/// How a pod's VM grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Growth {
    /// It does not (`memory_growth_mib = 0`, or no room under the maxima).
    Fixed,
    /// The guest boots with `mem=` its size and the agent hot-adds memory blocks the VM already
    /// has (probe interface): costs nothing until used.
    Hotplug,
    /// For a VM too big at boot for `mem=`: a balloon holds the extra RAM from boot (the guest
    /// inflates it while it boots, which takes time) and deflates to grow.
    Balloon,
}

/// A pod's VM: the size it starts at and the most it can grow to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// What the pod gets at boot (guest memory; vCPUs online).
    pub initial: Sizing,
    /// The most the pod can grow to (guest memory; vCPUs the VM has, the ones above the pod's
    /// offline at boot).
    pub ceiling: Sizing,
    /// Guest RAM the VM has (with hotplug, the boot memory's last block is partly unusable: the
    /// guest cannot hot-add a block it has part of).
    pub vm_memory_mib: u32,
    pub growth: Growth,
}

impl Plan {
    pub fn new(config: &Config, host: Host, asked: Sizing) -> Plan {
        let (max_mib, max_vcpus) = maxima(config, host);
        let max_mib = u32::try_from(max_mib).unwrap_or(u32::MAX);
        let vcpus = host.cpus.min(max_vcpus).max(asked.vcpus);
        let grow = config.memory_growth_mib;
        let m = asked.memory_mib;
        let boot_blocks_end = m.next_multiple_of(BLOCK_MIB);
        let (ceiling, vm, growth) = if grow == 0 {
            (m, m, Growth::Fixed)
        } else if boot_blocks_end <= HOTPLUG_MAX_BOOT_MIB {
            let room = max_mib.saturating_sub(boot_blocks_end) / BLOCK_MIB * BLOCK_MIB;
            let add = grow.next_multiple_of(BLOCK_MIB).min(room);
            (m + add, boot_blocks_end + add, Growth::Hotplug)
        } else {
            let ceiling = m.saturating_add(grow).min(max_mib).max(m);
            (ceiling, ceiling, Growth::Balloon)
        };
        let growth = if ceiling > m { growth } else { Growth::Fixed };
        Plan {
            initial: asked,
            ceiling: Sizing {
                memory_mib: ceiling,
                vcpus,
            },
            vm_memory_mib: if growth == Growth::Fixed { m } else { vm },
            growth,
        }
    }

    /// What the balloon holds for the pod to have `memory_mib` (see the module's notes).
    pub fn balloon_mib(&self, memory_mib: u32) -> u32 {
        if self.growth != Growth::Balloon {
            return 0;
        }
        let extra = u64::from(self.ceiling.memory_mib.saturating_sub(memory_mib));
        (extra * (1000 - GUEST_PER_MILLE) / 1000) as u32
    }

    /// The kernel parameter that holds the guest to its initial memory, if it grows by hotplug.
    pub fn kernel_param(&self) -> Option<String> {
        (self.growth == Growth::Hotplug).then(|| format!("mem={}M", self.initial.memory_mib))
    }

    /// The guest RAM (MiB) the guest can touch when the pod has `memory_mib`: what the host
    /// cgroup must allow the VMM beyond its own overhead.
    pub fn guest_ram_mib(&self, memory_mib: u32) -> u64 {
        match self.growth {
            Growth::Balloon => u64::from(self.ceiling.memory_mib - self.balloon_mib(memory_mib)),
            Growth::Fixed | Growth::Hotplug => u64::from(memory_mib),
        }
    }
}

/// What a pod's containers need together: guest RAM for the sum of their memory limits and the
/// sum of their CPUs, never less than what the pod started with.
pub fn pod_need<'a>(initial: Sizing, asks: impl Iterator<Item = &'a Ask>) -> Sizing {
    let (mut bytes, mut cpus, mut any_memory) = (0u64, 0u64, false);
    for a in asks {
        if let Some(b) = a.memory_bytes {
            bytes = bytes.saturating_add(b);
            any_memory = true;
        }
        cpus = cpus.saturating_add(a.cpus.unwrap_or(0));
    }
    let memory = if any_memory {
        vm_memory_for(bytes.div_ceil(1 << 20))
    } else {
        0
    };
    Sizing {
        memory_mib: memory
            .max(u64::from(initial.memory_mib))
            .min(u64::from(u32::MAX)) as u32,
        vcpus: cpus.max(u64::from(initial.vcpus)).min(u64::from(u32::MAX)) as u32,
    }
}

/// The size a pod at `now` moves to for `need`: memory grows to what is needed or the call
/// fails (the VM cannot hold it: a guest-wide OOM later is worse than an error now); vCPUs grow
/// as far as the VM has them (more CPU than vCPUs only runs slower, as under runc). Never
/// shrinks.
pub fn grow(plan: &Plan, now: Sizing, need: Sizing) -> Result<Sizing, String> {
    if need.memory_mib > plan.ceiling.memory_mib {
        return Err(format!(
            "the pod's containers together ask for memory that needs a {} MiB VM; this pod's VM \
             can grow to {} MiB (memory_growth_mib and max_memory_mib in the runtime's \
             config.toml; give the pod resources that cover its containers)",
            need.memory_mib, plan.ceiling.memory_mib
        ));
    }
    Ok(Sizing {
        memory_mib: now.memory_mib.max(need.memory_mib),
        vcpus: now.vcpus.max(need.vcpus.min(plan.ceiling.vcpus)),
    })
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
    let (max_mib, max_vcpus) = maxima(config, host);
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

#[cfg(test)]
mod tests;
