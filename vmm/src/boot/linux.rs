//! The Linux x86 64-bit boot protocol, for an ELF vmlinux without a PVH note (or when asked):
//! zero page (`boot_params` with setup header, command line pointer, initrd and e820 map),
//! identity-mapped page tables for the first GiB and the long-mode register state.

use linux_loader::configurator::{linux::LinuxBootConfigurator, BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::layout::{CMDLINE_START, GDT_START};
#[cfg(test)]
use super::pvh::{E820_RAM, E820_RESERVED};

pub const ZERO_PAGE_START: u64 = 0x7000;
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// A one-entry, all-zero IDT: any exception triple-faults (the kernel installs its own early).
pub const IDT_START: u64 = 0x520;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;

/// 64-bit flat code (L=1), flat data, TSS.
pub const GDT64: [u64; 4] = [
    0,
    super::gdt::gdt_entry(0xa09b, 0, 0xfffff),
    super::gdt::gdt_entry(0xc093, 0, 0xfffff),
    super::gdt::gdt_entry(0x808b, 0, 0xfffff),
];

#[derive(Debug, thiserror::Error)]
pub enum LinuxBootError {
    #[error("too many e820 entries ({0})")]
    E820(usize),
    #[error("writing the zero page: {0}")]
    ZeroPage(#[from] linux_loader::configurator::Error),
    #[error("writing page tables / GDT: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

/// The zero page for `mem_size` bytes of RAM, a command line of `cmdline_len` bytes (without
/// NUL) at CMDLINE_START and an optional initrd.
pub fn zero_page(
    mem_size: u64,
    cmdline_len: usize,
    initrd: Option<(GuestAddress, u64)>,
) -> Result<boot_params, LinuxBootError> {
    let mut p = boot_params::default();
    p.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    p.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    p.hdr.header = KERNEL_HDR_MAGIC;
    p.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    p.hdr.cmd_line_ptr = CMDLINE_START as u32;
    p.hdr.cmdline_size = cmdline_len as u32;
    if let Some((addr, size)) = initrd {
        p.hdr.ramdisk_image = addr.0 as u32;
        p.hdr.ramdisk_size = size as u32;
    }
    // Same map as the PVH one: RAM below the EBDA, reserved to 1 MiB, RAM above.
    let map: Vec<(u64, u64, u32)> = super::pvh::memmap(mem_size)
        .iter()
        .map(|e| (e.addr, e.size, e.type_))
        .collect();
    if map.len() > p.e820_table.len() {
        return Err(LinuxBootError::E820(map.len()));
    }
    for (i, (addr, size, ty)) in map.iter().enumerate() {
        p.e820_table[i] = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: *ty,
        };
    }
    p.e820_entries = map.len() as u8;
    Ok(p)
}

/// Writes the zero page, the identity-mapped page tables (first GiB, 2 MiB pages), the 64-bit GDT
/// and the empty IDT.
pub fn write<M: GuestMemoryBackend>(
    mem: &M,
    mem_size: u64,
    cmdline_len: usize,
    initrd: Option<(GuestAddress, u64)>,
) -> Result<(), LinuxBootError> {
    let zp = zero_page(mem_size, cmdline_len, initrd)?;
    LinuxBootConfigurator::write_bootparams::<M>(
        &BootParams::new(&zp, GuestAddress(ZERO_PAGE_START)),
        mem,
    )?;
    mem.write_obj(PDPTE_START | 0x03, GuestAddress(PML4_START))?;
    mem.write_obj(PDE_START | 0x03, GuestAddress(PDPTE_START))?;
    for i in 0..512u64 {
        // present | writable | page size (2 MiB)
        mem.write_obj((i << 21) | 0x83, GuestAddress(PDE_START + i * 8))?;
    }
    for (i, e) in GDT64.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT_START + 8 * i as u64))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_START))?;
    Ok(())
}

