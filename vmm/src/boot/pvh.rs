//! PVH boot protocol: `hvm_start_info` (with the command line, the initrd as module 0 and the
//! memory map) that the kernel's 32-bit PVH entry point receives in %ebx.

use linux_loader::configurator::{pvh::PvhBootConfigurator, BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::layout::{
    ram_ranges, CMDLINE_START, EBDA_START, HIMEM_START, MEMMAP_START, MODLIST_START, PVH_INFO_START,
};

pub const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum PvhError {
    #[error("writing PVH boot parameters: {0}")]
    Write(#[from] linux_loader::configurator::Error),
}

/// The memory map for `mem_size` bytes of RAM: conventional memory below the EBDA, the
/// EBDA/BIOS hole reserved up to 1 MiB, then RAM (split around the 32-bit MMIO gap).
pub fn memmap(mem_size: u64) -> Vec<hvm_memmap_table_entry> {
    let entry = |addr: u64, size: u64, type_: u32| hvm_memmap_table_entry {
        addr,
        size,
        type_,
        reserved: 0,
    };
    let mut map = vec![
        entry(0, EBDA_START, E820_RAM),
        entry(EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED),
    ];
    for (start, size) in ram_ranges(mem_size) {
        let start = start.0;
        if start == 0 {
            map.push(entry(HIMEM_START, size - HIMEM_START, E820_RAM));
        } else {
            map.push(entry(start, size, E820_RAM));
        }
    }
    map
}

/// The start info for a kernel with `initrd` (address, size) and the memory map at MEMMAP_START.
pub fn start_info(
    initrd: Option<(GuestAddress, u64)>,
    memmap_entries: u32,
) -> (hvm_start_info, Vec<hvm_modlist_entry>) {
    let mut modules = Vec::new();
    if let Some((addr, size)) = initrd {
        modules.push(hvm_modlist_entry {
            paddr: addr.0,
            size,
            cmdline_paddr: 0,
            reserved: 0,
        });
    }
    let info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        flags: 0,
        nr_modules: modules.len() as u32,
        modlist_paddr: if modules.is_empty() { 0 } else { MODLIST_START },
        cmdline_paddr: CMDLINE_START,
        rsdp_paddr: 0,
        memmap_paddr: MEMMAP_START,
        memmap_entries,
        reserved: 0,
    };
    (info, modules)
}

/// Writes start info, module list and memory map into guest memory.
pub fn write<M: GuestMemoryBackend>(
    mem: &M,
    mem_size: u64,
    initrd: Option<(GuestAddress, u64)>,
) -> Result<(), PvhError> {
    let map = memmap(mem_size);
    let (info, modules) = start_info(initrd, map.len() as u32);
    let mut params = BootParams::new(&info, GuestAddress(PVH_INFO_START));
    params.set_sections(&map, GuestAddress(MEMMAP_START));
    if !modules.is_empty() {
        params.set_modules(&modules, GuestAddress(MODLIST_START));
    }
    PvhBootConfigurator::write_bootparams::<M>(&params, mem)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::layout::{MMIO_GAP_END, MMIO_GAP_START};
    use vm_memory::{Bytes, GuestMemoryMmap};

    #[test]
    fn memmap_small_guest() {
        let m = memmap(256 << 20);
        let v: Vec<_> = m.iter().map(|e| (e.addr, e.size, e.type_)).collect();
        assert_eq!(
            v,
            vec![
                (0, 0x9fc00, E820_RAM),
                (0x9fc00, 0x100000 - 0x9fc00, E820_RESERVED),
                (0x100000, (256 << 20) - 0x100000, E820_RAM),
            ]
        );
    }

    #[test]
    fn memmap_skips_the_mmio_gap() {
        let size = 4u64 << 30;
        let m = memmap(size);
        assert_eq!(m.len(), 4);
        assert_eq!(m[2].addr + m[2].size, MMIO_GAP_START);
        assert_eq!(m[3].addr, MMIO_GAP_END);
        assert_eq!(m[3].size, size - MMIO_GAP_START);
        let ram: u64 = m
            .iter()
            .filter(|e| e.type_ == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, size - (0x100000 - 0x9fc00));
    }

    #[test]
    fn start_info_layout_in_guest_memory() {
        let size = 128u64 << 20;
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap();
        let initrd = (GuestAddress(0x700_0000), 0x12345);
        write(&mem, size, Some(initrd)).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(info.version, 1);
        assert_eq!(info.nr_modules, 1);
        assert_eq!(info.modlist_paddr, MODLIST_START);
        assert_eq!(info.cmdline_paddr, CMDLINE_START);
        assert_eq!(info.memmap_paddr, MEMMAP_START);
        assert_eq!(info.memmap_entries, 3);
        // hvm_start_info is 56 bytes and must not overlap the module list.
        assert_eq!(std::mem::size_of::<hvm_start_info>(), 56);
        const { assert!(PVH_INFO_START + 56 <= MODLIST_START) };
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(MODLIST_START)).unwrap();
        assert_eq!((module.paddr, module.size), (0x700_0000, 0x12345));
        let last: hvm_memmap_table_entry =
            mem.read_obj(GuestAddress(MEMMAP_START + 2 * 24)).unwrap();
        assert_eq!(
            (last.addr, last.size, last.type_),
            (0x100000, size - 0x100000, E820_RAM)
        );
    }

    #[test]
    fn no_initrd_no_modules() {
        let (info, modules) = start_info(None, 3);
        assert_eq!(info.nr_modules, 0);
        assert_eq!(info.modlist_paddr, 0);
        assert!(modules.is_empty());
    }
}
