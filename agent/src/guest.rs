//! What the guest is: kernel, memory, vCPUs.

use std::fs;

use anyhow::{Context, Result};

#[derive(Debug, Default, PartialEq)]
pub struct MemInfo {
    pub total_bytes: u64,
    pub available_bytes: u64,
}

/// Parses `/proc/meminfo` text (values are in kB).
pub fn parse_meminfo(text: &str) -> MemInfo {
    let mut info = MemInfo::default();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let (Some(key), Some(value)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Ok(kb) = value.parse::<u64>() else {
            continue;
        };
        match key {
            "MemTotal:" => info.total_bytes = kb * 1024,
            "MemAvailable:" => info.available_bytes = kb * 1024,
            _ => {}
        }
    }
    info
}

pub fn meminfo() -> Result<MemInfo> {
    Ok(parse_meminfo(
        &fs::read_to_string("/proc/meminfo").context("read /proc/meminfo")?,
    ))
}

pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

pub fn kernel_version() -> String {
    fs::read_to_string("/proc/version")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub fn online_cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

/// The CPUs of a sysfs CPU list (`0-3,5`); None if it does not parse.
pub fn parse_cpu_list(s: &str) -> Option<Vec<u32>> {
    let mut cpus = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (a.parse::<u32>().ok()?, b.parse::<u32>().ok()?);
                if b < a || b - a > 4096 {
                    return None;
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    Some(cpus)
}

/// Brings `want` CPUs online under the sysfs CPU directory `root` (normally
/// /sys/devices/system/cpu): the lowest-numbered present ones, CPU 0 always; the others go
/// offline. Returns (online, present) afterwards.
pub fn set_online_cpus_in(root: &std::path::Path, want: u32) -> Result<(u32, u32)> {
    let read = |f: &str| {
        fs::read_to_string(root.join(f)).with_context(|| format!("read {}", root.join(f).display()))
    };
    let list = |f: &str| -> Result<Vec<u32>> {
        parse_cpu_list(&read(f)?).with_context(|| format!("{}: not a CPU list", f))
    };
    let present = list("present")?;
    let want = (want.max(1) as usize).min(present.len());
    for (i, cpu) in present.iter().enumerate() {
        if *cpu == 0 {
            continue; // the boot CPU cannot go offline
        }
        let file = root.join(format!("cpu{cpu}/online"));
        let value = if i < want { "1" } else { "0" };
        let now = fs::read_to_string(&file).unwrap_or_default();
        if now.trim() != value {
            fs::write(&file, value)
                .with_context(|| format!("write {value} to {}", file.display()))?;
        }
    }
    let online = present
        .iter()
        .filter(|cpu| {
            **cpu == 0
                || fs::read_to_string(root.join(format!("cpu{cpu}/online")))
                    .is_ok_and(|v| v.trim() == "1")
        })
        .count();
    Ok((online as u32, present.len() as u32))
}

/// Time since the kernel booted (CLOCK_BOOTTIME).
pub fn uptime_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_parses_total_and_available() {
        let text = "MemTotal:         236180 kB\nMemFree:          200000 kB\nMemAvailable:     190000 kB\n";
        assert_eq!(
            parse_meminfo(text),
            MemInfo {
                total_bytes: 236180 * 1024,
                available_bytes: 190000 * 1024
            }
        );
    }

    #[test]
    fn meminfo_ignores_garbage() {
        assert_eq!(
            parse_meminfo("garbage\nMemTotal: x kB\n"),
            MemInfo::default()
        );
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,5\n"), Some(vec![0, 1, 2, 3, 5]));
        assert_eq!(parse_cpu_list("0"), Some(vec![0]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
    }

    #[test]
    fn cpus_go_online_and_offline_lowest_first() {
        let dir = std::env::temp_dir().join(format!("myvm-cpus-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        for cpu in 1..4 {
            fs::create_dir_all(dir.join(format!("cpu{cpu}"))).unwrap();
            fs::write(dir.join(format!("cpu{cpu}/online")), "0\n").unwrap();
        }
        fs::write(dir.join("present"), "0-3\n").unwrap();
        let online = |c: u32| fs::read_to_string(dir.join(format!("cpu{c}/online"))).unwrap();
        assert_eq!(set_online_cpus_in(&dir, 3).unwrap(), (3, 4));
        assert_eq!(
            (online(1).trim(), online(2).trim(), online(3).trim()),
            ("1", "1", "0")
        );
        // Beyond what the VM has: all of them.
        assert_eq!(set_online_cpus_in(&dir, 9).unwrap(), (4, 4));
        // Down again, never below CPU 0.
        assert_eq!(set_online_cpus_in(&dir, 0).unwrap(), (1, 4));
        assert_eq!(online(1).trim(), "0");
        fs::remove_dir_all(&dir).unwrap();
    }
}
