//! vCPU setup (CPUID, MSRs, LAPIC LINT pins, PVH entry registers) and the run loop that
//! dispatches port and MMIO exits to the buses.

use std::sync::Arc;

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, CpuId, Msrs};
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::boot::{cpuid, gdt, layout::GDT_START, linux, BootInfo, Protocol};
use crate::devices::Bus;

use super::vm::Vm;

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("KVM_CREATE_VCPU {0}: {1}")]
    Create(u8, kvm_ioctls::Error),
    #[error("vCPU {0}: {1}: {2}")]
    Ioctl(u8, &'static str, kvm_ioctls::Error),
    #[error("vCPU {0}: building CPUID: {1:?}")]
    Cpuid(u8, vmm_sys_util::fam::Error),
}

/// Why a vCPU stopped running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuExitReason {
    /// Guest reset: triple fault (KVM_EXIT_SHUTDOWN, `reboot=t`), i8042 reset, or a KVM
    /// system-event reset.
    Reset,
    /// Guest power-off (KVM system event).
    Shutdown,
    /// KVM could not run the guest (emulation failure, entry failure, ioctl error).
    Error(String),
}

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const MTRR_ENABLE: u64 = 1 << 11;
const MTRR_MEM_TYPE_WB: u64 = 6;

/// MSR values every vCPU starts with.
pub fn boot_msrs() -> Vec<(u32, u64)> {
    vec![
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_MEM_TYPE_WB),
    ]
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn set_apic_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

pub struct Vcpu {
    pub index: u8,
    pub fd: VcpuFd,
}

impl Vcpu {
    pub fn new(vm: &Vm, index: u8) -> Result<Self, VcpuError> {
        let fd = vm
            .fd
            .create_vcpu(u64::from(index))
            .map_err(|e| VcpuError::Create(index, e))?;
        Ok(Vcpu { index, fd })
    }

    /// CPUID, MSRs and LAPIC for every vCPU; registers for the boot vCPU.
    pub fn configure(
        &self,
        supported: &CpuId,
        vcpus: u8,
        pvm_compat: bool,
        boot: Option<&BootInfo>,
    ) -> Result<(), VcpuError> {
        let i = self.index;
        let err = |what| move |e| VcpuError::Ioctl(i, what, e);
        let mut entries = supported.as_slice().to_vec();
        cpuid::normalize(
            &mut entries,
            cpuid::Topology {
                cpu_index: i,
                vcpus,
            },
            pvm_compat,
        );
        let cpuid = CpuId::from_entries(&entries).map_err(|e| VcpuError::Cpuid(i, e))?;
        self.fd.set_cpuid2(&cpuid).map_err(err("KVM_SET_CPUID2"))?;

        for (index, data) in boot_msrs() {
            let msrs = Msrs::from_entries(&[kvm_msr_entry {
                index,
                data,
                ..Default::default()
            }])
            .expect("one MSR entry");
            match self.fd.set_msrs(&msrs) {
                Ok(1) => {}
                Ok(_) | Err(_) => {
                    tracing::debug!(vcpu = i, "MSR {index:#x} not settable on this KVM")
                }
            }
        }

        let mut lapic = self.fd.get_lapic().map_err(err("KVM_GET_LAPIC"))?;
        let get = |regs: &[i8], off: usize| {
            u32::from_le_bytes([
                regs[off] as u8,
                regs[off + 1] as u8,
                regs[off + 2] as u8,
                regs[off + 3] as u8,
            ])
        };
        let lvt0 = set_apic_delivery_mode(get(&lapic.regs, APIC_LVT0), APIC_MODE_EXTINT);
        let lvt1 = set_apic_delivery_mode(get(&lapic.regs, APIC_LVT1), APIC_MODE_NMI);
        for (off, v) in [(APIC_LVT0, lvt0), (APIC_LVT1, lvt1)] {
            for (k, b) in v.to_le_bytes().iter().enumerate() {
                lapic.regs[off + k] = *b as i8;
            }
        }
        self.fd.set_lapic(&lapic).map_err(err("KVM_SET_LAPIC"))?;

        if let Some(boot) = boot {
            let fpu = kvm_fpu {
                fcw: 0x37f,
                mxcsr: 0x1f80,
                ..Default::default()
            };
            self.fd.set_fpu(&fpu).map_err(err("KVM_SET_FPU"))?;
            let regs = match boot.protocol {
                Protocol::Pvh => kvm_regs {
                    rflags: 0x2,
                    rip: boot.entry.0,
                    rbx: boot.start_info.0,
                    ..Default::default()
                },
                Protocol::Linux => linux::regs(boot.entry),
            };
            self.fd.set_regs(&regs).map_err(err("KVM_SET_REGS"))?;
            let mut sregs = self.fd.get_sregs().map_err(err("KVM_GET_SREGS"))?;
            match boot.protocol {
                Protocol::Pvh => pvh_sregs(&mut sregs),
                Protocol::Linux => linux::sregs(&mut sregs),
            }
            self.fd.set_sregs(&sregs).map_err(err("KVM_SET_SREGS"))?;
        }
        Ok(())
    }

