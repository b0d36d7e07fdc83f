//! The flat GDT and segment registers for the 32-bit protected-mode PVH entry.

use kvm_bindings::kvm_segment;

/// Flat 32-bit code, flat data and a TSS descriptor (KVM wants a usable TR).
pub const GDT: [u64; 4] = [
    0,
    gdt_entry(0xc09b, 0, 0xfffff), // code: present, ring 0, exec/read, 32-bit, 4K granular
    gdt_entry(0xc093, 0, 0xfffff), // data: present, ring 0, read/write, 32-bit, 4K granular
    gdt_entry(0x008b, 0, 0x67),    // TSS: present, busy 32-bit TSS
];
pub const CODE_SELECTOR: u16 = 1 << 3;
pub const DATA_SELECTOR: u16 = 2 << 3;
pub const TSS_SELECTOR: u16 = 3 << 3;

/// Builds a descriptor from flags (access byte + flags nibble as in `0xc09b`), base and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

fn base(e: u64) -> u64 {
    ((e & 0xff00_0000_0000_0000) >> 32) | ((e & 0x0000_00ff_0000_0000) >> 16) | ((e >> 16) & 0xffff)
}

fn limit(e: u64) -> u32 {
    let raw = (((e & 0x000f_0000_0000_0000) >> 32) | (e & 0xffff)) as u32;
    // With 4K granularity the hidden limit covers whole pages.
    if (e >> 55) & 1 == 1 {
        (raw << 12) | 0xfff
    } else {
        raw
    }
}

/// The KVM segment register a selector of `entry` loads.
pub fn segment(entry: u64, selector: u16) -> kvm_segment {
    kvm_segment {
        base: base(entry),
        limit: limit(entry),
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: ((entry >> 55) & 1) as u8,
        avl: ((entry >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_code_segment() {
        assert_eq!(GDT[1], 0x00cf_9b00_0000_ffff);
        let cs = segment(GDT[1], CODE_SELECTOR);
        assert_eq!((cs.base, cs.limit, cs.type_), (0, 0xffff_ffff, 0xb));
        assert_eq!(
            (cs.present, cs.dpl, cs.db, cs.s, cs.l, cs.g),
            (1, 0, 1, 1, 0, 1)
        );
    }

    #[test]
    fn data_and_tss() {
        let ds = segment(GDT[2], DATA_SELECTOR);
        assert_eq!((ds.type_, ds.limit, ds.db), (3, 0xffff_ffff, 1));
        let tr = segment(GDT[3], TSS_SELECTOR);
        assert_eq!((tr.type_, tr.limit, tr.s, tr.g), (0xb, 0x67, 0, 0));
    }
}
