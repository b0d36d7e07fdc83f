//! What this host can run, and which backend `auto` picks (`myvm check` prints it).

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use crate::hypervisor::BackendKind;

#[derive(Debug, Clone)]
pub struct HostInfo {
    /// vmx or svm in /proc/cpuinfo.
    pub hw_virt: bool,
    /// /dev/kvm exists.
    pub kvm: bool,
    pub qemu: Option<PathBuf>,
    pub builtin_vmm: Option<PathBuf>,
}

impl HostInfo {
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        HostInfo {
            hw_virt: cpu_has_hw_virt(&cpuinfo),
            kvm: Path::new("/dev/kvm").exists(),
            qemu: find_in_path("qemu-system-x86_64"),
            builtin_vmm: find_vmm(),
        }
    }

    /// The backend `auto` selects, and why.
    pub fn auto_backend(&self) -> (BackendKind, String) {
        match (self.hw_virt && self.kvm, &self.builtin_vmm) {
            (true, Some(_)) => (BackendKind::Builtin, "hardware virtualization and /dev/kvm present: the builtin VMM is the fast path".into()),
            (true, None) => (BackendKind::Qemu, "hardware virtualization present, but myvm-vmm is not installed: qemu with KVM".into()),
            (false, _) if self.kvm => (
                BackendKind::Qemu,
                "/dev/kvm exists but the CPU has no vmx/svm (e.g. KVM-PVM, where an unmodified guest kernel runs \
                 interpreted and does not reach /init in reasonable time): qemu with TCG software emulation; \
                 `--backend builtin` still starts our VMM on this /dev/kvm"
                    .into(),
            ),
            (false, _) => (BackendKind::Qemu, "no hardware virtualization and no /dev/kvm: qemu with TCG software emulation".into()),
        }
    }

    pub fn report(&self) -> String {
        let yes = |b: bool| if b { "yes" } else { "no" };
        let path = |p: &Option<PathBuf>| {
            p.as_ref()
                .map_or("not found".to_string(), |p| p.display().to_string())
        };
        let (backend, why) = self.auto_backend();
        let mut s = String::new();
        let _ = writeln!(
            s,
            "hardware virtualization (vmx/svm): {}",
            yes(self.hw_virt)
        );
        let _ = writeln!(s, "/dev/kvm:                          {}", yes(self.kvm));
        let _ = writeln!(s, "qemu-system-x86_64:                {}", path(&self.qemu));
        let _ = writeln!(
            s,
            "builtin VMM (myvm-vmm):            {}",
            path(&self.builtin_vmm)
        );
        let _ = writeln!(s, "backend (auto):                    {backend}");
        let _ = writeln!(s, "why:                               {why}");
        s
    }
}

/// `myvm-vmm`: `$MYVM_VMM`, next to the running binary, the install dir, or PATH.
pub fn find_vmm() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MYVM_VMM")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
    {
        return Some(p);
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("myvm-vmm")));
    beside
        .filter(|p| p.is_file())
        .or_else(|| Some(PathBuf::from("/usr/local/bin/myvm-vmm")).filter(|p| p.is_file()))
        .or_else(|| find_in_path("myvm-vmm"))
}

pub fn cpu_has_hw_virt(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hw_virt_flags() {
        assert!(cpu_has_hw_virt(
            "processor: 0\nflags\t\t: fpu vme vmx sse\n"
        ));
        assert!(cpu_has_hw_virt("flags\t\t: fpu svm\n"));
        assert!(!cpu_has_hw_virt("flags\t\t: fpu vme hypervisor\n"));
        assert!(!cpu_has_hw_virt("model name: vmx-like cpu\nflags: fpu\n"));
    }

    #[test]
    fn kvm_without_hw_virt_picks_qemu_tcg() {
        let h = HostInfo {
            hw_virt: false,
            kvm: true,
            qemu: None,
            builtin_vmm: find_vmm(),
        };
        let (b, why) = h.auto_backend();
        assert_eq!(b, BackendKind::Qemu);
        assert!(why.contains("TCG"), "{why}");
    }

    #[test]
    fn hw_virt_with_builtin_picks_builtin() {
        let h = HostInfo {
            hw_virt: true,
            kvm: true,
            qemu: None,
            builtin_vmm: Some("/x".into()),
        };
        assert_eq!(h.auto_backend().0, BackendKind::Builtin);
    }
}
