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

/// A sysfs number, hex with or without `0x` (memmap's `start`, `block_size_bytes`).
fn hex(s: &str) -> Option<u64> {
    let s = s.trim();
    u64::from_str_radix(s.strip_prefix("0x").unwrap_or(s), 16).ok()
}

/// Hot-adds memory above `boot_top` (the guest's `mem=`) until the blocks added there hold at
/// least `want_mib`, under the sysfs root `sys` (normally /sys): the blocks of "System RAM" in the
/// firmware's memory map (`firmware/memmap`, the map before `mem=` trimmed it) that start at or
/// above `boot_top` (rounded up to a block) and are not present yet, lowest first, each added by
/// `add` (the kernel's way: [`probe_and_online`]). Returns the MiB added above `boot_top` now.
pub fn set_memory_in(
    sys: &std::path::Path,
    boot_top: u64,
    want_mib: u64,
    mut add: impl FnMut(&std::path::Path, u64, u64) -> Result<()>,
) -> Result<u64> {
    let mem = sys.join("devices/system/memory");
    let block = fs::read_to_string(mem.join("block_size_bytes"))
        .ok()
        .and_then(|s| hex(&s))
        .filter(|b| *b > 0)
        .context("reading the memory block size")?;
    let first = boot_top.div_ceil(block);
    let present = |addr: u64| mem.join(format!("memory{}", addr / block)).exists();
    let mut have = fs::read_dir(&mem)
        .context("listing memory blocks")?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name();
            n.to_string_lossy()
                .strip_prefix("memory")?
                .parse::<u64>()
                .ok()
        })
        .filter(|n| *n >= first)
        .count() as u64
        * block;
    let want = want_mib << 20;
    if have >= want {
        return Ok(have >> 20);
    }
    // Firmware RAM ranges, in address order.
    let mut ranges = Vec::new();
    for e in fs::read_dir(sys.join("firmware/memmap")).context("reading the firmware memory map")? {
        let d = e?.path();
        let read = |f: &str| fs::read_to_string(d.join(f)).unwrap_or_default();
        if read("type").trim() != "System RAM" {
            continue;
        }
        if let (Some(start), Some(end)) = (hex(&read("start")), hex(&read("end"))) {
            ranges.push((start, end)); // end is inclusive
        }
    }
    ranges.sort_unstable();
    for (start, end) in ranges {
        let mut addr = start.div_ceil(block).max(first) * block;
        while have < want && addr.checked_add(block - 1).is_some_and(|last| last <= end) {
            if !present(addr) {
                add(&mem, addr, block)?;
                have += block;
            }
            addr += block;
        }
    }
    Ok(have >> 20)
}

/// Adds the memory block at `addr` (the memory sysfs directory `mem`, blocks of `block` bytes)
/// through the probe interface and brings it online.
pub fn probe_and_online(mem: &std::path::Path, addr: u64, block: u64) -> Result<()> {
    fs::write(mem.join("probe"), format!("{addr:#x}"))
        .with_context(|| format!("probing memory at {addr:#x}"))?;
    let state = mem.join(format!("memory{}/state", addr / block));
    fs::write(&state, "online").with_context(|| format!("onlining memory at {addr:#x}"))
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

    /// A fake sysfs: firmware RAM `ranges` (inclusive ends), 128 MiB blocks, `present` blocks.
    fn fake_sys(ranges: &[(u64, u64)], present: &[u64]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "myvm-mem-{}-{}",
            std::process::id(),
            present.len() * 100 + ranges.len()
        ));
        let _ = fs::remove_dir_all(&dir);
        let mem = dir.join("devices/system/memory");
        fs::create_dir_all(&mem).unwrap();
        fs::write(mem.join("block_size_bytes"), "8000000\n").unwrap();
        for b in present {
            fs::create_dir_all(mem.join(format!("memory{b}"))).unwrap();
        }
        for (i, (s, e)) in ranges.iter().enumerate() {
            let d = dir.join(format!("firmware/memmap/{i}"));
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("start"), format!("{s:#x}\n")).unwrap();
            fs::write(d.join("end"), format!("{e:#x}\n")).unwrap();
            fs::write(d.join("type"), "System RAM\n").unwrap();
        }
        // A reserved range is never probed.
        let d = dir.join("firmware/memmap/9");
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("start"), "0x200000000").unwrap();
        fs::write(d.join("end"), "0x3ffffffff").unwrap();
        fs::write(d.join("type"), "Reserved").unwrap();
        dir
    }

    #[test]
    fn memory_grows_by_the_blocks_of_firmware_ram_not_present() {
        const M: u64 = 1 << 20;
        // RAM 0-640K, 1M-1280M, then past a gap.
        let sys = fake_sys(
            &[
                (0, 0x9_ffff),
                (M, 1280 * M - 1),
                (0x1_0000_0000, 0x1_0000_0000 + 256 * M - 1),
            ],
            &[0, 1, 2],
        );
        // The kernel's part, faked: the block appears.
        let mut added = Vec::new();
        let mut add = |mem: &std::path::Path, addr: u64, block: u64| -> Result<()> {
            fs::create_dir_all(mem.join(format!("memory{}", addr / block)))?;
            added.push(addr);
            Ok(())
        };
        // Booted with mem=300M: blocks 0-2 present (the last one partly), nothing added.
        let top = 300 * M;
        assert_eq!(
            set_memory_in(&sys, top, 0, &mut add).unwrap(),
            0,
            "nothing asked"
        );
        assert_eq!(set_memory_in(&sys, top, 200, &mut add).unwrap(), 256);
        assert_eq!(
            set_memory_in(&sys, top, 256, &mut add).unwrap(),
            256,
            "enough already"
        );
        // Up to everything there is: the rest below 1280M, then above the gap (not the
        // reserved range).
        assert_eq!(set_memory_in(&sys, top, 100_000, &mut add).unwrap(), 1152);
        assert_eq!(
            added,
            [3, 4, 5, 6, 7, 8, 9]
                .iter()
                .map(|b| b * 128 * M)
                .chain([0x1_0000_0000, 0x1_0800_0000])
                .collect::<Vec<_>>()
        );
        fs::remove_dir_all(&sys).unwrap();
    }
}
