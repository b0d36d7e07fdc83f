//! The KVM VM: guest memory slots, in-kernel irqchip (PIC + IOAPIC) and PIT.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::boot::layout::KVM_TSS_ADDRESS;
use crate::memory::GuestMemory;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot open /dev/kvm: {0}")]
    OpenKvm(kvm_ioctls::Error),
    #[error("KVM API version {0} (expected 12)")]
    ApiVersion(i32),
    #[error("KVM lacks a required capability: {0:?}")]
    MissingCap(Cap),
    #[error("host KVM supports at most {max} vCPUs, {asked} asked")]
    TooManyVcpus { max: usize, asked: u32 },
    #[error("KVM_CREATE_VM: {0}")]
    CreateVm(kvm_ioctls::Error),
    #[error("KVM_SET_TSS_ADDR: {0}")]
    Tss(kvm_ioctls::Error),
    #[error("KVM_CREATE_IRQCHIP: {0}")]
    Irqchip(kvm_ioctls::Error),
    #[error("KVM_CREATE_PIT2: {0}")]
    Pit(kvm_ioctls::Error),
    #[error("KVM_SET_USER_MEMORY_REGION: {0}")]
    MemorySlot(kvm_ioctls::Error),
    #[error("KVM_GET_SUPPORTED_CPUID: {0}")]
    Cpuid(kvm_ioctls::Error),
    #[error("KVM_IRQFD (gsi {0}): {1}")]
    Irqfd(u32, kvm_ioctls::Error),
    #[error("KVM_IOEVENTFD ({0:#x}): {1}")]
    Ioeventfd(u64, kvm_ioctls::Error),
}

pub struct Vm {
    pub kvm: Kvm,
    pub fd: VmFd,
}

impl Vm {
    /// Opens /dev/kvm, checks what we need and creates the VM with irqchip and PIT.
    pub fn new(vcpus: u32) -> Result<Self, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let api = kvm.get_api_version();
        if api != kvm_bindings::KVM_API_VERSION as i32 {
            return Err(VmError::ApiVersion(api));
        }
        for cap in [
            Cap::Irqchip,
            Cap::Ioeventfd,
            Cap::Irqfd,
            Cap::UserMemory,
            Cap::SetTssAddr,
            Cap::Pit2,
            Cap::ExtCpuid,
        ] {
            if !kvm.check_extension(cap) {
                return Err(VmError::MissingCap(cap));
            }
        }
        let max = kvm.get_max_vcpus();
        if vcpus as usize > max {
            return Err(VmError::TooManyVcpus { max, asked: vcpus });
        }
        let fd = kvm.create_vm().map_err(VmError::CreateVm)?;
        fd.set_tss_address(KVM_TSS_ADDRESS).map_err(VmError::Tss)?;
        fd.create_irq_chip().map_err(VmError::Irqchip)?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(VmError::Pit)?;
        Ok(Vm { kvm, fd })
    }

    /// Registers every region of `mem` as a KVM memory slot.
    pub fn set_memory(&self, mem: &GuestMemory) -> Result<(), VmError> {
        for (slot, r) in mem.iter().enumerate() {
            let region = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: r.start_addr().0,
                memory_size: r.len(),
                userspace_addr: r.as_ptr() as u64,
            };
            // SAFETY: the mapping outlives the VM: `mem` is kept alive by the Vmm until exit.
            unsafe { self.fd.set_user_memory_region(region) }.map_err(VmError::MemorySlot)?;
        }
        Ok(())
    }

    pub fn supported_cpuid(&self) -> Result<kvm_bindings::CpuId, VmError> {
        self.kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(VmError::Cpuid)
    }

    pub fn register_irqfd(
        &self,
        evt: &vmm_sys_util::eventfd::EventFd,
        gsi: u32,
    ) -> Result<(), VmError> {
        self.fd
            .register_irqfd(evt, gsi)
            .map_err(|e| VmError::Irqfd(gsi, e))
    }

    /// Makes guest 32-bit writes of `datamatch` to `addr` signal `evt` without a VM exit.
    pub fn register_mmio_ioevent(
        &self,
        evt: &vmm_sys_util::eventfd::EventFd,
        addr: u64,
        datamatch: u32,
    ) -> Result<(), VmError> {
        self.fd
            .register_ioevent(evt, &kvm_ioctls::IoEventAddress::Mmio(addr), datamatch)
            .map_err(|e| VmError::Ioeventfd(addr, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_vm_with_irqchip_pit_and_memory_on_real_kvm() {
        let vm = Vm::new(2).expect("VM on /dev/kvm (tests need root)");
        let mem = crate::memory::create(64 << 20).unwrap();
        vm.set_memory(&mem).unwrap();
        let evt = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
        vm.register_irqfd(&evt, 4).unwrap();
        let kick = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
        vm.register_mmio_ioevent(&kick, 0xd000_0050, 0).unwrap();
        assert!(vm.supported_cpuid().unwrap().as_slice().len() > 4);
    }

    #[test]
    fn too_many_vcpus_is_an_error() {
        match Vm::new(100_000) {
            Err(VmError::TooManyVcpus { asked, .. }) => assert_eq!(asked, 100_000),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("accepted 100000 vCPUs"),
        }
    }
}