    /// Runs until the guest resets or powers off, or KVM fails. `pio`/`mmio` serve exits.
    pub fn run(
        &mut self,
        pio: &Bus,
        mmio: &Bus,
        stop: &std::sync::atomic::AtomicBool,
    ) -> VcpuExitReason {
        use std::sync::atomic::Ordering;
        loop {
            if stop.load(Ordering::Relaxed) {
                return VcpuExitReason::Shutdown;
            }
            match self.fd.run() {
                Ok(VcpuExit::IoIn(port, data)) => {
                    pio.read(u64::from(port), data);
                }
                Ok(VcpuExit::IoOut(port, data)) => {
                    pio.write(u64::from(port), data);
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    if !mmio.read(addr, data) {
                        tracing::trace!("unhandled MMIO read at {addr:#x}");
                    }
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    if !mmio.write(addr, data) {
                        tracing::trace!("unhandled MMIO write at {addr:#x}");
                    }
                }
                Ok(VcpuExit::Hlt) => {
                    // With the in-kernel irqchip HLT is handled by KVM; seeing it means the
                    // vCPU halted for good.
                    return VcpuExitReason::Shutdown;
                }
                Ok(VcpuExit::Shutdown) => return VcpuExitReason::Reset,
                Ok(VcpuExit::SystemEvent(ty, _)) => {
                    return match ty {
                        kvm_bindings::KVM_SYSTEM_EVENT_RESET => VcpuExitReason::Reset,
                        kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => VcpuExitReason::Shutdown,
                        other => VcpuExitReason::Error(format!("system event {other}")),
                    };
                }
                Ok(VcpuExit::FailEntry(reason, cpu)) => {
                    return VcpuExitReason::Error(format!(
                        "KVM_EXIT_FAIL_ENTRY: hardware reason {reason:#x} on cpu {cpu}"
                    ))
                }
                Ok(VcpuExit::InternalError) => {
                    return VcpuExitReason::Error(self.internal_error_text());
                }
                Ok(VcpuExit::Intr) => {}
                Ok(other) => {
                    return VcpuExitReason::Error(format!("unexpected KVM exit {other:?}"));
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
                Err(e) => return VcpuExitReason::Error(format!("KVM_RUN: {e}")),
            }
        }
    }

    fn internal_error_text(&mut self) -> String {
        let rip = self.fd.get_regs().map(|r| r.rip).unwrap_or_default();
        // SAFETY: reading the internal-error union member after KVM_EXIT_INTERNAL_ERROR.
        let (suberror, ndata, data) = unsafe {
            let run = self.fd.get_kvm_run();
            let ie = run.__bindgen_anon_1.internal;
            (ie.suberror, ie.ndata, ie.data)
        };
        let sub = match suberror {
            1 => "emulation failure",
            2 => "simultaneous exceptions",
            3 => "delivery event",
            _ => "unknown",
        };
        let n = (ndata as usize).min(data.len());
        format!(
            "KVM internal error: {sub} (suberror {suberror}) at rip {rip:#x}, data {:x?}",
            &data[..n]
        )
    }
}

/// 32-bit flat protected mode, paging off: the machine state the PVH entry expects.
pub fn pvh_sregs(sregs: &mut kvm_bindings::kvm_sregs) {
    let code = gdt::segment(gdt::GDT[1], gdt::CODE_SELECTOR);
    let data = gdt::segment(gdt::GDT[2], gdt::DATA_SELECTOR);
    let tss = gdt::segment(gdt::GDT[3], gdt::TSS_SELECTOR);
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt::GDT) - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    sregs.cr0 = 0x1 | 0x10; // PE | ET
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
}

