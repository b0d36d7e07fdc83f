//! Intel MultiProcessor Specification 1.4 table, so the guest finds its vCPUs, the IOAPIC and
//! the ISA interrupt routing without ACPI (the guest kernel has CONFIG_X86_MPPARSE).

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::layout::{IOAPIC_ADDR, IOAPIC_PINS, LAPIC_ADDR, MPTABLE_START};

#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    #[error("MP table for {0} vCPUs does not fit below 640 KiB")]
    TooLarge(u8),
    #[error("writing the MP table to guest memory: {0}")]
    Write(#[from] vm_memory::GuestMemoryError),
}

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_SIGNATURE: u32 = 0x600; // family 6
const CPU_FEATURE_FPU: u32 = 1;
const CPU_FEATURE_APIC: u32 = 1 << 9;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_INTSRC: u8 = 3;
const ENTRY_LINTSRC: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
pub const FLOATING_LEN: usize = 16;
pub const HEADER_LEN: usize = 44;
/// Space from MPTABLE_START to the end of conventional memory (0xa0000).
const MAX_LEN: usize = 0xa_0000 - MPTABLE_START as usize;

fn checksum_fix(bytes: &[u8]) -> u8 {
    let sum = bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    0u8.wrapping_sub(sum)
}

/// Builds the floating pointer + configuration table as they appear at `MPTABLE_START`.
pub fn build(vcpus: u8) -> Result<Vec<u8>, MptableError> {
    let ioapic_id = vcpus; // APIC ids 0..vcpus are the CPUs
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..vcpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BSP } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&(CPU_FEATURE_FPU | CPU_FEATURE_APIC).to_le_bytes());
        entries.extend_from_slice(&[0u8; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    count += 1;
    for irq in 0..IOAPIC_PINS as u8 {
        // ISA IRQ n -> IOAPIC pin n, bus-default polarity/trigger (edge, active high).
        entries.extend_from_slice(&[ENTRY_INTSRC, INT_TYPE_INT, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    // LINT0 = ExtINT (8259), LINT1 = NMI, on all local APICs.
    entries.extend_from_slice(&[ENTRY_LINTSRC, INT_TYPE_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[ENTRY_LINTSRC, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_len = HEADER_LEN + entries.len();
    if FLOATING_LEN + table_len > MAX_LEN {
        return Err(MptableError::TooLarge(vcpus));
    }
    let table_addr = MPTABLE_START as u32 + FLOATING_LEN as u32;

    let mut fp = Vec::with_capacity(FLOATING_LEN);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&table_addr.to_le_bytes());
    fp.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]); // length 1 (16 bytes), spec 1.4
    fp[10] = checksum_fix(&fp);

    let mut hdr = Vec::with_capacity(HEADER_LEN);
    hdr.extend_from_slice(b"PCMP");
    hdr.extend_from_slice(&(table_len as u16).to_le_bytes());
    hdr.extend_from_slice(&[4, 0]); // spec 1.4, checksum
    hdr.extend_from_slice(b"MYVM    ");
    hdr.extend_from_slice(b"MICROVM     ");
    hdr.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    hdr.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    hdr.extend_from_slice(&count.to_le_bytes());
    hdr.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    hdr.extend_from_slice(&[0u8; 4]); // extended table length + checksum + reserved
    debug_assert_eq!(hdr.len(), HEADER_LEN);

    let mut table = hdr;
    table.extend_from_slice(&entries);
    table[7] = checksum_fix(&table);

    let mut out = fp;
    out.extend_from_slice(&table);
    Ok(out)
}

/// Writes the MP table for `vcpus` into guest memory.
pub fn setup<M: GuestMemoryBackend>(mem: &M, vcpus: u8) -> Result<(), MptableError> {
    let bytes = build(vcpus)?;
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    fn parse(t: &[u8]) -> (Vec<u8>, usize) {
        // returns the entry types and the table length from the header
        let table = &t[FLOATING_LEN..];
        let len = u16::from_le_bytes([table[4], table[5]]) as usize;
        let mut types = Vec::new();
        let mut off = HEADER_LEN;
        while off < len {
            let ty = table[off];
            types.push(ty);
            off += if ty == ENTRY_PROCESSOR { 20 } else { 8 };
        }
        assert_eq!(off, len, "entries exactly fill the table");
        (types, len)
    }

    #[test]
    fn checksums_and_pointers() {
        for vcpus in [1u8, 2, 7, 32] {
            let t = build(vcpus).unwrap();
            assert_eq!(&t[0..4], b"_MP_");
            assert_eq!(sum(&t[..FLOATING_LEN]), 0, "floating pointer checksum");
            let ptr = u32::from_le_bytes(t[4..8].try_into().unwrap());
            assert_eq!(ptr as u64, MPTABLE_START + FLOATING_LEN as u64);
            let table = &t[FLOATING_LEN..];
            assert_eq!(&table[0..4], b"PCMP");
            let (_, len) = parse(&t);
            assert_eq!(len, table.len());
            assert_eq!(sum(table), 0, "configuration table checksum");
            assert_eq!(
                u32::from_le_bytes(table[36..40].try_into().unwrap()),
                LAPIC_ADDR
            );
            assert!(MPTABLE_START as usize + t.len() <= 0xa_0000);
        }
    }

    #[test]
    fn one_processor_entry_per_vcpu_and_bsp_first() {
        let vcpus = 5u8;
        let t = build(vcpus).unwrap();
        let (types, _) = parse(&t);
        let count = u16::from_le_bytes([t[FLOATING_LEN + 34], t[FLOATING_LEN + 35]]);
        assert_eq!(count as usize, types.len());
        assert_eq!(
            types.iter().filter(|t| **t == ENTRY_PROCESSOR).count(),
            vcpus as usize
        );
        assert_eq!(types.iter().filter(|t| **t == ENTRY_IOAPIC).count(), 1);
        assert_eq!(
            types.iter().filter(|t| **t == ENTRY_INTSRC).count(),
            IOAPIC_PINS as usize
        );
        let first = &t[FLOATING_LEN + HEADER_LEN..];
        for cpu in 0..vcpus as usize {
            let e = &first[cpu * 20..cpu * 20 + 20];
            assert_eq!(e[1] as usize, cpu, "APIC id");
            let bsp = e[3] & CPU_BSP != 0;
            assert_eq!(bsp, cpu == 0);
            assert_ne!(e[3] & CPU_ENABLED, 0);
        }
        // The IOAPIC id follows the CPUs' APIC ids.
        let io = &first[vcpus as usize * 20 + 8..];
        assert_eq!((io[0], io[1]), (ENTRY_IOAPIC, vcpus));
        assert_eq!(
            u32::from_le_bytes(io[4..8].try_into().unwrap()),
            IOAPIC_ADDR
        );
    }

    #[test]
    fn written_to_guest_memory() {
        let mem =
            vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        setup(&mem, 2).unwrap();
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(MPTABLE_START))
            .unwrap();
        assert_eq!(&sig, b"_MP_");
    }
}
