//! Guest physical memory layout (x86_64).
//!
//! ```text
//! 0x0000_0500  GDT used for the 32-bit PVH entry
//! 0x0000_6000  hvm_start_info       0x0000_6040  module list (initrd)
//! 0x0000_7000  PVH memory map (e820-like entries)
//! 0x0002_0000  kernel command line (2 KiB)
//! 0x0009_fc00  MP floating pointer + MP configuration table (reserved to 1 MiB)
//! 0x0100_0000  vmlinux (loaded at its ELF physical addresses)
//!   ...        initrd at the top of low RAM
//! 0xd000_0000  virtio-mmio windows, 4 KiB each (32-bit MMIO gap up to 4 GiB)
//! 0xfec0_0000  IOAPIC     0xfee0_0000 LAPIC
//! 0x1_0000_0000 RAM above the gap when memory > 3.25 GiB
//! ```

use vm_memory::GuestAddress;

pub const GDT_START: u64 = 0x500;
pub const PVH_INFO_START: u64 = 0x6000;
pub const MODLIST_START: u64 = 0x6040;
pub const MEMMAP_START: u64 = 0x7000;
pub const CMDLINE_START: u64 = 0x2_0000;
/// End of conventional RAM below the EBDA (the MP table lives just above).
pub const EBDA_START: u64 = 0x9_fc00;
pub const MPTABLE_START: u64 = EBDA_START;
/// Start of the kernel's "high memory" (1 MiB).
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap; RAM beyond this goes above 4 GiB.
pub const MMIO_GAP_START: u64 = 0xd000_0000;
pub const MMIO_GAP_END: u64 = 1 << 32;
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// Each virtio-mmio device gets one 4 KiB window.
pub const VIRTIO_MMIO_BASE: u64 = MMIO_GAP_START;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// IRQs: 4 = serial (COM1); virtio devices from 5 up to 23 (IOAPIC has 24 pins).
pub const SERIAL_IRQ: u32 = 4;
pub const VIRTIO_IRQ_BASE: u32 = 5;
pub const IOAPIC_PINS: u32 = 24;
pub const MAX_VIRTIO_DEVICES: usize = (IOAPIC_PINS - VIRTIO_IRQ_BASE) as usize;
pub const SERIAL_PORT: u16 = 0x3f8;
pub const I8042_PORT: u16 = 0x60;
/// Where KVM needs three pages for its TSS (below the MMIO gap end, outside RAM).
pub const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
pub const PAGE_SIZE: u64 = 0x1000;

/// MMIO window and IRQ of one virtio-mmio device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioSlot {
    pub addr: u64,
    pub size: u64,
    pub irq: u32,
}

impl VirtioSlot {
    pub fn nth(i: usize) -> Self {
        VirtioSlot {
            addr: VIRTIO_MMIO_BASE + i as u64 * VIRTIO_MMIO_SIZE,
            size: VIRTIO_MMIO_SIZE,
            irq: VIRTIO_IRQ_BASE + i as u32,
        }
    }
}

/// RAM ranges for `mem_size` bytes: below the MMIO gap, and the rest above 4 GiB.
pub fn ram_ranges(mem_size: u64) -> Vec<(GuestAddress, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(GuestAddress(0), mem_size)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START),
            (GuestAddress(MMIO_GAP_END), mem_size - MMIO_GAP_START),
        ]
    }
}