/// Shared handle to the buses for all vCPU threads.
pub type Buses = Arc<(Bus, Bus)>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lapic_delivery_mode_bits() {
        assert_eq!(
            set_apic_delivery_mode(0x0001_0000, APIC_MODE_EXTINT),
            0x0001_0700
        );
        assert_eq!(
            set_apic_delivery_mode(0x0000_0700, APIC_MODE_NMI),
            0x0000_0400
        );
    }

    #[test]
    fn pvh_entry_state() {
        let mut s = kvm_bindings::kvm_sregs::default();
        pvh_sregs(&mut s);
        assert_eq!(s.cr0 & 1, 1, "protected mode");
        assert_eq!(s.cr0 & (1 << 31), 0, "paging off");
        assert_eq!((s.cs.selector, s.cs.db, s.cs.l), (gdt::CODE_SELECTOR, 1, 0));
        assert_eq!(s.gdt.limit, 31);
    }

    /// Runs a few instructions on the real KVM: the vCPU starts at the PVH
    /// entry in 32-bit protected mode with %ebx = start info, and an `out` reaches our bus.
    #[test]
    fn pvh_register_state_runs_on_real_kvm() {
        use std::sync::{Arc, Mutex};
        use vm_memory::{Bytes, GuestAddress};

        struct Port(Vec<u8>);
        impl crate::devices::BusDevice for Port {
            fn read(&mut self, _: u64, d: &mut [u8]) {
                d.fill(0)
            }
            fn write(&mut self, _: u64, d: &[u8]) {
                self.0.extend_from_slice(d)
            }
        }

        let vm = Vm::new(1).unwrap();
        let mem = crate::memory::create(64 << 20).unwrap();
        vm.set_memory(&mem).unwrap();
        for (i, e) in gdt::GDT.iter().enumerate() {
            mem.write_obj(*e, GuestAddress(GDT_START + 8 * i as u64))
                .unwrap();
        }
        // 88 d8        mov al, bl
        // e6 99        out 0x99, al
        // 0f 0b        ud2  -> #UD with an empty IDT -> triple fault (KVM_EXIT_SHUTDOWN)
        let code = [0x88, 0xd8, 0xe6, 0x99, 0x0f, 0x0b];
        let entry = GuestAddress(0x100_0000);
        mem.write_slice(&code, entry).unwrap();
        let boot = BootInfo {
            protocol: Protocol::Pvh,
            entry,
            start_info: GuestAddress(0x6042),
            kernel_end: 0x100_1000,
            initrd: None,
        };
        let mut vcpu = Vcpu::new(&vm, 0).unwrap();
        let cpuid = vm.supported_cpuid().unwrap();
        vcpu.configure(&cpuid, 1, true, Some(&boot)).unwrap();
        let port = Arc::new(Mutex::new(Port(vec![])));
        let mut pio = Bus::new();
        pio.insert(port.clone(), 0x99, 1).unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        let reason = vcpu.run(&pio, &Bus::new(), &stop);
        assert_eq!(
            reason,
            VcpuExitReason::Reset,
            "triple fault is a guest reset"
        );
        assert_eq!(
            port.lock().unwrap().0,
            vec![0x42],
            "%bl = low byte of start info"
        );
    }

    /// What the guest itself sees from CPUID leaf 1 after our normalisation (APIC id and the
    /// hypervisor / XSAVE bits), read by guest code and reported through port I/O.
    #[test]
    fn guest_cpuid_reflects_normalisation_on_real_kvm() {
        use std::sync::{Arc, Mutex};
        use vm_memory::{Bytes, GuestAddress};

        struct Port(Vec<u8>);
        impl crate::devices::BusDevice for Port {
            fn read(&mut self, _: u64, d: &mut [u8]) {
                d.fill(0)
            }
            fn write(&mut self, _: u64, d: &[u8]) {
                self.0.extend_from_slice(d)
            }
        }
        let vm = Vm::new(1).unwrap();
        let mem = crate::memory::create(64 << 20).unwrap();
        vm.set_memory(&mem).unwrap();
        for (i, e) in gdt::GDT.iter().enumerate() {
            mem.write_obj(*e, GuestAddress(GDT_START + 8 * i as u64))
                .unwrap();
        }
        #[rustfmt::skip]
        let code = [
            0xb8, 1, 0, 0, 0,   // mov eax, 1
            0x31, 0xc9,         // xor ecx, ecx
            0x0f, 0xa2,         // cpuid
            0x89, 0xd8,         // mov eax, ebx
            0xc1, 0xe8, 24,     // shr eax, 24
            0xe6, 0x99,         // out 0x99, al   (initial APIC id)
            0x89, 0xc8,         // mov eax, ecx
            0xc1, 0xe8, 24,     // shr eax, 24
            0xe6, 0x99,         // out 0x99, al   (ECX[31:24])
            0x0f, 0x0b,         // ud2 -> triple fault
        ];
        let entry = GuestAddress(0x100_0000);
        mem.write_slice(&code, entry).unwrap();
        let boot = BootInfo {
            protocol: Protocol::Pvh,
            entry,
            start_info: GuestAddress(0x6000),
            kernel_end: 0x100_1000,
            initrd: None,
        };
        let mut vcpu = Vcpu::new(&vm, 0).unwrap();
        let supported = vm.supported_cpuid().unwrap();
        vcpu.configure(&supported, 1, true, Some(&boot)).unwrap();
        // Pretend to be vCPU 5 of 8 to see a non-zero APIC id.
        let mut entries = supported.as_slice().to_vec();
        cpuid::normalize(
            &mut entries,
            cpuid::Topology {
                cpu_index: 5,
                vcpus: 8,
            },
            true,
        );
        vcpu.fd
            .set_cpuid2(&CpuId::from_entries(&entries).unwrap())
            .unwrap();
        let port = Arc::new(Mutex::new(Port(vec![])));
        let mut pio = Bus::new();
        pio.insert(port.clone(), 0x99, 1).unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        assert_eq!(vcpu.run(&pio, &Bus::new(), &stop), VcpuExitReason::Reset);
        let seen = port.lock().unwrap().0.clone();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0], 5, "guest sees the APIC id we set");
        assert_ne!(seen[1] & 0x80, 0, "hypervisor bit");
        eprintln!(
            "guest CPUID.1: APIC id {}, ECX[31:24] {:#04x} (XSAVE bit {})",
            seen[0],
            seen[1],
            if seen[1] & 0x04 != 0 {
                "visible"
            } else {
                "hidden"
            }
        );
    }

    /// The Linux-protocol state runs 64-bit code on the real KVM: %rsi = zero page, reported
    /// through port I/O, then a triple fault through the empty IDT.
    #[test]
    fn long_mode_register_state_runs_on_real_kvm() {
        use std::sync::{Arc, Mutex};
        use vm_memory::{Bytes, GuestAddress};

        struct Port(Vec<u8>);
        impl crate::devices::BusDevice for Port {
            fn read(&mut self, _: u64, d: &mut [u8]) {
                d.fill(0)
            }
            fn write(&mut self, _: u64, d: &[u8]) {
                self.0.extend_from_slice(d)
            }
        }
        let vm = Vm::new(1).unwrap();
        let mem = crate::memory::create(64 << 20).unwrap();
        vm.set_memory(&mem).unwrap();
        linux::write(&mem, 64 << 20, 0, None).unwrap();
        #[rustfmt::skip]
        let code = [
            0x48, 0x89, 0xf0,   // mov rax, rsi
            0x48, 0xc1, 0xe8, 8, // shr rax, 8
            0xe6, 0x99,         // out 0x99, al   (0x70 for the zero page at 0x7000)
            0x48, 0x89, 0xe0,   // mov rax, rsp
            0xe6, 0x99,         // out 0x99, al   (0xf0)
            0x0f, 0x0b,         // ud2 -> triple fault
        ];
        let entry = GuestAddress(0x100_0000);
        mem.write_slice(&code, entry).unwrap();
        let boot = BootInfo {
            protocol: Protocol::Linux,
            entry,
            start_info: GuestAddress(linux::ZERO_PAGE_START),
            kernel_end: 0x100_1000,
            initrd: None,
        };
        let mut vcpu = Vcpu::new(&vm, 0).unwrap();
        vcpu.configure(&vm.supported_cpuid().unwrap(), 1, true, Some(&boot))
            .unwrap();
        let port = Arc::new(Mutex::new(Port(vec![])));
        let mut pio = Bus::new();
        pio.insert(port.clone(), 0x99, 1).unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        assert_eq!(vcpu.run(&pio, &Bus::new(), &stop), VcpuExitReason::Reset);
        assert_eq!(port.lock().unwrap().0, vec![0x70, 0xf0]);
    }
}
