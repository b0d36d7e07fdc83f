//! Container statistics: the agent's cgroup v2 numbers in containerd's cgroups v2 `Metrics`
//! type (what `ctr task metrics` and the kubelet's stats read).

use containerd_shim::protos::{
    cgroups_v2::metrics::{CPUStat, IOEntry, IOStat, MemoryEvents, MemoryStat, Metrics, PidsStat},
    protobuf::MessageField,
};
use myvm_protocol::agent as ag;

/// Converts the agent's stats reply (untrusted guest data: plain numbers, copied as they are).
pub fn to_metrics(s: &ag::StatsContainerResponse) -> Metrics {
    let stat = |k: &str| s.memory.stat.get(k).copied().unwrap_or(0);
    Metrics {
        pids: MessageField::some(PidsStat {
            current: s.pids.current,
            limit: s.pids.limit,
            ..Default::default()
        }),
        cpu: MessageField::some(CPUStat {
            usage_usec: s.cpu.usage_usec,
            user_usec: s.cpu.user_usec,
            system_usec: s.cpu.system_usec,
            nr_periods: s.cpu.nr_periods,
            nr_throttled: s.cpu.nr_throttled,
            throttled_usec: s.cpu.throttled_usec,
            ..Default::default()
        }),
        memory: MessageField::some(MemoryStat {
            anon: stat("anon"),
            file: stat("file"),
            kernel_stack: stat("kernel_stack"),
            slab: stat("slab"),
            sock: stat("sock"),
            shmem: stat("shmem"),
            file_mapped: stat("file_mapped"),
            file_dirty: stat("file_dirty"),
            inactive_anon: stat("inactive_anon"),
            active_anon: stat("active_anon"),
            inactive_file: stat("inactive_file"),
            active_file: stat("active_file"),
            unevictable: stat("unevictable"),
            pgfault: stat("pgfault"),
            pgmajfault: stat("pgmajfault"),
            usage: s.memory.usage_bytes,
            usage_limit: s.memory.limit_bytes,
            swap_usage: s.memory.swap_usage_bytes,
            swap_limit: s.memory.swap_limit_bytes,
            ..Default::default()
        }),
        memory_events: MessageField::some(MemoryEvents {
            oom: s.memory.oom,
            oom_kill: s.memory.oom_kill,
            max: s.memory.max,
            ..Default::default()
        }),
        io: MessageField::some(IOStat {
            usage: s
                .io
                .iter()
                .map(|i| IOEntry {
                    major: i.major as u64,
                    minor: i.minor as u64,
                    rbytes: i.rbytes,
                    wbytes: i.wbytes,
                    rios: i.rios,
                    wios: i.wios,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}