/// Long mode with paging on the identity map: the state the 64-bit entry expects.
pub fn sregs(sregs: &mut kvm_bindings::kvm_sregs) {
    use super::gdt::segment;
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&GDT64) - 1) as u16;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 7;
    let code = segment(GDT64[1], 1 << 3);
    let data = segment(GDT64[2], 2 << 3);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(GDT64[3], 3 << 3);
    sregs.cr3 = PML4_START;
    sregs.cr4 |= 1 << 5; // PAE
    sregs.cr0 |= 0x1 | 0x10 | (1 << 31); // PE | ET | PG
    sregs.efer |= (1 << 8) | (1 << 10); // LME | LMA
}

pub fn regs(entry: GuestAddress) -> kvm_bindings::kvm_regs {
    kvm_bindings::kvm_regs {
        rflags: 0x2,
        rip: entry.0,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn zero_page_header_initrd_and_e820() {
        let size = 512u64 << 20;
        let zp = zero_page(size, 42, Some((GuestAddress(0x1f00_0000), 0x4_0000))).unwrap();
        let hdr = zp.hdr;
        assert_eq!({ hdr.boot_flag }, 0xaa55);
        assert_eq!({ hdr.header }, 0x5372_6448);
        assert_eq!({ hdr.type_of_loader }, 0xff);
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ hdr.cmdline_size }, 42);
        assert_eq!(
            ({ hdr.ramdisk_image }, { hdr.ramdisk_size }),
            (0x1f00_0000, 0x4_0000)
        );
        assert_eq!(zp.e820_entries, 3);
        let t = zp.e820_table;
        let e: Vec<(u64, u64, u32)> = t[..3].iter().map(|x| (x.addr, x.size, x.r#type)).collect();
        assert_eq!(
            e,
            vec![
                (0, 0x9fc00, E820_RAM),
                (0x9fc00, 0x100000 - 0x9fc00, E820_RESERVED),
                (0x100000, size - 0x100000, E820_RAM)
            ]
        );
        // The zero page is exactly one page (the kernel copies 4 KiB).
        assert_eq!(std::mem::size_of::<boot_params>(), 4096);
    }

    #[test]
    fn zero_page_without_initrd_and_with_high_memory() {
        let zp = zero_page(6 << 30, 0, None).unwrap();
        assert_eq!(({ zp.hdr.ramdisk_image }, { zp.hdr.ramdisk_size }), (0, 0));
        assert_eq!(zp.e820_entries, 4);
        let last = zp.e820_table[3];
        assert_eq!(
            ({ last.addr }, { last.size }),
            (1 << 32, (6u64 << 30) - 0xd000_0000)
        );
    }

    #[test]
    fn page_tables_identity_map_the_first_gib() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        write(&mem, 64 << 20, 10, None).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPTE_START | 3);
        let pdpte: u64 = mem.read_obj(GuestAddress(PDPTE_START)).unwrap();
        assert_eq!(pdpte, PDE_START | 3);
        for i in [0u64, 1, 511] {
            let pde: u64 = mem.read_obj(GuestAddress(PDE_START + 8 * i)).unwrap();
            assert_eq!(pde, (i << 21) | 0x83);
        }
        let zp: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!({ zp.hdr.cmdline_size }, 10);
        // Nothing overlaps: zero page, stack, page tables, command line.
        const { assert!(ZERO_PAGE_START + 4096 <= BOOT_STACK_POINTER) };
        const { assert!(BOOT_STACK_POINTER < PML4_START) };
        const { assert!(PDE_START + 4096 <= CMDLINE_START) };
    }

    #[test]
    fn long_mode_state() {
        let mut s = kvm_bindings::kvm_sregs::default();
        sregs(&mut s);
        assert_eq!(s.cs.l, 1, "64-bit code segment");
        assert_eq!(s.cs.db, 0);
        assert_ne!(s.cr0 & (1 << 31), 0);
        assert_ne!(s.cr4 & (1 << 5), 0);
        assert_eq!(s.efer & 0x500, 0x500);
        assert_eq!(s.cr3, PML4_START);
        let r = regs(GuestAddress(0x100_0000));
        assert_eq!(
            (r.rip, r.rsi, r.rsp),
            (0x100_0000, ZERO_PAGE_START, BOOT_STACK_POINTER)
        );
    }
}
