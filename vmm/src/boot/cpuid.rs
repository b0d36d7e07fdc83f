//! Per-vCPU CPUID, derived from KVM_GET_SUPPORTED_CPUID: APIC ids and topology (one socket,
//! one thread per core, `vcpus` cores), the hypervisor bit and KVM leaf, no PMU, and optionally
//! the features KVM-PVM cannot emulate hidden.

use kvm_bindings::kvm_cpuid_entry2;

/// Leaf 1 ECX / EDX bits.
const L1_ECX_CX16: u32 = 1 << 13;
const L1_ECX_POPCNT: u32 = 1 << 23;
const L1_ECX_XSAVE: u32 = 1 << 26;
const L1_ECX_OSXSAVE: u32 = 1 << 27;
const L1_ECX_AVX: u32 = 1 << 28;
const L1_ECX_RDRAND: u32 = 1 << 30;
const L1_ECX_HYPERVISOR: u32 = 1 << 31;
const L1_EDX_HTT: u32 = 1 << 28;
/// Leaf 7.0 EBX / EDX bits.
const L7_EBX_RDSEED: u32 = 1 << 18;
const L7_EBX_SMAP: u32 = 1 << 20;
const L7_EDX_ARCH_CAPABILITIES: u32 = 1 << 29;

pub const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d]; // "KVMKVMKVM\0\0\0"
const HYPERVISOR_LEAF: u32 = 0x4000_0000;
const KVM_FEATURES_LEAF: u32 = 0x4000_0001;
const KVM_CPUID_FLAG_SIGNIFCANT_INDEX: u32 = 1;

/// Topology of the guest: one package with `vcpus` cores, one thread each.
#[derive(Debug, Clone, Copy)]
pub struct Topology {
    pub cpu_index: u8,
    pub vcpus: u8,
}

/// Bits needed to number `n` items (x86 topology shift width).
fn shift_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Normalises `entries` (a copy of KVM_GET_SUPPORTED_CPUID) for one vCPU.
pub fn normalize(entries: &mut Vec<kvm_cpuid_entry2>, topo: Topology, pvm_compat: bool) {
    let apic_id = u32::from(topo.cpu_index);
    let n = u32::from(topo.vcpus.max(1));
    let core_shift = shift_for(n);

    // Leaf 0xb is rebuilt below (KVM reports a single subleaf that we cannot trust).
    let leaf_b_present = entries.iter().any(|e| e.function == 0xb);
    entries.retain(|e| e.function != 0xb && e.function != 0x1f);

    for e in entries.iter_mut() {
        match e.function {
            0x1 => {
                // EBX: [31:24] initial APIC id, [23:16] logical processors per package,
                // [15:8] CLFLUSH line size in qwords.
                e.ebx = (apic_id << 24) | (n.min(255) << 16) | (8 << 8) | (e.ebx & 0xff);
                e.ecx |= L1_ECX_HYPERVISOR;
                e.ecx &= !L1_ECX_OSXSAVE; // the guest sets CR4.OSXSAVE itself
                if n > 1 {
                    e.edx |= L1_EDX_HTT;
                } else {
                    e.edx &= !L1_EDX_HTT;
                }
                if pvm_compat {
                    e.ecx &=
                        !(L1_ECX_CX16 | L1_ECX_POPCNT | L1_ECX_XSAVE | L1_ECX_AVX | L1_ECX_RDRAND);
                }
            }
            0x4 if e.eax & 0x1f != 0 => {
                // Deterministic cache parameters: [31:26] cores per package - 1,
                // [25:14] logical processors sharing this cache - 1 (type 0 = no more caches).
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { n - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | (sharing << 14) | ((n - 1) << 26);
            }
            0x6 => {
                // No thermal / power management (the guest cannot use it).
                e.eax = 0;
                e.ecx &= 1; // keep APERF/MPERF only
            }
            0x7 if e.index == 0 => {
                e.edx &= !L7_EDX_ARCH_CAPABILITIES;
                if pvm_compat {
                    e.ebx &= !(L7_EBX_RDSEED | L7_EBX_SMAP);
                }
            }
            0xa => {
                // No architectural PMU: the guest's perf code would touch unemulated MSRs.
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            0xd if pvm_compat => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            0x8000_0008 => {
                // AMD: ECX[7:0] cores per package - 1, [15:12] APIC id bits for the core id.
                e.ecx = (e.ecx & !0xf0ff) | (n - 1) | (core_shift << 12);
            }
            0x8000_001e => {
                // AMD extended APIC id / core id (one thread per core) / node 0.
                e.eax = apic_id;
                e.ebx = (e.ebx & !0xffff) | apic_id;
                e.ecx = 0;
            }
            HYPERVISOR_LEAF => {
                e.eax = e.eax.max(KVM_FEATURES_LEAF);
                e.ebx = KVM_SIGNATURE[0];
                e.ecx = KVM_SIGNATURE[1];
                e.edx = KVM_SIGNATURE[2];
            }
            _ => {}
        }
    }

    if !entries.iter().any(|e| e.function == HYPERVISOR_LEAF) {
        entries.push(kvm_cpuid_entry2 {
            function: HYPERVISOR_LEAF,
            eax: KVM_FEATURES_LEAF,
            ebx: KVM_SIGNATURE[0],
            ecx: KVM_SIGNATURE[1],
            edx: KVM_SIGNATURE[2],
            ..Default::default()
        });
    }

    if leaf_b_present || n > 1 {
        // Extended topology: subleaf 0 = SMT (1 thread), 1 = core (n cores), 2 = invalid.
        let x2apic = apic_id;
        let sub = |index: u32, eax: u32, ebx: u32, ecx: u32| kvm_cpuid_entry2 {
            function: 0xb,
            index,
            flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
            eax,
            ebx,
            ecx,
            edx: x2apic,
            ..Default::default()
        };
        entries.push(sub(0, 0, 1, 1 << 8));
        entries.push(sub(1, core_shift, n, 1 | (2 << 8)));
        entries.push(sub(2, 0, 0, 2));
    }
    // The max basic leaf must cover leaf 0xb.
    if let Some(e0) = entries.iter_mut().find(|e| e.function == 0) {
        if e0.eax < 0xb {
            e0.eax = 0xb;
        }
    }
}

/// Whether the host CPU has hardware virtualization (vmx or svm in /proc/cpuinfo).
pub fn host_has_hw_virt() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| cpuinfo_has_hw_virt(&s))
        .unwrap_or(false)
}

pub fn cpuinfo_has_hw_virt(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

#[cfg(test)]
mod tests;
