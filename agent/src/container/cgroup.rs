//! cgroup v2 files of a container: statistics, resource updates, member processes.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
};

use oci_spec::runtime::LinuxResources;

use super::error::{ContainerError, Result};

pub const ROOT: &str = "/sys/fs/cgroup";

pub fn dir(cgroup_path: &str) -> PathBuf {
    Path::new(ROOT).join(cgroup_path.trim_start_matches('/'))
}

fn read(dir: &Path, file: &str) -> Option<String> {
    fs::read_to_string(dir.join(file)).ok()
}

/// `key value` lines (cpu.stat, memory.stat, memory.events).
pub fn parse_flat_keyed(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// A single value; "max" (no limit) is 0.
pub fn parse_single(text: &str) -> u64 {
    let t = text.trim();
    if t == "max" {
        0
    } else {
        t.parse().unwrap_or(0)
    }
}

#[derive(Debug, Default, PartialEq)]
pub struct IoStat {
    pub major: u32,
    pub minor: u32,
    pub rbytes: u64,
    pub wbytes: u64,
    pub rios: u64,
    pub wios: u64,
}

/// io.stat: `MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. ...`
pub fn parse_io_stat(text: &str) -> Vec<IoStat> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some((maj, min)) = words.next().and_then(|d| d.split_once(':')) else {
            continue;
        };
        let (Ok(major), Ok(minor)) = (maj.parse(), min.parse()) else {
            continue;
        };
        let mut s = IoStat {
            major,
            minor,
            ..Default::default()
        };
        for w in words {
            let Some((k, v)) = w.split_once('=') else {
                continue;
            };
            let v = v.parse().unwrap_or(0);
            match k {
                "rbytes" => s.rbytes = v,
                "wbytes" => s.wbytes = v,
                "rios" => s.rios = v,
                "wios" => s.wios = v,
                _ => {}
            }
        }
        out.push(s);
    }
    out
}

#[derive(Debug, Default)]
pub struct Stats {
    pub cpu: HashMap<String, u64>,
    pub memory_current: u64,
    pub memory_max: u64,
    pub swap_current: u64,
    pub swap_max: u64,
    pub memory_events: HashMap<String, u64>,
    pub memory_stat: HashMap<String, u64>,
    pub pids_current: u64,
    pub pids_max: u64,
    pub io: Vec<IoStat>,
}

pub fn stats(dir: &Path) -> Result<Stats> {
    if !dir.is_dir() {
        return Err(ContainerError::Precondition(format!(
            "cgroup {} does not exist",
            dir.display()
        )));
    }
    let num = |f: &str| read(dir, f).map(|t| parse_single(&t)).unwrap_or(0);
    let keyed = |f: &str| {
        read(dir, f)
            .map(|t| parse_flat_keyed(&t))
            .unwrap_or_default()
    };
    Ok(Stats {
        cpu: keyed("cpu.stat"),
        memory_current: num("memory.current"),
        memory_max: num("memory.max"),
        swap_current: num("memory.swap.current"),
        swap_max: num("memory.swap.max"),
        memory_events: keyed("memory.events"),
        memory_stat: keyed("memory.stat"),
        pids_current: num("pids.current"),
        pids_max: num("pids.max"),
        io: read(dir, "io.stat")
            .map(|t| parse_io_stat(&t))
            .unwrap_or_default(),
    })
}

/// The oom_kill counter of memory.events.
pub fn oom_kills(dir: &Path) -> u64 {
    read(dir, "memory.events")
        .map(|t| parse_flat_keyed(&t))
        .and_then(|m| m.get("oom_kill").copied())
        .unwrap_or(0)
}

