use super::*;

fn find(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> kvm_cpuid_entry2 {
    *entries
        .iter()
        .find(|e| e.function == function && e.index == index)
        .unwrap_or_else(|| panic!("leaf {function:#x}.{index} missing"))
}

fn supported() -> Vec<kvm_cpuid_entry2> {
    let kvm = kvm_ioctls::Kvm::new().expect("open /dev/kvm (tests need root and /dev/kvm)");
    kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .expect("KVM_GET_SUPPORTED_CPUID")
        .as_slice()
        .to_vec()
}

#[test]
fn apic_ids_and_topology_per_vcpu_from_real_kvm() {
    let base = supported();
    for cpu in 0..4u8 {
        let mut e = base.clone();
        normalize(
            &mut e,
            Topology {
                cpu_index: cpu,
                vcpus: 4,
            },
            false,
        );
        let l1 = find(&e, 1, 0);
        assert_eq!(l1.ebx >> 24, u32::from(cpu), "initial APIC id");
        assert_eq!((l1.ebx >> 16) & 0xff, 4, "logical processors");
        assert_ne!(l1.ecx & L1_ECX_HYPERVISOR, 0, "hypervisor bit");
        assert_ne!(l1.edx & L1_EDX_HTT, 0);
        let smt = find(&e, 0xb, 0);
        let core = find(&e, 0xb, 1);
        let end = find(&e, 0xb, 2);
        assert_eq!(smt.edx, u32::from(cpu));
        assert_eq!((smt.ebx, (smt.ecx >> 8) & 0xff), (1, 1));
        assert_eq!((core.eax, core.ebx, (core.ecx >> 8) & 0xff), (2, 4, 2));
        assert_eq!((end.ecx >> 8) & 0xff, 0, "subleaf 2 terminates the list");
        assert_eq!(e.iter().filter(|x| x.function == 0xb).count(), 3);
        let hv = find(&e, 0x4000_0000, 0);
        assert_eq!([hv.ebx, hv.ecx, hv.edx], KVM_SIGNATURE);
        assert!(hv.eax >= 0x4000_0001);
        let l7 = find(&e, 7, 0);
        assert_eq!(l7.edx & L7_EDX_ARCH_CAPABILITIES, 0, "no arch-capabilities");
        let pmu = e.iter().find(|x| x.function == 0xa);
        if let Some(p) = pmu {
            assert_eq!((p.eax, p.ebx, p.ecx, p.edx), (0, 0, 0, 0));
        }
        assert!(find(&e, 0, 0).eax >= 0xb);
    }
}

#[test]
fn single_vcpu_has_no_htt() {
    let mut e = supported();
    normalize(
        &mut e,
        Topology {
            cpu_index: 0,
            vcpus: 1,
        },
        false,
    );
    let l1 = find(&e, 1, 0);
    assert_eq!(l1.edx & L1_EDX_HTT, 0);
    assert_eq!((l1.ebx >> 16) & 0xff, 1);
}

#[test]
fn pvm_compat_hides_unemulated_features() {
    let mut e = vec![
        kvm_cpuid_entry2 {
            function: 0,
            eax: 0xd,
            ..Default::default()
        },
        kvm_cpuid_entry2 {
            function: 1,
            ecx: u32::MAX,
            edx: u32::MAX,
            ..Default::default()
        },
        kvm_cpuid_entry2 {
            function: 7,
            ebx: u32::MAX,
            edx: u32::MAX,
            ..Default::default()
        },
        kvm_cpuid_entry2 {
            function: 0xd,
            eax: 7,
            ..Default::default()
        },
    ];
    let mut plain = e.clone();
    let topo = Topology {
        cpu_index: 1,
        vcpus: 2,
    };
    normalize(&mut e, topo, true);
    normalize(&mut plain, topo, false);
    let l1 = find(&e, 1, 0);
    for bit in [
        L1_ECX_CX16,
        L1_ECX_POPCNT,
        L1_ECX_XSAVE,
        L1_ECX_AVX,
        L1_ECX_RDRAND,
    ] {
        assert_eq!(l1.ecx & bit, 0, "bit {bit:#x} hidden");
        assert_ne!(
            find(&plain, 1, 0).ecx & bit,
            0,
            "bit {bit:#x} kept without compat"
        );
    }
    let l7 = find(&e, 7, 0);
    assert_eq!(l7.ebx & (L7_EBX_RDSEED | L7_EBX_SMAP), 0);
    assert_eq!(l7.edx & L7_EDX_ARCH_CAPABILITIES, 0);
    assert_eq!(find(&e, 0xd, 0).eax, 0);
    assert_eq!(find(&plain, 0xd, 0).eax, 7);
    // A missing hypervisor leaf is added.
    let hv = find(&e, 0x4000_0000, 0);
    assert_eq!([hv.ebx, hv.ecx, hv.edx], KVM_SIGNATURE);
}

#[test]
fn cache_leaf_and_amd_topology_leaves() {
    let mut e = vec![
        kvm_cpuid_entry2 {
            function: 4,
            index: 2,
            eax: 0x3 << 5 | 3, // L3 unified
            ..Default::default()
        },
        kvm_cpuid_entry2 {
            function: 4,
            index: 3,
            eax: 0, // no more caches
            ..Default::default()
        },
        kvm_cpuid_entry2 {
            function: 0x8000_0008,
            ecx: 0xff,
            ..Default::default()
        },
        kvm_cpuid_entry2 {
            function: 0x8000_001e,
            ebx: 0xffff,
            ..Default::default()
        },
    ];
    normalize(
        &mut e,
        Topology {
            cpu_index: 3,
            vcpus: 4,
        },
        false,
    );
    let l3 = find(&e, 4, 2);
    assert_eq!(
        (l3.eax >> 26, (l3.eax >> 14) & 0xfff, l3.eax & 0x1f),
        (3, 3, 3)
    );
    assert_eq!(find(&e, 4, 3).eax, 0, "terminating subleaf untouched");
    let amd = find(&e, 0x8000_0008, 0);
    assert_eq!((amd.ecx & 0xff, (amd.ecx >> 12) & 0xf), (3, 2));
    let ext = find(&e, 0x8000_001e, 0);
    assert_eq!((ext.eax, ext.ebx & 0xffff), (3, 3));
}

#[test]
fn topology_shift_widths() {
    assert_eq!(shift_for(1), 0);
    assert_eq!(shift_for(2), 1);
    assert_eq!(shift_for(3), 2);
    assert_eq!(shift_for(4), 2);
    assert_eq!(shift_for(5), 3);
    assert_eq!(shift_for(32), 5);
}

#[test]
fn cpuinfo_detection() {
    assert!(cpuinfo_has_hw_virt("flags\t\t: fpu vme vmx sse\n"));
    assert!(cpuinfo_has_hw_virt("flags\t\t: fpu svm\n"));
    assert!(!cpuinfo_has_hw_virt(
        "flags\t\t: fpu vme hypervisor\nbugs: vmx\n"
    ));
}
