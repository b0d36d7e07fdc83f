//! Everything written into guest memory before the first KVM_RUN: kernel (ELF, PVH entry),
//! initrd, command line, PVH start info + memory map, GDT and MP table.

pub mod cmdline;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod pvh;

use std::{fs::File, path::Path};

use linux_loader::loader::{elf::Elf, elf::PvhBootCapability, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use layout::{ram_ranges, CMDLINE_START, GDT_START, HIMEM_START, PAGE_SIZE};

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot open {0}: {1}")]
    Open(String, std::io::Error),
    #[error("loading kernel {0}: {1}")]
    Kernel(String, linux_loader::loader::Error),
    #[error("kernel {0} has no PVH entry point (needs CONFIG_PVH=y): {1}")]
    NoPvh(String, PvhBootCapability),
    #[error("initrd {path} ({size} bytes) does not fit between the kernel end {kernel_end:#x} and the end of low RAM {ram_end:#x}")]
    InitrdTooBig {
        path: String,
        size: u64,
        kernel_end: u64,
        ram_end: u64,
    },
    #[error("writing guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    #[error(transparent)]
    Cmdline(#[from] cmdline::CmdlineError),
    #[error(transparent)]
    Pvh(#[from] pvh::PvhError),
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
}

/// What the boot vCPU needs to start the kernel.
#[derive(Debug, Clone, Copy)]
pub struct BootInfo {
    /// 32-bit PVH entry point.
    pub entry: GuestAddress,
    /// Guest physical address of `hvm_start_info` (passed in %ebx).
    pub start_info: GuestAddress,
    pub kernel_end: u64,
    pub initrd: Option<(GuestAddress, u64)>,
}

/// Where an initrd of `size` bytes goes: page-aligned at the top of RAM below the MMIO gap.
pub fn initrd_addr(mem_size: u64, kernel_end: u64, size: u64) -> Option<GuestAddress> {
    let low_end = ram_ranges(mem_size)[0].1;
    let addr = low_end.checked_sub(size)? & !(PAGE_SIZE - 1);
    (addr >= kernel_end.max(HIMEM_START)).then_some(GuestAddress(addr))
}

/// Loads everything. `cmdline` is the complete command line (see [`cmdline::build`]).
pub fn load<M: GuestMemoryBackend>(
    mem: &M,
    mem_size: u64,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
    vcpus: u8,
) -> Result<BootInfo, BootError> {
    let kname = kernel.display().to_string();
    let mut kf = File::open(kernel).map_err(|e| BootError::Open(kname.clone(), e))?;
    let res = Elf::load(mem, None, &mut kf, Some(GuestAddress(HIMEM_START)))
        .map_err(|e| BootError::Kernel(kname.clone(), e))?;
    let entry = match res.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(a) => a,
        other => return Err(BootError::NoPvh(kname, other)),
    };
    tracing::debug!(entry = %format!("{:#x}", entry.0), kernel_end = %format!("{:#x}", res.kernel_end), "kernel loaded");

    let initrd = match initrd {
        Some(path) => {
            let pname = path.display().to_string();
            let data = std::fs::read(path).map_err(|e| BootError::Open(pname.clone(), e))?;
            let size = data.len() as u64;
            let addr =
                initrd_addr(mem_size, res.kernel_end, size).ok_or(BootError::InitrdTooBig {
                    path: pname,
                    size,
                    kernel_end: res.kernel_end,
                    ram_end: ram_ranges(mem_size)[0].1,
                })?;
            mem.write_slice(&data, addr)?;
            tracing::debug!(addr = %format!("{:#x}", addr.0), size, "initrd loaded");
            Some((addr, size))
        }
        None => None,
    };

    let mut cl = cmdline.as_bytes().to_vec();
    cl.push(0);
    mem.write_slice(&cl, GuestAddress(CMDLINE_START))?;

    for (i, e) in gdt::GDT.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT_START + 8 * i as u64))?;
    }
    mptable::setup(mem, vcpus)?;
    pvh::write(mem, mem_size, initrd)?;
    Ok(BootInfo {
        entry,
        start_info: GuestAddress(layout::PVH_INFO_START),
        kernel_end: res.kernel_end,
        initrd,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initrd_at_top_of_low_ram_page_aligned() {
        let a = initrd_addr(256 << 20, 0x200_0000, 0x1001).unwrap();
        assert_eq!(a.0, (256 << 20) - 0x2000);
        // Memory above the MMIO gap is not used for the initrd.
        let a = initrd_addr(8 << 30, 0x200_0000, 0x1000).unwrap();
        assert_eq!(a.0, layout::MMIO_GAP_START - 0x1000);
        // Overlapping the kernel is refused.
        assert!(initrd_addr(64 << 20, 0x300_0000, 40 << 20).is_none());
    }

    /// Loads our real guest kernel when it has been built (`make image`).
    #[test]
    fn loads_real_vmlinux_with_pvh_entry() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let kernel = root.join("build/vmlinux");
        let initrd = root.join("build/initramfs.cpio");
        if !kernel.exists() {
            panic!("{} missing: run `make image` first", kernel.display());
        }
        let size = 256u64 << 20;
        let mem =
            vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size as usize)])
                .unwrap();
        let info = load(&mem, size, &kernel, Some(&initrd), "console=ttyS0", 2).unwrap();
        assert!(info.entry.0 > HIMEM_START && info.entry.0 < info.kernel_end);
        let (ia, is) = info.initrd.unwrap();
        assert_eq!(is, std::fs::metadata(&initrd).unwrap().len());
        assert!(ia.0 >= info.kernel_end);
        let mut magic = [0u8; 6];
        mem.read_slice(&mut magic, ia).unwrap();
        assert_eq!(&magic, b"070701", "newc cpio at the initrd address");
        let mut cl = [0u8; 14];
        mem.read_slice(&mut cl, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&cl, b"console=ttyS0\0");
    }
}
