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
}
