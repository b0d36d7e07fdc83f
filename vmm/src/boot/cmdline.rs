//! The guest kernel command line: the user's part plus one `virtio_mmio.device=<size>@<addr>:<irq>`
//! per device (the guest kernel has CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES).

use linux_loader::cmdline::Cmdline;
use vm_memory::GuestAddress;

use super::layout::VirtioSlot;
use crate::config::MAX_CMDLINE_LEN;

#[derive(Debug, thiserror::Error)]
pub enum CmdlineError {
    #[error("kernel command line: {0}")]
    Build(#[from] linux_loader::cmdline::Error),
}

/// Kernel parameters that keep an unmodified guest kernel away from instructions KVM-PVM cannot
/// emulate ("KVM internal error: emulation failure"). Hiding the same features through
/// KVM_SET_CPUID2 is not enough there: with XSAVE cleared in leaf 1 the guest still enumerates
/// XSAVE features and faults on `xrstor` in `fpu__init_system_xstate`. `noxsave` is parsed by
/// the FPU code early (6.1 then calls it "unknown" and passes it on to init, harmlessly).
pub const PVM_COMPAT_ARGS: &str = "noxsave clearcpuid=cx16,popcnt,rdrand,rdseed,smap";

/// Builds the full command line: the user's part, `extra` parameters (before any `--` init
/// arguments) and the virtio-mmio device announcements.
/// The guest's `mem=` (bytes; `K`, `M`, `G` suffixes as the kernel reads them), the last one
/// before any ` -- ` init arguments; None without one.
pub fn mem_limit(cmdline: &str) -> Option<u64> {
    let kernel_part = cmdline.split(" -- ").next().unwrap_or("");
    kernel_part
        .split_whitespace()
        .rev()
        .find_map(|w| w.strip_prefix("mem="))
        .and_then(|v| {
            let (digits, shift) = match v.as_bytes().last()? {
                b'K' | b'k' => (&v[..v.len() - 1], 10),
                b'M' | b'm' => (&v[..v.len() - 1], 20),
                b'G' | b'g' => (&v[..v.len() - 1], 30),
                _ => (v, 0),
            };
            digits.parse::<u64>().ok()?.checked_mul(1 << shift)
        })
}

pub fn build(user: &str, extra: &str, slots: &[VirtioSlot]) -> Result<String, CmdlineError> {
    // Capacity larger than the kernel's limit: the length is checked by the caller with a clear
    // message; here we only build.
    let cap = MAX_CMDLINE_LEN * 4;
    let user = user.trim();
    let mut cl = if user.is_empty() {
        Cmdline::new(cap)?
    } else {
        Cmdline::try_from(user, cap)?
    };
    let extra = extra.trim();
    if !extra.is_empty() {
        cl.insert_str(extra)?;
    }
    for s in slots {
        cl.add_virtio_mmio_device(s.size, GuestAddress(s.addr), s.irq, None)?;
    }
    Ok(cl.as_cstring()?.into_string().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_one_announcement_per_device() {
        let slots = [VirtioSlot::nth(0), VirtioSlot::nth(1)];
        let s = build("console=ttyS0 reboot=t", "", &slots).unwrap();
        assert_eq!(
            s,
            "console=ttyS0 reboot=t virtio_mmio.device=4K@0xd0000000:5 \
             virtio_mmio.device=4K@0xd0001000:6"
        );
    }

    #[test]
    fn empty_user_part_and_no_devices() {
        assert_eq!(build("  ", "", &[]).unwrap(), "");
        assert_eq!(
            build("", "", &[VirtioSlot::nth(2)]).unwrap(),
            "virtio_mmio.device=4K@0xd0002000:7"
        );
    }

    #[test]
    fn init_args_after_double_dash_stay_last() {
        let s = build(
            "console=ttyS0 -- foo",
            PVM_COMPAT_ARGS,
            &[VirtioSlot::nth(0)],
        )
        .unwrap();
        assert_eq!(
            s,
            "console=ttyS0 noxsave clearcpuid=cx16,popcnt,rdrand,rdseed,smap \
             virtio_mmio.device=4K@0xd0000000:5 -- foo"
        );
    }

    #[test]
    fn mem_limit_as_the_kernel_reads_it() {
        assert_eq!(mem_limit("console=ttyS0 mem=256M quiet"), Some(256 << 20));
        assert_eq!(mem_limit("mem=1G mem=2g"), Some(2 << 30));
        assert_eq!(mem_limit("mem=4096k"), Some(4 << 20));
        assert_eq!(mem_limit("mem=12345"), Some(12345));
        assert_eq!(mem_limit("memmap=1M mem=x"), None);
        assert_eq!(mem_limit("quiet -- mem=1M"), None);
        assert_eq!(mem_limit("mem=99999999999G"), None);
    }
}