/// Pids of every process in the cgroup.
pub fn pids(dir: &Path) -> Result<Vec<i32>> {
    let text = fs::read_to_string(dir.join("cgroup.procs")).map_err(ContainerError::io(
        format!("read {}/cgroup.procs", dir.display()),
    ))?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// The cgroup v2 file writes for OCI resources (the subset the shim's Update sends).
pub fn resource_writes(r: &LinuxResources) -> Vec<(&'static str, String)> {
    let mut w = Vec::new();
    if let Some(m) = r.memory() {
        if let Some(limit) = m.limit() {
            w.push((
                "memory.max",
                if limit < 0 {
                    "max".into()
                } else {
                    limit.to_string()
                },
            ));
            if let Some(swap) = m.swap() {
                // OCI swap is memory+swap; cgroup v2 swap.max is swap only.
                let v = if swap < 0 {
                    "max".into()
                } else {
                    (swap - limit).max(0).to_string()
                };
                w.push(("memory.swap.max", v));
            }
        }
        if let Some(res) = m.reservation() {
            w.push(("memory.low", res.to_string()));
        }
    }
    if let Some(c) = r.cpu() {
        if let Some(shares) = c.shares().filter(|s| *s > 0) {
            w.push(("cpu.weight", shares_to_weight(shares).to_string()));
        }
        if c.quota().is_some() || c.period().is_some() {
            let quota = c
                .quota()
                .filter(|q| *q > 0)
                .map_or("max".to_string(), |q| q.to_string());
            w.push((
                "cpu.max",
                format!("{quota} {}", c.period().unwrap_or(100_000)),
            ));
        }
        if let Some(cpus) = c.cpus() {
            w.push(("cpuset.cpus", cpus.clone()));
        }
        if let Some(mems) = c.mems() {
            w.push(("cpuset.mems", mems.clone()));
        }
    }
    if let Some(p) = r.pids() {
        let limit = p.limit();
        w.push((
            "pids.max",
            if limit <= 0 {
                "max".into()
            } else {
                limit.to_string()
            },
        ));
    }
    if let Some(weight) = r
        .block_io()
        .as_ref()
        .and_then(|b| b.weight())
        .filter(|w| *w > 0)
    {
        w.push((
            "io.weight",
            format!("default {}", blkio_to_io_weight(weight)),
        ));
    }
    w
}

/// cgroup v1 cpu shares [2, 262144] to a v2 weight [1, 10000], as crun, runc 1.3 and libcgroups
/// (used when the container is created) convert them: 1024 shares (the default) is weight 100.
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares <= 2 {
        return 1;
    }
    let l = (shares.min(262_144) as f64).log2();
    let exponent = (l * l + 125.0 * l) / 612.0 - 7.0 / 34.0;
    (10f64.powf(exponent).ceil() as u64).clamp(1, 10_000)
}

/// cgroup v1 blkio weight [10, 1000] to v2 io.weight [1, 10000], as runc converts it.
/// (libcgroups 0.7 computes this in u16 and overflows: 500 becomes 51. The agent rewrites
/// io.weight after creating a container, see `Manager::create`.)
pub fn blkio_to_io_weight(weight: u16) -> u64 {
    1 + (weight.clamp(10, 1000) as u64 - 10) * 9999 / 990
}

/// Sets the container's io weight (when the kernel offers io.weight; BFQ's io.bfq.weight takes
/// the v1 value as is, and libcgroups already wrote it).
pub fn set_io_weight(dir: &Path, weight: u16) -> Result<()> {
    if weight == 0 || dir.join("io.bfq.weight").exists() {
        return Ok(());
    }
    let v = format!("default {}", blkio_to_io_weight(weight));
    fs::write(dir.join("io.weight"), &v)
        .map_err(ContainerError::io(format!("write {v:?} to io.weight")))
}

pub fn update(dir: &Path, r: &LinuxResources) -> Result<()> {
    for (file, value) in resource_writes(r) {
        fs::write(dir.join(file), &value)
            .map_err(ContainerError::io(format!("write {value:?} to {file}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers() {
        assert_eq!(parse_single("max\n"), 0);
        assert_eq!(parse_single("1048576\n"), 1 << 20);
        let m = parse_flat_keyed("usage_usec 10\nuser_usec 7\nbogus\n");
        assert_eq!(m["usage_usec"], 10);
        assert_eq!(m.len(), 2);
        let io = parse_io_stat("254:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n");
        assert_eq!(
            io,
            vec![IoStat {
                major: 254,
                minor: 0,
                rbytes: 4096,
                wbytes: 8192,
                rios: 1,
                wios: 2
            }]
        );
    }

    #[test]
    fn shares_convert_like_libcgroups() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 100);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(512), 59);
    }

    #[test]
    fn resources_to_files() {
        let r: LinuxResources = serde_json::from_str(
            r#"{"memory":{"limit":67108864,"swap":134217728},"cpu":{"shares":1024,"quota":50000,"period":100000,"cpus":"0"},
                "pids":{"limit":64},"blockIO":{"weight":500}}"#,
        )
        .unwrap();
        let w = resource_writes(&r);
        let get = |f: &str| w.iter().find(|(k, _)| *k == f).map(|(_, v)| v.as_str());
        assert_eq!(get("memory.max"), Some("67108864"));
        assert_eq!(get("memory.swap.max"), Some("67108864"));
        assert_eq!(get("cpu.weight"), Some("100"));
        assert_eq!(get("cpu.max"), Some("50000 100000"));
        assert_eq!(get("cpuset.cpus"), Some("0"));
        assert_eq!(get("pids.max"), Some("64"));
        assert_eq!(get("io.weight"), Some("default 4950"));
    }
}
