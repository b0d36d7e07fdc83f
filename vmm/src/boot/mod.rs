//! Everything written into guest memory before the first KVM_RUN: kernel (ELF, PVH entry),
//! initrd, command line, PVH start info + memory map, GDT and MP table.

pub mod cmdline;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod linux;
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
    #[error(transparent)]
    Linux(#[from] linux::LinuxBootError),
}

/// The protocol the kernel is started with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// 32-bit protected mode at the PVH entry, %ebx = `hvm_start_info`.
    Pvh,
    /// 64-bit long mode at the ELF entry, %rsi = zero page.
    Linux,
}

/// What the boot vCPU needs to start the kernel.
#[derive(Debug, Clone, Copy)]
pub struct BootInfo {
    pub protocol: Protocol,
    /// Entry point (PVH entry, or the ELF entry for the Linux protocol).
    pub entry: GuestAddress,
    /// Guest physical address of `hvm_start_info` (PVH, %ebx) or the zero page (Linux, %rsi).
    pub start_info: GuestAddress,
    pub kernel_end: u64,
    pub initrd: Option<(GuestAddress, u64)>,
}

/// Where an initrd of `size` bytes goes: page-aligned at the top of RAM below the MMIO gap, and
/// below `limit` (the guest's `mem=`: RAM above it is not the guest's until hot-added, and an
/// initrd there would stay resident on the host after the kernel copied it down).
pub fn initrd_addr(mem_size: u64, limit: u64, kernel_end: u64, size: u64) -> Option<GuestAddress> {
    let low_end = ram_ranges(mem_size)[0].1.min(limit);
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
    wanted: crate::config::BootProtocol,
) -> Result<BootInfo, BootError> {
    use crate::config::BootProtocol as Want;
    let kname = kernel.display().to_string();
    let mut kf = File::open(kernel).map_err(|e| BootError::Open(kname.clone(), e))?;
    let res = Elf::load(mem, None, &mut kf, Some(GuestAddress(HIMEM_START)))
        .map_err(|e| BootError::Kernel(kname.clone(), e))?;
    let (protocol, entry) = match (wanted, res.pvh_boot_cap) {
        (Want::Auto | Want::Pvh, PvhBootCapability::PvhEntryPresent(a)) => (Protocol::Pvh, a),
        (Want::Pvh, other) => return Err(BootError::NoPvh(kname, other)),
        (Want::Auto | Want::Linux, _) => (Protocol::Linux, res.kernel_load),
    };
    tracing::debug!(entry = %format!("{:#x}", entry.0), kernel_end = %format!("{:#x}", res.kernel_end), "kernel loaded");

    let initrd = match initrd {
        Some(path) => {
            let pname = path.display().to_string();
            let mut file = File::open(path).map_err(|e| BootError::Open(pname.clone(), e))?;
            let size = file
                .metadata()
                .map_err(|e| BootError::Open(pname.clone(), e))?
                .len();
            let limit = cmdline::mem_limit(cmdline).unwrap_or(u64::MAX);
            let addr = initrd_addr(mem_size, limit, res.kernel_end, size).ok_or(
                BootError::InitrdTooBig {
                    path: pname,
                    size,
                    kernel_end: res.kernel_end,
                    ram_end: ram_ranges(mem_size)[0].1.min(limit),
                },
            )?;
            // Straight from the file into guest memory (no intermediate buffer).
            mem.read_exact_volatile_from(addr, &mut file, size as usize)?;
            tracing::debug!(addr = %format!("{:#x}", addr.0), size, "initrd loaded");
            Some((addr, size))
        }
        None => None,
    };

    let mut cl = cmdline.as_bytes().to_vec();
    cl.push(0);
    mem.write_slice(&cl, GuestAddress(CMDLINE_START))?;

    mptable::setup(mem, vcpus)?;
    let start_info = match protocol {
        Protocol::Pvh => {
            for (i, e) in gdt::GDT.iter().enumerate() {
                mem.write_obj(*e, GuestAddress(GDT_START + 8 * i as u64))?;
            }
            pvh::write(mem, mem_size, initrd)?;
            GuestAddress(layout::PVH_INFO_START)
        }
        Protocol::Linux => {
            linux::write(mem, mem_size, cmdline.len(), initrd)?;
            GuestAddress(linux::ZERO_PAGE_START)
        }
    };
    tracing::info!(?protocol, entry = %format!("{:#x}", entry.0), "kernel loaded");
    Ok(BootInfo {
        protocol,
        entry,
        start_info,
        kernel_end: res.kernel_end,
        initrd,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initrd_at_top_of_low_ram_page_aligned() {
        let a = initrd_addr(256 << 20, u64::MAX, 0x200_0000, 0x1001).unwrap();
        assert_eq!(a.0, (256 << 20) - 0x2000);
        // Memory above the MMIO gap is not used for the initrd.
        let a = initrd_addr(8 << 30, u64::MAX, 0x200_0000, 0x1000).unwrap();
        assert_eq!(a.0, layout::MMIO_GAP_START - 0x1000);
        // Overlapping the kernel is refused.
        assert!(initrd_addr(64 << 20, u64::MAX, 0x300_0000, 40 << 20).is_none());
        // Below the guest's mem= when it boots with less than the VM has.
        let a = initrd_addr(1280 << 20, 256 << 20, 0x200_0000, 0x1000).unwrap();
        assert_eq!(a.0, (256 << 20) - 0x1000);
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
        let info = load(
            &mem,
            size,
            &kernel,
            Some(&initrd),
            "console=ttyS0",
            2,
            crate::config::BootProtocol::Auto,
        )
        .unwrap();
        assert_eq!(info.protocol, Protocol::Pvh, "our kernel has a PVH note");
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

    #[test]
    fn linux_protocol_on_request_uses_the_elf_entry_and_zero_page() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let kernel = root.join("build/vmlinux");
        let size = 128u64 << 20;
        let mem =
            vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size as usize)])
                .unwrap();
        let info = load(
            &mem,
            size,
            &kernel,
            None,
            "console=ttyS0",
            1,
            crate::config::BootProtocol::Linux,
        )
        .unwrap();
        assert_eq!(info.protocol, Protocol::Linux);
        assert_eq!(info.entry.0, 0x100_0000, "ELF e_entry of our vmlinux");
        assert_eq!(info.start_info.0, linux::ZERO_PAGE_START);
        let zp: linux_loader::loader::bootparam::boot_params =
            mem.read_obj(GuestAddress(linux::ZERO_PAGE_START)).unwrap();
        assert_eq!({ zp.hdr.cmdline_size }, 13);
        assert_eq!(zp.e820_entries, 3);
    }

    #[test]
    fn pvh_required_but_missing_is_an_error() {
        // A minimal ELF without notes: the test ELF shipped with linux-loader is not at hand, so
        // build one: 64-bit header + one PT_LOAD of 16 bytes.
        let dir = std::env::temp_dir().join(format!("myvm-vmm-elf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tiny.elf");
        let mut elf = vec![0u8; 64 + 56 + 16];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2; // 64-bit
        elf[5] = 1; // little endian
        elf[6] = 1;
        elf[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        elf[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
        elf[20..24].copy_from_slice(&1u32.to_le_bytes());
        elf[24..32].copy_from_slice(&0x20_0000u64.to_le_bytes()); // entry
        elf[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
        elf[52..54].copy_from_slice(&64u16.to_le_bytes()); // ehsize
        elf[54..56].copy_from_slice(&56u16.to_le_bytes()); // phentsize
        elf[56..58].copy_from_slice(&1u16.to_le_bytes()); // phnum
        let ph = 64;
        elf[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        elf[ph + 8..ph + 16].copy_from_slice(&120u64.to_le_bytes()); // offset
        elf[ph + 24..ph + 32].copy_from_slice(&0x20_0000u64.to_le_bytes()); // paddr
        elf[ph + 32..ph + 40].copy_from_slice(&16u64.to_le_bytes()); // filesz
        elf[ph + 40..ph + 48].copy_from_slice(&16u64.to_le_bytes()); // memsz
        std::fs::write(&path, &elf).unwrap();
        let size = 64u64 << 20;
        let mem =
            vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size as usize)])
                .unwrap();
        let r = load(
            &mem,
            size,
            &path,
            None,
            "",
            1,
            crate::config::BootProtocol::Pvh,
        );
        let auto = load(
            &mem,
            size,
            &path,
            None,
            "",
            1,
            crate::config::BootProtocol::Auto,
        );
        let _ = std::fs::remove_dir_all(&dir);
        assert!(matches!(r, Err(BootError::NoPvh(..))), "{r:?}");
        let auto = auto.unwrap();
        assert_eq!((auto.protocol, auto.entry.0), (Protocol::Linux, 0x20_0000));
    }
}
